//! Runtime tests: presets build, a signed transfer pays fees (most of them to block authors),
//! metadata versions are offered, the validator set changes by its pallets' rules and a chain
//! that ran without them is brought over unchanged.

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

/// Externalities holding the genesis state of a named preset, with a keystore for making session
/// keys and their proofs.
fn preset_ext(name: &str) -> TestExternalities {
    use polkadot_sdk::sp_keystore::{testing::MemoryKeystore, KeystoreExt};
    let mut ext = TestExternalities::default();
    ext.register_extension(KeystoreExt::new(MemoryKeystore::new()));
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
        assert_eq!(Session::validators(), vec![Sr25519Keyring::Alice.to_account_id()]);
        assert_eq!(
            pallet_collator_selection::Invulnerables::<Runtime>::get().into_inner(),
            vec![Sr25519Keyring::Alice.to_account_id()]
        );
        assert_eq!(Balances::free_balance(CollatorSelection::account_id()), EXISTENTIAL_DEPOSIT);
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
        assert_eq!(Session::validators().len(), 4);
        // No stranger until root opens a slot.
        assert_eq!(pallet_collator_selection::DesiredCandidates::<Runtime>::get(), 0);
        // Each validator's account is its Aura key's, in the order Aura uses.
        let aura = pallet_aura::Authorities::<Runtime>::get();
        for (i, v) in Session::validators().iter().enumerate() {
            assert_eq!(*v, validators::account_of(&aura[i]));
        }
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
        // 80 % of the fee goes to the pot that pays block authors; the rest is burned.
        let to_authors = validators::AUTHOR_FEE_SHARE * fee;
        assert_eq!(
            Balances::free_balance(CollatorSelection::account_id()),
            EXISTENTIAL_DEPOSIT + to_authors
        );
        assert_eq!(Balances::total_issuance(), issuance - (fee - to_authors));
        assert_eq!(System::account_nonce(alice.to_account_id()), 1);

        // A replay of the same nonce is refused and changes nothing.
        let replay = signed_transfer(alice, bob.clone(), 5 * UNIT, 0);
        assert!(RuntimeExecutive::apply_extrinsic(replay).is_err());
        assert_eq!(Balances::free_balance(&bob), bob_before + 5 * UNIT);
    });
}

#[test]
fn metadata_v15_and_v16_are_offered() {
    // Metadata reads storage: the session length behind collator selection's `KickThreshold`.
    TestExternalities::default().execute_with(metadata_versions_are_offered);
}

