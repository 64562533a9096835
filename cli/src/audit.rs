//! `compute audit PROVIDER`: check the answers kept from PROVIDER (`kept.rs`) against the
//! weights its services committed to. For each answer (or a random sample): the proof is the
//! one the signed receipt commits to, the text is what the proven tokens decode to, and the
//! proven activations are what the committed weights compute for the request (one prefill,
//! `compute_inference::proof::validate`). The weights come from `--weights FILE` or from the
//! provider (`GET /v1/weights/{model_hash}`), checked against the hash before use and cached
//! beside the state file.

use crate::kept::{self, Kept};
use anyhow::{anyhow, bail, Context};
use candle_core::Device;
use compute_client::{wire, Chain};
use compute_inference::{
    llama::Llama,
    proof::{covers_text, validate, ActivationProof, Verdict, THRESHOLDS},
    read_gguf,
    weights::file_hash,
    ChatMessage, ChatTemplate, ModelTokenizer, WeightFormat,
};
use compute_primitives::AccountId;
use futures::StreamExt;
use polkadot_sdk::sp_core::H256;
use serde::Serialize;
use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

/// Largest weight file downloaded (a 70B model at 6 bits; larger ones are given with `--weights`).
const MAX_WEIGHTS_BYTES: u64 = 64 << 30;

/// What to audit and with what.
pub struct Options {
    /// Share of the kept answers checked, each drawn at random (1 = all).
    pub sample: f64,
    /// A local copy of the weights (checked against the hash).
    pub weights: Option<PathBuf>,
    /// Longest wait for each read of a download.
    pub timeout: Duration,
}

/// The verdict on one kept answer.
#[derive(Debug, Serialize)]
pub struct Finding {
    pub nonce: u64,
    pub tokens: usize,
    pub passed: bool,
    pub detail: String,
}

/// Audit the answers `user` kept from `provider`; returns a finding per answer checked.
pub async fn run(
    chain: &Chain,
    state_path: &Path,
    user: &AccountId,
    provider: &AccountId,
    opts: &Options,
) -> anyhow::Result<Vec<Finding>> {
    anyhow::ensure!(opts.sample > 0.0 && opts.sample <= 1.0, "--sample must be in (0, 1]");
    let (all, unreadable) = kept::load(&kept::dir(state_path, user, provider))?;
    let mut findings: Vec<Finding> = unreadable
        .into_iter()
        .map(|(nonce, why)| Finding { nonce, tokens: 0, passed: false, detail: why })
        .collect();
    if all.is_empty() && findings.is_empty() {
        bail!(
            "no answers from {provider} are kept; `compute chat` and `compute proxy` keep every \
             chat answer whose receipt verifies"
        );
    }
    let mut by_weights: BTreeMap<H256, Vec<Kept>> = BTreeMap::new();
    for k in all {
        if draw(opts.sample)? {
            by_weights.entry(k.model_hash).or_default().push(k);
        }
    }
    let services = chain.services_of(provider).await?;
    for (hash, answers) in by_weights {
        if hash.is_zero() {
            for k in answers {
                findings.push(Finding {
                    nonce: k.nonce,
                    tokens: 0,
                    passed: false,
                    detail: "the service committed to no weights: nothing to check against".into(),
                });
            }
            continue;
        }
        let url = services
            .iter()
            .find(|s| s.model_hash == hash)
            .or_else(|| services.iter().find(|s| s.service_id == answers[0].service_id))
            .map(|s| s.url.clone());
        // Weights that cannot be had (the provider stopped serving them, or serves others) fail
        // the answers that need them; they do not stop the audit of the rest.
        let loaded = async {
            let cache = weights_cache(state_path);
            let local = opts.weights.as_deref();
            let path = weights(&cache, hash, local, url.as_deref(), opts.timeout).await?;
            load(&path)
        };
        let (model, tokenizer) = match loaded.await {
            Ok(m) => m,
            Err(e) => {
                for k in answers {
                    findings.push(Finding {
                        nonce: k.nonce,
                        tokens: 0,
                        passed: false,
                        detail: format!("the committed weights {hash:?} cannot be checked: {e:#}"),
                    });
                }
                continue;
            }
        };
        for k in answers {
            let (tokens, result) = match check(&model, &tokenizer, &k) {
                Ok((tokens, verdict)) => (tokens, verdict),
                Err(why) => (0, Err(why)),
            };
            findings.push(Finding {
                nonce: k.nonce,
                tokens,
                passed: result.is_ok(),
                detail: match result {
                    Ok(detail) | Err(detail) => detail,
                },
            });
        }
    }
    findings.sort_by_key(|f| f.nonce);
    Ok(findings)
}

/// The model and tokenizer of a GGUF file.
pub fn load(path: &Path) -> anyhow::Result<(Llama, ModelTokenizer)> {
    let loaded = read_gguf(path, WeightFormat::AsStored)?;
    let model = Llama::from_gguf(&loaded.content, &loaded.bytes, &Device::Cpu)
        .map_err(|e| anyhow!("loading {}: {e}", path.display()))?;
    let tokenizer = ModelTokenizer::from_gguf(&loaded.content)?;
    Ok((model, tokenizer))
}

/// Whether to check an answer, drawn with this machine's randomness: the provider cannot tell
/// which answers an audit will look at.
fn draw(rate: f64) -> anyhow::Result<bool> {
    if rate >= 1.0 {
        return Ok(true);
    }
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| anyhow!("no randomness: {e}"))?;
    Ok((u64::from_le_bytes(bytes) as f64) < rate * u64::MAX as f64)
}

