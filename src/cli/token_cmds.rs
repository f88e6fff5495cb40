//! `token add|list|show|rm|default|rename`.

use serde_json::json;

use super::access::run_op;
use super::{
    CliError, Context, TokenCommand, input, print_json, secret_json, when, write_stdout_line,
};
use crate::doc::Service;
use crate::doc::UnknownName;
use crate::ops::views::TokenView;
use crate::ops::{Op, Outcome};

pub(super) fn run(ctx: &Context, cmd: TokenCommand) -> Result<(), CliError> {
    match cmd {
        TokenCommand::Add {
            service,
            label,
            default,
            from_file,
            replace,
        } => {
            let service: Service = service
                .parse()
                .map_err(|e: UnknownName| CliError::Usage(e.to_string()))?;
            crate::device::check_label(&label)?;
            // Read the token before taking the home, so a slow typist holds no lock.
            let secret = input::token(from_file.as_deref(), service.as_str())?;
            let add = Op::AddToken {
                service,
                label,
                secret,
                default,
                replace,
            };
            let token = run_op!(ctx, add, Outcome::Token(token) => token);
            if ctx.json {
                print_json(
                    &json!({"id": token.id, "service": token.service, "label": token.label}),
                );
            } else {
                let verb = if replace { "Saved" } else { "Added" };
                say!(
                    "{verb} {}/{} ({}).",
                    token.service,
                    token.label,
                    &token.id[..8]
                );
            }
        }
        TokenCommand::List => list(
            ctx,
            &run_op!(ctx, Op::ListTokens, Outcome::Tokens(tokens) => tokens),
        ),
        TokenCommand::Show { id, reveal: false } => show(
            ctx,
            &run_op!(ctx, Op::ShowToken { query: id }, Outcome::Token(token) => token),
        ),
        TokenCommand::Show { id, reveal: true } => {
            let (token, secret) = run_op!(
                ctx,
                Op::Reveal { query: id },
                Outcome::Secret { token, secret } => (token, secret)
            );
            let text = zeroize::Zeroizing::new(String::from_utf8_lossy(&secret).into_owned());
            let line = if ctx.json {
                let revealed = Revealed {
                    id: &token.id,
                    service: &token.service,
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
        TokenCommand::Rm { id } => {
            let token = run_op!(ctx, Op::RemoveToken { query: id }, Outcome::Token(t) => t);
            if ctx.json {
                print_json(&json!({"removed": token.id}));
            } else {
                say!(
                    "Removed {}/{} ({}).",
                    token.service,
                    token.label,
                    &token.id[..8]
                );
                say!("Devices that had it may still know it: rotate it at the vendor if in doubt.");
            }
        }
        TokenCommand::Default { id } => {
            let token = run_op!(ctx, Op::SetDefault { query: id }, Outcome::Token(t) => t);
            if ctx.json {
                print_json(&json!({"default": token.id, "service": token.service}));
            } else {
                say!(
                    "{}/{} is now the default for {}.",
                    token.service,
                    token.label,
                    token.service
                );
            }
        }
        TokenCommand::Rename { id, label } => {
            let was = id.clone();
            let rename = Op::RenameToken { query: id, label };
            let token = run_op!(ctx, rename, Outcome::Token(t) => t);
            if ctx.json {
                print_json(
                    &json!({"id": token.id, "service": token.service, "label": token.label}),
                );
            } else {
                say!(
                    "Renamed {was} to {}/{} ({}).",
                    token.service,
                    token.label,
                    &token.id[..8]
                );
            }
        }
    }
    Ok(())
}

/// `token show --reveal --json` output.
#[derive(serde::Serialize)]
struct Revealed<'a> {
    id: &'a str,
    service: &'a str,
    label: &'a str,
    secret: &'a str,
}

fn token_json(t: &TokenView) -> serde_json::Value {
    json!({
        "id": t.id,
        "service": t.service,
        "label": t.label,
        "kind": t.kind,
        "default": t.default,
        "conflict": t.conflict,
        "created_at": t.created_at,
        "updated_at": t.updated_at,
    })
}

fn list(ctx: &Context, tokens: &[TokenView]) {
    if ctx.json {
        print_json(&serde_json::Value::Array(
            tokens.iter().map(token_json).collect(),
        ));
        return;
    }
    if tokens.is_empty() {
        say!("No tokens yet. Add one with `handoff token add SERVICE`.");
        return;
    }
    say!(
        "{:<10} {:<20} {:<20} {:<12} {:<8} UPDATED",
        "ID",
        "SERVICE",
        "LABEL",
        "KIND",
        "DEFAULT"
    );
    for t in tokens {
        let label = if t.conflict {
            format!("{} (conflict)", t.label)
        } else {
            t.label.clone()
        };
        say!(
            "{:<10} {:<20} {:<20} {:<12} {:<8} {}",
            &t.id[..8],
            t.service,
            label,
            t.kind,
            if t.default { "*" } else { "" },
            when(t.updated_at)
        );
    }
}

fn show(ctx: &Context, t: &TokenView) {
    if ctx.json {
        print_json(&token_json(t));
        return;
    }
    say!("id       {}", t.id);
    say!("service  {}", t.service);
    say!("label    {}", t.label);
    say!("kind     {}", t.kind);
    say!("default  {}", if t.default { "yes" } else { "no" });
    if t.conflict {
        say!("conflict concurrent edits left several values; the newest is shown");
    }
    say!("created  {} by {}", when(t.created_at), t.created_by);
    say!("updated  {} by {}", when(t.updated_at), t.updated_by);
    say!("secret   (hidden; --reveal prints it)");
}
