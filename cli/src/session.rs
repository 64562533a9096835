//! A paying session with one provider: picks the service, signs each voucher from the local
//! state (next nonce, `spent` = the last verified total), checks every receipt the provider
//! returns, and records it. Shared by `chat` (one-shot and interactive) and `proxy`.

use crate::state::{ProviderState, State};
use anyhow::{anyhow, bail, Context};
use compute_client::{
    wire::{self, ErrorBody, ReceiptJson},
    Chain, ServiceInfo, Signer,
};
use compute_primitives::{AccountId, Balance, ServiceId, ServiceKind, SignedReceipt, Voucher};
use polkadot_sdk::sp_core::H256;
use std::path::PathBuf;

/// Smallest units per token.
pub const UNIT: Balance = 1_000_000_000_000;

/// An amount as `1.500000000000 unit`.
pub fn show(amount: Balance) -> String {
    format!("{}.{:012} unit", amount / UNIT, amount % UNIT)
}

/// One user paying one provider.
pub struct Session {
    pub chain: Chain,
    pub signer: Signer,
    pub provider: AccountId,
    pub genesis: H256,
    pub state_path: PathBuf,
    pub http: reqwest::Client,
    /// Recount every answer's tokens with the model's tokenizer (`--recount-model`).
    pub recount: Option<crate::recount::Recounter>,
    /// Recount every embeddings request's input tokens (`--recount-embedding-model`).
    pub recount_embeddings: Option<crate::recount::EmbeddingRecounter>,
}

/// A voucher signed for one request, waiting for its receipt.
pub struct Signed {
    pub voucher: Voucher,
    /// The `x-compute-voucher` header value.
    pub header: String,
    pub service: ServiceInfo,
}

