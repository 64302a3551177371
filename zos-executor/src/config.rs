//! Configuration: defaults, overridden by a TOML file, overridden by environment variables and
//! flags (clap reads both; flags win).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;
use serde::Deserialize;
use zos_primitives::{FarmId, Resources};

#[derive(Parser, Debug, Default)]
#[command(
    name = "zos-executor",
    version,
    about = "Runs the approved workloads of this grid node."
)]
pub struct Flags {
    /// TOML configuration file; its values are overridden by flags and environment.
    #[arg(long, env = "ZOS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Chain RPC endpoint (ws:// or wss://). Default ws://127.0.0.1:9944.
    #[arg(long, env = "ZOS_CHAIN_URL")]
    pub chain_url: Option<String>,
    /// Farm to register this node into.
    #[arg(long, env = "ZOS_FARM_ID")]
    pub farm_id: Option<FarmId>,
    /// Directory for the node's keys, state database and workload data. Default /var/lib/zos.
    #[arg(long, env = "ZOS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Key file. Default <data-dir>/identity.json.
    #[arg(long, env = "ZOS_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Seconds of consumption in one report window. Default 300.
    #[arg(
        long = "report-interval",
        env = "ZOS_REPORT_INTERVAL",
        value_name = "SECS"
    )]
    pub report_interval_secs: Option<u64>,
    /// Seconds between heartbeats. Default 60.
    #[arg(
        long = "heartbeat-interval",
        env = "ZOS_HEARTBEAT_INTERVAL",
        value_name = "SECS"
    )]
    pub heartbeat_interval_secs: Option<u64>,
    /// Prometheus endpoint address. Default 127.0.0.1:9101; "off" disables it.
    #[arg(long, env = "ZOS_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Address where the contracts' signers read their workloads' logs (requests signed with a
    /// signer's key). Default 0.0.0.0:9102; "off" disables it.
    #[arg(long, env = "ZOS_ACCESS_ADDR")]
    pub access_addr: Option<String>,
    /// Capacity to offer, overriding what is measured: "cru=4,mru_mib=8192,sru_gib=100,hru_gib=0".
    #[arg(long, env = "ZOS_CAPACITY")]
    pub capacity: Option<String>,
    /// What the node keeps for itself when the capacity is measured (the executor, the
    /// hypervisor's per-VM overhead, image and guest caches), same format as --capacity.
    /// Default: "cru=1,mru_mib=1024,sru_gib=20", plus 5 % of the memory. Ignored with
    /// --capacity, which is what is offered.
    #[arg(long, env = "ZOS_RESERVE")]
    pub reserve: Option<String>,
    /// Image sources specs may name, as prefixes (repeat, or comma-separate in the
    /// environment): `https://hub.example/`, or a directory store path on this node. Default:
    /// any http(s) hub and no local path.
    #[arg(
        long = "allow-image-source",
        env = "ZOS_ALLOW_IMAGE_SOURCE",
        value_delimiter = ','
    )]
    pub allow_image_source: Vec<String>,
    /// Do not run VM workloads on this node (they then fail with "no driver for vm workloads").
    #[arg(long, env = "ZOS_NO_VM")]
    pub no_vm: bool,
    /// The node OS release this executor runs in (core-0 passes it): the chain's node record
    /// then shows `<executor version>+<release>`, so farmers see which release each node runs.
    #[arg(long, env = "ZOS_OS_RELEASE")]
    pub os_release: Option<String>,
    /// Cache of the guest kernel and initramfs. Default $ZOS_GUEST_CACHE, else
    /// ${XDG_CACHE_HOME:-$HOME/.cache}/zos-grid/guest.
    #[arg(long, env = "ZOS_GUEST_CACHE")]
    pub guest_cache: Option<PathBuf>,
    /// The guest kernel this node boots VMs with, by the BLAKE3 of its tree (the executor logs
    /// it as `kernel_blake3` at start): any other kernel in the cache is refused. Without it
    /// the kernel is pinned to what the cache held when first used.
    #[arg(long, env = "ZOS_GUEST_KERNEL_BLAKE3")]
    pub guest_kernel_blake3: Option<String>,
    /// Seconds a guest gets to shut down cleanly (ACPI power button: its processes get
    /// SIGTERM, its disks are unmounted) before it is stopped hard. Default 10.
    #[arg(long = "vm-stop-grace", env = "ZOS_VM_STOP_GRACE")]
    pub vm_stop_grace_secs: Option<u64>,
    /// uids/gids (`FIRST-LAST`) given one per VM to its hypervisor, so that no guest's QEMU can
    /// signal or read another's. They must belong to no account. Default
    /// 1000000000-1000065535; `off` runs every QEMU as `nobody`.
    #[arg(long, env = "ZOS_VM_USERS")]
    pub vm_users: Option<String>,
    /// Where the host's executors record which VM holds which of those ids. Default
    /// /var/lib/zos-grid/vm-users.
    #[arg(long, env = "ZOS_VM_USER_REGISTRY")]
    pub vm_user_registry: Option<PathBuf>,
    /// Disk bandwidth and IOPS each VM may use on each disk holding its files (cgroup v2
    /// `io.max`, where the io controller is delegated): `rbps=N,wbps=N,riops=N,wiops=N`, any
    /// subset. Default: unlimited (disks differ too much for one default).
    #[arg(long, env = "ZOS_VM_IO_MAX")]
    pub vm_io_max: Option<String>,
    /// Do not serve private networks (network workloads and VM network cards then fail).
    #[arg(long, env = "ZOS_NO_NETWORK")]
    pub no_network: bool,
    /// 1-3 characters `[a-z0-9]` starting every interface and namespace name of this node, so
    /// that two nodes can share a host. Default "z".
    #[arg(long, env = "ZOS_NET_PREFIX")]
    pub net_prefix: Option<String>,
    /// The node's own network namespace (a path such as /run/netns/u1), where WireGuard's UDP
    /// sockets and the networks' bridges live. Default: the executor's namespace.
    #[arg(long, env = "ZOS_UNDERLAY_NETNS")]
    pub underlay_netns: Option<PathBuf>,
    /// Refuse networks that ask for outbound internet (their contracts fail with that reason).
    /// By default a network may let its VMs open connections out through the node.
    #[arg(long, env = "ZOS_NO_OUTBOUND_INTERNET")]
    pub no_outbound_internet: bool,
    /// The bridge (in the underlay) to the farm's public network: VMs with a public IP get a
    /// card on it. Without it, public IP workloads fail.
    #[arg(long, env = "ZOS_PUBLIC_BRIDGE")]
    pub public_bridge: Option<String>,
    /// The node's overlay identity (the key file `zos-overlay up --key` uses; created when
    /// missing): VMs that ask for it get an address in its /64. Without it, such VMs fail.
    #[arg(long, env = "ZOS_OVERLAY_KEY")]
    pub overlay_key: Option<PathBuf>,
    /// The namespace holding the overlay daemon's TUN (its `--tun-netns`). Default
    /// "zos-overlay".
    #[arg(long, env = "ZOS_OVERLAY_NETNS")]
    pub overlay_netns: Option<String>,
    /// An address where the node's overlay daemon listens, published on chain for deployers
    /// and peers to join through (`/ip4/198.51.100.1/tcp/9651`); repeat for more (at most 4).
    #[arg(long, env = "ZOS_OVERLAY_ADDRESSES", value_delimiter = ',')]
    pub overlay_address: Vec<String>,
    /// The overlay daemon's local hub (its `--hub-listen`, e.g. `http://127.0.0.1:7700`):
    /// VM images are asked there first, so they come from overlay peers that have them, then
    /// from the spec's source. Safe for any image: every object is checked against its hash.
    #[arg(long, env = "ZOS_OVERLAY_HUB")]
    pub overlay_hub: Option<String>,
    /// Serve gateway workloads: the HTTPS address of this node's web gateway (e.g.
    /// 0.0.0.0:443). Default: off (gateway workloads fail with "no driver").
    #[arg(long, env = "ZOS_GATEWAY_HTTPS_ADDR")]
    pub gateway_https_addr: Option<SocketAddr>,
    /// The gateway's plain HTTP address (ACME challenges, redirects to HTTPS). Default: the
    /// HTTPS address's IP, port 80.
    #[arg(long, env = "ZOS_GATEWAY_HTTP_ADDR")]
    pub gateway_http_addr: Option<SocketAddr>,
    /// The HTTPS port clients use (redirects name it), when a port forward or load balancer
    /// stands in front. Default: the port of the HTTPS address.
    #[arg(long, env = "ZOS_GATEWAY_PUBLIC_HTTPS_PORT")]
    pub gateway_public_https_port: Option<u16>,
    /// ACME directory the gateway orders its certificates from, e.g.
    /// https://acme-v02.api.letsencrypt.org/directory. Default: none (no certificates).
    #[arg(long, env = "ZOS_ACME_DIRECTORY")]
    pub acme_directory: Option<String>,
    /// PEM root of the ACME server's own HTTPS certificate, for a test CA.
    #[arg(long, env = "ZOS_ACME_ROOT")]
    pub acme_root: Option<PathBuf>,
    /// Contact for the ACME account, e.g. mailto:farmer@example.org.
    #[arg(long, env = "ZOS_ACME_CONTACT")]
    pub acme_contact: Option<String>,
    /// Name server (ip:port) for checking that deployers' domains point at this gateway.
    /// Default: the system's resolver.
    #[arg(long, env = "ZOS_GATEWAY_DNS")]
    pub gateway_dns: Option<SocketAddr>,
    /// Answer DNS for the node's gateway domain on this address (UDP and TCP, e.g.
    /// 0.0.0.0:53), once the farmer delegates the domain to the node (an NS record): every
    /// name in it resolves to the node's public addresses, and the names under it share one
    /// wildcard certificate proved over DNS-01. Default: off (a certificate per name, HTTP-01).
    #[arg(long, env = "ZOS_GATEWAY_ZONE_ADDR")]
    pub gateway_zone_addr: Option<SocketAddr>,
}

