//! File access whose errors name the file: every reader and writer of the crate goes through here.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Turns an I/O error into one that says what was being done (`op`: "read", "write", ...) to
/// which file.
pub fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |cause| Error::Io { op, path: path.to_path_buf(), cause }
}

pub fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(io_error("read", path))
}

pub fn write_text(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(io_error("write", path))
}

/// Creates `path` and any missing parents; an existing folder is fine.
pub fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(io_error("create folder", path))
}

/// Reads and parses a JSON file; a parse error names the file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    serde_json::from_str(&read_text(path)?)
        .map_err(|e| Error::MalformedFile { path: path.to_path_buf(), message: e.to_string() })
}

/// Writes `value` as pretty JSON with a final newline.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("our JSON types always serialize");
    write_text(path, &(text + "\n"))
}

/// Memory the OS can give this process now, in bytes (`sysinfo`); `None` where it cannot say.
pub fn available_memory_bytes() -> Option<u64> {
    let system = sysinfo::System::new_with_specifics(
        sysinfo::RefreshKind::nothing().with_memory(sysinfo::MemoryRefreshKind::nothing().with_ram()),
    );
    Some(system.available_memory()).filter(|&bytes| bytes > 0)
}

/// Makes a SIGBUS, which a memory-mapped model file raises when another process truncates or
/// rewrites it while it is read, end the process with a one-line error and exit code 1 instead
/// of a crash. Unix only; elsewhere a no-op.
pub fn exit_cleanly_on_sigbus() {
    #[cfg(unix)]
    {
        extern "C" fn on_sigbus(_: libc::c_int) {
            const MESSAGE: &[u8] =
                b"error: a model file changed while in use (truncated or rewritten while mapped); run again\n";
            // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is static.
            unsafe {
                libc::write(2, MESSAGE.as_ptr().cast(), MESSAGE.len());
                libc::_exit(1);
            }
        }
        // SAFETY: installs a handler that only calls async-signal-safe functions.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    }
}