fn metadata_versions_are_offered() {
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

mod validator_set {
    use super::*;
    use polkadot_sdk::{
        frame_support::{
            assert_noop, assert_ok,
            traits::{fungible::InspectHold, Hooks, OnRuntimeUpgrade},
        },
        pallet_authorship::EventHandler,
        sp_consensus_aura::sr25519::AuthorityId as AuraId,
        sp_consensus_grandpa::AuthorityId as GrandpaId,
        sp_core::H256,
        sp_io,
        sp_keyring::Ed25519Keyring,
    };

    /// Session keys made in the keystore from `seed`, with the proof that `owner` holds them.
    fn keys_for(owner: Sr25519Keyring, seed: &str) -> (opaque::SessionKeys, Vec<u8>) {
        let generated = opaque::SessionKeys::generate(
            &owner.to_account_id().encode(),
            Some(seed.as_bytes().to_vec()),
        );
        (generated.keys, generated.proof.encode())
    }

    /// Ends the current session at the next block and starts the next one.
    fn next_session() {
        let now = System::block_number();
        let len = <configs::SessionPeriod as frame_support::traits::Get<BlockNumber>>::get();
        let next = (now / len + 1) * len;
        System::set_block_number(next);
        <Session as Hooks<BlockNumber>>::on_initialize(next);
        <Grandpa as Hooks<BlockNumber>>::on_finalize(next);
    }

    fn eve_joins() {
        // Root opens one slot to a stranger.
        assert_ok!(CollatorSelection::set_desired_candidates(RuntimeOrigin::root(), 1));
        let eve = Sr25519Keyring::Eve;
        let (keys, proof) = keys_for(eve, "//Eve");
        assert_eq!(keys.aura, AuraId::from(eve.public()));
        assert_eq!(keys.grandpa, GrandpaId::from(Ed25519Keyring::Eve.public()));
        assert_ok!(Session::set_keys(RuntimeOrigin::signed(eve.to_account_id()), keys, proof));
        assert_ok!(CollatorSelection::register_as_candidate(RuntimeOrigin::signed(
            eve.to_account_id()
        )));
    }

    #[test]
    fn a_bonded_candidate_joins_at_the_second_session_and_leaves_the_same_way() {
        preset_ext("local_testnet").execute_with(|| {
            configs::SessionLength::set(&10);
            System::set_block_number(1);
            let eve = Sr25519Keyring::Eve.to_account_id();
            let free = Balances::free_balance(&eve);
            eve_joins();
            assert_eq!(
                Balances::free_balance(&eve),
                free - configs::CANDIDACY_BOND - configs::KEY_DEPOSIT
            );
            let grandpa_set = Grandpa::current_set_id();

            // Queued at the first session change, in the set at the second.
            next_session();
            assert!(!Session::validators().contains(&eve));
            assert!(pallet_session::QueuedKeys::<Runtime>::get().iter().any(|(v, _)| *v == eve));
            next_session();
            assert!(Session::validators().contains(&eve));
            assert_eq!(Session::validators().len(), 5);
            assert!(pallet_aura::Authorities::<Runtime>::get()
                .contains(&AuraId::from(Sr25519Keyring::Eve.public())));
            assert!(Grandpa::grandpa_authorities()
                .iter()
                .any(|(k, _)| *k == GrandpaId::from(Ed25519Keyring::Eve.public())));
            assert!(Grandpa::current_set_id() > grandpa_set);

            // Authoring keeps it in: leaving is its own choice, effective after two sessions
            // again, with the bond back at once.
            <CollatorSelection as EventHandler<AccountId, BlockNumber>>::note_author(eve.clone());
            next_session();
            assert!(Session::validators().contains(&eve));
            assert_ok!(CollatorSelection::leave_intent(RuntimeOrigin::signed(eve.clone())));
            // What stays set aside is the key deposit alone.
            assert_eq!(Balances::reserved_balance(&eve), configs::KEY_DEPOSIT);
            next_session();
            next_session();
            assert_eq!(Session::validators().len(), 4);
            assert!(!Session::validators().contains(&eve));
            assert!(!pallet_aura::Authorities::<Runtime>::get()
                .contains(&AuraId::from(Sr25519Keyring::Eve.public())));
        });
    }

    #[test]
    fn an_idle_candidate_is_removed_and_gets_its_bond_back() {
        preset_ext("local_testnet").execute_with(|| {
            configs::SessionLength::set(&10);
            System::set_block_number(1);
            let eve = Sr25519Keyring::Eve.to_account_id();
            eve_joins();
            next_session();
            next_session();
            assert!(Session::validators().contains(&eve));
            // Eve authors nothing for longer than the kick threshold (two sessions).
            for _ in 0..3 {
                next_session();
            }
            assert!(pallet_collator_selection::CandidateList::<Runtime>::get().is_empty());
            next_session();
            assert!(!Session::validators().contains(&eve));
            // The candidacy bond is back; the key deposit stays until Eve purges her keys.
            assert_eq!(Balances::reserved_balance(&eve), configs::KEY_DEPOSIT);
            assert_eq!(
                Balances::balance_on_hold(
                    &RuntimeHoldReason::Session(pallet_session::HoldReason::Keys),
                    &eve
                ),
                configs::KEY_DEPOSIT
            );
        });
    }

    #[test]
    fn root_can_lengthen_the_grace_of_an_idle_candidate() {
        preset_ext("local_testnet").execute_with(|| {
            configs::SessionLength::set(&10);
            configs::IdleSessions::set(&6);
            assert_eq!(configs::KickThreshold::get(), 60);
            System::set_block_number(1);
            let eve = Sr25519Keyring::Eve.to_account_id();
            eve_joins();
            // A new candidate's clock starts one threshold after registering (block 61), so
            // with two idle sessions she would be gone by block 50 (the test above); with six
            // she is still a candidate, and in the set, at block 120.
            for _ in 0..12 {
                next_session();
            }
            assert_eq!(System::block_number(), 120);
            assert_eq!(pallet_collator_selection::CandidateList::<Runtime>::get().len(), 1);
            assert!(Session::validators().contains(&eve));
            // Six sessions idle after that: removed.
            next_session();
            assert!(pallet_collator_selection::CandidateList::<Runtime>::get().is_empty());
            // A stored zero is one session, never a removal at every session change.
            configs::IdleSessions::set(&0);
            assert_eq!(configs::KickThreshold::get(), 10);
        });
    }

    #[test]
    fn keys_another_validator_holds_or_an_unkeyed_candidate_are_refused() {
        preset_ext("local_testnet").execute_with(|| {
            let eve = Sr25519Keyring::Eve.to_account_id();
            // Alice's public keys without their private halves: no proof.
            let (alices, alices_proof) = keys_for(Sr25519Keyring::Alice, "//Alice");
            assert_noop!(
                Session::set_keys(RuntimeOrigin::signed(eve.clone()), alices.clone(), Vec::new()),
                pallet_session::Error::<Runtime>::InvalidProof
            );
            // Alice's proof names Alice, not Eve.
            assert_noop!(
                Session::set_keys(RuntimeOrigin::signed(eve.clone()), alices.clone(), alices_proof),
                pallet_session::Error::<Runtime>::InvalidProof
            );
            // Even holding them, keys another validator has are refused.
            let (same, eves_proof) = keys_for(Sr25519Keyring::Eve, "//Alice");
            assert_eq!(same, alices);
            assert_noop!(
                Session::set_keys(RuntimeOrigin::signed(eve.clone()), same, eves_proof),
                pallet_session::Error::<Runtime>::DuplicatedKey
            );
            // A candidate needs keys the chain knows.
            assert_noop!(
                CollatorSelection::register_as_candidate(RuntimeOrigin::signed(eve)),
                pallet_collator_selection::Error::<Runtime>::ValidatorNotRegistered
            );
            // Only root changes the invulnerables.
            assert!(CollatorSelection::set_invulnerables(
                RuntimeOrigin::signed(Sr25519Keyring::Alice.to_account_id()),
                Vec::new()
            )
            .is_err());
        });
    }

    #[test]
    fn the_set_never_becomes_empty_or_keyless() {
        preset_ext("local_testnet").execute_with(|| {
            configs::SessionLength::set(&10);
            System::set_block_number(1);
            let before = Session::validators();
            // Collator selection refuses to empty its set itself ...
            assert!(
                CollatorSelection::set_invulnerables(RuntimeOrigin::root(), Vec::new()).is_err()
            );
            // ... and whatever its storage says, a set without keys is never used.
            pallet_collator_selection::Invulnerables::<Runtime>::kill();
            next_session();
            next_session();
            assert_eq!(Session::validators(), before);
            let alice = Sr25519Keyring::Alice.to_account_id();
            assert_ok!(CollatorSelection::set_invulnerables(
                RuntimeOrigin::root(),
                vec![alice.clone()]
            ));
            // Alice, the only one chosen, drops her keys: the keyless choice is refused and the
            // current set kept, less Alice, who has no keys to author with.
            assert_ok!(Session::purge_keys(RuntimeOrigin::signed(alice.clone())));
            next_session();
            next_session();
            let kept: Vec<_> = before.iter().filter(|v| **v != alice).cloned().collect();
            assert_eq!(Session::validators(), kept);
            assert_eq!(pallet_aura::Authorities::<Runtime>::get().len(), 3);
        });
    }

    #[test]
    fn a_session_length_of_zero_is_read_as_the_minimum() {
        preset_ext("local_testnet").execute_with(|| {
            configs::SessionLength::set(&0);
            assert_eq!(
                <configs::SessionPeriod as frame_support::traits::Get<BlockNumber>>::get(),
                configs::MIN_SESSION_LENGTH
            );
            let index = Session::current_index();
            for n in 1..=configs::MIN_SESSION_LENGTH {
                System::set_block_number(n);
                <Session as Hooks<BlockNumber>>::on_initialize(n);
            }
            assert_eq!(Session::current_index(), index + 1);
        });
    }

    #[test]
    fn block_authors_are_paid_half_the_pot() {
        preset_ext("local_testnet").execute_with(|| {
            let pot = CollatorSelection::account_id();
            assert_ok!(Balances::transfer_keep_alive(
                RuntimeOrigin::signed(Sr25519Keyring::Ferdie.to_account_id()),
                pot.clone().into(),
                10 * UNIT
            ));
            let bob = Sr25519Keyring::Bob.to_account_id();
            let before = Balances::free_balance(&bob);
            <CollatorSelection as EventHandler<AccountId, BlockNumber>>::note_author(bob.clone());
            assert_eq!(Balances::free_balance(&bob), before + 5 * UNIT);
            assert_eq!(Balances::free_balance(&pot), EXISTENTIAL_DEPOSIT + 5 * UNIT);
        });
    }

    /// A chain as the runtime before the validator pallets left it: the local testnet with
    /// Aura and GRANDPA authorities but nothing under Session, CollatorSelection or
    /// Authorship, and the compute pallet in use.
    fn old_chain() -> TestExternalities {
        let mut ext = preset_ext("local_testnet");
        ext.execute_with(|| {
            for pallet in ["Session", "CollatorSelection", "Authorship"] {
                let prefix = sp_io::hashing::twox_128(pallet.as_bytes());
                let _ = sp_io::storage::clear_prefix(&prefix, None);
            }
            let pot = CollatorSelection::account_id();
            let _ = <Balances as frame_support::traits::fungible::Mutate<AccountId>>::burn_from(
                &pot,
                EXISTENTIAL_DEPOSIT,
                frame_support::traits::tokens::Preservation::Expendable,
                frame_support::traits::tokens::Precision::BestEffort,
                frame_support::traits::tokens::Fortitude::Force,
            );
            assert!(Session::validators().is_empty());
            // Authorities in the order the former genesis wrote them (not sorted by account).
            let order = [
                (Sr25519Keyring::Alice, Ed25519Keyring::Alice),
                (Sr25519Keyring::Bob, Ed25519Keyring::Bob),
                (Sr25519Keyring::Charlie, Ed25519Keyring::Charlie),
                (Sr25519Keyring::Dave, Ed25519Keyring::Dave),
            ];
            pallet_aura::Authorities::<Runtime>::put(
                polkadot_sdk::frame_support::BoundedVec::truncate_from(
                    order.iter().map(|(a, _)| AuraId::from(a.public())).collect::<Vec<_>>(),
                ),
            );
            pallet_grandpa::Authorities::<Runtime>::put(
                polkadot_sdk::frame_support::WeakBoundedVec::force_from(
                    order.iter().map(|(_, g)| (GrandpaId::from(g.public()), 1)).collect::<Vec<_>>(),
                    None,
                ),
            );
            System::set_block_number(1);
            let provider = Sr25519Keyring::Bob.to_account_id();
            assert_ok!(Compute::register_service(
                RuntimeOrigin::signed(provider.clone()),
                0,
                compute_primitives::ServiceTerms {
                    kind: compute_primitives::ServiceKind::Chat,
                    model: b"m".to_vec().try_into().unwrap(),
                    model_hash: H256::repeat_byte(7),
                    url: b"http://x".to_vec().try_into().unwrap(),
                    input_price: 1,
                    output_price: 2,
                    verifiability: b"none".to_vec().try_into().unwrap(),
                }
            ));
            assert_ok!(Compute::deposit(
                RuntimeOrigin::signed(Sr25519Keyring::Charlie.to_account_id()),
                provider,
                5 * UNIT
            ));
        });
        ext
    }

    #[test]
    fn an_old_chain_is_brought_over_with_the_compute_storage_unchanged() {
        old_chain().execute_with(|| {
            let before = validators::checks::Before::read();
            assert!(before.needed);
            validators::InitializeValidatorSet::on_runtime_upgrade();
            assert_eq!(validators::checks::after(&before), Ok(()));
            assert_eq!(
                Balances::free_balance(CollatorSelection::account_id()),
                EXISTENTIAL_DEPOSIT
            );

            // Run again, it changes nothing.
            let again = validators::checks::Before::read();
            assert!(!again.needed);
            validators::InitializeValidatorSet::on_runtime_upgrade();
            assert_eq!(validators::checks::after(&again), Ok(()));

            // The migrated validators keep their genesis order until collator selection's sorted
            // set takes over at the second session change, Aura following the session's order
            // (so the author of each slot is found), and a candidate can join as on a new chain.
            configs::SessionLength::set(&10);
            let aura = pallet_aura::Authorities::<Runtime>::get().into_inner();
            let in_order = || {
                let aura = pallet_aura::Authorities::<Runtime>::get();
                let set = Session::validators();
                set.len() == aura.len()
                    && set.iter().zip(aura.iter()).all(|(v, a)| *v == validators::account_of(a))
            };
            assert!(in_order());
            next_session();
            assert!(in_order());
            assert_eq!(pallet_aura::Authorities::<Runtime>::get().into_inner(), aura);
            next_session();
            assert!(in_order());
            let mut now: Vec<_> = pallet_aura::Authorities::<Runtime>::get().into_inner();
            assert_ne!(now, aura, "the sorted set replaced the genesis order");
            let mut was = aura.clone();
            now.sort();
            was.sort();
            assert_eq!(now, was);
            assert_eq!(Grandpa::grandpa_authorities().len(), 4);
            eve_joins();
            next_session();
            next_session();
            assert_eq!(Session::validators().len(), 5);
        });
    }

    #[test]
    fn the_migration_leaves_a_chain_without_aura_authorities_alone() {
        old_chain().execute_with(|| {
            pallet_aura::Authorities::<Runtime>::kill();
            let before = validators::checks::Before::read();
            assert!(!before.needed);
            validators::InitializeValidatorSet::on_runtime_upgrade();
            assert_eq!(validators::checks::after(&before), Ok(()));
            assert!(Session::validators().is_empty());
        });
    }
}
