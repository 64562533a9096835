//! The worker's voucher admission (`provider-worker/src/admission.rs`, compiled here from that
//! file by `build.rs`) on attacker-controlled vouchers: every field of a voucher is the user's
//! choice, and `admit`/`admit_ack` are what stands between it and the provider's compute and
//! money. The chain's and the store's view (prices, escrow, totals) are the provider's and the
//! chain's, so they are kept to amounts a chain can hold (below 2^96) and to the pallet's
//! invariants (`pending_refund <= balance`); the voucher's amounts (`cap`, `spent`) range over
//! all of u128. Some voucher fields can be steered onto the expected value so the fuzzer reaches
//! the late checks.
//!
//! Checks, besides "never panics" (overflow checks are on):
//! - sequencing refusals (wrong nonce, window full) keep the nonce; every other refusal uses it;
//! - an admitted request passed every rule: next nonce, service kind, model, price version,
//!   request hash, `spent` a recent total (or 0), and the escrow covers what is owed, in flight
//!   and this cap;
//! - the money invariant: the fee at the admitted `max_tokens` never exceeds the voucher's cap,
//!   `max_tokens` is never raised, and a chat that can pay for output gets at least one token;
//! - the hints are true: depositing the `insufficient_escrow` amount, or raising the cap to the
//!   `cap_too_low` amount, gets past that refusal;
//! - an admitted ack is an ack (cap 0, zero request hash, `spent` = latest total, next nonce).
#![no_main]

use arbitrary::Arbitrary;
use compute_fuzz::{
    admission::{admit, admit_ack, check_sequence, next_nonce, Needs, Rejection},
    client::{EscrowState, ServiceInfo},
    store::{Sequence, UserView},
};
use compute_primitives::{fee, Balance, ServiceKind, Voucher};
use libfuzzer_sys::fuzz_target;
use polkadot_sdk::{sp_core::H256, sp_runtime::AccountId32};

/// An amount a chain holds: below 2^96.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Amount(u64, u8);
impl Amount {
    fn get(self) -> Balance {
        Balance::from(self.0) << (self.1 % 33)
    }
}

