//! The spine end to end: real HAProxy, real Prometheus, the test app, the real daemon.

use crate::stack::*;
use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;

const FINISH: Duration = Duration::from_secs(90);

fn lines_with<'a>(out: &'a str, needle: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.contains(needle)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_canary_is_rolled_back_with_reasons() {
    let stack = Stack::start(
        StackOptions::default(),
        &["--latency-multiplier", "2.5", "--error-rate", "0.1"],
    )
    .await;
    let (code, out) = finish_submit(stack.canaryd.submit_wait(&stack.spec_path), FINISH).await;
    eprintln!("{out}");
    assert_eq!(code, 3, "exit code of a rolled-back canary\n{out}");
    // The --wait output: one line per interval, naming each metric with both values.
    let decisive = lines_with(&out, "| rollback");
    assert_eq!(decisive.len(), 1, "{out}");
    assert!(
        decisive[0].contains("error-rate") && decisive[0].contains("FAIL"),
        "{out}"
    );
    assert!(
        decisive[0].contains("% vs "),
        "canary vs baseline values: {out}"
    );
    assert!(out.contains("rolled_back"), "{out}");
    // HAProxy: the canary has weight 0 and gets no traffic.
    assert_eq!(stack.haproxy.weight("checkout-v2"), 0);
    assert_eq!(stack.split(20).1, 0, "no request may reach the canary");
    // The events say why, with numbers.
    let events = stack.canaryd.events(1).await;
    let rollback = events
        .iter()
        .find(|e| e["kind"] == "rolling_back")
        .expect("a rolling_back event");
    let message = rollback["message"].as_str().unwrap();
    // Whichever metric crossed first is named with both arms' values.
    assert!(
        (message.contains("error-rate: canary") || message.contains("latency: canary"))
            && message.contains("vs baseline"),
        "{message}"
    );
    let (_, view) = stack.canaryd.get("/api/v1/canaries/1").await;
    assert_eq!(view["phase"], "rolled_back");
    assert_eq!(view["weight"]["applied"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_canary_is_promoted_through_every_step() {
    let stack = Stack::start(StackOptions::default(), &[]).await;
    let (code, out) = finish_submit(stack.canaryd.submit_wait(&stack.spec_path), FINISH).await;
    eprintln!("{out}");
    assert_eq!(code, 0, "exit code of a promoted canary\n{out}");
    assert_eq!(stack.canary_share(), 100.0);
    assert_eq!(stack.haproxy.weight("checkout-v1"), 0);
    let (v1, v2) = stack.split(20);
    assert_eq!((v1, v2), (0, 20), "the canary serves all traffic");
    let events = stack.canaryd.events(1).await;
    let steps: Vec<f64> = events
        .iter()
        .filter(|e| e["kind"] == "step_started")
        .map(|e| e["data"]["weight"].as_f64().unwrap())
        .collect();
    assert_eq!(steps, vec![20.0, 50.0]);
    assert_eq!(events.last().unwrap()["kind"], "promoted");
    assert!(lines_with(&out, "interval ").len() >= 2, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_canary_resumes_without_repeating_or_skipping_steps() {
    let opts = StackOptions {
        steps: "[20, 40, 60, 80, 100]",
        max_duration: "30s",
        ..Default::default()
    };
    let mut stack = Stack::start(opts, &[]).await;
    // The pipeline follows the canary across the daemon's crash.
    let submit = stack.canaryd.submit_wait(&stack.spec_path);
    let canaryd = &stack.canaryd;
    poll_until(Duration::from_secs(60), "canary at step 2", || async {
        let (_, v) = canaryd.get("/api/v1/canaries/1").await;
        (v["step"].as_u64() >= Some(2)).then_some(())
    })
    .await;
    stack.canaryd.kill9();
    let held = stack.canary_share();
    assert!(
        held > 0.0 && held < 100.0,
        "weights stay as they were: {held}"
    );
    stack.canaryd.restart();
    let (code, out) = finish_submit(submit, FINISH).await;
    assert_eq!(code, 0, "{out}\n{}", stack.canaryd.log());
    assert_eq!(stack.canary_share(), 100.0);
    let events = stack.canaryd.events(1).await;
    let steps: Vec<f64> = events
        .iter()
        .filter(|e| e["kind"] == "step_started")
        .map(|e| e["data"]["weight"].as_f64().unwrap())
        .collect();
    assert_eq!(
        steps,
        vec![20.0, 40.0, 60.0, 80.0],
        "each step exactly once"
    );
    let applied: Vec<f64> = events
        .iter()
        .filter(|e| e["kind"] == "weights_applied")
        .map(|e| e["data"]["weight"].as_f64().unwrap())
        .collect();
    assert_eq!(
        applied,
        vec![20.0, 40.0, 60.0, 80.0, 100.0],
        "each weight confirmed once"
    );
    assert!(stack.canaryd.log().contains("Resuming canary"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_outage_holds_weights_then_continues() {
    let opts = StackOptions {
        interval: "4s",
        max_duration: "40s",
        failure_limit: 6,
        ..Default::default()
    };
    let mut stack = Stack::start(opts, &[]).await;
    let submit = stack.canaryd.submit_wait(&stack.spec_path);
    let canaryd = &stack.canaryd;
    poll_until(Duration::from_secs(60), "first analysis", || async {
        let kinds = canaryd.event_kinds(1).await;
        kinds.iter().any(|k| k == "analysis").then_some(())
    })
    .await;
    stack.prometheus.stop();
    let canaryd = &stack.canaryd;
    let held = poll_until(
        Duration::from_secs(30),
        "two inconclusive intervals",
        || async {
            let events = canaryd.events(1).await;
            let n = events
                .iter()
                .filter(|e| e["kind"] == "analysis_inconclusive")
                .count();
            (n >= 2).then_some(events)
        },
    )
    .await;
    let weight_then = stack.canary_share();
    stack.prometheus.start_again();
    for e in held.iter().filter(|e| e["kind"] == "analysis_inconclusive") {
        let m = e["message"].as_str().unwrap();
        assert!(m.contains("query error") || m.contains("no data"), "{m}");
    }
    assert!(
        !held
            .iter()
            .any(|e| e["kind"] == "rolling_back" || e["kind"] == "fail_safe")
    );
    assert!(
        weight_then > 0.0 && weight_then < 100.0,
        "weights held at a step: {weight_then}"
    );
    let (code, out) = finish_submit(submit, FINISH).await;
    assert_eq!(
        code, 0,
        "continues and promotes once Prometheus is back\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_outage_past_the_limit_runs_the_fail_safe() {
    let opts = StackOptions {
        failure_limit: 2,
        max_duration: "60s",
        ..Default::default()
    };
    let mut stack = Stack::start(opts, &[]).await;
    let submit = stack.canaryd.submit_wait(&stack.spec_path);
    let canaryd = &stack.canaryd;
    poll_until(Duration::from_secs(60), "first analysis", || async {
        let kinds = canaryd.event_kinds(1).await;
        kinds.iter().any(|k| k == "analysis").then_some(())
    })
    .await;
    stack.prometheus.stop();
    let (code, out) = finish_submit(submit, FINISH).await;
    assert_eq!(code, 5, "a fail-safe rollback ends as failed\n{out}");
    assert!(out.contains("fail-safe"), "{out}");
    assert_eq!(
        stack.haproxy.weight("checkout-v2"),
        0,
        "all traffic back on the baseline"
    );
    let events = stack.canaryd.events(1).await;
    let fail_safe = events
        .iter()
        .find(|e| e["kind"] == "fail_safe")
        .expect("fail_safe event");
    assert!(
        fail_safe["message"]
            .as_str()
            .unwrap()
            .contains("no usable analysis for 2 consecutive intervals"),
        "{fail_safe}"
    );
    assert!(
        !events.iter().any(|e| e["kind"] == "rolled_back"),
        "not a judge rollback"
    );
}

fn spec_json(stack: &Stack) -> Value {
    let yaml = std::fs::read_to_string(&stack.spec_path).unwrap();
    let spec = canaryd::canary::spec::from_yaml(&yaml).expect("the test spec parses");
    serde_json::to_value(spec).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_precise_errors_and_touches_nothing() {
    let mut stack = Stack::start(StackOptions::default(), &[]).await;
    let c = &stack.canaryd;
    let good = spec_json(&stack);

    // Invalid spec: 422 naming the field.
    let mut bad = good.clone();
    bad["strategy"]["steps"] = json!([50, 10, 100]);
    let (status, body) = c.post("/api/v1/canaries", &bad.to_string()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["details"][0]["field"], "strategy.steps[1]", "{body}");
    let mut bad = good.clone();
    bad["strategy"]["interval"] = json!("soon");
    let (status, body) = c.post("/api/v1/canaries", &bad.to_string()).await;
    assert_eq!(status, 422);
    assert_eq!(body["details"][0]["field"], "strategy.interval", "{body}");

    // Unknown router or rule set: 422.
    for (field, value) in [("router", "nowhere"), ("rules", "no-such-rules")] {
        let mut bad = good.clone();
        bad[field] = json!(value);
        let (status, body) = c.post("/api/v1/canaries", &bad.to_string()).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["details"][0]["field"], field, "{body}");
    }

    // A label value that tries to inject PromQL is data, and the spec is accepted as such
    // elsewhere; here: a server HAProxy does not have -> preflight error, no weight touched.
    let mut missing = good.clone();
    missing["target"]["canary"] = json!(["checkout-v3"]);
    let (status, body) = c.post("/api/v1/canaries", &missing.to_string()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "preflight_failed");
    assert!(
        body["message"].as_str().unwrap().contains("checkout-v3"),
        "{body}"
    );
    assert_eq!(stack.haproxy.weight("checkout-v2"), 0);
    assert_eq!(stack.haproxy.weight("checkout-v1"), 100);

    // A good one is accepted; a second on the same backend conflicts.
    let (status, body) = c.post("/api/v1/canaries", &good.to_string()).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_i64().unwrap();
    let (status, body) = c.post("/api/v1/canaries", &good.to_string()).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("already active"),
        "{body}"
    );

    // Abort it: traffic back on the baseline, aborted.
    let out = c.cli(&["abort", &id.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view = c.wait_finished(id, Duration::from_secs(20)).await;
    assert_eq!(view["phase"], "aborted");
    assert_eq!(stack.haproxy.weight("checkout-v2"), 0);

    // HAProxy unreachable at submit: preflight error, nothing stored.
    stack.haproxy.stop();
    let c = &stack.canaryd;
    let (status, body) = c.post("/api/v1/canaries", &good.to_string()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "preflight_failed");
    let (_, list) = c.get("/api/v1/canaries").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "no canary was created");

    // The CLI checks the spec file first and names the field.
    let bad_spec = stack.dir().join("bad.yaml");
    std::fs::write(
        &bad_spec,
        std::fs::read_to_string(&stack.spec_path)
            .unwrap()
            .replace("interval: 3s", "interval: -3s"),
    )
    .unwrap();
    let out = c.cli(&["submit", bad_spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("strategy.interval"));

    // A malformed config: exit non-zero naming the key's path.
    let bad_config = stack.dir().join("bad.toml");
    std::fs::write(
        &bad_config,
        "[server]\nlisen = \"127.0.0.1:1\"\n[routers.edge]\nkind = \"haproxy\"\nruntime_api = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(canaryd_bin())
        .args(["serve", "--config", bad_config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lisen"), "{err}");
    std::fs::write(
        &bad_config,
        "[routers.edge]\nkind = \"haproxy\"\nruntime_api = \"127.0.0.1:1\"\ntimeout = \"fast\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(canaryd_bin())
        .args(["serve", "--config", bad_config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("routers.edge") || err.contains("timeout"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_the_router_as_last_applied_and_the_canary_resumes() {
    let opts = StackOptions {
        steps: "[20, 40, 60, 80, 100]",
        max_duration: "30s",
        ..Default::default()
    };
    let mut stack = Stack::start(opts, &[]).await;
    let submit = stack.canaryd.submit_wait(&stack.spec_path);
    let canaryd = &stack.canaryd;
    poll_until(Duration::from_secs(60), "canary at step 2", || async {
        let (_, v) = canaryd.get("/api/v1/canaries/1").await;
        (v["step"].as_u64() >= Some(2)).then_some(())
    })
    .await;
    stack.canaryd.terminate();
    // Stopped cleanly: HAProxy holds exactly the weight the store says was applied.
    let store = canaryd::store::Store::open(&format!(
        "sqlite://{}/data/canaryd.db",
        stack.canaryd.dir.display()
    ))
    .unwrap();
    let record = store.get(1).await.unwrap().unwrap();
    let applied = record.state.applied_weight.expect("a weight was applied");
    assert_eq!(stack.canary_share(), applied);
    assert!(stack.canaryd.log().contains("weights stay as last applied"));
    drop(store);
    stack.canaryd.restart();
    let (code, out) = finish_submit(submit, FINISH).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(stack.canary_share(), 100.0);
}
