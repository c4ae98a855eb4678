//! One writer per result folder: `.lock` holds the writer's pid under an OS file lock, which the
//! OS releases when the process dies however it dies. A lock file that still names a pid but is
//! no longer locked was left by a writer that died; the next run takes it over and says so.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::files::io_error;

pub const LOCK_FILE: &str = ".lock";

/// Held while a folder is written; released (and the pid cleared) on drop.
#[derive(Debug)]
pub struct FolderLock {
    file: File,
    path: PathBuf,
    /// The pid of a writer that died holding the folder, if there was one.
    pub stale_owner: Option<String>,
}

impl FolderLock {
    /// Locks `dir` for this process, or fails naming the process that holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error("create lock file", &path))?;
        let mut previous = String::new();
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                file.read_to_string(&mut previous).map_err(io_error("read", &path))?;
                return Err(Error::FolderLocked { dir: dir.to_path_buf(), owner: describe(&previous) });
            }
            Err(std::fs::TryLockError::Error(cause)) => return Err(io_error("lock", &path)(cause)),
        }
        file.read_to_string(&mut previous).map_err(io_error("read", &path))?;
        let stale_owner = Some(previous.trim().to_string()).filter(|p| !p.is_empty());
        file.set_len(0).and_then(|_| file.rewind()).map_err(io_error("write", &path))?;
        write!(file, "{}", std::process::id())
            .and_then(|_| file.flush())
            .map_err(io_error("write", &path))?;
        Ok(Self { file, path, stale_owner })
    }
}

fn describe(owner: &str) -> String {
    match owner.trim() {
        "" => "another process".into(),
        pid => format!("process {pid}"),
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // An empty lock file marks a clean release; the OS lock goes with the handle.
        if self.file.set_len(0).is_err() {
            eprintln!("warning: could not clear {}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_folder_refuses_a_second_writer_and_is_free_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let first = FolderLock::acquire(dir.path()).unwrap();
        assert_eq!(first.stale_owner, None);
        let err = FolderLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        assert_eq!(FolderLock::acquire(dir.path()).unwrap().stale_owner, None);
    }

    #[test]
    fn a_lock_left_by_a_dead_writer_is_taken_over_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCK_FILE), "4242424").unwrap();
        let lock = FolderLock::acquire(dir.path()).unwrap();
        assert_eq!(lock.stale_owner.as_deref(), Some("4242424"));
    }
}
