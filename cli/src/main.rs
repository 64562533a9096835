//! `compute`: the user's command line for the compute marketplace.

mod state;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use compute_client::{
    wire::{self, ErrorBody, ReceiptJson},
    Chain, Signer,
};
use compute_primitives::{AccountId, Balance, ServiceId, SignedReceipt, Voucher};
use polkadot_sdk::sp_core::H256;
use serde_json::{json, Value};
use std::{path::PathBuf, time::Duration};

/// Smallest units per token.
const UNIT: Balance = 1_000_000_000_000;
/// Seconds per block at the chain's target block time.
const BLOCK_SECS: u64 = 6;

#[derive(Parser)]
#[command(
    name = "compute",
    version,
    about = "Use the compute marketplace: fund escrows, chat with providers, verify receipts, get refunds."
)]
struct Cli {
    /// Node WebSocket RPC URL.
    #[arg(long, global = true, env = "COMPUTE_NODE", default_value = "ws://127.0.0.1:9944")]
    node: String,
    /// Your key: a secret URI (`//Alice` on a dev chain) or phrase.
    #[arg(long, global = true, env = "COMPUTE_KEY", hide_env_values = true)]
    key: Option<String>,
    /// A file holding your secret URI or phrase.
    #[arg(long, global = true, env = "COMPUTE_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Where nonces and verified totals are kept.
    #[arg(long, global = true, env = "COMPUTE_STATE")]
    state: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Your account and free balance.
    Account,
    /// Registered services with prices and provider statistics.
    Services,
    /// Move AMOUNT (e.g. `0.5unit` or smallest units) into your escrow with PROVIDER.
    Deposit { provider: String, amount: String },
    /// Ask for, cancel or withdraw a refund.
    #[command(subcommand)]
    Refund(Refund),
    /// Your escrow with PROVIDER: balance, pending refund, unlock time.
    Escrow { provider: String },
    /// Send one chat message to PROVIDER's service and verify the receipt.
    Chat {
        provider: String,
        message: String,
        /// Service id (default: the provider's first chat service).
        #[arg(long)]
        service: Option<ServiceId>,
        /// Most output tokens.
        #[arg(long, default_value_t = 128)]
        max_tokens: u64,
        /// Most this request may cost (e.g. `0.01unit`).
        #[arg(long, default_value = "0.01unit")]
        cap: String,
    },
    /// Close the session with PROVIDER: a signed ack of the latest total.
    Ack { provider: String },
    /// Your receipts held by PROVIDER (fetched with a signed challenge, each verified).
    Receipts {
        provider: String,
        /// Only receipts with a nonce above this.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Prove an over-claim: submit your last verified receipt from PROVIDER to the chain.
    Dispute { provider: String },
}

#[derive(Subcommand)]
enum Refund {
    /// Ask for AMOUNT back (withdrawable after the refund lock).
    Request { provider: String, amount: String },
    /// Make the pending refund spendable again.
    Cancel { provider: String },
    /// Withdraw the unlocked refund.
    Withdraw { provider: String },
}

fn parse_amount(s: &str) -> anyhow::Result<Balance> {
    let s = s.trim().to_ascii_lowercase();
    if let Some(units) = s.strip_suffix("unit") {
        let (int, frac) = units.split_once('.').unwrap_or((units, ""));
        if frac.len() > 12 {
            bail!("`{s}`: at most 12 decimals");
        }
        let int: Balance = if int.is_empty() { 0 } else { int.parse()? };
        let frac_val: Balance = if frac.is_empty() { 0 } else { format!("{frac:0<12}").parse()? };
        return int
            .checked_mul(UNIT)
            .and_then(|v| v.checked_add(frac_val))
            .ok_or_else(|| anyhow!("`{s}` overflows"));
    }
    s.parse().map_err(|_| anyhow!("`{s}` is not an amount (smallest units, or e.g. `0.5unit`)"))
}

fn show(amount: Balance) -> String {
    format!("{}.{:012} unit", amount / UNIT, amount % UNIT)
}

fn account(s: &str) -> anyhow::Result<AccountId> {
    s.parse().map_err(|_| anyhow!("`{s}` is not an SS58 address"))
}

struct Ctx {
    cli_json: bool,
    chain: Chain,
    signer: Option<Signer>,
    state_path: PathBuf,
}

impl Ctx {
    fn signer(&self) -> anyhow::Result<&Signer> {
        self.signer.as_ref().ok_or_else(|| anyhow!("give your key with --key or --key-file"))
    }

