//! The logic behind the fine-tuning calls (see `docs/finetune.md`). Every function here runs
//! inside the call's transaction, so an `Err` leaves storage as it was.
//!
//! A job's funds stay in the escrow account, in the job's own `reserved`, apart from the
//! escrow's balance and its held payments for inference: `create_job` moves the price there
//! from the user's escrow balance; the reveal keeps the fee and puts the rest back; the fee
//! goes to the provider when the contest window closes (or back to the user when the key is
//! proven bad). So no job payment is ever within reach of an inference dispute or challenge,
//! nor changes what they see as held. Penalties come out of the provider's bond: a share to the
//! user (`DisputeReward`), the rest burned, so a provider running jobs for itself through
//! another account loses what it moves.

use crate::{pallet::*, types::*};
use polkadot_sdk::{
    frame_support::{ensure, pallet_prelude::*},
    frame_system::pallet_prelude::BlockNumberFor,
    sp_runtime::{
        traits::{Saturating, Zero},
        FixedPointNumber,
    },
};

/// A job of this runtime.
pub(crate) type JobOf<T> = Job<BlockNumberFor<T>>;

/// What an ended job moved, for its event.
#[derive(Default)]
struct Outcome {
    refunded: Balance,
    paid: Balance,
    penalty: Balance,
    to_user: Balance,
}

impl<T: Config> Pallet<T> {
    pub(crate) fn do_set_finetune_terms(
        provider: T::AccountId,
        service_id: ServiceId,
        terms: FineTuneTerms,
    ) -> DispatchResult {
        let service =
            Services::<T>::get(&provider, service_id).ok_or(Error::<T>::ServiceNotFound)?;
        ensure!(service.kind == ServiceKind::FineTune, Error::<T>::NotFineTune);
        ensure!(
            terms.max_dataset_tokens > 0 && terms.max_epochs > 0 && terms.max_rank > 0,
            Error::<T>::EmptyTerms
        );
        ensure!(terms.turnaround > 0, Error::<T>::EmptyTerms);
        ensure!(terms.turnaround <= T::MaxTurnaround::get(), Error::<T>::OutOfBounds);
        FineTuneOffers::<T>::insert(&provider, service_id, terms);
        Self::deposit_event(Event::FineTuneTermsSet { provider, service_id, terms });
        Ok(())
    }

    pub(crate) fn do_create_job(
        user: T::AccountId,
        provider: T::AccountId,
        spec: JobSpec,
    ) -> DispatchResult {
        ensure!(user != provider, Error::<T>::SelfEscrow);
        let service =
            Services::<T>::get(&provider, spec.service_id).ok_or(Error::<T>::ServiceNotFound)?;
        ensure!(service.kind == ServiceKind::FineTune, Error::<T>::NotFineTune);
        let terms = FineTuneOffers::<T>::get(&provider, spec.service_id)
            .ok_or(Error::<T>::NoFineTuneTerms)?;
        ensure!(Self::accepts_deposits(&provider), Error::<T>::ProviderNotBonded);
        ensure!(spec.price_version == service.price_version, Error::<T>::PriceChanged);
        ensure!(terms.turnaround <= spec.max_turnaround, Error::<T>::TurnaroundTooLong);
        ensure!(spec.dataset_tokens > 0, Error::<T>::EmptyDataset);
        ensure!(spec.dataset_tokens <= terms.max_dataset_tokens, Error::<T>::DatasetTooLarge);
        ensure!(spec.epochs > 0 && spec.epochs <= terms.max_epochs, Error::<T>::EpochsOutOfRange);
        ensure!(spec.rank > 0 && spec.rank <= terms.max_rank, Error::<T>::RankOutOfRange);
        let open = UserJobs::<T>::get(&user);
        ensure!(open < T::MaxJobsPerUser::get(), Error::<T>::TooManyJobs);

        let tokens = spec.trained_tokens().ok_or(Error::<T>::Overflow)?;
        let reserved = job_fee(tokens, service.input_price).ok_or(Error::<T>::Overflow)?;
        ensure!(!reserved.is_zero(), Error::<T>::FreeJob);
        let mut escrow = Escrows::<T>::get(&user, &provider).ok_or(Error::<T>::EscrowNotFound)?;
        ensure!(escrow.spendable() >= reserved, Error::<T>::InsufficientEscrow);
        escrow.balance = escrow.balance.saturating_sub(reserved);
        Escrows::<T>::insert(&user, &provider, escrow);

        let id = NextJobId::<T>::get();
        NextJobId::<T>::put(id.checked_add(1).ok_or(Error::<T>::Overflow)?);
        let now = Self::now();
        let accept_by = now.saturating_add(T::AcceptWindow::get());
        Jobs::<T>::insert(
            id,
            Job {
                user: user.clone(),
                provider: provider.clone(),
                spec,
                price: service.input_price,
                reserved,
                turnaround: terms.turnaround,
                created_at: now,
                state: JobState::Created { accept_by },
            },
        );
        UserJobs::<T>::insert(&user, open.saturating_add(1));
        ProviderJobIds::<T>::insert(&provider, id, ());
        Self::deposit_event(Event::JobCreated {
            id,
            user,
            provider,
            service_id: spec.service_id,
            reserved,
            accept_by,
        });
        Ok(())
    }

