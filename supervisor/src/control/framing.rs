//! The control socket's one framing: newline-delimited JSON over any byte stream. Lines
//! are capped in length, reads and writes run under timeouts, and a line the peer did not
//! finish is an error rather than a line. The server, `identify` and the client all speak
//! through a [`Connection`]; only the [`Limits`] differ.

use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite, LinesCodec, LinesCodecError};

/// What one side of a connection allows its peer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The longest line read, its newline not counted.
    pub max_line: usize,
    /// How long one line may take to arrive; `None` leaves the waiting to the caller.
    pub read_timeout: Option<Duration>,
    /// How long writing one line may take before the peer is given up on.
    pub write_timeout: Duration,
}

/// Why a line could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// No complete line arrived in time.
    #[error("no complete line within {}", humantime::format_duration(*.0))]
    ReadTimeout(Duration),
    /// The peer did not take a line in time.
    #[error("the peer did not read a line within {}", humantime::format_duration(*.0))]
    WriteTimeout(Duration),
    /// A line went past [`Limits::max_line`] bytes without ending.
    #[error("a line exceeds {0} bytes")]
    TooLong(usize),
    /// The peer closed the connection in the middle of a line.
    #[error("the connection ended in the middle of a line")]
    Unfinished,
    /// A line is not UTF-8, so it cannot be JSON.
    #[error("the line is not UTF-8")]
    NotUtf8,
    /// A line is not the JSON expected, or a value could not be written as JSON.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// Reading or writing the stream failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One connection, framed in lines both ways.
pub struct Connection<S> {
    reader: FramedRead<ReadHalf<S>, Lines>,
    writer: FramedWrite<WriteHalf<S>, Lines>,
    limits: Limits,
}

impl<S: AsyncRead + AsyncWrite> Connection<S> {
    /// Frames `stream` under `limits`.
    pub fn new(stream: S, limits: Limits) -> Self {
        let (read, write) = tokio::io::split(stream);
        Connection {
            reader: FramedRead::new(read, Lines::new(limits.max_line)),
            writer: FramedWrite::new(write, Lines::new(limits.max_line)),
            limits,
        }
    }

    /// The next line without its newline; `None` when the peer closed between lines.
    pub async fn read_line(&mut self) -> Result<Option<String>, FrameError> {
        let next = self.reader.next();
        let line = match self.limits.read_timeout {
            Some(limit) => tokio::time::timeout(limit, next)
                .await
                .map_err(|_| FrameError::ReadTimeout(limit))?,
            None => next.await,
        };
        line.transpose()
    }

    /// The next line parsed as JSON; `None` when the peer closed between lines.
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match self.read_line().await? {
            Some(line) => Ok(Some(serde_json::from_str(&line)?)),
            None => Ok(None),
        }
    }

    /// Writes `value` as one JSON line and flushes it.
    pub async fn write(&mut self, value: &impl Serialize) -> Result<(), FrameError> {
        // Compact JSON escapes every control character, so the line holds no newline.
        let line = serde_json::to_string(value)?;
        let limit = self.limits.write_timeout;
        tokio::time::timeout(limit, self.writer.send(line))
            .await
            .map_err(|_| FrameError::WriteTimeout(limit))?
    }
}

/// [`LinesCodec`] with a length cap, stricter at the end of the stream: a line cut off
/// without its newline is [`FrameError::Unfinished`], so half a request never runs.
struct Lines(LinesCodec);

impl Lines {
    fn new(max_line: usize) -> Self {
        Lines(LinesCodec::new_with_max_length(max_line))
    }
}

impl Decoder for Lines {
    type Item = String;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<String>, FrameError> {
        self.0.decode(buf).map_err(|err| match err {
            LinesCodecError::MaxLineLengthExceeded => FrameError::TooLong(self.0.max_length()),
            // The codec does no I/O of its own: its only I/O error is a line not in UTF-8.
            LinesCodecError::Io(_) => FrameError::NotUtf8,
        })
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<String>, FrameError> {
        match self.decode(buf)? {
            None if !buf.is_empty() => Err(FrameError::Unfinished),
            line => Ok(line),
        }
    }
}

impl Encoder<String> for Lines {
    type Error = FrameError;

    fn encode(&mut self, line: String, buf: &mut BytesMut) -> Result<(), FrameError> {
        self.0.encode(line, buf).map_err(|err| match err {
            LinesCodecError::MaxLineLengthExceeded => FrameError::TooLong(self.0.max_length()),
            LinesCodecError::Io(err) => FrameError::Io(err),
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    const LIMITS: Limits = Limits {
        max_line: 16,
        read_timeout: Some(Duration::from_secs(1)),
        write_timeout: Duration::from_secs(1),
    };

    /// A connection whose peer sent `bytes` and then closed its side.
    async fn after(bytes: &[u8]) -> Connection<tokio::io::DuplexStream> {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        theirs.write_all(bytes).await.unwrap();
        drop(theirs);
        Connection::new(ours, LIMITS)
    }

    #[tokio::test]
    async fn values_written_on_one_side_are_read_on_the_other_as_single_lines() {
        let (a, b) = tokio::io::duplex(1024);
        let (mut a, mut b) = (Connection::new(a, LIMITS), Connection::new(b, LIMITS));
        a.write(&serde_json::json!({"k": "a\nb"})).await.unwrap();
        a.write(&7).await.unwrap();
        drop(a);
        let first: serde_json::Value = b.read().await.unwrap().unwrap();
        assert_eq!(first["k"], "a\nb");
        assert_eq!(b.read::<u32>().await.unwrap(), Some(7));
        assert_eq!(b.read::<u32>().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_cap_is_read_and_one_byte_more_is_too_long() {
        let mut connection = after(b"0123456789abcdef\n0123456789abcdefX\n").await;
        let line = connection.read_line().await.unwrap();
        assert_eq!(line.as_deref(), Some("0123456789abcdef"));
        let err = connection.read_line().await.unwrap_err();
        assert!(matches!(err, FrameError::TooLong(16)), "{err}");
    }

    #[tokio::test]
    async fn a_line_cut_off_by_the_peer_is_unfinished_not_a_line() {
        let err = after(b"{\"v\":1").await.read_line().await.unwrap_err();
        assert!(matches!(err, FrameError::Unfinished), "{err}");
    }

    #[tokio::test]
    async fn bytes_that_are_not_utf8_are_refused_as_such() {
        let err = after(b"\x00\xffno\n").await.read_line().await.unwrap_err();
        assert!(matches!(err, FrameError::NotUtf8), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_sends_nothing_runs_into_the_read_timeout() {
        let (ours, _theirs) = tokio::io::duplex(1024);
        let err = Connection::new(ours, LIMITS).read_line().await.unwrap_err();
        assert!(matches!(err, FrameError::ReadTimeout(_)), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_reads_nothing_runs_into_the_write_timeout() {
        let (ours, _theirs) = tokio::io::duplex(8);
        let err = Connection::new(ours, LIMITS)
            .write(&"more than eight bytes")
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::WriteTimeout(_)), "{err}");
    }
}
