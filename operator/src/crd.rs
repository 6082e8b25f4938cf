//! The `PresenceCluster` custom resource (`ballast.dev/v1alpha1`).
//!
//! Every `///` comment on a field becomes its description in the CRD, which is what
//! `kubectl explain presencecluster.spec…` prints: they are written for the platform engineer
//! reading them there. Defaults live in the schema (so `kubectl get -o yaml` shows what is in
//! force); rules a plain schema cannot say are CEL rules checked by the apiserver.

// Each `printcolumn(...)` repeats `type_ = ...`; clippy reads the repeats as duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use ballast_contract::duration::{parse_duration, DURATION_PATTERN};
use k8s_openapi::api::core::v1::{PodTemplateSpec, ResourceRequirements};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A fleet of presence gateways whose TLS is terminated by the Ballast sidecar, so that
/// certificate renewals and restarts never take agents offline.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ballast.dev",
    version = "v1alpha1",
    kind = "PresenceCluster",
    plural = "presenceclusters",
    shortname = "prc",
    category = "ballast",
    namespaced,
    status = "PresenceClusterStatus",
    derive = "PartialEq",
    doc = "A fleet of presence gateways with the Ballast sidecar injected: certificate rotations and restarts happen without agents going offline.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.ready"),
    printcolumn(
        name = "Connections",
        type_ = "integer",
        json_path = ".status.connections"
    ),
    printcolumn(name = "Imbalance", type_ = "number", json_path = ".status.imbalance"),
    printcolumn(
        name = "Cert-Expiry",
        type_ = "string",
        json_path = ".status.certificate.notAfter"
    ),
    printcolumn(name = "Observed", type_ = "date", json_path = ".status.observedAt"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.migration.maxUnavailable <= self.replicas || self.replicas == 0").message("migration.maxUnavailable must not exceed replicas"))]
#[serde(rename_all = "camelCase")]
pub struct PresenceClusterSpec {
    /// Number of gateway pods.
    #[serde(default = "defaults::replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// Pod template of your gateway, as in a Deployment. Ballast adds its sidecar container,
    /// the TLS volume and the labels it needs; your containers are left as they are. One
    /// container must be the gateway (see `gateway.container`).
    #[schemars(schema_with = "preserve_object")]
    pub template: PodTemplateSpec,

    /// Where the gateway listens for the plain-TCP connections the sidecar forwards.
    #[serde(default)]
    pub gateway: GatewaySpec,

    /// What the agents connect to.
    #[serde(default)]
    pub listener: ListenerSpec,

    /// The certificate agents see and how its renewals are rolled out.
    pub tls: TlsSpec,

    /// Per-pod limits the sidecar enforces before any TLS work (admission control).
    #[serde(default)]
    pub capacity: CapacitySpec,

    /// How fast connections may be moved during rotations and restarts.
    #[serde(default)]
    pub migration: MigrationSpec,

    /// Moving connections back onto under-loaded pods after a restart or scale-up.
    #[serde(default)]
    pub rebalance: RebalanceSpec,

    /// What the agents' monitoring calls offline.
    #[serde(default)]
    pub presence: PresenceSpec,

    /// The injected sidecar container.
    #[serde(default)]
    pub sidecar: SidecarSpec,
}

/// The user's gateway container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Port the gateway listens on inside the pod (plain TCP).
    #[serde(default = "defaults::gateway_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Name of the gateway container in the template. Empty: the first container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// The agents' side: TLS port and the Service in front of the pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenerSpec {
    /// TLS port the sidecar listens on, and the Service's port.
    #[serde(default = "defaults::listener_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The client-facing Service.
    #[serde(default)]
    pub service: ServiceSpec,
    /// The agents' protocol, for reconnect hints on a planned close: `tcp` (TLS close_notify
    /// alone), `mqtt` (MQTT 5 agents first get DISCONNECT with reason 0x9C, use another
    /// server), `websocket` (a close frame with code 1012, service restart), `auto` (told apart
    /// by each agent's first bytes: an MQTT CONNECT or an HTTP GET; anything else is tcp).
    #[serde(default)]
    pub protocol: AgentProtocol,
    /// With `protocol: mqtt` or `auto`: the MQTT 5 Server Reference the sidecar's DISCONNECT
    /// 0x9C carries on a planned close, where agents should reconnect (e.g. another region's
    /// `host:port`). Unset: agents reconnect to the address they used, landing on another pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub mqtt_server_reference: Option<String>,
}

/// The agents' protocol on the listener.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum AgentProtocol {
    #[default]
    Tcp,
    Mqtt,
    Websocket,
    Auto,
}

