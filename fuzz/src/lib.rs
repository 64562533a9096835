//! What the fuzz targets share: the properties every SCALE decoding must have
//! ([`check_scale`]), the signature checks run on decoded values, the `settle`/`dispute`
//! argument types, and the worker code under test (compiled from the worker's own sources by
//! `build.rs`, see there).

use codec::{
    Decode, DecodeAll, DecodeLimit, DecodeWithMemLimit, DecodeWithMemTracking, Encode, Input,
    MaxEncodedLen,
};
use compute_primitives::{
    signing_payload, verify_payload, AccountId, Claim, SignedReceipt, SignedVoucher, AUTH_TAG,
    RECEIPT_TAG, VOUCHER_TAG,
};
use polkadot_sdk::{
    sp_core::{ConstU32, H256},
    sp_runtime::{traits::Verify, BoundedVec, MultiSignature},
};
use std::fmt::Debug;

/// The genesis hash every fuzzed signature is checked against (the seed corpus is signed for it).
pub const GENESIS: H256 = H256([0x42; 32]);
/// Another chain: nothing signed for [`GENESIS`] may verify here.
pub const OTHER_GENESIS: H256 = H256([0x43; 32]);

/// The runtime's `MaxBatch`, read from `runtime/src/configs.rs` at build time.
pub const MAX_BATCH: u32 = include!(concat!(env!("OUT_DIR"), "/max_batch.rs"));
/// `settle`'s arguments, encoded as the call encodes them: its fields in order, nothing else.
/// (A struct rather than a tuple: codec implements `DecodeWithMemTracking`, which the runtime's
/// call decoding needs, for derived types but not for tuples.)
#[derive(Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, Clone, PartialEq, Eq, Debug)]
pub struct SettleArgs {
    pub items: BoundedVec<Claim, ConstU32<MAX_BATCH>>,
    pub trace_root: H256,
}

/// `dispute`'s arguments, encoded as the call encodes them.
#[derive(Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, Clone, PartialEq, Eq, Debug)]
pub struct DisputeArgs {
    pub provider: AccountId,
    pub signed_receipt: SignedReceipt,
}

/// The memory limit the runtime decodes a call under: sp-runtime 49's `DEFAULT_MAX_CALL_SIZE`
/// (16 MiB, used by `generic::UncheckedExtrinsic` as this runtime configures it) plus one, as in
/// `UncheckedExtrinsic::decode_with_len`.
pub const CALL_MEM_LIMIT: usize = 16 * 1024 * 1024 + 1;
/// frame-support's `MAX_EXTRINSIC_DEPTH`, the nesting limit of depth-limited extrinsic decoding.
pub const MAX_EXTRINSIC_DEPTH: u32 = 256;

/// An [`Input`] over a byte slice that counts the bytes read and refuses any read past the end
/// (reporting the remaining length exactly, as `&[u8]` does).
struct Counted<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input for Counted<'_> {
    fn remaining_len(&mut self) -> Result<Option<usize>, codec::Error> {
        Ok(Some(self.data.len() - self.pos))
    }

    fn read(&mut self, into: &mut [u8]) -> Result<(), codec::Error> {
        let end = self
            .pos
            .checked_add(into.len())
            .filter(|end| *end <= self.data.len())
            .ok_or("read past the end of the input")?;
        into.copy_from_slice(&self.data[self.pos..end]);
        self.pos = end;
        Ok(())
    }
}

