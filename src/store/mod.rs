//! Persistence in embedded SQLite (WAL): canaries with their immutable spec and pinned rule set,
//! their state, and the append-only event log.
//!
//! Every state change is one transaction together with the events that explain it, so the log
//! and the state never disagree, whatever moment the process dies at. Schema changes are
//! numbered migrations applied in order at open.

use crate::judge::JudgeState;
use crate::lifecycle::{CanarySpec, CanaryState, EventDraft, Phase};
use crate::rules::RuleSource;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

mod outbox;
pub use outbox::{AttemptOutcome, NewOutboxRow, OutboxCounts, OutboxRow};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A row could not be decoded.
    #[error("store: corrupt {what} for canary {id}: {reason}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// The canary.
        id: i64,
        /// Why.
        reason: String,
    },
    /// Another active canary already uses the target.
    #[error("canary {existing} is already active on router {router:?} backend {backend:?}")]
    Conflict {
        /// The active canary.
        existing: i64,
        /// The router.
        router: String,
        /// The backend.
        backend: String,
    },
    /// The URL is not one the store understands.
    #[error("store: unsupported url {0:?} (use sqlite://PATH)")]
    Url(String),
    /// The database file's directory could not be created.
    #[error("store: cannot create {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The blocking task running the query panicked or was cancelled.
    #[error("store: worker failed: {0}")]
    Worker(String),
}

/// A canary as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryRecord {
    /// Its id.
    pub id: i64,
    /// The spec as submitted.
    pub spec: CanarySpec,
    /// The rule set pinned at submit time.
    pub rules: RuleSource,
    /// Its state.
    pub state: CanaryState,
    /// Submitted at.
    pub created_at: DateTime<Utc>,
    /// Last changed at.
    pub updated_at: DateTime<Utc>,
}

/// One entry of a canary's event log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing across all canaries.
    pub id: i64,
    /// The canary.
    pub canary_id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// What kind (`step_started`, `analysis`, ...).
    pub kind: String,
    /// The canary's phase after the event.
    pub phase: String,
    /// Who (`canaryd` or a token's name).
    pub actor: String,
    /// What happened, for people.
    pub message: String,
    /// Detail (verdicts, weights).
    pub data: serde_json::Value,
}

/// Schema migrations, applied in order. Numbers are reserved per feature: 1 canaries and
/// events, 2 the notification outbox, 3 pipeline operations (approvals, tokens, reports),
/// 4 rule reloads. A module owning a migration keeps its SQL next to its code.
const MIGRATIONS: &[(i64, &str)] = &[(1, BASE_SCHEMA), (2, outbox::OUTBOX_SCHEMA)];

const BASE_SCHEMA: &str = r#"
CREATE TABLE canaries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    environment TEXT NOT NULL,
    router TEXT NOT NULL,
    backend TEXT NOT NULL,
    phase TEXT NOT NULL,
    spec TEXT NOT NULL,
    rules TEXT NOT NULL,
    rules_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX canaries_by_phase ON canaries(phase);
CREATE INDEX canaries_by_target ON canaries(router, backend);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    canary_id INTEGER NOT NULL REFERENCES canaries(id),
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    phase TEXT NOT NULL,
    actor TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX events_by_canary ON events(canary_id, id);
CREATE TRIGGER events_are_append_only BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
"#;

const TERMINAL: &str = "('succeeded','rolled_back','aborted','failed')";

