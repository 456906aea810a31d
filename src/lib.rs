//! canaryd: automated canary releases through a load balancer's own API, judged statistically
//! from Prometheus data.
//!
//! # Layout
//!
//! Layers from the ground floor up; a module may import only from its own layer's data or from
//! layers below it (see "Architecture" in the README):
//!
//! 1. Ground floor, plain data and pure helpers, importing nothing of the crate:
//!    - [`time`]: durations as written in specs and config, PromQL windows.
//!    - [`target`]: what a canary routes (backend, baseline and canary servers).
//!    - [`secret`]: secrets read from the environment or a file, redacted when printed.
//!    - [`problem`]: the one validation shape (a problem naming its field).
//!    - [`observation`]: what a metric query produced per arm (metrics make it, the judge
//!      reads it).
//! 2. Pure logic, no I/O:
//!    - [`rules`]: rule files (`rules/*.yaml`): metrics, PromQL templates, margins; loading,
//!      strict validation and rendering with escaped label values.
//!    - [`judge`]: the statistics. Observations in, a verdict with its evidence out.
//! 3. [`lifecycle`]: the nouns every layer above shares about a canary's life: the spec as
//!    data, [`lifecycle::Phase`], [`lifecycle::CanaryState`] and its plan, events with their
//!    wording ([`lifecycle::EventDraft`]'s constructors), commands, hooks and preflight results
//!    as data. Data only; it imports the judge's state and verdict types and the ground floor.
//! 4. Components, each behind a small trait, importing only the layers below:
//!    - [`metrics`]: metric sources (Prometheus) and turning query results into observations.
//!    - [`router`]: traffic routers (HAProxy, nginx, Envoy, Traefik, HTTP), behind
//!      [`router::TrafficRouter`].
//!    - [`notify`]: notifiers, routes, templates, and the outbox that delivers each event's
//!      notifications at most once, apart from the canaries.
//!    - [`store`]: persistence in embedded SQLite: canaries, their pinned spec and rules, state,
//!      and the append-only event log.
//!    - [`telemetry`]: log set-up and canaryd's own Prometheus metrics.
//! 5. [`canary`]: spec validation and environment profiles, admission
//!    ([`canary::admission`]), the pure phase machine ([`canary::phase`]), the controller that
//!    executes it and the scheduler that runs one task per active canary.
//! 6. On top: [`config`] (the daemon's settings, validated once, handing each component its
//!    slice), [`api`] (the HTTP API: parses, calls admission or the scheduler, maps errors to
//!    statuses; the client the CLI uses), [`tooling`] (the `rules` and `backtest` subcommands and
//!    the rule unit-test runner) and [`backtest`] (replays a past window through the
//!    judge).
//!
//! Data flows `api -> canary::admission -> store <-> canary::scheduler -> canary::controller ->
//! {metrics, judge, router}`; every decision is persisted before it is acted on (see
//! [`canary::controller`]).

pub mod api;
pub mod backtest;
pub mod canary;
pub mod config;
pub mod judge;
pub mod lifecycle;
pub mod metrics;
pub mod notify;
pub mod observation;
pub mod problem;
pub mod router;
pub mod rules;
pub mod secret;
pub mod store;
pub mod target;
pub mod telemetry;
pub mod time;
pub mod tooling;
