//! Catching up on receipts this CLI never saw (an answer lost in transit, another client of the
//! same account, a new machine): which of the provider's receipts may move the local nonce and
//! total forward.
//!
//! A receipt only shows what the provider signed. To be adopted, each must come with the voucher
//! it answers, signed by this user for this provider on this chain, and stay within it: same
//! nonce, service and request, a fee under the voucher's cap (and at the on-chain prices when the
//! voucher's price version is the current one), a voucher `spent` no higher than the total
//! verified before it, and a running total that continues exactly. So the total the next voucher
//! signs as `spent` can grow by no more than the caps the user itself signed.

use compute_client::{
    wire::{self, ReceiptError, ReceiptJson},
    ServiceInfo,
};
use compute_primitives::{AccountId, Balance, Nonce, SignedReceipt, SignedVoucher};
use polkadot_sdk::sp_core::H256;

/// Who the receipts must be between, on which chain, at which prices.
pub struct Expect<'a> {
    pub genesis: &'a H256,
    pub user: &'a AccountId,
    pub provider: &'a AccountId,
    /// The provider's services as the chain shows them now.
    pub services: &'a [ServiceInfo],
}

/// Where the verified receipts lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaughtUp {
    /// Nonce of the last receipt adopted (the starting nonce when none).
    pub nonce: Nonce,
    /// Its running total.
    pub total: Balance,
    /// The last receipt adopted (hex SCALE), kept for a dispute.
    pub last_receipt: Option<String>,
}

/// Why a receipt from the provider's list was not adopted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatchUpError {
    #[error("receipt #{0} comes without the voucher it answers")]
    NoVoucher(Nonce),
    #[error("receipt #{nonce}: {what} is not valid hex SCALE")]
    Malformed { nonce: Nonce, what: &'static str },
    #[error("receipt #{got} does not follow nonce {after}")]
    Gap { after: Nonce, got: Nonce },
    #[error("receipt #{0}: its voucher is not signed by you for this provider on this chain")]
    NotYourVoucher(Nonce),
    #[error("receipt #{nonce}: its voucher is for nonce {voucher}")]
    VoucherNonce { nonce: Nonce, voucher: Nonce },
    #[error("receipt #{nonce}: its voucher names spent {spent}, above the verified total {total}")]
    SpentAbove { nonce: Nonce, spent: Balance, total: Balance },
    #[error("receipt #{nonce}: {source}")]
    Receipt { nonce: Nonce, source: ReceiptError },
}

/// Verify `list` (oldest first) as continuing from the verified `(nonce, total)`; every receipt
/// must pass, or none is adopted.
pub fn verify(
    expect: &Expect,
    from: (Nonce, Balance),
    list: &[ReceiptJson],
) -> Result<CaughtUp, CatchUpError> {
    let (mut nonce, mut total) = from;
    let mut last_receipt = None;
    for item in list {
        let n = item.nonce;
        let receipt: SignedReceipt = wire::from_hex("receipt", &item.signed)
            .map_err(|_| CatchUpError::Malformed { nonce: n, what: "the receipt" })?;
        let n = receipt.receipt.nonce;
        if Some(n) != nonce.checked_add(1) {
            return Err(CatchUpError::Gap { after: nonce, got: n });
        }
        let hex = item.voucher.as_deref().ok_or(CatchUpError::NoVoucher(n))?;
        let signed: SignedVoucher = wire::from_hex("voucher", hex)
            .map_err(|_| CatchUpError::Malformed { nonce: n, what: "its voucher" })?;
        let v = &signed.voucher;
        if !signed.verify(expect.genesis)
            || &v.user != expect.user
            || &v.provider != expect.provider
        {
            return Err(CatchUpError::NotYourVoucher(n));
        }
        if v.nonce != n {
            return Err(CatchUpError::VoucherNonce { nonce: n, voucher: v.nonce });
        }
        if v.spent > total {
            return Err(CatchUpError::SpentAbove { nonce: n, spent: v.spent, total });
        }
        // The formula at today's prices holds only for vouchers that accepted today's prices;
        // for an older price version the cap is the bound.
        let prices = expect
            .services
            .iter()
            .find(|s| s.service_id == v.service_id && s.price_version == v.price_version)
            .map(|s| (s.input_price, s.output_price));
        wire::check_receipt_at(&receipt, v, expect.genesis, prices, total)
            .map_err(|source| CatchUpError::Receipt { nonce: n, source })?;
        (nonce, total) = (n, receipt.receipt.total);
        last_receipt = Some(item.signed.clone());
    }
    Ok(CaughtUp { nonce, total, last_receipt })
}

#[cfg(test)]
mod tests {
    use super::*;
    use compute_client::Signer;
    use compute_primitives::{Receipt, ServiceKind, Voucher};

