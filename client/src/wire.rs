//! The worker's HTTP wire format, shared by the worker (server) and the CLI/proxy (client):
//! header names, SCALE-in-hex encoding of vouchers and receipts, the receipt's JSON form, the
//! signed auth challenge of `GET /v1/receipts`, and the checks a client runs on every receipt.

use codec::{Decode, Encode};
use compute_primitives::{
    AccountId, Balance, Receipt, SignedReceipt, SignedVoucher, Voucher, AUTH_TAG,
};
use polkadot_sdk::{sp_core::H256, sp_io::hashing::blake2_256};
use serde::{Deserialize, Serialize};

use crate::keys::Signer;

/// Request header carrying the SCALE-encoded `SignedVoucher` as `0x`-hex.
pub const VOUCHER_HEADER: &str = "x-compute-voucher";
/// Response header carrying the SCALE-encoded `SignedReceipt` as `0x`-hex.
pub const RECEIPT_HEADER: &str = "x-compute-receipt";
/// Request header of `GET /v1/receipts`: the SCALE-encoded signed [`AuthChallenge`] as hex.
pub const AUTH_HEADER: &str = "x-compute-auth";
/// How far an auth challenge's timestamp may be from the worker's clock.
pub const AUTH_MAX_SKEW_SECS: u64 = 300;

/// Why a wire value could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Not `0x`-prefixed hex.
    #[error("not 0x-prefixed hex")]
    NotHex,
    /// Hex, but not the SCALE encoding of the expected type (or trailing bytes).
    #[error("not a SCALE-encoded {0}")]
    NotScale(&'static str),
}

/// `0x`-hex of the SCALE encoding.
pub fn to_hex<T: Encode>(value: &T) -> String {
    format!("0x{}", hex::encode(value.encode()))
}

/// Decode `0x`-hex SCALE, refusing trailing bytes.
pub fn from_hex<T: Decode>(what: &'static str, s: &str) -> Result<T, WireError> {
    let bytes = hex::decode(s.trim().strip_prefix("0x").ok_or(WireError::NotHex)?)
        .map_err(|_| WireError::NotHex)?;
    let mut input = &bytes[..];
    let value = T::decode(&mut input).map_err(|_| WireError::NotScale(what))?;
    if !input.is_empty() {
        return Err(WireError::NotScale(what));
    }
    Ok(value)
}

/// blake2-256 of a request body: a voucher's `request_hash`.
pub fn request_hash(body: &[u8]) -> H256 {
    H256(blake2_256(body))
}

/// blake2-256 of a chat response's text: a receipt's `response_hash`.
pub fn response_hash(text: &str) -> H256 {
    H256(blake2_256(text.as_bytes()))
}

/// blake2-256 of an activation proof's bytes: a receipt's `proof_hash`.
pub fn proof_hash(proof: &[u8]) -> H256 {
    H256(blake2_256(proof))
}

