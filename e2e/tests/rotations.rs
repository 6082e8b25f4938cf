//! Rotations and failures with 3,000 real agents on 3 pods, on the real control plane with real
//! cert-manager: what a fleet sees when its certificate is renewed (hot reload; hot reload with
//! `reconnectExisting`; rolling restart), when a pod's processes die, and when the operator's
//! leader dies in the middle of a rolling restart.
//!
//! Each test brings up its own control plane. They take a lock and run one at a time: two
//! control planes and 6,000 agents at once would measure the machine's 2 cores, not Ballast.
//!
//! Everything a test claims for "the whole rotation" is sampled over the whole rotation, every
//! quarter second ([`Seen::sample`]): connections per pod, pods unavailable, pod uids, and each
//! sidecar's accepted connections and operator drains from its own metrics.

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ballast_e2e::endpoints::Follower;
use ballast_fleet::agents::{Fleet, FleetConfig, Targets};
use ballast_fleet::simulate::config::{Scenario, SimConfig, Strategy};
use ballast_fleet::simulate::report::ScenarioReport;
use ballast_fleet::simulate::run_scenario;
use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use std::sync::{Arc, Mutex};

use ballast_fleet::presence::{check_accounted_in_order, events_of, EventConsumer};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::ListParams;
use kube::Api;

/// One control plane at a time (see the module's doc).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const AGENTS: usize = 3_000;
/// The example's handshake limit per pod.
const HANDSHAKES_PER_SECOND: f64 = 500.0;
/// The example's rebalance tolerance.
const TOLERANCE: f64 = 0.10;
const GATEWAYS: &str = "ballast.dev/presencecluster=edge";

/// A control plane, the operator, `edge` with 3 Ready pods and 3,000 agents connected and
/// balanced.
struct Rig {
    lc: LocalCluster,
    fleet: Fleet,
    targets: Targets,
    _follower: Follower,
    pods: Api<Pod>,
    /// Uids of the pods that were Ready when the rig came up: a sampler that starts while
    /// one of them is steered away (not Ready by design) must not take it for one starting.
    ready_at_start: BTreeSet<String>,
}

