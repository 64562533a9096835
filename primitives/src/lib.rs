//! Types shared by the compute pallet, the provider worker and the user's client.
//!
//! Everything that crosses a boundary between those parts lives here, once: vouchers and
//! receipts with their signing payloads, on-chain records returned by the runtime API, the fee
//! formula and the trace root. The byte layout of every signed message is specified in
//! `docs/protocol.md`; [`signing_payload`] is its single implementation.

#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

use alloc::vec::Vec;
use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use polkadot_sdk::{
    sp_core::{ConstU32, H256},
    sp_runtime::{
        traits::{BlakeTwo256, Verify},
        AccountId32, BoundedVec, MultiSignature,
    },
};
use scale_info::TypeInfo;

pub mod challenge;
pub mod finetune;
#[cfg(feature = "std")]
pub mod rpc;

pub use challenge::*;
pub use finetune::*;

/// Token amounts in the smallest unit.
pub type Balance = u128;
/// A provider-chosen identifier of one of its services.
pub type ServiceId = u32;
/// Per (user, provider) request counter.
pub type Nonce = u64;
/// Account identifier used by every actor.
pub type AccountId = AccountId32;
/// Signature over a signing payload (sr25519, ed25519 or ecdsa).
pub type Signature = MultiSignature;

/// Domain tag of a voucher's signing payload.
pub const VOUCHER_TAG: &[u8] = b"compute/voucher/v1";
/// Domain tag of a receipt's signing payload.
pub const RECEIPT_TAG: &[u8] = b"compute/receipt/v3";
/// Domain tag of an authentication challenge (`GET /v1/receipts`).
pub const AUTH_TAG: &[u8] = b"compute/auth/v1";

/// Longest model name stored on chain, in bytes.
pub const MAX_MODEL_LEN: u32 = 128;
/// Longest endpoint URL stored on chain, in bytes.
pub const MAX_URL_LEN: u32 = 256;
/// Longest verifiability description stored on chain, in bytes.
pub const MAX_VERIFIABILITY_LEN: u32 = 64;

/// Model name bytes (UTF-8).
pub type ModelName = BoundedVec<u8, ConstU32<MAX_MODEL_LEN>>;
/// Endpoint URL bytes (UTF-8).
pub type Url = BoundedVec<u8, ConstU32<MAX_URL_LEN>>;
/// How responses can be verified, e.g. `none` or `tee` (UTF-8).
pub type Verifiability = BoundedVec<u8, ConstU32<MAX_VERIFIABILITY_LEN>>;

/// What a service does.
#[derive(
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(rename_all = "snake_case"))]
pub enum ServiceKind {
    /// Chat completions, priced per input and output token.
    Chat,
    /// Embeddings, priced per input token.
    Embedding,
    /// Fine-tuning jobs on the service's model, priced per trained token (`input_price`; the
    /// output price is zero), on the terms set with `set_finetune_terms`.
    FineTune,
}

impl ServiceKind {
    /// `chat`, `embedding` or `fine_tune`, as configs, JSON and the command line spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            ServiceKind::Chat => "chat",
            ServiceKind::Embedding => "embedding",
            ServiceKind::FineTune => "fine_tune",
        }
    }
}

impl core::str::FromStr for ServiceKind {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "chat" => Ok(ServiceKind::Chat),
            "embedding" => Ok(ServiceKind::Embedding),
            "fine_tune" => Ok(ServiceKind::FineTune),
            _ => Err(()),
        }
    }
}

/// A service as registered on chain, keyed by `(provider, ServiceId)`.
#[derive(
    Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Clone, PartialEq, Eq, Debug,
)]
pub struct Service {
    /// What the service does.
    pub kind: ServiceKind,
    /// Model name, as the worker's `/v1/models` reports it.
    pub model: ModelName,
    /// blake2-256 of the exact weight file served (the GGUF for chat, the safetensors for
    /// embeddings), which the worker serves by this hash for anyone to check; zero where the
    /// provider commits to none.
    pub model_hash: H256,
    /// Public endpoint of the worker.
    pub url: Url,
    /// Price per input token.
    pub input_price: Balance,
    /// Price per output token.
    pub output_price: Balance,
    /// How responses can be verified.
    pub verifiability: Verifiability,
    /// Number of updates so far; vouchers name the version they accept.
    pub price_version: u32,
}

