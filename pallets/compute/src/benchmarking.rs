//! Benchmarks (v2) for every call. Signatures use ecdsa, the costliest scheme `MultiSignature`
//! accepts (a public-key recovery plus two hashes), so the weights cover sr25519 and ed25519 too.

use super::*;
use crate::pallet::{
    Call, Config, DisputeWindow, Escrows, Pallet, Providers, RefundLock, Services,
};
use alloc::{format, vec::Vec};
use polkadot_sdk::{
    frame_benchmarking::v2::*,
    frame_support::{
        traits::{fungible::Mutate, Get},
        BoundedVec,
    },
    frame_system::{pallet_prelude::BlockNumberFor, RawOrigin},
    sp_core::{crypto::KeyTypeId, ecdsa, H256},
    sp_runtime::{
        traits::{IdentifyAccount, One},
        AccountId32, MultiSignature, MultiSigner,
    },
};

const KEY: KeyTypeId = KeyTypeId(*b"bnch");
const FUNDS: Balance = 1_000_000_000_000_000_000;

/// An ecdsa key in the benchmark keystore and its account.
fn key(name: &str) -> (ecdsa::Public, AccountId32) {
    let public =
        polkadot_sdk::sp_io::crypto::ecdsa_generate(KEY, Some(format!("//{name}").into_bytes()));
    let account = MultiSigner::from(public).into_account();
    (public, account)
}

fn sign(public: &ecdsa::Public, payload: &[u8]) -> MultiSignature {
    let sig = polkadot_sdk::sp_io::crypto::ecdsa_sign(KEY, public, payload)
        .expect("key is in the keystore");
    MultiSignature::Ecdsa(sig)
}

fn fund<T: Config>(who: &AccountId32) {
    T::Currency::set_balance(who, FUNDS);
}

fn bytes<S: Get<u32>>(len: u32) -> BoundedVec<u8, S> {
    alloc::vec![b'x'; len.min(S::get()) as usize].try_into().expect("within bound")
}

fn service() -> Service {
    Service {
        kind: ServiceKind::Chat,
        model: bytes(compute_primitives::MAX_MODEL_LEN),
        url: bytes(compute_primitives::MAX_URL_LEN),
        input_price: 1_000,
        output_price: 2_000,
        verifiability: bytes(compute_primitives::MAX_VERIFIABILITY_LEN),
        price_version: 0,
    }
}

/// A funded provider with one registered service.
fn provider<T: Config>(name: &str) -> (ecdsa::Public, AccountId32) {
    let (public, account) = key(name);
    fund::<T>(&account);
    Pallet::<T>::do_register_service(account.clone(), 0, service()).expect("registers");
    (public, account)
}

/// A funded user with an escrow of `amount` with `provider`.
fn user_with_escrow<T: Config>(
    name: &str,
    provider: &AccountId32,
    amount: Balance,
) -> (ecdsa::Public, AccountId32) {
    let (public, account) = key(name);
    fund::<T>(&account);
    Pallet::<T>::do_deposit(account.clone(), provider.clone(), amount).expect("deposits");
    (public, account)
}

/// An escrow that covers a first voucher's cap and satisfies the runtime's `MinDeposit`.
fn escrow_amount<T: Config>() -> Balance {
    T::MinDeposit::get().max(1_000_000)
}

/// The first voucher of an escrow: nonce 1, nothing spent, a cap of 1 000.
fn first_voucher(user: AccountId32, provider: AccountId32) -> Voucher {
    Voucher {
        user,
        provider,
        service_id: 0,
        price_version: 0,
        nonce: 1,
        request_hash: H256::repeat_byte(1),
        spent: 0,
        cap: 1_000,
    }
}

fn advance<T: Config>(blocks: BlockNumberFor<T>) {
    let now = polkadot_sdk::frame_system::Pallet::<T>::block_number();
    polkadot_sdk::frame_system::Pallet::<T>::set_block_number(now + blocks + One::one());
}

#[benchmarks]
mod benchmarks {
    use super::*;

    #[benchmark]
    fn register_service() {
        let (_, who) = key("provider");
        fund::<T>(&who);
        let s = service();
        #[extrinsic_call]
        _(
            RawOrigin::Signed(who.clone()),
            0,
            s.kind,
            s.model,
            s.url,
            s.input_price,
            s.output_price,
            s.verifiability,
        );
        assert!(Services::<T>::contains_key(&who, 0));
    }

    #[benchmark]
    fn update_service() {
        let (_, who) = provider::<T>("provider");
        let s = service();
        #[extrinsic_call]
        _(RawOrigin::Signed(who.clone()), 0, s.kind, s.model, s.url, 5, 6, s.verifiability);
        assert_eq!(Services::<T>::get(&who, 0).map(|s| s.price_version), Some(1));
    }

    #[benchmark]
    fn remove_service() {
        let (_, who) = provider::<T>("provider");
        #[extrinsic_call]
        _(RawOrigin::Signed(who.clone()), 0);
        assert!(Providers::<T>::get(&who).is_some_and(|p| p.unbonding));
    }

    #[benchmark]
    fn withdraw_bond() {
        let (_, who) = provider::<T>("provider");
        Pallet::<T>::do_remove_service(who.clone(), 0).expect("removes");
        advance::<T>(DisputeWindow::<T>::get());
        #[extrinsic_call]
        _(RawOrigin::Signed(who.clone()));
        assert!(Providers::<T>::get(&who).is_some_and(|p| p.bond == 0));
    }

