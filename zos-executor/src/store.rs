//! Durable local state in one redb database (transactional, crash-safe):
//! the finalized-block cursor, what is deployed per contract, metering windows and the outbox of
//! reports not yet accepted on chain. Values are SCALE-encoded primitives types.

use std::path::Path;

use anyhow::{Context, Result};
use codec::{Decode, DecodeAll, Encode};
use redb::{Database, ReadableTable, TableDefinition};
use zos_primitives::{
    spec::{v3::DeploymentSpecV3, DeploymentSpec},
    ContractId,
};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CONTRACTS: TableDefinition<u64, &[u8]> = TableDefinition::new("contracts");
const METERS: TableDefinition<u64, &[u8]> = TableDefinition::new("meters");
/// (contract, window start) -> encoded consumption report waiting for acceptance.
const OUTBOX: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("outbox");
/// contract -> encoded deployment result last accepted on chain.
const DEPLOY_REPORTS: TableDefinition<u64, &[u8]> = TableDefinition::new("deploy_reports");
/// contract -> the finalized block at which it was first seen missing from the desired state.
const TOMBSTONES: TableDefinition<u64, u64> = TableDefinition::new("tombstones");
/// contract -> encoded spec whose installation started and has not finished: recorded before
/// any side effect, so a crash mid-install leaves something to clean up by.
const INTENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("intents");

/// META key of the layout the spec-holding records (contracts, intents) are written in.
const LAYOUT_KEY: &str = "layout";
/// That layout: 2 since VM specs have the overlay card; stores without the key hold layout 1.
const LAYOUT: u32 = 2;

/// The last finalized block whose events were processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Cursor {
    pub number: u64,
    pub hash: [u8; 32],
}

/// Outcome of installing one workload.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum WorkloadOutcome {
    Ok,
    /// Permanent failure with the reason reported on chain.
    Failed(String),
    /// A health check whose VM fails its probe: reported on chain, the contract keeps running.
    Unhealthy(String),
}

/// What this node has deployed for one contract.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct LocalContract {
    pub contract: ContractId,
    pub spec: DeploymentSpec,
    pub spec_hash: [u8; 32],
    /// Outcome per workload name of the last reconcile of `spec`.
    pub outcomes: Vec<(Vec<u8>, WorkloadOutcome)>,
    /// False while the contract is in its grace period: workloads stopped, data kept.
    pub serving: bool,
}

/// Uptime accumulated in the current metering window of a contract.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct MeterState {
    /// Window start, unix seconds; equals the end of the last report handed to the outbox.
    pub window_start: u64,
    pub up_seconds: u64,
    /// Last time uptime was sampled, unix seconds.
    pub last_sample: u64,
    /// Public traffic in this window so far.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Each public card's cumulative counters (card, bytes in, bytes out) at the last sample
    /// that could read them: what the next reading is billed against.
    pub seen: Vec<(Vec<u8>, u64, u64)>,
    /// False for a meter carried over from a store written before traffic metering: its
    /// cards' counters ran unbilled, so the first reading only sets the baselines.
    pub baselines_known: bool,
}

/// [`MeterState`] as stores written before traffic metering hold it.
#[derive(Decode)]
struct MeterStateV1 {
    window_start: u64,
    up_seconds: u64,
    last_sample: u64,
    bytes_in: u64,
    bytes_out: u64,
}

fn decode_meter(bytes: &[u8]) -> Result<MeterState> {
    if let Ok(state) = MeterState::decode(&mut &bytes[..]) {
        return Ok(state);
    }
    let old: MeterStateV1 = decode(bytes, "meter")?;
    Ok(MeterState {
        window_start: old.window_start,
        up_seconds: old.up_seconds,
        last_sample: old.last_sample,
        bytes_in: old.bytes_in,
        bytes_out: old.bytes_out,
        seen: Vec::new(),
        baselines_known: false,
    })
}

/// What one metering sample of a contract changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterSample {
    pub contract: ContractId,
    pub meter: MeterState,
    /// Windows closed by this sample: (window start, encoded report).
    pub closed: Vec<(u64, Vec<u8>)>,
}