/// The TOML file's shape: every key optional, same names as the flags.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub chain_url: Option<String>,
    pub farm_id: Option<FarmId>,
    pub data_dir: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub report_interval_secs: Option<u64>,
    pub heartbeat_interval_secs: Option<u64>,
    pub metrics_addr: Option<String>,
    pub access_addr: Option<String>,
    pub capacity: Option<String>,
    pub reserve: Option<String>,
    pub allow_image_source: Option<Vec<String>>,
    pub no_vm: Option<bool>,
    pub guest_cache: Option<PathBuf>,
    pub guest_kernel_blake3: Option<String>,
    pub vm_stop_grace_secs: Option<u64>,
    pub vm_users: Option<String>,
    pub vm_user_registry: Option<PathBuf>,
    pub vm_io_max: Option<String>,
    pub no_network: Option<bool>,
    pub net_prefix: Option<String>,
    pub underlay_netns: Option<PathBuf>,
    pub no_outbound_internet: Option<bool>,
    pub public_bridge: Option<String>,
    pub overlay_key: Option<PathBuf>,
    pub overlay_netns: Option<String>,
    pub overlay_address: Option<Vec<String>>,
    pub overlay_hub: Option<String>,
    pub gateway_https_addr: Option<SocketAddr>,
    pub gateway_http_addr: Option<SocketAddr>,
    pub gateway_public_https_port: Option<u16>,
    pub acme_directory: Option<String>,
    pub acme_root: Option<PathBuf>,
    pub acme_contact: Option<String>,
    pub gateway_dns: Option<SocketAddr>,
    pub gateway_zone_addr: Option<SocketAddr>,
}