    fn out(&self, value: Value, text: String) {
        if self.cli_json {
            println!("{value}");
        } else {
            println!("{text}");
        }
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let signer = match (&cli.key, &cli.key_file) {
        (Some(k), _) => Some(Signer::from_uri(k)?),
        (None, Some(f)) => Some(Signer::from_file(f)?),
        _ => None,
    };
    let chain = Chain::connect(&cli.node, Duration::from_secs(10))
        .await
        .with_context(|| format!("is a node running at {}?", cli.node))?;
    let state_path = cli.state.clone().unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        home.join(".compute").join("state.json")
    });
    let ctx = Ctx { cli_json: cli.json, chain, signer, state_path };
    match cli.command {
        Command::Account => {
            let who = ctx.signer()?.account_id();
            let free = ctx.chain.free_balance(&who).await?;
            ctx.out(
                json!({ "account": who.to_string(), "free": free.to_string() }),
                format!("{who}\nfree balance: {}", show(free)),
            );
        }
        Command::Services => services(&ctx).await?,
        Command::Deposit { provider, amount } => {
            let (provider, amount) = (account(&provider)?, parse_amount(&amount)?);
            let params = ctx.chain.params().await?;
            if amount < params.min_deposit {
                bail!("the least deposit is {}", show(params.min_deposit));
            }
            if ctx.chain.provider(&provider).await?.is_none_or(|p| p.unbonding) {
                bail!("{provider} is not a bonded provider (see `compute services`)");
            }
            eprintln!("submitting deposit of {}, waiting for finality…", show(amount));
            let out = ctx.chain.deposit(ctx.signer()?, &provider, amount).await?;
            ctx.out(
                json!({ "block": format!("{:?}", out.block_hash) }),
                format!("deposited in finalized block {:?}", out.block_hash),
            );
        }
        Command::Refund(r) => refund(&ctx, r).await?,
        Command::Escrow { provider } => escrow(&ctx, &account(&provider)?).await?,
        Command::Chat { provider, message, service, max_tokens, cap } => {
            chat(&ctx, &account(&provider)?, &message, service, max_tokens, parse_amount(&cap)?)
                .await?
        }
        Command::Ack { provider } => ack(&ctx, &account(&provider)?).await?,
        Command::Receipts { provider, after } => {
            receipts(&ctx, &account(&provider)?, after).await?
        }
        Command::Dispute { provider } => dispute(&ctx, &account(&provider)?).await?,
    }
    Ok(())
}

async fn services(ctx: &Ctx) -> anyhow::Result<()> {
    let list = ctx.chain.services().await?;
    let mut rows = Vec::new();
    for s in &list {
        let p = ctx.chain.provider(&s.provider).await?;
        rows.push(json!({
            "provider": s.provider.to_string(), "service_id": s.service_id, "model": s.model,
            "url": s.url, "input_price": s.input_price.to_string(),
            "output_price": s.output_price.to_string(), "price_version": s.price_version,
            "requests_settled": p.as_ref().map(|p| p.requests_settled),
            "disputes_lost": p.as_ref().map(|p| p.disputes_lost),
            "earned": p.as_ref().map(|p| p.earned.to_string()),
        }));
    }
    let mut text = format!("{} service(s)\n", list.len());
    for (s, r) in list.iter().zip(&rows) {
        text.push_str(&format!(
            "{} #{} {} at {}\n    price per token: in {} / out {} (version {}); settled requests {}, disputes lost {}\n",
            s.provider, s.service_id, s.model, s.url, s.input_price, s.output_price,
            s.price_version, r["requests_settled"], r["disputes_lost"]
        ));
    }
    ctx.out(Value::Array(rows), text.trim_end().to_string());
    Ok(())
}

