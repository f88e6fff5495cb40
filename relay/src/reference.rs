//! A binary's reference from its clap definition: shell completions and manual pages. One
//! implementation for `handoff` and `handoff-relay` (the `reference` feature).

use std::io::Write;
use std::path::{Path, PathBuf};

pub use clap_complete::Shell;

/// The reference subcommands both binaries have (flattened into each one's commands).
#[derive(Debug, clap::Subcommand)]
pub enum ReferenceCommand {
    /// Print a shell completion script (e.g. `source <(handoff completions bash)`).
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the manual page; with --out, write a page per command into DIR.
    Man {
        /// An existing directory for the pages (one per command).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// Why a reference could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("cannot write manual pages into {dir}: {source}")]
    Pages {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
}

/// Runs `what` for the binary `cmd` defines: a script or a page on stdout, or the pages into
/// a directory (then says how many).
pub fn run(
    cmd: clap::Command,
    section: Section,
    what: ReferenceCommand,
) -> Result<(), ReferenceError> {
    match what {
        ReferenceCommand::Completions { shell } => {
            let mut script = Vec::new();
            completions(cmd, shell, &mut script);
            write_out(&script)
        }
        ReferenceCommand::Man { out: None } => {
            let page = man_page(cmd, section).map_err(ReferenceError::Stdout)?;
            write_out(&page)
        }
        ReferenceCommand::Man { out: Some(dir) } => {
            if !dir.is_dir() {
                return Err(ReferenceError::NotADirectory(dir));
            }
            let top = cmd.get_name().to_string();
            let pages = man_pages(cmd, section, &dir).map_err(|source| ReferenceError::Pages {
                dir: dir.clone(),
                source,
            })?;
            let note = format!(
                "Wrote {} manual pages into {} (read one with `man -l {}`).\n",
                pages.len(),
                dir.display(),
                dir.join(format!("{top}.{}", section.number())).display()
            );
            write_out(note.as_bytes())
        }
    }
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) is no failure.
fn write_out(bytes: &[u8]) -> Result<(), ReferenceError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(ReferenceError::Stdout(e)),
        _ => Ok(()),
    }
}

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
