//! The one way the operator writes a Secret: labelled as its own, owned by the cluster it
//! serves (so deleting the PresenceCluster deletes it), created once with "someone else was
//! first" taken as success, and replaced only under the resourceVersion it was read at (so two
//! replicas never overwrite each other's keys).
//!
//! It never logs a Secret's data: callers log names only.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;

/// A Secret the operator manages, with `data` as its keys.
pub fn managed(
    namespace: &str,
    name: &str,
    owner: Option<OwnerReference>,
    type_: Option<&str>,
    data: BTreeMap<String, Vec<u8>>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            owner_references: owner.map(|o| vec![o]),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "ballast-operator".to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        type_: type_.map(str::to_owned),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Secret::default()
    }
}

/// Creates `secret`, or returns the one that already exists under its name (another replica,
/// or an earlier reconcile, was first: theirs is kept).
pub async fn create_or_existing(api: &Api<Secret>, secret: &Secret) -> kube::Result<Secret> {
    match api.create(&PostParams::default(), secret).await {
        Ok(created) => Ok(created),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            api.get(secret.metadata.name.as_deref().unwrap_or_default())
                .await
        }
        Err(e) => Err(e),
    }
}

/// Replaces `read` (as it was read) with `data`: fails with a conflict if it changed since.
pub async fn replace_data(
    api: &Api<Secret>,
    read: &Secret,
    data: BTreeMap<String, Vec<u8>>,
) -> kube::Result<Secret> {
    let mut next = read.clone();
    next.metadata.managed_fields = None;
    next.data = Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect());
    next.string_data = None;
    api.replace(
        read.metadata.name.as_deref().unwrap_or_default(),
        &PostParams::default(),
        &next,
    )
    .await
}

/// One key of a Secret's data.
pub fn data<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
}
