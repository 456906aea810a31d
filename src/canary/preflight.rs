//! Preflight: the runbook's pre-deployment and infrastructure checklists, automated.
//!
//! Before any traffic moves: the metrics source answers and every metric of the rule set
//! returns baseline data; the router answers and every target server exists and is up; the
//! service's TLS certificate (when `tls_check` names an endpoint) stays valid long enough; the
//! store is writable and its disk has room; the pinned rule set is valid. Each result becomes an
//! event; any failure stops the canary with its reason. `canaryd doctor` runs the
//! environment-wide checks without a canary.

use super::spec::TlsCheck;
use crate::judge::Arm;
use crate::metrics::{ArmSelectors, MetricSource, QueryError, render_all};
use crate::notify::NotifierConfig;
use crate::router::{RouterError, Target, TrafficRouter};
use crate::rules::RuleSet;
use crate::store::Store;
use chrono::{DateTime, TimeZone, Utc};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Why a check failed. Messages say what was found, so a person can act on them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CheckFailure {
    /// The router failed or lacks the target.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// Target servers are down.
    #[error("backend {backend:?}: server {servers} is down")]
    ServersDown {
        /// The backend.
        backend: String,
        /// The servers down, comma-separated.
        servers: String,
    },
    /// The metrics source did not answer.
    #[error(transparent)]
    Source(#[from] QueryError),
    /// The rule set's queries could not be rendered.
    #[error("{0}")]
    Render(String),
    /// A baseline query failed.
    #[error("metric {metric:?}: {error}")]
    Query {
        /// The metric.
        metric: String,
        /// What failed.
        error: QueryError,
    },
    /// Metrics have no baseline data.
    #[error(
        "no baseline data for {missing} over the last {window}: is the baseline labelled {selector:?}?"
    )]
    NoBaselineData {
        /// The metrics (and fields) without data.
        missing: String,
        /// The window asked about.
        window: String,
        /// The baseline's selector.
        selector: String,
    },
    /// The store does not take writes.
    #[error("{0}")]
    Store(String),
    /// The store's disk is nearly full.
    #[error("only {free_mb} MiB free on the store's disk (need {need_mb} MiB)")]
    LowDisk {
        /// Free MiB.
        free_mb: u64,
        /// Required MiB.
        need_mb: u64,
    },
    /// The TLS endpoint could not be read.
    #[error("{0}")]
    Tls(String),
    /// The certificate expires too soon.
    #[error(
        "the certificate of {endpoint} expires {not_after} ({days:.1} days; need {min_days} days)"
    )]
    CertificateExpiring {
        /// The endpoint.
        endpoint: String,
        /// When it expires (RFC 3339).
        not_after: String,
        /// Days left.
        days: f64,
        /// Days required.
        min_days: u32,
    },
}

pub use crate::lifecycle::preflight::{CheckResult, PreflightReport};

/// What the canary-specific checks need.
pub struct Subject<'a> {
    /// The router.
    pub router: &'a dyn TrafficRouter,
    /// The target.
    pub target: &'a Target,
    /// The metrics source.
    pub source: &'a dyn MetricSource,
    /// The pinned rules.
    pub rules: &'a RuleSet,
    /// Both arms' selectors.
    pub selectors: &'a ArmSelectors,
    /// The analysis interval (the window of the baseline data check).
    pub interval: Duration,
    /// The certificate to check.
    pub tls: Option<&'a TlsCheck>,
    /// The store.
    pub store: &'a Store,
    /// Least free disk, MiB.
    pub min_free_disk_mb: u64,
}

/// Runs every check for a canary.
pub async fn check_canary(s: &Subject<'_>) -> Vec<CheckResult> {
    let mut out = vec![CheckResult::new(
        "rules",
        Ok(format!(
            "rule set {:?}: {} metrics, judge {:?}",
            s.rules.name,
            s.rules.metrics.len(),
            s.rules.judge
        )),
    )];
    out.push(found("router", router_check(s.router, s.target).await));
    out.push(found("metrics_source", source_check(s.source).await));
    if out.last().is_some_and(|c| c.ok) {
        out.push(found(
            "baseline_data",
            baseline_data(s.source, s.rules, s.selectors, s.interval).await,
        ));
    }
    if let Some(tls) = s.tls {
        out.push(found("tls_certificate", tls_check(tls).await));
    }
    out.push(found(
        "store",
        store_check(s.store, s.min_free_disk_mb).await,
    ));
    out
}

/// A check's result from what it found or why it failed.
fn found(check: &str, result: Result<String, CheckFailure>) -> CheckResult {
    CheckResult::new(check, result.map_err(|e| e.to_string()))
}

/// The router answers and every target server exists and is up.
pub async fn router_check(
    router: &dyn TrafficRouter,
    target: &Target,
) -> Result<String, CheckFailure> {
    router.reconcile(target).await?;
    let live = router.get_weights(target).await?;
    let down: Vec<&str> = live
        .servers
        .iter()
        .filter(|s| !s.up)
        .map(|s| s.name.as_str())
        .collect();
    if down.is_empty() {
        Ok(format!(
            "backend {:?}: {} servers up",
            target.backend,
            live.servers.len()
        ))
    } else {
        Err(CheckFailure::ServersDown {
            backend: target.backend.clone(),
            servers: down.join(", "),
        })
    }
}

