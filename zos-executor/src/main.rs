use std::sync::Arc;

use anyhow::Result;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;
use zos_executor::{
    config::{Config, Flags},
    service::Executor,
};

#[tokio::main]
async fn main() -> Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // netlink-packet-route warns on every link dump of a kernel newer than itself (extra
    // IPv6 attributes it skips safely): not worth an operator's attention.
    let filter = filter.add_directive("netlink_packet_route=error".parse()?);
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let config = Config::load(Flags::parse())?;
    let executor = Arc::new(Executor::start(config, Vec::new()).await?);
    // Service managers stop daemons with SIGTERM, a terminal with SIGINT: both stop cleanly
    // (workloads, mounts and guests go down with the runtime).
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
