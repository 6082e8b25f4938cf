//! `ballast-e2e`: the process kubelet as a command.
//!
//! ```text
//! ballast-e2e kubelet --kubeconfig PATH --node NAME --state-dir DIR
//!                     [--images FILE] [--bin-dir DIR] [--pod-subnet 127.1.0.0/16]
//! ballast-e2e endpoints --namespace NS --service NAME [--port PORT-NAME]
//! ballast-e2e agents --namespace NS --service NAME [--port PORT-NAME] --ca CA.pem [--agents N]
//! ballast-e2e bench-reports [--sidecars 1000] [--window 30s] [--operator PATH]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use ballast_e2e::api_clients;
use ballast_e2e::images::ImageTable;
use ballast_e2e::kubelet::{self, KubeletConfig};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ballast-e2e",
    about = "Ballast e2e tools: the process kubelet, Service resolution, the report-channel benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Register a Node and run the pods bound to it as local processes.
    Kubelet {
        /// Kubeconfig with the credentials the kubelet uses (e.g. <state>/kubeconfig).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
        /// Node name to register.
        #[arg(long, default_value = "ballast-e2e-node")]
        node: String,
        /// Pod volumes and logs go under <state-dir>/pods/.
        #[arg(long)]
        state_dir: PathBuf,
        /// YAML map `image-repository: binary-name` added to the built-in table.
        #[arg(long)]
        images: Option<PathBuf>,
        /// Where the binaries are (default: the directory of this executable,
        /// i.e. target/<profile>/).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Pod IPs come from this 127.N.0.0/16.
        #[arg(long, default_value = "127.1.0.0/16")]
        pod_subnet: String,
        /// Seconds pod processes get between SIGTERM and SIGKILL when the kubelet stops.
        #[arg(long, default_value_t = 5)]
        shutdown_grace_seconds: u64,
    },
    /// Print a Service's ready endpoints as `ip:port,ip:port` (what `ballast-fleet agents
    /// --target` takes), resolved the way kube-proxy would.
    Endpoints {
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service: String,
        /// The Service port's name (needed when it has several).
        #[arg(long)]
        port: Option<String>,
    },
    /// Run a fleet of TLS agents against a Service, following its ready endpoints as
    /// kube-proxy would (re-resolved every 500 ms), with a progress line per second; prints
    /// the fleet's summary as JSON on stdout. Ctrl-C ends the run early.
    Agents {
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service: String,
        /// The Service port's name (needed when it has several).
        #[arg(long)]
        port: Option<String>,
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// PEM file of the CA the agents trust.
        #[arg(long)]
        ca: PathBuf,
        #[arg(long, default_value = "5s", value_parser = ballast_contract::duration::parse_duration)]
        ramp: Duration,
        /// How long to run, ramp included.
        #[arg(long, default_value = "60s", value_parser = ballast_contract::duration::parse_duration)]
        duration: Duration,
    },
    /// Benchmark: one operator receiving a report every second from each of N sidecars
    /// (simulated, with real pod-bound tokens, on a real control plane brought up and down
    /// here); prints its memory, CPU and report → answer latency. See `make bench-reports`.
    BenchReports {
        /// Simulated sidecars, one pod each (at most 1,000: one PresenceCluster's limit).
        #[arg(long, default_value_t = 1000)]
        sidecars: usize,
        /// The measurement window.
        #[arg(long, default_value = "30s", value_parser = ballast_contract::duration::parse_duration)]
        window: Duration,
        /// Reports answered before the window opens.
        #[arg(long, default_value = "10s", value_parser = ballast_contract::duration::parse_duration)]
        warmup: Duration,
        /// How often each sidecar reports.
        #[arg(long, default_value = "1s", value_parser = ballast_contract::duration::parse_duration)]
        every: Duration,
        /// The operator binary (default: ballast-operator beside this executable).
        #[arg(long)]
        operator: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BALLAST_LOG")
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::BenchReports {
            sidecars,
            window,
            warmup,
            every,
            operator,
        } => {
            let operator = match operator {
                Some(o) => o,
                None => std::env::current_exe()?.with_file_name("ballast-operator"),
            };
            let options = ballast_e2e::report_bench::Options {
                sidecars,
                warmup,
                window,
                every,
                operator,
                workspace: std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .parent()
                    .context("the workspace")?
                    .to_path_buf(),
            };
            ballast_e2e::report_bench::run(&options).await?.print();
        }
        Command::Agents {
            kubeconfig,
            namespace,
            service,
            port,
            agents,
            ca,
            ramp,
            duration,
        } => {
            let client = api_clients::client_from(&kubeconfig).await?;
            let (targets, _follower) = ballast_e2e::endpoints::follow(
                client,
                &namespace,
                &service,
                port.as_deref(),
                ballast_e2e::endpoints::FOLLOW_EVERY,
            )
            .await?;
            let ca_pem = std::fs::read_to_string(&ca)
                .with_context(|| format!("reading the CA {}", ca.display()))?;
            let mut config = ballast_fleet::agents::FleetConfig::new(targets, agents, ca_pem);
            config.ramp = ramp;
            config.duration = duration;
            let fleet = ballast_fleet::agents::Fleet::start(config)?;
            ballast_fleet::spawn_progress(&fleet, Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep_until(fleet.deadline()) => {}
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, stopping the fleet"),
            }
            let mut summary = fleet.stop().await;
            summary.per_agent.clear();
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Command::Endpoints {
            kubeconfig,
            namespace,
            service,
            port,
        } => {
            let client = api_clients::client_from(&kubeconfig).await?;
            let targets =
                ballast_e2e::endpoints::targets(&client, &namespace, &service, port.as_deref())
                    .await?;
            let list: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
            println!("{}", list.join(","));
        }
        Command::Kubelet {
            kubeconfig,
            node,
            state_dir,
            images,
            bin_dir,
            pod_subnet,
            shutdown_grace_seconds,
        } => {
            let api = api_clients::config_from(&kubeconfig).await?;
            let apiserver_port = kubelet::loopback_apiserver_port(&api)?;
            let (client, watches) = (api_clients::requests(&api)?, api_clients::watches(&api)?);
            let bin_dir = match bin_dir {
                Some(d) => d,
                None => std::env::current_exe()?
                    .parent()
                    .context("executable has no parent dir")?
                    .to_path_buf(),
            };
            let mut table = ImageTable::new(bin_dir);
            if let Some(f) = images {
                table.extend_from_yaml_file(&f)?;
            }
            for (image, binary) in table.entries() {
                tracing::info!(%image, %binary, "image table");
            }
            let config = KubeletConfig {
                node_name: node,
                state_dir,
                images: table,
                apiserver_port,
                pod_subnet,
                shutdown_grace: Duration::from_secs(shutdown_grace_seconds),
            };
            kubelet::run(client, watches, config, shutdown_signal()).await?;
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
}
