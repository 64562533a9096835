//! SCALE decoding of a `SignedVoucher` from attacker-controlled bytes: the worker decodes one
//! from every request's `x-compute-voucher` header (`wire::from_hex`), the chain from every
//! `settle` claim. Checks the decoding properties of `compute_fuzz::check_scale` (no panic, no
//! read past the input, re-encodes to exactly the bytes consumed, prefix-free, memory- and
//! depth-limited decoding agree), then that signature verification on the decoded value
//! returns, is deterministic, and that a verifying signature holds only for this voucher, this
//! chain and the voucher domain tag (`compute_fuzz::check_voucher_signature`; `verify_payload`
//! tries the raw payload, then the `<Bytes>`-wrapped one).
#![no_main]

use compute_fuzz::{check_scale, check_voucher_signature};
use compute_primitives::SignedVoucher;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(sv) = check_scale::<SignedVoucher>(data) {
        check_voucher_signature(&sv);
        // The voucher's own predicate agrees with its fields.
        assert_eq!(sv.voucher.is_ack(), sv.voucher.cap == 0);
    }
});
