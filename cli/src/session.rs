//! A paying session with one provider: picks the service, signs each voucher from the local
//! state (next nonce, `spent` = the last verified total), checks every receipt the provider
//! returns, and records it. Shared by `chat` (one-shot and interactive) and `proxy`.

use crate::{
    catch_up,
    state::{ProviderState, State},
};
use anyhow::{anyhow, bail, Context};
use compute_client::{
    wire::{self, ErrorBody, ReceiptJson},
    Chain, EscrowState, ServiceInfo, Signer,
};
use compute_inference::proof::ActivationProof;
use compute_primitives::{
    AccountId, Balance, Nonce, ServiceId, ServiceKind, SignedReceipt, Voucher,
};
use polkadot_sdk::sp_core::H256;
use std::{path::PathBuf, time::Duration};

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
    /// Longest wait for a whole answer that is not streamed; a streamed one may take longer, as
    /// long as no single read waits this long.
    pub timeout: Duration,
    /// Recount every answer's tokens with the model's tokenizer (`--recount-model`).
    pub recount: Option<crate::recount::Recounter>,
    /// Recount every embeddings request's input tokens (`--recount-embedding-model`).
    pub recount_embeddings: Option<crate::recount::EmbeddingRecounter>,
}

/// A voucher signed for one request, waiting for its receipt.
pub struct Signed {
    pub voucher: Voucher,
    /// The request body the voucher's `request_hash` commits to (empty for an ack).
    pub body: Vec<u8>,
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
    /// Connect the pieces; `provider` must have at least one service. A provider that accepts
    /// a connection and then goes silent fails a request after `timeout` (see [`Session::send`]).
    pub fn new(
        chain: Chain,
        signer: Signer,
        provider: AccountId,
        state_path: PathBuf,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let genesis = chain.genesis_hash();
        let http = http_client(timeout)?;
        Ok(Session {
            chain,
            signer,
            provider,
            genesis,
            state_path,
            http,
            timeout,
            recount: None,
            recount_embeddings: None,
        })
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

    /// The provider's service of `kind` serving `model` (a fine-tuning service names the model it
    /// trains, so the name alone is not enough).
    pub async fn service_named(
        &self,
        model: &str,
        kind: ServiceKind,
    ) -> anyhow::Result<ServiceInfo> {
        let services = self.chain.services_of(&self.provider).await?;
        if let Some(s) = services.iter().find(|s| s.model == model && s.kind == kind) {
            return Ok(s.clone());
        }
        // The name alone, for the error that lists what is served.
        self.service(None, Some(model)).await
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
        let mut signed = self.sign_with(service, wire::request_hash(body), cap).await?;
        signed.body = body.to_vec();
        Ok(signed)
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
        let mut st = self.ledger().current()?;
        refuse_if_distrusted(&st, &self.provider)?;
        if st.nonce < escrow.settled_nonce {
            // The chain settled vouchers this state never saw a receipt for (another client of
            // this account, a lost answer, a new machine): continue from the provider's
            // receipts, but only those answering vouchers we signed, and never from the amount
            // the provider claimed.
            st = self.catch_up(Some(&escrow)).await?;
        }
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
        Ok(Signed { voucher, body: Vec::new(), header, service: service.clone() })
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
        let r = self.ledger().record(signed, receipt, text, asked)?;
        // A served chat answer is kept with its proof for `compute audit`. Failing to keep it
        // loses an audit, not the answer: warn and go on.
        if let (Some(text), Some(request), Some(proof)) = (text, asked, &receipt.proof) {
            let kept = crate::kept::Kept {
                nonce: signed.voucher.nonce,
                service_id: signed.voucher.service_id,
                model_hash: signed.service.model_hash,
                request: request.clone(),
                body: String::from_utf8(signed.body.clone()).ok(),
                text: text.to_string(),
                receipt: receipt.signed.clone(),
                proof: proof.clone(),
            };
            let dir = crate::kept::dir(&self.state_path, &self.signer.account_id(), &self.provider);
            if let Err(e) = crate::kept::keep(&dir, &kept) {
                eprintln!("warning: cannot keep answer {} for audit: {e:#}", kept.nonce);
            }
        }
        Ok(r)
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
            return AnswerError::Other(anyhow!(
                "provider answered {status}: {}",
                untrusted_text(&body.to_string())
            ));
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
            code: untrusted_text(&err.error.code),
            message: untrusted_text(&err.error.message),
            hint,
            body,
        }
    }

