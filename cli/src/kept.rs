//! Chat answers kept for `compute audit`: for each answer whose receipt verified, the request
//! sent, the text received, the signed receipt and its activation proof. One file per answer,
//! `<state dir>/kept/<user>/<provider>/<nonce>.json`, owner-only like the state file; at most
//! [`MAX_KEPT`] per provider, the oldest removed first, so a long-running proxy cannot fill the
//! disk.

use crate::files;
use anyhow::Context;
use compute_primitives::{AccountId, Nonce, ServiceId};
use polkadot_sdk::sp_core::H256;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Answers kept per (user, provider).
pub const MAX_KEPT: usize = 2_000;
/// Largest kept file read back (a request body is at most some tens of KiB; a proof 36 bytes a
/// token): anything larger was not written by us.
const MAX_FILE: u64 = 16 << 20;

/// One kept answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Kept {
    pub nonce: Nonce,
    pub service_id: ServiceId,
    /// The weights the service committed to when the request was paid.
    pub model_hash: H256,
    /// The request body sent (OpenAI's JSON).
    pub request: serde_json::Value,
    /// The exact bytes of that body, which the voucher's `request_hash` commits to: the
    /// evidence of a challenge.
    #[serde(default)]
    pub body: Option<String>,
    /// The text received.
    pub text: String,
    /// The verified receipt (hex SCALE `SignedReceipt`).
    pub receipt: String,
    /// Its activation proof (`0x` hex).
    pub proof: String,
}

impl Kept {
    /// The kept receipt and the proof's bytes, decoded.
    pub fn decoded(&self) -> Result<(compute_primitives::SignedReceipt, Vec<u8>), String> {
        let receipt = compute_client::wire::from_hex("receipt", &self.receipt)
            .map_err(|e| format!("kept receipt: {e}"))?;
        let proof = self
            .proof
            .strip_prefix("0x")
            .and_then(|h| hex::decode(h).ok())
            .ok_or("kept proof is not hex")?;
        Ok((receipt, proof))
    }
}

/// Where the answers of `user` with `provider` are kept, beside the state file.
pub fn dir(state_path: &Path, user: &AccountId, provider: &AccountId) -> PathBuf {
    let base = state_path.parent().unwrap_or_else(|| Path::new("."));
    base.join("kept").join(user.to_string()).join(provider.to_string())
}

fn file_name(nonce: Nonce) -> String {
    format!("{nonce:020}.json")
}

/// Keep `kept` in `dir`, then drop the oldest beyond [`MAX_KEPT`].
pub fn keep(dir: &Path, kept: &Kept) -> anyhow::Result<()> {
    keep_at_most(dir, kept, MAX_KEPT)
}

fn keep_at_most(dir: &Path, kept: &Kept, max: usize) -> anyhow::Result<()> {
    files::create_private_dir(dir)?;
    let bytes = serde_json::to_vec(kept)?;
    anyhow::ensure!(
        bytes.len() as u64 <= MAX_FILE,
        "an answer of {} bytes is not kept",
        bytes.len()
    );
    files::write_private(&dir.join(file_name(kept.nonce)), &bytes)?;
    let mut names = kept_files(dir)?;
    if names.len() > max {
        names.sort();
        for old in &names[..names.len() - max] {
            std::fs::remove_file(dir.join(old))
                .with_context(|| format!("removing {}", dir.join(old).display()))?;
        }
    }
    Ok(())
}

fn kept_files(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.len() == 25
            && name.ends_with(".json")
            && name[..20].bytes().all(|b| b.is_ascii_digit())
        {
            names.push(name);
        }
    }
    Ok(names)
}

/// Every answer kept in `dir`, oldest first (none if nothing was kept), and the nonces of
/// files that could not be read, with why: one bad file does not hide the others.
#[allow(clippy::type_complexity)]
pub fn load(dir: &Path) -> anyhow::Result<(Vec<Kept>, Vec<(Nonce, String)>)> {
    if !dir.exists() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut names = kept_files(dir)?;
    names.sort();
    let (mut out, mut bad) = (Vec::with_capacity(names.len()), Vec::new());
    for name in names {
        let path = dir.join(&name);
        let nonce = name[..20].parse().unwrap_or_default();
        let read = || -> anyhow::Result<Kept> {
            files::check_private(&path)?;
            let len = std::fs::metadata(&path)?.len();
            anyhow::ensure!(len <= MAX_FILE, "{len} bytes: not a kept answer");
            Ok(serde_json::from_str(&std::fs::read_to_string(&path)?)?)
        };
        match read() {
            Ok(k) => out.push(k),
            Err(e) => bad.push((nonce, format!("kept answer unreadable: {e:#}"))),
        }
    }
    Ok((out, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(nonce: Nonce) -> Kept {
        Kept {
            nonce,
            service_id: 0,
            model_hash: H256::repeat_byte(1),
            request: serde_json::json!({ "messages": [{ "role": "user", "content": "hi" }] }),
            body: None,
            text: "hello".into(),
            receipt: "0x00".into(),
            proof: "0x01".into(),
        }
    }

    #[test]
    fn keeps_the_newest_and_reads_them_back_in_order() {
        let dir = std::env::temp_dir().join(format!("compute-kept-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for nonce in [7, 3, 9, 1, 8, 2, 10, 5] {
            keep_at_most(&dir, &kept(nonce), 5).unwrap();
        }
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let (all, bad) = load(&dir).unwrap();
        assert!(bad.is_empty());
        let nonces: Vec<Nonce> = all.iter().map(|k| k.nonce).collect();
        assert_eq!(nonces, [5, 7, 8, 9, 10], "the five highest nonces, oldest first");
        assert_eq!(all.last(), Some(&kept(10)));
        // A damaged file is reported with its nonce; the others still load.
        std::fs::write(dir.join(file_name(8)), "{").unwrap();
        let (all, bad) = load(&dir).unwrap();
        assert_eq!(all.iter().map(|k| k.nonce).collect::<Vec<_>>(), [5, 7, 9, 10]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, 8);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
