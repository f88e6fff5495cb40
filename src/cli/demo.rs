//! `handoff demo`: the whole flow end to end on loopback, in temporary homes, with built-in
//! sample values and the real key-derivation parameters.
//!
//! A laptop creates a vault, stores a token and lists a blind relay (started here, on
//! loopback). Its mesh node offers pairing, and a desktop joins with the code (SPAKE2 + Noise,
//! the SAS shown on both sides). The two sync edits both ways. Then they are never online at
//! the same time: the desktop goes away, the laptop rotates the token and goes away too, and
//! the desktop, back, finds the new value waiting at the relay, which could read none of it.
//! The desktop starts an agent (a stand-in shell script) with the credential materialized in
//! the agent's environment only, and the agent proves it holds exactly the token by reporting
//! its hash; then a stand-in codex refreshes its OAuth login, which comes back to the vault as
//! the token's next version. A phone paired as `remote` (no key) then asks the laptop, whose
//! daemon now runs, for an agent session: the laptop's policy allows it and its stand-in claude
//! gets the token in its environment (`remote`: through the real binaries). Finally the laptop
//! is lost, and a third device regains the vault from the desktop's export and the recovery
//! code. The homes are removed afterwards.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

use super::{CliError, print_json};
use crate::device::{Device, NewDevice, PendingJoin, expose};
use crate::doc::{Role, Service};
use crate::home::Home;
use crate::net::{JoinRequest, LinkHints, Mesh, MeshConfig, OfferRequest, Owned, PairEvent};
use crate::spawn::{CaughtSignals, Delivery, allowed_env, materialize, run_foreground};
use crate::vault::{KdfParams, random_array};

mod remote;

/// Longest the demo waits for the mesh.
const WAIT: Duration = Duration::from_secs(30);

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn loopback() -> MeshConfig {
    MeshConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("a valid multiaddr")],
        mdns: false,
        peers: Vec::new(),
        dial_known: true,
        redial_every: Duration::from_secs(3600),
        relay_grace: Duration::from_millis(200),
        relay_retry: Duration::from_millis(500),
    }
}

fn failed(what: &str) -> CliError {
    CliError::Internal(format!("the demo failed: {what}"))
}

/// Waits until `check` holds on `host`, re-checking whenever `mesh` applies a peer's changes.
async fn until(
    mesh: &Mesh,
    host: &Owned,
    what: &str,
    check: impl Fn(&mut Device, &crate::device::Unlocked) -> bool,
) -> Result<(), CliError> {
    let mut applied = mesh.applied();
    tokio::time::timeout(WAIT, async {
        loop {
            if host.with(|d, k| k.is_some_and(|k| check(d, k))) {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), applied.changed()).await;
        }
    })
    .await
    .map_err(|_| failed(what))
}

fn reveals(device: &Device, key: &crate::device::Unlocked, query: &str, want: &str) -> bool {
    device
        .reveal(key, query)
        .is_ok_and(|(_, s)| expose(&s) == want.as_bytes())
}

pub(super) fn run(json: bool) -> Result<(), CliError> {
    let root = std::env::temp_dir().join(format!("handoff-demo-{}", hex(&random_array::<8>()?)));
    std::fs::create_dir(&root).map_err(|source| CliError::File {
        what: "cannot create",
        path: root.clone(),
        source,
    })?;
    let dir = TempDir(root);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Internal(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(flow(&dir.0, json))
}

/// Prints one step with the time since `started` (nothing with `--json`).
fn step_line(started: Instant, json: bool) -> impl Fn(&str) + Send + 'static {
    move |text: &str| {
        if !json {
            say!("[{:>6.2}s] {text}", started.elapsed().as_secs_f64());
        }
    }
}

