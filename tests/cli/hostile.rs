//! The daemon under hostile load, through the real binaries: strangers holding more
//! connections than it has descriptors, and a control client sending huge, deep and half-sent
//! frames. It must keep answering its user, stay cool, keep its memory bounded, and sync with
//! its members once the load is gone.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use handoff::control;
use serde_json::Value;

use crate::peers::{eventually, pair};
use crate::support::{TestHome, binary};

/// The daemon's CPU time so far (user + system), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

/// A line of /proc/PID/status in KiB (VmRSS, VmHWM).
fn memory_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

fn status(home: &TestHome) -> Value {
    serde_json::from_str(&home.ok(&["--json", "status"])).unwrap()
}

/// A daemon the test started itself: killed if the test fails before stopping it.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `home`'s daemon in the foreground with at most `files` open descriptors (soft and
/// hard, so raising the soft limit cannot undo the test), and waits until it serves.
fn daemon_with_files(home: &TestHome, files: u32) -> Daemon {
    let log = std::fs::File::create(home.scratch("daemon-fg.log")).unwrap();
    let child = Command::new("bash")
        .arg("-c")
        .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
        .arg(binary())
        .arg("--home")
        .arg(home.path())
        .args(["daemon", "start", "--foreground"])
        .env_remove("HANDOFF_HOME")
        .env("HANDOFF_PASSPHRASE_FILE", &home.passphrase_file)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    // One status per look: between taking the home and opening its socket the daemon owns
    // the home but does not answer yet, so a second command could find it busy.
    eventually("the daemon serves", || {
        let out = home.run(&["--json", "status"]);
        out.code == Some(0)
            && serde_json::from_str::<Value>(&out.stdout)
                .is_ok_and(|v| v["daemon_pid"].as_u64() == Some(u64::from(child.id())))
    });
    Daemon(child)
}

/// The TCP port of the daemon's first listen address.
fn tcp_port(home: &TestHome) -> u16 {
    let listen = status(home)["listen"].clone();
    listen
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .find_map(|a| a.strip_prefix("/ip4/127.0.0.1/tcp/")?.parse().ok())
        .expect("a TCP listen address on loopback")
}

/// `n` raw TCP connections from loopback address `from` to `port`, held open and silent.
fn strangers(from: [u8; 4], port: u16, n: usize) -> Vec<std::net::TcpStream> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut held = Vec::new();
        for _ in 0..n {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(std::net::SocketAddr::from((from, 0))).unwrap();
            let connected =
                tokio::time::timeout(Duration::from_secs(5), socket.connect(target)).await;
            if let Ok(Ok(stream)) = connected {
                held.push(stream.into_std().unwrap());
            }
        }
        held
    })
}

fn socket(home: &TestHome) -> PathBuf {
    home.path().join("daemon.sock")
}

/// `n` control connections that connect and say nothing.
fn idle_clients(path: &Path, n: usize) -> Vec<UnixStream> {
    (0..n)
        .filter_map(|_| UnixStream::connect(path).ok())
        .collect()
}

#[test]
fn a_daemon_out_of_descriptors_still_answers_stays_cool_and_syncs_afterwards() {
    let a = TestHome::new();
    a.init();
    let daemon = daemon_with_files(&a, 96);
    a.ok(&["unlock", "--for", "1h"]);
    let b = TestHome::with_daemon();
    pair(&a, &b, "beta");
    let pid = daemon.0.id();
    let port = tcp_port(&a);

    // Strangers on two other loopback addresses hold far more connections than the daemon
    // has descriptors, and a local client opens more idle control connections than its cap.
    let mut held = strangers([127, 0, 0, 2], port, 300);
    held.extend(strangers([127, 0, 0, 3], port, 300));
    let idle = idle_clients(&socket(&a), 150);
    assert!(
        held.len() + idle.len() > 96,
        "the load did not exceed the limit"
    );

    // A window in which the user's own commands are answered, each within a bound, while
    // the daemon's CPU time is measured.
    let cpu_before = cpu_time(pid);
    let window = Instant::now();
    for _ in 0..5 {
        let asked = Instant::now();
        let out = a.run(&["--json", "status"]);
        assert_eq!(out.code, Some(0), "status failed under load: {out:?}");
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "status took {:?} under load",
            asked.elapsed()
        );
    }
    let spent = cpu_time(pid) - cpu_before;
    let elapsed = window.elapsed();
    assert!(
        spent.as_secs_f64() < 0.5 * elapsed.as_secs_f64() + 0.5,
        "the daemon spent {spent:?} of CPU in {elapsed:?}: it spins"
    );

    // The load goes away; the two members sync again.
    drop(held);
    drop(idle);
    b.add(
        "anthropic",
        "after-the-storm",
        "sk-ant-after-the-storm",
        &[],
    );
    eventually("b's token reaches a after the storm", || {
        a.run(&["token", "show", "anthropic/after-the-storm", "--reveal"])
            .stdout
            .contains("sk-ant-after-the-storm")
    });
    a.ok(&["daemon", "stop"]);
    drop(daemon);
}

/// Sends `bytes` on a new control connection from a thread, giving up after a few seconds
/// of a daemon that does not read; the connection stays open (held) afterwards.
fn send_and_hold(path: &Path, bytes: Vec<u8>) -> std::thread::JoinHandle<Option<UnixStream>> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let mut stream = UnixStream::connect(&path).ok()?;
        stream
            .set_write_timeout(Some(Duration::from_secs(3)))
            .ok()?;
        let _ = stream.write_all(&bytes);
        Some(stream)
    })
}