/// The store. Cheap to clone; one SQLite connection behind a mutex, used from blocking tasks.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// The database file (None in memory).
    path: Option<PathBuf>,
    last_event: Arc<watch::Sender<i64>>,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn parse_ts(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

impl Store {
    /// Opens (creating if needed) the store at `url` (`sqlite://PATH`, `sqlite::memory:`).
    pub fn open(url: &str) -> Result<Store, StoreError> {
        let mut file = None;
        let conn = if url == "sqlite::memory:" {
            Connection::open_in_memory()?
        } else {
            let path = url
                .strip_prefix("sqlite://")
                .ok_or_else(|| StoreError::Url(url.to_string()))?;
            let path = Path::new(path);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
            file = Some(path.to_path_buf());
            Connection::open(path)?
        };
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a committed decision survives even a power cut, not only a kill -9.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&conn)?;
        let last: i64 =
            conn.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: file,
            last_event: Arc::new(watch::channel(last).0),
        })
    }

    /// Runs `f` on the connection in a blocking task (for store extensions in sibling modules).
    pub(crate) async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    /// Subscribes to "an event was appended" (the latest event id).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.last_event.subscribe()
    }

    pub(crate) fn notify(&self, id: Option<i64>) {
        if let Some(id) = id {
            self.last_event.send_if_modified(|last| {
                let newer = id > *last;
                if newer {
                    *last = id;
                }
                newer
            });
        }
    }

    /// Inserts a new canary with its first events, unless another active canary uses the same
    /// router and backend.
    pub async fn insert(
        &self,
        spec: CanarySpec,
        rules: RuleSource,
        state: CanaryState,
        events: Vec<EventDraft>,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let (id, last) = self
            .with(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let existing: Option<i64> = tx
                    .query_row(
                        &format!(
                            "SELECT id FROM canaries WHERE router = ?1 AND backend = ?2 AND phase NOT IN {TERMINAL} LIMIT 1"
                        ),
                        params![spec.router, spec.target.backend],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(existing) = existing {
                    return Err(StoreError::Conflict {
                        existing,
                        router: spec.router.clone(),
                        backend: spec.target.backend.clone(),
                    });
                }
                tx.execute(
                    "INSERT INTO canaries (service, environment, router, backend, phase, spec, rules, rules_hash, state, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
                    params![
                        spec.service,
                        spec.environment,
                        spec.router,
                        spec.target.backend,
                        state.phase.as_str(),
                        to_json(&spec),
                        to_json(&rules),
                        rules.hash,
                        to_json(&state),
                        ts(now),
                    ],
                )?;
                let id = tx.last_insert_rowid();
                let last = append_events(&tx, id, state.phase, &events, now)?;
                tx.commit()?;
                Ok((id, last))
            })
            .await?;
        self.notify(last);
        Ok(id)
    }

    /// Persists a transition: the new state and its events, atomically.
    pub async fn transition(
        &self,
        id: i64,
        state: &CanaryState,
        events: &[EventDraft],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let state = state.clone();
        let events = events.to_vec();
        let last = self
            .with(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute(
                    "UPDATE canaries SET phase = ?1, state = ?2, updated_at = ?3 WHERE id = ?4",
                    params![state.phase.as_str(), to_json(&state), ts(now), id],
                )?;
                let last = append_events(&tx, id, state.phase, &events, now)?;
                tx.commit()?;
                Ok(last)
            })
            .await?;
        self.notify(last);
        Ok(())
    }

    /// One canary.
    pub async fn get(&self, id: i64) -> Result<Option<CanaryRecord>, StoreError> {
        self.with(move |conn| {
            conn.query_row(&format!("{SELECT_CANARY} WHERE id = ?1"), [id], read_row)
                .optional()?
                .map(decode)
                .transpose()
        })
        .await
    }

    /// Canaries, newest first: all, or only the active (non-terminal) ones.
    pub async fn list(&self, active_only: bool) -> Result<Vec<CanaryRecord>, StoreError> {
        self.with(move |conn| {
            let filter = if active_only {
                format!("WHERE phase NOT IN {TERMINAL}")
            } else {
                String::new()
            };
            let mut stmt = conn.prepare(&format!(
                "{SELECT_CANARY} {filter} ORDER BY id DESC LIMIT 1000"
            ))?;
            let rows = stmt.query_map([], read_row)?;
            rows.map(|r| decode(r?)).collect()
        })
        .await
    }

    /// Count of canaries per phase.
    pub async fn count_by_phase(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare("SELECT phase, COUNT(*) FROM canaries GROUP BY phase")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// A canary's events with id greater than `after`, oldest first.
    pub async fn events(&self, id: i64, after: i64) -> Result<Vec<Event>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {EVENT_COLUMNS} FROM events
                 WHERE canary_id = ?1 AND id > ?2 ORDER BY id LIMIT 10000"
            ))?;
            let rows = stmt.query_map(params![id, after], read_event)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Deletes finished canaries (and their events and notifications) last changed before
    /// `cutoff`: the retention setting. Returns how many canaries went.
    pub async fn prune(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError> {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let has_outbox: bool = tx.query_row(
                "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'",
                [],
                |r| r.get(0),
            )?;
            // A canary whose notifications are not all queued and sent yet stays: pruning it
            // would lose them.
            let unsent = if has_outbox {
                " AND NOT EXISTS (SELECT 1 FROM events e WHERE e.canary_id = canaries.id \
                   AND e.id > (SELECT last_event_id FROM notify_cursor WHERE id = 1)) \
                 AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.canary_id = canaries.id \
                   AND o.state IN ('pending', 'sending'))"
            } else {
                ""
            };
            let ids: Vec<i64> = {
                let mut stmt = tx.prepare(&format!(
                    "SELECT id FROM canaries WHERE phase IN {TERMINAL} AND updated_at < ?1{unsent}"
                ))?;
                stmt.query_map([ts(cutoff)], |r| r.get(0))?
                    .collect::<Result<_, _>>()?
            };
            for id in &ids {
                if has_outbox {
                    tx.execute("DELETE FROM outbox WHERE canary_id = ?1", [id])?;
                }
                tx.execute("DELETE FROM events WHERE canary_id = ?1", [id])?;
                tx.execute("DELETE FROM canaries WHERE id = ?1", [id])?;
            }
            tx.commit()?;
            Ok(ids.len())
        })
        .await
    }

    /// Checks the store takes writes (preflight, doctor).
    pub async fn write_probe(&self) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS write_probe (at TEXT NOT NULL);
                 DELETE FROM write_probe;",
            )?;
            conn.execute("INSERT INTO write_probe (at) VALUES (?1)", [ts(Utc::now())])?;
            Ok(())
        })
        .await
    }

    /// Free bytes on the disk holding the database (None in memory or when unknown).
    pub fn free_disk_bytes(&self) -> Option<u64> {
        let dir = self.path.as_ref()?.parent()?;
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs buffer.
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
    }

    /// Runs raw SQL, for tests that need a store in a state canaryd never writes.
    #[cfg(test)]
    pub(crate) fn execute_for_test(&self, sql: &str) {
        self.conn.lock().unwrap().execute_batch(sql).unwrap();
    }

    /// Checks the store answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.with(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }
}

