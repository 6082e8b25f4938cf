//! Handshakes since the last report: how many, how fast (p50, p99), how many failed.
//!
//! The Prometheus histogram answers "since the process started"; the operator needs "in the
//! last second", to see a pod's handshakes slow down before its agents time out. This keeps a
//! bounded sample of the current window and hands it over whole on [`RecentHandshakes::take`].
//! It must never grow with load: past [`MAX_SAMPLES`] a sample replaces an older one.

use std::sync::Mutex;
use std::time::Instant;

use ballast_contract::report::Handshakes;

/// Samples kept per window; percentiles over more would not change the answer.
const MAX_SAMPLES: usize = 4096;

struct Window {
    started: Instant,
    seconds: Vec<f64>,
    completed: u64,
    failed: u64,
}

/// Handshake outcomes of the current window.
pub struct RecentHandshakes {
    window: Mutex<Window>,
}

impl Default for RecentHandshakes {
    fn default() -> Self {
        Self {
            window: Mutex::new(Window {
                started: Instant::now(),
                seconds: Vec::new(),
                completed: 0,
                failed: 0,
            }),
        }
    }
}

impl RecentHandshakes {
    pub fn completed(&self, seconds: f64) {
        let mut w = self.window.lock().expect("handshakes lock");
        let n = w.completed as usize;
        if w.seconds.len() < MAX_SAMPLES {
            w.seconds.push(seconds);
        } else {
            w.seconds[n % MAX_SAMPLES] = seconds;
        }
        w.completed += 1;
    }

    pub fn failed(&self) {
        self.window.lock().expect("handshakes lock").failed += 1;
    }

    /// The window's figures; a new window starts at `now`.
    pub fn take(&self, now: Instant) -> Handshakes {
        let mut w = self.window.lock().expect("handshakes lock");
        let elapsed = now.saturating_duration_since(w.started).as_secs_f64();
        let mut seconds = std::mem::take(&mut w.seconds);
        let (completed, failed) = (w.completed, w.failed);
        *w = Window {
            started: now,
            seconds: Vec::with_capacity(seconds.len().min(64)),
            completed: 0,
            failed: 0,
        };
        drop(w);
        seconds.sort_unstable_by(f64::total_cmp);
        Handshakes {
            per_second: if elapsed > 0.0 {
                completed as f64 / elapsed
            } else {
                0.0
            },
            p50_seconds: percentile(&seconds, 0.50),
            p99_seconds: percentile(&seconds, 0.99),
            failed,
        }
    }
}

/// Nearest-rank percentile of sorted samples; 0 for none.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_window_reports_rate_percentiles_and_failures_then_starts_over() {
        let recent = RecentHandshakes::default();
        let start = Instant::now();
        for i in 1..=100 {
            recent.completed(f64::from(i) / 1000.0);
        }
        recent.failed();
        let h = recent.take(start + Duration::from_secs(2));
        assert!((h.p50_seconds - 0.050).abs() < 1e-9, "{h:?}");
        assert!((h.p99_seconds - 0.099).abs() < 1e-9, "{h:?}");
        assert_eq!(h.failed, 1);
        assert!(h.per_second > 40.0 && h.per_second <= 50.0, "{h:?}");
        let empty = recent.take(start + Duration::from_secs(3));
        assert_eq!((empty.p99_seconds, empty.failed), (0.0, 0));
    }

    #[test]
    fn the_sample_is_bounded() {
        let recent = RecentHandshakes::default();
        for _ in 0..(3 * MAX_SAMPLES) {
            recent.completed(0.001);
        }
        assert_eq!(recent.window.lock().unwrap().seconds.len(), MAX_SAMPLES);
    }
}
