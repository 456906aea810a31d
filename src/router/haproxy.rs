//! HAProxy through its Runtime API (TCP `127.0.0.1:9999` or `unix:/path/admin.sock`).
//!
//! One command per connection (HAProxy's non-interactive mode answers and closes), each with a
//! timeout. Weights are HAProxy server weights 0..256 under a dynamic algorithm (`roundrobin`
//! or `leastconn`), where a server's share is `w / Σw` over the enabled servers.
//!
//! # Percentages to weights
//!
//! With `k` canary servers and `m` baseline servers (`g = gcd(k, m)`), a canary share of `p`%
//! sets every canary server to `p·m/g` and every baseline server to `(100 − p)·k/g`. That is
//! exact whenever `p` is a whole number and both weights fit in 256: with one server each,
//! 10% is `10` / `90`, 100% is `100` / `0`. Otherwise both are scaled so the larger is 256 and
//! rounded (resolution about 0.4 percentage points), never rounding a non-zero share to 0.
//! The live share read back is `Σ canary weights / Σ weights` over servers not in maintenance
//! or drain.

use super::{LiveWeights, RouterError, ServerState, Target, TrafficRouter};
use crate::problem::Problem;
use crate::time::HumanDuration;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// `[routers.NAME] kind = "haproxy"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaproxyConfig {
    /// The Runtime API: `host:port` for a TCP stats socket, or `unix:/path` for a unix socket.
    /// It must be at `level admin`.
    pub runtime_api: String,
    /// Time limit for one command (connect, send, answer).
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

impl HaproxyConfig {
    /// Value checks without touching the network: every problem, each naming its field.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.runtime_api.trim().is_empty() {
            out.push(Problem::new("runtime_api", "must not be empty"));
        }
        out
    }
}

/// A router speaking HAProxy's Runtime API.
pub struct HaproxyRouter {
    name: String,
    config: HaproxyConfig,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The HAProxy weights `(per canary server, per baseline server)` for a canary share in percent.
pub fn haproxy_weights(percent: f64, canary_servers: usize, baseline_servers: usize) -> (u32, u32) {
    let p = percent.clamp(0.0, 100.0);
    let (k, m) = (canary_servers.max(1) as u64, baseline_servers.max(1) as u64);
    let g = gcd(k, m);
    let (mk, km) = ((m / g) as f64, (k / g) as f64);
    let (wc, wb) = (p * mk, (100.0 - p) * km);
    if (p - p.round()).abs() < 1e-9 && wc <= 256.0 && wb <= 256.0 {
        return (wc.round() as u32, wb.round() as u32);
    }
    let scale = 256.0 / wc.max(wb);
    let round = |w: f64| {
        if w > 0.0 {
            ((w * scale).round() as u32).max(1)
        } else {
            0
        }
    };
    (round(wc), round(wb))
}

/// The canary share HAProxy actually gives for an intended one (see [`haproxy_weights`]).
pub fn realized_percent(percent: f64, canary_servers: usize, baseline_servers: usize) -> f64 {
    let (wc, wb) = haproxy_weights(percent, canary_servers, baseline_servers);
    let canary = wc as f64 * canary_servers as f64;
    let total = canary + wb as f64 * baseline_servers as f64;
    if total == 0.0 {
        0.0
    } else {
        100.0 * canary / total
    }
}

impl HaproxyRouter {
    /// A router named `name` (for messages).
    pub fn new(name: &str, config: HaproxyConfig) -> Self {
        HaproxyRouter {
            name: name.to_string(),
            config,
        }
    }

    fn unreachable(&self, reason: impl ToString) -> RouterError {
        RouterError::Unreachable {
            router: self.name.clone(),
            address: self.config.runtime_api.clone(),
            reason: reason.to_string(),
        }
    }

    /// Sends one command and returns the answer.
    async fn command(&self, command: &str) -> Result<String, RouterError> {
        let deadline = self.config.timeout.0;
        let run = async {
            if let Some(path) = self.config.runtime_api.strip_prefix("unix:") {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| self.unreachable(e))?;
                exchange(stream, command)
                    .await
                    .map_err(|e| self.unreachable(e))
            } else {
                let stream = tokio::net::TcpStream::connect(&self.config.runtime_api)
                    .await
                    .map_err(|e| self.unreachable(e))?;
                exchange(stream, command)
                    .await
                    .map_err(|e| self.unreachable(e))
            }
        };
        tokio::time::timeout(deadline, run)
            .await
            .map_err(|_| RouterError::Timeout {
                router: self.name.clone(),
                operation: format!("{command:?} on {}", self.config.runtime_api),
            })?
    }

