//! The real control plane as local processes (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, optionally cert-manager), brought up by `e2e/control-plane/up.sh` on fresh
//! loopback ports and a fresh state dir, and brought down by `down.sh` when dropped.
//!
//! It owns only the bring-up and tear-down of one control plane; it never starts a kubelet
//! (the suites and the benchmarks decide that) and never signals a process `down.sh` did not
//! record.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after).
///
/// Picked below the kernel's ephemeral range (`ip_local_port_range`): a port found free and
/// released there stays free until the component that needs it binds it, seconds later. An
/// ephemeral port (what binding port 0 hands out) can meanwhile become the local port of any
/// outbound connection — a CI run lost its kube-scheduler that way ("bind: address already in
/// use").
pub fn free_port() -> u16 {
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let below = ephemeral_from.clamp(12_000, 32_768);
    for _ in 0..1_000 {
        let port = fastrand::u16(10_000..below);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in 10000..{below} after 1,000 tries");
}

/// One running control plane. `down.sh` runs on drop.
pub struct ControlPlane {
    /// The state dir: certificates, data, logs, the recorded PIDs.
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    /// Where kubectl and helm are.
    pub tools: PathBuf,
    pub apiserver_port: u16,
    scripts: PathBuf,
}

impl ControlPlane {
    /// Builds the control-plane binaries if they are not cached yet, then brings one up in
    /// `dir` (which must not hold a running one).
    pub fn up(workspace: &Path, dir: &Path, cert_manager: bool) -> anyhow::Result<ControlPlane> {
        let scripts = workspace.join("e2e/control-plane");
        let built = Command::new(scripts.join("build.sh"))
            .stdout(Stdio::null())
            .status()
            .context("running build.sh")?;
        if !built.success() {
            bail!("e2e/control-plane/build.sh failed");
        }
        let tools = Command::new(scripts.join("build.sh"))
            .arg("--print-bin-dir")
            .output()
            .context("build.sh --print-bin-dir")?;
        let tools = PathBuf::from(String::from_utf8_lossy(&tools.stdout).trim());
        let apiserver_port = free_port();
        let plane = ControlPlane {
            dir: dir.to_path_buf(),
            kubeconfig: dir.join("kubeconfig"),
            tools,
            apiserver_port,
            scripts,
        };
        let up = Command::new(plane.scripts.join("up.sh"))
            .env("BALLAST_E2E_DIR", dir)
            .env("BALLAST_APISERVER_PORT", apiserver_port.to_string())
            .env("BALLAST_ETCD_CLIENT_PORT", free_port().to_string())
            .env("BALLAST_ETCD_PEER_PORT", free_port().to_string())
            .env("BALLAST_KCM_PORT", free_port().to_string())
            .env("BALLAST_SCHEDULER_PORT", free_port().to_string())
            .env("BALLAST_CERT_MANAGER", if cert_manager { "1" } else { "0" })
            .stdout(Stdio::null())
            .status()
            .context("running up.sh")?;
        if !up.success() {
            bail!("e2e/control-plane/up.sh failed (its output above says why)");
        }
        Ok(plane)
    }

    /// An admin client for this control plane.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        crate::api_clients::client_from(&self.kubeconfig).await
    }

    /// Runs kubectl or helm (`tool`) against this control plane: (success, stdout+stderr).
    pub fn run(&self, tool: &str, args: &[&str]) -> (bool, String) {
        match Command::new(self.tools.join(tool))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
        {
            Ok(out) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                (out.status.success(), text)
            }
            Err(e) => (false, format!("running {tool}: {e}")),
        }
    }

    /// The PID `up.sh` recorded for `component` (`kube-apiserver`, `etcd`, ...).
    pub fn pid_of(&self, component: &str) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("pids"))
            .ok()?
            .lines()
            .find_map(|l| {
                let mut parts = l.split_whitespace();
                (parts.next()? == component).then(|| parts.next()?.parse().ok())?
            })
    }

    /// Stops everything `up.sh` started and removes the state dir; true when it went cleanly.
    pub fn down(&self) -> bool {
        if !self.dir.exists() {
            return true;
        }
        eprintln!("[control plane] down.sh");
        Command::new(self.scripts.join("down.sh"))
            .env("BALLAST_E2E_DIR", &self.dir)
            .env("BALLAST_GRACE_SECONDS", "5")
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.down();
    }
}
