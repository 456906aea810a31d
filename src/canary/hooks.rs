//! Hooks: HTTP calls or commands run around a rollout — the runbook's maintenance mode,
//! migrations, worker stop/start and cache/CDN purges.
//!
//! Stages: `pre_rollout` (after preflight, before any traffic moves; a failure stops the
//! canary), `pre_step` (before each step's weight; a failure pauses the canary with the weights
//! untouched), `post_promotion`, `rollback` (when a rollback begins) and `post_rollback` (their
//! failures are reported loudly but change nothing). Each hook's outcome and output go into the
//! canary's events. Hooks may run again after a crash (at least once): make them idempotent.

use crate::problem::Problem;
use crate::time::HumanDuration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// Where in the rollout a hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookStage {
    /// After preflight, before any traffic moves.
    PreRollout,
    /// Before each step's weight is applied.
    PreStep,
    /// After the canary has all traffic.
    PostPromotion,
    /// When a rollback begins, before traffic returns.
    Rollback,
    /// After traffic is back on the baseline.
    PostRollback,
}

impl fmt::Display for HookStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HookStage::PreRollout => "pre_rollout",
            HookStage::PreStep => "pre_step",
            HookStage::PostPromotion => "post_promotion",
            HookStage::Rollback => "rollback",
            HookStage::PostRollback => "post_rollback",
        })
    }
}

/// Hooks by stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// After preflight, before any traffic moves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_rollout: Vec<Hook>,
    /// Before each step's weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_step: Vec<Hook>,
    /// After the promotion.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_promotion: Vec<Hook>,
    /// When a rollback begins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollback: Vec<Hook>,
    /// After a rollback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_rollback: Vec<Hook>,
}

/// One hook: exactly one of `http` or `command`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// A name for the events.
    pub name: String,
    /// Call a URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHook>,
    /// Run a program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandHook>,
    /// Time limit (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
}

/// An HTTP hook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHook {
    /// Method (default POST).
    #[serde(default = "default_method")]
    pub method: String,
    /// URL.
    pub url: String,
    /// Extra headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The status that counts as success (default: any 2xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
}

fn default_method() -> String {
    "POST".into()
}

/// A command hook: runs `argv` directly (no shell) with the canary described in `CANARYD_*`
/// environment variables.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandHook {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// The default time limit of a hook.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Output kept per hook in the audit log.
pub const MAX_OUTPUT: usize = 4096;

impl Hooks {
    /// No hooks at all.
    pub fn is_empty(&self) -> bool {
        HookStage::ALL.iter().all(|s| self.at(*s).is_empty())
    }

    /// The hooks of a stage.
    pub fn at(&self, stage: HookStage) -> &[Hook] {
        match stage {
            HookStage::PreRollout => &self.pre_rollout,
            HookStage::PreStep => &self.pre_step,
            HookStage::PostPromotion => &self.post_promotion,
            HookStage::Rollback => &self.rollback,
            HookStage::PostRollback => &self.post_rollback,
        }
    }

    /// These hooks followed by `more`'s, stage by stage.
    pub fn then(&self, more: &Hooks) -> Hooks {
        let join = |a: &[Hook], b: &[Hook]| a.iter().chain(b).cloned().collect();
        Hooks {
            pre_rollout: join(&self.pre_rollout, &more.pre_rollout),
            pre_step: join(&self.pre_step, &more.pre_step),
            post_promotion: join(&self.post_promotion, &more.post_promotion),
            rollback: join(&self.rollback, &more.rollback),
            post_rollback: join(&self.post_rollback, &more.post_rollback),
        }
    }

    /// Whether any hook runs a command.
    pub fn has_commands(&self) -> bool {
        HookStage::ALL
            .iter()
            .any(|s| self.at(*s).iter().any(|h| h.command.is_some()))
    }