/// Why a provider's answer was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The provider refused the request (OpenAI-style error, with a fee-0 receipt when the
    /// nonce was used); the state has been updated.
    #[error("provider refused ({status} {code}): {message}{hint}")]
    Refused { status: u16, code: String, message: String, hint: String, body: serde_json::Value },
    /// The receipt did not verify: the provider is now distrusted.
    #[error(
        "the provider's receipt does not verify ({0}); no more vouchers will be signed for it"
    )]
    BadReceipt(String),
    /// Anything else (transport, state file, malformed answer).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Session {
    /// Connect the pieces; `provider` must have at least one service.
    pub fn new(chain: Chain, signer: Signer, provider: AccountId, state_path: PathBuf) -> Self {
        let genesis = chain.genesis_hash();
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Session {
            chain,
            signer,
            provider,
            genesis,
            state_path,
            http,
            recount: None,
            recount_embeddings: None,
        }
    }

    /// The provider's service: by id, else by model name, else its first chat service.
    pub async fn service(
        &self,
        id: Option<ServiceId>,
        model: Option<&str>,
    ) -> anyhow::Result<ServiceInfo> {
        let services = self.chain.services_of(&self.provider).await?;
        let found = match (id, model) {
            (Some(id), _) => services.iter().find(|s| s.service_id == id),
            (None, Some(m)) => services.iter().find(|s| s.model == m),
            (None, None) => services.first(),
        };
        found.cloned().ok_or_else(|| {
            let models: Vec<_> = services.iter().map(|s| s.model.as_str()).collect();
            match (id, model) {
                (Some(id), _) => {
                    anyhow!("{} has no service #{id} (see `compute services`)", self.provider)
                }
                (None, Some(m)) => anyhow!(
                    "{} serves no model `{m}`; it serves: {}",
                    self.provider,
                    if models.is_empty() { "nothing".into() } else { models.join(", ") }
                ),
                (None, None) => {
                    anyhow!("{} has no services (see `compute services`)", self.provider)
                }
            }
        })
    }

    /// The provider's service `id`, else its first service of `kind`.
    pub async fn service_of_kind(
        &self,
        id: Option<ServiceId>,
        kind: ServiceKind,
    ) -> anyhow::Result<ServiceInfo> {
        if id.is_some() {
            return self.service(id, None).await;
        }
        let services = self.chain.services_of(&self.provider).await?;
        services.into_iter().find(|s| s.kind == kind).ok_or_else(|| {
            anyhow!("{} has no {kind:?} service (see `compute services`)", self.provider)
        })
    }

    /// Sign the voucher of the next request with `body` (the exact bytes sent) and `cap`.
    /// Refuses when the provider is distrusted or the escrow is missing.
    pub async fn sign(
        &self,
        service: &ServiceInfo,
        body: &[u8],
        cap: Balance,
    ) -> anyhow::Result<Signed> {
        self.sign_with(service, wire::request_hash(body), cap).await
    }

    /// Sign the next voucher with an explicit request hash (zero for an ack).
    pub async fn sign_with(
        &self,
        service: &ServiceInfo,
        request_hash: H256,
        cap: Balance,
    ) -> anyhow::Result<Signed> {
        let user = self.signer.account_id();
        let escrow = self.chain.escrow(&user, &self.provider, None).await?.ok_or_else(|| {
            anyhow!(
                "no escrow with {p}; deposit at least {} first: `compute deposit {p} <amount>`",
                show(cap),
                p = self.provider
            )
        })?;
        let mut all = State::load(self.state_path.clone())?;
        let st = all.entry(&user.to_string(), &self.provider.to_string());
        refuse_if_distrusted(st, &self.provider)?;
        if st.nonce < escrow.settled_nonce {
            // Another client used this account: continue from the chain's view.
            st.nonce = escrow.settled_nonce;
            st.total = st.total.max(escrow.last_claimed_total);
            all.save()?;
        }
        let st = all.entry(&user.to_string(), &self.provider.to_string());
        let voucher = Voucher {
            user,
            provider: self.provider.clone(),
            service_id: service.service_id,
            price_version: service.price_version,
            nonce: st.nonce + 1,
            request_hash,
            spent: st.total,
            cap,
        };
        let header =
            wire::to_hex(&wire::sign_voucher(&self.signer, voucher.clone(), &self.genesis));
        Ok(Signed { voucher, header, service: service.clone() })
    }

    /// Check the receipt for `signed` (and, with `text`, that it covers exactly that text; with
    /// `asked`, the request's JSON, and a recounter, that its token counts hold up); record it,
    /// or distrust the provider when it does not verify.
    pub fn record(
        &self,
        signed: &Signed,
        receipt: &ReceiptJson,
        text: Option<&str>,
        asked: Option<&serde_json::Value>,
    ) -> Result<SignedReceipt, AnswerError> {
        self.ledger().record(signed, receipt, text, asked)
    }

    fn ledger(&self) -> Ledger<'_> {
        Ledger {
            state_path: &self.state_path,
            user: self.signer.account_id(),
            provider: &self.provider,
            genesis: &self.genesis,
            recount: self.recount.as_ref(),
        }
    }

    /// Check the receipt of an embeddings answer: besides the usual checks, it covers exactly
    /// the vectors received (`response_hash`, see [`wire::embedding_hash`]), bills no output,
    /// and (with a recounter and the request's `input`) counts the input tokens right.
    pub fn record_embeddings(
        &self,
        signed: &Signed,
        receipt: &ReceiptJson,
        vectors_hash: H256,
        input: Option<&serde_json::Value>,
    ) -> Result<SignedReceipt, AnswerError> {
        self.ledger().record_checked(signed, receipt, |r| {
            if r.receipt.response_hash != vectors_hash {
                Err("its response hash does not match the vectors received".to_string())
            } else if r.receipt.output_tokens != 0 {
                Err("an embeddings receipt bills output tokens".to_string())
            } else {
                match (&self.recount_embeddings, input) {
                    (Some(rc), Some(input)) if r.receipt.fee != 0 => {
                        rc.check(input, &r.receipt).map(|()| r)
                    }
                    _ => Ok(r),
                }
            }
        })
    }

    /// A non-2xx answer: record its fee-0 receipt (if the nonce was used) and explain.
    pub fn refused(&self, signed: &Signed, status: u16, body: serde_json::Value) -> AnswerError {
        let Ok(err) = serde_json::from_value::<ErrorBody>(body.clone()) else {
            return AnswerError::Other(anyhow!("provider answered {status}: {body}"));
        };
        if let Some(r) = &err.error.receipt {
            if let Err(e) = self.record(signed, r, None, None) {
                return e;
            }
        }
        let hint = match err.error.code.as_str() {
            "insufficient_escrow" | "no_escrow" => format!(
                "; deposit at least {} more: `compute deposit {} <amount>`",
                err.error
                    .expected
                    .as_ref()
                    .and_then(|e| e["deposit"].as_str())
                    .and_then(|d| d.parse().ok())
                    .map_or("?".into(), show),
                self.provider
            ),
            _ => String::new(),
        };
        AnswerError::Refused {
            status,
            code: err.error.code,
            message: err.error.message,
            hint,
            body,
        }
    }

    /// POST `body` to the service's `path` with the voucher.
    pub async fn send(
        &self,
        signed: &Signed,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", signed.service.url.trim_end_matches('/'));
        self.http
            .post(&url)
            .header(wire::VOUCHER_HEADER, &signed.header)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the provider at {}", signed.service.url))
    }

    /// The receipts the provider holds for us after `after` (signed challenge), each verified.
    pub async fn fetch_receipts(
        &self,
        after: u64,
    ) -> anyhow::Result<Vec<(ReceiptJson, SignedReceipt)>> {
        let svc = self.service(None, None).await?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let auth = wire::SignedAuth::new(&self.signer, self.provider.clone(), now, &self.genesis);
        let resp = self
            .http
            .get(format!("{}/v1/receipts?after={after}", svc.url.trim_end_matches('/')))
            .header(wire::AUTH_HEADER, wire::to_hex(&auth))
            .send()
            .await
            .with_context(|| format!("cannot reach the provider at {}", svc.url))?;
        let status = resp.status();
        let value: serde_json::Value =
            resp.json().await.context("the provider's answer is not JSON")?;
        if !status.is_success() {
            bail!("provider refused ({status}): {value}");
        }
        let list: Vec<ReceiptJson> = serde_json::from_value(value["data"].clone())?;
        let user = self.signer.account_id();
        list.into_iter()
            .map(|r| {
                let signed: SignedReceipt =
                    wire::from_hex("receipt", &r.signed).map_err(|e| anyhow!("{e}"))?;
                if !signed.verify(&self.genesis)
                    || signed.receipt.provider != self.provider
                    || signed.receipt.user != user
                {
                    bail!("receipt #{} from {} does not verify", r.nonce, self.provider);
                }
                Ok((r, signed))
            })
            .collect()
    }

    /// After a `stale_nonce`/`nonce_gap` refusal (another client of this account, or an answer
    /// lost in transit): adopt the provider's latest receipt for us, once its signature and the
    /// running totals check out. Returns the nonce now continued from.
    pub async fn resync(&self) -> anyhow::Result<u64> {
        let user = self.signer.account_id();
        let mut all = State::load(self.state_path.clone())?;
        let st = all.entry(&user.to_string(), &self.provider.to_string());
        let receipts = self.fetch_receipts(st.nonce).await?;
        let (mut nonce, mut total) = (st.nonce, st.total);
        for (json, r) in receipts {
            let r = &r.receipt;
            if r.nonce != nonce + 1 || total.checked_add(r.fee) != Some(r.total) {
                bail!(
                    "the provider's receipts do not continue from nonce {nonce} and total {}",
                    show(total)
                );
            }
            (nonce, total) = (r.nonce, r.total);
            st.last_receipt = Some(json.signed);
        }
        (st.nonce, st.total) = (nonce, total);
        all.save()?;
        Ok(nonce)
    }
}

