//! The OpenAPI document served at `/api/v1/openapi.json`. A test checks it against the routes
//! registered in `api::app` in both directions.

use axum::Json;
use serde_json::{Value, json};

fn id_param() -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}})
}

fn error_responses() -> Value {
    json!({
        "401": {"description": "missing or unknown token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "403": {"description": "the token lacks the scope, or a browser page of another site sent the request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "404": {"description": "no such canary", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    })
}

fn with_errors(mut ok: Value) -> Value {
    if let (Some(map), Some(errors)) = (ok.as_object_mut(), error_responses().as_object()) {
        for (k, v) in errors {
            map.entry(k.clone()).or_insert(v.clone());
        }
    }
    ok
}

/// The document.
pub fn spec() -> Value {
    let canary = json!({"$ref": "#/components/schemas/Canary"});
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "canaryd",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Automated canary releases: submit a canary, follow it, act on it."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "message"], "properties": {
                    "error": {"type": "string"}, "message": {"type": "string"},
                    "details": {"type": "array", "items": {"type": "object", "properties": {
                        "field": {"type": "string"}, "message": {"type": "string"}}}}}},
                "Spec": {"type": "object", "required": ["service", "router", "target", "rules"],
                    "description": "A canary spec (README: Canary spec). YAML is accepted with content-type application/yaml.",
                    "properties": {
                        "service": {"type": "string"}, "environment": {"type": "string"},
                        "router": {"type": "string"}, "rules": {"type": "string"},
                        "target": {"type": "object", "properties": {"backend": {"type": "string"},
                            "baseline": {"type": "array", "items": {"type": "string"}},
                            "canary": {"type": "array", "items": {"type": "string"}}}},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "baseline_labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "canary_labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "strategy": {"type": "object"}, "hooks": {"type": "object"},
                        "tls_check": {"type": "object"}, "metadata": {"type": "object"}}},
                "Canary": {"type": "object", "description": "A canary: phase, step, weights, last analysis, reasons.",
                    "properties": {"id": {"type": "integer"}, "service": {"type": "string"},
                        "phase": {"type": "string"}, "step": {"type": "integer"},
                        "weight": {"type": "object"}, "analysis": {"type": "object"},
                        "reasons": {"type": "array", "items": {"type": "string"}}}},
                "Events": {"type": "object", "properties": {"canary": {"type": "integer"},
                    "phase": {"type": "string"}, "events": {"type": "array", "items": {"type": "object"}}}}
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/canaries": {
                "get": {"summary": "List canaries", "parameters": [
                    {"name": "state", "in": "query", "schema": {"type": "string", "enum": ["active", "all"]}}],
                    "responses": with_errors(json!({"200": {"description": "canaries, newest first",
                        "content": {"application/json": {"schema": {"type": "array", "items": canary}}}}}))},
                "post": {"summary": "Submit a canary (scope submit)",
                    "requestBody": {"required": true, "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Spec"}},
                        "application/yaml": {"schema": {"$ref": "#/components/schemas/Spec"}}}},
                    "responses": with_errors(json!({
                        "201": {"description": "accepted", "content": {"application/json": {"schema": canary}}},
                        "409": {"description": "another canary is active on the backend"},
                        "422": {"description": "invalid spec, unknown router/rules/environment, or preflight failed"},
                        "503": {"description": "the router cannot be reached"}}))}
            },
            "/api/v1/canaries/{id}": {"get": {"summary": "One canary", "parameters": [id_param()],
                "responses": with_errors(json!({"200": {"description": "the canary",
                    "content": {"application/json": {"schema": canary}}}}))}},
            "/api/v1/canaries/{id}/events": {"get": {"summary": "The audit log (long poll with wait)",
                "parameters": [id_param(),
                    {"name": "after", "in": "query", "schema": {"type": "integer"}},
                    {"name": "wait", "in": "query", "schema": {"type": "string", "example": "25s"}}],
                "responses": with_errors(json!({"200": {"description": "events after `after`",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Events"}}}}}))}},
            "/api/v1/canaries/{id}/report": {"get": {"summary": "A report: HTML with charts, Markdown or JSON",
                "parameters": [id_param(),
                    {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["html", "md", "json"]}}],
                "responses": with_errors(json!({"200": {"description": "the report", "content": {
                    "text/html": {}, "text/markdown": {}, "application/json": {}}}}))}},
            "/api/v1/canaries/{id}/{action}": {"post": {"summary": "A command (scope operate)",
                "parameters": [id_param(), {"name": "action", "in": "path", "required": true,
                    "schema": {"type": "string", "enum": ["promote", "abort", "pause", "resume", "approve"]}}],
                "responses": with_errors(json!({
                    "200": {"description": "the canary after the command", "content": {"application/json": {"schema": canary}}},
                    "409": {"description": "not possible in the canary's phase"},
                    "503": {"description": "the canary is busy, or its new state could not be stored (nothing was done); try again"}}))}},
            "/api/v1/rules": {"get": {"summary": "Loaded rule sets (name, version, path, judge, metrics) and load errors",
                "responses": with_errors(json!({"200": {"description": "rule sets and errors"}}))}},
            "/api/v1/rules/reload": {"post": {"summary": "Reload the rule files now (scope admin); a broken file keeps its previous version",
                "responses": with_errors(json!({"200": {"description": "the catalog after the reload"}}))}},
            "/api/v1/openapi.json": {"get": {"summary": "This document", "security": [],
                "responses": {"200": {"description": "OpenAPI 3"}}}},
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "Readiness (the store answers)", "security": [],
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "canaryd's own metrics (OpenMetrics)", "security": [],
                "responses": {"200": {"description": "metrics"}}}}
        }
    })
}

/// `GET /api/v1/openapi.json`.
pub async fn document() -> Json<Value> {
    Json(spec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// `(METHOD, path)` pairs registered in `api::app`, read from its source.
    fn registered() -> BTreeSet<(String, String)> {
        let source = include_str!("mod.rs");
        let app = &source[source.find("pub fn app(").expect("app() exists")..];
        let app = &app[..app.find("\n}\n").expect("app() ends")];
        let mut out = BTreeSet::new();
        for part in app.split(".route(").skip(1) {
            let path = part.split('"').nth(1).expect("a path literal");
            let handlers = &part[part.find(',').unwrap() + 1..];
            let handlers = &handlers[..handlers.find("))").map_or(handlers.len(), |i| i + 1)];
            for method in ["get", "post", "put", "delete", "patch"] {
                if handlers.contains(&format!("{method}(")) {
                    out.insert((method.to_uppercase(), path.to_string()));
                }
            }
        }
        out
    }

    fn documented() -> BTreeSet<(String, String)> {
        let doc = spec();
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
        out
    }

    #[test]
    fn the_document_matches_the_routes_both_ways() {
        let (routes, doc) = (registered(), documented());
        assert!(routes.len() >= 8, "found the routes: {routes:?}");
        let undocumented: Vec<_> = routes.difference(&doc).collect();
        let unrouted: Vec<_> = doc.difference(&routes).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from the OpenAPI document: {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "documented but not routed: {unrouted:?}"
        );
    }

    #[test]
    fn every_reference_resolves() {
        let doc = spec();
        let text = doc.to_string();
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "missing schema {name}"
            );
        }
    }
}
