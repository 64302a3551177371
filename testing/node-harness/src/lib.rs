//! Real chain nodes for tests.
//!
//! [`ChainNode::start`] spawns the `zos-chain-node` binary on free loopback ports with a
//! throw-away database, waits until its RPC answers, and kills it when dropped. The node's output
//! goes to a log file; when the test fails (the drop happens while panicking) the log's tail is
//! printed and the directory is kept for inspection.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// subxt helpers for tests: connect, submit and wait for finality, read storage.
pub mod client;

/// Where the node binary is: `ZOS_CHAIN_NODE_BIN`, else the shared build directory.
pub fn node_binary() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("ZOS_CHAIN_NODE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let profile = std::env::var("CARGO_PROFILE").unwrap_or_else(|_| "ci".into());
    let path = Path::new(&target).join(profile).join("zos-chain-node");
    if !path.exists() {
        bail!(
            "chain node binary not found at {} (build it or set ZOS_CHAIN_NODE_BIN)",
            path.display()
        );
    }
    Ok(path)
}

/// A loopback TCP port that was free a moment ago.
///
/// The port is released before the node binds it, so another process may take it meanwhile;
/// the node then serves RPC on another port, which [`ChainNode::start`] reads from its log.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Options for one node. `Default` is a single-validator `--dev` chain.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub binary: Option<PathBuf>,
    /// `--chain` value; `None` means `--dev`.
    pub chain: Option<String>,
    /// Extra flags, e.g. `--alice`, `--validator`, `--bootnodes ...`.
    pub extra_args: Vec<String>,
    /// Keep the database in this directory instead of a temporary one (to restart a node).
    pub base_path: Option<PathBuf>,
    pub ready_timeout: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            binary: None,
            chain: None,
            extra_args: Vec::new(),
            base_path: None,
            ready_timeout: Duration::from_secs(120),
        }
    }
}

/// A running node process. Killed on drop.
pub struct ChainNode {
    child: Option<Child>,
    /// How it was started, to restart it with the same ports and database.
    command: Vec<std::ffi::OsString>,
    pub rpc_port: u16,
    pub p2p_port: u16,
    pub log_path: PathBuf,
    pub base_path: PathBuf,
    workdir: Option<tempdir::TempDir>,
}

mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory removed on drop unless `keep` was called.
    pub struct TempDir {
        path: PathBuf,
        keep: bool,
    }

    impl TempDir {
        pub fn new(prefix: &str) -> std::io::Result<Self> {
            let unique = format!(
                "{prefix}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default()
            );
            let path = std::env::temp_dir().join(unique);
            std::fs::create_dir_all(&path)?;
            Ok(Self { path, keep: false })
        }
        pub fn path(&self) -> &Path {
            &self.path
        }
        pub fn keep(&mut self) {
            self.keep = true;
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            if !self.keep {
                let _ = std::fs::remove_dir_all(&self.path);
            }
        }
    }
}

impl ChainNode {
    /// Starts a `--dev` node and waits until its RPC answers.
    pub fn start_dev() -> Result<Self> {
        Self::start(NodeOptions::default())
    }

    pub fn start(opts: NodeOptions) -> Result<Self> {
        Self::start_with_ports(opts, free_port)
    }

    /// [`ChainNode::start`] with the port picker given (tests force a taken port with it).
    fn start_with_ports(
        opts: NodeOptions,
        mut pick_port: impl FnMut() -> Result<u16>,
    ) -> Result<Self> {
        Self::launch(&opts, pick_port()?, pick_port()?)
    }

