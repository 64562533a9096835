//! Assembles the node: client, transaction pool, network, RPC and block authoring, either
//! Aura + GRANDPA (real networks) or manual seal (development and tests).

use crate::sealing::{self, Sealing};
use compute_runtime::{opaque::Block, RuntimeApi, SLOT_DURATION};
use futures::channel::mpsc;
use polkadot_sdk::{
    sc_basic_authorship, sc_client_api::BlockBackend, sc_consensus, sc_consensus_aura,
    sc_consensus_grandpa, sc_consensus_manual_seal, sc_executor, sc_network, sc_service,
    sc_telemetry, sc_transaction_pool, sc_transaction_pool_api, sp_consensus_aura, sp_io,
    sp_runtime, sp_timestamp,
};
use sc_consensus_aura::{ImportQueueParams, SlotProportion, StartAuraParams};
use sc_service::{error::Error as ServiceError, Configuration, TaskManager, WarpSyncConfig};
use sc_telemetry::{Telemetry, TelemetryWorker};
use sc_transaction_pool_api::{OffchainTransactionPoolFactory, TransactionPool};
use sp_consensus_aura::sr25519::AuthorityPair as AuraPair;
use std::{sync::Arc, time::Duration};

pub(crate) type FullClient = sc_service::TFullClient<
    Block,
    RuntimeApi,
    sc_executor::WasmExecutor<sp_io::SubstrateHostFunctions>,
>;
type FullBackend = sc_service::TFullBackend<Block>;
type FullSelectChain = sc_consensus::LongestChain<FullBackend, Block>;
type FullPool = sc_transaction_pool::TransactionPoolHandle<Block, FullClient>;
type GrandpaImport =
    sc_consensus_grandpa::GrandpaBlockImport<FullBackend, Block, FullClient, FullSelectChain>;
type GrandpaLink = sc_consensus_grandpa::LinkHalf<Block, FullClient, FullSelectChain>;

/// Blocks between GRANDPA justifications kept for light clients and warp sync.
const GRANDPA_JUSTIFICATION_PERIOD: u32 = 512;

/// Components shared by every way of running the node, with the Aura import queue that the
/// chain-maintenance subcommands use.
pub type Service = sc_service::PartialComponents<
    FullClient,
    FullBackend,
    FullSelectChain,
    sc_consensus::DefaultImportQueue<Block>,
    FullPool,
    (GrandpaImport, GrandpaLink, Option<Telemetry>),
>;

/// Client, backend, pool and telemetry, before any consensus is chosen.
struct Base {
    client: Arc<FullClient>,
    backend: Arc<FullBackend>,
    task_manager: TaskManager,
    keystore_container: sc_service::KeystoreContainer,
    select_chain: FullSelectChain,
    transaction_pool: Arc<FullPool>,
    telemetry: Option<Telemetry>,
}

fn new_base(config: &Configuration) -> Result<Base, ServiceError> {
    let telemetry = config
        .telemetry_endpoints
        .clone()
        .filter(|x| !x.is_empty())
        .map(|endpoints| -> Result<_, sc_telemetry::Error> {
            let worker = TelemetryWorker::new(16)?;
            let telemetry = worker.handle().new_telemetry(endpoints);
            Ok((worker, telemetry))
        })
        .transpose()?;

    let executor = sc_service::new_wasm_executor::<sp_io::SubstrateHostFunctions>(&config.executor);
    let (client, backend, keystore_container, task_manager) =
        sc_service::new_full_parts::<Block, RuntimeApi, _>(
            config,
            telemetry.as_ref().map(|(_, telemetry)| telemetry.handle()),
            executor,
            Vec::new(),
        )?;
    let client = Arc::new(client);

    let telemetry = telemetry.map(|(worker, telemetry)| {
        task_manager.spawn_handle().spawn("telemetry", None, worker.run());
        telemetry
    });

    let select_chain = sc_consensus::LongestChain::new(backend.clone());
    let transaction_pool = Arc::from(
        sc_transaction_pool::Builder::new(
            task_manager.spawn_essential_handle(),
            client.clone(),
            config.role.is_authority().into(),
        )
        .with_options(config.transaction_pool.clone())
        .with_prometheus(config.prometheus_registry())
        .build(),
    );

    Ok(Base {
        client,
        backend,
        task_manager,
        keystore_container,
        select_chain,
        transaction_pool,
        telemetry,
    })
}

