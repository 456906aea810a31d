//! Every router kind against its real load balancer: HAProxy, nginx, Envoy and Traefik
//! processes started here, and the in-test adapter of canaryd's HTTP contract.
//!
//! * The conformance suite: one test body ([`conformance`]) run for each kind.
//! * The spine's healthy/faulty pair through nginx and Envoy (the real daemon, Prometheus, load).
//! * Drift: a weight changed through the load balancer's own means pauses a running canary,
//!   for every kind.
//!
//! Traffic splits are measured with sequential requests through the load balancer to two test
//! apps whose bodies name them; [`tolerance`] says how close they must be and why.
//! Run with `--nocapture` to see the measured weight-change latency of each kind.

use crate::stack::*;
use crate::support::*;
use canaryd::router::{RouterConfig, RouterError, Stable, Target, TrafficRouter, weights_match};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Every kind; [`kind_of`] keeps the list complete.
const KINDS: [RouterKind; 5] = [
    RouterKind::Haproxy,
    RouterKind::Nginx,
    RouterKind::Envoy,
    RouterKind::Traefik,
    RouterKind::Http,
];

/// The test kind of a configured router. Exhaustive on purpose: a new router kind does not
/// compile here until it joins the conformance suite.
fn kind_of(config: &RouterConfig) -> RouterKind {
    match config {
        RouterConfig::Haproxy(_) => RouterKind::Haproxy,
        RouterConfig::Nginx(_) => RouterKind::Nginx,
        RouterConfig::Envoy(_) => RouterKind::Envoy,
        RouterConfig::Traefik(_) => RouterKind::Traefik,
        RouterConfig::Http(_) => RouterKind::Http,
    }
}

fn target() -> Target {
    Target {
        backend: BACKEND.into(),
        baseline: vec!["checkout-v1".into()],
        canary: vec!["checkout-v2".into()],
    }
}

/// The router canaryd builds from `[routers.edge]` as the load balancer describes itself,
/// through the daemon's own config loading and validation.
fn router_for(lb: &Lb) -> Arc<dyn TrafficRouter> {
    router_from(lb.kind(), &lb.router_toml())
}

fn router_from(kind: RouterKind, body: &str) -> Arc<dyn TrafficRouter> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canaryd.toml");
    let text = format!("[routers.edge]\n{body}");
    std::fs::write(&path, &text).unwrap();
    let config = canaryd::config::Config::load_with_env(&path, BTreeMap::new())
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    if let Err(errors) = config.validate() {
        panic!("{errors:?}\n{text}");
    }
    let router = &config.routers["edge"];
    assert_eq!(kind_of(router), kind);
    assert_eq!(router.kind(), kind.name());
    router.build("edge")
}

/// Requests per split measurement: Envoy picks at random, so it gets more.
fn requests(kind: RouterKind) -> usize {
    if kind == RouterKind::Envoy { 400 } else { 200 }
}

/// How far a measured canary share may be from the intended one, in percentage points.
///
/// At 0% and 100% every kind is exact: a server with weight 0 (or `down`) gets no request.
/// HAProxy (`roundrobin`), nginx and the adapter (smooth weighted round robin) and Traefik
/// (weighted round robin) are deterministic: sequential requests follow the weights up to the
/// scheduler's phase, a couple of requests at most, so ±3 points at 200 requests. Envoy picks
/// a cluster at random per request with probability `w / Σw`: 4.5 binomial standard
/// deviations (a false failure about once in 150 000 checks), ±6.8 points at 10% and ±11.3 at
/// 50% with 400 requests.
fn tolerance(kind: RouterKind, percent: f64, n: usize) -> f64 {
    if percent <= 0.0 || percent >= 100.0 {
        return 0.0;
    }
    if kind != RouterKind::Envoy {
        return 3.0;
    }
    let p = percent / 100.0;
    4.5 * 100.0 * (p * (1.0 - p) / n as f64).sqrt()
}

/// Sends `n` sequential requests through the load balancer; (v1, v2) answers.
async fn split(lb: &Lb, n: usize) -> (usize, usize) {
    let client = http_client();
    let url = lb.frontend_url();
    let (mut v1, mut v2) = (0, 0);
    for i in 0..n {
        let resp = client
            .get(format!("{url}/split/{i}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} through {url}: {e}"));
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        match (status, body.trim()) {
            (200, "v1") => v1 += 1,
            (200, "v2") => v2 += 1,
            other => panic!("request {i} through {url}: unexpected answer {other:?}"),
        }
    }
    (v1, v2)
}