async fn escrow(ctx: &Ctx, provider: &AccountId) -> anyhow::Result<()> {
    let who = ctx.signer()?.account_id();
    let Some(e) = ctx.chain.escrow(&who, provider, None).await? else {
        bail!("no escrow with {provider}; `compute deposit {provider} <amount>` opens one");
    };
    let now = ctx.chain.block_number(None).await?;
    let wait = e.unlock_at.saturating_sub(now);
    let unlock = if e.pending_refund == 0 {
        "no refund pending".to_string()
    } else if wait == 0 {
        format!("refund of {} withdrawable now", show(e.pending_refund))
    } else {
        format!(
            "refund of {} unlocks at block {} (in {wait} blocks, about {} s)",
            show(e.pending_refund),
            e.unlock_at,
            u64::from(wait) * BLOCK_SECS
        )
    };
    ctx.out(
        json!({ "balance": e.balance.to_string(), "pending_refund": e.pending_refund.to_string(),
                "unlock_at": e.unlock_at, "blocks_to_unlock": wait,
                "settled_nonce": e.settled_nonce, "settled_total": e.settled_total.to_string() }),
        format!(
            "balance {} (spendable {})\n{unlock}\nsettled through nonce {}, {} paid so far",
            show(e.balance),
            show(e.spendable()),
            e.settled_nonce,
            show(e.settled_total)
        ),
    );
    Ok(())
}

async fn refund(ctx: &Ctx, r: Refund) -> anyhow::Result<()> {
    let signer = ctx.signer()?;
    let who = signer.account_id();
    match r {
        Refund::Request { provider, amount } => {
            let (provider, amount) = (account(&provider)?, parse_amount(&amount)?);
            let e = ctx
                .chain
                .escrow(&who, &provider, None)
                .await?
                .ok_or_else(|| anyhow!("no escrow with {provider}"))?;
            if e.pending_refund.saturating_add(amount) > e.balance {
                bail!(
                    "escrow balance is {}, {} already pending",
                    show(e.balance),
                    show(e.pending_refund)
                );
            }
            eprintln!("requesting a refund of {}, waiting for finality…", show(amount));
            ctx.chain.request_refund(signer, &provider, amount).await?;
            escrow(ctx, &provider).await
        }
        Refund::Cancel { provider } => {
            let provider = account(&provider)?;
            eprintln!("cancelling the pending refund, waiting for finality…");
            ctx.chain.cancel_refund(signer, &provider).await?;
            escrow(ctx, &provider).await
        }
        Refund::Withdraw { provider } => {
            let provider = account(&provider)?;
            let e = ctx
                .chain
                .escrow(&who, &provider, None)
                .await?
                .ok_or_else(|| anyhow!("no escrow with {provider}"))?;
            let now = ctx.chain.block_number(None).await?;
            if e.pending_refund == 0 {
                bail!("no refund pending; `compute refund request` first");
            }
            if now < e.unlock_at {
                bail!(
                    "the refund unlocks at block {} (now {now}, about {} s to go)",
                    e.unlock_at,
                    u64::from(e.unlock_at - now) * BLOCK_SECS
                );
            }
            eprintln!("withdrawing {}, waiting for finality…", show(e.pending_refund));
            ctx.chain.withdraw_refund(signer, &provider).await?;
            escrow(ctx, &provider).await
        }
    }
}

/// Check a receipt; on failure remember to refuse the provider from now on.
fn verify(
    st: &mut state::ProviderState,
    json: &ReceiptJson,
    v: &Voucher,
    genesis: &H256,
    prices: (Balance, Balance),
) -> anyhow::Result<SignedReceipt> {
    let checked = wire::from_hex::<SignedReceipt>("receipt", &json.signed)
        .map_err(|e| anyhow!("{e}"))
        .and_then(|r| {
            wire::check_receipt(&r, v, genesis, prices, st.total)
                .map(|()| r)
                .map_err(|e| anyhow!("{e}"))
        });
    match checked {
        Ok(r) => {
            st.nonce = v.nonce;
            st.total = r.receipt.total;
            st.last_receipt = Some(json.signed.clone());
            Ok(r)
        }
        Err(e) => {
            st.distrusted = Some(e.to_string());
            Err(anyhow!("the provider's receipt does not verify ({e}); no more vouchers will be signed for it"))
        }
    }
}

