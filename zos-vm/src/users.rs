//! One unprivileged uid/gid per VM, so that one guest's hypervisor cannot signal, trace or read
//! the processes and files of another (every QEMU used to run as `nobody`).
//!
//! Ids come from a configured range and are claimed in a host-wide registry directory: one
//! file per claimed uid holding the VM directory that owns it, created under an exclusive
//! `flock` of the registry. Several executors on one host (test chains, or a node upgraded
//! beside its predecessor) therefore never hand out the same id. A VM directory hashes to a
//! starting point in the range, so a re-created VM gets its old id back; a claim whose VM
//! directory no longer exists is stale and may be taken over.

use std::{
    io::Write,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// The uid and gid a VM's hypervisor runs as (the gid equals the uid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmUser {
    pub uid: u32,
    pub gid: u32,
}

/// A contiguous range of ids, none of them used by accounts on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub first: u32,
    pub count: u32,
}

impl IdRange {
    /// Far above the ranges `useradd` and `/etc/subuid` hand out (1000+, 100000 + 65536 per
    /// user) and below 2^31, which some tools still treat as signed.
    pub const DEFAULT: IdRange = IdRange {
        first: 1_000_000_000,
        count: 65_536,
    };

    /// `FIRST-LAST`, inclusive.
    pub fn parse(text: &str) -> Result<Self> {
        let (a, b) = text
            .split_once('-')
            .with_context(|| format!("{text:?}: expected FIRST-LAST"))?;
        let first: u32 = a.trim().parse().with_context(|| format!("{a:?}"))?;
        let last: u32 = b.trim().parse().with_context(|| format!("{b:?}"))?;
        if first == 0 || last < first || last == u32::MAX {
            bail!("{text:?}: need 0 < FIRST <= LAST < 4294967295");
        }
        Ok(Self {
            first,
            count: last - first + 1,
        })
    }
}

/// Every uid (real, effective, saved or filesystem) a process of the host runs as.
fn uids_in_use() -> std::collections::HashSet<u32> {
    let mut uids = std::collections::HashSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return uids;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        // A process may exit between the listing and the read.
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            uids.extend(
                line.split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse::<u32>().ok()),
            );
        }
    }
    uids
}

/// The host-wide registry of VM users.
#[derive(Clone, Debug)]
pub struct UserRegistry {
    dir: PathBuf,
    range: IdRange,
}

impl UserRegistry {
    /// The registry shared by every executor on the host.
    pub const DEFAULT_DIR: &'static str = "/var/lib/zos-grid/vm-users";

    pub fn new(dir: impl Into<PathBuf>, range: IdRange) -> Self {
        Self {
            dir: dir.into(),
            range,
        }
    }

    pub fn range(&self) -> IdRange {
        self.range
    }

    fn contains(&self, uid: u32) -> bool {
        uid.checked_sub(self.range.first)
            .is_some_and(|offset| offset < self.range.count)
    }

    fn claim_path(&self, uid: u32) -> PathBuf {
        self.dir.join(uid.to_string())
    }