    /// Runs a `set` command; HAProxy answers an empty line on success.
    async fn set(&self, command: &str, backend: &str, server: &str) -> Result<(), RouterError> {
        let reply = self.command(command).await?;
        let reply = reply.trim();
        if reply.is_empty() {
            return Ok(());
        }
        Err(if reply.contains("No such server") {
            RouterError::NotFound {
                router: self.name.clone(),
                what: format!("backend {backend:?} has no server {server:?}"),
            }
        } else if reply.contains("No such backend") {
            RouterError::NotFound {
                router: self.name.clone(),
                what: format!("no backend {backend:?}"),
            }
        } else {
            RouterError::Rejected {
                router: self.name.clone(),
                command: command.to_string(),
                reply: reply.to_string(),
            }
        })
    }

    /// The servers of a backend as `show servers state` reports them.
    async fn servers(&self, backend: &str) -> Result<Vec<ServerState>, RouterError> {
        if backend.is_empty() || backend.chars().any(|c| c.is_whitespace() || c == ';') {
            return Err(RouterError::NotFound {
                router: self.name.clone(),
                what: format!("invalid backend name {backend:?}"),
            });
        }
        let command = format!("show servers state {backend}");
        let reply = self.command(&command).await?;
        if reply.contains("Can't find backend") {
            return Err(RouterError::NotFound {
                router: self.name.clone(),
                what: format!("no backend {backend:?}"),
            });
        }
        parse_servers_state(&reply, backend).ok_or_else(|| RouterError::Protocol {
            router: self.name.clone(),
            command,
            reply: reply.chars().take(200).collect(),
        })
    }