impl AgentProtocol {
    /// The sidecar's `--protocol` value.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Mqtt => "mqtt",
            Self::Websocket => "websocket",
            Self::Auto => "auto",
        }
    }
}

/// The client-facing Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations for the Service (for example your cloud load balancer's settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Kubernetes Service type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    #[default]
    LoadBalancer,
}

/// The serving certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Name of the `kubernetes.io/tls` Secret (keys `tls.crt`, `tls.key`) in this namespace,
    /// typically written and renewed by cert-manager.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub secret_name: String,
    /// How renewals reach the gateways.
    #[serde(default)]
    pub rotation: RotationSpec,
    /// TLS session tickets whose keys every pod of this cluster shares, so that an agent
    /// moved to another pod resumes its session there instead of paying a full handshake.
    #[serde(default)]
    pub session_tickets: SessionTicketsSpec,
}

/// Shared session-ticket keys: the operator creates them in the Secret
/// `<name>-ticket-keys`, rotates them, and every sidecar reloads them like the certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionTicketsSpec {
    /// Issue and accept shared session tickets (`false`: every reconnect is a full handshake
    /// on another pod; the same pod still resumes from its own cache).
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// How long one key encrypts new tickets. The next key is published one interval ahead
    /// and a retired key still decrypts for one interval more, which is also the tickets'
    /// lifetime. At least `5m` (a Secret takes up to a minute or two to reach every pod).
    #[serde(default = "defaults::ticket_rotation")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "duration(self) >= duration('5m')",
        "message": "rotationInterval must be at least 5m: the next key must reach every pod before it encrypts"
    }]))]
    pub rotation_interval: String,
}

impl Default for SessionTicketsSpec {
    fn default() -> Self {
        Self {
            enabled: defaults::yes(),
            rotation_interval: defaults::ticket_rotation(),
        }
    }
}

impl SessionTicketsSpec {
    /// The rotation interval in seconds, never below the minimum (the schema refuses less;
    /// this keeps a spec that bypassed it safe).
    pub fn rotation_seconds(&self) -> i64 {
        let interval = ballast_contract::duration::parse_duration(&self.rotation_interval)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        interval.max(ballast_contract::ticket_keys::MIN_ROTATION_SECONDS)
    }
}

/// How a renewed certificate is rolled out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RotationSpec {
    /// `HotReload`: the sidecars load the renewed Secret in place; nobody is disconnected.
    /// `RollingRestart`: for gateways that must restart; pods are drained one by one within
    /// the migration budget.
    #[serde(default)]
    pub strategy: RotationStrategy,
    /// Optionally re-handshake connections still on the old certificate, spread over this
    /// window, so none of them outlives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect_existing: Option<ReconnectExisting>,
}

/// Rotation strategy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum RotationStrategy {
    #[default]
    HotReload,
    RollingRestart,
}

/// Gradual re-handshake of old-certificate connections.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReconnectExisting {
    /// Window to spread the reconnects over, e.g. `6h`.
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub within: String,
}

/// Per-pod limits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapacitySpec {
    /// Connections a pod holds at most; beyond it the sidecar refuses before the handshake.
    #[serde(default = "defaults::max_connections")]
    #[schemars(range(min = 1))]
    pub max_connections_per_pod: i32,
    /// New TLS handshakes a pod accepts per second; the excess waits its turn (up to half the
    /// sidecar's handshake timeout), beyond that it is refused cheaply and retried.
    #[serde(default = "defaults::max_handshakes")]
    #[schemars(range(min = 1))]
    pub max_handshakes_per_second_per_pod: i32,
}

/// Budget for moving connections.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationSpec {
    /// Fleet-wide reconnects per second that planned closes may cause.
    #[serde(default = "defaults::max_reconnects")]
    #[schemars(range(min = 1))]
    pub max_reconnects_per_second: i32,
    /// Pods that may be draining or restarting at once (also the PodDisruptionBudget).
    #[serde(default = "defaults::max_unavailable")]
    #[schemars(range(min = 1))]
    pub max_unavailable: i32,
    /// Longest a pod's drain may take; the pod's termination grace period is set above it.
    #[serde(default = "defaults::drain_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub drain_timeout: String,
}

impl MigrationSpec {
    /// The drain timeout in whole seconds (the schema's pattern guarantees it parses; an
    /// unparseable value from an older schema falls back to the default, 10 minutes).
    pub fn drain_timeout_seconds(&self) -> i64 {
        parse_duration(&self.drain_timeout)
            .map(|d| d.as_secs().max(1) as i64)
            .unwrap_or(600)
    }
}

