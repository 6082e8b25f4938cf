//! Reads the Secrets and ConfigMaps a pod refers to, and its downward-API fields.
//!
//! Environment variables and volumes both need them; a missing object is `None` (the caller
//! decides whether `optional` makes that fine), any other API failure is an error.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::{Api, Client};

use crate::error::{Error, Result};

/// Data of Secret `name` (`data` and `stringData` merged), `None` if it does not exist.
pub async fn secret_data(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    Ok(api.get_opt(name).await?.map(|s| {
        let mut out: BTreeMap<String, Vec<u8>> = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        for (k, v) in s.string_data.unwrap_or_default() {
            out.insert(k, v.into_bytes());
        }
        out
    }))
}

/// Data of ConfigMap `name` (`data` and `binaryData` merged), `None` if it does not exist.
pub async fn config_map_data(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    Ok(api.get_opt(name).await?.map(|c| {
        let mut out: BTreeMap<String, Vec<u8>> = c
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        for (k, v) in c.binary_data.unwrap_or_default() {
            out.insert(k, v.0);
        }
        out
    }))
}

/// Value of a downward-API `fieldRef.fieldPath` for `pod` whose IP is `pod_ip`.
pub fn field_ref(pod: &Pod, pod_ip: &str, path: &str) -> Result<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_key = |prefix: &str| -> Option<String> {
        path.strip_prefix(prefix)?
            .strip_suffix("']")
            .map(str::to_owned)
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "status.podIP" => pod_ip.to_owned(),
        "status.podIPs" => pod_ip.to_owned(),
        "status.hostIP" | "status.hostIPs" => "127.0.0.1".to_owned(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        _ => {
            if let Some(key) = map_key("metadata.labels['") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&key).cloned())
                    .unwrap_or_default()
            } else if let Some(key) = map_key("metadata.annotations['") {
                meta.annotations
                    .as_ref()
                    .and_then(|l| l.get(&key).cloned())
                    .unwrap_or_default()
            } else {
                return Err(Error::Invalid(format!(
                    "fieldRef {path:?} is not supported by the process kubelet"
                )));
            }
        }
    };
    Ok(value)
}

/// `key="value"` lines, as the kubelet writes labels/annotations in a downward-API file.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .unwrap_or_default()
}
