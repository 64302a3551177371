//! cgroup v2 limits for a VM's processes: `<root>/zos/<vm>-<hash of its directory>` with `cpu.max` (vCPUs worth of
//! CPU time), `memory.max` (guest memory plus hypervisor overhead) and, where the `pids`
//! controller is delegated, `pids.max` (threads of QEMU and virtiofsd); where the `io`
//! controller is delegated and the node configures it, `io.max` on the disks holding the VM's
//! files.
//!
//! Applied only where the unified hierarchy is mounted at the root given (default
//! `/sys/fs/cgroup`), is writable and delegates the `cpu` and `memory` controllers. Otherwise
//! the VM runs without cgroup limits, and [`CgroupStatus::Unavailable`] says why; vCPUs and
//! memory are still bounded by the hypervisor's own arguments.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupStatus {
    Applied(PathBuf),
    Unavailable(String),
}

/// Memory the hypervisor itself may use beyond guest RAM (QEMU + TCG translation cache,
/// virtiofsd): measured in README.md, with margin.
pub fn overhead_bytes(memory_mib: u64) -> u64 {
    (256 + memory_mib / 8) << 20
}

fn controllers(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("cgroup.controllers")).ok()
}

/// Why cgroup v2 limits cannot be applied under `root`, or `None` when they can.
pub fn unavailable_reason(root: &Path) -> Option<String> {
    let Some(ctrl) = controllers(root) else {
        return Some(format!(
            "{} is not a cgroup v2 (unified) hierarchy",
            root.display()
        ));
    };
    for c in ["cpu", "memory"] {
        if !ctrl.split_whitespace().any(|x| x == c) {
            return Some(format!(
                "the {c} controller is not available in {}",
                root.display()
            ));
        }
    }
    None
}

/// Disk bandwidth and operations per second one VM may use on each disk holding its files
/// (`io.max`); `None` fields are unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IoLimit {
    pub read_bps: Option<u64>,
    pub write_bps: Option<u64>,
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
}

impl IoLimit {
    /// `rbps=N,wbps=N,riops=N,wiops=N`, any subset, in any order.
    pub fn parse(text: &str) -> Result<Self> {
        let mut limit = Self::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .with_context(|| format!("{part:?}: expected KEY=NUMBER"))?;
            let value: u64 = value
                .parse()
                .with_context(|| format!("{part:?}: not a number"))?;
            anyhow::ensure!(value > 0, "{part:?}: a limit of 0 would stall the VM");
            let slot = match key {
                "rbps" => &mut limit.read_bps,
                "wbps" => &mut limit.write_bps,
                "riops" => &mut limit.read_iops,
                "wiops" => &mut limit.write_iops,
                other => anyhow::bail!("{other:?}: expected rbps, wbps, riops or wiops"),
            };
            *slot = Some(value);
        }
        Ok(limit)
    }

    /// One `io.max` line for `device` (major, minor).
    pub fn line(&self, device: (u32, u32)) -> String {
        let v = |x: Option<u64>| x.map_or_else(|| "max".to_string(), |n| n.to_string());
        format!(
            "{}:{} rbps={} wbps={} riops={} wiops={}",
            device.0,
            device.1,
            v(self.read_bps),
            v(self.write_bps),
            v(self.read_iops),
            v(self.write_iops)
        )
    }
}

/// The whole disk (major, minor) holding the file `path`: `io.max` takes disks, not
/// partitions. `None` for files on no block device (tmpfs, overlay, network filesystems).
pub fn disk_of(path: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if !sys.exists() {
        return None;
    }
    if !sys.join("partition").exists() {
        return Some((major, minor));
    }
    // A partition's sysfs directory sits inside its disk's.
    let parent = std::fs::read_to_string(sys.join("../dev")).ok()?;
    let (a, b) = parent.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// What one VM may use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Applied to each of `io_devices` when the `io` controller is delegated.
    pub io: Option<IoLimit>,
    pub io_devices: Vec<(u32, u32)>,
}

/// Creates (or reuses) `<root>/zos/<name>`, sets the limits and moves `pids` into it.
pub fn apply(root: &Path, name: &str, limits: &Limits, pids: &[u32]) -> CgroupStatus {
    if let Some(reason) = unavailable_reason(root) {
        return CgroupStatus::Unavailable(reason);
    }
    match apply_inner(root, name, limits, pids) {
        Ok(p) => CgroupStatus::Applied(p),
        Err(e) => CgroupStatus::Unavailable(format!("{e:#}")),
    }
}

/// Tasks (threads included) a VM's host processes may have: QEMU's vCPU, I/O and worker
/// threads, virtiofsd's pool and the shim's runtime (its blocking pool may grow to 512) stay
/// below; a runaway helper does not take the host's.
pub const PIDS_MAX: u32 = 4096;

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

