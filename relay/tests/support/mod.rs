//! A relay as its own process (the real binary, on loopback), devices in this process (real
//! libp2p nodes, real stores in temp dirs), and a bare client that speaks the relay protocol
//! by hand.

#![allow(dead_code, clippy::unwrap_used)] // each test uses its own part; a panic is the report

/// handoff's own test helpers: devices on light Argon2, bare libp2p clients.
#[path = "../../../tests/common/mod.rs"]
pub mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use handoff::device::{Device, PendingJoin, Unlocked};
use handoff::doc::{Role, Service};
use handoff::home::Home;
use handoff::net::{Mesh, MeshConfig, Multiaddr, Owned};
use handoff_protocol::frame;
use handoff_protocol::relay::{MAX_FRAME, Request, Response};
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, StreamProtocol};

pub use common::wait::WAIT;
pub const TOKEN: &str = "relay-access-token-for-tests";

/// The relay binary running in the background.
pub struct RelayProc {
    child: Child,
    pub dir: PathBuf,
    pub addr: Multiaddr,
    pub port: u16,
    pub peer: PeerId,
    pub metrics: String,
    extra: Vec<String>,
}

impl RelayProc {
    /// Starts a relay with its database and log in `dir` (a fresh port, or `port`), with the
    /// shared token unless `extra` names another `--access`.
    pub fn start(dir: &Path, port: Option<u16>, extra: &[&str]) -> RelayProc {
        let token = dir.join("token");
        if !token.exists() {
            std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("relay.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_handoff-relay"))
            .args(["serve", "--listen"])
            .arg(format!("/ip4/127.0.0.1/tcp/{}", port.unwrap_or(0)))
            .arg("--db")
            .arg(dir.join("relay.db"))
            .args(if extra.contains(&"--access") {
                Vec::new()
            } else {
                vec![
                    std::ffi::OsString::from("--access"),
                    "token".into(),
                    "--token-file".into(),
                    token.clone().into_os_string(),
                ]
            })
            .args(["--metrics", "127.0.0.1:0"])
            .args(extra)
            .env_remove("HANDOFF_RELAY_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = None;
        let mut metrics = None;
        while addr.is_none() || metrics.is_none() {
            let line = lines
                .next()
                .expect("the relay prints its addresses")
                .unwrap();
            if let Some(a) = line.strip_prefix("listening on ") {
                addr = Some(a.parse::<Multiaddr>().unwrap());
            } else if let Some(m) = line.strip_prefix("metrics on http://") {
                metrics = Some(m.trim_end_matches("/metrics").to_string());
            }
        }
        let addr = addr.unwrap();
        let port = addr
            .iter()
            .find_map(|p| match p {
                libp2p::multiaddr::Protocol::Tcp(p) => Some(p),
                _ => None,
            })
            .unwrap();
        let peer = addr
            .iter()
            .find_map(|p| match p {
                libp2p::multiaddr::Protocol::P2p(p) => Some(p),
                _ => None,
            })
            .unwrap();
        RelayProc {
            child,
            dir: dir.to_path_buf(),
            addr,
            port,
            peer,
            metrics: metrics.unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Kills it outright (SIGKILL) and starts it again on the same port and database.
    pub fn kill_and_restart(mut self) -> RelayProc {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        RelayProc::start(&self.dir.clone(), Some(self.port), &extra)
    }

    /// Stops it with SIGTERM (a graceful shutdown) and starts it again.
    pub fn restart(mut self) -> RelayProc {
        self.terminate();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        RelayProc::start(&self.dir.clone(), Some(self.port), &extra)
    }

    /// SIGTERM, then waits for it to exit (and checks it exited cleanly).
    pub fn terminate(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "the relay exits cleanly on SIGTERM: {status}"
        );
    }

    /// The Prometheus text the relay serves.
    pub fn metrics_text(&self) -> String {
        let mut conn = std::net::TcpStream::connect(&self.metrics).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).unwrap();
        out
    }

    /// One metric's value (the first line that starts with `name`).
    pub fn metric(&self, name: &str) -> u64 {
        self.metrics_text()
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A device's home, and its mesh while it is online.
pub struct Node {
    pub name: String,
    dir: tempfile::TempDir,
    pub host: Option<Arc<Owned>>,
    pub mesh: Option<Mesh>,
}

pub fn config() -> MeshConfig {
    MeshConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        mdns: false,
        dial_known: false,
        redial_every: Duration::from_secs(1),
        relay_grace: Duration::from_millis(100),
        relay_retry: Duration::from_millis(300),
        ..MeshConfig::default()
    }
}

impl Node {
    /// A new vault's founder, offline.
    pub fn founder(name: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let (device, _) = Device::init(
            Home::at(dir.path().join("home")),
            &common::new_device(name),
            "vault",
        )
        .unwrap();
        Node::holding(name, dir, device)
    }

    fn holding(name: &str, dir: tempfile::TempDir, device: Device) -> Node {
        let key = device.unlock(common::PASSPHRASE).unwrap();
        Node {
            name: name.into(),
            dir,
            host: Some(Owned::new(device, Some(key))),
            mesh: None,
        }
    }

    /// A new member admitted by `self` (an admin) as pairing does, offline: each side also
    /// notes that the other holds the document they exchanged.
    pub fn admit(&self, name: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let pending =
            PendingJoin::prepare(Home::at(dir.path().join("home")), &common::new_device(name))
                .unwrap();
        let (export, anchors, adder) = self.with(|d, k| {
            let member = d.admit(k.unwrap(), &pending.joiner(Role::Member)).unwrap();
            d.note_holds_all(&member.device).unwrap();
            (d.export(), d.anchors().clone(), d.device_id())
        });
        let mut device = pending.finish(&export, &anchors).unwrap();
        device.note_holds_all(&adder).unwrap();
        Node::holding(name, dir, device)
    }

    pub fn home(&self) -> Home {
        Home::at(self.dir.path().join("home"))
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Device, Option<&Unlocked>) -> T) -> T {
        self.host.as_ref().expect("the device is open").with(f)
    }

    pub async fn go_online(&mut self) {
        if self.host.is_none() {
            let device = Device::open(self.home()).unwrap();
            let key = device.unlock(common::PASSPHRASE).unwrap();
            self.host = Some(Owned::new(device, Some(key)));
        }
        let host = self.host.clone().unwrap();
        self.mesh = Some(Mesh::start(host, config()).await.unwrap());
    }

    /// Stops the mesh and closes the device, as a process that exits.
    pub async fn go_offline(&mut self) {
        if let Some(mesh) = self.mesh.take() {
            mesh.stop().await;
        }
        self.host = None;
    }

    pub fn mesh(&self) -> &Mesh {
        self.mesh.as_ref().expect("online")
    }

    pub fn add(&self, label: &str, secret: &str) {
        self.with(|d, k| {
            d.add_token(
                k.unwrap(),
                Service::Anthropic,
                label,
                secret.as_bytes(),
                false,
                false,
            )
            .unwrap()
        });
        if let Some(mesh) = &self.mesh {
            mesh.changed();
        }
    }

    pub fn reveal(&self, query: &str) -> Option<String> {
        self.with(|d, k| {
            d.reveal(k.unwrap(), query)
                .ok()
                .map(|(_, s)| String::from_utf8(handoff::device::expose(&s).to_vec()).unwrap())
        })
    }
}

/// A bare client: its own libp2p identity, one stream at a time, frames by hand.
pub struct Client {
    swarm: libp2p::Swarm<libp2p_stream::Behaviour>,
    pub peer: PeerId,
    relay: Option<PeerId>,
}

impl Client {
    pub fn new() -> Client {
        let swarm = common::mesh::bare_swarm();
        let peer = *swarm.local_peer_id();
        Client {
            swarm,
            peer,
            relay: None,
        }
    }

