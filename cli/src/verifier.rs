//! `compute challenge` and `compute verifier run`: the two ends of an on-chain challenge.
//!
//! A user challenges a kept answer (`kept.rs`) by putting its request body, text and proof in a
//! `challenge` extrinsic. A verifier daemon watches the chain's open challenges, reads each
//! one's evidence from the block it was opened in, recomputes the proof against the weights the
//! receipt names (from `--weights` files, the cache, or the provider's `/v1/weights/{hash}`),
//! and votes. The rules it applies are in `docs/verification.md` §5:
//! - evidence that is not a readable chat request rejects the challenge (the user chose it);
//! - a malformed proof, a text the proven tokens do not say, or activations the weights do not
//!   compute uphold it;
//! - weights the provider committed to but does not serve uphold it after [`WEIGHT_TRIES`]
//!   attempts: serving them is part of the commitment.

use crate::audit;
use crate::kept;
use anyhow::{anyhow, bail, Context};
use compute_client::{verification::OpenChallenge, wire, Chain, ComputeEvent, Signer};
use compute_inference::{llama::Llama, weights::file_hash, ModelTokenizer};
use compute_primitives::{AccountId, ChallengeId, Evidence, Nonce, SignedReceipt, Vote};
use polkadot_sdk::sp_core::H256;
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

/// Attempts to get a challenge's weights before voting that the provider withholds them.
const WEIGHT_TRIES: u32 = 3;
/// Attempts to find a challenge's evidence or submit its vote before giving it up.
const TRIES: u32 = 5;
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
    let body = k.body.ok_or_else(|| {
        anyhow!("answer {nonce} was kept without its request body; it cannot be challenged")
    })?;
    let receipt: SignedReceipt =
        wire::from_hex("receipt", &k.receipt).map_err(|e| anyhow!("kept receipt: {e}"))?;
    let proof = k
        .proof
        .strip_prefix("0x")
        .and_then(|h| hex::decode(h).ok())
        .ok_or_else(|| anyhow!("kept proof is not hex"))?;
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

/// What the daemon is given.
pub struct Options {
    /// Local weight files, matched to challenges by hash.
    pub weights: Vec<PathBuf>,
    /// Where downloaded weights are cached.
    pub cache: PathBuf,
    /// Seconds between looks at the open challenges.
    pub poll: Duration,
    /// Longest wait for each read of a download.
    pub timeout: Duration,
}

/// The daemon's memory: loaded models, weights it could not get, challenges given up on.
struct Verifier {
    me: AccountId,
    local: BTreeMap<H256, PathBuf>,
    loaded: Vec<(H256, Llama, ModelTokenizer)>,
    weight_failures: BTreeMap<H256, u32>,
    failures: BTreeMap<ChallengeId, u32>,
    given_up: BTreeSet<ChallengeId>,
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
    let mut v = Verifier {
        me,
        local,
        loaded: Vec::new(),
        weight_failures: BTreeMap::new(),
        failures: BTreeMap::new(),
        given_up: BTreeSet::new(),
    };
    eprintln!("verifying as {}; looking for challenges every {:?}", v.me, opts.poll);
    loop {
        match chain.open_challenges().await {
            Ok(open) => {
                for (id, c) in open {
                    let mine = c.verifiers.iter().any(|(who, vote)| *who == v.me && vote.is_none());
                    if mine && !v.given_up.contains(&id) {
                        if let Err(e) = v.handle(chain, signer, &opts, id, &c).await {
                            eprintln!("challenge {id}: {e:#}");
                            let n = v.failures.entry(id).or_default();
                            *n += 1;
                            if *n >= TRIES {
                                eprintln!("challenge {id}: giving up after {TRIES} attempts");
                                v.given_up.insert(id);
                            }
                        }
                    }
                }
            }
            Err(e) => eprintln!("reading the open challenges: {e}"),
        }
        tokio::time::sleep(opts.poll).await;
    }
}

impl Verifier {
    async fn handle(
        &mut self,
        chain: &Chain,
        signer: &Signer,
        opts: &Options,
        id: ChallengeId,
        c: &OpenChallenge,
    ) -> anyhow::Result<()> {
        let (_, evidence) = chain
            .challenge_evidence(c)
            .await?
            .ok_or_else(|| anyhow!("no extrinsic in block {} carries its evidence", c.opened_at))?;
        eprintln!(
            "challenge {id}: {} against {} (nonce {}), weights {:?}",
            c.user, c.provider, c.nonce, c.model_hash
        );
        let (vote, why) = match self.model(chain, opts, c).await {
            Ok(i) => {
                let (_, model, tokenizer) = &self.loaded[i];
                verdict(model, tokenizer, &evidence)
            }
            Err(e) => {
                let n = self.weight_failures.entry(c.model_hash).or_default();
                *n += 1;
                if *n < WEIGHT_TRIES {
                    return Err(e.context("getting the committed weights (will try again)"));
                }
                (Vote::Cheated, format!("the committed weights cannot be had: {e:#}"))
            }
        };
        eprintln!("challenge {id}: voting {vote:?}: {why}");
        chain.vote(signer, id, vote).await?;
        Ok(())
    }

    /// Index in `loaded` of the model the challenge's receipt names.
    async fn model(
        &mut self,
        chain: &Chain,
        opts: &Options,
        c: &OpenChallenge,
    ) -> anyhow::Result<usize> {
        if let Some(i) = self.loaded.iter().position(|(h, _, _)| *h == c.model_hash) {
            return Ok(i);
        }
        let url = chain
            .services_of(&c.provider)
            .await?
            .into_iter()
            .find(|s| s.model_hash == c.model_hash)
            .or(chain.service(&c.provider, c.service_id).await?)
            .map(|s| s.url);
        let local = self.local.get(&c.model_hash).map(PathBuf::as_path);
        let path =
            audit::weights(&opts.cache, c.model_hash, local, url.as_deref(), opts.timeout).await?;
        let (model, tokenizer) = tokio::task::block_in_place(|| audit::load(&path))?;
        if self.loaded.len() >= LOADED {
            self.loaded.remove(0);
        }
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
