//! The logic behind the verifier and challenge calls (see `docs/verification.md` §5). Every
//! function here runs inside the call's transaction, so an `Err` leaves storage as it was.
//!
//! Funds move only between holds and free balances of the parties: a challenger's deposit is
//! held until the challenge ends, a verifier's bond until it leaves with no challenge assigned,
//! and a provider's bond cannot be withdrawn while a challenge against it is open.

use crate::{pallet::*, types::*};
use polkadot_sdk::{
    frame_support::{
        ensure,
        pallet_prelude::*,
        traits::{
            fungible::MutateHold,
            tokens::{Fortitude, Precision, Restriction},
        },
    },
    frame_system::pallet_prelude::BlockNumberFor,
    sp_io::hashing::blake2_256,
    sp_runtime::{
        traits::{Saturating, Zero},
        FixedPointNumber,
    },
};

/// What an ended challenge moved, for its event.
#[derive(Default)]
struct Settlement {
    refunded: Balance,
    from_bond: Balance,
    slashed: Balance,
    challenger_reward: Balance,
    verifier_reward: Balance,
    burned: Balance,
}

impl<T: Config> Pallet<T> {
    pub(crate) fn do_join_verifiers(verifier: T::AccountId) -> DispatchResult {
        ensure!(!Verifiers::<T>::contains_key(&verifier), Error::<T>::AlreadyVerifier);
        if Verifiers::<T>::count() >= MAX_VERIFIERS {
            // A seat held by a verifier that takes no challenges goes to the newcomer; bounded
            // by `MAX_VERIFIERS` records.
            let idle = Verifiers::<T>::iter()
                .find(|(_, info)| !Self::active(info) && info.assigned == 0)
                .ok_or(Error::<T>::TooManyVerifiers)?;
            let (gone, info) = idle;
            let amount = T::Currency::release(
                &HoldReason::VerifierBond.into(),
                &gone,
                info.bond,
                Precision::Exact,
            )?;
            Verifiers::<T>::remove(&gone);
            Self::deposit_event(Event::VerifierRemoved { verifier: gone, amount });
        }
        let bond = T::VerifierBond::get();
        T::Currency::hold(&HoldReason::VerifierBond.into(), &verifier, bond)
            .map_err(|_| Error::<T>::InsufficientBalanceForBond)?;
        Verifiers::<T>::insert(&verifier, VerifierInfo { bond, ..Default::default() });
        Self::deposit_event(Event::VerifierJoined { verifier, bond });
        Ok(())
    }

    pub(crate) fn do_leave_verifiers(verifier: T::AccountId) -> DispatchResult {
        Verifiers::<T>::try_mutate(&verifier, |maybe| {
            let info = maybe.as_mut().ok_or(Error::<T>::NotAVerifier)?;
            ensure!(!info.leaving, Error::<T>::VerifierAlreadyLeft);
            info.leaving = true;
            Ok::<_, DispatchError>(())
        })?;
        Self::deposit_event(Event::VerifierLeft { verifier });
        Ok(())
    }

    pub(crate) fn do_withdraw_verifier_bond(verifier: T::AccountId) -> DispatchResult {
        let info = Verifiers::<T>::get(&verifier).ok_or(Error::<T>::NotAVerifier)?;
        ensure!(info.leaving, Error::<T>::VerifierNotLeft);
        ensure!(info.assigned == 0, Error::<T>::VerifierHasChallenges);
        let amount = T::Currency::release(
            &HoldReason::VerifierBond.into(),
            &verifier,
            info.bond,
            Precision::Exact,
        )?;
        Verifiers::<T>::remove(&verifier);
        Self::deposit_event(Event::VerifierBondWithdrawn { verifier, amount });
        Ok(())
    }

    /// Whether `info` takes new challenges: not leaving, bond not cut below `VerifierBond` by
    /// votes against majorities.
    fn active(info: &VerifierInfo) -> bool {
        !info.leaving && info.bond >= T::VerifierBond::get()
    }

