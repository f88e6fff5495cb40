//! Frames on a libp2p stream: `handoff_protocol::frame` over `futures` I/O. A length over the
//! protocol's maximum is refused from the header alone; a payload's buffer grows only as its
//! bytes actually arrive, so a lying length prefix costs the sender, not us.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use handoff_protocol::frame;

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Writes one frame and flushes it.
pub(super) async fn write_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    payload: &[u8],
    max: usize,
) -> io::Result<()> {
    let bytes = frame::encode(payload, max).map_err(invalid)?;
    stream.write_all(&bytes).await?;
    stream.flush().await
}

/// Reads one frame; `None` when the stream ended cleanly between frames.
pub(super) async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; frame::HEADER_LEN];
    if stream.read(&mut header[..1]).await? == 0 {
        return Ok(None);
    }
    stream.read_exact(&mut header[1..]).await?;
    let len = frame::decode_len(header, max).map_err(invalid)?;
    // Start small: the buffer grows as bytes arrive, so a length prefix alone costs little.
    let mut payload = Vec::with_capacity(len.min(1024));
    stream
        .take(u64::try_from(len).unwrap_or(u64::MAX))
        .read_to_end(&mut payload)
        .await?;
    if payload.len() < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the stream ended inside a frame",
        ));
    }
    Ok(Some(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_lies_are_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello", 16).await.unwrap();
        write_frame(&mut buf, b"", 16).await.unwrap();
        let mut reader = futures::io::Cursor::new(buf);
        assert_eq!(
            read_frame(&mut reader, 16).await.unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(
            read_frame(&mut reader, 16).await.unwrap().as_deref(),
            Some(&b""[..])
        );
        assert!(read_frame(&mut reader, 16).await.unwrap().is_none());

        // Over the maximum: refused before reading the payload.
        let mut big = futures::io::Cursor::new(vec![0, 0, 0, 17]);
        assert_eq!(
            read_frame(&mut big, 16).await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // Promises more than it sends: an error, not a hang or a short payload.
        let mut short = futures::io::Cursor::new(vec![0, 0, 0, 9, 1, 2]);
        assert_eq!(
            read_frame(&mut short, 16).await.unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
