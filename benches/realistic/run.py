#!/usr/bin/env python3
"""The realistic judge benchmark (issue 11): generate production-shaped history, backfill it
into a real Prometheus with promtool, replay every run through `canaryd backtest` with each
judge and through the reference judge, and score every cell.

    python3 benches/realistic/run.py --out /tmp/realistic.md

See README.md next to this file for the scenarios and what the numbers mean.
"""

import argparse
import concurrent.futures
import gzip
import json
import math
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone

import gen
import reference

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Realistic judge benchmark (see README.md).")
    ap.add_argument("--canaryd", default=os.path.join(REPO, "target", "debug", "canaryd"),
                    help="the canaryd binary to test (default: target/debug/canaryd)")
    ap.add_argument("--rules", default=os.path.join(REPO, "rules", "http-service.yaml"),
                    help="rule file of the sequential judge (default: the shipped http-service pack)")
    ap.add_argument("--kayenta-rules", default=os.path.join(HERE, "rules", "kayenta.yaml"))
    ap.add_argument("--flagger-rules", default=os.path.join(HERE, "rules", "flagger.yaml"))
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=RULES",
                    help="another canaryd column: a label and a rule file (repeatable)")
    ap.add_argument("--judges", default="sequential,kayenta,flagger,reference",
                    help="comma-separated columns to run (extra columns are always run)")
    ap.add_argument("--runs", type=int, default=20, help="runs per cell (default 20)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 3 runs per cell")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scenarios", help="only these scenarios (comma-separated)")
    ap.add_argument("--traffic", help="only these traffic cells (comma-separated: 2rps,20rps,100rps,10pct)")
    ap.add_argument("--scrapes", help="only these scrape intervals in seconds (comma-separated: 15,30,60)")
    ap.add_argument("--data-dir", help="keep the backfilled Prometheus data here and reuse it on the next "
                    "run with the same --runs and --seed (replay only: much faster for comparing binaries)")
    ap.add_argument("--alpha", type=float, default=0.05, help="the reference judge's alpha")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", help="write the Markdown report here")
    ap.add_argument("--json", help="write every run's result (JSON lines) here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--from-json", metavar="FILE", help="only render the report of an earlier --json file")
    ap.add_argument("--compare", metavar="FILE", help="add a before/after comparison with an earlier --json file "
                    "(e.g. benches/realistic/BASELINE.jsonl.gz, main before the issue-11 fixes)")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs = min(args.runs, 3)
    return args


# ---------------------------------------------------------------------------------------------
# Data: generate, backfill, serve

def _write_shard(job):
    specs, path = job
    gen.write_openmetrics(specs, path)
    return path


def generate(specs, tmp, workers):
    """OpenMetrics shards, one per worker."""
    jobs = [(specs[k::workers], os.path.join(tmp, f"shard{k}.om")) for k in range(workers)]
    with multiprocessing.Pool(workers) as pool:
        return pool.map(_write_shard, jobs)