/// One kept answer: `(tokens, Ok(detail))` when it holds up, `Err(why)` when it does not.
#[allow(clippy::type_complexity)]
fn check(
    model: &Llama,
    tokenizer: &ModelTokenizer,
    k: &Kept,
) -> Result<(usize, Result<String, String>), String> {
    let (receipt, bytes) = k.decoded()?;
    if wire::proof_hash(&bytes) != receipt.receipt.proof_hash {
        return Err("the proof is not the one the receipt commits to".into());
    }
    judge(model, tokenizer, &k.request, &k.text, &bytes)
}

/// Whether `text` and the activation proof `proof` (bytes) are what `model` computes for the
/// chat `request`: `(tokens, Ok(detail))` when they hold up, `(tokens, Err(why))` when they do
/// not, and `Err(why)` when the request itself cannot be read (nothing to judge).
#[allow(clippy::type_complexity)]
pub fn judge(
    model: &Llama,
    tokenizer: &ModelTokenizer,
    request: &serde_json::Value,
    text: &str,
    proof: &[u8],
) -> Result<(usize, Result<String, String>), String> {
    let messages = ChatMessage::all_from_openai(&request["messages"])
        .map_err(|e| format!("the request: {e}"))?;
    // The tokenizer is part of the committed weights: one that cannot read the request is not
    // what served it.
    let prompt = match tokenizer.encode(&ChatTemplate::default().render(&messages)) {
        Ok(p) => p,
        Err(e) => return Ok((0, Err(format!("the committed tokenizer cannot read it: {e}")))),
    };
    let proof = match ActivationProof::from_bytes(proof) {
        Ok(p) => p,
        Err(e) => return Ok((0, Err(format!("the proof is malformed: {e}")))),
    };
    let tokens = proof.len();
    let stop: Vec<String> = match &request["stop"] {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(v) => {
            v.iter().filter_map(|s| s.as_str().map(String::from)).collect()
        }
        _ => Vec::new(),
    };
    if !covers_text(tokenizer, &proof, text, &stop) {
        return Ok((tokens, Err("the text received is not what the proven tokens say".into())));
    }
    Ok((
        tokens,
        match validate(model, &prompt, &proof, THRESHOLDS) {
            Verdict::Pass(worst) => Ok(worst.map_or_else(
                || "no tokens".to_string(),
                |w| format!("activations match (largest chunk error {:.3} of RMS)", w.error),
            )),
            Verdict::Fail(reason) => Err(format!("not these weights' answer: {reason}")),
        },
    ))
}

/// Where downloaded weights are cached, beside the state file.
pub fn weights_cache(state_path: &Path) -> PathBuf {
    state_path.parent().unwrap_or_else(|| Path::new(".")).join("weights")
}

/// The weight file committed to as `hash`: `local` (which must be it), else the cache, else
/// downloaded from the service's `url`; always checked against the hash.
pub async fn weights(
    cache: &Path,
    hash: H256,
    local: Option<&Path>,
    url: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<PathBuf> {
    let check = |path: &Path| -> anyhow::Result<bool> {
        Ok(H256(file_hash(path).with_context(|| format!("reading {}", path.display()))?) == hash)
    };
    if let Some(path) = local {
        if !check(path)? {
            bail!("{} is not the weights the service committed to ({hash:?})", path.display());
        }
        return Ok(path.to_path_buf());
    }
    let cache = cache.to_path_buf();
    let path = cache.join(format!("{hash:?}.gguf"));
    if path.exists() && check(&path)? {
        return Ok(path);
    }
    let url = url.ok_or_else(|| {
        anyhow!("no service of this provider serves weights {hash:?}; give a copy with --weights")
    })?;
    std::fs::create_dir_all(&cache)?;
    let from = format!("{}/v1/weights/{hash:?}", url.trim_end_matches('/'));
    eprintln!("downloading the committed weights from {from}");
    // One partial file per process: two audits or daemons sharing the cache do not write into
    // each other's.
    let partial = cache.join(format!("{hash:?}.{}.part", std::process::id()));
    if let Err(e) = download(&from, &partial, timeout).await {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    if !check(&partial)? {
        let _ = std::fs::remove_file(&partial);
        bail!("{url} served weights that do not hash to {hash:?}");
    }
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

async fn download(url: &str, to: &Path, timeout: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().connect_timeout(timeout).read_timeout(timeout).build()?;
    let resp = http.get(url).send().await.with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!("GET {url}: {}", resp.status());
    }
    let total = resp.content_length();
    if total.is_some_and(|t| t > MAX_WEIGHTS_BYTES) {
        bail!("GET {url}: {} bytes is more than any weights this client takes", total.unwrap_or(0));
    }
    let mut file = std::fs::File::create(to)?;
    let mut stream = resp.bytes_stream();
    let (mut got, mut shown) = (0u64, 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("reading {url}"))?;
        got += chunk.len() as u64;
        if got > MAX_WEIGHTS_BYTES {
            bail!("GET {url}: the provider sends more than any weights this client takes");
        }
        file.write_all(&chunk)?;
        if got - shown >= 64 << 20 {
            shown = got;
            match total {
                Some(t) => eprintln!("  {} of {} MiB", got >> 20, t >> 20),
                None => eprintln!("  {} MiB", got >> 20),
            }
        }
    }
    file.sync_all()?;
    Ok(())
}
