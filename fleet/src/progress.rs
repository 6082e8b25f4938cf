//! The live progress line, printed to stderr while a fleet runs.
//!
//! One line per interval, greppable, so a person watching a rotation sees at a glance whether
//! agents are dropping, where they land and whether anyone nears the offline threshold:
//! `t=12s connected=9998/10000 [127.0.0.1:8443=5000 127.0.0.2:8443=4998] reconnects/s=12
//! longest_gap=0.8s offline>60s=0 handshake_failures=3`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::agents::{Fleet, LiveStats};
use crate::duration::format_short;

/// Prints the progress line every `every` until the fleet stops.
pub fn spawn_progress(fleet: &Fleet, every: Duration) {
    let tally = fleet.tally();
    let mut stop = fleet.stop_signal();
    let agents = fleet.config().agents;
    let threshold = fleet.config().offline_threshold;
    let every = every.max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tally.start() + every, every);
        let mut last_reconnects = 0;
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = ticks.tick() => {}
            }
            let stats = tally.live();
            let elapsed = tally.start().elapsed();
            let rate = (stats.reconnects - last_reconnects) as f64 / every.as_secs_f64();
            last_reconnects = stats.reconnects;
            eprintln!("{}", format_line(elapsed, agents, threshold, rate, &stats));
        }
    });
}

/// Formats one progress line.
pub fn format_line(
    elapsed: Duration,
    agents: usize,
    threshold: Duration,
    reconnects_per_second: f64,
    stats: &LiveStats,
) -> String {
    let mut targets = String::new();
    for (i, (target, n)) in stats.per_target.iter().enumerate() {
        let sep = if i == 0 { "" } else { " " };
        let _ = write!(targets, "{sep}{target}={n}");
    }
    format!(
        "t={}s connected={}/{} [{}] reconnects/s={:.0} longest_gap={} offline>{}={} handshake_failures={}",
        elapsed.as_secs(),
        stats.connected,
        agents,
        targets,
        reconnects_per_second,
        format_short(stats.longest_gap),
        format_short(threshold),
        stats.offline_now,
        stats.handshake_failures,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_matches_the_documented_shape() {
        let stats = LiveStats {
            connected: 9998,
            per_target: [
                ("127.0.0.1:8443".into(), 5000),
                ("127.0.0.2:8443".into(), 4998),
            ]
            .into_iter()
            .collect(),
            longest_gap: Duration::from_millis(800),
            handshake_failures: 3,
            ..Default::default()
        };
        assert_eq!(
            format_line(
                Duration::from_millis(12_400),
                10_000,
                Duration::from_secs(60),
                12.0,
                &stats
            ),
            "t=12s connected=9998/10000 [127.0.0.1:8443=5000 127.0.0.2:8443=4998] \
             reconnects/s=12 longest_gap=0.8s offline>60s=0 handshake_failures=3"
        );
    }
}
