//! Where the user's key comes from. A secret on the command line is visible to every local user
//! (`ps`, `/proc/PID/cmdline`), so `--key` takes only development keys (`//Charlie`: the public
//! development phrase with a derivation path); a real secret comes from `--key-file` (private to
//! the user) or the `COMPUTE_KEY` environment variable (private to the process).

use crate::files;
use compute_client::Signer;
use std::path::Path;

/// Why no key could be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyArgError {
    #[error(
        "--key takes only a development key such as //Charlie: anything given on the command line \
         is visible to every user of this machine. Put your secret in a file readable by you only \
         and pass --key-file PATH, or set the COMPUTE_KEY environment variable"
    )]
    SecretInArgv,
    #[error("key file: {0}")]
    File(#[from] files::FileError),
    #[error(transparent)]
    Key(#[from] compute_client::KeyError),
}

/// A development secret URI: `//Name` (optionally `//Name/soft//hard`), with no phrase and no
/// password, so nothing secret.
pub fn is_dev_uri(uri: &str) -> bool {
    let uri = uri.trim();
    uri.len() > 2
        && uri.starts_with("//")
        && !uri.contains("///")
        && !uri.contains(char::is_whitespace)
}

/// The signer from `--key` (a development key only), else `--key-file` (refused when others can
/// read it), else the `COMPUTE_KEY` environment variable (any secret URI or phrase).
pub fn signer(
    arg: Option<&str>,
    file: Option<&Path>,
    env: Option<&str>,
) -> Result<Option<Signer>, KeyArgError> {
    if let Some(k) = arg {
        if !is_dev_uri(k) {
            return Err(KeyArgError::SecretInArgv);
        }
        return Ok(Some(Signer::from_uri(k)?));
    }
    if let Some(path) = file {
        return Ok(Some(Signer::from_uri(&files::read_private(path)?)?));
    }
    env.map(Signer::from_uri).transpose().map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHRASE: &str = "bottom drive obey lake curtain smoke basket hold race lonely fit walk";

    #[test]
    fn only_development_keys_on_the_command_line() {
        let charlie = signer(Some("//Charlie"), None, None).unwrap().unwrap();
        assert_eq!(charlie.account_id(), Signer::from_uri("//Charlie").unwrap().account_id());
        for secret in [
            PHRASE,
            "0x0123456789012345678901234567890123456789012345678901234567890123",
            &format!("{PHRASE}//Alice"),
            "//Alice///password",
            "//",
        ] {
            let e = signer(Some(secret), None, None).unwrap_err();
            assert!(matches!(e, KeyArgError::SecretInArgv), "{secret}: {e}");
            let e = e.to_string();
            assert!(e.contains("--key-file") && e.contains("COMPUTE_KEY"), "{e}");
        }
    }

    #[test]
    fn the_environment_takes_any_secret() {
        let from_env = signer(None, None, Some(PHRASE)).unwrap().unwrap();
        assert_eq!(from_env.account_id(), Signer::from_uri(PHRASE).unwrap().account_id());
        assert!(signer(None, None, None).unwrap().is_none());
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("compute-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, format!("{PHRASE}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = signer(None, Some(&path), Some("//Charlie")).unwrap_err().to_string();
        assert!(e.contains(&format!("chmod 600 {}", path.display())), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = signer(None, Some(&path), None).unwrap().unwrap();
        assert_eq!(s.account_id(), Signer::from_uri(PHRASE).unwrap().account_id());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