    pub(crate) fn do_challenge(
        user: T::AccountId,
        provider: T::AccountId,
        signed: SignedReceipt,
        evidence: Evidence,
    ) -> DispatchResult {
        let receipt = &signed.receipt;
        ensure!(user != provider, Error::<T>::SelfEscrow);
        ensure!(receipt.provider == provider, Error::<T>::ReceiptProviderMismatch);
        ensure!(receipt.user == user, Error::<T>::NotReceiptUser);
        ensure!(
            !receipt.fee.is_zero() && !receipt.proof_hash.is_zero(),
            Error::<T>::NothingToChallenge
        );
        ensure!(receipt.fee <= receipt.total, Error::<T>::InconsistentReceipt);
        ensure!(!receipt.model_hash.is_zero(), Error::<T>::NoCommittedWeights);
        ensure!(signed.verify(&Self::genesis_hash()), Error::<T>::BadReceiptSignature);
        ensure!(
            blake2_256(&evidence.request) == receipt.request_hash.0,
            Error::<T>::RequestMismatch
        );
        ensure!(
            blake2_256(&evidence.response) == receipt.response_hash.0,
            Error::<T>::ResponseMismatch
        );
        ensure!(blake2_256(&evidence.proof) == receipt.proof_hash.0, Error::<T>::ProofMismatch);
        let key = (provider.clone(), user.clone(), receipt.nonce);
        ensure!(!ChallengedReceipts::<T>::contains_key(&key), Error::<T>::AlreadyChallenged);
        let escrow = Escrows::<T>::get(&user, &provider).ok_or(Error::<T>::EscrowNotFound)?;
        ensure!(receipt.total <= escrow.settled_total, Error::<T>::ReceiptNotSettled);
        // The receipt's payment must still be held: its total lies within the last `locked`
        // settled. Older receipts were paid out; their window, like a dispute's, has closed.
        let now = Self::now();
        ensure!(
            receipt.total > escrow.settled_total.saturating_sub(escrow.locked(now)),
            Error::<T>::DisputeWindowClosed
        );

        // Every active verifier but the parties; bounded by `MAX_VERIFIERS` records.
        let mut verifiers: BoundedVec<(T::AccountId, Option<Vote>), ConstU32<MAX_VERIFIERS>> =
            BoundedVec::new();
        for (who, info) in Verifiers::<T>::iter() {
            if who != user && who != provider && Self::active(&info) {
                // Cannot overflow: the map holds at most `MAX_VERIFIERS` records.
                verifiers.try_push((who, None)).map_err(|_| Error::<T>::TooManyVerifiers)?;
            }
        }
        ensure!(verifiers.len() as u32 >= T::MinVerifiers::get(), Error::<T>::NotEnoughVerifiers);
        let deposit = T::ChallengeDeposit::get();
        T::Currency::hold(&HoldReason::ChallengeDeposit.into(), &user, deposit)
            .map_err(|_| Error::<T>::InsufficientBalance)?;
        for (who, _) in verifiers.iter() {
            Verifiers::<T>::mutate(who, |info| {
                if let Some(info) = info {
                    info.assigned = info.assigned.saturating_add(1);
                }
            });
        }
        ProviderChallenges::<T>::mutate(&provider, |r| r.open = r.open.saturating_add(1));

        let id = NextChallengeId::<T>::get();
        NextChallengeId::<T>::put(id.checked_add(1).ok_or(Error::<T>::Overflow)?);
        ChallengedReceipts::<T>::insert(&key, id);
        let deadline = now.saturating_add(T::VotingPeriod::get());
        let assigned = verifiers.len() as u32;
        Challenges::<T>::insert(
            id,
            Challenge {
                user: user.clone(),
                provider: provider.clone(),
                nonce: receipt.nonce,
                service_id: receipt.service_id,
                model_hash: receipt.model_hash,
                request_hash: receipt.request_hash,
                response_hash: receipt.response_hash,
                proof_hash: receipt.proof_hash,
                fee: receipt.fee,
                deposit,
                opened_at: now,
                deadline,
                verifiers,
            },
        );
        Self::deposit_event(Event::ChallengeOpened {
            id,
            user,
            provider,
            nonce: receipt.nonce,
            model_hash: receipt.model_hash,
            deposit,
            verifiers: assigned,
            deadline,
        });
        Ok(())
    }

    /// Votes one side needs to decide a challenge with `assigned` verifiers.
    pub fn threshold(assigned: u32) -> u32 {
        T::Supermajority::get().mul_ceil(assigned).max(1)
    }