pub struct Store {
    db: Database,
}

fn decode<T: Decode>(bytes: &[u8], what: &str) -> Result<T> {
    T::decode(&mut &bytes[..]).with_context(|| format!("corrupt {what} record in the local store"))
}

/// [`LocalContract`] as layout 1 holds it: the spec without VM overlay cards.
#[derive(Decode)]
struct LocalContractV1 {
    contract: ContractId,
    spec: DeploymentSpecV3,
    spec_hash: [u8; 32],
    outcomes: Vec<(Vec<u8>, WorkloadOutcome)>,
    serving: bool,
}

/// Rewrites the records of an older layout in the current one, in the transaction that opens
/// the store (guests keep running across executor upgrades, and their records with them). A
/// record already in the current layout (a store written between the change and the key) is
/// kept; one that neither layout reads whole is an error, never guessed at.
fn upgrade_layout(tx: &redb::WriteTransaction) -> Result<()> {
    let mut meta = tx.open_table(META)?;
    let layout = match meta.get(LAYOUT_KEY)? {
        Some(v) => decode::<u32>(v.value(), "layout")?,
        None => 1,
    };
    anyhow::ensure!(
        layout <= LAYOUT,
        "the local store was written by a newer executor (layout {layout}; this one reads {LAYOUT})"
    );
    if layout == LAYOUT {
        return Ok(());
    }
    let mut contracts = tx.open_table(CONTRACTS)?;
    let mut upgraded = Vec::new();
    let mut rewritten = 0;
    for entry in contracts.iter()? {
        let (id, bytes) = entry?;
        let bytes = bytes.value();
        if let Ok(old) = LocalContractV1::decode_all(&mut &bytes[..]) {
            // The chain re-hashed the spec in its own migration; a hash that named the old
            // encoding names the new one now, so the contract is not seen as updated.
            let old_hash = old.spec.hash();
            let spec = old.spec.upgrade();
            let spec_hash = match old.spec_hash == old_hash {
                true => spec.hash(),
                false => old.spec_hash,
            };
            let current = LocalContract {
                contract: old.contract,
                spec,
                spec_hash,
                outcomes: old.outcomes,
                serving: old.serving,
            };
            upgraded.push((id.value(), current.encode()));
        } else {
            LocalContract::decode_all(&mut &bytes[..]).with_context(|| {
                format!("contract {} in the local store: unreadable", id.value())
            })?;
        }
    }
    for (id, bytes) in &upgraded {
        contracts.insert(*id, bytes.as_slice())?;
    }
    rewritten += upgraded.len();
    let mut intents = tx.open_table(INTENTS)?;
    let mut upgraded = Vec::new();
    for entry in intents.iter()? {
        let (id, bytes) = entry?;
        let bytes = bytes.value();
        if let Ok(old) = DeploymentSpecV3::decode_all(&mut &bytes[..]) {
            upgraded.push((id.value(), old.upgrade().encode()));
        } else {
            DeploymentSpec::decode_all(&mut &bytes[..]).with_context(|| {
                format!(
                    "install intent of contract {} in the local store: unreadable",
                    id.value()
                )
            })?;
        }
    }
    for (id, bytes) in &upgraded {
        intents.insert(*id, bytes.as_slice())?;
    }
    rewritten += upgraded.len();
    meta.insert(LAYOUT_KEY, LAYOUT.encode().as_slice())?;
    if rewritten > 0 {
        tracing::info!(
            from = layout,
            records = rewritten,
            "local store records rewritten in the current layout"
        );
    }
    Ok(())
}

