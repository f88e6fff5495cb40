//! `spawn-policy allow|deny|list`: which devices may ask this one to start agents. The policy
//! is this device's own (never synced); changing it takes the passphrase every time.

use std::path::PathBuf;

use super::access::run_op;
use super::{CliError, Context, print_json};
use crate::ops::{Op, Outcome, views::SpawnPolicyView};
use crate::spawn::policy::Rule;

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Let a device of this vault ask this one to start agents, within these bounds.
    Allow(AllowArgs),
    /// Take a device's rule away: its requests are refused again (the default).
    Deny {
        /// Its name or device id.
        device: String,
    },
    /// The rules, by device.
    List,
}

#[derive(Debug, clap::Args)]
pub struct AllowArgs {
    /// Its name or device id.
    device: String,
    /// An agent it may start (repeatable; none named: any agent this device knows).
    #[arg(long = "agent", value_name = "A")]
    agents: Vec<String>,
    /// A directory it may start sessions in or under (repeatable; at least one).
    #[arg(long = "root", value_name = "DIR", required = true)]
    roots: Vec<PathBuf>,
    /// A profile (token label) it may name (repeatable; none named: any).
    #[arg(long = "profile", value_name = "P")]
    profiles: Vec<String>,
    /// It may pass the agent extra arguments (they can make an agent run anything).
    #[arg(long)]
    args: bool,
}

pub(super) fn run(ctx: &Context, cmd: PolicyCommand) -> Result<(), CliError> {
    let op = match cmd {
        PolicyCommand::Allow(a) => Op::SetSpawnPolicy {
            device: a.device,
            rule: Some(Rule {
                agents: a.agents,
                roots: a.roots,
                profiles: a.profiles,
                args: a.args,
            }),
        },
        PolicyCommand::Deny { device } => Op::SetSpawnPolicy { device, rule: None },
        PolicyCommand::List => Op::SpawnPolicy,
    };
    let view = run_op!(ctx, op, Outcome::SpawnPolicy(view) => view);
    render(ctx, &view);
    Ok(())
}

fn render(ctx: &Context, view: &SpawnPolicyView) {
    if ctx.json {
        print_json(&serde_json::to_value(view).unwrap_or_default());
        return;
    }
    if view.reset {
        say!(
            "The policy file did not verify (it was written without the passphrase): the policy started again from nothing."
        );
    }
    if view.rules.is_empty() {
        say!(
            "No device may start agents here (the default). Allow one with `handoff spawn-policy allow DEVICE --root DIR`."
        );
    }
    let any = |list: &[String], what: &str| {
        if list.is_empty() {
            format!("any {what}")
        } else {
            list.join(", ")
        }
    };
    for r in &view.rules {
        let name = r.name.as_deref().unwrap_or("(no longer a member)");
        say!("{name}  {}", r.device_id.get(..12).unwrap_or(&r.device_id));
        say!("  agents    {}", any(&r.agents, "agent"));
        say!("  roots     {}", r.roots.join(", "));
        say!("  profiles  {}", any(&r.profiles, "profile"));
        say!("  args      {}", if r.args { "allowed" } else { "refused" });
    }
    if !view.verified {
        say!("(not verified: the vault is locked; unlock to check the file was not changed)");
    }
}
