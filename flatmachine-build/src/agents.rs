//! Flatagents at compile time: model profile resolution (the reference's `ProfileManager`),
//! the model settings the runtime receives, and the reads of an agent's `output` in a state's
//! templates.

use serde_json::{Map, Value};

/// The variables a flatagent's prompts (`system`, `user`, `instruction_suffix`) may read.
pub const PROMPT_SCOPE: &[&str] = &["input", "model", "tools", "tools_prompt"];

/// Whether a tool pattern of `allowed_tools` / `denied_tools` (a name, `*` wildcards allowed)
/// names the tool `name` (as the runtime's `tools::matches_pattern` for a tool without an MCP
/// server).
pub fn tool_pattern_matches(pattern: &str, name: &str) -> bool {
    if pattern.contains(':') {
        return false;
    }
    // `*`-only glob, linear: backtrack to the last `*` on a mismatch.
    let (p, t) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// The profiles of one `profiles.yml`, as JSON (custom keys kept).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfileSet {
    /// `model_profiles`.
    pub profiles: Map<String, Value>,
    /// `default`.
    pub default: Option<String>,
    /// `override`.
    pub override_: Option<String>,
}

impl ProfileSet {
    fn get(&self, name: &str) -> Option<&Map<String, Value>> {
        self.profiles.get(name).and_then(Value::as_object)
    }
}

/// A model config after profile resolution.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolved {
    /// The merged config (custom keys included).
    pub merged: Map<String, Value>,
    /// A profile the agent names is not in the profiles file: the loader reports it (an
    /// error), so a missing `name` is not reported again.
    pub profile_missing: bool,
    /// The profile the agent names, else the `default` profile (when it exists): what
    /// run-time endpoint overrides are keyed by.
    pub profile: Option<String>,
}

/// Resolve an agent's `model:` (string, mapping, or anything else) the way the reference does:
/// `default` profile → the named profile (a string `model:` or `model.profile`) → the inline keys
/// that are not null → `override` profile, each layer replacing keys of the ones before.
///
/// Without a profiles file, a string `model:` is the model name itself (`model: gpt-4o`).
pub fn resolve(model: &Value, profiles: Option<&ProfileSet>) -> Resolved {
    let mut out = Resolved::default();
    let Some(set) = profiles else {
        match model {
            Value::String(name) => {
                out.merged
                    .insert("name".into(), Value::String(name.clone()));
            }
            Value::Object(map) => {
                if map.get("profile").is_some_and(|p| !p.is_null()) {
                    out.profile_missing = true;
                }
                merge_inline(&mut out.merged, map);
            }
            _ => {}
        }
        return out;
    };
    if let Some((name, d)) = set
        .default
        .as_deref()
        .and_then(|d| set.get(d).map(|p| (d, p)))
    {
        out.merged.extend(d.clone());
        out.profile = Some(name.to_string());
    }
    let named = match model {
        Value::String(name) => Some(name.as_str()),
        Value::Object(map) => map.get("profile").and_then(Value::as_str),
        _ => None,
    };
    if let Some(name) = named {
        match set.get(name) {
            Some(p) => {
                out.merged.extend(p.clone());
                out.profile = Some(name.to_string());
            }
            None => out.profile_missing = true,
        }
    }
    if let Value::Object(map) = model {
        merge_inline(&mut out.merged, map);
    }
    if let Some(o) = set.override_.as_deref().and_then(|o| set.get(o)) {
        out.merged.extend(o.clone());
    }
    out
}

fn merge_inline(into: &mut Map<String, Value>, inline: &Map<String, Value>) {
    for (k, v) in inline {
        if k != "profile" && !v.is_null() {
            into.insert(k.clone(), v.clone());
        }
    }
}

