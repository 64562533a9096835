//! What the provider worker and the user CLI share beyond `compute-primitives`: keys that sign
//! both extrinsics and vouchers/receipts, a chain client over subxt and the node's `compute_*`
//! RPC (with the fine-tuning and verification calls), decoded pallet events, and the wire format of the worker's HTTP API.

pub mod chain;
pub mod events;
pub mod finetune;
pub mod finetune_api;
pub mod keys;
pub mod verification;
pub mod wire;

pub use chain::{
    Chain, ChainError, EscrowState, Params, ProviderState, ServiceInfo, ServiceTerms, TxOutcome,
};
pub use compute_primitives as primitives;
pub use events::ComputeEvent;
pub use keys::{KeyError, Signer};
