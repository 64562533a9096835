use super::*;
use crate::migrations::{v1, v2, MigrateV1ToV2, MigrateV2ToV3};
use codec::Encode;
use polkadot_sdk::frame_support::{
    storage::unhashed,
    traits::{GetStorageVersion, OnRuntimeUpgrade, StorageVersion},
};
use Sr25519Keyring::{Alice, Bob};

#[test]
fn version_1_records_come_through_with_nothing_held() {
    new_test_ext().execute_with(|| {
        StorageVersion::new(1).put::<Compute>();
        let old_escrow = v1::Escrow {
            balance: 10,
            pending_refund: 1,
            unlock_at: 5,
            settled_nonce: 3,
            settled_through: 2,
            settled_total: 7,
            last_claimed_total: 8,
            last_settled_at: 4u64,
        };
        let old_provider = v1::ProviderInfo {
            bond: 1_000,
            services: 1,
            unbonding: false,
            claims_settled: 2,
            requests_settled: 3,
            earned: 7,
            disputes_lost: 1,
            last_settled_at: 4u64,
        };
        unhashed::put_raw(
            &Escrows::<Test>::hashed_key_for(account(Alice), account(Bob)),
            &old_escrow.encode(),
        );
        unhashed::put_raw(&Providers::<Test>::hashed_key_for(account(Bob)), &old_provider.encode());

        MigrateV1ToV2::<Test>::on_runtime_upgrade();
        assert_eq!(Compute::on_chain_storage_version(), 2);
        let e = escrow(Alice, Bob);
        assert_eq!(
            (e.balance, e.pending_refund, e.unlock_at, e.settled_nonce, e.settled_through),
            (10, 1, 5, 3, 2)
        );
        assert_eq!((e.settled_total, e.last_claimed_total, e.last_settled_at), (7, 8, 4));
        assert_eq!((e.held, e.held_next), (0, 0));
        let p = provider_info(Bob);
        assert_eq!((p.bond, p.services, p.claims_settled, p.requests_settled), (1_000, 1, 2, 3));
        assert_eq!((p.earned, p.disputes_lost, p.last_settled_at), (7, 1, 4));
        assert_eq!(p.bond_locked_until, 4 + DISPUTE_WINDOW, "the bond stays locked a window");

        // A second run finds version 2 and leaves the records alone.
        MigrateV1ToV2::<Test>::on_runtime_upgrade();
        assert_eq!(provider_info(Bob), p);
    });
}

#[test]
fn version_2_services_come_through_without_a_model_hash() {
    new_test_ext().execute_with(|| {
        StorageVersion::new(2).put::<Compute>();
        let old = v2::Service {
            kind: ServiceKind::Chat,
            model: bytes("SmolLM2"),
            url: bytes("http://w"),
            input_price: 3,
            output_price: 4,
            verifiability: bytes("none"),
            price_version: 2,
        };
        unhashed::put_raw(&Services::<Test>::hashed_key_for(account(Bob), 7), &old.encode());

        MigrateV2ToV3::<Test>::on_runtime_upgrade();
        assert_eq!(Compute::on_chain_storage_version(), 3);
        let s = Services::<Test>::get(account(Bob), 7).expect("translated");
        assert_eq!(s.model.to_vec(), b"SmolLM2".to_vec());
        assert_eq!((s.input_price, s.output_price, s.price_version), (3, 4, 2));
        assert_eq!(s.model_hash, H256::zero());

        // A second run finds version 3 and leaves the records alone.
        MigrateV2ToV3::<Test>::on_runtime_upgrade();
        assert_eq!(Services::<Test>::get(account(Bob), 7), Some(s));
    });
}
