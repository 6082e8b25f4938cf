//! Build: every object the operator owns, computed from the `PresenceCluster` alone.
//!
//! No client, no I/O: the output is plain data, unit-tested as such, and applied with
//! server-side apply by [`crate::reconcile`]. The gateway pods come from a StatefulSet with
//! `updateStrategy: OnDelete`, so a spec or certificate change never restarts a pod by itself:
//! the operator alone decides when a pod goes, after draining it (stable pod names also make
//! per-pod reports and drains easy to follow).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapProjection, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, ObjectFieldSelector, PodSecurityContext,
    PodSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecretVolumeSource, SecurityContext, Service, ServiceAccountTokenProjection, ServicePort,
    ServiceSpec as CoreServiceSpec, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{PresenceCluster, RotationStrategy, ServiceType};

/// Name of the injected container.
pub const SIDECAR_CONTAINER: &str = "ballast-sidecar";
/// Name of the injected TLS volume.
pub const TLS_VOLUME: &str = "ballast-tls";
/// Where the sidecar finds the Secret.
pub const TLS_MOUNT: &str = "/etc/ballast/tls";
/// The sidecar's user and group: not root, and the pod's fsGroup unless the template has one.
pub const SIDECAR_UID: i64 = 65532;
/// Label on every owned object and pod: the PresenceCluster's name.
pub const CLUSTER_LABEL: &str = "ballast.dev/presencecluster";
/// Extra time beyond the drain window before the kubelet kills a terminating pod.
const GRACE_MARGIN_SECONDS: i64 = 30;

/// Where the pod's projected report token, the operator's CA and the admin token are mounted.
pub const REPORT_MOUNT: &str = "/var/run/secrets/ballast";
pub const ADMIN_MOUNT: &str = "/etc/ballast/admin";
/// Projected token lifetime; the kubelet renews it at 80%.
const TOKEN_SECONDS: i64 = 3600;

/// How pods reach each other's addresses; a property of the cluster, not of one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Environment {
    /// Bind the sidecar to the pod IP (and reach the gateway there) instead of 0.0.0.0 and
    /// 127.0.0.1: needed where pods share one network namespace (the e2e process kubelet).
    pub bind_pod_ip: bool,
    /// Where sidecars report; `None`: they report to no one and run on their own limits.
    pub report: Option<ReportWiring>,
    /// The sidecar image for clusters that do not name one (`--sidecar-image`).
    pub sidecar_image: String,
}

impl Default for Environment {
    fn default() -> Self {
        Self {
            bind_pod_ip: false,
            report: None,
            sidecar_image: default_sidecar_image(),
        }
    }
}

/// The sidecar of this operator's own version, under the project's published name.
pub fn default_sidecar_image() -> String {
    format!("ballast/sidecar:{}", env!("CARGO_PKG_VERSION"))
}

/// The report channel as the sidecars see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportWiring {
    /// `host:port` of the operator's report Service.
    pub address: String,
    /// The name its certificate carries.
    pub server_name: String,
    /// The CA bundle sidecars verify it with (public).
    pub ca_pem: String,
}

/// Name of the ConfigMap holding the operator's CA beside a cluster.
pub fn operator_ca_name(name: &str) -> String {
    format!("{name}-operator-ca")
}

/// Name of the Secret holding a cluster's admin token (for people's `/drain`).
pub fn admin_token_name(name: &str) -> String {
    format!("{name}-admin-token")
}

/// Name of the Secret holding a cluster's shared session-ticket keys.
pub fn ticket_keys_name(name: &str) -> String {
    format!("{name}-ticket-keys")
}

/// Name of the Secret holding the bearer token of a cluster's event streams (`GET /events`),
/// for the presence backend: read-only, unlike the admin token.
pub fn events_token_name(name: &str) -> String {
    format!("{name}-events-token")
}

