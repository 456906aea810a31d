#!/usr/bin/env python3
"""Checks that the generator makes what README.md says it makes, and that the reference judge's
statistics are right. Standard library only, no Prometheus, a few seconds:

    python3 benches/realistic/selftest.py
"""

import math
import random
import statistics
import sys

import gen
import reference

FAILED = []


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        FAILED.append(name)


def spec(scenario, traffic="100rps", scrape=15, i=0):
    return {"run": f"{scenario}.{traffic}.{scrape}s.{i:02d}", "scenario": scenario, "traffic": traffic,
            "scrape": scrape, "onset": gen.SCENARIOS[scenario][0], "seed": f"selftest/{scenario}/{traffic}/{i}"}


def counters(samples, version, code):
    """Per-instance [(t, value)] of http_requests_total{code}."""
    out = {}
    for labels, points in samples["req"]:
        if f'version="{version}"' in labels and f'code="{code}"' in labels:
            out[labels] = points
    return out


def increments(points):
    return [b[1] - a[1] for a, b in zip(points, points[1:]) if b[1] >= a[1]]


def totals_in_window(samples, version, t0, t1):
    """(requests, errors) of an arm between two times (counter differences, resets ignored)."""
    req = err = 0.0
    for code in ("200", "500"):
        for points in counters(samples, version, code).values():
            inside = [v for t, v in points if t0 <= t <= t1]
            if len(inside) >= 2:
                d = inside[-1] - inside[0]
                req += d
                err += d if code == "500" else 0.0
    return req, err


def quantile_from_buckets(samples, version, q, t0, t1):
    """Quantile of the arm's latency between two times, from its buckets (linear in a bucket)."""
    acc = {}
    for row in samples["hist"]:
        if row[0] != "b" or f'version="{version}"' not in row[1]:
            continue
        _, _, edges, points = row
        inside = [b for t, b in points if t0 <= t <= t1]
        for i, le in enumerate(edges):
            acc[float(le)] = acc.get(float(le), 0.0) + inside[-1][i] - inside[0][i]
    les = sorted(acc)
    total = acc[math.inf]
    prev_le, prev_c = 0.0, 0.0
    for le in les:
        if acc[le] >= q * total:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (q * total - prev_c) / max(1e-9, acc[le] - prev_c)
        prev_le, prev_c = le, acc[le]
    return les[-2]


def test_clumps():
    ratios = {}
    for scenario in ("aa", "bursty"):
        incs = []
        for i in range(4):
            s = gen.simulate(spec(scenario, i=i))
            for points in counters(s, "v1", "500").values():
                incs.extend(increments(points))
        m = statistics.mean(incs)
        ratios[scenario] = statistics.variance(incs) / m
    # Clump sizes alone give about 3.8 (bursty 7.9); incidents, drift and instance offsets add more.
    check("errors are overdispersed", 3.0 < ratios["aa"] < 10.0,
          f"variance/mean of per-scrape error counts {ratios['aa']:.1f} (clumps alone: 3.8)")
    check("bursty errors are clumped 5-10", 7.0 < ratios["bursty"] < 14.0 and ratios["bursty"] > ratios["aa"],
          f"variance/mean {ratios['bursty']:.1f} (clumps alone: 7.9)")


