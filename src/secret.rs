//! Secrets: where one is read from (`SecretRef`: an environment variable or a file, never the
//! config itself) and the value in memory (`Secret`, redacted whenever it is printed). Ground
//! floor: notifiers, routers and the config all use it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A secret read from an environment variable or a file, never written in the config itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Environment variable holding the secret.
    pub env: Option<String>,
    /// File holding the secret (trailing newline trimmed).
    pub file: Option<String>,
}

impl SecretRef {
    /// Whether a source is configured.
    pub fn is_set(&self) -> bool {
        self.env.is_some() || self.file.is_some()
    }

    /// Reads the secret. The error names the source, never the value.
    pub fn read(&self) -> Result<Option<String>, String> {
        match (&self.env, &self.file) {
            (Some(_), Some(_)) => Err("set either `env` or `file`, not both".into()),
            (Some(var), None) => std::env::var(var)
                .map(Some)
                .map_err(|_| format!("environment variable {var} is not set")),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string()))
                .map_err(|e| format!("cannot read secret file {path}: {e}")),
            (None, None) => Ok(None),
        }
    }
}

/// A secret value in memory: shown as `<redacted>` by `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}
