//! End-to-end smoke test on a real control plane with the process kubelet.
//!
//! Builds (cached) and starts kube-apiserver, kube-controller-manager, kube-scheduler, etcd and
//! cert-manager on fresh ports and a fresh state dir, starts the `ballast-e2e kubelet` binary,
//! then: a StatefulSet of 3 pods (ballast-sidecar + sample gateway, TLS Secret mounted) and a
//! Service become Ready with real processes; 300 TLS agents connect through the Service's
//! endpoints; the Secret is replaced and every sidecar serves the new certificate with no agent
//! dropped; a pod is deleted and its sidecar drains its agents gracefully before the pod is
//! gone, and the StatefulSet brings it back; cert-manager issues a Certificate from a
//! self-signed CA Issuer. Everything is torn down by Drop guards, even on failure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

#[macro_use]
mod common;

use ballast_e2e::endpoints::{self, Source};
use ballast_fleet::agents::{Fleet, FleetConfig};
use ballast_fleet::certs::{Ca, Validity};
use common::*;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret, Service};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::Api;
use serde_json::json;

const NS: &str = "ballast-smoke";
const AGENTS: usize = 300;

fn tls_secret(cert: &ballast_fleet::certs::IssuedCert) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "gateway-tls" },
        "type": "kubernetes.io/tls",
        "stringData": { "tls.crt": cert.cert_pem, "tls.key": cert.key_pem },
    }))
    .unwrap()
}

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: gateway }
spec:
  selector: { app: gateway }
  ports: [{ name: tls, port: 8443, targetPort: tls }]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: { name: gateway }
spec:
  serviceName: gateway
  replicas: 3
  podManagementPolicy: Parallel
  selector: { matchLabels: { app: gateway } }
  template:
    metadata: { labels: { app: gateway } }
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: sidecar
        image: ballast/sidecar:dev
        env:
        - { name: POD_IP, valueFrom: { fieldRef: { fieldPath: status.podIP } } }
        args:
        - --listen=$(POD_IP):8443
        - --upstream=$(POD_IP):8080
        - --admin=$(POD_IP):9901
        - --cert=/etc/ballast/tls/tls.crt
        - --key=/etc/ballast/tls/tls.key
        - --shutdown-drain=3s
        ports: [{ name: tls, containerPort: 8443 }, { name: admin, containerPort: 9901 }]
        readinessProbe:
          httpGet: { path: /readyz, port: 9901 }
          periodSeconds: 1
          failureThreshold: 1
        livenessProbe:
          httpGet: { path: /healthz, port: admin }
          periodSeconds: 2
        volumeMounts: [{ name: tls, mountPath: /etc/ballast/tls, readOnly: true }]
      - name: gateway
        image: ballast/fleet:dev
        env:
        - { name: POD_IP, valueFrom: { fieldRef: { fieldPath: status.podIP } } }
        - { name: POD_NAME, valueFrom: { fieldRef: { fieldPath: metadata.name } } }
        args: [gateway, --listen=$(POD_IP):8080]
        # The sidecar drains over 3 s on SIGTERM; the gateway must outlive that drain.
        lifecycle: { preStop: { sleep: { seconds: 5 } } }
        readinessProbe:
          tcpSocket: { port: 8080 }
          periodSeconds: 1
      volumes:
      - name: tls
        secret: { secretName: gateway-tls }
"#;

