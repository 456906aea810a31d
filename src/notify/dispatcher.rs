//! The dispatcher: tails the event log by id and turns each event into outbox rows.
//!
//! One pass reads the events after the persisted cursor, composes their notifications, routes
//! each to its notifiers, and writes the rows together with the new cursor in one transaction.
//! It wakes on [`Store::subscribe`] (no polling), so it runs right after each state change, yet
//! it never touches the canary: the controller's transaction is already committed when it looks.

use super::compose::{self, LinkSettings};
use super::delivery::Waker;
use super::outbox::{self, RetryPolicy};
use super::routes::Routes;
use crate::store::{CanaryRecord, Event, NewOutboxRow, Store, StoreError};
use crate::telemetry::metrics as self_metrics;
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

/// Events read per pass.
const BATCH: usize = 500;

/// Event kinds that may produce a notification (others are skipped without loading context).
const NOTIFIED: &[&str] = &[
    "submitted",
    "preflight_passed",
    "step_started",
    "awaiting_approval",
    "paused",
    "resumed",
    "analysis",
    "analysis_inconclusive",
    "bake_analysis",
    "hook_failed",
    "promoted",
    "bake_finished",
    "bake_regression",
    "rolled_back",
    "aborted",
    "failed",
];

/// Tails the event log into the outbox.
pub struct Dispatcher {
    store: Store,
    routes: Routes,
    links: LinkSettings,
    notifiers: BTreeSet<String>,
    policy: RetryPolicy,
    waker: Waker,
}

impl Dispatcher {
    /// A dispatcher routing to the configured `notifiers`.
    pub fn new(
        store: Store,
        routes: Routes,
        links: LinkSettings,
        notifiers: BTreeSet<String>,
        policy: RetryPolicy,
        waker: Waker,
    ) -> Self {
        Dispatcher {
            store,
            routes,
            links,
            notifiers,
            policy,
            waker,
        }
    }

    /// Runs until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        let mut changes = self.store.subscribe();
        loop {
            changes.borrow_and_update();
            match self.pass().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    error!(error = %e, "Cannot dispatch notifications; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
        }
    }