    fn job(id: JobId) -> Result<JobOf<T>, DispatchError> {
        Jobs::<T>::get(id).ok_or_else(|| Error::<T>::JobNotFound.into())
    }

    pub(crate) fn do_accept_job(provider: T::AccountId, id: JobId) -> DispatchResult {
        let mut job = Self::job(id)?;
        ensure!(job.provider == provider, Error::<T>::NotJobProvider);
        let JobState::Created { accept_by } = job.state else {
            return Err(Error::<T>::JobNotCreated.into());
        };
        let now = Self::now();
        ensure!(now <= accept_by, Error::<T>::DeadlinePassed);
        // The service must still be offered: a provider that removed it rejects instead.
        ensure!(
            FineTuneOffers::<T>::contains_key(&provider, job.spec.service_id),
            Error::<T>::NoFineTuneTerms
        );
        let info = Providers::<T>::get(&provider).ok_or(Error::<T>::NotAProvider)?;
        ensure!(info.bond >= T::MinBond::get() && !info.unbonding, Error::<T>::ProviderNotBonded);
        let deliver_by = now.saturating_add(job.turnaround.into());
        job.state = JobState::Accepted { deliver_by };
        Jobs::<T>::insert(id, job);
        ProviderJobs::<T>::mutate(&provider, |n| *n = n.saturating_add(1));
        Self::deposit_event(Event::JobAccepted { id, provider, deliver_by });
        Ok(())
    }

    pub(crate) fn do_reject_job(provider: T::AccountId, id: JobId) -> DispatchResult {
        let job = Self::job(id)?;
        ensure!(job.provider == provider, Error::<T>::NotJobProvider);
        ensure!(matches!(job.state, JobState::Created { .. }), Error::<T>::JobNotCreated);
        Self::end_job(id, job, JobEnd::Rejected)
    }

    pub(crate) fn do_deliver(
        provider: T::AccountId,
        id: JobId,
        delivery: Delivery,
    ) -> DispatchResult {
        let mut job = Self::job(id)?;
        ensure!(job.provider == provider, Error::<T>::NotJobProvider);
        let JobState::Accepted { deliver_by } = job.state else {
            return Err(Error::<T>::JobNotAccepted.into());
        };
        let now = Self::now();
        ensure!(now <= deliver_by, Error::<T>::DeadlinePassed);
        let most = job.spec.trained_tokens().ok_or(Error::<T>::Overflow)?;
        ensure!(delivery.trained_tokens <= most, Error::<T>::TooManyTrainedTokens);
        ensure!(delivery.adapter_len > 0, Error::<T>::EmptyAdapter);
        let fee = job_fee(delivery.trained_tokens, job.price).ok_or(Error::<T>::Overflow)?;
        // At most `reserved` since trained tokens are at most the spec's.
        let fee = fee.min(job.reserved);
        let ack_by = now.saturating_add(T::AckWindow::get());
        job.state = JobState::Delivered { delivery, fee, ack_by };
        Jobs::<T>::insert(id, job);
        Self::deposit_event(Event::JobDelivered {
            id,
            adapter_hash: delivery.adapter_hash,
            key_hash: delivery.key_hash,
            trained_tokens: delivery.trained_tokens,
            final_loss: delivery.final_loss,
            fee,
            ack_by,
        });
        Ok(())
    }

