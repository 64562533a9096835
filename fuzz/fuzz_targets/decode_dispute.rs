//! SCALE decoding of the `dispute` call's arguments, `(provider: AccountId, signed_receipt:
//! SignedReceipt)`, from attacker-controlled bytes: any signed account can submit the extrinsic,
//! and the runtime decodes its arguments in this order before the call runs. Checks the decoding
//! properties of `compute_fuzz::check_scale` (no panic, no read past the input, re-encodes to
//! exactly the bytes consumed, prefix-free, the runtime's memory-limited decoding agrees), then
//! that verifying the receipt's signature (what `do_dispute` does first) returns, is
//! deterministic, and that a verifying signature holds only for this receipt and this chain.
#![no_main]

use compute_fuzz::{check_receipt_signature, check_scale, DisputeArgs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(args) = check_scale::<DisputeArgs>(data) {
        check_receipt_signature(&args.signed_receipt);
    }
});