    /// Checks every hook; problems are pushed with their field paths under `prefix`.
    pub fn validate(&self, prefix: &str, errors: &mut Vec<Problem>) {
        for stage in HookStage::ALL {
            for (i, h) in self.at(stage).iter().enumerate() {
                let field = format!("{prefix}.{stage}[{i}]");
                let mut bad =
                    |f: &str, m: String| errors.push(Problem::new(format!("{field}{f}"), m));
                if h.name.trim().is_empty() {
                    bad(".name", "must not be empty".into());
                }
                match (&h.http, &h.command) {
                    (Some(http), None) => match reqwest::Url::parse(&http.url) {
                        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                        _ => bad(".http.url", format!("{:?} is not an http(s) URL", http.url)),
                    },
                    (None, Some(c)) if c.argv.is_empty() => {
                        bad(".command.argv", "needs at least the program".into())
                    }
                    (None, Some(_)) => {}
                    _ => bad("", "needs exactly one of `http` or `command`".into()),
                }
            }
        }
    }
}

impl HookStage {
    /// Every stage, in rollout order.
    pub const ALL: [HookStage; 5] = [
        HookStage::PreRollout,
        HookStage::PreStep,
        HookStage::PostPromotion,
        HookStage::Rollback,
        HookStage::PostRollback,
    ];

    /// Whether a failure at this stage stops what comes next.
    pub fn is_blocking(self) -> bool {
        matches!(self, HookStage::PreRollout | HookStage::PreStep)
    }
}

/// What a hook is told about the canary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HookContext {
    /// The canary's id.
    pub canary: i64,
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// The stage.
    pub stage: HookStage,
    /// 1-based step.
    pub step: usize,
    /// The canary weight in force or about to be.
    pub weight: f64,
    /// The backend.
    pub backend: String,
    /// The release's metadata.
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// How a hook went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HookOutcome {
    /// The hook's name.
    pub name: String,
    /// Succeeded.
    pub ok: bool,
    /// Exit status or HTTP status, or why it did not run.
    pub detail: String,
    /// Output (stdout then stderr, or the response body), truncated.
    pub output: String,
    /// How long it took.
    pub millis: u64,
}

fn truncate(mut text: String) -> String {
    if text.len() > MAX_OUTPUT {
        let mut cut = MAX_OUTPUT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n[truncated]");
    }
    text
}

/// Runs a stage's hooks in order. At a blocking stage the first failure stops the rest.
pub async fn run(hooks: &[Hook], ctx: &HookContext) -> Vec<HookOutcome> {
    let mut out = Vec::new();
    for hook in hooks {
        let started = Instant::now();
        let limit = hook.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0);
        let result = tokio::time::timeout(limit, run_one(hook, ctx)).await;
        let (ok, detail, output) = match result {
            Ok(r) => r,
            Err(_) => (false, format!("timed out after {limit:?}"), String::new()),
        };
        out.push(HookOutcome {
            name: hook.name.clone(),
            ok,
            detail,
            output: truncate(output),
            millis: started.elapsed().as_millis() as u64,
        });
        if !ok && ctx.stage.is_blocking() {
            break;
        }
    }
    out
}

async fn run_one(hook: &Hook, ctx: &HookContext) -> (bool, String, String) {
    if let Some(http) = &hook.http {
        return run_http(http, ctx).await;
    }
    if let Some(cmd) = &hook.command {
        return run_command(cmd, ctx).await;
    }
    (false, "no action configured".into(), String::new())
}

async fn run_http(http: &HttpHook, ctx: &HookContext) -> (bool, String, String) {
    let method = match reqwest::Method::from_bytes(http.method.to_uppercase().as_bytes()) {
        Ok(m) => m,
        Err(_) => {
            return (
                false,
                format!("invalid method {:?}", http.method),
                String::new(),
            );
        }
    };
    let client = reqwest::Client::new();
    let mut req = client
        .request(method, &http.url)
        .header("x-canaryd-stage", ctx.stage.to_string())
        .json(ctx);
    for (k, v) in &http.headers {
        req = req.header(k, v);
    }
    match req.send().await {
        Err(e) => (
            false,
            format!("request failed: {}", e.without_url()),
            String::new(),
        ),
        Ok(resp) => {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            let ok = match http.expect_status {
                Some(want) => status.as_u16() == want,
                None => status.is_success(),
            };
            (ok, format!("HTTP {}", status.as_u16()), body)
        }
    }
}

