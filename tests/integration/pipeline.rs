//! Release-pipeline handoff and operations, end to end: exit codes, tokens, approval gates,
//! hooks, preflight checks, the post-promotion bake, reports.

use crate::stack::*;
use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;

const FINISH: Duration = Duration::from_secs(90);

async fn phase_of(c: &Canaryd, id: i64) -> String {
    let (_, v) = c.get(&format!("/api/v1/canaries/{id}")).await;
    v["phase"].as_str().unwrap_or_default().to_string()
}

async fn wait_phase(c: &Canaryd, id: i64, phase: &str, deadline: Duration) -> Value {
    poll_until(deadline, &format!("canary {id} {phase}"), || async move {
        let (_, v) = c.get(&format!("/api/v1/canaries/{id}")).await;
        (v["phase"] == phase).then_some(v)
    })
    .await
}

fn events_of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_abort_mid_way_exits_4_with_traffic_back_on_the_baseline() {
    let opts = StackOptions {
        steps: "[20, 40, 60, 100]",
        max_duration: "60s",
        ..Default::default()
    };
    let stack = Stack::start(opts, &[]).await;
    let submit = stack.canaryd.submit_wait(&stack.spec_path);
    let c = &stack.canaryd;
    poll_until(Duration::from_secs(60), "canary at step 2", || async {
        let (_, v) = c.get("/api/v1/canaries/1").await;
        (v["weight"]["applied"].as_f64() == Some(40.0)).then_some(())
    })
    .await;
    let out = c.cli(&["abort", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, log) = finish_submit(submit, FINISH).await;
    assert_eq!(code, 4, "aborted\n{log}");
    assert_eq!(stack.haproxy.weight("checkout-v2"), 0);
    assert_eq!(stack.split(20), (20, 0), "all traffic on the baseline");
    let events = c.events(1).await;
    assert_eq!(events.last().unwrap()["kind"], "aborted");
    assert_eq!(events_of(&events, "rolling_back")[0]["actor"], "anonymous");
}

const TOKENS: &str = r#"
[[api.tokens]]
name = "release-bot"
sha256 = "BOT"
scopes = ["submit", "read"]
[[api.tokens]]
name = "viewer"
sha256 = "VIEWER"
scopes = ["read"]
[[api.tokens]]
name = "oncall"
sha256 = "ONCALL"
scopes = ["operate", "read"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_decide_401_403_and_name_the_actor() {
    let hash = canaryd::api::auth::hash_token;
    let extra = TOKENS
        .replace("\"BOT\"", &format!("{:?}", hash("bot-token")))
        .replace("\"VIEWER\"", &format!("{:?}", hash("viewer-token")))
        .replace("\"ONCALL\"", &format!("{:?}", hash("oncall-token")));
    let opts = StackOptions {
        max_duration: "60s",
        extra_config: extra,
        ..Default::default()
    };
    let stack = Stack::start(opts, &[]).await;
    let c = &stack.canaryd;
    let spec = {
        let yaml = std::fs::read_to_string(&stack.spec_path).unwrap();
        serde_json::to_string(&canaryd::canary::spec::from_yaml(&yaml).unwrap()).unwrap()
    };
    let http = http_client();
    let send = |method: &str, path: &str, token: Option<&str>, body: Option<&str>| {
        let mut req = http.request(method.parse().unwrap(), format!("{}{path}", c.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(send("GET", "/api/v1/canaries", None, None).await, 401);
    assert_eq!(
        send("GET", "/api/v1/canaries", Some("nope"), None).await,
        401
    );
    assert_eq!(
        send("GET", "/healthz", None, None).await,
        200,
        "health is open"
    );
    assert_eq!(send("GET", "/api/v1/openapi.json", None, None).await, 200);
    assert_eq!(
        send(
            "POST",
            "/api/v1/canaries",
            Some("viewer-token"),
            Some(&spec)
        )
        .await,
        403
    );
    assert_eq!(
        send("POST", "/api/v1/canaries", Some("bot-token"), Some(&spec)).await,
        201
    );
    assert_eq!(
        send("GET", "/api/v1/canaries/1", Some("viewer-token"), None).await,
        200
    );
    assert_eq!(
        send("POST", "/api/v1/canaries/1/abort", Some("bot-token"), None).await,
        403,
        "submit scope cannot operate"
    );
    // The CLI reads the token from CANARYD_TOKEN.
    let out = std::process::Command::new(canaryd_bin())
        .args(["abort", "1", "--server", &c.url])
        .env("CANARYD_TOKEN", "oncall-token")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Value = http
        .get(format!("{}/api/v1/canaries/1/events", c.url))
        .bearer_auth("viewer-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = events["events"].as_array().unwrap();
    assert_eq!(events_of(events, "submitted")[0]["actor"], "release-bot");
    assert_eq!(events_of(events, "rolling_back")[0]["actor"], "oncall");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_gate_holds_until_approved() {
    let opts = StackOptions {
        steps: "[20, {weight: 50, approval: true}, 100]",
        max_duration: "12s",
        ..Default::default()
    };
    let stack = Stack::start(opts, &[]).await;
    let submit = stack.canaryd.submit_wait(&stack.spec_path);
    let c = &stack.canaryd;
    let view = wait_phase(c, 1, "awaiting_approval", Duration::from_secs(60)).await;
    assert_eq!(view["awaiting_approval"], 2);
    // It holds: two more analyses at 20%, nothing moves.
    let before = c.events(1).await.len();
    poll_until(
        Duration::from_secs(30),
        "two analyses while waiting",
        || async {
            let events = c.events(1).await;
            (events[before..]
                .iter()
                .filter(|e| e["kind"] == "analysis")
                .count()
                >= 2)
                .then_some(())
        },
    )
    .await;
    assert_eq!(phase_of(c, 1).await, "awaiting_approval");
    assert_eq!(stack.canary_share(), 20.0);
    let out = c.cli(&["approve", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, log) = finish_submit(submit, FINISH).await;
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("awaiting approval before step 2"), "{log}");
    assert_eq!(stack.canary_share(), 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_approval_times_out_into_rollback() {
    let opts = StackOptions {
        steps: "[20, 100]",
        max_duration: "3s",
        spec_extra: String::new(),
        ..Default::default()
    };
    let stack = Stack::start(opts, &[]).await;
    // Gate the promotion and give the approval 5 seconds.
    let spec = std::fs::read_to_string(&stack.spec_path).unwrap().replace(
        "steps: [20, 100]",
        "steps: [20, {weight: 100, approval: true}], approval_timeout: 5s, on_approval_timeout: rollback",
    );
    std::fs::write(&stack.spec_path, spec).unwrap();
    let (code, log) = finish_submit(stack.canaryd.submit_wait(&stack.spec_path), FINISH).await;
    assert_eq!(code, 4, "a timed-out approval aborts\n{log}");
    assert!(log.contains("timed out"), "{log}");
    assert_eq!(stack.haproxy.weight("checkout-v2"), 0);
}

fn hook_config(log: &std::path::Path, fail_pre_rollout: bool) -> String {
    let log = log.display();
    let record = |stage: &str| {
        format!(
            r#"{{name = "{stage}", command = {{argv = ["sh", "-c", "echo $CANARYD_STAGE $CANARYD_STEP $CANARYD_WEIGHT $CANARYD_SERVICE >> {log}"]}}}}"#
        )
    };
    let pre_rollout = if fail_pre_rollout {
        r#"{name = "maintenance-on", command = {argv = ["sh", "-c", "echo maintenance mode unavailable >&2; exit 7"]}}"#.to_string()
    } else {
        record("pre_rollout")
    };
    format!(
        "[environments.staging.hooks]\npre_rollout = [{pre_rollout}]\npre_step = [{}]\npost_promotion = [{}]\n",
        record("pre_step"),
        record("post_promotion")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_in_order_with_the_canary_environment() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let opts = StackOptions {
        extra_config: hook_config(log.path(), false),
        ..Default::default()
    };
    let stack = Stack::start(opts, &[]).await;
    let (code, out) = finish_submit(stack.canaryd.submit_wait(&stack.spec_path), FINISH).await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<String> = std::fs::read_to_string(log.path())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines,
        vec![
            "pre_rollout 1 0 checkout",
            "pre_step 1 20 checkout",
            "pre_step 2 50 checkout",
            "post_promotion 3 100 checkout",
        ]
    );
    let events = stack.canaryd.events(1).await;
    let ran = events_of(&events, "hook_ran");
    assert_eq!(ran.len(), 4);
    assert_eq!(ran[0]["data"]["stage"], "pre_rollout");
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let first_hook = kinds.iter().position(|k| *k == "hook_ran").unwrap();
    let first_weight = kinds.iter().position(|k| *k == "weights_applied").unwrap();
    assert!(
        first_hook < first_weight,
        "pre_rollout runs before traffic moves"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pre_rollout_hook_leaves_the_weights_untouched() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let opts = StackOptions {
        extra_config: hook_config(log.path(), true),
        ..Default::default()
    };
    let stack = Stack::start(opts, &[]).await;
    let (code, out) = finish_submit(stack.canaryd.submit_wait(&stack.spec_path), FINISH).await;
    assert_eq!(code, 5, "{out}");
    assert!(
        out.contains("pre_rollout hook \"maintenance-on\" failed"),
        "{out}"
    );
    assert_eq!(stack.haproxy.weight("checkout-v2"), 0);
    assert_eq!(stack.haproxy.weight("checkout-v1"), 100);
    let events = stack.canaryd.events(1).await;
    let failed = events_of(&events, "hook_failed");
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]["data"]["output"]
            .as_str()
            .unwrap()
            .contains("maintenance mode unavailable")
    );
    assert!(events_of(&events, "weights_applied").is_empty());
    assert!(
        std::fs::read_to_string(log.path()).unwrap().is_empty(),
        "no later hook ran"
    );
}

async fn preflight_failure(stack: &Stack) -> String {
    let (code, out) = finish_submit(stack.canaryd.submit_wait(&stack.spec_path), FINISH).await;
    assert_eq!(code, 5, "{out}");
    assert_eq!(stack.haproxy.weight("checkout-v2"), 0, "no weight touched");
    let events = stack.canaryd.events(1).await;
    assert!(events_of(&events, "weights_applied").is_empty());
    events_of(&events, "preflight_failed")[0]["message"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_stops_on_a_down_server() {
    let mut stack = Stack::start(StackOptions::default(), &[]).await;
    stack.v2.kill();
    let Balancer::Haproxy(h) = &stack.haproxy.balancer else {
        unreachable!("the default stack runs HAProxy")
    };
    poll_until(
        Duration::from_secs(20),
        "haproxy marks the canary down",
        || async {
            h.stat_field("checkout-v2", "status")
                .filter(|s| s.starts_with("DOWN"))
        },
    )
    .await;
    let reason = preflight_failure(&stack).await;
    assert!(
        reason.contains("checkout-v2") && reason.contains("down"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_stops_on_a_metric_without_baseline_data() {
    let rules = Box::leak(
        format!(
            "{E2E_RULES}  - name: queue-depth\n    kind: gauge\n    query: 'avg(worker_queue_depth{{ {{{{selector}}}} }})'\n    max_increase: 50%\n"
        )
        .into_boxed_str(),
    );
    let stack = Stack::start(
        StackOptions {
            rules,
            ..Default::default()
        },
        &[],
    )
    .await;
    let reason = preflight_failure(&stack).await;
    assert!(
        reason.contains("no baseline data for queue-depth"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_stops_on_an_expiring_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());
    let port = free_port();
    let mut server = std::process::Command::new("openssl");
    server
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key);
    let mut tls = ChildProc::spawn("openssl s_server", server, &dir.path().join("tls.log"));
    let addr = format!("127.0.0.1:{port}");
    if let Err(e) = tls.wait_ready(START_DEADLINE, || {
        std::net::TcpStream::connect(&addr).is_ok()
    }) {
        tls.fail(&e);
    }
    let opts = StackOptions {
        spec_extra: format!("tls_check: {{endpoint: \"127.0.0.1:{port}\", min_days: 14}}\n"),
        ..Default::default()
    };
    let stack = Stack::start(opts, &[]).await;
    let reason = preflight_failure(&stack).await;
    assert!(
        reason.contains("tls_certificate") && reason.contains("need 14 days"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regression_during_the_bake_rolls_back_to_the_drained_old_version() {
    let opts = StackOptions {
        steps: "[20, 50, 100]",
        max_duration: "6s",
        spec_extra: String::new(),
        ..Default::default()
    };
    let stack = Stack::start(opts, &[]).await;
    // The bake compares with the old version before the release: let it build some history.
    stack
        .prometheus
        .wait_for_series(
            r#"count_over_time(http_requests_total{version="v1",code="200"}[1m]) >= 25"#,
            Duration::from_secs(60),
        )
        .await;
    let spec = std::fs::read_to_string(&stack.spec_path)
        .unwrap()
        .replace("max_duration: 6s}", "max_duration: 6s, bake: 60s}");
    std::fs::write(&stack.spec_path, spec).unwrap();
    let submit = stack.canaryd.submit_wait(&stack.spec_path);
    let c = &stack.canaryd;
    wait_phase(c, 1, "baking", Duration::from_secs(60)).await;
    assert_eq!(stack.canary_share(), 100.0);
    assert_eq!(
        stack.haproxy.weight("checkout-v1"),
        0,
        "old version drained, still there"
    );
    stack
        .v2
        .set_fault(json!({"error_rate": 0.3, "latency_multiplier": 2.5}))
        .await;
    let (code, out) = finish_submit(submit, FINISH).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("regression during the bake"), "{out}");
    assert_eq!(stack.haproxy.weight("checkout-v2"), 0);
    assert_eq!(stack.split(20), (20, 0), "traffic back on the old version");
    let events = c.events(1).await;
    assert!(!events_of(&events, "bake_analysis").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_render_as_html_markdown_and_json() {
    // A release that goes bad half-way, so the charts show both periods.
    let opts = StackOptions {
        max_duration: "60s",
        ..Default::default()
    };
    let stack = Stack::start(opts, &[]).await;
    let submit = stack.canaryd.submit_wait(&stack.spec_path);
    let c = &stack.canaryd;
    poll_until(Duration::from_secs(60), "three analyses", || async {
        let events = c.events(1).await;
        (events_of(&events, "analysis").len() >= 3).then_some(())
    })
    .await;
    stack
        .v2
        .set_fault(json!({"latency_multiplier": 2.5, "error_rate": 0.1}))
        .await;
    let (code, _) = finish_submit(submit, FINISH).await;
    assert_eq!(code, 3);
    let http = http_client();
    let html = http
        .get(format!("{}/api/v1/canaries/1/report", c.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains("class=\"canary\"") && html.contains("class=\"baseline\""));
    assert!(
        !html.contains("<script") && !html.contains("src=\"http"),
        "no external assets"
    );
    let md = http
        .get(format!("{}/api/v1/canaries/1/report?format=md", c.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        md.contains("| FAIL |") && md.contains("| error-rate |"),
        "{md}"
    );
    let (status, json) = c.get("/api/v1/canaries/1/report?format=json").await;
    assert_eq!(status, 200);
    assert_eq!(json["canary"]["phase"], "rolled_back");
    assert!(json["metrics"].as_array().unwrap().len() >= 2);
    // Headless Chromium renders the page and its charts.
    let chromium = ["chromium", "/usr/bin/chromium"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok()
        })
        .expect("chromium is installed (scripts/test.sh installs it)");
    let profile = tempfile::tempdir().unwrap();
    let dom = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=2000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("{}/api/v1/canaries/1/report", c.url))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("<svg") && dom.matches("<polyline").count() >= 4,
        "{dom}"
    );
    if let Ok(path) = std::env::var("CANARYD_REPORT_SCREENSHOT") {
        let shot = std::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .args([
                "--disable-background-networking",
                "--no-first-run",
                "--window-size=1100,1500",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--screenshot={path}"))
            .arg(format!("{}/api/v1/canaries/1/report", c.url))
            .output()
            .unwrap();
        assert!(shot.status.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_environment() {
    let mut stack = Stack::start(StackOptions::default(), &[]).await;
    let c = &stack.canaryd;
    let out = std::process::Command::new(canaryd_bin())
        .current_dir(&c.dir)
        .args(["doctor", "--config"])
        .arg(&c.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ok   router edge: HAProxy"), "{text}");
    stack.haproxy.stop();
    let c = &stack.canaryd;
    let out = std::process::Command::new(canaryd_bin())
        .current_dir(&c.dir)
        .args(["doctor", "--config"])
        .arg(&c.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL router edge"), "{text}");
}
