use std::sync::Arc;

use anyhow::Result;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;
use zos_executor::{
    config::{Config, Flags},
    service::Executor,
    shim,
};

#[tokio::main]
async fn main() -> Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // netlink-packet-route warns on every link dump of a kernel newer than itself (extra
    // IPv6 attributes it skips safely): not worth an operator's attention.
    let filter = filter.add_directive("netlink_packet_route=error".parse()?);
    // `zos-executor vm-shim <dir>`: this binary as the per-VM shim (started by the VM driver).
    // Its standard output carries the startup line alone; its log goes to standard error.
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(std::ffi::OsStr::new(shim::SHIM_ARG)) {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
        let dir = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("usage: zos-executor vm-shim <vm dir>"))?;
        return shim::server::run(dir.into()).await;
    }
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let config = Config::load(Flags::parse())?;
    let executor = Arc::new(Executor::start(config, Vec::new()).await?);
    // Service managers stop daemons with SIGTERM, a terminal with SIGINT: both stop cleanly.
    // Guests keep running in their shims and are adopted by the next executor.
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        r = executor.run() => r,
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; stopping");
            Ok(())
        }
        _ = terminate.recv() => {
            tracing::info!("terminated; stopping");
            Ok(())
        }
    }
}
