//! Reading Prometheus histogram buckets: totals, counts below an edge, quantiles.
//!
//! Buckets are cumulative `(le, count)` pairs sorted by `le`, the last one `+Inf`. Counts come
//! from `increase()` and are not exactly monotone; they are read as they are, clamped where a
//! negative difference would make no sense.

/// All observations (the `+Inf` bucket, or the largest count).
pub fn total(buckets: &[(f64, f64)]) -> f64 {
    buckets
        .iter()
        .rev()
        .find(|(le, _)| le.is_infinite())
        .or(buckets.last())
        .map_or(0.0, |&(_, c)| c.max(0.0))
}

/// Observations at or below `x`: the count of the largest edge `<= x` (0 below the first edge).
pub fn count_le(buckets: &[(f64, f64)], x: f64) -> f64 {
    let idx = buckets.partition_point(|&(le, _)| le <= x * (1.0 + 1e-9));
    if idx == 0 {
        0.0
    } else {
        buckets[idx - 1].1.max(0.0).min(total(buckets))
    }
}

/// Observations above `x`.
pub fn count_above(buckets: &[(f64, f64)], x: f64) -> f64 {
    (total(buckets) - count_le(buckets, x)).max(0.0)
}

/// The `q` quantile, interpolated linearly inside its bucket like PromQL's `histogram_quantile`.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let n = total(buckets);
    if n <= 0.0 || buckets.is_empty() {
        return None;
    }
    let rank = q * n;
    let mut prev = (0.0, 0.0);
    for &(le, c) in buckets {
        if c >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let width = le - prev.0;
            let in_bucket = c - prev.1;
            let f = if in_bucket > 0.0 {
                (rank - prev.1) / in_bucket
            } else {
                1.0
            };
            return Some(prev.0 + width * f.clamp(0.0, 1.0));
        }
        prev = (le, c);
    }
    Some(prev.0)
}

/// The smallest finite bucket edge at or above the `q` quantile: a threshold with at most
/// `1 − q` of these observations above it.
pub fn edge_at_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let n = total(buckets);
    if n <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .filter(|(le, _)| le.is_finite())
        .find(|&&(_, c)| c >= q * n)
        .map(|&(le, _)| le)
        .or_else(|| {
            buckets
                .iter()
                .rev()
                .find(|(le, _)| le.is_finite())
                .map(|b| b.0)
        })
}

/// The bucket growth factor near `x` (ratio of consecutive edges), for resolution checks.
pub fn growth_near(buckets: &[(f64, f64)], x: f64) -> Option<f64> {
    let finite: Vec<f64> = buckets
        .iter()
        .map(|b| b.0)
        .filter(|e| e.is_finite())
        .collect();
    let i = finite
        .partition_point(|&e| e < x)
        .min(finite.len().saturating_sub(1));
    (i >= 1 && finite[i - 1] > 0.0).then(|| finite[i] / finite[i - 1])
}

/// How far the bucket edge used may be from the slow-request threshold: within ×1.25 either way.
pub const EDGE_TOLERANCE: f64 = 1.25;

/// Why the arms' histograms cannot be compared at a threshold.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EdgeError {
    /// The arms' bucket layouts share no edge within [`EDGE_TOLERANCE`] of the threshold.
    #[error(
        "the canary's and the baseline's histograms share no bucket edge within ×{EDGE_TOLERANCE} of {threshold}s (nearest common edge: {}; canary's nearest {}, baseline's nearest {}): their bucket layouts differ, so their slow shares cannot be compared; give both versions a common bucket edge near the threshold",
        show(*.nearest_common), show(*.canary), show(*.baseline)
    )]
    NoCommonEdge {
        /// The slow-request threshold (seconds).
        threshold: f64,
        /// The common edge nearest to it, if any.
        nearest_common: Option<f64>,
        /// The canary's edge nearest to it.
        canary: Option<f64>,
        /// The baseline's edge nearest to it.
        baseline: Option<f64>,
    },
}

fn show(v: Option<f64>) -> String {
    v.map_or("none".into(), |v| format!("{v}s"))
}

