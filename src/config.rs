//! `$HANDOFF_HOME/config.toml`: local settings that are not synced.
//!
//! ```toml
//! [env]
//! allow = ["EDITOR", "GIT_*"]        # more parent variables a spawned agent may see
//!
//! [agents.aider]                     # a custom agent
//! command = "aider"
//! services = { anthropic = ["ANTHROPIC_API_KEY"], openai = ["OPENAI_API_KEY"] }
//!
//! [net]
//! listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]
//! mdns = true                        # find members (and pairing offers) on the LAN
//! peers = ["/dns4/desktop.example/tcp/4001"]   # always dial these
//! dial_known = true                  # redial where members were last seen
//!
//! [spawn]
//! request_window = 300               # seconds a member's spawn request may be old (at most
//!                                    # 300 on a direct stream, 900 through a relay)
//! ```
//! A missing file is the empty configuration; a malformed one is an error naming the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The parsed configuration.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub env: EnvConfig,
    #[serde(default)]
    pub agents: BTreeMap<String, CustomAgent>,
    #[serde(default)]
    pub net: NetConfig,
    #[serde(default)]
    pub spawn: SpawnConfig,
}

/// How this device answers members' spawn requests (its policy is `spawn-policy`, signed).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnConfig {
    /// How old a request may be, in seconds; it only narrows the protocol's windows (a
    /// request sent long before, held back by a relay, is refused sooner).
    pub request_window: Option<u32>,
}

/// The mesh's settings; command-line flags override them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Listen multiaddrs (default: every interface, a port the system picks, TCP and QUIC).
    pub listen: Option<Vec<String>>,
    #[serde(default = "yes")]
    pub mdns: bool,
    #[serde(default)]
    pub peers: Vec<String>,
    #[serde(default = "yes")]
    pub dial_known: bool,
}

fn yes() -> bool {
    true
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen: None,
            mdns: true,
            peers: Vec::new(),
            dial_known: true,
        }
    }
}

impl NetConfig {
    /// The mesh configuration, with `listen` and `no_mdns` from the command line on top.
    pub fn mesh(
        &self,
        listen: &[crate::net::Multiaddr],
        no_mdns: bool,
    ) -> Result<crate::net::MeshConfig, crate::net::NetError> {
        let parse = |list: &[String]| {
            list.iter()
                .map(|a| crate::net::parse_addr(a))
                .collect::<Result<Vec<_>, _>>()
        };
        let listen = if !listen.is_empty() {
            listen.to_vec()
        } else if let Some(configured) = &self.listen {
            parse(configured)?
        } else {
            crate::net::default_listen()
        };
        Ok(crate::net::MeshConfig {
            listen,
            mdns: self.mdns && !no_mdns,
            peers: parse(&self.peers)?,
            dial_known: self.dial_known,
            ..crate::net::MeshConfig::default()
        })
    }
}

/// Extra environment a spawned agent may inherit.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvConfig {
    /// Variable names, or prefixes ending in `*`.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// An agent not built in: its command and, per service, the variables its credential goes in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomAgent {
    pub command: String,
    pub services: BTreeMap<String, Vec<String>>,
}

impl Config {
    /// Reads `config.toml` in `home`; a missing file is the default.
    pub fn load(home: &Path) -> Result<Self, ConfigError> {
        let path = home.join("config.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            message: e.message().to_string(),
            path,
        })
    }
}