    pub(crate) fn do_vote(verifier: T::AccountId, id: ChallengeId, vote: Vote) -> DispatchResult {
        let mut challenge = Challenges::<T>::get(id).ok_or(Error::<T>::ChallengeNotFound)?;
        ensure!(Self::now() <= challenge.deadline, Error::<T>::VotingClosed);
        let slot = challenge
            .verifiers
            .iter_mut()
            .find(|(who, _)| *who == verifier)
            .ok_or(Error::<T>::NotAssignedVerifier)?;
        ensure!(slot.1.is_none(), Error::<T>::AlreadyVoted);
        slot.1 = Some(vote);
        Self::deposit_event(Event::Voted { id, verifier, vote });

        let needed = Self::threshold(challenge.verifiers.len() as u32);
        if challenge.count(vote) >= needed {
            let outcome = match vote {
                Vote::Cheated => ChallengeOutcome::Upheld,
                Vote::Honest => ChallengeOutcome::Rejected,
            };
            Self::end(id, challenge, outcome)
        } else {
            Challenges::<T>::insert(id, challenge);
            Ok(())
        }
    }

    pub(crate) fn do_close_challenge(id: ChallengeId) -> DispatchResult {
        let challenge = Challenges::<T>::get(id).ok_or(Error::<T>::ChallengeNotFound)?;
        ensure!(Self::now() > challenge.deadline, Error::<T>::VotingStillOpen);
        let outcome = Self::outcome_at_deadline(&challenge);
        Self::end(id, challenge, outcome)
    }

    /// How a challenge whose voting period is over ends: with a quorum (at least half of the
    /// assigned verifiers voted), the side with `Supermajority` of the votes cast wins;
    /// otherwise it is undecided. Verifiers that stay away cannot block a decision unless they
    /// are more than half; a third of the votes cast, against the rest, can (the set is
    /// assumed less than a third dishonest, as GRANDPA assumes of validators).
    pub fn outcome_at_deadline(c: &Challenge<BlockNumberFor<T>>) -> ChallengeOutcome {
        let (cheated, honest) = (c.count(Vote::Cheated), c.count(Vote::Honest));
        let cast = cheated.saturating_add(honest);
        let quorum = (c.verifiers.len() as u32).div_ceil(2);
        let needed = T::Supermajority::get().mul_ceil(cast);
        if cast == 0 || cast < quorum {
            ChallengeOutcome::Undecided
        } else if cheated >= needed {
            ChallengeOutcome::Upheld
        } else if honest >= needed {
            ChallengeOutcome::Rejected
        } else {
            ChallengeOutcome::Undecided
        }
    }