/// Whether the daemon closed `stream` (rather than answering).
fn closed_without_answer(mut stream: UnixStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 1];
    matches!(stream.read(&mut buf), Ok(0) | Err(_))
}

/// A frame of `len` bytes announced, whose payload starts with `start`.
fn frame(len: usize, start: &[u8], send: usize) -> Vec<u8> {
    let mut out = u32::try_from(len).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(start);
    out.resize(4 + send.min(len), 0);
    out
}

#[test]
fn a_hostile_control_client_costs_bounded_memory_and_others_are_served() {
    let a = TestHome::with_daemon();
    a.init();
    let pid = u32::try_from(status(&a)["daemon_pid"].as_u64().unwrap()).unwrap();
    let path = socket(&a);
    let rss_before = memory_kib(pid, "VmRSS:");

    // A request-sized frame that is one CBOR array of zeros where a request belongs.
    let mut zeros = vec![
        0xa2,
        0x61,
        b'v',
        control::VERSION as u8,
        0x64,
        b'b',
        b'o',
        b'd',
        b'y',
        0x9a,
    ];
    let count = control::MAX_REQUEST - 14;
    zeros.extend_from_slice(&u32::try_from(count).unwrap().to_be_bytes());
    let array = frame(control::MAX_REQUEST, &zeros, control::MAX_REQUEST);
    // Deep nesting.
    let mut deep = vec![
        0xa2,
        0x61,
        b'v',
        control::VERSION as u8,
        0x64,
        b'b',
        b'o',
        b'd',
        b'y',
    ];
    deep.extend(std::iter::repeat_n(0x81u8, 60_000));
    deep.push(0);
    let nested = frame(deep.len(), &deep, deep.len());
    // An import-sized frame whose document is an array, not a byte string.
    let prefix = control::import_prefix();
    let mut import_array = prefix.clone();
    import_array.push(0x9a);
    import_array.extend_from_slice(&(48u32 << 20).to_be_bytes());
    let import_array = frame(prefix.len() + 5 + (48 << 20), &import_array, 1 << 20);
    for bytes in [array, nested, import_array] {
        let stream = send_and_hold(&path, bytes).join().unwrap().unwrap();
        assert!(
            closed_without_answer(stream),
            "a hostile frame was answered"
        );
    }
    // A whole import of 48 MiB of garbage: refused with an answer, at the cost of its bytes.
    let mut garbage = prefix.clone();
    garbage.push(0x5a);
    garbage.extend_from_slice(&(48u32 << 20).to_be_bytes());
    garbage.resize(garbage.len() + (48 << 20), 0xee);
    let mut stream = UnixStream::connect(&path).unwrap();
    let mut whole = u32::try_from(garbage.len()).unwrap().to_be_bytes().to_vec();
    whole.extend_from_slice(&garbage);
    stream.write_all(&whole).unwrap();
    drop(whole);
    drop(garbage);
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut answer =
        vec![0u8; handoff_protocol::frame::decode_len(len, control::MAX_RESPONSE).unwrap()];
    stream.read_exact(&mut answer).unwrap();
    assert!(matches!(
        control::decode::<control::Response>(&answer),
        Ok(control::Response::Error { .. })
    ));

    // Many half-sent large frames at once: imports announcing nearly the largest document,
    // request-sized frames, and small ones, each stalled part way.
    let mut senders = Vec::new();
    for _ in 0..20 {
        let mut start = prefix.clone();
        start.push(0x5a);
        start.extend_from_slice(
            &u32::try_from(control::MAX_IMPORT - 1024 - prefix.len() - 5)
                .unwrap()
                .to_be_bytes(),
        );
        let import = frame(control::MAX_IMPORT - 1024, &start, 2 * 1024 * 1024);
        senders.push(send_and_hold(&path, import));
    }
    for _ in 0..20 {
        senders.push(send_and_hold(
            &path,
            frame(control::MAX_REQUEST, &[0xa2], 512 * 1024),
        ));
    }
    for _ in 0..20 {
        senders.push(send_and_hold(&path, frame(60 * 1024, &[0xa2], 30 * 1024)));
    }
    // Meanwhile the user is served.
    let asked = Instant::now();
    a.ok(&["status"]);
    a.ok(&["token", "list"]);
    assert!(asked.elapsed() < Duration::from_secs(30));
    let held: Vec<UnixStream> = senders
        .into_iter()
        .filter_map(|s| s.join().ok().flatten())
        .collect();
    a.ok(&["status"]);
    let peak = memory_kib(pid, "VmHWM:");
    let rise_mib = peak.saturating_sub(rss_before) / 1024;
    // The budget for frames over 64 KiB (the largest import and 16 MiB), the small frames of
    // every connection, and room for the allocator.
    let bound_mib = 116;
    assert!(
        rise_mib <= bound_mib,
        "the daemon's memory rose by {rise_mib} MiB under a hostile client (bound {bound_mib})"
    );
    eprintln!("hostile control client: peak RSS rose by {rise_mib} MiB (bound {bound_mib})");
    drop(held);
    a.ok(&["token", "list"]);
}