/// A value the user picks, or (when `steer`) the one the worker expects.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Pick<T> {
    steer: bool,
    raw: T,
}
impl<T: Copy> Pick<T> {
    fn or(self, expected: T) -> T {
        if self.steer {
            expected
        } else {
            self.raw
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Case {
    ack: bool,
    window: u8,
    // The voucher (all user-controlled).
    nonce: Pick<u64>,
    nonce_skew: i8,
    service_id: u32,
    price_version: Pick<u32>,
    request_hash: Pick<[u8; 32]>,
    spent: Pick<u128>,
    spent_index: u8,
    cap: u128,
    // The service on chain (the provider's).
    service: Option<(bool, u8, Amount, Amount, u32)>,
    // What the worker measured.
    chat: bool,
    model: Pick<u8>,
    body_hash: [u8; 32],
    prompt_tokens: u32,
    max_tokens: u16,
    // The store's view of the user.
    last_nonce: u32,
    last_total: Amount,
    sealed_nonce: u32,
    recent: Vec<(u32, Amount)>,
    in_flight_caps: Amount,
    in_flight: u8,
    // The chain's escrow.
    escrow: Option<(Amount, Amount, u32, Amount)>,
}

const MODELS: [&str; 3] = ["smollm2", "minilm", ""];

fn rejection_kind(r: &Rejection) {
    assert!(matches!(r.status, 400 | 402 | 404 | 409 | 429), "{r:?}");
    // Refusals that store nothing: sequencing (the user may retry the nonce), a key with no
    // escrow (nothing of it is stored), an ack while a request is in flight.
    let keeps = matches!(
        r.code,
        "stale_nonce" | "nonce_gap" | "too_many_in_flight" | "no_escrow" | "request_in_flight"
    );
    assert_eq!(r.uses_nonce, !keeps, "{r:?}");
    assert!(r.message.len() <= 256, "{r:?}");
}

fuzz_target!(|case: Case| {
    let provider = AccountId32::new([2; 32]);
    let service =
        case.service.map(|(chat, model, input_price, output_price, version)| ServiceInfo {
            provider: provider.clone(),
            service_id: case.service_id,
            kind: if chat { ServiceKind::Chat } else { ServiceKind::Embedding },
            model: MODELS[model as usize % MODELS.len()].to_string(),
            model_hash: Default::default(),
            url: String::new(),
            input_price: input_price.get(),
            output_price: output_price.get(),
            verifiability: String::new(),
            price_version: version,
        });
    let view = UserView {
        seq: Sequence {
            last_nonce: case.last_nonce.into(),
            last_total: case.last_total.get(),
            sealed_nonce: case.sealed_nonce.into(),
        },
        recent_totals: case.recent.iter().take(64).map(|(n, t)| (u64::from(*n), t.get())).collect(),
        in_flight_caps: case.in_flight_caps.get(),
        in_flight: case.in_flight.into(),
    };
    let escrow = case.escrow.map(|(balance, pending, settled_nonce, settled_total)| EscrowState {
        balance: balance.get(),
        // The pallet keeps `pending_refund <= balance` (clamped on settlement, and a try_state
        // invariant).
        pending_refund: pending.get().min(balance.get()),
        settled_nonce: settled_nonce.into(),
        settled_through: settled_nonce.into(),
        settled_total: settled_total.get(),
        last_claimed_total: settled_total.get(),
        ..Default::default()
    });
    let window = u32::from(case.window);
    let expected_nonce = next_nonce(&view, escrow.as_ref());
    let kind = if case.chat { ServiceKind::Chat } else { ServiceKind::Embedding };
    let model = match (&service, case.model.steer) {
        (Some(s), true) => s.model.clone(),
        _ => MODELS[case.model.raw as usize % MODELS.len()].to_string(),
    };
    let body_hash = H256(case.body_hash);
    let mut totals: Vec<Balance> = view.recent_totals.iter().map(|(_, t)| *t).collect();
    totals.push(0);
    totals.push(view.seq.last_total);
    let voucher = Voucher {
        user: AccountId32::new([1; 32]),
        provider,
        service_id: case.service_id,
        price_version: case.price_version.or(service.as_ref().map_or(0, |s| s.price_version)),
        nonce: case.nonce.or(expected_nonce).wrapping_add_signed(i64::from(case.nonce_skew % 2)),
        request_hash: H256(case.request_hash.or(case.body_hash)),
        spent: case.spent.or(totals[case.spent_index as usize % totals.len()]),
        cap: if case.ack { 0 } else { case.cap },
    };
    let needs = Needs {
        service: service.as_ref(),
        kind,
        body_hash,
        model: &model,
        prompt_tokens: case.prompt_tokens.into(),
        max_tokens: case.max_tokens.into(),
    };

    if let Err(r) = check_sequence(&voucher, &view, escrow.as_ref(), window) {
        rejection_kind(&r);
        assert!(!r.uses_nonce, "{r:?}");
    }

    if case.ack {
        match admit_ack(&voucher, &view, escrow.as_ref(), window) {
            Err(r) => rejection_kind(&r),
            Ok(()) => {
                assert_eq!(voucher.nonce, expected_nonce);
                assert_eq!(voucher.cap, 0);
                assert_eq!(voucher.request_hash, H256::zero());
                assert_eq!(voucher.spent, view.seq.last_total);
            }
        }
        return;
    }

    match admit(&voucher, &needs, &view, escrow.as_ref(), window) {
        Err(r) => {
            rejection_kind(&r);
            let hint = |key: &str| -> Option<Balance> {
                r.expected.as_ref()?.get(key)?.as_str()?.parse().ok()
            };
            if r.code == "insufficient_escrow" {
                let missing = hint("deposit").expect("insufficient_escrow names the deposit");
                assert!(missing > 0);
                let mut richer = escrow.clone().expect("an escrow exists");
                // (A cap near u128::MAX asks for more than any balance can hold.)
                if let Some(balance) = richer.balance.checked_add(missing) {
                    richer.balance = balance;
                    if let Err(again) = admit(&voucher, &needs, &view, Some(&richer), window) {
                        panic!("depositing {missing} more still fails: {again:?}");
                    }
                }
            }
            if r.code == "cap_too_low" {
                let least = hint("cap").expect("cap_too_low names the cap");
                assert!(least > voucher.cap);
                let higher = Voucher { cap: least, ..voucher.clone() };
                if let Err(again) = admit(&higher, &needs, &view, escrow.as_ref(), window) {
                    assert_ne!(again.code, "cap_too_low", "the named cap {least} is still too low");
                }
            }
        }
        Ok(admitted) => {
            let service = service.as_ref().expect("admitted without a service");
            let escrow = escrow.as_ref().expect("admitted without an escrow");
            assert_eq!(voucher.nonce, expected_nonce);
            assert!(view.in_flight < window.max(1));
            assert_eq!(service.kind, kind);
            assert_eq!(service.model, model);
            assert_eq!(voucher.price_version, service.price_version);
            assert_eq!(voucher.request_hash, body_hash);
            assert!(
                voucher.spent == 0 || view.recent_totals.iter().any(|(_, t)| *t == voucher.spent),
                "spent {} is neither 0 nor a recent total",
                voucher.spent
            );
            // The escrow covers what is owed, what is in flight and this request's cap.
            let owed = view.seq.last_total.saturating_sub(escrow.settled_total);
            let committed = owed
                .checked_add(view.in_flight_caps)
                .and_then(|c| c.checked_add(voucher.cap))
                .expect("committed overflows");
            assert!(committed <= escrow.spendable(), "{committed} > {}", escrow.spendable());
            // Money: the most the worker can charge stays within the cap.
            assert!(admitted.max_tokens <= needs.max_tokens);
            let output = if kind == ServiceKind::Chat { admitted.max_tokens } else { 0 };
            let most = fee(needs.prompt_tokens, output, service.input_price, service.output_price)
                .expect("the admitted fee overflows");
            assert!(most <= voucher.cap, "fee {most} above cap {}", voucher.cap);
            if kind == ServiceKind::Chat && needs.max_tokens >= 1 && service.output_price > 0 {
                assert!(admitted.max_tokens >= 1, "a chat admitted with no output token");
            }
        }
    }
});
