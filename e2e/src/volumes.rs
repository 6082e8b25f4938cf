//! Pod volumes on disk, written and refreshed the way the kubelet's atomic writer does.
//!
//! Each volume lives in `<state-dir>/pods/<uid>/volumes/<name>/`. Its files sit in a
//! timestamped directory (`..2026_11_24_10_00_00.123456789`); `..data` is a symlink to it and
//! each top-level key is a symlink `key -> ..data/key`. A change writes a new timestamped
//! directory, points a fresh `..data_tmp` symlink at it, renames that over `..data` (one atomic
//! step: a reader sees the old set or the new set, never a mix), adds/removes the per-key
//! symlinks, then deletes the old directory. This is exactly what programs that hot-reload
//! mounted Secrets (the Ballast sidecar) rely on.
//!
//! Sources: `secret`, `configMap`, `emptyDir`, `downwardAPI` and `projected` (secret,
//! configMap, downwardAPI and `serviceAccountToken`, the latter through the TokenRequest API
//! with the requested audience and lifetime, bound to the pod, renewed at 80% of its life).
//! [`PodVolumes::sync`] recomputes every volume; the pod worker calls it every second, which
//! is how Secret and ConfigMap changes reach running pods.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, KeyToPath, Pod, ServiceAccount, Volume};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::error::{io, Error, Result};
use crate::objects;