    /// Drives the swarm while `work` runs.
    pub async fn drive<T>(&mut self, work: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(work);
        tokio::time::timeout(WAIT, async {
            loop {
                tokio::select! {
                    out = &mut work => return out,
                    _ = self.swarm.select_next_some() => {}
                }
            }
        })
        .await
        .expect("within the test deadline")
    }

    pub async fn connect(&mut self, addr: &Multiaddr) {
        self.swarm.dial(addr.clone()).unwrap();
        let swarm = &mut self.swarm;
        let relay = tokio::time::timeout(WAIT, async {
            loop {
                if let SwarmEvent::ConnectionEstablished { peer_id, .. } =
                    swarm.select_next_some().await
                {
                    return peer_id;
                }
            }
        })
        .await
        .unwrap();
        self.relay = Some(relay);
    }

    pub fn is_connected(&self) -> bool {
        self.swarm.connected_peers().next().is_some()
    }

    /// Opens a stream to the relay.
    pub async fn stream(&mut self) -> libp2p::Stream {
        let mut control = self.swarm.behaviour().new_control();
        let relay = self.relay.unwrap();
        self.drive(async move {
            control
                .open_stream(relay, StreamProtocol::new("/handoff/relay/1"))
                .await
                .unwrap()
        })
        .await
    }

    /// Opens a stream and says hello with `token`; the answer.
    pub async fn hello(&mut self, token: &str) -> (libp2p::Stream, Response) {
        let mut stream = self.stream().await;
        let answer = self
            .drive(async {
                send(
                    &mut stream,
                    &Request::Hello {
                        version: 1,
                        token: token.as_bytes().to_vec(),
                    },
                )
                .await;
                recv(&mut stream).await
            })
            .await;
        (stream, answer.expect("an answer to the hello"))
    }

    pub async fn request(
        &mut self,
        stream: &mut libp2p::Stream,
        request: &Request,
    ) -> Option<Response> {
        self.drive(async {
            send(stream, request).await;
            recv(stream).await
        })
        .await
    }

    pub async fn send_only(&mut self, stream: &mut libp2p::Stream, request: &Request) {
        self.drive(send(stream, request)).await;
    }

    pub async fn next(&mut self, stream: &mut libp2p::Stream) -> Option<Response> {
        self.drive(recv(stream)).await
    }

    /// Writes raw bytes on the stream (garbage, lies about lengths).
    pub async fn raw(&mut self, stream: &mut libp2p::Stream, bytes: &[u8]) {
        self.drive(async {
            let _ = stream.write_all(bytes).await;
            let _ = stream.flush().await;
        })
        .await;
    }

    /// Waits until the relay closed this client's connection.
    pub async fn closed(&mut self) {
        let swarm = &mut self.swarm;
        tokio::time::timeout(WAIT, async {
            while swarm.connected_peers().next().is_some() {
                swarm.select_next_some().await;
            }
        })
        .await
        .expect("the relay closes the connection");
    }
}

pub async fn send(stream: &mut libp2p::Stream, request: &Request) {
    let bytes = frame::encode(&request.encode(), MAX_FRAME).unwrap();
    let _ = stream.write_all(&bytes).await;
    let _ = stream.flush().await;
}

/// The next response, `None` if the stream ended.
pub async fn recv(stream: &mut libp2p::Stream) -> Option<Response> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await.ok()?;
    let len = frame::decode_len(header, MAX_FRAME).ok()?;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.ok()?;
    Some(Response::decode(&payload).unwrap())
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
