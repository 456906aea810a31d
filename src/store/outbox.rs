//! The notification outbox: what the dispatcher decided to send, and what delivery did with it.
//!
//! The dispatcher tails the `events` table by id. It writes the outbox rows an event produces and
//! moves its cursor past the event in one transaction, so a crash neither loses a notification
//! nor creates it twice. Each row's `key` (event, notification, notifier) is UNIQUE: inserting it
//! again is a no-op. Delivery claims a row (`sending`, one more attempt) in its own transaction
//! *before* it talks to the network and records the outcome afterwards; a row found `sending` at
//! start was interrupted mid-attempt, and is not sent again (see `crate::notify` for why).

use super::{EVENT_COLUMNS, Event, Store, StoreError, append_events, read_event};
use crate::lifecycle::{EventDraft, Phase};
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

/// Migration 2: the outbox and the dispatcher's cursor. The cursor starts at the newest event,
/// so upgrading a store does not announce its history.
pub(super) const OUTBOX_SCHEMA: &str = r#"
CREATE TABLE notify_cursor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_event_id INTEGER NOT NULL
);
INSERT INTO notify_cursor (id, last_event_id) SELECT 1, COALESCE(MAX(id), 0) FROM events;
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    canary_id INTEGER NOT NULL REFERENCES canaries(id),
    event_id INTEGER NOT NULL,
    notifier TEXT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    due_ms INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    last_error TEXT,
    finished_ms INTEGER
);
CREATE INDEX outbox_by_lane ON outbox(notifier, state, id);
"#;

/// A row to add to the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct NewOutboxRow {
    /// Idempotency key: the same key is never inserted twice.
    pub key: String,
    /// The canary the notification is about.
    pub canary_id: i64,
    /// The event that caused it.
    pub event_id: i64,
    /// The notifier's name.
    pub notifier: String,
    /// The notification's kind (`rolled_back`, `summary`, ...).
    pub kind: String,
    /// The notification, as JSON.
    pub message: String,
    /// First attempt (Unix ms).
    pub due_ms: i64,
    /// Give up after (Unix ms).
    pub deadline_ms: i64,
}

/// An outbox row as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// Idempotency key.
    pub key: String,
    /// The canary.
    pub canary_id: i64,
    /// The event that caused it.
    pub event_id: i64,
    /// The notifier's name.
    pub notifier: String,
    /// The notification's kind.
    pub kind: String,
    /// The notification, as JSON.
    pub message: String,
    /// `pending`, `sending`, `delivered`, `failed` or `unknown`.
    pub state: String,
    /// Attempts started so far (including the one just claimed).
    pub attempts: u32,
    /// Created (Unix ms).
    pub created_ms: i64,
    /// Give up after (Unix ms).
    pub deadline_ms: i64,
    /// The last attempt's error.
    pub last_error: Option<String>,
}

/// What a lane's attempt came to, when it is not the end of the row's story.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptOutcome {
    /// Delivered.
    Delivered {
        /// The row.
        id: i64,
    },
    /// Not accepted; try again at `due_ms`.
    Retry {
        /// The row.
        id: i64,
        /// Next attempt (Unix ms).
        due_ms: i64,
        /// Why this one failed.
        error: String,
    },
}

/// Outbox rows by state (for tests, `doctor` and the pending gauge).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Waiting for an attempt.
    pub pending: i64,
    /// An attempt is in flight.
    pub sending: i64,
    /// Delivered.
    pub delivered: i64,
    /// Given up.
    pub failed: i64,
    /// Interrupted mid-attempt: may or may not have arrived; not sent again.
    pub unknown: i64,
}

const COLUMNS: &str = "id, key, canary_id, event_id, notifier, kind, message, state, attempts, created_ms, deadline_ms, last_error";

fn read_outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
    Ok(OutboxRow {
        id: r.get(0)?,
        key: r.get(1)?,
        canary_id: r.get(2)?,
        event_id: r.get(3)?,
        notifier: r.get(4)?,
        kind: r.get(5)?,
        message: r.get(6)?,
        state: r.get(7)?,
        attempts: r.get(8)?,
        created_ms: r.get(9)?,
        deadline_ms: r.get(10)?,
        last_error: r.get(11)?,
    })
}

