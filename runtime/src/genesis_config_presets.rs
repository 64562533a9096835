//! Genesis presets: `development` (one validator, short refund lock and dispute window so a
//! demo completes in seconds) and `local_testnet` (four validators). The validators are the
//! invulnerables of collator selection, each with its Aura and GRANDPA keys as session keys and
//! its account being its Aura key's; Aura and GRANDPA take their authorities from the session.

use crate::{
    configs::CANDIDACY_BOND,
    opaque::SessionKeys,
    validators::{account_of, INITIAL_DESIRED_CANDIDATES},
    AccountId, Balance, BalancesConfig, CollatorSelection, CollatorSelectionConfig, ComputeConfig,
    RuntimeGenesisConfig, SessionConfig, SudoConfig, EXISTENTIAL_DEPOSIT, UNIT,
};
use alloc::{vec, vec::Vec};
use polkadot_sdk::{
    sp_consensus_aura::sr25519::AuthorityId as AuraId,
    sp_consensus_grandpa::AuthorityId as GrandpaId,
    sp_genesis_builder::{self, PresetId},
    sp_keyring::{Ed25519Keyring, Sr25519Keyring},
};
use serde_json::Value;

/// Free balance of every endowed dev account.
pub const ENDOWMENT: Balance = 1_000_000 * UNIT;
/// Refund lock of the development chain, in blocks.
pub const DEV_REFUND_LOCK: u32 = 3;
/// Dispute window of the development chain, in blocks.
pub const DEV_DISPUTE_WINDOW: u32 = 3;

fn genesis(
    authorities: &[(Sr25519Keyring, Ed25519Keyring)],
    endowed: Vec<AccountId>,
    root: AccountId,
    refund_lock: Option<u32>,
    dispute_window: Option<u32>,
) -> Value {
    let validators: Vec<(AccountId, SessionKeys)> = authorities
        .iter()
        .map(|(a, g)| {
            let aura = AuraId::from(a.public());
            (account_of(&aura), SessionKeys { aura, grandpa: GrandpaId::from(g.public()) })
        })
        .collect();
    let mut balances: Vec<(AccountId, Balance)> =
        endowed.into_iter().map(|a| (a, ENDOWMENT)).collect();
    // The pot that pays block authors must exist before the first fee reaches it.
    balances.push((CollatorSelection::account_id(), EXISTENTIAL_DEPOSIT));
    let config = RuntimeGenesisConfig {
        balances: BalancesConfig { balances, ..Default::default() },
        collator_selection: CollatorSelectionConfig {
            invulnerables: validators.iter().map(|(a, _)| a.clone()).collect(),
            candidacy_bond: CANDIDACY_BOND,
            desired_candidates: INITIAL_DESIRED_CANDIDATES,
        },
        session: SessionConfig {
            keys: validators.into_iter().map(|(a, keys)| (a.clone(), a, keys)).collect(),
            ..Default::default()
        },
        sudo: SudoConfig { key: Some(root) },
        compute: ComputeConfig { refund_lock, dispute_window },
        ..Default::default()
    };
    serde_json::to_value(config).unwrap_or_default()
}

/// One authority (Alice), the well-known accounts endowed, a 3-block refund lock and dispute window.
pub fn development_config_genesis() -> Value {
    genesis(
        &[(Sr25519Keyring::Alice, Ed25519Keyring::Alice)],
        Sr25519Keyring::well_known().map(|k| k.to_account_id()).collect(),
        Sr25519Keyring::Alice.to_account_id(),
        Some(DEV_REFUND_LOCK),
        Some(DEV_DISPUTE_WINDOW),
    )
}

/// Four authorities (Alice, Bob, Charlie, Dave) with the runtime's default lock and window.
pub fn local_testnet_genesis() -> Value {
    use Ed25519Keyring as E;
    use Sr25519Keyring as S;
    genesis(
        &[(S::Alice, E::Alice), (S::Bob, E::Bob), (S::Charlie, E::Charlie), (S::Dave, E::Dave)],
        Sr25519Keyring::well_known().map(|k| k.to_account_id()).collect(),
        Sr25519Keyring::Alice.to_account_id(),
        None,
        None,
    )
}

/// The JSON of a named preset.
pub fn get_preset(id: &PresetId) -> Option<Vec<u8>> {
    let patch = match id.as_ref() {
        sp_genesis_builder::DEV_RUNTIME_PRESET => development_config_genesis(),
        sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET => local_testnet_genesis(),
        _ => return None,
    };
    serde_json::to_vec(&patch).ok()
}

/// Names of the presets this runtime offers.
pub fn preset_names() -> Vec<PresetId> {
    vec![
        PresetId::from(sp_genesis_builder::DEV_RUNTIME_PRESET),
        PresetId::from(sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET),
    ]
}
