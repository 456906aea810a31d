//! A labelled corpus of simulated canaries, and the benchmark that runs every judge over it.
//!
//! Not part of the product library: included by `benches/judges.rs` and, for its quick-mode
//! tests, by `tests/judge_corpus.rs`.
//!
//! The generator follows `JUDGE.md` ("Benchmark for judges"): 3 instances per arm, 20 one-minute
//! intervals, low (2 req/s per arm), high (100 req/s per arm) and unequal (10% of 200 req/s on
//! the canary) traffic, shared load drift with shocks, lognormal latency (median 100 ms, log-sd
//! 0.5) in fine exponential buckets (×1.05), 0.1% errors, CPU per request and memory gauges,
//! per-instance offsets. It produces exactly what the judges see live (one [`IntervalData`] per
//! interval, with per-instance detail), so the benchmark runs the real judge code.
//!
//! Scenarios are labelled: healthy (must not roll back), gray (+10% latency: reported, not
//! scored), regressions (must roll back). An oracle SPRT that knows the true effect gives the
//! lower bound on time-to-detect for the latency and error cells.

use canaryd::judge::{
    ArmSample, Decision, IntervalData, JudgeState, Observation, Outcome, Sample, update,
};
use canaryd::rules::{RuleSet, parse_rule_set};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::f64::consts::PI;

/// Intervals per simulated canary.
pub const INTERVALS: u32 = 20;
/// Instances per arm.
pub const INSTANCES: usize = 3;
const BASE_LATENCY: f64 = 0.1;
const LATENCY_SIGMA: f64 = 0.5;
const BASE_ERROR: f64 = 0.001;
const CPU_PER_REQUEST: f64 = 0.002;
const MEMORY: f64 = 200e6;

/// Traffic levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Traffic {
    /// 2 req/s per arm.
    Low,
    /// 100 req/s per arm.
    High,
    /// 200 req/s in all, 10% of it on the canary.
    Unequal,
}

impl Traffic {
    /// All levels.
    pub const ALL: [Traffic; 3] = [Traffic::Low, Traffic::High, Traffic::Unequal];

    /// Requests per second (canary, baseline).
    fn rates(self) -> (f64, f64) {
        match self {
            Traffic::Low => (2.0, 2.0),
            Traffic::High => (100.0, 100.0),
            Traffic::Unequal => (20.0, 180.0),
        }
    }

    /// The level's name.
    pub fn name(self) -> &'static str {
        match self {
            Traffic::Low => "low",
            Traffic::High => "high",
            Traffic::Unequal => "unequal-10%",
        }
    }
}

/// What happens to the canary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Identical arms, steady load.
    Calm,
    /// Identical arms, +30% load ramp with shocks (both arms).
    Drift,
    /// Drift plus larger fixed differences between instances.
    InstanceDifferences,
    /// One canary instance on a noisy host (+40% latency, +50% CPU).
    NoisyNeighbourCanary,
    /// One baseline instance on a noisy host.
    NoisyNeighbourBaseline,
    /// +10% latency: a gray area, reported, not scored.
    Gray10,
    /// +25% latency.
    Latency25,
    /// +50% latency.
    Latency50,
    /// +100% latency.
    Latency100,
    /// Errors ×2.
    Errors2,
    /// Errors ×5.
    Errors5,
    /// Errors ×10.
    Errors10,
    /// Memory grows 3% per interval.
    MemoryLeak,
    /// CPU per request +50%.
    Cpu50,
    /// +50% latency from interval 8.
    LateOnset,
    /// Latency creeping from +0% to +100% over the run.
    Creep,
    /// Errors ×10 in a random 30% of intervals.
    BurstyErrors,
}

