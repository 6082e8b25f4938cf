//! The one pacing rule: the sidecar follows it, the planner's tests and the simulator lay out
//! closes with it.
//!
//! A drain of `n` connections over `window` closes them at even steps of `window / n`, the
//! first at once: close number `i` (counting from 0) happens at `window / n * i` after the
//! drain started, so the last one happens one step before the window ends.

use std::time::Duration;

/// When close number `i` of `n` happens, as an offset from the drain's start
/// (`window / n * i`, to the nanosecond, rounding the step down). Zero when `n` is 0.
pub fn close_offset(i: usize, n: usize, window: Duration) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    let step = window.as_nanos() / n as u128;
    let nanos = step.saturating_mul(i as u128);
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    Duration::new(secs, (nanos % 1_000_000_000) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_are_even_and_the_first_is_immediate() {
        let offsets: Vec<_> = (0..4)
            .map(|i| close_offset(i, 4, Duration::from_secs(4)))
            .collect();
        assert_eq!(
            offsets,
            [0, 1000, 2000, 3000].map(Duration::from_millis).to_vec()
        );
        assert_eq!(close_offset(0, 0, Duration::from_secs(4)), Duration::ZERO);
        assert_eq!(close_offset(3, 5, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn matches_std_duration_arithmetic() {
        // What the sidecar computed before the rule moved here: `window / n * i` in std.
        for window in [
            Duration::ZERO,
            Duration::from_nanos(7),
            Duration::from_millis(2500),
            Duration::from_secs(30),
            Duration::new(600, 123_456_789),
        ] {
            for n in [1usize, 2, 3, 7, 1000, 50_000] {
                for i in [0, 1, n / 2, n - 1] {
                    assert_eq!(
                        close_offset(i, n, window),
                        window / n as u32 * i as u32,
                        "i={i} n={n} window={window:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_close_falls_inside_the_window() {
        let window = Duration::from_secs(10);
        for n in 1..200 {
            let last = close_offset(n - 1, n, window);
            assert!(last < window, "n={n}: {last:?}");
        }
    }
}
