//! The validator set: who authors (Aura) and finalizes (GRANDPA), how the set changes and what
//! validators earn.
//!
//! - `pallet-session` rotates Aura and GRANDPA keys at session boundaries: a validator's keys
//!   are whatever it last set with `session.set_keys` (`author_rotateKeys` on its node makes
//!   them).
//! - `pallet-collator-selection` picks the next set: the invulnerables (set by root: the
//!   permissioned core a new network starts with) and up to `DesiredCandidates` bonded
//!   candidates (anyone with session keys and the candidacy bond). A candidate that authored no
//!   block for `KickThreshold` blocks is removed at the next session and gets its bond back.
//! - `pallet-authorship` tells collator-selection who authored each block, which pays the author
//!   half of its pot; [`FeesToAuthors`] fills the pot from transaction fees.
//!
//! [`NeverEmpty`] keeps the chain alive whatever the set's storage says, and
//! [`InitializeValidatorSet`] brings a chain that ran without these pallets over to them.

use super::*;
use frame_support::{
    traits::{
        fungible::{Balanced, Credit, Inspect, Mutate},
        Imbalance, OnRuntimeUpgrade, OnUnbalanced,
    },
    weights::Weight,
    BoundedVec,
};
use polkadot_sdk::{
    pallet_collator_selection, pallet_session,
    sp_consensus_aura::sr25519::AuthorityId as AuraId,
    sp_runtime::{traits::OpaqueKeys, Perbill},
};

/// Index of a session.
type SessionIndex = u32;

/// Share of each transaction fee that goes to block authors (through the collator-selection
/// pot); the rest is burned. Tips go to the authors whole.
pub const AUTHOR_FEE_SHARE: Perbill = Perbill::from_percent(80);

/// Sends [`AUTHOR_FEE_SHARE`] of every fee and all of every tip to the collator-selection pot,
/// which pays each block's author half of what it holds; burns the rest of the fee.
pub struct FeesToAuthors;

impl OnUnbalanced<Credit<AccountId, Balances>> for FeesToAuthors {
    fn on_unbalanceds(mut fees_then_tips: impl Iterator<Item = Credit<AccountId, Balances>>) {
        let Some(fees) = fees_then_tips.next() else { return };
        let to_authors = AUTHOR_FEE_SHARE * fees.peek();
        let (to_pot, burned) = fees.split(to_authors);
        drop(burned);
        let mut to_pot = to_pot;
        for tip in fees_then_tips {
            to_pot.subsume(tip);
        }
        // The pot holds at least the existential deposit from genesis (or from the
        // migration), so this only fails if that was slashed away: then the credit burns.
        let _ = Balances::resolve(&CollatorSelection::account_id(), to_pot);
    }
}

/// Collator-selection as the session manager (it also removes idle candidates when asked), with
/// two guards:
/// - only members with session keys are handed on, and a choice in which no member has keys is
///   replaced by the current set's keyed members: a session with no keyed validator would stop
///   block production for good (only the validators themselves, all purging their keys, can
///   still bring that about);
/// - a set equal to the current one is reported as no change, so GRANDPA does not start a new
///   authority set every session for nothing (key rotations are still picked up by the session
///   pallet, which compares keys itself).
///
/// Handing on keyed members only also keeps the session's change detection exact: the session
/// pallet drops keyless members itself, but does not count a shorter set as a change.
pub struct NeverEmpty;

impl NeverEmpty {
    fn usable(chosen: Vec<AccountId>) -> Option<Vec<AccountId>> {
        let keyed = |set: Vec<AccountId>| -> Vec<AccountId> {
            set.into_iter()
                .filter(|v| pallet_session::NextKeys::<Runtime>::contains_key(v))
                .collect()
        };
        let current = pallet_session::Validators::<Runtime>::get();
        let mut next = keyed(chosen);
        if next.is_empty() {
            next = keyed(current.clone());
        }
        (!next.is_empty() && next != current).then_some(next)
    }
}

impl pallet_session::SessionManager<AccountId> for NeverEmpty {
    fn new_session(index: SessionIndex) -> Option<Vec<AccountId>> {
        <CollatorSelection as pallet_session::SessionManager<AccountId>>::new_session(index)
            .and_then(Self::usable)
    }
    fn new_session_genesis(index: SessionIndex) -> Option<Vec<AccountId>> {
        <CollatorSelection as pallet_session::SessionManager<AccountId>>::new_session_genesis(index)
            .and_then(Self::usable)
    }
    fn start_session(index: SessionIndex) {
        <CollatorSelection as pallet_session::SessionManager<AccountId>>::start_session(index)
    }
    fn end_session(index: SessionIndex) {
        <CollatorSelection as pallet_session::SessionManager<AccountId>>::end_session(index)
    }
}

