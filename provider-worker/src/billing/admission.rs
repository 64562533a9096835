//! Voucher admission: the protocol's rules for taking a request, as a pure function of the
//! voucher, the chain's view of the escrow and service, and the store's view of the user. It
//! runs inside the store transaction that takes the nonce, so two requests can never both pass
//! against the same state.

use compute_client::{EscrowState, ServiceInfo};
use compute_primitives::{Balance, Nonce, ServiceKind, Voucher};
use polkadot_sdk::sp_core::H256;
use serde_json::json;

use crate::store::UserView;

/// What the request needs, as the worker measured it.
#[derive(Debug, Clone)]
pub struct Needs<'a> {
    /// The service the voucher names, if registered.
    pub service: Option<&'a ServiceInfo>,
    /// The kind of endpoint called.
    pub kind: ServiceKind,
    /// blake2-256 of the body received.
    pub body_hash: H256,
    /// Model named in the body.
    pub model: &'a str,
    /// Prompt tokens counted with the model's tokenizer.
    pub prompt_tokens: u64,
    /// `max_tokens` asked for.
    pub max_tokens: u64,
}

/// A request that may run, with its output budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// `max_tokens` lowered so the fee cannot exceed the cap.
    pub max_tokens: u64,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable code.
    pub code: &'static str,
    /// What is wrong, for people.
    pub message: String,
    /// Values the worker expected.
    pub expected: Option<serde_json::Value>,
    /// Whether the nonce is used up by this rejection (a fee-0 receipt is signed). False when
    /// the voucher is not one this worker can take at all (wrong nonce); then the user may
    /// retry the same nonce.
    pub uses_nonce: bool,
}

/// Longest message a rejection carries: messages may quote the request, and a refused request's
/// answer is stored with its fee-0 receipt, so an echo of a large body must not reach the store.
pub const MAX_MESSAGE: usize = 256;

/// `text` cut to at most `MAX_MESSAGE` bytes on a character boundary.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

impl Rejection {
    fn new(status: u16, code: &'static str, message: String) -> Self {
        Rejection { status, code, message: bounded(message), expected: None, uses_nonce: true }
    }

    fn expecting(mut self, expected: serde_json::Value) -> Self {
        self.expected = Some(expected);
        self
    }

    /// A rejection that leaves the nonce free.
    pub fn keeps_nonce(mut self) -> Self {
        self.uses_nonce = false;
        self
    }

    /// A malformed request body (or one that cannot be served as asked).
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Rejection::new(400, code, message.into())
    }
}

/// The next nonce a user must use: one above everything taken, and above what the chain has
/// settled (a store that lost its history must not reuse settled nonces).
pub fn next_nonce(view: &UserView, escrow: Option<&EscrowState>) -> Nonce {
    view.seq.last_nonce.max(escrow.map_or(0, |e| e.settled_nonce)).saturating_add(1)
}

/// Check the sequencing part of a voucher (nonce, window). Failures keep the nonce.
pub fn check_sequence(
    v: &Voucher,
    view: &UserView,
    escrow: Option<&EscrowState>,
    window: u32,
) -> Result<(), Rejection> {
    let expected = next_nonce(view, escrow);
    if v.nonce != expected {
        let code = if v.nonce < expected { "stale_nonce" } else { "nonce_gap" };
        return Err(Rejection::new(
            409,
            code,
            format!("voucher nonce {} is not the next one, {expected}", v.nonce),
        )
        .expecting(json!({ "nonce": expected }))
        .keeps_nonce());
    }
    if view.in_flight >= window.max(1) {
        return Err(Rejection::new(
            429,
            "too_many_in_flight",
            format!("{} requests already in flight (window {window})", view.in_flight),
        )
        .keeps_nonce());
    }
    Ok(())
}

/// The totals a voucher's `spent` may name: those of the receipts within the window, or 0
/// before the first receipt.
fn allowed_spent(view: &UserView, v: &Voucher, window: u32) -> Vec<Balance> {
    let lowest = v.nonce.saturating_sub(u64::from(window.max(1)));
    let mut allowed: Vec<Balance> =
        view.recent_totals.iter().filter(|(n, _)| *n >= lowest).map(|(_, t)| *t).collect();
    // total(0) = 0: before the first receipt, or when the window reaches back to it.
    if lowest == 0 || view.seq.sealed_nonce == 0 {
        allowed.push(0);
    }
    allowed
}

/// The user's escrow with this provider, or the refusal of a key that has none: it keeps the
/// nonce, so nothing of that key is stored.
pub fn require_escrow<'a>(
    v: &Voucher,
    escrow: Option<&'a EscrowState>,
) -> Result<&'a EscrowState, Rejection> {
    escrow.ok_or_else(|| {
        Rejection::new(
            402,
            "no_escrow",
            format!("no escrow with this provider; deposit at least {}", v.cap),
        )
        .expecting(json!({ "deposit": v.cap.to_string() }))
        .keeps_nonce()
    })
}

