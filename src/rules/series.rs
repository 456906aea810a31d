//! The compact series notation of rule unit tests: what one arm's query returns, interval by
//! interval.
//!
//! A series is a list of tokens separated by spaces, one value per interval; a token may end in
//! `xK` to repeat it K times.
//!
//! | token | meaning |
//! |---|---|
//! | `12`, `0.5`, `1e3` | a number |
//! | `120x10` | 120, ten intervals |
//! | `100+5x4` | 100, 105, 110, 115 (a ramp: K values; unlike `promtool`, not K+1) |
//! | `_` | no data (the query returns nothing for this arm) |
//! | `error`, `timeout` | the query fails / times out |
//!
//! Per kind:
//! - gauge: numbers, e.g. `"0.42x10"` or a leak `"100+2x30"`;
//! - ratio: `bad <values> total <values>`, where a bad value may be a share of the same
//!   interval's total: `"bad 1%x10 total 1000x10"`;
//! - histogram: one distribution per interval, `lognormal(median=0.1, sigma=0.5, n=1000)`
//!   (expected counts, no noise) or cumulative bucket counts `{0.1: 500, 0.25: 900, +Inf: 1000}`;
//!   the bucket edges of `lognormal` come from the metric's `buckets:` layout
//!   (`exponential(start, factor, count)`, `linear(start, width, count)` or a list), by default
//!   `exponential(0.005, 1.1, 80)` (5 ms to about 10 s, like the test app).

use statrs::function::erf::erf;

/// One interval of one arm.
#[derive(Clone, Debug, PartialEq)]
pub enum Point<T> {
    /// The query returned this.
    Value(T),
    /// The query returned nothing.
    NoData,
    /// The query failed.
    Error,
    /// The query timed out.
    Timeout,
}

impl<T> Point<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Point<U> {
        match self {
            Point::Value(v) => Point::Value(f(v)),
            Point::NoData => Point::NoData,
            Point::Error => Point::Error,
            Point::Timeout => Point::Timeout,
        }
    }
}

/// Cumulative bucket counts `(le, count)`, sorted, the last `+Inf`.
pub type Buckets = Vec<(f64, f64)>;

/// The default bucket layout: ×1.1 from 5 ms, 80 edges (to about 10 s).
/// A series or layout that does not read: the message says which token and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SeriesError(pub String);

impl From<SeriesError> for String {
    fn from(e: SeriesError) -> String {
        e.0
    }
}

pub const DEFAULT_LAYOUT: &str = "exponential(0.005, 1.1, 80)";

