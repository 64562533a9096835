//! Property tests: random sequences of every call from several users and providers keep funds
//! conserved and the pallet's invariants intact.

use super::*;
use polkadot_sdk::frame_support::traits::fungible::Inspect;
use proptest::prelude::*;
use std::collections::BTreeMap;

const USERS: [Sr25519Keyring; 3] =
    [Sr25519Keyring::Alice, Sr25519Keyring::Charlie, Sr25519Keyring::Eve];
const PROVIDERS: [Sr25519Keyring; 3] =
    [Sr25519Keyring::Bob, Sr25519Keyring::Dave, Sr25519Keyring::Ferdie];

#[derive(Clone, Debug)]
struct ClaimSpec {
    user: usize,
    /// Voucher names this provider (index); usually the submitter.
    named_provider: usize,
    nonce_step: i8,
    spent: Balance,
    cap: Balance,
    fee_claim: Balance,
    forged: bool,
}

#[derive(Clone, Debug)]
enum Action {
    Register { provider: usize, service: u32 },
    Remove { provider: usize, service: u32 },
    WithdrawBond { provider: usize },
    Deposit { user: usize, provider: usize, amount: Balance },
    RequestRefund { user: usize, provider: usize, amount: Balance },
    CancelRefund { user: usize, provider: usize },
    WithdrawRefund { user: usize, provider: usize },
    Settle { provider: usize, claims: Vec<ClaimSpec> },
    Dispute { user: usize, provider: usize, nonce_back: u8, total: Balance },
    Advance { blocks: u8 },
}

fn claim_spec() -> impl Strategy<Value = ClaimSpec> {
    (
        0..3usize,
        prop_oneof![9 => Just(None), 1 => (0..3usize).prop_map(Some)],
        -1i8..4,
        0..3_000u128,
        0..600u128,
        0..700u128,
        prop::bool::weighted(0.1),
    )
        .prop_map(|(user, named, nonce_step, spent, cap, fee_claim, forged)| ClaimSpec {
            user,
            named_provider: named.unwrap_or(usize::MAX),
            nonce_step,
            spent,
            cap,
            fee_claim,
            forged,
        })
}

fn action() -> impl Strategy<Value = Action> {
    let p = 0..3usize;
    let u = 0..3usize;
    prop_oneof![
        2 => (p.clone(), 0..2u32).prop_map(|(provider, service)| Action::Register { provider, service }),
        1 => (p.clone(), 0..2u32).prop_map(|(provider, service)| Action::Remove { provider, service }),
        1 => p.clone().prop_map(|provider| Action::WithdrawBond { provider }),
        4 => (u.clone(), p.clone(), 0..3_000u128).prop_map(|(user, provider, amount)| Action::Deposit { user, provider, amount }),
        2 => (u.clone(), p.clone(), 0..1_500u128).prop_map(|(user, provider, amount)| Action::RequestRefund { user, provider, amount }),
        1 => (u.clone(), p.clone()).prop_map(|(user, provider)| Action::CancelRefund { user, provider }),
        2 => (u.clone(), p.clone()).prop_map(|(user, provider)| Action::WithdrawRefund { user, provider }),
        5 => (p.clone(), prop::collection::vec(claim_spec(), 1..6)).prop_map(|(provider, claims)| Action::Settle { provider, claims }),
        2 => (u, p, 0..3u8, 0..3_000u128).prop_map(|(user, provider, nonce_back, total)| Action::Dispute { user, provider, nonce_back, total }),
        2 => (1..30u8).prop_map(|blocks| Action::Advance { blocks }),
    ]
}

/// What the test remembers between steps.
#[derive(Default)]
struct Model {
    /// Highest `spent + cap` the user ever signed for each (user, provider).
    max_signed: BTreeMap<(usize, usize), Balance>,
    last: BTreeMap<(usize, usize), (Nonce, Balance)>,
}

