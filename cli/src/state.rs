//! The local state file: per provider, the last nonce used and the last receipt total verified,
//! so a restart continues the sequence; and providers whose receipts failed verification.
//!
//! Several `compute` processes (a chat while the proxy runs) share the file. Every change goes
//! through [`State::lock`]: an exclusive advisory lock on `state.json.lock` beside it, held from
//! the load to [`Locked::commit`], so no process writes over an update it never read. The file
//! is private (`0600`, directory `0700` when created) and replaced atomically.

use crate::files;
use compute_primitives::{Balance, Nonce};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
};

/// What the CLI remembers about one provider.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProviderState {
    /// Last nonce signed.
    pub nonce: Nonce,
    /// Total of the last receipt verified (decimal string in the file).
    #[serde(with = "amount")]
    pub total: Balance,
    /// The last verified receipt (hex SCALE), kept for disputes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_receipt: Option<String>,
    /// Why vouchers to this provider are refused, if a receipt failed verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distrusted: Option<String>,
}

/// The whole file, keyed by `user/provider` SS58 addresses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub providers: BTreeMap<String, ProviderState>,
}

impl State {
    /// Read the file without locking it (empty when missing): for looking only. Writers use
    /// [`State::lock`].
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("state file {} is corrupt: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => anyhow::bail!("cannot read state file {}: {e}", path.display()),
        }
    }

    /// Take the file's lock (waiting for another process to finish its change) and load it.
    /// The change is written by [`Locked::commit`]; dropped without it, nothing is written.
    pub fn lock(path: &Path) -> anyhow::Result<Locked> {
        let lock = files::open_private(&lock_path(path))?;
        lock.lock().map_err(|e| {
            anyhow::anyhow!("cannot lock the state file {}: {e}", lock_path(path).display())
        })?;
        let state = State::read(path)?;
        Ok(Locked { state, path: path.to_path_buf(), _lock: lock })
    }

    /// The entry of (user, provider), if any.
    pub fn get(&self, user: &str, provider: &str) -> Option<&ProviderState> {
        self.providers.get(&format!("{user}/{provider}"))
    }

    /// The entry of (user, provider).
    pub fn entry(&mut self, user: &str, provider: &str) -> &mut ProviderState {
        self.providers.entry(format!("{user}/{provider}")).or_default()
    }
}

/// `state.json.lock` beside `state.json`.
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

/// The state loaded under the file's lock; the lock is released when this is dropped.
#[must_use = "a locked state is written only by `commit`"]
pub struct Locked {
    state: State,
    path: PathBuf,
    _lock: File,
}

impl Locked {
    /// The entry of (user, provider).
    pub fn entry(&mut self, user: &str, provider: &str) -> &mut ProviderState {
        self.state.entry(user, provider)
    }

    /// Write the state (private file, atomic replace) and release the lock.
    pub fn commit(self) -> anyhow::Result<()> {
        files::write_private(&self.path, &serde_json::to_vec_pretty(&self.state)?)?;
        Ok(())
    }
}

mod amount {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_changes_through_the_lock_lose_no_update() {
        let dir = std::env::temp_dir().join(format!(
            "compute-state-lock-{}-{}",
            std::process::id(),
            files::random_hex(4).unwrap()
        ));
        let path = dir.join("state.json");
        let (threads, each) = (4, 25);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..each {
                        let mut locked = State::lock(&path).unwrap();
                        let st = locked.entry("user", "provider");
                        st.nonce += 1;
                        st.total += 10;
                        // Widen the window in which an unlocked writer would interleave.
                        std::thread::yield_now();
                        locked.commit().unwrap();
                    }
                });
            }
        });
        let st = State::read(&path).unwrap().get("user", "provider").cloned().unwrap();
        assert_eq!((st.nonce, st.total), (threads * each, 10 * u128::from(threads * each)));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!((mode(&path), mode(&dir)), (0o600, 0o700));
        }
        // Only the file and its lock remain: every temporary file was renamed.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dropped_without_commit_writes_nothing() {
        let dir = std::env::temp_dir().join(format!("compute-state-drop-{}", std::process::id()));
        let path = dir.join("state.json");
        let mut locked = State::lock(&path).unwrap();
        locked.entry("u", "p").nonce = 7;
        drop(locked);
        assert!(State::read(&path).unwrap().get("u", "p").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
