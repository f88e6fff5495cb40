//! The outer framing of Automerge bytes, checked before the engine parses anything.
//!
//! A saved document or a set of changes is a sequence of chunks: magic `85 6f 4a 83`, a 4-byte
//! checksum, a 1-byte type, a ULEB128 body length, the body. handoff writes and accepts only
//! document (0), change (1) and compressed change (2) chunks. Bundle chunks (3), new in
//! automerge 0.12, are refused: fuzzing showed their parser panicking and allocating gigabytes
//! on 50-70 byte inputs, and handoff never produces them.

use super::DocError;

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const DOCUMENT: u8 = 0;
const CHANGE: u8 = 1;
const COMPRESSED_CHANGE: u8 = 2;

fn damaged(why: &str) -> DocError {
    DocError::Damaged(format!("not an Automerge document or change set ({why})"))
}

/// Accepts `bytes` only if it is a non-empty sequence of whole document or change chunks.
pub(super) fn check_framing(bytes: &[u8]) -> Result<(), DocError> {
    split(bytes).map(|_| ())
}

/// The chunks of `bytes` (type and whole chunk), if it is a non-empty sequence of whole
/// document or change chunks.
pub(super) fn split(bytes: &[u8]) -> Result<Vec<(u8, &[u8])>, DocError> {
    if bytes.is_empty() {
        return Err(damaged("it is empty"));
    }
    let mut chunks = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some(after_magic) = rest.strip_prefix(&MAGIC) else {
            return Err(damaged(
                "a chunk does not start with the Automerge magic bytes",
            ));
        };
        let Some((&kind, after_type)) = after_magic.get(4..).and_then(<[u8]>::split_first) else {
            return Err(damaged("a chunk header is cut short"));
        };
        if !matches!(kind, DOCUMENT | CHANGE | COMPRESSED_CHANGE) {
            return Err(damaged("a chunk has a type handoff does not accept"));
        }
        let (len, used) =
            uleb128(after_type).ok_or_else(|| damaged("a chunk length is malformed"))?;
        let body = &after_type[used..];
        let len = usize::try_from(len).ok().filter(|&l| l <= body.len());
        let Some(len) = len else {
            return Err(damaged("a chunk is longer than the bytes given"));
        };
        let whole = rest.len() - body.len() + len;
        chunks.push((kind, &rest[..whole]));
        rest = &body[len..];
    }
    Ok(chunks)
}

/// Whether a chunk type is a (possibly compressed) change.
pub(super) fn is_change(kind: u8) -> bool {
    matches!(kind, CHANGE | COMPRESSED_CHANGE)
}

/// Reads an unsigned LEB128 of at most 10 bytes; returns the value and bytes used.
fn uleb128(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().take(10).enumerate() {
        let low = u64::from(b & 0x7f);
        let shift = 7 * u32::try_from(i).ok()?;
        if shift == 63 && low > 1 {
            return None; // would overflow 64 bits
        }
        value |= low << shift;
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[0, 0, 0, 0, kind]);
        let mut len = body.len();
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn accepts_document_and_change_chunks_and_refuses_bundles() {
        let mut two = chunk(DOCUMENT, &[1; 200]);
        two.extend(chunk(CHANGE, b"x"));
        assert!(check_framing(&two).is_ok());
        assert!(check_framing(&chunk(COMPRESSED_CHANGE, &[])).is_ok());
        assert!(check_framing(&chunk(3, b"bundle")).is_err());
        assert!(check_framing(&chunk(9, b"")).is_err());
        assert!(check_framing(b"").is_err());
        let mut cut = chunk(CHANGE, &[0; 10]);
        cut.pop();
        assert!(check_framing(&cut).is_err());
        let mut trailing = chunk(CHANGE, b"ok");
        trailing.push(0);
        assert!(check_framing(&trailing).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = check_framing(&bytes);
        }

        #[test]
        fn uleb_round_trips(v in any::<u64>()) {
            let mut enc = Vec::new();
            let mut x = v;
            loop {
                let b = (x & 0x7f) as u8;
                x >>= 7;
                if x == 0 { enc.push(b); break; }
                enc.push(b | 0x80);
            }
            prop_assert_eq!(uleb128(&enc), Some((v, enc.len())));
        }
    }
}
