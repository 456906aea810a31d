#!/usr/bin/env python3
"""Generator of the realistic judge benchmark: production-shaped canary/baseline history as
OpenMetrics text, ready for `promtool tsdb create-blocks-from openmetrics`.

Written from the scenario descriptions of issue 11 (not from canaryd's own corpus), Python 3.11
standard library only, seeded: the same seed gives the same bytes.

Every run is its own set of series (label `run`), next to `version` (v1 baseline, v2 canary)
and `instance` (3 per arm). All runs share one fixed past time window, so one Prometheus holds
them all:

    DATA_FROM (canary starts)  START-1m (warm-up interval)  START ... END (20 x 1m intervals)

Interval i (1-based) covers (START + (i-1) min, START + i min], as in `canaryd backtest`.
A regression with onset k is active for t > START + (k-1) min.

What every run has (the "production shapes"):
- shared load drift for both arms: a +30% ramp over the window, 0-3 load shocks (+30..100% for
  1-3 minutes; some are incidents that also multiply the error rate of both arms) and AR(1)
  noise;
- per-instance offsets: traffic share, latency median, error rate, CPU per request, memory;
- requests per scrape step as Poisson counts split into latency buckets (independent Poisson
  counts per bucket, i.e. an exact Poisson thinning of the request stream);
- lognormal latency (median 100 ms, log-sd 0.5, median +20% per +100% load) in a fine
  exponential bucket layout (x1.1 from 30 ms to 1.6 s, plus coarse edges at the ends);
- errors in clumps: a compound Poisson count per step (clump sizes 1 or 2-6, variance/mean
  about 4), base error rate 0.5%;
- CPU: an idle floor plus CPU seconds per request; memory: a per-instance level with AR(1)
  noise; node filesystem gauges (for rule packs that read them);
- per-instance scrape phases (as Prometheus spreads targets), so `increase()` extrapolates.
"""

import argparse
import json
import math
import os
import random
import sys
from statistics import NormalDist

# ---------------------------------------------------------------------------------------------
# Time line (fixed, in the past; inside one 2 h TSDB block: 2025-01-06 10:00-12:00 UTC)

T_BLOCK = 1736157600  # 2025-01-06T10:00:00Z
DATA_FROM = T_BLOCK + 60  # the canary starts; data begins
INTERVAL = 60
N_INTERVALS = 20
START = T_BLOCK + 300  # interval 0 (warm-up) is (START-1m, START]
END = START + N_INTERVALS * INTERVAL
DATA_TO = END + 60

# ---------------------------------------------------------------------------------------------
# Cells

#: (canary req/s, baseline req/s) per arm, spread over 3 instances each.
TRAFFIC = {
    "2rps": (2.0, 2.0),
    "20rps": (20.0, 20.0),
    "100rps": (100.0, 100.0),
    "10pct": (20.0, 180.0),  # a 10% canary of a 200 req/s service
}

#: name -> (onset interval or None for healthy, one line for people)
SCENARIOS = {
    "aa": (None, "A/A: both arms the same release"),
    "noisy-host": (None, "one baseline host is noisy: slower, jittery latency, more errors, more CPU"),
    "restart": (None, "a canary instance restarts: 30 s down, counters reset, memory warms up again"),
    "scrape-gap": (None, "a baseline instance is not scraped for 3 minutes"),
    "bursty": (None, "errors at equal rates in clumps of 5-10 (variance/mean about 8)"),
    "mem-warmup": (None, "canary memory settles after the start: 0.75x -> 1.0x, time constant 5 min"),
    "buckets": (None, "the canary release uses a different bucket layout (x1.25 from 12 ms)"),
    "lat1.5": (1, "canary latency x1.5"),
    "lat2": (1, "canary latency x2"),
    "tail": (1, "tail-only: 5% of canary requests x4 slower (p99 x1.9, median +3%)"),
    "err3": (1, "canary error rate x3"),
    "cpu1.6": (1, "canary CPU per request x1.6"),
    "late": (10, "canary latency x2 from interval 10 on (healthy before)"),
    "creep": (5, "canary latency creeps up 10% per interval from interval 5 (x1.5 at 9, x2 at 14, cap x2.5)"),
}

HEALTHY = [s for s, (onset, _) in SCENARIOS.items() if onset is None]
REGRESSIONS = [s for s, (onset, _) in SCENARIOS.items() if onset is not None]

