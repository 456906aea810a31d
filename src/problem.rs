//! Validation problems: what is wrong with one field, named by its path. Every component kind
//! (routers, notifiers, hooks, environments, a canary spec) reports its problems in this one
//! shape, all at once; whoever holds the component's place in the whole (`config.rs` for
//! `canaryd.toml`, the API for a spec) prefixes the field with that place. Depends on nothing
//! else in the crate.

use serde::Serialize;
use std::fmt;

/// A problem with one field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The field's path (`strategy.steps[2]`, `runtime_api`, `routers.edge.runtime_api`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same problem seen from a parent: `under("routers.edge")` turns `runtime_api` into
    /// `routers.edge.runtime_api` (an empty field becomes the parent itself).
    pub fn under(self, parent: &str) -> Self {
        let field = match (parent.is_empty(), self.field.is_empty()) {
            (true, _) => self.field,
            (false, true) => parent.to_string(),
            (false, false) => format!("{parent}.{}", self.field),
        };
        Problem { field, ..self }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parent_prefixes_the_field() {
        let p = Problem::new("runtime_api", "must not be empty");
        assert_eq!(
            p.clone().under("routers.edge").to_string(),
            "routers.edge.runtime_api: must not be empty"
        );
        assert_eq!(p.clone().under("").field, "runtime_api");
        assert_eq!(Problem::new("", "x").under("notify").field, "notify");
    }
}
