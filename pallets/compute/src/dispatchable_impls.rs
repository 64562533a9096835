//! The logic behind each call. Every function here runs inside the call's transaction, so an
//! `Err` leaves storage as it was.

use crate::{pallet::*, types::*};
use polkadot_sdk::{
    frame_support::{
        ensure,
        pallet_prelude::*,
        storage::with_storage_layer,
        traits::{
            fungible::{Mutate, MutateHold},
            tokens::{Fortitude, Precision, Preservation, Restriction},
        },
    },
    frame_system::pallet_prelude::BlockNumberFor,
    sp_core::H256,
    sp_runtime::{
        traits::{AccountIdConversion, Saturating, Zero},
        FixedPointNumber,
    },
};

/// An escrow record of this runtime.
pub(crate) type EscrowOf<T> = Escrow<BlockNumberFor<T>>;

impl<T: Config> Pallet<T> {
    /// The hash every signature of this chain commits to.
    pub fn genesis_hash() -> H256 {
        polkadot_sdk::frame_system::Pallet::<T>::block_hash(BlockNumberFor::<T>::zero())
    }

    /// The keyless account that keeps every escrow's funds: deposits move funds into it, refunds
    /// and settlements out of it. Its balance is the existential deposit (endowed at genesis)
    /// plus the sum of all escrow balances (plus whatever anyone sends it directly).
    ///
    /// Why not a hold on each user's account: paying a claim out of a hold writes the user's
    /// hold, the user's account and the provider's account; out of this account a claim writes
    /// only its escrow record and a batch pays its provider with one transfer (see the pallet
    /// README's weight figures).
    pub fn escrow_account() -> T::AccountId {
        T::PalletId::get().into_account_truncating()
    }

    pub(crate) fn now() -> BlockNumberFor<T> {
        polkadot_sdk::frame_system::Pallet::<T>::block_number()
    }

    /// Whether a provider may accept new escrows: bonded to at least `MinBond`, not unbonding.
    pub fn accepts_deposits(provider: &T::AccountId) -> bool {
        Providers::<T>::get(provider).is_some_and(|p| !p.unbonding && p.bond >= T::MinBond::get())
    }

    pub(crate) fn do_register_service(
        provider: T::AccountId,
        service_id: ServiceId,
        service: Service,
    ) -> DispatchResult {
        ensure!(
            !Services::<T>::contains_key(&provider, service_id),
            Error::<T>::ServiceAlreadyRegistered
        );
        let mut info = Providers::<T>::get(&provider).unwrap_or_default();
        ensure!(info.services < T::MaxServicesPerProvider::get(), Error::<T>::TooManyServices);

        let bond_added = T::ProviderBond::get().saturating_sub(info.bond);
        if !bond_added.is_zero() {
            T::Currency::hold(&HoldReason::ProviderBond.into(), &provider, bond_added)
                .map_err(|_| Error::<T>::InsufficientBalanceForBond)?;
            info.bond = info.bond.checked_add(bond_added).ok_or(Error::<T>::Overflow)?;
        }
        info.services = info.services.checked_add(1).ok_or(Error::<T>::Overflow)?;
        info.unbonding = false;
        Providers::<T>::insert(&provider, info);
        Services::<T>::insert(&provider, service_id, service);
        Self::deposit_event(Event::ServiceRegistered { provider, service_id, bond_added });
        Ok(())
    }