    #[benchmark]
    fn deposit() {
        let (_, p) = provider::<T>("provider");
        let (_, user) = key("user");
        fund::<T>(&user);
        let amount = T::MinDeposit::get();
        #[extrinsic_call]
        _(RawOrigin::Signed(user.clone()), p.clone(), amount);
        assert_eq!(Escrows::<T>::get(&user, &p).map(|e| e.balance), Some(amount));
    }

    #[benchmark]
    fn request_refund() {
        let (_, p) = provider::<T>("provider");
        let (_, user) = user_with_escrow::<T>("user", &p, T::MinDeposit::get());
        #[extrinsic_call]
        _(RawOrigin::Signed(user.clone()), p.clone(), 1);
        assert_eq!(Escrows::<T>::get(&user, &p).map(|e| e.pending_refund), Some(1));
    }

    #[benchmark]
    fn cancel_refund() {
        let (_, p) = provider::<T>("provider");
        let (_, user) = user_with_escrow::<T>("user", &p, T::MinDeposit::get());
        Pallet::<T>::do_request_refund(user.clone(), p.clone(), 1).expect("requests");
        #[extrinsic_call]
        _(RawOrigin::Signed(user.clone()), p.clone());
        assert_eq!(Escrows::<T>::get(&user, &p).map(|e| e.pending_refund), Some(0));
    }

    #[benchmark]
    fn withdraw_refund() {
        let (_, p) = provider::<T>("provider");
        let (_, user) = user_with_escrow::<T>("user", &p, T::MinDeposit::get());
        Pallet::<T>::do_request_refund(user.clone(), p.clone(), 1).expect("requests");
        advance::<T>(RefundLock::<T>::get());
        #[extrinsic_call]
        _(RawOrigin::Signed(user.clone()), p.clone());
        assert_eq!(Escrows::<T>::get(&user, &p).map(|e| e.pending_refund), Some(0));
    }

    /// `n` claims from `n` different users, each paid in full: a signature check, an escrow
    /// read and write, and a transfer on hold per claim.
    #[benchmark]
    fn settle(n: Linear<1, { T::MaxBatch::get() }>) {
        let (_, p) = provider::<T>("provider");
        let genesis = Pallet::<T>::genesis_hash();
        let claims: Vec<Claim> = (0..n)
            .map(|i| {
                let (public, user) =
                    user_with_escrow::<T>(&format!("user{i}"), &p, escrow_amount::<T>());
                let voucher = first_voucher(user, p.clone());
                let signature = sign(&public, &voucher.signing_payload(&genesis));
                Claim { voucher: SignedVoucher { voucher, signature }, fee_claim: 1_000 }
            })
            .collect();
        let items: BoundedVec<Claim, T::MaxBatch> = claims.try_into().expect("n <= MaxBatch");
        #[extrinsic_call]
        _(RawOrigin::Signed(p.clone()), items, H256::repeat_byte(7));
        assert_eq!(Providers::<T>::get(&p).map(|i| i.claims_settled), Some(n as u64));
    }

    /// A won dispute whose refund and slash both come out of the bond.
    #[benchmark]
    fn dispute() {
        let (p_key, p) = provider::<T>("provider");
        let (u_key, user) = user_with_escrow::<T>("user", &p, escrow_amount::<T>());
        let genesis = Pallet::<T>::genesis_hash();
        let voucher = first_voucher(user.clone(), p.clone());
        let signature = sign(&u_key, &voucher.signing_payload(&genesis));
        let items: BoundedVec<Claim, T::MaxBatch> =
            alloc::vec![Claim { voucher: SignedVoucher { voucher, signature }, fee_claim: 1_000 }]
                .try_into()
                .expect("one claim fits");
        Pallet::<T>::do_settle(p.clone(), items, H256::zero()).expect("settles");
        let receipt = Receipt {
            user: user.clone(),
            provider: p.clone(),
            service_id: 0,
            nonce: 1,
            request_hash: H256::repeat_byte(1),
            response_hash: H256::repeat_byte(2),
            input_tokens: 1,
            output_tokens: 1,
            fee: 100,
            total: 100,
        };
        let signature = sign(&p_key, &receipt.signing_payload(&genesis));
        #[extrinsic_call]
        _(RawOrigin::Signed(user.clone()), p.clone(), SignedReceipt { receipt, signature });
        assert_eq!(Escrows::<T>::get(&user, &p).map(|e| e.settled_total), Some(100));
    }

    #[benchmark]
    fn set_refund_lock() {
        let blocks = T::MaxRefundLock::get();
        #[extrinsic_call]
        _(RawOrigin::Root, blocks);
        assert_eq!(RefundLock::<T>::get(), blocks);
    }

    #[benchmark]
    fn set_dispute_window() {
        let blocks = T::MaxDisputeWindow::get();
        #[extrinsic_call]
        _(RawOrigin::Root, blocks);
        assert_eq!(DisputeWindow::<T>::get(), blocks);
    }

    impl_benchmark_test_suite!(Pallet, crate::mock::new_bench_ext(), crate::mock::Test);
}
