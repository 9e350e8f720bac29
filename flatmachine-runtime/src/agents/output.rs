//! Structured output: the JSON Schema requested from providers, reading JSON out of a reply,
//! and checking it against the agent's `output` fields.

use super::config::{OutputField, OutputKind};
use crate::{StateError, Value};
use serde_json::{Map, json};

/// Error type of a reply that holds no JSON object where the agent has an `output` schema.
pub const OUTPUT_PARSE_ERROR: &str = "OutputParseError";
/// Error type of a reply whose JSON does not fit the agent's `output` schema.
pub const OUTPUT_VALIDATION_ERROR: &str = "OutputValidationError";

/// Most characters of a reply quoted in an error message.
const QUOTE_LIMIT: usize = 2000;

/// Deepest nesting of arrays and objects accepted in JSON that enters a run from outside: a
/// model's reply, a subprocess agent's reply, a webhook's response, the run's input. 64 levels
/// (each `[` or `{` is one). Checkpoints nest at most 127 levels (the JSON parser's limit when
/// they are loaded back), and the writer refuses deeper ones, so a value accepted here always
/// leaves room for the context around it.
pub const MAX_JSON_DEPTH: usize = 64;

/// How deeply `text` nests arrays and objects (brackets inside strings do not count); stops
/// counting at `stop_above + 1`. Scans the bytes once, without parsing.
pub fn json_depth(text: &str, stop_above: usize) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in text.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > deepest {
                    deepest = depth;
                    if deepest > stop_above {
                        return deepest;
                    }
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// How deeply `value` nests arrays and objects (a scalar is 0); stops counting at
/// `stop_above + 1`. Walks the value without recursion.
pub fn value_depth(value: &Value, stop_above: usize) -> usize {
    let mut deepest = 0;
    let mut pending: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((v, above)) = pending.pop() {
        let here = above + 1;
        match v {
            Value::Array(items) => {
                deepest = deepest.max(here);
                if deepest > stop_above {
                    return deepest;
                }
                pending.extend(items.iter().map(|x| (x, here)));
            }
            Value::Object(map) => {
                deepest = deepest.max(here);
                if deepest > stop_above {
                    return deepest;
                }
                pending.extend(map.values().map(|x| (x, here)));
            }
            _ => {}
        }
    }
    deepest
}

/// Why JSON from outside a run was refused: it is not JSON, or it nests deeper than
/// [`MAX_JSON_DEPTH`].
#[derive(Debug, thiserror::Error)]
pub enum BoundedJsonError {
    /// Not valid JSON.
    #[error(transparent)]
    Syntax(#[from] serde_json::Error),
    /// Valid or not, it nests too deeply to be kept in a run.
    #[error(
        "it nests arrays/objects more than {limit} levels deep (the limit for values entering a run)"
    )]
    TooDeep {
        /// [`MAX_JSON_DEPTH`].
        limit: usize,
    },
}

/// Parses JSON that comes from outside a run (a reply, a response, an input), refusing
/// nesting deeper than [`MAX_JSON_DEPTH`] before parsing.
pub fn parse_bounded(text: &str) -> Result<Value, BoundedJsonError> {
    if json_depth(text, MAX_JSON_DEPTH) > MAX_JSON_DEPTH {
        return Err(BoundedJsonError::TooDeep {
            limit: MAX_JSON_DEPTH,
        });
    }
    Ok(serde_json::from_str(text)?)
}

/// The JSON Schema of an object with these fields (`additionalProperties: false`; every
/// field with `required` left at its default `true` is listed in `required`).
pub fn json_schema(fields: &[OutputField]) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for f in fields {
        properties.insert(f.name.to_string(), field_schema(f));
        if f.required {
            required.push(Value::String(f.name.to_string()));
        }
    }
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

fn field_schema(f: &OutputField) -> Value {
    let mut s = match f.kind {
        OutputKind::Str => json!({"type": "string"}),
        OutputKind::Int => json!({"type": "integer"}),
        OutputKind::Float => json!({"type": "number"}),
        OutputKind::Bool => json!({"type": "boolean"}),
        OutputKind::Json => json!({}),
        OutputKind::List => match f.items {
            Some(items) => json!({"type": "array", "items": field_schema(items)}),
            None => json!({"type": "array"}),
        },
        OutputKind::Object if f.properties.is_empty() => json!({"type": "object"}),
        OutputKind::Object => json_schema(f.properties),
    };
    if let Value::Object(m) = &mut s {
        if !f.enum_values.is_empty() {
            m.insert("enum".into(), json!(f.enum_values));
        }
        if let Some(d) = f.description {
            m.insert("description".into(), Value::String(d.to_string()));
        }
    }
    s
}

/// One sentence asking for JSON with these fields, added to the system prompt when neither
/// prompt mentions JSON (providers' JSON modes reject prompts that never say "JSON").
pub fn json_instruction(fields: &[OutputField]) -> String {
    let described: Vec<String> = fields.iter().map(describe_field).collect();
    format!(
        "Respond with a single JSON object and nothing else, with these fields: {}.",
        described.join("; ")
    )
}