/// Files of one volume: relative path → (content, mode).
pub type Files = BTreeMap<String, (Vec<u8>, u32)>;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// Writes `files` into `dir` atomically (see the module docs). Returns whether anything
/// changed; identical content leaves the directory untouched.
///
/// Ownership as a kubelet sets it: root's, and with the pod's `fsGroup` the files and
/// directories belong to that group and every file is group-readable (mode | 0440, these
/// volumes being read-only). Without one, a 0440 file is root's alone.
pub fn write_atomically(dir: &Path, files: &Files, fs_group: Option<u32>) -> Result<bool> {
    let with_group: Files;
    let files = match fs_group {
        None => files,
        Some(_) => {
            with_group = files
                .iter()
                .map(|(k, (content, mode))| (k.clone(), (content.clone(), mode | 0o440)))
                .collect();
            &with_group
        }
    };
    let own = |path: &Path| -> Result<()> {
        std::os::unix::fs::chown(path, Some(0), Some(fs_group.unwrap_or(0)))
            .map_err(io(format!("chown {path:?}")))
    };
    std::fs::create_dir_all(dir).map_err(io(format!("creating {dir:?}")))?;
    let data_link = dir.join(DATA);
    let old = std::fs::read_link(&data_link).ok();
    if let Some(old) = &old {
        if read_files(&dir.join(old))? == *files {
            return Ok(false);
        }
    }
    let stamp = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC);
    let mut name = format!("..{}", stamp.strftime("%Y_%m_%d_%H_%M_%S.%f"));
    while dir.join(&name).exists() {
        name.push('0');
    }
    let new_dir = dir.join(&name);
    std::fs::create_dir(&new_dir).map_err(io(format!("creating {new_dir:?}")))?;
    own(&new_dir)?;
    for (path, (content, mode)) in files {
        let file = new_dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("creating {parent:?}")))?;
            own(parent)?;
        }
        std::fs::write(&file, content).map_err(io(format!("writing {file:?}")))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode))
            .map_err(io(format!("chmod {file:?}")))?;
        own(&file)?;
    }
    let tmp = dir.join(DATA_TMP);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp).map_err(io(format!("symlink {tmp:?}")))?;
    std::fs::rename(&tmp, &data_link).map_err(io(format!("renaming {tmp:?} over ..data")))?;

    let top: std::collections::BTreeSet<&str> = files
        .keys()
        .map(|p| p.split('/').next().unwrap_or(p))
        .collect();
    for key in &top {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("{DATA}/{key}"), &link)
                .map_err(io(format!("symlink {link:?}")))?;
        }
    }
    for entry in std::fs::read_dir(dir).map_err(io(format!("listing {dir:?}")))? {
        let entry = entry.map_err(io(format!("listing {dir:?}")))?;
        let fname = entry.file_name().to_string_lossy().into_owned();
        if !fname.starts_with("..") && !top.contains(fname.as_str()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old {
        let old_dir = dir.join(old);
        if old_dir != new_dir {
            let _ = std::fs::remove_dir_all(old_dir);
        }
    }
    Ok(true)
}

/// The files under `dir` (recursively), as [`Files`].
fn read_files(dir: &Path) -> Result<Files> {
    let mut out = Files::new();
    fn walk(base: &Path, dir: &Path, out: &mut Files) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        for entry in entries {
            let entry = entry.map_err(io(format!("listing {dir:?}")))?;
            let path = entry.path();
            let meta = entry.metadata().map_err(io(format!("stat {path:?}")))?;
            if meta.is_dir() {
                walk(base, &path, out)?;
            } else {
                let rel = path.strip_prefix(base).unwrap_or(&path);
                let content = std::fs::read(&path).map_err(io(format!("reading {path:?}")))?;
                out.insert(
                    rel.to_string_lossy().into_owned(),
                    (content, meta.permissions().mode() & 0o7777),
                );
            }
        }
        Ok(())
    }
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// One volume as the process kubelet handles it.
#[derive(Debug)]
struct VolumeState {
    spec: Volume,
    dir: PathBuf,
    tokens: BTreeMap<usize, CachedToken>,
}

#[derive(Debug, Clone)]
struct CachedToken {
    token: String,
    refresh_at: Instant,
}

/// Every volume of one pod.
#[derive(Debug)]
pub struct PodVolumes {
    volumes: Vec<VolumeState>,
    /// The pod's `fsGroup`: the group its volumes' files belong to.
    fs_group: Option<u32>,
}

impl PodVolumes {
    /// Volumes of `pod`, to live under `root` (`<state-dir>/pods/<uid>/volumes`).
    pub fn new(pod: &Pod, root: &Path) -> PodVolumes {
        let volumes = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .map(|v| VolumeState {
                spec: v.clone(),
                dir: root.join(&v.name),
                tokens: BTreeMap::new(),
            })
            .collect();
        let fs_group = pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref()?.fs_group)
            .map(|g| g as u32);
        PodVolumes { volumes, fs_group }
    }

    /// Host directory of volume `name`, to bind-mount at a container's `mountPath`.
    pub fn dir(&self, name: &str) -> Option<&Path> {
        self.volumes
            .iter()
            .find(|v| v.spec.name == name)
            .map(|v| v.dir.as_path())
    }

    /// Whether volume `name` is one the kubelet mounts read-only whatever the mount says
    /// (secret, configMap, projected, downwardAPI).
    pub fn always_read_only(&self, name: &str) -> bool {
        self.volumes
            .iter()
            .find(|v| v.spec.name == name)
            .is_some_and(|v| v.spec.empty_dir.is_none())
    }

    /// Brings every volume up to date with the API. Returns the names of volumes whose
    /// content changed. An error names the volume and why (missing Secret, unsupported type).
    pub async fn sync(&mut self, client: &Client, pod: &Pod, pod_ip: &str) -> Result<Vec<String>> {
        let mut changed = Vec::new();
        for volume in &mut self.volumes {
            let name = volume.spec.name.clone();
            if volume.spec.empty_dir.is_some() {
                std::fs::create_dir_all(&volume.dir)
                    .map_err(io(format!("creating {:?}", volume.dir)))?;
                // Writable by any container user, as a kubelet makes it.
                std::fs::set_permissions(&volume.dir, std::fs::Permissions::from_mode(0o777))
                    .map_err(io(format!("chmod {:?}", volume.dir)))?;
                continue;
            }
            let files = volume
                .compute(client, pod, pod_ip)
                .await
                .map_err(|e| Error::Invalid(format!("volume {name:?}: {e}")))?;
            if write_atomically(&volume.dir, &files, self.fs_group)? {
                changed.push(name);
            }
        }
        Ok(changed)
    }
}