/// The metrics source answers.
pub async fn source_check(source: &dyn MetricSource) -> Result<String, CheckFailure> {
    source.is_online().await?;
    Ok("answers".to_string())
}

/// Every metric returns baseline data over the last interval (a `bad` count may be empty: no
/// errors is not missing data).
pub async fn baseline_data(
    source: &dyn MetricSource,
    rules: &RuleSet,
    selectors: &ArmSelectors,
    interval: Duration,
) -> Result<String, CheckFailure> {
    // At least a minute: the question is whether the series exist, not this interval's data.
    let window = crate::time::promql_duration(interval.max(Duration::from_secs(60)));
    let queries =
        render_all(rules, selectors, &window).map_err(|e| CheckFailure::Render(e.to_string()))?;
    let now = Utc::now();
    let now = Utc
        .timestamp_opt(now.timestamp(), 0)
        .single()
        .unwrap_or(now);
    let mut missing = Vec::new();
    for q in queries
        .iter()
        .filter(|q| q.arm == Arm::Baseline && q.field != "bad")
    {
        match source.query(&q.promql, now).await {
            Ok(series) if series.iter().any(|s| !s.samples.is_empty()) => {}
            Ok(_) => missing.push(format!("{} ({})", q.metric, q.field)),
            Err(error) => {
                return Err(CheckFailure::Query {
                    metric: q.metric.clone(),
                    error,
                });
            }
        }
    }
    if missing.is_empty() {
        Ok(format!(
            "{} metrics return baseline data",
            rules.metrics.len()
        ))
    } else {
        Err(CheckFailure::NoBaselineData {
            missing: missing.join(", "),
            window,
            selector: selectors.baseline.render(),
        })
    }
}

/// The store answers writes and its disk has room.
pub async fn store_check(store: &Store, min_free_mb: u64) -> Result<String, CheckFailure> {
    store
        .write_probe()
        .await
        .map_err(|e| CheckFailure::Store(e.to_string()))?;
    match store.free_disk_bytes() {
        Some(free) if free < min_free_mb * 1024 * 1024 => Err(CheckFailure::LowDisk {
            free_mb: free / (1024 * 1024),
            need_mb: min_free_mb,
        }),
        Some(free) => Ok(format!("writable; {} MiB free", free / (1024 * 1024))),
        None => Ok("writable".into()),
    }
}

/// The endpoint's certificate stays valid at least `min_days`.
pub async fn tls_check(tls: &TlsCheck) -> Result<String, CheckFailure> {
    let not_after = fetch_not_after(tls).await.map_err(CheckFailure::Tls)?;
    let left = not_after - Utc::now();
    let days = left.num_hours() as f64 / 24.0;
    if left < chrono::Duration::days(tls.min_days as i64) {
        Err(CheckFailure::CertificateExpiring {
            endpoint: tls.endpoint.clone(),
            not_after: not_after.to_rfc3339(),
            days,
            min_days: tls.min_days,
        })
    } else {
        Ok(format!(
            "{} valid until {} ({days:.0} days)",
            tls.endpoint,
            not_after.to_rfc3339()
        ))
    }
}

/// What `canaryd doctor` checks: each component, built by the caller from its own slice of
/// the configuration.
pub struct Environment<'a> {
    /// The metrics source.
    pub source: &'a dyn MetricSource,
    /// Where the metrics source is (for the report).
    pub source_url: &'a str,
    /// Every router, by name.
    pub routers: &'a BTreeMap<String, Arc<dyn TrafficRouter>>,
    /// Every notifier's settings, by name.
    pub notifiers: &'a BTreeMap<String, NotifierConfig>,
    /// The store, or why it could not be opened.
    pub store: Result<&'a Store, String>,
    /// The rule files' directory.
    pub rules_dir: &'a Path,
}

/// `canaryd doctor`: the environment checks that need no canary — the runbook's
/// "Troubleshooting" list, automated: the metrics source, every router, every notifier (an
/// SMTP server is connected to, webhooks are only checked), the store (writable, free disk),
/// the rule files. Each component answers through its own `check`.
pub async fn doctor(env: &Environment<'_>) -> Vec<CheckResult> {
    let mut out = vec![found(
        &format!("prometheus {}", env.source_url),
        source_check(env.source).await,
    )];
    for (name, router) in env.routers {
        let result = tokio::time::timeout(Duration::from_secs(10), router.check())
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        out.push(CheckResult::new(&format!("router {name}"), result));
    }
    for (name, notifier) in env.notifiers {
        let result = notifier.check().await.map_err(|e| e.to_string());
        out.push(CheckResult::new(&format!("notifier {name}"), result));
    }
    let store = match env.store {
        Ok(store) => store_check(store, 100).await.map_err(|e| e.to_string()),
        Err(ref why) => Err(why.clone()),
    };
    out.push(CheckResult::new("store", store));
    out.push(CheckResult::new(
        &format!("rules {}", env.rules_dir.display()),
        rules_check(env.rules_dir),
    ));
    out
}