fn finite_edges(buckets: &[(f64, f64)]) -> impl Iterator<Item = f64> + '_ {
    buckets
        .iter()
        .map(|b| b.0)
        .filter(|e| e.is_finite() && *e > 0.0)
}

fn same_edge(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

fn nearest(edges: impl Iterator<Item = f64>, x: f64) -> Option<f64> {
    edges.min_by(|a, b| (a / x).ln().abs().total_cmp(&(b / x).ln().abs()))
}

/// The bucket edge both arms have that is nearest to `threshold` (in ratio), if it lies within
/// [`EDGE_TOLERANCE`]; both arms' slow shares are then read at exactly that edge. For
/// preflight and `rules check`, too: it tells in advance whether two layouts can be compared.
pub fn common_edge(
    canary: &[(f64, f64)],
    baseline: &[(f64, f64)],
    threshold: f64,
) -> Result<f64, EdgeError> {
    let common = finite_edges(canary).filter(|&e| finite_edges(baseline).any(|f| same_edge(e, f)));
    let best = nearest(common, threshold);
    match best {
        Some(e) if (e / threshold).ln().abs() <= EDGE_TOLERANCE.ln() + 1e-12 => Ok(e),
        _ => Err(EdgeError::NoCommonEdge {
            threshold,
            nearest_common: best,
            canary: nearest(finite_edges(canary), threshold),
            baseline: nearest(finite_edges(baseline), threshold),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Vec<(f64, f64)> {
        vec![
            (0.1, 10.0),
            (0.2, 50.0),
            (0.4, 90.0),
            (0.8, 99.0),
            (f64::INFINITY, 100.0),
        ]
    }

    #[test]
    fn totals_and_counts() {
        assert_eq!(total(&b()), 100.0);
        assert_eq!(count_le(&b(), 0.2), 50.0);
        assert_eq!(count_le(&b(), 0.3), 50.0);
        assert_eq!(count_le(&b(), 0.05), 0.0);
        assert_eq!(count_above(&b(), 0.4), 10.0);
    }

    #[test]
    fn quantiles_interpolate_like_promql() {
        assert!((quantile(&b(), 0.5).unwrap() - 0.2).abs() < 1e-12);
        assert!((quantile(&b(), 0.7).unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(quantile(&b(), 0.999), Some(0.8));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn different_layouts_meet_at_a_common_edge() {
        // The new release's buckets: 0.05, 0.1, 0.25, 0.5, 1 (the old: 0.1, 0.2, 0.4, 0.8).
        let new = vec![
            (0.05, 5.0),
            (0.1, 10.0),
            (0.25, 70.0),
            (0.5, 95.0),
            (1.0, 99.0),
            (f64::INFINITY, 100.0),
        ];
        // A threshold of 0.2 s: no common edge at 0.2, but 0.1 is too far (×2); 0.25 is not
        // in the old layout. None within ×1.25: a clear error, not a wrong verdict.
        let err = common_edge(&new, &b(), 0.2).unwrap_err();
        assert!(err.to_string().contains("share no bucket edge"), "{err}");
        // A threshold on an edge both have is used as it is.
        assert_eq!(common_edge(&new, &b(), 0.1), Ok(0.1));
        // Edges equal up to rounding count as the same edge.
        let old_shifted: Vec<(f64, f64)> =
            b().iter().map(|&(e, c)| (e * (1.0 + 1e-12), c)).collect();
        assert_eq!(
            common_edge(&b(), &old_shifted, 0.4).map(|e| (e * 1e6).round()),
            Ok(400000.0)
        );
        // A common edge near the threshold is chosen over a far one.
        let fine = vec![(0.1, 1.0), (0.21, 2.0), (0.4, 3.0), (f64::INFINITY, 4.0)];
        let other = vec![(0.1, 1.0), (0.21, 2.0), (0.3, 2.5), (f64::INFINITY, 4.0)];
        assert_eq!(common_edge(&fine, &other, 0.2), Ok(0.21));
    }

    #[test]
    fn threshold_edges() {
        assert_eq!(edge_at_quantile(&b(), 0.9), Some(0.4));
        assert_eq!(edge_at_quantile(&b(), 0.95), Some(0.8));
        assert_eq!(growth_near(&b(), 0.3), Some(2.0));
    }
}
