//! `compute challenge` and `compute verifier run`: the two ends of an on-chain challenge.
//!
//! A user challenges a kept answer (`kept.rs`) by putting its request body, text and proof in a
//! `challenge` extrinsic. A verifier daemon watches the chain's open challenges, reads each
//! one's evidence from the block it was opened in, recomputes the proof against the weights the
//! receipt names (from `--weights` files, the cache, or the provider's `/v1/weights/{hash}`),
//! and votes. The rules it applies are in `docs/verification.md` §6:
//! - evidence that is not a readable chat request rejects the challenge (the user chose it);
//! - a malformed proof, a text the proven tokens do not say, a committed tokenizer that cannot
//!   read the request, or activations the weights do not compute uphold it;
//! - weights it cannot get (from `--weights`, the cache, the provider or a `--mirror`) are
//!   asked for again at each look until the deadline, and never voted on: a provider can answer
//!   each verifier differently, so a refusal proves nothing about the provider to the others,
//!   and an absent verifier is only counted, never penalized.

use crate::audit;
use crate::kept;
use anyhow::{anyhow, bail, Context};
use compute_client::{verification::OpenChallenge, Chain, ComputeEvent, Signer};
use compute_inference::{llama::Llama, weights::file_hash, ModelTokenizer};
use compute_primitives::{AccountId, ChallengeId, Evidence, Nonce, Vote};
use polkadot_sdk::sp_core::H256;
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

/// Attempts to find a challenge's evidence before giving it up.
const TRIES: u32 = 5;
/// Longest time spent getting one challenge's weights (a download that trickles is cut here
/// and retried at the next look).
const WEIGHTS_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Models kept loaded between challenges.
const LOADED: usize = 2;

/// Open a challenge of the answer with `nonce` kept from `provider`; returns its id.
pub async fn challenge(
    chain: &Chain,
    signer: &Signer,
    state_path: &Path,
    provider: &AccountId,
    nonce: Nonce,
) -> anyhow::Result<ChallengeId> {
    let user = signer.account_id();
    let (answers, _) = kept::load(&kept::dir(state_path, &user, provider))?;
    let k = answers
        .into_iter()
        .find(|k| k.nonce == nonce)
        .ok_or_else(|| anyhow!("no answer with nonce {nonce} from {provider} is kept"))?;
    let (receipt, proof) = k.decoded().map_err(|e| anyhow!(e))?;
    let body = k.body.ok_or_else(|| {
        anyhow!("answer {nonce} was kept without its request body; it cannot be challenged")
    })?;
    let part = |what: &str, bytes: Vec<u8>| {
        bytes.try_into().map_err(|_| anyhow!("the {what} is too large to put on chain"))
    };
    let evidence = Evidence {
        request: part("request", body.into_bytes())?,
        response: part("response", k.text.into_bytes())?,
        proof: part("proof", proof)?,
    };
    let out = chain.challenge(signer, provider, receipt, evidence).await?;
    out.events
        .iter()
        .find_map(|e| match e {
            ComputeEvent::ChallengeOpened { id, .. } => Some(*id),
            _ => None,
        })
        .ok_or_else(|| anyhow!("the challenge was included but opened no challenge"))
}

/// Wait for challenge `id` to end and return its `ChallengeEnded` event: watched in the best
/// blocks, while the challenge's record is looked at every few seconds (a decision that came
/// before the watch started, or in a block the watch skipped, ends the wait with `None`); past
/// its voting period the challenge is closed by `signer`.
pub async fn wait(
    chain: &Chain,
    signer: &Signer,
    id: ChallengeId,
) -> anyhow::Result<Option<ComputeEvent>> {
    let mut ended = None;
    let watch = chain.watch_best_events(|_, events| {
        ended = events
            .into_iter()
            .find(|e| matches!(e, ComputeEvent::ChallengeEnded { id: i, .. } if *i == id));
        ended.is_none()
    });
    let poll = async {
        loop {
            tokio::time::sleep(Duration::from_secs(3)).await;
            match chain.open_challenge(id).await? {
                None => {
                    // Give the watch the block it may still be reading.
                    tokio::time::sleep(Duration::from_secs(6)).await;
                    return Ok::<_, anyhow::Error>(());
                }
                Some(c) if chain.block_number(None).await? > c.deadline => {
                    eprintln!("challenge {id}: its voting period is over; closing it");
                    chain.close_challenge(signer, id).await?;
                }
                Some(_) => {}
            }
        }
    };
    tokio::select! {
        watched = watch => watched?,
        polled = poll => polled?,
    }
    Ok(ended)
}

