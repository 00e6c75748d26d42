//! The streaming download of an artifact: to a writer, hashed on the way. More bytes than
//! the manifest's `size` abort the download at once (a CDN must not fill the disk), fewer
//! are reported as truncated.
//!
//! A download over HTTP must also keep moving: it is abandoned when fewer than
//! `min_rate × rate_window` bytes arrive in a window of `rate_window` (a CDN trickling a
//! byte just inside the read timeout would otherwise hold the update, and its lock, for
//! ever), and when it has not finished within a deadline scaled by its size (the read
//! timeout and one window, plus the size at the minimum rate).
//!
//! A fresh download (the retry after a sha256 or size mismatch) asks every cache on the
//! way to go back to the origin (`Cache-Control: no-cache`) and, when the URL carries no
//! query of its own, adds a cache-busting one; a URL that has a query (a signed or
//! tokenized link) is left as it is, since changing it may void it.

use std::time::Duration;

use reqwest::header::{CACHE_CONTROL, PRAGMA};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use url::Url;

use crate::update::fetch::{FetchError, Fetcher, chain, content_length, file_err};
use crate::update::urls::{file_path, redact};

/// The query parameter a fresh download adds to get past caches that ignore
/// `Cache-Control`.
pub const CACHE_BUST: &str = "aihummer-fresh";

/// The longest any download may take, whatever the size and rate say: keeps the
/// deadline arithmetic far from the clock's limits.
pub const MAX_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a finished artifact download delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// Bytes written.
    pub size: u64,
    /// SHA-256 of those bytes, lowercase hex.
    pub sha256: String,
}

/// Counts the bytes of the current window and says when a window ended too light.
#[derive(Debug)]
struct RateFloor {
    window: Duration,
    min_bytes: u64,
    started: Instant,
    got: u64,
}

impl RateFloor {
    fn new(min_rate: u64, window: Duration, now: Instant) -> Self {
        RateFloor {
            window: window.min(MAX_DEADLINE),
            min_bytes: u64::try_from(u128::from(min_rate) * window.as_millis() / 1000)
                .unwrap_or(u64::MAX),
            started: now,
            got: 0,
        }
    }

    /// When the current window ends.
    fn window_end(&self) -> Instant {
        self.started + self.window
    }

    /// Counts `n` bytes arrived.
    fn add(&mut self, n: u64) {
        self.got = self.got.saturating_add(n);
    }

    /// At or after the window's end: `Err(bytes)` when the window ended too light, else
    /// starts the next window.
    fn close_window(&mut self, now: Instant) -> Result<(), u64> {
        if now < self.window_end() {
            return Ok(());
        }
        if self.got < self.min_bytes {
            return Err(self.got);
        }
        self.started = now;
        self.got = 0;
        Ok(())
    }
}

impl Fetcher {
    /// The longest an artifact of `size` bytes may take: the read timeout and one rate
    /// window, plus the size at the minimum rate.
    pub fn download_deadline(&self, size: u64) -> Duration {
        let o = &self.options;
        let at_min_rate = Duration::from_secs(size / o.min_rate.max(1));
        o.read_timeout
            .saturating_add(o.rate_window)
            .saturating_add(at_min_rate)
            .min(MAX_DEADLINE)
    }

