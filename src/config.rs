//! `$HANDOFF_HOME/config.toml`: local settings that are not synced.
//!
//! ```toml
//! [env]
//! allow = ["EDITOR", "GIT_*"]        # more parent variables a spawned agent may see
//!
//! [agents.aider]                     # a custom agent
//! command = "aider"
//! services = { anthropic = ["ANTHROPIC_API_KEY"], openai = ["OPENAI_API_KEY"] }
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