/// What the daemon is given.
pub struct Options {
    /// Local weight files, matched to challenges by hash.
    pub weights: Vec<PathBuf>,
    /// Where downloaded weights are cached.
    pub cache: PathBuf,
    /// Base URLs that also serve weights by hash (`GET {url}/v1/weights/{hash}`: another
    /// provider, a team's cache), asked after the provider.
    pub mirrors: Vec<String>,
    /// Seconds between looks at the open challenges.
    pub poll: Duration,
    /// Longest wait for each read of a download.
    pub timeout: Duration,
}

/// The daemon's memory: loaded models, missing evidence per challenge, challenges done with.
/// Entries of challenges no longer open are dropped at each look.
struct Verifier {
    me: AccountId,
    local: BTreeMap<H256, PathBuf>,
    loaded: Vec<(H256, Llama, ModelTokenizer)>,
    missing: BTreeMap<ChallengeId, u32>,
    done: BTreeSet<ChallengeId>,
}

/// Watch the chain's open challenges and vote on each assigned to `signer`, until stopped.
pub async fn run(chain: &Chain, signer: &Signer, opts: Options) -> anyhow::Result<()> {
    let me = signer.account_id();
    match chain.verifier(&me).await? {
        Some(v) if !v.leaving => {}
        Some(_) => bail!("{me} has left the verifiers; it is assigned no new challenges"),
        None => bail!("{me} is not a verifier: `compute verifier join` bonds it first"),
    }
    let mut local = BTreeMap::new();
    for path in &opts.weights {
        let hash = H256(file_hash(path).with_context(|| format!("reading {}", path.display()))?);
        eprintln!("weights {hash:?}: {}", path.display());
        local.insert(hash, path.clone());
    }
    let mut v =
        Verifier { me, local, loaded: Vec::new(), missing: BTreeMap::new(), done: BTreeSet::new() };
    eprintln!("verifying as {}; looking for challenges every {:?}", v.me, opts.poll);
    loop {
        if let Err(e) = v.look(chain, signer, &opts).await {
            eprintln!("reading the open challenges: {e:#}");
        }
        tokio::time::sleep(opts.poll).await;
    }
}

impl Verifier {
    /// One look at the open challenges: vote on those assigned and not yet voted on, the
    /// earliest deadline first; close those assigned whose voting period is over.
    async fn look(&mut self, chain: &Chain, signer: &Signer, opts: &Options) -> anyhow::Result<()> {
        let mut open = chain.open_challenges().await?;
        let ids: BTreeSet<ChallengeId> = open.iter().map(|(id, _)| *id).collect();
        self.missing.retain(|id, _| ids.contains(id));
        self.done.retain(|id| ids.contains(id));
        let now = chain.block_number(None).await?;
        open.retain(|(_, c)| c.verifiers.iter().any(|(who, _)| *who == self.me));
        open.sort_by_key(|(_, c)| c.deadline);
        for (id, c) in open {
            if now > c.deadline {
                // Over: ending it frees this verifier's bond from it.
                if let Err(e) = chain.close_challenge(signer, id).await {
                    eprintln!("challenge {id}: closing: {e}");
                }
                continue;
            }
            let voted = c.verifiers.iter().any(|(who, vote)| *who == self.me && vote.is_some());
            if voted || self.done.contains(&id) {
                continue;
            }
            if let Err(e) = self.handle(chain, signer, opts, id, &c).await {
                eprintln!("challenge {id}: {e:#}");
            }
        }
        Ok(())
    }