async fn run_command(cmd: &CommandHook, ctx: &HookContext) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(&cmd.argv[0]);
    command
        .args(&cmd.argv[1..])
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .env("CANARYD_CANARY", ctx.canary.to_string())
        .env("CANARYD_SERVICE", &ctx.service)
        .env("CANARYD_ENVIRONMENT", &ctx.environment)
        .env("CANARYD_STAGE", ctx.stage.to_string())
        .env("CANARYD_STEP", ctx.step.to_string())
        .env("CANARYD_WEIGHT", ctx.weight.to_string())
        .env("CANARYD_BACKEND", &ctx.backend)
        .env(
            "CANARYD_METADATA",
            serde_json::to_string(&ctx.metadata).unwrap_or_default(),
        )
        .envs(&cmd.env);
    match command.output().await {
        Err(e) => (
            false,
            format!("cannot run {:?}: {e}", cmd.argv[0]),
            String::new(),
        ),
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            let err = String::from_utf8_lossy(&out.stderr);
            if !err.is_empty() {
                text.push_str(&err);
            }
            (out.status.success(), format!("{}", out.status), text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(stage: HookStage) -> HookContext {
        HookContext {
            canary: 7,
            service: "checkout".into(),
            environment: "staging".into(),
            stage,
            step: 2,
            weight: 25.0,
            backend: "be".into(),
            metadata: BTreeMap::new(),
        }
    }

    fn command(name: &str, argv: &[&str]) -> Hook {
        Hook {
            name: name.into(),
            http: None,
            command: Some(CommandHook {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                env: BTreeMap::new(),
            }),
            timeout: Some(HumanDuration(Duration::from_secs(5))),
        }
    }

    #[tokio::test]
    async fn commands_see_the_canary_and_failures_stop_blocking_stages() {
        let hooks = vec![
            command(
                "echo",
                &[
                    "sh",
                    "-c",
                    "echo $CANARYD_SERVICE $CANARYD_STAGE $CANARYD_STEP",
                ],
            ),
            command("fail", &["sh", "-c", "echo nope >&2; exit 3"]),
            command("never", &["true"]),
        ];
        let out = run(&hooks, &ctx(HookStage::PreStep)).await;
        assert_eq!(out.len(), 2, "the blocking stage stops at the failure");
        assert!(out[0].ok);
        assert_eq!(out[0].output.trim(), "checkout pre_step 2");
        assert!(!out[1].ok);
        assert!(out[1].detail.contains('3') && out[1].output.contains("nope"));
        let out = run(&hooks, &ctx(HookStage::PostRollback)).await;
        assert_eq!(out.len(), 3, "non-blocking stages run every hook");
    }

    #[tokio::test]
    async fn timeouts_are_failures() {
        let mut slow = command("slow", &["sleep", "5"]);
        slow.timeout = Some(HumanDuration(Duration::from_millis(100)));
        let out = run(&[slow], &ctx(HookStage::Rollback)).await;
        assert!(!out[0].ok && out[0].detail.contains("timed out"));
    }

    #[test]
    fn validation_names_the_hook() {
        let mut hooks = Hooks::default();
        hooks.pre_rollout.push(Hook {
            name: "x".into(),
            http: None,
            command: None,
            timeout: None,
        });
        let mut errors = Vec::new();
        hooks.validate("hooks", &mut errors);
        assert_eq!(errors[0].field, "hooks.pre_rollout[0]");
    }
}
