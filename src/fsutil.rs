//! Small file-system helpers shared by the file-backed stores and sinks.

use std::io::Write;
use std::path::Path;

/// `fsync` of a directory, so a rename in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Replaces `path` (in `dir`) with `bytes` atomically: a temporary file in
/// the same directory, `fsync`, rename, `fsync` of the directory. A crash
/// leaves the old or the new contents, never a torn file. The file has mode
/// 0600.
pub(crate) fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}
