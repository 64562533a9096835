//! Worker overhead per request, without the model: decode and verify the voucher, admit it in
//! the store (the sequencer transaction), sign the receipt, seal it durably.
//! `cargo bench -p provider-worker --bench admission`

#![allow(clippy::unwrap_used)]

use compute_client::{wire, EscrowState, ServiceInfo, Signer};
use compute_primitives::{ServiceKind, SignedVoucher, Voucher};
use criterion::{criterion_group, criterion_main, Criterion};
use polkadot_sdk::sp_core::H256;
use provider_worker::{
    billing::admission::{self, Needs},
    store::{Durability, SqliteStore},
};
use std::time::{Duration, Instant};

fn run(c: &mut Criterion, name: &str, store: SqliteStore) {
    let user = Signer::from_uri("//Alice").unwrap();
    let provider = Signer::from_uri("//Bob").unwrap();
    let genesis = H256::repeat_byte(1);
    let body = br#"{"model":"m","messages":[{"role":"user","content":"hello"}]}"#;
    let service = ServiceInfo {
        provider: provider.account_id(),
        service_id: 0,
        kind: ServiceKind::Chat,
        model: "m".into(),
        model_hash: Default::default(),
        url: String::new(),
        input_price: 1,
        output_price: 1,
        verifiability: String::new(),
        price_version: 0,
    };
    let escrow = EscrowState { balance: u128::MAX / 2, ..Default::default() };
    let mut nonce = 0u64;
    let mut total = 0u128;
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            // Vouchers are signed by the user beforehand: not the worker's cost.
            let headers: Vec<String> = (0..iters)
                .map(|i| {
                    let v = Voucher {
                        user: user.account_id(),
                        provider: provider.account_id(),
                        service_id: 0,
                        price_version: 0,
                        nonce: nonce + 1 + i,
                        request_hash: wire::request_hash(body),
                        spent: total + 30 * i as u128,
                        cap: 1_000,
                    };
                    wire::to_hex(&wire::sign_voucher(&user, v, &genesis))
                })
                .collect();
            let start = Instant::now();
            for h in &headers {
                let sv: SignedVoucher = wire::from_hex("voucher", h).unwrap();
                assert!(sv.verify(&genesis));
                let v = &sv.voucher;
                let needs = Needs {
                    service: Some(&service),
                    kind: ServiceKind::Chat,
                    body_hash: wire::request_hash(body),
                    model: "m",
                    prompt_tokens: 10,
                    max_tokens: 20,
                };
                store
                    .admit(&sv, 1, 1, |view| {
                        admission::admit(v, &needs, view, Some(&escrow), 1).map(|_| ())
                    })
                    .unwrap()
                    .unwrap();
                let receipt = compute_primitives::Receipt {
                    user: v.user.clone(),
                    provider: provider.account_id(),
                    service_id: 0,
                    nonce: v.nonce,
                    request_hash: v.request_hash,
                    response_hash: wire::response_hash("hi there"),
                    proof_hash: Default::default(),
                    model_hash: Default::default(),
                    input_tokens: 10,
                    output_tokens: 20,
                    fee: 30,
                    total: v.spent + 30,
                };
                let signed = wire::sign_receipt(&provider, receipt, &genesis);
                store.seal(&signed, None, 200, "{\"choices\":[]}").unwrap();
            }
            nonce += iters;
            total += 30 * iters as u128;
            start.elapsed()
        })
    });
}

fn overhead(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("worker-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    run(
        c,
        "request_overhead/fsync",
        SqliteStore::open(&dir.join("a.sqlite"), Durability::Fsync).unwrap(),
    );
    run(
        c,
        "request_overhead/os",
        SqliteStore::open(&dir.join("b.sqlite"), Durability::Os).unwrap(),
    );
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).sample_size(30);
    targets = overhead
}
criterion_main!(benches);
