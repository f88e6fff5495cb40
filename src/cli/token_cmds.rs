//! `token add|list|show|rm|default`.

use serde_json::json;

use super::{
    CliError, Context, TokenCommand, input, print_json, secret_json, when, write_stdout_line,
};
use crate::device::{Device, expose};
use crate::doc::{Service, Token, VaultState};

pub(super) fn run(ctx: &Context, cmd: TokenCommand) -> Result<(), CliError> {
    match cmd {
        TokenCommand::Add {
            service,
            label,
            default,
            from_file,
            replace,
        } => {
            let service: Service = service.parse().map_err(|()| {
                CliError::Usage(format!(
                    "unknown service '{service}'; known: {}",
                    Service::names()
                ))
            })?;
            crate::device::check_label(&label)?;
            // Read everything before taking the home, so a slow typist holds no lock.
            let secret = input::token(from_file.as_deref(), service.as_str())?;
            let passphrase = input::passphrase(ctx.passphrase_file.as_deref())?;
            let mut device = Device::open(ctx.home.clone())?;
            let key = device.unlock(&passphrase)?;
            let id = device.add_token(&key, service, &label, &secret, default, replace)?;
            if ctx.json {
                print_json(
                    &json!({"id": id.to_hex(), "service": service.as_str(), "label": label}),
                );
            } else {
                let verb = if replace { "Saved" } else { "Added" };
                println!("{verb} {service}/{label} ({}).", &id.to_hex()[..8]);
            }
        }
        TokenCommand::List => {
            let device = Device::open(ctx.home.clone())?;
            list(ctx, &device.state()?);
        }
        TokenCommand::Show { id, reveal } => {
            let passphrase = if reveal {
                Some(input::passphrase(ctx.passphrase_file.as_deref())?)
            } else {
                None
            };
            let device = Device::open(ctx.home.clone())?;
            let state = device.state()?;
            match passphrase {
                None => show(ctx, &state, device.find_token(&state, &id)?),
                Some(passphrase) => {
                    let key = device.unlock(&passphrase)?;
                    let (token, secret) = device.reveal(&key, &id)?;
                    let text = zeroize::Zeroizing::new(
                        String::from_utf8_lossy(expose(&secret)).into_owned(),
                    );
                    let line = if ctx.json {
                        let revealed = Revealed {
                            id: token.id.to_hex(),
                            service: token.service.as_str(),
                            label: &token.label,
                            secret: text.as_str(),
                        };
                        secret_json(&revealed, text.len())?
                    } else {
                        zeroize::Zeroizing::new(text.as_bytes().to_vec())
                    };
                    write_stdout_line(&line)
                        .map_err(|e| CliError::Internal(format!("cannot write to stdout: {e}")))?;
                }
            }
        }
        TokenCommand::Rm { id } => {
            let mut device = Device::open(ctx.home.clone())?;
            let token = device.remove_token(&id)?;
            if ctx.json {
                print_json(&json!({"removed": token.id.to_hex()}));
            } else {
                println!(
                    "Removed {}/{} ({}).",
                    token.service,
                    token.label,
                    &token.id.to_hex()[..8]
                );
                println!(
                    "Devices that had it may still know it: rotate it at the vendor if in doubt."
                );
            }
        }
        TokenCommand::Default { id } => {
            let mut device = Device::open(ctx.home.clone())?;
            let token = device.set_default(&id)?;
            if ctx.json {
                print_json(
                    &json!({"default": token.id.to_hex(), "service": token.service.as_str()}),
                );
            } else {
                println!(
                    "{}/{} is now the default for {}.",
                    token.service, token.label, token.service
                );
            }
        }
    }
    Ok(())
}

/// `token show --reveal --json` output.
#[derive(serde::Serialize)]
struct Revealed<'a> {
    id: String,
    service: &'a str,
    label: &'a str,
    secret: &'a str,
}

fn token_json(state: &VaultState, t: &Token) -> serde_json::Value {
    json!({
        "id": t.id.to_hex(),
        "service": t.service.as_str(),
        "label": t.label,
        "kind": t.kind.as_str(),
        "default": state.is_default(t),
        "conflict": t.conflicted,
        "created_at": t.created_at,
        "updated_at": t.updated_at,
    })
}

fn list(ctx: &Context, state: &VaultState) {
    let mut tokens: Vec<&Token> = state.live_tokens().collect();
    tokens.sort_by(|a, b| (a.service, &a.label).cmp(&(b.service, &b.label)));
    if ctx.json {
        print_json(&serde_json::Value::Array(
            tokens.iter().map(|t| token_json(state, t)).collect(),
        ));
        return;
    }
    if tokens.is_empty() {
        println!("No tokens yet. Add one with `handoff token add SERVICE`.");
        return;
    }
    println!(
        "{:<10} {:<20} {:<20} {:<12} {:<8} UPDATED",
        "ID", "SERVICE", "LABEL", "KIND", "DEFAULT"
    );
    for t in tokens {
        let label = if t.conflicted {
            format!("{} (conflict)", t.label)
        } else {
            t.label.clone()
        };
        println!(
            "{:<10} {:<20} {:<20} {:<12} {:<8} {}",
            &t.id.to_hex()[..8],
            t.service.as_str(),
            label,
            t.kind.as_str(),
            if state.is_default(t) { "*" } else { "" },
            when(t.updated_at)
        );
    }
}

fn show(ctx: &Context, state: &VaultState, t: &Token) {
    if ctx.json {
        print_json(&token_json(state, t));
        return;
    }
    println!("id       {}", t.id);
    println!("service  {}", t.service);
    println!("label    {}", t.label);
    println!("kind     {}", t.kind.as_str());
    println!(
        "default  {}",
        if state.is_default(t) { "yes" } else { "no" }
    );
    if t.conflicted {
        println!("conflict concurrent edits left several values; the newest is shown");
    }
    println!("created  {} by {}", when(t.created_at), t.created_by);
    println!("updated  {} by {}", when(t.updated_at), t.updated_by);
    println!("secret   (hidden; --reveal prints it)");
}
