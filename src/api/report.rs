//! Canary reports: `GET /api/v1/canaries/{id}/report` as HTML with inline SVG charts of canary
//! vs baseline per metric over time and the evidence table (no external assets), or
//! `?format=md|json`. Everything comes from the canary's record and its audit log.

use super::{ApiError, AppState, parse_id};
use crate::judge::{MetricVerdict, Verdict, fmt_num};
use crate::store::{CanaryRecord, Event};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// One metric at one interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Point {
    /// 1-based interval (bake intervals continue the numbering).
    pub interval: u32,
    /// Canary value.
    pub canary: Option<f64>,
    /// Baseline value.
    pub baseline: Option<f64>,
    /// Effect estimate so far.
    pub estimate: Option<f64>,
    /// Lower bound.
    pub lower: Option<f64>,
    /// Upper bound.
    pub upper: Option<f64>,
    /// Status.
    pub status: String,
    /// Whether this was a bake interval.
    pub bake: bool,
}

/// One metric over the canary's life.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricSeries {
    /// The metric.
    pub name: String,
    /// What the values measure.
    pub unit: String,
    /// The margin (ratio).
    pub margin: Option<f64>,
    /// The points.
    pub points: Vec<Point>,
    /// The last verdict.
    pub last: Option<MetricVerdict>,
}

/// Everything a report shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReportData {
    /// The canary.
    pub canary: super::CanaryView,
    /// Per metric.
    pub metrics: Vec<MetricSeries>,
    /// The audit log.
    pub events: Vec<Event>,
    /// Duration so far or in all, in seconds.
    pub duration_seconds: i64,
}

/// Builds the report's data from a canary and its events.
pub fn build(record: &CanaryRecord, events: Vec<Event>) -> ReportData {
    let mut series: BTreeMap<String, MetricSeries> = BTreeMap::new();
    let mut order = Vec::new();
    let mut n = 0u32;
    for e in &events {
        let bake = e.kind == "bake_analysis";
        if !(e.kind == "analysis" || e.kind == "analysis_inconclusive" || bake) {
            continue;
        }
        let Ok(verdict) = serde_json::from_value::<Verdict>(e.data["verdict"].clone()) else {
            continue;
        };
        n += 1;
        for m in verdict.metrics {
            let s = series.entry(m.name.clone()).or_insert_with(|| {
                order.push(m.name.clone());
                MetricSeries {
                    name: m.name.clone(),
                    unit: m.unit.clone(),
                    margin: m.margin,
                    points: Vec::new(),
                    last: None,
                }
            });
            if !m.unit.is_empty() {
                s.unit = m.unit.clone();
            }
            s.points.push(Point {
                interval: n,
                canary: m.canary,
                baseline: m.baseline,
                estimate: m.estimate,
                lower: m.lower,
                upper: m.upper,
                status: m.status.to_string(),
                bake,
            });
            s.last = Some(m);
        }
    }
    let end = record.state.finished_at.unwrap_or_else(chrono::Utc::now);
    ReportData {
        canary: super::CanaryView::from(record),
        metrics: order
            .into_iter()
            .filter_map(|n| series.remove(&n))
            .collect(),
        events,
        duration_seconds: (end - record.created_at).num_seconds(),
    }
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn num(v: Option<f64>) -> String {
    v.map_or("–".into(), fmt_num)
}

const W: f64 = 640.0;
const H: f64 = 200.0;
const PAD: f64 = 36.0;

fn scale(points: &[Point], values: impl Fn(&Point) -> Vec<f64>) -> (f64, f64) {
    let all: Vec<f64> = points
        .iter()
        .flat_map(&values)
        .filter(|v| v.is_finite())
        .collect();
    let max = all.iter().copied().fold(0.0f64, f64::max);
    let min = all.iter().copied().fold(f64::INFINITY, f64::min).min(0.0);
    if max <= min {
        (min, min + 1.0)
    } else {
        (min, max * 1.1)
    }
}

fn xy(i: u32, n: u32, v: f64, (lo, hi): (f64, f64)) -> (f64, f64) {
    let x = PAD
        + (W - 2.0 * PAD)
            * if n <= 1 {
                0.5
            } else {
                (i - 1) as f64 / (n - 1) as f64
            };
    let y = H - PAD - (H - 2.0 * PAD) * ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
    (x, y)
}

fn polyline(
    points: &[Point],
    n: u32,
    range: (f64, f64),
    value: impl Fn(&Point) -> Option<f64>,
    color: &str,
    class: &str,
) -> String {
    let coords: Vec<String> = points
        .iter()
        .filter_map(|p| {
            value(p)
                .filter(|v| v.is_finite())
                .map(|v| xy(p.interval, n, v, range))
        })
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    if coords.is_empty() {
        return String::new();
    }
    // A dot per interval, so a single interval still shows.
    let dots: String = coords
        .iter()
        .map(|c| {
            let (x, y) = c.split_once(',').unwrap_or(("0", "0"));
            format!("<circle cx=\"{x}\" cy=\"{y}\" r=\"2.5\" fill=\"{color}\"/>")
        })
        .collect();
    format!(
        "<polyline class=\"{class}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>{dots}",
        coords.join(" ")
    )
}

fn frame(title: &str, range: (f64, f64), n: u32, body: &str, legend: &[(&str, &str)]) -> String {
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{}\">",
        esc(title)
    );
    let _ = write!(
        svg,
        "<rect x=\"{PAD}\" y=\"{PAD}\" width=\"{}\" height=\"{}\" fill=\"#fafafa\" stroke=\"#ccc\"/>",
        W - 2.0 * PAD,
        H - 2.0 * PAD
    );
    let _ = write!(
        svg,
        "<text x=\"4\" y=\"{}\" font-size=\"10\">{}</text><text x=\"4\" y=\"{}\" font-size=\"10\">{}</text>",
        PAD + 4.0,
        esc(&fmt_num(range.1)),
        H - PAD,
        esc(&fmt_num(range.0))
    );
    let _ = write!(
        svg,
        "<text x=\"{PAD}\" y=\"{}\" font-size=\"10\">interval 1</text><text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{n}</text>",
        H - PAD + 14.0,
        W - PAD,
        H - PAD + 14.0
    );
    let _ = write!(
        svg,
        "<text x=\"{PAD}\" y=\"20\" font-size=\"12\" font-weight=\"bold\">{}</text>",
        esc(title)
    );
    for (i, (label, color)) in legend.iter().enumerate() {
        let x = W - PAD - 180.0 + 90.0 * i as f64;
        let y = H - 12.0;
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\" font-size=\"11\">{}</text>",
            y - 9.0,
            x + 14.0,
            y,
            esc(label)
        );
    }
    svg.push_str(body);
    svg.push_str("</svg>");
    svg
}