/// What a provider offers a service on: the argument of `register_service` and
/// `update_service`.
#[derive(
    Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Clone, PartialEq, Eq, Debug,
)]
pub struct ServiceTerms {
    pub kind: ServiceKind,
    pub model: ModelName,
    pub model_hash: H256,
    pub url: Url,
    pub input_price: Balance,
    pub output_price: Balance,
    pub verifiability: Verifiability,
}

impl Service {
    /// A service on `terms`, at `price_version`.
    pub fn new(terms: ServiceTerms, price_version: u32) -> Self {
        let ServiceTerms { kind, model, model_hash, url, input_price, output_price, verifiability } =
            terms;
        Service {
            kind,
            model,
            model_hash,
            url,
            input_price,
            output_price,
            verifiability,
            price_version,
        }
    }

    /// The fee of a request with these token counts at this service's prices.
    pub fn fee(&self, input_tokens: u64, output_tokens: u64) -> Option<Balance> {
        fee(input_tokens, output_tokens, self.input_price, self.output_price)
    }
}

/// One escrow per (user, provider), funded by a hold on the user's balance.
#[derive(Encode, Decode, MaxEncodedLen, TypeInfo, Clone, PartialEq, Eq, Debug, Default)]
pub struct Escrow<BlockNumber> {
    /// Funds held for this provider, pending refund included.
    pub balance: Balance,
    /// Part of `balance` the user asked back; withdrawable from `unlock_at`.
    pub pending_refund: Balance,
    /// Block from which the pending refund can be withdrawn.
    pub unlock_at: BlockNumber,
    /// Highest voucher nonce settled so far (acks included). Never decreases.
    pub settled_nonce: Nonce,
    /// Highest nonce of a paying (cap > 0) voucher settled so far.
    pub settled_through: Nonce,
    /// Total paid to the provider over the escrow's life, less won disputes.
    pub settled_total: Balance,
    /// `spent + fee_claim` of the last settled claim.
    pub last_claimed_total: Balance,
    /// Block of the last settlement.
    pub last_settled_at: BlockNumber,
    /// Paid by settlement but still kept in the escrow account until `held_until`: what a
    /// dispute can take back. Released to the provider from `held_until` on.
    pub held: Balance,
    /// First block at which `held` belongs to the provider.
    pub held_until: BlockNumber,
    /// Paid by settlements while `held` was still locked; released from `held_next_until`.
    pub held_next: Balance,
    /// First block at which `held_next` belongs to the provider.
    pub held_next_until: BlockNumber,
}

impl<BlockNumber: PartialOrd + Copy> Escrow<BlockNumber> {
    /// The part of the balance not asked back.
    pub fn spendable(&self) -> Balance {
        self.balance.saturating_sub(self.pending_refund)
    }

    /// Of the held payments, the part still locked at block `now`: what a dispute can recover.
    pub fn locked(&self, now: BlockNumber) -> Balance {
        let mut locked: Balance = 0;
        if now < self.held_until {
            locked = locked.saturating_add(self.held);
        }
        if now < self.held_next_until {
            locked = locked.saturating_add(self.held_next);
        }
        locked
    }

    /// Of the held payments, the part released to the provider at block `now`.
    pub fn releasable(&self, now: BlockNumber) -> Balance {
        self.held.saturating_add(self.held_next).saturating_sub(self.locked(now))
    }
}

/// A provider's bond and running statistics.
#[derive(Encode, Decode, MaxEncodedLen, TypeInfo, Clone, PartialEq, Eq, Debug, Default)]
pub struct ProviderInfo<BlockNumber> {
    /// Amount held as the provider bond.
    pub bond: Balance,
    /// Number of registered services.
    pub services: u32,
    /// True once the last service is removed; cleared by registering again.
    pub unbonding: bool,
    /// Claims that moved funds (paid in full or in part); claims paying nothing do not count.
    pub claims_settled: u64,
    /// Requests settled: over claims that moved funds, the sum of nonce advances, each advance
    /// counted at most once per unit of the smallest denomination paid (so a high nonce in a
    /// cheap voucher cannot inflate it).
    pub requests_settled: u64,
    /// Amount paid by settlement (held or released), less what disputes took back.
    pub earned: Balance,
    /// Disputes the provider lost.
    pub disputes_lost: u32,
    /// Block of the last settlement.
    pub last_settled_at: BlockNumber,
    /// First block at which every dispute window of this provider's settlements has closed:
    /// the bond can be withdrawn from here on.
    pub bond_locked_until: BlockNumber,
}

