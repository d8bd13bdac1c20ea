//! The API contract as a test oracle: the OpenAPI document a server serves, and a check of real
//! answers against it. A [`crate::Client`] given a [`Contract`] ([`crate::Client::checked`])
//! checks every answer it receives: the route and status must be documented, the media type
//! must be one the document lists, and a JSON body must match its schema. Object schemas are
//! closed for the check (a property the schema does not name fails, whatever
//! `additionalProperties` says when absent), so a field a handler sends that the document lacks
//! is a failure, as is a documented required field that is missing, a wrong type or an unknown
//! enum value. Every checked (method, route, status) is recorded for the coverage assertion.

use std::collections::BTreeSet;
use std::sync::Mutex;

use http::StatusCode;
use serde_json::Value;

/// The document and what has been checked against it.
#[derive(Debug)]
pub struct Contract {
    doc: Value,
    seen: Mutex<BTreeSet<(String, String, u16)>>,
}

impl Contract {
    /// A contract from an OpenAPI document.
    pub fn new(doc: Value) -> Contract {
        Contract {
            doc,
            seen: Mutex::new(BTreeSet::new()),
        }
    }

    /// The document.
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// The documented path template that `path` (no query) matches, if any.
    pub fn route(&self, path: &str) -> Option<String> {
        let segs: Vec<&str> = path.split('/').collect();
        let paths = self.doc["paths"].as_object()?;
        let mut best: Option<(usize, &String)> = None;
        for t in paths.keys() {
            let ts: Vec<&str> = t.split('/').collect();
            if ts.len() != segs.len() {
                continue;
            }
            let mut literal = 0;
            let ok = ts.iter().zip(&segs).all(|(a, b)| {
                if a.starts_with('{') && a.ends_with('}') {
                    !b.is_empty()
                } else {
                    literal += 1;
                    a == b
                }
            });
            if ok && best.is_none_or(|(n, _)| literal > n) {
                best = Some((literal, t));
            }
        }
        best.map(|(_, t)| t.clone())
    }

    /// Checks one answer; `Err` says what does not match.
    pub fn check(
        &self,
        method: &str,
        path_and_query: &str,
        status: StatusCode,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<(), String> {
        let path = path_and_query.split('?').next().unwrap_or("");
        let method = method.to_ascii_lowercase();
        let what = format!("{method} {path_and_query} → {status}");
        let Some(route) = self.route(path) else {
            return Err(format!("{what}: no documented path matches"));
        };
        let op = &self.doc["paths"][&route][&method];
        if op.is_null() {
            return Err(format!("{what}: {method} is not documented on {route}"));
        }
        let resp = &op["responses"][status.as_str()];
        if resp.is_null() {
            return Err(format!(
                "{what}: status {} is not documented for {method} {route}",
                status.as_u16()
            ));
        }
        self.seen
            .lock()
            .unwrap()
            .insert((method.clone(), route.clone(), status.as_u16()));
        let content = resp["content"].as_object();
        if body.is_empty() && (method == "head" || content.is_none()) {
            return Ok(());
        }
        let Some(content) = content else {
            return Err(format!(
                "{what}: a body of {} bytes where the document has none",
                body.len()
            ));
        };
        let media = content_type
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        let Some(entry) = content.get(media) else {
            return Err(format!(
                "{what}: media type {media:?} is not among the documented {:?}",
                content.keys().collect::<Vec<_>>()
            ));
        };
        if media != "application/json" {
            return Ok(());
        }
        let v: Value =
            serde_json::from_slice(body).map_err(|e| format!("{what}: not JSON: {e}"))?;
        let mut errors = Vec::new();
        self.validate(&entry["schema"], &v, "$", &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("{what}: {}\nbody: {v}", errors.join("; ")))
        }
    }

