//! Paced drains: close N connections spread evenly over a window.
//!
//! Closing everything at once is what turns a restart into a reconnect storm; closing at a
//! steady rate lets the fleet absorb the reconnects. The operator chooses N and the window from
//! the fleet-wide budget; the sidecar only keeps the pace. Each close is graceful (the
//! connection task sends TLS close_notify, then FIN), which agents read as "reconnect now".

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use ballast_contract::clock;
use ballast_contract::pacing::close_offset;
use ballast_contract::{DrainProgress, DrainSize};

use crate::connections::Connections;
use crate::metrics::Metrics;

struct Running {
    target: usize,
    closed: Arc<AtomicUsize>,
    over_seconds: f64,
    started_at: i64,
    task: JoinHandle<()>,
}

impl Running {
    fn progress(&self) -> DrainProgress {
        DrainProgress {
            target: self.target,
            closed: self.closed.load(Ordering::Relaxed),
            over_seconds: self.over_seconds,
            started_at: clock::rfc3339(self.started_at),
            finished: self.task.is_finished(),
        }
    }
}

/// Runs at most one drain at a time; a new request replaces the running one.
pub struct Drainer {
    connections: Arc<Connections>,
    metrics: Arc<Metrics>,
    running: Mutex<Option<Running>>,
}

impl Drainer {
    pub fn new(connections: Arc<Connections>, metrics: Arc<Metrics>) -> Self {
        Self {
            connections,
            metrics,
            running: Mutex::new(None),
        }
    }

    /// Starts a drain, cancelling any running one, and says what it will do.
    pub fn start(&self, size: DrainSize, window: Duration) -> DrainProgress {
        let order = self.connections.drain_order();
        let target = match size {
            DrainSize::Count(n) => n.min(order.len()),
            DrainSize::All(_) => order.len(),
        };
        let closed = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(pace(
            self.connections.clone(),
            self.metrics.clone(),
            order,
            target,
            window,
            closed.clone(),
        ));
        let running = Running {
            target,
            closed,
            over_seconds: window.as_secs_f64(),
            started_at: clock::unix_now(),
            task,
        };
        let progress = running.progress();
        let mut slot = self.running.lock().expect("drain lock");
        if let Some(old) = slot.replace(running) {
            old.task.abort();
        }
        self.metrics.draining.set(1);
        tracing::info!(
            connections = target,
            over_seconds = window.as_secs_f64(),
            "drain started"
        );
        progress
    }

    /// Stops the running drain; connections already closed stay closed.
    pub fn cancel(&self) -> Option<DrainProgress> {
        let running = self.running.lock().expect("drain lock").take()?;
        running.task.abort();
        self.metrics.draining.set(0);
        let progress = running.progress();
        tracing::info!(
            closed = progress.closed,
            target = progress.target,
            "drain cancelled"
        );
        Some(progress)
    }

    /// The running or last finished drain.
    pub fn progress(&self) -> Option<DrainProgress> {
        let slot = self.running.lock().expect("drain lock");
        let progress = slot.as_ref()?.progress();
        if progress.finished {
            self.metrics.draining.set(0);
        }
        Some(progress)
    }
}

/// Closes `target` connections from `order` at even intervals across `window`, at the instants
/// of the one pacing rule (`ballast_contract::pacing`). Entries that already left are skipped,
/// so exactly `target` close unless the pod runs out of connections.
async fn pace(
    connections: Arc<Connections>,
    metrics: Arc<Metrics>,
    order: Vec<u64>,
    target: usize,
    window: Duration,
    closed: Arc<AtomicUsize>,
) {
    let start = Instant::now();
    let mut candidates = order.into_iter();
    for i in 0..target {
        tokio::time::sleep_until(start + close_offset(i, target, window)).await;
        loop {
            let Some(id) = candidates.next() else {
                tracing::info!(closed = i, target, "drain ran out of connections");
                metrics.draining.set(0);
                return;
            };
            if connections.close(id) {
                closed.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    metrics.draining.set(0);
    tracing::info!(closed = target, "drain finished");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn closes_exactly_the_target_evenly_over_the_window() {
        let connections = Arc::new(Connections::default());
        let metrics = Arc::new(Metrics::new());
        let regs: Vec<_> = (0..10).map(|_| connections.register(1)).collect();
        let drainer = Drainer::new(connections.clone(), metrics.clone());
        drainer.start(DrainSize::Count(4), Duration::from_secs(4));
        let mut notified_at = Vec::new();
        let begin = Instant::now();
        for reg in &regs[..4] {
            reg.close.notified().await;
            notified_at.push((Instant::now() - begin).as_millis());
        }
        assert_eq!(notified_at, vec![0, 1000, 2000, 3000]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let p = drainer.progress().unwrap();
        assert_eq!((p.closed, p.target, p.finished), (4, 4, true));
        assert_eq!(metrics.draining.get(), 0);
    }
}
