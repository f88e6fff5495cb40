//! Which agents handoff can start, which services each accepts, and how each service's
//! credential reaches it.
//!
//! | agent | service | delivered as |
//! | --- | --- | --- |
//! | claude | anthropic / claude-subscription | `ANTHROPIC_API_KEY` / setup-token: `CLAUDE_CODE_OAUTH_TOKEN`, OAuth login: private `CLAUDE_CONFIG_DIR` with `.credentials.json` |
//! | codex | openai / openai-codex | `OPENAI_API_KEY` / private `CODEX_HOME` with `auth.json` |
//! | gemini | gemini (key / OAuth) | `GEMINI_API_KEY` + `GOOGLE_API_KEY` / private `GEMINI_CLI_HOME` with `.gemini/oauth_creds.json` |
//!
//! A private directory mirrors the user's own (`~/.codex`, `~/.claude` and `~/.claude.json`,
//! `~/.gemini`; see [`super::mirror`]): only the credential file is the session's.
//! | opencode | anthropic, openai, openai-codex | the same as above |
//!
//! Custom agents from `config.toml` take any service, as the variables they name.

use crate::config::Config;
use crate::doc::{Service, TokenKind, UnknownName};

use super::SpawnError;

/// How a credential reaches the child process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Delivery {
    /// In each of these environment variables.
    Env(Vec<String>),
    /// As `auth.json` in a private directory named by `CODEX_HOME`.
    CodexHome,
    /// As `.gemini/oauth_creds.json` under a private directory given as `GEMINI_CLI_HOME`,
    /// its `.gemini` mirroring the user's.
    GeminiHome,
    /// As `.credentials.json` in a private directory given as `CLAUDE_CONFIG_DIR`, mirroring
    /// the user's `~/.claude`.
    ClaudeConfigDir,
}

/// An agent handoff can start.
#[derive(Debug, Clone)]
pub struct Agent {
    pub name: String,
    /// The executable, looked up on `PATH`.
    pub command: String,
    /// Services in order of preference.
    pub accepts: Vec<Service>,
    custom: Option<Vec<(Service, Vec<String>)>>,
}

const BUILT_IN: &[(&str, &[Service])] = &[
    ("claude", &[Service::Anthropic, Service::ClaudeSubscription]),
    ("codex", &[Service::Openai, Service::OpenaiCodex]),
    ("gemini", &[Service::Gemini]),
    (
        "opencode",
        &[Service::Anthropic, Service::Openai, Service::OpenaiCodex],
    ),
];

fn env(names: &[&str]) -> Delivery {
    Delivery::Env(names.iter().map(|n| (*n).to_string()).collect())
}

impl Agent {
    /// Finds `name` among the built-in agents, then the custom ones in `config`.
    pub fn find(name: &str, config: &Config) -> Result<Self, SpawnError> {
        if let Some((_, accepts)) = BUILT_IN.iter().find(|(n, _)| *n == name) {
            return Ok(Self {
                name: name.to_string(),
                command: name.to_string(),
                accepts: accepts.to_vec(),
                custom: None,
            });
        }
        let Some(custom) = config.agents.get(name) else {
            let mut known: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
            known.extend(config.agents.keys().map(String::as_str));
            return Err(SpawnError::UnknownAgent {
                name: name.to_string(),
                known: known.join(", "),
            });
        };
        let mut services = Vec::new();
        for (service, vars) in &custom.services {
            let service: Service = service.parse().map_err(|e: UnknownName| {
                SpawnError::Config(format!(
                    "agent '{name}' names unknown service '{}' (known: {})",
                    e.name,
                    Service::names()
                ))
            })?;
            if vars.is_empty() || vars.iter().any(|v| !is_env_name(v)) {
                return Err(SpawnError::Config(format!(
                    "agent '{name}': service {service} needs one or more variable names"
                )));
            }
            services.push((service, vars.clone()));
        }
        Ok(Self {
            name: name.to_string(),
            command: custom.command.clone(),
            accepts: services.iter().map(|(s, _)| *s).collect(),
            custom: Some(services),
        })
    }

    /// The accepted services, for messages.
    pub fn accepted_names(&self) -> String {
        self.accepts
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How a credential of `service` and `kind` reaches this agent.
    pub fn delivery(&self, service: Service, kind: TokenKind) -> Option<Delivery> {
        if let Some(custom) = &self.custom {
            return custom
                .iter()
                .find(|(s, _)| *s == service)
                .map(|(_, vars)| Delivery::Env(vars.clone()));
        }
        if !self.accepts.contains(&service) {
            return None;
        }
        Some(match (service, kind) {
            (Service::Anthropic, _) => env(&["ANTHROPIC_API_KEY"]),
            (Service::ClaudeSubscription, TokenKind::OauthJson) => Delivery::ClaudeConfigDir,
            (Service::ClaudeSubscription, _) => env(&["CLAUDE_CODE_OAUTH_TOKEN"]),
            (Service::Openai, _) => env(&["OPENAI_API_KEY"]),
            (Service::OpenaiCodex, _) => Delivery::CodexHome,
            (Service::Gemini, TokenKind::OauthJson) => Delivery::GeminiHome,
            (Service::Gemini, _) => env(&["GEMINI_API_KEY", "GOOGLE_API_KEY"]),
        })
    }
}

/// A portable environment variable name.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_table() {
        let config = Config::default();
        let claude = Agent::find("claude", &config).unwrap();
        assert_eq!(
            claude.delivery(Service::ClaudeSubscription, TokenKind::SetupToken),
            Some(env(&["CLAUDE_CODE_OAUTH_TOKEN"]))
        );
        assert_eq!(claude.delivery(Service::Openai, TokenKind::ApiKey), None);
        let gemini = Agent::find("gemini", &config).unwrap();
        assert_eq!(
            gemini.delivery(Service::Gemini, TokenKind::OauthJson),
            Some(Delivery::GeminiHome)
        );
        assert_eq!(
            gemini.delivery(Service::Gemini, TokenKind::ApiKey),
            Some(env(&["GEMINI_API_KEY", "GOOGLE_API_KEY"]))
        );
        assert!(matches!(
            Agent::find("vim", &config),
            Err(SpawnError::UnknownAgent { .. })
        ));
    }

    #[test]
    fn custom_agents_come_from_config() {
        let config: Config = toml::from_str(
            "[agents.aider]\ncommand = \"aider\"\nservices = { openai = [\"OPENAI_API_KEY\", \"AIDER_OPENAI\"] }\n",
        )
        .unwrap();
        let aider = Agent::find("aider", &config).unwrap();
        assert_eq!(aider.accepts, vec![Service::Openai]);
        assert_eq!(
            aider.delivery(Service::Openai, TokenKind::ApiKey),
            Some(env(&["OPENAI_API_KEY", "AIDER_OPENAI"]))
        );
        let bad: Config =
            toml::from_str("[agents.x]\ncommand = \"x\"\nservices = { openai = [\"1BAD\"] }\n")
                .unwrap();
        assert!(matches!(Agent::find("x", &bad), Err(SpawnError::Config(_))));
    }
}