/// The web gateway of a gateway node.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub https_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The HTTPS port in redirects.
    pub public_https_port: u16,
    /// Where certificates are ordered; `None`: none are.
    pub acme_directory: Option<String>,
    pub acme_root: Option<PathBuf>,
    pub acme_contact: Option<String>,
    /// Name server for deployers' domains; `None`: the system's.
    pub dns: Option<SocketAddr>,
    /// Where the node answers DNS for its gateway domain; `None`: it does not.
    pub zone_addr: Option<SocketAddr>,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// What the node record's version says: the executor's, with the OS release if given.
    pub reported_version: String,
    pub chain_url: String,
    pub farm_id: Option<FarmId>,
    pub data_dir: PathBuf,
    pub key_file: PathBuf,
    pub report_interval: Duration,
    pub heartbeat_interval: Duration,
    pub metrics_addr: Option<SocketAddr>,
    /// Where deployers' signed requests (logs) are served; `None`: not served.
    pub access_addr: Option<SocketAddr>,
    /// `None`: measure the host and offer it minus `reserve`.
    pub capacity: Option<Resources>,
    /// Kept for the node itself out of a measured capacity; `None`: [`default_reserve`].
    pub reserve: Option<Resources>,
    /// Run VM workloads when the host can (QEMU and FUSE present).
    pub vm_enabled: bool,
    pub guest_cache: Option<PathBuf>,
    /// The guest kernel's pinned tree hash (hex BLAKE3); `None`: pinned on first use.
    pub guest_kernel_blake3: Option<String>,
    /// How long a guest gets to shut down cleanly before a hard stop.
    pub vm_stop_grace: Duration,
    /// Where each VM's own uid/gid comes from; `None`: every QEMU runs as `nobody`.
    pub vm_users: Option<zos_vm::UserRegistry>,
    /// Each VM's `io.max`; `None`: unlimited.
    pub vm_io_limit: Option<zos_vm::cgroup::IoLimit>,
    /// Image source prefixes specs may name; empty: any http(s) hub.
    pub allowed_image_sources: Vec<String>,
    /// The overlay daemon's local hub, asked for images before the spec's source.
    pub overlay_hub: Option<String>,
    /// Serve private networks when the host can (root, nftables, WireGuard).
    pub network_enabled: bool,
    pub net_prefix: zos_net::Prefix,
    pub underlay_netns: Option<PathBuf>,
    /// Networks may ask for outbound internet.
    pub allow_outbound_internet: bool,
    /// The bridge to the farm's public network.
    pub public_bridge: Option<String>,
    /// Serve gateway workloads with this gateway; `None`: this is not a gateway node.
    pub gateway: Option<GatewayConfig>,
    /// The node's overlay; `None`: VMs asking for an overlay address fail.
    pub overlay: Option<OverlayConfig>,
}

