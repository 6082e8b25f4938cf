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

/// Who asked for a drain: only the operator's drains lapse with its directives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// SIGTERM's drain of everything.
    Shutdown,
    /// A person, through `POST /drain`.
    Admin,
    /// The operator's directive with this id.
    Directive(u64),
}

struct Running {
    origin: Origin,
    target: usize,
    /// Closes asked so far.
    asked: Arc<AtomicUsize>,
    /// Asked connections that have closed.
    closed: Arc<AtomicUsize>,
    over_seconds: f64,
    started_at: i64,
    task: JoinHandle<()>,
}

impl Running {
    fn progress(&self) -> DrainProgress {
        let asked = self.asked.load(Ordering::Relaxed);
        let closed = self.closed.load(Ordering::Relaxed);
        DrainProgress {
            target: self.target,
            asked,
            closed,
            over_seconds: self.over_seconds,
            started_at: clock::rfc3339(self.started_at),
            finished: self.task.is_finished() && closed >= asked,
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
    pub fn start(&self, origin: Origin, size: DrainSize, window: Duration) -> DrainProgress {
        let order = self.connections.drain_order();
        let target = match size {
            DrainSize::Count(n) => n.min(order.len()),
            DrainSize::All(_) => order.len(),
        };
        let asked = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(pace(
            self.connections.clone(),
            self.metrics.clone(),
            order,
            target,
            window,
            (asked.clone(), closed.clone()),
        ));
        let running = Running {
            origin,
            target,
            asked,
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
            ?origin,
            "drain started"
        );
        progress
    }

    /// Stops the running drain only if the operator started it (its directive lapsed); a
    /// person's drain or the shutdown drain goes on.
    pub fn cancel_directed(&self) -> Option<DrainProgress> {
        let directed = {
            let slot = self.running.lock().expect("drain lock");
            slot.as_ref()
                .is_some_and(|r| matches!(r.origin, Origin::Directive(_)) && !r.task.is_finished())
        };
        if directed {
            self.cancel()
        } else {
            None
        }
    }

    /// Who started the running drain, if one is running.
    #[cfg(test)]
    pub fn running_origin(&self) -> Option<Origin> {
        let slot = self.running.lock().expect("drain lock");
        slot.as_ref()
            .filter(|r| !r.task.is_finished())
            .map(|r| r.origin)
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
    (asked, closed): (Arc<AtomicUsize>, Arc<AtomicUsize>),
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
            if connections.close(id, &closed) {
                asked.fetch_add(1, Ordering::Relaxed);
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
        drainer.start(Origin::Admin, DrainSize::Count(4), Duration::from_secs(4));
        let mut notified_at = Vec::new();
        let begin = Instant::now();
        for reg in &regs[..4] {
            reg.close.notified().await;
            notified_at.push((Instant::now() - begin).as_millis());
        }
        assert_eq!(notified_at, vec![0, 1000, 2000, 3000]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Asked, but open until their tasks end: not closed, not finished.
        let p = drainer.progress().unwrap();
        assert_eq!((p.asked, p.closed, p.finished), (4, 0, false));
        let mut regs = regs;
        regs.drain(..3);
        let p = drainer.progress().unwrap();
        assert_eq!((p.asked, p.closed, p.finished), (4, 3, false));
        regs.remove(0);
        let p = drainer.progress().unwrap();
        assert_eq!((p.closed, p.target, p.finished), (4, 4, true));
        assert_eq!(metrics.draining.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_operators_drains_lapse() {
        let connections = Arc::new(Connections::default());
        let metrics = Arc::new(Metrics::new());
        let _regs: Vec<_> = (0..10).map(|_| connections.register(1)).collect();
        let drainer = Drainer::new(connections.clone(), metrics.clone());
        drainer.start(Origin::Admin, DrainSize::Count(4), Duration::from_secs(4));
        assert!(
            drainer.cancel_directed().is_none(),
            "a person's drain goes on"
        );
        assert_eq!(drainer.running_origin(), Some(Origin::Admin));
        drainer.start(
            Origin::Directive(7),
            DrainSize::Count(4),
            Duration::from_secs(4),
        );
        let stopped = drainer
            .cancel_directed()
            .expect("the directive's drain stops");
        assert!(stopped.closed < 4);
        assert_eq!(drainer.running_origin(), None);
    }
}