    fn check_target<'a>(
        &self,
        target: &Target,
        servers: &'a [ServerState],
    ) -> Result<Vec<&'a ServerState>, RouterError> {
        let missing: Vec<&String> = target
            .baseline
            .iter()
            .chain(&target.canary)
            .filter(|name| !servers.iter().any(|s| &s.name == *name))
            .collect();
        if !missing.is_empty() {
            return Err(RouterError::NotFound {
                router: self.name.clone(),
                what: format!(
                    "backend {:?} has no server {} (it has: {})",
                    target.backend,
                    missing
                        .iter()
                        .map(|s| format!("{s:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    servers
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        Ok(servers
            .iter()
            .filter(|s| target.baseline.contains(&s.name) || target.canary.contains(&s.name))
            .collect())
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    command: &str,
) -> std::io::Result<String> {
    stream.write_all(format!("{command}\n").as_bytes()).await?;
    stream.flush().await?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// Parses `show servers state BACKEND` (format version 1). None if it is not that format.
fn parse_servers_state(reply: &str, backend: &str) -> Option<Vec<ServerState>> {
    let mut lines = reply.lines().filter(|l| !l.trim().is_empty());
    if lines.next()?.trim() != "1" {
        return None;
    }
    let mut servers = Vec::new();
    for line in lines {
        if line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        // be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight ...
        if cols.len() < 8 || cols[1] != backend {
            continue;
        }
        let op_state: u32 = cols[5].parse().ok()?;
        let admin_state: u32 = cols[6].parse().ok()?;
        servers.push(ServerState {
            name: cols[3].to_string(),
            weight: cols[7].parse().ok()?,
            // Any administrative flag (maintenance, drain) stops new traffic.
            enabled: admin_state == 0,
            // SRV_ST_RUNNING = 2, SRV_ST_STARTING = 1.
            up: op_state == 1 || op_state == 2,
        });
    }
    Some(servers)
}

#[async_trait]
impl TrafficRouter for HaproxyRouter {
    fn name(&self) -> &str {
        &self.name
    }

    fn realized(&self, target: &Target, canary_percent: f64) -> f64 {
        realized_percent(canary_percent, target.canary.len(), target.baseline.len())
    }

    async fn check(&self) -> Result<String, RouterError> {
        let info = self.command("show info").await?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        match field("Version:") {
            Some(version) => Ok(format!(
                "HAProxy {version} at {} (pid {})",
                self.config.runtime_api,
                field("Pid:").unwrap_or_default()
            )),
            None => Err(RouterError::Protocol {
                router: self.name.clone(),
                command: "show info".into(),
                reply: info.chars().take(200).collect(),
            }),
        }
    }

    async fn reconcile(&self, target: &Target) -> Result<(), RouterError> {
        let servers = self.servers(&target.backend).await?;
        self.check_target(target, &servers).map(|_| ())
    }

    async fn set_weights(&self, target: &Target, canary_percent: f64) -> Result<(), RouterError> {
        let (wc, wb) = haproxy_weights(canary_percent, target.canary.len(), target.baseline.len());
        let canary = target.canary.iter().map(|s| (s, wc));
        let baseline = target.baseline.iter().map(|s| (s, wb));
        // Raise the side that grows first, so the backend never has all weights at zero.
        let live = self.get_weights(target).await?;
        let order: Vec<(&String, u32)> = if canary_percent >= live.canary_percent {
            canary.chain(baseline).collect()
        } else {
            baseline.chain(canary).collect()
        };
        for (server, weight) in order {
            let command = format!("set server {}/{} weight {weight}", target.backend, server);
            self.set(&command, &target.backend, server).await?;
        }
        Ok(())
    }

    async fn set_server_weights(
        &self,
        target: &Target,
        weights: &BTreeMap<String, u32>,
    ) -> Result<(), RouterError> {
        super::weights::check_names(&self.name, target, weights)?;
        let live = self.get_weights(target).await?;
        let current = |name: &str| {
            live.servers
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.weight)
        };
        // Raise before lowering, so the backend never has all weights at zero on the way.
        let mut order: Vec<(&String, u32)> = weights.iter().map(|(n, w)| (n, *w)).collect();
        order.sort_by_key(|(n, w)| current(n).is_some_and(|c| *w < c));
        for (server, weight) in order {
            let command = format!("set server {}/{} weight {weight}", target.backend, server);
            self.set(&command, &target.backend, server).await?;
        }
        Ok(())
    }

    async fn get_weights(&self, target: &Target) -> Result<LiveWeights, RouterError> {
        let servers = self.servers(&target.backend).await?;
        let ours = self.check_target(target, &servers)?;
        let effective = |s: &ServerState| if s.enabled { s.weight as f64 } else { 0.0 };
        let canary: f64 = ours
            .iter()
            .filter(|s| target.canary.contains(&s.name))
            .map(|s| effective(s))
            .sum();
        let total: f64 = ours.iter().map(|s| effective(s)).sum();
        let canary_percent = if total > 0.0 {
            (10000.0 * canary / total).round() / 100.0
        } else {
            0.0
        };
        Ok(LiveWeights {
            canary_percent,
            servers: ours.into_iter().cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_values() {
        let mut c = HaproxyConfig {
            runtime_api: "127.0.0.1:9999".into(),
            timeout: default_timeout(),
        };
        assert!(c.problems().is_empty());
        c.runtime_api = " ".into();
        let fields: Vec<String> = c.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(fields, vec!["runtime_api"]);
    }

    #[test]
    fn whole_percentages_are_exact() {
        assert_eq!(haproxy_weights(10.0, 1, 1), (10, 90));
        assert_eq!(haproxy_weights(0.0, 1, 1), (0, 100));
        assert_eq!(haproxy_weights(100.0, 1, 1), (100, 0));
        assert_eq!(haproxy_weights(25.0, 2, 2), (25, 75));
        // 1 canary, 3 baseline: 5% -> canary 15 vs 3 x 95 = 285 -> share 15/300 = 5%.
        assert_eq!(haproxy_weights(5.0, 1, 3), (15, 95));
    }

    #[test]
    fn other_shares_are_scaled_and_never_vanish() {
        let (wc, wb) = haproxy_weights(2.5, 1, 1);
        let share = wc as f64 / (wc + wb) as f64 * 100.0;
        assert!((share - 2.5).abs() < 0.4, "{wc}/{wb}");
        let (wc, _) = haproxy_weights(0.1, 1, 1);
        assert_eq!(wc, 1);
        // 3 canary vs 1 baseline at 50%: canary 50, baseline 150 > 256? no: fits.
        assert_eq!(haproxy_weights(50.0, 3, 1), (50, 150));
        for (k, m) in [(1, 1), (2, 3), (4, 4), (1, 7)] {
            for p in [1.0, 5.0, 33.0, 50.0, 95.0, 0.5, 12.5] {
                let (wc, wb) = haproxy_weights(p, k, m);
                assert!(wc <= 256 && wb <= 256);
                let share = (k as f64 * wc as f64) / (k as f64 * wc as f64 + m as f64 * wb as f64);
                assert!(
                    (share * 100.0 - p).abs() < 0.5,
                    "p={p} k={k} m={m}: {wc}/{wb}"
                );
            }
        }
    }

    #[test]
    fn extreme_splits_report_what_haproxy_can_do() {
        // 99% on 1 canary vs 7 baseline servers needs a baseline weight below 1.
        let (wc, wb) = haproxy_weights(99.0, 1, 7);
        assert_eq!((wc, wb), (256, 1));
        let realized = realized_percent(99.0, 1, 7);
        assert!(
            (realized - 100.0 * 256.0 / 263.0).abs() < 1e-9,
            "{realized}"
        );
    }

    #[test]
    fn parses_show_servers_state() {
        let reply = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight\n3 be_app 1 baseline 127.0.0.1 2 0 100 100 1 1 0 2 0 0 0 0 - 18081 - 0 0 - - 0\n3 be_app 2 canary 127.0.0.1 0 1 10 0 0 1 0 0 0 0 0 0 - 18082 - 0 0 - - 0\n\n";
        let servers = parse_servers_state(reply, "be_app").unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(
            servers[1],
            ServerState {
                name: "canary".into(),
                weight: 10,
                enabled: false,
                up: false
            }
        );
        assert!(parse_servers_state("Unknown command\n", "be_app").is_none());
    }
}