fn apply_inner(root: &Path, name: &str, limits: &Limits, pids: &[u32]) -> Result<PathBuf> {
    let parent = root.join("zos");
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let available = controllers(root).unwrap_or_default();
    let has = |c: &str| available.split_whitespace().any(|x| x == c);
    let io = limits
        .io
        .filter(|_| has("io") && !limits.io_devices.is_empty());
    let mut enable = vec!["+cpu", "+memory"];
    if has("pids") {
        enable.push("+pids");
    }
    if io.is_some() {
        enable.push("+io");
    }
    let enable = enable.join(" ");
    write(&root.join("cgroup.subtree_control"), &enable)?;
    write(&parent.join("cgroup.subtree_control"), &enable)?;
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let period = 100_000u64;
    write(
        &dir.join("cpu.max"),
        &format!("{} {period}", u64::from(limits.vcpus) * period),
    )?;
    let mem = (limits.memory_mib << 20) + overhead_bytes(limits.memory_mib);
    write(&dir.join("memory.max"), &mem.to_string())?;
    if has("pids") {
        write(&dir.join("pids.max"), &PIDS_MAX.to_string())?;
    }
    if let Some(io) = io {
        // Best effort: a kernel without throttling, or a device refusing it (ENODEV), must not
        // cost the VM its CPU and memory limits.
        for device in &limits.io_devices {
            // One line per write: the kernel parses each write as one device's settings.
            if let Err(e) = write(&dir.join("io.max"), &io.line(*device)) {
                tracing::warn!(error = %format!("{e:#}"), "no io.max for this device");
            }
        }
    } else if limits.io.is_some() {
        tracing::warn!(cgroup = %dir.display(), "no io.max: the io controller is not delegated or the VM's files are on no disk");
    }
    for pid in pids {
        write(&dir.join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(dir)
}

/// Moves the calling process back to the root cgroup, out of a VM's cgroup it joined as the
/// VM's supervisor, so that the VM's cgroup can be removed while the supervisor lives on.
pub fn leave(root: &Path) {
    if unavailable_reason(root).is_none() {
        if let Err(e) = write(&root.join("cgroup.procs"), &std::process::id().to_string()) {
            tracing::warn!(error = %format!("{e:#}"), "cannot leave the VM's cgroup");
        }
    }
}

/// Removes the VM's cgroup (its processes must be gone).
pub fn remove(root: &Path, name: &str) {
    let dir = root.join("zos").join(name);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir(&dir) {
            tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove cgroup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(vcpus: u32, memory_mib: u64) -> Limits {
        Limits {
            vcpus,
            memory_mib,
            ..Default::default()
        }
    }

    #[test]
    fn non_cgroup_dir_is_reported_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        match apply(dir.path(), "vm", &limits(1, 256), &[]) {
            CgroupStatus::Unavailable(r) => assert!(r.contains("not a cgroup v2"), "{r}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limits_written_where_controllers_exist() {
        // A directory shaped like a delegated cgroup: the writes land in plain files.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cgroup.controllers"),
            "cpu io memory pids\n",
        )
        .unwrap();
        let mut l = limits(2, 512);
        l.io = Some(IoLimit::parse("wbps=1048576,riops=200").unwrap());
        l.io_devices = vec![(254, 0), (8, 16)];
        let st = apply(dir.path(), "vm1", &l, &[]);
        let cg = dir.path().join("zos/vm1");
        assert_eq!(st, CgroupStatus::Applied(cg.clone()));
        assert_eq!(
            std::fs::read_to_string(cg.join("cpu.max")).unwrap(),
            "200000 100000"
        );
        let mem: u64 = std::fs::read_to_string(cg.join("memory.max"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(mem, (512 << 20) + overhead_bytes(512));
        assert_eq!(
            std::fs::read_to_string(cg.join("pids.max")).unwrap(),
            PIDS_MAX.to_string()
        );
        // A plain file keeps only the last of the per-device writes.
        assert_eq!(
            std::fs::read_to_string(cg.join("io.max")).unwrap(),
            "8:16 rbps=max wbps=1048576 riops=200 wiops=max"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("zos/cgroup.subtree_control")).unwrap(),
            "+cpu +memory +pids +io"
        );
    }

    #[test]
    fn io_is_left_alone_without_its_controller_or_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        let mut l = limits(1, 256);
        l.io = Some(IoLimit::parse("rbps=1").unwrap());
        l.io_devices = vec![(254, 0)];
        apply(dir.path(), "vm", &l, &[]);
        assert!(!dir.path().join("zos/vm/io.max").exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("zos/cgroup.subtree_control")).unwrap(),
            "+cpu +memory"
        );
    }

    #[test]
    fn io_limits_parse() {
        assert_eq!(
            IoLimit::parse("rbps=10, wiops=5").unwrap(),
            IoLimit {
                read_bps: Some(10),
                write_iops: Some(5),
                ..Default::default()
            }
        );
        assert_eq!(IoLimit::parse("").unwrap(), IoLimit::default());
        for bad in ["rbps", "rbps=x", "rbps=0", "bps=1", "rbps=-1"] {
            assert!(IoLimit::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_file_maps_to_its_whole_disk() {
        let tmp = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let file = tmp.path().join("disk.raw");
        std::fs::write(&file, b"x").unwrap();
        match disk_of(&file) {
            Some((major, minor)) => {
                let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
                assert!(sys.exists(), "{}", sys.display());
                assert!(
                    !sys.join("partition").exists(),
                    "{} is a partition",
                    sys.display()
                );
            }
            // The workspace is on no block device here (tmpfs, overlay): nothing to limit.
            None => {
                use std::os::unix::fs::MetadataExt;
                let dev = std::fs::metadata(&file).unwrap().dev();
                let sys = format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev));
                assert!(
                    !Path::new(&sys).exists(),
                    "{sys} exists but was not resolved"
                );
            }
        }
        assert_eq!(disk_of(&tmp.path().join("missing")), None);
    }

    #[test]
    fn a_supervisor_leaves_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        leave(dir.path());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cgroup.procs")).unwrap(),
            std::process::id().to_string()
        );
    }
}
