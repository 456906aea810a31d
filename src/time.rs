//! Human durations (`500ms`, `60s`, `1m`, `1h30m`) and timestamps (RFC 3339 or Unix seconds), as
//! used in specs, rule files, configs and CLI flags.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration written the way people write them: `500ms`, `30s`, `1m`, `1h30m`, `2d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

/// Parses `500ms`, `60s`, `1m`, `1h30m`, `2d`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return seconds(secs, text);
    }
    let mut total = 0.0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {text:?} needs a unit (ms, s, m, h, d)"))?;
        if digits == 0 {
            return Err(format!("invalid duration {text:?}: expected a number"));
        }
        let value: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            unit => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {unit:?} (use ms, s, m, h, d)"
                ));
            }
        };
        total += value * factor;
        rest = &rest[unit_len..];
    }
    seconds(total, text)
}

fn seconds(secs: f64, text: &str) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {text:?}: must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration compactly (`90s` -> `1m30s`), the inverse of [`parse_duration`].
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// Formats a duration for PromQL range selectors (`[60s]`): whole seconds or milliseconds.
pub fn promql_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(f64),
        }
        let parsed = match Raw::deserialize(d)? {
            Raw::Text(t) => parse_duration(&t),
            Raw::Number(n) => seconds(n, &n.to_string()),
        };
        parsed.map(HumanDuration).map_err(serde::de::Error::custom)
    }
}

/// Parses a timestamp: RFC 3339 (`2026-11-26T07:13:00Z`) or Unix seconds (`1795678408`).
pub fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, String> {
    let s = text.trim();
    if let Ok(secs) = s.parse::<f64>() {
        let whole = secs.floor();
        let nanos = ((secs - whole) * 1e9).round() as u32;
        return Utc
            .timestamp_opt(whole as i64, nanos)
            .single()
            .ok_or_else(|| format!("timestamp {text:?} is out of range"));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("invalid timestamp {text:?}: {e} (use RFC 3339 or Unix seconds)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format() {
        let cases = [
            ("60s", 60.0),
            ("1m", 60.0),
            ("1h30m", 5400.0),
            ("500ms", 0.5),
            ("2d", 172800.0),
            ("15", 15.0),
            ("1.5s", 1.5),
        ];
        for (text, secs) in cases {
            assert_eq!(parse_duration(text).unwrap().as_secs_f64(), secs, "{text}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(promql_duration(Duration::from_secs(60)), "60s");
    }

    #[test]
    fn bad_durations_say_why() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit"));
        assert!(
            parse_duration("m")
                .unwrap_err()
                .contains("expected a number")
        );
        assert!(parse_duration("-5").is_err());
    }

    #[test]
    fn timestamps_parse() {
        assert_eq!(
            parse_timestamp("2026-11-26T07:13:00Z").unwrap().timestamp(),
            1795677180
        );
        assert_eq!(
            parse_timestamp("1795677180").unwrap().timestamp(),
            1795677180
        );
        assert!(parse_timestamp("yesterday").is_err());
    }
}
