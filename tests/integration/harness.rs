//! Smoke tests of the integration harness itself (real testapp, HAProxy and Prometheus).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// Send `n` sequential GETs through `url` and count answers by body (app name).
async fn who_answers(url: &str, n: usize) -> BTreeMap<String, usize> {
    let client = http_client();
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let resp = client
            .get(format!("{url}/req/{i}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} through {url}: {e}"));
        let status = resp.status().as_u16();
        assert!(
            status == 200 || status == 500,
            "request {i}: unexpected status {status}"
        );
        let body = resp.text().await.expect("body");
        *seen.entry(body.trim().to_string()).or_insert(0) += 1;
    }
    seen
}

#[tokio::test]
async fn haproxy_runtime_weights_route_traffic() {
    let v1 = TestApp::start("v1", &["--median-ms", "1", "--error-rate", "0"]);
    let v2 = TestApp::start("v2", &["--median-ms", "1", "--error-rate", "0.5"]);
    let h = Haproxy::start(
        "be_app",
        &[("baseline", &v1.addr, 100), ("canary", &v2.addr, 0)],
    );
    h.wait_servers_up(&["baseline", "canary"], Duration::from_secs(10));
    assert_eq!(h.weight("baseline"), 100);
    assert_eq!(h.weight("canary"), 0);
    assert!(h.runtime("show info").contains("Name: HAProxy"));
    // The unix socket is there too.
    assert!(
        h.socket_path.exists(),
        "{} missing",
        h.socket_path.display()
    );

    // 100/0: everything to the baseline.
    let seen = who_answers(&h.frontend_url(), 40).await;
    assert_eq!(seen, BTreeMap::from([("v1".to_string(), 40)]), "at 100/0");

    // 50/50: both get traffic (roundrobin alternates).
    h.set_weight("canary", 100);
    let seen = who_answers(&h.frontend_url(), 40).await;
    let (a, b) = (
        seen.get("v1").copied().unwrap_or(0),
        seen.get("v2").copied().unwrap_or(0),
    );
    assert_eq!(a + b, 40, "{seen:?}");
    assert!((15..=25).contains(&a), "at 100/100: {seen:?}");

    // 0/100: everything to the canary (500s included, the body still names it).
    h.set_weight("baseline", 0);
    assert_eq!(h.weight("baseline"), 0);
    assert_eq!(h.weight("canary"), 100);
    let seen = who_answers(&h.frontend_url(), 40).await;
    assert_eq!(seen, BTreeMap::from([("v2".to_string(), 40)]), "at 0/100");

    // Out-of-range weights are refused with a message, not applied.
    let r = h.runtime("set server be_app/canary weight 300");
    assert!(r.contains("between 0 and 256"), "{r:?}");
    assert_eq!(h.weight("canary"), 100);

    // HAProxy's per-server counters saw the canary's traffic.
    let stot: u64 = h.stat_field("canary", "stot").unwrap().parse().unwrap();
    assert!(stot >= 60, "canary stot {stot}");
}

#[tokio::test]
async fn haproxy_stop_and_restart_on_same_ports() {
    let v1 = TestApp::start("v1", &["--median-ms", "1"]);
    let mut h = Haproxy::start("be_app", &[("baseline", &v1.addr, 100)]);
    let (fp, rp) = (h.frontend_port, h.runtime_port);
    h.set_weight("baseline", 42);
    h.stop();
    assert!(
        h.try_runtime("show info").is_err(),
        "runtime API still answers after stop"
    );
    assert!(http_get_blocking(&h.frontend_addr, "/").is_none());
    h.restart();
    assert_eq!((h.frontend_port, h.runtime_port), (fp, rp));
    // Runtime weights do not survive a restart (no server-state file).
    assert_eq!(h.weight("baseline"), 100);
    h.wait_servers_up(&["baseline"], Duration::from_secs(10));
    let (status, body) = http_get_blocking(&h.frontend_addr, "/x").expect("frontend answers");
    assert_eq!((status, body.trim()), (200, "v1"));
    // The Prometheus exporter frontend works.
    let (status, metrics) = http_get_blocking(&h.stats_addr, "/metrics").expect("exporter");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("haproxy_server_http_responses_total"),
        "exporter output"
    );
}