def backfill(paths, tmp):
    """Runs promtool on every shard (concurrently) and gathers the blocks in one data dir."""
    data = os.path.join(tmp, "data")
    os.makedirs(data)
    procs = []
    for k, p in enumerate(paths):
        out = os.path.join(tmp, f"blocks{k}")
        log = open(os.path.join(tmp, f"promtool{k}.log"), "w")
        procs.append((subprocess.Popen(["promtool", "tsdb", "create-blocks-from", "openmetrics", p, out],
                                       stdout=log, stderr=subprocess.STDOUT), out, log, p))
    for proc, out, log, p in procs:
        rc = proc.wait()
        log.close()
        if rc != 0:
            sys.exit(f"promtool failed on {p}: see {log.name}")
        for block in os.listdir(out):
            shutil.move(os.path.join(out, block), os.path.join(data, block))
        os.rmdir(out)
        os.remove(p)
    return data


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_prometheus(tmp, data):
    """Prometheus on the backfilled data, on a free loopback port; (process, url)."""
    config = os.path.join(tmp, "prometheus.yml")
    with open(config, "w") as f:
        f.write("global:\n  scrape_interval: 1m\nscrape_configs: []\n")
    for _ in range(3):
        port = free_port()
        log = open(os.path.join(tmp, "prometheus.log"), "w")
        proc = subprocess.Popen([
            "prometheus", f"--config.file={config}", f"--storage.tsdb.path={data}",
            "--storage.tsdb.retention.time=3650d", f"--web.listen-address=127.0.0.1:{port}",
        ], stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return proc, url
            except OSError:
                time.sleep(0.2)
        proc.kill()
        proc.wait()
    sys.exit(f"prometheus did not start; see {os.path.join(tmp, 'prometheus.log')}")


# ---------------------------------------------------------------------------------------------
# Judges

def fired_metrics(doc):
    """Names of the scored metrics that failed in the deciding interval."""
    at = doc.get("decided_at_interval")
    for iv in doc.get("intervals", []):
        if iv.get("index") == at:
            names = [m["name"] for m in iv.get("metrics", []) if m.get("verdict") == "fail" and not m.get("dry_run")]
            if names:
                return "+".join(names)
    reasons = doc.get("reasons") or [""]
    return reasons[0].split(":")[0] or "?"


def run_canaryd(binary, rules, url, spec):
    cmd = [binary, "backtest", "--rules", rules, "--prometheus", url, "--labels", f"run={spec['run']}",
           "--canary-labels", "version=v2", "--baseline-labels", "version=v1",
           "--start", str(gen.START), "--end", str(gen.END), "--interval", "1m", "--format", "json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        return {"decision": "error", "at": None, "metric": None, "reason": (p.stderr or p.stdout).strip()[-300:]}
    doc = json.loads(p.stdout)
    out = {"decision": doc["decision"], "at": doc["decided_at_interval"], "metric": None,
           "reason": (doc.get("reasons") or [""])[0], "ended_by": doc.get("ended_by")}
    if doc["decision"] == "rollback":
        out["metric"] = fired_metrics(doc)
    return out


def run_reference(url, spec, alpha):
    series = reference.fetch(url, spec["run"], gen.END, gen.END - gen.DATA_FROM + 60)
    r = reference.judge(series, gen.START, gen.INTERVAL, gen.N_INTERVALS, alpha)
    return {"decision": r["decision"], "at": r["decided_at_interval"], "metric": r["metric"], "reason": r["reason"]}


def judges(args, python_pool):
    """[(column name, callable(url, spec) -> result)]; the reference judge runs in
    `python_pool`'s processes (Python threads would share one core)."""
    cols = []
    wanted = [j.strip() for j in args.judges.split(",") if j.strip()]
    files = {"sequential": args.rules, "kayenta": args.kayenta_rules, "flagger": args.flagger_rules}
    for j in wanted:
        if j in files:
            cols.append((j, lambda url, spec, f=files[j]: run_canaryd(args.canaryd, f, url, spec)))
        elif j == "reference":
            cols.append((j, lambda url, spec: python_pool.submit(run_reference, url, spec, args.alpha).result()))
        else:
            sys.exit(f"unknown judge {j}")
    for e in args.extra:
        name, _, path = e.partition("=")
        if not name or not path:
            sys.exit(f"--extra {e!r}: expected NAME=RULES")
        cols.append((name, lambda url, spec, f=path: run_canaryd(args.canaryd, f, url, spec)))
    if not cols:
        sys.exit("no judge to run (--judges, --extra)")
    return cols


def replay_all(specs, cols, url, workers):
    """{(run, judge): result}, runs replayed concurrently."""
    results = {}
    jobs = [(spec, name, fn) for spec in specs for name, fn in cols]

    def one(job):
        spec, name, fn = job
        try:
            return spec["run"], name, fn(url, spec)
        except Exception as e:  # a broken run is reported, not fatal
            return spec["run"], name, {"decision": "error", "at": None, "metric": None, "reason": repr(e)}

    done = 0
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for run, name, r in pool.map(one, jobs):
            results[(run, name)] = r
            done += 1
            if done % 200 == 0:
                print(f"  {done}/{len(jobs)} replays", file=sys.stderr)
    return results


# ---------------------------------------------------------------------------------------------
# Scoring

def classify(spec, r):
    """healthy: 'false' | 'ok'; regression: 'detected' | 'early' | 'missed'; or 'error'."""
    if r["decision"] == "error":
        return "error"
    rolled = r["decision"] == "rollback"
    if spec["onset"] is None:
        return "false" if rolled else "ok"
    if not rolled:
        return "missed"
    return "detected" if r["at"] >= spec["onset"] else "early"


def wilson(k, n, z=1.96):
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def pct(k, n):
    return f"{100.0 * k / n:.1f}%" if n else "-"


def fired_summary(rs):
    counts = {}
    for r in rs:
        if r["decision"] == "rollback":
            counts[r["metric"]] = counts.get(r["metric"], 0) + 1
    return " ".join(f"{m}:{c}" for m, c in sorted(counts.items(), key=lambda kv: -kv[1]))


def cell_text(spec0, rs):
    n = len(rs)
    kinds = [classify(spec0, r) for r in rs]
    inc = sum(1 for r in rs if r["decision"] == "inconclusive")
    err = kinds.count("error")
    extra = (f" · inconclusive {inc}" if inc else "") + (f" · errors {err}" if err else "")
    fired = fired_summary(rs)
    if spec0["onset"] is None:
        k = kinds.count("false")
        return f"**{k}/{n}** ({pct(k, n)})" + (f" · {fired}" if fired else "") + extra
    k = kinds.count("detected")
    delays = [r["at"] - spec0["onset"] + 1 for r, c in zip(rs, kinds) if c == "detected"]
    med = f" · med {statistics.median(delays):g}" if delays else ""
    early = kinds.count("early")
    return (f"**{k}/{n}** ({pct(k, n)}){med}" + (f" · early {early}" if early else "")
            + (f" · {fired}" if fired else "") + extra)


def by_cell(specs):
    cells = {}
    for s in specs:
        cells.setdefault((s["scenario"], s["traffic"], s["scrape"]), []).append(s)
    return cells


def totals(specs, results, names, select=lambda s: True):
    rows = []
    for name in names:
        hs = [(s, results[(s["run"], name)]) for s in specs if s["onset"] is None and select(s)]
        rg = [(s, results[(s["run"], name)]) for s in specs if s["onset"] is not None and select(s)]
        fr = sum(1 for s, r in hs if classify(s, r) == "false")
        lo, hi = wilson(fr, len(hs))
        worst = _worst_cell(hs)
        det = [(s, r) for s, r in rg if classify(s, r) == "detected"]
        early = sum(1 for s, r in rg if classify(s, r) == "early")
        strong = [(s, r) for s, r in rg if s["traffic"] != "2rps"]
        det_strong = sum(1 for s, r in strong if classify(s, r) == "detected")
        delays = [r["at"] - s["onset"] + 1 for s, r in det]
        inc = sum(1 for _, r in hs + rg if r["decision"] == "inconclusive")
        err = sum(1 for _, r in hs + rg if r["decision"] == "error")
        fired = fired_summary([r for _, r in hs])
        promoted = [r["at"] for _, r in hs if r["decision"] == "promote" and r["at"] is not None]
        prom = f"{len(promoted)}/{len(hs)}" + (f", median {statistics.median(promoted):g}" if promoted else "")
        rows.append(
            f"| {name} | **{pct(fr, len(hs))}** ({fr}/{len(hs)}; 95% CI {100 * lo:.1f}-{100 * hi:.1f}%)"
            + (f" {fired}" if fired else "")
            + f" | {worst} | **{pct(len(det), len(rg))}** ({len(det)}/{len(rg)})"
            + f" | {pct(det_strong, len(strong))} ({det_strong}/{len(strong)}) | {early}"
            + f" | {statistics.median(delays) if delays else '-'} | {prom} | {inc} | {err} |")
    return rows


def _worst_cell(hs):
    cells = {}
    for s, r in hs:
        k = (s["scenario"], s["traffic"], s["scrape"])
        a, n = cells.get(k, (0, 0))
        cells[k] = (a + (classify(s, r) == "false"), n + 1)
    if not cells:
        return "-"
    k, (a, n) = max(cells.items(), key=lambda kv: kv[1][0] / kv[1][1])
    return f"{a}/{n} {k[0]} {k[1]} {k[2]}s" if a else "none"


TOTALS_HEADER = ("| judge | false rollbacks, healthy | worst healthy cell | detection (rollback at or after onset)"
                 " | detection at >= 20 req/s | early rollbacks (before onset) | median intervals to detect"
                 " | healthy runs promoted early (interval) | inconclusive runs | errors |"
                 "\n|---|---|---|---|---|---|---|---|---|---|")


def report(specs, results, names, meta):
    out = [f"# Realistic judge benchmark\n\n{meta}\n"]
    out.append("## Totals\n")
    for title, sel in [("all cells", lambda s: True), ("15 s scrapes", lambda s: s["scrape"] == 15),
                       ("30 s scrapes (20 req/s)", lambda s: s["scrape"] == 30),
                       ("60 s scrapes (20 req/s)", lambda s: s["scrape"] == 60)]:
        if not any(sel(s) for s in specs):
            continue
        out.append(f"### {title}\n\n{TOTALS_HEADER}")
        out.extend(totals(specs, results, names, sel))
        out.append("")
    out.append("## Every cell\n")
    out.append("Healthy cells: false rollbacks. Regression cells: detected (rollback at or after onset), "
               "median intervals from onset to detection (onset interval = 1), early = rollbacks before "
               "onset (counted as false), then which metric fired (all rollbacks).\n")
    out.append("| scenario | traffic | scrape | onset | " + " | ".join(names) + " |")
    out.append("|---|---|---|---|" + "---|" * len(names))
    for (scenario, traffic, scrape), ss in by_cell(specs).items():
        onset = ss[0]["onset"]
        cols = [cell_text(ss[0], [results[(s["run"], n)] for s in ss]) for n in names]
        out.append(f"| {scenario} | {traffic} | {scrape}s | {onset if onset else 'healthy'} | " + " | ".join(cols) + " |")
    out.append("\n## Scenarios\n")
    for s, (onset, desc) in gen.SCENARIOS.items():
        out.append(f"- `{s}`: {desc}" + (f" (onset interval {onset})" if onset else " (healthy)"))
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------

def select(specs, args):
    """The runs the filters keep."""
    def keep(value, arg):
        return arg is None or str(value) in [a.strip() for a in arg.split(",")]
    return [s for s in specs if keep(s["scenario"], args.scenarios) and keep(s["traffic"], args.traffic)
            and keep(s["scrape"], args.scrapes)]


def generator_hash():
    import hashlib
    with open(os.path.join(HERE, "gen.py"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def reusable_data(args, all_specs):
    """The data dir of an earlier run with the same corpus, or None (then --data-dir is emptied)."""
    if not args.data_dir:
        return None
    manifest = os.path.join(args.data_dir, "manifest.json")
    try:
        with open(manifest) as f:
            m = json.load(f)
        if m == {"runs": args.runs, "seed": args.seed, "generator": generator_hash()}:
            return os.path.join(args.data_dir, "data")
    except (OSError, ValueError):
        m = None
    if os.path.isdir(args.data_dir) and os.listdir(args.data_dir):
        if m is None:
            sys.exit(f"--data-dir {args.data_dir} is not empty and holds no benchmark data: refusing to replace it")
        shutil.rmtree(args.data_dir)
    os.makedirs(args.data_dir, exist_ok=True)
    return None


def git_commit():
    """HEAD of the checkout, and the last commit that changed canaryd's code or shipped rules."""
    def git(*a):
        return subprocess.run(["git", "-C", REPO, *a], capture_output=True, text=True, check=True).stdout.strip()
    try:
        head = git("rev-parse", "--short=12", "HEAD")
        code = git("log", "-1", "--format=%h", "--", "src", "Cargo.toml", "Cargo.lock", "rules")
        return f"{head}` (code and rules last changed in `{code}`)"
    except (OSError, subprocess.CalledProcessError):
        return "unknown`"


def load_json(path):
    """(specs by run, {(run, judge): result}, judge names) of a --json file (plain or .gz)."""
    specs, results, names = {}, {}, []
    keys = ("run", "scenario", "traffic", "scrape", "onset")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        for line in f:
            r = json.loads(line)
            specs.setdefault(r["run"], {k: r[k] for k in keys})
            if r["judge"] not in names:
                names.append(r["judge"])
            results[(r["run"], r["judge"])] = {k: r.get(k) for k in ("decision", "at", "metric", "reason")}
    return specs, results, names


def rerender(args):
    """The report of an earlier run's --json lines (no generation, no replay)."""
    specs, results, names = load_json(args.from_json)
    meta = f"Re-rendered from `{os.path.basename(args.from_json)}`."
    current = set(gen.cells())
    kept = [s for s in specs.values() if (s["scenario"], s["traffic"], s["scrape"]) in current]
    finish(args, select(kept, args), results, names, meta)


def comparison(specs, results, names, path):
    """Before (the --compare file) and after, for the judges and runs both have."""
    b_specs, b_results, b_names = load_json(path)
    both = [n for n in names if n in b_names]
    runs = [s for s in specs if s["run"] in b_specs]
    if not both or not runs:
        return f"\n## Compared with `{os.path.basename(path)}`\n\nNothing in common.\n"
    out = [f"\n## Compared with `{os.path.basename(path)}` (before -> after)\n",
           f"### Totals over the {len(runs)} runs both have\n", TOTALS_HEADER]
    for n in both:
        before = totals(runs, b_results, [n])[0].replace(f"| {n} |", f"| {n}, before |", 1)
        after = totals(runs, results, [n])[0].replace(f"| {n} |", f"| {n}, after |", 1)
        out += [before, after]
    out.append("\n### Cells that changed\n")
    out.append("| scenario | traffic | scrape | onset | judge | before | after |\n|---|---|---|---|---|---|---|")
    for (scenario, traffic, scrape), ss in by_cell(runs).items():
        onset = ss[0]["onset"]
        for n in both:
            old = cell_text(ss[0], [b_results[(s["run"], n)] for s in ss])
            new = cell_text(ss[0], [results[(s["run"], n)] for s in ss])
            if old != new:
                out.append(f"| {scenario} | {traffic} | {scrape}s | {onset or 'healthy'} | {n} | {old} | {new} |")
    return "\n".join(out) + "\n"


def finish(args, specs, results, names, meta):
    """Prints the report (and the comparison) and writes --out."""
    text = report(specs, results, names, meta)
    if args.compare:
        text += comparison(specs, results, names, args.compare)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


def main():
    args = parse_args()
    if args.from_json:
        return rerender(args)
    for tool in ("promtool", "prometheus"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (apt-get install prometheus)")
    python_pool = concurrent.futures.ProcessPoolExecutor(
        max(1, args.workers), mp_context=multiprocessing.get_context("spawn"))
    cols = judges(args, python_pool)
    if any(n != "reference" for n, _ in cols) and not os.access(args.canaryd, os.X_OK):
        sys.exit(f"{args.canaryd} is not an executable (cargo build, or --canaryd PATH)")
    all_specs = gen.run_specs(args.runs, args.seed)
    specs = select(all_specs, args)
    if not specs:
        sys.exit("no run matches the filters")
    names = [n for n, _ in cols]
    t0 = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="canaryd-realistic-")
    proc = None
    t_gen = t_fill = 0.0
    try:
        data = reusable_data(args, all_specs)
        if data is None:
            # Generate what is replayed; with --data-dir everything, so the data can be reused.
            to_write = all_specs if args.data_dir else specs
            where = args.data_dir or tmp
            print(f"generating {len(to_write)} runs in {where}", file=sys.stderr)
            paths = generate(to_write, where, max(1, args.workers))
            t_gen = time.monotonic() - t0
            print(f"backfilling ({t_gen:.0f}s so far)", file=sys.stderr)
            data = backfill(paths, where)
            t_fill = time.monotonic() - t0 - t_gen
            if args.data_dir:
                with open(os.path.join(args.data_dir, "manifest.json"), "w") as f:
                    json.dump({"runs": args.runs, "seed": args.seed, "generator": generator_hash()}, f)
        else:
            print(f"reusing the data in {data}", file=sys.stderr)
        proc, url = start_prometheus(tmp, data)
        print(f"prometheus at {url}; replaying {len(specs)} runs x {len(cols)} judges", file=sys.stderr)
        t1 = time.monotonic()
        results = replay_all(specs, cols, url, max(1, args.workers))
        t_replay = time.monotonic() - t1
    finally:
        python_pool.shutdown()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    total = time.monotonic() - t0
    meta = (f"Run {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, canaryd `{args.canaryd}` at commit "
            f"`{git_commit()}, sequential rules `{os.path.relpath(args.rules, REPO)}`, seed {args.seed}, "
            f"{args.runs} runs per cell, {len(specs)} runs, alpha of the reference judge {args.alpha}. "
            f"Time: {total:.0f}s (generate {t_gen:.0f}s, backfill {t_fill:.0f}s, replay {t_replay:.0f}s) "
            f"with {args.workers} workers.")
    finish(args, specs, results, names, meta)
    if args.json:
        with open(args.json, "w") as f:
            for s in specs:
                for n in names:
                    f.write(json.dumps({**s, "judge": n, **results[(s["run"], n)]}) + "\n")


if __name__ == "__main__":
    main()
