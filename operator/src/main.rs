//! `ballast-operator`: flags, logging, the HTTP endpoints, leader election, the controller.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ballast_operator::auth::Authenticator;
use ballast_operator::crd::PresenceCluster;
use ballast_operator::hub::Hub;
use ballast_operator::leader::{self, LeaseConfig};
use ballast_operator::metrics::Metrics;
use ballast_operator::observer::Observer;
use ballast_operator::reconcile::{self, Context, MANAGER};
use ballast_operator::report_server::{self, ReportServer};
use ballast_operator::report_tls;
use ballast_operator::workload::{Environment, ReportWiring};
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

/// Reconciles PresenceClusters into gateway fleets with the Ballast sidecar injected.
#[derive(Parser, Debug)]
#[command(name = "ballast-operator", version, about)]
struct Config {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "BALLAST_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Only one replica reconciles at a time (Lease `--lease-name` in `--lease-namespace`).
    #[arg(long, env = "BALLAST_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    #[arg(long, env = "BALLAST_LEASE_NAME", default_value = "ballast-operator")]
    lease_name: String,
    /// Namespace of the Lease; in a pod, its own namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "ballast-system")]
    lease_namespace: String,
    /// This replica's identity in the Lease; in a pod, its name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Watch only this namespace's PresenceClusters (default: all namespaces).
    #[arg(long, env = "BALLAST_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// How often each PresenceCluster is looked at again without a change.
    #[arg(long, env = "BALLAST_RESYNC", default_value = "10s", value_parser = ballast_contract::duration::parse_duration)]
    resync: Duration,
    /// The sidecar image injected into PresenceClusters that do not name one (the chart sets
    /// it from `sidecar.image`). Default: the sidecar of this operator's version.
    #[arg(long, env = "BALLAST_SIDECAR_IMAGE", default_value_t = ballast_operator::workload::default_sidecar_image())]
    sidecar_image: String,
    /// Sidecars bind the pod IP instead of 0.0.0.0/127.0.0.1: for clusters whose pods share one
    /// network namespace (the e2e process kubelet). Leave off on real clusters.
    #[arg(long, env = "BALLAST_BIND_POD_IP", default_value_t = false, action = clap::ArgAction::Set)]
    bind_pod_ip: bool,
    /// Address the report channel listens on (HTTPS).
    #[arg(long, env = "BALLAST_REPORT_LISTEN", default_value = "0.0.0.0:9443")]
    report_listen: SocketAddr,
    /// Name of the Service sidecars reach the operator through (in `--lease-namespace`).
    #[arg(
        long,
        env = "BALLAST_REPORT_SERVICE",
        default_value = "ballast-operator"
    )]
    report_service: String,
    /// `host:port` sidecars dial (default: `<report-service>.<namespace>.svc:<listen port>`).
    #[arg(long, env = "BALLAST_REPORT_ADDRESS")]
    report_address: Option<String>,
    /// Directory with `tls.crt`, `tls.key`, `ca.crt` for the report listener (e.g. a
    /// cert-manager Certificate's Secret). Default: the operator's own CA (`--report-ca-secret`).
    #[arg(long, env = "BALLAST_REPORT_TLS_DIR")]
    report_tls_dir: Option<std::path::PathBuf>,
    /// Secret (in `--lease-namespace`) holding the operator's own report CA; created if absent.
    #[arg(
        long,
        env = "BALLAST_REPORT_CA_SECRET",
        default_value = "ballast-operator-report-ca"
    )]
    report_ca_secret: String,
    /// Refuse a report whose source address is not the token's pod's IP. Turn off only where
    /// the network rewrites pod source addresses.
    #[arg(long, env = "BALLAST_REPORT_VERIFY_SOURCE", default_value_t = true, action = clap::ArgAction::Set)]
    report_verify_source: bool,
    /// Lifetime of every directive: the longest a pod follows an operator that fell silent.
    #[arg(long, env = "BALLAST_DIRECTIVE_LIFETIME", default_value = "5s", value_parser = ballast_contract::duration::parse_duration)]
    directive_lifetime: Duration,
    /// How often status is recomputed from reports and written (when it changed).
    #[arg(long, env = "BALLAST_STATUS_INTERVAL", default_value = "1s", value_parser = ballast_contract::duration::parse_duration)]
    status_interval: Duration,
    /// Log format: text or json. Level via BALLAST_LOG (e.g. info, debug).
    #[arg(long, env = "BALLAST_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

