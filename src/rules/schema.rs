//! The JSON Schema of rule files (`canaryd rules schema`), for editor completion and checks.
//!
//! Generated from the same serde types the loader decodes ([`super::raw`]), so the two cannot
//! drift apart. Point an editor at it, e.g. with the YAML language server:
//! `# yaml-language-server: $schema=./rule-set.schema.json` on the first line of a rule file.

use super::raw::RawRuleSet;

/// The schema as JSON.
pub fn rule_set_schema() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(RawRuleSet))
        .expect("a schema serialises to JSON");
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "description".into(),
            "A canaryd rule set (rules/*.yaml): the metrics a canary is judged on, their PromQL \
             templates ({{selector}}, {{window}}), and the margins that count as a regression."
                .into(),
        );
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn properties<'a>(v: &'a serde_json::Value, pointer: &str) -> BTreeSet<&'a str> {
        v.pointer(pointer)
            .and_then(|p| p.as_object())
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    #[test]
    fn the_schema_lists_every_field_and_the_required_ones() {
        let s = rule_set_schema();
        let top = properties(&s, "/properties");
        for f in [
            "name",
            "judge",
            "alpha",
            "metrics",
            "mann_whitney",
            "threshold",
        ] {
            assert!(top.contains(f), "{f} missing from {top:?}");
        }
        let metric = properties(&s, "/$defs/RawMetric/properties");
        for f in [
            "name",
            "kind",
            "bad",
            "total",
            "buckets",
            "query",
            "max_increase",
            "dry_run",
            "bucket_growth",
            "critical",
        ] {
            assert!(metric.contains(f), "{f} missing from {metric:?}");
        }
        assert_eq!(s["required"], serde_json::json!(["name", "metrics"]));
        assert_eq!(
            s.pointer("/$defs/RawMetric/required").unwrap(),
            &serde_json::json!(["name", "kind"])
        );
        assert_eq!(
            s.pointer("/$defs/RawMetric/additionalProperties").unwrap(),
            &serde_json::json!(false)
        );
    }
}
