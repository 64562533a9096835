//! Prometheus metrics, rendered in the text exposition format.

use std::{
    fmt::Write,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Mutex,
    },
};

const LATENCY_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// The worker's counters and gauges.
#[derive(Default)]
pub struct Metrics {
    pub requests_ok: AtomicU64,
    pub requests_rejected: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Texts embedded (each input of an embeddings request).
    pub embedding_inputs: AtomicU64,
    pub queue_depth: AtomicU64,
    pub in_progress: AtomicU64,
    pub settlements: AtomicU64,
    pub settlement_failures: AtomicU64,
    pub claims_rejected: AtomicU64,
    /// Owed but not yet settled, summed over users (set by the scheduler).
    pub unsettled: Mutex<u128>,
    /// Paid by the chain through this worker's settlements.
    pub earned: Mutex<u128>,
    latency: Mutex<(Vec<u64>, f64, u64)>,
    rejected_by_code: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// Record a served request's latency in seconds.
    pub fn observe_latency(&self, secs: f64) {
        let mut l = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        if l.0.is_empty() {
            l.0 = vec![0; LATENCY_BUCKETS.len()];
        }
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *b {
                l.0[i] += 1;
            }
        }
        l.1 += secs;
        l.2 += 1;
    }

    /// Count a rejection by its code.
    pub fn rejected(&self, code: &'static str) {
        self.requests_rejected.fetch_add(1, Relaxed);
        *self
            .rejected_by_code
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    /// The Prometheus text; `embedding_passes` is the embedding thread's count of model calls
    /// (absent without an embedding model).
    pub fn render(&self, embedding_passes: Option<u64>) -> String {
        let mut s = String::new();
        let mut counter = |name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        counter(
            "compute_requests_total",
            "Requests served (chat and embeddings).",
            "counter",
            self.requests_ok.load(Relaxed).to_string(),
        );
        counter(
            "compute_prompt_tokens_total",
            "Prompt (and embedding input) tokens billed.",
            "counter",
            self.prompt_tokens.load(Relaxed).to_string(),
        );
        counter(
            "compute_completion_tokens_total",
            "Generated tokens billed.",
            "counter",
            self.completion_tokens.load(Relaxed).to_string(),
        );
        counter(
            "compute_embedding_inputs_total",
            "Texts embedded.",
            "counter",
            self.embedding_inputs.load(Relaxed).to_string(),
        );
        if let Some(passes) = embedding_passes {
            counter(
                "compute_embedding_passes_total",
                "Embedding model calls; concurrent requests share them.",
                "counter",
                passes.to_string(),
            );
        }
        counter(
            "compute_queue_depth",
            "Requests waiting for a generation or embedding slot.",
            "gauge",
            self.queue_depth.load(Relaxed).to_string(),
        );
        counter(
            "compute_in_progress",
            "Generations and embedding batches running.",
            "gauge",
            self.in_progress.load(Relaxed).to_string(),
        );
        counter(
            "compute_settlements_total",
            "Settle extrinsics included.",
            "counter",
            self.settlements.load(Relaxed).to_string(),
        );
        counter(
            "compute_settlement_failures_total",
            "Settle submissions that failed.",
            "counter",
            self.settlement_failures.load(Relaxed).to_string(),
        );
        counter(
            "compute_claims_rejected_total",
            "Claims the chain rejected.",
            "counter",
            self.claims_rejected.load(Relaxed).to_string(),
        );
        counter(
            "compute_unsettled_amount",
            "Owed to the provider and not yet settled (smallest units).",
            "gauge",
            self.unsettled.lock().map(|v| *v).unwrap_or(0).to_string(),
        );
        counter(
            "compute_earned_total",
            "Paid to the provider by settlements of this process.",
            "counter",
            self.earned.lock().map(|v| *v).unwrap_or(0).to_string(),
        );
        let _ = writeln!(s, "# HELP compute_requests_rejected_total Requests refused, by code.\n# TYPE compute_requests_rejected_total counter");
        for (code, n) in self.rejected_by_code.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(s, "compute_requests_rejected_total{{code=\"{code}\"}} {n}");
        }
        let l = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(s, "# HELP compute_request_seconds Latency of served requests.\n# TYPE compute_request_seconds histogram");
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "compute_request_seconds_bucket{{le=\"{b}\"}} {}",
                l.0.get(i).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(s, "compute_request_seconds_bucket{{le=\"+Inf\"}} {}", l.2);
        let _ = writeln!(
            s,
            "compute_request_seconds_sum {}\ncompute_request_seconds_count {}",
            l.1, l.2
        );
        s
    }
}