/// Decode `data` as a `T` the ways the node and the worker do, and check:
///
/// - decoding never panics (the fuzzer reports a panic as a crash);
/// - plain, memory-limited (as the runtime decodes calls) and depth-limited decoding agree on
///   the value and on the bytes consumed, and the bytes consumed are the bytes read (never past
///   the input);
/// - the value re-encodes to exactly the bytes consumed, of at most `T::max_encoded_len()`.
///   SCALE has a single encoding per value for these types: fixed-width integers and arrays,
///   enums with one index per variant (unknown indices are refused), and compact lengths, which
///   parity-scale-codec 3 refuses in non-minimal form ("out of range"). A non-canonical form
///   that decoded would fail this assertion, and matter: two byte strings for one signed value;
/// - decoding is prefix-free: the consumed bytes alone decode to the same value with nothing
///   left, and any strict prefix of them fails (decoding never looked past what it consumed);
/// - `decode_all` (what `wire::from_hex` does: no trailing bytes) succeeds exactly when every
///   byte was consumed.
pub fn check_scale<T>(data: &[u8]) -> Option<T>
where
    T: Decode + DecodeWithMemTracking + Encode + MaxEncodedLen + PartialEq + Debug,
{
    let mut rest = data;
    let plain = T::decode(&mut rest).ok();
    let consumed = data.len() - rest.len();

    let mut counted = Counted { data, pos: 0 };
    let via_counted = T::decode(&mut counted).ok();
    assert_eq!(plain, via_counted, "a counting input decodes differently");

    let mut limited_rest = data;
    let limited = T::decode_with_mem_limit(&mut limited_rest, CALL_MEM_LIMIT).ok();
    assert_eq!(plain, limited, "memory-limited decoding (the runtime's) differs");

    let mut depth_rest = data;
    let depth = T::decode_with_depth_limit(MAX_EXTRINSIC_DEPTH, &mut depth_rest).ok();
    assert_eq!(plain, depth, "depth-limited decoding differs");

    let all = T::decode_all(&mut &data[..]).ok();

    let Some(value) = plain else {
        assert!(all.is_none(), "decode_all succeeded where decode failed");
        return None;
    };
    assert_eq!(counted.pos, consumed, "bytes read differ from bytes consumed");
    assert_eq!(limited_rest.len(), rest.len(), "memory-limited decoding consumed differently");
    assert_eq!(depth_rest.len(), rest.len(), "depth-limited decoding consumed differently");
    assert_eq!(all.is_some(), rest.is_empty(), "decode_all disagrees with the bytes consumed");

    let bytes = &data[..consumed];
    assert_eq!(value.encode(), bytes, "re-encoding differs from the bytes consumed");
    assert_eq!(value.encoded_size(), consumed, "encoded_size differs from the bytes consumed");
    assert!(consumed <= T::max_encoded_len(), "{consumed} bytes exceed max_encoded_len");

    let mut exact = bytes;
    assert_eq!(
        T::decode(&mut exact).ok().as_ref(),
        Some(&value),
        "the consumed bytes decode differently"
    );
    assert!(exact.is_empty(), "the consumed bytes are not all consumed again");
    if consumed > 0 {
        assert!(T::decode(&mut &bytes[..consumed - 1]).is_err(), "a strict prefix decodes");
        assert!(T::decode(&mut &bytes[..consumed / 2]).is_err(), "half the bytes decode");
    }
    Some(value)
}

/// Whether `signature` verifies for `signer` over any message: an ed25519 signature by a
/// small-order public key (e.g. the all-zero `AccountId`) with a small-order `R` and `s = 0`.
/// sp-io verifies ed25519 under ZIP 215 (ed25519-zebra), which accepts those: such an account is
/// anyone-can-sign for extrinsics as well as vouchers and receipts, so nobody holds it and a
/// signature by it proves nothing. The fuzzer finds these (all-zero provider, all-zero
/// signature); the domain checks below apply to every other signer.
pub fn universal(signature: &MultiSignature, signer: &AccountId) -> bool {
    matches!(signature, MultiSignature::Ed25519(_))
        && signature.verify(&b"compute-fuzz: an unrelated message"[..], signer)
}