    /// Holds the registry's lock for the life of the returned file.
    fn lock(&self) -> Result<std::fs::File> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.dir.join(".lock"))
            .with_context(|| format!("opening the lock of {}", self.dir.display()))?;
        // SAFETY: plain syscall on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", self.dir.display()));
        }
        Ok(lock)
    }

    /// The claims in the registry: uid -> the VM directory holding it.
    fn claims(&self) -> Result<std::collections::BTreeMap<u32, Vec<u8>>> {
        let mut claims = std::collections::BTreeMap::new();
        let entries = std::fs::read_dir(&self.dir)
            .with_context(|| format!("listing {}", self.dir.display()))?;
        for entry in entries {
            let entry = entry?;
            let Some(uid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let holder = std::fs::read(entry.path())
                .with_context(|| format!("reading {}", entry.path().display()))?;
            claims.insert(uid, holder);
        }
        Ok(claims)
    }

    /// The user of the VM in `vm_dir` (an absolute path): its existing claim, else the first
    /// free or stale id from the directory's hash onwards.
    pub fn claim(&self, vm_dir: &Path) -> Result<VmUser> {
        use std::os::unix::ffi::OsStrExt;
        let _lock = self.lock()?;
        let owner = vm_dir.as_os_str().as_bytes();
        let claims = self.claims()?;
        if let Some((&uid, _)) = claims
            .iter()
            .find(|(uid, holder)| self.contains(**uid) && holder.as_slice() == owner)
        {
            return Ok(VmUser { uid, gid: uid });
        }
        let count = u64::from(self.range.count);
        let start = u64::from_le_bytes(
            blake3::hash(owner).as_bytes()[..8]
                .try_into()
                .expect("8 bytes"),
        ) % count;
        // An id some process still runs as is never handed out, claimed or not: a QEMU left
        // behind, or one of an executor whose VM directories this one cannot see.
        let running = uids_in_use();
        let free = (0..count)
            // offset < count, and first + count - 1 fits in u32 (checked by `parse`).
            .map(|step| self.range.first + ((start + step) % count) as u32)
            .filter(|uid| !running.contains(uid))
            .find(|uid| match claims.get(uid) {
                None => true,
                // A claim whose VM directory is gone (and whose id nothing runs as) is stale.
                Some(holder) => !Path::new(std::ffi::OsStr::from_bytes(holder)).exists(),
            });
        let Some(uid) = free else {
            bail!(
                "all {} VM users of {}..={} are taken",
                self.range.count,
                self.range.first,
                u64::from(self.range.first) + count - 1
            );
        };
        let path = self.claim_path(uid);
        let tmp = self.dir.join(format!(".{uid}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(owner)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("claiming {}", path.display()))?;
        Ok(VmUser { uid, gid: uid })
    }

    /// Gives up the claim of the VM in `vm_dir`, if it holds one.
    pub fn release(&self, vm_dir: &Path) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let _lock = self.lock()?;
        let owner = vm_dir.as_os_str().as_bytes();
        for (uid, holder) in self.claims()? {
            if holder == owner {
                let path = self.claim_path(uid);
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(dir: &Path, count: u32) -> UserRegistry {
        UserRegistry::new(dir.join("registry"), IdRange { first: 5000, count })
    }

    fn vm_dir(root: &Path, name: &str) -> PathBuf {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn each_vm_gets_its_own_id_and_keeps_it() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = registry(tmp.path(), 8);
        let dirs: Vec<PathBuf> = (0..8)
            .map(|i| vm_dir(tmp.path(), &format!("vm{i}")))
            .collect();
        let users: Vec<VmUser> = dirs.iter().map(|d| reg.claim(d).unwrap()).collect();
        let mut uids: Vec<u32> = users.iter().map(|u| u.uid).collect();
        uids.sort();
        uids.dedup();
        assert_eq!(uids.len(), 8, "{users:?}");
        assert!(users
            .iter()
            .all(|u| (5000..5008).contains(&u.uid) && u.gid == u.uid));
        // Claiming again (an executor restart, a re-created VM) returns the same id.
        for (d, u) in dirs.iter().zip(&users) {
            assert_eq!(reg.claim(d).unwrap(), *u);
        }
        let ninth = vm_dir(tmp.path(), "vm8");
        let err = reg.claim(&ninth).unwrap_err().to_string();
        assert!(err.contains("all 8 VM users"), "{err}");
        // A released id goes to the next VM; a stale one (directory gone) too.
        reg.release(&dirs[3]).unwrap();
        assert_eq!(reg.claim(&ninth).unwrap(), users[3]);
        std::fs::remove_dir(&dirs[5]).unwrap();
        let tenth = vm_dir(tmp.path(), "vm9");
        assert_eq!(reg.claim(&tenth).unwrap(), users[5]);
        // Releasing a directory without a claim changes nothing.
        reg.release(&tmp.path().join("elsewhere")).unwrap();
        assert_eq!(reg.claim(&dirs[1]).unwrap(), users[1]);
        assert_eq!(reg.claims().unwrap().len(), 8);
    }

    #[test]
    fn concurrent_claimers_never_share_an_id() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..32)
            .map(|i| vm_dir(tmp.path(), &format!("vm{i}")))
            .collect();
        let handles: Vec<_> = dirs
            .chunks(8)
            .map(|chunk| {
                // Separate registry values, as separate executors would have.
                let reg = registry(tmp.path(), 40);
                let chunk = chunk.to_vec();
                std::thread::spawn(move || {
                    chunk
                        .iter()
                        .map(|d| reg.claim(d).unwrap().uid)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut uids: Vec<u32> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        uids.sort();
        uids.dedup();
        assert_eq!(uids.len(), 32);
    }

    #[test]
    fn an_id_a_process_runs_as_is_never_handed_out() {
        let tmp = tempfile::tempdir().unwrap();
        // This test process's own uid stands for a QEMU left running as that id.
        // SAFETY: getuid has no preconditions.
        let mine = unsafe { libc::getuid() };
        let reg = UserRegistry::new(
            tmp.path().join("registry"),
            IdRange {
                first: mine,
                count: 1,
            },
        );
        let err = reg.claim(&vm_dir(tmp.path(), "a")).unwrap_err().to_string();
        assert!(err.contains("all 1 VM users"), "{err}");
    }

    #[test]
    fn ranges_parse_and_reject_nonsense() {
        assert_eq!(
            IdRange::parse("1000-1999").unwrap(),
            IdRange {
                first: 1000,
                count: 1000
            }
        );
        for bad in ["0-10", "10-9", "x-10", "10", "1-4294967295"] {
            assert!(IdRange::parse(bad).is_err(), "{bad}");
        }
    }
}
