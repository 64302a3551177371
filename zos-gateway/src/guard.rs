//! What keeps one client from holding the gateway: a cap on connections per client address,
//! an idle timeout on every connection (before the first request, between requests, and for
//! passthrough and upgraded streams alike), and the end of a connection whose route is gone.

use std::{
    collections::HashMap,
    future::Future,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// How a guarded connection ended, when it did not end by itself.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    /// No byte either way for the idle timeout.
    Idle,
    /// Its route was removed or changed.
    RouteRetired,
}

/// Client connections per client address. IPv6 clients are counted per /64, the block one
/// subscriber usually holds whole.
pub(crate) struct ClientLimiter {
    max_per_client: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// A client's place under its cap, given back when dropped.
pub(crate) struct ClientSlot {
    limiter: Arc<ClientLimiter>,
    key: IpAddr,
}

impl ClientLimiter {
    pub fn new(max_per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            max_per_client,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection of `client`, or `None` at its cap.
    pub fn try_acquire(self: &Arc<Self>, client: IpAddr) -> Option<ClientSlot> {
        let key = client_key(client);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= self.max_per_client {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            limiter: self.clone(),
            key,
        })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.open.lock().unwrap().len()
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// When a connection last moved a byte, touched by its client-side stream.
pub(crate) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    pub fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// Completes once no byte has moved for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = self.start.elapsed().saturating_sub(last);
            if quiet >= timeout {
                return;
            }
            tokio::time::sleep(timeout - quiet).await;
        }
    }
}

/// Runs a connection's work until it ends, its client is idle for `idle_timeout`, or its route
/// is retired; the work is dropped (its sockets closed) in the latter two cases.
pub(crate) async fn guarded<F: Future>(
    work: F,
    activity: &Activity,
    idle_timeout: Duration,
    retired: impl Future<Output = ()>,
) -> Result<F::Output, Cut> {
    tokio::select! {
        output = work => Ok(output),
        _ = activity.idle_for(idle_timeout) => Err(Cut::Idle),
        _ = retired => Err(Cut::RouteRetired),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_capped_per_address_and_per_ipv6_64() {
        let limiter = ClientLimiter::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = limiter.try_acquire(a).unwrap();
        let _second = limiter.try_acquire(a).unwrap();
        assert!(limiter.try_acquire(a).is_none());
        assert!(limiter.try_acquire("192.0.2.2".parse().unwrap()).is_some());
        drop(first);
        let _third = limiter
            .try_acquire(a)
            .expect("a released slot is free again");
        // One /64, two addresses: one budget; the IPv4-mapped form is the IPv4 client.
        let _x = limiter
            .try_acquire("2001:db8:1:2::1".parse().unwrap())
            .unwrap();
        let _y = limiter
            .try_acquire("2001:db8:1:2::ffff".parse().unwrap())
            .unwrap();
        assert!(limiter
            .try_acquire("2001:db8:1:2:3::9".parse().unwrap())
            .is_none());
        assert!(limiter
            .try_acquire("2001:db8:1:3::1".parse().unwrap())
            .is_some());
        assert!(limiter
            .try_acquire("::ffff:192.0.2.1".parse().unwrap())
            .is_none());
    }

    #[test]
    fn released_clients_leave_no_entry() {
        let limiter = ClientLimiter::new(4);
        let slots: Vec<_> = (1..=50u8)
            .map(|i| {
                limiter
                    .try_acquire(IpAddr::from([198, 51, 100, i]))
                    .unwrap()
            })
            .collect();
        assert_eq!(limiter.tracked(), 50);
        drop(slots);
        assert_eq!(limiter.tracked(), 0);
    }

    #[tokio::test]
    async fn idle_connections_are_cut_and_busy_ones_kept() {
        let activity = Activity::new();
        let idle = Duration::from_millis(300);
        let busy = async {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                activity.touch();
            }
        };
        let never = std::future::pending::<()>;
        assert_eq!(guarded(busy, &activity, idle, never()).await, Ok(()));
        let started = Instant::now();
        let silent = std::future::pending::<()>();
        assert_eq!(
            guarded(silent, &activity, idle, never()).await,
            Err(Cut::Idle)
        );
        assert!(started.elapsed() >= Duration::from_millis(250));
        let retired = tokio::time::sleep(Duration::from_millis(10));
        assert_eq!(
            guarded(
                std::future::pending::<()>(),
                &activity,
                Duration::from_secs(60),
                retired
            )
            .await,
            Err(Cut::RouteRetired)
        );
    }
}
