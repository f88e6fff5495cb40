//! `completions SHELL` and `man [--out DIR]`: the reference generated from the clap
//! definitions, so it never drifts from what the binary accepts.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use handoff_relay::reference::{self, Section, Shell};

use super::{Cli, CliError};

pub(super) fn completions(shell: Shell) -> Result<(), CliError> {
    let mut script = Vec::new();
    reference::completions(Cli::command(), shell, &mut script);
    write_out(&script)
}

/// The top page on stdout; with `out`, every page into that directory.
pub(super) fn man(out: Option<&Path>) -> Result<(), CliError> {
    let Some(dir) = out else {
        let page = reference::man_page(Cli::command(), Section::User)
            .map_err(|e| CliError::Internal(format!("cannot render the manual page: {e}")))?;
        return write_out(&page);
    };
    let file = |source| CliError::File {
        what: "cannot write manual pages into",
        path: dir.to_path_buf(),
        source,
    };
    if !dir.is_dir() {
        return Err(file(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such directory",
        )));
    }
    let pages = reference::man_pages(Cli::command(), Section::User, dir).map_err(file)?;
    say!(
        "Wrote {} manual pages into {} (read one with `man -l {}`).",
        pages.len(),
        dir.display(),
        dir.join("handoff.1").display()
    );
    Ok(())
}

fn write_out(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        // A reader that went away (`| head`) ends output quietly, like every other command.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::Internal(format!("cannot write to stdout: {e}")))
        }
        _ => Ok(()),
    }
}