impl Store {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let db = Database::create(path).with_context(|| format!("opening {}", path.display()))?;
        // Create every table up front so readers never see "table does not exist".
        let tx = db.begin_write()?;
        tx.open_table(META)?;
        tx.open_table(CONTRACTS)?;
        tx.open_table(METERS)?;
        tx.open_table(OUTBOX)?;
        tx.open_table(DEPLOY_REPORTS)?;
        tx.open_table(TOMBSTONES)?;
        tx.open_table(INTENTS)?;
        upgrade_layout(&tx)?;
        tx.commit()?;
        Ok(Self { db })
    }

    pub fn cursor(&self) -> Result<Option<Cursor>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(META)?;
        let value = table.get("cursor")?;
        value.map(|v| decode(v.value(), "cursor")).transpose()
    }

    pub fn set_cursor(&self, cursor: Cursor) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(META)?
            .insert("cursor", cursor.encode().as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// The newest finalized block whose desired state this node acted on.
    pub fn high_water(&self) -> Result<Option<u64>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(META)?;
        let value = table.get("high_water")?;
        value
            .map(|v| decode::<u64>(v.value(), "high water"))
            .transpose()
    }

    /// Raises the high-water mark (never lowers it).
    pub fn set_high_water(&self, block: u64) -> Result<()> {
        if self.high_water()?.is_some_and(|h| h >= block) {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        tx.open_table(META)?
            .insert("high_water", block.encode().as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Contracts seen missing from the desired state, with the block they were first missing at.
    pub fn tombstones(&self) -> Result<std::collections::HashMap<ContractId, u64>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TOMBSTONES)?;
        let mut out = std::collections::HashMap::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.insert(k.value(), v.value());
        }
        Ok(out)
    }

    pub fn put_tombstone(&self, id: ContractId, block: u64) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(TOMBSTONES)?.insert(id, block)?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets tombstones of contracts that are back in the desired state.
    pub fn clear_tombstones(&self, ids: &[ContractId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(TOMBSTONES)?;
            for id in ids {
                table.remove(*id)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn contract(&self, id: ContractId) -> Result<Option<LocalContract>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(CONTRACTS)?;
        let value = table.get(id)?;
        value.map(|v| decode(v.value(), "contract")).transpose()
    }

    pub fn contracts(&self) -> Result<Vec<LocalContract>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(CONTRACTS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (_, v) = entry?;
            out.push(decode(v.value(), "contract")?);
        }
        Ok(out)
    }

    pub fn put_contract(&self, c: &LocalContract) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(CONTRACTS)?
            .insert(c.contract, c.encode().as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets a removed contract and its meter. The meter's open window goes to the outbox
    /// as the contract's final window, ending `now` (unix seconds): the chain bills an ended
    /// contract up to its end time, and the outbox cuts the window there. Outbox entries stay
    /// until accepted.
    pub fn remove_contract(&self, id: ContractId, now: u64) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(CONTRACTS)?.remove(id)?;
        let meter = tx
            .open_table(METERS)?
            .remove(id)?
            .map(|v| decode_meter(v.value()))
            .transpose()?;
        if let Some(last) = meter.and_then(|st| crate::meter::final_window(id, &st, now)) {
            tx.open_table(OUTBOX)?
                .insert((id, last.window_start), last.encode().as_slice())?;
        }
        tx.open_table(DEPLOY_REPORTS)?.remove(id)?;
        tx.open_table(TOMBSTONES)?.remove(id)?;
        tx.open_table(INTENTS)?.remove(id)?;
        tx.commit()?;
        Ok(())
    }

    /// Records that installing `spec` for contract `id` is about to start.
    pub fn put_intent(&self, id: ContractId, spec: &DeploymentSpec) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(INTENTS)?
            .insert(id, spec.encode().as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Installations started and not finished (a crash, or still failing transiently).
    pub fn intents(&self) -> Result<std::collections::HashMap<ContractId, DeploymentSpec>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(INTENTS)?;
        let mut out = std::collections::HashMap::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.insert(k.value(), decode(v.value(), "intent")?);
        }
        Ok(out)
    }

    /// Stores the contract's new local record and ends its installation intent, atomically.
    pub fn finish_install(&self, c: &LocalContract) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(CONTRACTS)?
            .insert(c.contract, c.encode().as_slice())?;
        tx.open_table(INTENTS)?.remove(c.contract)?;
        tx.commit()?;
        Ok(())
    }

    pub fn meter(&self, id: ContractId) -> Result<Option<MeterState>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(METERS)?;
        let value = table.get(id)?;
        value.map(|v| decode_meter(v.value())).transpose()
    }

    pub fn put_meter(&self, id: ContractId, meter: &MeterState) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(METERS)?
            .insert(id, meter.encode().as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// One metering pass in one transaction: per contract, its new meter and the windows it
    /// closed (into the outbox), so a crash can neither lose nor double a window and a pass
    /// costs one disk sync however many contracts there are.
    pub fn record_samples(&self, samples: &[MeterSample]) -> Result<()> {
        if samples.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        {
            let contracts = tx.open_table(CONTRACTS)?;
            let mut outbox = tx.open_table(OUTBOX)?;
            let mut meters = tx.open_table(METERS)?;
            for sample in samples {
                // Removed while it was being sampled: its meter must not come back.
                if contracts.get(sample.contract)?.is_none() {
                    continue;
                }
                for (window_start, report) in &sample.closed {
                    outbox.insert((sample.contract, *window_start), report.as_slice())?;
                }
                meters.insert(sample.contract, sample.meter.encode().as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Reports waiting to be accepted, oldest window first per contract.
    pub fn outbox(&self) -> Result<Vec<((ContractId, u64), Vec<u8>)>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(OUTBOX)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    pub fn remove_from_outbox(&self, keys: &[(ContractId, u64)]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(OUTBOX)?;
            for key in keys {
                table.remove(*key)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn deploy_report(&self, id: ContractId) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(DEPLOY_REPORTS)?;
        let value = table.get(id)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    pub fn put_deploy_report(&self, id: ContractId, report: &[u8]) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(DEPLOY_REPORTS)?.insert(id, report)?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec with a VM, and the same spec as layout 1 wrote it.
    fn vm_spec_in_both_layouts() -> (DeploymentSpec, DeploymentSpecV3) {
        let spec: DeploymentSpec = serde_json::from_value(serde_json::json!({
            "version": 3,
            "workloads": [
                { "name": "web", "kind": { "vm": {
                    "image": { "root_hash": "ab".repeat(32), "source": "https://hub.example" },
                    "vcpus": 1, "memory_mib": 256, "rootfs_mib": 256, "entrypoint": "/bin/serve",
                } } },
                { "name": "data", "kind": { "disk": { "size_mib": 64 } } },
            ],
        }))
        .unwrap();
        let old = DeploymentSpecV3::downgraded(&spec);
        (spec, old)
    }

    /// Guests outlive executor upgrades: records of the layout before overlay cards are read,
    /// rewritten once, and their hash follows the chain's re-hashing; a newer layout is refused.
    #[test]
    fn records_of_the_layout_before_overlay_cards_are_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let (spec, old) = vm_spec_in_both_layouts();
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            let record = (
                7u64,
                &old,
                old.hash(),
                Vec::<(Vec<u8>, WorkloadOutcome)>::new(),
                true,
            );
            tx.open_table(CONTRACTS)
                .unwrap()
                .insert(7, record.encode().as_slice())
                .unwrap();
            let stale = (
                8u64,
                &old,
                [9u8; 32],
                vec![(b"web".to_vec(), WorkloadOutcome::Ok)],
                false,
            );
            tx.open_table(CONTRACTS)
                .unwrap()
                .insert(8, stale.encode().as_slice())
                .unwrap();
            tx.open_table(INTENTS)
                .unwrap()
                .insert(7, old.encode().as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let seven = store.contract(7).unwrap().unwrap();
        assert_eq!(seven.spec, spec);
        assert_eq!(seven.spec_hash, spec.hash());
        assert!(seven.serving);
        let eight = store.contract(8).unwrap().unwrap();
        assert_eq!(eight.spec, spec);
        assert_eq!(eight.spec_hash, [9; 32], "a hash of something else is kept");
        assert_eq!(eight.outcomes, vec![(b"web".to_vec(), WorkloadOutcome::Ok)]);
        assert_eq!(store.intents().unwrap()[&7], spec);
        drop(store);
        // Opened again: nothing to do, same records.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.contract(7).unwrap().unwrap().spec, spec);
        drop(store);

        let db = Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert(LAYOUT_KEY, (LAYOUT + 1).encode().as_slice())
            .unwrap();
        tx.commit().unwrap();
        drop(db);
        let refused = Store::open(&path).err().expect("a newer layout is refused");
        assert!(
            format!("{refused:#}").contains("newer executor"),
            "{refused:#}"
        );
    }

    #[test]
    fn a_removed_contracts_open_window_goes_to_the_outbox_as_its_final_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        let contract = |id| LocalContract {
            contract: id,
            spec: DeploymentSpec {
                version: 0,
                workloads: Default::default(),
                metadata: Default::default(),
            },
            spec_hash: [0; 32],
            outcomes: Vec::new(),
            serving: true,
        };
        store.put_contract(&contract(8)).unwrap();
        store
            .put_meter(
                8,
                &MeterState {
                    window_start: 300,
                    up_seconds: 80,
                    last_sample: 380,
                    bytes_out: 7,
                    ..Default::default()
                },
            )
            .unwrap();
        store.remove_contract(8, 395).unwrap();
        assert_eq!(store.meter(8).unwrap(), None);
        let outbox = store.outbox().unwrap();
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox[0].0, (8, 300));
        let last = crate::chain::ConsumptionReport::decode(&mut &outbox[0].1[..]).unwrap();
        assert_eq!(
            (
                last.window_start,
                last.window_end,
                last.uptime_seconds,
                last.public_bytes_out
            ),
            (300, 395, 80, 7)
        );
        // A contract without a meter (never up) leaves nothing.
        store.put_contract(&contract(9)).unwrap();
        store.remove_contract(9, 400).unwrap();
        assert_eq!(store.outbox().unwrap().len(), 1);
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.cursor().unwrap(), None);
            store
                .set_cursor(Cursor {
                    number: 7,
                    hash: [1; 32],
                })
                .unwrap();
            let meter = MeterState {
                window_start: 100,
                ..Default::default()
            };
            store
                .put_contract(&LocalContract {
                    contract: 3,
                    spec: DeploymentSpec {
                        version: 0,
                        workloads: Default::default(),
                        metadata: Default::default(),
                    },
                    spec_hash: [3; 32],
                    outcomes: Vec::new(),
                    serving: true,
                })
                .unwrap();
            // A contract removed meanwhile gets no meter back.
            store
                .record_samples(&[MeterSample {
                    contract: 4,
                    meter: meter.clone(),
                    closed: vec![(40, b"gone".to_vec())],
                }])
                .unwrap();
            assert_eq!(store.meter(4).unwrap(), None);
            store
                .record_samples(&[MeterSample {
                    contract: 3,
                    meter,
                    closed: vec![(40, b"report".to_vec())],
                }])
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.cursor().unwrap(),
            Some(Cursor {
                number: 7,
                hash: [1; 32]
            })
        );
        assert_eq!(store.meter(3).unwrap().unwrap().window_start, 100);
        assert_eq!(store.outbox().unwrap(), vec![((3, 40), b"report".to_vec())]);
        store.remove_from_outbox(&[(3, 40)]).unwrap();
        assert!(store.outbox().unwrap().is_empty());
    }

    #[test]
    fn a_meter_written_before_traffic_metering_still_loads_with_unknown_baselines() {
        let old = (100u64, 5u64, 105u64, 7u64, 9u64).encode();
        let meter = decode_meter(&old).unwrap();
        assert_eq!(
            (meter.window_start, meter.up_seconds, meter.last_sample),
            (100, 5, 105)
        );
        assert_eq!((meter.bytes_in, meter.bytes_out), (7, 9));
        assert!(!meter.baselines_known && meter.seen.is_empty());
        let now = MeterState {
            seen: vec![(b"card".to_vec(), 1, 2)],
            baselines_known: true,
            ..meter
        };
        assert_eq!(decode_meter(&now.encode()).unwrap(), now);
    }
}