/// Splits on spaces outside brackets.
fn tokens(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0i32;
    for c in text.chars() {
        match c {
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return Err(format!("unbalanced brackets in {text:?}"));
        }
        if c.is_whitespace() && depth == 0 {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced brackets in {text:?}"));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// Most intervals a series may describe.
const MAX_INTERVALS: usize = 100_000;

/// Splits `atomxK` into (atom, K); K is 1 without a suffix. The `x` must follow the atom's
/// closing bracket or a digit, `%` or `_`.
fn repetition(token: &str) -> Result<(&str, usize), String> {
    if let Some(i) = token.rfind('x') {
        let (atom, count) = (&token[..i], &token[i + 1..]);
        let ends_ok = atom
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_digit() || matches!(c, ')' | '}' | '%' | '_' | 'r' | 't'));
        if !count.is_empty() && count.chars().all(|c| c.is_ascii_digit()) && ends_ok {
            let k: usize = count
                .parse()
                .map_err(|_| format!("bad repetition in {token:?}"))?;
            if k == 0 || k > MAX_INTERVALS {
                return Err(format!(
                    "repetition in {token:?} must be 1..{MAX_INTERVALS}"
                ));
            }
            return Ok((atom, k));
        }
    }
    Ok((token, 1))
}

fn number(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("expected a number, got {text:?}"))
}

/// A value in a series before the kind gives it meaning.
#[derive(Clone, Debug, PartialEq)]
enum Raw {
    Number(f64),
    Percent(f64),
    Text(String),
}

/// Expands tokens into per-interval raw points.
fn expand(text: &str, allow_text: bool) -> Result<Vec<Point<Raw>>, String> {
    let mut out = Vec::new();
    for token in tokens(text)? {
        let (atom, k) = repetition(&token)?;
        let mut push = |p: Point<Raw>, k: usize| -> Result<(), String> {
            if out.len() + k > MAX_INTERVALS {
                return Err(format!("more than {MAX_INTERVALS} intervals"));
            }
            out.extend(std::iter::repeat_n(p, k));
            Ok(())
        };
        match atom {
            "_" => push(Point::NoData, k)?,
            "error" => push(Point::Error, k)?,
            "timeout" => push(Point::Timeout, k)?,
            a if a.ends_with('%') => push(
                Point::Value(Raw::Percent(number(&a[..a.len() - 1])? / 100.0)),
                k,
            )?,
            a if a.starts_with("lognormal(") || a.starts_with('{') => {
                if !allow_text {
                    return Err(format!(
                        "{a:?} is a distribution; this metric takes numbers"
                    ));
                }
                push(Point::Value(Raw::Text(a.to_string())), k)?
            }
            a => match ramp(a)? {
                Some((start, step)) => {
                    if out.len() + k > MAX_INTERVALS {
                        return Err(format!("more than {MAX_INTERVALS} intervals"));
                    }
                    out.extend((0..k).map(|i| Point::Value(Raw::Number(start + step * i as f64))));
                }
                None => push(Point::Value(Raw::Number(number(a)?)), k)?,
            },
        }
    }
    Ok(out)
}

/// `A+B` or `A-B` (a ramp's start and step), if the atom is one.
fn ramp(atom: &str) -> Result<Option<(f64, f64)>, String> {
    let bytes = atom.as_bytes();
    for i in 1..bytes.len() {
        let c = bytes[i] as char;
        let prev = bytes[i - 1] as char;
        if (c == '+' || c == '-') && prev != 'e' && prev != 'E' {
            let start = number(&atom[..i])?;
            let step = number(&atom[i + 1..])?;
            return Ok(Some((start, if c == '-' { -step } else { step })));
        }
    }
    Ok(None)
}

/// A gauge series.
pub fn gauge(text: &str) -> Result<Vec<Point<f64>>, SeriesError> {
    gauge_text(text).map_err(SeriesError)
}

fn gauge_text(text: &str) -> Result<Vec<Point<f64>>, String> {
    expand(text, false)?
        .into_iter()
        .map(|p| match p {
            Point::Value(Raw::Number(v)) => Ok(Point::Value(v)),
            Point::Value(other) => Err(format!("a gauge takes numbers, got {other:?}")),
            Point::NoData => Ok(Point::NoData),
            Point::Error => Ok(Point::Error),
            Point::Timeout => Ok(Point::Timeout),
        })
        .collect()
}

/// A ratio series: `bad <values> total <values>` → per interval (bad, total).
pub fn counts(text: &str) -> Result<Vec<Point<(f64, f64)>>, SeriesError> {
    counts_text(text).map_err(SeriesError)
}

fn counts_text(text: &str) -> Result<Vec<Point<(f64, f64)>>, String> {
    let words = tokens(text)?;
    if !words.iter().any(|w| w == "bad" || w == "total") {
        // Only gaps (`_x6`, `error`): the same for both counters.
        return expand(text, false)?
            .into_iter()
            .map(|p| match p {
                Point::Value(v) => Err(format!(
                    "a ratio series reads `bad <values> total <values>`, got {v:?} without them"
                )),
                Point::NoData => Ok(Point::NoData),
                Point::Error => Ok(Point::Error),
                Point::Timeout => Ok(Point::Timeout),
            })
            .collect();
    }
    let (mut bad, mut total) = (String::new(), String::new());
    let mut section: Option<&mut String> = None;
    for word in words {
        match word.as_str() {
            "bad" => section = Some(&mut bad),
            "total" => section = Some(&mut total),
            other => match section.as_deref_mut() {
                Some(s) => {
                    s.push(' ');
                    s.push_str(other);
                }
                None => {
                    return Err(format!(
                        "a ratio series reads `bad <values> total <values>`, got {other:?} first"
                    ));
                }
            },
        }
    }
    let bad = expand(&bad, false)?;
    let total = expand(&total, false)?;
    if total.is_empty() {
        return Err("a ratio series needs `total <values>`".into());
    }
    if bad.len() != total.len() {
        return Err(format!(
            "bad has {} values but total has {}",
            bad.len(),
            total.len()
        ));
    }
    bad.into_iter()
        .zip(total)
        .map(|(b, t)| match (b, t) {
            (Point::Error, _) | (_, Point::Error) => Ok(Point::Error),
            (Point::Timeout, _) | (_, Point::Timeout) => Ok(Point::Timeout),
            (_, Point::NoData) => Ok(Point::NoData),
            // No bad-event series with a total present counts as zero (as the daemon does).
            (Point::NoData, Point::Value(Raw::Number(t))) => Ok(Point::Value((0.0, t))),
            (Point::Value(Raw::Number(b)), Point::Value(Raw::Number(t))) => {
                Ok(Point::Value((b, t)))
            }
            (Point::Value(Raw::Percent(p)), Point::Value(Raw::Number(t))) => {
                Ok(Point::Value(((p * t).round(), t)))
            }
            (b, t) => Err(format!("cannot read bad {b:?} with total {t:?}")),
        })
        .collect()
}

/// A histogram series; `layout` gives the bucket edges `lognormal` fills.
pub fn histogram(text: &str, layout: &[f64]) -> Result<Vec<Point<Buckets>>, SeriesError> {
    histogram_text(text, layout).map_err(SeriesError)
}

fn histogram_text(text: &str, layout: &[f64]) -> Result<Vec<Point<Buckets>>, String> {
    expand(text, true)?
        .into_iter()
        .map(|p| match p {
            Point::Value(Raw::Text(t)) => distribution(&t, layout).map(Point::Value),
            Point::Value(other) => Err(format!(
                "a histogram takes `lognormal(...)` or `{{le: count, ...}}`, got {other:?}"
            )),
            other => Ok(other.map(|_| Vec::new())),
        })
        .collect()
}

fn distribution(text: &str, layout: &[f64]) -> Result<Buckets, String> {
    if let Some(args) = text
        .strip_prefix("lognormal(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let (median, sigma, n) = lognormal_args(args)?;
        return Ok(lognormal(median, sigma, n, layout));
    }
    let inner = text
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or_else(|| {
            format!("expected `lognormal(...)` or `{{le: count, ...}}`, got {text:?}")
        })?;
    let mut out: Buckets = Vec::new();
    for pair in inner.split(',').filter(|p| !p.trim().is_empty()) {
        let (le, count) = pair
            .split_once(':')
            .ok_or_else(|| format!("expected `le: count`, got {pair:?}"))?;
        let le = match le.trim() {
            "+Inf" | "Inf" | "inf" => f64::INFINITY,
            other => number(other)?,
        };
        let count = number(count)?;
        if let Some(&(prev_le, prev)) = out.last() {
            if le <= prev_le {
                return Err(format!("bucket edges must increase: {le} after {prev_le}"));
            }
            if count < prev {
                return Err(format!(
                    "cumulative counts must not decrease: {count} after {prev}"
                ));
            }
        }
        out.push((le, count));
    }
    match out.last() {
        None => Err("empty bucket list".into()),
        Some(&(le, _)) if le.is_infinite() => Ok(out),
        Some(&(_, c)) => {
            out.push((f64::INFINITY, c));
            Ok(out)
        }
    }
}

fn lognormal_args(args: &str) -> Result<(f64, f64, f64), String> {
    let (mut median, mut sigma, mut n) = (None, None, None);
    for (i, part) in args.split(',').enumerate() {
        let (k, v) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), v),
            None => (
                ["median", "sigma", "n"].get(i).copied().unwrap_or("?"),
                part,
            ),
        };
        let v = number(v)?;
        match k {
            "median" => median = Some(v),
            "sigma" => sigma = Some(v),
            "n" => n = Some(v),
            other => return Err(format!("lognormal takes median, sigma, n; got {other:?}")),
        }
    }
    match (median, sigma, n) {
        (Some(m), Some(s), Some(n)) if m > 0.0 && s > 0.0 && n >= 0.0 => Ok((m, s, n)),
        _ => Err(format!(
            "lognormal needs median > 0, sigma > 0 and n >= 0, e.g. lognormal(median=0.1, sigma=0.5, n=1000); got ({args})"
        )),
    }
}