/// A scenario's label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// Must not roll back.
    Healthy,
    /// Not scored.
    Gray,
    /// Must roll back.
    Regression,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 17] = [
        Scenario::Calm,
        Scenario::Drift,
        Scenario::InstanceDifferences,
        Scenario::NoisyNeighbourCanary,
        Scenario::NoisyNeighbourBaseline,
        Scenario::Gray10,
        Scenario::Latency25,
        Scenario::Latency50,
        Scenario::Latency100,
        Scenario::Errors2,
        Scenario::Errors5,
        Scenario::Errors10,
        Scenario::MemoryLeak,
        Scenario::Cpu50,
        Scenario::LateOnset,
        Scenario::Creep,
        Scenario::BurstyErrors,
    ];

    /// The scenario's label.
    pub fn label(self) -> Label {
        match self {
            Scenario::Calm
            | Scenario::Drift
            | Scenario::InstanceDifferences
            | Scenario::NoisyNeighbourCanary
            | Scenario::NoisyNeighbourBaseline => Label::Healthy,
            Scenario::Gray10 => Label::Gray,
            _ => Label::Regression,
        }
    }

    /// The scenario's name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Calm => "healthy: calm",
            Scenario::Drift => "healthy: drift",
            Scenario::InstanceDifferences => "healthy: drift + instance differences",
            Scenario::NoisyNeighbourCanary => "healthy: noisy neighbour in canary",
            Scenario::NoisyNeighbourBaseline => "healthy: noisy neighbour in baseline",
            Scenario::Gray10 => "gray: latency +10%",
            Scenario::Latency25 => "latency +25%",
            Scenario::Latency50 => "latency +50%",
            Scenario::Latency100 => "latency +100%",
            Scenario::Errors2 => "errors x2",
            Scenario::Errors5 => "errors x5",
            Scenario::Errors10 => "errors x10",
            Scenario::MemoryLeak => "memory leak +3%/interval",
            Scenario::Cpu50 => "cpu +50%",
            Scenario::LateOnset => "latency +50% from interval 8",
            Scenario::Creep => "latency creep to +100%",
            Scenario::BurstyErrors => "bursty errors x10 (30%)",
        }
    }

    /// The first interval (1-based) the regression is present.
    pub fn onset(self) -> u32 {
        match self {
            Scenario::LateOnset => 8,
            _ => 1,
        }
    }

    fn drift(self) -> bool {
        !matches!(self, Scenario::Calm)
    }
}

/// Effects on the canary in interval `t` (1-based).
#[derive(Clone, Copy, Debug)]
struct Effect {
    latency: f64,
    errors: f64,
    cpu: f64,
    leak_per_interval: f64,
}

fn effect(s: Scenario, t: u32, burst: bool) -> Effect {
    let mut e = Effect {
        latency: 1.0,
        errors: 1.0,
        cpu: 1.0,
        leak_per_interval: 0.0,
    };
    match s {
        Scenario::Gray10 => e.latency = 1.1,
        Scenario::Latency25 => e.latency = 1.25,
        Scenario::Latency50 => e.latency = 1.5,
        Scenario::Latency100 => e.latency = 2.0,
        Scenario::Errors2 => e.errors = 2.0,
        Scenario::Errors5 => e.errors = 5.0,
        Scenario::Errors10 => e.errors = 10.0,
        Scenario::MemoryLeak => e.leak_per_interval = 0.03,
        Scenario::Cpu50 => e.cpu = 1.5,
        Scenario::LateOnset if t >= 8 => e.latency = 1.5,
        Scenario::Creep => e.latency = 1.0 + (t - 1) as f64 / (INTERVALS - 1) as f64,
        Scenario::BurstyErrors if burst => e.errors = 10.0,
        _ => {}
    }
    e
}

// ---------------------------------------------------------------------------------------------
// Sampling.

fn normal(rng: &mut SmallRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

fn poisson(rng: &mut SmallRng, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda > 50.0 {
        return (lambda + lambda.sqrt() * normal(rng)).round().max(0.0) as u64;
    }
    let limit = (-lambda).exp();
    let mut k = 0;
    let mut p = rng.random::<f64>();
    while p > limit {
        k += 1;
        p *= rng.random::<f64>();
    }
    k
}

fn binomial(rng: &mut SmallRng, n: u64, p: f64) -> u64 {
    let p = p.clamp(0.0, 1.0);
    if n == 0 || p == 0.0 {
        return 0;
    }
    if n < 64 {
        return (0..n).filter(|_| rng.random::<f64>() < p).count() as u64;
    }
    let mean = n as f64 * p;
    if mean < 30.0 {
        return poisson(rng, mean).min(n);
    }
    let sd = (mean * (1.0 - p)).sqrt();
    (mean + sd * normal(rng)).round().clamp(0.0, n as f64) as u64
}

/// Bucket edges: 5 ms × 1.05^k up to 20 s, then +Inf.
fn edges() -> &'static [f64] {
    static EDGES: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    EDGES.get_or_init(|| {
        let mut e: Vec<f64> = vec![0.005];
        while *e.last().unwrap() < 20.0 {
            let next = e.last().unwrap() * 1.05;
            e.push((next * 1e6).round() / 1e6);
        }
        e
    })
}

