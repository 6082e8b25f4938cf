//! The body of the sidecar's `GET /status`: what the operator and a person debugging want to
//! know about one pod at a glance.
//!
//! The sidecar writes it, the operator reads it. Readers ignore fields they do not know (see
//! [`crate::PROTOCOL_VERSION`]), so none of these types denies unknown fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::drain::DrainProgress;

/// `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// [`crate::PROTOCOL_VERSION`] of the sidecar that answered; absent before the field
    /// existed, which was version 1.
    #[serde(default = "first_version")]
    pub protocol_version: u32,
    /// Live agent connections (established, plus those in their handshake).
    pub connections: usize,
    /// False from SIGTERM on: no new connection is taken.
    pub accepting: bool,
    /// Accepting and the gateway answers.
    pub ready: bool,
    /// The running drain, if one is running.
    pub draining: Option<DrainProgress>,
    pub upstream: UpstreamStatus,
    pub certificate: CertificateStatus,
    pub limits: Limits,
    pub counters: Counters,
    /// The shared session-ticket keys, when the sidecar runs with `--ticket-keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_tickets: Option<SessionTickets>,
    /// The lifecycle-event journal, when the sidecar runs with events on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<EventsStatus>,
}

/// The lifecycle-event journal (`GET /events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsStatus {
    /// Events kept at most.
    pub capacity: usize,
    /// Events kept now.
    pub buffered: usize,
    /// `seq` of the newest event (0: none yet).
    pub last_seq: u64,
    /// For each consumer streaming now, how many events it has still to read; above
    /// `capacity`, it will get a gap.
    pub consumers_behind: Vec<u64>,
}

/// The session-ticket keys in use, and why the last file was refused (until a good one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTickets {
    pub keys_loaded: usize,
    pub last_error: Option<String>,
}

fn first_version() -> u32 {
    1
}

/// The gateway the sidecar forwards to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamStatus {
    pub address: String,
    pub reachable: bool,
}

/// The certificate served to new handshakes, and the last refused one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// SHA-256 of the leaf's DER, lowercase hex: what the operator compares across pods.
    pub sha256: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// RFC 3339.
    pub loaded_at: String,
    /// Increases with every successful reload.
    pub generation: u64,
    /// Connections accepted under the certificate served now.
    pub connections_on_current: usize,
    /// Connections accepted under earlier certificates (a drain closes these first).
    pub connections_on_older: usize,
    pub last_error: Option<String>,
    /// The metric label of the last refusal (`expired`, `key_mismatch`, …).
    pub last_error_reason: Option<String>,
    /// RFC 3339.
    pub last_error_at: Option<String>,
}

/// The pod's admission limits and windows, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub max_connections: usize,
    pub max_handshakes_per_second: u32,
    pub max_concurrent_handshakes: usize,
    pub handshake_timeout_seconds: f64,
    pub shutdown_drain_seconds: f64,
}

/// Totals since the sidecar started, keyed by the same labels as its metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub accepted: u64,
    /// By refusal reason (`max_connections`, `handshake_rate`, …).
    pub refused: BTreeMap<String, u64>,
    /// By close cause (`drain`, `client`, `upstream`, `timeout`, `error`).
    pub closed: BTreeMap<String, u64>,
    /// By result (`success` or a refusal reason).
    pub certificate_reloads: BTreeMap<String, u64>,
    pub handshakes_in_flight: i64,
    /// Accepted connections queued for their handshake (admission paces, then refuses).
    #[serde(default)]
    pub waiting_for_handshake: i64,
    /// Completed handshakes by kind (`full`, `resumed`).
    #[serde(default)]
    pub handshakes: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            protocol_version: crate::PROTOCOL_VERSION,
            connections: 1200,
            accepting: true,
            ready: true,
            draining: Some(DrainProgress {
                target: 300,
                asked: 13,
                closed: 12,
                over_seconds: 30.0,
                started_at: "2026-11-24T10:00:00Z".into(),
                finished: false,
            }),
            upstream: UpstreamStatus {
                address: "127.0.0.1:8080".into(),
                reachable: true,
            },
            certificate: CertificateStatus {
                sha256: "ab".repeat(32),
                not_before: "2026-11-23T00:00:00Z".into(),
                not_after: "2027-02-21T00:00:00Z".into(),
                loaded_at: "2026-11-24T09:00:00Z".into(),
                generation: 2,
                connections_on_current: 1000,
                connections_on_older: 200,
                last_error: Some("the leaf certificate expired at 2026-11-01T00:00:00Z".into()),
                last_error_reason: Some("expired".into()),
                last_error_at: Some("2026-11-24T09:30:00Z".into()),
            },
            limits: Limits {
                max_connections: 50_000,
                max_handshakes_per_second: 500,
                max_concurrent_handshakes: 256,
                handshake_timeout_seconds: 10.0,
                shutdown_drain_seconds: 2.5,
            },
            counters: Counters {
                accepted: 5000,
                refused: BTreeMap::from([("max_connections".into(), 3)]),
                closed: BTreeMap::from([("drain".into(), 12), ("client".into(), 7)]),
                certificate_reloads: BTreeMap::from([("success".into(), 1)]),
                handshakes_in_flight: 4,
                waiting_for_handshake: 17,
                handshakes: BTreeMap::from([("full".into(), 4000), ("resumed".into(), 1000)]),
            },
            session_tickets: Some(SessionTickets {
                keys_loaded: 3,
                last_error: None,
            }),
            events: Some(EventsStatus {
                capacity: 8192,
                buffered: 120,
                last_seq: 120,
                consumers_behind: vec![0, 3],
            }),
        }
    }

    #[test]
    fn status_round_trips() {
        let status = sample();
        let json = serde_json::to_string_pretty(&status).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), status);

        let idle = Status {
            draining: None,
            certificate: CertificateStatus {
                last_error: None,
                last_error_reason: None,
                last_error_at: None,
                ..status.certificate.clone()
            },
            ..status
        };
        let json = serde_json::to_string(&idle).unwrap();
        assert!(json.contains("\"draining\":null"), "{json}");
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), idle);
    }

    #[test]
    fn unknown_fields_from_a_newer_peer_are_ignored() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value["protocol_version"] = 1.into();
        value["rebalance_hint"] = serde_json::json!({"move": 40});
        value["certificate"]["ocsp_staple"] = "fresh".into();
        value["counters"]["refused_by_cidr"] = serde_json::json!({});
        let parsed: Status = serde_json::from_value(value).unwrap();
        assert_eq!(parsed, sample());
    }

    #[test]
    fn a_body_without_a_version_is_version_one() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value.as_object_mut().unwrap().remove("protocol_version");
        let parsed: Status = serde_json::from_value(value).unwrap();
        assert_eq!(parsed.protocol_version, 1);
    }

    #[test]
    fn field_names_are_the_ones_scripts_and_dashboards_read() {
        let value = serde_json::to_value(sample()).unwrap();
        for pointer in [
            "/protocol_version",
            "/connections",
            "/draining/over_seconds",
            "/certificate/sha256",
            "/certificate/connections_on_older",
            "/certificate/last_error_reason",
            "/limits/shutdown_drain_seconds",
            "/counters/closed/drain",
        ] {
            assert!(
                value.pointer(pointer).is_some(),
                "{pointer} missing in {value}"
            );
        }
    }
}