fn describe_field(f: &OutputField) -> String {
    let mut s = format!("{} ({}", f.name, type_label(f));
    if !f.required {
        s.push_str(", optional");
    }
    s.push(')');
    if !f.enum_values.is_empty() {
        s.push_str(&format!(" one of {}", f.enum_values.join(", ")));
    }
    if let Some(d) = f.description {
        s.push_str(": ");
        s.push_str(d.trim());
    }
    s
}

fn type_label(f: &OutputField) -> String {
    match f.kind {
        OutputKind::Str => "string".into(),
        OutputKind::Int => "integer".into(),
        OutputKind::Float => "number".into(),
        OutputKind::Bool => "boolean".into(),
        OutputKind::Json => "any JSON value".into(),
        OutputKind::List => match f.items {
            Some(items) => format!("list of {}", type_label(items)),
            None => "list".into(),
        },
        OutputKind::Object => "object".into(),
    }
}

/// The JSON text in a reply: the first fenced code block, else the text from the first `{` to
/// the last `}` (or `[` to `]`), else the whole text (as the reference's `strip_markdown_json`).
pub fn extract_json(text: &str) -> &str {
    let t = text.trim();
    if let Some(start) = t.find("```") {
        let after = &t[start + 3..];
        // Skip a language tag on the fence line (`json`, `JSON`, ...).
        let body = match after.find('\n') {
            Some(nl)
                if after[..nl]
                    .trim()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric()) =>
            {
                &after[nl + 1..]
            }
            _ => after,
        };
        if let Some(end) = body.find("```") {
            return body[..end].trim();
        }
    }
    let object = t.find('{').zip(t.rfind('}'));
    let array = t.find('[').zip(t.rfind(']'));
    let pick = match (object, array) {
        (Some(o), Some(a)) => Some(if a.0 < o.0 { a } else { o }),
        (o, a) => o.or(a),
    };
    match pick {
        Some((s, e)) if s < e => &t[s..=e],
        _ => t,
    }
}

/// Parses a reply against an `output` schema: extracts the JSON, checks types, enums and
/// required fields, and converts integral floats of `int` fields to integers.
///
/// A reply without a JSON object is an [`OUTPUT_PARSE_ERROR`], a schema violation an
/// [`OUTPUT_VALIDATION_ERROR`]; both quote the reply.
pub fn parse_output(agent: &str, fields: &[OutputField], text: &str) -> Result<Value, StateError> {
    let json = extract_json(text);
    let mut value: Value = parse_bounded(json).map_err(|e| {
        let what = match e {
            BoundedJsonError::TooDeep { .. } => format!("the reply is refused: {e}"),
            BoundedJsonError::Syntax(e) => format!("the reply is not a JSON object ({e})"),
        };
        StateError::new(
            OUTPUT_PARSE_ERROR,
            format!("agent `{agent}`: {what}; reply: {}", quote(text)),
        )
    })?;
    if !value.is_object() {
        return Err(StateError::new(
            OUTPUT_PARSE_ERROR,
            format!(
                "agent `{agent}`: the reply is JSON but not an object; reply: {}",
                quote(text)
            ),
        ));
    }
    let mut problems = Vec::new();
    check_object(fields, &mut value, "", &mut problems);
    if problems.is_empty() {
        Ok(value)
    } else {
        Err(StateError::new(
            OUTPUT_VALIDATION_ERROR,
            format!(
                "agent `{agent}`: the reply does not match the output schema: {}; reply: {}",
                problems.join("; "),
                quote(text)
            ),
        ))
    }
}