/// Resolved model settings, typed for `ModelParams`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelIr {
    /// `provider`.
    pub provider: Option<String>,
    /// `name`.
    pub name: String,
    /// `temperature`.
    pub temperature: Option<f64>,
    /// `max_tokens`.
    pub max_tokens: Option<u64>,
    /// `top_p`.
    pub top_p: Option<f64>,
    /// `top_k`.
    pub top_k: Option<u64>,
    /// `frequency_penalty`.
    pub frequency_penalty: Option<f64>,
    /// `presence_penalty`.
    pub presence_penalty: Option<f64>,
    /// `seed`.
    pub seed: Option<i64>,
    /// `base_url`.
    pub base_url: Option<String>,
    /// `api_key_env` (extension).
    pub api_key_env: Option<String>,
    /// `input_cost_per_token` (extension).
    pub input_cost_per_token: Option<f64>,
    /// `output_cost_per_token` (extension).
    pub output_cost_per_token: Option<f64>,
    /// `timeout` (extension, seconds).
    pub timeout: Option<f64>,
    /// `max_retries` (extension).
    pub max_retries: Option<u64>,
    /// `json_mode` (extension): `json_schema` or `json_object`.
    pub json_mode: Option<String>,
    /// `prompt_caching` (extension).
    pub prompt_caching: bool,
    /// The profile the agent names, else the default profile.
    pub profile: Option<String>,
    /// The `model` prompt variable: the merged config with the reference's computed keys
    /// (`name` with its provider prefix, `temperature` defaulting to 0.7, the sampling keys
    /// as null when unset).
    pub raw: Value,
}

impl ModelIr {
    /// Typed settings from a merged config; `None` when it has no string `name`.
    pub fn from_merged(merged: &Map<String, Value>) -> Option<Self> {
        let s = |k: &str| merged.get(k).and_then(Value::as_str).map(str::to_string);
        let f = |k: &str| merged.get(k).and_then(Value::as_f64);
        let u = |k: &str| merged.get(k).and_then(Value::as_u64);
        let name = s("name").filter(|n| !n.is_empty())?;
        let mut m = ModelIr {
            provider: s("provider"),
            name,
            temperature: f("temperature"),
            max_tokens: u("max_tokens"),
            top_p: f("top_p"),
            top_k: u("top_k"),
            frequency_penalty: f("frequency_penalty"),
            presence_penalty: f("presence_penalty"),
            seed: merged.get("seed").and_then(Value::as_i64),
            base_url: s("base_url"),
            api_key_env: s("api_key_env"),
            input_cost_per_token: f("input_cost_per_token"),
            output_cost_per_token: f("output_cost_per_token"),
            timeout: f("timeout"),
            max_retries: u("max_retries"),
            json_mode: s("json_mode"),
            prompt_caching: merged
                .get("prompt_caching")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            profile: None,
            raw: Value::Null,
        };
        let qualified = match &m.provider {
            Some(p) if !m.name.contains('/') => format!("{p}/{}", m.name),
            _ => m.name.clone(),
        };
        let mut raw = merged.clone();
        raw.insert("name".into(), Value::String(qualified));
        raw.insert(
            "temperature".into(),
            merged
                .get("temperature")
                .cloned()
                .filter(|t| !t.is_null())
                .unwrap_or_else(|| Value::from(0.7)),
        );
        for key in [
            "max_tokens",
            "top_p",
            "top_k",
            "frequency_penalty",
            "presence_penalty",
            "seed",
            "base_url",
        ] {
            raw.entry(key).or_insert(Value::Null);
        }
        m.raw = Value::Object(raw);
        Some(m)
    }
}

/// A read of `output.<field>` (or `output['field']`) in a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRead {
    /// The field.
    pub field: String,
    /// Byte offset of the field name in the template.
    pub offset: usize,
    /// Its length in bytes.
    pub len: usize,
}