    /// POST `body` to the service's `path` with the voucher. A request that asks for a stream
    /// (`"stream": true`) may run as long as the provider keeps sending (each read waits at most
    /// the timeout); any other must be answered in full within the timeout.
    pub async fn send(
        &self,
        signed: &Signed,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", signed.service.url.trim_end_matches('/'));
        provider_post(&self.http, &url, &signed.header, body, self.timeout)
            .send()
            .await
            .with_context(|| format!("cannot reach the provider at {}", signed.service.url))
    }

    /// One page of the receipts the provider holds for us after `after` (signed challenge),
    /// as sent: nothing verified yet.
    async fn receipt_page(
        &self,
        url: &str,
        after: Nonce,
        limit: u32,
    ) -> anyhow::Result<Vec<ReceiptJson>> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let auth = wire::SignedAuth::new(&self.signer, self.provider.clone(), now, &self.genesis);
        let resp = self
            .http
            .get(format!("{}/v1/receipts?after={after}&limit={limit}", url.trim_end_matches('/')))
            .header(wire::AUTH_HEADER, wire::to_hex(&auth))
            .timeout(self.timeout)
            .send()
            .await
            .with_context(|| format!("cannot reach the provider at {url}"))?;
        let status = resp.status();
        let value: serde_json::Value =
            resp.json().await.context("the provider's answer is not JSON")?;
        if !status.is_success() {
            bail!("provider refused ({status}): {}", untrusted_text(&value.to_string()));
        }
        serde_json::from_value(value["data"].clone()).context("the provider's list is malformed")
    }

    /// Every receipt the provider holds for us after `after`, page by page, as sent.
    async fn receipts_after(&self, after: Nonce) -> anyhow::Result<Vec<ReceiptJson>> {
        const PAGE: u32 = 100;
        const MOST: usize = 100_000;
        let url = self.service(None, None).await?.url;
        let mut all: Vec<ReceiptJson> = Vec::new();
        let mut after = after;
        loop {
            let page = self.receipt_page(&url, after, PAGE).await?;
            let Some(last) = page.last().map(|r| r.nonce) else { break };
            let full = page.len() >= PAGE as usize;
            all.extend(page);
            // A page that does not move forward would repeat forever.
            if !full || last <= after || all.len() >= MOST {
                break;
            }
            after = last;
        }
        Ok(all)
    }

    /// The receipts the provider holds for us after `after` (signed challenge), each verified.
    pub async fn fetch_receipts(
        &self,
        after: u64,
    ) -> anyhow::Result<Vec<(ReceiptJson, SignedReceipt)>> {
        let list = self.receipts_after(after).await?;
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
    /// lost in transit): adopt the provider's receipts for us that answer vouchers we signed
    /// (see [`catch_up`]). Returns the nonce now continued from.
    pub async fn resync(&self) -> anyhow::Result<u64> {
        Ok(self.catch_up(None).await?.nonce)
    }

    /// Fetch the provider's receipts after our nonce and adopt them if every one verifies
    /// against the voucher it answers; otherwise distrust the provider. With the chain's
    /// `escrow`, also continue from its settled nonce, and refuse (an over-claim) when what we
    /// can verify is below what it settled.
    async fn catch_up(&self, escrow: Option<&EscrowState>) -> anyhow::Result<ProviderState> {
        let ledger = self.ledger();
        let st = ledger.current()?;
        refuse_if_distrusted(&st, &self.provider)?;
        let services = self.chain.services_of(&self.provider).await?;
        let list = self.receipts_after(st.nonce).await?;
        let settled = escrow.map(|e| (e.settled_nonce, e.settled_total));
        ledger.adopt(&services, &list, settled)
    }
}

/// The HTTP client to providers: connections and each read bounded by `timeout` (connecting by
/// at most 10 s), so a provider that accepts and never answers cannot freeze the CLI or proxy.
fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .read_timeout(timeout)
        .build()
        .context("cannot set up the HTTP client")
}

