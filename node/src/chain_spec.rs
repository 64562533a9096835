//! Built-in chain specifications, built from the runtime's genesis presets.

use polkadot_sdk::{sc_service, sp_genesis_builder};

/// Chain specification of this node (no extensions).
pub type ChainSpec = sc_service::GenericChainSpec;

fn wasm() -> Result<&'static [u8], String> {
    compute_runtime::WASM_BINARY.ok_or_else(|| {
        "the wasm runtime is not embedded in this binary (it was built with SKIP_WASM_BUILD); \
         rebuild without it"
            .to_string()
    })
}

fn properties() -> sc_service::Properties {
    let mut p = sc_service::Properties::new();
    p.insert("tokenSymbol".into(), "CMP".into());
    p.insert("tokenDecimals".into(), 12.into());
    p.insert("ss58Format".into(), 42.into());
    p
}

/// `--dev` / `--chain dev`: Alice authors alone; short refund lock and dispute window.
pub fn development() -> Result<ChainSpec, String> {
    Ok(ChainSpec::builder(wasm()?, None)
        .with_name("Compute Development")
        .with_id("compute_dev")
        .with_chain_type(sc_service::ChainType::Development)
        .with_genesis_config_preset_name(sp_genesis_builder::DEV_RUNTIME_PRESET)
        .with_properties(properties())
        .build())
}

/// `--chain local`: Alice, Bob, Charlie and Dave author and finalize.
pub fn local_testnet() -> Result<ChainSpec, String> {
    Ok(ChainSpec::builder(wasm()?, None)
        .with_name("Compute Local Testnet")
        .with_id("compute_local_testnet")
        .with_chain_type(sc_service::ChainType::Local)
        .with_genesis_config_preset_name(sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET)
        .with_protocol_id("compute-local")
        .with_properties(properties())
        .build())
}
