//! A container's environment and its `$(VAR)`-expanded command line, as the kubelet builds them.
//!
//! Order and precedence follow the kubelet: the service variables for the API server first
//! (`KUBERNETES_SERVICE_HOST=127.0.0.1`, `KUBERNETES_SERVICE_PORT=<apiserver port>`, so
//! in-cluster clients reach the real API server on loopback and never a ClusterIP), then
//! `envFrom`, then `env` in order; each `value` may refer to variables defined before it.
//! `$(VAR)` expands to a defined variable, `$$` escapes a `$`, an undefined reference is left
//! as written.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::Client;

use crate::error::{Error, Result};
use crate::objects;

/// Environment of one container, in definition order (later entries win).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Environment {
    vars: Vec<(String, String)>,
}

impl Environment {
    /// Sets `name` (replacing an earlier value, keeping its position).
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let (name, value) = (name.into(), value.into());
        match self.vars.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((name, value)),
        }
    }

    /// Value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All variables in definition order.
    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }

    /// Kubernetes `$(VAR)` expansion of `input` against these variables.
    pub fn expand(&self, input: &str) -> String {
        expand(input, |name| self.get(name).map(str::to_owned))
    }
}

/// Kubernetes `$(VAR)` expansion (k8s.io/kubernetes third_party/forked/golang/expansion):
/// `$(NAME)` → value if `lookup` knows it, else left verbatim; `$$` → `$`; other `$` kept.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        match after.chars().next() {
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            },
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Secret (`true`) / ConfigMap (`false`) data by name, each read once per container start.
type ObjectCache = BTreeMap<(bool, String), Option<BTreeMap<String, Vec<u8>>>>;

/// Builds `container`'s environment in `pod` (IP `pod_ip`), reading referenced Secrets and
/// ConfigMaps through `client`. `apiserver_port` is the loopback API server's port.
pub async fn container_env(
    client: &Client,
    pod: &Pod,
    container: &Container,
    pod_ip: &str,
    apiserver_port: u16,
) -> Result<Environment> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env = Environment::default();
    env.set("KUBERNETES_SERVICE_HOST", "127.0.0.1");
    env.set("KUBERNETES_SERVICE_PORT", apiserver_port.to_string());
    env.set("KUBERNETES_SERVICE_PORT_HTTPS", apiserver_port.to_string());
    env.set(
        "KUBERNETES_PORT",
        format!("tcp://127.0.0.1:{apiserver_port}"),
    );

    let mut cache = ObjectCache::new();
    async fn fetch<'a>(
        cache: &'a mut ObjectCache,
        client: &Client,
        namespace: &str,
        secret: bool,
        name: &str,
    ) -> Result<&'a Option<BTreeMap<String, Vec<u8>>>> {
        let key = (secret, name.to_owned());
        if !cache.contains_key(&key) {
            let data = if secret {
                objects::secret_data(client, namespace, name).await?
            } else {
                objects::config_map_data(client, namespace, name).await?
            };
            cache.insert(key.clone(), data);
        }
        Ok(&cache[&key])
    }
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (secret, name, optional) = if let Some(s) = &from.secret_ref {
            (true, s.name.clone(), s.optional.unwrap_or(false))
        } else if let Some(c) = &from.config_map_ref {
            (false, c.name.clone(), c.optional.unwrap_or(false))
        } else {
            continue;
        };
        match fetch(&mut cache, client, namespace, secret, &name).await? {
            Some(data) => {
                for (k, v) in data {
                    env.set(format!("{prefix}{k}"), text(v));
                }
            }
            None if optional => {}
            None => return Err(missing(secret, namespace, &name)),
        }
    }

    for var in container.env.iter().flatten() {
        if let Some(value) = &var.value {
            let expanded = env.expand(value);
            env.set(var.name.clone(), expanded);
            continue;
        }
        let Some(from) = &var.value_from else {
            env.set(var.name.clone(), "");
            continue;
        };
        let value = if let Some(field) = &from.field_ref {
            Some(objects::field_ref(pod, pod_ip, &field.field_path)?)
        } else if let Some(key_ref) = &from.secret_key_ref {
            let optional = key_ref.optional.unwrap_or(false);
            match fetch(&mut cache, client, namespace, true, &key_ref.name).await? {
                Some(data) => match data.get(&key_ref.key) {
                    Some(v) => Some(text(v)),
                    None if optional => None,
                    None => {
                        return Err(Error::Invalid(format!(
                            "secret {namespace}/{} has no key {:?}",
                            key_ref.name, key_ref.key
                        )))
                    }
                },
                None if optional => None,
                None => return Err(missing(true, namespace, &key_ref.name)),
            }
        } else if let Some(key_ref) = &from.config_map_key_ref {
            let optional = key_ref.optional.unwrap_or(false);
            match fetch(&mut cache, client, namespace, false, &key_ref.name).await? {
                Some(data) => match data.get(&key_ref.key) {
                    Some(v) => Some(text(v)),
                    None if optional => None,
                    None => {
                        return Err(Error::Invalid(format!(
                            "configmap {namespace}/{} has no key {:?}",
                            key_ref.name, key_ref.key
                        )))
                    }
                },
                None if optional => None,
                None => return Err(missing(false, namespace, &key_ref.name)),
            }
        } else {
            return Err(Error::Invalid(format!(
                "env {}: only value, fieldRef, secretKeyRef and configMapKeyRef are supported",
                var.name
            )));
        };
        if let Some(value) = value {
            env.set(var.name.clone(), value);
        }
    }
    Ok(env)
}

fn missing(secret: bool, namespace: &str, name: &str) -> Error {
    let kind = if secret { "secret" } else { "configmap" };
    Error::Invalid(format!(
        "{kind} \"{name}\" not found in namespace {namespace}"
    ))
}

/// `command` and `args`, each `$(VAR)`-expanded. Without `command` the image's binary (see
/// `images`) is the program and `args` its arguments; with `command`, `command[0]` names a
/// binary in the bin dir and the rest of `command` precedes `args`.
pub fn command_line(container: &Container, env: &Environment) -> (Vec<String>, Vec<String>) {
    let expand_all = |v: &Option<Vec<String>>| {
        v.iter()
            .flatten()
            .map(|a| env.expand(a))
            .collect::<Vec<_>>()
    };
    (expand_all(&container.command), expand_all(&container.args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "POD_IP" => Some("127.1.0.5".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        assert_eq!(
            expand("--listen=$(POD_IP):8443", lookup),
            "--listen=127.1.0.5:8443"
        );
        assert_eq!(expand("$(UNDEFINED)x", lookup), "$(UNDEFINED)x");
        assert_eq!(expand("$$(POD_IP)", lookup), "$(POD_IP)");
        assert_eq!(expand("a$$b", lookup), "a$b");
        assert_eq!(expand("cost $5", lookup), "cost $5");
        assert_eq!(expand("$(POD_IP", lookup), "$(POD_IP");
        assert_eq!(expand("[$(EMPTY)]", lookup), "[]");
        assert_eq!(expand("$", lookup), "$");
    }

    #[test]
    fn later_values_see_earlier_ones() {
        let mut env = Environment::default();
        env.set("A", "1");
        let b = env.expand("$(A)-$(B)");
        env.set("B", b);
        assert_eq!(env.get("B"), Some("1-$(B)"));
        env.set("A", "2");
        assert_eq!(env.vars()[0], ("A".into(), "2".into()));
    }
}