#[tokio::test]
async fn prometheus_sees_canary_errors_through_haproxy() {
    let v1 = TestApp::start("v1", &["--median-ms", "2"]);
    let v2 = TestApp::start("v2", &["--median-ms", "2", "--error-rate", "0.5"]);
    let h = Haproxy::start(
        "be_app",
        &[("baseline", &v1.addr, 50), ("canary", &v2.addr, 50)],
    );
    let prom = Prometheus::start(
        "1s",
        &[
            ScrapeTarget::new(
                "checkout",
                &v1.addr,
                &[("service", "checkout"), ("version", "v1")],
            ),
            ScrapeTarget::new(
                "checkout",
                &v2.addr,
                &[("service", "checkout"), ("version", "v2")],
            ),
        ],
    );
    h.wait_servers_up(&["baseline", "canary"], Duration::from_secs(10));
    let mut load = Load::start(&h.frontend_url(), 20.0);

    // Both versions show traffic in Prometheus, with enough requests to compare.
    let q = r#"sum by (version) (increase(http_requests_total{service="checkout"}[10s]))"#;
    let totals = poll_until(
        Duration::from_secs(30),
        "both versions with >= 40 requests",
        || async {
            let r = prom.query(q).await.ok()?;
            let m = by_label(&r, "version");
            (m.len() == 2 && m.values().all(|v| *v >= 40.0)).then_some(m)
        },
    )
    .await;
    assert!(
        totals.contains_key("v1") && totals.contains_key("v2"),
        "{totals:?}"
    );

    let errors = prom
        .wait_for_series(
            r#"sum by (version) (http_requests_total{code="500"})"#,
            Duration::from_secs(5),
        )
        .await;
    let all = prom
        .wait_for_series(
            r#"sum by (version) (http_requests_total)"#,
            Duration::from_secs(5),
        )
        .await;
    let (errors, all) = (by_label(&errors, "version"), by_label(&all, "version"));
    let share = |v: &str| errors.get(v).copied().unwrap_or(0.0) / all[v];
    let (base, canary) = (share("v1"), share("v2"));
    assert!(
        canary > 0.2 && base < 0.1 && canary > base + 0.15,
        "5xx share baseline {base:.3} canary {canary:.3} (errors {errors:?}, all {all:?})\nload log:\n{}",
        load.log()
    );
    assert!(load.is_running(), "load generator died:\n{}", load.log());

    // The labels from the scrape config are on the series.
    let info = prom
        .wait_for_series("testapp_info", Duration::from_secs(5))
        .await;
    let names: BTreeMap<_, _> = info
        .iter()
        .map(|s| {
            (
                sample_label(s, "version").unwrap(),
                sample_label(s, "name").unwrap(),
            )
        })
        .collect();
    assert_eq!(names, BTreeMap::from([("v1", "v1"), ("v2", "v2")]));
    load.stop();
}

#[tokio::test]
async fn prometheus_stop_and_start_again_keeps_data() {
    let v1 = TestApp::start("v1", &["--median-ms", "1"]);
    let mut prom = Prometheus::start(
        "1s",
        &[ScrapeTarget::new("app", &v1.addr, &[("version", "v1")])],
    );
    let port = prom.port;
    let q = r#"count_over_time(up{job="app"}[5m])"#;
    let before = sample_value(&prom.wait_for_series(q, Duration::from_secs(15)).await[0]);
    assert!(before >= 1.0);
    prom.stop();
    assert!(
        http_get_blocking(&prom.addr, "/-/ready").is_none(),
        "still answering after stop"
    );
    prom.start_again();
    assert_eq!(prom.port, port);
    // The samples scraped before the outage are still there (WAL replayed on start), right
    // away: the restarted server does not scrape for its first ~5 s.
    let r = prom.query(q).await.expect("query after restart");
    assert_eq!(r.len(), 1, "{r:?}\n{}", prom.log());
    assert!(sample_value(&r[0]) >= before, "{r:?} < {before}");
    assert_eq!(sample_label(&r[0], "version"), Some("v1"));
}

#[tokio::test]
async fn set_fault_changes_behaviour() {
    let app = TestApp::start("v1", &["--median-ms", "1", "--error-rate", "0"]);
    let client = http_client();
    let get = |path: &'static str| {
        let c = client.clone();
        let url = format!("{}{path}", app.url);
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get("/").await, 200);

    let f = app.set_fault(json!({"error_rate": 1.0})).await;
    assert_eq!(f["error_rate"], 1.0);
    assert_eq!(f["median_ms"], 1.0);
    for _ in 0..5 {
        assert_eq!(get("/anything").await, 500);
    }
    assert_eq!(get("/health").await, 200, "/health is never faulted");
    assert_eq!(app.fault().await["error_rate"], 1.0);

    // Invalid updates are refused and name the field; settings unchanged.
    let (status, body) = http_blocking(
        &app.addr,
        "PUT",
        "/admin/fault",
        Some(r#"{"error_rate": 2}"#),
    )
    .unwrap();
    assert_eq!(status, 422);
    assert!(body.contains("error_rate"), "{body}");
    let (status, body) =
        http_blocking(&app.addr, "PUT", "/admin/fault", Some(r#"{"nope": 1}"#)).unwrap();
    assert_eq!(status, 422);
    assert!(body.contains("nope"), "{body}");

    app.set_fault_blocking(json!({"error_rate": 0}));
    assert_eq!(get("/").await, 200);

    // Metrics counted the 200s and 500s (not /health), histogram consistent.
    let (_, m) = http_get_blocking(&app.addr, "/metrics").unwrap();
    assert!(m.contains("http_requests_total{code=\"200\"} 2\n"), "{m}");
    assert!(m.contains("http_requests_total{code=\"500\"} 5\n"), "{m}");
    assert!(m.contains("http_request_duration_seconds_count 7\n"), "{m}");
    assert!(m.contains("testapp_info{name=\"v1\"} 1\n"), "{m}");
}
