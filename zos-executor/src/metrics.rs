//! Prometheus metrics: deployments by state, reconcile latency, chain lag, reports sent/failed.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    pub deployments: Family<StateLabel, Gauge>,
    pub reconcile_seconds: Histogram,
    pub finalized_block: Gauge,
    /// Seconds between now and the timestamp of the last processed finalized block.
    pub chain_lag_seconds: Gauge,
    pub reports_sent: Family<KindLabel, Counter>,
    pub reports_failed: Family<KindLabel, Counter>,
    /// Guest crashes (including entrypoint exits) seen by the VM driver.
    pub vm_crashes: Counter,
    /// Reconcile passes refused because the chain view was older than one already acted on.
    pub stale_views: Counter,
    /// Finalized blocks skipped because the node had pruned their state.
    pub skipped_blocks: Counter,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("zos_executor");
        let deployments = Family::<StateLabel, Gauge>::default();
        registry.register(
            "deployments",
            "Contracts on this node by local state",
            deployments.clone(),
        );
        let reconcile_seconds = Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0]);
        registry.register(
            "reconcile_seconds",
            "Duration of a reconcile pass",
            reconcile_seconds.clone(),
        );
        let finalized_block = Gauge::default();
        registry.register(
            "finalized_block",
            "Last finalized block processed",
            finalized_block.clone(),
        );
        let chain_lag_seconds = Gauge::default();
        registry.register(
            "chain_lag_seconds",
            "Age of the last processed finalized block",
            chain_lag_seconds.clone(),
        );
        let reports_sent = Family::<KindLabel, Counter>::default();
        registry.register(
            "reports_sent",
            "Reports accepted on chain",
            reports_sent.clone(),
        );
        let reports_failed = Family::<KindLabel, Counter>::default();
        registry.register(
            "reports_failed",
            "Report submissions that failed",
            reports_failed.clone(),
        );
        let vm_crashes = Counter::default();
        registry.register(
            "vm_crashes",
            "Guest crashes restarted by the VM driver",
            vm_crashes.clone(),
        );
        let stale_views = Counter::default();
        registry.register(
            "stale_chain_views",
            "Reconcile passes refused: the chain endpoint was behind a block already acted on",
            stale_views.clone(),
        );
        let skipped_blocks = Counter::default();
        registry.register(
            "skipped_blocks",
            "Finalized blocks not backfilled because the node had pruned their state",
            skipped_blocks.clone(),
        );
        Arc::new(Self {
            registry,
            deployments,
            reconcile_seconds,
            finalized_block,
            chain_lag_seconds,
            reports_sent,
            reports_failed,
            vm_crashes,
            stale_views,
            skipped_blocks,
        })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub fn sent(&self, kind: &str) {
        self.reports_sent
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    pub fn failed(&self, kind: &str) {
        self.reports_failed
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }
}

/// Serves `/metrics` until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding metrics on {addr}"))?;
    tracing::info!(%addr, "metrics endpoint listening");
    axum::serve(listener, app).await.context("metrics server")
}
