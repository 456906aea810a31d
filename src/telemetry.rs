//! Logs and canaryd's own Prometheus metrics: one vocabulary for both.
//!
//! Every log line about a canary is emitted inside a span carrying `canary` and `service`.
//! Every self-metric is defined here, and [`METRIC_NAMES`] lists the exported names (the
//! dashboard in `dashboards/canaryd.json` may only use these; a test checks it).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::OnceLock;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Sets up logging (level from `RUST_LOG`, default `info`). Safe to call more than once.
pub fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}

/// Names of the exported self-metrics, as they appear in `/metrics`.
pub const METRIC_NAMES: &[&str] = &[
    "canaryd_build_info",
    "canaryd_canaries",
    "canaryd_decisions_total",
    "canaryd_intervals_total",
    "canaryd_analysis_duration_seconds",
    "canaryd_query_duration_seconds",
    "canaryd_query_errors_total",
    "canaryd_router_operations_total",
    "canaryd_router_errors_total",
    "canaryd_router_operation_duration_seconds",
    "canaryd_rule_load_errors",
    "canaryd_notifications_total",
    "canaryd_outbox_pending",
];

/// Labels: a phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// The phase.
    pub phase: String,
}

/// Labels: an outcome or decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// The outcome.
    pub outcome: String,
}

/// Labels: a kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind.
    pub kind: String,
}

/// Labels: a router operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouterLabels {
    /// The router's name.
    pub router: String,
    /// `reconcile`, `set_weights`, `get_weights`, `finalize`.
    pub operation: String,
}

/// Labels: a notifier and what one of its attempts came to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotifierLabels {
    /// The notifier's name.
    pub notifier: String,
    /// `delivered`, `retried`, `failed` or `unknown`.
    pub outcome: String,
}

/// Labels: the build.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    /// canaryd's version.
    pub version: String,
}

