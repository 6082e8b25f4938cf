//! The report channel on the wire: what a sidecar tells the operator every second
//! ([`Report`]), and what the operator answers ([`Answer`]): the directives for that pod, or
//! "not the leader, ask elsewhere".
//!
//! Two rules keep the data plane independent of the control plane:
//! - every directive carries its own lifetime (`expires_in_seconds`, relative, so the two
//!   clocks never have to agree); a sidecar that hears nothing newer lets it lapse and goes
//!   back to its local limits, and stops any drain the directive had started;
//! - readers ignore fields they do not know (see [`crate::PROTOCOL_VERSION`]), so a newer peer
//!   is never fatal; what a sidecar must act on is checked by [`Directives::validate`] before
//!   it acts, and a directive that does not validate is ignored as a whole.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a sidecar POSTs its [`Report`] (JSON, `Authorization: Bearer <token>`); the answer
/// is an [`Answer`] (200), or `{"error": ...}` with 401/403 when the caller is refused.
pub const REPORT_PATH: &str = "/v1/report";

/// The audience a sidecar's projected ServiceAccount token is minted for, and the only one
/// the operator accepts: a token meant for the API server, or for anyone else, is refused.
pub const TOKEN_AUDIENCE: &str = "ballast.dev/report";

/// A sidecar's account of itself, sent every second. Who sent it is not in the body: the
/// operator takes the pod from the caller's ServiceAccount token, never from what a pod says.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub protocol_version: u32,
    /// The sidecar's own version (`CARGO_PKG_VERSION`).
    pub sidecar_version: String,
    /// Increases with every report of this sidecar process; restarts at 1 with the process.
    pub sequence: u64,
    /// The id of the last [`Directives`] applied; 0 for none.
    pub applied_directives: u64,
    pub connections: ConnectionCounts,
    /// New connections are admitted (not lame-duck, not steered away).
    pub accepting: bool,
    /// SIGTERM received: the pod is going, its readiness fails for good, its drain runs.
    pub terminating: bool,
    /// The gateway container answers; without it the pod serves no one.
    pub upstream_reachable: bool,
    /// The operator's directives keep new connections away (readiness fails until they lapse).
    pub steered_away: bool,
    /// The drain in progress, if any.
    pub draining: Option<crate::DrainProgress>,
    pub handshakes: Handshakes,
    /// Connections refused since the previous report, by reason (`max_connections`,
    /// `handshake_rate`, `not_accepting`, `quota`; earlier sidecars also
    /// `concurrent_handshakes`). Deltas, so a
    /// lost report loses only its own second, never a running total.
    pub refused: BTreeMap<String, u64>,
    /// Connections closed since the previous report, by cause (`drain`, `client`, `upstream`,
    /// `timeout`, `error`).
    pub closed: BTreeMap<String, u64>,
    pub certificate: ServedCertificate,
    /// The sidecar's own limits, so the operator plans with what the pod really enforces.
    pub max_connections: u64,
    pub max_handshakes_per_second: u64,
}

/// Established connections, by the certificate they were accepted under.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectionCounts {
    pub total: u64,
    pub on_current_certificate: u64,
    pub on_older_certificate: u64,
}

/// Handshakes lately (since the previous report).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Handshakes {
    pub per_second: f64,
    /// Latency as the agent saw it: time queued for admission plus the handshake itself.
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    /// Handshakes that failed since the previous report.
    pub failed: u64,
}

/// The certificate served now.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ServedCertificate {
    /// SHA-256 of the leaf's DER, lowercase hex.
    pub sha256: String,
    /// RFC 3339.
    pub not_after: String,
    /// Increases with every certificate loaded.
    pub generation: u64,
    /// The leaf's DNS names and IP addresses: a renewal must keep them all, and the operator
    /// judges the Secret's next certificate against what the pods serve.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    /// The last certificate the sidecar refused (the Secret changed, the new pair failed a
    /// check, the old one keeps serving), until a later one is served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<RefusedCertificate>,
}

/// A certificate the sidecar would not serve.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RefusedCertificate {
    /// `malformed`, `bad_key`, `key_mismatch`, `expired`, `not_yet_valid`, `untrusted_chain`,
    /// `names_dropped`, `unreadable`.
    pub reason: String,
    pub message: String,
}

/// The operator's answer to a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// The leader's directives for the reporting pod.
    Directives(Directives),
    /// This replica is not the leader: report to another one (after a short wait).
    NotLeader {
        /// Where the leader can be reached, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leader: Option<String>,
    },
}

/// What one pod should do until the directives expire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Directives {
    #[serde(default)]
    pub protocol_version: u32,
    /// Increases with every change; a sidecar applies an id once.
    pub id: u64,
    /// Seconds from receipt after which every directive here lapses.
    pub expires_in_seconds: f64,
    /// Whether new connections should reach this pod (steering); `None`: the sidecar's own
    /// choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepting: Option<bool>,
    /// New connections admitted per second at most, below the sidecar's own limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission_quota: Option<u64>,
    /// A paced drain; replaces the one in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainDirective>,
}

/// Close `connections` over `over_seconds`, paced by [`crate::pacing`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainDirective {
    pub connections: u64,
    pub over_seconds: f64,
    /// Connections on an older certificate first (the sidecar's order anyway; explicit so a
    /// reader of the wire knows why).
    #[serde(default = "yes")]
    pub older_certificate_first: bool,
    /// A reason a person can read, for the sidecar's log.
    #[serde(default)]
    pub why: String,
}