    const UNIT: Balance = 1_000_000_000_000;
    const CAP: Balance = 10_000_000_000; // 0.01 unit
    const PRICES: (Balance, Balance) = (1_000, 4_000);

    struct World {
        user: Signer,
        provider: Signer,
        eve: Signer,
        genesis: H256,
        services: Vec<ServiceInfo>,
    }

    fn world() -> World {
        let [user, provider, eve] =
            ["//Charlie", "//Bob", "//Eve"].map(|k| Signer::from_uri(k).unwrap());
        let services = vec![ServiceInfo {
            provider: provider.account_id(),
            service_id: 0,
            kind: ServiceKind::Chat,
            model: "m".into(),
            model_hash: Default::default(),
            url: "http://127.0.0.1:1".into(),
            input_price: PRICES.0,
            output_price: PRICES.1,
            verifiability: "none".into(),
            price_version: 2,
        }];
        World { user, provider, eve, genesis: H256::repeat_byte(9), services }
    }

    impl World {
        fn expect(&self) -> (AccountId, AccountId) {
            (self.user.account_id(), self.provider.account_id())
        }

        fn verify(
            &self,
            from: (Nonce, Balance),
            list: &[ReceiptJson],
        ) -> Result<CaughtUp, CatchUpError> {
            let (user, provider) = self.expect();
            let e = Expect {
                genesis: &self.genesis,
                user: &user,
                provider: &provider,
                services: &self.services,
            };
            verify(&e, from, list)
        }

        fn voucher(&self, nonce: Nonce, spent: Balance) -> Voucher {
            Voucher {
                user: self.user.account_id(),
                provider: self.provider.account_id(),
                service_id: 0,
                price_version: 2,
                nonce,
                request_hash: wire::request_hash(format!("request {nonce}").as_bytes()),
                spent,
                cap: CAP,
            }
        }

        /// The provider's receipt for `v` billing (input, output) tokens, with the voucher signed
        /// by `signer` attached (none when `None`).
        fn item(&self, v: &Voucher, tokens: (u64, u64), signer: Option<&Signer>) -> ReceiptJson {
            let fee = compute_primitives::fee(tokens.0, tokens.1, PRICES.0, PRICES.1).unwrap();
            self.item_with_fee(v, tokens, fee, signer)
        }

        fn item_with_fee(
            &self,
            v: &Voucher,
            tokens: (u64, u64),
            fee: Balance,
            signer: Option<&Signer>,
        ) -> ReceiptJson {
            let r = Receipt {
                user: v.user.clone(),
                provider: v.provider.clone(),
                service_id: v.service_id,
                nonce: v.nonce,
                request_hash: v.request_hash,
                response_hash: wire::response_hash("answer"),
                proof_hash: Default::default(),
                model_hash: Default::default(),
                input_tokens: tokens.0,
                output_tokens: tokens.1,
                fee,
                total: v.spent + fee,
            };
            let json = ReceiptJson::from(&wire::sign_receipt(&self.provider, r, &self.genesis));
            match signer {
                Some(s) => json.with_voucher(&wire::sign_voucher(s, v.clone(), &self.genesis)),
                None => json,
            }
        }
    }

    #[test]
    fn receipts_for_vouchers_the_user_signed_are_adopted() {
        let w = world();
        // Verified so far: nonce 4, total 1000. Two requests whose answers were lost.
        let v5 = w.voucher(5, 1_000);
        let r5 = w.item(&v5, (10, 5), Some(&w.user)); // 10 000 + 20 000
        let v6 = w.voucher(6, 31_000);
        let r6 = w.item(&v6, (3, 0), Some(&w.user));
        let got = w.verify((4, 1_000), &[r5, r6.clone()]).unwrap();
        assert_eq!(got, CaughtUp { nonce: 6, total: 34_000, last_receipt: Some(r6.signed) });
        // Nothing new: nothing changes.
        assert_eq!(
            w.verify((4, 1_000), &[]).unwrap(),
            CaughtUp { nonce: 4, total: 1_000, last_receipt: None }
        );
    }

    #[test]
    fn an_older_price_version_is_bounded_by_the_cap_only() {
        let w = world();
        let mut v = w.voucher(1, 0);
        v.price_version = 1;
        let ok = w.item_with_fee(&v, (1, 1), CAP, Some(&w.user));
        assert_eq!(w.verify((0, 0), &[ok]).unwrap().total, CAP);
        let above = w.item_with_fee(&v, (1, 1), CAP + 1, Some(&w.user));
        assert!(matches!(
            w.verify((0, 0), &[above]),
            Err(CatchUpError::Receipt { source: ReceiptError::AboveCap { .. }, .. })
        ));
        // At the current version the formula holds too.
        let v = w.voucher(1, 0);
        let off = w.item_with_fee(&v, (1, 1), 5_001, Some(&w.user));
        assert!(matches!(
            w.verify((0, 0), &[off]),
            Err(CatchUpError::Receipt { source: ReceiptError::FeeFormula { .. }, .. })
        ));
    }

