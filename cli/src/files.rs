//! Files that hold secrets or the user's state: readable by the owner only. Keys and tokens the
//! user hands in must not be readable by other local users; what the CLI writes (the state file,
//! the proxy token) is created `0600` in a directory created `0700`, through a temporary file
//! of its own, fsynced, then renamed over the target.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

/// Why a private file could not be used or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Group or others may read (or write) a file that holds a secret.
    #[error(
        "{path} is accessible by other users (mode {mode:o}); restrict it with `chmod 600 {path}`"
    )]
    TooOpen { path: String, mode: u32 },
    /// Any I/O failure, with the file it concerns.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io { path: path.display().to_string(), source }
}

/// Refuse a secret file that group or others can access (like ssh does with private keys).
pub fn check_private(path: &Path) -> Result<(), FileError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(FileError::TooOpen { path: path.display().to_string(), mode });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    Ok(())
}

/// Read a secret file (whitespace around it removed), refusing one others can read.
pub fn read_private(path: &Path) -> Result<String, FileError> {
    check_private(path)?;
    Ok(std::fs::read_to_string(path).map_err(io(path))?.trim().to_string())
}

/// Create `dir` (and missing parents) with mode `0700`; an existing directory is left as it is.
pub fn create_private_dir(dir: &Path) -> Result<(), FileError> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io(dir))
}

/// Open (creating it `0600` if missing) a file for reading and writing, e.g. a lock file.
pub fn open_private(path: &Path) -> Result<File, FileError> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path).map_err(io(path))
}

/// Replace `path` with `bytes` atomically: a fresh `0600` temporary file named after the process
/// and a random suffix (so concurrent writers never share one), fsynced, renamed over `path`.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp: PathBuf =
        dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), random_hex(8).map_err(io(dir))?));
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let written = opts.open(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    // The rename itself is durable once the directory is synced (best effort).
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `bytes` random bytes from the operating system, as lower-case hex.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(std::io::Error::other)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "compute-files-{name}-{}-{}",
            std::process::id(),
            random_hex(4).unwrap()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn written_files_are_private_and_their_directory_too() {
        let dir = temp_dir("write");
        let path = dir.join("sub").join("secret");
        write_private(&path, b"one").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.join("sub")), 0o700);
        // Replacing an existing, too open file leaves a private one.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!((std::fs::read(&path).unwrap(), mode(&path)), (b"two".to_vec(), 0o600));
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.join("sub")).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_secret_readable_by_others_is_refused() {
        let dir = temp_dir("check");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "//Alice\n").unwrap();
        for open in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(open)).unwrap();
            let e = read_private(&path).unwrap_err().to_string();
            assert!(e.contains(&format!("chmod 600 {}", path.display())), "{e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_private(&path).unwrap(), "//Alice");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_private(&path).unwrap(), "//Alice");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn random_hex_is_random() {
        let (a, b) = (random_hex(32).unwrap(), random_hex(32).unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