/// The node's place on the overlay network.
#[derive(Clone, Debug)]
pub struct OverlayConfig {
    pub key_file: PathBuf,
    /// The overlay daemon's TUN namespace.
    pub netns: PathBuf,
    /// Published on chain as the node's overlay addresses.
    pub addresses: Vec<String>,
}

impl Config {
    pub fn load(flags: Flags) -> Result<Self> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let data_dir = flags
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("/var/lib/zos"));
        let key_file = flags
            .key_file
            .or(file.key_file)
            .unwrap_or_else(|| data_dir.join("identity.json"));
        let report_interval_secs = flags
            .report_interval_secs
            .or(file.report_interval_secs)
            .unwrap_or(300);
        anyhow::ensure!(
            report_interval_secs >= 1,
            "report interval must be at least 1 second"
        );
        let heartbeat_secs = flags
            .heartbeat_interval_secs
            .or(file.heartbeat_interval_secs)
            .unwrap_or(60);
        anyhow::ensure!(
            heartbeat_secs >= 1,
            "heartbeat interval must be at least 1 second"
        );
        let metrics_addr = optional_addr(
            flags.metrics_addr.or(file.metrics_addr),
            "127.0.0.1:9101",
            "metrics",
        )?;
        let access_addr = optional_addr(
            flags.access_addr.or(file.access_addr),
            "0.0.0.0:9102",
            "access",
        )?;
        let capacity = flags
            .capacity
            .or(file.capacity)
            .map(|s| parse_capacity(&s))
            .transpose()?;
        let allowed_image_sources = if flags.allow_image_source.is_empty() {
            file.allow_image_source.unwrap_or_default()
        } else {
            flags.allow_image_source
        };
        for prefix in &allowed_image_sources {
            let url = prefix.starts_with("http://") || prefix.starts_with("https://");
            anyhow::ensure!(
                url || (prefix.starts_with('/') && prefix.len() > 1),
                "allowed image source {prefix:?} is neither an http(s) URL nor an absolute directory other than /"
            );
        }
        let overlay_hub = flags.overlay_hub.or(file.overlay_hub);
        if let Some(hub) = &overlay_hub {
            anyhow::ensure!(
                hub.starts_with("http://") || hub.starts_with("https://"),
                "overlay hub {hub:?} is not an http(s) URL"
            );
        }
        let gateway = match flags.gateway_https_addr.or(file.gateway_https_addr) {
            None => None,
            Some(https_addr) => Some(GatewayConfig {
                https_addr,
                http_addr: flags
                    .gateway_http_addr
                    .or(file.gateway_http_addr)
                    .unwrap_or(SocketAddr::new(https_addr.ip(), 80)),
                public_https_port: flags
                    .gateway_public_https_port
                    .or(file.gateway_public_https_port)
                    .unwrap_or(https_addr.port()),
                acme_directory: flags.acme_directory.or(file.acme_directory),
                acme_root: flags.acme_root.or(file.acme_root),
                acme_contact: flags.acme_contact.or(file.acme_contact),
                dns: flags.gateway_dns.or(file.gateway_dns),
                zone_addr: flags.gateway_zone_addr.or(file.gateway_zone_addr),
            }),
        };
        let reserve = flags
            .reserve
            .or(file.reserve)
            .map(|s| parse_capacity(&s))
            .transpose()?;
        Ok(Self {
            reported_version: reported_version(flags.os_release.as_deref())?,
            reserve,
            chain_url: flags
                .chain_url
                .or(file.chain_url)
                .unwrap_or_else(|| "ws://127.0.0.1:9944".into()),
            farm_id: flags.farm_id.or(file.farm_id),
            data_dir,
            key_file,
            report_interval: Duration::from_secs(report_interval_secs),
            heartbeat_interval: Duration::from_secs(heartbeat_secs),
            metrics_addr,
            access_addr,
            capacity,
            vm_enabled: !(flags.no_vm || file.no_vm.unwrap_or(false)),
            guest_cache: flags.guest_cache.or(file.guest_cache),
            guest_kernel_blake3: match flags.guest_kernel_blake3.or(file.guest_kernel_blake3) {
                Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    Some(h.to_ascii_lowercase())
                }
                Some(h) => anyhow::bail!("--guest-kernel-blake3 {h:?}: expected 64 hex digits"),
                None => None,
            },
            vm_stop_grace: Duration::from_secs(
                flags
                    .vm_stop_grace_secs
                    .or(file.vm_stop_grace_secs)
                    .unwrap_or(10)
                    .min(600),
            ),
            vm_io_limit: flags
                .vm_io_max
                .or(file.vm_io_max)
                .map(|s| zos_vm::cgroup::IoLimit::parse(&s))
                .transpose()
                .context("--vm-io-max")?,
            vm_users: match flags.vm_users.or(file.vm_users).as_deref() {
                Some("off") => None,
                range => Some(zos_vm::UserRegistry::new(
                    flags
                        .vm_user_registry
                        .or(file.vm_user_registry)
                        .unwrap_or_else(|| zos_vm::UserRegistry::DEFAULT_DIR.into()),
                    range
                        .map(zos_vm::IdRange::parse)
                        .transpose()
                        .context("--vm-users")?
                        .unwrap_or(zos_vm::IdRange::DEFAULT),
                )),
            },
            allowed_image_sources,
            overlay_hub,
            network_enabled: !(flags.no_network || file.no_network.unwrap_or(false)),
            net_prefix: zos_net::Prefix::new(
                flags
                    .net_prefix
                    .or(file.net_prefix)
                    .as_deref()
                    .unwrap_or("z"),
            )?,
            underlay_netns: flags.underlay_netns.or(file.underlay_netns),
            allow_outbound_internet: !(flags.no_outbound_internet
                || file.no_outbound_internet.unwrap_or(false)),
            public_bridge: flags.public_bridge.or(file.public_bridge),
            gateway,
            overlay: flags
                .overlay_key
                .or(file.overlay_key)
                .map(|key_file| OverlayConfig {
                    key_file,
                    netns: zos_net::netns::path_of(
                        flags
                            .overlay_netns
                            .or(file.overlay_netns)
                            .as_deref()
                            .unwrap_or("zos-overlay"),
                    ),
                    addresses: match flags.overlay_address.is_empty() {
                        true => file.overlay_address.unwrap_or_default(),
                        false => flags.overlay_address,
                    },
                }),
        })
    }
}

