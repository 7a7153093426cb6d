//! Files arpanet writes on the host.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

/// Writes via a temporary file in the same directory and a rename, so a crash or a
/// full disk never leaves half a file where a whole one was.
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    write(path, text, None)
}

/// [`write_atomically`] for files that hold key material: the file is 0600 (owner only)
/// from the moment it exists, also when it replaces one with wider permissions.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    write_atomically_with_mode(path, text, 0o600)
}

/// [`write_atomically`] with exactly this mode, set on the temporary file before any
/// content goes in (so the content is never readable with a wider mode, whatever the
/// umask or an earlier file was) and kept through the rename.
pub fn write_atomically_with_mode(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    write(path, text, Some(mode))
}

fn write(path: &Path, text: &str, mode: Option<u32>) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.arpanet-tmp"));
    match mode {
        None => std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?,
        Some(mode) => {
            // A temporary file left by a crash may have another mode, and someone may
            // hold it open: start from a new one.
            match std::fs::remove_file(&tmp) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("remove {}", tmp.display())),
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)
                .with_context(|| format!("create {}", tmp.display()))?;
            // The create mode is filtered by the umask; fchmod sets it exactly.
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {:o} {}", mode, tmp.display()))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("write {}", tmp.display()))?;
        }
    }
    std::fs::rename(&tmp, path).with_context(|| format!("replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_private_file_is_0600_when_new_and_when_it_replaces_a_wider_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key.json");
        write_private(&path, "one\n").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        // A stale temporary file with a wide mode is not reused.
        let tmp = dir.path().join("sub/.key.json.arpanet-tmp");
        std::fs::write(&tmp, "stale").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
        write_private(&path, "two\n").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        assert!(!tmp.exists());
    }

    #[test]
    fn the_mode_is_exact_and_plain_writes_are_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomically_with_mode(&path, "x", 0o640).unwrap();
        assert_eq!(mode(&path), 0o640);
        write_atomically(&path, "y").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "y");
    }
}
