//! The routine the file-provider routers (nginx, Envoy, Traefik) share. Each of them changes
//! weights the same way: read the file the load balancer loads → change it → replace it
//! atomically ([`super::atomic_file`]) → make the load balancer take it (a reload, or waiting
//! for its file watcher) and confirm by asking what it runs → on failure put the old file back,
//! so the file stays what the load balancer runs. Each router keeps only what differs: parsing
//! and rendering its format, how to make a change live, and how to ask what runs.

use super::{RouterError, atomic_file};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// A configuration file a router owns and a load balancer loads.
pub(super) struct ManagedFile {
    router: String,
    path: PathBuf,
}

impl ManagedFile {
    /// The file at `path`, owned by the router named `router` (for messages).
    pub(super) fn new(router: &str, path: &Path) -> Self {
        ManagedFile {
            router: router.to_string(),
            path: path.to_path_buf(),
        }
    }

    /// The path, for messages.
    pub(super) fn shown(&self) -> String {
        self.path.display().to_string()
    }

    /// The file's text.
    pub(super) async fn read(&self) -> std::io::Result<String> {
        atomic_file::read(&self.path).await
    }

    /// Replaces the file with `new`, then runs `go_live` (reload and confirm, or wait until
    /// the load balancer runs it). When `go_live` fails, `old` is put back and its error
    /// returned: the file keeps what the load balancer runs.
    pub(super) async fn replace_until_live(
        &self,
        old: &str,
        new: &str,
        go_live: impl Future<Output = Result<(), RouterError>>,
    ) -> Result<(), RouterError> {
        atomic_file::replace(&self.path, new)
            .await
            .map_err(|e| self.write_error(e))?;
        let Err(e) = go_live.await else {
            return Ok(());
        };
        if let Err(io) = atomic_file::replace(&self.path, old).await {
            tracing::error!(router = %self.router, file = %self.shown(), error = %io, "Cannot restore the previous file");
        }
        Err(e)
    }

    fn write_error(&self, e: std::io::Error) -> RouterError {
        RouterError::Rejected {
            router: self.router.clone(),
            command: format!("write {}", self.shown()),
            reply: e.to_string(),
        }
    }
}

/// Asks `probe` every `every` until it answers true (then true) or `limit` has passed (then
/// false): how a router waits until the load balancer runs a change.
pub(super) async fn poll_until<F, Fut>(limit: Duration, every: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + limit;
    loop {
        if probe().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn refused() -> RouterError {
        RouterError::Timeout {
            router: "edge".into(),
            operation: "waiting".into(),
        }
    }

    #[tokio::test]
    async fn a_change_that_does_not_go_live_puts_the_old_file_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, "old").unwrap();
        let file = ManagedFile::new("edge", &path);
        let e = file
            .replace_until_live("old", "new", async {
                assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
                Err(refused())
            })
            .await
            .unwrap_err();
        assert_eq!(e, refused());
        assert_eq!(file.read().await.unwrap(), "old");
        file.replace_until_live("old", "new", async { Ok(()) })
            .await
            .unwrap();
        assert_eq!(file.read().await.unwrap(), "new");
    }

    #[tokio::test]
    async fn a_write_that_fails_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = ManagedFile::new("edge", &dir.path().join("missing/routes.yaml"));
        let e = file
            .replace_until_live("", "new", async { Ok(()) })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("missing/routes.yaml"), "{e}");
    }

    #[tokio::test]
    async fn polling_stops_at_the_answer_or_the_limit() {
        let asked = AtomicUsize::new(0);
        let third = poll_until(
            Duration::from_secs(5),
            Duration::from_millis(10),
            || async { asked.fetch_add(1, Ordering::SeqCst) == 2 },
        )
        .await;
        assert!(third);
        assert_eq!(asked.load(Ordering::SeqCst), 3);
        let never = poll_until(
            Duration::from_millis(50),
            Duration::from_millis(10),
            || async { false },
        )
        .await;
        assert!(!never);
    }
}
