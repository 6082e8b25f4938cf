//! Container processes: started, signalled and reaped by PID, never by name.
//!
//! A container with volume mounts is launched as
//! `unshare --mount --propagation private -- sh -c '<bind mounts>; exec "$@"' sh BINARY ARGS…`:
//! the mounts exist only in that process's private mount namespace, and since `sh` `exec`s the
//! program, the PID we spawned *is* the program (signals reach it directly). Mount points are
//! created on the host beforehand (an empty directory is all the host ever sees); the
//! mount namespace, and with it every bind mount, dies with the process.
//!
//! A container with a `runAsUser` runs as that user: the program is started through
//! `setpriv --reuid U --regid G --groups …` (after the mounts, which need root), with the group
//! `runAsGroup` (0 when unset, as a container runtime does) and the pod's `fsGroup` and
//! `supplementalGroups` as its other groups. Files a non-root container cannot read on a real
//! node it cannot read here either.
//!
//! Each process gets its own process group (a Ctrl-C on the kubelet's terminal does not reach
//! pods; the kubelet stops them itself), stdout and stderr appended to the container's log,
//! and `kill_on_drop` as a last-resort guard: if the kubelet itself panics, its children are
//! SIGKILLed rather than leaked.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::error::{io, Error, Result};

/// A bind mount into the container's private mount namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Who a container process runs as (none: root, the kubelet's own user).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the pod's `fsGroup` and `supplementalGroups`.
    pub groups: Vec<u32>,
}

impl RunAs {
    /// `setpriv` and its arguments, to put before the program.
    fn setpriv(&self) -> Vec<String> {
        let groups = if self.groups.is_empty() {
            "--clear-groups".to_owned()
        } else {
            let list: Vec<String> = self.groups.iter().map(u32::to_string).collect();
            format!("--groups={}", list.join(","))
        };
        vec![
            "setpriv".into(),
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.gid),
            groups,
            "--".into(),
        ]
    }
}

/// Everything needed to start one container process.
#[derive(Clone, Debug)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub working_dir: Option<String>,
    pub log: PathBuf,
    pub run_as: Option<RunAs>,
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit status, or 128 + signal number when killed by a signal (Kubernetes' convention).
    pub code: i32,
    pub signal: Option<i32>,
}

/// A started process. Dropping it SIGKILLs the process if it still runs.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    exit: watch::Receiver<Option<Exit>>,
    reaper: tokio::task::JoinHandle<()>,
}

/// Environment of the `sh` that sets up mounts; the program gets only the container's env
/// plus this PATH (the kubelet's equivalent of an image's default PATH).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Single-quotes `s` for `sh`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `sh -c` script that bind-mounts `mounts` then execs `"$@"`.
pub fn mount_script(mounts: &[Mount], working_dir: Option<&str>) -> String {
    let mut script = String::from("set -e\n");
    for m in mounts {
        let (src, dst) = (
            shell_quote(&m.source.to_string_lossy()),
            shell_quote(&m.target.to_string_lossy()),
        );
        script.push_str(&format!("mount --bind {src} {dst}\n"));
        if m.read_only {
            script.push_str(&format!("mount -o remount,bind,ro {dst}\n"));
        }
    }
    if let Some(dir) = working_dir {
        script.push_str(&format!("cd {}\n", shell_quote(dir)));
    }
    script.push_str("exec \"$@\"\n");
    script
}

