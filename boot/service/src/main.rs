//! `zos-boot`: publish signed node OS releases and serve them to booting nodes.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use zos_boot::{publish::ReleaseInput, BootConfig};
use zos_release::{Runmode, Service, Version};

#[derive(Parser)]
#[command(
    name = "zos-boot",
    about = "Node OS releases and the boot service (keys: `zos-image keygen`)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sign and publish a release as a runmode's current one under a boot directory.
    Publish {
        /// The boot directory (as served by `zos-boot serve --dir`).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        runmode: Runmode,
        #[arg(long)]
        version: Version,
        /// Root hash of the OS payload image (zos-image). Default: the one boot/build.sh packed
        /// into the directory (`<dir>/os-root`).
        #[arg(long)]
        image_root: Option<String>,
        /// NAME=FILE, hashed into the manifest (repeatable); defaults to the directory's
        /// `kernel` and `initramfs`.
        #[arg(long = "artifact", value_parser = parse_pair)]
        artifacts: Vec<(String, String)>,
        /// NAME=PROGRAM ARG... started and kept running by core-0, in order (repeatable).
        #[arg(long = "service", value_parser = parse_pair)]
        services: Vec<(String, String)>,
        /// The release secret key (from `zos-image keygen`).
        #[arg(long)]
        key: PathBuf,
    },
    /// Serve a boot directory: iPXE scripts, kernel, initramfs, release manifests.
    Serve {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8088")]
        listen: SocketAddr,
        /// This service's URL as nodes reach it (default: http://<listen>).
        #[arg(long)]
        public_url: Option<String>,
        /// Chain RPC endpoint for the nodes.
        #[arg(long)]
        chain: String,
        /// Image hub for the nodes (default: this service's own `/hub`, which serves the
        /// directory's OS store).
        #[arg(long)]
        hub: Option<String>,
        /// Extra kernel arguments in the iPXE scripts.
        #[arg(long, default_value = "console=ttyS0")]
        kernel_args: String,
    },
    /// Remove old releases from a boot directory and the OS image objects only they need:
    /// each runmode keeps its current release and its newest ones.
    Prune {
        #[arg(long)]
        dir: PathBuf,
        /// Published releases kept per runmode (besides the current one).
        #[arg(long, default_value_t = 3)]
        keep: usize,
        /// RUNMODE=VERSION kept whatever its age (repeatable): the releases the chain set
        /// (`releases.nodeReleases`), which nodes fetch by version.
        #[arg(long = "keep-version", value_parser = parse_pair)]
        keep_versions: Vec<(String, String)>,
        /// Seconds an unreferenced store object must be old before it is deleted (a build may
        /// be packing into the store).
        #[arg(long, default_value_t = 3600)]
        grace_secs: u64,
    },
    /// Print the iPXE script a farm's nodes boot with (for a boot image or a DHCP server).
    Ipxe {
        #[arg(long)]
        runmode: Runmode,
        #[arg(long)]
        farm: u32,
        #[arg(long)]
        public_url: String,
        #[arg(long)]
        chain: String,
        #[arg(long)]
        hub: String,
        #[arg(long, default_value = "console=ttyS0")]
        kernel_args: String,
    },
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Publish {
            dir,
            runmode,
            version,
            image_root,
            artifacts,
            services,
            key,
        } => {
            let key = zos_image::sign::load_signing_key(&key).context("loading the release key")?;
            let image_root = match image_root {
                Some(root) => root,
                None => std::fs::read_to_string(dir.join(zos_boot::serve::OS_ROOT_FILE))
                    .with_context(|| {
                        format!(
                            "no --image-root and no {} in {} (run boot/build.sh)",
                            zos_boot::serve::OS_ROOT_FILE,
                            dir.display()
                        )
                    })?
                    .trim()
                    .to_string(),
            };
            let artifacts = if artifacts.is_empty() {
                ["kernel", "initramfs"]
                    .iter()
                    .map(|n| (n.to_string(), dir.join(n)))
                    .collect()
            } else {
                artifacts
                    .into_iter()
                    .map(|(n, p)| (n, PathBuf::from(p)))
                    .collect()
            };
            let services = services
                .into_iter()
                .map(|(name, cmd)| Service {
                    name,
                    exec: cmd.split_whitespace().map(String::from).collect(),
                })
                .collect();
            let input = ReleaseInput {
                runmode,
                version,
                image_root,
                artifacts,
                services,
            };
            let m = zos_boot::publish(&dir, &input, &key)?;
            println!(
                "published {} release {} ({} artefacts, {} services)",
                m.runmode,
                m.version,
                m.artifacts.len(),
                m.services.len()
            );
        }
        Command::Prune {
            dir,
            keep,
            keep_versions,
            grace_secs,
        } => {
            let also = keep_versions
                .iter()
                .map(|(r, v)| -> Result<(Runmode, Version)> {
                    Ok((
                        r.parse().context("--keep-version")?,
                        v.parse().context("--keep-version")?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            let grace = std::time::Duration::from_secs(grace_secs);
            let r = zos_boot::prune::prune(&dir, keep, &also, grace)?;
            let list = |l: &[(Runmode, Version)]| {
                l.iter()
                    .map(|(r, v)| format!("{} {v}", r.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!(
                "kept releases: {}; removed: {}; OS store: removed {} images, {} chunks ({} bytes), kept {} chunks, {} recent objects spared",
                list(&r.releases_kept),
                list(&r.releases_removed),
                r.store.images_removed,
                r.store.chunks_removed,
                r.store.bytes_removed,
                r.store.chunks_kept,
                r.store.recent_spared
            );
        }
        Command::Serve {
            dir,
            listen,
            public_url,
            chain,
            hub,
            kernel_args,
        } => {
            let public_url = public_url.unwrap_or_else(|| format!("http://{listen}"));
            let hub = hub.unwrap_or_else(|| format!("{}/hub", public_url.trim_end_matches('/')));
            let cfg = BootConfig {
                dir,
                public_url,
                chain,
                hub,
                kernel_args,
                hub_bytes_served: Default::default(),
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                eprintln!("boot service on http://{}", listener.local_addr()?);
                axum::serve(listener, zos_boot::router(cfg))
                    .await
                    .context("boot service stopped")
            })?;
        }
        Command::Ipxe {
            runmode,
            farm,
            public_url,
            chain,
            hub,
            kernel_args,
        } => {
            print!(
                "{}",
                zos_boot::ipxe_script(
                    &BootConfig {
                        dir: PathBuf::new(),
                        public_url,
                        chain,
                        hub,
                        kernel_args,
                        hub_bytes_served: Default::default(),
                    },
                    runmode,
                    farm
                )
            );
        }
    }
    Ok(())
}