    pub(crate) fn do_update_service(
        provider: T::AccountId,
        service_id: ServiceId,
        mut terms: Service,
    ) -> DispatchResult {
        let challenged = ProviderChallenges::<T>::get(&provider).open > 0;
        let jobs_open = ProviderJobs::<T>::get(&provider) > 0;
        Services::<T>::try_mutate(&provider, service_id, |maybe| {
            let service = maybe.as_mut().ok_or(Error::<T>::ServiceNotFound)?;
            // A fine-tuning service stays one while accepted jobs are open (it stays removable
            // only once they end),
            // and keeps the model its jobs train.
            ensure!(
                !jobs_open
                    || service.kind != ServiceKind::FineTune
                    || (terms.kind == ServiceKind::FineTune
                        && terms.model == service.model
                        && terms.model_hash == service.model_hash),
                Error::<T>::JobsOpen
            );
            // The weights under challenge stay named, so verifiers can fetch them from the
            // service until every challenge against the provider has ended.
            ensure!(
                !challenged || terms.model_hash == service.model_hash,
                Error::<T>::ChallengesOpen
            );
            let price_version = service.price_version.checked_add(1).ok_or(Error::<T>::Overflow)?;
            terms.price_version = price_version;
            if terms.kind != ServiceKind::FineTune {
                FineTuneOffers::<T>::remove(&provider, service_id);
            }
            *service = terms;
            Self::deposit_event(Event::ServiceUpdated {
                provider: provider.clone(),
                service_id,
                price_version,
            });
            Ok(())
        })
    }

    pub(crate) fn do_remove_service(
        provider: T::AccountId,
        service_id: ServiceId,
    ) -> DispatchResult {
        let service =
            Services::<T>::get(&provider, service_id).ok_or(Error::<T>::ServiceNotFound)?;
        ensure!(ProviderChallenges::<T>::get(&provider).open == 0, Error::<T>::ChallengesOpen);
        ensure!(
            service.kind != ServiceKind::FineTune || ProviderJobs::<T>::get(&provider) == 0,
            Error::<T>::JobsOpen
        );
        let mut info = Providers::<T>::get(&provider).ok_or(Error::<T>::NotAProvider)?;
        Services::<T>::remove(&provider, service_id);
        FineTuneOffers::<T>::remove(&provider, service_id);
        info.services = info.services.saturating_sub(1);
        info.unbonding = info.services == 0;
        let unbonding = info.unbonding;
        Providers::<T>::insert(&provider, info);
        Self::deposit_event(Event::ServiceRemoved { provider, service_id, unbonding });
        Ok(())
    }

    pub(crate) fn do_withdraw_bond(provider: T::AccountId) -> DispatchResult {
        let mut info = Providers::<T>::get(&provider).ok_or(Error::<T>::NotAProvider)?;
        ensure!(info.services == 0, Error::<T>::ProviderHasServices);
        ensure!(!info.bond.is_zero(), Error::<T>::BondAlreadyWithdrawn);
        // Disputes need `now < held_until` of some escrow, and every `held_until` is at most
        // `bond_locked_until`: the bond cannot leave while a dispute could still slash it.
        ensure!(Self::now() >= info.bond_locked_until, Error::<T>::BondStillLocked);
        ensure!(ProviderChallenges::<T>::get(&provider).open == 0, Error::<T>::ChallengesOpen);
        ensure!(ProviderJobs::<T>::get(&provider) == 0, Error::<T>::JobsOpen);
        let amount = T::Currency::release(
            &HoldReason::ProviderBond.into(),
            &provider,
            info.bond,
            Precision::Exact,
        )?;
        info.bond = 0;
        Providers::<T>::insert(&provider, info);
        Self::deposit_event(Event::BondWithdrawn { provider, amount });
        Ok(())
    }

    pub(crate) fn do_deposit(
        user: T::AccountId,
        provider: T::AccountId,
        amount: Balance,
    ) -> DispatchResult {
        ensure!(user != provider, Error::<T>::SelfEscrow);
        ensure!(amount >= T::MinDeposit::get(), Error::<T>::DepositBelowMinimum);
        ensure!(Self::accepts_deposits(&provider), Error::<T>::ProviderNotBonded);
        let mut escrow = match Escrows::<T>::get(&user, &provider) {
            Some(escrow) => escrow,
            None => {
                let deposit = T::EscrowDeposit::get();
                T::Currency::hold(&HoldReason::EscrowRecord.into(), &user, deposit)
                    .map_err(|_| Error::<T>::InsufficientBalance)?;
                Self::deposit_event(Event::EscrowOpened {
                    user: user.clone(),
                    provider: provider.clone(),
                    deposit,
                });
                EscrowOf::<T>::default()
            }
        };
        escrow.balance = escrow.balance.checked_add(amount).ok_or(Error::<T>::Overflow)?;
        T::Currency::transfer(&user, &Self::escrow_account(), amount, Preservation::Preserve)
            .map_err(|_| Error::<T>::InsufficientBalance)?;
        let balance = escrow.balance;
        Escrows::<T>::insert(&user, &provider, escrow);
        Self::deposit_event(Event::Deposited { user, provider, amount, balance });
        Ok(())
    }