/// The user-signed request trace. Cumulative: the latest settles everything before it.
#[derive(
    Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Clone, PartialEq, Eq, Debug,
)]
pub struct Voucher {
    /// The paying user.
    pub user: AccountId,
    /// The provider allowed to settle it.
    pub provider: AccountId,
    /// Service addressed.
    pub service_id: ServiceId,
    /// Price version the user accepted.
    pub price_version: u32,
    /// Strictly increasing per (user, provider).
    pub nonce: Nonce,
    /// blake2-256 of the request body; zero for a closing ack.
    pub request_hash: H256,
    /// `total` of a receipt the user holds.
    pub spent: Balance,
    /// Most the provider may charge for this request; zero for a closing ack.
    pub cap: Balance,
}

impl Voucher {
    /// Whether this is a closing ack rather than a request.
    pub fn is_ack(&self) -> bool {
        self.cap == 0
    }
}

/// The provider-signed response trace.
#[derive(
    Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Clone, PartialEq, Eq, Debug,
)]
pub struct Receipt {
    /// The user served.
    pub user: AccountId,
    /// The provider that served.
    pub provider: AccountId,
    /// Service used.
    pub service_id: ServiceId,
    /// Nonce of the voucher answered.
    pub nonce: Nonce,
    /// The voucher's `request_hash`.
    pub request_hash: H256,
    /// blake2-256 of the response text (chat) or little-endian f32 vectors (embeddings).
    pub response_hash: H256,
    /// blake2-256 of the response's activation proof (chat; the format of
    /// `compute_inference::proof`); zero where there is none (embeddings, whose vectors anyone
    /// with the weights recomputes exactly, and refused requests).
    pub proof_hash: H256,
    /// The weights the provider says computed the response (its service's `model_hash` when it
    /// served): the weights a challenge is judged against, so a later change of the service
    /// cannot move the goalposts.
    pub model_hash: H256,
    /// Prompt tokens counted with the model's tokenizer.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Charge for this request; zero for a rejected one.
    pub fee: Balance,
    /// Running total of fees for this (user, provider), in nonce order.
    pub total: Balance,
}

/// A voucher with the user's signature.
#[derive(
    Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Clone, PartialEq, Eq, Debug,
)]
pub struct SignedVoucher {
    /// The signed message.
    pub voucher: Voucher,
    /// Signature of `voucher.user` over the voucher's signing payload.
    pub signature: Signature,
}

/// A receipt with the provider's signature.
#[derive(
    Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Clone, PartialEq, Eq, Debug,
)]
pub struct SignedReceipt {
    /// The signed message.
    pub receipt: Receipt,
    /// Signature of `receipt.provider` over the receipt's signing payload.
    pub signature: Signature,
}

/// One settlement item.
#[derive(
    Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Clone, PartialEq, Eq, Debug,
)]
pub struct Claim {
    /// The latest voucher of a (user, provider).
    pub voucher: SignedVoucher,
    /// Amount claimed on top of `voucher.spent`; at most `voucher.cap`.
    pub fee_claim: Balance,
}

/// Why a settlement item was refused.
#[derive(
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Debug,
)]
pub enum RejectReason {
    /// The voucher's signature does not verify for its user on this chain.
    BadSignature,
    /// The nonce is not above the settled nonce, and it is not the rest of a partial.
    StaleNonce,
    /// The voucher names another provider than the one settling.
    WrongProvider,
    /// `fee_claim` exceeds the voucher's cap.
    ClaimAboveCap,
    /// The user has no escrow with this provider.
    NoEscrow,
    /// An amount overflowed.
    Overflow,
    /// The payout could not be moved (should not happen; nothing was changed).
    TransferFailed,
}

impl From<polkadot_sdk::sp_runtime::DispatchError> for RejectReason {
    fn from(_: polkadot_sdk::sp_runtime::DispatchError) -> Self {
        RejectReason::TransferFailed
    }
}