/// Every `output.<field>` read in a template that the template does not guard (nothing when the
/// template rebinds `output` with `{% set %}` or a `for` target, or does not lex). A field is
/// guarded when the template anywhere tests `output.<field> is defined` (or `is undefined`,
/// `is not defined`), reads it through `| default`, or tests its truth (`{% if output.x %}`,
/// `output.x or ...`); `output.<name>(...)` is a method call.
pub fn output_reads(src: &str) -> Vec<OutputRead> {
    crate::reads::field_reads(src, "output")
        .into_iter()
        .filter(|r| !r.guarded)
        .map(|r| OutputRead {
            field: r.field,
            offset: r.offset,
            len: r.len,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(v: Value) -> ProfileSet {
        ProfileSet {
            profiles: v["model_profiles"].as_object().cloned().unwrap_or_default(),
            default: v["default"].as_str().map(str::to_string),
            override_: v["override"].as_str().map(str::to_string),
        }
    }

    #[test]
    fn layers_apply_default_then_named_then_inline_then_override() {
        let p = set(json!({
            "model_profiles": {
                "base": {"name": "base-model", "provider": "openai", "temperature": 0.1, "top_p": 0.5, "custom": 1},
                "fast": {"name": "fast-model", "temperature": 0.2},
                "pin": {"max_tokens": 7, "name": "pinned"},
            },
            "default": "base",
            "override": "pin",
        }));
        let r = resolve(
            &json!({"profile": "fast", "temperature": 0.9, "seed": null, "extra": "x"}),
            Some(&p),
        );
        assert!(!r.profile_missing);
        assert_eq!(
            Value::Object(r.merged),
            json!({"name": "pinned", "provider": "openai", "temperature": 0.9, "top_p": 0.5,
                   "custom": 1, "extra": "x", "max_tokens": 7})
        );
        // A string names a profile; the default stays underneath.
        let r = resolve(&json!("fast"), Some(&p));
        assert_eq!(r.merged["name"], "pinned");
        assert_eq!(r.merged["temperature"], 0.2);
        assert_eq!(r.merged["top_p"], 0.5);
        assert_eq!(r.profile.as_deref(), Some("fast"));
        // An unknown name is missing even with a default (the loader reports an error).
        let r = resolve(
            &json!("fsat"),
            Some(&set(
                json!({"model_profiles": {"base": {"name": "b"}}, "default": "base"}),
            )),
        );
        assert!(r.profile_missing);
        // No model at all: the default profile.
        let r = resolve(
            &Value::Null,
            Some(&set(
                json!({"model_profiles": {"base": {"name": "b"}}, "default": "base"}),
            )),
        );
        assert_eq!(r.merged["name"], "b");
        assert_eq!(r.profile.as_deref(), Some("base"));
        // Without a default it is missing.
        let r = resolve(
            &json!("fsat"),
            Some(&set(json!({"model_profiles": {"base": {"name": "b"}}}))),
        );
        assert!(r.profile_missing);
        assert!(r.merged.is_empty());
    }

    #[test]
    fn without_profiles_a_string_is_the_model_name() {
        let r = resolve(&json!("gpt-4o"), None);
        assert_eq!(r.merged["name"], "gpt-4o");
        let r = resolve(&json!({"profile": "x", "name": "n"}), None);
        assert!(r.profile_missing);
    }

    #[test]
    fn model_params_and_the_prompt_variable() {
        let merged = json!({"name": "gpt-4o", "provider": "openai", "max_retries": 3, "timeout": 30, "house": "x"});
        let m = ModelIr::from_merged(merged.as_object().unwrap()).unwrap();
        assert_eq!(m.max_retries, Some(3));
        assert_eq!(m.timeout, Some(30.0));
        assert_eq!(m.raw["name"], "openai/gpt-4o");
        assert_eq!(m.raw["temperature"], 0.7);
        assert_eq!(m.raw["house"], "x");
        assert!(m.raw["top_k"].is_null());
        assert!(ModelIr::from_merged(json!({"provider": "x"}).as_object().unwrap()).is_none());
    }

    #[test]
    fn output_reads_are_found() {
        let r = output_reads("{{ output.score }} {{ output['feed back'] }} {{ x.output.no }}");
        let fields: Vec<&str> = r.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(fields, ["score", "feed back"]);
        assert_eq!(r[0].offset, 10);
        assert_eq!(r[0].len, 5);
        assert!(output_reads("{% set output = 1 %}{{ output.x }}").is_empty());
        assert!(output_reads("plain output.x").is_empty());
        // Guarded reads and method calls are not reads of a field.
        let guarded = "{% if output.a is defined %}{{ output.a }}{% elif output.b is not defined %}\
                       {{ output.b }}{% endif %}{{ output.c | default('') }}{{ output.get('d') }}\
                       {{ output.e or output.content }}";
        assert!(
            output_reads(guarded).is_empty(),
            "{:?}",
            output_reads(guarded)
        );
    }
}
