//! The nouns every layer shares about a canary's life: its spec as data, the phase it is in,
//! its persisted state and plan, the events that explain each change (with their wording), the
//! commands a person can give, hooks and preflight results as data.
//!
//! Ground floor: this module depends only on other data modules ([`crate::judge`]'s state and
//! verdict, [`crate::target`], [`crate::time`]), never on `canary`, `store`, `notify`, `router`,
//! `api` or `config`. The transitions themselves live in the phase machine, `canary::phase`.

pub mod event;
pub mod hooks;
pub mod phase;
pub mod preflight;
pub mod reason;
pub mod spec;
pub mod state;

pub use event::{EventDraft, EventKind};
pub use hooks::{HookOutcome, HookStage};
pub use phase::{CommandKind, Ending, FailSafe, Phase};
pub use preflight::{CheckResult, PreflightReport};
pub use spec::{ApprovalTimeout, CanarySpec};
pub use state::{CanaryState, Plan, hook_key};