/// The bytes signed for message `m` under domain `tag` on the chain with `genesis_hash`:
/// `tag ++ genesis_hash ++ SCALE(m)`, neither hashed nor wrapped.
pub fn signing_payload<M: Encode>(tag: &[u8], genesis_hash: &H256, m: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(tag.len() + 32 + m.size_hint());
    out.extend_from_slice(tag);
    out.extend_from_slice(genesis_hash.as_bytes());
    m.encode_to(&mut out);
    out
}

const BYTES_PREFIX: &[u8] = b"<Bytes>";
const BYTES_SUFFIX: &[u8] = b"</Bytes>";

/// Whether `signature` by `signer` verifies over `payload`, either raw or wrapped as
/// `<Bytes>payload</Bytes>` (what browser wallets sign).
pub fn verify_payload(payload: &[u8], signature: &Signature, signer: &AccountId) -> bool {
    if signature.verify(payload, signer) {
        return true;
    }
    let mut wrapped = Vec::with_capacity(BYTES_PREFIX.len() + payload.len() + BYTES_SUFFIX.len());
    wrapped.extend_from_slice(BYTES_PREFIX);
    wrapped.extend_from_slice(payload);
    wrapped.extend_from_slice(BYTES_SUFFIX);
    signature.verify(&wrapped[..], signer)
}

impl Voucher {
    /// The bytes the user signs.
    pub fn signing_payload(&self, genesis_hash: &H256) -> Vec<u8> {
        signing_payload(VOUCHER_TAG, genesis_hash, self)
    }
}

impl Receipt {
    /// The bytes the provider signs.
    pub fn signing_payload(&self, genesis_hash: &H256) -> Vec<u8> {
        signing_payload(RECEIPT_TAG, genesis_hash, self)
    }
}

impl SignedVoucher {
    /// Whether the signature is the voucher user's on the chain with `genesis_hash`.
    pub fn verify(&self, genesis_hash: &H256) -> bool {
        verify_payload(
            &self.voucher.signing_payload(genesis_hash),
            &self.signature,
            &self.voucher.user,
        )
    }
}

impl SignedReceipt {
    /// Whether the signature is the receipt provider's on the chain with `genesis_hash`.
    pub fn verify(&self, genesis_hash: &H256) -> bool {
        verify_payload(
            &self.receipt.signing_payload(genesis_hash),
            &self.signature,
            &self.receipt.provider,
        )
    }
}

/// `input_tokens * input_price + output_tokens * output_price`, or `None` on overflow.
pub fn fee(
    input_tokens: u64,
    output_tokens: u64,
    input_price: Balance,
    output_price: Balance,
) -> Option<Balance> {
    let input = Balance::from(input_tokens).checked_mul(input_price)?;
    let output = Balance::from(output_tokens).checked_mul(output_price)?;
    input.checked_add(output)
}

/// The binary Merkle root (blake2-256) of the SCALE-encoded receipts a batch covers, ordered
/// by (user, nonce). The order of `receipts` does not matter.
pub fn trace_root<'a, I: IntoIterator<Item = &'a Receipt>>(receipts: I) -> H256 {
    let mut sorted: Vec<&Receipt> = receipts.into_iter().collect();
    sorted.sort_by(|a, b| (&a.user, a.nonce).cmp(&(&b.user, b.nonce)));
    let leaves = sorted.into_iter().map(Encode::encode);
    polkadot_sdk::binary_merkle_tree::merkle_root::<BlakeTwo256, _>(leaves)
}

#[cfg(test)]
mod tests {
    use super::*;
    use polkadot_sdk::{
        sp_core::{ecdsa, ed25519, sr25519, Pair},
        sp_keyring::Sr25519Keyring,
    };

    fn voucher(user: AccountId, provider: AccountId) -> Voucher {
        Voucher {
            user,
            provider,
            service_id: 7,
            price_version: 1,
            nonce: 3,
            request_hash: H256::repeat_byte(9),
            spent: 1_000,
            cap: 500,
        }
    }