/// A listening address: `default` when not given, `None` when "off".
fn optional_addr(given: Option<String>, default: &str, what: &str) -> Result<Option<SocketAddr>> {
    match given.as_deref().unwrap_or(default) {
        "off" => Ok(None),
        addr => Ok(Some(
            addr.parse()
                .with_context(|| format!("{what} address {addr:?}"))?,
        )),
    }
}

/// "cru=4,mru_mib=8192,sru_gib=100,hru_gib=0" -> Resources (bytes).
pub fn parse_capacity(text: &str) -> Result<Resources> {
    use zos_primitives::{GIB, MIB};
    let mut r = Resources::zero();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .with_context(|| format!("capacity item {part:?} is not key=value"))?;
        let n: u64 = value
            .trim()
            .parse()
            .with_context(|| format!("capacity {key}: {value:?} is not a number"))?;
        let bytes = |unit: u64| {
            n.checked_mul(unit)
                .with_context(|| format!("capacity {key} overflows"))
        };
        match key.trim() {
            "cru" => r.cru = n,
            "mru_mib" => r.mru = bytes(MIB)?,
            "mru_gib" => r.mru = bytes(GIB)?,
            "sru_gib" => r.sru = bytes(GIB)?,
            "sru_mib" => r.sru = bytes(MIB)?,
            "hru_gib" => r.hru = bytes(GIB)?,
            other => anyhow::bail!(
                "unknown capacity key {other:?} (cru, mru_mib, mru_gib, sru_gib, sru_mib, hru_gib)"
            ),
        }
    }
    Ok(r)
}