/// Checks an already structured value (from an adapter) against the schema.
pub fn validate(fields: &[OutputField], value: &mut Value) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    if value.is_object() {
        check_object(fields, value, "", &mut problems);
    } else {
        problems.push("expected an object".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn quote(text: &str) -> String {
    if text.chars().count() <= QUOTE_LIMIT {
        return format!("{text:?}");
    }
    let cut: String = text.chars().take(QUOTE_LIMIT).collect();
    format!("{cut:?}… ({} characters in all)", text.chars().count())
}

fn check_object(fields: &[OutputField], value: &mut Value, path: &str, out: &mut Vec<String>) {
    let Value::Object(map) = value else {
        return;
    };
    for f in fields {
        let here = if path.is_empty() {
            f.name.to_string()
        } else {
            format!("{path}.{}", f.name)
        };
        match map.get_mut(f.name) {
            None | Some(Value::Null) if f.required => {
                out.push(format!("`{here}` is missing"));
            }
            None | Some(Value::Null) => {}
            Some(v) => check_field(f, v, &here, out),
        }
    }
}

fn check_field(f: &OutputField, v: &mut Value, path: &str, out: &mut Vec<String>) {
    let ok = match f.kind {
        OutputKind::Str => v.is_string(),
        OutputKind::Int => match v {
            Value::Number(n) if n.is_i64() || n.is_u64() => true,
            Value::Number(n) => match n.as_f64() {
                Some(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => {
                    *v = Value::from(x as i64);
                    true
                }
                _ => false,
            },
            _ => false,
        },
        OutputKind::Float => v.is_number(),
        OutputKind::Bool => v.is_boolean(),
        OutputKind::Json => true,
        OutputKind::List => v.is_array(),
        OutputKind::Object => v.is_object(),
    };
    if !ok {
        out.push(format!(
            "`{path}` should be {}, got {}",
            type_label(f),
            crate::expr::type_name(v)
        ));
        return;
    }
    if !f.enum_values.is_empty() {
        let allowed = match &*v {
            Value::String(s) => f.enum_values.contains(&s.as_str()),
            other => f.enum_values.contains(&other.to_string().as_str()),
        };
        if !allowed {
            out.push(format!(
                "`{path}` is {v}, not one of {}",
                f.enum_values.join(", ")
            ));
        }
    }
    match (f.kind, v) {
        (OutputKind::List, Value::Array(items)) => {
            if let Some(item) = f.items {
                for (i, x) in items.iter_mut().enumerate() {
                    if !x.is_null() {
                        check_field(item, x, &format!("{path}[{i}]"), out);
                    }
                }
            }
        }
        (OutputKind::Object, obj @ Value::Object(_)) if !f.properties.is_empty() => {
            check_object(f.properties, obj, path, out);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static ITEM: OutputField = OutputField {
        name: "",
        kind: OutputKind::Int,
        description: None,
        enum_values: &[],
        required: true,
        items: None,
        properties: &[],
    };
    static FIELDS: &[OutputField] = &[
        OutputField {
            name: "score",
            kind: OutputKind::Int,
            description: Some("1-10"),
            enum_values: &[],
            required: true,
            items: None,
            properties: &[],
        },
        OutputField {
            name: "verdict",
            kind: OutputKind::Str,
            description: None,
            enum_values: &["pass", "fail"],
            required: true,
            items: None,
            properties: &[],
        },
        OutputField {
            name: "marks",
            kind: OutputKind::List,
            description: None,
            enum_values: &[],
            required: false,
            items: Some(&ITEM),
            properties: &[],
        },
    ];

    #[test]
    fn extracts_fenced_and_prose_wrapped_json() {
        assert_eq!(extract_json("```json\n{\"a\": 1}\n```"), "{\"a\": 1}");
        assert_eq!(
            extract_json("Here you go:\n```\n{\"a\": 1}\n```\nthanks"),
            "{\"a\": 1}"
        );
        assert_eq!(
            extract_json("Sure! {\"a\": {\"b\": 2}} hope it helps"),
            "{\"a\": {\"b\": 2}}"
        );
        assert_eq!(extract_json("  [1, 2] "), "[1, 2]");
        assert_eq!(extract_json("no json"), "no json");
    }

    #[test]
    fn parses_and_validates() {
        let v = parse_output(
            "a",
            FIELDS,
            "```json\n{\"score\": 7.0, \"verdict\": \"pass\", \"marks\": [1, 2]}\n```",
        )
        .unwrap();
        assert_eq!(v, json!({"score": 7, "verdict": "pass", "marks": [1, 2]}));

        let e = parse_output("a", FIELDS, "I think it is good").unwrap_err();
        assert_eq!(e.error_type, OUTPUT_PARSE_ERROR);
        assert!(e.message.contains("I think it is good"), "{}", e.message);

        let e = parse_output(
            "a",
            FIELDS,
            "{\"score\": \"high\", \"verdict\": \"maybe\", \"marks\": [1, \"x\"]}",
        )
        .unwrap_err();
        assert_eq!(e.error_type, OUTPUT_VALIDATION_ERROR);
        assert!(e.message.contains("`score` should be integer, got string"));
        assert!(e.message.contains("not one of pass, fail"));
        assert!(e.message.contains("`marks[1]` should be integer"));

        let e = parse_output("a", FIELDS, "{\"verdict\": \"pass\"}").unwrap_err();
        assert!(e.message.contains("`score` is missing"), "{}", e.message);
    }

    #[test]
    fn depth_counts_brackets_outside_strings() {
        assert_eq!(json_depth("{\"a\": [1, {\"b\": \"[[[{\\\"\"}]}", 99), 3);
        assert_eq!(json_depth("7", 99), 0);
        let deep = format!("{}{}", "[".repeat(70), "]".repeat(70));
        assert_eq!(json_depth(&deep, 64), 65);
        let v: Value = serde_json::from_str(&deep).unwrap();
        assert_eq!(value_depth(&v, 99), 70);
        assert_eq!(value_depth(&json!({"a": [1, {"b": 2}]}), 99), 3);
        assert!(matches!(
            parse_bounded(&deep),
            Err(BoundedJsonError::TooDeep { limit: 64 })
        ));
    }

    #[test]
    fn schema_and_instruction() {
        let s = json_schema(FIELDS);
        assert_eq!(s["required"], json!(["score", "verdict"]));
        assert_eq!(s["properties"]["verdict"]["enum"], json!(["pass", "fail"]));
        assert_eq!(s["properties"]["marks"]["items"]["type"], "integer");
        let i = json_instruction(FIELDS);
        assert!(i.contains("score (integer): 1-10"), "{i}");
        assert!(i.contains("marks (list of integer, optional)"), "{i}");
    }
}