/// The Aura import queue over GRANDPA's block import, for `base`.
fn aura_grandpa_import(
    config: &Configuration,
    base: &Base,
) -> Result<(sc_consensus::DefaultImportQueue<Block>, GrandpaImport, GrandpaLink), ServiceError> {
    let client = &base.client;
    let telemetry = base.telemetry.as_ref().map(|x| x.handle());
    let (grandpa_block_import, grandpa_link) = sc_consensus_grandpa::block_import(
        client.clone(),
        GRANDPA_JUSTIFICATION_PERIOD,
        client,
        base.select_chain.clone(),
        telemetry.clone(),
    )?;

    let cidp_client = client.clone();
    let import_queue = sc_consensus_aura::import_queue::<AuraPair, _, _, _, _, _>(
        ImportQueueParams {
            block_import: grandpa_block_import.clone(),
            justification_import: Some(Box::new(grandpa_block_import.clone())),
            client: client.clone(),
            create_inherent_data_providers: move |parent_hash, _| {
                let cidp_client = cidp_client.clone();
                async move {
                    let slot_duration = sc_consensus_aura::standalone::slot_duration_at(
                        &*cidp_client,
                        parent_hash,
                    )?;
                    let timestamp = sp_timestamp::InherentDataProvider::from_system_time();
                    let slot = sp_consensus_aura::inherents::InherentDataProvider::from_timestamp_and_slot_duration(
                    *timestamp,
                    slot_duration,
                );
                    Ok((slot, timestamp))
                }
            },
            spawner: &base.task_manager.spawn_essential_handle(),
            registry: config.prometheus_registry(),
            check_for_equivocation: Default::default(),
            telemetry,
            compatibility_mode: Default::default(),
        },
    )?;
    Ok((import_queue, grandpa_block_import, grandpa_link))
}

/// The Aura + GRANDPA components, for the chain-maintenance subcommands.
pub fn new_partial(config: &Configuration) -> Result<Service, ServiceError> {
    let base = new_base(config)?;
    let (import_queue, grandpa_block_import, grandpa_link) = aura_grandpa_import(config, &base)?;
    Ok(sc_service::PartialComponents {
        client: base.client,
        backend: base.backend,
        task_manager: base.task_manager,
        import_queue,
        keystore_container: base.keystore_container,
        select_chain: base.select_chain,
        transaction_pool: base.transaction_pool,
        other: (grandpa_block_import, grandpa_link, base.telemetry),
    })
}

/// How blocks are authored once the network runs. Built once per process, so the size
/// difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Authoring {
    AuraGrandpa {
        block_import: GrandpaImport,
        link: GrandpaLink,
        protocol_name: sc_network::ProtocolName,
        notification_service: Box<dyn sc_network::NotificationService>,
    },
    ManualSeal {
        sealing: Sealing,
        commands: mpsc::Receiver<sc_consensus_manual_seal::EngineCommand<compute_runtime::Hash>>,
    },
}

/// Start a full node: Aura + GRANDPA, or manual seal when `sealing` is set.
pub fn new_full<
    N: sc_network::NetworkBackend<Block, <Block as sp_runtime::traits::Block>::Hash>,