async fn flow(root: &std::path::Path, json: bool) -> Result<(), CliError> {
    let started = Instant::now();
    let step = step_line(started, json);
    let passphrase = hex(&random_array::<16>()?);
    let work_key = format!("sk-ant-demo-{}", hex(&random_array::<12>()?));
    let new = |name| NewDevice {
        name,
        passphrase: passphrase.as_bytes(),
        kdf: KdfParams::DEFAULT,
    };

    // The laptop: a new vault, a token, a mesh node on loopback.
    let (laptop, code) = Device::init(Home::at(root.join("laptop")), &new("laptop"), "demo")?;
    step(&format!(
        "laptop: created vault 'demo' as {}",
        laptop.device_id()
    ));
    let key = laptop.unlock(passphrase.as_bytes())?;
    step("laptop: unlocked the vault key (Argon2id, 64 MiB, t=3, p=4)");
    let offer_key = key.duplicate();
    let laptop = Owned::new(laptop, Some(key));
    laptop.with(|d, k| {
        let k = k.ok_or_else(|| failed("the laptop is locked"))?;
        d.add_token(
            k,
            Service::Anthropic,
            "work",
            work_key.as_bytes(),
            true,
            false,
        )?;
        Ok::<_, CliError>(())
    })?;
    step("laptop: stored anthropic/work, sealed with XChaCha20-Poly1305 under the epoch key");
    let relay_token = hex(&random_array::<16>()?);
    let mut relay_config = handoff_relay::RelayConfig::new(
        root.join("relay.db"),
        handoff_relay::Access::Token(zeroize::Zeroizing::new(relay_token.as_bytes().to_vec())),
    );
    relay_config.listen = vec![crate::net::parse_addr("/ip4/127.0.0.1/tcp/0")?];
    let relay = handoff_relay::Relay::start(relay_config)
        .await
        .map_err(|e| failed(&e.to_string()))?;
    let relay_addr = relay.addrs()[0].clone();
    laptop.with(|d, _| {
        d.add_relay(
            std::slice::from_ref(&relay_addr),
            Some(relay_token.as_bytes()),
        )
    })?;
    step(&format!(
        "relay: blind relay on {relay_addr}; the laptop lists it for every member"
    ));
    let laptop_mesh = Mesh::start(laptop.clone(), loopback()).await?;
    let laptop_addr = laptop_mesh.view().listen[0].clone();
    step(&format!("laptop: mesh node listening on {laptop_addr}"));

    // Pairing: the laptop offers, the desktop joins with the code.
    let mut ticket = laptop_mesh
        .offer(OfferRequest {
            role: Role::Member,
            name: None,
            long_code: false,
            auto_confirm: true,
            lifetime: crate::net::OFFER_LIFETIME,
            key: offer_key,
        })
        .await?;
    step(&format!("laptop: pairing code {}", ticket.code.text()));
    let pending = PendingJoin::prepare(Home::at(root.join("desktop")), &new("desktop"))?;
    let desktop_sas = Arc::new(std::sync::Mutex::new(String::new()));
    let seen = desktop_sas.clone();
    let desktop = crate::net::join(
        pending,
        JoinRequest {
            code: ticket.code.clone(),
            hints: LinkHints {
                peer: None,
                addrs: vec![laptop_addr.clone()],
            },
            mdns: false,
            confirm: Box::new(move |sas| {
                if let Ok(mut s) = seen.lock() {
                    *s = sas.to_string();
                }
                true
            }),
            progress: Box::new(|_| {}),
        },
    )
    .await?;
    let laptop_sas = match ticket.events.recv().await {
        Some(PairEvent::Sas { sas }) => sas,
        _ => return Err(failed("the laptop saw no pairing")),
    };
    if !matches!(ticket.events.recv().await, Some(PairEvent::Paired { .. })) {
        return Err(failed("the laptop did not admit the desktop"));
    }
    let desktop_sas = desktop_sas.lock().map(|s| s.clone()).unwrap_or_default();
    let sas_match = desktop_sas == laptop_sas;
    step(&format!(
        "desktop: joined with the code (SPAKE2, then Noise XXpsk3); both screens show '{laptop_sas}': {sas_match}"
    ));
    laptop_mesh.changed();
    let key = desktop.unlock(passphrase.as_bytes())?;
    let desktop = Owned::new(desktop, Some(key));
    let desktop_mesh = Mesh::start(desktop.clone(), loopback()).await?;
    desktop_mesh.dial(laptop_addr.clone()).await?;

    // Sync both ways.
    until(
        &desktop_mesh,
        &desktop,
        "the desktop never read the laptop's token",
        |d, k| reveals(d, k, "anthropic/work", &work_key),
    )
    .await?;
    step("desktop: reads anthropic/work (its own wrap of the epoch key came with the pairing)");
    let personal = format!("sk-proj-demo-{}", hex(&random_array::<12>()?));
    let personal_id = desktop.with(|d, k| {
        let k = k.ok_or_else(|| failed("the desktop is locked"))?;
        let id = d.add_token(
            k,
            Service::Openai,
            "personal",
            personal.as_bytes(),
            true,
            false,
        )?;
        Ok::<_, CliError>(id.to_hex())
    })?;
    desktop_mesh.changed();
    until(
        &laptop_mesh,
        &laptop,
        "the laptop never read the desktop's token",
        |d, k| reveals(d, k, "openai/personal", &personal),
    )
    .await?;
    step("laptop: reads openai/personal, added on the desktop a moment ago");

    // Never online together: the desktop leaves, the laptop rotates the key and leaves, the
    // desktop comes back to find it at the relay.
    desktop_mesh.stop().await;
    step("desktop: offline");
    // Apart, both rename one token: a conflict for the person to settle when they meet.
    desktop.with(|d, _| d.rename_token("openai/personal", "desktop-name"))?;
    let rotated = format!("sk-ant-demo-rotated-{}", hex(&random_array::<12>()?));
    laptop.with(|d, k| {
        d.rename_token("openai/personal", "laptop-name")?;
        let k = k.ok_or_else(|| failed("the laptop is locked"))?;
        d.add_token(
            k,
            Service::Anthropic,
            "work",
            rotated.as_bytes(),
            true,
            true,
        )?;
        Ok::<_, CliError>(())
    })?;
    laptop_mesh.changed();
    tokio::time::timeout(WAIT, async {
        while laptop_mesh.stats().envelopes_deposited == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .map_err(|_| failed("the laptop left nothing at the relay"))?;
    step("laptop: rotated anthropic/work and left the change at the relay, sealed to the desktop");
    laptop_mesh.stop().await;
    step("laptop: offline");
    let desktop_mesh = Mesh::start(desktop.clone(), loopback()).await?;
    until(
        &desktop_mesh,
        &desktop,
        "the desktop never took its envelope",
        |d, k| reveals(d, k, "anthropic/work", &rotated),
    )
    .await?;
    step("desktop: back; drained its mailbox at the relay and reads the rotated key");
    let (versions, settled) = desktop.with(|d, _| {
        // By id: which label shows until it is settled depends on the two writes' times.
        let (_, versions) = d.token_versions(&personal_id)?;
        let (token, _) = d.resolve_token(&personal_id, "laptop")?;
        Ok::<_, CliError>((versions.len(), token))
    })?;
    let resolved = versions == 2 && !settled.conflicted && settled.label == "laptop-name";
    step(&format!(
        "desktop: openai/personal was renamed on both while apart; `token resolve` listed {versions} versions and kept the laptop's: {}/{}, conflict: {}",
        settled.service, settled.label, settled.conflicted
    ));
    let relay_db = std::fs::read(root.join("relay.db")).unwrap_or_default();
    let relay_wal = std::fs::read(root.join("relay.db-wal")).unwrap_or_default();
    let relay_saw = [&relay_db, &relay_wal].iter().any(|bytes| {
        [rotated.as_bytes(), work_key.as_bytes()]
            .iter()
            .any(|s| bytes.windows(s.len()).any(|w| w == *s))
    });
    step(&format!(
        "relay: plaintext token in its database: {relay_saw}"
    ));

    // A spawn on the desktop: the credential exists only in the agent's environment.
    let report = root.join("agent-report");
    let matched = spawn_demo_agent(&desktop, &report, &rotated)?;
    step(&format!(
        "desktop: started an agent with ANTHROPIC_API_KEY in its environment only; it holds exactly the token: {matched}"
    ));

    // A Codex login: the agent refreshes it, and the refresh comes back to the vault.
    let refreshed = refresh_demo(&desktop, root)?;
    step(&format!(
        "desktop: a stand-in codex refreshed its login; the refreshed bundle is the token's next version and its lease is released: {refreshed}"
    ));

    let leaked = [root.join("laptop"), root.join("desktop")]
        .iter()
        .flat_map(|home| std::fs::read_dir(home).into_iter().flatten().flatten())
        .filter_map(|entry| std::fs::read(entry.path()).ok())
        .any(|bytes| {
            [work_key.as_bytes(), personal.as_bytes(), rotated.as_bytes()]
                .iter()
                .any(|s| bytes.windows(s.len()).any(|w| w == *s))
        });
    step(&format!(
        "both: plaintext token in any database, WAL or file of either home: {leaked}"
    ));

    // Remote spawn: a phone asks the laptop (its daemon, the real binary) for a session.
    let export = desktop.with(|d, _| d.export());
    desktop_mesh.stop().await;
    drop(laptop_mesh);
    drop(laptop);
    let laptop_home = root.join("laptop");
    let remote = {
        let root = root.to_path_buf();
        let (passphrase, token) = (passphrase.clone(), rotated.clone());
        let step = step_line(started, json);
        tokio::task::spawn_blocking(move || {
            remote::remote_spawn(&root, &laptop_home, &passphrase, &token, &step)
        })
        .await
        .map_err(|_| failed("the remote spawn step stopped"))??
    };

    // Recovery: the laptop is lost; a tablet regains the vault from the desktop's export.
    relay.stop().await;
    std::fs::remove_dir_all(root.join("laptop")).ok();
    step("laptop: lost (its home is deleted)");
    let tablet = Device::recover(
        Home::at(root.join("tablet")),
        &new("tablet"),
        &export,
        &code,
    )?;
    let key = tablet.unlock(passphrase.as_bytes())?;
    let recovered = reveals(&tablet, &key, "anthropic/work", &rotated)
        && reveals(&tablet, &key, "openai/laptop-name", &personal);
    step(&format!(
        "tablet: recovered the vault from the desktop's export and the recovery code; reads both tokens: {recovered}"
    ));

    let remote_ok = remote.started && remote.listed && remote.audited && remote.phone_clean;
    let ok = sas_match
        && matched
        && refreshed
        && resolved
        && !leaked
        && !relay_saw
        && recovered
        && remote_ok;
    if json {
        print_json(&json!({
            "ok": ok,
            "paired": sas_match,
            "through_relay": true,
            "relay_saw_plaintext": relay_saw,
            "spawn_credential": matched,
            "oauth_write_back": refreshed,
            "conflict_resolved": resolved,
            "remote_spawn": remote.started,
            "remote_sessions_listed": remote.listed,
            "remote_spawn_audited": remote.audited,
            "remote_phone_holds_no_token": remote.phone_clean,
            "plaintext_on_disk": leaked,
            "recovered": recovered,
        }));
    } else {
        say!("{}", if ok { "demo ok" } else { "demo FAILED" });
    }
    if ok {
        Ok(())
    } else {
        Err(failed("one of its checks did not hold"))
    }
}

/// A Codex login on the desktop, spawned the way `handoff spawn codex` would (its lease taken,
/// `auth.json` in a private CODEX_HOME): the stand-in agent refreshes it as codex does (a new
/// file renamed over the old), and the refreshed bundle comes back as the token's next version,
/// with the lease released.
fn refresh_demo(desktop: &Owned, root: &std::path::Path) -> Result<bool, CliError> {
    use crate::ops::{Around, Op, Outcome};
    let given = r#"{"tokens":{"access_token":"demo-access-1","refresh_token":"demo-refresh-1","account_id":"demo"}}"#;
    let refreshed = r#"{"tokens":{"access_token":"demo-access-2","refresh_token":"demo-refresh-2","account_id":"demo"}}"#;
    let outcome = desktop.with(|d, k| {
        let k = k.ok_or_else(|| failed("the desktop is locked"))?;
        d.add_token(
            k,
            Service::OpenaiCodex,
            "login",
            given.as_bytes(),
            false,
            false,
        )?;
        let op = Op::Credential {
            agent: "codex".into(),
            service: Some(Service::OpenaiCodex),
            profile: Some("login".into()),
            session: "demo0001".into(),
            take: false,
        };
        Ok::<_, CliError>(crate::ops::apply(d, Some(k), op, &Around::default())?)
    })?;
    let Outcome::Credential {
        delivery,
        secret,
        ticket,
        ..
    } = outcome
    else {
        return Err(failed("the desktop gave no credential"));
    };
    let home = desktop.with(|d, _| d.home().root().to_path_buf());
    // The user's own ~/.codex of this demo, not yours.
    let user = crate::spawn::UserDirs {
        home: Some(root.join("user")),
        ..crate::spawn::UserDirs::default()
    };
    let signals = CaughtSignals::catch()?;
    let credential = materialize(&delivery, &secret, &user, ticket.as_ref())?;
    drop(secret);
    let script = format!(
        "printf '%s' '{refreshed}' > \"$CODEX_HOME/auth.json.tmp\" && mv \"$CODEX_HOME/auth.json.tmp\" \"$CODEX_HOME/auth.json\""
    );
    let ended = run_foreground(
        signals,
        &home,
        std::path::Path::new("/bin/sh"),
        &["-c".into(), script.into()],
        root,
        allowed_env(std::env::vars_os(), &[]),
        credential,
    )?;
    desktop.with(|d, k| {
        let k = k.ok_or_else(|| failed("the desktop is locked"))?;
        d.take_write_backs(k);
        let (token, secret) = d.reveal(k, "openai-codex/login")?;
        let released = token
            .lease
            .is_none_or(|l| !l.live(crate::entropy::unix_now()));
        Ok(ended.code == 0 && expose(&secret) == refreshed.as_bytes() && released)
    })
}

/// Starts a stand-in agent (a shell) on the desktop the way `handoff spawn claude` would:
/// empty environment plus the allowlist plus the credential. The agent writes the SHA-256 of
/// the key it received to `report`; the demo compares it with the token's.
fn spawn_demo_agent(
    desktop: &Owned,
    report: &std::path::Path,
    expected: &str,
) -> Result<bool, CliError> {
    let secret = desktop.with(|d, k| {
        let k = k.ok_or_else(|| failed("the desktop is locked"))?;
        let (_, secret) = d.reveal(k, "anthropic/work")?;
        Ok::<_, CliError>(zeroize::Zeroizing::new(expose(&secret).to_vec()))
    })?;
    let home = desktop.with(|d, _| Ok::<_, CliError>(d.home().root().to_path_buf()))?;
    let signals = CaughtSignals::catch()?;
    let credential = materialize(
        &Delivery::Env(vec!["ANTHROPIC_API_KEY".into()]),
        &secret,
        &crate::spawn::UserDirs::default(),
        None,
    )?;
    drop(secret);
    let script = format!(
        "printf '%s' \"$ANTHROPIC_API_KEY\" | sha256sum | cut -d' ' -f1 > '{}'",
        report.display()
    );
    let dir = report.parent().unwrap_or(std::path::Path::new("/"));
    let code = run_foreground(
        signals,
        &home,
        std::path::Path::new("/bin/sh"),
        &["-c".into(), script.into()],
        dir,
        allowed_env(std::env::vars_os(), &[]),
        credential,
    )?;
    let reported = std::fs::read_to_string(report).unwrap_or_default();
    Ok(code.code == 0 && reported.trim() == hex(&Sha256::digest(expected.as_bytes())))
}