    async fn handle(
        &mut self,
        chain: &Chain,
        signer: &Signer,
        opts: &Options,
        id: ChallengeId,
        c: &OpenChallenge,
    ) -> anyhow::Result<()> {
        let Some((_, evidence)) = chain.challenge_evidence(c).await? else {
            let n = self.missing.entry(id).or_default();
            *n += 1;
            if *n >= TRIES {
                self.done.insert(id);
            }
            bail!("no extrinsic in block {} carries its evidence", c.opened_at);
        };
        eprintln!(
            "challenge {id}: {} against {} (nonce {}), weights {:?}",
            c.user, c.provider, c.nonce, c.model_hash
        );
        let got = tokio::time::timeout(WEIGHTS_TIMEOUT, self.model(chain, opts, c))
            .await
            .unwrap_or_else(|_| Err(anyhow!("getting the weights took over {WEIGHTS_TIMEOUT:?}")));
        let i = got.context("getting the committed weights (will try again)")?;
        let (_, model, tokenizer) = &self.loaded[i];
        let (vote, why) = verdict(model, tokenizer, &evidence);
        eprintln!("challenge {id}: voting {vote:?}: {why}");
        chain.vote(signer, id, vote).await?;
        self.done.insert(id);
        Ok(())
    }

    /// Index in `loaded` of the model the challenge's receipt names: a `--weights` file, the
    /// cache, else downloaded from the provider's service that names these weights, then from
    /// each `--mirror`; always checked against the hash.
    async fn model(
        &mut self,
        chain: &Chain,
        opts: &Options,
        c: &OpenChallenge,
    ) -> anyhow::Result<usize> {
        if let Some(i) = self.loaded.iter().position(|(h, _, _)| *h == c.model_hash) {
            return Ok(i);
        }
        let local = self.local.get(&c.model_hash).cloned();
        let path = match &local {
            Some(path) => {
                audit::weights(&opts.cache, c.model_hash, Some(path), None, opts.timeout).await?
            }
            None => {
                let provider = chain
                    .services_of(&c.provider)
                    .await?
                    .into_iter()
                    .find(|s| s.model_hash == c.model_hash)
                    .map(|s| s.url);
                let mut failures = Vec::new();
                let mut found = None;
                // The cache first (no source), then each source in turn.
                let sources = std::iter::once(None)
                    .chain(provider.into_iter().chain(opts.mirrors.iter().cloned()).map(Some));
                for url in sources {
                    match audit::weights(
                        &opts.cache,
                        c.model_hash,
                        None,
                        url.as_deref(),
                        opts.timeout,
                    )
                    .await
                    {
                        Ok(path) => {
                            found = Some(path);
                            break;
                        }
                        Err(e) => failures.push(format!("{e:#}")),
                    }
                }
                found.ok_or_else(|| anyhow!("{}", failures.join("; ")))?
            }
        };
        if self.loaded.len() >= LOADED {
            self.loaded.remove(0);
        }
        let (model, tokenizer) = tokio::task::block_in_place(|| audit::load(&path))?;
        self.loaded.push((c.model_hash, model, tokenizer));
        Ok(self.loaded.len() - 1)
    }
}

/// The vote on `evidence` with the weights' `model` and `tokenizer`, and why.
fn verdict(model: &Llama, tokenizer: &ModelTokenizer, evidence: &Evidence) -> (Vote, String) {
    let request: serde_json::Value = match serde_json::from_slice(&evidence.request) {
        Ok(r) => r,
        Err(e) => return (Vote::Honest, format!("the request is not JSON ({e}): nothing shown")),
    };
    let Ok(text) = std::str::from_utf8(&evidence.response) else {
        return (Vote::Cheated, "the signed response is not UTF-8 text".into());
    };
    let judged = tokio::task::block_in_place(|| {
        audit::judge(model, tokenizer, &request, text, &evidence.proof)
    });
    match judged {
        Err(why) => (Vote::Honest, format!("the request cannot be judged ({why}): nothing shown")),
        Ok((tokens, Ok(detail))) => (Vote::Honest, format!("{tokens} tokens: {detail}")),
        Ok((tokens, Err(why))) => (Vote::Cheated, format!("{tokens} tokens: {why}")),
    }
}
