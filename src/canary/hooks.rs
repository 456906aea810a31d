//! Hooks: HTTP calls or commands run around a rollout — the runbook's maintenance mode,
//! migrations, worker stop/start and cache/CDN purges.
//!
//! Stages: `pre_rollout` (after preflight, before any traffic moves; a failure stops the
//! canary), `pre_step` (before each step's weight; a failure pauses the canary with the weights
//! untouched), `post_promotion`, `rollback` (when a rollback begins) and `post_rollback` (their
//! failures are reported loudly but change nothing). Each hook's outcome and output go into the
//! canary's events. Hooks may run again after a crash (at least once): make them idempotent.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::problem::Problem;

pub use crate::lifecycle::hooks::{CommandHook, Hook, HookOutcome, HookStage, Hooks, HttpHook};

/// The default time limit of a hook.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Output kept per hook in the audit log.
pub const MAX_OUTPUT: usize = 4096;

impl Hooks {
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
    use crate::time::HumanDuration;

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
