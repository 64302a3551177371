//! Genesis presets: `development` (Alice validates and is sudo), `local_testnet` (Alice and
//! Bob validate) and `production` (a production-like network: no sudo key, real address
//! ranges only). In every preset a council of Alice, Bob and Charlie holds the privileged
//! calls; a real network replaces the authorities and the council in its chain spec. Chain
//! specs are built from these (see chain-spec/).

use crate::{
    configs::TreasuryAccount, AccountId, BalancesConfig, CouncilMembershipConfig,
    RuntimeGenesisConfig, SudoConfig, EXISTENTIAL_DEPOSIT, UNIT,
};
use alloc::{vec, vec::Vec};
use frame_support::build_struct_json_patch;
use serde_json::Value;
use sp_consensus_aura::sr25519::AuthorityId as AuraId;
use sp_consensus_grandpa::AuthorityId as GrandpaId;
use sp_genesis_builder::{PresetId, DEV_RUNTIME_PRESET, LOCAL_TESTNET_RUNTIME_PRESET};

/// The production-like preset: no sudo key, the council governs.
pub const PRODUCTION_RUNTIME_PRESET: &str = "production";
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

/// What differs between the presets.
struct Network {
    authorities: Vec<(AuraId, GrandpaId)>,
    endowed: Vec<AccountId>,
    /// The sudo key; `None` outside development.
    root: Option<AccountId>,
    council: Vec<AccountId>,
    /// Test networks: documentation address ranges count as public.
    documentation_ips_are_public: bool,
}

/// The council of every preset: Alice, Bob and Charlie.
fn dev_council() -> Vec<AccountId> {
    [
        Sr25519Keyring::Alice,
        Sr25519Keyring::Bob,
        Sr25519Keyring::Charlie,
    ]
    .iter()
    .map(|k| k.to_account_id())
    .collect()
}

fn genesis(network: Network) -> Value {
    let Network {
        authorities,
        endowed,
        root,
        council,
        documentation_ips_are_public,
    } = network;
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
        sudo: SudoConfig { key: root },
        council_membership: CouncilMembershipConfig {
            members: council
                .try_into()
                .expect("at most MaxMembers council members"),
        },
        grid: pallet_grid::GenesisConfig {
            documentation_ips_are_public,
        },
    })
}

/// The well-known development accounts, funded in the development and local presets.
fn dev_accounts() -> Vec<AccountId> {
    Sr25519Keyring::iter()
        .filter(|k| *k != Sr25519Keyring::One && *k != Sr25519Keyring::Two)
        .map(|k| k.to_account_id())
        .collect()
}

pub fn development_genesis() -> Value {
    genesis(Network {
        authorities: vec![authority(Sr25519Keyring::Alice)],
        endowed: dev_accounts(),
        root: Some(Sr25519Keyring::Alice.to_account_id()),
        council: dev_council(),
        documentation_ips_are_public: true,
    })
}

/// No sudo: the council governs, as on a public network.
pub fn local_testnet_genesis() -> Value {
    genesis(Network {
        authorities: vec![
            authority(Sr25519Keyring::Alice),
            authority(Sr25519Keyring::Bob),
        ],
        endowed: dev_accounts(),
        root: None,
        council: dev_council(),
        documentation_ips_are_public: true,
    })
}

/// Production-like: no sudo, only the validators and the council funded, farms must use
/// real public addresses.
pub fn production_genesis() -> Value {
    let council = dev_council();
    genesis(Network {
        authorities: vec![
            authority(Sr25519Keyring::Alice),
            authority(Sr25519Keyring::Bob),
        ],
        endowed: council.clone(),
        root: None,
        council,
        documentation_ips_are_public: false,
    })
}

pub fn get_preset(id: &PresetId) -> Option<Vec<u8>> {
    let patch = match id.as_ref() {
        DEV_RUNTIME_PRESET => development_genesis(),
        LOCAL_TESTNET_RUNTIME_PRESET => local_testnet_genesis(),
        PRODUCTION_RUNTIME_PRESET => production_genesis(),
        _ => return None,
    };
    // Serialising a `serde_json::Value` cannot fail.
    serde_json::to_vec(&patch).ok()
}

pub fn preset_names() -> Vec<PresetId> {
    vec![
        PresetId::from(DEV_RUNTIME_PRESET),
        PresetId::from(LOCAL_TESTNET_RUNTIME_PRESET),
        PresetId::from(PRODUCTION_RUNTIME_PRESET),
    ]
}