/// Full admission of a paying request whose signature, provider and nonce already passed.
pub fn admit(
    v: &Voucher,
    needs: &Needs<'_>,
    view: &UserView,
    escrow: Option<&EscrowState>,
    window: u32,
) -> Result<Admitted, Rejection> {
    check_sequence(v, view, escrow, window)?;
    // Before anything that would use the nonce: a key with no escrow here stores nothing (a
    // swarm of throwaway keys must not fill the trace store or the settlement plan).
    let escrow = require_escrow(v, escrow)?;
    let Some(service) = needs.service else {
        return Err(Rejection::new(
            404,
            "unknown_service",
            format!("this provider has no service {}", v.service_id),
        ));
    };
    if service.kind != needs.kind {
        return Err(Rejection::new(
            400,
            "wrong_service_kind",
            format!("service {} is not a {:?} service", v.service_id, needs.kind),
        ));
    }
    if needs.model != service.model {
        return Err(Rejection::new(
            404,
            "model_not_found",
            format!("service {} serves `{}`, not `{}`", v.service_id, service.model, needs.model),
        )
        .expecting(json!({ "model": service.model })));
    }
    if v.price_version != service.price_version {
        return Err(Rejection::new(
            409,
            "price_version_mismatch",
            format!(
                "voucher accepts price version {}, the service is at {}",
                v.price_version, service.price_version
            ),
        )
        .expecting(json!({ "price_version": service.price_version })));
    }
    if v.request_hash != needs.body_hash {
        return Err(Rejection::new(
            400,
            "request_hash_mismatch",
            "the voucher's request_hash is not blake2-256 of this request body".into(),
        )
        .expecting(json!({ "request_hash": format!("{:?}", needs.body_hash) })));
    }
    let allowed = allowed_spent(view, v, window);
    if !allowed.contains(&v.spent) {
        let latest = view.seq.last_total;
        return Err(Rejection::new(
            409,
            "spent_mismatch",
            format!("voucher spent {} is not the total of a recent receipt ({latest})", v.spent),
        )
        .expecting(json!({ "spent": latest.to_string() })));
    }

    let input_fee = u128::from(needs.prompt_tokens)
        .checked_mul(service.input_price)
        .ok_or_else(|| Rejection::new(400, "overflow", "input fee overflows".into()))?;
    // A chat must afford its prompt and one output token; embeddings have no output.
    let (least, what) = match needs.kind {
        ServiceKind::Chat => {
            (input_fee.saturating_add(service.output_price), " and one output token")
        }
        ServiceKind::Embedding | ServiceKind::FineTune => (input_fee, ""),
    };
    if v.cap < least {
        return Err(Rejection::new(
            402,
            "cap_too_low",
            format!(
                "cap {} does not cover {} prompt tokens{what} ({least})",
                v.cap, needs.prompt_tokens
            ),
        )
        .expecting(json!({ "cap": least.to_string() })));
    }
    let budget = v.cap - input_fee;
    let max_tokens = match budget.checked_div(service.output_price) {
        Some(fit) => needs.max_tokens.min(u64::try_from(fit).unwrap_or(u64::MAX)),
        None => needs.max_tokens,
    };

    let owed = view.seq.last_total.saturating_sub(escrow.settled_total);
    let committed = owed.saturating_add(view.in_flight_caps).saturating_add(v.cap);
    let spendable = escrow.spendable();
    if spendable < committed {
        let missing = committed - spendable;
        return Err(Rejection::new(
            402,
            "insufficient_escrow",
            format!(
                "escrow spendable {spendable} is below owed {owed} + in flight {} + cap {}; \
                 deposit at least {missing} more",
                view.in_flight_caps, v.cap
            ),
        )
        .expecting(json!({ "deposit": missing.to_string() })));
    }
    Ok(Admitted { max_tokens })
}

