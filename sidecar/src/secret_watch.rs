//! Wakes the certificate reload the moment the kubelet swaps the Secret volume, instead of at
//! the next poll.
//!
//! The kubelet updates a Secret volume atomically: it writes a new `..<timestamp>` directory
//! and renames a fresh `..data` symlink over the old one. That rename is an inotify event on
//! the volume's directory, so watching the directories that hold the certificate, key and CA
//! sees every kubelet update within milliseconds, as well as files written or replaced in
//! place. Anything inotify cannot see (a write inside the directory a symlink points to, a
//! network filesystem) is still caught by the poll, which keeps running as the fallback; a
//! platform without inotify gets the poll alone, with a warning.
//!
//! This module only says "something changed, look now": it never reads or judges a file.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

/// An inotify instance watching some directories.
pub(crate) struct SecretWatch {
    inotify: AsyncFd<Watched>,
}

/// `AsyncFd` needs `AsRawFd`; nix's `Inotify` offers `AsFd`.
struct Watched(Inotify);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl SecretWatch {
    /// Watches the directories holding `files`. Errors say which directory could not be
    /// watched; the caller keeps polling either way.
    pub(crate) fn new<'a>(files: impl IntoIterator<Item = &'a Path>) -> Result<Self, String> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| format!("inotify unavailable: {e}"))?;
        let dirs: BTreeSet<PathBuf> = files
            .into_iter()
            .map(|f| match f.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        // A rename over `..data` (the kubelet), a file created, written, moved in or removed.
        let changes = AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_ATTRIB;
        for dir in &dirs {
            inotify
                .add_watch(dir, changes)
                .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        }
        // `AsyncFd::new` is deprecated because a type could close the descriptor it reports
        // while it is registered; `Watched` owns its descriptor, never closes it early, and is
        // dropped only with the `AsyncFd` (which deregisters first). The sound replacement is
        // `unsafe`, which this crate forbids.
        #[allow(deprecated)]
        let inotify = AsyncFd::new(Watched(inotify))
            .map_err(|e| format!("cannot poll the inotify descriptor: {e}"))?;
        Ok(Self { inotify })
    }

    /// Waits until something changed in a watched directory; a burst of events (the kubelet
    /// makes several) is taken as one.
    pub(crate) async fn changed(&self) {
        loop {
            let Ok(mut ready) = self.inotify.readable().await else {
                // The descriptor failed: never wake again; the poll carries on alone.
                return std::future::pending().await;
            };
            match ready.get_inner().0.read_events() {
                Ok(events) if !events.is_empty() => return,
                Ok(_) => {}
                Err(Errno::EAGAIN) => ready.clear_ready(),
                Err(e) => {
                    tracing::warn!(error = %e, "reading inotify events failed; polling only");
                    return std::future::pending().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_kubelet_style_swap_wakes_the_watch_and_quiet_does_not() {
        let dir = std::env::temp_dir().join(format!("ballast-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..v1")).unwrap();
        std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
        let watch = SecretWatch::new([dir.join("tls.crt").as_path()]).unwrap();

        let quiet = tokio::time::timeout(Duration::from_millis(200), watch.changed()).await;
        assert!(quiet.is_err(), "woke with nothing changed");

        std::fs::create_dir_all(dir.join("..v2")).unwrap();
        std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("the swap of ..data was not seen");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwatchable_directory_is_named() {
        let err = SecretWatch::new([Path::new("/nonexistent-ballast/tls.crt")])
            .err()
            .expect("watching a missing directory fails");
        assert!(err.contains("/nonexistent-ballast"), "{err}");
    }
}