    #[test]
    fn payload_layout_is_tag_genesis_scale() {
        let genesis = H256::repeat_byte(1);
        let v = voucher(Sr25519Keyring::Alice.to_account_id(), Sr25519Keyring::Bob.to_account_id());
        let p = v.signing_payload(&genesis);
        assert_eq!(&p[..VOUCHER_TAG.len()], VOUCHER_TAG);
        assert_eq!(&p[VOUCHER_TAG.len()..VOUCHER_TAG.len() + 32], genesis.as_bytes());
        assert_eq!(&p[VOUCHER_TAG.len() + 32..], &v.encode()[..]);
    }

    #[test]
    fn every_signature_scheme_and_bytes_wrapping_verify() {
        let genesis = H256::repeat_byte(2);
        let provider = Sr25519Keyring::Bob.to_account_id();

        let sr = sr25519::Pair::from_string("//Alice", None).unwrap();
        let v = voucher(AccountId::from(sr.public()), provider.clone());
        let payload = v.signing_payload(&genesis);
        let raw = SignedVoucher { voucher: v.clone(), signature: sr.sign(&payload).into() };
        assert!(raw.verify(&genesis));
        let mut wrapped = b"<Bytes>".to_vec();
        wrapped.extend_from_slice(&payload);
        wrapped.extend_from_slice(b"</Bytes>");
        let browser = SignedVoucher { voucher: v.clone(), signature: sr.sign(&wrapped).into() };
        assert!(browser.verify(&genesis));
        assert!(!raw.verify(&H256::repeat_byte(3)), "another chain's genesis must not verify");

        let ed = ed25519::Pair::from_string("//Alice", None).unwrap();
        let v = voucher(AccountId::from(ed.public()), provider.clone());
        let signed =
            SignedVoucher { signature: ed.sign(&v.signing_payload(&genesis)).into(), voucher: v };
        assert!(signed.verify(&genesis));

        let ec = ecdsa::Pair::from_string("//Alice", None).unwrap();
        let user: AccountId =
            polkadot_sdk::sp_runtime::MultiSigner::from(ec.public()).into_account_for_tests();
        let v = voucher(user, provider);
        let signed =
            SignedVoucher { signature: ec.sign(&v.signing_payload(&genesis)).into(), voucher: v };
        assert!(signed.verify(&genesis));
    }

    trait IntoAccount {
        fn into_account_for_tests(self) -> AccountId;
    }
    impl IntoAccount for polkadot_sdk::sp_runtime::MultiSigner {
        fn into_account_for_tests(self) -> AccountId {
            use polkadot_sdk::sp_runtime::traits::IdentifyAccount;
            self.into_account()
        }
    }

    #[test]
    fn receipt_tag_differs_from_voucher_tag() {
        let genesis = H256::zero();
        let pair = sr25519::Pair::from_string("//Bob", None).unwrap();
        let v = voucher(Sr25519Keyring::Alice.to_account_id(), AccountId::from(pair.public()));
        // A signature over a voucher payload must never pass as a receipt signature.
        let sig: Signature = pair.sign(&v.signing_payload(&genesis)).into();
        let receipt_payload = signing_payload(RECEIPT_TAG, &genesis, &v);
        assert!(!verify_payload(&receipt_payload, &sig, &v.provider));
    }

    #[test]
    fn fee_is_checked() {
        assert_eq!(fee(10, 5, 2, 3), Some(35));
        assert_eq!(fee(u64::MAX, 0, Balance::MAX, 0), None);
        assert_eq!(fee(1, 1, Balance::MAX, 1), None);
    }

    #[test]
    fn trace_root_ignores_input_order() {
        let r = |user: AccountId, nonce| Receipt {
            user,
            provider: Sr25519Keyring::Bob.to_account_id(),
            service_id: 0,
            nonce,
            request_hash: H256::zero(),
            response_hash: H256::zero(),
            proof_hash: Default::default(),
            model_hash: Default::default(),
            input_tokens: 1,
            output_tokens: 1,
            fee: 1,
            total: nonce as u128,
        };
        let a = r(Sr25519Keyring::Alice.to_account_id(), 1);
        let b = r(Sr25519Keyring::Alice.to_account_id(), 2);
        let c = r(Sr25519Keyring::Charlie.to_account_id(), 1);
        assert_eq!(trace_root([&a, &b, &c]), trace_root([&c, &b, &a]));
        assert_ne!(trace_root([&a, &b]), trace_root([&a, &c]));
    }
}