/// Admission of a closing ack (`cap = 0`, `request_hash = 0`, `spent` = the latest total).
pub fn admit_ack(
    v: &Voucher,
    view: &UserView,
    escrow: Option<&EscrowState>,
    window: u32,
) -> Result<(), Rejection> {
    check_sequence(v, view, escrow, window)?;
    // An ack states the latest total: with a request still in flight (window above 1) there is
    // none yet, and sealing the ack first would put it ahead of that request's receipt.
    if view.in_flight > 0 {
        return Err(Rejection::new(
            409,
            "request_in_flight",
            format!(
                "{} request(s) of this user are still being served; ack after them",
                view.in_flight
            ),
        )
        .keeps_nonce());
    }
    if v.cap != 0 || v.request_hash != H256::zero() {
        return Err(Rejection::new(
            400,
            "not_an_ack",
            "an ack has cap 0 and a zero request_hash".into(),
        ));
    }
    if v.spent != view.seq.last_total {
        return Err(Rejection::new(
            409,
            "spent_mismatch",
            format!("an ack's spent must be the latest total {}", view.seq.last_total),
        )
        .expecting(json!({ "spent": view.seq.last_total.to_string() })));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Sequence;
    use compute_primitives::AccountId;

    fn service() -> ServiceInfo {
        ServiceInfo {
            provider: AccountId::new([2; 32]),
            service_id: 0,
            kind: ServiceKind::Chat,
            model: "m".into(),
            model_hash: Default::default(),
            url: "http://x".into(),
            input_price: 10,
            output_price: 100,
            verifiability: String::new(),
            price_version: 1,
        }
    }

    fn voucher(nonce: Nonce, spent: Balance, cap: Balance) -> Voucher {
        Voucher {
            user: AccountId::new([1; 32]),
            provider: AccountId::new([2; 32]),
            service_id: 0,
            price_version: 1,
            nonce,
            request_hash: H256::repeat_byte(9),
            spent,
            cap,
        }
    }

    fn escrow(balance: Balance) -> EscrowState {
        EscrowState { balance, ..Default::default() }
    }

    fn view(last_nonce: Nonce, last_total: Balance) -> UserView {
        UserView {
            seq: Sequence { last_nonce, last_total, sealed_nonce: last_nonce },
            recent_totals: if last_nonce > 0 { vec![(last_nonce, last_total)] } else { vec![] },
            in_flight_caps: 0,
            in_flight: 0,
        }
    }

    fn needs(s: &ServiceInfo) -> Needs<'_> {
        Needs {
            service: Some(s),
            kind: ServiceKind::Chat,
            body_hash: H256::repeat_byte(9),
            model: "m",
            prompt_tokens: 20,
            max_tokens: 1000,
        }
    }

    #[test]
    fn max_tokens_is_lowered_to_fit_the_cap() {
        let s = service();
        // 20 prompt tokens cost 200; 1000 left buys 10 output tokens.
        let ok = admit(&voucher(1, 0, 1_200), &needs(&s), &view(0, 0), Some(&escrow(10_000)), 1);
        assert_eq!(ok, Ok(Admitted { max_tokens: 10 }));
        let mut n = needs(&s);
        n.max_tokens = 3;
        let ok = admit(&voucher(1, 0, 1_200), &n, &view(0, 0), Some(&escrow(10_000)), 1);
        assert_eq!(ok, Ok(Admitted { max_tokens: 3 }));
    }

    #[test]
    fn an_embedding_needs_only_its_input_fee_and_no_output_budget() {
        let mut s = service();
        s.kind = ServiceKind::Embedding;
        let mut n = needs(&s);
        n.kind = ServiceKind::Embedding;
        n.max_tokens = 0;
        // 20 input tokens at 10 cost exactly 200: a cap of 200 suffices, 199 does not.
        let ok = admit(&voucher(1, 0, 200), &n, &view(0, 0), Some(&escrow(10_000)), 1);
        assert_eq!(ok, Ok(Admitted { max_tokens: 0 }));
        let low = admit(&voucher(1, 0, 199), &n, &view(0, 0), Some(&escrow(10_000)), 1);
        let low = low.expect_err("refused");
        assert_eq!((low.status, low.code), (402, "cap_too_low"));
        assert_eq!(low.expected, Some(json!({ "cap": "200" })));
        // A chat voucher sent to the embeddings endpoint (or the reverse) names the wrong kind.
        let chat = service();
        let wrong = admit(
            &voucher(1, 0, 200),
            &Needs { service: Some(&chat), ..n },
            &view(0, 0),
            Some(&escrow(10_000)),
            1,
        );
        assert_eq!(wrong.map_err(|r| r.code), Err("wrong_service_kind"));
    }

    #[test]
    fn each_refusal_has_its_code() {
        let s = service();
        let e = escrow(10_000);
        let code = |v: Voucher, n: Needs<'_>, view: UserView, e: Option<&EscrowState>| {
            admit(&v, &n, &view, e, 1).map_err(|r| (r.status, r.code, r.uses_nonce))
        };
        assert_eq!(
            code(voucher(1, 0, 299), needs(&s), view(0, 0), Some(&e)),
            Err((402, "cap_too_low", true))
        );
        assert_eq!(
            code(voucher(3, 50, 1_000), needs(&s), view(3, 50), Some(&e)),
            Err((409, "stale_nonce", false))
        );
        assert_eq!(
            code(voucher(5, 50, 1_000), needs(&s), view(3, 50), Some(&e)),
            Err((409, "nonce_gap", false))
        );
        assert_eq!(
            code(voucher(4, 49, 1_000), needs(&s), view(3, 50), Some(&e)),
            Err((409, "spent_mismatch", true))
        );
        let mut v = voucher(4, 50, 1_000);
        v.price_version = 0;
        assert_eq!(
            code(v, needs(&s), view(3, 50), Some(&e)),
            Err((409, "price_version_mismatch", true))
        );
        let mut n = needs(&s);
        n.body_hash = H256::zero();
        assert_eq!(
            code(voucher(4, 50, 1_000), n, view(3, 50), Some(&e)),
            Err((400, "request_hash_mismatch", true))
        );
        let mut n = needs(&s);
        n.model = "other";
        assert_eq!(
            code(voucher(4, 50, 1_000), n, view(3, 50), Some(&e)),
            Err((404, "model_not_found", true))
        );
        let mut n = needs(&s);
        n.service = None;
        assert_eq!(
            code(voucher(4, 50, 1_000), n, view(3, 50), Some(&e)),
            Err((404, "unknown_service", true))
        );
        assert_eq!(
            code(voucher(1, 0, 1_000), needs(&s), view(0, 0), None),
            Err((402, "no_escrow", false))
        );
        // Spendable 1000 < owed 50 + cap 1000.
        assert_eq!(
            code(voucher(4, 50, 1_000), needs(&s), view(3, 50), Some(&escrow(1_000))),
            Err((402, "insufficient_escrow", true))
        );
        let mut busy = view(3, 50);
        busy.in_flight = 1;
        assert_eq!(
            code(voucher(4, 50, 1_000), needs(&s), busy, Some(&e)),
            Err((429, "too_many_in_flight", false))
        );
    }

    #[test]
    fn pending_refund_and_in_flight_caps_reduce_what_can_be_committed() {
        let s = service();
        let mut e = escrow(3_000);
        e.pending_refund = 1_000;
        let mut v = view(3, 50);
        v.in_flight_caps = 900;
        // spendable 2000 < owed 50 + in flight 900 + cap 1100
        let err = admit(&voucher(4, 50, 1_100), &needs(&s), &v, Some(&e), 2).unwrap_err();
        assert_eq!(err.code, "insufficient_escrow");
        assert_eq!(err.expected, Some(json!({ "deposit": "50" })));
        assert!(admit(&voucher(4, 50, 1_050), &needs(&s), &v, Some(&e), 2).is_ok());
    }

    #[test]
    fn nonces_continue_above_what_the_chain_settled() {
        let s = service();
        let mut e = escrow(10_000);
        e.settled_nonce = 7;
        let err = admit(&voucher(1, 0, 1_000), &needs(&s), &view(0, 0), Some(&e), 1).unwrap_err();
        assert_eq!(err.expected, Some(json!({ "nonce": 8 })));
    }

    #[test]
    fn window_allows_spent_of_an_older_receipt() {
        let s = service();
        let mut v = view(5, 500);
        v.recent_totals = vec![(5, 500), (4, 400)];
        let e = escrow(100_000);
        assert!(admit(&voucher(6, 400, 1_000), &needs(&s), &v, Some(&e), 2).is_ok());
        assert!(admit(&voucher(6, 400, 1_000), &needs(&s), &v, Some(&e), 1).is_err());
    }

    #[test]
    fn acks() {
        let mut ack = voucher(4, 50, 0);
        ack.request_hash = H256::zero();
        assert_eq!(admit_ack(&ack, &view(3, 50), None, 1), Ok(()));
        ack.spent = 40;
        assert_eq!(admit_ack(&ack, &view(3, 50), None, 1).unwrap_err().code, "spent_mismatch");
        // With window 2 and a request in flight, an ack waits for it.
        ack.spent = 50;
        let mut busy = view(3, 50);
        busy.in_flight = 1;
        let r = admit_ack(&ack, &busy, None, 2).unwrap_err();
        assert_eq!((r.status, r.code, r.uses_nonce), (409, "request_in_flight", false));
    }

    #[test]
    fn unfunded_keys_use_no_nonce_whatever_else_is_wrong() {
        let s = service();
        let mut n = needs(&s);
        n.body_hash = H256::zero();
        n.model = "other";
        let r = admit(&voucher(1, 0, 1), &n, &view(0, 0), None, 1).unwrap_err();
        assert_eq!((r.code, r.uses_nonce), ("no_escrow", false));
    }

    #[test]
    fn messages_are_bounded() {
        let r = Rejection::bad_request("x", "é".repeat(10_000));
        assert!(r.message.len() <= MAX_MESSAGE, "{}", r.message.len());
        assert!(r.message.ends_with("..."));
    }
}