/// Every rule file in `dir` loads.
fn rules_check(dir: &Path) -> Result<String, String> {
    match crate::rules::Catalog::load_dir(dir) {
        Err(e) => Err(format!("cannot read {}: {e}", dir.display())),
        Ok(c) if !c.errors.is_empty() => Err(c
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")),
        Ok(c) => Ok(format!("{} rule sets", c.names().count())),
    }
}

mod accept_any {
    //! A verifier that accepts any certificate: the TLS check reads the certificate's
    //! validity, it does not authenticate the server.
    use tokio_rustls::rustls::client::danger::{
        HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
    };
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use tokio_rustls::rustls::{DigitallySignedStruct, Error, SignatureScheme};

    #[derive(Debug)]
    pub struct AcceptAny(pub Vec<SignatureScheme>);

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.clone()
        }
    }
}

async fn fetch_not_after(tls: &TlsCheck) -> Result<DateTime<Utc>, String> {
    use tokio_rustls::rustls::{self, pki_types::ServerName};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(accept_any::AcceptAny(schemes)))
        .with_no_client_auth();
    let host = tls.server_name.clone().unwrap_or_else(|| {
        tls.endpoint
            .rsplit_once(':')
            .map_or("", |h| h.0)
            .to_string()
    });
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
        .map_err(|e| format!("invalid server name {host:?}: {e}"))?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(&tls.endpoint)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", tls.endpoint))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {} failed: {e}", tls.endpoint))
    };
    let stream = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| format!("TLS handshake with {} timed out", tls.endpoint))??;
    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .ok_or_else(|| format!("{} sent no certificate", tls.endpoint))?;
    let leaf = certs
        .first()
        .ok_or_else(|| format!("{} sent no certificate", tls.endpoint))?;
    not_after(leaf.as_ref()).ok_or_else(|| "cannot read the certificate's validity".into())
}

/// Reads `notAfter` from a DER certificate (just enough ASN.1 to reach the validity).
pub fn not_after(der: &[u8]) -> Option<DateTime<Utc>> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version?, serial INTEGER,
    //   signature SEQUENCE, issuer SEQUENCE, validity SEQUENCE { notBefore, notAfter }, ... } }
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    for _ in 0..3 {
        rest = tlv(rest)?.2; // serial, signature, issuer
    }
    let (_, validity, _) = tlv(rest)?;
    let after_before = tlv(validity)?.2;
    let (tag, time, _) = tlv(after_before)?;
    parse_time(tag, std::str::from_utf8(time).ok()?)
}

/// One DER TLV: (tag, value, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *input.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let value = input.get(header..header + len)?;
    Some((tag, value, &input[header + len..]))
}

fn parse_time(tag: u8, text: &str) -> Option<DateTime<Utc>> {
    let full = match tag {
        // UTCTime YYMMDDHHMMSSZ: years 50-99 are 19xx.
        0x17 => {
            let yy: u32 = text.get(0..2)?.parse().ok()?;
            format!("{}{text}", if yy >= 50 { "19" } else { "20" })
        }
        // GeneralizedTime YYYYMMDDHHMMSSZ
        0x18 => text.to_string(),
        _ => return None,
    };
    chrono::NaiveDateTime::parse_from_str(full.trim_end_matches('Z'), "%Y%m%d%H%M%S")
        .ok()
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_not_after_from_a_real_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.der");
        let status = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes",
                "-days",
                "3",
                "-subj",
                "/CN=localhost",
                "-outform",
                "DER",
            ])
            .arg("-keyout")
            .arg(dir.path().join("k.pem"))
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success());
        let der = std::fs::read(cert).unwrap();
        let t = not_after(&der).expect("validity parsed");
        let days = (t - Utc::now()).num_hours() as f64 / 24.0;
        assert!((days - 3.0).abs() < 0.1, "{days}");
    }

    #[test]
    fn times_and_garbage() {
        assert_eq!(
            parse_time(0x17, "491231235959Z").unwrap().to_rfc3339(),
            "2049-12-31T23:59:59+00:00"
        );
        assert_eq!(
            parse_time(0x18, "20501231235959Z").unwrap().to_rfc3339(),
            "2050-12-31T23:59:59+00:00"
        );
        assert!(not_after(&[0x30, 0x82, 0xff]).is_none());
        assert!(not_after(&[]).is_none());
    }

    #[test]
    fn report_failure_names_the_check() {
        let r = PreflightReport {
            checks: vec![
                CheckResult::new("router", Ok("fine".into())),
                CheckResult::new("baseline_data", Err("no baseline data for latency".into())),
            ],
            hooks: Vec::new(),
        };
        assert_eq!(
            r.failure().unwrap(),
            "baseline_data: no baseline data for latency"
        );
    }
}
