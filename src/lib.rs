//! canaryd: automated canary releases through a load balancer's own API, judged statistically
//! from Prometheus data.
//!
//! # Layout
//!
//! Each module owns one concept (see `DESIGN.md` in the project docs):
//!
//! - [`backtest`]: replays a past window from Prometheus through the judge (`canaryd backtest`).
//! - [`config`]: the daemon's settings (`canaryd.toml`, `CANARYD_*` overrides), validated once.
//! - [`rules`]: rule files (`rules/*.yaml`): metrics, PromQL templates, margins; loading,
//!   strict validation and rendering with escaped label values.
//! - [`metrics`]: metric sources (Prometheus) and turning query results into observations.
//! - [`observation`]: what a metric query produced per arm (ground floor: metrics make it, the
//!   judge reads it; imports nothing else from the crate).
//! - [`judge`]: the statistics. Pure: observations in, a verdict with its evidence out.
//! - [`canary`]: the canary spec, the pure phase machine, the controller that executes it and the
//!   scheduler that runs one task per active canary.
//! - [`router`]: traffic routers (HAProxy, ...), behind the [`router::TrafficRouter`] trait.
//! - [`notify`]: notifications: email and chat notifiers, routes, templates, and the outbox
//!   that delivers each event's notifications at most once, apart from the canaries.
//! - [`store`]: persistence in embedded SQLite: canaries, their pinned spec and rules, state,
//!   and the append-only event log.
//! - [`api`]: the HTTP API (axum) and the client the CLI uses to talk to it.
//! - [`telemetry`]: log set-up and canaryd's own Prometheus metrics.
//!
//! Data flows `api -> store <-> canary::scheduler -> canary::controller -> {metrics, judge,
//! router}`; every decision is persisted before it is acted on (see [`canary::controller`]).

pub mod api;
pub mod backtest;
pub mod canary;
pub mod config;
pub mod judge;
pub mod metrics;
pub mod notify;
pub mod observation;
pub mod router;
pub mod rules;
pub mod store;
pub mod telemetry;
pub mod time;
