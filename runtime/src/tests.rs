//! Runtime tests: presets build, a signed transfer pays fees, metadata versions are offered.

use super::*;
use codec::Encode;
use polkadot_sdk::{
    frame_support::genesis_builder_helper::{build_state, get_preset},
    sp_core::Pair,
    sp_io::TestExternalities,
    sp_keyring::Sr25519Keyring,
    sp_runtime::{generic::Era, traits::Header as _},
};
use serde_json::Value;

/// `patch` applied over `base`, as the node's chain-spec builder does.
fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (k, v) in patch {
                merge(base.entry(k).or_insert(Value::Null), v);
            }
        }
        (base, patch) => *base = patch,
    }
}

/// Externalities holding the genesis state of a named preset.
fn preset_ext(name: &str) -> TestExternalities {
    let mut ext = TestExternalities::default();
    ext.execute_with(|| {
        let default = get_preset::<RuntimeGenesisConfig>(&None, |_| None).expect("default config");
        let mut config: Value = serde_json::from_slice(&default).expect("default config is JSON");
        let patch = genesis_config_presets::get_preset(&name.into()).expect("preset exists");
        merge(&mut config, serde_json::from_slice(&patch).expect("preset is JSON"));
        build_state::<RuntimeGenesisConfig>(serde_json::to_vec(&config).unwrap())
            .expect("preset builds");
    });
    ext
}

#[test]
fn presets_are_listed_and_build() {
    assert_eq!(
        genesis_config_presets::preset_names(),
        vec!["development".to_string(), "local_testnet".to_string()]
    );
    assert!(genesis_config_presets::get_preset(&"no-such-preset".into()).is_none());

    preset_ext("development").execute_with(|| {
        assert_eq!(pallet_aura::Authorities::<Runtime>::get().len(), 1);
        assert_eq!(Grandpa::grandpa_authorities().len(), 1);
        assert_eq!(pallet_sudo::Key::<Runtime>::get(), Some(Sr25519Keyring::Alice.to_account_id()));
        assert_eq!(
            Balances::free_balance(Sr25519Keyring::Ferdie.to_account_id()),
            genesis_config_presets::ENDOWMENT
        );
        assert_eq!(
            pallet_compute::RefundLock::<Runtime>::get(),
            genesis_config_presets::DEV_REFUND_LOCK
        );
        assert_eq!(
            pallet_compute::DisputeWindow::<Runtime>::get(),
            genesis_config_presets::DEV_DISPUTE_WINDOW
        );
    });
    preset_ext("local_testnet").execute_with(|| {
        assert_eq!(pallet_aura::Authorities::<Runtime>::get().len(), 4);
        assert_eq!(Grandpa::grandpa_authorities().len(), 4);
        assert_eq!(pallet_compute::RefundLock::<Runtime>::get(), DAYS);
    });
}

fn signed_transfer(
    from: Sr25519Keyring,
    to: AccountId,
    amount: Balance,
    nonce: Nonce,
) -> UncheckedExtrinsic {
    let call = RuntimeCall::Balances(pallet_balances::Call::transfer_keep_alive {
        dest: to.into(),
        value: amount,
    });
    let tx_ext: TxExtension = (
        frame_system::CheckNonZeroSender::new(),
        frame_system::CheckSpecVersion::new(),
        frame_system::CheckTxVersion::new(),
        frame_system::CheckGenesis::new(),
        frame_system::CheckEra::from(Era::Immortal),
        frame_system::CheckNonce::from(nonce),
        frame_system::CheckWeight::new(),
        pallet_transaction_payment::ChargeTransactionPayment::from(0),
    );
    let payload = SignedPayload::new(call.clone(), tx_ext.clone()).expect("payload builds");
    let signature = payload.using_encoded(|bytes| from.pair().sign(bytes));
    UncheckedExtrinsic::new_signed(call, from.to_account_id().into(), signature.into(), tx_ext)
}

#[test]
fn a_signed_transfer_moves_funds_and_pays_a_fee() {
    preset_ext("development").execute_with(|| {
        let header = Header::new(
            1,
            Default::default(),
            Default::default(),
            System::parent_hash(),
            Default::default(),
        );
        RuntimeExecutive::initialize_block(&header);
        let (alice, bob) = (Sr25519Keyring::Alice, Sr25519Keyring::Bob.to_account_id());
        let alice_before = Balances::free_balance(alice.to_account_id());
        let bob_before = Balances::free_balance(&bob);
        let issuance = Balances::total_issuance();

        let xt = signed_transfer(alice, bob.clone(), 5 * UNIT, 0);
        assert_eq!(RuntimeExecutive::apply_extrinsic(xt), Ok(Ok(())));

        assert_eq!(Balances::free_balance(&bob), bob_before + 5 * UNIT);
        let fee = alice_before - 5 * UNIT - Balances::free_balance(alice.to_account_id());
        assert!(fee > 0, "a signed transfer pays a fee");
        let paid = System::events().into_iter().find_map(|r| match r.event {
            RuntimeEvent::TransactionPayment(
                pallet_transaction_payment::Event::TransactionFeePaid { actual_fee, .. },
            ) => Some(actual_fee),
            _ => None,
        });
        assert_eq!(paid, Some(fee));
        // Fees go nowhere in this runtime (`FungibleAdapter<Balances, ()>`): they are burned.
        assert_eq!(Balances::total_issuance(), issuance - fee);
        assert_eq!(System::account_nonce(alice.to_account_id()), 1);

        // A replay of the same nonce is refused and changes nothing.
        let replay = signed_transfer(alice, bob.clone(), 5 * UNIT, 0);
        assert!(RuntimeExecutive::apply_extrinsic(replay).is_err());
        assert_eq!(Balances::free_balance(&bob), bob_before + 5 * UNIT);
    });
}

#[test]
fn metadata_v15_and_v16_are_offered() {
    let versions = Runtime::metadata_versions();
    assert!(versions.contains(&15) && versions.contains(&16), "offered: {versions:?}");
    for v in [15u32, 16] {
        let m = Runtime::metadata_at_version(v).expect("metadata at offered version");
        // The SCALE-encoded `RuntimeMetadataPrefixed`: the magic "meta" then the version byte.
        let bytes = &m[..];
        assert_eq!(&bytes[..4], b"meta");
        assert_eq!(bytes[4] as u32, v);
    }
}

#[test]
fn compute_pallet_is_wired_with_its_api() {
    preset_ext("development").execute_with(|| {
        let params = Compute::params();
        assert_eq!(params.max_batch, configs::MAX_BATCH);
        assert_eq!(params.refund_lock, genesis_config_presets::DEV_REFUND_LOCK);
        assert!(Compute::services_page(None, 10).is_empty());
    });
}
