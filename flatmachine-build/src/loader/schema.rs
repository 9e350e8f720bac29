//! Checking a config against the JSON Schema of its format: the `spec`/`spec_version`/`data`
//! keys first, then the schema's errors turned into diagnostics placed at the offending value
//! (or, for a missing key, at the mapping that lacks it), with a hint for near-miss spellings.

use crate::diagnostic::{Diagnostic, did_you_mean};
use crate::model::{SPEC_VERSION, agent_schema, machine_schema, profiles_schema};
use crate::source::Span;
use crate::yaml::{self, Node, PathSeg};
use serde_json::Value;

/// The problems of a config's `spec`, `spec_version` and `data` keys; false if it is not a
/// config of the `expected` kind.
pub(super) fn spec_problems(node: &Node, expected: &str) -> (bool, Vec<Diagnostic>) {
    let mut out = Vec::new();
    {
        if node.as_map().is_none() {
            out.push(Diagnostic::error(
                format!("expected a `{expected}` config (a mapping with `spec`, `spec_version` and `data`), found a {}", node.type_name()),
                Some(node.span),
            ));
            return (false, out);
        }
        match node.get("spec") {
            Some(spec) if spec.as_str() == Some(expected) => {}
            Some(spec) => {
                let found = spec
                    .as_str()
                    .map_or_else(|| spec.type_name().to_string(), |s| format!("`{s}`"));
                out.push(
                    Diagnostic::error(
                        format!("expected `spec: {expected}`, found {found}"),
                        Some(spec.span),
                    )
                    .with_help(format!("this file must be a `{expected}` config")),
                );
                return (false, out);
            }
            None => {
                out.push(
                    Diagnostic::error(format!("missing `spec: {expected}`"), Some(node.span))
                        .with_help(format!("add `spec: {expected}` and `spec_version: \"{SPEC_VERSION}\"` at the top")),
                );
                return (false, out);
            }
        }
        if let Some(v) = node.get("spec_version") {
            let text = match &v.kind {
                yaml::NodeKind::Str(s) => s.clone(),
                yaml::NodeKind::Int(i) => i.to_string(),
                yaml::NodeKind::Float(f) => f.to_string(),
                _ => String::new(),
            };
            // Files written for an older spec load under 1.0.0 (the formats are lockstep
            // supersets); only a newer major version may use what this compiler does not know.
            let major: Option<u64> = text.split('.').next().and_then(|m| m.trim().parse().ok());
            if major.is_some_and(|m| m > 1) {
                out.push(
                    Diagnostic::warning(
                        format!(
                            "`spec_version` {text} differs in major version from {SPEC_VERSION}"
                        ),
                        Some(v.span),
                    )
                    .with_help(format!(
                        "this compiler implements FlatMachines {SPEC_VERSION}"
                    )),
                );
            }
        }
        if node.get("data").is_none() {
            out.push(
                Diagnostic::error("missing `data`", Some(node.span)).with_help(format!(
                    "a `{expected}` config keeps its content under `data:`"
                )),
            );
            return (false, out);
        }
    }
    (true, out)
}

