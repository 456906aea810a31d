//! Outbox keys and the retry policy (the rows themselves live in `store/outbox.rs`).

use super::message::{Notification, NotificationKind};
use super::routes::NotifySettings;
use rand::Rng;
use std::time::Duration;

/// The idempotency key of a notification to one notifier. Warnings are keyed by canary and
/// metric, not by event, so a canary warns about a metric at most once.
pub fn key(n: &Notification, notifier: &str) -> String {
    match (n.kind, &n.metric) {
        (NotificationKind::Warning, Some(metric)) => {
            format!("canary-{}:warning:{metric}:{notifier}", n.canary.id)
        }
        (kind, _) => format!("event-{}:{kind}:{notifier}", n.event_id),
    }
}

/// How long to keep trying, and how long to wait between tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Give up this long after the notification was queued.
    pub deadline: Duration,
    /// Time limit of one attempt.
    pub timeout: Duration,
    /// First retry delay.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
}

impl From<&NotifySettings> for RetryPolicy {
    fn from(s: &NotifySettings) -> Self {
        RetryPolicy {
            deadline: s.deadline.0,
            timeout: s.timeout.0,
            min_backoff: s.min_backoff.0,
            max_backoff: s.max_backoff.0,
        }
    }
}

impl RetryPolicy {
    /// The wait after `attempts` failed attempts: `min_backoff · 2^(attempts−1)`, capped at
    /// `max_backoff`, then "equal jitter" (a uniform draw in its upper half), so that a whole
    /// outbox failing at once does not retry in lockstep yet never retries sooner than half the
    /// nominal delay.
    pub fn backoff(&self, attempts: u32, rng: &mut impl Rng) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let nominal = self
            .min_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        let half = nominal / 2;
        half + half.mul_f64(rng.random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::templates::sample;
    use rand::SeedableRng;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let p = RetryPolicy {
            deadline: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        };
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for (attempts, nominal) in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (40, 60.0)] {
            for _ in 0..50 {
                let d = p.backoff(attempts, &mut rng).as_secs_f64();
                assert!(d >= nominal / 2.0 && d <= nominal, "{attempts}: {d}");
            }
        }
        let draws: Vec<Duration> = (0..10).map(|_| p.backoff(3, &mut rng)).collect();
        assert!(draws.windows(2).any(|w| w[0] != w[1]), "jitter varies");
    }

    #[test]
    fn keys_identify_event_kind_and_notifier_and_warnings_by_metric() {
        let mut n = sample();
        assert_eq!(key(&n, "mail"), "event-42:rolled_back:mail");
        n.kind = NotificationKind::Summary;
        assert_eq!(key(&n, "mail"), "event-42:summary:mail");
        n.kind = NotificationKind::Warning;
        let a = key(&n, "chat");
        n.event_id = 43;
        assert_eq!(key(&n, "chat"), a, "one warning per metric per canary");
        assert_eq!(a, "canary-7:warning:error-rate:chat");
    }
}
