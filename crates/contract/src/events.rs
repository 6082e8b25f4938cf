//! Lifecycle events: what a sidecar tells a presence backend about each agent connection, so
//! the backend can tell a planned move from a lost agent.
//!
//! One JSON object per line (`GET /events` on the sidecar's admin port, newline-delimited
//! JSON, or Server-Sent Events with the same objects as `data:`). Every object carries the
//! sidecar's `pod`, its `boot` (a random id per process: a restarted sidecar starts its
//! sequence again) and `seq`, which grows by exactly one per event of that boot. A consumer
//! orders and de-duplicates by `(pod, boot, seq)`.
//!
//! A consumer that falls behind the sidecar's bounded buffer is never waited for: the oldest
//! events are dropped and the consumer gets one [`EventKind::Gap`] in their place, whose
//! `missed` says how many it lost and whose `seq` is the last one lost. So in any stream each
//! line accounts for `seq − previous seq` events: 1 for an event, `missed` for a gap.
//!
//! This module is the format only: plain data, no I/O.

use serde::{Deserialize, Serialize};

/// One line of the event stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Event {
    /// Per-boot sequence number, from 1, one more per event (for a gap: the last one missed).
    pub seq: u64,
    /// A random id of the sidecar process that emitted it.
    pub boot: String,
    /// When it happened, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The pod whose sidecar emitted it.
    pub pod: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// An agent finished its handshake and is connected to the gateway.
    Connected {
        /// The connection's id within this boot: its `disconnected` event carries the same.
        connection: u64,
        agent: Agent,
        /// The sidecar's certificate generation the agent was accepted under.
        certificate_generation: u64,
        /// The handshake resumed a session (a shared ticket) instead of a full one.
        resumed: bool,
    },
    /// A connected agent's connection ended.
    Disconnected {
        connection: u64,
        agent: Agent,
        certificate_generation: u64,
        cause: DisconnectCause,
        /// How long it was connected.
        connected_seconds: f64,
        /// For a planned close: until when the agent is expected back (on any pod), RFC 3339.
        /// A backend holds "offline" for the agent until then.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected_back_by: Option<String>,
    },
    /// A connection was turned away before the agent was connected.
    Refused { agent: Agent, reason: RefusedReason },
    /// This consumer fell behind: `missed` events before this one were dropped for it.
    Gap { missed: u64 },
}

/// Why a connection ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectCause {
    /// A drain closed it on purpose (the operator, the admin API or the pod's shutdown); the
    /// agent was told to reconnect and is expected back by `expected_back_by`.
    Planned,
    /// The agent closed it.
    ClientClose,
    /// The gateway closed it.
    GatewayClose,
    /// A deadline passed: a write the agent did not take, or the idle timeout.
    Timeout,
    /// A TLS or I/O error.
    Error,
}

/// Why a connection was turned away.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RefusedReason {
    /// The pod holds its maximum of connections.
    MaxConnections,
    /// It waited for a handshake slot longer than a client can.
    HandshakeRate,
    /// The pod is shutting down.
    NotAccepting,
    /// The operator's admission quota for this pod was spent.
    Quota,
    /// The TLS handshake failed (bad client, wrong name, garbage).
    HandshakeFailed,
    /// The TLS handshake did not finish within the handshake timeout.
    HandshakeTimeout,
    /// The handshake succeeded but the gateway could not be reached.
    GatewayUnreachable,
}

/// Who the agent is, as far as the sidecar can tell.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Agent {
    /// The agent's address as the sidecar sees it (`ip:port`).
    pub address: String,
    /// The server name the agent asked for (SNI), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Under mutual TLS: the client certificate's subject (RFC 4514 form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Under mutual TLS: the client certificate's subject alternative names (DNS names, IP
    /// addresses, URIs and e-mail addresses, as `DNS:…`, `IP:…`, `URI:…`, `email:…`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sans: Vec<String>,
}

impl EventKind {
    /// The `event` field's value, for metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connected { .. } => "connected",
            Self::Disconnected { .. } => "disconnected",
            Self::Refused { .. } => "refused",
            Self::Gap { .. } => "gap",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> Agent {
        Agent {
            address: "10.0.0.7:40112".into(),
            sni: Some("presence.example.com".into()),
            ..Agent::default()
        }
    }

    #[test]
    fn lines_have_the_documented_shape() {
        let event = Event {
            seq: 42,
            boot: "3f9a0c1d".into(),
            time: "2026-12-06T06:30:00.125Z".into(),
            pod: "presence-1".into(),
            kind: EventKind::Disconnected {
                connection: 7,
                agent: agent(),
                certificate_generation: 2,
                cause: DisconnectCause::Planned,
                connected_seconds: 3.5,
                expected_back_by: Some("2026-12-06T06:31:00Z".into()),
            },
        };
        let line = serde_json::to_value(&event).unwrap();
        assert_eq!(
            line,
            serde_json::json!({
                "seq": 42, "boot": "3f9a0c1d", "time": "2026-12-06T06:30:00.125Z",
                "pod": "presence-1", "event": "disconnected", "connection": 7,
                "agent": {"address": "10.0.0.7:40112", "sni": "presence.example.com"},
                "certificate_generation": 2, "cause": "planned", "connected_seconds": 3.5,
                "expected_back_by": "2026-12-06T06:31:00Z"
            })
        );
        let back: Event = serde_json::from_value(line).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn gaps_and_refusals_read_back() {
        for kind in [
            EventKind::Gap { missed: 37 },
            EventKind::Refused {
                agent: agent(),
                reason: RefusedReason::HandshakeRate,
            },
        ] {
            let event = Event {
                seq: 1,
                boot: "b".into(),
                time: "t".into(),
                pod: "p".into(),
                kind,
            };
            let text = serde_json::to_string(&event).unwrap();
            assert!(text.contains(&format!("\"event\":\"{}\"", event.kind.name())));
            assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), event);
        }
    }
}