/// What a node keeps for itself by default out of a measured host: one CPU for the executor,
/// the hypervisors' helper threads and the image mounts; 1 GiB plus 5 % of the memory for them
/// and the per-VM overhead (QEMU and virtiofsd, tens of MiB per guest); 20 GiB of the data
/// disk for image chunk caches, the guest kernel cache and the node's state.
pub fn default_reserve(host: &Resources) -> Resources {
    use zos_primitives::{GIB, MIB};
    Resources {
        cru: 1,
        mru: (1024 * MIB).saturating_add(host.mru / 20),
        sru: 20 * GIB,
        hru: 0,
    }
}

/// The capacity to offer: as configured, or the measured host minus the reserve (each
/// resource at least zero; a CPU is always offered).
pub fn offered_capacity(config: &Config) -> Result<Resources> {
    if let Some(capacity) = config.capacity {
        return Ok(capacity);
    }
    Ok(capacity_after_reserve(
        &measure_host(&config.data_dir, &capacity_roots(&config.data_dir))?,
        config.reserve,
    ))
}

/// `host` minus `reserve` (the default reserve when none is configured).
pub fn capacity_after_reserve(host: &Resources, reserve: Option<Resources>) -> Resources {
    let reserve = reserve.unwrap_or_else(|| default_reserve(host));
    Resources {
        cru: host.cru.saturating_sub(reserve.cru).max(1),
        mru: host.mru.saturating_sub(reserve.mru),
        sru: host.sru.saturating_sub(reserve.sru),
        hru: host.hru.saturating_sub(reserve.hru),
    }
}