    /// Streams `url` into `out`, hashing on the way. `size` is the manifest's: a body that
    /// announces or delivers more is aborted at once, one that ends early is truncated.
    /// `fresh` bypasses caches (see the module doc). `progress` is told the running byte
    /// count after every chunk. `out` is flushed but not synced; durability is the
    /// caller's.
    pub async fn download<W: AsyncWrite + Unpin>(
        &self,
        url: &Url,
        size: u64,
        fresh: bool,
        out: &mut W,
        mut progress: impl FnMut(u64),
    ) -> Result<Downloaded, FetchError> {
        let shown = redact(url);
        let mut hasher = Sha256::new();
        let mut got: u64 = 0;
        let write_err = |source| FetchError::Write {
            url: shown.clone(),
            source,
        };
        let oversized = || FetchError::Oversized {
            url: shown.clone(),
            expected: size,
        };
        if url.scheme() == "file" {
            let path = file_path(url)?;
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(file_err(&path))?;
            // Never read more than one byte past `size`: that byte is enough to know the
            // file is too big.
            let mut file = file.take(size + 1);
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = file.read(&mut buf).await.map_err(file_err(&path))?;
                if n == 0 {
                    break;
                }
                if got + n as u64 > size {
                    return Err(oversized());
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).await.map_err(write_err)?;
                got += n as u64;
                progress(got);
            }
        } else {
            let deadline = self.download_deadline(size);
            let started = Instant::now();
            let past_deadline = |got| FetchError::Deadline {
                url: shown.clone(),
                deadline,
                size,
                min_rate: self.options.min_rate,
                got,
            };
            let mut request = self.client.get(fresh_url(url, fresh));
            if fresh {
                request = request
                    .header(CACHE_CONTROL, "no-cache")
                    .header(PRAGMA, "no-cache");
            }
            let mut response = tokio::time::timeout(deadline, request.send())
                .await
                .map_err(|_| past_deadline(0))?
                .map_err(|err| self.request_error(url, err))?;
            if !response.status().is_success() {
                return Err(FetchError::Status {
                    url: shown.clone(),
                    status: response.status(),
                });
            }
            if content_length(&response).is_some_and(|len| len > size) {
                return Err(oversized());
            }
            let mut floor =
                RateFloor::new(self.options.min_rate, self.options.rate_window, started);
            loop {
                let wake = floor.window_end().min(started + deadline);
                let next = tokio::time::timeout_at(wake, response.chunk()).await;
                let now = Instant::now();
                if now >= started + deadline {
                    return Err(past_deadline(got));
                }
                let chunk = match next {
                    Err(_) => None,
                    Ok(Ok(Some(chunk))) => Some(chunk),
                    Ok(Ok(None)) => break,
                    Ok(Err(err)) if err.is_timeout() => {
                        return Err(self.request_error(url, err));
                    }
                    Ok(Err(err)) => {
                        return Err(FetchError::Broken {
                            url: shown.clone(),
                            got,
                            reason: chain(&err.without_url()),
                        });
                    }
                };
                if let Some(chunk) = chunk {
                    if got + chunk.len() as u64 > size {
                        return Err(oversized());
                    }
                    hasher.update(&chunk);
                    out.write_all(&chunk).await.map_err(write_err)?;
                    got += chunk.len() as u64;
                    floor.add(chunk.len() as u64);
                    progress(got);
                }
                floor
                    .close_window(now)
                    .map_err(|in_window| FetchError::TooSlow {
                        url: shown.clone(),
                        got: in_window,
                        window: self.options.rate_window,
                        min_rate: self.options.min_rate,
                        total: got,
                    })?;
            }
        }
        out.flush().await.map_err(write_err)?;
        if got < size {
            return Err(FetchError::Truncated {
                url: shown,
                expected: size,
                got,
            });
        }
        Ok(Downloaded {
            size: got,
            sha256: hex::encode(hasher.finalize()),
        })
    }
}

