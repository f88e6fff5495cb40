//! Frames on a libp2p stream: `handoff_protocol::frame` over `futures` I/O, for the relay and
//! the handoff node alike. A length over the protocol's maximum is refused from the header
//! alone; a payload's buffer grows only as its bytes actually arrive, so a lying length prefix
//! costs the sender, not us.

use std::io;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use handoff_protocol::frame;

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Writes one frame and flushes it.
pub async fn write_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    payload: &[u8],
    max: usize,
) -> io::Result<()> {
    write_unflushed(stream, payload, max).await?;
    stream.flush().await
}

/// Writes one frame without flushing: a run of frames can go out with one flush.
pub async fn write_unflushed<S: AsyncWrite + Unpin>(
    stream: &mut S,
    payload: &[u8],
    max: usize,
) -> io::Result<()> {
    let bytes = frame::encode(payload, max).map_err(invalid)?;
    stream.write_all(&bytes).await
}

/// Reads one frame; `None` when the stream ended cleanly between frames.
pub async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> io::Result<Option<Vec<u8>>> {
    read(stream, max, None).await
}

/// As [`read_frame`], but once a frame has begun the rest of it must come within `rest` (the
/// stream may be quiet as long as it likes between frames).
pub async fn read_frame_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    rest: Duration,
) -> io::Result<Option<Vec<u8>>> {
    read(stream, max, Some(rest)).await
}

async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    rest: Option<Duration>,
) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; frame::HEADER_LEN];
    if stream.read(&mut header[..1]).await? == 0 {
        return Ok(None);
    }
    let body = async {
        stream.read_exact(&mut header[1..]).await?;
        let len = frame::decode_len(header, max).map_err(invalid)?;
        // Start small: the buffer grows as bytes arrive, so a length prefix alone costs little.
        let mut payload = Vec::with_capacity(len.min(1024));
        (&mut *stream)
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
    };
    match rest {
        Some(within) => tokio::time::timeout(within, body)
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?,
        None => body.await,
    }
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

    /// A reader that never yields another byte.
    struct Silent;

    impl AsyncRead for Silent {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::task::Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_frame_begun_must_end_within_its_deadline() {
        // The first header byte, then nothing: timed out, not held forever.
        let mut stalled = futures::io::Cursor::new(vec![0u8]).chain(Silent);
        let err = read_frame_within(&mut stalled, 16, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // A whole frame within the deadline reads as usual.
        let mut whole = futures::io::Cursor::new(vec![0, 0, 0, 2, 7, 8]);
        assert_eq!(
            read_frame_within(&mut whole, 16, Duration::from_secs(30))
                .await
                .unwrap()
                .as_deref(),
            Some(&[7u8, 8][..])
        );
    }
}