fn record_outcome(
    conn: &rusqlite::Connection,
    outcome: &AttemptOutcome,
    now_ms: i64,
) -> Result<(), StoreError> {
    match outcome {
        AttemptOutcome::Delivered { id } => conn.execute(
            "UPDATE outbox SET state = 'delivered', finished_ms = ?2, last_error = NULL WHERE id = ?1",
            params![id, now_ms],
        )?,
        AttemptOutcome::Retry { id, due_ms, error } => conn.execute(
            "UPDATE outbox SET state = 'pending', due_ms = ?2, last_error = ?3 WHERE id = ?1",
            params![id, due_ms, error],
        )?,
    };
    Ok(())
}

/// Appends events to a canary's log in its current phase, without changing its state.
fn append_in_current_phase(
    tx: &rusqlite::Transaction<'_>,
    canary_id: i64,
    events: &[EventDraft],
    now: DateTime<Utc>,
) -> Result<Option<i64>, StoreError> {
    let phase: String = tx.query_row(
        "SELECT phase FROM canaries WHERE id = ?1",
        [canary_id],
        |r| r.get(0),
    )?;
    let phase = Phase::parse(&phase).ok_or_else(|| StoreError::Corrupt {
        what: "phase",
        id: canary_id,
        reason: format!("unknown phase {phase:?}"),
    })?;
    append_events(tx, canary_id, phase, events, now)
}

