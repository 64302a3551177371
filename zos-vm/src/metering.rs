//! Resource use measured from the real processes and files.

use std::{os::unix::fs::MetadataExt, path::Path};

use anyhow::{Context, Result};

/// CPU time and resident memory of one process, from `/proc/<pid>/stat` and `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessUsage {
    /// User + system time, milliseconds.
    pub cpu_time_ms: u64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Parses `utime` and `stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name
/// (field 2) may contain spaces and parentheses: fields are counted after its last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 -> index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub fn process_usage(pid: u32) -> Result<ProcessUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let ticks = parse_stat_cpu_ticks(&stat).context("unexpected /proc/<pid>/stat format")?;
    Ok(ProcessUsage {
        cpu_time_ms: ticks * 1000 / clock_ticks(),
        // A zombie has no VmRSS line.
        rss_bytes: parse_status_rss(&status).unwrap_or(0),
    })
}

/// Bytes actually allocated to a (sparse) file: `st_blocks * 512`.
pub fn allocated_bytes(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok(meta.blocks() * 512)
}

/// What a VM uses: its processes (hypervisor + helpers) and its disks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmUsage {
    /// CPU time since the VM was created, over all restarts, milliseconds.
    pub cpu_time_ms: u64,
    /// Resident memory of the current processes, bytes (0 when not running).
    pub memory_bytes: u64,
    /// Bytes allocated to the VM's disk files.
    pub disk_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let line = "1234 (qemu (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(line), Some(300));
    }

    #[test]
    fn own_process_is_metered() {
        let u = process_usage(std::process::id()).unwrap();
        assert!(u.rss_bytes > 1024 * 1024, "{u:?}");
    }

    #[test]
    fn sparse_file_allocates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.raw");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        assert!(allocated_bytes(&p).unwrap() < 1 << 20);
    }
}
