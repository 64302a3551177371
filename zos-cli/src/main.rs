//! `zos`: the command line of the Zero-OS grid for deployers and farmers.

mod commands;
mod format;
mod keys;
mod multi_deploy;
mod network_cmd;
mod network_plan;
mod specfile;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "zos",
    version,
    about = "Deploy on and farm for the Zero-OS grid."
)]
pub struct Cli {
    /// Chain RPC endpoint.
    #[arg(
        long,
        global = true,
        env = "ZOS_URL",
        default_value = "ws://127.0.0.1:9944"
    )]
    pub url: String,
    /// Signing key: a dev name (//Alice), a mnemonic or secret URI, a 0x seed, or a key file
    /// (executor identity JSON, hex seed or mnemonic).
    #[arg(long, global = true, env = "ZOS_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for a transaction to be finalized.
    #[arg(long, global = true, default_value_t = 120)]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: Command,
}

/// Which VM of a contract a session goes to, and through which node address.
#[derive(clap::Args, Debug)]
pub struct SessionTarget {
    /// The VM (default: the contract's only VM on the node).
    #[arg(long)]
    pub workload: Option<String>,
    /// The node's access endpoint (default: http://<its public address>:9102).
    #[arg(long, value_name = "URL")]
    pub node_url: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Farms: create, add public IPs, list.
    #[command(subcommand)]
    Farm(FarmCmd),
    /// Nodes: list, show, public config.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Create a contract proposing a spec (TOML or JSON) to its signers.
    Deploy {
        spec: PathBuf,
        /// Node to deploy on.
        #[arg(long)]
        node: u32,
        #[command(flatten)]
        signers: SignerArgs,
        #[command(flatten)]
        image: ImageOverride,
    },
    /// Create contracts on several nodes in one transaction (all or none), optionally joined
    /// by a private network planned like `zos network plan` (see examples/multi-node.toml).
    DeployMulti {
        file: PathBuf,
        #[command(flatten)]
        signers: SignerArgs,
        #[command(flatten)]
        image: ImageOverride,
        /// Write the laptop's wg-quick config to DIR/laptop.conf (mode 0600), not to stdout.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Approve contracts' pending proposals; several go in one transaction (all or none).
    Approve {
        #[arg(required = true)]
        contracts: Vec<u64>,
        /// Hash of the proposal (default: the pending proposal's, read from the chain); only
        /// with a single contract.
        #[arg(long)]
        hash: Option<String>,
    },
    /// Reject (veto) a contract's pending proposal; needs a required signer.
    Reject {
        contract: u64,
        #[arg(long)]
        hash: Option<String>,
    },
    /// Propose the next version of an active contract's spec (the version is set for you).
    Update {
        contract: u64,
        spec: PathBuf,
        #[command(flatten)]
        image: ImageOverride,
    },
    /// Propose to end a contract (a never-activated one is withdrawn at once by its owner).
    Cancel { contract: u64 },
    /// Contracts: show, list.
    #[command(subcommand)]
    Contract(ContractCmd),
    /// Grid events (deployments, billing) of finalized blocks.
    Events {
        /// Only events about this contract.
        #[arg(long)]
        contract: Option<u64>,
        /// First block to show (default: the latest finalized one).
        #[arg(long)]
        from: Option<u64>,
        /// Keep following new finalized blocks until interrupted.
        #[arg(long)]
        follow: bool,
    },
    /// A VM's console (boot and entrypoint output), read from its node: --key must be one of
    /// the contract's signers.
    Logs {
        contract: u64,
        /// The VM (default: the contract's only VM on the node).
        #[arg(long)]
        workload: Option<String>,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        lines: Option<usize>,
        /// Keep printing what the console prints until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// The node's access endpoint (default: http://<its public address>:9102).
        #[arg(long, value_name = "URL")]
        node_url: Option<String>,
    },
    /// Runs a command inside a VM through its agent (as `ssh host cmd`): output as it comes,
    /// standard input forwarded, the command's exit code as zos's. --key must be one of the
    /// contract's signers.
    Exec {
        contract: u64,
        #[command(flatten)]
        target: SessionTarget,
        /// On a terminal (as `ssh -t`): for interactive programs.
        #[arg(long, short)]
        tty: bool,
        /// In the background: prints its pid and returns (its output goes to the console log).
        #[arg(long, short, conflicts_with = "tty")]
        detach: bool,
        /// The command and its arguments, after `--`.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// An interactive shell inside a VM on a terminal (`exit` ends it).
    Shell {
        contract: u64,
        #[command(flatten)]
        target: SessionTarget,
        /// The shell to run.
        #[arg(long, default_value = "/bin/sh")]
        shell: String,
    },
    /// The processes running inside a VM.
    Ps {
        contract: u64,
        #[command(flatten)]
        target: SessionTarget,
    },
    /// Sends a signal to a process inside a VM.
    Kill {
        contract: u64,
        pid: i32,
        /// Name (TERM, KILL, HUP, INT, ...) or number.
        #[arg(long, short, default_value = "TERM")]
        signal: String,
        #[command(flatten)]
        target: SessionTarget,
    },
    /// Transfer ZGT (decimal amount, e.g. 12.5) to an account (SS58 or dev name).
    Transfer { to: String, amount: String },
    /// Keys: show the account of --key, or create an executor identity file.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Check a spec file as the chain would; prints its hash and required resources.
    Check {
        spec: PathBuf,
        #[command(flatten)]
        image: ImageOverride,
    },
    /// Seal a WireGuard private key to a node, for a network spec's `private_key`.
    SealKey {
        /// The node the network runs on.
        #[arg(long)]
        node: u32,
        /// The WireGuard private key, 32 bytes hex (default: a new random key, printed).
        #[arg(long)]
        wg_key: Option<String>,
    },
    /// Seal a secret (read from standard input) as a VM's environment value: only the node
    /// opens it, and only for contracts of the owner, under this variable name.
    SealEnv {
        /// The node the VM runs on.
        #[arg(long)]
        node: u32,
        /// The contract's owner (default: the account of --key).
        #[arg(long)]
        owner: Option<String>,
        /// The environment variable's name.
        name: String,
    },
    /// Private networks across several nodes.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Run the zos-image tool (pack, serve, push, mount, ...) with these arguments.
    #[command(disable_help_flag = true)]
    Image {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Join the overlay network (`zos overlay up --key FILE --peer ADDR`): every node's and
    /// VM's key-derived 400::/7 address is then reachable from this machine. Runs zos-overlay.
    #[command(disable_help_flag = true)]
    Overlay {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum FarmCmd {
    /// Create a farm owned by --key.
    Create { name: String },
    /// Public IPv4 pool of a farm.
    #[command(subcommand)]
    Ip(FarmIpCmd),
    /// Every farm.
    List,
    /// As the farm's owner (--key), consent to a node account (SS58 address, printed by the
    /// executor at start) registering a node into the farm. A node joins a farm only this way.
    AuthorizeNode { farm: u32, account: String },
    /// Withdraw an authorization the node has not used yet.
    RevokeNode { farm: u32, account: String },
}

#[derive(Subcommand, Debug)]
pub enum FarmIpCmd {
    /// Add a public IPv4 (CIDR, e.g. 198.51.100.10/24) with its gateway to the farm's pool.
    Add {
        farm: u32,
        cidr: String,
        gateway: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Every node, or those of one farm.
    List {
        #[arg(long)]
        farm: Option<u32>,
    },
    /// One node: capacity, reservations, status, public config.
    Show { id: u32 },
    /// Remove node ID from the grid, signed by the node or its farm's owner (who so evicts
    /// it). A node without contracts goes at once; one with contracts takes no new ones and
    /// leaves, ending them, when the chain's notice period is over.
    Remove { id: u32 },
    /// Withdraw node ID's pending removal (asked with `node remove`) before it is due: the
    /// node takes new contracts again. Signed by the node or its farm's owner.
    Keep { id: u32 },
    /// Declare how node ID reaches the public network (signed by the farm's owner): its own
    /// IPv4 and gateway, the IPv6 subnet its VMs get addresses from and its gateway, a domain
    /// for gateways. --clear removes it. The declaration is replaced as a whole: what is not
    /// given is not declared.
    PublicConfig {
        id: u32,
        /// The node's own IPv4 (CIDR, e.g. 198.51.100.20/24); needs --gw4.
        #[arg(long)]
        ipv4: Option<String>,
        /// The IPv4 gateway (in the --ipv4 subnet); needs --ipv4.
        #[arg(long)]
        gw4: Option<String>,
        /// The node's IPv6 in the subnet its VMs get addresses from (CIDR, e.g.
        /// 2001:db8:1::2/64; a /64 or wider for VMs); needs --gw6.
        #[arg(long)]
        ipv6: Option<String>,
        /// The IPv6 gateway (link-local, e.g. fe80::1, or in the --ipv6 subnet); needs --ipv6.
        #[arg(long)]
        gw6: Option<String>,
        /// A DNS name the node serves gateway workloads under.
        #[arg(long)]
        domain: Option<String>,
        /// Remove the node's public config (no other option with it).
        #[arg(long)]
        clear: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ContractCmd {
    /// A contract: state, signers, spec, pending proposal, last report, billing.
    Show { id: u64 },
    /// Contracts of an owner (default: the account of --key; every contract without either).
    List {
        #[arg(long)]
        owner: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// Plan a WireGuard network from a plan file (see examples/network-plan.toml): prints each
    /// node's network workload for its deployment spec and a wg-quick config for your laptop.
    Plan {
        file: PathBuf,
        /// Write DIR/node-<id>.network.toml per node and DIR/laptop.conf (mode 0600) instead.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// The SS58 account of --key.
    Show,
    /// Create an executor identity file (account and box keys, mode 0600) unless it exists.
    New { path: PathBuf },
}

#[derive(clap::Args, Debug)]
pub struct SignerArgs {
    /// ACCOUNT:WEIGHT[:required], ACCOUNT an SS58 address or a dev name. Repeatable.
    /// Default: the account of --key alone, weight 1, required.
    #[arg(long = "signer", value_name = "ACC:WEIGHT[:required]")]
    pub signers: Vec<String>,
    /// Approving weight a proposal needs (default: the signers' total weight).
    #[arg(long)]
    pub threshold: Option<u32>,
}

#[derive(clap::Args, Debug, Default)]
pub struct ImageOverride {
    /// Replace the image root hash of every VM of the spec (e.g. the one `zos image pack` printed).
    #[arg(long, value_name = "HEX")]
    pub image_root: Option<String>,
    /// Replace the image source (hub URL) of every VM of the spec.
    #[arg(long, value_name = "URL")]
    pub image_source: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let json = cli.json;
    let code = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => match rt.block_on(commands::run(cli)) {
            Ok(code) => code,
            Err(e) => {
                report_error(&e, json);
                1
            }
        },
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn report_error(e: &anyhow::Error, json: bool) {
    use zos_client::chain::{ChainError, TxError};
    let chain = e
        .downcast_ref::<ChainError>()
        .or_else(|| match e.downcast_ref::<TxError>() {
            Some(TxError::Dispatch(c)) => Some(c),
            _ => None,
        });
    if json {
        let value = match chain {
            Some(c) => serde_json::json!({ "error": format!("{e:#}"), "chain_error": c }),
            None => serde_json::json!({ "error": format!("{e:#}") }),
        };
        println!("{value}");
    } else if let Some(c) = chain {
        eprintln!("error: the chain refused it: {c}");
    } else {
        eprintln!("error: {e:#}");
    }
}
