//! Crash-safe file writes shared by the install dir and the publisher: replacing a file
//! atomically, making a directory's renames durable, and the error that names what was
//! being done to which path.
//!
//! A reader (a supervisor loading `state.json`, a static server handing out `latest.json`)
//! sees the old file or the new one, never half of one, and after a power cut the change
//! is either wholly there or not at all.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A filesystem operation that failed, with what was being done and on which path.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct FileError {
    /// What was being done (`create`, `rename into`, ...).
    pub action: &'static str,
    /// On what.
    pub path: PathBuf,
    /// The OS error.
    pub source: io::Error,
}

/// Turns an OS error into a [`FileError`] for `action` on `path`; for `map_err`.
pub fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FileError {
    let path = path.to_path_buf();
    move |source| FileError {
        action,
        path,
        source,
    }
}

/// Replaces `path` with `bytes`: a temporary file beside it, written, given `mode`,
/// fsynced, renamed over `path`, then the directory fsynced so the rename survives a
/// power cut.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let prefix = format!(
        ".{}.",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .tempfile_in(dir)
        .map_err(io_err("create a temporary file in", dir))?;
    tmp.write_all(bytes).map_err(io_err("write", tmp.path()))?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(io_err("fsync", tmp.path()))?;
    tmp.persist(path)
        .map_err(|err| io_err("rename into", path)(err.error))?;
    sync_dir(dir)
}

/// fsyncs a directory, so renames and removals inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_has_the_new_bytes_and_mode_and_nothing_is_left_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latest.json");
        fs::write(&path, b"old").unwrap();
        write_atomic(&path, b"new", 0o640).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("latest.json")]);
    }

    #[test]
    fn a_failure_names_the_action_and_the_path() {
        let err = write_atomic(Path::new("/nonexistent-dir/x"), b"", 0o644).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("create a temporary file in /nonexistent-dir:"),
            "{err}"
        );
    }
}