impl VolumeState {
    async fn compute(&mut self, client: &Client, pod: &Pod, pod_ip: &str) -> Result<Files> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let spec = self.spec.clone();
        let mut files = Files::new();
        if let Some(s) = &spec.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let data = objects::secret_data(client, namespace, &name).await?;
            let mode = s.default_mode.unwrap_or(0o644) as u32;
            project(
                &mut files,
                data,
                s.items.as_deref(),
                mode,
                s.optional,
                "secret",
                &name,
            )?;
        } else if let Some(c) = &spec.config_map {
            let data = objects::config_map_data(client, namespace, &c.name).await?;
            let mode = c.default_mode.unwrap_or(0o644) as u32;
            project(
                &mut files,
                data,
                c.items.as_deref(),
                mode,
                c.optional,
                "configmap",
                &c.name,
            )?;
        } else if let Some(d) = &spec.downward_api {
            let mode = d.default_mode.unwrap_or(0o644) as u32;
            downward(&mut files, pod, pod_ip, d.items.as_deref(), mode)?;
        } else if let Some(p) = &spec.projected {
            let mode = p.default_mode.unwrap_or(0o644) as u32;
            for (i, source) in p.sources.iter().flatten().enumerate() {
                if let Some(s) = &source.secret {
                    let data = objects::secret_data(client, namespace, &s.name).await?;
                    project(
                        &mut files,
                        data,
                        s.items.as_deref(),
                        mode,
                        s.optional,
                        "secret",
                        &s.name,
                    )?;
                } else if let Some(c) = &source.config_map {
                    let data = objects::config_map_data(client, namespace, &c.name).await?;
                    project(
                        &mut files,
                        data,
                        c.items.as_deref(),
                        mode,
                        c.optional,
                        "configmap",
                        &c.name,
                    )?;
                } else if let Some(d) = &source.downward_api {
                    downward(&mut files, pod, pod_ip, d.items.as_deref(), mode)?;
                } else if let Some(t) = &source.service_account_token {
                    let cached = match self.tokens.get(&i) {
                        Some(c) if Instant::now() < c.refresh_at => c.token.clone(),
                        _ => {
                            let fresh = request_token(
                                client,
                                pod,
                                t.audience.clone(),
                                t.expiration_seconds.unwrap_or(3600),
                            )
                            .await?;
                            let token = fresh.token.clone();
                            self.tokens.insert(i, fresh);
                            token
                        }
                    };
                    files.insert(t.path.clone(), (cached.into_bytes(), mode));
                } else {
                    return Err(Error::Invalid(
                        "projected source type not supported by the process kubelet".into(),
                    ));
                }
            }
        } else {
            return Err(Error::Invalid(
                "volume type not supported by the process kubelet (secret, configMap, projected, \
                 downwardAPI, emptyDir are)"
                    .into(),
            ));
        }
        Ok(files)
    }
}

/// Adds a Secret's/ConfigMap's `data` (all keys, or `items`) to `files`.
fn project(
    files: &mut Files,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    mode: u32,
    optional: Option<bool>,
    kind: &str,
    name: &str,
) -> Result<()> {
    let Some(data) = data else {
        if optional.unwrap_or(false) {
            return Ok(());
        }
        return Err(Error::Invalid(format!("{kind} \"{name}\" not found")));
    };
    match items {
        None => {
            for (k, v) in data {
                files.insert(k, (v, mode));
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => {
                        let m = item.mode.map_or(mode, |m| m as u32);
                        files.insert(item.path.clone(), (v.clone(), m));
                    }
                    None if optional.unwrap_or(false) => {}
                    None => {
                        return Err(Error::Invalid(format!(
                            "{kind} \"{name}\" has no key {:?}",
                            item.key
                        )))
                    }
                }
            }
        }
    }
    Ok(())
}

