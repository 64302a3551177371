//! Engine tests with recording test drivers: ordering, concurrency, retries, failure isolation,
//! grace / resume / cancel, and the real disk driver underneath.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use zos_primitives::{
    contracts::{ContractState, NodeContract},
    spec::{DeploymentSpec, Workload},
};

use super::*;
use crate::drivers::{disk::DiskDriver, DriverResult, Usage};

/// Records every call as "op:contract:name" and keeps what is installed in memory.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
    installed: Mutex<HashMap<(u64, String), Observed>>,
    /// Transient failures still to inject per workload name.
    transient: Mutex<HashMap<String, u32>>,
    /// Workload names whose install fails permanently.
    permanent: Mutex<Vec<String>>,
    /// Workload names whose inspection reports a permanent failure (e.g. a crash loop).
    broken_for_good: Mutex<HashMap<String, String>>,
    in_flight: Mutex<(usize, usize)>,
}

struct TestDriver {
    kind: &'static str,
    rec: Arc<Recorder>,
    delay: Duration,
}

fn wname(w: &Workload) -> String {
    String::from_utf8_lossy(w.name.as_bytes()).into_owned()
}

impl TestDriver {
    fn log(&self, op: &str, ctx: &WorkloadCtx, w: &Workload) {
        self.rec
            .calls
            .lock()
            .unwrap()
            .push(format!("{op}:{}:{}", ctx.contract, wname(w)));
    }
}

