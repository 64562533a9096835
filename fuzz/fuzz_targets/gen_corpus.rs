//! Not a fuzz target: writes the committed seed corpus, `fuzz/corpus/<target>/seed-*`, then
//! exits. Valid encodings signed for `compute_fuzz::GENESIS` with each signature scheme (sr25519
//! raw and `<Bytes>`-wrapped, ed25519, ecdsa), so the fuzzer starts from inputs that pass
//! decoding and verification, and valid and invalid request bodies. It is a `[[bin]]` of this
//! crate so it reuses the instrumented build instead of needing a second one. Run it again after
//! a change to a signed type (sr25519 signatures are randomised: those files change every run):
//!
//! ```sh
//! cargo fuzz run --dev -s none gen_corpus /tmp   # any existing folder as its (unused) corpus
//! ```
#![no_main]
// `init` exits: the (empty) fuzz closure after it is never reached.
#![allow(unreachable_code)]

use codec::Encode;
use compute_fuzz::{DisputeArgs, SettleArgs, GENESIS};
use compute_primitives::{
    AccountId, Claim, Receipt, Signature, SignedReceipt, SignedVoucher, Voucher,
};
use polkadot_sdk::{
    sp_core::{ecdsa, ed25519, sr25519, Pair, H256},
    sp_runtime::{traits::IdentifyAccount, MultiSigner},
};
use std::{fs, path::PathBuf};

/// A key of each scheme, signing either the raw payload or its `<Bytes>` wrapping.
enum Key {
    Sr(sr25519::Pair, bool),
    Ed(ed25519::Pair),
    Ec(ecdsa::Pair),
}

impl Key {
    fn all(seed: &str) -> Vec<(&'static str, Key)> {
        vec![
            ("sr25519", Key::Sr(sr25519::Pair::from_string(seed, None).unwrap(), false)),
            ("sr25519-bytes", Key::Sr(sr25519::Pair::from_string(seed, None).unwrap(), true)),
            ("ed25519", Key::Ed(ed25519::Pair::from_string(seed, None).unwrap())),
            ("ecdsa", Key::Ec(ecdsa::Pair::from_string(seed, None).unwrap())),
        ]
    }

    fn account(&self) -> AccountId {
        match self {
            Key::Sr(p, _) => MultiSigner::from(p.public()).into_account(),
            Key::Ed(p) => MultiSigner::from(p.public()).into_account(),
            Key::Ec(p) => MultiSigner::from(p.public()).into_account(),
        }
    }

    fn sign(&self, payload: &[u8]) -> Signature {
        match self {
            Key::Sr(p, false) => p.sign(payload).into(),
            Key::Sr(p, true) => p.sign(&[b"<Bytes>", payload, b"</Bytes>"].concat()).into(),
            Key::Ed(p) => p.sign(payload).into(),
            Key::Ec(p) => p.sign(payload).into(),
        }
    }
}

fn voucher(user: AccountId, provider: AccountId, nonce: u64, cap: u128) -> Voucher {
    Voucher {
        user,
        provider,
        service_id: 1,
        price_version: 0,
        nonce,
        request_hash: if cap == 0 { H256::zero() } else { H256::repeat_byte(7) },
        spent: 1_000 * u128::from(nonce),
        cap,
    }
}

fn receipt(user: AccountId, provider: AccountId, nonce: u64) -> Receipt {
    Receipt {
        user,
        provider,
        service_id: 1,
        nonce,
        request_hash: H256::repeat_byte(7),
        response_hash: H256::repeat_byte(8),
        proof_hash: Default::default(),
        model_hash: Default::default(),
        input_tokens: 12,
        output_tokens: 30,
        fee: 1_000,
        total: 1_000 * u128::from(nonce),
    }
}

fn generate() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    };
    let users = Key::all("//Alice");
    let providers = Key::all("//Bob");

    let mut claims = Vec::new();
    for ((scheme, user), (_, provider)) in users.iter().zip(&providers) {
        let v = voucher(user.account(), provider.account(), 3, 5_000);
        let sv = SignedVoucher { signature: user.sign(&v.signing_payload(&GENESIS)), voucher: v };
        assert!(sv.verify(&GENESIS), "{scheme} voucher");
        write("decode_signed_voucher", scheme, &sv.encode());
        let ack = voucher(user.account(), provider.account(), 4, 0);
        let ack =
            SignedVoucher { signature: user.sign(&ack.signing_payload(&GENESIS)), voucher: ack };
        write("decode_signed_voucher", &format!("{scheme}-ack"), &ack.encode());
        claims.push(Claim { voucher: sv, fee_claim: 2_500 });

        let r = receipt(user.account(), provider.account(), 3);
        let sr =
            SignedReceipt { signature: provider.sign(&r.signing_payload(&GENESIS)), receipt: r };
        assert!(sr.verify(&GENESIS), "{scheme} receipt");
        write("decode_signed_receipt", scheme, &sr.encode());
        let dispute = DisputeArgs { provider: provider.account(), signed_receipt: sr };
        write("decode_dispute", scheme, &dispute.encode());
    }
    let batch =
        SettleArgs { items: claims.clone().try_into().unwrap(), trace_root: H256::repeat_byte(9) };
    write("decode_claims", "mixed", &batch.encode());
    let one = SettleArgs {
        items: claims[..1].to_vec().try_into().unwrap(),
        trace_root: H256::repeat_byte(9),
    };
    write("decode_claims", "one", &one.encode());
    let empty = SettleArgs { items: Vec::new().try_into().unwrap(), trace_root: H256::zero() };
    write("decode_claims", "empty", &empty.encode());

    let chat: &[(&str, &str)] = &[
        ("minimal", r#"{"model":"smollm2","messages":[{"role":"user","content":"hi"}]}"#),
        (
            "full",
            r#"{"model":"smollm2","messages":[{"role":"developer","content":"be brief"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},{"role":"assistant","content":"ok"}],"max_tokens":16,"max_completion_tokens":8,"temperature":0.7,"top_p":0.9,"seed":42,"stop":["\n","END"],"stream":true,"n":1}"#,
        ),
        ("stop-one", r#"{"model":"m","messages":[{"role":"system","content":"x"}],"stop":"."}"#),
        ("bad-role", r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#),
        (
            "bad-temperature",
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#,
        ),
        (
            "zero-tokens",
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
        ),
        ("empty", r#"{"model":"m","messages":[]}"#),
    ];
    for (name, body) in chat {
        write("parse_chat", name, body.as_bytes());
    }
    let embedding: &[(&str, &str)] = &[
        ("one", r#"{"model":"minilm","input":"hello"}"#),
        (
            "many",
            r#"{"model":"minilm","input":["a","b","c"],"encoding_format":"base64","dimensions":384}"#,
        ),
        ("tokens", r#"{"model":"minilm","input":[[1,2,3]]}"#),
        ("float", r#"{"model":"minilm","input":["x"],"encoding_format":"float"}"#),
        ("too-many", r#"{"model":"minilm","input":["a","b","c","d","e"]}"#),
    ];
    for (name, body) in embedding {
        write("parse_embedding", name, body.as_bytes());
    }
    // Structured input (`arbitrary`): a few byte patterns to start from.
    for (name, bytes) in
        [("zeros", vec![0u8; 256]), ("ones", vec![0xff; 256]), ("ramp", (0..=255).collect())]
    {
        write("admission", name, &bytes);
    }
    println!("seed corpus written under {}", root.display());
}

libfuzzer_sys::fuzz_target!(
    init: {
        generate();
        std::process::exit(0);
    },
    |_data: &[u8]| {}
);