/// Rebalancing after restarts and scale-ups.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebalanceSpec {
    /// Move connections from over-loaded to under-loaded pods.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// A pod counts as over-loaded above mean × (1 + tolerancePercent/100).
    #[serde(default = "defaults::tolerance")]
    #[schemars(range(min = 0, max = 100))]
    pub tolerance_percent: i32,
}

/// The agents' offline rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresenceSpec {
    /// An agent disconnected longer than this shows as offline; no planned gap may come near it.
    #[serde(default = "defaults::offline_threshold")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub offline_threshold: String,
    /// Lifecycle events for the presence backend: every sidecar streams connected,
    /// disconnected (with its cause; a planned one says until when the agent is expected
    /// back: `offlineThreshold` after the close) and refused, on `GET /events` of its admin
    /// port, authenticated with the token in Secret `<name>-events-token`.
    #[serde(default)]
    pub events: EventsSpec,
}

/// The sidecars' lifecycle-event streams.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventsSpec {
    /// Stream events (off by default: nothing is kept or serialized).
    #[serde(default)]
    pub enabled: bool,
    /// Events each sidecar keeps for its consumers (about 300 bytes each). A consumer that
    /// falls further behind loses the oldest and is told how many (a `gap` event).
    #[serde(default = "defaults::events_buffer")]
    #[schemars(range(min = 16, max = 1_000_000))]
    pub buffer: i32,
}

/// The injected sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Sidecar image. Unset: the operator's own `--sidecar-image` (the chart's
    /// `sidecar.image`, by default the sidecar of the operator's own version), so upgrading
    /// the operator upgrades the sidecars at their next restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Admin port (/readyz, /metrics, /status, /drain).
    #[serde(default = "defaults::admin_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub admin_port: i32,
    /// Resource requests and limits of the sidecar container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_object")]
    pub resources: Option<ResourceRequirements>,
    /// Close an agent connection that moved no byte either way for this long (`0`: never).
    /// Presence agents heartbeat: a few heartbeat periods sheds dead peers that never sent a
    /// FIN, with close_notify, so a live agent would reconnect at once.
    #[serde(default = "defaults::idle_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub idle_timeout: String,
    /// Longest a write may wait for a peer (agent or gateway) that stopped reading before the
    /// connection is cut; it also bounds how long a drain waits on a stalled agent. Above zero.
    #[serde(default = "defaults::write_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "!self.matches('^(0|(0+([.]0+)?(ms|s|m|h))+)$')",
        "message": "writeTimeout must be above zero: a zero deadline would cut every connection at its first write"
    }]))]
    pub write_timeout: String,
}

/// Where the fleet is, in one word.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum Phase {
    #[default]
    Pending,
    Stable,
    Rotating,
    /// The spec changed and some pods still run the previous revision.
    Updating,
    Draining,
    Rebalancing,
    Degraded,
}

/// Observed state, written by the operator only.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PresenceClusterStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub phase: Phase,
    /// Ready, CertificateServed, Balanced, Migrating, UpToDate, SpecHonored.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Pods that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Pods ready to take agents.
    #[serde(default)]
    pub ready_replicas: i32,
    /// `ready/desired`, for `kubectl get`.
    #[serde(default)]
    pub ready: String,
    /// Label selector of the pods (for the scale subresource and `kubectl get pods -l`).
    #[serde(default)]
    pub selector: String,
    /// Agent connections across all pods, as the sidecars report them (pods without a fresh
    /// report are not counted: see `reportingPods`).
    #[serde(default)]
    pub connections: i64,
    /// Pods whose sidecar reported within the last few seconds.
    #[serde(default)]
    pub reporting_pods: i32,
    /// Pods running the StatefulSet's current revision (the spec as it is now). The
    /// StatefulSet is `OnDelete`: a spec change reaches a pod only when the pod is replaced.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Each pod as its sidecar reports it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodStatus>,
    /// The migration in progress, or the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationStatus>,
    /// Busiest pod's connections ÷ mean (1.0 is perfectly balanced).
    #[serde(default)]
    pub imbalance: f64,
    /// The certificate in the Secret and how many pods serve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,
    /// The adaptive budget in force: planned reconnects per second the fleet may take now,
    /// at most `migration.maxReconnectsPerSecond`, lowered when pods report slow or refused
    /// handshakes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect_budget_per_second: Option<i64>,
    /// What a rotation or rebalance is waiting for, if anything (also an Event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// When the leading operator last confirmed this status (RFC 3339): on every change, when
    /// it takes the lead, and at least every 30 s otherwise. Older than a minute, no operator
    /// is observing the cluster and every figure here is as of then (`kubectl get prc` shows
    /// its age in the Observed column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<String>,
    /// The planner's memory (opaque JSON): a rollout, rebalance or re-handshake window under
    /// way survives an operator restart or failover through it. Not for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planner: Option<String>,
}