fn apply(action: &Action, model: &mut Model) -> bool {
    let signed_by = |i: usize| RuntimeOrigin::signed(account(USERS[i]));
    let provider_origin = |i: usize| RuntimeOrigin::signed(account(PROVIDERS[i]));
    let mut disputed = false;
    // Errors are expected for many random calls; what matters is that they change nothing,
    // which the transactional dispatch and the invariant checks below verify.
    match action.clone() {
        Action::Register { provider, service } => {
            let _ = Compute::register_service(
                provider_origin(provider),
                service,
                ServiceKind::Chat,
                bytes("m"),
                bytes("u"),
                1,
                2,
                bytes("none"),
            );
        }
        Action::Remove { provider, service } => {
            let _ = Compute::remove_service(provider_origin(provider), service);
        }
        Action::WithdrawBond { provider } => {
            let _ = Compute::withdraw_bond(provider_origin(provider));
        }
        Action::Deposit { user, provider, amount } => {
            let _ = Compute::deposit(signed_by(user), account(PROVIDERS[provider]), amount);
        }
        Action::RequestRefund { user, provider, amount } => {
            let _ = Compute::request_refund(signed_by(user), account(PROVIDERS[provider]), amount);
        }
        Action::CancelRefund { user, provider } => {
            let _ = Compute::cancel_refund(signed_by(user), account(PROVIDERS[provider]));
        }
        Action::WithdrawRefund { user, provider } => {
            let _ = Compute::withdraw_refund(signed_by(user), account(PROVIDERS[provider]));
        }
        Action::Settle { provider, claims } => {
            let items: Vec<Claim> = claims
                .iter()
                .map(|c| {
                    let named =
                        if c.named_provider == usize::MAX { provider } else { c.named_provider };
                    let settled =
                        Escrows::<Test>::get(account(USERS[c.user]), account(PROVIDERS[named]))
                            .map(|e| e.settled_nonce)
                            .unwrap_or(0);
                    let nonce = (settled as i64 + c.nonce_step as i64).max(0) as Nonce;
                    let v = voucher(USERS[c.user], PROVIDERS[named], nonce, c.spent, c.cap);
                    if !c.forged {
                        let m = model.max_signed.entry((c.user, named)).or_default();
                        *m = (*m).max(c.spent + c.cap);
                    }
                    let signer = if c.forged { PROVIDERS[provider] } else { USERS[c.user] };
                    Claim { voucher: signed(v, signer), fee_claim: c.fee_claim }
                })
                .collect();
            let _ =
                Compute::settle(provider_origin(provider), items.try_into().unwrap(), H256::zero());
        }
        Action::Dispute { user, provider, nonce_back, total } => {
            if let Some(e) =
                Escrows::<Test>::get(account(USERS[user]), account(PROVIDERS[provider]))
            {
                let nonce = e.settled_through.saturating_sub(nonce_back as u64);
                let r = signed_receipt(
                    receipt(USERS[user], PROVIDERS[provider], nonce, 0, total),
                    PROVIDERS[provider],
                );
                disputed =
                    Compute::dispute(signed_by(user), account(PROVIDERS[provider]), r).is_ok();
            }
        }
        Action::Advance { blocks } => run_to(System::block_number() + blocks as u64),
    }
    disputed
}

fn check(model: &mut Model, issuance: Balance, disputed: bool) -> Result<(), TestCaseError> {
    prop_assert_eq!(Balances::total_issuance(), issuance, "total issuance changed");
    let escrow_account = Balances::total_balance(&Compute::escrow_account());
    let total: Balance = KEYS.iter().map(|k| Balances::total_balance(&account(*k))).sum();
    prop_assert_eq!(total + escrow_account, issuance, "funds left the dev accounts");
    let escrows: Balance = Escrows::<Test>::iter_values().map(|e| e.balance).sum();
    prop_assert_eq!(
        escrow_account,
        escrows + Balances::minimum_balance(),
        "the escrow account keeps exactly the escrows"
    );
    Compute::do_try_state().map_err(|e| TestCaseError::fail(format!("try_state: {e:?}")))?;
    for (u, user) in USERS.iter().enumerate() {
        for (p, provider) in PROVIDERS.iter().enumerate() {
            let Some(e) = Escrows::<Test>::get(account(*user), account(*provider)) else {
                continue;
            };
            let (nonce, total) = model.last.get(&(u, p)).copied().unwrap_or_default();
            prop_assert!(e.settled_nonce >= nonce, "settled_nonce decreased");
            prop_assert!(
                disputed || e.settled_total >= total,
                "settled_total decreased without a dispute"
            );
            let signed = model.max_signed.get(&(u, p)).copied().unwrap_or_default();
            prop_assert!(
                e.settled_total <= signed,
                "paid {} above the {} signed for",
                e.settled_total,
                signed
            );
            model.last.insert((u, p), (e.settled_nonce, e.settled_total));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_call_sequences_conserve_funds(actions in prop::collection::vec(action(), 1..48)) {
        new_test_ext().execute_with(|| {
            let issuance = Balances::total_issuance();
            let mut model = Model::default();
            for a in &actions {
                let disputed = apply(a, &mut model);
                check(&mut model, issuance, disputed)?;
            }
            Ok::<(), TestCaseError>(())
        })?;
    }
}
