//! Hot reload of the rules directory: on SIGHUP, on file changes (debounced), or on request
//! (`POST /api/v1/rules/reload`).
//!
//! A reload validates every file first ([`Catalog::reload`]). A set whose file now fails keeps
//! its previous version, and the failure is reported: logged, counted in
//! `canaryd_rule_load_errors`, and listed by `GET /api/v1/rules`. The new catalog is built aside
//! and swapped in under the write lock in one assignment, so a submitter sees the old catalog or
//! the new one, never a mix. Running canaries are not affected at all: each pinned its rule
//! set's text and hash when it was submitted.

use super::Catalog;
use notify::{EventKind, RecursiveMode, Watcher};
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Quiet time after the last file event before reloading (editors write in several steps).
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReloadOutcome {
    /// Sets new in this reload.
    pub added: Vec<String>,
    /// Sets whose version changed.
    pub updated: Vec<String>,
    /// Sets gone (their file was removed).
    pub removed: Vec<String>,
    /// Sets kept at their previous version because their file now fails.
    pub kept: Vec<String>,
    /// Load errors, as `file:line:col: message`.
    pub errors: Vec<String>,
}

/// One reload at a time (SIGHUP, the watcher and the API may ask together).
static RELOADING: Mutex<()> = Mutex::new(());

/// Reloads now and swaps the result in; `trigger` says why (for the log).
pub fn reload_now(catalog: &RwLock<Catalog>, trigger: &str) -> ReloadOutcome {
    let _one = RELOADING.lock().unwrap_or_else(|p| p.into_inner());
    let current = catalog.read().unwrap_or_else(|p| p.into_inner()).clone();
    let next = match current.reload() {
        Ok(next) => next,
        Err(e) => {
            let dir = current
                .dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            error!(error = %e, dir, trigger, "Cannot read the rules directory; keeping every loaded rule set");
            let mut kept = current.clone();
            kept.errors = vec![super::RuleError::file(
                &dir,
                format!("cannot read the rules directory: {e}"),
            )];
            let outcome = ReloadOutcome {
                kept: kept.names().map(str::to_string).collect(),
                errors: kept.errors.iter().map(|e| e.to_string()).collect(),
                ..ReloadOutcome::default()
            };
            publish(catalog, kept);
            return outcome;
        }
    };
    let outcome = compare(&current, &next);
    for e in &next.errors {
        warn!(error = %e, trigger, "Rule file not loaded");
    }
    for name in &outcome.kept {
        warn!(
            rule_set = %name,
            reason = next.stale(name).unwrap_or(""),
            "Keeping the previous version of a rule set whose file now fails"
        );
    }
    info!(
        trigger,
        sets = ?next.names().collect::<Vec<_>>(),
        added = ?outcome.added,
        updated = ?outcome.updated,
        removed = ?outcome.removed,
        errors = next.errors.len(),
        "Rules reloaded"
    );
    publish(catalog, next);
    outcome
}

fn publish(catalog: &RwLock<Catalog>, next: Catalog) {
    crate::telemetry::metrics()
        .rule_load_errors
        .set(next.errors.len() as i64);
    *catalog.write().unwrap_or_else(|p| p.into_inner()) = next;
}

fn compare(old: &Catalog, new: &Catalog) -> ReloadOutcome {
    let names = |c: &Catalog| c.names().map(str::to_string).collect::<BTreeSet<_>>();
    let (before, after) = (names(old), names(new));
    let version = |c: &Catalog, n: &str| c.get(n).map(|(s, _)| s.hash.clone());
    ReloadOutcome {
        added: after.difference(&before).cloned().collect(),
        removed: before.difference(&after).cloned().collect(),
        updated: after
            .intersection(&before)
            .filter(|n| version(old, n) != version(new, n))
            .cloned()
            .collect(),
        kept: after
            .iter()
            .filter(|n| new.stale(n).is_some())
            .cloned()
            .collect(),
        errors: new.errors.iter().map(|e| e.to_string()).collect(),
    }
}

/// Watches the catalog's directory and SIGHUP until `stop`; reloads on either.
pub async fn run(catalog: Arc<RwLock<Catalog>>, stop: CancellationToken) {
    let dir = catalog
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .dir
        .clone();
    let Some(dir) = dir else { return };
    let (tx, mut changes) = mpsc::unbounded_channel::<()>();
    // The watcher calls back on its own thread; an unbounded send never blocks it.
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event
            && !matches!(e.kind, EventKind::Access(_))
        {
            let _ = tx.send(());
        }
    })
    .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|_| w));
    let _watcher = match watcher {
        Ok(w) => {
            info!(dir = %dir.display(), "Watching the rules directory for changes");
            Some(w)
        }
        Err(e) => {
            warn!(error = %e, dir = %dir.display(), "Cannot watch the rules directory; SIGHUP still reloads");
            None
        }
    };
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "Cannot listen for SIGHUP");
            None
        }
    };
    loop {
        let hangup = async {
            match hup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hangup => {
                let c = catalog.clone();
                let _ = tokio::task::spawn_blocking(move || reload_now(&c, "SIGHUP")).await;
            }
            Some(()) = changes.recv() => {
                // Debounce: reload once the directory has been quiet for a moment.
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(DEBOUNCE) => break,
                        Some(()) = changes.recv() => {}
                    }
                }
                let c = catalog.clone();
                let _ = tokio::task::spawn_blocking(move || reload_now(&c, "file change")).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: s\nmetrics:\n  - name: cpu\n    kind: gauge\n    query: 'sum(x{ {{selector}} })'\n    max_increase: 50%\n    critical: true\n";

    #[test]
    fn a_broken_file_keeps_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.yaml");
        std::fs::write(&file, GOOD).unwrap();
        let catalog = RwLock::new(Catalog::load_dir(dir.path()).unwrap());
        let v1 = catalog.read().unwrap().get("s").unwrap().0.hash.clone();

        std::fs::write(&file, GOOD.replace("50%", "-5%")).unwrap();
        let out = reload_now(&catalog, "test");
        assert_eq!(out.kept, vec!["s"]);
        assert_eq!(out.errors.len(), 1, "{out:?}");
        let c = catalog.read().unwrap();
        assert_eq!(c.get("s").unwrap().0.hash, v1);
        assert!(
            c.stale("s")
                .unwrap()
                .contains("serving the previous version")
        );
        assert_eq!(c.view()["sets"][0]["stale"], true);
        drop(c);

        std::fs::write(&file, GOOD.replace("50%", "25%")).unwrap();
        let out = reload_now(&catalog, "test");
        assert_eq!(out.updated, vec!["s"]);
        assert!(out.errors.is_empty());
        let c = catalog.read().unwrap();
        assert_ne!(c.get("s").unwrap().0.hash, v1);
        assert!(c.stale("s").is_none());
        drop(c);

        std::fs::remove_file(&file).unwrap();
        assert_eq!(reload_now(&catalog, "test").removed, vec!["s"]);
    }

    #[tokio::test]
    async fn file_changes_reload_after_a_quiet_moment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.yaml"), GOOD).unwrap();
        let catalog = Arc::new(RwLock::new(Catalog::load_dir(dir.path()).unwrap()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(catalog.clone(), stop.clone()));
        // Give the watcher a moment to start, then add a second set.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut written = false;
        while catalog.read().unwrap().get("t").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "no reload after a file change"
            );
            if !written {
                tokio::time::sleep(Duration::from_millis(100)).await;
                std::fs::write(
                    dir.path().join("t.yaml"),
                    GOOD.replace("name: s", "name: t"),
                )
                .unwrap();
                written = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        task.await.unwrap();
    }
}
