//! Where an e2e client connects for a Service: a ready endpoint, chosen like kube-proxy does.
//!
//! The source of truth is the Service's EndpointSlices (label `kubernetes.io/service-name`):
//! an endpoint takes new traffic when `ready` (a missing condition counts as true, as the API
//! says); if no endpoint is ready, kube-proxy falls back to endpoints that are `serving` and
//! `terminating`; one is picked at random among those, which is how kube-proxy spreads
//! connections.
//!
//! **Loopback pod IPs.** The API server refuses EndpointSlice addresses in 127.0.0.0/8
//! (`ValidateEndpointIP`: "may not be in the loopback range"), so on the process kubelet the
//! endpointslice controller cannot publish slices for our pods. When a Service has no slice,
//! [`resolve`] derives the same endpoints the controller would have written, from the
//! Service's selector and its pods (podIP, `Ready` condition, `deletionTimestamp`, named
//! target ports), and says so in [`Resolution::source`]. On a cluster with routable pod IPs
//! (kind, k3d) the slices are used unchanged.
//!
//! **Following a Service.** [`follow`] keeps a fleet's [`Targets`] equal to the Service's
//! usable endpoints as they change, so agents see readiness steering, new pods and restarted
//! pods the way clients behind kube-proxy do, with a comparable delay.
//!
//! It only ever reads from the API server: it never writes an object, and never touches a
//! connection (moving agents is the fleet's and the server's business, not the resolver's).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ballast_fleet::agents::{Rng, Targets};
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ListParams;
use kube::{Api, Client};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// One backend of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The pod behind it, if known.
    pub pod: Option<String>,
}

/// Where the endpoints came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The Service's EndpointSlices.
    EndpointSlices,
    /// Derived from the Service's selector and pods (no EndpointSlice exists; see module docs).
    PodSelector,
}

/// Every endpoint of a Service port, and where they came from.
#[derive(Clone, Debug)]
pub struct Resolution {
    pub endpoints: Vec<Endpoint>,
    pub source: Source,
}

impl Resolution {
    /// Endpoints that take new connections: the ready ones, or, if none is ready, the
    /// serving-and-terminating ones (kube-proxy's rule).
    pub fn usable(&self) -> Vec<&Endpoint> {
        usable(&self.endpoints)
    }

    /// The usable addresses, for `ballast_fleet::agents::FleetConfig::targets`.
    pub fn targets(&self) -> Vec<SocketAddr> {
        self.usable().iter().map(|e| e.addr).collect()
    }
}

/// kube-proxy's choice of candidates.
pub fn usable(endpoints: &[Endpoint]) -> Vec<&Endpoint> {
    let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints
        .iter()
        .filter(|e| e.serving && e.terminating)
        .collect()
}

/// A random usable endpoint.
pub fn pick<'a>(endpoints: &'a [Endpoint], rng: &mut Rng) -> Option<&'a Endpoint> {
    let candidates = usable(endpoints);
    if candidates.is_empty() {
        return None;
    }
    Some(candidates[rng.below(candidates.len() as u64) as usize])
}

/// Endpoints of `service`'s port `port_name` (`None`: the only port, or the unnamed one).
pub async fn resolve(
    client: &Client,
    namespace: &str,
    service: &str,
    port_name: Option<&str>,
) -> Result<Resolution> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await?;
    let published = from_slices(&list.items, port_name);
    if !published.is_empty() {
        return Ok(Resolution {
            endpoints: published,
            source: Source::EndpointSlices,
        });
    }
    let svc = Api::<Service>::namespaced(client.clone(), namespace)
        .get(service)
        .await?;
    let spec = svc.spec.unwrap_or_default();
    let no = |reason: &str| Error::NoEndpoint {
        namespace: namespace.into(),
        service: service.into(),
        reason: reason.into(),
    };
    let selector = spec
        .selector
        .filter(|s| !s.is_empty())
        .ok_or_else(|| no("no EndpointSlice and no selector"))?;
    let port = find_port(spec.ports.as_deref().unwrap_or_default(), port_name)
        .ok_or_else(|| no(&format!("no port named {port_name:?}")))?;
    let label_selector = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&label_selector))
        .await?;
    Ok(Resolution {
        // Only the endpoints the API server refuses to publish (loopback); any other pod
        // would be in a slice already if it belonged there.
        endpoints: pods
            .items
            .iter()
            .filter_map(|p| from_pod(p, port))
            .filter(|e| e.addr.ip().is_loopback())
            .collect(),
        source: Source::PodSelector,
    })
}

