//! The answers of the node's `compute_*` JSON-RPC methods, defined once for the server
//! (`pallet-compute-rpc`) and its clients (`compute-client`). Amounts are decimal strings (a
//! u128 does not fit a JavaScript number); accounts are SS58 strings; service kinds are `chat`
//! and `embedding`.

use crate::{Balance, Nonce, ServiceId, ServiceKind};
use polkadot_sdk::sp_core::H256;
use serde::{Deserialize, Serialize};

/// A `u128` as a decimal string.
pub mod amount {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|_| D::Error::custom(format!("bad amount `{s}`")))
    }
}

/// A service (`compute_service`, `compute_servicesOf`, `compute_services`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceJson {
    pub provider: String,
    pub service_id: ServiceId,
    pub kind: ServiceKind,
    pub model: String,
    /// blake2-256 of the weights served (`0x` and 64 hex digits); zero when none is committed.
    pub model_hash: H256,
    pub url: String,
    #[serde(with = "amount")]
    pub input_price: Balance,
    #[serde(with = "amount")]
    pub output_price: Balance,
    pub verifiability: String,
    pub price_version: u32,
}

/// An escrow (`compute_escrow`, `compute_escrowsOf`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EscrowJson<BlockNumber> {
    pub provider: String,
    #[serde(with = "amount")]
    pub balance: Balance,
    #[serde(with = "amount")]
    pub pending_refund: Balance,
    /// `balance - pending_refund`: what new requests may commit.
    #[serde(with = "amount")]
    pub spendable: Balance,
    pub unlock_at: BlockNumber,
    pub settled_nonce: Nonce,
    pub settled_through: Nonce,
    #[serde(with = "amount")]
    pub settled_total: Balance,
    #[serde(with = "amount")]
    pub last_claimed_total: Balance,
    pub last_settled_at: BlockNumber,
    #[serde(with = "amount")]
    pub held: Balance,
    pub held_until: BlockNumber,
    #[serde(with = "amount")]
    pub held_next: Balance,
    pub held_next_until: BlockNumber,
}

/// A provider's bond and statistics (`compute_provider`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderJson<BlockNumber> {
    pub provider: String,
    #[serde(with = "amount")]
    pub bond: Balance,
    pub services: u32,
    pub unbonding: bool,
    pub claims_settled: u64,
    pub requests_settled: u64,
    #[serde(with = "amount")]
    pub earned: Balance,
    pub disputes_lost: u32,
    pub last_settled_at: BlockNumber,
    pub bond_locked_until: BlockNumber,
}

/// The pallet's parameters (`compute_params`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ParamsJson<BlockNumber> {
    pub refund_lock: BlockNumber,
    pub dispute_window: BlockNumber,
    #[serde(with = "amount")]
    pub min_deposit: Balance,
    #[serde(with = "amount")]
    pub provider_bond: Balance,
    #[serde(with = "amount")]
    pub min_bond: Balance,
    pub max_batch: u32,
    #[serde(with = "amount")]
    pub escrow_deposit: Balance,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_strings_and_kinds_are_lowercase() {
        let s = ServiceJson {
            provider: "5F".into(),
            service_id: 1,
            kind: ServiceKind::Embedding,
            model: "m".into(),
            model_hash: H256::repeat_byte(0xab),
            url: "u".into(),
            input_price: u128::MAX,
            output_price: 0,
            verifiability: String::new(),
            price_version: 2,
        };
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["kind"], "embedding");
        assert_eq!(json["inputPrice"], u128::MAX.to_string());
        assert_eq!(serde_json::from_value::<ServiceJson>(json).unwrap(), s);
    }
}
