//! `completions SHELL` and `man [--out DIR]`: the reference generated from the clap
//! definitions, so it never drifts from what the binary accepts.

use clap::CommandFactory;
use handoff_relay::reference::{self, ReferenceCommand, ReferenceError, Section};

use super::{Cli, CliError};

pub(super) fn run(what: ReferenceCommand) -> Result<(), CliError> {
    reference::run(Cli::command(), Section::User, what).map_err(|e| match e {
        ReferenceError::NotADirectory(path) => CliError::File {
            what: "cannot write manual pages into",
            path,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        },
        ReferenceError::Pages { dir, source } => CliError::File {
            what: "cannot write manual pages into",
            path: dir,
            source,
        },
        e @ ReferenceError::Stdout(_) => CliError::Internal(e.to_string()),
    })
}
