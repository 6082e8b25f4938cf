//! `ballast-operator`: flags, logging, the HTTP endpoints, leader election, the controller.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ballast_operator::crd::PresenceCluster;
use ballast_operator::leader::{self, LeaseConfig};
use ballast_operator::metrics::Metrics;
use ballast_operator::reconcile::{self, Context, MANAGER};
use ballast_operator::workload::Environment;
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};

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
    /// Sidecars bind the pod IP instead of 0.0.0.0/127.0.0.1: for clusters whose pods share one
    /// network namespace (the e2e process kubelet). Leave off on real clusters.
    #[arg(long, env = "BALLAST_BIND_POD_IP", default_value_t = false, action = clap::ArgAction::Set)]
    bind_pod_ip: bool,
    /// Log format: text or json. Level via BALLAST_LOG (e.g. info, debug).
    #[arg(long, env = "BALLAST_LOG_FORMAT", default_value = "text")]
    log_format: String,
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

    let client = Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    let version = client
        .apiserver_version()
        .await
        .context("the Kubernetes API is not reachable")?;
    tracing::info!(kubernetes = %version.git_version, "connected");
    ready.store(true, Ordering::Relaxed);

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
        leader::acquire(&client, &lease)
            .await
            .context("leader election")?;
        let mut holder = tokio::spawn(leader::hold(client.clone(), lease.clone()));
        tokio::select! {
            _ = run_controller(client.clone(), &config, metrics) => {
                holder.abort();
                leader::release(&client, &lease).await;
                Ok(())
            }
            _ = &mut holder => anyhow::bail!("leadership lost; exiting so that only one replica reconciles"),
        }
    } else {
        run_controller(client, &config, metrics).await;
        Ok(())
    }
}

async fn run_controller(client: Client, config: &Config, metrics: Arc<Metrics>) {
    let prcs: Api<PresenceCluster> = match &config.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=ballast-operator");
    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: config.identity.clone(),
            },
        ),
        client: client.clone(),
        env: Environment {
            bind_pod_ip: config.bind_pod_ip,
        },
        metrics,
        resync: config.resync,
    });
    tracing::info!("controller starting");
    Controller::new(prcs, watcher::Config::default())
        .owns(Api::<StatefulSet>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<PodDisruptionBudget>::all(client.clone()), owned)
        .shutdown_on_signal()
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "controller event");
            }
        })
        .await;
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