/// `n` lognormal latencies (median `median`), as cumulative buckets.
fn latency_buckets(rng: &mut SmallRng, n: u64, median: f64) -> Vec<(f64, f64)> {
    let e = edges();
    let mut counts = vec![0u64; e.len() + 1];
    let (ln0, lng) = (e[0].ln(), 1.05f64.ln());
    let mu = median.ln();
    for _ in 0..n {
        let x = mu + LATENCY_SIGMA * normal(rng);
        let k = ((x - ln0) / lng).ceil();
        let i = if k <= 0.0 {
            0
        } else {
            (k as usize).min(e.len())
        };
        // Rounded edges: step to the right bucket when the rounding moved the edge.
        let i = if i < e.len() && x > e[i].ln() {
            i + 1
        } else {
            i
        };
        counts[i.min(e.len())] += 1;
    }
    let mut cum = 0.0;
    let mut out = Vec::with_capacity(e.len() + 1);
    for (i, c) in counts.iter().enumerate() {
        cum += *c as f64;
        let le = if i < e.len() { e[i] } else { f64::INFINITY };
        out.push((le, cum));
    }
    out
}

fn add_buckets(into: &mut Vec<(f64, f64)>, b: &[(f64, f64)]) {
    if into.is_empty() {
        *into = b.to_vec();
    } else {
        for (x, y) in into.iter_mut().zip(b) {
            x.1 += y.1;
        }
    }
}

/// Fixed per-instance traits of one simulated run.
struct Instance {
    latency: f64,
    errors: f64,
    cpu: f64,
    memory: f64,
}

fn instances(rng: &mut SmallRng, spread: f64) -> Vec<Instance> {
    (0..INSTANCES)
        .map(|_| Instance {
            latency: (spread * normal(rng)).exp(),
            errors: (4.0 * spread * normal(rng)).exp(),
            cpu: (spread * normal(rng)).exp(),
            memory: (spread * normal(rng)).exp(),
        })
        .collect()
}

/// One simulated canary: what the judge sees each interval, and the canary requests served.
pub struct Run {
    /// The baseline's interval before the canary started (for [`canaryd::judge::warm_up`]).
    pub history: IntervalData,
    /// Per interval.
    pub intervals: Vec<IntervalData>,
    /// Canary requests per interval.
    pub canary_requests: Vec<f64>,
}

/// One arm's pooled data in one interval: bad, total, buckets, mean CPU, mean memory.
type Pooled = (f64, f64, Vec<(f64, f64)>, f64, f64);
/// One instance's data in one interval: name, bad, total, buckets, CPU, memory.
type Inst = (String, f64, f64, Vec<(f64, f64)>, f64, f64);

/// The shared conditions of one interval.
struct Conditions {
    load: f64,
    shock: f64,
    congestion: f64,
    /// The canary's leak factor so far.
    leak: f64,
}

/// Simulates one canary of `scenario` at `traffic` from `seed`.
pub fn simulate(scenario: Scenario, traffic: Traffic, seed: u64) -> Run {
    let mut rng = SmallRng::seed_from_u64(seed);
    let (canary, baseline) = arm_instances(&mut rng, scenario);
    let (rate_c, rate_b) = traffic.rates();
    let mut out = Run {
        history: IntervalData {
            index: 0,
            canary_share: None,
            observations: Vec::new(),
        },
        intervals: Vec::new(),
        canary_requests: Vec::new(),
    };
    let mut leak = 1.0;
    for t in 0..=INTERVALS {
        // Shared drift: +30% load over the run, a shock now and then; latency and CPU follow.
        let (load, shock) = if scenario.drift() {
            let shock = if rng.random::<f64>() < 0.1 { 1.5 } else { 1.0 };
            (
                1.0 + 0.3 * (t.max(1) - 1) as f64 / (INTERVALS - 1) as f64,
                shock,
            )
        } else {
            (1.0, 1.0)
        };
        let congestion = 1.0 + 0.1 * (load * shock - 1.0);
        let burst = rng.random::<f64>() < 0.3;
        // Interval 0 is the baseline alone, before the canary takes traffic.
        let eff = effect(scenario, t.max(1), burst);
        if t > 0 {
            leak *= 1.0 + eff.leak_per_interval;
        }
        let (rate_c, rate_b) = if t == 0 {
            (0.0, rate_b + rate_c)
        } else {
            (rate_c, rate_b)
        };
        let cond = Conditions {
            load,
            shock,
            congestion,
            leak,
        };
        let (pc, ic) = arm_interval(&mut rng, &canary, rate_c, Some(eff), &cond);
        let (pb, ib) = arm_interval(&mut rng, &baseline, rate_b, None, &cond);
        if t > 0 {
            out.canary_requests.push(pc.1);
        }
        let data = interval_data(t, (&pc, &ic), (&pb, &ib));
        if t == 0 {
            out.history = data;
        } else {
            out.intervals.push(data);
        }
    }
    out
}

