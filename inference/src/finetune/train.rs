//! The training loop: epochs over the dataset in a seeded order, one sequence per forward and
//! backward pass, gradients summed over `grad_accum` sequences per optimizer step (AdamW),
//! progress reported and cancellation checked every step.

use super::{adapter::Adapter, dataset::Dataset, model::LoraModel, rng::SplitMix64};
use candle_core::{backprop::GradStore, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

/// The seed stream of epoch `e`'s example order is `ORDER_STREAM + e`.
const ORDER_STREAM: u64 = 1 << 32;

/// Optimisation settings of a job (the LoRA shape and the initialisation seed are the
/// model's, [`LoraModel::load`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainParams {
    /// Passes over the dataset.
    pub epochs: usize,
    /// AdamW learning rate (constant).
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Seed of the example order (each epoch reshuffled).
    pub seed: u64,
    /// Sequences whose gradients are summed per optimizer step (the last step of an epoch may
    /// take fewer).
    pub grad_accum: usize,
    /// The gradient is scaled down to this global L2 norm when above it.
    pub max_grad_norm: Option<f64>,
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            epochs: 3,
            lr: 1e-3,
            weight_decay: 0.0,
            seed: 0,
            grad_accum: 1,
            max_grad_norm: Some(1.0),
        }
    }
}

impl TrainParams {
    /// Largest number of epochs accepted.
    pub const MAX_EPOCHS: usize = 1000;
}

/// What is reported after each optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Steps done (1-based).
    pub step: usize,
    /// Steps of the whole job.
    pub total_steps: usize,
    /// The epoch of this step (1-based).
    pub epoch: usize,
    /// Mean negative log-likelihood per learnt token of this step's sequences.
    pub loss: f32,
    /// Tokens processed so far (every token of every sequence fed).
    pub tokens: u64,
    /// Time since training started.
    pub elapsed: Duration,
}

/// The figures of a finished job.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainStats {
    /// Optimizer steps taken.
    pub steps: usize,
    /// Tokens processed: the dataset's token count times the epochs.
    pub trained_tokens: u64,
    /// Learnt tokens processed (those the loss is on).
    pub loss_tokens: u64,
    /// Per epoch, the mean negative log-likelihood per learnt token over the epoch (each as the
    /// adapters stood when the sequence was fed).
    pub epoch_losses: Vec<f32>,
    /// The last epoch's mean loss.
    pub final_loss: f32,
    /// Wall time of training.
    pub elapsed: Duration,
}

/// A trained adapter and how it was trained.
#[derive(Debug, Clone)]
pub struct TrainOutput {
    pub adapter: Adapter,
    pub stats: TrainStats,
}

/// Why training stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("cancelled after {steps} steps")]
    Cancelled { steps: usize },
    #[error("invalid training settings: {0}")]
    Invalid(String),
    #[error("the loss is not finite at step {step}: lower the learning rate")]
    Diverged { step: usize },
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
}

