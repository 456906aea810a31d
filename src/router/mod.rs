//! Traffic routers: the load balancers canaryd shifts traffic through.
//!
//! One file per load balancer behind [`TrafficRouter`]; [`RouterConfig`] is the closed,
//! `kind`-tagged set of configurations (an unknown kind is a load error, never a fallback).

mod atomic_file;
mod envoy;
mod file_provider;
mod haproxy;
mod http;
mod nginx;
mod traefik;
mod weights;

pub use envoy::{EnvoyConfig, EnvoyRouter};
pub use haproxy::{HaproxyConfig, HaproxyRouter, haproxy_weights, realized_percent};
pub use http::{HttpConfig, HttpRouter, HttpWeights};
pub use nginx::{NginxConfig, NginxRouter};
pub use traefik::{TraefikConfig, TraefikRouter};
pub use weights::{relative_weights, resolved_percent};

use crate::problem::Problem;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

pub use crate::target::Target;

/// One server's live state as the router reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerState {
    /// The server's name.
    pub name: String,
    /// The weight as configured at run time.
    pub weight: u32,
    /// Whether the server takes new traffic (not in maintenance or drain).
    pub enabled: bool,
    /// Whether health checks consider it up.
    pub up: bool,
}

/// The live split, read back from the router.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveWeights {
    /// The canary's share of new traffic, in percent.
    pub canary_percent: f64,
    /// Per server.
    pub servers: Vec<ServerState>,
}

/// Weights within this many percentage points count as equal (router weight resolution).
pub const WEIGHT_TOLERANCE: f64 = 0.5;

/// Whether a read-back share matches an intended one.
pub fn weights_match(live: f64, intended: f64) -> bool {
    (live - intended).abs() <= WEIGHT_TOLERANCE
}

/// A router failure. Messages name the router, the backend and the server concerned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouterError {
    /// The router's API could not be reached.
    #[error("router {router}: cannot reach {address}: {reason}")]
    Unreachable {
        /// The router's name.
        router: String,
        /// Where we tried.
        address: String,
        /// Why it failed.
        reason: String,
    },
    /// The backend or a server does not exist.
    #[error("router {router}: {what}")]
    NotFound {
        /// The router's name.
        router: String,
        /// What is missing.
        what: String,
    },
    /// The router refused a command.
    #[error("router {router}: {command:?} was refused: {reply}")]
    Rejected {
        /// The router's name.
        router: String,
        /// The command.
        command: String,
        /// The router's answer.
        reply: String,
    },
    /// The router did not answer in time.
    #[error("router {router}: {operation} timed out")]
    Timeout {
        /// The router's name.
        router: String,
        /// What we were doing.
        operation: String,
    },
    /// The router answered something we could not read.
    #[error("router {router}: unexpected answer to {command:?}: {reply}")]
    Protocol {
        /// The router's name.
        router: String,
        /// The command.
        command: String,
        /// The answer.
        reply: String,
    },
    /// The router's kind cannot do this.
    #[error("router {router}: cannot {operation}: its kind does not support it")]
    Unsupported {
        /// The router's name.
        router: String,
        /// What was asked.
        operation: String,
    },
}

/// A load balancer canaryd can shift traffic through.
///
/// Contract (every implementation):
/// - `reconcile` MUST check that the backend and every server exist, and change nothing.
/// - `set_weights` MUST be idempotent: setting the same split twice is the same as once.
/// - `get_weights` MUST read the real, live state from the load balancer, never a cache.
/// - `finalize` MUST send all new traffic to `stable` (the canary after a promotion, the
///   baseline after a rollback) and be idempotent.
#[async_trait]
pub trait TrafficRouter: Send + Sync {
    /// The router's configured name.
    fn name(&self) -> &str;

    /// The canary share this router really gives for an intended one (its weight
    /// resolution); read-backs are compared with this.
    fn realized(&self, _target: &Target, canary_percent: f64) -> f64 {
        canary_percent
    }

