//! The harness's clients of the API server — the process kubelet's, the endpoints follower's,
//! the suites' — built one way from a kubeconfig.
//!
//! It owns their timeouts; it never talks to the API server itself.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// A request the API server has not answered within this fails, and the loop that made it
/// tries again. The chaos suite freezes the API server and etcd for a minute: without it, a
/// request caught in the freeze could hang its caller for kube's default of 295 s (a CI run's
/// process kubelet stopped patching two pods' readiness after the thaw, and the operator,
/// seeing them not Ready, left them out of the rebalance for the rest of the test).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The configuration in `kubeconfig`.
pub async fn config_from(kubeconfig: &Path) -> anyhow::Result<kube::Config> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("loading the kubeconfig")
}

/// A client for requests (get, list, patch, create, delete): each answered within
/// [`REQUEST_TIMEOUT`].
pub fn requests(config: &kube::Config) -> anyhow::Result<kube::Client> {
    let mut config = config.clone();
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(REQUEST_TIMEOUT);
    config.write_timeout = Some(REQUEST_TIMEOUT);
    kube::Client::try_from(config).context("building a client")
}

/// A client for watches, which the API server holds open for minutes by design (kube's
/// default read timeout covers a watch's `timeoutSeconds`).
pub fn watches(config: &kube::Config) -> anyhow::Result<kube::Client> {
    let mut config = config.clone();
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.write_timeout = Some(REQUEST_TIMEOUT);
    kube::Client::try_from(config).context("building a client")
}

/// A [`requests`] client from `kubeconfig`.
pub async fn client_from(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    requests(&config_from(kubeconfig).await?)
}
