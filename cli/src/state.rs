//! The local state file: per provider, the last nonce used and the last receipt total verified,
//! so a restart continues the sequence; and providers whose receipts failed verification.

use compute_primitives::{Balance, Nonce};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, path::PathBuf};

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
    #[serde(skip)]
    path: PathBuf,
}

impl State {
    /// Load from `path` (empty when missing).
    pub fn load(path: PathBuf) -> anyhow::Result<Self> {
        let mut s: State = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("state file {} is corrupt: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => anyhow::bail!("cannot read state file {}: {e}", path.display()),
        };
        s.path = path;
        Ok(s)
    }

    /// Write atomically (temp file + rename).
    pub fn save(&self) -> anyhow::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }

    /// The entry of (user, provider).
    pub fn entry(&mut self, user: &str, provider: &str) -> &mut ProviderState {
        self.providers.entry(format!("{user}/{provider}")).or_default()
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