    /// Checks that the load balancer answers at all, without a target (`canaryd doctor`).
    /// Returns what it found (a version, an address). The default says nothing was checked.
    async fn check(&self) -> Result<String, RouterError> {
        Ok("no connectivity check for this kind".into())
    }

    /// Checks that the target exists.
    async fn reconcile(&self, target: &Target) -> Result<(), RouterError>;

    /// Sends `canary_percent` of new traffic to the canary servers and the rest to the baseline.
    async fn set_weights(&self, target: &Target, canary_percent: f64) -> Result<(), RouterError>;

    /// Reads the live split.
    async fn get_weights(&self, target: &Target) -> Result<LiveWeights, RouterError>;

    /// Sets the named servers' weights and leaves the target's other servers as they are (for
    /// strategies that move single servers: rolling, blue-green). Weights are relative, as the
    /// load balancer uses them: a server's share is `w / Σw` over the backend's servers, and 0
    /// takes a server out of new traffic; every kind accepts 0..=256. Every name MUST be one of
    /// the target's servers; the change MUST be idempotent and live when this returns.
    /// Kinds that cannot address single servers answer [`RouterError::Unsupported`].
    async fn set_server_weights(
        &self,
        _target: &Target,
        _weights: &BTreeMap<String, u32>,
    ) -> Result<(), RouterError> {
        Err(RouterError::Unsupported {
            router: self.name().to_string(),
            operation: "set single servers' weights".into(),
        })
    }

    /// Sends all traffic to one side.
    async fn finalize(&self, target: &Target, stable: Stable) -> Result<(), RouterError> {
        let percent = match stable {
            Stable::Canary => 100.0,
            Stable::Baseline => 0.0,
        };
        self.set_weights(target, percent).await
    }
}

/// Which side is stable after a canary ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stable {
    /// Promoted: the canary is the new stable version.
    Canary,
    /// Rolled back: the baseline stays.
    Baseline,
}

impl fmt::Display for Stable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stable::Canary => "canary",
            Stable::Baseline => "baseline",
        })
    }
}

/// A router's configuration, selected by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RouterConfig {
    /// HAProxy through its Runtime API.
    Haproxy(HaproxyConfig),
    /// nginx through an include file canaryd renders, checks and reloads.
    Nginx(NginxConfig),
    /// Envoy through a file-based route configuration (RDS from a file), confirmed by its admin API.
    Envoy(EnvoyConfig),
    /// Traefik through its file provider's weighted services, confirmed by its API.
    Traefik(TraefikConfig),
    /// Any load balancer or cloud API behind a small adapter speaking canaryd's JSON contract.
    Http(HttpConfig),
}

impl RouterConfig {
    /// Builds the router named `name`.
    pub fn build(&self, name: &str) -> Arc<dyn TrafficRouter> {
        match self {
            RouterConfig::Haproxy(c) => Arc::new(HaproxyRouter::new(name, c.clone())),
            RouterConfig::Nginx(c) => Arc::new(NginxRouter::new(name, c.clone())),
            RouterConfig::Envoy(c) => Arc::new(EnvoyRouter::new(name, c.clone())),
            RouterConfig::Traefik(c) => Arc::new(TraefikRouter::new(name, c.clone())),
            RouterConfig::Http(c) => Arc::new(HttpRouter::new(name, c.clone())),
        }
    }

    /// The kind's name.
    pub fn kind(&self) -> &'static str {
        match self {
            RouterConfig::Haproxy(_) => "haproxy",
            RouterConfig::Nginx(_) => "nginx",
            RouterConfig::Envoy(_) => "envoy",
            RouterConfig::Traefik(_) => "traefik",
            RouterConfig::Http(_) => "http",
        }
    }

    /// Checks values without touching the network: every problem at once, each naming its
    /// field within this router's section (`runtime_api`); each kind's checks live in its file.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            RouterConfig::Haproxy(c) => c.problems(),
            RouterConfig::Nginx(c) => c.problems(),
            RouterConfig::Envoy(c) => c.problems(),
            RouterConfig::Traefik(c) => c.problems(),
            RouterConfig::Http(c) => c.problems(),
        }
    }
}
