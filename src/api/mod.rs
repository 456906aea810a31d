//! The HTTP API (JSON under `/api/v1`), health endpoints and `/metrics`, and the client the
//! CLI uses to talk to it.

pub mod auth;
pub mod client;
pub mod openapi;
pub mod report;
pub mod view;

use crate::canary::admission::{Admission, AdmissionError};
use crate::canary::scheduler::{CommandError, Scheduler};
use crate::canary::spec::{self, FieldError};
use crate::lifecycle::{CommandKind, Phase};
use crate::rules::Catalog;
use crate::store::{Store, StoreError};
use crate::telemetry::{PhaseLabel, metrics as self_metrics};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::{Arc, RwLock};
use std::time::Duration;
pub use view::CanaryView;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// What the handlers share.
pub struct AppState {
    /// Persistence.
    pub store: Store,
    /// The controllers.
    pub scheduler: Arc<Scheduler>,
    /// The loaded rule sets.
    pub catalog: Arc<RwLock<Catalog>>,
    /// API settings (tokens, TLS, what specs may carry).
    pub api: auth::ApiConfig,
    /// Names of the configured notifiers (a spec's `notify:` may only name these).
    pub notifiers: Vec<String>,
}

/// An error answer: `{"error": kind, "message": text, "details": [...]}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    details: Vec<FieldError>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            details: Vec::new(),
        }
    }

    fn invalid(details: Vec<FieldError>) -> Self {
        let message = details
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            kind: "invalid_spec",
            message,
            details,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": self.kind,
            "message": self.message,
            "details": self.details,
        });
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
        }
    }
}

impl From<AdmissionError> for ApiError {
    fn from(e: AdmissionError) -> Self {
        match e {
            AdmissionError::Invalid(problems) => ApiError::invalid(problems),
            AdmissionError::Router(_) if e.is_unknown_target() => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "preflight_failed",
                e.to_string(),
            ),
            AdmissionError::Router(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "preflight_failed",
                e.to_string(),
            ),
            AdmissionError::Store(e) => e.into(),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            CommandError::Refused(_) => {
                ApiError::new(StatusCode::CONFLICT, "refused", e.to_string())
            }
            CommandError::Busy(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string())
            }
            CommandError::NotStored(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_stored", e.to_string())
            }
            CommandError::Store(e) => e.into(),
        }
    }
}

/// The API's routes.
pub fn app(state: Arc<AppState>) -> Router {
    let tokens = Arc::new(auth::Tokens::new(&state.api));
    Router::new()
        .route("/api/v1/canaries", post(submit).get(list))
        .route("/api/v1/canaries/{id}", get(show))
        .route("/api/v1/canaries/{id}/events", get(events))
        .route("/api/v1/canaries/{id}/report", get(report::report))
        .route("/api/v1/canaries/{id}/{action}", post(command))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/rules", get(rules_list))
        .route("/api/v1/rules/reload", post(rules_reload))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(self_metrics_text))
        .layer(axum::middleware::from_fn_with_state(
            tokens,
            auth::authenticate,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The actor of a request: the API token's name (`anonymous` when the API is open).
fn actor(identity: &Option<Extension<auth::Identity>>) -> String {
    identity
        .as_ref()
        .map_or_else(|| "anonymous".to_string(), |i| i.name.clone())
}

/// `POST /api/v1/canaries`: parses the spec (JSON, or YAML by content type) and admits it.
async fn submit(
    State(app): State<Arc<AppState>>,
    identity: Option<Extension<auth::Identity>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<CanaryView>), ApiError> {
    let is_yaml = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("yaml"));
    let spec = if is_yaml {
        let text = std::str::from_utf8(&body).map_err(|_| {
            ApiError::invalid(vec![FieldError {
                field: "(body)".into(),
                message: "not UTF-8".into(),
            }])
        })?;
        spec::from_yaml(text)
    } else {
        spec::from_json(&body)
    }
    .map_err(|e| ApiError::invalid(vec![e]))?;
    let admission = Admission {
        scheduler: &app.scheduler,
        catalog: &app.catalog,
        notifiers: &app.notifiers,
        allow_spec_commands: app.api.allow_spec_commands,
    };
    let id = admission.admit(spec, &actor(&identity)).await?;
    let record = app.store.get(id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store",
            "canary vanished after insert",
        )
    })?;
    Ok((StatusCode::CREATED, Json(CanaryView::from(&record))))
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
}