def test_regressions():
    w = (gen.START, gen.END)
    s = gen.simulate(spec("tail"))
    p99 = quantile_from_buckets(s, "v2", 0.99, *w) / quantile_from_buckets(s, "v1", 0.99, *w)
    p50 = quantile_from_buckets(s, "v2", 0.5, *w) / quantile_from_buckets(s, "v1", 0.5, *w)
    check("tail: p99 up, median the same", p99 >= 1.5 and p50 < 1.1, f"p99 x{p99:.2f}, median x{p50:.2f}")
    s = gen.simulate(spec("lat1.5"))
    p50 = quantile_from_buckets(s, "v2", 0.5, *w) / quantile_from_buckets(s, "v1", 0.5, *w)
    check("lat1.5: median x1.5", 1.35 < p50 < 1.65, f"median x{p50:.2f}")
    s = gen.simulate(spec("err3"))
    (rc, ec), (rb, eb) = totals_in_window(s, "v2", *w), totals_in_window(s, "v1", *w)
    ratio = (ec / rc) / (eb / rb)
    check("err3: error rate x3", 1.8 < ratio < 5.0, f"x{ratio:.2f} over the window")
    s = gen.simulate(spec("late"))
    mid = gen.START + 9 * gen.INTERVAL
    before = quantile_from_buckets(s, "v2", 0.5, gen.START, mid) / quantile_from_buckets(s, "v1", 0.5, gen.START, mid)
    after = quantile_from_buckets(s, "v2", 0.5, mid + 60, gen.END) / quantile_from_buckets(s, "v1", 0.5, mid + 60, gen.END)
    check("late: healthy before interval 10, x2 after", before < 1.15 and 1.8 < after < 2.2,
          f"median x{before:.2f} before, x{after:.2f} after")
    s = gen.simulate(spec("cpu1.6"))

    def cpu_per_request(version):
        cpu = 0.0
        for labels, pts in s["cpu"]:
            inside = [v for t, v in pts if gen.START <= t <= gen.END]
            cpu += inside[-1] - inside[0] if f'version="{version}"' in labels else 0.0
        return cpu / totals_in_window(s, version, gen.START, gen.END)[0]
    ratio = cpu_per_request("v2") / cpu_per_request("v1")
    check("cpu1.6: CPU per request beyond the 1.5 margin", ratio > 1.5, f"x{ratio:.2f}")


def test_events():
    s = gen.simulate(spec("restart"))
    resets = sum(1 for labels, points in s["req"] if 'version="v2"' in labels
                 for a, b in zip(points, points[1:]) if b[1] < a[1])
    check("restart: counters reset", resets == 2, f"{resets} reset(s) (200 and 500 of one instance)")
    s = gen.simulate(spec("scrape-gap"))
    gaps = [b[0] - a[0] for labels, points in s["req"] if 'version="v1"' in labels and 'code="200"' in labels
            for a, b in zip(points, points[1:])]
    check("scrape-gap: 3 minutes without samples", 170 < max(gaps) < 200, f"longest gap {max(gaps):.0f}s")
    s = gen.simulate(spec("mem-warmup"))
    canary = [v for labels, pts in s["mem"] if 'version="v2"' in labels for t, v in pts[:2]]
    late = [v for labels, pts in s["mem"] if 'version="v2"' in labels for t, v in pts[-2:]]
    check("mem-warmup: memory settles", statistics.mean(canary) / statistics.mean(late) < 0.8,
          f"start/end x{statistics.mean(canary) / statistics.mean(late):.2f}")
    s = gen.simulate(spec("buckets"))
    layouts = {tuple(row[2]) for row in s["hist"] if row[0] == "b"}
    check("buckets: two layouts", len(layouts) == 2, f"{len(layouts)} layout(s)")


def test_reference_statistics():
    # The binomial tail against a direct sum, the t tail against known quantiles.
    n, k, p = 40, 12, 0.2
    direct = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
    check("binomial tail", abs(reference.binom_sf(k, n, p) - direct) < 1e-10,
          f"{reference.binom_sf(k, n, p):.6g} vs {direct:.6g}")
    check("t tail", abs(reference.t_sf(2.228, 10) - 0.025) < 2e-4 and abs(reference.t_sf(-1.812, 10) - 0.95) < 2e-4,
          f"P(T10 > 2.228) = {reference.t_sf(2.228, 10):.4f}")
    # The count test holds its level at the margin (exact binomial data, phi = 1).
    rng = random.Random(7)
    rejections = 0
    trials = 2000
    for _ in range(trials):
        pi0 = 1.5 * 0.5 / (1.5 * 0.5 + 0.5)
        e = 60
        ec = sum(1 for _ in range(e) if rng.random() < pi0)
        rejections += reference.count_p(ec, 1000, e - ec, 1000, 1.0) <= 0.05
    check("count test level at the margin", rejections / trials <= 0.06, f"{rejections / trials:.3f} at alpha 0.05")


def main():
    test_clumps()
    test_regressions()
    test_events()
    test_reference_statistics()
    if FAILED:
        sys.exit(f"{len(FAILED)} check(s) failed: {', '.join(FAILED)}")
    print("all checks passed")


if __name__ == "__main__":
    main()