/// Each arm's instances, with the scenario's noisy neighbour.
fn arm_instances(rng: &mut SmallRng, scenario: Scenario) -> (Vec<Instance>, Vec<Instance>) {
    let spread = if scenario == Scenario::InstanceDifferences {
        0.05
    } else {
        0.02
    };
    let mut canary = instances(rng, spread);
    let mut baseline = instances(rng, spread);
    match scenario {
        Scenario::NoisyNeighbourCanary => {
            canary[0].latency *= 1.4;
            canary[0].cpu *= 1.5;
        }
        Scenario::NoisyNeighbourBaseline => {
            baseline[0].latency *= 1.4;
            baseline[0].cpu *= 1.5;
        }
        _ => {}
    }
    (canary, baseline)
}

/// One arm's data in one interval. `canary_effect` is the scenario's effect for the canary,
/// None for the baseline (calm, no leak).
fn arm_interval(
    rng: &mut SmallRng,
    insts: &[Instance],
    rate: f64,
    canary_effect: Option<Effect>,
    cond: &Conditions,
) -> (Pooled, Vec<Inst>) {
    let e = canary_effect.unwrap_or_else(|| effect(Scenario::Calm, 1, false));
    let mut pooled: Pooled = (0.0, 0.0, Vec::new(), 0.0, 0.0);
    let mut per_instance = Vec::new();
    for (i, inst) in insts.iter().enumerate() {
        let n = poisson(rng, rate * 60.0 * cond.load * cond.shock / INSTANCES as f64);
        let bad = binomial(rng, n, BASE_ERROR * inst.errors * e.errors);
        let buckets = latency_buckets(
            rng,
            n,
            BASE_LATENCY * inst.latency * e.latency * cond.congestion,
        );
        let cpu = CPU_PER_REQUEST * inst.cpu * e.cpu * cond.congestion * (0.05 * normal(rng)).exp();
        let leak_here = if canary_effect.is_some() {
            cond.leak
        } else {
            1.0
        };
        let mem = MEMORY * inst.memory * leak_here * (0.01 * normal(rng)).exp();
        pooled.0 += bad as f64;
        pooled.1 += n as f64;
        add_buckets(&mut pooled.2, &buckets);
        pooled.3 += cpu / INSTANCES as f64;
        pooled.4 += mem / INSTANCES as f64;
        per_instance.push((format!("i{i}"), bad as f64, n as f64, buckets, cpu, mem));
    }
    (pooled, per_instance)
}

/// What the judge sees in interval `t`, from both arms' data.
fn interval_data(
    t: u32,
    (pc, ic): (&Pooled, &[Inst]),
    (pb, ib): (&Pooled, &[Inst]),
) -> IntervalData {
    let sample = |pooled: Sample, inst: &[Inst], f: &dyn Fn(&Inst) -> Sample| ArmSample {
        pooled,
        instances: inst.iter().map(|i| (i.0.clone(), f(i))).collect(),
    };
    let obs = |metric: &str, c: ArmSample, b: ArmSample| Observation {
        metric: metric.into(),
        outcome: Outcome::Data {
            canary: c,
            baseline: b,
        },
    };
    let counts = |p: &Pooled| Sample::Counts {
        bad: p.0,
        total: p.1,
    };
    let inst_counts = |i: &Inst| Sample::Counts {
        bad: i.1,
        total: i.2,
    };
    let buckets = |b: &[(f64, f64)]| Sample::Buckets {
        buckets: b.to_vec(),
    };
    IntervalData {
        index: t,
        canary_share: None,
        observations: vec![
            obs(
                "error-rate",
                sample(counts(pc), ic, &inst_counts),
                sample(counts(pb), ib, &inst_counts),
            ),
            obs(
                "latency",
                sample(buckets(&pc.2), ic, &|i| buckets(&i.3)),
                sample(buckets(&pb.2), ib, &|i| buckets(&i.3)),
            ),
            obs(
                "cpu",
                sample(Sample::Gauge { value: pc.3 }, ic, &|i| Sample::Gauge {
                    value: i.4,
                }),
                sample(Sample::Gauge { value: pb.3 }, ib, &|i| Sample::Gauge {
                    value: i.4,
                }),
            ),
            obs(
                "memory",
                sample(Sample::Gauge { value: pc.4 }, ic, &|i| Sample::Gauge {
                    value: i.5,
                }),
                sample(Sample::Gauge { value: pb.4 }, ib, &|i| Sample::Gauge {
                    value: i.5,
                }),
            ),
        ],
    }
}