/// Expected cumulative counts of `n` lognormal samples at each edge (rounded).
pub fn lognormal(median: f64, sigma: f64, n: f64, layout: &[f64]) -> Buckets {
    let cdf =
        |x: f64| 0.5 * (1.0 + erf((x.ln() - median.ln()) / (sigma * std::f64::consts::SQRT_2)));
    let mut out: Buckets = layout
        .iter()
        .filter(|le| le.is_finite() && **le > 0.0)
        .map(|&le| (le, (n * cdf(le)).round()))
        .collect();
    out.push((f64::INFINITY, n.round()));
    out
}

/// Bucket edges: `exponential(start, factor, count)`, `linear(start, width, count)`, or a
/// list `[0.05, 0.1, 0.25]`.
pub fn layout(text: &str) -> Result<Vec<f64>, SeriesError> {
    layout_text(text).map_err(SeriesError)
}

fn layout_text(text: &str) -> Result<Vec<f64>, String> {
    let t = text.trim();
    let call = |name: &str| {
        t.strip_prefix(name)
            .and_then(|r| r.trim_start().strip_prefix('('))
            .and_then(|r| r.strip_suffix(')'))
    };
    let three = |args: &str| -> Result<(f64, f64, usize), String> {
        let v: Vec<&str> = args.split(',').collect();
        if v.len() != 3 {
            return Err(format!("expected three arguments in {t:?}"));
        }
        let count = number(v[2])?;
        if !(1.0..=1000.0).contains(&count) || count.fract() != 0.0 {
            return Err(format!(
                "bucket count must be a whole number 1..1000 in {t:?}"
            ));
        }
        Ok((number(v[0])?, number(v[1])?, count as usize))
    };
    if let Some(args) = call("exponential") {
        let (start, factor, count) = three(args)?;
        if !(start > 0.0 && factor > 1.0) {
            return Err(format!(
                "exponential buckets need start > 0 and factor > 1 in {t:?}"
            ));
        }
        return Ok((0..count).map(|i| start * factor.powi(i as i32)).collect());
    }
    if let Some(args) = call("linear") {
        let (start, width, count) = three(args)?;
        if width.is_nan() || width <= 0.0 {
            return Err(format!("linear buckets need width > 0 in {t:?}"));
        }
        return Ok((0..count).map(|i| start + width * i as f64).collect());
    }
    let list = t
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(t);
    let edges: Vec<f64> = list
        .split([',', ' '])
        .filter(|s| !s.trim().is_empty())
        .map(number)
        .collect::<Result<_, _>>()?;
    if edges.is_empty() || edges.windows(2).any(|w| w[1] <= w[0]) {
        return Err(format!(
            "bucket edges must be increasing numbers, got {t:?}"
        ));
    }
    Ok(edges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_repeat_and_ramp() {
        assert_eq!(
            gauge("1 2x2 10+5x3 _ error").unwrap(),
            vec![
                Point::Value(1.0),
                Point::Value(2.0),
                Point::Value(2.0),
                Point::Value(10.0),
                Point::Value(15.0),
                Point::Value(20.0),
                Point::NoData,
                Point::Error
            ]
        );
        assert_eq!(gauge("1e3 5-1x2").unwrap().len(), 3);
        assert_eq!(gauge("_x3").unwrap(), vec![Point::NoData; 3]);
        assert!(gauge("lognormal(1,1,1)").is_err());
        assert!(gauge("1x0").is_err());
        assert!(gauge("abc").is_err());
    }

    #[test]
    fn counts_take_percentages_of_total() {
        assert_eq!(
            counts("bad 1%x2 3 total 1000x2 500").unwrap(),
            vec![
                Point::Value((10.0, 1000.0)),
                Point::Value((10.0, 1000.0)),
                Point::Value((3.0, 500.0))
            ]
        );
        assert_eq!(
            counts("bad _ total 10").unwrap(),
            vec![Point::Value((0.0, 10.0))]
        );
        assert!(
            counts("bad 1 2 total 3")
                .unwrap_err()
                .0
                .contains("bad has 2 values")
        );
        assert!(counts("1 2").is_err());
        assert_eq!(
            counts("_x2 error").unwrap(),
            vec![Point::NoData, Point::NoData, Point::Error]
        );
    }

    #[test]
    fn histograms_from_lognormal_and_buckets() {
        let edges = layout("[0.05, 0.1, 0.2]").unwrap();
        let h = histogram(
            "lognormal(median=0.1, sigma=0.5, n=1000)x2 {0.1: 5, +Inf: 10}",
            &edges,
        )
        .unwrap();
        assert_eq!(h.len(), 3);
        let Point::Value(b) = &h[0] else { panic!() };
        assert_eq!(b[1], (0.1, 500.0));
        assert_eq!(b[3], (f64::INFINITY, 1000.0));
        assert_eq!(h[2], Point::Value(vec![(0.1, 5.0), (f64::INFINITY, 10.0)]));
        assert!(histogram("{0.2: 5, 0.1: 6}", &edges).is_err());
        assert_eq!(layout(DEFAULT_LAYOUT).unwrap().len(), 80);
        assert_eq!(layout("linear(1, 1, 3)").unwrap(), vec![1.0, 2.0, 3.0]);
    }
}