impl Store {
    /// The id of the last event the dispatcher has handled.
    pub async fn notify_cursor(&self) -> Result<i64, StoreError> {
        self.with(|conn| {
            Ok(conn.query_row(
                "SELECT last_event_id FROM notify_cursor WHERE id = 1",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Events of every canary with id greater than `after`, oldest first, at most `limit`.
    pub async fn events_since(&self, after: i64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![after, limit as i64], read_event)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Adds outbox rows (a key already present is skipped) and moves the dispatcher's cursor to
    /// `cursor`, in one transaction. Returns how many rows were new.
    pub async fn enqueue_notifications(
        &self,
        rows: Vec<NewOutboxRow>,
        cursor: i64,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut added = 0;
            {
                let mut insert = tx.prepare(
                    "INSERT OR IGNORE INTO outbox (key, canary_id, event_id, notifier, kind, message, state, attempts, created_ms, due_ms, deadline_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?8, ?9)",
                )?;
                for r in &rows {
                    added += insert.execute(params![
                        r.key,
                        r.canary_id,
                        r.event_id,
                        r.notifier,
                        r.kind,
                        r.message,
                        now_ms,
                        r.due_ms,
                        r.deadline_ms
                    ])?;
                }
            }
            tx.execute(
                "UPDATE notify_cursor SET last_event_id = MAX(last_event_id, ?1) WHERE id = 1",
                [cursor],
            )?;
            tx.commit()?;
            Ok(added)
        })
        .await
    }

    /// Records the outcome of a lane's previous attempt (if any) and claims the lane's oldest
    /// pending row if it is due, in one transaction: the claimed row becomes `sending` with one
    /// more attempt, committed before anything is sent. Lanes deliver in order: a row waiting
    /// for its retry holds back the rows queued after it.
    pub async fn next_notification(
        &self,
        notifier: &str,
        now_ms: i64,
        finished: Option<AttemptOutcome>,
    ) -> Result<Option<OutboxRow>, StoreError> {
        let notifier = notifier.to_string();
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(outcome) = &finished {
                record_outcome(&tx, outcome, now_ms)?;
            }
            let row = tx
                .query_row(
                    &format!(
                        "SELECT {COLUMNS}, due_ms FROM outbox WHERE notifier = ?1 AND state = 'pending' ORDER BY id LIMIT 1"
                    ),
                    params![notifier],
                    |r| Ok((read_outbox_row(r)?, r.get::<_, i64>(12)?)),
                )
                .optional()?
                .filter(|(_, due)| *due <= now_ms)
                .map(|(row, _)| row);
            if let Some(r) = &row {
                tx.execute(
                    "UPDATE outbox SET state = 'sending', attempts = attempts + 1 WHERE id = ?1",
                    [r.id],
                )?;
            }
            tx.commit()?;
            Ok(row.map(|r| OutboxRow {
                state: "sending".into(),
                attempts: r.attempts + 1,
                ..r
            }))
        })
        .await
    }

    /// Records a lane's last attempt without claiming another (at shutdown).
    pub async fn record_notification_attempt(
        &self,
        outcome: AttemptOutcome,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.with(move |conn| {
            record_outcome(conn, &outcome, now_ms)?;
            Ok(())
        })
        .await
    }

    /// When a notifier's oldest pending row is due (Unix ms), if it has one.
    pub async fn next_notification_due(&self, notifier: &str) -> Result<Option<i64>, StoreError> {
        let notifier = notifier.to_string();
        self.with(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT due_ms FROM outbox WHERE notifier = ?1 AND state = 'pending' ORDER BY id LIMIT 1",
                    [notifier],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?)
        })
        .await
    }

    /// Ends a row without delivery (`failed`: given up; `unknown`: interrupted mid-attempt) and
    /// appends `event` to its canary's log, in one transaction, without changing the canary.
    pub async fn notification_given_up(
        &self,
        row: &OutboxRow,
        state: &'static str,
        error: &str,
        event: EventDraft,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (id, canary_id, error) = (row.id, row.canary_id, error.to_string());
        let last = self
            .with(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute(
                    "UPDATE outbox SET state = ?2, finished_ms = ?3, last_error = ?4 WHERE id = ?1",
                    params![id, state, now.timestamp_millis(), error],
                )?;
                let last = append_in_current_phase(&tx, canary_id, &[event], now)?;
                tx.commit()?;
                Ok(last)
            })
            .await?;
        self.notify(last);
        Ok(())
    }

    /// Rows left `sending` by a process that died mid-attempt.
    pub async fn interrupted_notifications(&self) -> Result<Vec<OutboxRow>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM outbox WHERE state = 'sending' ORDER BY id"
            ))?;
            let rows = stmt.query_map([], read_outbox_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Pending rows whose notifier is not among `known` (removed from the config since).
    pub async fn orphaned_notifications(
        &self,
        known: Vec<String>,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM outbox WHERE state = 'pending' ORDER BY id"
            ))?;
            let rows = stmt.query_map([], read_outbox_row)?;
            let rows = rows.collect::<Result<Vec<_>, _>>()?;
            Ok(rows
                .into_iter()
                .filter(|r| !known.contains(&r.notifier))
                .collect())
        })
        .await
    }

    /// Deletes finished rows older than `before_ms` (their events are past the cursor, so they
    /// can never be created again).
    pub async fn prune_notifications(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.with(move |conn| {
            Ok(conn.execute(
                "DELETE FROM outbox WHERE state IN ('delivered', 'failed', 'unknown') AND finished_ms < ?1",
                [before_ms],
            )?)
        })
        .await
    }

    /// Outbox rows by state.
    pub async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM outbox GROUP BY state")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut counts = OutboxCounts::default();
            for row in rows {
                let (state, n) = row?;
                match state.as_str() {
                    "pending" => counts.pending = n,
                    "sending" => counts.sending = n,
                    "delivered" => counts.delivered = n,
                    "failed" => counts.failed = n,
                    _ => counts.unknown += n,
                }
            }
            Ok(counts)
        })
        .await
    }

    /// Every outbox row of a canary, oldest first (for tests and diagnosis).
    pub async fn canary_notifications(&self, canary_id: i64) -> Result<Vec<OutboxRow>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM outbox WHERE canary_id = ?1 ORDER BY id"
            ))?;
            let rows = stmt.query_map([canary_id], read_outbox_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Appends one event to a canary's log in its current phase, without changing its state.
    pub async fn append_event(
        &self,
        canary_id: i64,
        event: EventDraft,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let last = self
            .with(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let last = append_in_current_phase(&tx, canary_id, &[event], now)?;
                tx.commit()?;
                Ok(last)
            })
            .await?;
        self.notify(last);
        Ok(last.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::JudgeState;
    use crate::lifecycle::{CanaryState, EventKind};
    use crate::rules::{RuleSource, parse_rule_set};

    async fn store_with_canary() -> (Store, i64) {
        let store = Store::open("sqlite::memory:").unwrap();
        let spec = serde_yaml::from_str::<crate::lifecycle::CanarySpec>(
            "service: s\nrouter: edge\ntarget: {backend: be, baseline: [a], canary: [b]}\ncanary_labels: {v: '2'}\nrules: r\nstrategy: {steps: [50, 100], interval: 10s}\n",
        )
        .unwrap();
        let text = "name: r\nmetrics:\n  - name: cpu\n    kind: gauge\n    query: 'x{ {{selector}} }'\n    max_increase: 50%\n";
        let rules = parse_rule_set("r.yaml", text).unwrap();
        let id = store
            .insert(
                spec,
                RuleSource::new("r", "r.yaml", text.into()),
                CanaryState::new(JudgeState::new(&rules)),
                vec![EventDraft {
                    kind: EventKind::Submitted,
                    actor: "t".into(),
                    message: "submitted".into(),
                    data: serde_json::Value::Null,
                }],
                Utc::now(),
            )
            .await
            .unwrap();
        (store, id)
    }

    fn row(key: &str, canary_id: i64, due_ms: i64) -> NewOutboxRow {
        NewOutboxRow {
            key: key.into(),
            canary_id,
            event_id: 1,
            notifier: "chat".into(),
            kind: "submitted".into(),
            message: "{}".into(),
            due_ms,
            deadline_ms: due_ms + 60_000,
        }
    }

    #[tokio::test]
    async fn keys_are_inserted_once_and_the_cursor_moves_with_them() {
        let (store, id) = store_with_canary().await;
        // The migration starts the cursor at the newest event (no history is announced)...
        assert_eq!(store.notify_cursor().await.unwrap(), 0);
        assert_eq!(store.events_since(0, 10).await.unwrap().len(), 1);
        let added = store
            .enqueue_notifications(vec![row("1:submitted:chat", id, 0)], 1, 0)
            .await
            .unwrap();
        assert_eq!(added, 1);
        // ... and a replay of the same event adds nothing, nor moves the cursor back.
        let added = store
            .enqueue_notifications(vec![row("1:submitted:chat", id, 0)], 0, 0)
            .await
            .unwrap();
        assert_eq!(added, 0);
        assert_eq!(store.notify_cursor().await.unwrap(), 1);
        assert!(store.events_since(1, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn claim_retry_deliver_and_give_up() {
        let (store, id) = store_with_canary().await;
        store
            .enqueue_notifications(vec![row("a", id, 100), row("b", id, 200)], 1, 0)
            .await
            .unwrap();
        assert!(
            store
                .next_notification("chat", 50, None)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store.next_notification_due("chat").await.unwrap(),
            Some(100)
        );
        let a = store
            .next_notification("chat", 150, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((a.key.as_str(), a.attempts), ("a", 1));
        // A claimed row is not claimed twice, and a crash leaves it visible as interrupted.
        assert!(
            store
                .next_notification("other", 150, None)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(store.interrupted_notifications().await.unwrap().len(), 1);
        // Recording `a`'s retry and looking for the next row happen together; `a` is still the
        // lane's head, so `b` waits behind it (in-order delivery).
        let retry = AttemptOutcome::Retry {
            id: a.id,
            due_ms: 300,
            error: "503".into(),
        };
        assert!(
            store
                .next_notification("chat", 250, Some(retry))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store.next_notification_due("chat").await.unwrap(),
            Some(300)
        );
        let a = store
            .next_notification("chat", 300, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (a.key.as_str(), a.attempts, a.last_error.as_deref()),
            ("a", 2, Some("503"))
        );
        let delivered = AttemptOutcome::Delivered { id: a.id };
        let b = store
            .next_notification("chat", 400, Some(delivered))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((b.key.as_str(), b.attempts), ("b", 1));
        let a = b;
        let draft = EventDraft {
            kind: EventKind::NotificationFailed,
            actor: "canaryd".into(),
            message: "notification failed".into(),
            data: serde_json::Value::Null,
        };
        let mut sub = store.subscribe();
        sub.borrow_and_update();
        store
            .notification_given_up(&a, "failed", "gone", draft, Utc::now())
            .await
            .unwrap();
        assert!(sub.has_changed().unwrap());
        let counts = store.outbox_counts().await.unwrap();
        assert_eq!((counts.delivered, counts.failed, counts.pending), (1, 1, 0));
        // The failure is in the canary's log, in its current phase; the state is untouched.
        let events = store.events(id, 0).await.unwrap();
        let last = events.last().unwrap();
        assert_eq!(
            (last.kind.as_str(), last.phase.as_str()),
            ("notification_failed", "pending")
        );
        assert_eq!(
            store.get(id).await.unwrap().unwrap().state.phase,
            Phase::Pending
        );
        assert_eq!(store.prune_notifications(i64::MAX).await.unwrap(), 2);
    }
}