/// canaryd's own metrics.
pub struct SelfMetrics {
    registry: Registry,
    /// Canaries by phase (set from the store at each scrape).
    pub canaries: Family<PhaseLabel, Gauge>,
    /// Finished canaries by outcome.
    pub decisions: Family<OutcomeLabel, Counter>,
    /// Analysed intervals by decision.
    pub intervals: Family<OutcomeLabel, Counter>,
    /// Time to analyse one interval (all queries and the judge).
    pub analysis_duration: Histogram,
    /// Time of one metric query.
    pub query_duration: Histogram,
    /// Queries without a usable answer, by kind (`no_data`, `error`, `timeout`).
    pub query_errors: Family<KindLabel, Counter>,
    /// Router operations.
    pub router_operations: Family<RouterLabels, Counter>,
    /// Failed router operations.
    pub router_errors: Family<RouterLabels, Counter>,
    /// Router operation time.
    pub router_duration: Family<RouterLabels, Histogram>,
    /// Rule files that failed to load.
    pub rule_load_errors: Gauge,
    /// Notification attempts by notifier and outcome.
    pub notifications: Family<NotifierLabels, Counter>,
    /// Outbox rows not yet delivered or given up (pending or being sent).
    pub outbox_pending: Gauge,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl SelfMetrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let build = Family::<BuildLabel, Gauge>::default();
        build
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register("canaryd_build_info", "canaryd's version", build);
        let m = SelfMetrics {
            canaries: Family::default(),
            decisions: Family::default(),
            intervals: Family::default(),
            analysis_duration: latency_histogram(),
            query_duration: latency_histogram(),
            query_errors: Family::default(),
            router_operations: Family::default(),
            router_errors: Family::default(),
            router_duration: Family::new_with_constructor(latency_histogram),
            rule_load_errors: Gauge::default(),
            notifications: Family::default(),
            outbox_pending: Gauge::default(),
            registry: Registry::default(),
        };
        m.register(&mut registry);
        m.zero_known_series();
        SelfMetrics { registry, ..m }
    }

    /// Registers every self-metric under its exported name (see [`METRIC_NAMES`]).
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "canaryd_canaries",
            "Canaries by phase",
            self.canaries.clone(),
        );
        registry.register(
            "canaryd_decisions",
            "Finished canaries by outcome",
            self.decisions.clone(),
        );
        registry.register(
            "canaryd_intervals",
            "Analysed intervals by judge decision",
            self.intervals.clone(),
        );
        registry.register(
            "canaryd_analysis_duration_seconds",
            "Time to analyse one interval (queries and judge)",
            self.analysis_duration.clone(),
        );
        registry.register(
            "canaryd_query_duration_seconds",
            "Time of one metric query",
            self.query_duration.clone(),
        );
        registry.register(
            "canaryd_query_errors",
            "Metric queries without a usable answer, by kind (no_data, error, timeout)",
            self.query_errors.clone(),
        );
        registry.register(
            "canaryd_router_operations",
            "Router operations",
            self.router_operations.clone(),
        );
        registry.register(
            "canaryd_router_errors",
            "Failed router operations",
            self.router_errors.clone(),
        );
        registry.register(
            "canaryd_router_operation_duration_seconds",
            "Router operation time",
            self.router_duration.clone(),
        );
        registry.register(
            "canaryd_rule_load_errors",
            "Rule files that failed to load at the last (re)load",
            self.rule_load_errors.clone(),
        );
        registry.register(
            "canaryd_notifications",
            "Notification attempts by notifier and outcome (delivered, retried, failed, unknown)",
            self.notifications.clone(),
        );
        registry.register(
            "canaryd_outbox_pending",
            "Notifications queued and not yet delivered or given up",
            self.outbox_pending.clone(),
        );
    }

    /// Creates the series of every known label value at zero, so each exists from the first
    /// scrape.
    fn zero_known_series(&self) {
        for outcome in ["promoted", "rolled_back", "aborted", "failed"] {
            let _ = self.decisions.get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            });
        }
        for decision in ["continue", "promote", "rollback", "inconclusive"] {
            let _ = self.intervals.get_or_create(&OutcomeLabel {
                outcome: decision.into(),
            });
        }
        for kind in ["no_data", "error", "timeout"] {
            let _ = self
                .query_errors
                .get_or_create(&KindLabel { kind: kind.into() });
        }
        for phase in crate::lifecycle::Phase::ALL {
            let _ = self.canaries.get_or_create(&PhaseLabel {
                phase: phase.as_str().into(),
            });
        }
    }

    /// Creates a router's series at zero (called for each configured router at start).
    pub fn register_router(&self, router: &str) {
        for operation in ["reconcile", "set_weights", "get_weights", "finalize"] {
            let labels = RouterLabels {
                router: router.into(),
                operation: operation.into(),
            };
            let _ = self.router_operations.get_or_create(&labels);
            let _ = self.router_errors.get_or_create(&labels);
            let _ = self.router_duration.get_or_create(&labels);
        }
    }

    /// Creates a notifier's series at zero (called for each configured notifier at start).
    pub fn register_notifier(&self, notifier: &str) {
        for outcome in ["delivered", "retried", "failed", "unknown"] {
            let _ = self.notifications.get_or_create(&NotifierLabels {
                notifier: notifier.into(),
                outcome: outcome.into(),
            });
        }
    }

    /// Counts one notification attempt's outcome.
    pub fn notification(&self, notifier: &str, outcome: &str) {
        self.notifications
            .get_or_create(&NotifierLabels {
                notifier: notifier.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Records one router operation.
    pub fn router_op(&self, router: &str, operation: &str, seconds: f64, ok: bool) {
        let labels = RouterLabels {
            router: router.into(),
            operation: operation.into(),
        };
        self.router_operations.get_or_create(&labels).inc();
        self.router_duration.get_or_create(&labels).observe(seconds);
        if !ok {
            self.router_errors.get_or_create(&labels).inc();
        }
    }
}

/// The process-wide self-metrics.
pub fn metrics() -> &'static SelfMetrics {
    static METRICS: OnceLock<SelfMetrics> = OnceLock::new();
    METRICS.get_or_init(SelfMetrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_is_exported() {
        metrics().register_router("edge");
        metrics().register_notifier("ops-mail");
        let text = metrics().render();
        for name in METRIC_NAMES {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{name}{{"))
                    || l.starts_with(&format!("{name} "))
                    || l.starts_with(&format!("{name}_bucket{{"))),
                "{name} has no series in:\n{text}"
            );
        }
    }
}