    pub(crate) fn do_request_refund(
        user: T::AccountId,
        provider: T::AccountId,
        amount: Balance,
    ) -> DispatchResult {
        ensure!(!amount.is_zero(), Error::<T>::ZeroAmount);
        Escrows::<T>::try_mutate(&user, &provider, |maybe| {
            let escrow = maybe.as_mut().ok_or(Error::<T>::EscrowNotFound)?;
            let pending = escrow.pending_refund.checked_add(amount).ok_or(Error::<T>::Overflow)?;
            ensure!(pending <= escrow.balance, Error::<T>::RefundExceedsBalance);
            let unlock_at = Self::now().saturating_add(RefundLock::<T>::get());
            escrow.pending_refund = pending;
            escrow.unlock_at = unlock_at;
            Self::deposit_event(Event::RefundRequested {
                user: user.clone(),
                provider: provider.clone(),
                amount,
                pending,
                unlock_at,
            });
            Ok(())
        })
    }

    pub(crate) fn do_cancel_refund(user: T::AccountId, provider: T::AccountId) -> DispatchResult {
        Escrows::<T>::try_mutate(&user, &provider, |maybe| {
            let escrow = maybe.as_mut().ok_or(Error::<T>::EscrowNotFound)?;
            ensure!(!escrow.pending_refund.is_zero(), Error::<T>::NoPendingRefund);
            let amount = core::mem::take(&mut escrow.pending_refund);
            Self::deposit_event(Event::RefundCancelled {
                user: user.clone(),
                provider: provider.clone(),
                amount,
            });
            Ok(())
        })
    }

    pub(crate) fn do_withdraw_refund(user: T::AccountId, provider: T::AccountId) -> DispatchResult {
        Escrows::<T>::try_mutate(&user, &provider, |maybe| {
            let escrow = maybe.as_mut().ok_or(Error::<T>::EscrowNotFound)?;
            ensure!(!escrow.pending_refund.is_zero(), Error::<T>::NoPendingRefund);
            ensure!(Self::now() >= escrow.unlock_at, Error::<T>::RefundLocked);
            let amount = escrow.pending_refund.min(escrow.balance);
            T::Currency::transfer(&Self::escrow_account(), &user, amount, Preservation::Preserve)?;
            escrow.balance = escrow.balance.saturating_sub(amount);
            escrow.pending_refund = 0;
            Self::deposit_event(Event::RefundWithdrawn {
                user: user.clone(),
                provider: provider.clone(),
                amount,
            });
            Ok(())
        })
    }