    /// End challenge `id` with `outcome`: move the funds, penalize the minority, count every
    /// verifier's part, free the parties' locks. Bounded by `MAX_VERIFIERS`.
    fn end(
        id: ChallengeId,
        challenge: Challenge<BlockNumberFor<T>>,
        outcome: ChallengeOutcome,
    ) -> DispatchResult {
        let majority = match outcome {
            ChallengeOutcome::Upheld => Some(Vote::Cheated),
            ChallengeOutcome::Rejected => Some(Vote::Honest),
            ChallengeOutcome::Undecided => None,
        };
        let winners: alloc::vec::Vec<T::AccountId> = challenge
            .verifiers
            .iter()
            .filter(|(_, v)| majority.is_some() && *v == majority)
            .map(|(who, _)| who.clone())
            .collect();

        let mut out = Settlement::default();
        match outcome {
            ChallengeOutcome::Upheld => Self::uphold(&challenge, &winners, &mut out)?,
            ChallengeOutcome::Rejected => Self::reject(&challenge, &winners, &mut out)?,
            ChallengeOutcome::Undecided => {
                T::Currency::release(
                    &HoldReason::ChallengeDeposit.into(),
                    &challenge.user,
                    challenge.deposit,
                    Precision::Exact,
                )?;
            }
        }

        for (who, vote) in challenge.verifiers.iter() {
            let mut penalty: Balance = 0;
            Verifiers::<T>::try_mutate(who, |maybe| {
                let Some(info) = maybe.as_mut() else { return Ok::<_, DispatchError>(()) };
                info.assigned = info.assigned.saturating_sub(1);
                // Penalized: a vote against the deciding majority. An absent verifier is only
                // counted `missed`: a verifier kept from judging (weights it could not get, a
                // stalled node) is not punished for what a provider may have caused.
                let penalized = match (vote, majority) {
                    (None, _) => {
                        info.missed = info.missed.saturating_add(1);
                        false
                    }
                    (Some(_), None) => false,
                    (Some(v), Some(m)) if *v == m => {
                        info.with_majority = info.with_majority.saturating_add(1);
                        false
                    }
                    (Some(_), Some(_)) => {
                        info.against_majority = info.against_majority.saturating_add(1);
                        true
                    }
                };
                if penalized {
                    penalty =
                        T::VerifierPenalty::get().mul_floor(T::VerifierBond::get()).min(info.bond);
                    if !penalty.is_zero() {
                        T::Currency::burn_held(
                            &HoldReason::VerifierBond.into(),
                            who,
                            penalty,
                            Precision::Exact,
                            Fortitude::Force,
                        )?;
                        info.bond = info.bond.saturating_sub(penalty);
                    }
                }
                Ok(())
            })?;
            if !penalty.is_zero() {
                Self::deposit_event(Event::VerifierPenalized {
                    id,
                    verifier: who.clone(),
                    amount: penalty,
                });
            }
        }

        ProviderChallenges::<T>::mutate(&challenge.provider, |r| {
            r.open = r.open.saturating_sub(1);
            match outcome {
                ChallengeOutcome::Upheld => r.lost = r.lost.saturating_add(1),
                ChallengeOutcome::Rejected => r.won = r.won.saturating_add(1),
                ChallengeOutcome::Undecided => r.undecided = r.undecided.saturating_add(1),
            }
        });
        Challenges::<T>::remove(id);
        if outcome == ChallengeOutcome::Undecided {
            // Nobody judged it: the user may challenge the receipt again.
            ChallengedReceipts::<T>::remove((
                challenge.provider.clone(),
                challenge.user.clone(),
                challenge.nonce,
            ));
        }
        Self::deposit_event(Event::ChallengeEnded {
            id,
            user: challenge.user,
            provider: challenge.provider,
            outcome,
            refunded: out.refunded,
            from_bond: out.from_bond,
            slashed: out.slashed,
            challenger_reward: out.challenger_reward,
            verifier_reward: out.verifier_reward,
            burned: out.burned,
        });
        Ok(())
    }

    /// The provider cheated: the bond is slashed, then the fee goes back onto the user's escrow
    /// from the payments still held, else from what the slash left of the bond; the slash is
    /// shared out and the rest burned; the deposit goes back to the user. Slashing first means
    /// a provider challenging itself through another account cannot move its bond out as a
    /// refund ahead of the slash.
    fn uphold(
        c: &Challenge<BlockNumberFor<T>>,
        winners: &[T::AccountId],
        out: &mut Settlement,
    ) -> DispatchResult {
        T::Currency::release(
            &HoldReason::ChallengeDeposit.into(),
            &c.user,
            c.deposit,
            Precision::Exact,
        )?;
        let mut info = Providers::<T>::get(&c.provider).ok_or(Error::<T>::NotAProvider)?;
        let mut escrow =
            Escrows::<T>::get(&c.user, &c.provider).ok_or(Error::<T>::EscrowNotFound)?;
        let now = Self::now();
        let slash = T::ChallengeSlash::get()
            .saturating_mul_int(c.fee)
            .max(T::MinChallengeSlash::get())
            .min(info.bond);

        // The fee's settled total stays as it is: the voucher stays spent, so it cannot be
        // claimed again; the money comes back as escrow balance.
        let from_held = Self::take_locked(&mut escrow, c.fee, now);
        let from_bond = c.fee.saturating_sub(from_held).min(info.bond.saturating_sub(slash));
        if !from_bond.is_zero() {
            T::Currency::transfer_on_hold(
                &HoldReason::ProviderBond.into(),
                &c.provider,
                &Self::escrow_account(),
                from_bond,
                Precision::Exact,
                Restriction::Free,
                Fortitude::Force,
            )?;
            info.bond = info.bond.saturating_sub(from_bond);
        }
        out.refunded = from_held.saturating_add(from_bond);
        out.from_bond = from_bond;
        escrow.balance = escrow.balance.checked_add(out.refunded).ok_or(Error::<T>::Overflow)?;
        info.earned = info.earned.saturating_sub(out.refunded);

        out.slashed = slash;
        out.challenger_reward = T::ChallengerReward::get().mul_floor(slash);
        Self::move_bond(&c.provider, &c.user, out.challenger_reward, &mut info)?;
        let share = Self::share(T::VerifierReward::get().mul_floor(slash), winners.len());
        for who in winners {
            Self::move_bond(&c.provider, who, share, &mut info)?;
        }
        out.verifier_reward = share.saturating_mul(winners.len() as Balance);
        out.burned =
            slash.saturating_sub(out.challenger_reward).saturating_sub(out.verifier_reward);
        Self::burn_bond(&c.provider, out.burned, &mut info)?;
        Providers::<T>::insert(&c.provider, info);
        Escrows::<T>::insert(&c.user, &c.provider, escrow);
        Ok(())
    }