/// Where the sidecar finds the events token.
pub const EVENTS_MOUNT: &str = "/etc/ballast/events";
const EVENTS_VOLUME: &str = "ballast-events";

/// Where the sidecar finds the ticket keys.
pub const TICKETS_MOUNT: &str = "/etc/ballast/tickets";
const TICKETS_VOLUME: &str = "ballast-tickets";

/// Everything one PresenceCluster owns.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub statefulset: StatefulSet,
    pub service: Service,
    pub headless: Service,
    pub pdb: PodDisruptionBudget,
    /// The operator's CA, when sidecars report.
    pub operator_ca: Option<ConfigMap>,
}

/// Labels that select this cluster's pods.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(CLUSTER_LABEL.to_owned(), name.to_owned())])
}

/// `kubectl get pods -l …` form of [`selector_labels`].
pub fn selector_string(name: &str) -> String {
    format!("{CLUSTER_LABEL}={name}")
}

fn common_labels(name: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name);
    labels.insert("app.kubernetes.io/name".into(), "ballast-gateway".into());
    labels.insert("app.kubernetes.io/instance".into(), name.into());
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "ballast-operator".into(),
    );
    labels
}

fn owned_meta(prc: &PresenceCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: prc.namespace(),
        labels: Some(common_labels(&prc.name_any())),
        owner_references: Some(vec![owner(prc)]),
        ..ObjectMeta::default()
    }
}

fn owner(prc: &PresenceCluster) -> OwnerReference {
    prc.controller_owner_ref(&())
        .expect("a PresenceCluster read from the API has a name and uid")
}

/// Name of the headless Service that gives pods stable DNS names.
pub fn headless_name(name: &str) -> String {
    format!("{name}-pods")
}

/// Builds every owned object. `gateway_container` is the index validation found.
pub fn build(prc: &PresenceCluster, env: &Environment) -> Workload {
    let name = prc.name_any();
    Workload {
        statefulset: statefulset(prc, &name, env),
        service: service(prc, &name),
        headless: headless(prc, &name),
        pdb: pdb(prc, &name),
        operator_ca: env.report.as_ref().map(|r| ConfigMap {
            metadata: owned_meta(prc, operator_ca_name(&name)),
            data: Some(BTreeMap::from([("ca.crt".to_owned(), r.ca_pem.clone())])),
            ..ConfigMap::default()
        }),
    }
}

/// Pod-template annotation naming the certificate the pods were started with, under
/// `tls.rotation.strategy: RollingRestart`: a renewal changes it, which makes every pod out
/// of date, and the planner rolls them, drained, one budgeted step at a time.
pub const CERTIFICATE_ANNOTATION: &str = "ballast.dev/certificate-sha256";

/// Under RollingRestart, ties the pod template to the certificate served (see
/// [`CERTIFICATE_ANNOTATION`]); under HotReload a renewal changes nothing in the template.
pub fn restart_on_renewal(prc: &PresenceCluster, statefulset: &mut StatefulSet, sha256: &str) {
    if prc.spec.tls.rotation.strategy != RotationStrategy::RollingRestart {
        return;
    }
    statefulset
        .spec
        .template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(CERTIFICATE_ANNOTATION.into(), sha256.into());
}