>(
    config: Configuration,
    sealing: Option<Sealing>,
) -> Result<TaskManager, ServiceError> {
    let mut net_config = sc_network::config::FullNetworkConfiguration::<
        Block,
        <Block as sp_runtime::traits::Block>::Hash,
        N,
    >::new(&config.network, config.prometheus_registry().cloned());
    let metrics = N::register_notification_metrics(config.prometheus_registry());

    let (base, import_queue, authoring, warp_sync_config, command_sink) = match sealing {
        None => {
            let base = new_base(&config)?;
            let (import_queue, block_import, link) = aura_grandpa_import(&config, &base)?;
            let genesis =
                base.client.block_hash(0).ok().flatten().ok_or_else(|| {
                    ServiceError::Other("the database holds no genesis block".into())
                })?;
            let protocol_name =
                sc_consensus_grandpa::protocol_standard_name(&genesis, &config.chain_spec);
            let (protocol_config, notification_service) =
                sc_consensus_grandpa::grandpa_peers_set_config::<_, N>(
                    protocol_name.clone(),
                    metrics.clone(),
                    net_config.peer_store_handle(),
                );
            net_config.add_notification_protocol(protocol_config);
            let warp_sync = Arc::new(sc_consensus_grandpa::warp_proof::NetworkProvider::new(
                base.backend.clone(),
                link.shared_authority_set().clone(),
                Vec::default(),
            ));
            let authoring =
                Authoring::AuraGrandpa { block_import, link, protocol_name, notification_service };
            (base, import_queue, authoring, Some(WarpSyncConfig::WithProvider(warp_sync)), None)
        }
        Some(sealing) => {
            let base = new_base(&config)?;
            let import_queue = sc_consensus_manual_seal::import_queue(
                Box::new(base.client.clone()),
                &base.task_manager.spawn_essential_handle(),
                config.prometheus_registry(),
            );
            let (sink, commands) = mpsc::channel(64);
            (base, import_queue, Authoring::ManualSeal { sealing, commands }, None, Some(sink))
        }
    };
    let Base {
        client,
        backend,
        mut task_manager,
        keystore_container,
        select_chain,
        transaction_pool,
        mut telemetry,
    } = base;

    let (network, system_rpc_tx, tx_handler_controller, sync_service, _bitswap) =
        sc_service::build_network(sc_service::BuildNetworkParams {
            config: &config,
            net_config,
            client: client.clone(),
            transaction_pool: transaction_pool.clone(),
            spawn_handle: task_manager.spawn_handle(),
            spawn_essential_handle: task_manager.spawn_essential_handle(),
            import_queue,
            block_announce_validator_builder: None,
            warp_sync_config,
            block_relay: None,
            metrics,
            gap_sync_body_policy: None,
        })?;

    let role = config.role;
    let force_authoring = config.force_authoring;
    let name = config.network.node_name.clone();
    let enable_grandpa = !config.disable_grandpa;
    let prometheus_registry = config.prometheus_registry().cloned();

    let rpc_builder = {
        let client = client.clone();
        let pool = transaction_pool.clone();
        Box::new(move |_| {
            let deps = crate::rpc::FullDeps {
                client: client.clone(),
                pool: pool.clone(),
                command_sink: command_sink.clone(),
            };
            crate::rpc::create_full(deps).map_err(Into::into)
        })
    };

    sc_service::spawn_tasks(sc_service::SpawnTasksParams {
        network: network.clone(),
        client: client.clone(),
        keystore: keystore_container.keystore(),
        task_manager: &mut task_manager,
        transaction_pool: transaction_pool.clone(),
        rpc_builder,
        backend,
        system_rpc_tx,
        tx_handler_controller,
        sync_service: sync_service.clone(),
        config,
        telemetry: telemetry.as_mut(),
        tracing_execute_block: None,
    })?;

    let proposer_factory = sc_basic_authorship::ProposerFactory::new(
        task_manager.spawn_handle(),
        client.clone(),
        transaction_pool.clone(),
        prometheus_registry.as_ref(),
        telemetry.as_ref().map(|x| x.handle()),
    );

    match authoring {
        Authoring::ManualSeal { sealing, commands } => {
            log::info!("Authoring blocks with manual seal ({sealing}); GRANDPA is off");
            let commands =
                sealing::commands(sealing, commands, transaction_pool.import_notification_stream());
            let cidp_client = client.clone();
            let create_inherent_data_providers = move |parent: compute_runtime::Hash, ()| {
                let client = cidp_client.clone();
                async move {
                    let parent_slot =
                        client.header(parent)?.as_ref().and_then(sealing::header_slot);
                    let now = sp_timestamp::Timestamp::current().as_millis();
                    let timestamp = sealing::next_timestamp(parent_slot, SLOT_DURATION, now);
                    Ok(sp_timestamp::InherentDataProvider::new(timestamp.into()))
                }
            };
            let params = sc_consensus_manual_seal::ManualSealParams {
                block_import: client.clone(),
                env: proposer_factory,
                client: client.clone(),
                pool: transaction_pool,
                commands_stream: commands,
                select_chain,
                consensus_data_provider: Some(Box::new(
                    sc_consensus_manual_seal::consensus::aura::AuraConsensusDataProvider::new(
                        client.clone(),
                    ),
                )),
                create_inherent_data_providers,
            };
            task_manager.spawn_essential_handle().spawn_blocking(
                "manual-seal",
                Some("block-authoring"),
                sc_consensus_manual_seal::run_manual_seal(params),
            );
        }
        Authoring::AuraGrandpa { block_import, link, protocol_name, notification_service } => {
            if role.is_authority() {
                let slot_duration = sc_consensus_aura::slot_duration(&*client)?;
                let aura = sc_consensus_aura::start_aura::<AuraPair, _, _, _, _, _, _, _, _, _, _>(
                    StartAuraParams {
                        slot_duration,
                        client: client.clone(),
                        select_chain,
                        block_import,
                        proposer_factory,
                        create_inherent_data_providers: move |_, ()| async move {
                            let timestamp = sp_timestamp::InherentDataProvider::from_system_time();
                            let slot = sp_consensus_aura::inherents::InherentDataProvider::from_timestamp_and_slot_duration(
                            *timestamp,
                            slot_duration,
                        );
                            Ok((slot, timestamp))
                        },
                        force_authoring,
                        backoff_authoring_blocks: Option::<()>::None,
                        keystore: keystore_container.keystore(),
                        sync_oracle: sync_service.clone(),
                        justification_sync_link: sync_service.clone(),
                        block_proposal_slot_portion: SlotProportion::new(2f32 / 3f32),
                        max_block_proposal_slot_portion: None,
                        telemetry: telemetry.as_ref().map(|x| x.handle()),
                        compatibility_mode: Default::default(),
                    },
                )?;
                task_manager.spawn_essential_handle().spawn_blocking(
                    "aura",
                    Some("block-authoring"),
                    aura,
                );
            }

            if enable_grandpa {
                let keystore = role.is_authority().then(|| keystore_container.keystore());
                let grandpa_config = sc_consensus_grandpa::Config {
                    gossip_duration: Duration::from_millis(333),
                    justification_generation_period: GRANDPA_JUSTIFICATION_PERIOD,
                    name: Some(name),
                    observer_enabled: false,
                    keystore,
                    local_role: role,
                    telemetry: telemetry.as_ref().map(|x| x.handle()),
                    protocol_name,
                };
                let voter =
                    sc_consensus_grandpa::run_grandpa_voter(sc_consensus_grandpa::GrandpaParams {
                        config: grandpa_config,
                        link,
                        network,
                        sync: Arc::new(sync_service),
                        notification_service,
                        voting_rule: sc_consensus_grandpa::VotingRulesBuilder::default().build(),
                        prometheus_registry,
                        shared_voter_state: sc_consensus_grandpa::SharedVoterState::empty(),
                        telemetry: telemetry.as_ref().map(|x| x.handle()),
                        offchain_tx_pool_factory: OffchainTransactionPoolFactory::new(
                            transaction_pool,
                        ),
                    })?;
                task_manager.spawn_essential_handle().spawn_blocking("grandpa-voter", None, voter);
            }
        }
    }

    Ok(task_manager)
}