/// `url` with a cache-busting query when `fresh` and it has none of its own.
fn fresh_url(url: &Url, fresh: bool) -> Url {
    let mut url = url.clone();
    if fresh && url.query().is_none() {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        url.query_pairs_mut()
            .append_pair(CACHE_BUST, &nonce.to_string());
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::channel::Channel;
    use crate::update::fetch::{FetchOptions, ManifestFetch};
    use crate::update::urls::resolve_url;

    /// A one-connection HTTP server on loopback: reads the request head, sends it back
    /// through the returned channel, answers `size` announced bytes, and sends one byte
    /// every `every` (for ever, or until the client leaves).
    async fn trickling_server(
        size: u64,
        every: Duration,
    ) -> (Url, tokio::sync::oneshot::Receiver<String>) {
        use tokio::io::AsyncBufReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/gw", listener.local_addr().unwrap())).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut socket = tokio::io::BufReader::new(socket);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if socket.read_line(&mut line).await.unwrap() == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let _ = tx.send(head);
            let socket = socket.get_mut();
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
            socket.write_all(answer.as_bytes()).await.unwrap();
            loop {
                if socket.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        });
        (url, rx)
    }

    #[tokio::test]
    async fn a_trickling_cdn_is_abandoned_within_the_deadline() {
        // One byte a second never trips the 3 s read timeout; the rate floor (100 bytes/s
        // over 2 s windows) gives up after the first window.
        let (url, _) = trickling_server(100_000, Duration::from_secs(1)).await;
        let fetcher = Fetcher::new(FetchOptions {
            read_timeout: Duration::from_secs(3),
            min_rate: 100,
            rate_window: Duration::from_secs(2),
            ..FetchOptions::default()
        })
        .unwrap();
        let started = std::time::Instant::now();
        let err = fetcher
            .download(&url, 100_000, false, &mut Vec::new(), |_| {})
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, FetchError::TooSlow { .. }), "{err}");
        assert!(err.is_transient(), "a slow CDN is not the release's fault");
        assert!(
            err.to_string()
                .contains("below the minimum rate of 100 bytes/s"),
            "{err}"
        );
        assert!(took < Duration::from_secs(15), "abandoned after {took:?}");
    }

    #[test]
    fn the_deadline_scales_with_the_size_and_is_bounded() {
        let fetcher = Fetcher::new(FetchOptions {
            read_timeout: Duration::from_secs(30),
            min_rate: 1000,
            rate_window: Duration::from_secs(60),
            ..FetchOptions::default()
        })
        .unwrap();
        assert_eq!(fetcher.download_deadline(0), Duration::from_secs(90));
        assert_eq!(
            fetcher.download_deadline(1_000_000),
            Duration::from_secs(1090)
        );
        assert_eq!(fetcher.download_deadline(u64::MAX), MAX_DEADLINE);
    }

    #[tokio::test]
    async fn a_fresh_download_asks_caches_to_revalidate_and_busts_the_url() {
        let (url, head) = trickling_server(1, Duration::from_secs(60)).await;
        let fetcher = Fetcher::new(FetchOptions::default()).unwrap();
        let mut out = Vec::new();
        fetcher
            .download(&url, 1, true, &mut out, |_| {})
            .await
            .unwrap();
        let head = head.await.unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with(&format!("get /gw?{CACHE_BUST}=")),
            "{head}"
        );
        assert!(head.contains("cache-control: no-cache"), "{head}");
        // A URL with a query of its own (a signed link) keeps it untouched.
        let signed = Url::parse("https://cdn.example.com/gw?sig=abc").unwrap();
        assert_eq!(fresh_url(&signed, true), signed);
        assert_eq!(fresh_url(&url, false), url);
    }

    #[tokio::test]
    async fn file_mirrors_are_read_from_disk_with_the_same_caps() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("stable")).unwrap();
        std::fs::write(dir.path().join("stable/latest.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("stable/blob"), b"hello").unwrap();
        let base = Url::from_directory_path(dir.path()).unwrap();
        let fetcher = Fetcher::new(FetchOptions::default()).unwrap();
        let ManifestFetch::Fetched(f) = fetcher
            .fetch_manifest(&base, Channel::Stable, None, true)
            .await
            .unwrap()
        else {
            panic!("a file mirror has no 304");
        };
        assert_eq!(f.body, b"{}");
        assert_eq!(f.signature, None);
        let blob = resolve_url(&f.url, "blob").unwrap();
        let mut out = Vec::new();
        let mut seen = 0;
        let done = fetcher
            .download(&blob, 5, false, &mut out, |n| seen = n)
            .await
            .unwrap();
        assert_eq!(out, b"hello");
        assert_eq!(seen, 5);
        assert_eq!(
            done.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let err = fetcher
            .download(&blob, 4, false, &mut Vec::new(), |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Oversized { .. }), "{err}");
        let err = fetcher
            .download(&blob, 6, false, &mut Vec::new(), |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Truncated { got: 5, .. }), "{err}");
        let small = Fetcher::new(FetchOptions {
            manifest_cap: 1,
            ..FetchOptions::default()
        })
        .unwrap();
        let err = small
            .fetch_manifest(&base, Channel::Stable, None, false)
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::TooLarge { .. }), "{err}");
    }
}