fn yes() -> bool {
    true
}

impl Directives {
    /// Longest lifetime a directive may have: the data plane must never be steered for long
    /// by a controller that has gone quiet.
    pub const MAX_LIFETIME_SECONDS: f64 = 60.0;
    /// Shortest drain window: closing everything at one instant is the storm Ballast exists
    /// to prevent.
    pub const MIN_DRAIN_SECONDS: f64 = 0.1;

    /// Checks what serde cannot; a sidecar ignores directives that fail.
    pub fn validate(&self) -> Result<(), String> {
        let e = self.expires_in_seconds;
        if !(e.is_finite() && e > 0.0 && e <= Self::MAX_LIFETIME_SECONDS) {
            return Err(format!(
                "expires_in_seconds must be in (0, {}], not {e}",
                Self::MAX_LIFETIME_SECONDS
            ));
        }
        if self.admission_quota == Some(0) && self.accepting != Some(false) {
            return Err("an admission quota of 0 is `accepting: false`; say that".into());
        }
        if let Some(d) = &self.drain {
            let s = d.over_seconds;
            if !(s.is_finite() && s >= Self::MIN_DRAIN_SECONDS && s <= e) {
                return Err(format!(
                    "drain.over_seconds must be between {} and the directives' lifetime ({e}), not {s}",
                    Self::MIN_DRAIN_SECONDS
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            protocol_version: crate::PROTOCOL_VERSION,
            sidecar_version: "0.1.0".into(),
            sequence: 42,
            applied_directives: 7,
            connections: ConnectionCounts {
                total: 1_500,
                on_current_certificate: 1_000,
                on_older_certificate: 500,
            },
            accepting: true,
            terminating: false,
            upstream_reachable: true,
            steered_away: false,
            draining: None,
            handshakes: Handshakes {
                per_second: 12.5,
                p50_seconds: 0.004,
                p99_seconds: 0.02,
                failed: 1,
            },
            refused: BTreeMap::from([("handshake_rate".into(), 3)]),
            closed: BTreeMap::from([("drain".into(), 10), ("client".into(), 2)]),
            certificate: ServedCertificate {
                sha256: "ab".repeat(32),
                not_after: "2027-01-01T00:00:00Z".into(),
                generation: 2,
                dns_names: vec!["edge.example.com".into()],
                ip_addresses: vec!["127.0.0.1".into()],
                refused: Some(RefusedCertificate {
                    reason: "names_dropped".into(),
                    message: "the certificate no longer covers ::1".into(),
                }),
            },
            max_connections: 50_000,
            max_handshakes_per_second: 500,
        }
    }

    fn directives() -> Directives {
        Directives {
            protocol_version: crate::PROTOCOL_VERSION,
            id: 9,
            expires_in_seconds: 5.0,
            accepting: Some(false),
            admission_quota: None,
            drain: Some(DrainDirective {
                connections: 200,
                over_seconds: 1.0,
                older_certificate_first: true,
                why: "runs an old revision: draining before the restart".into(),
            }),
        }
    }

    #[test]
    fn reports_and_answers_round_trip() {
        let r = report();
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        for a in [
            Answer::Directives(directives()),
            Answer::NotLeader {
                leader: Some("10.0.0.7:9443".into()),
            },
            Answer::NotLeader { leader: None },
        ] {
            let text = serde_json::to_string(&a).unwrap();
            let back: Answer = serde_json::from_str(&text).unwrap();
            assert_eq!(back, a, "{text}");
        }
    }

    #[test]
    fn a_newer_peers_extra_fields_are_ignored_and_missing_ones_default() {
        let text = r#"{"protocol_version": 2, "sequence": 3, "connections": {"total": 5,
            "on_current_certificate": 5, "by_protocol": {"mqtt": 5}}, "hologram": true}"#;
        let r: Report = serde_json::from_str(text).unwrap();
        assert_eq!((r.sequence, r.connections.total), (3, 5));
        assert_eq!(r.certificate, ServedCertificate::default());
        let text = r#"{"answer": "directives", "id": 1, "expires_in_seconds": 3,
            "drain": {"connections": 4, "over_seconds": 1, "jitter": 0.1}, "future": []}"#;
        let Answer::Directives(d) = serde_json::from_str(text).unwrap() else {
            panic!("directives expected")
        };
        assert!(d.drain.as_ref().unwrap().older_certificate_first);
        assert_eq!(d.validate(), Ok(()));
    }

    #[test]
    fn directives_that_could_hurt_are_refused() {
        assert_eq!(directives().validate(), Ok(()));
        let with = |f: fn(&mut Directives)| {
            let mut d = directives();
            f(&mut d);
            d.validate()
        };
        assert!(with(|d| d.expires_in_seconds = 0.0).is_err());
        assert!(
            with(|d| d.expires_in_seconds = 3_600.0).is_err(),
            "must lapse soon"
        );
        assert!(with(|d| d.expires_in_seconds = f64::NAN).is_err());
        assert!(
            with(|d| d.drain.as_mut().unwrap().over_seconds = 0.0).is_err(),
            "no storm"
        );
        assert!(
            with(|d| d.drain.as_mut().unwrap().over_seconds = 10.0).is_err(),
            "a drain may not outlive its directive"
        );
        assert!(with(|d| {
            d.accepting = None;
            d.admission_quota = Some(0)
        })
        .is_err());
        let err = with(|d| d.expires_in_seconds = -1.0).unwrap_err();
        assert!(err.contains("expires_in_seconds"), "{err}");
    }
}