async fn chat(
    ctx: &Ctx,
    provider: &AccountId,
    message: &str,
    service: Option<ServiceId>,
    max_tokens: u64,
    cap: Balance,
) -> anyhow::Result<()> {
    let signer = ctx.signer()?;
    let user = signer.account_id();
    let services = ctx.chain.services_of(provider).await?;
    let svc = match service {
        Some(id) => services.iter().find(|s| s.service_id == id),
        None => services.first(),
    }
    .ok_or_else(|| anyhow!("{provider} has no such service (see `compute services`)"))?
    .clone();
    let escrow = ctx.chain.escrow(&user, provider, None).await?.ok_or_else(|| {
        anyhow!("no escrow with {provider}; deposit at least {} first: `compute deposit {provider} <amount>`", show(cap))
    })?;
    let mut all = state::State::load(ctx.state_path.clone())?;
    let st = all.entry(&user.to_string(), &provider.to_string());
    if let Some(why) = &st.distrusted {
        bail!(
            "refusing to sign vouchers for {provider}: an earlier receipt did not verify ({why})"
        );
    }
    if st.nonce < escrow.settled_nonce {
        // Another client used this account: continue from the chain's view.
        st.nonce = escrow.settled_nonce;
        st.total = st.total.max(escrow.last_claimed_total);
    }
    let body = serde_json::to_vec(&json!({
        "model": svc.model, "max_tokens": max_tokens,
        "messages": [{ "role": "user", "content": message }] }))?;
    let v = Voucher {
        user: user.clone(),
        provider: provider.clone(),
        service_id: svc.service_id,
        price_version: svc.price_version,
        nonce: st.nonce + 1,
        request_hash: wire::request_hash(&body),
        spent: st.total,
        cap,
    };
    let genesis = ctx.chain.genesis_hash();
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", svc.url.trim_end_matches('/')))
        .header(
            wire::VOUCHER_HEADER,
            wire::to_hex(&wire::sign_voucher(signer, v.clone(), &genesis)),
        )
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach the provider at {}", svc.url))?;
    let status = resp.status();
    let value: Value = resp.json().await.context("the provider's answer is not JSON")?;
    let prices = (svc.input_price, svc.output_price);
    if !status.is_success() {
        let err: ErrorBody = serde_json::from_value(value.clone())
            .map_err(|_| anyhow!("provider answered {status}: {value}"))?;
        if let Some(r) = &err.error.receipt {
            verify(st, r, &v, &genesis, prices)?;
        }
        all.save()?;
        let hint = match err.error.code.as_str() {
            "insufficient_escrow" | "no_escrow" => format!(
                "; deposit at least {} more: `compute deposit {provider} <amount>`",
                err.error
                    .expected
                    .as_ref()
                    .and_then(|e| e["deposit"].as_str())
                    .and_then(|d| d.parse().ok())
                    .map_or("?".into(), show)
            ),
            _ => String::new(),
        };
        bail!("provider refused ({status} {}): {}{hint}", err.error.code, err.error.message);
    }
    let receipt: ReceiptJson =
        serde_json::from_value(value["receipt"].clone()).context("answer without a receipt")?;
    let checked = verify(st, &receipt, &v, &genesis, prices);
    all.save()?;
    let r = checked?;
    let text = value["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    if r.receipt.response_hash != wire::response_hash(text) {
        bail!("the receipt's response hash does not match the text received");
    }
    ctx.out(
        json!({ "text": text, "receipt": receipt }),
        format!(
            "{text}\n-- {} prompt + {} completion tokens, fee {}, total {}",
            r.receipt.input_tokens,
            r.receipt.output_tokens,
            show(r.receipt.fee),
            show(r.receipt.total)
        ),
    );
    Ok(())
}

