//! Command line of the node.

use crate::sealing::Sealing;
use polkadot_sdk::sc_cli;

/// Subcommands besides running the node.
#[derive(Debug, clap::Subcommand)]
#[allow(clippy::large_enum_variant)]
pub enum Subcommand {
    /// Key management: generate, inspect, insert into the keystore.
    #[command(subcommand)]
    Key(sc_cli::KeySubcommand),

    /// Build a chain specification (use `--raw` for the form nodes boot from).
    BuildSpec(sc_cli::BuildSpecCmd),

    /// Export the chain specification of a built-in chain.
    ExportChainSpec(sc_cli::ExportChainSpecCmd),

    /// Validate blocks.
    CheckBlock(sc_cli::CheckBlockCmd),

    /// Export blocks.
    ExportBlocks(sc_cli::ExportBlocksCmd),

    /// Export the state of a block into a chain spec.
    ExportState(sc_cli::ExportStateCmd),

    /// Import blocks.
    ImportBlocks(sc_cli::ImportBlocksCmd),

    /// Remove the whole chain.
    PurgeChain(sc_cli::PurgeChainCmd),

    /// Revert the chain to a previous state.
    Revert(sc_cli::RevertCmd),

    /// Database metadata.
    ChainInfo(sc_cli::ChainInfoCmd),

    /// Run runtime benchmarks (`benchmark pallet` regenerates `pallets/compute/src/weights.rs`).
    #[cfg(feature = "runtime-benchmarks")]
    #[command(subcommand)]
    Benchmark(polkadot_sdk::frame_benchmarking_cli::BenchmarkCmd),
}

/// `compute-node` options.
#[derive(Debug, clap::Parser)]
#[command(
    propagate_version = true,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub subcommand: Option<Subcommand>,

    #[clap(flatten)]
    pub run: sc_cli::RunCmd,

    /// Author blocks with manual seal instead of Aura + GRANDPA: `instant` (a block, finalized,
    /// for each transaction), `manual` (only on the `engine_createBlock` RPC), or a number of
    /// milliseconds between blocks. For development and tests; never on a shared network.
    #[arg(long, value_name = "instant|manual|MILLISECONDS")]
    pub sealing: Option<Sealing>,
}