#: scenarios also run with slower scrapes (at 20 req/s per arm)
SLOW_SCRAPE_SCENARIOS = {
    30: ["aa", "bursty", "restart", "lat1.5", "err3", "late"],
    60: ["aa", "bursty", "lat1.5", "err3"],
}


#: cells left out: at 2 req/s the idle floor dilutes CPU x1.6 per request to x1.33-1.41 in CPU
#: seconds per request as measured, within the 50% margin, so it is no regression to catch there.
SKIPPED_CELLS = {("cpu1.6", "2rps")}


def cells():
    """The benchmark's cells: (scenario, traffic, scrape seconds)."""
    out = []
    for scrape in (15, 30, 60):
        for traffic in TRAFFIC:
            for scenario in SCENARIOS:
                if scrape != 15 and (traffic != "20rps" or scenario not in SLOW_SCRAPE_SCENARIOS[scrape]):
                    continue
                if (scenario, traffic) in SKIPPED_CELLS:
                    continue
                out.append((scenario, traffic, scrape))
    return out


def run_specs(runs, seed):
    """Every run of the benchmark, each with its own seed derived from `seed`."""
    specs = []
    for scenario, traffic, scrape in cells():
        onset = SCENARIOS[scenario][0]
        for i in range(runs):
            specs.append({
                "run": f"{scenario}.{traffic}.{scrape}s.{i:02d}",
                "scenario": scenario,
                "traffic": traffic,
                "scrape": scrape,
                "onset": onset,
                "seed": f"{seed}/{scenario}/{traffic}/{scrape}/{i}",
            })
    return specs


# ---------------------------------------------------------------------------------------------
# Model

FINE_EDGES = [0.01, 0.02] + [round(0.03 * 1.1**k, 6) for k in range(42) if 0.03 * 1.1**k <= 1.6] + [2.5, 5.0]
ALT_EDGES = [round(0.012 * 1.25**k, 6) for k in range(28)]

BASE_MEDIAN = 0.1
LOG_SD = 0.5
BASE_ERROR = 0.005
CPU_IDLE = 0.002  # cores per instance (idle floor)
CPU_PER_REQ = 0.004  # CPU seconds per request
MEM_BASE = 3.0e8
STD = NormalDist()
SQRT2 = math.sqrt(2.0)


def poisson(rng, lam):
    """A Poisson draw: inversion below 30, a rounded normal above (plenty for counts)."""
    if lam <= 0.0:
        return 0
    if lam < 30.0:
        u = rng.random()
        p = math.exp(-lam)
        cum = p
        k = 0
        while u > cum and k < 200:
            k += 1
            p *= lam / k
            cum += p
        return k
    return max(0, int(rng.gauss(lam, math.sqrt(lam)) + 0.5))