impl Process {
    /// Starts `launch`. Mount targets must already exist (see [`ensure_mount_point`]).
    pub fn spawn(launch: &Launch) -> Result<Process> {
        if let Some(parent) = launch.log.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("creating {parent:?}")))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .map_err(io(format!("opening {:?}", launch.log)))?;
        let log_err = log.try_clone().map_err(io("duplicating log fd"))?;

        // The program and its arguments, behind `setpriv` when it runs as another user.
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(run_as) = &launch.run_as {
            argv.extend(run_as.setpriv().into_iter().map(Into::into));
        }
        argv.push(launch.program.clone().into());
        argv.extend(launch.args.iter().map(Into::into));
        let mut cmd = if launch.mounts.is_empty() && launch.working_dir.is_none() {
            let mut c = tokio::process::Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        } else {
            let mut c = tokio::process::Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg(mount_script(&launch.mounts, launch.working_dir.as_deref()))
                .arg("sh")
                .args(&argv);
            c
        };
        cmd.env_clear()
            .env("PATH", DEFAULT_PATH)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(io(format!("starting {:?}", launch.program)))?;
        let pid = child
            .id()
            .ok_or_else(|| Error::Invalid("child exited before its PID was read".into()))?;
        let (tx, exit) = watch::channel(None);
        let reaper = tokio::spawn(async move {
            let status = child.wait().await;
            let exit = match status {
                Ok(s) => Exit {
                    code: s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
                    signal: s.signal(),
                },
                Err(_) => Exit {
                    code: 128,
                    signal: None,
                },
            };
            let _ = tx.send(Some(exit));
        });
        Ok(Process { pid, exit, reaper })
    }

    /// The PID: the program itself (`sh` has exec'd into it).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `Some` once the process has exited (and been reaped).
    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Sends `signal` to this process (by PID; a no-op once it has been reaped).
    pub fn signal(&self, signal: Signal) {
        if self.exited().is_none() {
            let _ = kill(Pid::from_raw(self.pid as i32), signal);
        }
    }

    /// Waits for the exit, at most `timeout`.
    pub async fn wait(&self, timeout: Duration) -> Option<Exit> {
        let mut rx = self.exit.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
        self.exited()
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; returns how it ended.
    pub async fn terminate(&self, grace: Duration) -> Exit {
        if let Some(exit) = self.exited() {
            return exit;
        }
        self.signal(Signal::SIGTERM);
        if let Some(exit) = self.wait(grace).await {
            return exit;
        }
        self.signal(Signal::SIGKILL);
        loop {
            if let Some(exit) = self.wait(Duration::from_secs(5)).await {
                return exit;
            }
            self.signal(Signal::SIGKILL);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The reaper owns the Child (kill_on_drop): aborting it SIGKILLs a still-running
        // process. After a normal exit this does nothing.
        self.reaper.abort();
    }
}

/// Creates `path` (and parents) on the host if missing, returning the directories created
/// so the kubelet can remove them (if still empty) when it stops.
pub fn ensure_mount_point(path: &Path) -> Result<Vec<PathBuf>> {
    let mut created = Vec::new();
    let mut missing = Vec::new();
    let mut p = Some(path);
    while let Some(dir) = p {
        if dir.exists() {
            break;
        }
        missing.push(dir.to_path_buf());
        p = dir.parent();
    }
    for dir in missing.into_iter().rev() {
        match std::fs::create_dir(&dir) {
            Ok(()) => created.push(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(format!("creating mount point {dir:?}"))(e)),
        }
    }
    Ok(created)
}

/// Whether a process with this PID exists (any process, ours or not).
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_quotes_and_remounts_read_only() {
        let s = mount_script(
            &[Mount {
                source: "/state/it's".into(),
                target: "/etc/ballast/tls".into(),
                read_only: true,
            }],
            None,
        );
        assert!(
            s.contains(r"mount --bind '/state/it'\''s' '/etc/ballast/tls'"),
            "{s}"
        );
        assert!(
            s.contains("mount -o remount,bind,ro '/etc/ballast/tls'"),
            "{s}"
        );
        assert!(s.ends_with("exec \"$@\"\n"));
    }

    #[tokio::test]
    async fn terminate_escalates_to_sigkill_and_reports_137() {
        let dir = std::env::temp_dir().join(format!("ballast-e2e-proc-{}", std::process::id()));
        let launch = Launch {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "trap '' TERM; echo started; exec sleep 30".into(),
            ],
            env: vec![],
            mounts: vec![],
            working_dir: None,
            run_as: None,
            log: dir.join("c.log"),
        };
        let p = Process::spawn(&launch).unwrap();
        let pid = p.pid();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(pid_alive(pid));
        let exit = p.terminate(Duration::from_millis(300)).await;
        assert_eq!(exit.code, 137, "{exit:?}");
        assert!(!pid_alive(pid));
        assert!(std::fs::read_to_string(dir.join("c.log"))
            .unwrap()
            .contains("started"));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A container with `runAsUser` cannot read a 0440 root-owned file, unless the file's
    /// group is one of its groups (the pod's fsGroup): what a real node does.
    #[tokio::test]
    async fn a_non_root_container_reads_group_files_only_through_its_groups() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ballast-e2e-runas-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = dir.join("tls.key");
        std::fs::write(&secret, "key\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o440)).unwrap();
        let run = |groups: Vec<u32>, log: &str| Launch {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                format!("id -u; id -G; cat {}", secret.display()),
            ],
            env: vec![],
            mounts: vec![],
            working_dir: None,
            run_as: Some(RunAs {
                uid: 65532,
                gid: 65532,
                groups,
            }),
            log: dir.join(log),
        };
        let p = Process::spawn(&run(vec![], "no-group.log")).unwrap();
        let exit = p.wait(Duration::from_secs(10)).await.expect("exits");
        let out = std::fs::read_to_string(dir.join("no-group.log")).unwrap();
        assert_ne!(exit.code, 0, "read a root-only file as 65532: {out}");
        assert!(out.starts_with("65532\n65532\n"), "{out}");

        std::os::unix::fs::chown(&secret, Some(0), Some(4242)).unwrap();
        let p = Process::spawn(&run(vec![4242], "fs-group.log")).unwrap();
        let exit = p.wait(Duration::from_secs(10)).await.expect("exits");
        let out = std::fs::read_to_string(dir.join("fs-group.log")).unwrap();
        assert_eq!(exit.code, 0, "{out}");
        assert!(out.contains("65532 4242") && out.contains("key"), "{out}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
