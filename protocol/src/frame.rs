//! Length-prefixed frames: how every handoff stream between machines is cut into messages.
//!
//! ```text
//! frame = len(u32, big-endian) || payload(len)
//! ```
//! Each protocol names its own maximum payload; a reader checks the length against it before
//! it reserves or reads anything, so a hostile length costs nothing. A buffer that holds only
//! part of a frame is [`DecodeError::Incomplete`] (read more); a length over the maximum is
//! [`DecodeError::TooLarge`] (drop the peer).

use crate::DecodeError;

const WHAT: &str = "frame";

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// The frame holding `payload`. Fails only if the payload is over `max`.
pub fn encode(payload: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header(payload.len(), max)?);
    out.extend_from_slice(payload);
    Ok(out)
}

/// The header of a frame whose `len`-byte payload is written in place after it (by a writer
/// that serializes straight into the frame's buffer). Fails only if `len` is over `max`.
pub fn header(len: usize, max: usize) -> Result<[u8; HEADER_LEN], DecodeError> {
    Ok(check(len, max)?.to_be_bytes())
}

/// The payload length a header announces, checked against `max`.
pub fn decode_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(header) as usize;
    check(len, max)?;
    Ok(len)
}

/// The first frame in `buf`: its payload and how many bytes of `buf` it took.
pub fn decode(buf: &[u8], max: usize) -> Result<(&[u8], usize), DecodeError> {
    let Some((header, rest)) = buf.split_first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::Incomplete {
            what: WHAT,
            needed: HEADER_LEN - buf.len(),
        });
    };
    let len = decode_len(*header, max)?;
    if rest.len() < len {
        return Err(DecodeError::Incomplete {
            what: WHAT,
            needed: len - rest.len(),
        });
    }
    Ok((&rest[..len], HEADER_LEN + len))
}

fn check(len: usize, max: usize) -> Result<u32, DecodeError> {
    match u32::try_from(len) {
        Ok(small) if len <= max => Ok(small),
        _ => Err(DecodeError::TooLarge {
            what: WHAT,
            len,
            max,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(payload in proptest::collection::vec(any::<u8>(), 0..600), tail in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut bytes = encode(&payload, 1024).unwrap();
            prop_assert_eq!(bytes.len(), HEADER_LEN + payload.len());
            bytes.extend_from_slice(&tail);
            let (got, used) = decode(&bytes, 1024).unwrap();
            prop_assert_eq!(got, &payload[..]);
            prop_assert_eq!(used, HEADER_LEN + payload.len());
        }

        #[test]
        fn every_cut_is_incomplete(payload in proptest::collection::vec(any::<u8>(), 1..64), cut in 0usize..68) {
            let bytes = encode(&payload, 1024).unwrap();
            prop_assume!(cut < bytes.len());
            let incomplete = matches!(decode(&bytes[..cut], 1024), Err(DecodeError::Incomplete { .. }));
            prop_assert!(incomplete);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), max in 0usize..64) {
            let _ = decode(&bytes, max);
        }
    }

    #[test]
    fn a_length_over_the_maximum_is_refused_from_the_header_alone() {
        assert!(matches!(
            decode(&[0, 0, 4, 1], 1024),
            Err(DecodeError::TooLarge { len: 1025, .. })
        ));
        assert!(matches!(decode_len([0xff; 4], usize::MAX), Ok(0xffff_ffff)));
        assert!(encode(&[0; 9], 8).is_err());
        assert!(header(9, 8).is_err());
        assert_eq!(header(0x0102_0304, usize::MAX).unwrap(), [1, 2, 3, 4]);
    }
}
