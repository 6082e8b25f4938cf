//! The sidecar's Prometheus metrics. Names are part of the interface: dashboards and the
//! operator read them, so they change only with a deprecation.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Why a connection was refused before its handshake.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    /// The handshake queue would hold it longer than half the handshake timeout, or it did.
    HandshakeRate,
    NotAccepting,
    /// Above the operator's admission quota (a directive), below the pod's own limits.
    Quota,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::HandshakeRate => "handshake_rate",
            Self::NotAccepting => "not_accepting",
            Self::Quota => "quota",
        }
    }
    pub const ALL: [Refusal; 4] = [
        Self::MaxConnections,
        Self::HandshakeRate,
        Self::NotAccepting,
        Self::Quota,
    ];
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CloseCause {
    /// Closed by a drain (API or shutdown), gracefully.
    Drain,
    /// The agent closed it.
    Client,
    /// The gateway closed it or could not be reached.
    Upstream,
    /// The handshake did not finish in time.
    Timeout,
    /// A TLS or I/O error, including clients that speak garbage.
    Error,
}

impl CloseCause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drain => "drain",
            Self::Client => "client",
            Self::Upstream => "upstream",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
    pub const ALL: [CloseCause; 5] = [
        Self::Drain,
        Self::Client,
        Self::Upstream,
        Self::Timeout,
        Self::Error,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Every metric the sidecar exports, plus the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub accepted: Counter,
    refused: Family<ReasonLabel, Counter>,
    closed: Family<CauseLabel, Counter>,
    pub handshake_seconds: Histogram,
    reloads: Family<ResultLabel, Counter>,
    pub certificate_not_after_seconds: Gauge,
    pub draining: Gauge,
    pub handshakes_in_flight: Gauge,
    pub waiting_for_handshake: Gauge,
    pub handshake_wait_seconds: Histogram,
    pub upstream_up: Gauge,
    pub upstream_connect_failures: Counter,
    reports: Family<ResultLabel, Counter>,
    pub directives_applied: Counter,
    pub directive_lapses: Counter,
    pub directive_drains: Counter,
    pub steered_away: Gauge,
    accept_errors: Family<ListenerLabel, Counter>,
    pub admin_connections_refused: Counter,
    handshakes: Family<KindLabel, Counter>,
    ticket_key_reloads: Family<ResultLabel, Counter>,
    pub ticket_keys_loaded: Gauge,
    reconnect_hints: Family<ProtocolLabel, Counter>,
    events_published: Family<EventLabel, Counter>,
    pub events_missed: Counter,
    pub event_consumers: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ballast_sidecar");
        let m = Self {
            connections: Gauge::default(),
            accepted: Counter::default(),
            refused: Family::default(),
            closed: Family::default(),
            handshake_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            reloads: Family::default(),
            certificate_not_after_seconds: Gauge::default(),
            draining: Gauge::default(),
            handshakes_in_flight: Gauge::default(),
            waiting_for_handshake: Gauge::default(),
            handshake_wait_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            upstream_up: Gauge::default(),
            upstream_connect_failures: Counter::default(),
            reports: Family::default(),
            directives_applied: Counter::default(),
            directive_lapses: Counter::default(),
            directive_drains: Counter::default(),
            steered_away: Gauge::default(),
            accept_errors: Family::default(),
            admin_connections_refused: Counter::default(),
            handshakes: Family::default(),
            ticket_key_reloads: Family::default(),
            ticket_keys_loaded: Gauge::default(),
            reconnect_hints: Family::default(),
            events_published: Family::default(),
            events_missed: Counter::default(),
            event_consumers: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Established agent connections",
            m.connections.clone(),
        );
        registry.register(
            "connections_accepted",
            "Agent connections that completed the TLS handshake",
            m.accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused before the TLS handshake, by reason",
            m.refused.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections that ended, by cause",
            m.closed.clone(),
        );
        registry.register(
            "handshake_seconds",
            "Duration of successful TLS handshakes",
            m.handshake_seconds.clone(),
        );
        registry.register(
            "certificate_reloads",
            "Certificate reload attempts, by result (success or the refusal reason)",
            m.reloads.clone(),
        );
        registry.register(
            "certificate_not_after_seconds",
            "Expiry of the served leaf certificate, Unix seconds",
            m.certificate_not_after_seconds.clone(),
        );
        registry.register(
            "draining",
            "1 while a drain (API or shutdown) is closing connections",
            m.draining.clone(),
        );
        registry.register(
            "handshakes_in_flight",
            "TLS handshakes in progress",
            m.handshakes_in_flight.clone(),
        );
        registry.register(
            "waiting_for_handshake",
            "Accepted connections queued for a handshake slot and a token of the handshake rate",
            m.waiting_for_handshake.clone(),
        );
        registry.register(
            "handshake_wait_seconds",
            "Time admitted connections waited in the queue before their handshake began",
            m.handshake_wait_seconds.clone(),
        );
        registry.register(
            "upstream_up",
            "1 when the last attempt to reach the gateway succeeded",
            m.upstream_up.clone(),
        );
        registry.register(
            "upstream_connect_failures",
            "Failed connections to the gateway",
            m.upstream_connect_failures.clone(),
        );
        registry.register(
            "reports",
            "Reports sent to the operator, by result (answered, not_leader, refused, failed)",
            m.reports.clone(),
        );
        registry.register(
            "directives_applied",
            "Operator directives applied (a new id)",
            m.directives_applied.clone(),
        );
        registry.register(
            "directive_lapses",
            "Times the operator's directives lapsed because no answer renewed them",
            m.directive_lapses.clone(),
        );
        registry.register(
            "directive_drains",
            "Paced drains started by an operator directive (a directive renewed by the same id is not counted again)",
            m.directive_drains.clone(),
        );
        registry.register(
            "steered_away",
            "1 while the operator's directive keeps new connections away (readiness fails)",
            m.steered_away.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accepts (typically out of file descriptors), by listener (agents, admin)",
            m.accept_errors.clone(),
        );
        registry.register(
            "admin_connections_refused",
            "Admin API connections closed at once because too many were open",
            m.admin_connections_refused.clone(),
        );
        registry.register(
            "handshakes",
            "Completed TLS handshakes, by kind (full, or resumed from a session ticket)",
            m.handshakes.clone(),
        );
        registry.register(
            "ticket_key_reloads",
            "Session-ticket key file reloads, by result (success, refused)",
            m.ticket_key_reloads.clone(),
        );
        registry.register(
            "ticket_keys_loaded",
            "Session-ticket keys in use (retired, current and next); 0 without --ticket-keys",
            m.ticket_keys_loaded.clone(),
        );
        registry.register(
            "reconnect_hints",
            "Planned closes that told the agent in its own protocol to reconnect elsewhere, by protocol (mqtt5: DISCONNECT 0x9C; websocket: close 1012)",
            m.reconnect_hints.clone(),
        );
        registry.register(
            "events_published",
            "Lifecycle events written to the journal, by event (connected, disconnected, refused)",
            m.events_published.clone(),
        );
        registry.register(
            "events_missed",
            "Lifecycle events that consumers missed because they fell behind the journal (each reported to them as a gap)",
            m.events_missed.clone(),
        );
        registry.register(
            "event_consumers",
            "Consumers streaming GET /events now",
            m.event_consumers.clone(),
        );
        // Pre-create every label value so dashboards see zeros rather than gaps.
        for event in ["connected", "disconnected", "refused"] {
            m.event_published(event);
        }
        for protocol in ["mqtt5", "websocket"] {
            m.reconnect_hint(protocol);
        }
        for kind in ["full", "resumed"] {
            m.handshake(kind);
        }
        for result in ["success", "refused"] {
            m.ticket_key_reload(result);
        }
        for r in Refusal::ALL {
            m.refused(r);
        }
        for c in CloseCause::ALL {
            m.closed(c);
        }
        for listener in ["agents", "admin"] {
            m.accept_errors(listener);
        }
        Self { registry, ..m }
    }

    /// The failed-accept counter of one listener (`agents` or `admin`).
    pub fn accept_errors(&self, listener: &'static str) -> Counter {
        self.accept_errors
            .get_or_create(&ListenerLabel { listener })
            .clone()
    }

    pub fn refused(&self, reason: Refusal) -> Counter {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .clone()
    }

    pub fn closed(&self, cause: CloseCause) -> Counter {
        self.closed
            .get_or_create(&CauseLabel {
                cause: cause.as_str(),
            })
            .clone()
    }

    /// `result`: `answered`, `not_leader`, `refused` or `failed`.
    pub fn report(&self, result: &'static str) -> Counter {
        self.reports.get_or_create(&ResultLabel { result }).clone()
    }

    /// `result` is `success` or a [`ballast_certs::CertificateError::metric_label`].
    pub fn reload(&self, result: &'static str) -> Counter {
        self.reloads.get_or_create(&ResultLabel { result }).clone()
    }

    /// `kind`: `full` or `resumed`.
    pub fn handshake(&self, kind: &'static str) -> Counter {
        self.handshakes.get_or_create(&KindLabel { kind }).clone()
    }

    /// `protocol`: `mqtt5` or `websocket`.
    pub fn reconnect_hint(&self, protocol: &'static str) -> Counter {
        self.reconnect_hints
            .get_or_create(&ProtocolLabel { protocol })
            .clone()
    }

    pub fn event_published(&self, event: &'static str) -> Counter {
        self.events_published
            .get_or_create(&EventLabel { event })
            .clone()
    }

    /// `result`: `success` or `refused`.
    pub fn ticket_key_reload(&self, result: &'static str) -> Counter {
        self.ticket_key_reloads
            .get_or_create(&ResultLabel { result })
            .clone()
    }

    /// All reload results seen so far, for `/status`.
    pub fn reload_counts(&self) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        for result in [
            "success",
            "unreadable",
            "malformed",
            "bad_key",
            "key_mismatch",
            "expired",
            "not_yet_valid",
        ] {
            let n = self.reload(result).get();
            if n > 0 || result == "success" {
                out.push((result, n));
            }
        }
        out
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_carries_the_documented_names() {
        let m = Metrics::new();
        m.refused(Refusal::MaxConnections).inc();
        m.closed(CloseCause::Drain).inc_by(3);
        m.reload("success").inc();
        let text = m.encode();
        for name in [
            "ballast_sidecar_connections ",
            "ballast_sidecar_connections_accepted_total",
            "ballast_sidecar_connections_refused_total{reason=\"max_connections\"} 1",
            "ballast_sidecar_connections_closed_total{cause=\"drain\"} 3",
            "ballast_sidecar_handshake_seconds_bucket",
            "ballast_sidecar_certificate_reloads_total{result=\"success\"} 1",
            "ballast_sidecar_certificate_not_after_seconds",
            "ballast_sidecar_draining",
        ] {
            assert!(text.contains(name), "missing {name} in:\n{text}");
        }
    }
}