/// What `record` needs: the state file, whose receipts, and how to check them.
struct Ledger<'a> {
    state_path: &'a std::path::Path,
    user: AccountId,
    provider: &'a AccountId,
    genesis: &'a H256,
    recount: Option<&'a crate::recount::Recounter>,
}

impl Ledger<'_> {
    fn record(
        &self,
        signed: &Signed,
        receipt: &ReceiptJson,
        text: Option<&str>,
        asked: Option<&serde_json::Value>,
    ) -> Result<SignedReceipt, AnswerError> {
        self.record_checked(signed, receipt, |r| match text {
            Some(t) if r.receipt.response_hash != wire::response_hash(t) => {
                Err("its response hash does not match the text received".to_string())
            }
            Some(t) => match (self.recount, asked) {
                (Some(rc), Some(req)) if r.receipt.fee != 0 => {
                    let max = req["max_tokens"].as_u64().or(req["max_completion_tokens"].as_u64());
                    rc.check(&req["messages"], max, t, &r.receipt).map(|()| r)
                }
                _ => Ok(r),
            },
            None => Ok(r),
        })
    }

    /// Check `receipt` (signature, sequence, fee) and then `also`; record it, or distrust the
    /// provider.
    fn record_checked(
        &self,
        signed: &Signed,
        receipt: &ReceiptJson,
        also: impl FnOnce(SignedReceipt) -> Result<SignedReceipt, String>,
    ) -> Result<SignedReceipt, AnswerError> {
        let mut all = State::load(self.state_path.to_path_buf())?;
        let st = all.entry(&self.user.to_string(), &self.provider.to_string());
        let checked = check(st, signed, receipt, self.genesis).and_then(also);
        let result = match checked {
            Ok(r) => {
                st.nonce = signed.voucher.nonce;
                st.total = r.receipt.total;
                st.last_receipt = Some(receipt.signed.clone());
                Ok(r)
            }
            Err(why) => {
                st.distrusted = Some(why.clone());
                Err(AnswerError::BadReceipt(why))
            }
        };
        all.save()?;
        result
    }
}