/// Canary vs baseline values over the intervals.
fn values_chart(m: &MetricSeries, n: u32) -> String {
    let range = scale(&m.points, |p| {
        [p.canary, p.baseline].into_iter().flatten().collect()
    });
    let body = polyline(&m.points, n, range, |p| p.baseline, "#1f77b4", "baseline")
        + &polyline(&m.points, n, range, |p| p.canary, "#d62728", "canary");
    frame(
        &format!("{} ({})", m.name, m.unit),
        range,
        n,
        &body,
        &[("canary", "#d62728"), ("baseline", "#1f77b4")],
    )
}

/// The effect estimate with its interval and the margin.
fn effect_chart(m: &MetricSeries, n: u32) -> String {
    let cap = m.margin.unwrap_or(2.0) * 3.0;
    let clamp = |v: Option<f64>| v.map(|x| x.min(cap));
    let range = scale(&m.points, |p| {
        [clamp(p.estimate), clamp(p.lower), clamp(p.upper), m.margin]
            .into_iter()
            .flatten()
            .collect()
    });
    let mut body = String::new();
    let band: Vec<(f64, f64, f64)> = m
        .points
        .iter()
        .filter_map(|p| Some((p.interval, p.lower?, clamp(p.upper).unwrap_or(cap))))
        .map(|(i, lo, hi)| (i as f64, lo, hi))
        .collect();
    if !band.is_empty() {
        let upper: Vec<String> = band
            .iter()
            .map(|(i, _, hi)| xy(*i as u32, n, *hi, range))
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let lower: Vec<String> = band
            .iter()
            .rev()
            .map(|(i, lo, _)| xy(*i as u32, n, *lo, range))
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = write!(
            body,
            "<polygon class=\"interval\" fill=\"#ff7f0e\" fill-opacity=\"0.2\" stroke=\"none\" points=\"{} {}\"/>",
            upper.join(" "),
            lower.join(" ")
        );
    }
    if let Some(margin) = m.margin {
        let (x0, y) = xy(1, n.max(2), margin, range);
        let (x1, _) = xy(n.max(2), n.max(2), margin, range);
        let _ = write!(
            body,
            "<line class=\"margin\" x1=\"{x0:.1}\" y1=\"{y:.1}\" x2=\"{x1:.1}\" y2=\"{y:.1}\" stroke=\"#555\" stroke-dasharray=\"4 3\"/>"
        );
    }
    body += &polyline(
        &m.points,
        n,
        range,
        |p| clamp(p.estimate),
        "#ff7f0e",
        "estimate",
    );
    frame(
        &format!(
            "{}: canary/baseline with its interval; dashed: the margin",
            m.name
        ),
        range,
        n,
        &body,
        &[("estimate", "#ff7f0e"), ("margin", "#555")],
    )
}