fn statefulset(prc: &PresenceCluster, name: &str, env: &Environment) -> StatefulSet {
    let spec = &prc.spec;
    let mut template = spec.template.clone();
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .extend(common_labels(name));
    let pod = template.spec.get_or_insert_with(PodSpec::default);
    let drain_seconds = spec.migration.drain_timeout_seconds();
    let gateway = match &spec.gateway.container {
        Some(name) => pod.containers.iter_mut().find(|c| &c.name == name),
        None => pod.containers.first_mut(),
    };
    if let Some(gateway) = gateway {
        outlive_the_drain(gateway, spec.sidecar.admin_port);
    }
    pod.containers.push(sidecar_container(prc, env));
    // The Secret volumes are mode 0440, owned by root and by the pod's fsGroup: the sidecar
    // (uid 65532, never root) reads them as a member of that group. The kubelet adds the
    // fsGroup to every container's groups, so a template's own fsGroup serves as well.
    pod.security_context
        .get_or_insert_with(PodSecurityContext::default)
        .fs_group
        .get_or_insert(SIDECAR_UID);
    let volumes = pod.volumes.get_or_insert_with(Vec::new);
    volumes.push(secret_volume(TLS_VOLUME, &spec.tls.secret_name));
    volumes.push(secret_volume(ADMIN_VOLUME, &admin_token_name(name)));
    if env.report.is_some() {
        volumes.push(report_volume(name));
    }
    if spec.tls.session_tickets.enabled {
        volumes.push(secret_volume(TICKETS_VOLUME, &ticket_keys_name(name)));
    }
    if spec.presence.events.enabled {
        volumes.push(secret_volume(EVENTS_VOLUME, &events_token_name(name)));
    }
    // The kubelet must wait for the whole drain before killing anything.
    let needed = drain_seconds + GRACE_MARGIN_SECONDS;
    pod.termination_grace_period_seconds = Some(
        pod.termination_grace_period_seconds
            .unwrap_or(0)
            .max(needed),
    );

    StatefulSet {
        metadata: owned_meta(prc, name.to_owned()),
        spec: StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(headless_name(name)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(name)),
                ..LabelSelector::default()
            },
            // Pods start and stop independently: scaling need not wait for each one in turn.
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..StatefulSetUpdateStrategy::default()
            }),
            template,
            ..StatefulSetSpec::default()
        },
        status: None,
    }
}

/// Kubernetes signals every container of a terminating pod at once, but the gateway must keep
/// serving while the sidecar drains its agents onto other pods. Unless the user set their own
/// preStop hook, the gateway's SIGTERM waits on the sidecar's `GET /drained`, which answers
/// once the sidecar holds no agent (or has exited, or its drain window is over): the gateway
/// stops as soon as its agents have moved. A fixed sleep of the whole window here made every
/// planned restart take `drainTimeout` even when its drain took two seconds.
fn outlive_the_drain(gateway: &mut Container, admin_port: i32) {
    let lifecycle = gateway.lifecycle.get_or_insert_with(Lifecycle::default);
    if lifecycle.pre_stop.is_none() {
        lifecycle.pre_stop = Some(LifecycleHandler {
            http_get: Some(HTTPGetAction {
                path: Some("/drained".into()),
                port: IntOrString::Int(admin_port),
                ..HTTPGetAction::default()
            }),
            ..LifecycleHandler::default()
        });
    }
}

