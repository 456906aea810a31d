//! Delivery: one lane (task) per notifier sends that notifier's outbox rows in the order they
//! were queued, one attempt at a time, so a slow or dead receiver holds up nobody but itself,
//! and each receiver sees a canary's messages in order ("rolled back" before the summary).
//!
//! Per row: claim it (`sending`, committed), render, send with the attempt bounded by the
//! timeout, then record the outcome together with claiming the next row. A retry waits
//! `min_backoff · 2^(n−1)` with jitter (or exactly a 429's `retry_after`), and the rows behind
//! it wait too: a rate limit or an outage is the receiver's, not one message's. Past the
//! deadline, or on a permanent error, the row fails; an unknown outcome ends it as `unknown`.
//! Either end is logged, counted and appended to the canary's events as `notification_failed`.

use super::message::Notification;
use super::outbox::RetryPolicy;
use super::templates::Templates;
use super::{DeliveryError, Notifier, Outgoing};
use crate::lifecycle::{EventDraft, EventKind};
use crate::store::{AttemptOutcome, OutboxRow, Store, StoreError};
use crate::telemetry::metrics as self_metrics;
use chrono::Utc;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// Longest idle sleep of a lane (it also wakes when the dispatcher queues something).
const IDLE: Duration = Duration::from_secs(30);
/// Finished rows are kept this long.
const KEEP_FINISHED: Duration = Duration::from_secs(30 * 86400);

/// Wakes every lane (the dispatcher calls it after queueing rows).
#[derive(Clone, Default)]
pub struct Waker(Arc<Vec<Arc<Notify>>>);

impl Waker {
    /// Wakes all lanes; a lane busy sending sees the wake-up when it next looks.
    pub fn wake(&self) {
        for n in self.0.iter() {
            n.notify_one();
        }
    }
}

/// The lanes.
pub struct Lanes {
    store: Store,
    notifiers: BTreeMap<String, Arc<dyn Notifier>>,
    templates: Arc<Templates>,
    policy: RetryPolicy,
    wakers: BTreeMap<String, Arc<Notify>>,
}

impl Lanes {
    /// One lane per notifier.
    pub fn new(
        store: Store,
        notifiers: BTreeMap<String, Arc<dyn Notifier>>,
        templates: Arc<Templates>,
        policy: RetryPolicy,
    ) -> Self {
        let wakers = notifiers
            .keys()
            .map(|k| (k.clone(), Arc::new(Notify::new())))
            .collect();
        Lanes {
            store,
            notifiers,
            templates,
            policy,
            wakers,
        }
    }

    /// A handle that wakes every lane.
    pub fn waker(&self) -> Waker {
        Waker(Arc::new(self.wakers.values().cloned().collect()))
    }

    /// Settles what a previous process left: rows interrupted mid-attempt end as `unknown` (not
    /// sent again: they may have arrived), rows for notifiers no longer configured fail, and
    /// finished rows older than 30 days are deleted.
    pub async fn settle_leftovers(&self) -> Result<(), StoreError> {
        for row in self.store.interrupted_notifications().await? {
            let why = "canaryd stopped during the delivery attempt; it may have arrived, so it is not sent again";
            self.give_up(&row, "unknown", why).await;
        }
        let known = self.notifiers.keys().cloned().collect();
        for row in self.store.orphaned_notifications(known).await? {
            let why = format!("notifier {:?} is no longer configured", row.notifier);
            self.give_up(&row, "failed", &why).await;
        }
        let cutoff = Utc::now().timestamp_millis() - KEEP_FINISHED.as_millis() as i64;
        self.store.prune_notifications(cutoff).await?;
        Ok(())
    }

    /// Spawns every lane on `tracker`.
    pub fn spawn_all(self, tracker: &TaskTracker, cancel: &CancellationToken) {
        let shared = Arc::new(self);
        for name in shared.notifiers.keys() {
            let lane = Lane {
                lanes: shared.clone(),
                name: name.clone(),
                notifier: shared.notifiers[name].clone(),
                wake: shared.wakers[name].clone(),
            };
            tracker.spawn(lane.run(cancel.clone()));
        }
    }

    /// Ends a row without delivery: logs, counts, and appends `notification_failed`.
    async fn give_up(&self, row: &OutboxRow, state: &'static str, why: &str) {
        let kind = self
            .notifiers
            .get(&row.notifier)
            .map_or("unknown", |n| n.kind());
        let message = match state {
            "unknown" => format!(
                "notification {} to {} may not have arrived: {why}",
                row.kind, row.notifier
            ),
            _ => format!(
                "notification {} to {} failed after {} attempt(s): {why}",
                row.kind, row.notifier, row.attempts
            ),
        };
        error!(canary = row.canary_id, notifier = %row.notifier, notification = %row.kind, attempts = row.attempts, outcome = state, error = %why, "Notification not delivered");
        let event = EventDraft {
            kind: EventKind::NotificationFailed,
            actor: "canaryd".into(),
            message,
            data: serde_json::json!({
                "notifier": row.notifier,
                "notifier_kind": kind,
                "notification": row.kind,
                "event_id": row.event_id,
                "attempts": row.attempts,
                "outcome": state,
                "error": why,
            }),
        };
        if let Err(e) = self
            .store
            .notification_given_up(row, state, why, event, Utc::now())
            .await
        {
            error!(error = %e, notifier = %row.notifier, "Cannot record a failed notification");
        }
        self_metrics().notification(&row.notifier, state);
    }
}