pub(super) fn ignored_path(path: &serde_ignored::Path<'_>) -> Vec<PathSeg> {
    use serde_ignored::Path as P;
    match path {
        P::Root => vec![],
        P::Seq { parent, index } => {
            let mut v = ignored_path(parent);
            v.push(PathSeg::Index(*index));
            v
        }
        P::Map { parent, key } => {
            let mut v = ignored_path(parent);
            v.push(PathSeg::Key(key.clone()));
            v
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

/// Which config format a file is checked against.
#[derive(Debug, Clone, Copy)]
pub(super) enum SchemaKind {
    Machine,
    Agent,
    Profiles,
}

impl SchemaKind {
    /// The compiled validator, built once per process (building one costs milliseconds).
    pub(super) fn validator(self) -> Option<&'static jsonschema::Validator> {
        use std::sync::OnceLock;
        static MACHINE: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
        static AGENT: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
        static PROFILES: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
        let (cell, schema): (&OnceLock<Option<jsonschema::Validator>>, fn() -> Value) = match self {
            SchemaKind::Machine => (&MACHINE, machine_schema),
            SchemaKind::Agent => (&AGENT, agent_schema),
            SchemaKind::Profiles => (&PROFILES, profiles_schema),
        };
        cell.get_or_init(|| jsonschema::validator_for(&schema()).ok())
            .as_ref()
    }
}

/// A help line for common spellings from other schema languages (`array` for `list`, ...).
fn synonym(found: &str, allowed: &[String]) -> Option<String> {
    let want = match found {
        "array" => "list",
        "string" => "str",
        "integer" => "int",
        "number" => "float",
        "boolean" => "bool",
        "dict" | "map" => "object",
        _ => return None,
    };
    allowed
        .iter()
        .any(|a| a == want)
        .then(|| format!("FlatAgents calls this type `{want}`"))
}

pub(super) type MakeDiagnostic = Box<dyn FnOnce(Span) -> Diagnostic>;

/// A schema problem, to be placed at the offending value or, for a missing key, at the key of
/// the mapping that lacks it.
pub(super) enum SchemaProblem {
    Missing(MakeDiagnostic),
    Other(MakeDiagnostic),
}

fn location_path(loc: &jsonschema::paths::Location) -> Vec<PathSeg> {
    loc.into_iter()
        .map(|s| match s {
            jsonschema::paths::LocationSegment::Property(p) => PathSeg::Key(p.to_string()),
            jsonschema::paths::LocationSegment::Index(i) => PathSeg::Index(i),
        })
        .collect()
}

/// Turn a JSON Schema error into readable diagnostics. For `anyOf`/`oneOf` failures (schemars
/// emits them for `Option<T>` and untagged enums) the most specific branch is reported, so an
/// enum typo under an optional field still gets "expected one of … / did you mean".
pub(super) fn schema_diagnostics(
    err: &jsonschema::ValidationError<'_>,
) -> Vec<(Vec<PathSeg>, SchemaProblem)> {
    use jsonschema::error::ValidationErrorKind as K;
    let path = location_path(err.instance_path());
    let branches = match err.kind() {
        K::AnyOf { context } | K::OneOfNotValid { context } => Some(context),
        _ => None,
    };
    if let Some(branches) = branches {
        // Drop branches that merely say "this value has another type" at this very place.
        let specific: Vec<&Vec<jsonschema::ValidationError<'static>>> = branches
            .iter()
            .filter(|b| {
                !b.is_empty()
                    && !b.iter().all(|e| {
                        matches!(e.kind(), K::Type { .. })
                            && location_path(e.instance_path()) == path
                    })
            })
            .collect();
        // schemars writes a documented enum as `oneOf` of `const`s: report it as one enum.
        let consts: Option<Vec<String>> = specific
            .iter()
            .map(|b| {
                match (
                    b.as_slice(),
                    b.first().map(|e| location_path(e.instance_path()) == path),
                ) {
                    ([only], Some(true)) => match only.kind() {
                        K::Constant { expected_value } => {
                            expected_value.as_str().map(str::to_string)
                        }
                        _ => None,
                    },
                    _ => None,
                }
            })
            .collect();
        if let Some(allowed) = consts.filter(|c| !c.is_empty()) {
            let field = match path.last() {
                Some(PathSeg::Key(k)) => format!("`{k}`"),
                Some(PathSeg::Index(i)) => format!("item {i}"),
                None => "the document".to_string(),
            };
            let found = err
                .instance()
                .as_str()
                .map_or_else(|| err.instance().to_string(), str::to_string);
            return vec![(
                path,
                SchemaProblem::Other(Box::new(move |span| {
                    Diagnostic::error(format!("invalid value `{found}` for {field}"), Some(span))
                        .with_label(format!("expected one of: {}", allowed.join(", ")))
                        .with_help_opt(
                            did_you_mean(&found, allowed.iter().map(String::as_str))
                                .or_else(|| synonym(&found, &allowed)),
                        )
                })),
            )];
        }
        if let Some(best) = specific.iter().min_by_key(|b| b.len()) {
            return best.iter().flat_map(|e| schema_diagnostics(e)).collect();
        }
    }
    let field = match path.last() {
        Some(PathSeg::Key(k)) => format!("`{k}`"),
        Some(PathSeg::Index(i)) => format!("item {i}"),
        None => "the document".to_string(),
    };
    let problem = match err.kind() {
        K::Enum { options } => {
            let allowed: Vec<String> = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let found = err
                .instance()
                .as_str()
                .map_or_else(|| err.instance().to_string(), str::to_string);
            SchemaProblem::Other(Box::new(move |span| {
                Diagnostic::error(format!("invalid value `{found}` for {field}"), Some(span))
                    .with_label(format!("expected one of: {}", allowed.join(", ")))
                    .with_help_opt(did_you_mean(&found, allowed.iter().map(String::as_str)))
            }))
        }
        K::Required { property } => {
            let p = property.as_str().unwrap_or("?").to_string();
            let owner = if path.is_empty() {
                "the document".to_string()
            } else {
                field
            };
            SchemaProblem::Missing(Box::new(move |span| {
                let help = match p.as_str() {
                    "states" => Some(
                        "add `states:` with at least one state (one marked `type: initial`)"
                            .to_string(),
                    ),
                    "to" => Some("every transition names its target state with `to:`".to_string()),
                    "spec_version" => Some(format!("add `spec_version: \"{SPEC_VERSION}\"`")),
                    "class" => {
                        Some("name the hooks class registered in Rust with `class:`".to_string())
                    }
                    _ => None,
                };
                Diagnostic::error(format!("missing required key `{p}` in {owner}"), Some(span))
                    .with_help_opt(help)
            }))
        }
        K::Type { .. } => {
            let found = match err.instance().as_ref() {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "a boolean",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Array(_) => "a list",
                serde_json::Value::Object(_) => "a mapping",
            };
            let msg = err.to_string();
            let expected: Vec<&str> = msg
                .rsplit_once(" is not of type")
                .map(|(_, t)| t.trim_start_matches('s'))
                .unwrap_or_default()
                .split(',')
                .map(|t| t.trim().trim_matches('"'))
                .filter(|t| !t.is_empty() && *t != "null")
                .map(|t| match t {
                    "object" => "a mapping",
                    "array" => "a list",
                    "string" => "a string",
                    "integer" => "an integer",
                    "number" => "a number",
                    "boolean" => "a boolean",
                    other => other,
                })
                .collect();
            let expected = expected.join(" or ");
            SchemaProblem::Other(Box::new(move |span| {
                Diagnostic::error(format!("wrong type for {field}: found {found}"), Some(span))
                    .with_label(format!("expected {expected}"))
            }))
        }
        _ => {
            let msg = err.to_string();
            SchemaProblem::Other(Box::new(move |span| {
                let msg = if msg.chars().count() > 120 {
                    format!("{}…", msg.chars().take(120).collect::<String>())
                } else {
                    msg
                };
                Diagnostic::error(format!("invalid {field}: {msg}"), Some(span))
            }))
        }
    };
    vec![(path, problem)]
}
