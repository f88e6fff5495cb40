//! A binary's reference from its clap definition: shell completions and manual pages. One
//! implementation for `handoff` and `handoff-relay` (the `reference` feature).

use std::io::Write;
use std::path::{Path, PathBuf};

pub use clap_complete::Shell;

/// Writes `shell`'s completion script for `cmd` to `out`.
pub fn completions(mut cmd: clap::Command, shell: Shell, out: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// The manual's section of a binary's pages: 1 for a user's command, 8 for a service an
/// operator runs (`handoff-relay`, whose pages must not collide with `handoff relay`'s
/// `handoff-relay.1`).
#[derive(Debug, Clone, Copy)]
pub enum Section {
    User,
    Admin,
}

impl Section {
    fn number(self) -> &'static str {
        match self {
            Section::User => "1",
            Section::Admin => "8",
        }
    }
}

/// The manual page of `cmd` itself, as roff.
pub fn man_page(cmd: clap::Command, section: Section) -> std::io::Result<Vec<u8>> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.disable_help_subcommand(true))
        .section(section.number())
        .render(&mut page)?;
    Ok(page)
}

/// Writes one page per command and visible subcommand (`handoff.1`, `handoff-token.1`,
/// `handoff-token-add.1`, ...) into `dir`, which must exist; returns the files written. Each
/// is written whole or not at all (a temporary file renamed over the old page).
pub fn man_pages(
    cmd: clap::Command,
    section: Section,
    dir: &Path,
) -> std::io::Result<Vec<PathBuf>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_pages(cmd, section, dir, &mut written)?;
    Ok(written)
}

fn write_pages(
    cmd: clap::Command,
    section: Section,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), section, dir, written)?;
    }
    let man = clap_mangen::Man::new(cmd).section(section.number());
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(&page)?;
    file.as_file().sync_all()?;
    // A manual page is for every reader of the directory, like any installed one.
    // On the open file, not its name: nothing can swap the name for a link meanwhile.
    file.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    file.persist(&path).map_err(|e| e.error)?;
    written.push(path);
    Ok(())
}