/// Measures the split and checks it against `percent` within [`tolerance`].
async fn assert_split(lb: &Lb, percent: f64, what: &str) {
    let n = requests(lb.kind());
    let (v1, v2) = split(lb, n).await;
    let measured = 100.0 * v2 as f64 / n as f64;
    let allowed = tolerance(lb.kind(), percent, n);
    eprintln!(
        "{:>8} {what}: canary {measured:.1}% of {n} requests for {percent}% (allowed ±{allowed:.1})",
        lb.kind().name()
    );
    assert!(
        (measured - percent).abs() <= allowed,
        "{} {what}: {v2} of {n} requests ({measured:.1}%) reached the canary at {percent}% (v1 {v1})",
        lb.kind().name()
    );
}

async fn get(router: &dyn TrafficRouter) -> canaryd::router::LiveWeights {
    router
        .get_weights(&target())
        .await
        .unwrap_or_else(|e| panic!("get_weights: {e}"))
}

fn weight_of(live: &canaryd::router::LiveWeights, server: &str) -> u32 {
    live.servers
        .iter()
        .find(|s| s.name == server)
        .map(|s| s.weight)
        .unwrap_or_else(|| panic!("no {server} in {live:?}"))
}

fn modified(lb: &Lb) -> Option<std::time::SystemTime> {
    lb.config_file()
        .map(|f| std::fs::metadata(f).unwrap().modified().unwrap())
}

