//! Relative weights for the routers that write them into files or send them to an adapter
//! (nginx, Envoy, Traefik, HTTP): how a canary share becomes per-server weights, and back.
//!
//! A server's share of new traffic is `w / Σw` over the target's servers. A whole-number share
//! `p` with `k` canary and `m` baseline servers (`g = gcd(k, m)`) gives every canary server
//! `p·m/g` and every baseline server `(100 − p)·k/g`, so 10% on one server each reads `10` /
//! `90` in the file. Other shares use hundredths of a percent reduced by their common divisor
//! (12.5% is `1` / `7`): the resolution is 0.01 percentage points, and what is read back is the
//! intended share rounded to it ([`resolved_percent`]).

use super::{LiveWeights, RouterError, ServerState, Target};
use std::collections::BTreeMap;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The relative weights `(per canary server, per baseline server)` for a canary share in percent.
pub fn relative_weights(
    percent: f64,
    canary_servers: usize,
    baseline_servers: usize,
) -> (u32, u32) {
    let p = percent.clamp(0.0, 100.0);
    let (k, m) = (canary_servers.max(1) as u64, baseline_servers.max(1) as u64);
    let g = gcd(k, m);
    let (per_canary, per_baseline) = (m / g, k / g);
    let (whole, scale) = if (p - p.round()).abs() < 1e-9 {
        (p.round() as u64, 100)
    } else {
        ((p * 100.0).round() as u64, 10_000)
    };
    let (wc, wb) = (whole * per_canary, (scale - whole) * per_baseline);
    let d = if scale == 100 { 1 } else { gcd(wc, wb).max(1) };
    ((wc / d) as u32, (wb / d) as u32)
}

/// The canary share these routers really give for an intended one (0.01-point resolution).
pub fn resolved_percent(percent: f64) -> f64 {
    (percent.clamp(0.0, 100.0) * 100.0).round() / 100.0
}

/// Every target server's weight for a canary share.
pub fn for_target(target: &Target, percent: f64) -> BTreeMap<String, u32> {
    let (wc, wb) = relative_weights(percent, target.canary.len(), target.baseline.len());
    let canary = target.canary.iter().map(|s| (s.clone(), wc));
    let baseline = target.baseline.iter().map(|s| (s.clone(), wb));
    baseline.chain(canary).collect()
}

/// Checks that every named server belongs to the target.
pub fn check_names(
    router: &str,
    target: &Target,
    weights: &BTreeMap<String, u32>,
) -> Result<(), RouterError> {
    let strangers: Vec<&String> = weights
        .keys()
        .filter(|n| !target.baseline.contains(n) && !target.canary.contains(n))
        .collect();
    if strangers.is_empty() {
        return Ok(());
    }
    Err(RouterError::NotFound {
        router: router.to_string(),
        what: format!(
            "{strangers:?} {} not among backend {:?}'s target servers",
            if strangers.len() == 1 { "is" } else { "are" },
            target.backend
        ),
    })
}

/// The live split from the target servers' states: the canary's share of their summed weight
/// (a server that takes no new traffic counts 0), rounded to 0.01.
pub fn live(target: &Target, servers: Vec<ServerState>) -> LiveWeights {
    let effective = |s: &ServerState| if s.enabled { s.weight as f64 } else { 0.0 };
    let canary: f64 = servers
        .iter()
        .filter(|s| target.canary.contains(&s.name))
        .map(effective)
        .sum();
    let total: f64 = servers.iter().map(effective).sum();
    let canary_percent = if total > 0.0 {
        (10_000.0 * canary / total).round() / 100.0
    } else {
        0.0
    };
    LiveWeights {
        canary_percent,
        servers,
    }
}

/// A server that takes new traffic in proportion to `weight`.
pub fn server(name: &str, weight: u32) -> ServerState {
    ServerState {
        name: name.to_string(),
        weight,
        enabled: true,
        up: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(p: f64, k: usize, m: usize) -> f64 {
        let (wc, wb) = relative_weights(p, k, m);
        let c = wc as f64 * k as f64;
        100.0 * c / (c + wb as f64 * m as f64)
    }

    #[test]
    fn whole_percentages_read_like_percentages() {
        assert_eq!(relative_weights(10.0, 1, 1), (10, 90));
        assert_eq!(relative_weights(0.0, 1, 1), (0, 100));
        assert_eq!(relative_weights(100.0, 1, 1), (100, 0));
        assert_eq!(relative_weights(5.0, 1, 3), (15, 95));
        assert_eq!(relative_weights(50.0, 4, 4), (50, 50));
    }

    #[test]
    fn other_shares_are_exact_to_a_hundredth() {
        assert_eq!(relative_weights(12.5, 1, 1), (1, 7));
        assert_eq!(relative_weights(0.01, 1, 1), (1, 9999));
        for (k, m) in [(1, 1), (2, 3), (4, 4), (1, 7), (3, 1)] {
            for p in [0.0, 0.5, 1.0, 2.5, 12.5, 33.33, 50.0, 99.99, 100.0] {
                assert!((share(p, k, m) - p).abs() < 1e-9, "p={p} k={k} m={m}");
                assert_eq!(resolved_percent(p), p);
            }
        }
        assert_eq!(resolved_percent(33.333), 33.33);
    }

    #[test]
    fn live_share_counts_disabled_servers_as_zero() {
        let target = Target {
            backend: "be".into(),
            baseline: vec!["a".into()],
            canary: vec!["b".into()],
        };
        let mut b = server("b", 30);
        assert_eq!(
            live(&target, vec![server("a", 90), b.clone()]).canary_percent,
            25.0
        );
        b.enabled = false;
        assert_eq!(live(&target, vec![server("a", 90), b]).canary_percent, 0.0);
        assert_eq!(
            live(&target, vec![server("a", 0), server("b", 0)]).canary_percent,
            0.0
        );
        let w = for_target(&target, 10.0);
        assert_eq!((w["a"], w["b"]), (90, 10));
        assert!(check_names("r", &target, &w).is_ok());
        let stranger = BTreeMap::from([("c".to_string(), 1)]);
        let e = check_names("r", &target, &stranger)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"c\"") && e.contains("be"), "{e}");
    }
}
