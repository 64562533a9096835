//! One key for everything an account signs: extrinsics (through subxt) and the protocol's
//! vouchers, receipts and auth challenges (as `MultiSignature::Sr25519`).

use compute_primitives::{AccountId, Signature};
use polkadot_sdk::sp_core::sr25519;
use std::{path::Path, str::FromStr};
use subxt_signer::{sr25519::Keypair, SecretUri};

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is neither a secret URI (`//Alice`, `phrase//path`, `0x<seed>`) nor a phrase.
    #[error("not a valid secret URI or phrase: {0}")]
    BadUri(String),
    /// The key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// An sr25519 key pair.
#[derive(Clone)]
pub struct Signer {
    pair: Keypair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.account_id())
    }
}

impl Signer {
    /// From a secret URI: a dev URI like `//Alice`, a mnemonic with optional `//hard/soft`
    /// derivation and `///password`, or a `0x`-prefixed 32-byte seed.
    pub fn from_uri(uri: &str) -> Result<Self, KeyError> {
        let uri = uri.trim();
        let parsed = SecretUri::from_str(uri).map_err(|e| KeyError::BadUri(e.to_string()))?;
        let pair = Keypair::from_uri(&parsed).map_err(|e| KeyError::BadUri(e.to_string()))?;
        Ok(Signer { pair })
    }

    /// From a file holding a secret URI or phrase (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeyError::File { path: path.display().to_string(), source })?;
        Self::from_uri(&text)
    }

    /// The account this key controls.
    pub fn account_id(&self) -> AccountId {
        AccountId::new(self.pair.public_key().0)
    }

    /// Sign raw bytes (a protocol signing payload) as a `MultiSignature`.
    pub fn sign(&self, payload: &[u8]) -> Signature {
        let raw = self.pair.sign(payload).0;
        Signature::Sr25519(sr25519::Signature::from_raw(raw))
    }

    /// The subxt key pair, for extrinsics.
    pub fn keypair(&self) -> &Keypair {
        &self.pair
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compute_primitives::verify_payload;

    #[test]
    fn dev_uri_gives_the_well_known_account_and_signatures_verify() {
        let alice = Signer::from_uri("//Alice").expect("dev uri");
        assert_eq!(
            alice.account_id().to_string(),
            "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
        );
        let sig = alice.sign(b"hello");
        assert!(verify_payload(b"hello", &sig, &alice.account_id()));
        assert!(!verify_payload(b"hellO", &sig, &alice.account_id()));
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = Signer::from_uri("not a key at all!").unwrap_err();
        assert!(matches!(err, KeyError::BadUri(_)), "{err}");
        let err = Signer::from_file(Path::new("/no/such/key")).unwrap_err();
        assert!(err.to_string().contains("/no/such/key"), "{err}");
    }
}
