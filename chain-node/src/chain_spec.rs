//! Chain specs built from the runtime's genesis presets.

use sc_service::{ChainType, Properties};
use zos_runtime::{SS58_PREFIX, TOKEN_DECIMALS, TOKEN_SYMBOL, WASM_BINARY};

pub type ChainSpec = sc_service::GenericChainSpec;

/// Token symbol, decimals and SS58 prefix: what wallets such as polkadot.js read.
pub fn properties() -> Properties {
    let mut p = Properties::new();
    p.insert("tokenSymbol".into(), TOKEN_SYMBOL.into());
    p.insert("tokenDecimals".into(), TOKEN_DECIMALS.into());
    p.insert("ss58Format".into(), SS58_PREFIX.into());
    p
}

fn from_preset(name: &str, id: &str, kind: ChainType, preset: &str) -> Result<ChainSpec, String> {
    let wasm = WASM_BINARY
        .ok_or_else(|| "the runtime wasm was not built (was SKIP_WASM_BUILD set?)".to_string())?;
    Ok(ChainSpec::builder(wasm, None)
        .with_name(name)
        .with_id(id)
        .with_chain_type(kind)
        .with_properties(properties())
        .with_genesis_config_preset_name(preset)
        .build())
}

/// Single validator (Alice), Alice is sudo; the council is Alice, Bob and Charlie.
pub fn development() -> Result<ChainSpec, String> {
    from_preset(
        "ZOS Grid Development",
        "zos_dev",
        ChainType::Development,
        sp_genesis_builder::DEV_RUNTIME_PRESET,
    )
}

/// Alice and Bob validate; no sudo key, the council governs.
pub fn local_testnet() -> Result<ChainSpec, String> {
    from_preset(
        "ZOS Grid Local Testnet",
        "zos_local",
        ChainType::Local,
        sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET,
    )
}

/// Production-like: no sudo key, the council governs, farms must use real public addresses.
/// A real network replaces the authorities and the council (the well-known development keys).
pub fn production() -> Result<ChainSpec, String> {
    from_preset(
        "ZOS Grid",
        "zos_production",
        ChainType::Live,
        zos_runtime::genesis_config_presets::PRODUCTION_RUNTIME_PRESET,
    )
}
