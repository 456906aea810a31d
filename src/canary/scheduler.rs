//! The scheduler: one controller task per active canary, commands routed to them, and one
//! cancellation signal that stops them all at shutdown (each finishing its current step).

use super::Deps;
use super::controller::{self, CommandMsg};
use super::phase::Refused;
use crate::lifecycle::CommandKind;
use crate::store::{CanaryRecord, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

/// Why a command could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No such canary.
    #[error("canary {0} not found")]
    NotFound(i64),
    /// Not possible in the canary's phase.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The controller did not answer in time.
    #[error("canary {0} is busy; try again")]
    Busy(i64),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The controller could not store the result; nothing was done.
    #[error("the canary's state could not be stored; nothing was done: {0}")]
    NotStored(StoreError),
}

impl From<controller::CommandFailure> for CommandError {
    fn from(f: controller::CommandFailure) -> Self {
        match f {
            controller::CommandFailure::Refused(r) => CommandError::Refused(r),
            controller::CommandFailure::NotStored(e) => CommandError::NotStored(e),
        }
    }
}

/// Runs the controllers.
pub struct Scheduler {
    deps: Arc<Deps>,
    tasks: Mutex<HashMap<i64, mpsc::Sender<CommandMsg>>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Scheduler {
    /// A scheduler over `deps`.
    pub fn new(deps: Arc<Deps>) -> Arc<Self> {
        Arc::new(Scheduler {
            deps,
            tasks: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
        })
    }

    /// The shared dependencies.
    pub fn deps(&self) -> &Arc<Deps> {
        &self.deps
    }

    /// Resumes every active canary (after a start or a crash).
    pub async fn resume_all(self: &Arc<Self>) -> Result<usize, StoreError> {
        let active = self.deps.store.list(true).await?;
        for record in &active {
            info!(canary = record.id, service = %record.spec.service, phase = %record.state.phase, "Resuming canary");
            self.spawn(record.id);
        }
        Ok(active.len())
    }

    /// Starts the controller of canary `id` (no-op if it runs already).
    pub fn spawn(self: &Arc<Self>, id: i64) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if tasks.get(&id).is_some_and(|tx| !tx.is_closed()) {
            return;
        }
        let (tx, rx) = mpsc::channel(16);
        tasks.insert(id, tx);
        let me = self.clone();
        let cancel = self.cancel.child_token();
        self.tracker.spawn(async move {
            let mut rx = rx;
            loop {
                match controller::run(me.deps.clone(), id, &mut rx, cancel.clone()).await {
                    Ok(()) => break,
                    Err(controller::ControllerError::Store(e @ StoreError::Corrupt { .. })) => {
                        error!(canary = id, error = %e, "Canary cannot be read from the store; leaving it alone");
                        break;
                    }
                    // The store hiccupped: try again rather than orphan the canary.
                    Err(controller::ControllerError::Store(e)) => {
                        error!(canary = id, error = %e, "Canary controller cannot read the store; retrying");
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        }
                    }
                    // It can never run (its router is gone from the config, its pinned rules no
                    // longer parse): end it as failed, so it neither blocks its target nor
                    // ignores an abort.
                    Err(controller::ControllerError::Invalid { reason, .. }) => {
                        error!(canary = id, %reason, "Canary cannot run; marking it failed");
                        if let Err(e) = controller::fail_unrunnable(&me.deps, id, &reason).await {
                            error!(canary = id, error = %e, "Cannot mark the canary failed");
                        }
                        break;
                    }
                    Err(e) => {
                        error!(canary = id, error = %e, "Canary controller stopped");
                        break;
                    }
                }
            }
            me.tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
    }

    /// Sends a person's command to canary `id` and returns the canary afterwards.
    pub async fn command(
        &self,
        id: i64,
        kind: CommandKind,
        actor: &str,
    ) -> Result<CanaryRecord, CommandError> {
        let tx = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        let Some(tx) = tx else {
            // Not running: finished, or unknown.
            let record = self
                .deps
                .store
                .get(id)
                .await?
                .ok_or(CommandError::NotFound(id))?;
            return Err(CommandError::Refused(Refused {
                action: kind.to_string(),
                phase: record.state.phase,
            }));
        };
        let (reply, answer) = oneshot::channel();
        let msg = CommandMsg {
            kind,
            actor: actor.to_string(),
            reply,
        };
        tx.send(msg).await.map_err(|_| CommandError::Busy(id))?;
        match tokio::time::timeout(Duration::from_secs(60), answer).await {
            Ok(Ok(result)) => result.map_err(CommandError::from),
            _ => Err(CommandError::Busy(id)),
        }
    }

    /// Stops every controller after its current step and waits for them.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Number of running controllers.
    pub fn running(&self) -> usize {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{MetricSource, QueryError, Series};
    use crate::store::Store;
    use chrono::{DateTime, Utc};
    use std::collections::BTreeMap;

    struct NoSource;

    #[async_trait::async_trait]
    impl MetricSource for NoSource {
        async fn query_range(
            &self,
            _: &str,
            _: DateTime<Utc>,
            _: DateTime<Utc>,
            _: Duration,
        ) -> Result<Vec<Series>, QueryError> {
            Ok(Vec::new())
        }

        async fn is_online(&self) -> Result<(), QueryError> {
            Ok(())
        }
    }

    fn scheduler() -> Arc<Scheduler> {
        Scheduler::new(Arc::new(Deps {
            store: Store::open("sqlite::memory:").unwrap(),
            routers: BTreeMap::new(),
            source: Arc::new(NoSource),
            analysis: Default::default(),
            environments: BTreeMap::new(),
        }))
    }

    /// A controller stuck in a long step (a router that does not answer) holds a person's
    /// command for a minute at most: then the caller hears `busy`, and the controller, finding
    /// nobody waiting any more, drops the command instead of carrying it out late.
    #[tokio::test(start_paused = true)]
    async fn a_command_the_controller_does_not_take_is_busy_after_a_minute() {
        let s = scheduler();
        let (tx, mut rx) = mpsc::channel(16);
        s.tasks.lock().unwrap().insert(7, tx);
        let started = tokio::time::Instant::now();
        let result = s.command(7, CommandKind::Pause, "alice").await;
        let waited = started.elapsed();
        assert!(matches!(result, Err(CommandError::Busy(7))), "{result:?}");
        assert!(
            waited >= Duration::from_secs(60) && waited < Duration::from_secs(61),
            "waited {waited:?}"
        );
        let msg = rx
            .try_recv()
            .expect("the command reached the controller's queue");
        assert_eq!(
            (msg.kind, msg.actor.as_str()),
            (CommandKind::Pause, "alice")
        );
        assert!(msg.reply.is_closed(), "the caller gave up waiting");
    }

    /// A command for a canary the store does not know is `not found`, not `busy`.
    #[tokio::test]
    async fn a_command_for_an_unknown_canary_is_not_found() {
        let s = scheduler();
        let result = s.command(42, CommandKind::Abort, "alice").await;
        assert!(
            matches!(result, Err(CommandError::NotFound(42))),
            "{result:?}"
        );
    }
}