    pub(crate) fn do_settle(
        provider: T::AccountId,
        items: BoundedVec<Claim, T::MaxBatch>,
        trace_root: H256,
    ) -> DispatchResult {
        let mut info = Providers::<T>::get(&provider).ok_or(Error::<T>::NotAProvider)?;
        ensure!(info.bond >= T::MinBond::get(), Error::<T>::ProviderNotBonded);
        let genesis = Self::genesis_hash();
        let now = Self::now();
        let held_until = now.saturating_add(DisputeWindow::<T>::get());
        let (mut accepted, mut rejected, mut paid_total) = (0u32, 0u32, 0 as Balance);
        let mut released: Balance = 0;

        for claim in items.iter() {
            let voucher = &claim.voucher.voucher;
            let result = with_storage_layer(|| {
                Self::settle_claim(&provider, claim, &genesis, now, held_until, &mut info)
            });
            match result {
                Ok((outcome, freed)) => {
                    accepted = accepted.saturating_add(1);
                    paid_total = paid_total.saturating_add(outcome.paid());
                    released = released.saturating_add(freed);
                    let (user, nonce) = (voucher.user.clone(), voucher.nonce);
                    let provider = provider.clone();
                    Self::deposit_event(match outcome {
                        ClaimOutcome::Settled { paid } => {
                            Event::ClaimSettled { provider, user, nonce, paid }
                        }
                        ClaimOutcome::Partial { paid, owed } => {
                            Event::ClaimPartiallySettled { provider, user, nonce, paid, owed }
                        }
                    });
                }
                Err(reason) => {
                    rejected = rejected.saturating_add(1);
                    Self::deposit_event(Event::ClaimRejected {
                        provider: provider.clone(),
                        user: voucher.user.clone(),
                        nonce: voucher.nonce,
                        reason,
                    });
                }
            }
        }

        if accepted > 0 {
            info.last_settled_at = now;
        }
        if !paid_total.is_zero() {
            info.bond_locked_until = info.bond_locked_until.max(held_until);
        }
        Self::pay_out(&provider, released)?;
        Providers::<T>::insert(&provider, info);
        Self::deposit_event(Event::BatchSettled {
            provider,
            trace_root,
            accepted,
            rejected,
            paid: paid_total,
        });
        Ok(())
    }

    /// Move `amount` of released earnings from the escrow account to `provider`, with an event.
    /// It cannot fail while the escrow account holds every escrow's balance and held payments
    /// (`try_state`); if it did, the call fails and nothing of it stays.
    pub(crate) fn pay_out(provider: &T::AccountId, amount: Balance) -> DispatchResult {
        if amount.is_zero() {
            return Ok(());
        }
        T::Currency::transfer(&Self::escrow_account(), provider, amount, Preservation::Preserve)?;
        Self::deposit_event(Event::EarningsReleased { provider: provider.clone(), amount });
        Ok(())
    }

    /// Take the held payments of `escrow` whose window has closed at `now`; the younger bucket
    /// becomes the older one when the older is empty.
    fn take_released(escrow: &mut EscrowOf<T>, now: BlockNumberFor<T>) -> Balance {
        let mut released: Balance = 0;
        if !escrow.held.is_zero() && now >= escrow.held_until {
            released = released.saturating_add(core::mem::take(&mut escrow.held));
        }
        if !escrow.held_next.is_zero() && now >= escrow.held_next_until {
            released = released.saturating_add(core::mem::take(&mut escrow.held_next));
        }
        Self::shift_buckets(escrow);
        released
    }

    /// Keep the older bucket filled first: an emptied older bucket takes the younger one.
    fn shift_buckets(escrow: &mut EscrowOf<T>) {
        if escrow.held.is_zero() && !escrow.held_next.is_zero() {
            escrow.held = core::mem::take(&mut escrow.held_next);
            escrow.held_until = escrow.held_next_until;
        }
    }

    /// Hold a new payment until `until`. Two buckets: a payment joins the younger one when the
    /// older is still locked, so a provider that settles an escrow often is paid at most two
    /// windows after settling, never later.
    fn hold_payment(
        escrow: &mut EscrowOf<T>,
        paid: Balance,
        until: BlockNumberFor<T>,
    ) -> Result<(), RejectReason> {
        if paid.is_zero() {
            return Ok(());
        }
        if escrow.held.is_zero() {
            escrow.held = paid;
            escrow.held_until = until;
        } else {
            escrow.held_next = escrow.held_next.checked_add(paid).ok_or(RejectReason::Overflow)?;
            // Never earlier than a payment already in the bucket was promised (root may have
            // shortened the window since).
            escrow.held_next_until = escrow.held_next_until.max(until);
        }
        Ok(())
    }

