//! `zos-image` command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use zos_image::cache::ChunkCache;
use zos_image::fetch::Fetcher;
use zos_image::format::Kind;
use zos_image::image::{open_image, Trust};
use zos_image::mount::{mount, MountOptions};
use zos_image::pack::{pack_dir, PackOptions};
use zos_image::store::{open_store, DirStore, Store};
use zos_image::{hub, oci, overlay, sign, transfer, unpack, verify, Hash};

#[derive(Parser)]
#[command(
    name = "zos-image",
    version,
    about = "Signed, deduplicated, lazily fetched filesystem images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Sources {
    /// Store to read from: a directory or a hub URL. Repeat for fallbacks/replicas.
    #[arg(long = "store", required = true)]
    stores: Vec<String>,
    /// Require a valid signature by this public key (hex or .pub file). Repeatable.
    #[arg(long = "trust")]
    trust: Vec<String>,
}

impl Sources {
    fn open(&self) -> anyhow::Result<(Vec<Arc<dyn Store>>, Trust)> {
        let stores = self
            .stores
            .iter()
            .map(|s| open_store(s, None))
            .collect::<Result<Vec<_>, _>>()?;
        let keys = self
            .trust
            .iter()
            .map(|k| sign::load_verifying_key(k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((stores, Trust { keys }))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Generate an ed25519 key pair: <out> (secret seed, hex) and <out>.pub.
    Keygen { out: PathBuf },
    /// Pack a directory, or a docker-save / OCI image (tarball or layout dir), into a store.
    /// Prints the image root.
    Pack {
        source: PathBuf,
        /// Destination directory store.
        #[arg(long)]
        store: PathBuf,
        /// Secret key file to sign the root with.
        #[arg(long)]
        sign: Option<PathBuf>,
        /// Treat the source as a container image even if it is a directory (OCI layout).
        #[arg(long)]
        oci: bool,
        /// Worker threads (0 = all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Show an image: counts, sizes, dedup ratio; optionally the whole tree.
    Inspect {
        root: Hash,
        #[command(flatten)]
        sources: Sources,
        #[arg(long)]
        tree: bool,
    },
    /// Check the signature and every chunk of an image.
    Verify {
        root: Hash,
        #[command(flatten)]
        sources: Sources,
    },
    /// Delete from a directory store every object the given images do not need (objects
    /// younger than the grace period stay: a pack running beside it keeps its chunks).
    Gc {
        /// Directory store.
        #[arg(long)]
        store: PathBuf,
        /// Root of an image to keep (repeatable; at least one).
        #[arg(long = "keep", required = true)]
        keep: Vec<Hash>,
        /// Seconds an unreferenced object must be old before it is deleted.
        #[arg(long, default_value_t = 3600)]
        grace_secs: u64,
    },
    /// Write an image out as a directory tree with all metadata.
    Unpack {
        root: Hash,
        target: PathBuf,
        #[command(flatten)]
        sources: Sources,
    },
    /// Mount an image read-only (or writable with --writable) until interrupted.
    Mount {
        root: Hash,
        mountpoint: PathBuf,
        #[command(flatten)]
        sources: Sources,
        /// Local chunk cache directory.
        #[arg(long)]
        cache: PathBuf,
        /// Cache size bound, e.g. 2G, 512M.
        #[arg(long, default_value = "4G", value_parser = parse_size)]
        cache_size: u64,
        /// Make the mount writable: overlayfs with upper/work dirs kept under this directory.
        #[arg(long)]
        writable: Option<PathBuf>,
        /// Record the chunks read, in order, to this file on unmount (a prefetch list).
        #[arg(long)]
        record_trace: Option<PathBuf>,
        /// Fetch the chunks listed in this file in the background right after mounting.
        #[arg(long)]
        prefetch: Option<PathBuf>,
        /// FUSE worker threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Chunks fetched ahead of a sequential reader (0 turns readahead off).
        #[arg(long, default_value_t = MountOptions::default().readahead_chunks)]
        readahead_chunks: u32,
        /// Threads fetching readahead and prefetch chunks in the background.
        #[arg(long, default_value_t = MountOptions::default().prefetch_workers)]
        prefetch_workers: usize,
        /// Let every user of this machine read the mount (by default only the mounting user
        /// can). Device nodes and setuid bits stay inert either way (nodev, nosuid).
        #[arg(long)]
        allow_other: bool,
    },
    /// Upload an image (index, signature, missing chunks) to a hub.
    Push {
        root: Hash,
        /// Store to read from.
        #[arg(long)]
        from: String,
        /// Hub URL.
        #[arg(long)]
        to: String,
        /// File holding the hub's upload token (or set ZOS_HUB_TOKEN).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Download an image with all its chunks into a local directory store.
    Pull {
        root: Hash,
        #[command(flatten)]
        sources: Sources,
        /// Destination directory store.
        #[arg(long)]
        to: PathBuf,
    },
    /// Serve a directory store over HTTP (GET public, PUT with bearer token).
    Serve {
        #[arg(long)]
        store: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8420")]
        listen: std::net::SocketAddr,
        /// File holding the upload token (or set ZOS_HUB_TOKEN).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        Some('T' | 't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("not a size: {s:?} (examples: 4096, 512M, 2G)"))
}

fn read_token(file: &Option<PathBuf>) -> anyhow::Result<String> {
    let token = match file {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => std::env::var("ZOS_HUB_TOKEN")
            .context("no --token-file given and ZOS_HUB_TOKEN is not set")?,
    };
    let token = token.trim().to_string();
    if token.len() < 16 {
        bail!("the hub token must be at least 16 characters");
    }
    Ok(token)
}

fn progress_enabled() -> bool {
    std::io::stderr().is_terminal()
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ZOS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { out } => {
            let key = sign::generate()?;
            let pub_path = PathBuf::from(format!("{}.pub", out.display()));
            write_secret(&out, &hex::encode(key.to_bytes()))?;
            std::fs::write(
                &pub_path,
                format!("{}\n", hex::encode(key.verifying_key().as_bytes())),
            )?;
            eprintln!(
                "secret key: {}\npublic key: {}",
                out.display(),
                pub_path.display()
            );
        }
        Command::Pack {
            source,
            store,
            sign: key,
            oci: force_oci,
            threads,
        } => {
            let signer = key.map(|k| sign::load_signing_key(&k)).transpose()?;
            let store: Arc<dyn Store> = Arc::new(DirStore::open(&store)?);
            let opts = PackOptions {
                threads,
                show_progress: progress_enabled(),
            };
            let started = std::time::Instant::now();
            let result = if force_oci || source.is_file() {
                let scratch = tempdir_near(&source)?;
                let rootfs = scratch.join("rootfs");
                let r = oci::build_rootfs(&source, &rootfs, &scratch)
                    .and_then(|_| pack_dir(&rootfs, store, signer.as_ref(), &opts));
                let _ = std::fs::remove_dir_all(&scratch);
                r?
            } else {
                pack_dir(&source, store, signer.as_ref(), &opts)?
            };
            let s = &result.stats;
            eprintln!(
                "packed {} inodes, {} of file data in {} chunk refs ({} unique chunks, {} newly stored) in {:.2?}; index {}",
                s.inodes,
                human(s.file_bytes),
                s.chunk_refs,
                s.unique_chunks,
                human(result.new_bytes),
                started.elapsed(),
                human(result.index_len)
            );
            println!("{}", result.root);
        }
        Command::Inspect {
            root,
            sources,
            tree,
        } => {
            let (stores, trust) = sources.open()?;
            let image = open_image(&stores, &root, &trust)?;
            inspect(&image, tree)?;
        }
        Command::Verify { root, sources } => {
            let (stores, trust) = sources.open()?;
            let report = verify::verify_image(&stores, &root, &trust, progress_enabled())?;
            println!(
                "ok: {} chunks, {} verified{}",
                report.chunks,
                human(report.bytes),
                if report.signed {
                    ", signed"
                } else {
                    ", unsigned"
                }
            );
        }
        Command::Gc {
            store,
            keep,
            grace_secs,
        } => {
            let store = zos_image::store::DirStore::open(&store)?;
            let r = zos_image::gc::collect(&store, &keep, Duration::from_secs(grace_secs))?;
            println!(
                "kept {} images ({} chunks); removed {} images and {} chunks ({}); {} recent objects spared",
                r.images_kept,
                r.chunks_kept,
                r.images_removed,
                r.chunks_removed,
                human(r.bytes_removed),
                r.recent_spared
            );
        }
        Command::Unpack {
            root,
            target,
            sources,
        } => {
            let (stores, trust) = sources.open()?;
            let image = open_image(&stores, &root, &trust)?;
            let fetcher = Fetcher::new(stores, None);
            let report = unpack::unpack(&image.index, &fetcher, &target, progress_enabled())?;
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            eprintln!("unpacked {} files, {}", report.files, human(report.bytes));
        }
        Command::Mount {
            root,
            mountpoint,
            sources,
            cache,
            cache_size,
            writable,
            record_trace,
            prefetch,
            threads,
            readahead_chunks,
            prefetch_workers,
            allow_other,
        } => {
            let (stores, trust) = sources.open()?;
            let image = open_image(&stores, &root, &trust)?;
            let (cache, scan) = ChunkCache::open(&cache, cache_size)?;
            if scan.removed_temp_files + scan.removed_invalid > 0 {
                eprintln!(
                    "cache: removed {} interrupted writes and {} invalid entries",
                    scan.removed_temp_files, scan.removed_invalid
                );
            }
            let prefetch = match prefetch {
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| l.trim().parse::<Hash>())
                    .collect::<Result<Vec<_>, _>>()?,
                None => Vec::new(),
            };
            let fetcher = Arc::new(Fetcher::new(stores, Some(cache)));
            let opts = MountOptions {
                threads,
                readahead_chunks,
                prefetch_workers,
                record_trace,
                prefetch,
                allow_other,
            };
            let dirs = writable
                .as_deref()
                .map(overlay::OverlayDirs::under)
                .transpose()?;
            let fuse_point = dirs
                .as_ref()
                .map_or(mountpoint.clone(), |d| d.lower.clone());
            let handle = mount(image.index, fetcher, &fuse_point, &opts)?;
            if let Some(d) = &dirs {
                if let Err(e) = overlay::mount_overlay(d, &mountpoint) {
                    drop(handle);
                    return Err(e.into());
                }
            }
            eprintln!(
                "mounted {root} at {}; interrupt to unmount",
                mountpoint.display()
            );
            let mut signals = signal_hook::iterator::Signals::new([
                signal_hook::consts::SIGINT,
                signal_hook::consts::SIGTERM,
            ])?;
            signals.forever().next();
            if dirs.is_some() {
                overlay::unmount(&mountpoint)?;
            }
            let stats = &handle.fetcher().stats;
            let load =
                |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            eprintln!(
                "fetched {} chunks ({} bytes), {} disk cache hits, {} rejected",
                load(&stats.fetched_chunks),
                load(&stats.fetched_bytes),
                load(&stats.cache_hits),
                load(&stats.rejected)
            );
            let served = handle.stats();
            eprintln!(
                "answered {} reads ({} waited for a chunk), stored {} small files into the page cache ahead of their reads",
                load(&served.reads),
                load(&served.waited),
                load(&served.pushed_files)
            );
            handle.unmount()?;
        }
        Command::Push {
            root,
            from,
            to,
            token_file,
        } => {
            let token = read_token(&token_file)?;
            let src = open_store(&from, None)?;
            let dest = open_store(&to, Some(token))?;
            let report = transfer::copy_image(
                &[src],
                dest.as_ref(),
                &root,
                &Trust::default(),
                progress_enabled(),
            )?;
            eprintln!(
                "pushed {root}: {} of {} chunks uploaded ({})",
                report.copied_chunks,
                report.chunks,
                human(report.copied_bytes)
            );
        }
        Command::Pull { root, sources, to } => {
            let (stores, trust) = sources.open()?;
            let dest = DirStore::open(&to)?;
            let report = transfer::copy_image(&stores, &dest, &root, &trust, progress_enabled())?;
            eprintln!(
                "pulled {root}: {} of {} chunks downloaded ({})",
                report.copied_chunks,
                report.chunks,
                human(report.copied_bytes)
            );
        }
        Command::Serve {
            store,
            listen,
            token_file,
        } => {
            let token = read_token(&token_file)?;
            let store = DirStore::open(&store)?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                eprintln!(
                    "serving {} on http://{}",
                    store.root().display(),
                    listener.local_addr()?
                );
                hub::serve(listener, store, token).await
            })?;
        }
    }
    Ok(())
}

fn write_secret(path: &Path, hex_seed: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (refusing to overwrite a key)", path.display()))?;
    writeln!(f, "{hex_seed}")?;
    Ok(())
}

/// Scratch space for container import, next to the input so large layers stay on that disk.
fn tempdir_near(input: &Path) -> anyhow::Result<PathBuf> {
    let base = input
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = base.join(format!(".zos-image-import.{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn inspect(image: &zos_image::image::Image, tree: bool) -> anyhow::Result<()> {
    let index = &image.index;
    let mut kinds = std::collections::BTreeMap::<&str, u64>::new();
    let mut file_bytes = 0u64;
    let mut refs_bytes = 0u64;
    for ino in 0..index.inode_count() {
        let inode = index.inode(ino)?;
        *kinds.entry(kind_name(inode.kind)).or_default() += 1;
        if inode.kind == Kind::File {
            file_bytes += inode.size;
        }
    }
    let mut unique = 0u64;
    for i in 0..index.chunk_count() {
        unique += u64::from(index.chunk(i)?.raw_len);
    }
    refs_bytes += file_bytes;
    println!("root:        {}", image.root);
    println!(
        "signed:      {}",
        image.signature.as_deref().map_or("no".to_string(), |s| {
            match sign::verify(&image.root, s) {
                Ok(k) => format!("yes, by {}", hex::encode(k.as_bytes())),
                Err(e) => format!("INVALID ({e})"),
            }
        })
    );
    println!("index:       {}", human(index.as_bytes().len() as u64));
    for (k, n) in &kinds {
        println!("{:<12} {n}", format!("{k}:"));
    }
    println!("file bytes:  {}", human(refs_bytes));
    println!(
        "chunks:      {} unique, {} plaintext",
        index.chunk_count(),
        human(unique)
    );
    if unique > 0 {
        println!(
            "dedup ratio: {:.2}x (file bytes / unique chunk bytes)",
            refs_bytes as f64 / unique as f64
        );
    }
    if tree {
        print_tree(index, 0, &mut Vec::new())?;
    }
    Ok(())
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Dir => "dirs",
        Kind::File => "files",
        Kind::Symlink => "symlinks",
        Kind::CharDev => "char devs",
        Kind::BlockDev => "block devs",
        Kind::Fifo => "fifos",
        Kind::Socket => "sockets",
    }
}

fn print_tree(index: &zos_image::Index, dir: u32, path: &mut Vec<u8>) -> anyhow::Result<()> {
    let inode = index.inode(dir)?;
    for entry in index.dir_entries(&inode)? {
        let (name, child) = entry?;
        let len = path.len();
        path.push(b'/');
        path.extend_from_slice(name);
        let c = index.inode(child)?;
        let extra = match c.kind {
            Kind::Symlink => format!(" -> {}", String::from_utf8_lossy(index.symlink_target(&c)?)),
            _ => String::new(),
        };
        println!(
            "{:>12} {:o} {}:{} {}{}",
            c.size,
            c.meta.perm,
            c.meta.uid,
            c.meta.gid,
            String::from_utf8_lossy(path),
            extra
        );
        if c.kind == Kind::Dir {
            print_tree(index, child, path)?;
        }
        path.truncate(len);
    }
    Ok(())
}
