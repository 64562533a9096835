//! Unit and property tests of the compute pallet.

mod challenges;
mod disputes;
mod escrow;
mod finetune;
mod invariants;
mod migrations;
mod services;
mod settlement;

use crate::{mock::*, pallet::*, types::*};
use polkadot_sdk::{
    frame_support::{assert_ok, traits::fungible::InspectHold, BoundedVec},
    sp_core::H256,
    sp_keyring::Sr25519Keyring,
    sp_runtime::AccountId32,
};

pub(crate) const INPUT_PRICE: Balance = 1;
pub(crate) const OUTPUT_PRICE: Balance = 2;

pub(crate) fn bytes<S: polkadot_sdk::sp_core::Get<u32>>(s: &str) -> BoundedVec<u8, S> {
    s.as_bytes().to_vec().try_into().expect("test string fits")
}

/// Terms committing to the weights `0x4d4d…`.
pub(crate) fn terms(
    kind: ServiceKind,
    model: &str,
    url: &str,
    input_price: Balance,
    output_price: Balance,
    verifiability: &str,
) -> ServiceTerms {
    ServiceTerms {
        kind,
        model: bytes(model),
        model_hash: H256::repeat_byte(0x4d),
        url: bytes(url),
        input_price,
        output_price,
        verifiability: bytes(verifiability),
    }
}

pub(crate) fn register(provider: Sr25519Keyring, service_id: ServiceId) {
    assert_ok!(Compute::register_service(
        RuntimeOrigin::signed(account(provider)),
        service_id,
        terms(
            ServiceKind::Chat,
            "SmolLM2-135M-Instruct",
            "http://127.0.0.1:8080",
            INPUT_PRICE,
            OUTPUT_PRICE,
            "none"
        )
    ));
}

pub(crate) fn deposit(user: Sr25519Keyring, provider: Sr25519Keyring, amount: Balance) {
    assert_ok!(Compute::deposit(RuntimeOrigin::signed(account(user)), account(provider), amount));
}

pub(crate) fn voucher(
    user: Sr25519Keyring,
    provider: Sr25519Keyring,
    nonce: Nonce,
    spent: Balance,
    cap: Balance,
) -> Voucher {
    Voucher {
        user: account(user),
        provider: account(provider),
        service_id: 0,
        price_version: 0,
        nonce,
        request_hash: if cap == 0 { H256::zero() } else { H256::repeat_byte(nonce as u8) },
        spent,
        cap,
    }
}

pub(crate) fn signed(v: Voucher, signer: Sr25519Keyring) -> SignedVoucher {
    let signature = sign(signer, &v.signing_payload(&genesis()));
    SignedVoucher { voucher: v, signature }
}

pub(crate) fn claim(
    user: Sr25519Keyring,
    provider: Sr25519Keyring,
    nonce: Nonce,
    spent: Balance,
    cap: Balance,
    fee_claim: Balance,
) -> Claim {
    Claim { voucher: signed(voucher(user, provider, nonce, spent, cap), user), fee_claim }
}

pub(crate) fn settle(provider: Sr25519Keyring, claims: Vec<Claim>) {
    let items: BoundedVec<Claim, _> = claims.try_into().expect("batch within MaxBatch");
    assert_ok!(Compute::settle(
        RuntimeOrigin::signed(account(provider)),
        items,
        H256::repeat_byte(0xab)
    ));
}

pub(crate) fn receipt(
    user: Sr25519Keyring,
    provider: Sr25519Keyring,
    nonce: Nonce,
    fee: Balance,
    total: Balance,
) -> Receipt {
    Receipt {
        user: account(user),
        provider: account(provider),
        service_id: 0,
        nonce,
        request_hash: H256::repeat_byte(nonce as u8),
        response_hash: H256::repeat_byte(0xee),
        proof_hash: Default::default(),
        model_hash: Default::default(),
        input_tokens: 1,
        output_tokens: 1,
        fee,
        total,
    }
}

pub(crate) fn signed_receipt(r: Receipt, signer: Sr25519Keyring) -> SignedReceipt {
    let signature = sign(signer, &r.signing_payload(&genesis()));
    SignedReceipt { receipt: r, signature }
}

pub(crate) fn escrow(user: Sr25519Keyring, provider: Sr25519Keyring) -> Escrow<u64> {
    Escrows::<Test>::get(account(user), account(provider)).expect("escrow exists")
}

pub(crate) fn free(k: Sr25519Keyring) -> Balance {
    Balances::free_balance(account(k))
}

/// What the escrow account keeps above its existential deposit for escrow balances: the sum of
/// all escrows, payments held for providers excluded.
pub(crate) fn escrowed() -> Balance {
    use polkadot_sdk::frame_support::traits::fungible::Inspect;
    let held: Balance = Escrows::<Test>::iter_values().map(|e| e.held + e.held_next).sum();
    Balances::balance(&Compute::escrow_account()) - Balances::minimum_balance() - held
}

/// A provider's free balance plus what settlement paid it that is still held in escrows.
pub(crate) fn paid_to(k: Sr25519Keyring) -> Balance {
    let held: Balance = Escrows::<Test>::iter()
        .filter(|(_, provider, _)| *provider == account(k))
        .map(|(_, _, e)| e.held + e.held_next)
        .sum();
    free(k) + held
}

pub(crate) fn bond_held(k: Sr25519Keyring) -> Balance {
    Balances::balance_on_hold(&HoldReason::ProviderBond.into(), &account(k))
}

/// The pallet's events since the last call, oldest first.
pub(crate) fn events() -> Vec<Event<Test>> {
    let events = System::events()
        .into_iter()
        .filter_map(|r| match r.event {
            RuntimeEvent::Compute(e) => Some(e),
            _ => None,
        })
        .collect();
    System::reset_events();
    events
}

pub(crate) fn provider_info(k: Sr25519Keyring) -> ProviderInfo<u64> {
    Providers::<Test>::get(account(k)).expect("provider exists")
}

#[allow(dead_code)]
pub(crate) fn id(k: Sr25519Keyring) -> AccountId32 {
    account(k)
}