/// A paid POST to a provider: bounded by `timeout` as a whole unless it asks for a stream.
fn provider_post(
    http: &reqwest::Client,
    url: &str,
    voucher: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> reqwest::RequestBuilder {
    let req = http
        .post(url)
        .header(wire::VOUCHER_HEADER, voucher)
        .header("content-type", "application/json");
    let req = if asks_for_stream(&body) { req } else { req.timeout(timeout) };
    req.body(body)
}

/// Whether a request body asks for a streamed answer (`"stream": true`).
fn asks_for_stream(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Stream {
        #[serde(default)]
        stream: bool,
    }
    serde_json::from_slice::<Stream>(body).is_ok_and(|s| s.stream)
}

/// Most characters of a provider's own words (error messages and codes) the CLI repeats.
const MAX_PROVIDER_TEXT: usize = 512;

/// A provider's text made safe to print: at most [`MAX_PROVIDER_TEXT`] characters, control
/// characters (terminal escapes included) replaced. A provider's error body is untrusted input:
/// it must not flood the terminal or a log, nor drive the terminal.
pub fn untrusted_text(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_PROVIDER_TEXT)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if s.chars().nth(MAX_PROVIDER_TEXT).is_some() {
        out.push_str("… (cut)");
    }
    out
}

/// Whether an error is a provider that took too long (no answer, or a silent stream).
pub fn is_timeout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<reqwest::Error>().is_some_and(reqwest::Error::is_timeout))
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
    /// Our entry for this provider as the file holds it now.
    fn current(&self) -> anyhow::Result<ProviderState> {
        Ok(State::read(self.state_path)?
            .get(&self.user.to_string(), &self.provider.to_string())
            .cloned()
            .unwrap_or_default())
    }

    /// Under the state's lock: adopt the receipts of `list` that follow our nonce if all verify
    /// (see [`catch_up::verify`]), or distrust the provider. With `settled` (the chain's settled
    /// nonce and total), continue at least from that nonce, and refuse an over-claim: a settled
    /// total above the total we could verify.
    fn adopt(
        &self,
        services: &[ServiceInfo],
        list: &[ReceiptJson],
        settled: Option<(Nonce, Balance)>,
    ) -> anyhow::Result<ProviderState> {
        let mut locked = State::lock(self.state_path)?;
        let st = locked.entry(&self.user.to_string(), &self.provider.to_string());
        refuse_if_distrusted(st, self.provider)?;
        // Receipts the state already moved past (another process, meanwhile) are not news.
        let fresh: Vec<ReceiptJson> = list.iter().filter(|r| r.nonce > st.nonce).cloned().collect();
        let expect = catch_up::Expect {
            genesis: self.genesis,
            user: &self.user,
            provider: self.provider,
            services,
        };
        let caught = match catch_up::verify(&expect, (st.nonce, st.total), &fresh) {
            Ok(c) => c,
            Err(e) => {
                let why = format!("its list of receipts does not check out: {e}");
                st.distrusted = Some(why.clone());
                locked.commit()?;
                return Err(AnswerError::BadReceipt(why).into());
            }
        };
        (st.nonce, st.total) = (caught.nonce, caught.total);
        if let Some(hex) = caught.last_receipt {
            st.last_receipt = Some(hex);
        }
        if let Some((nonce, total)) = settled {
            if st.total < total {
                let why = format!(
                    "it settled {} through nonce {nonce} on chain, but its receipts for vouchers \
                     you signed come to {} (nonce {})",
                    show(total),
                    show(st.total),
                    st.nonce
                );
                st.distrusted = Some(format!("over-claim: {why}"));
                locked.commit()?;
                bail!(
                    "{} over-claimed: {why}; get the excess back and a share of its bond with \
                     `compute dispute {}`",
                    self.provider,
                    self.provider
                );
            }
            st.nonce = st.nonce.max(nonce);
        }
        let st = st.clone();
        locked.commit()?;
        Ok(st)
    }

    fn record(
        &self,
        signed: &Signed,
        receipt: &ReceiptJson,
        text: Option<&str>,
        asked: Option<&serde_json::Value>,
    ) -> Result<SignedReceipt, AnswerError> {
        self.record_checked(signed, receipt, |r| {
            let Some(t) = text else { return Ok(r) };
            if r.receipt.response_hash != wire::response_hash(t) {
                return Err("its response hash does not match the text received".to_string());
            }
            if r.receipt.output_tokens > 0 {
                proof_of(receipt, &r)?;
            }
            // A challenge is judged against the weights the receipt names: they must be the
            // ones the service committed to when the request was paid.
            if r.receipt.fee != 0 && r.receipt.model_hash != signed.service.model_hash {
                return Err(format!(
                    "its receipt names weights {:?}, not the {:?} the service committed to",
                    r.receipt.model_hash, signed.service.model_hash
                ));
            }
            match (self.recount, asked) {
                (Some(rc), Some(req)) if r.receipt.fee != 0 => {
                    let max = req["max_tokens"].as_u64().or(req["max_completion_tokens"].as_u64());
                    rc.check(&req["messages"], max, t, &r.receipt).map(|()| r)
                }
                _ => Ok(r),
            }
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
        let mut locked = State::lock(self.state_path)?;
        let st = locked.entry(&self.user.to_string(), &self.provider.to_string());
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
        locked.commit()?;
        result
    }
}

/// The activation proof sent with a chat receipt: present, the one `proof_hash` commits to, in
/// a format this build reads, and covering exactly the tokens billed. Without it the response
/// cannot be audited against the service's committed weights.
fn proof_of(json: &ReceiptJson, r: &SignedReceipt) -> Result<ActivationProof, String> {
    let bytes = json
        .proof_bytes(&r.receipt)
        .map_err(|e| e.to_string())?
        .ok_or("it sent no activation proof for a chat response")?;
    let proof = ActivationProof::from_bytes(&bytes).map_err(|e| format!("its proof: {e}"))?;
    if proof.len() as u64 != r.receipt.output_tokens {
        return Err(format!(
            "its proof covers {} tokens but the receipt bills {}",
            proof.len(),
            r.receipt.output_tokens
        ));
    }
    Ok(proof)
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
            model_hash: Default::default(),
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

    /// The bytes of a well-formed activation proof of `n` tokens.
    fn proof(n: usize) -> Vec<u8> {
        use compute_inference::proof::ENTRIES;
        ActivationProof { tokens: vec![1; n], values: vec![0; n * ENTRIES] }.to_bytes()
    }

    fn receipt(v: &Voucher, text: &str, fee: Balance) -> Receipt {
        Receipt {
            user: v.user.clone(),
            provider: v.provider.clone(),
            service_id: 0,
            nonce: v.nonce,
            request_hash: v.request_hash,
            response_hash: wire::response_hash(text),
            proof_hash: wire::proof_hash(&proof(5)),
            model_hash: Default::default(),
            input_tokens: 10,
            output_tokens: 5,
            fee,
            total: v.spent + fee,
        }
    }

    #[test]
    fn a_providers_text_is_cut_and_defanged() {
        let long = "x".repeat(1 << 20);
        assert!(untrusted_text(&long).len() < MAX_PROVIDER_TEXT + 16);
        assert_eq!(untrusted_text("ok \u{1b}[2J"), "ok \u{fffd}[2J");
        assert_eq!(untrusted_text("short"), "short");
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
        let signed = |v: Voucher| Signed {
            voucher: v,
            body: Vec::new(),
            header: String::new(),
            service: service(&bob),
        };
        let json = |r: Receipt, by: &Signer| {
            ReceiptJson::from(&wire::sign_receipt(by, r, &genesis)).with_proof(&proof(5))
        };
        let state = || ledger.current().unwrap();

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

        // A chat receipt without its activation proof, with another proof than the one it
        // commits to, or with a proof of other tokens than it bills: nothing to audit.
        let good =
            || ReceiptJson::from(&wire::sign_receipt(&bob, receipt(&v1, "hi", 70), &genesis));
        let other_hash = {
            let mut r = receipt(&v1, "hi", 70);
            r.proof_hash = wire::proof_hash(&proof(4));
            ReceiptJson::from(&wire::sign_receipt(&bob, r, &genesis)).with_proof(&proof(4))
        };
        // A receipt naming other weights than the service committed to: a challenge would be
        // judged against the weights the provider chose afterwards.
        let other_weights = {
            let mut r = receipt(&v1, "hi", 70);
            r.model_hash = H256::repeat_byte(9);
            json(r, &bob)
        };
        for (json, why) in [
            (good(), "no activation proof"),
            (good().with_proof(&proof(4)), "does not hash"),
            (other_hash, "covers 4 tokens but the receipt bills 5"),
            (other_weights, "not the 0x0000"),
        ] {
            std::fs::remove_file(&path).unwrap();
            let e = ledger.record(&signed(v1.clone()), &json, Some("hi"), None).unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A state file with (nonce 4, total 1 000) verified for `user` with `bob`.
    fn ledger_at<'a>(
        path: &'a std::path::Path,
        user: &Signer,
        provider: &'a AccountId,
        genesis: &'a H256,
    ) -> Ledger<'a> {
        let ledger =
            Ledger { state_path: path, user: user.account_id(), provider, genesis, recount: None };
        let mut locked = State::lock(path).unwrap();
        let st = locked.entry(&user.account_id().to_string(), &provider.to_string());
        (st.nonce, st.total, st.last_receipt) = (4, 1_000, Some("0xkept".into()));
        locked.commit().unwrap();
        ledger
    }

    /// The provider's receipt for `v` (fee at the test service's prices for 10 + 5 tokens, or
    /// `fee`), with the voucher signed by `voucher_by` attached.
    fn listed(
        v: &Voucher,
        fee: Option<Balance>,
        bob: &Signer,
        voucher_by: Option<&Signer>,
        genesis: &H256,
    ) -> ReceiptJson {
        let json = ReceiptJson::from(&wire::sign_receipt(
            bob,
            receipt(v, "x", fee.unwrap_or(70)),
            genesis,
        ));
        match voucher_by {
            Some(s) => json.with_voucher(&wire::sign_voucher(s, v.clone(), genesis)),
            None => json,
        }
    }

    #[test]
    fn catching_up_adopts_only_receipts_for_vouchers_the_user_signed() {
        let dir = std::env::temp_dir().join(format!("compute-adopt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let [user, bob, eve] = ["//Alice", "//Bob", "//Eve"].map(|k| Signer::from_uri(k).unwrap());
        let genesis = H256::repeat_byte(3);
        let provider = bob.account_id();
        let services = [service(&bob)];
        let huge: Balance = 1_000_000_000_000_000_000_000_000; // 10^24
        let v5 = voucher(&user, &bob, 5, 1_000);
        let attacks = [
            ("no voucher", listed(&v5, Some(huge), &bob, None, &genesis)),
            ("voucher by Eve", listed(&v5, Some(huge), &bob, Some(&eve), &genesis)),
            ("fee above the cap", listed(&v5, Some(huge), &bob, Some(&user), &genesis)),
            (
                "voucher for another nonce",
                listed(&v5, None, &bob, None, &genesis).with_voucher(&wire::sign_voucher(
                    &user,
                    voucher(&user, &bob, 3, 0),
                    &genesis,
                )),
            ),
        ];
        for (what, item) in attacks {
            let path = dir.join(format!("{}.json", what.replace(' ', "-")));
            let ledger = ledger_at(&path, &user, &provider, &genesis);
            let e = ledger.adopt(&services, &[item], None).unwrap_err().to_string();
            assert!(e.contains("does not verify") && e.contains("receipt #5"), "{what}: {e}");
            let st = ledger.current().unwrap();
            assert_eq!(
                (st.nonce, st.total, st.last_receipt.as_deref()),
                (4, 1_000, Some("0xkept")),
                "{what}: nothing adopted"
            );
            assert!(st.distrusted.as_deref().is_some_and(|w| w.contains("receipt #5")), "{what}");
            // And no voucher is signed for it any more.
            assert!(ledger.adopt(&services, &[], None).is_err(), "{what}");
        }

        // A receipt for a voucher the user signed (an answer lost in transit) is adopted.
        let path = dir.join("good.json");
        let ledger = ledger_at(&path, &user, &provider, &genesis);
        let good = listed(&v5, None, &bob, Some(&user), &genesis);
        let st = ledger.adopt(&services, std::slice::from_ref(&good), None).unwrap();
        assert_eq!(ledger.current().unwrap(), st);
        assert_eq!((st.nonce, st.total, st.last_receipt), (5, 1_070, Some(good.signed.clone())));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn catching_up_to_the_chain_refuses_an_over_claim() {
        let dir = std::env::temp_dir().join(format!("compute-settled-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let [user, bob] = ["//Alice", "//Bob"].map(|k| Signer::from_uri(k).unwrap());
        let genesis = H256::repeat_byte(3);
        let provider = bob.account_id();
        let services = [service(&bob)];
        let v5 = voucher(&user, &bob, 5, 1_000);
        let good = listed(&v5, None, &bob, Some(&user), &genesis);

        // Settled through nonce 5 at exactly the verified total: continue from there.
        let path = dir.join("a.json");
        let ledger = ledger_at(&path, &user, &provider, &genesis);
        let st = ledger.adopt(&services, std::slice::from_ref(&good), Some((5, 1_070))).unwrap();
        assert_eq!((st.nonce, st.total, st.distrusted), (5, 1_070, None));

        // Settled through nonce 6 with no receipt shown for it, at a total we cannot verify
        // (the provider's claim): refused, pointing at `compute dispute`.
        let path = dir.join("b.json");
        let ledger = ledger_at(&path, &user, &provider, &genesis);
        let e = ledger
            .adopt(&services, std::slice::from_ref(&good), Some((6, 2_000)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("over-claimed") && e.contains(&format!("compute dispute {provider}")),
            "{e}"
        );
        let st = ledger.current().unwrap();
        // The verified receipt is kept for the dispute; the provider gets no more vouchers.
        assert_eq!((st.nonce, st.total, st.last_receipt), (5, 1_070, Some(good.signed.clone())));
        assert!(st.distrusted.is_some_and(|w| w.contains("over-claim")));

        // Settled beyond our receipts but not above our verified total: continue the nonce.
        let path = dir.join("c.json");
        let ledger = ledger_at(&path, &user, &provider, &genesis);
        let st = ledger.adopt(&services, &[], Some((9, 900))).unwrap();
        assert_eq!((st.nonce, st.total), (9, 1_000));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A provider that accepts connections and then says nothing (or sends the headers of a
    /// stream and then nothing): requests fail as timeouts instead of hanging.
    #[tokio::test]
    async fn a_silent_provider_times_out() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                if String::from_utf8_lossy(&buf[..n]).starts_with("POST /stream ") {
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                                transfer-encoding: chunked\r\n\r\n";
                    let _ = conn.write_all(head.as_bytes()).await;
                }
                held.push(conn); // never answered, never closed
            }
        });
        let timeout = Duration::from_millis(300);
        let http = http_client(timeout).unwrap();
        let url = format!("http://{addr}/v1/chat/completions");
        let started = std::time::Instant::now();
        let e = provider_post(&http, &url, "0x", br#"{"model":"m"}"#.to_vec(), timeout)
            .send()
            .await
            .map_err(|e| anyhow::Error::new(e).context("cannot reach the provider"))
            .unwrap_err();
        assert!(is_timeout(&e), "{e:#}");
        // A streamed request (no overall timeout) to a provider that never answers: the wait
        // for the headers is a read too.
        let e = provider_post(&http, &url, "0x", br#"{"stream":true}"#.to_vec(), timeout)
            .send()
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e}");
        // A stream's headers arrive; its body does not: the read times out.
        let stream_url = format!("http://{addr}/stream");
        let resp = provider_post(&http, &stream_url, "0x", br#"{"stream":true}"#.to_vec(), timeout)
            .send()
            .await
            .unwrap();
        let mut bytes = futures::StreamExt::boxed(resp.bytes_stream());
        let e = futures::StreamExt::next(&mut bytes).await.unwrap().unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn only_requests_asking_for_a_stream_escape_the_overall_timeout() {
        assert!(asks_for_stream(br#"{"model":"m","stream":true}"#));
        assert!(!asks_for_stream(br#"{"model":"m","stream":false}"#));
        assert!(!asks_for_stream(br#"{"model":"m"}"#));
        assert!(!asks_for_stream(b""));
        assert!(!asks_for_stream(b"not json"));
    }
}