/// The report as a self-contained HTML page.
pub fn html(data: &ReportData) -> String {
    let c = &data.canary;
    let n = data
        .metrics
        .iter()
        .map(|m| m.points.len() as u32)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>canary {} {} — {}</title><style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1000px}}table{{border-collapse:collapse}}td,th{{border:1px solid #ddd;padding:4px 8px;font-size:13px;text-align:left}}.FAIL{{color:#c00;font-weight:bold}}.phase{{font-size:1.3em}}</style></head><body>",
        c.id,
        esc(&c.service),
        esc(&c.phase)
    );
    let _ = write!(
        out,
        "<h1>Canary {} · {}</h1><p class=\"phase\">{} — {}</p><p>environment {} · router {} backend {} · rules {} {} · {} s · steps {:?}</p>",
        c.id,
        esc(&c.service),
        esc(&c.phase),
        esc(&c.reasons.join("; ")),
        esc(&c.environment),
        esc(&c.router),
        esc(&c.target.backend),
        esc(&c.rules.name),
        esc(&c.rules.hash),
        data.duration_seconds,
        c.steps
    );
    if !c.metadata.is_empty() {
        out.push_str("<p>");
        for (k, v) in &c.metadata {
            let _ = write!(out, "{}: {} · ", esc(k), esc(&v.to_string()));
        }
        out.push_str("</p>");
    }
    out.push_str("<h2>Evidence</h2><table><tr><th>metric</th><th>status</th><th>canary</th><th>baseline</th><th>estimate</th><th>interval</th><th>evidence</th><th>reason</th></tr>");
    for m in &data.metrics {
        let Some(v) = &m.last else { continue };
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>[{}, {}]</td><td>{} {} / {}</td><td>{}</td></tr>",
            esc(&v.name),
            esc(&v.status.to_string()),
            esc(&v.status.to_string()),
            num(v.canary),
            num(v.baseline),
            num(v.estimate),
            num(v.lower),
            num(v.upper),
            esc(&v.evidence.kind),
            num(v.evidence.value),
            num(v.evidence.threshold),
            esc(&v.reason)
        );
    }
    out.push_str("</table><h2>Metrics over time</h2>");
    for m in &data.metrics {
        let _ = write!(out, "<section class=\"metric\"><h3>{}</h3>", esc(&m.name));
        out.push_str(&values_chart(m, n));
        out.push_str(&effect_chart(m, n));
        out.push_str("</section>");
    }
    out.push_str("<h2>Audit log</h2><table><tr><th>time</th><th>event</th><th>actor</th><th>message</th></tr>");
    for e in &data.events {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.at.format("%Y-%m-%d %H:%M:%S"),
            esc(&e.kind),
            esc(&e.actor),
            esc(&e.message)
        );
    }
    out.push_str("</table></body></html>");
    out
}

/// The report as Markdown.
pub fn markdown(data: &ReportData) -> String {
    let c = &data.canary;
    let mut out = format!(
        "# Canary {} · {}\n\n**{}** — {}\n\n- environment: {}\n- router: {} backend {}\n- rules: {} ({})\n- duration: {} s\n- steps: {:?}\n\n## Evidence\n\n| metric | status | canary | baseline | estimate | interval | evidence | reason |\n|---|---|---|---|---|---|---|---|\n",
        c.id,
        c.service,
        c.phase,
        c.reasons.join("; "),
        c.environment,
        c.router,
        c.target.backend,
        c.rules.name,
        c.rules.hash,
        data.duration_seconds,
        c.steps
    );
    for m in &data.metrics {
        let Some(v) = &m.last else { continue };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | [{}, {}] | {} {} | {} |",
            v.name,
            v.status,
            num(v.canary),
            num(v.baseline),
            num(v.estimate),
            num(v.lower),
            num(v.upper),
            v.evidence.kind,
            num(v.evidence.value),
            v.reason.replace('|', "\\|")
        );
    }
    out.push_str("\n## Audit log\n\n| time | event | actor | message |\n|---|---|---|---|\n");
    for e in &data.events {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            e.at.format("%Y-%m-%d %H:%M:%S"),
            e.kind,
            e.actor,
            e.message.replace('|', "\\|")
        );
    }
    out
}

#[derive(Deserialize)]
pub(super) struct ReportQuery {
    format: Option<String>,
}

/// `GET /api/v1/canaries/{id}/report[?format=html|md|json]`.
pub(super) async fn report(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let record = app.store.get(id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("canary {id} not found"),
        )
    })?;
    let events = app.store.events(id, 0).await?;
    let data = build(&record, events);
    Ok(match q.format.as_deref().unwrap_or("html") {
        "html" => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html(&data),
        )
            .into_response(),
        "md" | "markdown" => (
            [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
            markdown(&data),
        )
            .into_response(),
        "json" => axum::Json(data).into_response(),
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                format!("format={other:?}: use html, md or json"),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn charts_have_both_arms() {
        let points: Vec<Point> = (1..=4)
            .map(|i| Point {
                interval: i,
                canary: Some(0.01 * i as f64),
                baseline: Some(0.01),
                estimate: Some(i as f64),
                lower: Some(0.5 * i as f64),
                upper: None,
                status: "continue".into(),
                bake: false,
            })
            .collect();
        let m = MetricSeries {
            name: "error-rate".into(),
            unit: "bad ratio".into(),
            margin: Some(1.5),
            points,
            last: None,
        };
        let svg = values_chart(&m, 4);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("class=\"canary\"") && svg.contains("class=\"baseline\""));
        let svg = effect_chart(&m, 4);
        assert!(svg.contains("<polygon") && svg.contains("class=\"margin\""));
    }
}