    /// One claim of a batch, following protocol steps 1-4. Runs in its own storage layer: an
    /// `Err` rolls back whatever it wrote. `info` is the provider's record, written by the caller.
    /// Returns the outcome and the held payments of this escrow released by it.
    fn settle_claim(
        provider: &T::AccountId,
        claim: &Claim,
        genesis: &H256,
        now: BlockNumberFor<T>,
        held_until: BlockNumberFor<T>,
        info: &mut ProviderInfo<BlockNumberFor<T>>,
    ) -> Result<(ClaimOutcome, Balance), RejectReason> {
        let voucher = &claim.voucher.voucher;
        if &voucher.provider != provider {
            return Err(RejectReason::WrongProvider);
        }
        if !claim.voucher.verify(genesis) {
            return Err(RejectReason::BadSignature);
        }
        let mut escrow =
            Escrows::<T>::get(&voucher.user, provider).ok_or(RejectReason::NoEscrow)?;

        let claimed_total =
            voucher.spent.checked_add(claim.fee_claim).ok_or(RejectReason::Overflow)?;
        let advances = voucher.nonce > escrow.settled_nonce;
        let collects_rest = voucher.nonce == escrow.settled_nonce
            && claimed_total == escrow.last_claimed_total
            && escrow.settled_total < escrow.last_claimed_total;
        if !advances && !collects_rest {
            return Err(RejectReason::StaleNonce);
        }
        if claim.fee_claim > voucher.cap {
            return Err(RejectReason::ClaimAboveCap);
        }

        // Held in the escrow account until `held_until`; what earlier claims of this escrow
        // paid and whose window has closed is released by the caller, once for the batch.
        let due = claimed_total.saturating_sub(escrow.settled_total);
        let paid = due.min(escrow.balance);

        let nonce_advance = voucher.nonce.saturating_sub(escrow.settled_nonce);
        let released = Self::take_released(&mut escrow, now);
        Self::hold_payment(&mut escrow, paid, held_until)?;
        escrow.balance = escrow.balance.saturating_sub(paid);
        escrow.pending_refund = escrow.pending_refund.min(escrow.balance);
        escrow.settled_nonce = voucher.nonce;
        escrow.settled_total =
            escrow.settled_total.checked_add(paid).ok_or(RejectReason::Overflow)?;
        escrow.last_claimed_total = claimed_total;
        escrow.last_settled_at = now;
        if !voucher.is_ack() {
            escrow.settled_through = voucher.nonce;
        }
        Escrows::<T>::insert(&voucher.user, provider, escrow);

        // Statistics count only what moved funds, and a nonce advance at most once per unit
        // paid: a provider signing vouchers for itself through another account cannot make a
        // number grow without paying for it.
        if !paid.is_zero() {
            let counted = u64::try_from(paid).unwrap_or(u64::MAX).min(nonce_advance);
            info.claims_settled = info.claims_settled.saturating_add(1);
            info.requests_settled = info.requests_settled.saturating_add(counted);
            info.earned = info.earned.saturating_add(paid);
        }

        let owed = due.saturating_sub(paid);
        let outcome = if owed.is_zero() {
            ClaimOutcome::Settled { paid }
        } else {
            ClaimOutcome::Partial { paid, owed }
        };
        Ok((outcome, released))
    }

    pub(crate) fn do_release(
        provider: T::AccountId,
        users: BoundedVec<T::AccountId, T::MaxBatch>,
    ) -> DispatchResult {
        let now = Self::now();
        let mut released: Balance = 0;
        for user in users.iter() {
            Escrows::<T>::mutate_exists(user, &provider, |maybe| {
                if let Some(escrow) = maybe.as_mut() {
                    released = released.saturating_add(Self::take_released(escrow, now));
                }
            });
        }
        Self::pay_out(&provider, released)
    }

