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
    fn threshold_edges() {
        assert_eq!(edge_at_quantile(&b(), 0.9), Some(0.4));
        assert_eq!(edge_at_quantile(&b(), 0.95), Some(0.8));
        assert_eq!(growth_near(&b(), 0.3), Some(2.0));
    }
}
