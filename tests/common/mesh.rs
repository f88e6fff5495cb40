//! Mesh nodes on loopback for the in-process network tests and the mesh bench: a real store in
//! a temp dir, the daemon's mesh code, TCP with Noise and Yamux on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use handoff::device::{Device, PendingJoin, Unlocked};
use handoff::doc::{Role, Service};
use handoff::home::Home;
use handoff::net::{JoinRequest, LinkHints, Mesh, MeshConfig, Multiaddr, OfferRequest, Owned};
use handoff::net::{PairCode, PairTicket};
use handoff_protocol::TokenId;
use libp2p::SwarmBuilder;

pub use super::wait::WAIT;

/// Debug logs of the mesh on the test's output when `HANDOFF_TEST_LOG` is set.
pub fn logs() {
    if std::env::var_os("HANDOFF_TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_test_writer()
            .try_init();
    }
}

/// A node on 127.0.0.1, any port, no mDNS, no configured peers. With `dial_known`, it dials
/// the members it has addresses for on its own; without, only when told.
pub fn loopback(dial_known: bool) -> MeshConfig {
    logs();
    MeshConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        mdns: false,
        peers: Vec::new(),
        dial_known,
        redial_every: Duration::from_secs(3600),
        ..MeshConfig::default()
    }
}

/// A running node and the device it hosts.
pub struct Node {
    pub host: Arc<Owned>,
    pub mesh: Mesh,
    _dir: tempfile::TempDir,
}

impl Node {
    pub async fn start(
        dir: tempfile::TempDir,
        device: Device,
        key: Unlocked,
        config: MeshConfig,
    ) -> Node {
        let host = Owned::new(device, Some(key));
        let mesh = Mesh::start(host.clone(), config).await.unwrap();
        Node {
            host,
            mesh,
            _dir: dir,
        }
    }

    /// A node hosting the founder ("alpha") of a new vault.
    pub async fn founder(config: MeshConfig) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let (device, key) = super::founder(Home::at(dir.path().join("home")), "alpha");
        Node::start(dir, device, key, config).await
    }

    pub fn addr(&self) -> Multiaddr {
        self.mesh.view().listen[0].clone()
    }

    /// Adds an Anthropic token and tells the mesh.
    pub fn add(&self, label: &str, secret: &str) -> TokenId {
        let id = self.host.with(|d, k| {
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
        self.mesh.changed();
        id
    }

    pub fn reveal(&self, query: &str) -> Option<String> {
        self.host.with(|d, k| {
            d.reveal(k.unwrap(), query)
                .ok()
                .map(|(_, s)| String::from_utf8(handoff::device::expose(&s).to_vec()).unwrap())
        })
    }

    pub fn heads(&self) -> Vec<String> {
        self.host.with(|d, _| d.heads_hex())
    }

    /// Waits until `check` holds on this node, re-checking whenever it applies a peer's changes.
    pub async fn until(&self, what: &str, check: impl Fn(&Node) -> bool) {
        let mut applied = self.mesh.applied();
        let result = tokio::time::timeout(WAIT, async {
            while !check(self) {
                let _ = tokio::time::timeout(Duration::from_millis(50), applied.changed()).await;
            }
        })
        .await;
        assert!(result.is_ok(), "timed out waiting for: {what}");
    }

    /// Opens a pairing offer for a member, confirmed on this side without a prompt.
    pub async fn offer(&self, long_code: bool) -> PairTicket {
        self.offer_lasting(long_code, handoff::net::OFFER_LIFETIME)
            .await
    }

    pub async fn offer_lasting(&self, long_code: bool, lifetime: Duration) -> PairTicket {
        self.offer_for(Role::Member, long_code, lifetime).await
    }

    /// Opens a pairing offer for a device of `role`.
    pub async fn offer_for(&self, role: Role, long_code: bool, lifetime: Duration) -> PairTicket {
        let key = self.host.with(|_, k| k.unwrap().duplicate());
        self.mesh
            .offer(OfferRequest {
                role,
                name: None,
                long_code,
                auto_confirm: true,
                lifetime,
                key,
            })
            .await
            .unwrap()
    }
}

/// A newcomer's keys on a fresh store, ready to join.
pub fn prepare_join(name: &str) -> (tempfile::TempDir, PendingJoin) {
    let dir = tempfile::tempdir().unwrap();
    let pending =
        PendingJoin::prepare(Home::at(dir.path().join("home")), &super::new_device(name)).unwrap();
    (dir, pending)
}

/// What `peer join CODE --addr <adder> --yes` asks for (the short authentication string must
/// have its four words).
pub fn join_request(adder: &Node, code: &PairCode) -> JoinRequest {
    JoinRequest {
        code: code.clone(),
        hints: LinkHints {
            peer: None,
            addrs: vec![adder.addr()],
        },
        mdns: false,
        confirm: Box::new(|sas| {
            assert_eq!(sas.split(' ').count(), 4, "{sas}");
            true
        }),
        progress: Box::new(|_| {}),
    }
}

/// Joins through `adder` over the network with `code`; the new device, unlocked.
pub async fn join_with(
    adder: &Node,
    name: &str,
    code: &PairCode,
) -> Result<(tempfile::TempDir, Device, Unlocked), handoff::net::NetError> {
    let (dir, pending) = prepare_join(name);
    let device = handoff::net::join(pending, join_request(adder, code)).await?;
    let key = device.unlock(super::PASSPHRASE).unwrap();
    Ok((dir, device, key))
}

/// A bare libp2p node (TCP, Noise, Yamux) with only the stream behaviour: a client speaking a
/// protocol by hand, or the transport alone for a baseline.
pub fn bare_swarm() -> libp2p::Swarm<libp2p_stream::Behaviour> {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build()
}
