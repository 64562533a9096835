//! What a LoRA adapter adapts: the projections it targets, its rank and its scale.
//!
//! A targeted projection `W` (`[out, in]`, as stored in the GGUF) becomes
//! `W + (alpha / rank) · B·A` with `A` `[rank, in]` and `B` `[out, rank]`.

use std::fmt;

/// A weight matrix of a llama layer that an adapter can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// Attention query (`attn_q`).
    Q,
    /// Attention key (`attn_k`).
    K,
    /// Attention value (`attn_v`).
    V,
    /// Attention output (`attn_output`).
    O,
    /// MLP gate (`ffn_gate`).
    Gate,
    /// MLP up (`ffn_up`).
    Up,
    /// MLP down (`ffn_down`).
    Down,
}

impl Target {
    /// Every target, in the canonical order (adapter files list them so).
    pub const ALL: [Target; 7] =
        [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    /// The tensor's name inside a GGUF layer: `blk.{i}.{name}.weight`.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Target::Q => "attn_q",
            Target::K => "attn_k",
            Target::V => "attn_v",
            Target::O => "attn_output",
            Target::Gate => "ffn_gate",
            Target::Up => "ffn_up",
            Target::Down => "ffn_down",
        }
    }

    /// A target by its GGUF name (`attn_q`), its Hugging Face name (`q_proj`, `gate_proj`) or
    /// its short name (`q`, `gate`).
    pub fn from_name(name: &str) -> Option<Self> {
        Target::ALL.into_iter().find(|t| {
            let short = match t {
                Target::Q => ["q", "q_proj"],
                Target::K => ["k", "k_proj"],
                Target::V => ["v", "v_proj"],
                Target::O => ["o", "o_proj"],
                Target::Gate => ["gate", "gate_proj"],
                Target::Up => ["up", "up_proj"],
                Target::Down => ["down", "down_proj"],
            };
            name == t.gguf_name() || short.contains(&name)
        })
    }

    /// The GGUF tensor this target names in layer `layer`.
    pub fn weight_name(self, layer: usize) -> String {
        format!("blk.{layer}.{}.weight", self.gguf_name())
    }

    /// Position in [`Target::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.gguf_name())
    }
}

/// Why a LoRA configuration is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoraConfigError {
    #[error("rank {rank} outside 1..={max}")]
    Rank { rank: usize, max: usize },
    #[error("alpha {0} is not a positive finite number")]
    Alpha(f32),
    #[error("no target projection")]
    NoTarget,
    #[error("unknown target `{0}`")]
    UnknownTarget(String),
}

/// Rank, scale and targets of an adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Inner dimension of `B·A`.
    pub rank: usize,
    /// The update is scaled by `alpha / rank`.
    pub alpha: f32,
    /// Adapted projections, in [`Target::ALL`] order without repeats (see [`LoraConfig::new`]).
    pub targets: Vec<Target>,
}

impl Default for LoraConfig {
    /// Rank 8, alpha 16, every projection.
    fn default() -> Self {
        LoraConfig { rank: 8, alpha: 16.0, targets: Target::ALL.to_vec() }
    }
}

impl LoraConfig {
    /// Largest rank accepted (adapter files are untrusted; a provider offers less).
    pub const MAX_RANK: usize = 256;

    /// A validated configuration, its targets put in canonical order without repeats.
    pub fn new(rank: usize, alpha: f32, targets: &[Target]) -> Result<Self, LoraConfigError> {
        let mut targets = targets.to_vec();
        targets.sort_unstable();
        targets.dedup();
        let config = LoraConfig { rank, alpha, targets };
        config.validate()?;
        Ok(config)
    }

    /// Targets from a comma-separated list of names ([`Target::from_name`]); `all` is every one.
    pub fn parse_targets(list: &str) -> Result<Vec<Target>, LoraConfigError> {
        if list.trim() == "all" {
            return Ok(Target::ALL.to_vec());
        }
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Target::from_name(s).ok_or_else(|| LoraConfigError::UnknownTarget(s.into())))
            .collect()
    }

    /// Whether the configuration is usable and canonical.
    pub fn validate(&self) -> Result<(), LoraConfigError> {
        if self.rank == 0 || self.rank > Self::MAX_RANK {
            return Err(LoraConfigError::Rank { rank: self.rank, max: Self::MAX_RANK });
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(LoraConfigError::Alpha(self.alpha));
        }
        if self.targets.is_empty() {
            return Err(LoraConfigError::NoTarget);
        }
        if self.targets.windows(2).any(|w| w[0] >= w[1]) {
            // Not canonical: rebuild through `new`.
            return Err(LoraConfigError::UnknownTarget(self.targets_list()));
        }
        Ok(())
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    /// The targets as a comma-separated list of GGUF names.
    pub fn targets_list(&self) -> String {
        self.targets.iter().map(|t| t.gguf_name()).collect::<Vec<_>>().join(",")
    }

    /// Whether `target` is adapted.
    pub fn adapts(&self, target: Target) -> bool {
        self.targets.contains(&target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_validation() {
        for t in Target::ALL {
            assert_eq!(Target::from_name(t.gguf_name()), Some(t));
            assert_eq!(Target::ALL[t.index()], t);
        }
        assert_eq!(Target::from_name("gate_proj"), Some(Target::Gate));
        assert_eq!(Target::from_name("x"), None);
        assert_eq!(Target::Down.weight_name(3), "blk.3.ffn_down.weight");
        let c = LoraConfig::new(4, 8.0, &[Target::V, Target::Q, Target::V]).unwrap();
        assert_eq!(c.targets, vec![Target::Q, Target::V]);
        assert_eq!(c.targets_list(), "attn_q,attn_v");
        assert_eq!(c.scale(), 2.0);
        assert_eq!(LoraConfig::parse_targets("q, v_proj").unwrap(), vec![Target::Q, Target::V]);
        assert_eq!(LoraConfig::parse_targets("all").unwrap(), Target::ALL.to_vec());
        assert!(LoraConfig::parse_targets("q,z").is_err());
        assert!(LoraConfig::new(0, 1.0, &[Target::Q]).is_err());
        assert!(LoraConfig::new(257, 1.0, &[Target::Q]).is_err());
        assert!(LoraConfig::new(4, f32::NAN, &[Target::Q]).is_err());
        assert!(LoraConfig::new(4, 1.0, &[]).is_err());
        let unsorted = LoraConfig { rank: 4, alpha: 1.0, targets: vec![Target::V, Target::Q] };
        assert!(unsorted.validate().is_err());
        assert!(LoraConfig::default().validate().is_ok());
    }
}