struct Lane {
    lanes: Arc<Lanes>,
    name: String,
    notifier: Arc<dyn Notifier>,
    wake: Arc<Notify>,
}

impl Lane {
    async fn run(self, cancel: CancellationToken) {
        let store = &self.lanes.store;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(
            Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64 ^ fxhash(&self.name),
        );
        let mut finished: Option<AttemptOutcome> = None;
        loop {
            if cancel.is_cancelled() {
                if let Some(outcome) = finished.take() {
                    let now = Utc::now().timestamp_millis();
                    if let Err(e) = store.record_notification_attempt(outcome, now).await {
                        error!(error = %e, notifier = %self.name, "Cannot record a notification attempt");
                    }
                }
                return;
            }
            let now = Utc::now().timestamp_millis();
            let claimed = store
                .next_notification(&self.name, now, finished.clone())
                .await;
            let row = match claimed {
                Ok(row) => {
                    finished = None;
                    row
                }
                Err(e) => {
                    error!(error = %e, notifier = %self.name, "Cannot read the outbox; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                    continue;
                }
            };
            match row {
                Some(row) => finished = self.attempt(row, &mut rng).await,
                None => {
                    if let Ok(c) = store.outbox_counts().await {
                        self_metrics().outbox_pending.set(c.pending + c.sending);
                    }
                    let next = store.next_notification_due(&self.name).await.ok().flatten();
                    let wait = next.map_or(IDLE, |due| {
                        Duration::from_millis((due - Utc::now().timestamp_millis()).max(0) as u64)
                            .min(IDLE)
                    });
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// One attempt; returns the outcome to record with the next claim (None when the row has
    /// already ended as failed or unknown).
    async fn attempt(
        &self,
        row: OutboxRow,
        rng: &mut rand::rngs::SmallRng,
    ) -> Option<AttemptOutcome> {
        let lanes = &self.lanes;
        if Utc::now().timestamp_millis() > row.deadline_ms {
            let why = format!(
                "the {} deadline passed before it could be sent",
                crate::time::format_duration(lanes.policy.deadline)
            );
            lanes.give_up(&row, "failed", &why).await;
            return None;
        }
        let notification: Notification = match serde_json::from_str(&row.message) {
            Ok(n) => n,
            Err(e) => {
                lanes
                    .give_up(
                        &row,
                        "failed",
                        &format!("the queued notification does not decode: {e}"),
                    )
                    .await;
                return None;
            }
        };
        let rendered = lanes.templates.render(&notification);
        let out = Outgoing {
            key: &row.key,
            notification: &notification,
            rendered: &rendered,
        };
        let started = std::time::Instant::now();
        // Notifiers bound their own attempts; this is the backstop.
        let limit = lanes.policy.timeout * 3 + Duration::from_secs(1);
        let result = match tokio::time::timeout(limit, self.notifier.deliver(&out)).await {
            Ok(r) => r,
            Err(_) => Err(DeliveryError::Unknown(format!(
                "no outcome within {}; it may have arrived",
                crate::time::format_duration(limit)
            ))),
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => {
                info!(canary = row.canary_id, notifier = %self.name, notification = %row.kind, attempts = row.attempts, elapsed_ms, "Notification delivered");
                self_metrics().notification(&self.name, "delivered");
                Some(AttemptOutcome::Delivered { id: row.id })
            }
            Err(DeliveryError::Retry { reason, after }) => {
                let wait = after.unwrap_or_else(|| lanes.policy.backoff(row.attempts, rng));
                let due = Utc::now().timestamp_millis() + wait.as_millis() as i64;
                if due > row.deadline_ms {
                    let why = format!(
                        "gave up at the {} deadline: {reason}",
                        crate::time::format_duration(lanes.policy.deadline)
                    );
                    lanes.give_up(&row, "failed", &why).await;
                    return None;
                }
                warn!(canary = row.canary_id, notifier = %self.name, notification = %row.kind, attempts = row.attempts, retry_in_ms = wait.as_millis() as u64, error = %reason, "Notification not delivered; will retry");
                self_metrics().notification(&self.name, "retried");
                Some(AttemptOutcome::Retry {
                    id: row.id,
                    due_ms: due,
                    error: reason,
                })
            }
            Err(DeliveryError::Permanent(reason)) => {
                lanes.give_up(&row, "failed", &reason).await;
                None
            }
            Err(DeliveryError::Unknown(reason)) => {
                lanes.give_up(&row, "unknown", &reason).await;
                None
            }
        }
    }
}

/// A small stable hash of a lane's name (to decorrelate the lanes' jitter).
fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}
