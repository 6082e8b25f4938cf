//! Drains on the wire: the body of `POST /drain` and the progress both `POST` and `DELETE
//! /drain` answer with (and `GET /status` shows while a drain runs).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How many connections a drain closes: a count, or the literal `"all"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DrainSize {
    Count(usize),
    All(AllKeyword),
}

/// The literal `"all"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllKeyword {
    All,
}

impl DrainSize {
    /// Every connection the pod has when the drain starts.
    pub const ALL: DrainSize = DrainSize::All(AllKeyword::All);
}

/// Body of `POST /drain`: `{"connections": N or "all", "over_seconds": S}`.
///
/// Unlike every other contract type, unknown fields are refused: a drain closes agents'
/// connections, and must not be carried out half-understood.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    pub connections: DrainSize,
    pub over_seconds: f64,
}

impl DrainRequest {
    /// Longest window a drain may be spread over.
    pub const MAX_SECONDS: f64 = 7.0 * 86_400.0;
    /// Shortest window: a drain spreads its closes; 0 would close them all at once, the very
    /// reconnect storm drains exist to prevent.
    pub const MIN_SECONDS: f64 = 1.0;

    /// Checks what serde cannot: a window that is a real, bounded duration.
    pub fn validate(&self) -> Result<Duration, String> {
        if !self.over_seconds.is_finite() || self.over_seconds < Self::MIN_SECONDS {
            return Err(format!(
                "over_seconds must be at least {}: a drain spreads its closes over a window, and closing every connection at once is the reconnect storm it exists to prevent (not {})",
                Self::MIN_SECONDS,
                self.over_seconds
            ));
        }
        if self.over_seconds > Self::MAX_SECONDS {
            return Err("over_seconds must be at most a week".into());
        }
        Ok(Duration::from_secs_f64(self.over_seconds))
    }
}

/// What a drain is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainProgress {
    /// Connections this drain will close (fixed when it starts).
    pub target: usize,
    /// Closes asked so far.
    #[serde(default)]
    pub asked: usize,
    /// Asked connections that have really closed (a stalled peer takes up to the write
    /// timeout).
    pub closed: usize,
    pub over_seconds: f64,
    /// RFC 3339.
    pub started_at: String,
    pub finished: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_accepts_a_count_or_all_and_rejects_the_rest() {
        let r: DrainRequest =
            serde_json::from_str(r#"{"connections": 5, "over_seconds": 2}"#).unwrap();
        assert_eq!(r.connections, DrainSize::Count(5));
        let r: DrainRequest =
            serde_json::from_str(r#"{"connections": "all", "over_seconds": 0.5}"#).unwrap();
        assert_eq!(r.connections, DrainSize::All(AllKeyword::All));
        assert!(serde_json::from_str::<DrainRequest>(r#"{"connections": "some"}"#).is_err());
        assert!(
            serde_json::from_str::<DrainRequest>(r#"{"connections": -1, "over_seconds": 1}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<DrainRequest>(
            r#"{"connections": 1, "over_seconds": 1, "force": true}"#
        )
        .is_err());
        let r: DrainRequest =
            serde_json::from_str(r#"{"connections": 1, "over_seconds": -3}"#).unwrap();
        assert!(r.validate().is_err());
    }

    #[test]
    fn validation_bounds_the_window() {
        let request = |over_seconds| DrainRequest {
            connections: DrainSize::ALL,
            over_seconds,
        };
        assert_eq!(request(1.0).validate(), Ok(Duration::from_secs(1)));
        assert_eq!(request(2.5).validate(), Ok(Duration::from_millis(2500)));
        let zero = request(0.0).validate().unwrap_err();
        assert!(zero.contains("at least 1"), "{zero}");
        assert_eq!(
            request(DrainRequest::MAX_SECONDS).validate(),
            Ok(Duration::from_secs(7 * 86_400))
        );
        for bad in [
            0.0,
            0.999,
            -0.001,
            f64::NAN,
            f64::INFINITY,
            DrainRequest::MAX_SECONDS + 1.0,
        ] {
            assert!(request(bad).validate().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn request_round_trips_in_the_documented_shape() {
        for request in [
            DrainRequest {
                connections: DrainSize::Count(500),
                over_seconds: 5.0,
            },
            DrainRequest {
                connections: DrainSize::ALL,
                over_seconds: 0.25,
            },
        ] {
            let json = serde_json::to_string(&request).unwrap();
            assert_eq!(
                serde_json::from_str::<DrainRequest>(&json).unwrap(),
                request
            );
        }
        assert_eq!(
            serde_json::to_value(DrainRequest {
                connections: DrainSize::ALL,
                over_seconds: 10.0
            })
            .unwrap(),
            serde_json::json!({"connections": "all", "over_seconds": 10.0})
        );
    }

    #[test]
    fn progress_round_trips() {
        let progress = DrainProgress {
            target: 4,
            asked: 4,
            closed: 3,
            over_seconds: 4.0,
            started_at: "2026-11-24T10:00:00Z".into(),
            finished: false,
        };
        let json = serde_json::to_string(&progress).unwrap();
        assert_eq!(
            serde_json::from_str::<DrainProgress>(&json).unwrap(),
            progress
        );
    }
}