/// A Secret mounted as files readable by owner and group only (the sidecar reads them through
/// the pod's fsGroup).
fn secret_volume(volume: &str, secret: &str) -> Volume {
    Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

const ADMIN_VOLUME: &str = "ballast-admin";
const REPORT_VOLUME: &str = "ballast-report";

/// The pod's report credentials: a token the kubelet mints for this pod and our audience
/// (bound to the pod, so it dies with it), and the CA the operator is verified with.
fn report_volume(name: &str) -> Volume {
    Volume {
        name: REPORT_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o440),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(ballast_contract::TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(TOKEN_SECONDS),
                        path: "token".into(),
                        ..ServiceAccountTokenProjection::default()
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: operator_ca_name(name),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            ..KeyToPath::default()
                        }]),
                        ..ConfigMapProjection::default()
                    }),
                    ..VolumeProjection::default()
                },
            ]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn sidecar_container(prc: &PresenceCluster, env: &Environment) -> Container {
    let spec = &prc.spec;
    let bind = if env.bind_pod_ip {
        "$(POD_IP)"
    } else {
        "0.0.0.0"
    };
    let upstream = if env.bind_pod_ip {
        "$(POD_IP)"
    } else {
        "127.0.0.1"
    };
    let admin_port = spec.sidecar.admin_port;
    let drain = spec.migration.drain_timeout_seconds();
    let mut args = vec![
        format!("--listen={bind}:{}", spec.listener.port),
        format!("--admin={bind}:{admin_port}"),
        format!("--upstream={upstream}:{}", spec.gateway.port),
        format!("--cert={TLS_MOUNT}/tls.crt"),
        format!("--key={TLS_MOUNT}/tls.key"),
        // A renewal must chain to the Secret's CA (absent or empty: no such check).
        format!("--ca={TLS_MOUNT}/ca.crt"),
        format!(
            "--max-connections={}",
            spec.capacity.max_connections_per_pod
        ),
        format!(
            "--max-handshakes-per-second={}",
            spec.capacity.max_handshakes_per_second_per_pod
        ),
        format!("--shutdown-drain={drain}s"),
        format!("--idle-timeout={}", spec.sidecar.idle_timeout),
        format!("--write-timeout={}", spec.sidecar.write_timeout),
        format!("--protocol={}", spec.listener.protocol.flag()),
        format!("--admin-token-file={ADMIN_MOUNT}/token"),
        "--log-format=json".into(),
    ];
    let mut mounts = vec![
        VolumeMount {
            name: TLS_VOLUME.into(),
            mount_path: TLS_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: ADMIN_VOLUME.into(),
            mount_path: ADMIN_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ];
    if spec.tls.session_tickets.enabled {
        args.push(format!(
            "--ticket-keys={TICKETS_MOUNT}/{}",
            ballast_contract::ticket_keys::FILE_NAME
        ));
        mounts.push(VolumeMount {
            name: TICKETS_VOLUME.into(),
            mount_path: TICKETS_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    if let Some(reference) = &spec.listener.mqtt_server_reference {
        args.push(format!("--mqtt-server-reference={reference}"));
    }
    if spec.presence.events.enabled {
        args.extend([
            format!("--events-buffer={}", spec.presence.events.buffer),
            format!("--events-token-file={EVENTS_MOUNT}/token"),
            format!(
                "--planned-reconnect-window={}",
                spec.presence.offline_threshold
            ),
        ]);
        mounts.push(VolumeMount {
            name: EVENTS_VOLUME.into(),
            mount_path: EVENTS_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    if let Some(report) = &env.report {
        args.extend([
            format!("--operator={}", report.address),
            format!("--operator-server-name={}", report.server_name),
            format!("--operator-ca={REPORT_MOUNT}/ca.crt"),
            format!("--operator-token-file={REPORT_MOUNT}/token"),
        ]);
        mounts.push(VolumeMount {
            name: REPORT_VOLUME.into(),
            mount_path: REPORT_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let http_probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    Container {
        name: SIDECAR_CONTAINER.into(),
        image: Some(
            spec.sidecar
                .image
                .clone()
                .unwrap_or_else(|| env.sidecar_image.clone()),
        ),
        args: Some(args),
        env: Some(vec![
            downward("POD_IP", "status.podIP"),
            // Named in every lifecycle event.
            downward("BALLAST_POD_NAME", "metadata.name"),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("tls".into()),
                container_port: spec.listener.port,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("admin".into()),
                container_port: admin_port,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(http_probe("/readyz", 2, 1)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        volume_mounts: Some(mounts),
        resources: Some(
            spec.sidecar
                .resources
                .clone()
                .unwrap_or_else(default_resources),
        ),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(SIDECAR_UID),
            run_as_group: Some(SIDECAR_UID),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// An environment variable from the pod's own fields (the downward API).
fn downward(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Requests sized for ~10k idle agents (about 12 KiB each, see the benchmark); no CPU limit,
/// since throttling during a reconnect storm is exactly what must not happen.
fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("100m".into())),
            ("memory".into(), Quantity("192Mi".into())),
        ])),
        limits: Some(BTreeMap::from([("memory".into(), Quantity("1Gi".into()))])),
        ..ResourceRequirements::default()
    }
}

fn service(prc: &PresenceCluster, name: &str) -> Service {
    let svc = &prc.spec.listener.service;
    let mut meta = owned_meta(prc, name.to_owned());
    if !svc.annotations.is_empty() {
        meta.annotations = Some(svc.annotations.clone());
    }
    let type_ = match svc.type_ {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    Service {
        metadata: meta,
        spec: Some(CoreServiceSpec {
            type_: Some(type_.into()),
            selector: Some(selector_labels(name)),
            ports: Some(vec![ServicePort {
                name: Some("tls".into()),
                port: prc.spec.listener.port,
                target_port: Some(IntOrString::String("tls".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..CoreServiceSpec::default()
        }),
        status: None,
    }
}

fn headless(prc: &PresenceCluster, name: &str) -> Service {
    Service {
        metadata: owned_meta(prc, headless_name(name)),
        spec: Some(CoreServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(name)),
            // Every pod keeps a stable DNS name, ready or not (people debugging a draining pod).
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![
                ServicePort {
                    name: Some("tls".into()),
                    port: prc.spec.listener.port,
                    target_port: Some(IntOrString::String("tls".into())),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("admin".into()),
                    port: prc.spec.sidecar.admin_port,
                    target_port: Some(IntOrString::String("admin".into())),
                    ..ServicePort::default()
                },
            ]),
            ..CoreServiceSpec::default()
        }),
        status: None,
    }
}

fn pdb(prc: &PresenceCluster, name: &str) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owned_meta(prc, name.to_owned()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(prc.spec.migration.max_unavailable)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::example;

    fn sidecar(w: &Workload) -> Container {
        let pod = w.statefulset.spec.template.spec.as_ref().unwrap();
        pod.containers
            .iter()
            .find(|c| c.name == SIDECAR_CONTAINER)
            .cloned()
            .expect("sidecar injected")
    }

    #[test]
    fn the_sidecar_is_injected_next_to_the_users_containers_with_args_from_the_spec() {
        let w = build(&example(), &Environment::default());
        let pod = w.statefulset.spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.containers.len(), 2);
        assert_eq!(
            pod.containers[0].name, "gateway",
            "user's container untouched, first"
        );
        let c = sidecar(&w);
        let args = c.args.unwrap();
        for expected in [
            "--listen=0.0.0.0:8443",
            "--upstream=127.0.0.1:8080",
            "--cert=/etc/ballast/tls/tls.crt",
            "--max-connections=50000",
            "--max-handshakes-per-second=500",
            "--shutdown-drain=600s",
            "--idle-timeout=0",
            "--write-timeout=30s",
            "--protocol=tcp",
        ] {
            assert!(
                args.contains(&expected.to_owned()),
                "{expected} not in {args:?}"
            );
        }
        let probe = c.readiness_probe.unwrap().http_get.unwrap();
        assert_eq!(probe.path.as_deref(), Some("/readyz"));
        assert_eq!(probe.port, IntOrString::String("admin".into()));
        let mount = &c.volume_mounts.unwrap()[0];
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            (TLS_MOUNT, Some(true))
        );
        let volume = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == TLS_VOLUME)
            .unwrap();
        assert_eq!(
            volume.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("agents-tls")
        );
    }

    #[test]
    fn the_sidecar_image_is_the_operators_own_version_unless_the_cluster_names_one() {
        let image = |prc: &PresenceCluster, env: &Environment| sidecar(&build(prc, env)).image;
        assert_eq!(
            image(&example(), &Environment::default()).as_deref(),
            Some(concat!("ballast/sidecar:", env!("CARGO_PKG_VERSION")))
        );
        let env = Environment {
            sidecar_image: "registry.example/ballast/sidecar:9.9.9".into(),
            ..Environment::default()
        };
        assert_eq!(
            image(&example(), &env).as_deref(),
            Some("registry.example/ballast/sidecar:9.9.9")
        );
        let mut prc = example();
        prc.spec.sidecar.image = Some("mine/sidecar:dev".into());
        assert_eq!(image(&prc, &env).as_deref(), Some("mine/sidecar:dev"));
    }

    #[test]
    fn shared_ticket_keys_are_mounted_and_passed_unless_disabled() {
        let w = build(&example(), &Environment::default());
        let c = sidecar(&w);
        let arg = "--ticket-keys=/etc/ballast/tickets/ticket-keys.json".to_owned();
        assert!(c.args.unwrap().contains(&arg));
        assert!(c
            .volume_mounts
            .unwrap()
            .iter()
            .any(|m| m.mount_path == TICKETS_MOUNT && m.read_only == Some(true)));
        let pod = w.statefulset.spec.template.spec.unwrap();
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == TICKETS_VOLUME);
        assert_eq!(
            volume.unwrap().secret.unwrap().secret_name.as_deref(),
            Some("edge-ticket-keys")
        );

        let mut prc = example();
        prc.spec.tls.session_tickets.enabled = false;
        let w = build(&prc, &Environment::default());
        assert!(!sidecar(&w)
            .args
            .unwrap()
            .iter()
            .any(|a| a.starts_with("--ticket-keys")));
        let pod = w.statefulset.spec.template.spec.unwrap();
        assert!(pod
            .volumes
            .unwrap()
            .iter()
            .all(|v| v.name != TICKETS_VOLUME));
    }

    #[test]
    fn lifecycle_events_are_off_until_asked_for_then_token_buffer_and_window_reach_the_sidecar() {
        let w = build(&example(), &Environment::default());
        let c = sidecar(&w);
        assert!(!c.args.unwrap().iter().any(|a| a.starts_with("--events")));
        // The pod's name reaches the sidecar in any case (events and logs name it).
        let env = c.env.unwrap();
        let pod_name = env.iter().find(|e| e.name == "BALLAST_POD_NAME").unwrap();
        let field = pod_name.value_from.as_ref().unwrap().field_ref.as_ref();
        assert_eq!(field.unwrap().field_path, "metadata.name");

        let mut prc = example();
        prc.spec.presence.events.enabled = true;
        prc.spec.presence.events.buffer = 500;
        prc.spec.presence.offline_threshold = "90s".into();
        prc.spec.listener.mqtt_server_reference = Some("eu-2.example:8883".into());
        let w = build(&prc, &Environment::default());
        let c = sidecar(&w);
        let args = c.args.unwrap();
        for arg in [
            "--mqtt-server-reference=eu-2.example:8883",
            "--events-buffer=500",
            "--events-token-file=/etc/ballast/events/token",
            "--planned-reconnect-window=90s",
        ] {
            assert!(args.contains(&arg.to_owned()), "{arg} not in {args:?}");
        }
        assert!(c
            .volume_mounts
            .unwrap()
            .iter()
            .any(|m| m.mount_path == EVENTS_MOUNT && m.read_only == Some(true)));
        let pod = w.statefulset.spec.template.spec.unwrap();
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == EVENTS_VOLUME);
        assert_eq!(
            volume.unwrap().secret.unwrap().secret_name.as_deref(),
            Some("edge-events-token")
        );
    }

    #[test]
    fn duration_args_are_in_the_sidecars_grammar() {
        let mut prc = example();
        prc.spec.migration.drain_timeout = "1m30s".into();
        let args = sidecar(&build(&prc, &Environment::default())).args.unwrap();
        let drain = args
            .iter()
            .find_map(|a| a.strip_prefix("--shutdown-drain="))
            .expect("--shutdown-drain rendered");
        assert_eq!(
            ballast_contract::duration::parse_duration(drain),
            Ok(std::time::Duration::from_secs(90))
        );
        prc.spec.sidecar.idle_timeout = "3m".into();
        prc.spec.sidecar.write_timeout = "1.5s".into();
        let args = sidecar(&build(&prc, &Environment::default())).args.unwrap();
        for expected in ["--idle-timeout=3m", "--write-timeout=1.5s"] {
            assert!(
                args.contains(&expected.to_owned()),
                "{expected} not in {args:?}"
            );
        }
    }

    #[test]
    fn the_gateway_outlives_the_drain_unless_it_has_its_own_pre_stop() {
        let w = build(&example(), &Environment::default());
        let gateway = &w.statefulset.spec.template.spec.unwrap().containers[0];
        let wait = gateway
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(
            (wait.path.as_deref(), &wait.port),
            (Some("/drained"), &IntOrString::Int(9901))
        );

        let mut prc = example();
        prc.spec.template.spec.as_mut().unwrap().containers[0].lifecycle = Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(k8s_openapi::api::core::v1::SleepAction { seconds: 1 }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        });
        let w = build(&prc, &Environment::default());
        let gateway = &w.statefulset.spec.template.spec.unwrap().containers[0];
        let own = gateway
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap();
        assert_eq!(
            own.sleep.as_ref().unwrap().seconds,
            1,
            "the user's hook is kept"
        );
    }

    #[test]
    fn pods_can_bind_their_own_ip_where_pods_share_a_network() {
        let w = build(
            &example(),
            &Environment {
                bind_pod_ip: true,
                ..Environment::default()
            },
        );
        let args = sidecar(&w).args.unwrap();
        assert!(args.contains(&"--listen=$(POD_IP):8443".to_owned()));
        assert!(args.contains(&"--upstream=$(POD_IP):8080".to_owned()));
    }

    #[test]
    fn reporting_pods_get_a_bound_token_the_operators_ca_and_an_admin_token() {
        let env = Environment {
            bind_pod_ip: false,
            report: Some(ReportWiring {
                address: "ballast-operator.ballast-system.svc:9443".into(),
                server_name: "ballast-operator.ballast-system.svc".into(),
                ca_pem: "-----BEGIN CERTIFICATE-----".into(),
            }),
            sidecar_image: default_sidecar_image(),
        };
        let w = build(&example(), &env);
        let args = sidecar(&w).args.unwrap();
        for want in [
            "--operator=ballast-operator.ballast-system.svc:9443",
            "--operator-token-file=/var/run/secrets/ballast/token",
            "--operator-ca=/var/run/secrets/ballast/ca.crt",
            "--admin-token-file=/etc/ballast/admin/token",
        ] {
            assert!(args.contains(&want.to_owned()), "{want} in {args:?}");
        }
        let volumes = w.statefulset.spec.template.spec.unwrap().volumes.unwrap();
        let projected = volumes
            .iter()
            .find_map(|v| v.projected.clone())
            .expect("a projected volume");
        let token = projected.sources.unwrap()[0]
            .service_account_token
            .clone()
            .unwrap();
        assert_eq!(
            token.audience.as_deref(),
            Some(ballast_contract::TOKEN_AUDIENCE)
        );
        let ca = w.operator_ca.expect("the CA beside the cluster");
        assert_eq!(ca.metadata.name.as_deref(), Some("edge-operator-ca"));
        assert!(ca.metadata.owner_references.is_some());
        let without = build(&example(), &Environment::default());
        assert!(without.operator_ca.is_none());
        assert!(!sidecar(&without)
            .args
            .unwrap()
            .iter()
            .any(|a| a.starts_with("--operator")));
    }

    #[test]
    fn the_non_root_sidecar_can_read_the_secret_volumes() {
        let w = build(&example(), &Environment::default());
        let pod = w.statefulset.spec.template.spec.as_ref().unwrap();
        let sc = sidecar(&w).security_context.unwrap();
        assert_ne!(sc.run_as_user, Some(0));
        for v in pod.volumes.as_ref().unwrap() {
            if let Some(secret) = &v.secret {
                assert_eq!(secret.default_mode, Some(0o440), "{}", v.name);
            }
        }
        // 0440 files are readable through the group only: the pod's fsGroup.
        let fs_group = pod.security_context.as_ref().unwrap().fs_group;
        assert_eq!(fs_group, Some(SIDECAR_UID));

        // A template's own fsGroup is kept (every container has it).
        let mut prc = example();
        prc.spec
            .template
            .spec
            .as_mut()
            .unwrap()
            .security_context
            .get_or_insert_with(PodSecurityContext::default)
            .fs_group = Some(2000);
        let w = build(&prc, &Environment::default());
        let pod = w.statefulset.spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.security_context.as_ref().unwrap().fs_group, Some(2000));
    }

    #[test]
    fn the_sidecar_runs_locked_down() {
        let sc = sidecar(&build(&example(), &Environment::default()))
            .security_context
            .unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    }

    #[test]
    fn every_object_is_owned_by_the_presence_cluster() {
        let prc = example();
        let w = build(&prc, &Environment::default());
        let metas = [
            &w.statefulset.metadata,
            &w.service.metadata,
            &w.headless.metadata,
            &w.pdb.metadata,
        ];
        for meta in metas {
            let owners = meta.owner_references.as_ref().unwrap();
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "PresenceCluster");
            assert_eq!(owners[0].uid, "uid-1");
            assert_eq!(owners[0].controller, Some(true));
            assert_eq!(meta.namespace.as_deref(), Some("agents"));
        }
    }

    #[test]
    fn restarts_belong_to_the_operator_and_grace_outlasts_the_drain() {
        let w = build(&example(), &Environment::default());
        let spec = w.statefulset.spec;
        assert_eq!(
            spec.update_strategy.unwrap().type_.as_deref(),
            Some("OnDelete")
        );
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(
            spec.template.spec.unwrap().termination_grace_period_seconds,
            Some(630)
        );
        assert_eq!(
            spec.template.metadata.unwrap().labels.unwrap()[CLUSTER_LABEL],
            "edge"
        );
    }

    #[test]
    fn services_and_budget_follow_the_spec() {
        let mut prc = example();
        prc.spec.listener.service.type_ = ServiceType::ClusterIP;
        prc.spec
            .listener
            .service
            .annotations
            .insert("lb/idle-timeout".into(), "3600".into());
        prc.spec.migration.max_unavailable = 2;
        let w = build(&prc, &Environment::default());
        let svc = w.service.spec.unwrap();
        assert_eq!(svc.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(svc.ports.unwrap()[0].port, 8443);
        assert_eq!(
            w.service.metadata.annotations.unwrap()["lb/idle-timeout"],
            "3600"
        );
        assert_eq!(w.headless.spec.unwrap().cluster_ip.as_deref(), Some("None"));
        assert_eq!(
            w.pdb.spec.unwrap().max_unavailable,
            Some(IntOrString::Int(2))
        );
    }

    #[test]
    fn only_a_rolling_restart_cluster_ties_its_pods_to_the_certificate() {
        let mut prc = example();
        let env = Environment::default();
        let mut hot = build(&prc, &env).statefulset;
        restart_on_renewal(&prc, &mut hot, "aaa");
        let annotations = |s: &StatefulSet| {
            s.spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.clone())
        };
        assert!(!annotations(&hot)
            .unwrap_or_default()
            .contains_key(CERTIFICATE_ANNOTATION));
        prc.spec.tls.rotation.strategy = RotationStrategy::RollingRestart;
        let mut rolling = build(&prc, &env).statefulset;
        restart_on_renewal(&prc, &mut rolling, "bbb");
        assert_eq!(
            annotations(&rolling).unwrap()[CERTIFICATE_ANNOTATION],
            "bbb"
        );
    }
}
