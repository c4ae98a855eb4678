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

/// SHA-256 of a file's bytes, as hex. Cached by path, size and modification time in
/// `$SPECBENCH_CACHE` (default `$XDG_CACHE_HOME/specbench` or `~/.cache/specbench`), so that a
/// resume does not reread many GB of weights; a file rewritten in place changes its time. Where
/// no cache folder can be written the hash is computed each time.
pub fn content_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(io_error("read", path))?;
    let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let key = format!("{}|{}|{}", canonical.display(), meta.len(), modified.map_or(0, |d| d.as_nanos()));
    let cache = cache_dir().map(|dir| dir.join("content-sha256.json"));
    let mut known: std::collections::BTreeMap<String, String> =
        cache.as_deref().and_then(|file| read_json(file).ok()).unwrap_or_default();
    if let Some(hash) = known.get(&key) {
        return Ok(hash.clone());
    }
    let mut file = std::fs::File::open(path).map_err(io_error("read", path))?;
    let mut hash = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io_error("read", path))?;
        if n == 0 {
            break;
        }
        hash.update(&buffer[..n]);
    }
    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if let Some(file) = cache {
        known.insert(key, hex.clone());
        // Best effort, written whole and renamed so that a reader never sees half a file.
        let temp = file.with_extension(format!("json.{}", std::process::id()));
        if create_dir(file.parent().unwrap_or(Path::new("."))).is_ok() && write_json(&temp, &known).is_ok() {
            let _ = std::fs::rename(&temp, &file);
        }
    }
    Ok(hex)
}

fn cache_dir() -> Option<std::path::PathBuf> {
    let from = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    from("SPECBENCH_CACHE")
        .or_else(|| from("XDG_CACHE_HOME").map(|d| d.join("specbench")))
        .or_else(|| from("HOME").map(|d| d.join(".cache").join("specbench")))
}

/// Gives back the pages of `range` of a read-only file map once its bytes have been copied out:
/// a page read once would otherwise stay resident beside the copy (a loaded model's peak was the
/// file twice over). Pages are read again from the file if touched.
pub fn release_mapped(map: &memmap2::Mmap, range: std::ops::Range<usize>) {
    #[cfg(unix)]
    // SAFETY: the map is a read-only mapping of a file: pages given back are read again from the
    // file when touched, with the same bytes, so no reference into it sees a change.
    unsafe {
        let _ = map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.start, range.len());
    }
}
