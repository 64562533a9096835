//! SCALE decoding of the `settle` call's arguments, `(items: BoundedVec<Claim, MaxBatch>,
//! trace_root: H256)` with the runtime's `MaxBatch` (read from `runtime/src/configs.rs` at build
//! time), from attacker-controlled bytes: any signed account can submit the extrinsic, and the
//! runtime decodes its arguments (under a memory limit) before the call runs. Checks the decoding
//! properties of `compute_fuzz::check_scale` (no panic, no read past the input, re-encodes to
//! exactly the bytes consumed, prefix-free, the runtime's memory-limited decoding agrees), that
//! no batch above `MaxBatch` decodes, and that verifying every claim's voucher signature (what
//! `do_settle` does per claim) returns and holds only for that voucher and this chain.
//!
//! Inputs stay far below `MaxBatch` claims (libFuzzer's length limit), so the bound itself is
//! checked once per process on constructed batches: exactly `MaxBatch` claims decode under the
//! runtime's call memory limit, one more is refused.
#![no_main]

use codec::{Compact, DecodeWithMemLimit, Encode};
use compute_fuzz::{check_scale, check_voucher_signature, SettleArgs, CALL_MEM_LIMIT, MAX_BATCH};
use compute_primitives::{Claim, SignedVoucher, Voucher};
use libfuzzer_sys::fuzz_target;
use polkadot_sdk::{
    sp_core::{sr25519, H256},
    sp_runtime::{AccountId32, MultiSignature},
};
use std::sync::Once;

fn batch_of(n: u32) -> Vec<u8> {
    let claim = Claim {
        voucher: SignedVoucher {
            voucher: Voucher {
                user: AccountId32::new([1; 32]),
                provider: AccountId32::new([2; 32]),
                service_id: u32::MAX,
                price_version: u32::MAX,
                nonce: u64::MAX,
                request_hash: H256::repeat_byte(3),
                spent: u128::MAX,
                cap: u128::MAX,
            },
            signature: MultiSignature::Sr25519(sr25519::Signature::from_raw([4; 64])),
        },
        fee_claim: u128::MAX,
    }
    .encode();
    let mut out = Compact(n).encode();
    for _ in 0..n {
        out.extend_from_slice(&claim);
    }
    out.extend_from_slice(H256::repeat_byte(5).as_bytes());
    out
}

fn check_bound() {
    let full = batch_of(MAX_BATCH);
    let args = SettleArgs::decode_with_mem_limit(&mut &full[..], CALL_MEM_LIMIT)
        .expect("a batch of exactly MaxBatch claims decodes under the call memory limit");
    assert_eq!(args.items.len(), MAX_BATCH as usize);
    let over = batch_of(MAX_BATCH + 1);
    assert!(
        SettleArgs::decode_with_mem_limit(&mut &over[..], CALL_MEM_LIMIT).is_err(),
        "a batch of MaxBatch + 1 claims decodes"
    );
}

static BOUND: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    BOUND.call_once(check_bound);
    if let Some(args) = check_scale::<SettleArgs>(data) {
        assert!(args.items.len() <= MAX_BATCH as usize);
        for claim in args.items.iter() {
            check_voucher_signature(&claim.voucher);
        }
    }
});
