//! Checking tool schemas and the arguments the model sends against them.

use crate::Value;

/// Whether `schema` can serve as a tool's `parameters`: a valid JSON Schema (any draft the
/// `jsonschema` crate knows) describing an object. `Err` says what is wrong.
pub fn check_parameters_schema(schema: &Value) -> Result<(), String> {
    let Value::Object(map) = schema else {
        return Err(format!(
            "`parameters` must be a JSON Schema object, got `{schema}`"
        ));
    };
    match map.get("type") {
        None => {}
        Some(Value::String(t)) if t == "object" => {}
        Some(other) => {
            return Err(format!(
                "`parameters` must describe an object (`type: object`), got `type: {other}`"
            ));
        }
    }
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|e| format!("`parameters` is not a valid JSON Schema: {e}"))
}

/// A compiled `parameters` schema: checks a call's arguments before the tool runs.
pub struct ArgumentValidator {
    validator: Option<jsonschema::Validator>,
}

impl std::fmt::Debug for ArgumentValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArgumentValidator")
            .field("checks", &self.validator.is_some())
            .finish()
    }
}

/// The most violations listed in one error message.
const MAX_LISTED: usize = 5;

impl ArgumentValidator {
    /// Compiles `schema`. A schema that does not compile (only possible for tools whose schema
    /// was not checked at build time, e.g. an MCP server's) accepts every object, and the tool
    /// itself is left to reject bad arguments.
    pub fn new(schema: &Value) -> Self {
        match jsonschema::validator_for(schema) {
            Ok(v) => Self { validator: Some(v) },
            Err(e) => {
                tracing::warn!(error = %e, "tool parameters schema does not compile; arguments are not checked");
                Self { validator: None }
            }
        }
    }

    /// `Ok` when `arguments` fit, else a message listing the violations (at most five), each
    /// with the JSON pointer of the offending value.
    pub fn check(&self, arguments: &Value) -> Result<(), String> {
        let Some(validator) = &self.validator else {
            return Ok(());
        };
        let errors: Vec<String> = validator
            .iter_errors(arguments)
            .take(MAX_LISTED + 1)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("at `{at}`: {e}")
                }
            })
            .collect();
        if errors.is_empty() {
            return Ok(());
        }
        let more = if errors.len() > MAX_LISTED {
            " (and more)"
        } else {
            ""
        };
        Err(format!(
            "the arguments do not fit the tool's schema: {}{more}",
            errors
                .iter()
                .take(MAX_LISTED)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn object_schemas_pass_and_others_say_why_not() {
        assert!(check_parameters_schema(&json!({"type": "object", "properties": {}})).is_ok());
        assert!(check_parameters_schema(&json!({"properties": {"a": {"type": "string"}}})).is_ok());
        let err = check_parameters_schema(&json!({"type": "string"})).unwrap_err();
        assert!(err.contains("must describe an object"), "{err}");
        let err = check_parameters_schema(
            &json!({"type": "object", "properties": {"a": {"type": "strin"}}}),
        )
        .unwrap_err();
        assert!(err.contains("not a valid JSON Schema"), "{err}");
        let err = check_parameters_schema(&json!("x")).unwrap_err();
        assert!(err.contains("must be a JSON Schema object"), "{err}");
    }

    #[test]
    fn violations_are_listed_with_their_place() {
        let v = ArgumentValidator::new(&json!({
            "type": "object",
            "properties": {"path": {"type": "string"}, "n": {"type": "integer"}},
            "required": ["path"],
        }));
        assert!(v.check(&json!({"path": "a"})).is_ok());
        let err = v.check(&json!({"n": "x"})).unwrap_err();
        assert!(err.contains("\"path\" is a required property"), "{err}");
        assert!(err.contains("at `/n`"), "{err}");
    }
}