async fn ack(ctx: &Ctx, provider: &AccountId) -> anyhow::Result<()> {
    let signer = ctx.signer()?;
    let user = signer.account_id();
    let svc = ctx
        .chain
        .services_of(provider)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{provider} has no services"))?;
    let mut all = state::State::load(ctx.state_path.clone())?;
    let st = all.entry(&user.to_string(), &provider.to_string());
    let v = Voucher {
        user,
        provider: provider.clone(),
        service_id: svc.service_id,
        price_version: svc.price_version,
        nonce: st.nonce + 1,
        request_hash: H256::zero(),
        spent: st.total,
        cap: 0,
    };
    let genesis = ctx.chain.genesis_hash();
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/ack", svc.url.trim_end_matches('/')))
        .header(
            wire::VOUCHER_HEADER,
            wire::to_hex(&wire::sign_voucher(signer, v.clone(), &genesis)),
        )
        .send()
        .await
        .with_context(|| format!("cannot reach the provider at {}", svc.url))?;
    let status = resp.status();
    let value: Value = resp.json().await?;
    if !status.is_success() {
        bail!("ack refused ({status}): {value}");
    }
    let receipt: ReceiptJson = serde_json::from_value(value["receipt"].clone())?;
    verify(st, &receipt, &v, &genesis, (svc.input_price, svc.output_price))?;
    let total = st.total;
    all.save()?;
    ctx.out(json!({ "receipt": receipt }), format!("acknowledged total {}", show(total)));
    Ok(())
}

async fn receipts(ctx: &Ctx, provider: &AccountId, after: u64) -> anyhow::Result<()> {
    let signer = ctx.signer()?;
    let svc = ctx
        .chain
        .services_of(provider)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{provider} has no services"))?;
    let genesis = ctx.chain.genesis_hash();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let auth = wire::SignedAuth::new(signer, provider.clone(), now, &genesis);
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/receipts?after={after}", svc.url.trim_end_matches('/')))
        .header(wire::AUTH_HEADER, wire::to_hex(&auth))
        .send()
        .await
        .with_context(|| format!("cannot reach the provider at {}", svc.url))?;
    let status = resp.status();
    let value: Value = resp.json().await?;
    if !status.is_success() {
        bail!("provider refused ({status}): {value}");
    }
    let list: Vec<ReceiptJson> = serde_json::from_value(value["data"].clone())?;
    let mut text = String::new();
    for r in &list {
        let signed: SignedReceipt =
            wire::from_hex("receipt", &r.signed).map_err(|e| anyhow!("{e}"))?;
        if !signed.verify(&genesis) || signed.receipt.provider != *provider {
            bail!("receipt {} from {provider} does not verify", r.nonce);
        }
        text.push_str(&format!(
            "#{} fee {} total {} ({} + {} tokens)\n",
            r.nonce, r.fee, r.total, r.input_tokens, r.output_tokens
        ));
    }
    ctx.out(
        serde_json::to_value(&list)?,
        format!("{}{} receipt(s), all verified", text, list.len()),
    );
    Ok(())
}

async fn dispute(ctx: &Ctx, provider: &AccountId) -> anyhow::Result<()> {
    let signer = ctx.signer()?;
    let user = signer.account_id();
    let mut all = state::State::load(ctx.state_path.clone())?;
    let st = all.entry(&user.to_string(), &provider.to_string());
    let hex = st
        .last_receipt
        .clone()
        .ok_or_else(|| anyhow!("no verified receipt from {provider} in the state file"))?;
    let receipt: SignedReceipt = wire::from_hex("receipt", &hex).map_err(|e| anyhow!("{e}"))?;
    let e = ctx
        .chain
        .escrow(&user, provider, None)
        .await?
        .ok_or_else(|| anyhow!("no escrow with {provider}"))?;
    if e.settled_total <= receipt.receipt.total {
        bail!(
            "nothing to dispute: the chain settled {} and your receipt shows a total of {}",
            show(e.settled_total),
            show(receipt.receipt.total)
        );
    }
    eprintln!(
        "submitting a dispute with receipt #{}, waiting for finality…",
        receipt.receipt.nonce
    );
    let out = ctx.chain.dispute(signer, provider, receipt).await?;
    ctx.out(
        json!({ "block": format!("{:?}", out.block_hash) }),
        format!("dispute included in {:?}", out.block_hash),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts() {
        assert_eq!(parse_amount("5").unwrap(), 5);
        assert_eq!(parse_amount("1unit").unwrap(), UNIT);
        assert_eq!(parse_amount("0.5unit").unwrap(), UNIT / 2);
        assert_eq!(parse_amount(".001UNIT").unwrap(), UNIT / 1000);
        assert!(parse_amount("1.0000000000001unit").is_err());
        assert!(parse_amount("lots").is_err());
        assert_eq!(show(1_500_000_000_000), "1.500000000000 unit");
    }
}
