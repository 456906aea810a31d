//! Deployment strategies end to end: blue-green and rolling, through real HAProxy and Prometheus.

use crate::stack::*;
use crate::support::*;
use serde_json::Value;
use std::time::Duration;

const FINISH: Duration = Duration::from_secs(120);

fn weights_applied(events: &[Value]) -> Vec<f64> {
    events
        .iter()
        .filter(|e| e["kind"] == "weights_applied")
        .map(|e| e["data"]["weight"].as_f64().unwrap())
        .collect()
}

/// Waits until Prometheus holds `seconds` of the old version's history (the bake's baseline).
async fn wait_for_history(prometheus: &Prometheus, version: &str, samples: u32) {
    prometheus
        .wait_for_series(
            &format!(
                r#"count_over_time(http_requests_total{{version="{version}",code="200"}}[2m]) >= {samples}"#
            ),
            Duration::from_secs(90),
        )
        .await;
}

fn blue_green(stack: &Stack, max_duration: &str, bake: &str) {
    let spec = std::fs::read_to_string(&stack.spec_path)
        .unwrap()
        .replace(
            "steps: [20, 50, 100]",
            "kind: blue_green, preview_weight: 10",
        )
        .replace(
            "max_duration: 15s}",
            &format!("max_duration: {max_duration}, bake: {bake}}}"),
        );
    std::fs::write(&stack.spec_path, spec).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_with_a_faulty_release_never_leaves_the_preview_share() {
    let stack = Stack::start(
        StackOptions::default(),
        &["--latency-multiplier", "2.5", "--error-rate", "0.1"],
    )
    .await;
    blue_green(&stack, "30s", "12s");
    let (code, out) = finish_submit(stack.canaryd.submit_wait(&stack.spec_path), FINISH).await;
    assert_eq!(code, 3, "{out}");
    let events = stack.canaryd.events(1).await;
    assert_eq!(
        weights_applied(&events),
        vec![10.0, 0.0],
        "10% preview, then back"
    );
    assert_eq!(stack.haproxy.weight("checkout-v2"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_once_and_keeps_the_old_version_drained_through_the_bake() {
    let stack = Stack::start(StackOptions::default(), &[]).await;
    wait_for_history(&stack.prometheus, "v1", 25).await;
    blue_green(&stack, "6s", "9s");
    let submit = stack.canaryd.submit_wait(&stack.spec_path);
    let c = &stack.canaryd;
    poll_until(Duration::from_secs(60), "baking", || async {
        let (_, v) = c.get("/api/v1/canaries/1").await;
        (v["phase"] == "baking").then_some(())
    })
    .await;
    // Switched in one go; the old server is still in the backend, drained.
    assert_eq!(stack.canary_share(), 100.0);
    assert_eq!(stack.haproxy.weight("checkout-v1"), 0);
    assert_eq!(stack.split(10), (0, 10));
    let (code, out) = finish_submit(submit, FINISH).await;
    assert_eq!(code, 0, "{out}");
    let events = c.events(1).await;
    assert_eq!(weights_applied(&events), vec![10.0, 100.0], "one switch");
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(
        kinds.contains(&"bake_started") && kinds.last() == Some(&"bake_finished"),
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_rolls_back_only_the_failing_batch() {
    // 4 old and 4 new servers; the new ones numbered 3 and 4 are faulty.
    let old: Vec<TestApp> = (1..=4)
        .map(|i| TestApp::start(&format!("v1-{i}"), &["--error-rate", "0.002"]))
        .collect();
    let new: Vec<TestApp> = (1..=4)
        .map(|i| {
            let faulty = ["--error-rate", "0.3", "--latency-multiplier", "2.5"];
            let healthy = ["--error-rate", "0.002"];
            TestApp::start(
                &format!("v2-{i}"),
                if i >= 3 { &faulty[..] } else { &healthy[..] },
            )
        })
        .collect();
    let mut servers = Vec::new();
    for (i, a) in old.iter().enumerate() {
        servers.push((format!("checkout-v1-{}", i + 1), a.addr.clone(), 100));
    }
    for (i, a) in new.iter().enumerate() {
        servers.push((format!("checkout-v2-{}", i + 1), a.addr.clone(), 0));
    }
    let refs: Vec<(&str, &str, u32)> = servers
        .iter()
        .map(|(n, a, w)| (n.as_str(), a.as_str(), *w))
        .collect();
    let haproxy = Haproxy::start(BACKEND, &refs);
    let names: Vec<&str> = refs.iter().map(|r| r.0).collect();
    haproxy.wait_servers_up(&names, Duration::from_secs(20));
    let mut targets = Vec::new();
    for a in &old {
        targets.push(ScrapeTarget::new(
            "checkout",
            &a.addr,
            &[("service", "checkout"), ("version", "v1")],
        ));
    }
    for a in &new {
        targets.push(ScrapeTarget::new(
            "checkout",
            &a.addr,
            &[("service", "checkout"), ("version", "v2")],
        ));
    }
    let prometheus = Prometheus::start("1s", &targets);
    let _load = Load::start(&haproxy.frontend_url(), 80.0);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/rules.yaml"), E2E_RULES).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "[server]\nlisten = \"{addr}\"\n[store]\nurl = \"sqlite://data/canaryd.db\"\n[prometheus]\nurl = \"{}\"\ntimeout = \"2s\"\n[rules]\ndir = \"rules\"\n[routers.edge]\nkind = \"haproxy\"\nruntime_api = \"{}\"\n",
        prometheus.url, haproxy.runtime_addr
    );
    let canaryd = Canaryd::start(dir.path(), &config, &addr);
    wait_for_history(&prometheus, "v1", 25).await;
    let spec = format!(
        "service: checkout\nenvironment: staging\nrouter: edge\ntarget: {{backend: {BACKEND}, baseline: [checkout-v1-1, checkout-v1-2, checkout-v1-3, checkout-v1-4], canary: [checkout-v2-1, checkout-v2-2, checkout-v2-3, checkout-v2-4]}}\nlabels: {{service: checkout}}\nbaseline_labels: {{version: v1}}\ncanary_labels: {{version: v2}}\nrules: http-golden\nstrategy: {{kind: rolling, batch: 2, interval: 3s, max_duration: 6s, bake: 15s}}\n"
    );
    let spec_path = dir.path().join("spec.yaml");
    std::fs::write(&spec_path, spec).unwrap();
    let (code, out) = finish_submit(canaryd.submit_wait(&spec_path), FINISH).await;
    assert_eq!(code, 3, "{out}\n{}", canaryd.log());
    // Batch 1 stays, batch 2 is out, and the old servers it replaced are back.
    let weights: Vec<u32> = names.iter().map(|n| haproxy.weight(n)).collect();
    assert_eq!(weights, vec![0, 0, 100, 100, 100, 100, 0, 0], "{names:?}");
    let events = canaryd.events(1).await;
    let rollback = events
        .iter()
        .find(|e| e["kind"] == "rolling_back")
        .expect("a rollback");
    assert_eq!(
        rollback["data"]["servers_out"],
        serde_json::json!(["checkout-v2-3", "checkout-v2-4"])
    );
    assert_eq!(
        rollback["data"]["servers_back"],
        serde_json::json!(["checkout-v1-3", "checkout-v1-4"])
    );
    assert!(
        rollback["message"]
            .as_str()
            .unwrap()
            .contains("batch 2 rolled back: checkout-v2-3, checkout-v2-4 out"),
        "{rollback}"
    );
    assert_eq!(weights_applied(&events), vec![50.0, 100.0, 50.0]);
}