/// The account of a validator whose Aura key is `aura`: the account with the same sr25519
/// public key, as the genesis presets and `scripts/validator.sh` make them.
pub fn account_of(aura: &AuraId) -> AccountId {
    let mut raw = [0u8; 32];
    raw.copy_from_slice(aura.as_ref());
    AccountId::from(raw)
}

/// Candidacy bond a chain brought over by [`InitializeValidatorSet`] starts with.
pub const INITIAL_CANDIDACY_BOND: Balance = configs::CANDIDACY_BOND;

/// Bonded candidates a new or brought-over chain starts with: none. Every stranger in the set
/// costs fault tolerance: GRANDPA needs more than two thirds of the whole set, and a candidate
/// that authors (so it is never removed) but never votes makes one more honest validator
/// indispensable; with four invulnerables and one such candidate, any invulnerable's restart
/// stops finality. Root opens slots (`setDesiredCandidates`) as it comes to trust operators.
pub const INITIAL_DESIRED_CANDIDATES: u32 = 0;

/// Brings a chain whose validators were fixed in the genesis (Aura and GRANDPA authorities, no
/// session pallet) over to session-managed validators, leaving every other pallet's storage as
/// it was:
/// - each Aura authority becomes an invulnerable validator whose account is its Aura key's
///   ([`account_of`]) and whose session keys are its Aura key and the GRANDPA key at the same
///   position (the order both genesis lists were written in);
/// - its keys are recorded as set from outside the session pallet, so no key deposit or
///   consumer reference is made up;
/// - the pot gets the existential deposit (minted: a thousandth of a unit, once).
///
/// It does nothing on a chain whose session pallet already has validators, so it is safe to
/// leave in the runtime's migrations.
pub struct InitializeValidatorSet;

impl InitializeValidatorSet {
    /// Whether the chain still needs the migration.
    fn needed() -> bool {
        pallet_session::Validators::<Runtime>::get().is_empty()
            && !pallet_aura::Authorities::<Runtime>::get().is_empty()
    }

    /// The validators and keys the migration writes, from the Aura and GRANDPA authorities.
    fn planned() -> Vec<(AccountId, opaque::SessionKeys)> {
        let grandpa = Grandpa::grandpa_authorities();
        pallet_aura::Authorities::<Runtime>::get()
            .into_iter()
            .zip(grandpa)
            .map(|(aura, (grandpa, _weight))| {
                (account_of(&aura), opaque::SessionKeys { aura, grandpa })
            })
            .collect()
    }
}

impl OnRuntimeUpgrade for InitializeValidatorSet {
    fn on_runtime_upgrade() -> Weight {
        let db = <Runtime as frame_system::Config>::DbWeight::get();
        if !Self::needed() {
            return db.reads(2);
        }
        let planned = Self::planned();
        let aura_len = pallet_aura::Authorities::<Runtime>::get().len();
        let grandpa_len = Grandpa::grandpa_authorities().len();
        if aura_len != grandpa_len {
            // Pairing keys by position would leave a validator without keys, or drop a GRANDPA
            // voter. Leave the chain as it is and say so.
            log::error!(
                target: "runtime::validators",
                "not migrating: {aura_len} Aura but {grandpa_len} GRANDPA authorities"
            );
            return db.reads(2);
        }
        let mut accounts = Vec::with_capacity(planned.len());
        for (account, keys) in &planned {
            for id in <opaque::SessionKeys as OpaqueKeys>::key_ids() {
                pallet_session::KeyOwner::<Runtime>::insert(
                    (*id, keys.get_raw(*id).to_vec()),
                    account,
                );
            }
            pallet_session::NextKeys::<Runtime>::insert(account, keys);
            pallet_session::ExternallySetKeys::<Runtime>::insert(account, ());
            accounts.push(account.clone());
        }
        pallet_session::Validators::<Runtime>::put(&accounts);
        pallet_session::QueuedKeys::<Runtime>::put(&planned);

        let mut invulnerables = accounts.clone();
        invulnerables.sort();
        invulnerables.dedup();
        let bounded = BoundedVec::truncate_from(invulnerables);
        pallet_collator_selection::Invulnerables::<Runtime>::put(bounded);
        pallet_collator_selection::CandidacyBond::<Runtime>::put(INITIAL_CANDIDACY_BOND);
        pallet_collator_selection::DesiredCandidates::<Runtime>::put(INITIAL_DESIRED_CANDIDATES);

        let pot = CollatorSelection::account_id();
        if Balances::balance(&pot) < EXISTENTIAL_DEPOSIT {
            let _ = Balances::mint_into(&pot, EXISTENTIAL_DEPOSIT);
        }
        log::info!(
            target: "runtime::validators",
            "{} genesis authorities are now session-managed invulnerable validators",
            accounts.len()
        );
        let n = planned.len() as u64;
        db.reads_writes(4 + n, 6 + 4 * n)
    }