/// One weight change from 0% to 50%, timed: (apply, read back, first canary answer after the
/// apply returned), in milliseconds.
async fn timed_change(router: &dyn TrafficRouter, lb: &Lb) -> (f64, f64, f64) {
    let t = target();
    router.finalize(&t, Stable::Baseline).await.unwrap();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let client = http_client();
    let start = Instant::now();
    router.set_weights(&t, 50.0).await.unwrap();
    let applied = start.elapsed();
    let live = get(router).await;
    let read = start.elapsed();
    assert!(weights_match(live.canary_percent, 50.0), "{live:?}");
    loop {
        let body = client
            .get(format!("{}/latency", lb.frontend_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body.trim() == "v2" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no canary traffic"
        );
    }
    let seen = start.elapsed();
    (ms(applied), ms(read - applied), ms(seen - read))
}

/// The contract every router keeps, against its real load balancer.
async fn conformance(kind: RouterKind) {
    let v1 = TestApp::start("v1", &["--median-ms", "1", "--error-rate", "0"]);
    let v2 = TestApp::start("v2", &["--median-ms", "1", "--error-rate", "0"]);
    let mut lb = Lb::start(
        kind,
        BACKEND,
        &[("checkout-v1", &v1.addr, 100), ("checkout-v2", &v2.addr, 0)],
    );
    lb.wait_ready();
    let router = router_for(&lb);
    let r = router.as_ref();
    let t = target();

    // check (for `canaryd doctor`) finds the load balancer.
    let found = r
        .check()
        .await
        .unwrap_or_else(|e| panic!("check: {e}\n{}", lb.log()));
    eprintln!("{:>8} check: {found}", kind.name());

    // reconcile: the target exists; a missing server is named; nothing changes.
    r.reconcile(&t)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", lb.log()));
    let mut ghost = t.clone();
    ghost.canary = vec!["checkout-v3".into()];
    let e = r.reconcile(&ghost).await.unwrap_err();
    assert!(
        matches!(e, RouterError::NotFound { .. }) && e.to_string().contains("checkout-v3"),
        "{e}"
    );
    assert_eq!(lb.weight("checkout-v2"), 0);
    assert_split(&lb, 0.0, "before any change").await;

    // set_weights then get_weights round-trips, and the traffic follows.
    for percent in [10.0, 50.0, 12.5] {
        r.set_weights(&t, percent)
            .await
            .unwrap_or_else(|e| panic!("set_weights({percent}): {e}\n{}", lb.log()));
        let live = get(r).await;
        assert!(
            weights_match(live.canary_percent, r.realized(&t, percent)),
            "set {percent}%, read back {live:?}"
        );
        assert_split(&lb, percent, &format!("after set_weights({percent})")).await;
    }

    // Repeated calls are idempotent: same live state, and no rewrite of a file.
    r.set_weights(&t, 10.0).await.unwrap();
    let (before, file) = (get(r).await, modified(&lb));
    r.set_weights(&t, 10.0).await.unwrap();
    assert_eq!(get(r).await, before);
    assert_eq!(
        modified(&lb),
        file,
        "a repeated set_weights rewrote the file"
    );

    // Single servers' weights (rolling updates), read back per server.
    let weights = BTreeMap::from([
        ("checkout-v1".to_string(), 1),
        ("checkout-v2".to_string(), 3),
    ]);
    r.set_server_weights(&t, &weights).await.unwrap();
    let live = get(r).await;
    assert_eq!(
        (
            weight_of(&live, "checkout-v1"),
            weight_of(&live, "checkout-v2")
        ),
        (1, 3)
    );
    assert!(weights_match(live.canary_percent, 75.0), "{live:?}");
    assert_eq!((lb.weight("checkout-v1"), lb.weight("checkout-v2")), (1, 3));
    assert_split(&lb, 75.0, "after set_server_weights(1, 3)").await;
    let stranger = BTreeMap::from([("checkout-v9".to_string(), 1)]);
    let e = r.set_server_weights(&t, &stranger).await.unwrap_err();
    assert!(e.to_string().contains("checkout-v9"), "{e}");

    // finalize sends all traffic to the stable side, idempotently.
    r.finalize(&t, Stable::Canary).await.unwrap();
    let file = modified(&lb);
    r.finalize(&t, Stable::Canary).await.unwrap();
    assert_eq!(modified(&lb), file, "a repeated finalize rewrote the file");
    assert_eq!(get(r).await.canary_percent, 100.0);
    assert_eq!(lb.weight("checkout-v1"), 0);
    assert_split(&lb, 100.0, "after finalize(canary)").await;
    r.finalize(&t, Stable::Baseline).await.unwrap();
    assert_eq!(get(r).await.canary_percent, 0.0);
    assert_eq!(lb.weight("checkout-v2"), 0);
    assert_split(&lb, 0.0, "after finalize(baseline)").await;

    // How long one weight change takes to be live, read back and seen in traffic.
    let runs: Vec<(f64, f64, f64)> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(timed_change(r, &lb).await);
        }
        v
    };
    let median = |f: fn(&(f64, f64, f64)) -> f64| {
        let mut x: Vec<f64> = runs.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x[1]
    };
    eprintln!(
        "LATENCY {:>8}: apply {:.1} ms, read back {:.1} ms, first canary answer {:.1} ms later (median of 3; runs {:?})",
        kind.name(),
        median(|r| r.0),
        median(|r| r.1),
        median(|r| r.2),
        runs.iter()
            .map(|r| format!("{:.0}+{:.0}+{:.0}", r.0, r.1, r.2))
            .collect::<Vec<_>>()
    );

    // The load balancer down: every operation fails in bounded time, naming router and
    // address, and nothing panics.
    let address = lb.api_addr();
    lb.stop();
    let bounded = Duration::from_secs(20);
    let started = Instant::now();
    let mut errors = vec![
        ("get_weights", r.get_weights(&t).await.map(|_| ())),
        ("set_weights", r.set_weights(&t, 20.0).await),
        ("reconcile", r.reconcile(&t).await),
        ("finalize", r.finalize(&t, Stable::Baseline).await),
    ];
    if kind != RouterKind::Http {
        // The HTTP contract has no health endpoint: its check is the trait's default.
        errors.push(("check", r.check().await.map(|_| ())));
    }
    assert!(started.elapsed() < bounded, "{:?}", started.elapsed());
    for (op, result) in errors {
        let e = result.expect_err(op).to_string();
        eprintln!("{:>8} down, {op}: {e}", kind.name());
        assert!(
            e.contains("router edge") && e.contains(&address),
            "{op} with the load balancer down: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_conforms() {
    conformance(RouterKind::Haproxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_conforms() {
    conformance(RouterKind::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_conforms() {
    conformance(RouterKind::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_conforms() {
    conformance(RouterKind::Traefik).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_contract_conforms() {
    conformance(RouterKind::Http).await;
}

/// Two apps behind a fresh load balancer of `kind`, canary at weight 0.
fn apps_behind(kind: RouterKind) -> (TestApp, TestApp, Lb) {
    let v1 = TestApp::start("v1", &["--median-ms", "1", "--error-rate", "0"]);
    let v2 = TestApp::start("v2", &["--median-ms", "1", "--error-rate", "0"]);
    let lb = Lb::start(
        kind,
        BACKEND,
        &[("checkout-v1", &v1.addr, 100), ("checkout-v2", &v2.addr, 0)],
    );
    lb.wait_ready();
    (v1, v2, lb)
}

/// nginx: a change `nginx -t` refuses puts the old file back before anything reloads; a file
/// nginx does not run (a reload that never happened) is an error for `get_weights` and is
/// healed by the next change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_keeps_the_file_it_runs() {
    let (_v1, v2, lb) = apps_behind(RouterKind::Nginx);
    let good = router_for(&lb);
    let t = target();
    good.set_weights(&t, 10.0)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", lb.log()));
    let file = lb.config_file().unwrap();
    let before = std::fs::read_to_string(&file).unwrap();

    // The same router with a server parameter nginx refuses.
    let broken = lb.router_toml().replace(
        &format!("{} }}", quoted_addr(&v2.addr)),
        &format!("\"{} max_fails=often\" }}", v2.addr),
    );
    assert_ne!(broken, lb.router_toml());
    let e = router_from(RouterKind::Nginx, &broken)
        .set_weights(&t, 50.0)
        .await
        .unwrap_err();
    assert!(matches!(e, RouterError::Rejected { .. }), "{e}");
    assert!(e.to_string().contains("max_fails"), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    assert_eq!(get(good.as_ref()).await.canary_percent, 10.0);
    assert_split(&lb, 10.0, "after a refused change").await;

    // A file nginx does not run: its generation differs from the live one.
    std::fs::write(
        &file,
        before.replace("# canaryd-generation: ", "# canaryd-generation: 1"),
    )
    .unwrap();
    let e = good.get_weights(&t).await.unwrap_err().to_string();
    assert!(e.contains("reload"), "{e}");
    good.set_weights(&t, 10.0)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", lb.log()));
    assert_eq!(get(good.as_ref()).await.canary_percent, 10.0);

    // A server the configuration does not list would be dropped by a rewrite: refused.
    let before = std::fs::read_to_string(&file).unwrap();
    let extra = before.replacen(
        "    zone ",
        "    server 127.0.0.1:9 weight=5; # added by hand\n    zone ",
        1,
    );
    std::fs::write(&file, &extra).unwrap();
    let e = good.set_weights(&t, 20.0).await.unwrap_err().to_string();
    assert!(e.contains("127.0.0.1:9") && e.contains("drop"), "{e}");
    assert!(good.reconcile(&t).await.is_err());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), extra);
}

fn quoted_addr(addr: &str) -> String {
    format!("\"{addr}\"")
}

/// Envoy: a change Envoy would refuse (weights summing to 0) is refused before
/// the file is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_refused_change_touches_nothing() {
    let (_v1, _v2, lb) = apps_behind(RouterKind::Envoy);
    let r = router_for(&lb);
    let t = target();
    r.set_weights(&t, 10.0).await.unwrap();
    let file = lb.config_file().unwrap();
    let before = std::fs::read_to_string(&file).unwrap();
    let zero = BTreeMap::from([
        ("checkout-v1".to_string(), 0),
        ("checkout-v2".to_string(), 0),
    ]);
    let e = r.set_server_weights(&t, &zero).await.unwrap_err();
    assert!(e.to_string().contains("sum to 0"), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    assert_eq!(get(r.as_ref()).await.canary_percent, 10.0);
}

/// The README's router examples parse as the kinds they say, and together cover every kind.
#[test]
fn readme_router_examples_parse_and_cover_every_kind() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## Routers")
        .nth(1)
        .expect("a \"## Routers\" section in README.md");
    let section = section.split("\n## ").next().unwrap();
    let mut seen = Vec::new();
    for block in section.split("```toml").skip(1) {
        let toml = block.split("```").next().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("canaryd.toml");
        std::fs::write(&path, toml).unwrap();
        let config = canaryd::config::Config::load_with_env(&path, BTreeMap::new())
            .unwrap_or_else(|e| panic!("README example does not load: {e}\n{toml}"));
        for router in config.routers.values() {
            seen.push(kind_of(router));
            // Value checks, except secrets the example points at and that do not exist here.
            let problems: Vec<_> = router
                .problems()
                .into_iter()
                .filter(|p| p.field != "bearer_token")
                .collect();
            assert!(problems.is_empty(), "{problems:?}\n{toml}");
        }
    }
    for kind in KINDS {
        assert!(
            seen.contains(&kind),
            "no README example for {}",
            kind.name()
        );
    }
}

const FINISH: Duration = Duration::from_secs(90);

async fn faulty_canary_is_rolled_back_through(kind: RouterKind) {
    let opts = StackOptions {
        router: kind,
        ..Default::default()
    };
    let stack = Stack::start(
        opts,
        &["--latency-multiplier", "2.5", "--error-rate", "0.1"],
    )
    .await;
    let (code, out) = finish_submit(stack.canaryd.submit_wait(&stack.spec_path), FINISH).await;
    assert_eq!(code, 3, "rolled back through {}\n{out}", kind.name());
    assert!(out.contains("rolled_back"), "{out}");
    // The load balancer's own view: canary weight 0, and no request reaches it.
    assert_eq!(stack.haproxy.weight("checkout-v2"), 0);
    assert_eq!(stack.split(20).1, 0, "no request may reach the canary");
    let (_, view) = stack.canaryd.get("/api/v1/canaries/1").await;
    assert_eq!(view["phase"], "rolled_back");
}

async fn healthy_canary_is_promoted_through(kind: RouterKind) {
    let opts = StackOptions {
        router: kind,
        ..Default::default()
    };
    let stack = Stack::start(opts, &[]).await;
    let (code, out) = finish_submit(stack.canaryd.submit_wait(&stack.spec_path), FINISH).await;
    assert_eq!(
        code,
        0,
        "promoted through {}\n{out}\n{}",
        kind.name(),
        stack.canaryd.log()
    );
    assert_eq!(stack.canary_share(), 100.0);
    assert_eq!(stack.haproxy.weight("checkout-v1"), 0);
    assert_eq!(stack.split(20), (0, 20), "the canary serves all traffic");
    let steps: Vec<f64> = stack
        .canaryd
        .events(1)
        .await
        .iter()
        .filter(|e| e["kind"] == "step_started")
        .map(|e| e["data"]["weight"].as_f64().unwrap())
        .collect();
    assert_eq!(steps, vec![20.0, 50.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_faulty_canary_is_rolled_back() {
    faulty_canary_is_rolled_back_through(RouterKind::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_healthy_canary_is_promoted() {
    healthy_canary_is_promoted_through(RouterKind::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_faulty_canary_is_rolled_back() {
    faulty_canary_is_rolled_back_through(RouterKind::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_healthy_canary_is_promoted() {
    healthy_canary_is_promoted_through(RouterKind::Envoy).await;
}

/// A weight changed through the load balancer's own means while a canary runs pauses it, and
/// the event names the live and the applied weights.
async fn drift_pauses_the_canary_through(kind: RouterKind) {
    let opts = StackOptions {
        router: kind,
        interval: "4s",
        max_duration: "2m",
        ..Default::default()
    };
    let stack = Stack::start(opts, &[]).await;
    let yaml = std::fs::read_to_string(&stack.spec_path).unwrap();
    let spec = canaryd::canary::spec::from_yaml(&yaml).expect("the test spec parses");
    let (status, body) = stack
        .canaryd
        .post("/api/v1/canaries", &serde_json::to_string(&spec).unwrap())
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_i64().unwrap();
    let canaryd = &stack.canaryd;
    poll_until(
        Duration::from_secs(30),
        "the 20% step applied",
        || async move {
            let events = canaryd.events(id).await;
            events
                .iter()
                .any(|e| e["kind"] == "weights_applied" && e["data"]["weight"] == 20.0)
                .then_some(())
        },
    )
    .await;
    // canaryd applied 80/20; someone sets the canary to 80 as well: 50%.
    assert_eq!(stack.haproxy.weight("checkout-v2"), 20);
    stack.haproxy.set_weight_by_hand("checkout-v2", 80);
    let view: Value = poll_until(
        Duration::from_secs(30),
        "the canary paused",
        || async move {
            let (_, v) = canaryd.get(&format!("/api/v1/canaries/{id}")).await;
            (v["phase"] == "paused").then_some(v)
        },
    )
    .await;
    let events = stack.canaryd.events(id).await;
    let drift = events
        .iter()
        .find(|e| e["kind"] == "drift_detected")
        .unwrap_or_else(|| panic!("no drift_detected event: {events:?}"));
    assert_eq!(drift["data"]["live"], 50.0, "{drift}");
    assert_eq!(drift["data"]["applied"], 20.0, "{drift}");
    let message = drift["message"].as_str().unwrap();
    assert!(
        message.contains("live canary weight 50") && message.contains("applied 20"),
        "{message}"
    );
    // Paused: canaryd leaves the weights as they were found.
    assert_eq!(stack.haproxy.weight("checkout-v2"), 80, "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_drift_pauses_the_canary() {
    drift_pauses_the_canary_through(RouterKind::Haproxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_drift_pauses_the_canary() {
    drift_pauses_the_canary_through(RouterKind::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_drift_pauses_the_canary() {
    drift_pauses_the_canary_through(RouterKind::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_drift_pauses_the_canary() {
    drift_pauses_the_canary_through(RouterKind::Traefik).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_drift_pauses_the_canary() {
    drift_pauses_the_canary_through(RouterKind::Http).await;
}
