#!/usr/bin/env python3
"""A simple reference judge for the realistic benchmark: plain fixed-margin tests on what
Prometheus holds, Bonferroni over looks and metrics, nothing tuned.

It reads the run's raw samples (one instant query of a range selector), turns counters into
exact per-interval counts (differences of the counter at the last scrape before each interval
boundary, counter resets handled as Prometheus does), and at each look t = 1..20 tests three
metrics on intervals 1..t, each at level alpha / (3 metrics x 20 looks):

- error-rate: H0 canary rate <= 1.5 x baseline rate. Given all errors E, the canary's E_c is
  Binomial(E, pi0) with pi0 = 1.5 rho / (1.5 rho + 1 - rho), rho the canary's share of
  requests. Clumped errors are handled by quasi-likelihood: both counts are divided by the
  dispersion phi >= 1 (variance/mean of the baseline's per-instance per-scrape error counts so
  far), then the binomial tail is evaluated with real-valued counts (regularised beta).
- latency: the same test on slow requests (slower than the bucket edge at the baseline's p95
  in the warm-up interval), margin 1.5. The edge must exist in both arms' bucket layouts;
  when none does, latency is not judged.
- cpu-per-request: per-interval log(canary CPU s per request / baseline CPU s per request),
  one-sided Student t test of mean > log 1.5 (from the third look on).

The first look where a test rejects rolls back (that metric fired); otherwise the window ends
in promotion. No early promotion, no instance gate, no warm-up exclusion beyond interval 0.
"""

import argparse
import json
import math
import sys
import urllib.parse
import urllib.request

MARGIN = 1.5
METRICS = ("error-rate", "latency", "cpu-per-request")
NAMES = "http_requests_total|http_request_duration_seconds_bucket|process_cpu_seconds_total"


# ---------------------------------------------------------------------------------------------
# Special functions (regularised incomplete beta, Numerical Recipes' continued fraction)

def _betacf(a, b, x):
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
        c = 1.0 + aa / c
        c = c if abs(c) > 1e-300 else 1e-300
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
        c = 1.0 + aa / c
        c = c if abs(c) > 1e-300 else 1e-300
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-12:
            break
    return h


def betainc(a, b, x):
    """I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def binom_sf(k, n, p):
    """P(X >= k), X ~ Binomial(n, p), for real k, n (quasi-likelihood counts)."""
    if k <= 0.0:
        return 1.0
    if k > n:
        return 0.0
    return betainc(k, n - k + 1.0, p)


def t_sf(t, df):
    """P(T > t) for Student's t with df degrees of freedom."""
    x = df / (df + t * t)
    tail = 0.5 * betainc(df / 2.0, 0.5, x)
    return tail if t > 0 else 1.0 - tail


# ---------------------------------------------------------------------------------------------
# Data

def fetch(url, run, at, span_s):
    """Raw samples of the run's series: [(labels, [(t, v), ...]), ...]."""
    q = f'{{__name__=~"{NAMES}",run="{run}"}}[{int(span_s)}s]'
    body = urllib.parse.urlencode({"query": q, "time": str(at)}).encode()
    with urllib.request.urlopen(f"{url}/api/v1/query", data=body, timeout=60) as r:
        doc = json.load(r)
    if doc.get("status") != "success":
        raise RuntimeError(f"prometheus: {doc}")
    return [(s["metric"], [(float(t), float(v)) for t, v in s["values"]]) for s in doc["data"]["result"]]


def counter_at(points, bounds):
    """The reset-adjusted counter at each boundary (last scrape at or before it), and the
    per-scrape increments as (time, increment)."""
    adj, total, prev = [], 0.0, None
    for t, v in points:
        if prev is not None:
            total += v - prev if v >= prev else v
        prev = v
        adj.append((t, total))
    out, k = [], 0
    for b in bounds:
        while k < len(adj) and adj[k][0] <= b:
            k += 1
        out.append(adj[k - 1][1] if k > 0 else (adj[0][1] if adj else 0.0))
    incs = [(adj[i][0], adj[i][1] - adj[i - 1][1]) for i in range(1, len(adj))]
    return out, incs


class Arm:
    """Per-interval counts of one arm: index 0 is the warm-up interval."""

    def __init__(self, n):
        self.req = [0.0] * n
        self.err = [0.0] * n
        self.cpu = [0.0] * n
        self.buckets = {}  # le -> per-interval counts
        self.err_incs = []  # per-instance per-scrape error increments
        self.bucket_incs = {}  # le -> {instance: per-scrape increments}


def shape(series, start, interval, n):
    """{version: Arm} from raw series; intervals 0 (warm-up) .. n."""
    bounds = [start + (i - 1) * interval for i in range(n + 2)]
    arms = {"v1": Arm(n + 1), "v2": Arm(n + 1)}
    for labels, points in series:
        arm = arms.get(labels.get("version"))
        if arm is None or not points:
            continue
        at, incs = counter_at(points, bounds)
        deltas = [at[i + 1] - at[i] for i in range(n + 1)]
        name = labels["__name__"]
        if name == "http_requests_total":
            arm.req = [a + d for a, d in zip(arm.req, deltas)]
            if labels.get("code", "").startswith("5"):
                arm.err = [a + d for a, d in zip(arm.err, deltas)]
                arm.err_incs.append(incs)
        elif name == "process_cpu_seconds_total":
            arm.cpu = [a + d for a, d in zip(arm.cpu, deltas)]
        else:
            le = float(labels["le"])
            cur = arm.buckets.setdefault(le, [0.0] * (n + 1))
            arm.buckets[le] = [a + d for a, d in zip(cur, deltas)]
            arm.bucket_incs.setdefault(le, {})[labels.get("instance")] = incs
    return arms