/// blake2-256 of an embeddings response: the little-endian f32 bytes of every vector, in input
/// order (the bytes `encoding_format: "base64"` carries, concatenated).
pub fn embedding_hash<V: AsRef<[f32]>>(vectors: &[V]) -> H256 {
    let mut bytes = Vec::with_capacity(vectors.iter().map(|v| v.as_ref().len() * 4).sum());
    for v in vectors {
        for x in v.as_ref() {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
    }
    H256(blake2_256(&bytes))
}

/// Sign a voucher for this chain.
pub fn sign_voucher(signer: &Signer, voucher: Voucher, genesis: &H256) -> SignedVoucher {
    let signature = signer.sign(&voucher.signing_payload(genesis));
    SignedVoucher { voucher, signature }
}

/// Sign a receipt for this chain.
pub fn sign_receipt(signer: &Signer, receipt: Receipt, genesis: &H256) -> SignedReceipt {
    let signature = signer.sign(&receipt.signing_payload(genesis));
    SignedReceipt { receipt, signature }
}

/// A receipt as JSON: every field readable, plus the exact signed bytes as hex.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReceiptJson {
    pub user: String,
    pub provider: String,
    pub service_id: u32,
    pub nonce: u64,
    pub request_hash: String,
    pub response_hash: String,
    /// blake2-256 of `proof`; zero without one.
    #[serde(default)]
    pub proof_hash: String,
    /// The weights the provider says computed the response.
    #[serde(default)]
    pub model_hash: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Decimal string.
    pub fee: String,
    /// Decimal string.
    pub total: String,
    /// SCALE-encoded `SignedReceipt` as hex: what a client verifies and keeps.
    pub signed: String,
    /// SCALE-encoded `SignedVoucher` as hex: the user's voucher this receipt answers. Only
    /// `GET /v1/receipts` sets it, so that a client catching up on receipts it never saw can
    /// check that it signed each of them (and for at most how much).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voucher: Option<String>,
    /// The response's activation proof as hex (chat): the bytes `proof_hash` commits to, which
    /// an auditor checks against the committed weights (`compute_inference::proof`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

impl ReceiptJson {
    /// The receipt with the voucher it answers attached.
    pub fn with_voucher(mut self, voucher: &SignedVoucher) -> Self {
        self.voucher = Some(to_hex(voucher));
        self
    }

    /// The receipt with its activation proof attached.
    pub fn with_proof(mut self, proof: &[u8]) -> Self {
        self.proof = Some(format!("0x{}", hex::encode(proof)));
        self
    }

    /// The attached proof's bytes, if any and if it is the one the receipt commits to.
    pub fn proof_bytes(&self, receipt: &Receipt) -> Result<Option<Vec<u8>>, ReceiptError> {
        let Some(text) = &self.proof else { return Ok(None) };
        let bytes = text
            .strip_prefix("0x")
            .and_then(|h| hex::decode(h).ok())
            .ok_or(ReceiptError::ProofEncoding)?;
        if proof_hash(&bytes) != receipt.proof_hash {
            return Err(ReceiptError::ProofHash);
        }
        Ok(Some(bytes))
    }
}

impl From<&SignedReceipt> for ReceiptJson {
    fn from(s: &SignedReceipt) -> Self {
        let r = &s.receipt;
        ReceiptJson {
            user: r.user.to_string(),
            provider: r.provider.to_string(),
            service_id: r.service_id,
            nonce: r.nonce,
            request_hash: format!("{:?}", r.request_hash),
            response_hash: format!("{:?}", r.response_hash),
            proof_hash: format!("{:?}", r.proof_hash),
            model_hash: format!("{:?}", r.model_hash),
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            fee: r.fee.to_string(),
            total: r.total.to_string(),
            signed: to_hex(s),
            voucher: None,
            proof: None,
        }
    }
}

/// Why a receipt is not acceptable to the user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiptError {
    #[error("receipt signature does not verify for provider {0}")]
    BadSignature(String),
    #[error("receipt is for {field}: expected {expected}, got {got}")]
    Mismatch { field: &'static str, expected: String, got: String },
    #[error("receipt fee {fee} is not input {input_tokens} x {input_price} + output {output_tokens} x {output_price}")]
    FeeFormula {
        fee: Balance,
        input_tokens: u64,
        output_tokens: u64,
        input_price: Balance,
        output_price: Balance,
    },
    #[error("receipt fee {fee} exceeds the voucher's cap {cap}")]
    AboveCap { fee: Balance, cap: Balance },
    #[error("receipt total {got} is not the previous total {previous} plus fee {fee}")]
    Total { previous: Balance, fee: Balance, got: Balance },
    #[error("the receipt's proof is not `0x` and hex digits")]
    ProofEncoding,
    #[error("the proof sent does not hash to the receipt's proof_hash")]
    ProofHash,
}

/// Every check a client makes on a receipt for its own voucher: signature by the provider on
/// this chain, the fields echo the voucher, the fee follows the prices and stays under the cap,
/// and the running total continues from the last total the client verified (`previous_total`).
pub fn check_receipt(
    signed: &SignedReceipt,
    voucher: &Voucher,
    genesis: &H256,
    prices: (Balance, Balance),
    previous_total: Balance,
) -> Result<(), ReceiptError> {
    check_receipt_at(signed, voucher, genesis, Some(prices), previous_total)
}

/// [`check_receipt`], with the fee formula checked only when the prices are known (`None`: the
/// voucher names a price version that is no longer on chain, so only the cap bounds the fee).
pub fn check_receipt_at(
    signed: &SignedReceipt,
    voucher: &Voucher,
    genesis: &H256,
    prices: Option<(Balance, Balance)>,
    previous_total: Balance,
) -> Result<(), ReceiptError> {
    let r = &signed.receipt;
    if !signed.verify(genesis) || r.provider != voucher.provider {
        return Err(ReceiptError::BadSignature(voucher.provider.to_string()));
    }
    let mismatch =
        |field, expected: String, got: String| Err(ReceiptError::Mismatch { field, expected, got });
    if r.user != voucher.user {
        return mismatch("user", voucher.user.to_string(), r.user.to_string());
    }
    if r.nonce != voucher.nonce {
        return mismatch("nonce", voucher.nonce.to_string(), r.nonce.to_string());
    }
    if r.service_id != voucher.service_id {
        return mismatch("service", voucher.service_id.to_string(), r.service_id.to_string());
    }
    if r.request_hash != voucher.request_hash {
        return mismatch(
            "request_hash",
            format!("{:?}", voucher.request_hash),
            format!("{:?}", r.request_hash),
        );
    }
    if let (Some(prices), true) = (prices, r.fee != 0) {
        let expected = compute_primitives::fee(r.input_tokens, r.output_tokens, prices.0, prices.1);
        if expected != Some(r.fee) {
            return Err(ReceiptError::FeeFormula {
                fee: r.fee,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                input_price: prices.0,
                output_price: prices.1,
            });
        }
    }
    if r.fee > voucher.cap {
        return Err(ReceiptError::AboveCap { fee: r.fee, cap: voucher.cap });
    }
    if previous_total.checked_add(r.fee) != Some(r.total) {
        return Err(ReceiptError::Total { previous: previous_total, fee: r.fee, got: r.total });
    }
    Ok(())
}

/// The signed challenge of `GET /v1/receipts`: proves the caller holds `user`'s key now.
#[derive(Debug, Clone, Encode, Decode, PartialEq, Eq)]
pub struct AuthChallenge {
    /// The account whose receipts are asked for.
    pub user: AccountId,
    /// The provider asked.
    pub provider: AccountId,
    /// Unix seconds; must be within [`AUTH_MAX_SKEW_SECS`] of the worker's clock.
    pub timestamp: u64,
}

/// An auth challenge with the user's signature.
#[derive(Debug, Clone, Encode, Decode, PartialEq, Eq)]
pub struct SignedAuth {
    pub challenge: AuthChallenge,
    pub signature: compute_primitives::Signature,
}

impl SignedAuth {
    /// Sign a challenge for `provider` at `timestamp`.
    pub fn new(signer: &Signer, provider: AccountId, timestamp: u64, genesis: &H256) -> Self {
        let challenge = AuthChallenge { user: signer.account_id(), provider, timestamp };
        let payload = compute_primitives::signing_payload(AUTH_TAG, genesis, &challenge);
        SignedAuth { challenge, signature: signer.sign(&payload) }
    }

    /// Whether the signature verifies for the challenge's user on this chain.
    pub fn verify(&self, genesis: &H256) -> bool {
        let payload = compute_primitives::signing_payload(AUTH_TAG, genesis, &self.challenge);
        compute_primitives::verify_payload(&payload, &self.signature, &self.challenge.user)
    }
}

/// The OpenAI-style error body, with the protocol's extra fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub code: String,
    /// The receipt of a rejected request whose voucher verified (fee 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<ReceiptJson>,
    /// Values the worker expected (nonce, spent, price_version, amount needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<serde_json::Value>,
}