/// No voucher for a provider whose receipt once failed: say why.
fn refuse_if_distrusted(st: &ProviderState, provider: &AccountId) -> anyhow::Result<()> {
    match &st.distrusted {
        Some(why) => bail!(
            "refusing to sign vouchers for {provider}: an earlier receipt did not verify ({why})"
        ),
        None => Ok(()),
    }
}

fn check(
    st: &ProviderState,
    signed: &Signed,
    json: &ReceiptJson,
    genesis: &H256,
) -> Result<SignedReceipt, String> {
    let r = wire::from_hex::<SignedReceipt>("receipt", &json.signed).map_err(|e| e.to_string())?;
    let prices = (signed.service.input_price, signed.service.output_price);
    wire::check_receipt(&r, &signed.voucher, genesis, prices, st.total)
        .map_err(|e| e.to_string())?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use compute_primitives::{Receipt, ServiceKind};

    fn service(provider: &Signer) -> ServiceInfo {
        ServiceInfo {
            provider: provider.account_id(),
            service_id: 0,
            kind: ServiceKind::Chat,
            model: "m".into(),
            url: "http://127.0.0.1:1".into(),
            input_price: 2,
            output_price: 10,
            verifiability: "none".into(),
            price_version: 0,
        }
    }

    fn voucher(user: &Signer, provider: &Signer, nonce: u64, spent: Balance) -> Voucher {
        Voucher {
            user: user.account_id(),
            provider: provider.account_id(),
            service_id: 0,
            price_version: 0,
            nonce,
            request_hash: wire::request_hash(b"{}"),
            spent,
            cap: 1_000,
        }
    }

    fn receipt(v: &Voucher, text: &str, fee: Balance) -> Receipt {
        Receipt {
            user: v.user.clone(),
            provider: v.provider.clone(),
            service_id: 0,
            nonce: v.nonce,
            request_hash: v.request_hash,
            response_hash: wire::response_hash(text),
            input_tokens: 10,
            output_tokens: 5,
            fee,
            total: v.spent + fee,
        }
    }

    #[test]
    fn a_receipt_that_does_not_verify_distrusts_the_provider() {
        let dir = std::env::temp_dir().join(format!("compute-ledger-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let [user, bob, eve] = ["//Alice", "//Bob", "//Eve"].map(|k| Signer::from_uri(k).unwrap());
        let genesis = H256::repeat_byte(3);
        let path = dir.join("state.json");
        let provider = bob.account_id();
        let ledger = Ledger {
            state_path: &path,
            user: user.account_id(),
            provider: &provider,
            genesis: &genesis,
            recount: None,
        };
        let signed =
            |v: Voucher| Signed { voucher: v, header: String::new(), service: service(&bob) };
        let json =
            |r: Receipt, by: &Signer| ReceiptJson::from(&wire::sign_receipt(by, r, &genesis));
        let state = || {
            State::load(path.clone())
                .unwrap()
                .entry(&user.account_id().to_string(), &provider.to_string())
                .clone()
        };

        // A good receipt (10 x 2 + 5 x 10 = 70) is recorded.
        let v1 = voucher(&user, &bob, 1, 0);
        let ok = ledger.record(
            &signed(v1.clone()),
            &json(receipt(&v1, "hi", 70), &bob),
            Some("hi"),
            None,
        );
        assert!(ok.is_ok());
        assert_eq!((state().nonce, state().total, state().distrusted), (1, 70, None));

        // The text received is not what the receipt covers.
        let v2 = voucher(&user, &bob, 2, 70);
        let e = ledger
            .record(&signed(v2.clone()), &json(receipt(&v2, "hello", 70), &bob), Some("hi"), None)
            .unwrap_err();
        assert!(e.to_string().contains("response hash"), "{e}");
        let st = state();
        assert_eq!((st.nonce, st.total), (1, 70), "nothing recorded from a bad receipt");
        assert!(refuse_if_distrusted(&st, &provider)
            .unwrap_err()
            .to_string()
            .contains("response hash"));

        // Signed by someone else: refused and distrusted with the reason.
        std::fs::remove_file(&path).unwrap();
        let e = ledger
            .record(&signed(v1.clone()), &json(receipt(&v1, "hi", 70), &eve), Some("hi"), None)
            .unwrap_err();
        assert!(
            matches!(e, AnswerError::BadReceipt(_)) && e.to_string().contains("signature"),
            "{e}"
        );
        let why = refuse_if_distrusted(&state(), &provider).unwrap_err().to_string();
        assert!(why.contains("refusing to sign vouchers") && why.contains("signature"), "{why}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