fn cert_manager_objects() -> Vec<serde_json::Value> {
    vec![
        json!({"apiVersion": "cert-manager.io/v1", "kind": "Issuer",
               "metadata": {"name": "selfsigned"}, "spec": {"selfSigned": {}}}),
        json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
               "metadata": {"name": "smoke-ca"},
               "spec": {"isCA": true, "commonName": "ballast-smoke-ca", "secretName": "smoke-ca",
                        "privateKey": {"algorithm": "ECDSA", "size": 256},
                        "issuerRef": {"name": "selfsigned", "kind": "Issuer"}}}),
        json!({"apiVersion": "cert-manager.io/v1", "kind": "Issuer",
               "metadata": {"name": "smoke-ca"}, "spec": {"ca": {"secretName": "smoke-ca"}}}),
        json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
               "metadata": {"name": "gateway-cm"},
               "spec": {"secretName": "gateway-cm-tls", "dnsNames": ["localhost", "gateway.ballast-smoke.svc"],
                        "privateKey": {"algorithm": "ECDSA", "size": 256},
                        "issuerRef": {"name": "smoke-ca", "kind": "Issuer"}}}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let LocalCluster {
        mut kubelet,
        cluster,
        client,
        ..
    } = common::start("smoke", &["ballast-sidecar", "ballast-fleet"]).await;

    // ---------------------------------------------------------------- workload
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap(),
        )
        .await
        .unwrap();
    let ca = Ca::new("ballast-smoke-ca").unwrap();
    let first = ca
        .issue_server(&["localhost".into()], Validity::Current)
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    secrets
        .create(&PostParams::default(), &tls_secret(&first))
        .await
        .unwrap();
    let t = Instant::now();
    for doc in serde_yaml::Deserializer::from_str(MANIFESTS) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        match value["kind"].as_str().unwrap() {
            "Service" => {
                let svc: Service = serde_json::from_value(value).unwrap();
                Api::<Service>::namespaced(client.clone(), NS)
                    .create(&PostParams::default(), &svc)
                    .await
                    .unwrap();
            }
            "StatefulSet" => {
                let sts: StatefulSet = serde_json::from_value(value).unwrap();
                Api::<StatefulSet>::namespaced(client.clone(), NS)
                    .create(&PostParams::default(), &sts)
                    .await
                    .unwrap();
            }
            k => panic!("unexpected kind {k}"),
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let ready = eventually("3 pods Ready", Duration::from_secs(60), || {
        ready_pods(&pods, 3)
    })
    .await;
    step!("3 pods Ready in {:.1}s", t.elapsed().as_secs_f64());

    let mut all_pids: BTreeSet<u32> = BTreeSet::new();
    let mut ips = BTreeMap::new();
    for p in &ready {
        let name = p.metadata.name.clone().unwrap();
        let ip = p.status.as_ref().unwrap().pod_ip.clone().unwrap();
        assert!(
            ip.parse::<std::net::Ipv4Addr>().unwrap().is_loopback(),
            "{ip}"
        );
        let pids = pids(p);
        assert_eq!(pids.len(), 2, "{name}: {pids:?}");
        for (c, pid) in &pids {
            assert!(pid_alive(*pid), "{name}/{c}: pid {pid} does not exist");
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
            let want = if c == "sidecar" {
                "ballast-sidecar"
            } else {
                "ballast-fleet"
            };
            assert!(exe.ends_with(want), "{name}/{c}: pid {pid} runs {exe:?}");
        }
        // The Secret is mounted at the path the pod spec names, in the sidecar's own mount
        // namespace only.
        let sidecar = pids["sidecar"];
        let mine = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let theirs = std::fs::read_link(format!("/proc/{sidecar}/ns/mnt")).unwrap();
        assert_ne!(
            mine, theirs,
            "sidecar should have a private mount namespace"
        );
        // /proc/PID/root resolves paths in that process's mount namespace.
        let crt = std::fs::read_to_string(format!("/proc/{sidecar}/root/etc/ballast/tls/tls.crt"))
            .expect("the sidecar sees its Secret at /etc/ballast/tls");
        assert_eq!(crt, first.cert_pem);
        assert!(
            !Path::new("/etc/ballast/tls/tls.crt").exists(),
            "the host must only see an empty mount point"
        );
        let sha = sidecar_sha256(&ip).await.unwrap();
        assert_eq!(
            sha,
            first.fingerprint(),
            "{name} serves another certificate"
        );
        step!(
            "{name}: podIP {ip}, pids {pids:?}, /status sha256 {}…",
            &sha[..12]
        );
        all_pids.extend(pids.values());
        ips.insert(name, ip);
    }

    // ---------------------------------------------------------------- endpoints
    let resolution = eventually("3 ready endpoints", Duration::from_secs(30), || async {
        let r = endpoints::resolve(&client, NS, "gateway", Some("tls"))
            .await
            .map_err(|e| e.to_string())?;
        if r.usable().len() == 3 {
            Ok(r)
        } else {
            Err(format!("{:?}", r.endpoints))
        }
    })
    .await;
    step!(
        "service gateway: 3 ready endpoints from {:?}: {:?}",
        resolution.source,
        resolution.targets()
    );
    if resolution.source == Source::PodSelector {
        // Expected with loopback pod IPs: the endpointslice controller's slices are refused
        // by the API server's validation. Prove that is the reason (not a missing controller).
        let events: Api<Event> = Api::namespaced(client.clone(), NS);
        let why = eventually(
            "endpointslice controller's event",
            Duration::from_secs(30),
            || async {
                let list = events
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                list.items
                    .into_iter()
                    .filter(|e| e.reason.as_deref() == Some("FailedToUpdateEndpointSlices"))
                    .filter_map(|e| e.message)
                    .find(|m| m.contains("may not be in the loopback range"))
                    .ok_or_else(|| "no FailedToUpdateEndpointSlices event yet".to_string())
            },
        )
        .await;
        step!(
            "EndpointSlices stay empty, the API server refuses loopback addresses: {}",
            why.chars().take(260).collect::<String>()
        );
    }
    let targets = resolution.targets();
    assert_eq!(targets.len(), 3);

    // ---------------------------------------------------------------- fleet
    let t = Instant::now();
    let mut fc = FleetConfig::new(targets.clone(), AGENTS, ca.cert_pem());
    fc.duration = Duration::from_secs(600);
    fc.ramp = Duration::from_secs(1);
    let fleet = Fleet::start(fc).unwrap();
    fleet
        .wait_connected(AGENTS, Duration::from_secs(30))
        .await
        .unwrap();
    let s = fleet.stats();
    step!(
        "{AGENTS} agents connected in {:.1}s: {:?}",
        t.elapsed().as_secs_f64(),
        s.per_target
    );
    assert_eq!(
        s.per_target.len(),
        3,
        "agents should spread over the 3 endpoints"
    );

    // ---------------------------------------------------------------- rotation
    let second = ca
        .issue_server(&["localhost".into()], Validity::Current)
        .unwrap();
    let t = Instant::now();
    secrets
        .replace("gateway-tls", &PostParams::default(), &{
            let mut s = tls_secret(&second);
            s.metadata.resource_version = secrets
                .get("gateway-tls")
                .await
                .unwrap()
                .metadata
                .resource_version;
            s
        })
        .await
        .unwrap();
    step!(
        "Secret replaced (new leaf {}…)",
        &second.fingerprint()[..12]
    );
    for (name, ip) in &ips {
        eventually(
            &format!("{name} serving the new certificate"),
            Duration::from_secs(20),
            || async {
                let sha = sidecar_sha256(ip).await?;
                if sha == second.fingerprint() {
                    Ok(())
                } else {
                    Err(format!("still {}", &sha[..12]))
                }
            },
        )
        .await;
        step!(
            "{name} serves the new certificate {:.1}s after the Secret update",
            t.elapsed().as_secs_f64()
        );
    }
    let s = fleet.stats();
    assert_eq!(s.disconnects, 0, "the rotation dropped agents: {s:?}");
    assert_eq!(s.connected, AGENTS, "{s:?}");
    step!("rotation: 0 disconnects, {} connected", s.connected);

    // ---------------------------------------------------------------- pod deletion
    let victim = "gateway-1";
    let victim_ip = ips[victim].clone();
    let victim_target = format!("{victim_ip}:8443");
    let victim_pod = pods.get(victim).await.unwrap();
    let victim_uid = victim_pod.metadata.uid.clone().unwrap();
    let victim_pids = pids(&victim_pod);
    let before = fleet.stats();
    let on_victim = before.per_target.get(&victim_target).copied().unwrap_or(0) as u64;
    assert!(on_victim > 0, "{before:?}");
    let t = Instant::now();
    pods.delete(victim, &DeleteParams::default()).await.unwrap();
    step!("deleted {victim} ({on_victim} agents on it)");
    let at_gone = eventually(
        &format!("{victim} gone from the API"),
        Duration::from_secs(30),
        || async {
            match pods.get_opt(victim).await.map_err(|e| e.to_string())? {
                Some(p) if p.metadata.uid.as_deref() == Some(&victim_uid) => {
                    Err("still there".into())
                }
                _ => Ok(fleet.stats()),
            }
        },
    )
    .await;
    let graceful = at_gone.graceful_closes - before.graceful_closes;
    let abrupt = at_gone.abrupt_closes - before.abrupt_closes;
    step!(
        "{victim} gone after {:.1}s: graceful closes {graceful}, abrupt {abrupt} (it held {on_victim})",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(abrupt, 0, "agents were dropped abruptly: {at_gone:?}");
    assert_eq!(
        graceful, on_victim,
        "every agent of the deleted pod should be drained gracefully before it is gone"
    );
    for (c, pid) in &victim_pids {
        assert!(
            !pid_alive(*pid),
            "{victim}/{c} pid {pid} still alive after deletion"
        );
    }
    let back = eventually(
        &format!("{victim} recreated and Ready"),
        Duration::from_secs(60),
        || async {
            match pods.get_opt(victim).await.map_err(|e| e.to_string())? {
                Some(p) if p.metadata.uid.as_deref() != Some(&victim_uid) && pod_ready(&p) => Ok(p),
                _ => Err("not yet".into()),
            }
        },
    )
    .await;
    all_pids.extend(pids(&back).values());
    step!(
        "{victim} recreated and Ready {:.1}s after the delete (podIP {})",
        t.elapsed().as_secs_f64(),
        back.status
            .as_ref()
            .unwrap()
            .pod_ip
            .clone()
            .unwrap_or_default()
    );
    // The deleted pod's last status patches may come after its successor (same name) exists:
    // the kubelet sends its pod's uid with each, and the apiserver refuses them there (the uid
    // is immutable), rather than merging the old podIP into the successor's.
    let late = json!({
        "metadata": { "uid": victim_uid },
        "status": { "podIPs": [{ "ip": victim_ip }], "podIP": victim_ip },
    });
    let refused = pods
        .patch_status(
            victim,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(late),
        )
        .await;
    match refused {
        Err(kube::Error::Api(e)) if e.message.contains("metadata.uid") => {}
        other => panic!("a status patch for the deleted pod reached its successor: {other:?}"),
    }
    let ips_now = pods
        .get(victim)
        .await
        .unwrap()
        .status
        .unwrap()
        .pod_ips
        .unwrap();
    assert_eq!(ips_now.len(), 1, "the successor's podIPs: {ips_now:?}");

    // ---------------------------------------------------------------- cert-manager
    let t = Instant::now();
    for obj in cert_manager_objects() {
        let kind = obj["kind"].as_str().unwrap().to_owned();
        let gvk = GroupVersionKind::gvk("cert-manager.io", "v1", &kind);
        let ar = ApiResource::from_gvk(&gvk);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
        let o: DynamicObject = serde_json::from_value(obj).unwrap();
        api.create(&PostParams::default(), &o).await.unwrap();
    }
    let issued = eventually(
        "cert-manager Secret gateway-cm-tls",
        Duration::from_secs(60),
        || async {
            let s = secrets
                .get_opt("gateway-cm-tls")
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no secret yet")?;
            let data = s.data.unwrap_or_default();
            match (data.get("tls.crt"), data.get("tls.key")) {
                (Some(c), Some(k)) if !c.0.is_empty() && !k.0.is_empty() => {
                    Ok((c.0.clone(), k.0.clone()))
                }
                _ => Err("secret without tls.crt/tls.key".into()),
            }
        },
    )
    .await;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&issued.0).expect("tls.crt is PEM");
    let cert = pem.parse_x509().expect("tls.crt parses");
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .map(|e| {
            e.value
                .general_names
                .iter()
                .map(|g| g.to_string())
                .collect()
        })
        .unwrap_or_default();
    assert!(sans.iter().any(|s| s.contains("localhost")), "{sans:?}");
    assert!(
        cert.issuer().to_string().contains("ballast-smoke-ca"),
        "{}",
        cert.issuer()
    );
    assert!(String::from_utf8_lossy(&issued.1).contains("PRIVATE KEY"));
    step!(
        "cert-manager issued a certificate for {sans:?} (issuer {}) in {:.1}s",
        cert.issuer(),
        t.elapsed().as_secs_f64()
    );

    // ---------------------------------------------------------------- teardown
    let summary = fleet.stop().await;
    step!(
        "fleet: disconnects {} graceful {} abrupt {} false_offline {} longest_gap {:.2}s",
        summary.disconnects,
        summary.graceful_closes,
        summary.abrupt_closes,
        summary.false_offline,
        summary.longest_gap_seconds
    );
    assert_eq!(summary.abrupt_closes, 0);
    assert_eq!(summary.false_offline, 0);
    let t = Instant::now();
    namespaces
        .delete(NS, &DeleteParams::default())
        .await
        .unwrap();
    eventually("namespace deleted", Duration::from_secs(90), || async {
        match namespaces.get_opt(NS).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still terminating".into()),
        }
    })
    .await;
    step!("namespace deleted in {:.1}s", t.elapsed().as_secs_f64());
    let status = kubelet.stop().expect("kubelet exit status");
    assert!(status.success(), "kubelet exited with {status}");
    let left: Vec<u32> = all_pids.iter().copied().filter(|p| pid_alive(*p)).collect();
    assert!(left.is_empty(), "pod processes left behind: {left:?}");
    step!(
        "kubelet stopped; all {} pod processes are gone",
        all_pids.len()
    );
    drop(kubelet);
    assert!(cluster.down(), "down.sh failed");
    step!("done: total {:.1}s", elapsed());
}