#[async_trait]
impl Driver for TestDriver {
    fn kind(&self) -> &'static str {
        self.kind
    }
    async fn install(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<()> {
        {
            let mut f = self.rec.in_flight.lock().unwrap();
            f.0 += 1;
            f.1 = f.1.max(f.0);
        }
        tokio::time::sleep(self.delay).await;
        self.rec.in_flight.lock().unwrap().0 -= 1;
        self.log("install", ctx, w);
        if let Some(n) = self.rec.transient.lock().unwrap().get_mut(&wname(w)) {
            if *n > 0 {
                *n -= 1;
                return Err(DriverError::Transient(anyhow::anyhow!("backend busy")));
            }
        }
        if self.rec.permanent.lock().unwrap().contains(&wname(w)) {
            return Err(DriverError::permanent("image not bootable"));
        }
        self.rec
            .installed
            .lock()
            .unwrap()
            .insert((ctx.contract, wname(w)), Observed::Running);
        Ok(())
    }
    async fn update(&self, ctx: &WorkloadCtx, _old: &Workload, new: &Workload) -> DriverResult<()> {
        self.log("update", ctx, new);
        Ok(())
    }
    async fn remove(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<()> {
        self.log("remove", ctx, w);
        self.rec
            .installed
            .lock()
            .unwrap()
            .remove(&(ctx.contract, wname(w)));
        Ok(())
    }
    async fn pause(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<()> {
        self.log("pause", ctx, w);
        self.rec
            .installed
            .lock()
            .unwrap()
            .insert((ctx.contract, wname(w)), Observed::Paused);
        Ok(())
    }
    async fn resume(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<()> {
        self.log("resume", ctx, w);
        self.rec
            .installed
            .lock()
            .unwrap()
            .insert((ctx.contract, wname(w)), Observed::Running);
        Ok(())
    }
    async fn inspect(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<Observed> {
        let installed = self
            .rec
            .installed
            .lock()
            .unwrap()
            .contains_key(&(ctx.contract, wname(w)));
        if let Some(reason) = self.rec.broken_for_good.lock().unwrap().get(&wname(w)) {
            if installed {
                return Err(DriverError::permanent(reason.clone()));
            }
        }
        Ok(self
            .rec
            .installed
            .lock()
            .unwrap()
            .get(&(ctx.contract, wname(w)))
            .cloned()
            .unwrap_or(Observed::Missing))
    }
    async fn usage(&self, _ctx: &WorkloadCtx, _w: &Workload) -> DriverResult<Usage> {
        Ok(Usage::default())
    }
}

struct Harness {
    engine: Arc<Engine>,
    rec: Arc<Recorder>,
    store: Arc<Store>,
    dir: tempfile::TempDir,
    /// The finalized block of the last pass.
    block: std::sync::atomic::AtomicU64,
}

impl Harness {
    /// One reconcile pass at the next finalized block, as the service makes them.
    async fn pass(&self, desired: Vec<NodeContract>) -> Result<PassSummary> {
        let at = self
            .block
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        self.engine.reconcile(desired, at).await
    }
}

fn harness(delay: Duration, parallelism: usize) -> Harness {
    harness_in(tempfile::tempdir().unwrap(), Vec::new(), delay, parallelism)
}

fn harness_in(
    dir: tempfile::TempDir,
    capacity_roots: Vec<std::path::PathBuf>,
    delay: Duration,
    parallelism: usize,
) -> Harness {
    let store = Arc::new(Store::open(&dir.path().join("state.redb")).unwrap());
    let rec = Arc::new(Recorder::default());
    let drivers: Vec<Arc<dyn Driver>> = ["vm", "volume", "network", "public_ip"]
        .into_iter()
        .map(|kind| {
            Arc::new(TestDriver {
                kind,
                rec: rec.clone(),
                delay,
            }) as Arc<dyn Driver>
        })
        .chain(std::iter::once(Arc::new(DiskDriver) as Arc<dyn Driver>))
        .collect();
    let engine = Engine::new(store.clone(), dir.path().join("contracts"), drivers)
        .with_capacity_roots(capacity_roots)
        .with_parallelism(parallelism)
        .with_retry(RetryPolicy {
            attempts: 3,
            first_backoff: Duration::from_millis(1),
        });
    Harness {
        engine: Arc::new(engine),
        rec,
        store,
        dir,
        block: Default::default(),
    }
}

fn spec(json: &str) -> DeploymentSpec {
    serde_json::from_str(json).unwrap()
}

const VM_WITH_DISK: &str = r#"{"version":0,"workloads":[
  {"name":"web","kind":{"vm":{"image":{"root_hash":"0707070707070707070707070707070707070707070707070707070707070707","source":"http://127.0.0.1/img"},
   "vcpus":1,"memory_mib":256,"rootfs_mib":256,"mounts":[{"workload":"data","path":"/data"}]}}},
  {"name":"data","kind":{"disk":{"size_mib":4}}},
  {"name":"files","kind":{"volume":{"size_mib":8}}}]}"#;

fn contract(id: u64, state: ContractState, spec: DeploymentSpec) -> NodeContract {
    NodeContract {
        contract: id,
        state,
        spec_hash: spec.hash(),
        spec,
        public_ips: Default::default(),
    }
}

fn calls(h: &Harness) -> Vec<String> {
    h.rec.calls.lock().unwrap().clone()
}

#[tokio::test]
async fn installs_in_dependency_order_and_reports_once() {
    let h = harness(Duration::ZERO, 4);
    let c = contract(1, ContractState::Active, spec(VM_WITH_DISK));
    let pass = h.pass(vec![c.clone()]).await.unwrap();
    assert_eq!(calls(&h), vec!["install:1:files", "install:1:web"]);
    // The real disk driver made the sparse file of the spec's size.
    let disk = h.dir.path().join("contracts/1/disks/data.raw");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 4 << 20);
    assert_eq!(pass.to_report.len(), 1);
    assert!(pass.to_report[0].all_ok());

    // Once the chain shows Deployed, a second pass changes nothing and reports nothing.
    let deployed = NodeContract {
        state: ContractState::Deployed,
        ..c
    };
    let pass = h.pass(vec![deployed]).await.unwrap();
    assert_eq!(calls(&h).len(), 2);
    assert!(pass.to_report.is_empty());
}

#[tokio::test]
async fn contracts_are_reconciled_concurrently() {
    let h = harness(Duration::from_millis(100), 8);
    let one_vm = r#"{"version":0,"workloads":[{"name":"v","kind":{"vm":{"image":{"root_hash":"0707070707070707070707070707070707070707070707070707070707070707","source":"x"},"vcpus":1,"memory_mib":256,"rootfs_mib":256}}}]}"#;
    let desired: Vec<_> = (1..=6)
        .map(|i| contract(i, ContractState::Active, spec(one_vm)))
        .collect();
    let started = std::time::Instant::now();
    let pass = h.pass(desired).await.unwrap();
    assert_eq!(pass.to_report.len(), 6);
    assert!(
        h.rec.in_flight.lock().unwrap().1 >= 2,
        "installs never overlapped"
    );
    assert!(
        started.elapsed() < Duration::from_millis(550),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn transient_errors_are_retried_and_never_terminal() {
    let h = harness(Duration::ZERO, 2);
    // More failures than one pass retries: the first pass leaves it pending, the next succeeds.
    h.rec.transient.lock().unwrap().insert("web".into(), 4);
    let c = contract(1, ContractState::Active, spec(VM_WITH_DISK));
    let pass = h.pass(vec![c.clone()]).await.unwrap();
    assert_eq!(pass.pending, vec![1]);
    assert!(
        pass.to_report.is_empty(),
        "a transient error must not be reported as a failure"
    );
    let pass = h.pass(vec![c]).await.unwrap();
    assert!(pass.pending.is_empty());
    assert!(pass.to_report[0].all_ok());
}

#[tokio::test]
async fn a_bad_contract_fails_alone_with_its_reason() {
    let h = harness(Duration::ZERO, 2);
    h.rec.permanent.lock().unwrap().push("broken".into());
    let bad = r#"{"version":0,"workloads":[{"name":"broken","kind":{"vm":{"image":{"root_hash":"0707070707070707070707070707070707070707070707070707070707070707","source":"x"},"vcpus":1,"memory_mib":256,"rootfs_mib":256}}}]}"#;
    let pass = h
        .pass(vec![
            contract(1, ContractState::Active, spec(bad)),
            contract(2, ContractState::Active, spec(VM_WITH_DISK)),
        ])
        .await
        .unwrap();
    let by_id: HashMap<_, _> = pass.to_report.iter().map(|r| (r.contract, r)).collect();
    assert_eq!(
        by_id[&1].outcomes[0].1,
        WorkloadOutcome::Failed("image not bootable".into())
    );
    assert!(by_id[&2].all_ok());
    // The failure of that exact spec is not retried on the next pass.
    let before = calls(&h).len();
    h.pass(vec![contract(1, ContractState::Active, spec(bad))])
        .await
        .unwrap();
    assert!(!calls(&h)[before..]
        .iter()
        .any(|c| c.starts_with("install:1")));
}

#[tokio::test]
async fn an_invalid_spec_fails_before_anything_is_installed() {
    let h = harness(Duration::ZERO, 2);
    // Two workloads with the same name: validation rejects it.
    let dup = r#"{"version":0,"workloads":[{"name":"d","kind":{"disk":{"size_mib":1}}},{"name":"d","kind":{"disk":{"size_mib":1}}}]}"#;
    let pass = h
        .pass(vec![contract(9, ContractState::Active, spec(dup))])
        .await
        .unwrap();
    assert!(calls(&h).is_empty());
    match &pass.to_report[0].outcomes[0].1 {
        WorkloadOutcome::Failed(reason) => assert!(reason.contains("invalid spec"), "{reason}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(!h.dir.path().join("contracts/9").exists());
}

#[tokio::test]
async fn grace_pauses_keeps_data_and_active_resumes() {
    let h = harness(Duration::ZERO, 2);
    let s = spec(VM_WITH_DISK);
    h.pass(vec![contract(1, ContractState::Deployed, s.clone())])
        .await
        .unwrap();
    h.pass(vec![contract(1, ContractState::GracePeriod, s.clone())])
        .await
        .unwrap();
    assert!(calls(&h).contains(&"pause:1:web".to_string()));
    assert!(
        h.dir.path().join("contracts/1/disks/data.raw").exists(),
        "data kept in grace"
    );
    assert!(!h.store.contract(1).unwrap().unwrap().serving);
    h.pass(vec![contract(1, ContractState::Deployed, s)])
        .await
        .unwrap();
    assert!(calls(&h).contains(&"resume:1:web".to_string()));
    assert!(h.store.contract(1).unwrap().unwrap().serving);
}

#[tokio::test]
async fn cancellation_removes_in_reverse_order_with_data() {
    let h = harness(Duration::ZERO, 2);
    h.pass(vec![contract(
        1,
        ContractState::Deployed,
        spec(VM_WITH_DISK),
    )])
    .await
    .unwrap();
    // Missing once: only tombstoned; missing again at a later block: removed.
    let pass = h.pass(vec![]).await.unwrap();
    assert_eq!(pass.tombstoned, vec![1]);
    assert!(h.dir.path().join("contracts/1/disks/data.raw").exists());
    let pass = h.pass(vec![]).await.unwrap();
    assert_eq!(pass.removed, vec![1]);
    let removes: Vec<_> = calls(&h)
        .into_iter()
        .filter(|c| c.starts_with("remove"))
        .collect();
    assert_eq!(removes, vec!["remove:1:web", "remove:1:files"]);
    assert!(!h.dir.path().join("contracts/1").exists());
    assert!(h.store.contract(1).unwrap().is_none());
}

#[tokio::test]
async fn update_grows_the_disk_in_place_and_drops_removed_workloads() {
    let h = harness(Duration::ZERO, 2);
    h.pass(vec![contract(
        1,
        ContractState::Deployed,
        spec(VM_WITH_DISK),
    )])
    .await
    .unwrap();
    let disk = h.dir.path().join("contracts/1/disks/data.raw");
    std::fs::write(&disk, b"keep me").unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let v1 = VM_WITH_DISK
        .replace(r#""version":0"#, r#""version":1"#)
        .replace(r#""size_mib":4"#, r#""size_mib":16"#)
        .replace(
            r#",
  {"name":"files","kind":{"volume":{"size_mib":8}}}"#,
            "",
        );
    let pass = h
        .pass(vec![contract(1, ContractState::Active, spec(&v1))])
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 16 << 20);
    assert_eq!(&std::fs::read(&disk).unwrap()[..7], b"keep me");
    assert!(calls(&h).contains(&"remove:1:files".to_string()));
    assert_eq!(pass.to_report[0].version, 1);
}

#[tokio::test]
async fn a_deleted_disk_is_repaired() {
    let h = harness(Duration::ZERO, 2);
    let c = contract(1, ContractState::Deployed, spec(VM_WITH_DISK));
    h.pass(vec![c.clone()]).await.unwrap();
    let disk = h.dir.path().join("contracts/1/disks/data.raw");
    std::fs::remove_file(&disk).unwrap();
    h.pass(vec![c]).await.unwrap();
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 4 << 20);
}

#[tokio::test]
async fn shrinking_a_disk_is_a_permanent_failure() {
    let h = harness(Duration::ZERO, 2);
    let v0 = r#"{"version":0,"workloads":[{"name":"d","kind":{"disk":{"size_mib":8}}}]}"#;
    let v1 = r#"{"version":1,"workloads":[{"name":"d","kind":{"disk":{"size_mib":4}}}]}"#;
    h.pass(vec![contract(1, ContractState::Deployed, spec(v0))])
        .await
        .unwrap();
    let pass = h
        .pass(vec![contract(1, ContractState::Active, spec(v1))])
        .await
        .unwrap();
    assert!(
        matches!(&pass.to_report[0].outcomes[0].1, WorkloadOutcome::Failed(r) if r.contains("shrink"))
    );
}

/// Fifty contracts with a disk and a VM each on one node: every one converges in one pass.
/// Prints the pass time (the figure quoted in the docs); asserts only correctness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_contracts_reconcile_on_one_node() {
    let h = harness(Duration::ZERO, 8);
    let desired: Vec<_> = (1..=50)
        .map(|i| contract(i, ContractState::Active, spec(VM_WITH_DISK)))
        .collect();
    let started = std::time::Instant::now();
    let pass = h.pass(desired.clone()).await.unwrap();
    let first = started.elapsed();
    assert_eq!(pass.to_report.len(), 50);
    for i in 1..=50 {
        assert!(h
            .dir
            .path()
            .join(format!("contracts/{i}/disks/data.raw"))
            .exists());
    }
    let started = std::time::Instant::now();
    let desired: Vec<_> = desired
        .into_iter()
        .map(|c| NodeContract {
            state: ContractState::Deployed,
            ..c
        })
        .collect();
    let pass = h.pass(desired).await.unwrap();
    let steady = started.elapsed();
    assert!(pass.to_report.is_empty());
    eprintln!("reconcile of 50 contracts: first pass {first:?}, steady-state pass {steady:?}");
}

/// A lagging or resyncing RPC node shows an older finalized state, in which a contract may not
/// exist yet: acting on it would delete a tenant's data. Such a view is refused outright, and a
/// contract missing from a newer view is only removed once a later block confirms it.
#[tokio::test]
async fn an_older_chain_view_never_removes_data() {
    let h = harness(Duration::ZERO, 2);
    let c = contract(1, ContractState::Deployed, spec(VM_WITH_DISK));
    h.engine.reconcile(vec![c.clone()], 100).await.unwrap();
    let disk = h.dir.path().join("contracts/1/disks/data.raw");
    assert!(disk.exists());

    // A backend far behind: the contract "does not exist" there.
    let err = h.engine.reconcile(vec![], 40).await.unwrap_err();
    let stale = err
        .downcast_ref::<StaleChainView>()
        .expect("a typed stale-view error");
    assert_eq!((stale.seen, stale.acted_on), (40, 100));
    assert!(disk.exists());
    assert!(!calls(&h).iter().any(|c| c.starts_with("remove")));
    assert_eq!(h.store.high_water().unwrap(), Some(100));

    // The same block again without it (a glitch): tombstone only.
    let pass = h.engine.reconcile(vec![], 100).await.unwrap();
    assert_eq!(pass.tombstoned, vec![1]);
    // It is back at the next block: the tombstone is forgotten, nothing was touched.
    let pass = h.engine.reconcile(vec![c], 101).await.unwrap();
    assert!(pass.removed.is_empty() && pass.tombstoned.is_empty());
    assert!(h.store.tombstones().unwrap().is_empty());
    assert!(disk.exists());
    // Gone for real: missing at 102, confirmed at 103.
    assert_eq!(
        h.engine.reconcile(vec![], 102).await.unwrap().tombstoned,
        vec![1]
    );
    assert_eq!(
        h.engine.reconcile(vec![], 102).await.unwrap().tombstoned,
        vec![1]
    );
    assert_eq!(
        h.engine.reconcile(vec![], 103).await.unwrap().removed,
        vec![1]
    );
    assert!(!disk.exists());
    assert!(h.store.tombstones().unwrap().is_empty());
}

/// A contract's directory holds a tenant's disks and config: no other user of the host may
/// even list it.
#[tokio::test]
async fn contract_directories_are_private_to_the_node() {
    use std::os::unix::fs::PermissionsExt;
    let h = harness(Duration::ZERO, 2);
    h.pass(vec![contract(1, ContractState::Active, spec(VM_WITH_DISK))])
        .await
        .unwrap();
    for dir in ["contracts", "contracts/1"] {
        let mode = std::fs::metadata(h.dir.path().join(dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{dir} has mode {mode:o}");
    }
}

/// A contract whose workloads cannot all be installed has failed as a whole: a VM installed
/// beside the failed one must not keep running unbilled (uptime is only billed when every
/// workload is up). Data stays for a fixing update.
#[tokio::test]
async fn a_partly_failed_contract_keeps_nothing_running() {
    let h = harness(Duration::ZERO, 2);
    h.rec.permanent.lock().unwrap().push("broken".into());
    let mixed = r#"{"version":0,"workloads":[
      {"name":"web","kind":{"vm":{"image":{"root_hash":"0707070707070707070707070707070707070707070707070707070707070707","source":"x"},"vcpus":1,"memory_mib":256,"rootfs_mib":256}}},
      {"name":"broken","kind":{"vm":{"image":{"root_hash":"0707070707070707070707070707070707070707070707070707070707070707","source":"x"},"vcpus":1,"memory_mib":256,"rootfs_mib":256}}},
      {"name":"data","kind":{"disk":{"size_mib":4}}}]}"#;
    let c = contract(1, ContractState::Active, spec(mixed));
    let pass = h.pass(vec![c.clone()]).await.unwrap();
    let outcomes: HashMap<String, WorkloadOutcome> = pass.to_report[0]
        .outcomes
        .iter()
        .map(|(n, o)| (String::from_utf8_lossy(n).into_owned(), o.clone()))
        .collect();
    assert_eq!(
        outcomes["broken"],
        WorkloadOutcome::Failed("image not bootable".into())
    );
    match &outcomes["web"] {
        WorkloadOutcome::Failed(reason) => {
            assert!(reason.contains("'broken'"), "{reason}")
        }
        other => panic!("the VM beside the failed one is {other:?}"),
    }
    assert_eq!(outcomes["data"], WorkloadOutcome::Ok);
    assert!(calls(&h).contains(&"remove:1:web".to_string()));
    assert!(!h
        .rec
        .installed
        .lock()
        .unwrap()
        .contains_key(&(1, "web".to_string())));
    assert!(h.dir.path().join("contracts/1/disks/data.raw").exists());
    let local = h.store.contract(1).unwrap().unwrap();
    assert!(!h.engine.is_up(&local).await);
    // The next pass of the same spec starts nothing again.
    let before = calls(&h).len();
    h.pass(vec![c]).await.unwrap();
    assert!(!calls(&h)[before..].iter().any(|c| c.starts_with("install")));
}

/// Intent is recorded before side effects: an install cut short (a crash, or an error that
/// outlasts the pass) and then cancelled leaves nothing behind: its disk, directory and the
/// workloads that did start are removed although no finished record exists.
#[tokio::test]
async fn an_unfinished_install_is_cleaned_up_when_the_contract_goes() {
    let h = harness(Duration::ZERO, 2);
    h.rec.transient.lock().unwrap().insert("web".into(), 100);
    let c = contract(1, ContractState::Active, spec(VM_WITH_DISK));
    let pass = h.pass(vec![c]).await.unwrap();
    assert_eq!(pass.pending, vec![1]);
    let disk = h.dir.path().join("contracts/1/disks/data.raw");
    assert!(disk.exists(), "the disk was made before the VM failed");
    assert!(h.store.contract(1).unwrap().is_none());
    assert!(h.store.intents().unwrap().contains_key(&1));

    // Cancelled before the install ever finished.
    assert_eq!(h.pass(vec![]).await.unwrap().tombstoned, vec![1]);
    assert_eq!(h.pass(vec![]).await.unwrap().removed, vec![1]);
    assert!(!h.dir.path().join("contracts/1").exists());
    assert!(calls(&h).contains(&"remove:1:files".to_string()));
    assert!(h.store.intents().unwrap().is_empty());
}

/// A contract directory nothing on record knows about (left by an older version, or by hand)
/// is an orphan: removed by the same two-block rule.
#[tokio::test]
async fn an_orphan_contract_directory_is_removed() {
    let h = harness(Duration::ZERO, 2);
    let orphan = h.dir.path().join("contracts/77/disks");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("x.raw"), b"x").unwrap();
    // Not on the first view this node ever acts on (its state database may have been lost
    // while its RPC node shows an old state).
    let first = h.pass(vec![]).await.unwrap();
    assert!(first.tombstoned.is_empty() && first.removed.is_empty());
    assert!(orphan.exists());
    assert_eq!(h.pass(vec![]).await.unwrap().tombstoned, vec![77]);
    assert_eq!(h.pass(vec![]).await.unwrap().removed, vec![77]);
    assert!(!h.dir.path().join("contracts/77").exists());
}

/// A workload that fails after it was deployed (a guest crash-looping) fails the contract:
/// reported with its reason, stopped with everything else that runs, never counted up.
#[tokio::test]
async fn a_workload_failing_after_deployment_fails_the_contract() {
    let h = harness(Duration::ZERO, 2);
    let c = contract(1, ContractState::Active, spec(VM_WITH_DISK));
    assert!(h.pass(vec![c.clone()]).await.unwrap().to_report[0].all_ok());
    let deployed = NodeContract {
        state: ContractState::Deployed,
        ..c
    };
    h.rec.broken_for_good.lock().unwrap().insert(
        "web".into(),
        "guest is crash-looping: 5 crashes in a row".into(),
    );
    let pass = h.pass(vec![deployed.clone()]).await.unwrap();
    let result = &pass.to_report[0];
    let web = result
        .outcomes
        .iter()
        .find(|(n, _)| n.as_slice() == b"web")
        .map(|(_, o)| o.clone());
    assert_eq!(
        web,
        Some(WorkloadOutcome::Failed(
            "guest is crash-looping: 5 crashes in a row".into()
        ))
    );
    assert!(calls(&h).contains(&"remove:1:web".to_string()));
    let local = h.store.contract(1).unwrap().unwrap();
    assert!(!h.engine.is_up(&local).await);
    // Later passes neither restart it nor stop anything again.
    let before = calls(&h).len();
    h.pass(vec![deployed]).await.unwrap();
    assert_eq!(calls(&h).len(), before, "{:?}", &calls(&h)[before..]);
}

/// A tmpfs of `mib` MiB at `dir`, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: std::path::PathBuf, mib: u64) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let target = c(dir.to_str().unwrap());
        let options = c(&format!("size={mib}m"));
        // SAFETY: mount(2) with valid C strings.
        let rc = unsafe {
            libc::mount(
                c("tmpfs").as_ptr(),
                target.as_ptr(),
                c("tmpfs").as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        Self(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: umount2 with a valid C string.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[tokio::test]
async fn disks_go_to_the_roomiest_capacity_disk_and_leave_with_the_contract() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting filesystems needs root");
        return;
    }
    // The data directory and two capacity disks, each its own filesystem of its own size.
    let base = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir_in(base.path()).unwrap();
    let _data_fs = Tmpfs::mount(data.path().to_path_buf(), 16);
    let (roomy, small) = (base.path().join("roomy"), base.path().join("small"));
    let _roomy_fs = Tmpfs::mount(roomy.clone(), 64);
    let _small_fs = Tmpfs::mount(small.clone(), 32);
    let h = harness_in(data, vec![small.clone(), roomy.clone()], Duration::ZERO, 2);

    h.pass(vec![contract(1, ContractState::Active, spec(VM_WITH_DISK))])
        .await
        .unwrap();
    let placed = roomy.join("contracts/1/disks/data.raw");
    assert_eq!(std::fs::metadata(&placed).unwrap().len(), 4 << 20);
    // The contract directory names where it went.
    let link = h.dir.path().join("contracts/1/disks/data.raw");
    assert_eq!(std::fs::read_link(&link).unwrap(), placed);
    assert!(!small.join("contracts/1").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(roomy.join("contracts/1"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "a tenant's disk directory is readable by others"
    );

    // Its capacity disk out of reach (the file gone from under the link): the disk is waited
    // for, not made again empty elsewhere.
    let away = roomy.join("away.raw");
    std::fs::rename(&placed, &away).unwrap();
    let pass = h
        .pass(vec![contract(1, ContractState::Active, spec(VM_WITH_DISK))])
        .await
        .unwrap();
    assert_eq!(pass.pending, vec![1], "{pass:?}");
    assert!(!placed.exists() && !small.join("contracts/1").exists());
    assert!(std::fs::read_link(&link).is_ok());
    std::fs::rename(&away, &placed).unwrap();

    // Its link lost (a crash between making the disk and linking it): the disk is adopted,
    // not made again over.
    std::fs::write(&placed, b"adopt me").unwrap();
    std::fs::remove_file(&link).unwrap();
    h.pass(vec![contract(1, ContractState::Active, spec(VM_WITH_DISK))])
        .await
        .unwrap();
    assert_eq!(std::fs::read_link(&link).unwrap(), placed);
    assert_eq!(&std::fs::read(&placed).unwrap()[..8], b"adopt me");

    // Found where it is: grown in place there, its data kept.
    std::fs::write(&placed, b"keep me").unwrap();
    let v1 = VM_WITH_DISK
        .replace(r#""version":0"#, r#""version":1"#)
        .replace(r#""size_mib":4"#, r#""size_mib":16"#);
    h.pass(vec![contract(1, ContractState::Active, spec(&v1))])
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&placed).unwrap().len(), 16 << 20);
    assert_eq!(&std::fs::read(&placed).unwrap()[..7], b"keep me");

    // The next contract's disk goes where there is the most room now: with 40 MiB written
    // on the roomy disk (its disk file is sparse), that is the small one.
    std::fs::write(roomy.join("ballast"), vec![1u8; 40 << 20]).unwrap();
    h.pass(vec![
        contract(1, ContractState::Active, spec(&v1)),
        contract(2, ContractState::Active, spec(VM_WITH_DISK)),
    ])
    .await
    .unwrap();
    assert!(small.join("contracts/2/disks/data.raw").exists());

    // Cancelled: the disks leave the capacity disks with the contract.
    h.pass(vec![]).await.unwrap();
    let pass = h.pass(vec![]).await.unwrap();
    assert_eq!(pass.removed.len(), 2, "{pass:?}");
    assert!(!roomy.join("contracts/1").exists());
    assert!(!small.join("contracts/2").exists());
    assert!(!h.dir.path().join("contracts/1").exists());
}