/// The same run without per-instance detail (pooled data only), for the instance-gate ablation.
pub fn without_instances(run: &Run) -> Vec<IntervalData> {
    run.intervals
        .iter()
        .map(|d| {
            let mut d = d.clone();
            for o in &mut d.observations {
                if let Outcome::Data { canary, baseline } = &mut o.outcome {
                    canary.instances.clear();
                    baseline.instances.clear();
                }
            }
            d
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The judges under test.

const METRICS: &str = r#"
  - name: error-rate
    kind: ratio
    bad: 'sum(increase(http_requests_total{ {{selector}}, code=~"5.." }[{{window}}]))'
    total: 'sum(increase(http_requests_total{ {{selector}} }[{{window}}]))'
    max_increase: 50%
    critical: true
  - name: latency
    kind: histogram
    buckets: 'sum by (le) (increase(http_request_duration_seconds_bucket{ {{selector}} }[{{window}}]))'
    max_increase: 50%
  - name: cpu
    kind: gauge
    query: 'sum(rate(process_cpu_seconds_total{ {{selector}} }[{{window}}])) / sum(rate(http_requests_total{ {{selector}} }[{{window}}]))'
    max_increase: 20%
  - name: memory
    kind: gauge
    query: 'avg(process_resident_memory_bytes{ {{selector}} })'
    max_increase: 50%
    slope: 1%
"#;

/// The benchmark's rule set for the sequential judge (default settings).
pub fn sequential_rules() -> RuleSet {
    parse_rule_set(
        "bench",
        &format!("name: bench\njudge: sequential\nmetrics:{METRICS}"),
    )
    .expect("benchmark rules parse")
}

/// The same metrics for the Kayenta-style judge, with Kayenta's default effect size (any
/// increase counts: `allowedIncrease` 1.0).
pub fn mann_whitney_rules() -> Option<RuleSet> {
    let metrics = METRICS
        .replace("    slope: 1%\n", "")
        .replace("max_increase: 50%", "max_increase: 0%")
        .replace("max_increase: 20%", "max_increase: 0%");
    parse_rule_set(
        "bench",
        &format!("name: bench\njudge: mann_whitney\nmetrics:{metrics}"),
    )
    .ok()
}

/// Flagger/Argo defaults: success rate >= 99%, p99 latency <= 500 ms.
pub fn threshold_rules() -> Option<RuleSet> {
    parse_rule_set(
        "bench",
        r#"name: bench
judge: threshold
threshold: {failure_limit: 2}
metrics:
  - name: error-rate
    kind: ratio
    bad: 'sum(increase(http_requests_total{ {{selector}}, code=~"5.." }[{{window}}]))'
    total: 'sum(increase(http_requests_total{ {{selector}} }[{{window}}]))'
    max: 0.01
  - name: latency
    kind: histogram
    buckets: 'sum by (le) (increase(http_request_duration_seconds_bucket{ {{selector}} }[{{window}}]))'
    quantile: 0.99
    max: 0.5
"#,
    )
    .ok()
}

/// The first interval (1-based) each rule set's judge decides to roll back, and the first it
/// decides to promote.
fn first_decisions(rules: &RuleSet, run: &Run, pooled_only: bool) -> (Option<u32>, Option<u32>) {
    let mut state = canaryd::judge::warm_up(rules, JudgeState::new(rules), &run.history);
    let mut promote = None;
    let stripped;
    let intervals = if pooled_only {
        stripped = without_instances(run);
        &stripped
    } else {
        &run.intervals
    };
    for data in intervals {
        let (next, verdict) = update(rules, state, data);
        state = next;
        match verdict.decision {
            Decision::Rollback => return (Some(data.index), promote),
            Decision::Promote if promote.is_none() => promote = Some(data.index),
            _ => {}
        }
    }
    (None, promote)
}

/// P(X > x) for the benchmark's lognormal latency with median `median`.
fn slow_share(x: f64, median: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    let z = (x.ln() - median.ln()) / LATENCY_SIGMA;
    1.0 - Normal::standard().cdf(z)
}

/// The oracle: an SPRT of the true effect against the margin, on the pooled counts of the one
/// metric that carries the effect, with no warm-up and no multiplicity. A lower bound on
/// time-to-detect.
fn oracle(scenario: Scenario, run: &Run, alpha: f64) -> Option<Option<u32>> {
    let theta0: f64 = 1.5;
    let (metric, theta1) = match scenario {
        Scenario::Errors2 => ("error-rate", 2.0),
        Scenario::Errors5 => ("error-rate", 5.0),
        Scenario::Errors10 => ("error-rate", 10.0),
        Scenario::Latency25 | Scenario::Latency50 | Scenario::Latency100 | Scenario::LateOnset => {
            let f = match scenario {
                Scenario::Latency25 => 1.25,
                Scenario::Latency100 => 2.0,
                _ => 1.5,
            };
            let x = BASE_LATENCY * (1.645 * LATENCY_SIGMA).exp();
            (
                "latency",
                slow_share(x, BASE_LATENCY * f) / slow_share(x, BASE_LATENCY),
            )
        }
        _ => return None,
    };
    let x_star = BASE_LATENCY * (1.645 * LATENCY_SIGMA).exp();
    let mut llr = 0.0;
    for data in &run.intervals {
        let Some(Observation {
            outcome: Outcome::Data { canary, baseline },
            ..
        }) = data.observations.iter().find(|o| o.metric == metric)
        else {
            continue;
        };
        let (bc, nc, bb, nb) = match (&canary.pooled, &baseline.pooled) {
            (Sample::Counts { bad: bc, total: nc }, Sample::Counts { bad: bb, total: nb }) => {
                (*bc, *nc, *bb, *nb)
            }
            (Sample::Buckets { buckets: c }, Sample::Buckets { buckets: b }) => (
                canaryd::judge::histogram::count_above(c, x_star),
                canaryd::judge::histogram::total(c),
                canaryd::judge::histogram::count_above(b, x_star),
                canaryd::judge::histogram::total(b),
            ),
            _ => continue,
        };
        if data.index < scenario.onset() || nc + nb == 0.0 {
            continue;
        }
        let rho = nc / (nc + nb);
        let pi = |th: f64| rho * th / (rho * th + 1.0 - rho);
        let (p1, p0) = (pi(theta1), pi(theta0));
        llr += bc * (p1 / p0).ln() + bb * ((1.0 - p1) / (1.0 - p0)).ln();
        if llr >= (1.0 / alpha).ln() {
            return Some(Some(data.index));
        }
    }
    Some(None)
}

// ---------------------------------------------------------------------------------------------
// The benchmark.

/// Benchmark settings.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Runs per cell.
    pub runs: usize,
    /// Seed of the first run; run `i` of a cell uses a seed derived from it.
    pub seed: u64,
    /// Scenarios to run.
    pub scenarios: Vec<Scenario>,
    /// Traffic levels to run.
    pub traffic: Vec<Traffic>,
    /// Worker threads.
    pub threads: usize,
    /// Also run the sequential judge on pooled data only (what the instance gate costs).
    pub ablation: bool,
}

/// One judge's results in one cell.
#[derive(Clone, Debug, Serialize)]
pub struct JudgeResult {
    /// `sequential`, `mann_whitney`, `threshold`, `oracle`.
    pub judge: String,
    /// Runs that rolled back.
    pub rollbacks: usize,
    /// Rollback rate.
    pub rate: f64,
    /// Wilson 95% interval of the rate.
    pub wilson: (f64, f64),
    /// Median intervals from onset to rollback, over runs that rolled back.
    pub median_time_to_detect: Option<f64>,
    /// Median interval of an early promotion, over runs that had one.
    pub median_time_to_promote: Option<f64>,
    /// Mean canary requests served while regressed before the rollback (regressions only).
    pub mean_exposure: Option<f64>,
}

/// One cell: a scenario at a traffic level.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    /// The scenario.
    pub scenario: Scenario,
    /// Its name.
    pub name: String,
    /// Its label.
    pub label: Label,
    /// The traffic level.
    pub traffic: String,
    /// Runs.
    pub runs: usize,
    /// Per judge.
    pub judges: Vec<JudgeResult>,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Runs per cell.
    pub runs_per_cell: usize,
    /// Seed.
    pub seed: u64,
    /// The cells.
    pub cells: Vec<Cell>,
}

/// Wilson score interval at 95%.
pub fn wilson(successes: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (z, n_f) = (1.96, n as f64);
    let p = successes as f64 / n_f;
    let denom = 1.0 + z * z / n_f;
    let centre = (p + z * z / (2.0 * n_f)) / denom;
    let half = z * ((p * (1.0 - p) + z * z / (4.0 * n_f)) / n_f).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// Per run and judge: (rollback interval, promote interval).
type Outcomes = Vec<(String, Option<u32>, Option<u32>)>;

fn run_one(
    scenario: Scenario,
    traffic: Traffic,
    seed: u64,
    judges: &[(String, RuleSet)],
) -> (Outcomes, Run) {
    let run = simulate(scenario, traffic, seed);
    let mut outcomes: Outcomes = judges
        .iter()
        .map(|(name, rules)| {
            let pooled_only = name.ends_with("(pooled)");
            let (r, p) = first_decisions(rules, &run, pooled_only);
            (name.clone(), r, p)
        })
        .collect();
    if let Some(o) = oracle(scenario, &run, 0.05) {
        outcomes.push(("oracle".into(), o, None));
    }
    (outcomes, run)
}

fn cell(
    scenario: Scenario,
    traffic: Traffic,
    config: &BenchConfig,
    judges: &[(String, RuleSet)],
) -> Cell {
    let seeds: Vec<u64> = (0..config.runs as u64)
        .map(|i| {
            config.seed
                ^ (i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                ^ ((scenario as u64) << 48)
                ^ ((traffic as u64) << 56)
        })
        .collect();
    let threads = config.threads.max(1);
    let chunk = seeds.len().div_ceil(threads).max(1);
    let results: Vec<(Outcomes, Vec<f64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = seeds
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|&seed| {
                            let (o, run) = run_one(scenario, traffic, seed, judges);
                            (o, run.canary_requests)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("benchmark worker"))
            .collect()
    });
    let mut names: Vec<String> = judges.iter().map(|(n, _)| n.clone()).collect();
    if results
        .first()
        .is_some_and(|(o, _)| o.iter().any(|x| x.0 == "oracle"))
    {
        names.push("oracle".into());
    }
    let onset = scenario.onset();
    let judges = names
        .iter()
        .map(|name| {
            let mine: Vec<(Option<u32>, Option<u32>, &Vec<f64>)> = results
                .iter()
                .filter_map(|(o, req)| o.iter().find(|x| &x.0 == name).map(|x| (x.1, x.2, req)))
                .collect();
            let rollbacks = mine.iter().filter(|m| m.0.is_some()).count();
            let ttd = mine
                .iter()
                .filter_map(|m| m.0.map(|t| (t.max(onset) - onset + 1) as f64))
                .collect();
            let ttp = mine.iter().filter_map(|m| m.1.map(|t| t as f64)).collect();
            let exposure = (scenario.label() == Label::Regression).then(|| {
                let total: f64 = mine
                    .iter()
                    .map(|(r, _, req)| {
                        let end = r.unwrap_or(INTERVALS) as usize;
                        req[(onset as usize - 1).min(end)..end].iter().sum::<f64>()
                    })
                    .sum();
                total / mine.len().max(1) as f64
            });
            JudgeResult {
                judge: name.clone(),
                rollbacks,
                rate: rollbacks as f64 / mine.len().max(1) as f64,
                wilson: wilson(rollbacks, mine.len()),
                median_time_to_detect: median(ttd),
                median_time_to_promote: median(ttp),
                mean_exposure: exposure,
            }
        })
        .collect();
    Cell {
        scenario,
        name: scenario.name().into(),
        label: scenario.label(),
        traffic: traffic.name().into(),
        runs: config.runs,
        judges,
    }
}

/// Runs every judge over every cell.
pub fn run_benchmark(config: &BenchConfig) -> Report {
    let mut judges = vec![("sequential".to_string(), sequential_rules())];
    if config.ablation {
        judges.push(("sequential (pooled)".into(), sequential_rules()));
    }
    if let Some(r) = mann_whitney_rules() {
        judges.push(("mann_whitney".into(), r));
    }
    if let Some(r) = threshold_rules() {
        judges.push(("threshold".into(), r));
    }
    let mut cells = Vec::new();
    for &scenario in &config.scenarios {
        for &traffic in &config.traffic {
            cells.push(cell(scenario, traffic, config, &judges));
        }
    }
    Report {
        runs_per_cell: config.runs,
        seed: config.seed,
        cells,
    }
}

/// The report as a text table.
pub fn format_report(report: &Report) -> String {
    let mut out = String::new();
    let judges: Vec<String> = report
        .cells
        .first()
        .map(|c| {
            c.judges
                .iter()
                .map(|j| j.judge.clone())
                .filter(|j| j != "oracle")
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&format!(
        "{} runs per cell, seed {}. Healthy cells: false-rollback rate [Wilson 95%]. Regression cells: detection rate, median intervals to detect (oracle SPRT's rate and median in brackets).\n\n",
        report.runs_per_cell, report.seed
    ));
    out.push_str(&format!("{:<40} {:<12}", "scenario", "traffic"));
    for j in &judges {
        out.push_str(&format!(" {:>30}", j));
    }
    out.push('\n');
    for c in &report.cells {
        out.push_str(&format!("{:<40} {:<12}", c.name, c.traffic));
        let oracle = c.judges.iter().find(|j| j.judge == "oracle");
        for name in &judges {
            let Some(j) = c.judges.iter().find(|j| &j.judge == name) else {
                out.push_str(&format!(" {:>30}", "-"));
                continue;
            };
            let text = match c.label {
                Label::Healthy | Label::Gray => format!(
                    "{:.1}% [{:.1}-{:.1}]",
                    100.0 * j.rate,
                    100.0 * j.wilson.0,
                    100.0 * j.wilson.1
                ),
                Label::Regression => {
                    let ttd = j
                        .median_time_to_detect
                        .map_or("-".into(), |t| format!("{t:.1}"));
                    match oracle {
                        Some(o) if name == "sequential" => format!(
                            "{:.1}%, {ttd} ({:.0}%, {})",
                            100.0 * j.rate,
                            100.0 * o.rate,
                            o.median_time_to_detect
                                .map_or("-".into(), |t| format!("{t:.1}"))
                        ),
                        _ => format!("{:.1}%, {ttd}", 100.0 * j.rate),
                    }
                }
            };
            out.push_str(&format!(" {text:>30}"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[allow(unused_imports)] // the bench target compiles this module without running its tests
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_deterministic_and_labelled() {
        let a = simulate(Scenario::Errors5, Traffic::High, 42);
        let b = simulate(Scenario::Errors5, Traffic::High, 42);
        assert_eq!(a.intervals, b.intervals);
        assert_eq!(a.intervals.len(), INTERVALS as usize);
        let c = simulate(Scenario::Errors5, Traffic::High, 43);
        assert_ne!(a.intervals, c.intervals);
        // Errors x5: the canary's pooled error rate is clearly above the baseline's.
        let (mut bc, mut nc, mut bb, mut nb) = (0.0, 0.0, 0.0, 0.0);
        for d in &a.intervals {
            if let Outcome::Data { canary, baseline } = &d.observations[0].outcome
                && let (Sample::Counts { bad: x, total: y }, Sample::Counts { bad: u, total: v }) =
                    (&canary.pooled, &baseline.pooled)
            {
                bc += x;
                nc += y;
                bb += u;
                nb += v;
            }
        }
        let ratio = (bc / nc) / (bb / nb);
        assert!(ratio > 3.0 && ratio < 8.0, "{ratio}");
        // 6000 requests per interval, plus the shared load drift (+30% ramp, shocks).
        assert!(nc / 20.0 > 6000.0 && nc / 20.0 < 8000.0, "{nc}");
    }

    #[test]
    fn latency_buckets_match_the_distribution() {
        let mut rng = SmallRng::seed_from_u64(1);
        let b = latency_buckets(&mut rng, 100_000, 0.1);
        let med = canaryd::judge::histogram::quantile(&b, 0.5).unwrap();
        assert!((med - 0.1).abs() < 0.005, "{med}");
        let x = 0.1 * (1.645f64 * 0.5).exp();
        let above = canaryd::judge::histogram::count_above(&b, x) / 100_000.0;
        assert!((above - 0.05).abs() < 0.01, "{above}");
    }

    #[test]
    fn wilson_interval() {
        let (lo, hi) = wilson(0, 400);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.0095).abs() < 0.0005, "{hi}");
        let (lo, hi) = wilson(200, 400);
        assert!(lo < 0.5 && hi > 0.5);
    }

    #[test]
    fn quick_benchmark_runs_and_is_well_formed() {
        let config = BenchConfig {
            runs: 4,
            seed: 7,
            scenarios: vec![Scenario::Calm, Scenario::Errors10, Scenario::Latency50],
            traffic: vec![Traffic::High],
            threads: 2,
            ablation: false,
        };
        let report = run_benchmark(&config);
        assert_eq!(report.cells.len(), 3);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["cells"][1]["label"], "regression");
        let seq = &report.cells[1].judges[0];
        assert_eq!(seq.judge, "sequential");
        assert_eq!(
            seq.rollbacks, 4,
            "errors x10 at high traffic is always caught"
        );
        assert!(report.cells[1].judges.iter().any(|j| j.judge == "oracle"));
        let text = format_report(&report);
        assert!(text.contains("errors x10") && text.contains("sequential"));
    }
}
