//! What to claim: for each escrow, the claim that collects the most, and whether the policy says
//! to submit it now. Pure functions of the store's traces and the chain's escrow.

use compute_client::EscrowState;
use compute_primitives::{Balance, Claim, Receipt, SignedReceipt, SignedVoucher};

/// The best claim for one escrow and the receipts it covers.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedClaim {
    pub claim: Claim,
    /// Receipts with nonces above the chain's settled nonce up to the claim's, in order.
    pub covers: Vec<Receipt>,
    /// What the chain will still owe after it (0 unless the escrow runs short).
    pub owed_total: Balance,
}

/// The claim that collects the most for an escrow: among the vouchers the chain can still take
/// (above `settled_nonce`, or the partially paid one again), the one with the largest
/// `spent + min(cap, total - spent)`; the highest nonce on ties so the chain advances.
pub fn plan_claim(
    escrow: &EscrowState,
    traces: &[(SignedVoucher, SignedReceipt)],
) -> Option<PlannedClaim> {
    let partial = escrow.settled_total < escrow.last_claimed_total;
    let mut best: Option<(Balance, &SignedVoucher, Balance)> = None;
    for (sv, sr) in traces {
        let v = &sv.voucher;
        let total = sr.receipt.total;
        let Some(above) = total.checked_sub(v.spent) else { continue };
        let fee_claim = above.min(v.cap);
        let Some(claimed) = v.spent.checked_add(fee_claim) else { continue };
        let eligible = v.nonce > escrow.settled_nonce
            || (partial && v.nonce == escrow.settled_nonce && claimed == escrow.last_claimed_total);
        if !eligible {
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|(c, b, _)| claimed > *c || (claimed == *c && v.nonce > b.voucher.nonce))
        {
            best = Some((claimed, sv, fee_claim));
        }
    }
    let (claimed, sv, fee_claim) = best?;
    let advances = sv.voucher.nonce > escrow.settled_nonce;
    if !advances && claimed <= escrow.settled_total {
        return None;
    }
    let covers = traces
        .iter()
        .filter(|(v, _)| {
            v.voucher.nonce > escrow.settled_nonce && v.voucher.nonce <= sv.voucher.nonce
        })
        .map(|(_, r)| r.receipt.clone())
        .collect();
    let latest = traces.last().map_or(0, |(_, r)| r.receipt.total);
    Some(PlannedClaim {
        claim: Claim { voucher: sv.clone(), fee_claim },
        covers,
        owed_total: latest.saturating_sub(claimed),
    })
}

/// Whether the policy says to settle this escrow now.
pub fn due(
    policy: &crate::config::SettlementConfig,
    escrow: &EscrowState,
    owed: Balance,
    oldest_age_secs: u64,
    count: u32,
) -> bool {
    let share = (escrow.spendable() as f64 * policy.threshold_share) as Balance;
    owed > 0 && owed >= share
        || escrow.pending_refund > 0
        || oldest_age_secs >= policy.max_age_secs
        || count >= policy.max_batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use compute_client::{wire, Signer};
    use compute_primitives::Voucher;
    use polkadot_sdk::sp_core::H256;

    fn trace(
        nonce: u64,
        spent: Balance,
        cap: Balance,
        fee: Balance,
        total: Balance,
    ) -> (SignedVoucher, SignedReceipt) {
        let (u, p) = (Signer::from_uri("//Alice").unwrap(), Signer::from_uri("//Bob").unwrap());
        let g = H256::zero();
        let v = Voucher {
            user: u.account_id(),
            provider: p.account_id(),
            service_id: 0,
            price_version: 0,
            nonce,
            request_hash: H256::zero(),
            spent,
            cap,
        };
        let r = Receipt {
            user: u.account_id(),
            provider: p.account_id(),
            service_id: 0,
            nonce,
            request_hash: H256::zero(),
            response_hash: H256::zero(),
            proof_hash: Default::default(),
            model_hash: Default::default(),
            input_tokens: 0,
            output_tokens: 0,
            fee,
            total,
        };
        (wire::sign_voucher(&u, v, &g), wire::sign_receipt(&p, r, &g))
    }

    #[test]
    fn the_latest_voucher_collects_everything() {
        let traces =
            vec![trace(1, 0, 100, 40, 40), trace(2, 40, 100, 30, 70), trace(3, 70, 100, 20, 90)];
        let p = plan_claim(&EscrowState { balance: 1_000, ..Default::default() }, &traces).unwrap();
        assert_eq!(p.claim.voucher.voucher.nonce, 3);
        assert_eq!(p.claim.fee_claim, 20);
        assert_eq!(p.covers.len(), 3);
        assert_eq!(p.owed_total, 0);
    }

    #[test]
    fn an_ack_beats_the_request_before_it_and_nothing_settled_is_claimed_again() {
        let traces = vec![trace(1, 0, 100, 40, 40), trace(2, 40, 0, 0, 40)];
        let p = plan_claim(&EscrowState { balance: 1_000, ..Default::default() }, &traces).unwrap();
        assert_eq!((p.claim.voucher.voucher.nonce, p.claim.fee_claim), (2, 0));
        let settled = EscrowState {
            balance: 960,
            settled_nonce: 2,
            settled_total: 40,
            last_claimed_total: 40,
            ..Default::default()
        };
        assert_eq!(plan_claim(&settled, &traces), None);
    }

    #[test]
    fn a_partial_is_collected_again_with_the_same_voucher() {
        let traces = vec![trace(1, 0, 100, 40, 40)];
        let partial = EscrowState {
            balance: 50,
            settled_nonce: 1,
            settled_total: 25,
            last_claimed_total: 40,
            ..Default::default()
        };
        let p = plan_claim(&partial, &traces).unwrap();
        assert_eq!((p.claim.voucher.voucher.nonce, p.claim.fee_claim), (1, 40));
        assert!(p.covers.is_empty());
    }

    #[test]
    fn policy_triggers() {
        let policy = crate::config::SettlementConfig::default();
        let e = EscrowState { balance: 1_000, ..Default::default() };
        assert!(!due(&policy, &e, 100, 10, 1));
        assert!(due(&policy, &e, 500, 10, 1));
        assert!(due(&policy, &e, 1, policy.max_age_secs, 1));
        assert!(due(&policy, &e, 1, 0, policy.max_batch));
        let refunding = EscrowState { pending_refund: 1, ..e };
        assert!(due(&policy, &refunding, 1, 0, 1));
    }
}
