//! The node's JSON-RPC methods besides the ones `sc-service` provides: `system_accountNextIndex`,
//! `payment_*`, `compute_*`, and `engine_*` when sealing manually.

use crate::{
    compute_rpc::{self, ComputeRpcServer},
    service::FullClient,
};
use compute_runtime::{opaque::Block, Hash};
use futures::channel::mpsc;
use jsonrpsee::RpcModule;
use polkadot_sdk::{
    pallet_transaction_payment_rpc::{TransactionPayment, TransactionPaymentApiServer},
    sc_consensus_manual_seal::{
        rpc::{ManualSeal, ManualSealApiServer},
        EngineCommand,
    },
    sc_transaction_pool_api::TransactionPool,
    substrate_frame_rpc_system::{System, SystemApiServer},
};
use std::sync::Arc;

/// What the RPC methods need.
pub struct FullDeps<P> {
    /// The client.
    pub client: Arc<FullClient>,
    /// The transaction pool.
    pub pool: Arc<P>,
    /// Where `engine_createBlock` and `engine_finalizeBlock` send their commands, when the
    /// node seals manually.
    pub command_sink: Option<mpsc::Sender<EngineCommand<Hash>>>,
}

/// All custom RPC methods.
pub fn create_full<P>(
    FullDeps { client, pool, command_sink }: FullDeps<P>,
) -> Result<RpcModule<()>, Box<dyn std::error::Error + Send + Sync>>
where
    P: TransactionPool<Block = Block> + 'static,
{
    let mut module = RpcModule::new(());
    module.merge(System::new(client.clone(), pool).into_rpc())?;
    module.merge(TransactionPayment::new(client.clone()).into_rpc())?;
    module.merge(compute_rpc::Compute::new(client).into_rpc())?;
    if let Some(sink) = command_sink {
        module.merge(ManualSeal::new(sink).into_rpc())?;
    }
    Ok(module)
}
