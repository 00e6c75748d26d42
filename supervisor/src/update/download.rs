//! The streaming download of an artifact: to a writer, hashed on the way. More bytes than
//! the manifest's `size` abort the download at once (a CDN must not fill the disk), fewer
//! are reported as truncated.

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use url::Url;

use crate::update::fetch::{FetchError, Fetcher, chain, content_length, file_err};
use crate::update::urls::file_path;

/// What a finished artifact download delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// Bytes written.
    pub size: u64,
    /// SHA-256 of those bytes, lowercase hex.
    pub sha256: String,
}

impl Fetcher {
    /// Streams `url` into `out`, hashing on the way. `size` is the manifest's: a body that
    /// announces or delivers more is aborted at once, one that ends early is truncated.
    /// `progress` is told the running byte count after every chunk. `out` is flushed but
    /// not synced; durability is the caller's.
    pub async fn download<W: AsyncWrite + Unpin>(
        &self,
        url: &Url,
        size: u64,
        out: &mut W,
        mut progress: impl FnMut(u64),
    ) -> Result<Downloaded, FetchError> {
        let mut hasher = Sha256::new();
        let mut got: u64 = 0;
        let write_err = |source| FetchError::Write {
            url: url.to_string(),
            source,
        };
        let oversized = || FetchError::Oversized {
            url: url.to_string(),
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
            let mut response = self
                .client
                .get(url.clone())
                .send()
                .await
                .map_err(|err| self.request_error(url, err))?;
            if !response.status().is_success() {
                return Err(FetchError::Status {
                    url: url.to_string(),
                    status: response.status(),
                });
            }
            if content_length(&response).is_some_and(|len| len > size) {
                return Err(oversized());
            }
            loop {
                let chunk = match response.chunk().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(err) if err.is_timeout() => return Err(self.request_error(url, err)),
                    Err(err) => {
                        return Err(FetchError::Broken {
                            url: url.to_string(),
                            got,
                            reason: chain(&err),
                        });
                    }
                };
                if got + chunk.len() as u64 > size {
                    return Err(oversized());
                }
                hasher.update(&chunk);
                out.write_all(&chunk).await.map_err(write_err)?;
                got += chunk.len() as u64;
                progress(got);
            }
        }
        out.flush().await.map_err(write_err)?;
        if got < size {
            return Err(FetchError::Truncated {
                url: url.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::channel::Channel;
    use crate::update::fetch::{FetchOptions, ManifestFetch};
    use crate::update::urls::resolve_url;

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
            .download(&blob, 5, &mut out, |n| seen = n)
            .await
            .unwrap();
        assert_eq!(out, b"hello");
        assert_eq!(seen, 5);
        assert_eq!(
            done.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let err = fetcher
            .download(&blob, 4, &mut Vec::new(), |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Oversized { .. }), "{err}");
        let err = fetcher
            .download(&blob, 6, &mut Vec::new(), |_| {})
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