class Load:
    """The load multiplier shared by both arms: ramp + shocks + AR(1) noise, on a 5 s grid."""

    def __init__(self, rng):
        self.shocks = []
        for _ in range(rng.choice([0, 1, 1, 2, 2, 3])):
            at = rng.uniform(DATA_FROM, END)
            self.shocks.append((at, at + rng.uniform(60, 180), rng.uniform(0.3, 1.0), rng.random() < 0.3))
        self.noise = []
        x = 0.0
        for _ in range((DATA_TO - DATA_FROM) // 5 + 2):
            x = 0.9 * x + rng.gauss(0.0, 0.03 * math.sqrt(1 - 0.81))
            self.noise.append(x)

    def at(self, t):
        ramp = 1.0 + 0.3 * (t - DATA_FROM) / (END - DATA_FROM)
        shock = sum(a for s, e, a, _ in self.shocks if s <= t < e)
        k = min(len(self.noise) - 1, max(0, int((t - DATA_FROM) // 5)))
        return max(0.2, (ramp + shock) * math.exp(self.noise[k]))

    def incident(self, t):
        """Error multiplier of a shared incident (both arms)."""
        return 4.0 if any(s <= t < e and inc for s, e, _, inc in self.shocks) else 1.0


def interval_of(t):
    """The analysis interval a time belongs to (0 = warm-up or before)."""
    return max(0, math.ceil((t - START) / INTERVAL))


def regression(scenario, t):
    """The canary's (latency factor, tail share, error factor, cpu factor) at time t."""
    onset = SCENARIOS[scenario][0]
    if onset is None or interval_of(t) < onset:
        return 1.0, 0.0, 1.0, 1.0
    i = interval_of(t)
    if scenario == "lat1.5":
        return 1.5, 0.0, 1.0, 1.0
    if scenario in ("lat2", "late"):
        return 2.0, 0.0, 1.0, 1.0
    if scenario == "tail":
        return 1.0, 0.05, 1.0, 1.0
    if scenario == "err3":
        return 1.0, 0.0, 3.0, 1.0
    if scenario == "cpu1.6":
        return 1.0, 0.0, 1.0, 1.6
    if scenario == "creep":
        return min(2.5, 1.0 + 0.1 * (i - onset + 1)), 0.0, 1.0, 1.0
    raise ValueError(scenario)


def clump_size(rng, bursty):
    if bursty:
        return rng.randint(5, 10)
    return 1 if rng.random() < 0.5 else rng.randint(2, 6)


MEAN_CLUMP = {True: 7.5, False: 2.5}


class Instance:
    """One process of one arm: its offsets, scrape phase and counters."""

    def __init__(self, rng, spec, version, k, scrape):
        self.version = version
        self.name = f"{version}-{k}"
        self.canary = version == "v2"
        self.share = math.exp(rng.gauss(0.0, 0.1))
        self.median = BASE_MEDIAN * math.exp(rng.gauss(0.0, 0.05))
        self.sd = LOG_SD
        self.jitter = 0.0
        self.err = BASE_ERROR * math.exp(rng.gauss(0.0, 0.2))
        self.cpu = CPU_PER_REQ * math.exp(rng.gauss(0.0, 0.03))
        self.mem = MEM_BASE * math.exp(rng.gauss(0.0, 0.05))
        self.mem_noise = 0.0
        self.phase = rng.uniform(0.0, scrape)
        self.edges = ALT_EDGES if (self.canary and spec["scenario"] == "buckets") else FINE_EDGES
        # A baseline has been up for days; a canary process starts at DATA_FROM.
        days = 0.0 if self.canary else rng.uniform(1.0, 5.0) * 86400
        rate = TRAFFIC[spec["traffic"]][0 if self.canary else 1] / 3.0
        n0 = float(int(rate * days))
        self.ok = n0 * (1 - BASE_ERROR)
        self.errors = n0 * BASE_ERROR
        self.buckets = [n0 * STD.cdf(math.log(e / BASE_MEDIAN) / LOG_SD) for e in self.edges] + [n0]
        self.buckets = [float(int(b)) for b in self.buckets]
        self.sum = n0 * BASE_MEDIAN * math.exp(LOG_SD**2 / 2)
        self.cpu_total = days * (CPU_IDLE + rate * CPU_PER_REQ)
        self.started = DATA_FROM
        self.down = None  # (from, to): not scraped; with `restart`, the process restarts at `to`
        self.restarts = False
        self.gap = None  # (from, to): up but not scraped
        self.warmup = False

    def reset(self):
        self.ok = self.errors = self.sum = self.cpu_total = 0.0
        self.buckets = [0.0] * len(self.buckets)


def bucket_probs(edges, median, sd, tail):
    """P(X <= edge) for the lognormal (with a `tail` share x4 slower)."""
    lm = math.log(median)
    k = 1.0 / (sd * SQRT2)
    out = [0.5 * (1.0 + math.erf((math.log(e) - lm) * k)) for e in edges]
    if tail:
        shift = math.log(4.0)
        out = [(1 - tail) * p + tail * 0.5 * (1.0 + math.erf((math.log(e) - lm - shift) * k))
               for p, e in zip(out, edges)]
    return out


def make_instances(rng, spec):
    scrape = spec["scrape"]
    arms = {v: [Instance(rng, spec, v, k, scrape) for k in range(3)] for v in ("v1", "v2")}
    sc = spec["scenario"]
    if sc == "noisy-host":
        h = arms["v1"][rng.randrange(3)]
        h.median *= 1.25
        h.sd = 0.65
        h.jitter = 0.2
        h.err *= 2.0
        h.cpu *= 1.3
    elif sc == "restart":
        h = arms["v2"][rng.randrange(3)]
        at = START + rng.uniform(5 * INTERVAL, 12 * INTERVAL)
        h.down = (at, at + 30.0)
        h.restarts = True
    elif sc == "scrape-gap":
        h = arms["v1"][rng.randrange(3)]
        at = START + rng.uniform(4 * INTERVAL, 12 * INTERVAL)
        h.gap = (at, at + 180.0)
    elif sc == "mem-warmup":
        for h in arms["v2"]:
            h.warmup = True
    return arms


def memory(h, t, rng):
    h.mem_noise = 0.95 * h.mem_noise + rng.gauss(0.0, 0.01 * math.sqrt(1 - 0.95**2))
    level = h.mem * math.exp(h.mem_noise)
    if h.warmup or h.restarts and h.started > DATA_FROM:
        level *= 1.0 - 0.25 * math.exp(-(t - h.started) / 300.0)
    return level


def simulate(spec):
    """Samples of one run: {family: [(series labels, [(t, value), ...]), ...]}."""
    rng = random.Random(spec["seed"])
    load = Load(rng)
    arms = make_instances(rng, spec)
    scrape = spec["scrape"]
    bursty = spec["scenario"] == "bursty"
    out = {"req": [], "hist": [], "cpu": [], "mem": [], "fs": []}
    for version, insts in arms.items():
        rate = TRAFFIC[spec["traffic"]][0 if version == "v2" else 1]
        for h in insts:
            series = _simulate_instance(rng, spec, h, insts, rate, load, scrape, bursty)
            for fam, rows in series.items():
                out[fam].extend(rows)
    return out


def _simulate_instance(rng, spec, h, insts, rate, load, scrape, bursty):
    """One instance's series over the whole window, scrape by scrape."""
    base = f'run="{spec["run"]}",version="{h.version}",instance="{h.name}"'
    times = []
    t = DATA_FROM + h.phase
    while t <= DATA_TO:
        times.append(round(t, 3))
        t += scrape
    req_ok, req_err, buckets, counts, sums, cpu, mem = [], [], [], [], [], [], []
    prev = DATA_FROM
    for t in times:
        mid = (prev + t) / 2
        dt = t - prev
        prev = t
        if h.down and h.down[0] <= t < h.down[1]:
            continue  # down: no traffic, no scrape
        if h.restarts and h.down and t >= h.down[1] and h.started < h.down[1]:
            h.reset()
            h.started = h.down[1]
            dt = t - h.down[1]
        up = [g for g in insts if not (g.down and g.down[0] <= mid < g.down[1])]
        share = h.share / sum(g.share for g in up)
        lat, tail, errf, cpuf = regression(spec["scenario"], mid) if h.canary else (1.0, 0.0, 1.0, 1.0)
        L = load.at(mid)
        lam = rate * share * L * dt
        median = h.median * (1 + 0.2 * (L - 1)) * lat
        if h.jitter:
            median *= math.exp(rng.gauss(0.0, h.jitter))
        probs = bucket_probs(h.edges, median, h.sd, tail)
        prev_p = 0.0
        cum = 0
        for i, p in enumerate(probs):
            cum += poisson(rng, lam * max(0.0, p - prev_p))
            prev_p = p
            h.buckets[i] += cum
        n = cum + poisson(rng, lam * max(0.0, 1.0 - prev_p))
        h.buckets[-1] += n
        clumps = poisson(rng, lam * h.err * errf * load.incident(mid) / MEAN_CLUMP[bursty])
        e = min(n, sum(clump_size(rng, bursty) for _ in range(clumps)))
        h.errors += e
        h.ok += n - e
        mean_lat = median * math.exp(h.sd**2 / 2) * (1 + 3 * tail)
        h.sum += n * mean_lat
        h.cpu_total += dt * CPU_IDLE * math.exp(rng.gauss(0, 0.05)) + n * h.cpu * cpuf * math.exp(rng.gauss(0, 0.02))
        level = memory(h, t, rng)
        if h.gap and h.gap[0] <= t < h.gap[1]:
            continue  # up, not scraped
        req_ok.append((t, h.ok))
        req_err.append((t, h.errors))
        buckets.append((t, list(h.buckets)))
        counts.append((t, h.buckets[-1]))
        sums.append((t, h.sum))
        cpu.append((t, h.cpu_total))
        mem.append((t, level))
    edges = [_le(e) for e in h.edges] + ["+Inf"]
    return {
        "req": [(base + ',code="200"', req_ok), (base + ',code="500"', req_err)],
        "hist": [("b", base, edges, buckets), ("c", base, counts), ("s", base, sums)],
        "cpu": [(base, cpu)],
        "mem": [(base, mem)],
        "fs": [(base, [(t, 0.0) for t, _ in mem])],
    }


def _le(e):
    return repr(float(e))


# ---------------------------------------------------------------------------------------------
# OpenMetrics text

FAMILIES = [
    ("req", "# HELP http_requests Requests.\n# TYPE http_requests counter\n"),
    ("hist", "# HELP http_request_duration_seconds Latency.\n# TYPE http_request_duration_seconds histogram\n"),
    ("cpu", "# HELP process_cpu_seconds CPU.\n# TYPE process_cpu_seconds counter\n"),
    ("mem", "# HELP process_resident_memory_bytes Memory.\n# TYPE process_resident_memory_bytes gauge\n"),
    ("fsa", "# HELP node_filesystem_avail_bytes Free.\n# TYPE node_filesystem_avail_bytes gauge\n"),
    ("fss", "# HELP node_filesystem_size_bytes Size.\n# TYPE node_filesystem_size_bytes gauge\n"),
]

FS = ',fstype="ext4",mountpoint="/"'


def render(samples):
    """{family key: text} for one run."""
    req = []
    for labels, points in samples["req"]:
        head = f"http_requests_total{{{labels}}} "
        req.extend(f"{head}{v:.0f} {t}\n" for t, v in points)
    hist = []
    for row in samples["hist"]:
        if row[0] == "b":
            _, base, edges, points = row
            stamps = [f" {t}\n" for t, _ in points]
            for i, le in enumerate(edges):
                head = f'http_request_duration_seconds_bucket{{{base},le="{le}"}} '
                hist.extend(head + str(int(b[i])) + ts for (_, b), ts in zip(points, stamps))
        elif row[0] == "c":
            hist.extend(f"http_request_duration_seconds_count{{{row[1]}}} {v:.0f} {t}\n" for t, v in row[2])
        else:
            hist.extend(f"http_request_duration_seconds_sum{{{row[1]}}} {v:.3f} {t}\n" for t, v in row[2])
    cpu = [f"process_cpu_seconds_total{{{b}}} {v:.3f} {t}\n" for b, pts in samples["cpu"] for t, v in pts]
    mem = [f"process_resident_memory_bytes{{{b}}} {v:.0f} {t}\n" for b, pts in samples["mem"] for t, v in pts]
    fsa = [f"node_filesystem_avail_bytes{{{b}{FS}}} 4e10 {t}\n" for b, pts in samples["fs"] for t, _ in pts]
    fss = [f"node_filesystem_size_bytes{{{b}{FS}}} 1e11 {t}\n" for b, pts in samples["fs"] for t, _ in pts]
    return {"req": "".join(req), "hist": "".join(hist), "cpu": "".join(cpu), "mem": "".join(mem),
            "fsa": "".join(fsa), "fss": "".join(fss)}


def write_openmetrics(specs, path):
    """Writes the runs' series to `path` (families kept together, as OpenMetrics requires)."""
    parts = {k: open(f"{path}.{k}.part", "w") for k, _ in FAMILIES}
    try:
        for spec in specs:
            for k, text in render(simulate(spec)).items():
                parts[k].write(text)
    finally:
        for f in parts.values():
            f.close()
    with open(path, "w") as out:
        for k, header in FAMILIES:
            out.write(header)
            with open(f"{path}.{k}.part") as f:
                while True:
                    chunk = f.read(1 << 22)
                    if not chunk:
                        break
                    out.write(chunk)
            os.remove(f"{path}.{k}.part")
        out.write("# EOF\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="OpenMetrics file to write")
    ap.add_argument("--manifest", help="JSON list of the runs (scenario, traffic, scrape, onset)")
    ap.add_argument("--runs", type=int, default=20, help="runs per cell")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--shard", default="0/1", help="k/n: write every n-th run starting at k")
    args = ap.parse_args()
    k, n = (int(x) for x in args.shard.split("/"))
    specs = run_specs(args.runs, args.seed)[k::n]
    write_openmetrics(specs, args.out)
    if args.manifest:
        with open(args.manifest, "w") as f:
            json.dump(specs, f, indent=1)
    print(f"{len(specs)} runs -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