    pub(crate) fn do_dispute(
        user: T::AccountId,
        provider: T::AccountId,
        signed: SignedReceipt,
    ) -> DispatchResult {
        let receipt = &signed.receipt;
        ensure!(user != provider, Error::<T>::SelfEscrow);
        ensure!(receipt.provider == provider, Error::<T>::ReceiptProviderMismatch);
        ensure!(receipt.user == user, Error::<T>::NotReceiptUser);
        ensure!(signed.verify(&Self::genesis_hash()), Error::<T>::BadReceiptSignature);
        let mut escrow = Escrows::<T>::get(&user, &provider).ok_or(Error::<T>::EscrowNotFound)?;
        ensure!(receipt.nonce >= escrow.settled_through, Error::<T>::ReceiptTooOld);
        ensure!(receipt.total < escrow.settled_total, Error::<T>::NothingToDispute);
        let now = Self::now();
        ensure!(!escrow.locked(now).is_zero(), Error::<T>::DisputeWindowClosed);
        let mut info = Providers::<T>::get(&provider).ok_or(Error::<T>::NotAProvider)?;

        // The over-claim comes back from the payments still locked, the younger first. What is
        // past its window is the provider's and stays for `release` (moving it here could fail
        // on a provider account below the existential deposit and block the user's dispute).
        let excess = escrow.settled_total.saturating_sub(receipt.total);
        let refunded = Self::take_locked(&mut escrow, excess, now);
        let unrecovered = excess.saturating_sub(refunded);
        escrow.balance = escrow.balance.checked_add(refunded).ok_or(Error::<T>::Overflow)?;
        // Only what came back leaves `settled_total`: an unrecovered over-claim stays on the
        // record and later claims of this escrow pay that much less.
        escrow.settled_total = escrow.settled_total.saturating_sub(refunded);
        escrow.last_claimed_total = escrow.last_claimed_total.min(escrow.settled_total);

        let penalty = T::DisputePenalty::get().saturating_mul_int(refunded).min(info.bond);
        let rewarded = T::DisputeReward::get().mul_floor(penalty);
        let burned = penalty.saturating_sub(rewarded);
        Self::move_bond(&provider, &user, rewarded, &mut info)?;
        Self::burn_bond(&provider, burned, &mut info)?;

        info.earned = info.earned.saturating_sub(refunded);
        info.disputes_lost = info.disputes_lost.saturating_add(1);
        Providers::<T>::insert(&provider, info);
        Escrows::<T>::insert(&user, &provider, escrow);
        Self::deposit_event(Event::DisputeWon {
            user,
            provider,
            nonce: receipt.nonce,
            refunded,
            unrecovered,
            rewarded,
            burned,
        });
        Ok(())
    }

    /// Take up to `amount` from the payments of `escrow` still locked at `now` (the younger
    /// bucket first); returns what was taken. What is past its window is the provider's and
    /// stays for `release`.
    pub(crate) fn take_locked(
        escrow: &mut EscrowOf<T>,
        amount: Balance,
        now: BlockNumberFor<T>,
    ) -> Balance {
        let mut taken: Balance = 0;
        for (held, until) in
            [(&mut escrow.held_next, escrow.held_next_until), (&mut escrow.held, escrow.held_until)]
        {
            if now < until {
                let take = amount.saturating_sub(taken).min(*held);
                *held = held.saturating_sub(take);
                taken = taken.saturating_add(take);
            }
        }
        Self::shift_buckets(escrow);
        taken
    }

    /// Burn `amount` of the provider's bond.
    pub(crate) fn burn_bond(
        provider: &T::AccountId,
        amount: Balance,
        info: &mut ProviderInfo<BlockNumberFor<T>>,
    ) -> DispatchResult {
        if amount.is_zero() {
            return Ok(());
        }
        T::Currency::burn_held(
            &HoldReason::ProviderBond.into(),
            provider,
            amount,
            Precision::Exact,
            Fortitude::Force,
        )?;
        info.bond = info.bond.saturating_sub(amount);
        Ok(())
    }

