//! Reading secrets: passphrases, tokens and recovery codes.
//!
//! A secret comes from a file named by a flag or environment variable, from the terminal with
//! echo off, or (tokens only) from piped stdin, never from argv. Everything read is held in
//! zeroizing buffers. A passphrase file that others can read is used, with a warning.

use std::io::{IsTerminal, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use zeroize::Zeroizing;

use super::CliError;

/// Shortest passphrase accepted for a new vault key.
pub const MIN_PASSPHRASE_CHARS: usize = 8;

/// Largest passphrase or recovery-code file read.
const SMALL_SECRET_MAX: usize = 4096;
/// Largest token input read (the sealer's own limit is checked after trimming).
const TOKEN_INPUT_MAX: usize = 2 * handoff_protocol::sealed_token::MAX_PLAINTEXT;

fn read_file(path: &Path, what: &'static str, max: usize) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let file_err = |source| CliError::File {
        what,
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(file_err)?;
    if meta.permissions().mode() & 0o077 != 0 {
        eprintln!(
            "warning: other users of this machine can read {0}: run `chmod 600 {0}`",
            path.display()
        );
    }
    let file = std::fs::File::open(path).map_err(file_err)?;
    read_bounded(file, max).map_err(|source| CliError::File {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads everything into one zeroizing buffer allocated once (growing a buffer would leave
/// copies of the secret behind in freed memory); more than `max` bytes is refused.
fn read_bounded(mut reader: impl Read, max: usize) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(vec![0u8; max + 1]);
    let mut filled = 0;
    loop {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if filled > max {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("more than {max} bytes"),
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

fn first_line(bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let line = &bytes[..end];
    Zeroizing::new(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
}

const NO_TERMINAL: &str = "no terminal to ask for the passphrase: run `handoff unlock` (with the daemon running), or give --passphrase-file F or HANDOFF_PASSPHRASE_FILE";

fn prompt_hidden(
    prompt: &str,
    missing: fn(String) -> CliError,
) -> Result<Zeroizing<String>, CliError> {
    rpassword::prompt_password(prompt)
        .map(Zeroizing::new)
        .map_err(|_| missing(NO_TERMINAL.into()))
}

/// The passphrase of an existing vault key.
pub fn passphrase(file: Option<&Path>) -> Result<Zeroizing<Vec<u8>>, CliError> {
    match file {
        Some(path) => Ok(first_line(&read_file(
            path,
            "cannot read passphrase file",
            SMALL_SECRET_MAX,
        )?)),
        None => Ok(Zeroizing::new(
            prompt_hidden("Passphrase: ", CliError::Locked)?
                .as_bytes()
                .to_vec(),
        )),
    }
}

/// A passphrase for a new vault key: asked twice on a terminal, checked for length.
pub fn new_passphrase(file: Option<&Path>) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let pass = match file {
        Some(path) => first_line(&read_file(
            path,
            "cannot read passphrase file",
            SMALL_SECRET_MAX,
        )?),
        None => {
            let first = prompt_hidden("New passphrase: ", CliError::Usage)?;
            let again = prompt_hidden("Repeat passphrase: ", CliError::Usage)?;
            if first != again {
                return Err(CliError::Usage(
                    "the two passphrases differ; nothing was changed".into(),
                ));
            }
            Zeroizing::new(first.as_bytes().to_vec())
        }
    };
    let chars = String::from_utf8_lossy(&pass).chars().count();
    if chars < MIN_PASSPHRASE_CHARS {
        return Err(CliError::Usage(format!(
            "the passphrase must have at least {MIN_PASSPHRASE_CHARS} characters"
        )));
    }
    Ok(pass)
}

/// A token's secret: from `file`, a hidden prompt on a terminal, or all of piped stdin.
/// Surrounding whitespace (such as the newline `echo` adds) is removed.
pub fn token(file: Option<&Path>, service: &str) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let raw = match file {
        Some(path) => read_file(path, "cannot read token file", TOKEN_INPUT_MAX)?,
        None if std::io::stdin().is_terminal() => {
            let typed = rpassword::prompt_password(format!("Token for {service} (hidden): "))
                .map(Zeroizing::new)
                .map_err(|e| {
                    CliError::Internal(format!("cannot read the token from the terminal: {e}"))
                })?;
            Zeroizing::new(typed.as_bytes().to_vec())
        }
        None => read_bounded(std::io::stdin().lock(), TOKEN_INPUT_MAX)
            .map_err(|e| CliError::Usage(format!("cannot read the token from stdin: {e}")))?,
    };
    Ok(Zeroizing::new(raw.trim_ascii().to_vec()))
}

/// The recovery code: from `file` or a hidden prompt.
pub fn recovery_code(file: Option<&Path>) -> Result<Zeroizing<String>, CliError> {
    match file {
        Some(path) => {
            let bytes = read_file(path, "cannot read recovery code file", SMALL_SECRET_MAX)?;
            Ok(Zeroizing::new(
                String::from_utf8_lossy(&bytes).trim().to_string(),
            ))
        }
        None => rpassword::prompt_password("Recovery code: ")
            .map(Zeroizing::new)
            .map_err(|_| {
                CliError::Usage(
                    "no terminal to ask for the recovery code: give --code-file F".into(),
                )
            }),
    }
}

/// A yes/no answer from the terminal ("y" or "yes" is yes; anything else, or no terminal, no).
pub fn confirm(question: &str) -> Result<bool, CliError> {
    let answer = line(question)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// One line typed at the terminal (a pairing code typed here stays out of the process list).
pub fn line(prompt: &str) -> Result<Zeroizing<String>, CliError> {
    use std::io::{BufRead, Write};
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(format!(
            "no terminal to ask '{}'",
            prompt.trim_end_matches([' ', ':'])
        )));
    }
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut text = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut text)
        .map_err(|e| CliError::Usage(format!("cannot read the answer: {e}")))?;
    Ok(Zeroizing::new(text.trim().to_string()))
}

/// A relay's access token: the first line of `path` (1 to 255 bytes).
pub fn relay_token(path: &Path) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let line = first_line(&read_file(
        path,
        "cannot read the token file",
        SMALL_SECRET_MAX,
    )?);
    let token = Zeroizing::new(line.trim_ascii().to_vec());
    if token.is_empty() || token.len() > crate::doc::schema::limits::RELAY_TOKEN_MAX {
        return Err(CliError::Usage(format!(
            "the access token in {} must be one line of 1 to 255 bytes",
            path.display()
        )));
    }
    Ok(token)
}
