//! The node's JSON-RPC methods besides the ones `sc-service` provides: `system_accountNextIndex`,
//! `payment_*`, `compute_*` (`pallet-compute-rpc`), and `engine_*` when sealing manually. Generic
//! over the client: it needs only the runtime APIs those methods call.

use compute_runtime::{opaque::Block, AccountId, Balance, BlockNumber, Hash, Nonce};
use futures::channel::mpsc;
use jsonrpsee::RpcModule;
use pallet_compute_rpc::{Compute, ComputeApiServer};
use polkadot_sdk::{
    pallet_transaction_payment_rpc::{TransactionPayment, TransactionPaymentApiServer},
    sc_consensus_manual_seal::{
        rpc::{ManualSeal, ManualSealApiServer},
        EngineCommand,
    },
    sc_transaction_pool_api::TransactionPool,
    sp_api::ProvideRuntimeApi,
    sp_block_builder::BlockBuilder,
    sp_blockchain::{Error as BlockChainError, HeaderBackend, HeaderMetadata},
    substrate_frame_rpc_system::{System, SystemApiServer},
};
use std::sync::Arc;

/// What the RPC methods need.
pub struct FullDeps<C, P> {
    /// The client.
    pub client: Arc<C>,
    /// The transaction pool.
    pub pool: Arc<P>,
    /// Where `engine_createBlock` and `engine_finalizeBlock` send their commands, when the
    /// node seals manually.
    pub command_sink: Option<mpsc::Sender<EngineCommand<Hash>>>,
}

/// All custom RPC methods.
pub fn create_full<C, P>(
    FullDeps { client, pool, command_sink }: FullDeps<C, P>,
) -> Result<RpcModule<()>, Box<dyn std::error::Error + Send + Sync>>
where
    C: ProvideRuntimeApi<Block>
        + HeaderBackend<Block>
        + HeaderMetadata<Block, Error = BlockChainError>
        + Send
        + Sync
        + 'static,
    C::Api: polkadot_sdk::substrate_frame_rpc_system::AccountNonceApi<Block, AccountId, Nonce>
        + polkadot_sdk::pallet_transaction_payment_rpc::TransactionPaymentRuntimeApi<Block, Balance>
        + pallet_compute::runtime_api::ComputeApi<Block, AccountId, BlockNumber>
        + BlockBuilder<Block>,
    P: TransactionPool<Block = Block> + 'static,
{
    let mut module = RpcModule::new(());
    module.merge(System::new(client.clone(), pool).into_rpc())?;
    module.merge(TransactionPayment::new(client.clone()).into_rpc())?;
    module.merge(Compute::<C, Block>::new(client).into_rpc())?;
    if let Some(sink) = command_sink {
        module.merge(ManualSeal::new(sink).into_rpc())?;
    }
    Ok(module)
}