/// Every request (get, apply, patch, evict, TokenReview, Lease) must be answered within this:
/// a half-open connection to the API server fails the call, and the loop that made it tries
/// again, instead of stalling a reconcile or the planning loop for good.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Two clients from the same configuration: one for requests, with [`REQUEST_TIMEOUT`], and
/// one for watches, which the API server holds open for minutes by design (kube's default
/// read timeout covers a watch's `timeoutSeconds`).
async fn clients() -> Result<(Client, Client), kube::Error> {
    let base = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let mut requests = base.clone();
    requests.connect_timeout = Some(CONNECT_TIMEOUT);
    requests.read_timeout = Some(REQUEST_TIMEOUT);
    requests.write_timeout = Some(REQUEST_TIMEOUT);
    let mut watches = base;
    watches.connect_timeout = Some(CONNECT_TIMEOUT);
    watches.write_timeout = Some(REQUEST_TIMEOUT);
    Ok((Client::try_from(requests)?, Client::try_from(watches)?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_logging(&config.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();

    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    tokio::spawn(serve_http(
        config.metrics_addr,
        metrics.clone(),
        ready.clone(),
    ));

    let (client, watches) = clients()
        .await
        .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    let version = client
        .apiserver_version()
        .await
        .context("the Kubernetes API is not reachable")?;
    tracing::info!(kubernetes = %version.git_version, "connected");
    ready.store(true, Ordering::Relaxed);

    let hub = Arc::new(Hub::new(config.directive_lifetime));
    let caches = caches(&watches, &config);
    let wiring = start_report_server(&client, &config, &hub, &metrics, &caches).await?;

    if config.leader_elect {
        let lease = LeaseConfig {
            namespace: config.lease_namespace.clone(),
            name: config.lease_name.clone(),
            identity: config
                .identity
                .clone()
                .unwrap_or_else(|| format!("ballast-operator-{}", std::process::id())),
            duration: Duration::from_secs(15),
        };
        let mut elector = leader::Elector::new(client.clone(), lease.clone());
        elector.acquire().await;
        hub.leader.store(true, Ordering::Relaxed);
        let mut holder = tokio::spawn(elector.hold());
        tokio::select! {
            _ = run_controller(client.clone(), watches.clone(), &config, metrics, wiring.clone(), hub.clone(), caches.clone()) => {
                holder.abort();
                leader::release(&client, &lease).await;
                Ok(())
            }
            _ = &mut holder => anyhow::bail!("leadership lost; exiting so that only one replica reconciles"),
        }
    } else {
        hub.leader.store(true, Ordering::Relaxed);
        run_controller(client, watches, &config, metrics, wiring, hub, caches).await;
        Ok(())
    }
}

/// `K` in `namespace`, or in all namespaces.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Shared watch caches: what the report server and the observer read. (The controller keeps
/// its own watch of PresenceClusters: a `Controller::for_stream` over this reflector, filtered
/// on generation, never started its runner in the e2e; so status-only changes still trigger a
/// reconcile, which applies nothing new.)
#[derive(Clone)]
struct Caches {
    pods: Store<Pod>,
    statefulsets: Store<StatefulSet>,
    clusters: Store<PresenceCluster>,
}

fn caches(client: &Client, config: &Config) -> Caches {
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=ballast-operator");
    let ns = config.watch_namespace.as_deref();
    Caches {
        pods: cache(client, ns, owned.clone(), |pod: &mut Pod| {
            // Nothing here reads a pod's spec or container statuses, and at 1,000 pods they
            // were most of the operator's memory.
            pod.spec = None;
            if let Some(status) = pod.status.as_mut() {
                status.container_statuses = None;
                status.init_container_statuses = None;
            }
        }),
        statefulsets: cache(client, ns, owned, |_| {}),
        clusters: cache(client, ns, watcher::Config::default(), |_| {}),
    }
}

/// A watch cache of `K` (in `namespace`, or all), kept current by its own task. Objects are
/// kept without their managed fields, and `trim` drops whatever else no reader needs.
fn cache<K>(
    client: &Client,
    namespace: Option<&str>,
    config: watcher::Config,
    trim: fn(&mut K),
) -> Store<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = scoped(client, namespace);
    let (store, writer) = reflector::store();
    tokio::spawn(
        watcher(api, config)
            .default_backoff()
            .modify(move |object| {
                object.managed_fields_mut().clear();
                trim(object);
            })
            .reflect(writer)
            .for_each(|_| async {}),
    );
    store
}

/// Starts the report listener on every replica (non-leaders answer `not_leader`) and says how
/// sidecars reach it.
async fn start_report_server(
    client: &Client,
    config: &Config,
    hub: &Arc<Hub>,
    metrics: &Arc<Metrics>,
    caches: &Caches,
) -> anyhow::Result<ReportWiring> {
    let port = config.report_listen.port();
    let service = format!("{}.{}.svc", config.report_service, config.lease_namespace);
    let address = config
        .report_address
        .clone()
        .unwrap_or_else(|| format!("{service}:{port}"));
    let server_name = address
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_owned())
        .context("--report-address must be host:port")?;
    let material = match &config.report_tls_dir {
        Some(dir) => report_tls::from_dir(dir)?,
        None => {
            let mut names = vec![
                config.report_service.clone(),
                service.clone(),
                format!("{service}.cluster.local"),
            ];
            if !names.contains(&server_name) {
                names.push(server_name.clone());
            }
            report_tls::ensure(
                client,
                &config.lease_namespace,
                &config.report_ca_secret,
                &names,
            )
            .await
            .context("the report channel's CA")?
        }
    };
    let tls = report_tls::server_config(&material)?;
    let server = Arc::new(ReportServer {
        hub: hub.clone(),
        auth: Authenticator::new(client.clone(), ballast_contract::TOKEN_AUDIENCE.into()),
        pods: caches.pods.clone(),
        clusters: caches.clusters.clone(),
        metrics: metrics.clone(),
        verify_source: config.report_verify_source,
    });
    let listener = report_server::bind(config.report_listen)?;
    tracing::info!(listen = %config.report_listen, %address, "report channel listening");
    tokio::spawn(report_server::serve(listener, tls, server));
    Ok(ReportWiring {
        address,
        server_name,
        ca_pem: material.ca_pem,
    })
}

async fn run_controller(
    client: Client,
    watches: Client,
    config: &Config,
    metrics: Arc<Metrics>,
    wiring: ReportWiring,
    hub: Arc<Hub>,
    caches: Caches,
) {
    // With --watch-namespace, every watch stays in that namespace: the chart then grants Roles
    // there, not cluster-wide.
    let ns = config.watch_namespace.as_deref();
    let prcs: Api<PresenceCluster> = scoped(&watches, ns);
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=ballast-operator");
    let (secret_changed, secret_changes) = futures::channel::mpsc::unbounded();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: config.identity.clone(),
        },
    );
    let observer = Observer {
        client: client.clone(),
        hub: hub.clone(),
        pods: caches.pods.clone(),
        statefulsets: caches.statefulsets.clone(),
        clusters: caches.clusters.clone(),
        metrics: metrics.clone(),
        recorder,
        reconcile: secret_changed,
        interval: config.status_interval,
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        env: Environment {
            bind_pod_ip: config.bind_pod_ip,
            report: Some(wiring),
            sidecar_image: config.sidecar_image.clone(),
        },
        metrics,
        hub,
        resync: config.resync,
    });
    let clusters = caches.clusters.clone();
    let pods = caches.pods.clone();
    let observing = tokio::spawn(async move {
        let _ = clusters.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        observer.run().await
    });
    tracing::info!("controller starting");
    Controller::new(prcs, watcher::Config::default())
        .owns(scoped::<StatefulSet>(&watches, ns), owned.clone())
        .owns(scoped::<Service>(&watches, ns), owned.clone())
        .owns(scoped::<PodDisruptionBudget>(&watches, ns), owned)
        .reconcile_on(secret_changes)
        .shutdown_on_signal()
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "controller event");
            }
        })
        .await;
    observing.abort();
    tracing::info!("controller stopped");
}

/// `/metrics`, `/healthz` (process alive) and `/readyz` (the API answered at start).
async fn serve_http(addr: SocketAddr, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(err) => {
            tracing::error!(%addr, error = %err, "cannot serve metrics");
            return;
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (code, body) = match req.uri().path() {
                    "/metrics" => (StatusCode::OK, metrics.encode()),
                    "/healthz" => (StatusCode::OK, "ok\n".into()),
                    "/readyz" if ready.load(Ordering::Relaxed) => {
                        (StatusCode::OK, "ready\n".into())
                    }
                    "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into()),
                    _ => (StatusCode::NOT_FOUND, "not found\n".into()),
                };
                let response = Response::builder()
                    .status(code)
                    .body(Full::new(Bytes::from(body)))
                    .expect("static response");
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BALLAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