    fn launch(opts: &NodeOptions, rpc_port: u16, p2p_port: u16) -> Result<Self> {
        let binary = match opts.binary.clone() {
            Some(b) => b,
            None => node_binary()?,
        };
        let workdir = tempdir::TempDir::new("zos-node").context("creating the node's work dir")?;
        let base_path = opts
            .base_path
            .clone()
            .unwrap_or_else(|| workdir.path().join("db"));
        let log_path = workdir.path().join("node.log");

        let mut cmd = Command::new(&binary);
        // A restarted node must find its database: keep it out of `--tmp`.
        std::fs::create_dir_all(&base_path).context("creating the node's base path")?;
        match &opts.chain {
            None => cmd.arg("--dev"),
            Some(chain) => cmd.args(["--chain", chain]),
        };
        cmd.arg("--base-path")
            .arg(&base_path)
            .args(["--rpc-port", &rpc_port.to_string()])
            .args(["--listen-addr", &format!("/ip4/127.0.0.1/tcp/{p2p_port}")])
            .args([
                "--no-prometheus",
                "--no-telemetry",
                "--no-mdns",
                "--rpc-cors",
                "all",
            ])
            .args(["--rpc-methods", "unsafe"])
            .args(&opts.extra_args);
        let command: Vec<std::ffi::OsString> = std::iter::once(cmd.get_program().to_owned())
            .chain(cmd.get_args().map(|a| a.to_owned()))
            .collect();
        let mut node = Self {
            child: None,
            command,
            rpc_port,
            p2p_port,
            log_path,
            base_path,
            workdir: Some(workdir),
        };
        node.spawn()?;
        node.wait_rpc_ready(opts.ready_timeout)?;
        Ok(node)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .context("opening the node log")?;
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {:?}", self.command[0]))?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills the node and starts it again on the same ports with the same database.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_rpc_ready(Duration::from_secs(120))
    }

    /// `ws://127.0.0.1:<port>`: the node serves WebSocket and HTTP JSON-RPC on one port.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.rpc_port)
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rpc_port)
    }

    fn wait_rpc_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "node exited during start-up with {status}; log:\n{}",
                        self.log_tail(40)
                    );
                }
            }
            // The node prints where it really listens: when the requested port was taken it
            // falls back to another one (and something else answers on the requested port).
            if let Some(port) = self.rpc_port_from_log() {
                if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                    if port != self.rpc_port {
                        eprintln!(
                            "RPC port {} was taken; the node serves on {port}",
                            self.rpc_port
                        );
                        self.rpc_port = port;
                    }
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "node RPC not ready after {timeout:?}; log:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The IPv4 port of the last "Running JSON-RPC server: addr=127.0.0.1:<port>,..." line.
    fn rpc_port_from_log(&self) -> Option<u16> {
        const MARK: &str = "Running JSON-RPC server: addr=127.0.0.1:";
        let file = File::open(&self.log_path).ok()?;
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| {
                let rest = &line[line.find(MARK)? + MARK.len()..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .last()
    }

    /// The last `n` lines the node printed.
    pub fn log_tail(&self, n: usize) -> String {
        let lines: Vec<String> = File::open(&self.log_path)
            .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
            .unwrap_or_default();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kills the process (SIGKILL) and waits for it; the database stays for a restart.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Keeps the work directory (log, database) after drop.
    pub fn keep_files(&mut self) {
        if let Some(dir) = self.workdir.as_mut() {
            dir.keep();
        }
    }
}

impl Drop for ChainNode {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            self.keep_files();
            eprintln!(
                "---- chain node log (kept at {}) ----\n{}\n----",
                self.log_path.display(),
                self.log_tail(60)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The race `free_port` leaves open, forced: the first RPC port handed to the node is held
    /// by another socket; the node listens elsewhere and the harness must talk to that port.
    #[test]
    fn a_taken_rpc_port_is_followed_to_where_the_node_listens() {
        let holder = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let taken = holder.local_addr().unwrap().port();
        let mut first = Some(taken);
        let node = ChainNode::start_with_ports(NodeOptions::default(), || match first.take() {
            Some(port) => Ok(port),
            None => free_port(),
        })
        .unwrap();
        assert_ne!(node.rpc_port, taken);
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, node.rpc_port)).is_ok());
    }
}