fn downward(
    files: &mut Files,
    pod: &Pod,
    pod_ip: &str,
    items: Option<&[DownwardAPIVolumeFile]>,
    mode: u32,
) -> Result<()> {
    for item in items.into_iter().flatten() {
        let Some(field) = &item.field_ref else {
            return Err(Error::Invalid(format!(
                "downwardAPI {:?}: only fieldRef is supported",
                item.path
            )));
        };
        let value = objects::field_ref(pod, pod_ip, &field.field_path)?;
        let m = item.mode.map_or(mode, |m| m as u32);
        files.insert(item.path.clone(), (value.into_bytes(), m));
    }
    Ok(())
}

/// TokenRequest for the pod's service account, bound to the pod; refreshed at 80% of the
/// lifetime the API server actually granted.
async fn request_token(
    client: &Client,
    pod: &Pod,
    audience: Option<String>,
    expiration_seconds: i64,
) -> Result<CachedToken> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let mut spec = serde_json::json!({
        "expirationSeconds": expiration_seconds,
        "boundObjectRef": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod.metadata.name,
            "uid": pod.metadata.uid,
        },
    });
    if let Some(audience) = audience {
        spec["audiences"] = serde_json::json!([audience]);
    }
    let body = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": spec,
    });
    let granted: TokenRequest = api
        .create_subresource("token", &sa, &PostParams::default(), &body)
        .await?;
    let status = granted
        .status
        .ok_or_else(|| Error::Invalid("TokenRequest answered without status".into()))?;
    let (Some(token), Some(expires)) = (status.token, status.expiration_timestamp) else {
        return Err(Error::Invalid(
            "TokenRequest status without token/expiration".into(),
        ));
    };
    let now = jiff::Timestamp::now();
    let lifetime = expires.0.duration_since(now).as_secs().max(1) as u64;
    Ok(CachedToken {
        token,
        refresh_at: Instant::now() + Duration::from_secs(lifetime * 8 / 10),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> Files {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (v.as_bytes().to_vec(), 0o644)))
            .collect()
    }

    #[test]
    fn atomic_writer_swaps_data_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("ballast-e2e-volume-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            write_atomically(&dir, &files(&[("tls.crt", "A"), ("tls.key", "a")]), None).unwrap()
        );
        let first = std::fs::read_link(dir.join("..data")).unwrap();
        assert!(first.to_string_lossy().starts_with("..20"), "{first:?}");
        assert_eq!(
            std::fs::read_link(dir.join("tls.crt")).unwrap(),
            PathBuf::from("..data/tls.crt")
        );
        assert_eq!(std::fs::read_to_string(dir.join("tls.crt")).unwrap(), "A");
        // Same content: nothing written.
        assert!(
            !write_atomically(&dir, &files(&[("tls.crt", "A"), ("tls.key", "a")]), None).unwrap()
        );
        assert_eq!(std::fs::read_link(dir.join("..data")).unwrap(), first);
        // Change: new dir, old one gone, removed key's symlink gone.
        assert!(write_atomically(&dir, &files(&[("tls.crt", "B")]), None).unwrap());
        let second = std::fs::read_link(dir.join("..data")).unwrap();
        assert_ne!(first, second);
        assert!(!dir.join(&first).exists());
        assert!(!dir.join(DATA_TMP).exists());
        assert_eq!(std::fs::read_to_string(dir.join("tls.crt")).unwrap(), "B");
        assert!(std::fs::symlink_metadata(dir.join("tls.key")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn with_an_fs_group_files_belong_to_it_and_are_group_readable() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("ballast-e2e-fsgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let secret: Files = [("tls.key".to_owned(), (b"k".to_vec(), 0o400))].into();
        assert!(write_atomically(&dir, &secret, Some(4242)).unwrap());
        let meta = std::fs::metadata(dir.join("tls.key")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 4242));
        assert_eq!(meta.mode() & 0o777, 0o440);
        // The group-readable mode is what was written: the next sync changes nothing.
        assert!(!write_atomically(&dir, &secret, Some(4242)).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        // Without one: root's alone.
        assert!(write_atomically(&dir, &secret, None).unwrap());
        let meta = std::fs::metadata(dir.join("tls.key")).unwrap();
        assert_eq!((meta.gid(), meta.mode() & 0o777), (0, 0o400));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