impl ErrorBody {
    /// An error of OpenAI type `kind` (`invalid_request_error`, `server_error`, ...).
    pub fn new(kind: &str, code: &str, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                message: message.into(),
                kind: kind.into(),
                code: code.into(),
                receipt: None,
                expected: None,
            },
        }
    }

    /// The error with the fee-0 receipt that answers its voucher.
    pub fn with_receipt(mut self, receipt: &SignedReceipt) -> Self {
        self.error.receipt = Some(receipt.into());
        self
    }

    /// The error with the values the worker expected.
    pub fn with_expected(mut self, expected: Option<serde_json::Value>) -> Self {
        self.error.expected = expected;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compute_primitives::Receipt;

    #[test]
    fn embedding_hash_covers_the_vector_bytes_in_order() {
        let a = [1.0f32, -0.5];
        let b = [0.25f32];
        let bytes: Vec<u8> = [1.0f32, -0.5, 0.25].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(embedding_hash(&[&a[..], &b[..]]), H256(blake2_256(&bytes)));
        assert_ne!(embedding_hash(&[&b[..], &a[..]]), embedding_hash(&[&a[..], &b[..]]));
    }

    fn voucher(user: &Signer, provider: &Signer) -> Voucher {
        Voucher {
            user: user.account_id(),
            provider: provider.account_id(),
            service_id: 0,
            price_version: 0,
            nonce: 3,
            request_hash: request_hash(b"{}"),
            spent: 50,
            cap: 1_000,
        }
    }

    fn receipt(v: &Voucher, fee: Balance, total: Balance) -> Receipt {
        Receipt {
            user: v.user.clone(),
            provider: v.provider.clone(),
            service_id: v.service_id,
            nonce: v.nonce,
            request_hash: v.request_hash,
            response_hash: response_hash("hi"),
            proof_hash: Default::default(),
            model_hash: Default::default(),
            input_tokens: 10,
            output_tokens: 5,
            fee,
            total,
        }
    }

    #[test]
    fn hex_round_trip_and_refusals() {
        let (u, p) = (Signer::from_uri("//Alice").unwrap(), Signer::from_uri("//Bob").unwrap());
        let g = H256::repeat_byte(7);
        let sv = sign_voucher(&u, voucher(&u, &p), &g);
        let hex = to_hex(&sv);
        assert_eq!(from_hex::<SignedVoucher>("voucher", &hex), Ok(sv));
        assert_eq!(from_hex::<SignedVoucher>("voucher", "zz"), Err(WireError::NotHex));
        assert_eq!(
            from_hex::<SignedVoucher>("voucher", "0x0102"),
            Err(WireError::NotScale("voucher"))
        );
        assert_eq!(
            from_hex::<SignedVoucher>("voucher", &format!("{hex}00")),
            Err(WireError::NotScale("voucher"))
        );
    }

    #[test]
    fn receipt_checks() {
        let (u, p) = (Signer::from_uri("//Alice").unwrap(), Signer::from_uri("//Bob").unwrap());
        let g = H256::repeat_byte(7);
        let v = voucher(&u, &p);
        let prices = (2, 10); // 10*2 + 5*10 = 70
        let good = sign_receipt(&p, receipt(&v, 70, 120), &g);
        assert_eq!(check_receipt(&good, &v, &g, prices, 50), Ok(()));
        // Signed by someone else, or for another chain.
        let forged = sign_receipt(&u, receipt(&v, 70, 120), &g);
        assert!(matches!(
            check_receipt(&forged, &v, &g, prices, 50),
            Err(ReceiptError::BadSignature(_))
        ));
        assert!(matches!(
            check_receipt(&good, &v, &H256::zero(), prices, 50),
            Err(ReceiptError::BadSignature(_))
        ));
        let wrong_fee = sign_receipt(&p, receipt(&v, 71, 121), &g);
        assert!(matches!(
            check_receipt(&wrong_fee, &v, &g, prices, 50),
            Err(ReceiptError::FeeFormula { .. })
        ));
        let wrong_total = sign_receipt(&p, receipt(&v, 70, 125), &g);
        assert!(matches!(
            check_receipt(&wrong_total, &v, &g, prices, 50),
            Err(ReceiptError::Total { .. })
        ));
        let mut small = v.clone();
        small.cap = 60;
        assert!(matches!(
            check_receipt(&good, &small, &g, prices, 50),
            Err(ReceiptError::AboveCap { fee: 70, cap: 60 })
        ));
        // A fee-0 receipt (rejected request) only has to carry the total forward.
        let zero = sign_receipt(&p, receipt(&v, 0, 50), &g);
        assert_eq!(check_receipt(&zero, &v, &g, prices, 50), Ok(()));
        // Prices unknown (an older price version): the cap still bounds the fee.
        assert_eq!(check_receipt_at(&wrong_fee, &v, &g, None, 50), Ok(()));
        assert!(matches!(
            check_receipt_at(&good, &small, &g, None, 50),
            Err(ReceiptError::AboveCap { .. })
        ));
    }

    #[test]
    fn the_voucher_field_is_left_out_unless_set() {
        let (u, p) = (Signer::from_uri("//Alice").unwrap(), Signer::from_uri("//Bob").unwrap());
        let g = H256::repeat_byte(7);
        let v = voucher(&u, &p);
        let json = ReceiptJson::from(&sign_receipt(&p, receipt(&v, 70, 120), &g));
        let text = serde_json::to_string(&json).unwrap();
        assert!(!text.contains("voucher"), "{text}");
        assert_eq!(serde_json::from_str::<ReceiptJson>(&text).unwrap(), json);
        let sv = sign_voucher(&u, v, &g);
        let with = json.with_voucher(&sv);
        let back: ReceiptJson =
            serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
        assert_eq!(from_hex::<SignedVoucher>("voucher", back.voucher.as_deref().unwrap()), Ok(sv));
    }

    #[test]
    fn auth_challenge_verifies_only_for_its_signer_and_chain() {
        let (u, p) = (Signer::from_uri("//Alice").unwrap(), Signer::from_uri("//Bob").unwrap());
        let g = H256::repeat_byte(1);
        let mut a = SignedAuth::new(&u, p.account_id(), 1_700_000_000, &g);
        assert!(a.verify(&g));
        assert!(!a.verify(&H256::zero()));
        a.challenge.timestamp += 1;
        assert!(!a.verify(&g));
    }
}
