//! The guest's process list (from /proc) and signals to its processes.

use std::{io, path::Path};

use zos_guest_agent::{Process, ProcessList, MAX_PAYLOAD};

/// Every process of the guest, by pid; those that exit while being read are left out.
pub fn list() -> ProcessList {
    list_in(Path::new("/proc"))
}

fn list_in(proc_dir: &Path) -> ProcessList {
    // SAFETY: sysconf has no memory effects.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    };
    let mut pids: Vec<i32> = std::fs::read_dir(proc_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let processes = pids
        .into_iter()
        .filter_map(|pid| read_process(&proc_dir.join(pid.to_string()), pid, page))
        .collect();
    ProcessList { processes }
}

fn read_process(dir: &Path, pid: i32, page: u64) -> Option<Process> {
    let stat = String::from_utf8_lossy(&std::fs::read(dir.join("stat")).ok()?).into_owned();
    let (comm, state, ppid) = parse_stat(&stat)?;
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())?;
    let statm = std::fs::read_to_string(dir.join("statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
    Some(Process {
        pid,
        ppid,
        uid,
        state,
        rss_kib: pages.saturating_mul(page) / 1024,
        command: command_line(&cmdline).unwrap_or_else(|| format!("[{comm}]")),
    })
}

/// (name, state, parent pid) of a `stat` line. The name comes in parentheses and may hold
/// spaces and parentheses itself: the fields follow its last ')'.
fn parse_stat(stat: &str) -> Option<(String, String, i32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let mut fields = stat[close + 1..].split_whitespace();
    let state = fields.next()?.to_string();
    let ppid = fields.next()?.parse().ok()?;
    Some((comm, state, ppid))
}

/// The NUL-separated words as one line; `None` when there are none (a kernel thread).
fn command_line(cmdline: &[u8]) -> Option<String> {
    let cmdline = cmdline.strip_suffix(b"\0").unwrap_or(cmdline);
    if cmdline.is_empty() {
        return None;
    }
    let words: Vec<_> = cmdline
        .split(|b| *b == 0)
        .map(String::from_utf8_lossy)
        .collect();
    Some(words.join(" "))
}

/// The list as JSON of at most [`MAX_PAYLOAD`] bytes: the last processes are left out when
/// it would be longer.
pub fn encode_bounded(mut list: ProcessList) -> Vec<u8> {
    let size = |p: &Process| serde_json::to_vec(p).map_or(0, |v| v.len()) + 1;
    let mut total: usize =
        r#"{"processes":[]}"#.len() + list.processes.iter().map(size).sum::<usize>();
    while total > MAX_PAYLOAD {
        match list.processes.pop() {
            Some(p) => total -= size(&p),
            None => break,
        }
    }
    loop {
        let json = serde_json::to_vec(&list).unwrap_or_default();
        if json.len() <= MAX_PAYLOAD || list.processes.pop().is_none() {
            return json;
        }
    }
}

/// Sends `signal` to `pid`.
pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill has no memory effects.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_are_parsed() {
        assert_eq!(
            parse_stat("42 (my (odd) name) S 7 42 42 0 -1"),
            Some(("my (odd) name".into(), "S".into(), 7))
        );
        assert_eq!(parse_stat("42 (x"), None);
        assert_eq!(parse_stat(")("), None);
        assert_eq!(parse_stat("1 (init) R"), None);
    }

    #[test]
    fn command_lines_are_joined() {
        assert_eq!(
            command_line(b"sleep\x00300\x00").as_deref(),
            Some("sleep 300")
        );
        assert_eq!(
            command_line(b"nginx: worker").as_deref(),
            Some("nginx: worker")
        );
        assert_eq!(command_line(b""), None);
    }

    #[test]
    fn this_process_is_listed_and_long_lists_are_cut() {
        let me = std::process::id() as i32;
        let list = list();
        let p = list.processes.iter().find(|p| p.pid == me).unwrap();
        assert!(
            p.rss_kib > 0 && p.command.contains("zos_guest_agent"),
            "{p:?}"
        );
        let many = ProcessList {
            processes: (0..5000).map(|_| p.clone()).collect(),
        };
        let json = encode_bounded(many);
        assert!(json.len() <= MAX_PAYLOAD);
        let back: ProcessList = serde_json::from_slice(&json).unwrap();
        assert!(back.processes.len() > 10);
    }
}