async fn list(
    State(app): State<Arc<AppState>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<CanaryView>>, ApiError> {
    let active = match q.state.as_deref() {
        None | Some("all") => false,
        Some("active") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                format!("state={other:?}: use active or all"),
            ));
        }
    };
    let records = app.store.list(active).await?;
    Ok(Json(records.iter().map(CanaryView::from).collect()))
}

fn parse_id(id: &str) -> Result<i64, ApiError> {
    id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no canary {id:?}"),
        )
    })
}

async fn show(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<CanaryView>, ApiError> {
    let id = parse_id(&id)?;
    let record = app.store.get(id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("canary {id} not found"),
        )
    })?;
    Ok(Json(CanaryView::from(&record)))
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<i64>,
    /// Long poll: wait up to this long (e.g. `25s`, at most 60s) for newer events.
    wait: Option<String>,
}

async fn events(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id)?;
    let after = q.after.unwrap_or(0);
    let wait = match q.wait.as_deref() {
        None => Duration::ZERO,
        Some(w) => crate::time::parse_duration(w)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", format!("wait: {e}")))?
            .min(Duration::from_secs(60)),
    };
    let Some(record) = app.store.get(id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("canary {id} not found"),
        ));
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = app.store.subscribe();
    loop {
        changes.borrow_and_update();
        let found = app.store.events(id, after).await?;
        if !found.is_empty() || tokio::time::Instant::now() >= deadline {
            let phase = if found.is_empty() {
                record.state.phase.to_string()
            } else {
                found.last().map(|e| e.phase.clone()).unwrap_or_default()
            };
            return Ok(Json(json!({"canary": id, "phase": phase, "events": found})));
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            continue;
        }
    }
}

async fn command(
    State(app): State<Arc<AppState>>,
    Path((id, action)): Path<(String, String)>,
    identity: Option<Extension<auth::Identity>>,
) -> Result<Json<CanaryView>, ApiError> {
    let id = parse_id(&id)?;
    let kind = CommandKind::parse(&action).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown action {action:?} (promote, abort, pause, resume, approve)"),
        )
    })?;
    let record = app.scheduler.command(id, kind, &actor(&identity)).await?;
    Ok(Json(CanaryView::from(&record)))
}

async fn ready(State(app): State<Arc<AppState>>) -> Response {
    match app.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")).into_response(),
    }
}

async fn self_metrics_text(State(app): State<Arc<AppState>>) -> Response {
    let m = self_metrics();
    if let Ok(counts) = app.store.count_by_phase().await {
        for phase in Phase::ALL {
            let n = counts
                .iter()
                .find(|(p, _)| p == phase.as_str())
                .map_or(0, |(_, n)| *n);
            m.canaries
                .get_or_create(&PhaseLabel {
                    phase: phase.as_str().into(),
                })
                .set(n);
        }
    }
    m.rule_load_errors.set(
        app.catalog
            .read()
            .map(|c| c.errors.len() as i64)
            .unwrap_or(0),
    );
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}

/// `GET /api/v1/rules`: the loaded rule sets (name, version, path, judge, metrics, whether an
/// older version is served because the file fails) and the load errors.
async fn rules_list(State(app): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let catalog = app.catalog.read().unwrap_or_else(|p| p.into_inner());
    Json(catalog.view())
}

/// `POST /api/v1/rules/reload`: reload the rules directory now (as SIGHUP does).
async fn rules_reload(
    State(app): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let catalog = app.catalog.clone();
    let outcome =
        tokio::task::spawn_blocking(move || crate::rules::reload::reload_now(&catalog, "api"))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "reload", e.to_string())
            })?;
    let catalog = app.catalog.read().unwrap_or_else(|p| p.into_inner());
    Ok(Json(json!({"reload": outcome, "rules": catalog.view()})))
}
