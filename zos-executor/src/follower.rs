//! Follows FINALIZED blocks only. The last processed block is stored durably; after a restart
//! or a reconnect every block since is processed (backfill), so no event is missed. Events only
//! wake the reconciler early: it reads the desired state itself. When the node no longer has
//! the state of the blocks to backfill (pruned while the executor was down), the follower
//! skips to the finalized head and the reconciler resyncs in full, instead of failing forever.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::{
    chain::Chain,
    metrics::Metrics,
    store::{Cursor, Store},
};

/// Pallets whose events can change what this node must run.
const WAKING_PALLETS: [&str; 3] = ["Deployments", "Billing", "Grid"];

pub async fn run(chain: Arc<Chain>, store: Arc<Store>, wake: Arc<Notify>, metrics: Arc<Metrics>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match follow(&chain, &store, &wake, &metrics).await {
            Ok(()) => warn!("finalized block stream ended; resubscribing"),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "following finalized blocks failed; retrying")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(15));
    }
}

async fn follow(chain: &Chain, store: &Store, wake: &Notify, metrics: &Metrics) -> Result<()> {
    let mut blocks = chain
        .api
        .stream_blocks()
        .await
        .context("subscribing to finalized blocks")?;
    while let Some(block) = blocks.next().await {
        let block = block?;
        let head = block.number();
        let first = match store.cursor()? {
            Some(c) if c.number >= head => continue,
            Some(c) => c.number + 1,
            // First start: nothing before now matters (the reconciler reads current state).
            None => head,
        };
        if head > first {
            info!(from = first, to = head, "backfilling finalized blocks");
        }
        for number in first..=head {
            if let Err(e) = process_block(chain, store, wake, metrics, number).await {
                // The node may have pruned the state of blocks older than its window (this
                // executor was down for long): if the head is readable, skip to it. Nothing is
                // lost: events only wake the reconciler, which reads the current state in full.
                if number < head
                    && process_block(chain, store, wake, metrics, head)
                        .await
                        .is_ok()
                {
                    warn!(
                        from = number,
                        to = head,
                        error = %format!("{e:#}"),
                        "older blocks' state is not available on the node (pruned?): skipped to the finalized head, full resync"
                    );
                    metrics.skipped_blocks.inc_by(head - number);
                    wake.notify_one();
                    break;
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

async fn process_block(
    chain: &Chain,
    store: &Store,
    wake: &Notify,
    metrics: &Metrics,
    number: u64,
) -> Result<()> {
    let at = chain
        .api
        .at_block(number)
        .await
        .with_context(|| format!("block {number}"))?;
    let events = at
        .events()
        .fetch()
        .await
        .with_context(|| format!("events of block {number}"))?;
    let mut relevant = 0usize;
    for event in events.iter() {
        let event = event?;
        if WAKING_PALLETS.contains(&event.pallet_name()) {
            debug!(block = number, event = %format!("{}.{}", event.pallet_name(), event.event_name()), "chain event");
            relevant += 1;
        }
    }
    if relevant > 0 {
        wake.notify_one();
    }
    let hash = at.block_hash();
    store.set_cursor(Cursor {
        number,
        hash: hash.0,
    })?;
    metrics.finalized_block.set(number as i64);
    if let Ok(value) = at
        .storage()
        .fetch(crate::chain::runtime::storage().timestamp().now(), ())
        .await
    {
        if let Ok(now_ms) = value.decode() {
            metrics
                .chain_lag_seconds
                .set((unix_ms().saturating_sub(now_ms) / 1000) as i64);
        }
    }
    Ok(())
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