    #[cfg(feature = "try-runtime")]
    fn pre_upgrade() -> Result<Vec<u8>, polkadot_sdk::sp_runtime::TryRuntimeError> {
        use codec::Encode;
        Ok(checks::Before::read().encode())
    }

    #[cfg(feature = "try-runtime")]
    fn post_upgrade(state: Vec<u8>) -> Result<(), polkadot_sdk::sp_runtime::TryRuntimeError> {
        use codec::Decode;
        let before = checks::Before::decode(&mut &state[..])
            .map_err(|_| "InitializeValidatorSet: pre-upgrade state does not decode")?;
        checks::after(&before).map_err(Into::into)
    }
}

/// What [`InitializeValidatorSet`] must leave true, checked around it by `try-runtime` and by
/// the runtime's tests.
#[cfg(any(test, feature = "try-runtime"))]
pub mod checks {
    use super::*;
    use alloc::collections::btree_set::BTreeSet;
    use codec::{Decode, Encode};
    use polkadot_sdk::sp_io::{self, hashing::blake2_256};

    /// Digest of every key and value under a pallet's storage prefix.
    pub fn pallet_digest(pallet: &str) -> [u8; 32] {
        let prefix = sp_io::hashing::twox_128(pallet.as_bytes());
        let mut acc = Vec::new();
        let mut key = prefix.to_vec();
        // Bounded by the pallet's storage: `next_key` walks it in order and stops past the
        // prefix.
        while let Some(next) = sp_io::storage::next_key(&key) {
            if !next.starts_with(&prefix) {
                break;
            }
            let value = sp_io::storage::get(&next).unwrap_or_default();
            acc.extend_from_slice(&blake2_256(&(next.as_slice(), &value[..]).encode()));
            key = next;
        }
        blake2_256(&acc)
    }

    /// The state the migration starts from.
    #[derive(Encode, Decode)]
    pub struct Before {
        pub needed: bool,
        pub aura: Vec<AuraId>,
        pub grandpa: polkadot_sdk::sp_consensus_grandpa::AuthorityList,
        pub compute: [u8; 32],
        pub balances: [u8; 32],
        pub issuance: Balance,
    }

    impl Before {
        pub fn read() -> Self {
            Self {
                needed: InitializeValidatorSet::needed(),
                aura: pallet_aura::Authorities::<Runtime>::get().into_inner(),
                grandpa: Grandpa::grandpa_authorities(),
                compute: pallet_digest("Compute"),
                balances: pallet_digest("Balances"),
                issuance: Balances::total_issuance(),
            }
        }
    }

    /// Every property the migration promises, given the state before it.
    pub fn after(before: &Before) -> Result<(), &'static str> {
        if pallet_digest("Compute") != before.compute {
            return Err("the compute pallet's storage changed");
        }
        if pallet_aura::Authorities::<Runtime>::get().into_inner() != before.aura {
            return Err("the Aura authorities changed");
        }
        if Grandpa::grandpa_authorities() != before.grandpa {
            return Err("the GRANDPA authorities changed");
        }
        if !before.needed {
            if pallet_digest("Balances") != before.balances {
                return Err("a chain that needed no migration had its balances changed");
            }
            return Ok(());
        }
        let validators = pallet_session::Validators::<Runtime>::get();
        let expected: Vec<AccountId> = before.aura.iter().map(account_of).collect();
        if validators != expected {
            return Err("the session's validators are not the former Aura authorities");
        }
        for (i, v) in validators.iter().enumerate() {
            let keys =
                pallet_session::NextKeys::<Runtime>::get(v).ok_or("a validator has no keys")?;
            if keys.aura != before.aura[i] || keys.grandpa != before.grandpa[i].0 {
                return Err("a validator's session keys are not its genesis keys");
            }
        }
        let queued: Vec<AccountId> =
            pallet_session::QueuedKeys::<Runtime>::get().into_iter().map(|(v, _)| v).collect();
        if queued != validators {
            return Err("the queued validators differ from the current ones");
        }
        let invulnerables: BTreeSet<AccountId> =
            pallet_collator_selection::Invulnerables::<Runtime>::get().into_iter().collect();
        if invulnerables != validators.iter().cloned().collect() {
            return Err("the invulnerables are not the former authorities");
        }
        let minted = Balances::total_issuance().saturating_sub(before.issuance);
        if minted > EXISTENTIAL_DEPOSIT {
            return Err("the migration minted more than the pot's existential deposit");
        }
        Ok(())
    }
}
