//! `handoff-relay serve`: parse the command line, run the relay until SIGTERM or SIGINT, map
//! failures to one line and an exit code.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use handoff_relay::{Access, Limits, Relay, RelayConfig};

/// handoff-relay: keeps sealed envelopes for handoff devices that are offline; reads none.
#[derive(Debug, Parser)]
#[command(name = "handoff-relay", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AccessMode {
    /// Clients present the shared token from --token-file.
    Token,
    /// Only the PeerIds given with --allow.
    Allowlist,
    /// Anyone who can reach it.
    Open,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay.
    Serve {
        /// Listen on this multiaddr (repeatable; default all interfaces, any port, TCP and QUIC).
        #[arg(long, value_name = "MULTIADDR")]
        listen: Vec<String>,
        /// The database (envelopes and the relay's identity key).
        #[arg(long, value_name = "PATH", default_value = "handoff-relay.db")]
        db: PathBuf,
        #[arg(long, value_enum, default_value = "token")]
        access: AccessMode,
        /// The access token's file (first line), for --access token.
        #[arg(long, value_name = "F")]
        token_file: Option<PathBuf>,
        /// A PeerId allowed to use the relay, for --access allowlist (repeatable).
        #[arg(long = "allow", value_name = "PEERID")]
        allow: Vec<String>,
        /// How long an envelope waits for its recipient (e.g. 14d, 36h).
        #[arg(long, value_name = "DURATION", default_value = "14d")]
        ttl: String,
        /// Serve Prometheus text metrics on this address (e.g. 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Envelopes one mailbox may hold.
        #[arg(long, default_value_t = Limits::default().mailbox_envelopes)]
        max_mailbox_envelopes: u64,
        /// Bytes one mailbox may hold (each envelope counts 256 bytes besides its body).
        #[arg(long, default_value_t = Limits::default().mailbox_bytes)]
        max_mailbox_bytes: u64,
        /// Bytes the whole relay may hold (each envelope counts 256 bytes besides its body).
        #[arg(long, default_value_t = Limits::default().total_bytes)]
        max_total_bytes: u64,
        /// Sustained deposits per second per client.
        #[arg(long, default_value_t = Limits::default().deposits_per_second)]
        rate: f64,
        /// Deposits a client may make in a burst.
        #[arg(long, default_value_t = Limits::default().deposit_burst)]
        burst: f64,
        /// Connections open at once.
        #[arg(long, default_value_t = Limits::default().max_connections)]
        max_connections: u32,
        /// Incoming connections still in their handshake at once (the rest are refused
        /// before any handshake work).
        #[arg(long, default_value_t = Limits::default().max_pending)]
        max_pending: u32,
    },
    #[command(flatten)]
    Reference(handoff_relay::reference::ReferenceCommand),
}

fn main() -> ExitCode {
    // Everything the relay writes is private to its user.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let level = match std::env::var("HANDOFF_RELAY_LOG").as_deref() {
        Ok("debug") => tracing::Level::DEBUG,
        Ok("warn") => tracing::Level::WARN,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(level)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!(
                "error: {}",
                message.split_whitespace().collect::<Vec<_>>().join(" ")
            );
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    use handoff_relay::reference::{self, Section};
    let command = match cli.command {
        Command::Reference(what) => {
            return Ok(reference::run(Cli::command(), Section::Admin, what)?);
        }
        serve => serve,
    };
    let Command::Serve {
        listen,
        db,
        access,
        token_file,
        allow,
        ttl,
        metrics,
        max_mailbox_envelopes,
        max_mailbox_bytes,
        max_total_bytes,
        rate,
        burst,
        max_connections,
        max_pending,
    } = command
    else {
        unreachable!("every other command returned above");
    };
    let access = match access {
        AccessMode::Token => {
            let path = token_file.context("--access token needs --token-file F")?;
            let text = zeroize::Zeroizing::new(
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
            );
            let end = text.iter().position(|&b| b == b'\n').unwrap_or(text.len());
            let token = zeroize::Zeroizing::new(text[..end].trim_ascii().to_vec());
            if token.is_empty() || token.len() > handoff_protocol::relay::MAX_TOKEN {
                bail!(
                    "the access token must be 1 to 255 bytes on the first line of {}",
                    path.display()
                );
            }
            Access::Token(token)
        }
        AccessMode::Allowlist => {
            let peers = allow
                .iter()
                .map(|p| p.parse().with_context(|| format!("'{p}' is not a PeerId")))
                .collect::<anyhow::Result<HashSet<_>>>()?;
            if peers.is_empty() {
                bail!("--access allowlist needs at least one --allow PEERID");
            }
            Access::Allowlist(peers)
        }
        AccessMode::Open => Access::Open,
    };
    let mut config = RelayConfig::new(db, access);
    if !listen.is_empty() {
        config.listen = listen
            .iter()
            .map(|a| {
                a.parse()
                    .with_context(|| format!("'{a}' is not a multiaddr"))
            })
            .collect::<anyhow::Result<_>>()?;
    }
    config.ttl =
        humantime::parse_duration(&ttl).with_context(|| format!("'{ttl}' is not a duration"))?;
    config.metrics = metrics;
    config.limits = Limits {
        mailbox_envelopes: max_mailbox_envelopes,
        mailbox_bytes: max_mailbox_bytes,
        total_bytes: max_total_bytes,
        deposits_per_second: rate,
        deposit_burst: burst,
        max_connections,
        max_pending,
        ..Limits::default()
    };
    let files = handoff_relay::descriptors::raise_open_files_limit();
    tracing::debug!(?files, "open files limit");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let relay = Relay::start(config).await?;
        for addr in relay.addrs() {
            println!("listening on {addr}");
        }
        if let Some(addr) = relay.metrics_addr() {
            println!("metrics on http://{addr}/metrics");
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch signals")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        relay.stop().await;
        Ok(())
    })
}