const SELECT_CANARY: &str = "SELECT id, spec, rules, state, created_at, updated_at FROM canaries";

type Row = (i64, String, String, String, String, String);

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn decode((id, spec, rules, state, created, updated): Row) -> Result<CanaryRecord, StoreError> {
    let corrupt = |what: &'static str| {
        move |e: serde_json::Error| StoreError::Corrupt {
            what,
            id,
            reason: e.to_string(),
        }
    };
    let rules: RuleSource = serde_json::from_str(&rules).map_err(corrupt("rules"))?;
    let state = decode_state(&state, &rules).map_err(corrupt("state"))?;
    Ok(CanaryRecord {
        id,
        spec: serde_json::from_str(&spec).map_err(corrupt("spec"))?,
        rules,
        state,
        created_at: parse_ts(&created),
        updated_at: parse_ts(&updated),
    })
}

/// Reads a stored state. A judge state written by an older canaryd (whose judge kept other
/// statistics) does not fit today's judge: the canary then keeps its phase, step and history,
/// and its judge starts afresh from the pinned rules. Restarting the evidence can delay a
/// rollback by the intervals it takes to gather it again, never cause one.
fn decode_state(text: &str, rules: &RuleSource) -> Result<CanaryState, serde_json::Error> {
    let error = match serde_json::from_str(text) {
        Ok(state) => return Ok(state),
        Err(e) => e,
    };
    let Ok(set) = rules.parse() else {
        return Err(error);
    };
    let mut value: serde_json::Value = serde_json::from_str(text)?;
    let Some(fields) = value.as_object_mut() else {
        return Err(error);
    };
    let fresh = serde_json::to_value(JudgeState::new(&set))?;
    fields.insert("judge".into(), fresh);
    fields.insert("bake_judge".into(), serde_json::Value::Null);
    match serde_json::from_value::<CanaryState>(value) {
        Ok(state) => {
            tracing::warn!(
                rules = %rules.name,
                "A canary's judge state is from an older canaryd; its evidence starts afresh"
            );
            Ok(state)
        }
        Err(_) => Err(error),
    }
}