    /// The response was honest: the deposit is split among the majority verifiers and what
    /// does not divide evenly is burned.
    fn reject(
        c: &Challenge<BlockNumberFor<T>>,
        winners: &[T::AccountId],
        out: &mut Settlement,
    ) -> DispatchResult {
        let share = Self::share(c.deposit, winners.len());
        for who in winners {
            T::Currency::transfer_on_hold(
                &HoldReason::ChallengeDeposit.into(),
                &c.user,
                who,
                share,
                Precision::Exact,
                Restriction::Free,
                Fortitude::Force,
            )?;
        }
        out.verifier_reward = share.saturating_mul(winners.len() as Balance);
        out.burned = c.deposit.saturating_sub(out.verifier_reward);
        if !out.burned.is_zero() {
            T::Currency::burn_held(
                &HoldReason::ChallengeDeposit.into(),
                &c.user,
                out.burned,
                Precision::Exact,
                Fortitude::Force,
            )?;
        }
        Ok(())
    }

    /// `pool` split among `n` (zero when `n` is zero).
    fn share(pool: Balance, n: usize) -> Balance {
        if n == 0 {
            0
        } else {
            pool / n as Balance
        }
    }

    /// The challenge invariants: every verifier's bond hold equals its record and its
    /// `assigned` count equals the open challenges naming it; every user's challenge-deposit
    /// hold equals the deposits of its open challenges; each provider's `open` count matches.
    #[cfg(any(feature = "try-runtime", test))]
    pub fn do_try_state_challenges() -> Result<(), polkadot_sdk::sp_runtime::TryRuntimeError> {
        use alloc::collections::BTreeMap;
        use polkadot_sdk::frame_support::traits::fungible::InspectHold;

        let mut assigned: BTreeMap<T::AccountId, u32> = BTreeMap::new();
        let mut deposits: BTreeMap<T::AccountId, Balance> = BTreeMap::new();
        let mut open: BTreeMap<T::AccountId, u32> = BTreeMap::new();
        for (_, c) in Challenges::<T>::iter() {
            for (who, _) in c.verifiers.iter() {
                *assigned.entry(who.clone()).or_default() += 1;
            }
            *deposits.entry(c.user.clone()).or_default() += c.deposit;
            *open.entry(c.provider.clone()).or_default() += 1;
        }
        ensure!(Verifiers::<T>::count() <= MAX_VERIFIERS, "more verifiers than MAX_VERIFIERS");
        for who in assigned.keys() {
            ensure!(
                Verifiers::<T>::contains_key(who),
                "an open challenge names a removed verifier"
            );
        }
        let next = NextChallengeId::<T>::get();
        for (_, id) in ChallengedReceipts::<T>::iter() {
            ensure!(id < next, "a challenged receipt names a challenge never opened");
        }
        for (who, info) in Verifiers::<T>::iter() {
            ensure!(
                T::Currency::balance_on_hold(&HoldReason::VerifierBond.into(), &who) == info.bond,
                "verifier bond hold differs from the recorded bond"
            );
            ensure!(
                info.assigned == assigned.get(&who).copied().unwrap_or(0),
                "verifier's assigned count differs from the open challenges naming it"
            );
        }
        for (who, sum) in deposits {
            ensure!(
                T::Currency::balance_on_hold(&HoldReason::ChallengeDeposit.into(), &who) == sum,
                "challenge deposit hold differs from the open challenges' deposits"
            );
        }
        for (provider, record) in ProviderChallenges::<T>::iter() {
            ensure!(
                record.open == open.get(&provider).copied().unwrap_or(0),
                "provider's open challenge count differs from the challenges stored"
            );
        }
        Ok(())
    }
}
