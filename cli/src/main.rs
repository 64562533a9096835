//! `compute`: the user's command line for the compute marketplace.

mod audit;
mod catch_up;
mod chat;
mod embed;
mod files;
mod finetune;
mod kept;
mod key;
mod proxy;
mod proxy_auth;
mod proxy_finetune;
mod recount;
mod session;
mod sse;
mod state;
mod verifier;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use compute_client::{wire, Chain, ComputeEvent, Signer};
use compute_primitives::{AccountId, Balance, ServiceId, ServiceKind, SignedReceipt};
use polkadot_sdk::sp_core::H256;
use serde_json::{json, Value};
use session::{show, Session, UNIT};
use std::{net::SocketAddr, path::PathBuf, time::Duration};
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
    /// A development key such as `//Charlie` (anything else would be visible to every local
    /// user in the process list: use --key-file, or the COMPUTE_KEY environment variable, which
    /// takes any secret URI or phrase).
    #[arg(long, global = true)]
    key: Option<String>,
    /// A file holding your secret URI or phrase, readable by you only (`chmod 600`).
    #[arg(long, global = true, env = "COMPUTE_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Seconds to wait for a provider: for a whole answer that is not streamed, and for each
    /// read of a streamed one.
    #[arg(long, global = true, env = "COMPUTE_TIMEOUT", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Where nonces and verified totals are kept.
    #[arg(long, global = true, env = "COMPUTE_STATE")]
    state: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    /// Recount every answer's tokens with this GGUF's tokenizer and chat template (the model the
    /// provider serves) and refuse receipts that over-count.
    #[arg(long, global = true, env = "COMPUTE_RECOUNT_MODEL")]
    recount_model: Option<PathBuf>,
    /// Recount every embeddings request's input tokens with this sentence-transformers
    /// directory's tokenizer (the model the provider serves) and refuse receipts that differ.
    #[arg(long, global = true, env = "COMPUTE_RECOUNT_EMBEDDING_MODEL")]
    recount_embedding_model: Option<PathBuf>,
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
    /// Chat with PROVIDER: one MESSAGE, or a conversation on stdin when MESSAGE is left out.
    /// Every answer streams as it is generated and its receipt is verified.
    Chat {
        provider: String,
        message: Option<String>,
        /// Service id (default: the provider's first chat service).
        #[arg(long)]
        service: Option<ServiceId>,
        /// Most output tokens per answer.
        #[arg(long, default_value_t = 128)]
        max_tokens: u64,
        /// Most one request may cost (e.g. `0.01unit`).
        #[arg(long, default_value = "0.01unit")]
        cap: String,
        /// Sampling temperature (0 = greedy).
        #[arg(long)]
        temperature: Option<f64>,
        /// Wait for the whole answer instead of streaming it.
        #[arg(long)]
        no_stream: bool,
    },
    /// Embed TEXTS with PROVIDER's embedding service as one paid request; the receipt is checked
    /// against the exact vectors received.
    Embed {
        provider: String,
        #[arg(required = true)]
        texts: Vec<String>,
        /// Service id (default: the provider's first embedding service).
        #[arg(long)]
        service: Option<ServiceId>,
        /// Most the request may cost (e.g. `0.01unit`).
        #[arg(long, default_value = "0.01unit")]
        cap: String,
    },
    /// Check the chat answers kept from PROVIDER against the weights its service committed
    /// to: each answer's activation proof is recomputed with one prefill of those weights.
    Audit {
        provider: String,
        /// Share of the kept answers to check, drawn at random (1 = every one).
        #[arg(long, default_value_t = 1.0)]
        sample: f64,
        /// A local copy of the committed weights (else downloaded from the provider and cached;
        /// either way checked against the hash on chain).
        #[arg(long)]
        weights: Option<PathBuf>,
    },
    /// Serve a local OpenAI-compatible endpoint that pays PROVIDER: point any OpenAI client's
    /// base URL at http://LISTEN/v1.
    Proxy {
        provider: String,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8788")]
        listen: SocketAddr,
        /// Most one request may cost (e.g. `0.01unit`); the provider lowers `max_tokens` to fit.
        #[arg(long, default_value = "0.01unit")]
        cap: String,
        /// Read the API key clients must send from this file (readable by you only) instead of
        /// generating one into `proxy-token` beside the state file.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// A browser origin (e.g. `http://localhost:3000`) allowed to call the proxy; requests
        /// from any other web page are refused. Repeatable.
        #[arg(long = "allow-origin", value_name = "ORIGIN")]
        allow_origins: Vec<String>,
        /// Allow a --listen address other machines can reach.
        #[arg(long)]
        allow_remote: bool,
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
    /// Challenge on chain the answer with NONCE kept from PROVIDER (one `compute audit`
    /// failed): its request, text and proof go in the extrinsic, a deposit is held, and bonded
    /// verifiers recompute the proof and vote. Upheld, the fee comes back and the provider's
    /// bond is slashed; rejected, the deposit pays the verifiers.
    Challenge {
        provider: String,
        nonce: u64,
        /// Wait for the verifiers' decision and print it.
        #[arg(long)]
        wait: bool,
    },
    /// Judge challenges as a bonded verifier.
    #[command(subcommand)]
    Verifier(VerifierCmd),
    /// Fine-tune a provider's model on your dataset: the price is reserved from your escrow,
    /// the adapter comes encrypted, and you pay when the provider reveals its key.
    #[command(subcommand)]
    Finetune(FinetuneCmd),
}