def dispersion(incs_per_instance, until):
    """Variance/mean of per-scrape counts up to time `until` (instances pooled), at least 1."""
    xs = [x for incs in incs_per_instance for t, x in incs if t <= until]
    if len(xs) < 2:
        return 1.0
    m = sum(xs) / len(xs)
    if m <= 0:
        return 1.0
    v = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return max(1.0, v / m)


# ---------------------------------------------------------------------------------------------
# Tests

def count_p(bad_c, total_c, bad_b, total_b, phi):
    """One-sided p-value of H0: canary rate <= MARGIN x baseline rate (quasi-binomial)."""
    if total_c <= 0 or total_b <= 0 or bad_c + bad_b <= 0:
        return 1.0
    rho = total_c / (total_c + total_b)
    pi0 = MARGIN * rho / (MARGIN * rho + 1.0 - rho)
    return binom_sf(bad_c / phi, (bad_c + bad_b) / phi, pi0)


def slow_edge(base, canary):
    """The common bucket edge at the baseline's warm-up p95, or None."""
    les = sorted(le for le in base.buckets if math.isfinite(le))
    total = base.req[0] if base.req[0] > 0 else None
    inf = base.buckets.get(math.inf)
    if inf is not None:
        total = inf[0]
    if not total:
        return None
    common = set(canary.buckets)
    for le in les:
        if base.buckets[le][0] >= 0.95 * total:
            return le if le in common else None
    return None


def cum(xs, t):
    """Intervals 1..t added up."""
    return sum(xs[1:t + 1])


def errors_test(b, c, t, until):
    """(p, note) of the error-rate test on intervals 1..t."""
    phi = dispersion(b.err_incs, until)
    return count_p(cum(c.err, t), cum(c.req, t), cum(b.err, t), cum(b.req, t), phi), f"phi {phi:.1f}"


def latency_test(b, c, t, until, edge):
    """(p, note) of the slow-request test on intervals 1..t (p = 1 without a common edge)."""
    inf_c, inf_b = c.buckets.get(math.inf), b.buckets.get(math.inf)
    if edge is None or not inf_c or not inf_b:
        return 1.0, "no common bucket edge"
    slow_c = cum(inf_c, t) - cum(c.buckets[edge], t)
    slow_b = cum(inf_b, t) - cum(b.buckets[edge], t)
    at_edge = b.bucket_incs.get(edge, {})
    slow_incs = [[(ti, i - j) for (ti, i), (_, j) in zip(incs, at_edge.get(inst, []))]
                 for inst, incs in b.bucket_incs.get(math.inf, {}).items()]
    phi = dispersion(slow_incs, until)
    return count_p(slow_c, cum(inf_c, t), slow_b, cum(inf_b, t), phi), f"above {edge}s, phi {phi:.1f}"


def cpu_test(b, c, t):
    """(p, note) of the t test on per-interval log CPU-per-request ratios, intervals 1..t."""
    ys = [math.log((c.cpu[i] / c.req[i]) / (b.cpu[i] / b.req[i]))
          for i in range(1, t + 1) if min(c.req[i], b.req[i], c.cpu[i], b.cpu[i]) > 0]
    if len(ys) < 3:
        return 1.0, "fewer than 3 intervals"
    m = sum(ys) / len(ys)
    s = math.sqrt(sum((y - m) ** 2 for y in ys) / (len(ys) - 1))
    if s <= 0:
        return 1.0, "no variation"
    return t_sf((m - math.log(MARGIN)) / (s / math.sqrt(len(ys))), len(ys) - 1), f"mean x{math.exp(m):.2f}"


def judge(series, start, interval, n, alpha):
    """{decision, decided_at_interval, metric, reason} as the reference judge decides."""
    arms = shape(series, start, interval, n)
    b, c = arms["v1"], arms["v2"]
    level = alpha / (len(METRICS) * n)
    edge = slow_edge(b, c)
    for t in range(1, n + 1):
        until = start + t * interval
        tests = [("error-rate", errors_test(b, c, t, until)),
                 ("latency", latency_test(b, c, t, until, edge)),
                 ("cpu-per-request", cpu_test(b, c, t))]
        for metric, (p, note) in tests:
            if p <= level:
                return {"decision": "rollback", "decided_at_interval": t, "metric": metric,
                        "reason": f"{metric}: p={p:.2e} <= {level:.2e} ({note})"}
    return {"decision": "promote", "decided_at_interval": None, "metric": None,
            "reason": "no test rejected in the window"}


def main():
    ap = argparse.ArgumentParser(description="Reference judge over one run of the realistic benchmark.")
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args()
    import gen
    series = fetch(args.prometheus, args.run, gen.END, gen.END - gen.DATA_FROM + 60)
    out = judge(series, gen.START, gen.INTERVAL, gen.N_INTERVALS, args.alpha)
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