    pub(crate) fn do_acknowledge(user: T::AccountId, id: JobId) -> DispatchResult {
        let mut job = Self::job(id)?;
        ensure!(job.user == user, Error::<T>::NotJobUser);
        let JobState::Delivered { delivery, fee, ack_by } = job.state else {
            return Err(Error::<T>::JobNotDelivered.into());
        };
        let now = Self::now();
        ensure!(now <= ack_by, Error::<T>::DeadlinePassed);
        let reveal_by = now.saturating_add(T::RevealWindow::get());
        job.state = JobState::Acknowledged { delivery, fee, reveal_by };
        Jobs::<T>::insert(id, job);
        Self::deposit_event(Event::JobAcknowledged { id, user, reveal_by });
        Ok(())
    }

    /// The key is revealed: the job keeps the fee (for the contest window) and the rest of the
    /// reserve goes back to the escrow.
    pub(crate) fn do_reveal_key(
        provider: T::AccountId,
        id: JobId,
        key: SealedKey,
    ) -> DispatchResult {
        let mut job = Self::job(id)?;
        ensure!(job.provider == provider, Error::<T>::NotJobProvider);
        let JobState::Acknowledged { delivery, fee, reveal_by } = job.state else {
            return Err(Error::<T>::JobNotAcknowledged.into());
        };
        let now = Self::now();
        ensure!(now <= reveal_by, Error::<T>::DeadlinePassed);
        let contest_until = now.saturating_add(DisputeWindow::<T>::get());
        let mut escrow =
            Escrows::<T>::get(&job.user, &provider).ok_or(Error::<T>::EscrowNotFound)?;
        let refunded = job.reserved.saturating_sub(fee);
        escrow.balance = escrow.balance.checked_add(refunded).ok_or(Error::<T>::Overflow)?;
        Escrows::<T>::insert(&job.user, &provider, escrow);
        job.reserved = fee;
        job.state = JobState::Revealed { delivery, fee, key, contest_until };
        Jobs::<T>::insert(id, job);
        Self::deposit_event(Event::KeyRevealed {
            id,
            ephemeral: key.ephemeral,
            sealed: key.sealed,
            fee,
            refunded,
            contest_until,
        });
        Ok(())
    }

    /// Pay `amount` of a job's reserve to its provider (counted as earned); returns what was
    /// paid. A payment the provider's account cannot receive (an emptied account and an amount
    /// below the existential deposit) is not paid, so that it never keeps the job from ending.
    fn pay_provider(provider: &T::AccountId, amount: Balance) -> Balance {
        if amount.is_zero() || Self::pay_out(provider, amount).is_err() {
            return 0;
        }
        Providers::<T>::mutate(provider, |p| {
            if let Some(p) = p.as_mut() {
                p.earned = p.earned.saturating_add(amount);
            }
        });
        amount
    }

    /// The user shows the key does not open: it reveals its secret for this job, the chain
    /// opens the sealed key and compares it with the committed hash.
    pub(crate) fn do_contest_key(
        user: T::AccountId,
        id: JobId,
        secret: [u8; 32],
    ) -> DispatchResult {
        let job = Self::job(id)?;
        ensure!(job.user == user, Error::<T>::NotJobUser);
        let JobState::Revealed { delivery, key, contest_until, .. } = job.state else {
            return Err(Error::<T>::JobNotRevealed.into());
        };
        ensure!(Self::now() < contest_until, Error::<T>::DeadlinePassed);
        ensure!(public_key(&secret) == job.spec.user_key, Error::<T>::WrongJobSecret);
        let opened = unseal_key(id, &key, &secret);
        ensure!(key_hash(&opened) != delivery.key_hash, Error::<T>::KeyOpens);
        Self::end_job(id, job, JobEnd::KeyContested)
    }

