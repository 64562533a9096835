//! Dispatches the command line.

use crate::{
    chain_spec,
    cli::{Cli, Subcommand},
    service,
};
use polkadot_sdk::{
    sc_cli::{self, SubstrateCli},
    sc_consensus_grandpa, sc_network, sc_service,
    sc_service::PartialComponents,
    sp_runtime,
};

impl SubstrateCli for Cli {
    fn impl_name() -> String {
        "Compute Marketplace Node".into()
    }

    fn impl_version() -> String {
        env!("SUBSTRATE_CLI_IMPL_VERSION").into()
    }

    fn description() -> String {
        env!("CARGO_PKG_DESCRIPTION").into()
    }

    fn author() -> String {
        env!("CARGO_PKG_AUTHORS").into()
    }

    fn support_url() -> String {
        "https://example.invalid/compute-marketplace/issues".into()
    }

    fn copyright_start_year() -> i32 {
        2026
    }

    fn load_spec(&self, id: &str) -> Result<Box<dyn sc_service::ChainSpec>, String> {
        Ok(match id {
            "dev" => Box::new(chain_spec::development()?),
            "" | "local" => Box::new(chain_spec::local_testnet()?),
            path => Box::new(
                chain_spec::ChainSpec::from_json_file(std::path::PathBuf::from(path))
                    .map_err(|e| format!("cannot load chain spec `{path}`: {e}"))?,
            ),
        })
    }
}

/// Fail early, and clearly, when a port given on the command line is taken: left alone, the RPC
/// server would quietly move to a random port and a validator would not notice.
fn ensure_ports_free(run: &sc_cli::RunCmd) -> sc_cli::Result<()> {
    let ports = [
        ("--rpc-port", run.rpc_params.rpc_port),
        ("--port", run.network_params.port),
        ("--prometheus-port", run.prometheus_params.prometheus_port),
    ];
    for (flag, port) in ports {
        let Some(port) = port else { continue };
        if let Err(e) = std::net::TcpListener::bind(("0.0.0.0", port)) {
            return Err(sc_cli::Error::Input(format!("{flag} {port} cannot be used: {e}")));
        }
    }
    Ok(())
}

/// Parse the command line and run it.
pub fn run() -> sc_cli::Result<()> {
    let cli = Cli::from_args();

    match &cli.subcommand {
        Some(Subcommand::Key(cmd)) => cmd.run(&cli),
        Some(Subcommand::BuildSpec(cmd)) => {
            let runner = cli.create_runner(cmd)?;
            runner.sync_run(|config| cmd.run(config.chain_spec, config.network))
        }
        Some(Subcommand::ExportChainSpec(cmd)) => {
            let spec = cli.load_spec(&cmd.chain)?;
            cmd.run(spec)
        }
        Some(Subcommand::CheckBlock(cmd)) => {
            let runner = cli.create_runner(cmd)?;
            runner.async_run(|config| {
                let PartialComponents { client, task_manager, import_queue, .. } =
                    service::new_partial(&config)?;
                Ok((cmd.run(client, import_queue), task_manager))
            })
        }
        Some(Subcommand::ExportBlocks(cmd)) => {
            let runner = cli.create_runner(cmd)?;
            runner.async_run(|config| {
                let PartialComponents { client, task_manager, .. } = service::new_partial(&config)?;
                Ok((cmd.run(client, config.database), task_manager))
            })
        }
        Some(Subcommand::ExportState(cmd)) => {
            let runner = cli.create_runner(cmd)?;
            runner.async_run(|config| {
                let PartialComponents { client, task_manager, .. } = service::new_partial(&config)?;
                Ok((cmd.run(client, config.chain_spec), task_manager))
            })
        }
        Some(Subcommand::ImportBlocks(cmd)) => {
            let runner = cli.create_runner(cmd)?;
            runner.async_run(|config| {
                let PartialComponents { client, task_manager, import_queue, .. } =
                    service::new_partial(&config)?;
                Ok((cmd.run(client, import_queue), task_manager))
            })
        }
        Some(Subcommand::PurgeChain(cmd)) => {
            let runner = cli.create_runner(cmd)?;
            runner.sync_run(|config| cmd.run(config.database))
        }
        Some(Subcommand::Revert(cmd)) => {
            let runner = cli.create_runner(cmd)?;
            runner.async_run(|config| {
                let PartialComponents { client, task_manager, backend, .. } =
                    service::new_partial(&config)?;
                let aux_revert = Box::new(|client, _, blocks| {
                    sc_consensus_grandpa::revert(client, blocks)?;
                    Ok(())
                });
                Ok((cmd.run(client, backend, Some(aux_revert)), task_manager))
            })
        }
        Some(Subcommand::ChainInfo(cmd)) => {
            let runner = cli.create_runner(cmd)?;
            runner.sync_run(|config| cmd.run::<compute_runtime::opaque::Block>(&config))
        }
        #[cfg(feature = "runtime-benchmarks")]
        Some(Subcommand::Benchmark(cmd)) => {
            use polkadot_sdk::frame_benchmarking_cli::BenchmarkCmd;
            match cmd {
                // `--runtime <wasm>` with the runtime's genesis builder: no chain spec needed,
                // so a node built with SKIP_WASM_BUILD can run it.
                BenchmarkCmd::Pallet(cmd) => {
                    let _ = sc_cli::LoggerBuilder::new("").init();
                    cmd.run_with_spec::<
                        sp_runtime::traits::HashingFor<compute_runtime::opaque::Block>,
                        (),
                    >(None)
                }
                _ => Err(sc_cli::Error::Input(
                    "only `benchmark pallet` is wired into compute-node".into(),
                )),
            }
        }
        None => {
            ensure_ports_free(&cli.run)?;
            let runner = cli.create_runner(&cli.run)?;
            let sealing = cli.sealing;
            runner.run_node_until_exit(|config| async move {
                type Block = compute_runtime::opaque::Block;
                type BlockHash = <Block as sp_runtime::traits::Block>::Hash;
                match config.network.network_backend {
                    sc_network::config::NetworkBackendType::Libp2p => {
                        service::new_full::<sc_network::NetworkWorker<Block, BlockHash>>(
                            config, sealing,
                        )
                    }
                    sc_network::config::NetworkBackendType::Litep2p => {
                        service::new_full::<sc_network::Litep2pNetworkBackend>(config, sealing)
                    }
                }
                .map_err(sc_cli::Error::Service)
            })
        }
    }
}