    /// One pass; returns whether more events may be waiting.
    pub async fn pass(&self) -> Result<bool, StoreError> {
        let cursor = self.store.notify_cursor().await?;
        let events = self.store.events_since(cursor, BATCH).await?;
        let Some(last) = events.last().map(|e| e.id) else {
            return Ok(false);
        };
        let now = chrono::Utc::now().timestamp_millis();
        let deadline = now.saturating_add(self.policy.deadline.as_millis() as i64);
        let mut canaries: HashMap<i64, (CanaryRecord, Vec<Event>)> = HashMap::new();
        let mut rows = Vec::new();
        for event in events
            .iter()
            .filter(|e| NOTIFIED.contains(&e.kind.as_str()))
        {
            let (record, history) = match canaries.entry(event.canary_id) {
                Entry::Occupied(e) => &*e.into_mut(),
                Entry::Vacant(v) => {
                    let id = event.canary_id;
                    let read = async {
                        let Some(record) = self.store.get(id).await? else {
                            return Ok(None);
                        };
                        Ok(Some((record, self.store.events(id, 0).await?)))
                    };
                    let (record, history) = match read.await {
                        Ok(Some(found)) => found,
                        Ok(None) => continue,
                        // One unreadable canary must not hold up everybody's notifications.
                        Err(e @ StoreError::Corrupt { .. }) => {
                            error!(canary = id, error = %e, "Cannot notify about a canary the store cannot read; skipping its event");
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    &*v.insert((record, history))
                }
            };
            let upto = history.partition_point(|e| e.id <= event.id);
            for n in compose::compose(event, record, &history[..upto], &self.links) {
                let to = self.routes.recipients(
                    n.kind,
                    n.severity,
                    &record.spec.environment,
                    &record.spec.notify,
                );
                let message = serde_json::to_string(&n).expect("notifications serialise");
                for notifier in to {
                    if !self.notifiers.contains(&notifier) {
                        warn!(canary = record.id, notifier = %notifier, "The spec names a notifier that is not configured; skipping it");
                        continue;
                    }
                    rows.push(NewOutboxRow {
                        key: outbox::key(&n, &notifier),
                        canary_id: record.id,
                        event_id: n.event_id,
                        notifier,
                        kind: n.kind.as_str().to_string(),
                        message: message.clone(),
                        due_ms: now,
                        deadline_ms: deadline,
                    });
                }
            }
        }
        let queued = rows.len();
        let added = self.store.enqueue_notifications(rows, last, now).await?;
        if added > 0 {
            debug!(
                events = events.len(),
                queued,
                added,
                cursor = last,
                "Notifications queued"
            );
            self.waker.wake();
        }
        if let Ok(c) = self.store.outbox_counts().await {
            self_metrics().outbox_pending.set(c.pending + c.sending);
        }
        Ok(events.len() == BATCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{EventDraft, EventKind};
    use crate::notify::NotifySettings;
    use crate::notify::compose::tests::{links, record};
    use crate::notify::routes::RouteConfig;

    fn draft(kind: EventKind, data: serde_json::Value) -> EventDraft {
        EventDraft {
            kind,
            actor: "canaryd".into(),
            message: format!("{} happened", kind.as_str()),
            data,
        }
    }

    #[tokio::test]
    async fn an_unreadable_canary_does_not_hold_up_the_others() {
        let store = Store::open("sqlite::memory:").unwrap();
        let rec = record("production");
        let mut ids = Vec::new();
        for backend in ["be1", "be2"] {
            let mut spec = rec.spec.clone();
            spec.target.backend = backend.into();
            let id = store
                .insert(
                    spec,
                    rec.rules.clone(),
                    rec.state.clone(),
                    vec![draft(EventKind::Submitted, serde_json::json!({}))],
                    chrono::Utc::now(),
                )
                .await
                .unwrap();
            ids.push(id);
        }
        store.execute_for_test(&format!(
            "UPDATE canaries SET spec = '{{not json' WHERE id = {}",
            ids[0]
        ));
        let routes = [RouteConfig {
            environments: vec![],
            min_severity: Default::default(),
            events: vec![],
            notifiers: vec!["mail".into()],
        }];
        let names: BTreeSet<String> = ["mail".to_string()].into();
        let d = Dispatcher::new(
            store.clone(),
            Routes::new(&routes, std::sync::Arc::new(|_: &str| false), names.clone()),
            links(),
            names,
            RetryPolicy::from(&NotifySettings::default()),
            Waker::default(),
        );
        assert!(!d.pass().await.unwrap());
        assert!(store.canary_notifications(ids[0]).await.unwrap().is_empty());
        assert_eq!(store.canary_notifications(ids[1]).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn routes_events_into_the_outbox_once_and_never_its_own_failures() {
        let store = Store::open("sqlite::memory:").unwrap();
        let rec = record("production");
        let id = store
            .insert(
                rec.spec.clone(),
                rec.rules.clone(),
                rec.state.clone(),
                vec![draft(EventKind::Submitted, serde_json::json!({}))],
                chrono::Utc::now(),
            )
            .await
            .unwrap();
        let routes = [RouteConfig {
            environments: vec!["production".into()],
            min_severity: Default::default(),
            events: vec![],
            notifiers: vec!["mail".into(), "chat".into()],
        }];
        let names: BTreeSet<String> = ["mail".to_string(), "chat".to_string()].into();
        let d = Dispatcher::new(
            store.clone(),
            Routes::new(&routes, std::sync::Arc::new(|_: &str| false), names.clone()),
            links(),
            names,
            RetryPolicy::from(&NotifySettings::default()),
            Waker::default(),
        );
        assert!(!d.pass().await.unwrap());
        let rows = store.canary_notifications(id).await.unwrap();
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["event-1:submitted:chat", "event-1:submitted:mail"]);
        // Nothing new: nothing added. Our own failure events are not routed.
        store
            .append_event(
                id,
                draft(EventKind::NotificationFailed, serde_json::json!({})),
                chrono::Utc::now(),
            )
            .await
            .unwrap();
        assert!(!d.pass().await.unwrap());
        assert_eq!(store.canary_notifications(id).await.unwrap().len(), 2);
        assert_eq!(store.notify_cursor().await.unwrap(), 2);
        // A replay from an older cursor (as after a crash before the commit) adds nothing.
        store
            .with(|c| Ok(c.execute("UPDATE notify_cursor SET last_event_id = 0", [])?))
            .await
            .unwrap();
        d.pass().await.unwrap();
        assert_eq!(store.canary_notifications(id).await.unwrap().len(), 2);
    }
}