/// Brings up the rig with `operators` operator replicas and the example PresenceCluster after
/// `edit`; every edit must have changed the text (asserted), so a renamed field cannot make a
/// test silently run the defaults.
async fn rig(tag: &str, operators: usize, edits: &[(&str, &str)]) -> Rig {
    let lc = start(
        tag,
        &["ballast-sidecar", "ballast-fleet", "ballast-operator"],
    )
    .await;
    install_operator(&lc, operators);
    let ca_pem = apply_examples(&lc).await;
    let mut edge = example("presencecluster.yaml");
    for (from, to) in edits {
        assert!(edge.contains(from), "the example has no {from:?}");
        edge = edge.replace(from, to);
    }
    let (ok, out) = apply(&lc, "edge.yaml", &edge);
    assert!(ok, "{out}");
    wait_ready(&lc, "edge", 3, Duration::from_secs(90)).await;
    // Before any agent connects, so no pod is steered away yet: all 3 are Ready here.
    let pods: Api<Pod> = Api::namespaced(lc.client.clone(), NS);
    let ready_at_start = pods
        .list(&ListParams::default().labels(GATEWAYS))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| pod_ready(p))
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let (targets, follower) = follow_edge(&lc).await;
    wait_endpoints(&lc, &targets, 3).await;
    let mut config = FleetConfig::new(targets.clone(), AGENTS, ca_pem);
    config.duration = Duration::from_secs(1_200);
    config.ramp = Duration::from_secs(15);
    let fleet = Fleet::start(config).unwrap();
    fleet
        .wait_connected(AGENTS, Duration::from_secs(120))
        .await
        .unwrap();
    let rig = Rig {
        lc,
        fleet,
        targets,
        _follower: follower,
        pods,
        ready_at_start,
    };
    let t = Instant::now();
    eventually("3 pods balanced", Duration::from_secs(120), || async {
        rig.balanced(3)
    })
    .await;
    // Balanced within the tolerance is not the end of the episode (it runs to half the
    // tolerance): wait until no agent has been moved for 5 s, so that what a test counts from
    // here is its own event's doing.
    let mut last = (rig.fleet.stats().disconnects, Instant::now());
    let quiet_by = Instant::now() + Duration::from_secs(90);
    while last.1.elapsed() < Duration::from_secs(5) {
        assert!(
            Instant::now() < quiet_by,
            "the fleet never went 5 s without a move"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rig.fleet.stats().disconnects;
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    step!(
        "{AGENTS} agents on 3 pods, balanced {:.1}s after the last connected: {:?}",
        t.elapsed().as_secs_f64(),
        rig.counts()
    );
    rig
}

impl Rig {
    /// Connections per current endpoint.
    fn counts(&self) -> Vec<usize> {
        let stats = self.fleet.stats();
        self.targets
            .snapshot()
            .iter()
            .map(|a| stats.per_target.get(&a.to_string()).copied().unwrap_or(0))
            .collect()
    }

    /// Ok when the pods' connections are within [`TOLERANCE`] of the mean over `n` pods, every
    /// agent is connected, and `n` pods are listed.
    fn balanced(&self, n: usize) -> Result<(), String> {
        let stats = self.fleet.stats();
        let counts: Vec<usize> = stats
            .per_target
            .values()
            .copied()
            .filter(|&c| c > 0)
            .collect();
        let mean = AGENTS as f64 / n as f64;
        let within = counts.len() == n
            && stats.connected == AGENTS
            && counts
                .iter()
                .all(|&c| (c as f64 - mean).abs() <= TOLERANCE * mean);
        if within {
            Ok(())
        } else {
            Err(format!(
                "{} connected, per pod {:?}",
                stats.connected, stats.per_target
            ))
        }
    }

    /// Pauses the planner: annotates `edge` with `ballast.dev/paused=true`.
    fn pause(&self) {
        let (ok, out) = self.lc.run(
            "kubectl",
            &[
                "annotate",
                "--overwrite",
                "prc",
                "edge",
                "-n",
                NS,
                "ballast.dev/paused=true",
            ],
        );
        assert!(ok, "{out}");
    }

    /// Pauses the planner (`ballast.dev/paused`) and waits until every agent is connected and
    /// none moves, before the fleet is stopped: a fleet stopped while rebalancing still moves agents would
    /// count an agent caught between its close and its reconnect as not connected at the end.
    async fn settle(&self) {
        self.pause();
        // A drain asked for just before the pause goes on at its sidecar for up to a second
        // (a CI run stopped the fleet with one agent on its way back: 2,999 at the end): settled
        // is every agent connected and no disconnect in a 2 s window.
        eventually(
            "every agent connected and none moving, the planner paused",
            Duration::from_secs(30),
            || async {
                let a = self.fleet.stats();
                tokio::time::sleep(Duration::from_secs(2)).await;
                let b = self.fleet.stats();
                if b.connected == AGENTS && a.disconnects == b.disconnects {
                    Ok(())
                } else {
                    Err(format!(
                        "{} connected, {} disconnects in 2 s",
                        b.connected,
                        b.disconnects - a.disconnects
                    ))
                }
            },
        )
        .await;
    }

    async fn status(&self) -> serde_json::Value {
        prc_status(&self.lc, "edge").await.unwrap()
    }
}

/// What the samples saw over a window.
#[derive(Default, Debug)]
struct Seen {
    /// Most connections each pod address held at one sample (the fleet's own count).
    peak_per_target: BTreeMap<String, usize>,
    /// Every uid each pod name had.
    uids: BTreeMap<String, BTreeSet<String>>,
    /// Most of the 3 pods unavailable at one sample: absent, terminating, or starting (never
    /// Ready yet). A pod that has been Ready and is not terminating serves its agents even
    /// while its readiness fails: the operator steers new connections away that way, and the
    /// kubelet's readiness lags the sidecar by up to a probe period.
    most_unavailable: usize,
    /// The pods at the sample that saw `most_unavailable`.
    worst_unavailable: String,
    /// Pod uids seen Ready at least once.
    ever_ready: BTreeSet<String>,
    /// Pod uid → (name, the sidecar's `directive_drains_total` at its last scrape).
    drains: BTreeMap<String, (String, f64)>,
    /// Pod uid → the highest accept rate over any stretch of at least 1 s between scrapes.
    peak_accepts_per_second: BTreeMap<String, f64>,
    /// Pod uid → connections the sidecar refused for its handshake rate.
    refused_for_rate: BTreeMap<String, f64>,
    /// Pod uid → (when, accepted_total) at the start of the current stretch.
    accepted_from: BTreeMap<String, (Instant, f64)>,
    /// The latest sample's pods: name → (uid, Ready and not terminating).
    pods_now: BTreeMap<String, (String, bool)>,
    /// The latest sample's sidecar `/readyz` answers of pods not Ready: why they are not.
    not_ready_why: BTreeMap<String, String>,
    /// The latest sample's PresenceCluster status.
    status: serde_json::Value,
    /// When set, `kubectl get prc edge` every 3 s, each line that differs from the last kept:
    /// what a person watching sees.
    watch_kubectl: bool,
    kubectl_lines: Vec<String>,
    kubectl_at: Option<Instant>,
    samples: usize,
    /// Each pod ConfigMap `edge-planned-disconnects` listed as draining, as first listed.
    planned_listed: BTreeMap<String, serde_json::Value>,
    /// The ConfigMap's latest document.
    planned_now: serde_json::Value,
}

impl Seen {
    async fn sample(&mut self, rig: &Rig) {
        self.samples += 1;
        if self.samples == 1 {
            self.ever_ready.extend(rig.ready_at_start.iter().cloned());
        }
        if self.watch_kubectl
            && self
                .kubectl_at
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(3))
        {
            self.kubectl_at = Some(Instant::now());
            let (ok, out) = rig.lc.run("kubectl", &["get", "prc", "edge", "-n", NS]);
            let mut lines = out.lines();
            if let (true, Some(header), Some(line)) = (ok, lines.next(), lines.next()) {
                if self.kubectl_lines.is_empty() {
                    self.kubectl_lines.push(header.to_owned());
                }
                // The AGE column alone changing is not news.
                let without_age = |l: &str| {
                    l.rsplit_once(char::is_whitespace)
                        .map(|(a, _)| a.trim_end().to_owned())
                };
                if self.kubectl_lines.last().map(|l| without_age(l)) != Some(without_age(line)) {
                    self.kubectl_lines.push(line.to_owned());
                }
            }
        }
        for (addr, n) in rig.fleet.stats().per_target {
            let peak = self.peak_per_target.entry(addr).or_default();
            *peak = (*peak).max(n);
        }
        let Ok(list) = rig.pods.list(&ListParams::default().labels(GATEWAYS)).await else {
            return;
        };
        if let Ok(status) = prc_status(&rig.lc, "edge").await {
            self.status = status;
        }
        if let Some(doc) = planned_disconnects(&rig.lc).await {
            for pod in doc["pods"].as_array().into_iter().flatten() {
                let name = pod["name"].as_str().unwrap_or_default().to_owned();
                self.planned_listed.entry(name).or_insert(pod.clone());
            }
            self.planned_now = doc;
        }
        self.pods_now.clear();
        self.not_ready_why.clear();
        let mut available = 0;
        for pod in &list.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let up = pod_ready(pod) && pod.metadata.deletion_timestamp.is_none();
            self.pods_now.insert(name.clone(), (uid.clone(), up));
            if up {
                self.ever_ready.insert(uid.clone());
            }
            if pod.metadata.deletion_timestamp.is_none() && self.ever_ready.contains(&uid) {
                available += 1;
            }
            self.uids
                .entry(name.clone())
                .or_default()
                .insert(uid.clone());
            let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
                continue;
            };
            if !up {
                let why = http_get(format!("{ip}:9901").parse().unwrap(), "/readyz").await;
                self.not_ready_why.insert(name.clone(), format!("{why:?}"));
            }
            let Ok((200, text)) = http_get(format!("{ip}:9901").parse().unwrap(), "/metrics").await
            else {
                continue;
            };
            let drains = metric(&text, "ballast_sidecar_directive_drains_total");
            self.drains.insert(uid.clone(), (name, drains));
            let refused = metric(
                &text,
                "ballast_sidecar_connections_refused_total{reason=\"handshake_rate\"}",
            );
            self.refused_for_rate.insert(uid.clone(), refused);
            let accepted = metric(&text, "ballast_sidecar_connections_accepted_total");
            let now = Instant::now();
            let (since, from) = *self
                .accepted_from
                .entry(uid.clone())
                .or_insert((now, accepted));
            let stretch = now.duration_since(since).as_secs_f64();
            if stretch >= 1.0 {
                let rate = (accepted - from) / stretch;
                let peak = self.peak_accepts_per_second.entry(uid.clone()).or_default();
                *peak = peak.max(rate);
                self.accepted_from.insert(uid, (now, accepted));
            }
        }
        let unavailable = 3usize.saturating_sub(available);
        if unavailable > self.most_unavailable {
            self.most_unavailable = unavailable;
            // What the worst sample saw, for the failure message.
            self.worst_unavailable = list
                .items
                .iter()
                .map(|p| {
                    let uid = p.metadata.uid.clone().unwrap_or_default();
                    format!(
                        "{} uid {} Ready {} terminating {} ever Ready {}",
                        p.metadata.name.as_deref().unwrap_or_default(),
                        &uid[..8.min(uid.len())],
                        pod_ready(p),
                        p.metadata.deletion_timestamp.is_some(),
                        self.ever_ready.contains(&uid)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
                + &format!(" (sample {})", self.samples);
        }
    }

    /// Samples every 250 ms until `done` answers Ok or `timeout` passes (a failure).
    async fn until<T>(
        &mut self,
        rig: &Rig,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Rig, &Seen) -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut line = Instant::now();
        loop {
            self.sample(rig).await;
            match done(rig, self) {
                Ok(v) => return v,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "timed out after {timeout:?} waiting for {what}: {e}"
                    );
                    if line.elapsed() >= Duration::from_secs(5) {
                        line = Instant::now();
                        step!("  waiting for {what}: {e}");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Samples until the roll is over (see [`rolled`]), at most 300 s.
    async fn until_rolled(
        &mut self,
        rig: &Rig,
        before: &BTreeMap<String, BTreeSet<String>>,
        old_sha: &serde_json::Value,
    ) {
        self.until(
            rig,
            "every pod replaced, the renewal served 3/3",
            Duration::from_secs(300),
            |rig, seen| {
                rolled(seen, before, old_sha)
                    .map_err(|e| format!("{e}; agents per pod {:?}", rig.fleet.stats().per_target))
            },
        )
        .await;
    }

    /// Renews the certificate and samples until the roll is over and the fleet is balanced
    /// (120 s at most): the pods' uids before, and how long after the renewal each took.
    async fn renew_roll_and_balance(
        &mut self,
        rig: &Rig,
    ) -> (BTreeMap<String, BTreeSet<String>>, Duration, Duration) {
        self.sample(rig).await;
        let before = self.uids.clone();
        let old_sha = self.status["certificate"]["sha256"].clone();
        let renewed_at = renew_certificate(&rig.lc).await;
        self.until_rolled(rig, &before, &old_sha).await;
        let rolled_in = renewed_at.elapsed();
        self.until(
            rig,
            "balanced within tolerance",
            Duration::from_secs(120),
            |rig, _| rig.balanced(3),
        )
        .await;
        (before, rolled_in, renewed_at.elapsed())
    }

    /// No pod accepted faster than its handshake limit over any second, none refused for it.
    fn assert_handshake_rate_held(&self) {
        for (uid, rate) in &self.peak_accepts_per_second {
            // The limit is a token bucket holding a tenth of a second: a 1 s stretch can admit
            // 1.1 × the rate, and a scrape's timing adds a little.
            assert!(
                *rate <= HANDSHAKES_PER_SECOND * 1.2,
                "pod {uid} accepted {rate:.0}/s, above its {HANDSHAKES_PER_SECOND}/s"
            );
        }
        assert!(
            self.refused_for_rate.values().all(|&r| r == 0.0),
            "a sidecar refused agents for its handshake rate: {:?}",
            self.refused_for_rate
        );
    }
}

/// The document of ConfigMap `edge-planned-disconnects`, if it is there.
async fn planned_disconnects(lc: &LocalCluster) -> Option<serde_json::Value> {
    let maps: Api<ConfigMap> = Api::namespaced(lc.client.clone(), NS);
    let map = maps.get_opt("edge-planned-disconnects").await.ok()??;
    let text = map.data?.remove("planned-disconnects.json")?;
    serde_json::from_str(&text).ok()
}

/// A presence backend following every current pod's lifecycle events (token from Secret
/// `edge-events-token`), each stream read until it ends: pod name → events read so far.
async fn follow_events(rig: &Rig) -> BTreeMap<String, Arc<Mutex<Vec<serde_json::Value>>>> {
    let secrets: Api<Secret> = Api::namespaced(rig.lc.client.clone(), NS);
    let token = secrets
        .get("edge-events-token")
        .await
        .unwrap()
        .data
        .unwrap()["token"]
        .0
        .clone();
    let token = String::from_utf8(token).unwrap();
    let mut followed = BTreeMap::new();
    for pod in rig
        .pods
        .list(&ListParams::default().labels(GATEWAYS))
        .await
        .unwrap()
    {
        let name = pod.metadata.name.clone().unwrap();
        let ip = pod.status.unwrap().pod_ip.unwrap();
        let admin: std::net::SocketAddr = format!("{ip}:9901").parse().unwrap();
        let refused = EventConsumer::open(admin, None, "", None).await.err();
        assert!(
            refused
                .as_ref()
                .is_some_and(|e| e.to_string().contains(" 401 ")),
            "events without the token: {refused:?}"
        );
        let mut stream = EventConsumer::open(admin, Some(&token), "", None)
            .await
            .unwrap();
        let read = Arc::new(Mutex::new(Vec::new()));
        let into = read.clone();
        tokio::spawn(async move {
            while let Some(event) = stream.next(Duration::from_secs(3_600)).await {
                into.lock().unwrap().push(event);
            }
        });
        followed.insert(name, read);
    }
    followed
}

/// What a presence backend saw of a pod the roll replaced: the planned disconnects of its
/// agents, each saying until when the agent is expected back, in order and to the end (every
/// agent it saw connect, it saw leave: the stream outlived the pod's last close).
fn assert_events_of_a_replaced_pod(name: &str, events: &[serde_json::Value]) -> usize {
    check_accounted_in_order(events).unwrap();
    assert!(
        events.iter().all(|e| e["pod"] == name),
        "{name}: {events:?}"
    );
    let planned: Vec<_> = events_of(events, "disconnected")
        .filter(|e| e["cause"] == "planned")
        .collect();
    assert!(!planned.is_empty(), "{name}: no planned disconnect seen");
    for e in &planned {
        assert!(e["expected_back_by"].as_str() > e["time"].as_str(), "{e}");
    }
    let left: BTreeSet<_> = events_of(events, "disconnected")
        .filter_map(|e| e["connection"].as_u64())
        .collect();
    for e in events_of(events, "connected") {
        assert!(
            e["connection"]
                .as_u64()
                .is_some_and(|id| left.contains(&id)),
            "{name}: never left: {e}"
        );
    }
    planned.len()
}

/// What a person wants from a fleet's summary, on one line (the whole one lists every agent).
fn brief(s: &ballast_fleet::summary::FleetSummary) -> String {
    format!(
        "{} connected at the end, {} disconnects ({} planned, {} abrupt), failed attempts {:?}, {} false offline, longest gap {:.2}s, gaps p99 {:.2}s",
        s.connected_at_end,
        s.disconnects,
        s.graceful_closes,
        s.abrupt_closes,
        s.handshake_failures,
        s.false_offline,
        s.longest_gap_seconds,
        s.gaps_seconds.p99
    )
}

/// The certificate each agent's connection presents → agents.
fn on_certificates(rig: &Rig) -> BTreeMap<String, usize> {
    rig.fleet.stats().server_cert_sha256
}

/// Waits until status names a fingerprint other than `before`, served by 3/3, with
/// CertificateServed=True; returns the new fingerprint.
async fn new_certificate_served(rig: &Rig, before: &serde_json::Value) -> String {
    eventually(
        "status: the renewed certificate served by every pod",
        Duration::from_secs(60),
        || async {
            let s = prc_status(&rig.lc, "edge").await?;
            let c = &s["certificate"];
            let served = condition(&s, "CertificateServed");
            if c["sha256"] != *before && c["served"] == "3/3" && served["status"] == "True" {
                Ok(c["sha256"].as_str().unwrap_or_default().to_owned())
            } else {
                Err(format!("certificate {c}, CertificateServed {served}"))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_renewal_disconnects_nobody() {
    let _one = ONE_AT_A_TIME.lock().await;
    let rig = rig("hot-reload", 1, &[]).await;
    let before = rig.status().await["certificate"]["sha256"].clone();
    let disconnects_before = rig.fleet.stats().disconnects;
    let mut seen = Seen::default();
    seen.sample(&rig).await;
    let drains_before = seen.drains.clone();
    let renewed_at = renew_certificate(&rig.lc).await;
    let sha = new_certificate_served(&rig, &before).await;
    step!(
        "renewed: {sha} served 3/3, CertificateServed=True, {:.1}s after the Secret changed",
        renewed_at.elapsed().as_secs_f64()
    );
    for pod in rig
        .pods
        .list(&ListParams::default().labels(GATEWAYS))
        .await
        .unwrap()
    {
        let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
        assert_eq!(
            sidecar_sha256(&ip).await.unwrap(),
            sha,
            "{ip} serves another"
        );
    }
    // New agents get the new certificate; existing ones keep their session (nothing asked
    // them to move). Watch a while longer: a late drain would show here.
    let settle = Instant::now() + Duration::from_secs(10);
    seen.until(
        &rig,
        "10 s after the renewal",
        Duration::from_secs(15),
        |_, _| {
            if Instant::now() >= settle {
                Ok(())
            } else {
                Err("watching".into())
            }
        },
    )
    .await;
    let summary = {
        rig.settle().await;
        rig.fleet.stop().await
    };
    step!("hot reload: {}", brief(&summary));
    assert_eq!(
        summary.disconnects,
        disconnects_before,
        "nobody was disconnected by the renewal: {}",
        brief(&summary)
    );
    assert_eq!(summary.connected_at_end, AGENTS);
    assert_eq!(seen.drains, drains_before, "no drain was asked for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_with_reconnect_existing_moves_everyone_within_the_window() {
    const WINDOW: f64 = 60.0;
    /// From the Secret's change: the sidecars' reload (files polled every second), the next
    /// report, the planner's first plan, and the pacing's last second.
    const MARGIN: f64 = 10.0;
    let _one = ONE_AT_A_TIME.lock().await;
    let rig = rig(
        "reconnect-existing",
        1,
        &[(
            "rotation: {strategy: HotReload}",
            "rotation: {strategy: HotReload, reconnectExisting: {within: 60s}}",
        )],
    )
    .await;
    let before = rig.status().await["certificate"]["sha256"].clone();
    let mut seen = Seen::default();
    let renewed_at = renew_certificate(&rig.lc).await;
    let renewed_at_fleet = renewed_at
        .duration_since(rig.fleet.started_at().into_std())
        .as_secs_f64();
    let sha = new_certificate_served(&rig, &before).await;
    step!("renewed: {sha} served 3/3; every agent must be on it within {WINDOW} s + {MARGIN} s");
    let moved = seen
        .until(
            &rig,
            "every agent on the new certificate",
            Duration::from_secs_f64(WINDOW + MARGIN + 30.0),
            |rig, _| {
                let new = on_certificates(rig).get(&sha).copied().unwrap_or(0);
                if new == AGENTS && rig.fleet.stats().connected == AGENTS {
                    Ok(renewed_at.elapsed())
                } else {
                    Err(format!(
                        "t={:.0}s {new} on the new certificate, per pod {:?}",
                        renewed_at.elapsed().as_secs_f64(),
                        rig.counts()
                    ))
                }
            },
        )
        .await;
    let summary = {
        rig.settle().await;
        rig.fleet.stop().await
    };
    let closes: Vec<f64> = summary
        .graceful_close_times_seconds
        .iter()
        .copied()
        .filter(|t| *t >= renewed_at_fleet)
        .collect();
    // The fullest 1 s window of planned closes.
    let busiest = closes
        .iter()
        .enumerate()
        .map(|(i, t)| closes[i..].iter().take_while(|u| **u < t + 1.0).count())
        .max()
        .unwrap_or(0);
    let share = AGENTS as f64 / WINDOW;
    step!(
        "reconnectExisting 60s: all {AGENTS} on the new certificate {:.1}s after the renewal; {} planned closes, the busiest second held {busiest} (share {share:.0}); longest gap {:.2}s; peak accepts/s per pod {:?}",
        moved.as_secs_f64(),
        closes.len(),
        summary.longest_gap_seconds,
        seen.peak_accepts_per_second
    );
    assert!(
        moved.as_secs_f64() <= WINDOW + MARGIN,
        "moved in {moved:?}, window {WINDOW} s + {MARGIN} s"
    );
    assert!(
        closes.len() >= AGENTS,
        "every agent was moved: {} closes",
        closes.len()
    );
    assert!(
        busiest as f64 <= 2.0 * share,
        "{busiest} planned closes in one second, more than twice the share {share:.0}"
    );
    assert!(
        summary.longest_gap_seconds <= 5.0,
        "an agent was away {:.1}s",
        summary.longest_gap_seconds
    );
    assert_eq!(summary.abrupt_closes, 0, "{}", brief(&summary));
    seen.assert_handshake_rate_held();
}

/// Ok once every pod named in `before` runs under a new uid that has been Ready (a full pod is
/// steered away, and steering fails readiness by design), and status says a certificate other
/// than `old_sha` is served by 3/3: the roll is over.
fn rolled(
    seen: &Seen,
    before: &BTreeMap<String, BTreeSet<String>>,
    old_sha: &serde_json::Value,
) -> Result<(), String> {
    let replaced = before.iter().all(|(name, old)| {
        seen.pods_now
            .get(name)
            .is_some_and(|(uid, _)| seen.ever_ready.contains(uid) && !old.contains(uid))
    });
    let c = &seen.status["certificate"];
    if replaced && c["sha256"] != *old_sha && c["served"] == "3/3" {
        Ok(())
    } else {
        Err(format!(
            "pods {:?}; not Ready because {:?}; certificate {c}; waiting {}; planner {}; pods in status {}",
            seen.pods_now, seen.not_ready_why, seen.status["waiting"], seen.status["planner"], seen.status["pods"]
        ))
    }
}

/// The roll's invariants over the whole window: each pod replaced exactly once (uids seen and
/// the operator's Events), never more than `maxUnavailable` (1) pods unavailable, no pod above
/// `capacity`. (Refusals for the handshake rate are reported, not asserted: the sidecar's
/// limit is what protects a receiver when agents arrive faster than the plan meant.)
async fn assert_rolled_once(
    lc: &LocalCluster,
    seen: &Seen,
    before: &BTreeMap<String, BTreeSet<String>>,
    capacity: usize,
) {
    for (name, uids) in &seen.uids {
        assert!(before.contains_key(name), "a pod nobody asked for: {name}");
        assert_eq!(
            uids.len(),
            2,
            "{name} ran as {uids:?}: replaced exactly once"
        );
    }
    let mut restarted = restarted_pods(lc).await;
    restarted.sort();
    let names: Vec<String> = before.keys().cloned().collect();
    assert_eq!(restarted, names, "one PodRestarted Event per pod");
    assert!(
        seen.most_unavailable <= 1,
        "{} pods unavailable at once, maxUnavailable 1: {}",
        seen.most_unavailable,
        seen.worst_unavailable
    );
    for (addr, peak) in &seen.peak_per_target {
        assert!(*peak <= capacity, "{addr} held {peak}, capacity {capacity}");
    }
}

/// Per pod: 3,000 agents fit on 2 pods with a third to spare (1,500 of 2,000 each), so one pod
/// at a time can go, and a pod filled beyond what the plan allows would show. (At 1,600, barely
/// above what 2 pods must hold, the roll meets full pods while the Service still routes to
/// them — see docs/rotations.md — and agents wait out refusals.)
const CAPACITY: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_renewal_replaces_each_pod_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let rig = rig(
        "rolling-restart",
        1,
        &[
            ("strategy: HotReload", "strategy: RollingRestart"),
            ("maxConnectionsPerPod: 10000", "maxConnectionsPerPod: 2000"),
        ],
    )
    .await;
    let mut seen = Seen {
        watch_kubectl: true,
        ..Seen::default()
    };
    let followed = follow_events(&rig).await;
    let (before, rolled_in, balanced_in) = seen.renew_roll_and_balance(&rig).await;
    let summary = {
        rig.settle().await;
        rig.fleet.stop().await
    };
    // The presence backend's view: every replaced pod announced its drain in the ConfigMap
    // (and its agents' planned disconnects in its event stream), and the window closed after.
    let mut planned_events = 0;
    for (name, events) in &followed {
        let listed = &seen.planned_listed.get(name);
        let listed =
            listed.unwrap_or_else(|| panic!("{name} never listed: {:?}", seen.planned_listed));
        assert!(
            listed["holdOfflineUntil"].as_str() > listed["drainingUntil"].as_str(),
            "{listed}"
        );
        planned_events += assert_events_of_a_replaced_pod(name, &events.lock().unwrap());
    }
    assert!(
        planned_events as u64 <= summary.graceful_closes,
        "{planned_events} planned disconnect events, {}",
        brief(&summary)
    );
    eventually(
        "no pod listed as draining",
        Duration::from_secs(60),
        || async {
            match planned_disconnects(&rig.lc).await {
                Some(doc) if doc["pods"] == serde_json::json!([]) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    step!(
        "presence backend: {planned_events} planned disconnect events from the 3 replaced pods, each pod listed in edge-planned-disconnects while it drained: {:?}",
        seen.planned_listed
    );
    step!(
        "RollingRestart renewal: rolled in {:.1}s, balanced {:.1}s after the renewal; peak per pod {:?}; most unavailable {}; peak accepts/s {:?}; refused for the handshake rate {:?}; {}",
        rolled_in.as_secs_f64(),
        balanced_in.as_secs_f64(),
        seen.peak_per_target,
        seen.most_unavailable,
        seen.peak_accepts_per_second,
        seen.refused_for_rate,
        brief(&summary)
    );
    step!(
        "kubectl get prc during the roll:\n{}",
        seen.kubectl_lines.join("\n")
    );
    assert_rolled_once(&rig.lc, &seen, &before, CAPACITY).await;
    assert!(
        summary.longest_gap_seconds <= 10.0,
        "an agent was away {:.1}s",
        summary.longest_gap_seconds
    );
    assert_eq!(summary.connected_at_end, AGENTS);
    assert_eq!(summary.false_offline, 0, "{}", brief(&summary));
    simulator_agrees(&summary, balanced_in.as_secs_f64());
}

/// The simulator runs this very planner on a model of this rig ([`simulated`]); what it
/// predicts must be what the real run did, within what the model leaves out:
/// - nobody offline in either;
/// - connections moved within a factor of [`MOVED_FACTOR`]: the model's reports are never
///   late and its load balancer lags by a fixed 1.5 s, where on this 2-core machine, busy with
///   3,000 agents' handshakes, reports arrive up to seconds late and the lag is 0–2.5 s; both
///   make receivers overshoot and the same agents move again (three real runs moved 6,381,
///   6,463 and 9,514 where the model moves 5,095);
/// - time to balance within [`BALANCE_SLACK`] seconds: the real pods restart in 5–13 s, not
///   the model's fixed 10 s, three times over, and a loaded machine's reports lag.
fn simulator_agrees(real: &ballast_fleet::summary::FleetSummary, real_balance: f64) {
    let sim = simulated(&[Strategy::Ballast]);
    let s = &sim.strategies[0];
    step!(
        "simulator, same scenario: moved {} (real {}), balanced {:?} s after the renewal (real {real_balance:.1} s), longest gap {:.1} s (real {:.1} s), false offline {} (real {})",
        s.connections_moved,
        real.disconnects,
        s.time_to_balance_seconds,
        s.longest_gap_seconds,
        real.longest_gap_seconds,
        s.false_offline,
        real.false_offline
    );
    assert_eq!(
        s.false_offline, 0,
        "the simulator saw agents offline: {s:?}"
    );
    let ratio = real.disconnects as f64 / s.connections_moved.max(1) as f64;
    assert!(
        (1.0 / MOVED_FACTOR..=MOVED_FACTOR).contains(&ratio),
        "connections moved: real {} against the simulator's {} (x{ratio:.2}, agreement within x{MOVED_FACTOR})",
        real.disconnects,
        s.connections_moved
    );
    let sim_balance = s
        .time_to_balance_seconds
        .expect("the simulator balances the fleet");
    assert!(
        (real_balance - sim_balance).abs() <= BALANCE_SLACK,
        "balanced {real_balance:.1} s after the renewal, the simulator says {sim_balance:.1} s (agreement within {BALANCE_SLACK} s)"
    );
}

/// See [`simulator_agrees`].
const MOVED_FACTOR: f64 = 2.0;
/// See [`simulator_agrees`].
const BALANCE_SLACK: f64 = 30.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pod_is_refilled_by_rebalancing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let rig = rig("pod-killed", 1, &[]).await;
    let victim = rig.pods.get("edge-1").await.unwrap();
    let addr = format!(
        "{}:8443",
        victim.status.as_ref().unwrap().pod_ip.as_deref().unwrap()
    );
    let processes = pids(&victim);
    let held = rig
        .fleet
        .stats()
        .per_target
        .get(&addr)
        .copied()
        .unwrap_or(0);
    let cut_before = rig.fleet.stats().disconnects;
    let killed_at = Instant::now();
    for (container, pid) in &processes {
        let ok = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {container} ({pid})");
    }
    step!("edge-1's processes {processes:?} killed holding {held} agents");
    let mut seen = Seen::default();
    let back = seen
        .until(
            &rig,
            "every agent cut by the kill connected again",
            Duration::from_secs(60),
            |rig, _| {
                // Back anywhere: the kubelet may restart the containers so fast that the
                // Service never stops routing to the pod, and some agents return to it.
                let stats = rig.fleet.stats();
                if stats.connected == AGENTS && stats.disconnects >= cut_before + held as u64 {
                    Ok(killed_at.elapsed())
                } else {
                    Err(format!(
                        "{} connected, per pod {:?}",
                        stats.connected, stats.per_target
                    ))
                }
            },
        )
        .await;
    step!(
        "all {AGENTS} connected again {:.1}s after the kill: {:?}",
        back.as_secs_f64(),
        rig.counts()
    );
    let uid = victim.metadata.uid.clone().unwrap();
    let ready_again = seen
        .until(
            &rig,
            "edge-1 Ready again",
            Duration::from_secs(90),
            |_, seen| match seen.pods_now.get("edge-1") {
                Some((u, true)) if *u == uid => Ok(killed_at.elapsed()),
                other => Err(format!("edge-1 {other:?}")),
            },
        )
        .await;
    let filled = seen
        .until(
            &rig,
            "edge-1 refilled within tolerance",
            Duration::from_secs(120),
            |rig, _| rig.balanced(3).map(|()| killed_at.elapsed()),
        )
        .await;
    let summary = {
        rig.settle().await;
        rig.fleet.stop().await
    };
    let mean = AGENTS as f64 / 3.0;
    let to_move = mean * (1.0 - TOLERANCE);
    step!(
        "pod killed: edge-1 Ready again {:.1}s after the kill, refilled to within {:.0}% of the mean {:.1}s after it was Ready (≥ {to_move:.0} moved; budget 500/s); {}",
        ready_again.as_secs_f64(),
        TOLERANCE * 100.0,
        (filled - ready_again).as_secs_f64(),
        brief(&summary)
    );
    assert!(
        summary.abrupt_closes as usize >= held,
        "the kill cut edge-1's agents"
    );
    assert_eq!(summary.connected_at_end, AGENTS);
    assert_eq!(summary.false_offline, 0, "{}", brief(&summary));
    assert!(
        seen.uids["edge-1"].len() == 1,
        "edge-1 restarted in place, not replaced: {:?}",
        seen.uids
    );
    step!(
        "refused for the handshake rate (the sidecars' own protection during the crash's storm): {:?}",
        seen.refused_for_rate
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_mid_roll_is_resumed_by_the_other_replica() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Rebalancing off: then every drain a sidecar receives is its own restart's, and a count
    // of them is exact.
    let rig = rig(
        "leader-killed",
        2,
        &[
            ("strategy: HotReload", "strategy: RollingRestart"),
            ("maxConnectionsPerPod: 10000", "maxConnectionsPerPod: 2000"),
            (
                "presence: {offlineThreshold: 60s, events: {enabled: true}}",
                "presence: {offlineThreshold: 60s, events: {enabled: true}}\n  rebalance: {enabled: false}",
            ),
        ],
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(rig.lc.client.clone(), OPERATOR_NS);
    let holder = || async {
        leases
            .get("ballast-operator")
            .await
            .ok()
            .and_then(|l| l.spec?.holder_identity)
            .unwrap_or_default()
    };
    let mut seen = Seen::default();
    seen.sample(&rig).await;
    let before = seen.uids.clone();
    let old_sha = seen.status["certificate"]["sha256"].clone();
    let renewed_at = renew_certificate(&rig.lc).await;
    // The middle of the roll: one pod replaced, the next one draining.
    let draining = seen
        .until(
            &rig,
            "one pod replaced and another draining",
            Duration::from_secs(180),
            |_, seen| {
                let replaced = before
                    .iter()
                    .filter(|(name, old)| {
                        seen.pods_now
                            .get(*name)
                            .is_some_and(|(u, _)| !old.contains(u))
                    })
                    .count();
                let draining: Vec<&String> = seen
                    .drains
                    .iter()
                    .filter(|(uid, (name, d))| {
                        *d > 0.0
                            && before[name].contains(*uid)
                            && seen.pods_now.get(name).is_some_and(|(u, _)| u == *uid)
                    })
                    .map(|(_, (name, _))| name)
                    .collect();
                match (replaced, draining.first()) {
                    (1.., Some(name)) => Ok((*name).clone()),
                    _ => Err(format!("{replaced} replaced; drains {:?}", seen.drains)),
                }
            },
        )
        .await;
    let old_leader = holder().await;
    let operators: Api<Pod> = Api::namespaced(rig.lc.client.clone(), OPERATOR_NS);
    let pid = pids(&operators.get(&old_leader).await.unwrap())["operator"];
    let ok = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    // And its pod gone at once, as with a lost node: otherwise the kubelet restarts the
    // process within a second under the same identity, and it simply takes its Lease back.
    operators
        .delete(
            &old_leader,
            &kube::api::DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let killed_at = Instant::now();
    step!(
        "leader {old_leader} (pid {pid}) killed {:.1}s after the renewal, {draining} draining",
        renewed_at.elapsed().as_secs_f64()
    );
    seen.until_rolled(&rig, &before, &old_sha).await;
    let finished = killed_at.elapsed();
    let new_leader = holder().await;
    assert_ne!(new_leader, old_leader, "another replica finished the roll");
    let summary = {
        rig.settle().await;
        rig.fleet.stop().await
    };
    step!(
        "leader killed: {new_leader} holds the Lease; the roll finished {:.1}s after the kill; drain directives per pod {:?}; {}",
        finished.as_secs_f64(),
        seen.drains,
        brief(&summary)
    );
    assert_rolled_once(&rig.lc, &seen, &before, CAPACITY).await;
    for (uid, (name, drains)) in &seen.drains {
        if before[name].contains(uid) {
            assert!(*drains > 0.0, "{name} was restarted without a drain");
        } else {
            assert_eq!(
                *drains, 0.0,
                "{name}'s successor {uid} was drained: a second drain of a rolled pod"
            );
        }
    }
    assert!(
        summary.longest_gap_seconds <= 10.0,
        "an agent was away {:.1}s",
        summary.longest_gap_seconds
    );
    assert_eq!(summary.connected_at_end, AGENTS);
}

/// The simulator's run of the rotation the rolling tests make real: 3 pods, 3,000 agents, the
/// example's limits at `CAPACITY`, the fleet's backoff, and the delays of this machine's
/// process kubelet and Service follower.
fn simulated(strategies: &[Strategy]) -> ScenarioReport {
    let cfg = SimConfig {
        agents: AGENTS as u64,
        pods: 3,
        capacity: CAPACITY as u64,
        handshakes_per_second: HANDSHAKES_PER_SECOND,
        max_reconnects_per_second: 500.0,
        max_unavailable: 1,
        tolerance: TOLERANCE,
        offline_threshold: 60.0,
        // Eviction to successor Ready, measured here at 5–13 s: the old pod's preStop waits
        // for its sidecar to be empty, the StatefulSet controller, scheduler and kubelet
        // bring the successor up, and its readiness probe (2 s period) passes.
        restart_seconds: 10.0,
        // Steering reaches the agents through the readiness probe (2 s period, 1 s late on
        // average) and the follower's 0.5 s poll of the Service's endpoints.
        propagation_seconds: 1.5,
        // The fleet's agents: 100 ms doubling up to 10 s, 10 s handshake timeout.
        backoff_base: 0.1,
        backoff_cap: 10.0,
        handshake_timeout: 10.0,
        event_at: 10.0,
        duration: 300.0,
        strategies: strategies.to_vec(),
        ..SimConfig::for_scenario(Scenario::RenewalRolling)
    };
    run_scenario(&cfg, true).0
}

/// One row of the benchmark's table: what a way of restarting the 3 pods did to the fleet.
#[derive(Debug)]
struct Row {
    name: &'static str,
    /// Agents disconnected at least once.
    disconnected: usize,
    false_offline: usize,
    longest_gap: f64,
    /// From the renewal until every pod is within tolerance; `None` if not within the watch.
    time_to_balance: Option<f64>,
    /// The highest accept rate any pod had over a second.
    peak_accepts_per_pod: f64,
    /// Connections closed, planned or not.
    moved: u64,
}

impl Row {
    fn of(
        name: &'static str,
        seen: &Seen,
        summary: &ballast_fleet::summary::FleetSummary,
        time_to_balance: Option<f64>,
    ) -> Self {
        Self {
            name,
            disconnected: summary
                .per_agent
                .iter()
                .filter(|a| a.disconnects > 0)
                .count(),
            false_offline: summary.false_offline,
            longest_gap: summary.longest_gap_seconds,
            time_to_balance,
            peak_accepts_per_pod: seen
                .peak_accepts_per_second
                .values()
                .copied()
                .fold(0.0, f64::max),
            moved: summary.disconnects,
        }
    }
}

/// The table the benchmark prints: the real runs, then the simulator's figures for the same
/// scenario.
fn table(rows: &[Row], sim: &ScenarioReport) -> String {
    let ttb = |t: Option<f64>| t.map_or("never".to_owned(), |t| format!("{t:.0} s"));
    let mut out = format!(
        "| {AGENTS} agents, 3 pods | agents disconnected | false offline (>60 s) | longest gap | time to balance | peak handshakes/s per pod | connections moved |\n|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        out += &format!(
            "| {} | {} | {} | {:.1} s | {} | {:.0} | {} |\n",
            r.name,
            r.disconnected,
            r.false_offline,
            r.longest_gap,
            ttb(r.time_to_balance),
            r.peak_accepts_per_pod,
            r.moved
        );
    }
    for s in &sim.strategies {
        out += &format!(
            "| simulator: {} | – | {} | {:.1} s | {} | {} | {} |\n",
            s.strategy,
            s.false_offline,
            s.longest_gap_seconds,
            ttb(s.time_to_balance_seconds),
            s.peak_handshakes_per_pod,
            s.connections_moved
        );
    }
    out
}

/// How the benchmark restarts the pods when the planner is paused.
#[derive(Clone, Copy, PartialEq)]
enum Restart {
    /// Every pod deleted at once, as a Reloader-triggered restart of the incident did.
    AllAtOnce,
    /// One pod deleted at a time, the next once the successor is Ready: what the StatefulSet
    /// controller's RollingUpdate does.
    OneByOne,
}

/// A renewal under RollingRestart with the planner paused (`ballast.dev/paused`), the pods
/// restarted by `how`; watched until balanced or 120 s after the last successor was Ready.
async fn without_the_planner(tag: &str, name: &'static str, how: Restart) -> Row {
    let _one = ONE_AT_A_TIME.lock().await;
    let rig = rig(tag, 1, ROLLING).await;
    rig.pause();
    let mut seen = Seen::default();
    seen.sample(&rig).await;
    let before = seen.uids.clone();
    let renewed_at = renew_certificate(&rig.lc).await;
    let names: Vec<String> = before.keys().cloned().collect();
    let delete = |pod: String| {
        let pods = rig.pods.clone();
        async move { pods.delete(&pod, &Default::default()).await.map(|_| ()) }
    };
    let replaced = |name: &str, seen: &Seen| {
        seen.pods_now
            .get(name)
            .is_some_and(|(uid, up)| *up && !before[name].contains(uid))
    };
    if how == Restart::AllAtOnce {
        for pod in &names {
            delete(pod.clone()).await.unwrap();
        }
    }
    for pod in &names {
        if how == Restart::OneByOne {
            delete(pod.clone()).await.unwrap();
        }
        seen.until(
            &rig,
            &format!("{pod}'s successor Ready"),
            Duration::from_secs(180),
            |_, seen| {
                if replaced(pod, seen) {
                    Ok(())
                } else {
                    Err(format!("{:?}", seen.pods_now))
                }
            },
        )
        .await;
    }
    step!(
        "{name}: every pod replaced {:.1}s after the renewal",
        renewed_at.elapsed().as_secs_f64()
    );
    let watch_until = Instant::now() + Duration::from_secs(120);
    let balanced = seen
        .until(
            &rig,
            "balanced, or 120 s",
            Duration::from_secs(130),
            |rig, _| match rig.balanced(3) {
                Ok(()) => Ok(Some(renewed_at.elapsed().as_secs_f64())),
                Err(_) if Instant::now() >= watch_until => Ok(None),
                Err(e) => Err(e),
            },
        )
        .await;
    let summary = {
        rig.settle().await;
        rig.fleet.stop().await
    };
    step!("{name}: {}", brief(&summary));
    Row::of(name, &seen, &summary, balanced)
}

/// The example made a rolling-restart one at `CAPACITY`.
const ROLLING: &[(&str, &str)] = &[
    ("strategy: HotReload", "strategy: RollingRestart"),
    ("maxConnectionsPerPod: 10000", "maxConnectionsPerPod: 2000"),
];

/// `make bench-rotations`: the same renewal three ways on 3 pods and 3,000 agents — every pod
/// restarted at once (Reloader), a plain rolling restart, Ballast — and the simulator beside
/// them. Prints the table; asserts only that each run completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark (about 8 minutes, three control planes): make bench-rotations"]
async fn benchmark_restarts_reloader_plain_rolling_and_ballast() {
    let reloader = without_the_planner(
        "bench-reloader",
        "every pod at once (Reloader)",
        Restart::AllAtOnce,
    )
    .await;
    let plain =
        without_the_planner("bench-rolling", "plain rolling restart", Restart::OneByOne).await;
    let ballast = {
        let _one = ONE_AT_A_TIME.lock().await;
        let rig = rig("bench-ballast", 1, ROLLING).await;
        let mut seen = Seen::default();
        let (_, _, balanced) = seen.renew_roll_and_balance(&rig).await;
        let balanced = balanced.as_secs_f64();
        let summary = {
            rig.settle().await;
            rig.fleet.stop().await
        };
        Row::of("Ballast", &seen, &summary, Some(balanced))
    };
    let sim = simulated(&[Strategy::Reloader, Strategy::Rolling, Strategy::Ballast]);
    let rows = [reloader, plain, ballast];
    step!(
        "rotation benchmark (`make bench-rotations`):\n{}",
        table(&rows, &sim)
    );
}