/// Addresses to connect to (all usable endpoints); an error if there is none.
pub async fn targets(
    client: &Client,
    namespace: &str,
    service: &str,
    port_name: Option<&str>,
) -> Result<Vec<SocketAddr>> {
    let r = resolve(client, namespace, service, port_name).await?;
    let t = r.targets();
    if t.is_empty() {
        return Err(Error::NoEndpoint {
            namespace: namespace.into(),
            service: service.into(),
            reason: format!("{} endpoint(s), none ready or serving", r.endpoints.len()),
        });
    }
    Ok(t)
}

/// How often [`follow`] re-resolves by default: well under the sidecar's 2 s readiness period,
/// so polling adds at most a quarter to the propagation delay.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// Keeps a [`Targets`] equal to a Service's usable endpoints; stops when dropped.
#[must_use = "the endpoints are followed only while this lives"]
pub struct Follower {
    task: JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Resolves `service`'s port `port_name` now, then again every `every` (use [`FOLLOW_EVERY`]),
/// and keeps the returned [`Targets`] equal to its usable endpoints (see [`usable`]) until the
/// [`Follower`] is dropped. Pass the `Targets` to `FleetConfig::new`.
///
/// The first resolution's error is returned, so a wrong Service or port name fails at once;
/// it may still find no usable endpoint, and the list then starts empty. A later failed
/// resolution keeps the last list and logs a warning, as kube-proxy keeps its rules while
/// the API server is unreachable. Changes are logged at debug level.
///
/// **Propagation delay.** A pod whose readiness fails leaves the list after up to its
/// readiness probe's period (the operator's sidecar probe runs every 2 s with
/// failureThreshold 1) + the kubelet's status write (within 250 ms on the process kubelet) +
/// this poll (`every`, 500 ms by default): about 2.5–3 s at worst, ~1.5 s on average. A new or
/// restarted pod joins after the same chain. Behind a real kube-proxy the EndpointSlice
/// controller's update and kube-proxy's own sync add to it (iptables `--iptables-min-sync-period`
/// is 1 s by default), so a real cluster is somewhat slower than this, not faster.
pub async fn follow(
    client: Client,
    namespace: &str,
    service: &str,
    port_name: Option<&str>,
    every: Duration,
) -> Result<(Targets, Follower)> {
    let first = resolve(&client, namespace, service, port_name).await?;
    let targets = Targets::fixed(addresses(&first));
    tracing::debug!(
        namespace,
        service,
        source = ?first.source,
        targets = ?targets.snapshot(),
        "following service endpoints"
    );
    let (namespace, service) = (namespace.to_owned(), service.to_owned());
    let port_name = port_name.map(str::to_owned);
    let shared = targets.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        // A slow API server delays the next poll instead of causing a burst of them.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match resolve(&client, &namespace, &service, port_name.as_deref()).await {
                Ok(now) => {
                    let before = shared.snapshot();
                    let now = addresses(&now);
                    if shared.set(now.clone()) {
                        let (joined, left) = difference(&before, &now);
                        tracing::debug!(
                            namespace, service, ?joined, ?left, targets = ?now,
                            "service endpoints changed"
                        );
                    }
                }
                Err(e) => tracing::warn!(
                    namespace, service, error = %e,
                    "resolving service endpoints failed; keeping the last ones"
                ),
            }
        }
    });
    Ok((targets, Follower { task }))
}

/// The usable addresses in a stable order, so an unchanged Service never counts as a change
/// however the API server orders its lists.
fn addresses(resolution: &Resolution) -> Vec<SocketAddr> {
    let mut addrs = resolution.targets();
    addrs.sort();
    addrs.dedup();
    addrs
}

/// Addresses in `now` but not in `before`, and in `before` but not in `now`.
fn difference(before: &[SocketAddr], now: &[SocketAddr]) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let joined = now
        .iter()
        .filter(|a| !before.contains(a))
        .copied()
        .collect();
    let left = before
        .iter()
        .filter(|a| !now.contains(a))
        .copied()
        .collect();
    (joined, left)
}