    /// (method, route, status) triples checked so far.
    pub fn seen(&self) -> BTreeSet<(String, String, u16)> {
        self.seen.lock().unwrap().clone()
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> Result<&'a Value, String> {
        let mut s = schema;
        for _ in 0..16 {
            match s.get("$ref").and_then(Value::as_str) {
                None => return Ok(s),
                Some(r) => {
                    let name = r
                        .strip_prefix("#/components/schemas/")
                        .ok_or_else(|| format!("unsupported $ref {r}"))?;
                    s = &self.doc["components"]["schemas"][name];
                    if s.is_null() {
                        return Err(format!("$ref {r} does not resolve"));
                    }
                }
            }
        }
        Err("$ref loop".into())
    }

    /// Validates `v` against `schema` (the JSON Schema subset utoipa emits), strictly.
    pub fn validate(&self, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
        let s = match self.resolve(schema) {
            Ok(s) => s,
            Err(e) => return errors.push(format!("{at}: {e}")),
        };
        if s.as_object().is_some_and(|m| m.is_empty()) || s == &Value::Bool(true) {
            return;
        }
        if let Some(all) = s.get("allOf").and_then(Value::as_array) {
            for sub in all {
                self.validate(sub, v, at, errors);
            }
        }
        for (key, exactly_one) in [("oneOf", true), ("anyOf", false)] {
            if let Some(alts) = s.get(key).and_then(Value::as_array) {
                let mut why = Vec::new();
                let passing = alts
                    .iter()
                    .filter(|alt| {
                        let mut e = Vec::new();
                        self.validate(alt, v, at, &mut e);
                        why.extend(e.iter().cloned());
                        e.is_empty()
                    })
                    .count();
                if passing == 0 || (exactly_one && passing > 1) {
                    errors.push(format!(
                        "{at}: {passing} of the {key} alternatives match ({})",
                        why.join(" | ")
                    ));
                }
            }
        }
        if let Some(list) = s.get("enum").and_then(Value::as_array) {
            if !list.contains(v) {
                errors.push(format!("{at}: {v} is not one of {list:?}"));
            }
        }
        if let Some(c) = s.get("const") {
            if c != v {
                errors.push(format!("{at}: {v} is not {c}"));
            }
        }
        let types: Vec<&str> = match s.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.is_empty() && !types.iter().any(|t| type_matches(t, v)) {
            return errors.push(format!("{at}: {v} is not of type {types:?}"));
        }
        if let Some(n) = v.as_f64() {
            if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
                if n < min {
                    errors.push(format!("{at}: {n} < minimum {min}"));
                }
            }
            if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
                if n > max {
                    errors.push(format!("{at}: {n} > maximum {max}"));
                }
            }
        }
        match v {
            Value::Object(m) => {
                let props = s.get("properties").and_then(Value::as_object);
                if let Some(req) = s.get("required").and_then(Value::as_array) {
                    for r in req.iter().filter_map(Value::as_str) {
                        if !m.contains_key(r) {
                            errors.push(format!("{at}: required property {r:?} is missing"));
                        }
                    }
                }
                let extra = s.get("additionalProperties");
                for (k, x) in m {
                    let here = format!("{at}.{k}");
                    match (props.and_then(|p| p.get(k)), extra) {
                        (Some(ps), _) => self.validate(ps, x, &here, errors),
                        (None, Some(Value::Object(e))) => {
                            self.validate(&Value::Object(e.clone()), x, &here, errors)
                        }
                        (None, Some(Value::Bool(true))) => {}
                        (None, _) if props.is_none() && extra.is_none() => {}
                        (None, _) => {
                            errors.push(format!("{at}: property {k:?} is not in the schema"))
                        }
                    }
                }
            }
            Value::Array(a) => {
                if let Some(items) = s.get("items") {
                    for (i, x) in a.iter().enumerate() {
                        self.validate(items, x, &format!("{at}[{i}]"), errors);
                    }
                }
            }
            _ => {}
        }
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        _ => false,
    }
}