/// What this host has: its CPUs, its memory, and the free space of the data directory and of
/// the capacity disks (each filesystem counted once).
pub fn measure_host(data_dir: &std::path::Path, capacity: &[PathBuf]) -> Result<Resources> {
    use std::os::unix::fs::MetadataExt;
    let cru = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    // SAFETY: sysconf has no preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let mru = (pages.max(0) as u64).saturating_mul(page.max(0) as u64);
    std::fs::create_dir_all(data_dir)?;
    let mut counted = Vec::new();
    let mut sru = 0u64;
    for dir in std::iter::once(data_dir).chain(capacity.iter().map(PathBuf::as_path)) {
        let device = std::fs::metadata(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .dev();
        if counted.contains(&device) {
            continue;
        }
        counted.push(device);
        sru = sru.saturating_add(free_bytes(dir)?);
    }
    Ok(Resources {
        cru,
        mru,
        sru,
        hru: 0,
    })
}

/// Bytes free for unprivileged writes on the filesystem of `path`, or of its nearest existing
/// ancestor (a directory not made yet).
pub fn free_bytes(path: &std::path::Path) -> Result<u64> {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .context("no existing ancestor")?;
    let c_path = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid C string and `st` a valid out pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs of {}", existing.display()));
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// The capacity disks core-0 mounted: the directories under `<data>/capacity` that are mount
/// points (another filesystem than their parent's), by name. An unmounted disk's empty mount
/// point is not capacity: whatever were put there would be hidden once the disk is back.
pub fn capacity_roots(data_dir: &std::path::Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let parent = data_dir.join("capacity");
    let (Ok(entries), Ok(parent_meta)) = (std::fs::read_dir(&parent), std::fs::metadata(&parent))
    else {
        return Vec::new();
    };
    let mut roots: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::symlink_metadata(e.path())
                .is_ok_and(|m| m.is_dir() && m.dev() != parent_meta.dev())
        })
        .map(|e| e.path())
        .collect();
    roots.sort();
    roots
}