fn find_port<'a>(ports: &'a [ServicePort], name: Option<&str>) -> Option<&'a ServicePort> {
    match name {
        Some(n) => ports.iter().find(|p| p.name.as_deref() == Some(n)),
        None if ports.len() == 1 => ports.first(),
        None => ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or("").is_empty()),
    }
}

/// Endpoints of `slices` for port `port_name`.
pub fn from_slices(slices: &[EndpointSlice], port_name: Option<&str>) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = ports.iter().find(|p| match port_name {
            Some(n) => p.name.as_deref() == Some(n),
            None => ports.len() == 1 || p.name.as_deref().unwrap_or("").is_empty(),
        });
        let Some(port) = port
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            let c = ep.conditions.clone().unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            out.push(Endpoint {
                addr: SocketAddr::new(ip, port),
                ready,
                serving: c.serving.unwrap_or(ready),
                terminating: c.terminating.unwrap_or(false),
                pod: ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.clone()),
            });
        }
    }
    out
}

/// The endpoint the endpointslice controller would write for `pod` (None: not included).
pub fn from_pod(pod: &Pod, port: &ServicePort) -> Option<Endpoint> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let target = match port.target_port.as_ref() {
        None => u16::try_from(port.port).ok()?,
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok()?,
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())?,
    };
    let pod_ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let terminating = pod.metadata.deletion_timestamp.is_some();
    Some(Endpoint {
        addr: SocketAddr::new(ip, target),
        ready: pod_ready && !terminating,
        serving: pod_ready,
        terminating,
        pod: pod.metadata.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            addr: SocketAddr::from(([127, 1, 0, last], 8443)),
            ready,
            serving,
            terminating,
            pod: None,
        }
    }

    #[test]
    fn ready_first_then_serving_terminating() {
        let eps = vec![
            ep(2, true, true, false),
            ep(3, false, true, true),
            ep(4, false, false, false),
        ];
        assert_eq!(usable(&eps), vec![&eps[0]]);
        let draining = vec![
            ep(3, false, true, true),
            ep(4, false, false, false),
            ep(5, false, false, true),
        ];
        assert_eq!(usable(&draining), vec![&draining[0]]);
        assert!(usable(&[ep(4, false, false, false)]).is_empty());
    }

    #[test]
    fn pick_spreads_over_ready_endpoints() {
        let eps = vec![
            ep(2, true, true, false),
            ep(3, true, true, false),
            ep(4, false, false, false),
        ];
        let mut rng = Rng::new(7);
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..600 {
            *seen.entry(pick(&eps, &mut rng).unwrap().addr).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen.values().all(|&n| n > 200), "{seen:?}");
    }

    #[test]
    fn followed_addresses_are_usable_sorted_and_unique() {
        let mut same_pod_twice = ep(3, true, true, false);
        same_pod_twice.pod = Some("gw-3".into());
        let r = Resolution {
            endpoints: vec![
                ep(4, true, true, false),
                ep(3, true, true, false),
                ep(5, false, true, true),
                same_pod_twice,
            ],
            source: Source::PodSelector,
        };
        let a = |last| SocketAddr::from(([127, 1, 0, last], 8443));
        assert_eq!(addresses(&r), vec![a(3), a(4)]);
        assert_eq!(
            difference(&[a(3), a(4)], &[a(4), a(6)]),
            (vec![a(6)], vec![a(3)])
        );
    }

    #[test]
    fn slices_parse_conditions_and_named_ports() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "addressType": "IPv4",
            "metadata": { "name": "s" },
            "ports": [{ "name": "tls", "port": 8443 }, { "name": "admin", "port": 9901 }],
            "endpoints": [
                { "addresses": ["10.0.0.1"], "conditions": { "ready": true } },
                { "addresses": ["10.0.0.2"], "conditions": { "ready": false, "serving": true, "terminating": true },
                  "targetRef": { "kind": "Pod", "name": "gw-1" } },
                { "addresses": ["10.0.0.3"] },
            ],
        }))
        .unwrap();
        let eps = from_slices(&[slice], Some("tls"));
        assert_eq!(eps.len(), 3);
        assert_eq!(eps[0].addr, "10.0.0.1:8443".parse().unwrap());
        assert!(eps[2].ready && eps[2].serving && !eps[2].terminating);
        assert!(!eps[1].ready && eps[1].serving && eps[1].terminating);
        assert_eq!(eps[1].pod.as_deref(), Some("gw-1"));
    }
}
