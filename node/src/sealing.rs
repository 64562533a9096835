//! Development block authoring with manual seal: instant, on demand, or on a timer.

use futures::{channel::mpsc, stream, Stream, StreamExt};
use polkadot_sdk::{
    sc_consensus_manual_seal::EngineCommand, sp_core::H256, sp_runtime::traits::Header as _,
};
use std::{fmt, str::FromStr, time::Duration};

/// How a development node authors blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealing {
    /// A block, finalized at once, whenever a transaction enters the pool.
    Instant,
    /// Only when asked through `engine_createBlock`.
    Manual,
    /// Every so many milliseconds, finalized at once.
    Interval(u64),
}

impl FromStr for Sealing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "instant" => Ok(Sealing::Instant),
            "manual" => Ok(Sealing::Manual),
            ms => match ms.parse::<u64>() {
                Ok(0) => Err("the sealing interval must be at least 1 ms".into()),
                Ok(ms) => Ok(Sealing::Interval(ms)),
                Err(_) => Err(format!(
                    "expected `instant`, `manual` or a number of milliseconds, found `{ms}`"
                )),
            },
        }
    }
}

impl fmt::Display for Sealing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sealing::Instant => f.write_str("instant"),
            Sealing::Manual => f.write_str("manual"),
            Sealing::Interval(ms) => write!(f, "every {ms} ms"),
        }
    }
}

/// A command that seals one block on top of the best one and finalizes it.
fn seal_and_finalize() -> EngineCommand<H256> {
    EngineCommand::SealNewBlock {
        create_empty: true,
        finalize: true,
        parent_hash: None,
        sender: None,
    }
}

/// The stream of seal commands for `sealing`, merged with the ones arriving over RPC.
pub fn commands<I>(
    sealing: Sealing,
    rpc_commands: mpsc::Receiver<EngineCommand<H256>>,
    pool_imports: I,
) -> Box<dyn Stream<Item = EngineCommand<H256>> + Send + Unpin>
where
    I: Stream + Send + Unpin + 'static,
{
    match sealing {
        Sealing::Manual => Box::new(rpc_commands),
        Sealing::Instant => Box::new(stream::select(
            rpc_commands,
            pool_imports.map(|_| EngineCommand::SealNewBlock {
                create_empty: false,
                finalize: true,
                parent_hash: None,
                sender: None,
            }),
        )),
        Sealing::Interval(ms) => {
            let period = Duration::from_millis(ms);
            let ticks = stream::unfold((), move |()| async move {
                tokio::time::sleep(period).await;
                Some((seal_and_finalize(), ()))
            });
            Box::new(stream::select(rpc_commands, Box::pin(ticks)))
        }
    }
}

/// Timestamp for a manually sealed block on top of `parent`: the wall clock, but at least one
/// slot after the parent's slot, so Aura's slot always increases even when blocks come faster
/// than the slot duration (the chain's clock then runs ahead of the wall clock).
pub fn next_timestamp(parent_slot: Option<u64>, slot_duration_ms: u64, now_ms: u64) -> u64 {
    let earliest = parent_slot.map_or(0, |s| s.saturating_add(1).saturating_mul(slot_duration_ms));
    now_ms.max(earliest)
}

/// The Aura slot recorded in a header, if any (genesis has none).
pub fn header_slot(header: &compute_runtime::opaque::Header) -> Option<u64> {
    if header.number() == &0 {
        return None;
    }
    polkadot_sdk::sc_consensus_aura::find_pre_digest::<
        compute_runtime::opaque::Block,
        polkadot_sdk::sp_consensus_aura::sr25519::AuthoritySignature,
    >(header)
    .ok()
    .map(u64::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_mode_and_rejects_garbage() {
        assert_eq!("instant".parse::<Sealing>(), Ok(Sealing::Instant));
        assert_eq!("manual".parse::<Sealing>(), Ok(Sealing::Manual));
        assert_eq!("1500".parse::<Sealing>(), Ok(Sealing::Interval(1500)));
        assert!("0".parse::<Sealing>().is_err());
        assert!("fast".parse::<Sealing>().unwrap_err().contains("instant"));
    }

    #[test]
    fn timestamps_advance_a_slot_at_least() {
        assert_eq!(next_timestamp(None, 6_000, 1_000), 1_000);
        assert_eq!(next_timestamp(Some(10), 6_000, 1_000), 66_000);
        assert_eq!(next_timestamp(Some(10), 6_000, 100_000), 100_000);
    }
}