/// The node record's version (at most 32 bytes on chain): `<executor>+<release>`, or the
/// release alone when both do not fit.
fn reported_version(os_release: Option<&str>) -> Result<String> {
    const MAX: usize = 32;
    let executor = env!("CARGO_PKG_VERSION");
    let Some(release) = os_release else {
        return Ok(executor.to_string());
    };
    if release.is_empty()
        || release.len() > MAX
        || !release
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
    {
        anyhow::bail!("--os-release {release:?}: expected up to {MAX} of [A-Za-z0-9._+-]");
    }
    let both = format!("{executor}+{release}");
    Ok(if both.len() <= MAX {
        both
    } else {
        release.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mounted_capacity_disks_count() {
        let data = tempfile::tempdir().unwrap();
        let capacity = data.path().join("capacity");
        // An empty mount point (a disk that did not mount) is not capacity.
        std::fs::create_dir_all(capacity.join("unmounted")).unwrap();
        assert!(capacity_roots(data.path()).is_empty());
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let mounted = capacity.join("disk");
        std::fs::create_dir_all(&mounted).unwrap();
        // A tmpfs limit, not memory: nothing is written to it.
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let target = c(mounted.to_str().unwrap());
        // SAFETY: mount(2) and umount2(2) with valid C strings.
        unsafe {
            assert_eq!(
                libc::mount(
                    c("tmpfs").as_ptr(),
                    target.as_ptr(),
                    c("tmpfs").as_ptr(),
                    0,
                    c("size=1g").as_ptr().cast()
                ),
                0
            );
        }
        assert_eq!(capacity_roots(data.path()), [mounted.clone()]);
        // Its free space is offered beside the data directory's.
        let alone = measure_host(data.path(), &[]).unwrap().sru;
        let with = measure_host(data.path(), &[mounted]).unwrap().sru;
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        assert!(with >= alone + (900 << 20), "{alone} -> {with}");
    }

    #[test]
    fn capacity_strings_parse_with_units() {
        let r = parse_capacity("cru=2, mru_mib=1024,sru_gib=3").unwrap();
        assert_eq!((r.cru, r.mru, r.sru, r.hru), (2, 1 << 30, 3 << 30, 0));
        assert!(parse_capacity("cpu=2").is_err());
        assert!(parse_capacity("sru_gib=99999999999999999").is_err());
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "chain_url = \"ws://127.0.0.1:1\"\nfarm_id = 3\nreport_interval_secs = 10\n",
        )
        .unwrap();
        let cfg = Config::load(Flags {
            config: Some(file),
            farm_id: Some(4),
            data_dir: Some(dir.path().into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.chain_url, "ws://127.0.0.1:1");
        assert_eq!(cfg.farm_id, Some(4));
        assert_eq!(cfg.report_interval, Duration::from_secs(10));
        assert_eq!(cfg.key_file, dir.path().join("identity.json"));
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "chain = 1\n").unwrap();
        assert!(Config::load(Flags {
            config: Some(file),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn the_node_keeps_a_reserve_out_of_the_host() {
        use zos_primitives::GIB;
        // A fixed host: the free disk space of a real one moves while other tests run.
        let host = Resources {
            cru: 8,
            mru: 32 * GIB,
            sru: 500 * GIB,
            hru: 0,
        };
        let offered = capacity_after_reserve(&host, None);
        assert_eq!(offered.cru, 7);
        assert_eq!(offered.mru, 32 * GIB - GIB - 32 * GIB / 20);
        assert_eq!(offered.sru, 480 * GIB);
        // A host smaller than the reserve offers nothing of it, but always one CPU.
        let tiny = Resources {
            cru: 1,
            mru: GIB / 2,
            sru: GIB,
            hru: 0,
        };
        assert_eq!(
            capacity_after_reserve(&tiny, None),
            Resources {
                cru: 1,
                mru: 0,
                sru: 0,
                hru: 0
            }
        );
        // A configured reserve replaces the default; an explicit capacity is offered as is.
        let none = parse_capacity("cru=0,mru_mib=0,sru_gib=0").unwrap();
        assert_eq!(capacity_after_reserve(&host, Some(none)), host);
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::load(Flags {
            data_dir: Some(dir.path().into()),
            ..Default::default()
        })
        .unwrap();
        assert!(offered_capacity(&cfg).unwrap().cru >= 1);
        cfg.capacity = Some(parse_capacity("cru=1,mru_mib=512").unwrap());
        assert_eq!(offered_capacity(&cfg).unwrap().mru, 512 << 20);
    }

    #[test]
    fn image_source_prefixes_are_urls_or_absolute_directories() {
        let dir = tempfile::tempdir().unwrap();
        let load = |prefixes: &[&str]| {
            Config::load(Flags {
                data_dir: Some(dir.path().into()),
                allow_image_source: prefixes.iter().map(|p| p.to_string()).collect(),
                ..Default::default()
            })
        };
        assert!(load(&["https://hub.example/", "/srv/hub"]).is_ok());
        for bad in ["", "/", "relative/hub", "ftp://hub"] {
            assert!(load(&[bad]).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn host_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        let r = measure_host(dir.path(), &[]).unwrap();
        assert!(r.cru >= 1 && r.mru > 0 && r.sru > 0);
    }

    #[test]
    fn the_reported_version_names_the_os_release_when_it_fits() {
        let executor = env!("CARGO_PKG_VERSION");
        assert_eq!(reported_version(None).unwrap(), executor);
        assert_eq!(
            reported_version(Some("1.0.1")).unwrap(),
            format!("{executor}+1.0.1")
        );
        let long = "4294967295.4294967295.4294967295";
        assert_eq!(reported_version(Some(long)).unwrap(), long);
        for bad in ["", "1.0 1", "1.0.1;rm", &"9".repeat(33)] {
            assert!(reported_version(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
