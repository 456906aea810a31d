//! The routing target: the backend a canary shifts traffic on and its baseline and canary
//! servers. Ground floor: the spec names it, routers act on it.

use serde::{Deserialize, Serialize};

/// What a canary routes: a backend (pool) with the baseline's and the canary's servers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The backend (HAProxy backend, nginx upstream, ...).
    pub backend: String,
    /// Servers running the current version.
    pub baseline: Vec<String>,
    /// Servers running the new version.
    pub canary: Vec<String>,
}
