//! cgroup v2 limits for a VM's processes: `<root>/zos/<vm>-<hash of its directory>` with `cpu.max` (vCPUs worth of
//! CPU time), `memory.max` (guest memory plus hypervisor overhead) and, where the `pids`
//! controller is delegated, `pids.max` (threads of QEMU and virtiofsd).
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

/// Creates (or reuses) `<root>/zos/<name>`, sets the limits and moves `pids` into it.
pub fn apply(root: &Path, name: &str, vcpus: u32, memory_mib: u64, pids: &[u32]) -> CgroupStatus {
    if let Some(reason) = unavailable_reason(root) {
        return CgroupStatus::Unavailable(reason);
    }
    match apply_inner(root, name, vcpus, memory_mib, pids) {
        Ok(p) => CgroupStatus::Applied(p),
        Err(e) => CgroupStatus::Unavailable(format!("{e:#}")),
    }
}

/// Tasks (threads included) a VM's host processes may have: QEMU's vCPU, I/O and worker
/// threads and virtiofsd's pool stay far below; a runaway helper does not take the host's.
pub const PIDS_MAX: u32 = 1024;

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

fn apply_inner(
    root: &Path,
    name: &str,
    vcpus: u32,
    memory_mib: u64,
    pids: &[u32],
) -> Result<PathBuf> {
    let parent = root.join("zos");
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let pids_controller =
        controllers(root).is_some_and(|c| c.split_whitespace().any(|x| x == "pids"));
    let enable = if pids_controller {
        "+cpu +memory +pids"
    } else {
        "+cpu +memory"
    };
    write(&root.join("cgroup.subtree_control"), enable)?;
    write(&parent.join("cgroup.subtree_control"), enable)?;
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let period = 100_000u64;
    write(
        &dir.join("cpu.max"),
        &format!("{} {period}", u64::from(vcpus) * period),
    )?;
    let mem = (memory_mib << 20) + overhead_bytes(memory_mib);
    write(&dir.join("memory.max"), &mem.to_string())?;
    if pids_controller {
        write(&dir.join("pids.max"), &PIDS_MAX.to_string())?;
    }
    for pid in pids {
        write(&dir.join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(dir)
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

    #[test]
    fn non_cgroup_dir_is_reported_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        match apply(dir.path(), "vm", 1, 256, &[]) {
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
        let st = apply(dir.path(), "vm1", 2, 512, &[]);
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
    }
}
