//! The logic behind each call. Every function here runs inside the call's transaction, so an
//! `Err` leaves storage as it was.

use crate::{pallet::*, types::*};
use polkadot_sdk::{
    frame_support::{
        ensure,
        pallet_prelude::*,
        storage::with_storage_layer,
        traits::{
            fungible::{Inspect, Mutate, MutateHold},
            tokens::{Fortitude, Precision, Preservation, Restriction},
        },
    },
    frame_system::pallet_prelude::BlockNumberFor,
    sp_core::H256,
    sp_runtime::traits::{AccountIdConversion, Saturating, Zero},
};

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

    fn now() -> BlockNumberFor<T> {
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
        Services::<T>::try_mutate(&provider, service_id, |maybe| {
            let service = maybe.as_mut().ok_or(Error::<T>::ServiceNotFound)?;
            let price_version = service.price_version.checked_add(1).ok_or(Error::<T>::Overflow)?;
            terms.price_version = price_version;
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
        ensure!(Services::<T>::contains_key(&provider, service_id), Error::<T>::ServiceNotFound);
        let mut info = Providers::<T>::get(&provider).ok_or(Error::<T>::NotAProvider)?;
        Services::<T>::remove(&provider, service_id);
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
        let unlock = info.last_settled_at.saturating_add(DisputeWindow::<T>::get());
        ensure!(Self::now() >= unlock, Error::<T>::BondStillLocked);
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
        ensure!(amount >= T::MinDeposit::get(), Error::<T>::DepositBelowMinimum);
        ensure!(Self::accepts_deposits(&provider), Error::<T>::ProviderNotBonded);
        let mut escrow = Escrows::<T>::get(&user, &provider).unwrap_or_default();
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
        let (mut accepted, mut rejected, mut paid_total) = (0u32, 0u32, 0 as Balance);

        for claim in items.iter() {
            let voucher = &claim.voucher.voucher;
            let result = with_storage_layer(|| {
                Self::settle_claim(&provider, claim, &genesis, now, &mut info)
            });
            match result {
                Ok(outcome) => {
                    accepted = accepted.saturating_add(1);
                    paid_total = paid_total.saturating_add(outcome.paid());
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
        // One payout for the whole batch. It cannot fail while the escrow account holds the sum
        // of the escrows (`try_state`); if it did, the call fails and nothing of it stays.
        if !paid_total.is_zero() {
            T::Currency::transfer(
                &Self::escrow_account(),
                &provider,
                paid_total,
                Preservation::Preserve,
            )?;
        }
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

    /// One claim of a batch, following protocol steps 1-4. Runs in its own storage layer: an
    /// `Err` rolls back whatever it wrote. `info` is the provider's record, written by the caller.
    fn settle_claim(
        provider: &T::AccountId,
        claim: &Claim,
        genesis: &H256,
        now: BlockNumberFor<T>,
        info: &mut ProviderInfo<BlockNumberFor<T>>,
    ) -> Result<ClaimOutcome, RejectReason> {
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

        // Paid from the escrow account by the caller, once for the whole batch.
        let due = claimed_total.saturating_sub(escrow.settled_total);
        let paid = due.min(escrow.balance);

        let nonce_advance = voucher.nonce.saturating_sub(escrow.settled_nonce);
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

        info.claims_settled = info.claims_settled.saturating_add(1);
        info.requests_settled = info.requests_settled.saturating_add(nonce_advance);
        info.earned = info.earned.saturating_add(paid);

        let owed = due.saturating_sub(paid);
        Ok(if owed.is_zero() {
            ClaimOutcome::Settled { paid }
        } else {
            ClaimOutcome::Partial { paid, owed }
        })
    }

    pub(crate) fn do_dispute(
        user: T::AccountId,
        provider: T::AccountId,
        signed: SignedReceipt,
    ) -> DispatchResult {
        let receipt = &signed.receipt;
        ensure!(receipt.provider == provider, Error::<T>::ReceiptProviderMismatch);
        ensure!(signed.verify(&Self::genesis_hash()), Error::<T>::BadReceiptSignature);
        ensure!(receipt.user == user, Error::<T>::NotReceiptUser);
        let mut escrow = Escrows::<T>::get(&user, &provider).ok_or(Error::<T>::EscrowNotFound)?;
        ensure!(receipt.nonce >= escrow.settled_through, Error::<T>::ReceiptTooOld);
        let closes = escrow.last_settled_at.saturating_add(DisputeWindow::<T>::get());
        ensure!(Self::now() <= closes, Error::<T>::DisputeWindowClosed);
        ensure!(receipt.total < escrow.settled_total, Error::<T>::NothingToDispute);

        let mut info = Providers::<T>::get(&provider).ok_or(Error::<T>::NotAProvider)?;
        let excess = escrow.settled_total.saturating_sub(receipt.total);

        // The excess goes back into the escrow, from the bond first, then from the provider's
        // free balance.
        let escrow_account = Self::escrow_account();
        let from_bond = excess.min(info.bond);
        Self::move_bond(&provider, &escrow_account, from_bond, &mut info)?;
        let from_free = excess.saturating_sub(from_bond).min(T::Currency::reducible_balance(
            &provider,
            Preservation::Expendable,
            Fortitude::Polite,
        ));
        if !from_free.is_zero() {
            T::Currency::transfer(&provider, &escrow_account, from_free, Preservation::Expendable)?;
        }
        let refunded = from_bond.saturating_add(from_free);
        escrow.balance = escrow.balance.checked_add(refunded).ok_or(Error::<T>::Overflow)?;
        escrow.settled_total = receipt.total;
        escrow.last_claimed_total = escrow.last_claimed_total.min(receipt.total);

        let slashed = T::DisputePenalty::get().mul_floor(info.bond);
        Self::move_bond(&provider, &user, slashed, &mut info)?;

        info.earned = info.earned.saturating_sub(refunded);
        info.disputes_lost = info.disputes_lost.saturating_add(1);
        Providers::<T>::insert(&provider, info);
        Escrows::<T>::insert(&user, &provider, escrow);
        Self::deposit_event(Event::DisputeWon {
            user,
            provider,
            nonce: receipt.nonce,
            refunded,
            slashed,
        });
        Ok(())
    }

    /// Move `amount` of the provider's bond to `to`'s free balance.
    fn move_bond(
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
    /// the sum of all escrows, every provider's bond hold equals its recorded bond, and no
    /// pending refund exceeds its escrow.
    #[cfg(any(feature = "try-runtime", test))]
    pub fn do_try_state() -> Result<(), polkadot_sdk::sp_runtime::TryRuntimeError> {
        use polkadot_sdk::frame_support::traits::fungible::InspectHold;

        let mut escrowed = T::Currency::minimum_balance();
        for (_user, _provider, escrow) in Escrows::<T>::iter() {
            ensure!(escrow.pending_refund <= escrow.balance, "pending refund above escrow balance");
            escrowed = escrowed.checked_add(escrow.balance).ok_or("escrow sum overflows")?;
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
        Ok(())
    }
}