#[derive(Subcommand)]
enum FinetuneCmd {
    /// Upload DATA (OpenAI's chat fine-tuning JSONL) to PROVIDER and create a job on chain for
    /// it: dataset tokens × epochs × the service's price is reserved from your escrow.
    Create {
        provider: String,
        data: PathBuf,
        #[arg(long, default_value_t = 3)]
        epochs: u32,
        /// LoRA rank.
        #[arg(long, default_value_t = 8)]
        rank: u32,
        #[arg(long, default_value_t = 0.001)]
        learning_rate: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Fine-tuning service id (default: the provider's first).
        #[arg(long)]
        service: Option<ServiceId>,
        /// Follow the job to the end: acknowledge the checked delivery, open the key, decrypt.
        #[arg(long)]
        wait: bool,
        /// Longest to wait with --wait, in seconds.
        #[arg(long, default_value_t = 3600)]
        wait_secs: u64,
    },
    /// The job as the provider and the chain see it.
    Status { provider: String, job: u64 },
    /// The job's latest events (progress and loss), oldest first.
    Events {
        provider: String,
        job: u64,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Download the encrypted adapter and check it against the provider's commitment; once the
    /// key is revealed, open it and decrypt the adapter.
    Download { provider: String, job: u64 },
    /// Acknowledge the delivery on chain (downloads and checks the adapter first).
    Ack { provider: String, job: u64 },
    /// Follow the job to the end (acknowledge, open the key, decrypt), as far as the chain allows.
    Wait {
        provider: String,
        job: u64,
        #[arg(long, default_value_t = 3600)]
        wait_secs: u64,
    },
    /// Cancel the job: free before the provider accepts; afterwards it is paid a share.
    Cancel { provider: String, job: u64 },
    /// Prove on chain that the revealed key does not open the adapter (reveals the job's key).
    Contest { provider: String, job: u64 },
    /// End the job whose current deadline passed: a refund (not accepted, not delivered), a
    /// refund and slash (key withheld), or the provider's pay.
    Expire { provider: String, job: u64 },
    /// Have PROVIDER serve the paid job's adapter as a chat service (its model name is printed;
    /// chat with it like any model: `compute chat PROVIDER --service ID`).
    Deploy { provider: String, job: u64 },
}

#[derive(Subcommand)]
enum VerifierCmd {
    /// Bond the verifier bond and take part in every challenge opened from now on.
    Join,
    /// Stop taking new challenges (the bond stays until the assigned ones end).
    Leave,
    /// Get the bond back after leaving, once no challenge is assigned.
    Withdraw,
    /// Your verifier record: bond, assigned challenges, votes with and against majorities.
    Status,
    /// Watch the chain's open challenges and vote on each assigned to you, until stopped.
    Run {
        /// A local copy of weights challenges may name (matched by hash). Repeatable; other
        /// weights are downloaded from the provider and cached, checked against the hash.
        #[arg(long)]
        weights: Vec<PathBuf>,
        /// A base URL that also serves weights by hash (`/v1/weights/{hash}`: another provider,
        /// a team's cache), asked after the provider. Repeatable.
        #[arg(long = "mirror", value_name = "URL")]
        mirrors: Vec<String>,
        /// Seconds between looks at the open challenges.
        #[arg(long, default_value_t = 3)]
        poll: u64,
    },
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

fn account(s: &str) -> anyhow::Result<AccountId> {
    s.parse().map_err(|_| anyhow!("`{s}` is not an SS58 address"))
}

struct Ctx {
    cli_json: bool,
    recount_model: Option<PathBuf>,
    recount_embedding_model: Option<PathBuf>,
    chain: Chain,
    signer: Option<Signer>,
    state_path: PathBuf,
    timeout: Duration,
}

impl Ctx {
    fn signer(&self) -> anyhow::Result<&Signer> {
        self.signer.as_ref().ok_or_else(|| {
            anyhow!("give your key with --key-file or the COMPUTE_KEY environment variable")
        })
    }

    fn session(&self, provider: &str) -> anyhow::Result<Session> {
        let mut sess = Session::new(
            self.chain.clone(),
            self.signer()?.clone(),
            account(provider)?,
            self.state_path.clone(),
            self.timeout,
        )?;
        if let Some(path) = &self.recount_model {
            sess.recount = Some(
                recount::Recounter::load(path)
                    .with_context(|| format!("cannot read a tokenizer from {}", path.display()))?,
            );
        }
        if let Some(dir) = &self.recount_embedding_model {
            sess.recount_embeddings = Some(
                recount::EmbeddingRecounter::load(dir)
                    .with_context(|| format!("cannot read a tokenizer from {}", dir.display()))?,
            );
        }
        Ok(sess)
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
        if session::is_timeout(&e) {
            eprintln!("(the provider sent nothing for --timeout seconds; it may be overloaded)");
        }
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let env_key = std::env::var("COMPUTE_KEY").ok().filter(|k| !k.trim().is_empty());
    let signer = key::signer(cli.key.as_deref(), cli.key_file.as_deref(), env_key.as_deref())?;
    let chain = Chain::connect(&cli.node, Duration::from_secs(10))
        .await
        .with_context(|| format!("is a node running at {}?", cli.node))?
        .with_progress(|stage| eprintln!("  {stage}"));
    let state_path = cli.state.clone().unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        home.join(".compute").join("state.json")
    });
    let ctx = Ctx {
        cli_json: cli.json,
        recount_model: cli.recount_model.clone(),
        recount_embedding_model: cli.recount_embedding_model.clone(),
        chain,
        signer,
        state_path,
        timeout: Duration::from_secs(cli.timeout),
    };
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
        Command::Embed { provider, texts, service, cap } => {
            let sess = ctx.session(&provider)?;
            let svc = sess.service_of_kind(service, ServiceKind::Embedding).await?;
            embed::run(&sess, &svc, &texts, parse_amount(&cap)?, ctx.cli_json).await?;
        }
        Command::Chat { provider, message, service, max_tokens, cap, temperature, no_stream } => {
            let sess = ctx.session(&provider)?;
            let svc = sess.service_of_kind(service, ServiceKind::Chat).await?;
            let opts = chat::Options {
                max_tokens,
                cap: parse_amount(&cap)?,
                stream: !no_stream,
                temperature,
            };
            match message {
                Some(m) => chat::one_shot(&sess, &svc, &m, &opts, ctx.cli_json).await?,
                None => chat::interactive(&sess, &svc, &opts).await?,
            }
        }
        Command::Audit { provider, sample, weights } => {
            let provider = account(&provider)?;
            let opts = audit::Options { sample, weights, timeout: ctx.timeout };
            let user = ctx.signer()?.account_id();
            let findings = audit::run(&ctx.chain, &ctx.state_path, &user, &provider, &opts).await?;
            let failed = findings.iter().filter(|f| !f.passed).count();
            let mut text = String::new();
            for f in &findings {
                let verdict = if f.passed { "ok  " } else { "FAIL" };
                text.push_str(&format!(
                    "{verdict} nonce {:>6}  {:>5} tokens  {}\n",
                    f.nonce, f.tokens, f.detail
                ));
            }
            text.push_str(&format!("{} answers checked, {failed} failed", findings.len()));
            ctx.out(serde_json::to_value(&findings)?, text);
            if failed > 0 {
                bail!(
                    "{failed} of {} answers from {provider} failed the audit (see each answer's \
                     reason above)",
                    findings.len()
                );
            }
        }
        Command::Proxy { provider, listen, cap, token_file, allow_origins, allow_remote } => {
            let opts = proxy::Options { listen, token_file, allow_origins, allow_remote };
            proxy::serve(ctx.session(&provider)?, parse_amount(&cap)?, opts).await?
        }
        Command::Ack { provider } => ack(&ctx, &provider).await?,
        Command::Receipts { provider, after } => receipts(&ctx, &provider, after).await?,
        Command::Dispute { provider } => dispute(&ctx, &account(&provider)?).await?,
        Command::Challenge { provider, nonce, wait } => {
            let provider = account(&provider)?;
            let signer = ctx.signer()?;
            let id =
                verifier::challenge(&ctx.chain, signer, &ctx.state_path, &provider, nonce).await?;
            if !wait {
                ctx.out(json!({ "challenge": id }), format!("challenge {id} opened"));
                return Ok(());
            }
            eprintln!("challenge {id} opened; waiting for the verifiers' decision…");
            let Some(ComputeEvent::ChallengeEnded {
                outcome,
                refunded,
                slashed,
                challenger_reward,
                ..
            }) = verifier::wait(&ctx.chain, signer, id).await?
            else {
                let record = ctx.chain.challenge_record(&provider).await?;
                ctx.out(
                    json!({ "challenge": id, "outcome": null }),
                    format!(
                        "challenge {id} ended (its event was not seen); {provider} has won {} \
                         and lost {} challenges",
                        record.won, record.lost
                    ),
                );
                return Ok(());
            };
            ctx.out(
                json!({
                    "challenge": id,
                    "outcome": format!("{outcome:?}"),
                    "refunded": refunded.to_string(),
                    "slashed": slashed.to_string(),
                    "reward": challenger_reward.to_string(),
                }),
                format!(
                    "challenge {id}: {outcome:?}; refunded {}, provider slashed {}, your reward {}",
                    show(refunded),
                    show(slashed),
                    show(challenger_reward)
                ),
            );
        }
        Command::Verifier(cmd) => verifier_cmd(&ctx, cmd).await?,
        Command::Finetune(cmd) => finetune(&ctx, cmd).await?,
    }
    Ok(())
}

async fn services(ctx: &Ctx) -> anyhow::Result<()> {
    let mut list = ctx.chain.services().await?;
    list.sort_by(|a, b| {
        (a.provider.to_string(), a.service_id).cmp(&(b.provider.to_string(), b.service_id))
    });
    let kind = |k: ServiceKind| k.as_str();
    let mut rows = Vec::new();
    for s in &list {
        let p = ctx.chain.provider(&s.provider).await?;
        let c = ctx.chain.challenge_record(&s.provider).await?;
        rows.push(json!({
            "provider": s.provider.to_string(), "service_id": s.service_id,
            "kind": kind(s.kind), "model": s.model, "model_hash": format!("{:?}", s.model_hash),
            "url": s.url, "input_price": s.input_price.to_string(),
            "output_price": s.output_price.to_string(), "price_version": s.price_version,
            "requests_settled": p.as_ref().map(|p| p.requests_settled),
            "disputes_lost": p.as_ref().map(|p| p.disputes_lost),
            "earned": p.as_ref().map(|p| p.earned.to_string()),
            "challenges_won": c.won, "challenges_lost": c.lost, "challenges_open": c.open,
        }));
    }
    let mut text = format!("{} service(s)\n", list.len());
    for (s, r) in list.iter().zip(&rows) {
        text.push_str(&format!(
            "{} #{} {} ({}) at {}\n    weights {}\n    price per token: in {} / out {} (version {}); settled requests {}, disputes lost {}; challenges won {}, lost {}, open {}\n",
            s.provider, s.service_id, s.model, kind(s.kind), s.url,
            if s.model_hash.is_zero() { "not committed".to_string() } else { format!("{:?}", s.model_hash) },
            s.input_price, s.output_price, s.price_version, r["requests_settled"], r["disputes_lost"],
            r["challenges_won"], r["challenges_lost"], r["challenges_open"]
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

async fn ack(ctx: &Ctx, provider: &str) -> anyhow::Result<()> {
    let sess = ctx.session(provider)?;
    let svc = sess.service(None, None).await?;
    // An ack covers no request: no request hash, nothing may be charged.
    let signed = sess.sign_with(&svc, H256::zero(), 0).await?;
    let resp = sess.send(&signed, "/v1/ack", Vec::new()).await?;
    let status = resp.status();
    let value: Value = resp.json().await.context("the provider's answer is not JSON")?;
    if !status.is_success() {
        return Err(sess.refused(&signed, status.as_u16(), value).into());
    }
    let receipt: wire::ReceiptJson = serde_json::from_value(value["receipt"].clone())
        .context("the answer carries no receipt")?;
    let r = sess.record(&signed, &receipt, None, None)?;
    ctx.out(json!({ "receipt": receipt }), format!("acknowledged total {}", show(r.receipt.total)));
    Ok(())
}

async fn receipts(ctx: &Ctx, provider: &str, after: u64) -> anyhow::Result<()> {
    let sess = ctx.session(provider)?;
    let list = sess.fetch_receipts(after).await?;
    let mut text = String::new();
    for (r, _) in &list {
        text.push_str(&format!(
            "#{} fee {} total {} ({} + {} tokens)\n",
            r.nonce,
            show(r.fee.parse().unwrap_or_default()),
            show(r.total.parse().unwrap_or_default()),
            r.input_tokens,
            r.output_tokens
        ));
    }
    ctx.out(
        serde_json::to_value(list.iter().map(|(r, _)| r).collect::<Vec<_>>())?,
        format!("{}{} receipt(s), all verified", text, list.len()),
    );
    Ok(())
}

async fn verifier_cmd(ctx: &Ctx, cmd: VerifierCmd) -> anyhow::Result<()> {
    let signer = ctx.signer()?;
    let done = |what: &str, out: compute_client::TxOutcome| {
        ctx.out(
            json!({ "block": format!("{:?}", out.block_hash) }),
            format!("{what} in {:?}", out.block_hash),
        )
    };
    match cmd {
        VerifierCmd::Join => done("joined the verifiers", ctx.chain.join_verifiers(signer).await?),
        VerifierCmd::Leave => done("left the verifiers", ctx.chain.leave_verifiers(signer).await?),
        VerifierCmd::Withdraw => {
            done("verifier bond withdrawn", ctx.chain.withdraw_verifier_bond(signer).await?)
        }
        VerifierCmd::Status => {
            let me = signer.account_id();
            let v = ctx.chain.verifier(&me).await?.ok_or_else(|| anyhow!("{me} is no verifier"))?;
            ctx.out(
                json!({
                    "bond": v.bond.to_string(),
                    "leaving": v.leaving,
                    "assigned": v.assigned,
                    "with_majority": v.with_majority,
                    "against_majority": v.against_majority,
                    "missed": v.missed,
                }),
                format!(
                    "bond {}{}; {} challenges assigned; votes: {} with the majority, {} against, \
                     {} missed",
                    show(v.bond),
                    if v.leaving { " (leaving)" } else { "" },
                    v.assigned,
                    v.with_majority,
                    v.against_majority,
                    v.missed
                ),
            );
        }
        VerifierCmd::Run { weights, mirrors, poll } => {
            let opts = verifier::Options {
                weights,
                mirrors,
                cache: audit::weights_cache(&ctx.state_path),
                poll: Duration::from_secs(poll.max(1)),
                timeout: ctx.timeout,
            };
            verifier::run(&ctx.chain, signer, opts).await?
        }
    }
    Ok(())
}

async fn dispute(ctx: &Ctx, provider: &AccountId) -> anyhow::Result<()> {
    let signer = ctx.signer()?;
    let user = signer.account_id();
    let all = state::State::read(&ctx.state_path)?;
    let hex = all
        .get(&user.to_string(), &provider.to_string())
        .and_then(|st| st.last_receipt.clone())
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

async fn finetune(ctx: &Ctx, cmd: FinetuneCmd) -> anyhow::Result<()> {
    use finetune::{Progress, Settings, Tuner};
    let provider = match &cmd {
        FinetuneCmd::Create { provider, .. }
        | FinetuneCmd::Status { provider, .. }
        | FinetuneCmd::Events { provider, .. }
        | FinetuneCmd::Download { provider, .. }
        | FinetuneCmd::Ack { provider, .. }
        | FinetuneCmd::Wait { provider, .. }
        | FinetuneCmd::Cancel { provider, .. }
        | FinetuneCmd::Contest { provider, .. }
        | FinetuneCmd::Expire { provider, .. }
        | FinetuneCmd::Deploy { provider, .. } => provider.clone(),
    };
    let sess = ctx.session(&provider)?;
    let service = match &cmd {
        FinetuneCmd::Create { service, .. } => *service,
        _ => None,
    };
    let tuner = Tuner::new(&sess, service).await?;
    let finish = |id: u64, p: Progress| match p {
        Progress::Done(path) => ctx.out(
            json!({ "job": id, "adapter": path.display().to_string() }),
            format!("job {id}: adapter decrypted to {}", path.display()),
        ),
        Progress::Waiting(what) => ctx.out(
            json!({ "job": id, "waiting_for": what }),
            format!("job {id}: waiting for {what}"),
        ),
        Progress::Ended => ctx.out(
            json!({ "job": id, "ended": true }),
            format!("job {id} ended on chain without an adapter for you"),
        ),
    };
    match cmd {
        FinetuneCmd::Create {
            data, epochs, rank, learning_rate, seed, wait, wait_secs, ..
        } => {
            let most = compute_client::finetune_api::MAX_LEARNING_RATE;
            if !(learning_rate > 0.0 && learning_rate <= most) {
                bail!("--learning-rate must be within (0, {most}]");
            }
            let (file, _) = tuner.upload(&data).await?;
            let tokens = file.compute.tokens;
            let price = tuner.service.input_price;
            eprintln!(
                "  {} examples, {tokens} tokens × {epochs} epochs × {} = {} reserved",
                file.compute.examples,
                show(price),
                show(Balance::from(tokens).saturating_mul(epochs.into()).saturating_mul(price))
            );
            let settings = Settings {
                epochs,
                rank,
                learning_rate: (learning_rate * 1e6).round() as u32,
                seed,
            };
            let (id, job) = tuner.create(&file, tokens, settings).await?;
            ctx.out(
                serde_json::to_value(&job)?,
                format!("job {id} ({}) created: {:?}", job.id, job.status),
            );
            if wait {
                let p = tuner
                    .wait(id, Duration::from_secs(wait_secs), |w| eprintln!("  waiting for {w}"))
                    .await?;
                finish(id, p);
            }
        }
        FinetuneCmd::Status { job, .. } => {
            let on_chain = tuner.chain_job(job).await?;
            let j = tuner.status(job).await?;
            let chain = on_chain.as_ref().map(|c| {
                let (state, fee) = match &c.state {
                    compute_primitives::JobState::Created { .. } => ("created", None),
                    compute_primitives::JobState::Accepted { .. } => ("accepted", None),
                    compute_primitives::JobState::Delivered { fee, .. } => {
                        ("delivered", Some(*fee))
                    }
                    compute_primitives::JobState::Acknowledged { fee, .. } => {
                        ("acknowledged", Some(*fee))
                    }
                    compute_primitives::JobState::Revealed { fee, .. } => ("revealed", Some(*fee)),
                };
                json!({
                    "state": state,
                    "dataset_tokens": c.spec.dataset_tokens,
                    "epochs": c.spec.epochs,
                    "price": c.price.to_string(),
                    "reserved": c.reserved.to_string(),
                    "fee": fee.map(|f| f.to_string()),
                })
            });
            let state = chain.as_ref().map_or("ended".to_string(), |c| c["state"].to_string());
            ctx.out(
                json!({ "job": serde_json::to_value(&j)?, "chain": chain }),
                format!(
                    "job {job}: {:?}, stage {}, step {}/{}, trained tokens {}, final loss {}\non chain: {state}",
                    j.status,
                    j.compute.stage,
                    j.compute.step,
                    j.compute.total_steps,
                    j.trained_tokens.map_or("-".into(), |t| t.to_string()),
                    j.compute.final_loss.map_or("-".into(), |l| format!("{l:.4}")),
                ),
            );
        }
        FinetuneCmd::Events { job, limit, .. } => {
            let list = tuner.events(job, limit).await?;
            if ctx.cli_json {
                println!("{}", serde_json::to_value(&list)?);
            } else {
                for e in list.data.iter().rev() {
                    println!("{} {}", e.created_at, session::untrusted_text(&e.message));
                }
            }
        }
        FinetuneCmd::Download { job, .. } => {
            let enc = tuner.download(job).await?;
            match tuner.open(job).await {
                Ok(path) => finish(job, Progress::Done(path)),
                Err(e) => ctx.out(
                    json!({ "job": job, "ciphertext": enc.display().to_string() }),
                    format!(
                        "job {job}: encrypted adapter checked, kept at {} ({e})",
                        enc.display()
                    ),
                ),
            }
        }
        FinetuneCmd::Ack { job, .. } => {
            tuner.ack(job).await?;
            ctx.out(json!({ "job": job, "acknowledged": true }), format!("job {job} acknowledged"));
        }
        FinetuneCmd::Wait { job, wait_secs, .. } => {
            let p = tuner
                .wait(job, Duration::from_secs(wait_secs), |w| eprintln!("  waiting for {w}"))
                .await?;
            finish(job, p);
        }
        FinetuneCmd::Cancel { job, .. } => {
            tuner.cancel(job).await?;
            ctx.out(json!({ "job": job, "cancelled": true }), format!("job {job} cancelled"));
        }
        FinetuneCmd::Deploy { job, .. } => {
            let j = tuner.deploy(job).await?;
            let model = j.fine_tuned_model.clone().unwrap_or_default();
            let service = j.compute.service_id.unwrap_or_default();
            ctx.out(
                json!({ "job": job, "model": model, "service_id": service }),
                format!("job {job} deployed: model `{model}`, service {service}"),
            );
        }
        FinetuneCmd::Expire { job, .. } => {
            tuner.expire(job).await?;
            ctx.out(json!({ "job": job, "expired": true }), format!("job {job} ended on chain"));
        }
        FinetuneCmd::Contest { job, .. } => {
            tuner.contest(job).await?;
            ctx.out(
                json!({ "job": job, "contested": true }),
                format!("job {job}: key contested; fee refunded and bond slashed"),
            );
        }
    }
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