    /// Move `amount` of the provider's bond to `to`'s free balance.
    pub(crate) fn move_bond(
        provider: &T::AccountId,
        to: &T::AccountId,
        amount: Balance,
        info: &mut ProviderInfo<BlockNumberFor<T>>,
    ) -> DispatchResult {
        if amount.is_zero() {
            return Ok(());
        }
        T::Currency::transfer_on_hold(
            &HoldReason::ProviderBond.into(),
            provider,
            to,
            amount,
            Precision::Exact,
            Restriction::Free,
            Fortitude::Force,
        )?;
        info.bond = info.bond.saturating_sub(amount);
        Ok(())
    }

    /// The pallet's invariants: the escrow account holds at least the existential deposit plus
    /// the sum of all escrows' balances and held payments and all jobs' reserves, every provider's bond hold equals
    /// its recorded bond and outlasts its escrows' held payments, no pending refund exceeds its
    /// escrow, and every user's record deposits are held.
    #[cfg(any(feature = "try-runtime", test))]
    pub fn do_try_state() -> Result<(), polkadot_sdk::sp_runtime::TryRuntimeError> {
        use alloc::collections::BTreeMap;
        use polkadot_sdk::frame_support::traits::fungible::{Inspect, InspectHold};

        let mut escrowed = T::Currency::minimum_balance();
        let mut records: BTreeMap<T::AccountId, Balance> = BTreeMap::new();
        for (user, provider, escrow) in Escrows::<T>::iter() {
            ensure!(escrow.pending_refund <= escrow.balance, "pending refund above escrow balance");
            ensure!(user != provider, "escrow of a provider with itself");
            escrowed = escrowed
                .checked_add(escrow.balance)
                .and_then(|e| e.checked_add(escrow.held))
                .and_then(|e| e.checked_add(escrow.held_next))
                .ok_or("escrow sum overflows")?;
            ensure!(
                escrow.held_next.is_zero() || !escrow.held.is_zero(),
                "younger held bucket used while the older is empty"
            );
            let locked_until = Providers::<T>::get(&provider)
                .map(|p| p.bond_locked_until)
                .ok_or("escrow with an unknown provider")?;
            for (held, until) in
                [(escrow.held, escrow.held_until), (escrow.held_next, escrow.held_next_until)]
            {
                ensure!(held.is_zero() || until <= locked_until, "held payment outlasts the bond");
            }
            let deposits = records.entry(user).or_default();
            *deposits = deposits.saturating_add(T::EscrowDeposit::get());
        }
        for (user, deposits) in records {
            // Records migrated from storage version 1 were opened without a deposit.
            ensure!(
                T::Currency::balance_on_hold(&HoldReason::EscrowRecord.into(), &user) <= deposits,
                "more held for escrow records than the records cost"
            );
        }
        let reserved = Self::do_try_state_jobs()?;
        escrowed = escrowed.checked_add(reserved).ok_or("escrow sum overflows")?;
        for (provider, service_id, _) in FineTuneOffers::<T>::iter() {
            ensure!(
                Services::<T>::get(&provider, service_id)
                    .is_some_and(|s| s.kind == ServiceKind::FineTune),
                "fine-tuning terms of a service that is not a fine-tuning one"
            );
        }
        ensure!(
            T::Currency::balance(&Self::escrow_account()) >= escrowed,
            "escrow account holds less than the existential deposit plus all escrows"
        );
        for (provider, info) in Providers::<T>::iter() {
            ensure!(
                T::Currency::balance_on_hold(&HoldReason::ProviderBond.into(), &provider)
                    == info.bond,
                "bond hold differs from the recorded bond"
            );
            let services = Services::<T>::iter_prefix(&provider).count() as u32;
            ensure!(services == info.services, "service count differs from services stored");
            ensure!(info.unbonding == (services == 0), "unbonding flag differs from service count");
        }
        Self::do_try_state_challenges()
    }
}