/// The columns [`read_event`] reads, in its order.
pub(crate) const EVENT_COLUMNS: &str = "id, canary_id, at, kind, phase, actor, message, data";

/// One `events` row selected with [`EVENT_COLUMNS`]: the one mapping from row to [`Event`].
fn read_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let data: String = r.get(7)?;
    Ok(Event {
        id: r.get(0)?,
        canary_id: r.get(1)?,
        at: parse_ts(&r.get::<_, String>(2)?),
        kind: r.get(3)?,
        phase: r.get(4)?,
        actor: r.get(5)?,
        message: r.get(6)?,
        data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
    })
}

fn append_events(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    phase: Phase,
    events: &[EventDraft],
    now: DateTime<Utc>,
) -> Result<Option<i64>, StoreError> {
    let mut last = None;
    for e in events {
        tx.execute(
            "INSERT INTO events (canary_id, at, kind, phase, actor, message, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                id,
                ts(now),
                e.kind.as_str(),
                phase.as_str(),
                e.actor,
                e.message,
                e.data.to_string()
            ],
        )?;
        last = Some(tx.last_insert_rowid());
    }
    Ok(last)
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
    )?;
    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        conn.execute_batch(&format!(
            "BEGIN; {sql}; INSERT INTO schema_migrations (version, applied_at) VALUES ({version}, '{}'); COMMIT;",
            ts(Utc::now())
        ))?;
    }
    Ok(())
}