/// One gateway pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub name: String,
    /// Connections the sidecar holds; absent without a fresh report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<i64>,
    /// Serving, Steered, Draining, Terminating, NotReady or Silent (no fresh report).
    pub state: String,
    /// First 12 hex digits of the served certificate's SHA-256.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub certificate: String,
    /// Runs the StatefulSet's current revision.
    pub up_to_date: bool,
    /// While it drains: when its drain window ends (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_until: Option<String>,
    /// While it drains: until when a presence backend should hold "offline" for the agents
    /// of this pod, the drain window's end plus `presence.offlineThreshold` (RFC 3339). Also
    /// in ConfigMap `<name>-planned-disconnects`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_offline_until: Option<String>,
}

/// A migration: connections moved on purpose.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    /// What moves them: `Drain` (pods draining: deleted, scaled down, or told to).
    pub kind: String,
    /// RFC 3339.
    pub started: String,
    /// RFC 3339; absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// Pods that finished draining / pods that drained.
    pub pods_done: i32,
    pub pods_total: i32,
    /// Agents back on another pod after a planned close (fleet total regained).
    pub connections_moved: i64,
    /// Connections closed on purpose, as the sidecars report.
    pub planned_closes: i64,
    /// Connections lost without a plan during the migration.
    pub unplanned_closes: i64,
    /// Fleet-wide reconnects per second planned closes may cause.
    pub budget_per_second: i64,
    /// Fleet connections when it started (what "back" means).
    pub connections_before: i64,
}

/// The Secret's certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// SHA-256 of the leaf (hex), as the sidecars report it in `/status`.
    pub sha256: String,
    /// Expiry of the leaf, RFC 3339.
    pub not_after: String,
    /// `served/ready pods`: pods whose sidecar serves this certificate.
    pub served: String,
}

/// A `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// An object schema the apiserver stores as given (pod templates are validated again when
/// the StatefulSet built from them is applied, and their schema would triple the CRD's size).
fn preserve_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

mod defaults {
    pub fn replicas() -> i32 {
        3
    }
    pub fn gateway_port() -> i32 {
        8080
    }
    pub fn listener_port() -> i32 {
        8443
    }
    pub fn admin_port() -> i32 {
        9901
    }
    pub fn max_connections() -> i32 {
        50_000
    }
    pub fn max_handshakes() -> i32 {
        500
    }
    pub fn max_reconnects() -> i32 {
        2_000
    }
    pub fn max_unavailable() -> i32 {
        1
    }
    pub fn drain_timeout() -> String {
        "10m".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn tolerance() -> i32 {
        10
    }
    pub fn offline_threshold() -> String {
        "60s".into()
    }
    pub fn ticket_rotation() -> String {
        "6h".into()
    }
    pub fn idle_timeout() -> String {
        "0".into()
    }
    pub fn write_timeout() -> String {
        "30s".into()
    }
    pub fn events_buffer() -> i32 {
        8_192
    }
}

macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                serde_json::from_value(serde_json::json!({})).expect("every field has a default")
            }
        }
    )*};
}
default_from_serde!(
    GatewaySpec,
    ListenerSpec,
    CapacitySpec,
    MigrationSpec,
    RebalanceSpec,
    PresenceSpec,
    EventsSpec,
    SidecarSpec
);

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn every_duration_field_carries_the_contracts_pattern() {
        let crd = serde_json::to_value(PresenceCluster::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"];
        for field in [
            &spec["migration"]["properties"]["drainTimeout"],
            &spec["presence"]["properties"]["offlineThreshold"],
            &spec["tls"]["properties"]["rotation"]["properties"]["reconnectExisting"]["properties"]
                ["within"],
        ] {
            assert_eq!(field["pattern"], DURATION_PATTERN, "{field}");
        }
    }

    #[test]
    fn drain_timeout_reads_the_one_grammar() {
        let mut migration = MigrationSpec::default();
        assert_eq!(migration.drain_timeout_seconds(), 600);
        migration.drain_timeout = "1m30s".into();
        assert_eq!(migration.drain_timeout_seconds(), 90);
        migration.drain_timeout = "0".into();
        assert_eq!(migration.drain_timeout_seconds(), 1);
        migration.drain_timeout = "90".into();
        assert_eq!(
            migration.drain_timeout_seconds(),
            600,
            "a bare number is refused"
        );
    }
}
