//! SCALE decoding of a `SignedReceipt` from attacker-controlled bytes: a client (CLI, proxy)
//! decodes one from every worker answer's `x-compute-receipt` header and from
//! `GET /v1/receipts`, and a user submits one to the chain in `dispute`. Checks the decoding
//! properties of `compute_fuzz::check_scale` (no panic, no read past the input, re-encodes to
//! exactly the bytes consumed, prefix-free, memory- and depth-limited decoding agree), then that
//! signature verification on the decoded value returns, is deterministic, and that a verifying
//! signature holds only for this receipt, this chain and the receipt domain tag
//! (`compute_fuzz::check_receipt_signature`; `verify_payload` tries the raw payload, then the
//! `<Bytes>`-wrapped one).
#![no_main]

use compute_fuzz::{check_receipt_signature, check_scale};
use compute_primitives::SignedReceipt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(sr) = check_scale::<SignedReceipt>(data) {
        check_receipt_signature(&sr);
    }
});
