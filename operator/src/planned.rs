//! The fleet-level planned window: which pods are draining and until when a presence backend
//! should hold "offline" for their agents, published in ConfigMap
//! `<name>-planned-disconnects` (key [`KEY`]) for backends that read Kubernetes rather than
//! the sidecars' event streams.
//!
//! The document is a pure function of the status the observer just computed, so it can never
//! say more than the status does. It carries no timestamp of its own: the ConfigMap is written
//! only when what it says changes, not every tick.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ObjectMeta;
use kube::Resource;
use serde::Serialize;

use crate::crd::{PresenceCluster, PresenceClusterStatus};

/// The ConfigMap's data key.
pub const KEY: &str = "planned-disconnects.json";

/// Name of a cluster's planned-window ConfigMap.
pub fn configmap_name(cluster: &str) -> String {
    format!("{cluster}-planned-disconnects")
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Document<'a> {
    cluster: &'a str,
    /// A migration is under way (the `Migrating` condition).
    migrating: bool,
    /// When it started, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    migration_started: Option<&'a str>,
    offline_threshold: &'a str,
    /// Pods draining now.
    pods: Vec<Pod<'a>>,
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Pod<'a> {
    name: &'a str,
    draining_until: &'a str,
    hold_offline_until: &'a str,
}

/// The document for `status`, as the ConfigMap holds it.
pub fn document(prc: &PresenceCluster, status: &PresenceClusterStatus) -> String {
    let migrating = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Migrating" && c.status == "True");
    let doc = Document {
        cluster: prc.metadata.name.as_deref().unwrap_or_default(),
        migrating,
        migration_started: status
            .migration
            .as_ref()
            .filter(|_| migrating)
            .map(|m| m.started.as_str()),
        offline_threshold: &prc.spec.presence.offline_threshold,
        pods: status
            .pods
            .iter()
            .filter_map(|p| {
                Some(Pod {
                    name: &p.name,
                    draining_until: p.draining_until.as_deref()?,
                    hold_offline_until: p.hold_offline_until.as_deref()?,
                })
            })
            .collect(),
    };
    serde_json::to_string_pretty(&doc).expect("the document serializes")
}

/// The ConfigMap holding `document`, owned by the cluster.
pub fn configmap(prc: &PresenceCluster, namespace: &str, document: String) -> ConfigMap {
    let name = prc.metadata.name.as_deref().unwrap_or_default();
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(configmap_name(name)),
            namespace: Some(namespace.to_owned()),
            owner_references: prc.controller_owner_ref(&()).map(|o| vec![o]),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "ballast-operator".to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        data: Some([(KEY.to_owned(), document)].into()),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Condition, MigrationStatus, PodStatus};

    fn cluster() -> PresenceCluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ballast.dev/v1alpha1",
            "kind": "PresenceCluster",
            "metadata": {"name": "edge", "namespace": "presence", "uid": "u-1"},
            "spec": {"tls": {"secretName": "edge-tls"}, "template": {}}
        }))
        .unwrap()
    }

    #[test]
    fn lists_the_draining_pods_and_only_them() {
        let prc = cluster();
        let mut status = PresenceClusterStatus {
            pods: vec![
                PodStatus {
                    name: "edge-0".into(),
                    state: "Draining".into(),
                    draining_until: Some("2026-12-06T07:00:30Z".into()),
                    hold_offline_until: Some("2026-12-06T07:01:30Z".into()),
                    ..PodStatus::default()
                },
                PodStatus {
                    name: "edge-1".into(),
                    state: "Serving".into(),
                    ..PodStatus::default()
                },
            ],
            migration: Some(MigrationStatus {
                started: "2026-12-06T07:00:00Z".into(),
                ..MigrationStatus::default()
            }),
            conditions: vec![Condition {
                type_: "Migrating".into(),
                status: "True".into(),
                ..Condition::default()
            }],
            ..PresenceClusterStatus::default()
        };
        let doc: serde_json::Value = serde_json::from_str(&document(&prc, &status)).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "cluster": "edge", "migrating": true,
                "migrationStarted": "2026-12-06T07:00:00Z", "offlineThreshold": "60s",
                "pods": [{"name": "edge-0", "drainingUntil": "2026-12-06T07:00:30Z",
                          "holdOfflineUntil": "2026-12-06T07:01:30Z"}]
            })
        );
        status.conditions[0].status = "False".into();
        status.pods[0].draining_until = None;
        status.pods[0].hold_offline_until = None;
        let quiet: serde_json::Value = serde_json::from_str(&document(&prc, &status)).unwrap();
        assert_eq!(quiet["migrating"], false);
        assert_eq!(quiet["pods"], serde_json::json!([]));
        assert!(quiet.get("migrationStarted").is_none());
        let map = configmap(&prc, "presence", document(&prc, &status));
        assert_eq!(
            map.metadata.name.as_deref(),
            Some("edge-planned-disconnects")
        );
        assert_eq!(map.metadata.owner_references.unwrap()[0].uid, "u-1");
    }
}