    /// The attack this module exists for: a provider serves a receipt for a request never made
    /// with a fee of 10^24 so that the next voucher signs it as spent.
    #[test]
    fn a_receipt_the_user_did_not_pay_for_is_refused() {
        let w = world();
        let from = (4, 1_000);
        let huge: Balance = 1_000_000_000_000 * UNIT; // 10^24
        let v = w.voucher(5, 1_000);

        // No voucher at all.
        let bare = w.item_with_fee(&v, (1, 1), huge, None);
        assert_eq!(w.verify(from, &[bare]), Err(CatchUpError::NoVoucher(5)));
        // A voucher signed by someone else (the provider's own key, or Eve's).
        for signer in [&w.provider, &w.eve] {
            let forged = w.item(&v, (1, 1), Some(signer));
            assert_eq!(w.verify(from, &[forged]), Err(CatchUpError::NotYourVoucher(5)));
        }
        // The user's voucher, but the fee is far above its cap: off the price formula, and
        // above the cap even where the formula is not checked (an older price version).
        let over = w.item_with_fee(&v, (1, 1), huge, Some(&w.user));
        assert!(matches!(
            w.verify(from, &[over]),
            Err(CatchUpError::Receipt { nonce: 5, source: ReceiptError::FeeFormula { .. } })
        ));
        let mut old_prices = v.clone();
        old_prices.price_version = 1;
        let over = w.item_with_fee(&old_prices, (1, 1), huge, Some(&w.user));
        assert!(matches!(
            w.verify(from, &[over]),
            Err(CatchUpError::Receipt { nonce: 5, source: ReceiptError::AboveCap { .. } })
        ));
        // Even at the formula's prices, more tokens than the cap pays for.
        let over = w.item(&v, (0, 2_500_001), Some(&w.user));
        assert!(matches!(
            w.verify(from, &[over]),
            Err(CatchUpError::Receipt { nonce: 5, source: ReceiptError::AboveCap { .. } })
        ));
        // The user's real voucher for nonce 3, replayed under a receipt for nonce 5.
        let old = wire::sign_voucher(&w.user, w.voucher(3, 0), &w.genesis);
        let receipt_5 = w.item(&v, (1, 1), None).with_voucher(&old);
        assert_eq!(
            w.verify(from, &[receipt_5]),
            Err(CatchUpError::VoucherNonce { nonce: 5, voucher: 3 })
        );
        // A voucher for another request than the one the receipt answers.
        let mut other = w.voucher(5, 1_000);
        other.request_hash = H256::repeat_byte(1);
        let mismatched =
            w.item(&v, (1, 1), None).with_voucher(&wire::sign_voucher(&w.user, other, &w.genesis));
        assert!(matches!(
            w.verify(from, &[mismatched]),
            Err(CatchUpError::Receipt {
                source: ReceiptError::Mismatch { field: "request_hash", .. },
                ..
            })
        ));
        // A voucher signed on another chain.
        let foreign = w.item(&v, (1, 1), None).with_voucher(&wire::sign_voucher(
            &w.user,
            v.clone(),
            &H256::zero(),
        ));
        assert_eq!(w.verify(from, &[foreign]), Err(CatchUpError::NotYourVoucher(5)));
    }

    #[test]
    fn totals_must_continue_from_the_verified_one() {
        let w = world();
        // The voucher claims the user had seen more than the verified total.
        let v = w.voucher(5, 2_000);
        let r = w.item(&v, (1, 1), Some(&w.user));
        assert_eq!(
            w.verify((4, 1_000), &[r]),
            Err(CatchUpError::SpentAbove { nonce: 5, spent: 2_000, total: 1_000 })
        );
        // A skipped nonce, or one already verified.
        let v = w.voucher(7, 1_000);
        let r = w.item(&v, (1, 1), Some(&w.user));
        assert_eq!(w.verify((4, 1_000), &[r]), Err(CatchUpError::Gap { after: 4, got: 7 }));
        let v = w.voucher(4, 1_000);
        let r = w.item(&v, (1, 1), Some(&w.user));
        assert_eq!(w.verify((4, 1_000), &[r]), Err(CatchUpError::Gap { after: 4, got: 4 }));
        // A good receipt followed by a bad one: nothing at all is adopted.
        let v5 = w.voucher(5, 1_000);
        let good = w.item(&v5, (1, 1), Some(&w.user));
        let v6 = w.voucher(6, 6_000);
        let bad = w.item_with_fee(&v6, (1, 1), CAP * 2, Some(&w.user));
        assert!(w.verify((4, 1_000), &[good, bad]).is_err());
    }
}