    pub(crate) fn do_cancel_job(user: T::AccountId, id: JobId) -> DispatchResult {
        let job = Self::job(id)?;
        ensure!(job.user == user, Error::<T>::NotJobUser);
        match job.state {
            JobState::Created { .. } => Self::end_job(id, job, JobEnd::Cancelled),
            JobState::Accepted { .. } | JobState::Delivered { .. } => {
                Self::end_job(id, job, JobEnd::Abandoned)
            }
            JobState::Acknowledged { .. } | JobState::Revealed { .. } => {
                Err(Error::<T>::JobNotCancellable.into())
            }
        }
    }

    /// Anyone ends a job whose deadline has passed, as that deadline says.
    pub(crate) fn do_expire_job(id: JobId) -> DispatchResult {
        let job = Self::job(id)?;
        let now = Self::now();
        let (deadline, end) = match job.state {
            JobState::Created { accept_by } => (accept_by, JobEnd::NotAccepted),
            JobState::Accepted { deliver_by } => (deliver_by, JobEnd::NotDelivered),
            JobState::Delivered { ack_by, .. } => (ack_by, JobEnd::Abandoned),
            JobState::Acknowledged { reveal_by, .. } => (reveal_by, JobEnd::KeyWithheld),
            JobState::Revealed { contest_until, .. } => {
                ensure!(now >= contest_until, Error::<T>::DeadlineNotReached);
                return Self::end_job(id, job, JobEnd::Completed);
            }
        };
        ensure!(now > deadline, Error::<T>::DeadlineNotReached);
        Self::end_job(id, job, end)
    }

    /// The fee a job's state stands for: what the delivery priced, else the whole reserve.
    fn priced(job: &JobOf<T>) -> Balance {
        match job.state {
            JobState::Delivered { fee, .. }
            | JobState::Acknowledged { fee, .. }
            | JobState::Revealed { fee, .. } => fee,
            JobState::Created { .. } | JobState::Accepted { .. } => job.reserved,
        }
    }

    /// End `job` as `end` says, moving its funds, and remove its record.
    fn end_job(id: JobId, job: JobOf<T>, end: JobEnd) -> DispatchResult {
        let mut escrow =
            Escrows::<T>::get(&job.user, &job.provider).ok_or(Error::<T>::EscrowNotFound)?;
        let mut out = Outcome::default();
        let committed = !matches!(job.state, JobState::Created { .. });
        match end {
            JobEnd::Rejected | JobEnd::Cancelled | JobEnd::NotAccepted => {
                out.refunded = job.reserved;
            }
            JobEnd::Completed => {
                out.paid = Self::pay_provider(&job.provider, job.reserved);
                out.refunded = job.reserved.saturating_sub(out.paid);
            }
            JobEnd::Abandoned => {
                let share = T::AbandonShare::get().mul_floor(Self::priced(&job)).min(job.reserved);
                out.paid = Self::pay_provider(&job.provider, share);
                out.refunded = job.reserved.saturating_sub(out.paid);
            }
            JobEnd::NotDelivered => {
                out.refunded = job.reserved;
                let penalty = T::LateDeliveryPenalty::get().mul_floor(job.reserved);
                (out.penalty, out.to_user) = Self::penalize(&job, penalty)?;
            }
            JobEnd::KeyWithheld | JobEnd::KeyContested => {
                // The reserve is whole (withheld) or the fee kept since the reveal (contested):
                // it all goes back.
                out.refunded = job.reserved;
                let slash = Self::key_slash(Self::priced(&job));
                (out.penalty, out.to_user) = Self::penalize(&job, slash)?;
            }
        }
        escrow.balance = escrow.balance.checked_add(out.refunded).ok_or(Error::<T>::Overflow)?;
        Escrows::<T>::insert(&job.user, &job.provider, escrow);

        Jobs::<T>::remove(id);
        ProviderJobIds::<T>::remove(&job.provider, id);
        UserJobs::<T>::mutate_exists(&job.user, |n| {
            *n = n.map(|n| n.saturating_sub(1)).filter(|n| *n > 0);
        });
        if committed {
            ProviderJobs::<T>::mutate_exists(&job.provider, |n| {
                *n = n.map(|n| n.saturating_sub(1)).filter(|n| *n > 0);
            });
        }
        Self::deposit_event(Event::JobEnded {
            id,
            user: job.user,
            provider: job.provider,
            end,
            refunded: out.refunded,
            paid: out.paid,
            penalty: out.penalty,
            to_user: out.to_user,
        });
        Ok(())
    }

