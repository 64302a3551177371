//! Genesis presets: `development` (Alice validates and is sudo) and `local_testnet`
//! (Alice and Bob validate). Chain specs are built from these (see chain-spec/).

use crate::{
    configs::TreasuryAccount, AccountId, BalancesConfig, RuntimeGenesisConfig, SudoConfig,
    EXISTENTIAL_DEPOSIT, UNIT,
};
use alloc::{vec, vec::Vec};
use frame_support::build_struct_json_patch;
use serde_json::Value;
use sp_consensus_aura::sr25519::AuthorityId as AuraId;
use sp_consensus_grandpa::AuthorityId as GrandpaId;
use sp_genesis_builder::{PresetId, DEV_RUNTIME_PRESET, LOCAL_TESTNET_RUNTIME_PRESET};
use sp_keyring::{Ed25519Keyring, Sr25519Keyring};

/// Balance of each funded development account: a million tokens.
pub const DEV_ENDOWMENT: u128 = 1_000_000 * UNIT;

fn authority(who: Sr25519Keyring) -> (AuraId, GrandpaId) {
    let ed = match who {
        Sr25519Keyring::Alice => Ed25519Keyring::Alice,
        Sr25519Keyring::Bob => Ed25519Keyring::Bob,
        Sr25519Keyring::Charlie => Ed25519Keyring::Charlie,
        Sr25519Keyring::Dave => Ed25519Keyring::Dave,
        Sr25519Keyring::Eve => Ed25519Keyring::Eve,
        _ => Ed25519Keyring::Ferdie,
    };
    (who.public().into(), ed.public().into())
}

fn testnet_genesis(
    authorities: Vec<(AuraId, GrandpaId)>,
    endowed: Vec<AccountId>,
    root: AccountId,
) -> Value {
    build_struct_json_patch!(RuntimeGenesisConfig {
        balances: BalancesConfig {
            balances: endowed
                .iter()
                .cloned()
                .map(|k| (k, DEV_ENDOWMENT))
                // The treasury exists from genesis, so even payouts below the existential
                // deposit reach it.
                .chain(core::iter::once((
                    TreasuryAccount::get(),
                    EXISTENTIAL_DEPOSIT
                )))
                .collect::<Vec<_>>(),
        },
        aura: pallet_aura::GenesisConfig {
            authorities: authorities.iter().map(|a| a.0.clone()).collect::<Vec<_>>(),
        },
        grandpa: pallet_grandpa::GenesisConfig {
            authorities: authorities
                .iter()
                .map(|a| (a.1.clone(), 1))
                .collect::<Vec<_>>(),
        },
        sudo: SudoConfig { key: Some(root) },
        // Development and local test networks: farms use documentation address ranges.
        grid: pallet_grid::GenesisConfig {
            documentation_ips_are_public: true,
        },
    })
}

/// The well-known development accounts, funded in every preset.
fn dev_accounts() -> Vec<AccountId> {
    Sr25519Keyring::iter()
        .filter(|k| *k != Sr25519Keyring::One && *k != Sr25519Keyring::Two)
        .map(|k| k.to_account_id())
        .collect()
}

pub fn development_genesis() -> Value {
    testnet_genesis(
        vec![authority(Sr25519Keyring::Alice)],
        dev_accounts(),
        Sr25519Keyring::Alice.to_account_id(),
    )
}

pub fn local_testnet_genesis() -> Value {
    testnet_genesis(
        vec![
            authority(Sr25519Keyring::Alice),
            authority(Sr25519Keyring::Bob),
        ],
        dev_accounts(),
        Sr25519Keyring::Alice.to_account_id(),
    )
}

pub fn get_preset(id: &PresetId) -> Option<Vec<u8>> {
    let patch = match id.as_ref() {
        DEV_RUNTIME_PRESET => development_genesis(),
        LOCAL_TESTNET_RUNTIME_PRESET => local_testnet_genesis(),
        _ => return None,
    };
    // Serialising a `serde_json::Value` cannot fail.
    serde_json::to_vec(&patch).ok()
}

pub fn preset_names() -> Vec<PresetId> {
    vec![
        PresetId::from(DEV_RUNTIME_PRESET),
        PresetId::from(LOCAL_TESTNET_RUNTIME_PRESET),
    ]
}