/// Signature checks on an arbitrary decoded voucher: verification returns (in bounded time: the
/// fuzzer's `-timeout` reports a slow input) and is deterministic; if the signature verifies
/// (the seed corpus holds valid ones: raw and `<Bytes>`-wrapped sr25519, ed25519, ecdsa), it does
/// so only for this voucher on this chain: not on another chain, not for a changed voucher, not
/// under another domain tag over the same bytes (unless the signer is [`universal`]).
pub fn check_voucher_signature(sv: &SignedVoucher) -> bool {
    let ok = sv.verify(&GENESIS);
    assert_eq!(ok, sv.verify(&GENESIS), "voucher verification is not deterministic");
    if ok && !universal(&sv.signature, &sv.voucher.user) {
        let user = &sv.voucher.user;
        assert!(!sv.verify(&OTHER_GENESIS), "a voucher verifies on another chain");
        for tag in [RECEIPT_TAG, AUTH_TAG] {
            let other = signing_payload(tag, &GENESIS, &sv.voucher);
            assert!(
                !verify_payload(&other, &sv.signature, user),
                "a voucher verifies under another tag"
            );
        }
        let mut changed = sv.clone();
        changed.voucher.nonce ^= 1;
        assert!(!changed.verify(&GENESIS), "a voucher with another nonce verifies");
        let mut changed = sv.clone();
        changed.voucher.cap ^= 1 << 64;
        assert!(!changed.verify(&GENESIS), "a voucher with another cap verifies");
    }
    ok
}

/// As [`check_voucher_signature`], for a receipt signed by its provider.
pub fn check_receipt_signature(sr: &SignedReceipt) -> bool {
    let ok = sr.verify(&GENESIS);
    assert_eq!(ok, sr.verify(&GENESIS), "receipt verification is not deterministic");
    if ok && !universal(&sr.signature, &sr.receipt.provider) {
        let provider = &sr.receipt.provider;
        assert!(!sr.verify(&OTHER_GENESIS), "a receipt verifies on another chain");
        for tag in [VOUCHER_TAG, AUTH_TAG] {
            let other = signing_payload(tag, &GENESIS, &sr.receipt);
            assert!(
                !verify_payload(&other, &sr.signature, provider),
                "a receipt verifies under another tag"
            );
        }
        let mut changed = sr.clone();
        changed.receipt.fee ^= 1;
        assert!(!changed.verify(&GENESIS), "a receipt with another fee verifies");
        let mut changed = sr.clone();
        changed.receipt.total ^= 1 << 64;
        assert!(!changed.verify(&GENESIS), "a receipt with another total verifies");
    }
    ok
}

/// `EscrowState`, `ServiceInfo` (and `BlockNumber`) from `client/src/chain.rs`.
#[allow(dead_code, clippy::all)]
pub mod client {
    use compute_primitives::{AccountId, Balance, Nonce, ServiceId, ServiceKind};
    use polkadot_sdk::sp_core::H256;
    include!(concat!(env!("OUT_DIR"), "/client.rs"));
}

/// `Sequence` and `UserView` from `provider-worker/src/store/mod.rs`.
#[allow(dead_code, clippy::all)]
pub mod store {
    use compute_primitives::{Balance, Nonce};
    include!(concat!(env!("OUT_DIR"), "/store.rs"));
}

/// `ChatMessage` and `GenParams` from `inference/src/`.
#[allow(dead_code, clippy::all)]
pub mod model {
    use serde::{Deserialize, Serialize};
    include!(concat!(env!("OUT_DIR"), "/model.rs"));
}

/// `provider-worker/src/billing/admission.rs`, whole.
#[allow(dead_code, clippy::all)]
pub mod admission {
    include!(concat!(env!("OUT_DIR"), "/admission.rs"));
}

/// `parse_chat`, `parse_embedding` and their request types from
/// `provider-worker/src/api/openai.rs`.
#[allow(dead_code, clippy::all)]
pub mod request {
    use crate::{
        admission::Rejection,
        model::{ChatMessage, GenParams},
    };
    use serde::Deserialize;
    use serde_json::Value;
    include!(concat!(env!("OUT_DIR"), "/request.rs"));
}
