//! Where a canary is in its life (`Phase`), how a rollback ends, what the fail-safe does, and
//! the commands a person can give.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a canary is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Submitted, not picked up yet.
    Pending,
    /// Checking the router and metrics before touching traffic.
    Preflight,
    /// At a step: weight set, waiting, analysing.
    Progressing,
    /// Held at a step until a person approves.
    AwaitingApproval,
    /// Held by a person or by canaryd (weights changed outside canaryd).
    Paused,
    /// Sending all traffic to the canary.
    Promoting,
    /// Watching the promoted version (post-promotion bake).
    Baking,
    /// Promoted. Terminal.
    Succeeded,
    /// Returning all traffic to the baseline.
    RollingBack,
    /// Rolled back by the judge. Terminal.
    RolledBack,
    /// Stopped by a person, traffic back on the baseline. Terminal.
    Aborted,
    /// Stopped by an infrastructure failure after the fail-safe ran. Terminal.
    Failed,
}

impl Phase {
    /// Whether the canary is finished.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::RolledBack | Phase::Aborted | Phase::Failed
        )
    }

    /// All phases, for metrics.
    pub const ALL: [Phase; 12] = [
        Phase::Pending,
        Phase::Preflight,
        Phase::Progressing,
        Phase::AwaitingApproval,
        Phase::Paused,
        Phase::Promoting,
        Phase::Baking,
        Phase::Succeeded,
        Phase::RollingBack,
        Phase::RolledBack,
        Phase::Aborted,
        Phase::Failed,
    ];

    /// The phase's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Preflight => "preflight",
            Phase::Progressing => "progressing",
            Phase::AwaitingApproval => "awaiting_approval",
            Phase::Paused => "paused",
            Phase::Promoting => "promoting",
            Phase::Baking => "baking",
            Phase::Succeeded => "succeeded",
            Phase::RollingBack => "rolling_back",
            Phase::RolledBack => "rolled_back",
            Phase::Aborted => "aborted",
            Phase::Failed => "failed",
        }
    }

    /// Parses a stored phase name.
    pub fn parse(text: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a rollback ends: the terminal phase reached once traffic is back on the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// The judge found a regression.
    RolledBack,
    /// A person aborted.
    Aborted,
    /// The fail-safe ran after infrastructure failures.
    Failed,
}

impl Ending {
    /// The terminal phase this ending reaches.
    pub fn phase(self) -> Phase {
        match self {
            Ending::RolledBack => Phase::RolledBack,
            Ending::Aborted => Phase::Aborted,
            Ending::Failed => Phase::Failed,
        }
    }
}

/// What to do after too many intervals without a usable analysis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailSafe {
    /// Return all traffic to the baseline and fail the canary (default).
    #[default]
    Rollback,
    /// Keep the current weights and pause for a person.
    Hold,
}

/// A person's command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// Stop and return traffic to the baseline.
    Abort,
    /// Hold at the current weights.
    Pause,
    /// Continue after a pause.
    Resume,
    /// Promote now.
    Promote,
    /// Approve a gated step.
    Approve,
}

impl CommandKind {
    /// Parses the command's name (`abort`, ...).
    pub fn parse(text: &str) -> Option<CommandKind> {
        Some(match text {
            "abort" => CommandKind::Abort,
            "pause" => CommandKind::Pause,
            "resume" => CommandKind::Resume,
            "promote" => CommandKind::Promote,
            "approve" => CommandKind::Approve,
            _ => return None,
        })
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommandKind::Abort => "abort",
            CommandKind::Pause => "pause",
            CommandKind::Resume => "resume",
            CommandKind::Promote => "promote",
            CommandKind::Approve => "approve",
        })
    }
}