/// Train `model`'s adapters on `dataset`: `params.epochs` passes, each in an order drawn from
/// `params.seed`; the loss of a sequence is the summed negative log-likelihood of its learnt
/// tokens, a step's loss that sum over its sequences divided by their learnt tokens (the mean
/// per learnt token). `on_progress` gets each step's figures; `cancel` is read before each
/// step and stops training with [`TrainError::Cancelled`]. Deterministic for a given model,
/// dataset, parameters, device and thread count.
pub fn train(
    model: &LoraModel,
    dataset: &Dataset,
    params: &TrainParams,
    cancel: &AtomicBool,
    mut on_progress: impl FnMut(&Progress),
) -> Result<TrainOutput, TrainError> {
    if params.epochs == 0 || params.epochs > TrainParams::MAX_EPOCHS {
        return Err(TrainError::Invalid(format!(
            "{} epochs outside 1..={}",
            params.epochs,
            TrainParams::MAX_EPOCHS
        )));
    }
    if !(params.lr.is_finite() && params.lr > 0.0) || !params.weight_decay.is_finite() {
        return Err(TrainError::Invalid("learning rate and weight decay must be finite".into()));
    }
    if params.grad_accum == 0 {
        return Err(TrainError::Invalid("grad_accum must be at least 1".into()));
    }
    if dataset.examples.is_empty() {
        return Err(TrainError::Invalid("empty dataset".into()));
    }
    let context = model.config().context;
    if let Some(e) = dataset.examples.iter().find(|e| e.tokens.len() > context) {
        return Err(TrainError::Invalid(format!(
            "line {}: {} tokens exceed the model's context of {context}",
            e.line,
            e.tokens.len()
        )));
    }
    let vars = model.vars();
    let mut optimizer = AdamW::new(
        vars.clone(),
        ParamsAdamW { lr: params.lr, weight_decay: params.weight_decay, ..ParamsAdamW::default() },
    )?;
    let n = dataset.examples.len();
    let steps_per_epoch = n.div_ceil(params.grad_accum);
    let total_steps = steps_per_epoch * params.epochs;
    let start = Instant::now();
    let (mut step, mut tokens, mut loss_tokens) = (0usize, 0u64, 0u64);
    let mut epoch_losses = Vec::with_capacity(params.epochs);
    tracing::info!(
        examples = n,
        tokens = dataset.token_count(),
        epochs = params.epochs,
        total_steps,
        rank = model.lora_config().rank,
        "fine-tuning starts"
    );
    for epoch in 0..params.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        SplitMix64::new(params.seed, ORDER_STREAM + epoch as u64).shuffle(&mut order);
        let (mut epoch_nll, mut epoch_count) = (0f64, 0usize);
        for chunk in order.chunks(params.grad_accum) {
            if cancel.load(Ordering::Relaxed) {
                return Err(TrainError::Cancelled { steps: step });
            }
            let learnt: usize = chunk.iter().map(|&i| dataset.examples[i].loss_tokens()).sum();
            let mut summed: Vec<Option<Tensor>> = vec![None; vars.len()];
            let mut step_nll = 0f64;
            for &i in chunk {
                let example = &dataset.examples[i];
                let (nll, _) = model.nll(example)?;
                step_nll += nll.to_scalar::<f32>()? as f64;
                let mut grads = (nll / learnt as f64)?.backward()?;
                for (sum, var) in summed.iter_mut().zip(&vars) {
                    if let Some(g) = grads.remove(var.as_tensor()) {
                        *sum = Some(match sum.take() {
                            Some(s) => (s + g)?,
                            None => g,
                        });
                    }
                }
                tokens += example.tokens.len() as u64;
            }
            step += 1;
            let loss = (step_nll / learnt.max(1) as f64) as f32;
            if !loss.is_finite() {
                return Err(TrainError::Diverged { step });
            }
            let grads = clipped(&vars, summed, params.max_grad_norm)?;
            optimizer.step(&grads)?;
            epoch_nll += step_nll;
            epoch_count += learnt;
            loss_tokens += learnt as u64;
            let progress = Progress {
                step,
                total_steps,
                epoch: epoch + 1,
                loss,
                tokens,
                elapsed: start.elapsed(),
            };
            tracing::debug!(step, total_steps, epoch = epoch + 1, loss, tokens, "fine-tuning step");
            on_progress(&progress);
        }
        let mean = (epoch_nll / epoch_count.max(1) as f64) as f32;
        tracing::info!(epoch = epoch + 1, loss = mean, "fine-tuning epoch done");
        epoch_losses.push(mean);
    }
    let stats = TrainStats {
        steps: step,
        trained_tokens: tokens,
        loss_tokens,
        final_loss: epoch_losses.last().copied().unwrap_or(f32::NAN),
        epoch_losses,
        elapsed: start.elapsed(),
    };
    Ok(TrainOutput { adapter: model.to_adapter()?, stats })
}

/// The summed gradients as a store for the optimizer, scaled down to `max_norm` (global L2
/// norm) when above it.
fn clipped(
    vars: &[Var],
    summed: Vec<Option<Tensor>>,
    max_norm: Option<f64>,
) -> Result<GradStore, candle_core::Error> {
    let mut factor = 1.0;
    if let Some(max) = max_norm {
        let mut squares = 0f64;
        for g in summed.iter().flatten() {
            squares += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let norm = squares.sqrt();
        if norm > max && norm.is_finite() {
            factor = max / norm;
        }
    }
    let mut store = GradStore::default();
    for (var, g) in vars.iter().zip(summed) {
        if let Some(g) = g {
            let g = if factor < 1.0 { (g * factor)? } else { g };
            store.insert(var.as_tensor(), g);
        }
    }
    Ok(store)
}