    /// The slash of a provider that withheld or sealed a bad key for a job of `fee`.
    fn key_slash(fee: Balance) -> Balance {
        T::KeySlash::get().saturating_mul_int(fee).max(T::MinChallengeSlash::get())
    }

    /// Take up to `amount` from the provider's bond: the `DisputeReward` share to the user, the
    /// rest burned. Returns (taken, paid to the user).
    fn penalize(job: &JobOf<T>, amount: Balance) -> Result<(Balance, Balance), DispatchError> {
        let mut info = Providers::<T>::get(&job.provider).ok_or(Error::<T>::NotAProvider)?;
        let penalty = amount.min(info.bond);
        let to_user = T::DisputeReward::get().mul_floor(penalty);
        Self::move_bond(&job.provider, &job.user, to_user, &mut info)?;
        Self::burn_bond(&job.provider, penalty.saturating_sub(to_user), &mut info)?;
        Providers::<T>::insert(&job.provider, info);
        Ok((penalty, to_user))
    }

    /// The job invariants: each user's and provider's open-job counts and the providers' job
    /// index match the jobs stored, and a revealed job keeps exactly its fee. Returns the sum
    /// of the jobs' reserves.
    #[cfg(any(feature = "try-runtime", test))]
    pub fn do_try_state_jobs() -> Result<Balance, polkadot_sdk::sp_runtime::TryRuntimeError> {
        use alloc::collections::BTreeMap;
        let mut users: BTreeMap<T::AccountId, u32> = BTreeMap::new();
        let mut providers: BTreeMap<T::AccountId, u32> = BTreeMap::new();
        let mut reserved: Balance = 0;
        let next = NextJobId::<T>::get();
        for (id, job) in Jobs::<T>::iter() {
            ensure!(id < next, "job id at or above NextJobId");
            ensure!(job.user != job.provider, "job of a provider with itself");
            *users.entry(job.user.clone()).or_default() += 1;
            if !matches!(job.state, JobState::Created { .. }) {
                *providers.entry(job.provider.clone()).or_default() += 1;
            }
            if let JobState::Revealed { fee, .. } = job.state {
                ensure!(job.reserved == fee, "a revealed job keeps other than its fee");
            }
            ensure!(
                ProviderJobIds::<T>::contains_key(&job.provider, id),
                "a job missing from its provider's index"
            );
            reserved = reserved.checked_add(job.reserved).ok_or("job reserves overflow")?;
        }
        for (user, n) in UserJobs::<T>::iter() {
            ensure!(users.remove(&user) == Some(n), "a user's job count differs from its jobs");
        }
        ensure!(users.is_empty(), "jobs of a user without a job count");
        for (provider, n) in ProviderJobs::<T>::iter() {
            ensure!(
                providers.remove(&provider) == Some(n),
                "a provider's job count differs from its jobs"
            );
        }
        ensure!(providers.is_empty(), "accepted jobs of a provider without a job count");
        for (_, id, ()) in ProviderJobIds::<T>::iter() {
            ensure!(Jobs::<T>::contains_key(id), "an index entry of an ended job");
        }
        Ok(reserved)
    }
}