/// Serialises a stored value (these types always serialise).
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("stored types serialise to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::EventKind;
    use crate::rules::parse_rule_set;

    fn sample() -> (CanarySpec, RuleSource, CanaryState) {
        let spec = serde_yaml::from_str::<CanarySpec>(
            "service: s\nrouter: edge\ntarget: {backend: be, baseline: [a], canary: [b]}\ncanary_labels: {v: '2'}\nrules: r\nstrategy: {steps: [50, 100], interval: 10s}\n",
        )
        .unwrap();
        let text = "name: r\nmetrics:\n  - name: cpu\n    kind: gauge\n    query: 'x{ {{selector}} }'\n    max_increase: 50%\n";
        let rules = parse_rule_set("r.yaml", text).unwrap();
        (
            spec,
            RuleSource::new("r", "r.yaml", text.into()),
            CanaryState::new(JudgeState::new(&rules)),
        )
    }

    fn draft(kind: EventKind) -> EventDraft {
        EventDraft {
            kind,
            actor: "canaryd".into(),
            message: "m".into(),
            data: serde_json::Value::Null,
        }
    }

    #[test]
    fn a_judge_state_from_an_older_canaryd_starts_afresh_and_keeps_the_phase() {
        let (_, rules, mut state) = sample();
        state.phase = Phase::Progressing;
        state.step = 1;
        state.intervals = 4;
        let mut value = serde_json::to_value(&state).unwrap();
        // What an older judge kept: other fields, which today's judge cannot read.
        value["judge"] =
            serde_json::json!({"judge": "sequential", "metrics": {"cpu": {"log_e": [1.0, 2.0]}}});
        let old = value.to_string();
        assert!(serde_json::from_str::<CanaryState>(&old).is_err());
        let read = decode_state(&old, &rules).expect("decoded");
        assert_eq!(read.phase, Phase::Progressing);
        assert_eq!((read.step, read.intervals), (1, 4));
        let fresh = JudgeState::new(&rules.parse().unwrap());
        assert_eq!(read.judge, fresh);
        // Something that is not a state at all stays an error.
        assert!(decode_state("[1, 2]", &rules).is_err());
    }

    #[tokio::test]
    async fn insert_transition_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/sub/c.db", dir.path().display());
        let store = Store::open(&url).unwrap();
        let (spec, rules, mut state) = sample();
        let now = Utc::now();
        let sub = store.subscribe();
        let id = store
            .insert(
                spec.clone(),
                rules.clone(),
                state.clone(),
                vec![draft(EventKind::Submitted)],
                now,
            )
            .await
            .unwrap();
        assert!(sub.has_changed().unwrap());
        // A second active canary on the same target conflicts.
        let conflict = store
            .insert(spec.clone(), rules.clone(), state.clone(), vec![], now)
            .await
            .unwrap_err();
        assert!(matches!(conflict, StoreError::Conflict { existing, .. } if existing == id));
        state.phase = Phase::Progressing;
        state.intended_weight = 50.0;
        store
            .transition(id, &state, &[draft(EventKind::StepStarted)], now)
            .await
            .unwrap();
        drop(store);
        // Reopen: everything is there.
        let store = Store::open(&url).unwrap();
        let rec = store.get(id).await.unwrap().unwrap();
        assert_eq!(rec.state, state);
        assert_eq!(rec.spec, spec);
        assert_eq!(rec.rules.hash, rules.hash);
        let events = store.events(id, 0).await.unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["submitted", "step_started"]);
        assert_eq!(events[1].phase, "progressing");
        assert_eq!(store.list(true).await.unwrap().len(), 1);
        // Events are append-only.
        let conn = store.conn.lock().unwrap();
        assert!(conn.execute("UPDATE events SET message = 'x'", []).is_err());
    }

    #[tokio::test]
    async fn retention_prunes_only_old_finished_canaries() {
        let store = Store::open("sqlite::memory:").unwrap();
        let (spec, rules, mut state) = sample();
        let old = Utc::now() - chrono::Duration::days(40);
        let id = store
            .insert(
                spec.clone(),
                rules.clone(),
                state.clone(),
                vec![draft(EventKind::Submitted)],
                old,
            )
            .await
            .unwrap();
        state.phase = Phase::Succeeded;
        store
            .transition(id, &state, &[draft(EventKind::Promoted)], old)
            .await
            .unwrap();
        let mut other = spec.clone();
        other.target.backend = "be2".into();
        let active = store
            .insert(
                other,
                rules,
                CanaryState::new(state.judge.clone()),
                vec![],
                old,
            )
            .await
            .unwrap();
        let cutoff = Utc::now() - chrono::Duration::days(30);
        // Its events are not yet turned into notifications: it stays.
        assert_eq!(store.prune(cutoff).await.unwrap(), 0);
        let last = store.events(id, 0).await.unwrap().last().unwrap().id;
        let now_ms = Utc::now().timestamp_millis();
        let row = |key: &str| outbox::NewOutboxRow {
            key: key.into(),
            canary_id: id,
            event_id: last,
            notifier: "ops".into(),
            kind: "promoted".into(),
            message: "{}".into(),
            due_ms: now_ms,
            deadline_ms: now_ms + 60_000,
        };
        store
            .enqueue_notifications(vec![row("k1")], last, now_ms)
            .await
            .unwrap();
        // Queued but not sent: it stays.
        assert_eq!(store.prune(cutoff).await.unwrap(), 0);
        store
            .conn
            .lock()
            .unwrap()
            .execute("UPDATE outbox SET state = 'delivered', finished_ms = 1", [])
            .unwrap();
        let pruned = store.prune(cutoff).await.unwrap();
        assert_eq!(pruned, 1);
        assert!(store.get(id).await.unwrap().is_none());
        assert!(store.events(id, 0).await.unwrap().is_empty());
        assert!(
            store.get(active).await.unwrap().is_some(),
            "active canaries stay"
        );
    }

    #[test]
    fn migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/c.db", dir.path().display());
        Store::open(&url).unwrap();
        Store::open(&url).unwrap();
        assert!(matches!(
            Store::open("postgres://x"),
            Err(StoreError::Url(_))
        ));
    }
}
