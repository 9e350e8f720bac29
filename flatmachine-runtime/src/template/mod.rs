//! Jinja templates embedded in machine configs (`context:`, `input:`, `output_to_context:`,
//! `output:`, `foreach:`, `key:`, ...), rendered with [minijinja].
//!
//! The rules (see `docs/templates.md` for the user-facing version):
//!
//! 1. A string that is exactly one `{{ expr }}` (surrounding whitespace allowed) yields the
//!    expression's *typed* value: strings stay strings, booleans stay booleans, lists and maps
//!    stay structured, a missing field gives `null`. Attribute access on a missing value
//!    (`{{ context.nope.deeper }}`) is an error. When the expression ends in `| tojson`
//!    (`{{ context.messages | tojson }}`), the JSON text is parsed back: the value itself,
//!    as the reference's parse of rendered JSON gives it.
//! 2. Any other template (mixed text, several expressions, `{% ... %}` blocks) renders to text.
//!    Lists and maps are written as JSON (`["a", "b"]`), other values as Jinja does
//!    (`True`, `None`, `1.5`). The text is then parsed as JSON if it can be (as the Python
//!    reference does), else kept as a string.
//! 3. A string without `{{`/`{%` that is a dotted path `output.x`, `context.a.b`, `input.y`
//!    is looked up directly and keeps its type (missing → `null`).
//! 4. Every other string is literal text. Rendering walks lists and maps at every depth;
//!    numbers, booleans and `null` pass through.
//!
//! Generated code embeds configs as [`TemplateValue`] trees of `static` data; each template
//! string lives in a [`TemplateSlot`] that is classified and compiled once per process.
//! Variables come from a [`Scope`], built once per step.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use minijinja::machinery::ast::Stmt;
use minijinja::value::{Enumerator, Object, ObjectExt, ObjectRepr, ValueKind};
use minijinja::{AutoEscape, Environment, Expression, Template, UndefinedBehavior};
use serde_json::{Map, Number};

use crate::Context;
use crate::error::{StateError, error_type};

type Json = serde_json::Value;
type MjValue = minijinja::Value;

mod classify;
mod scope;
#[cfg(test)]
mod tests;

use classify::*;
use scope::*;
pub use scope::{Scope, ScopeRef};

// ---------------------------------------------------------------------------------------------
// Static template data
// ---------------------------------------------------------------------------------------------

/// A value in a machine config that may contain templates, embedded as static data by the
/// code generator. Render it with [`render`].
#[derive(Debug, Clone, Copy)]
pub enum TemplateValue {
    /// JSON `null`.
    Null,
    /// A boolean (passes through unchanged).
    Bool(bool),
    /// An integer (passes through unchanged).
    Int(i64),
    /// A float (passes through unchanged; a non-finite float renders as `null`).
    Float(f64),
    /// A string: literal text, a bare path or a template.
    Str(&'static TemplateSlot),
    /// A list; every item is rendered.
    List(&'static [TemplateValue]),
    /// A map, in source order; every value is rendered (keys are not templates).
    Map(&'static [(&'static str, TemplateValue)]),
}

/// One template string, classified and compiled lazily, once per process.
///
/// Const-constructible so that generated code can place it in a `static`.
pub struct TemplateSlot {
    src: &'static str,
    compiled: OnceLock<Compiled<'static>>,
}

impl TemplateSlot {
    /// A slot for the given template source; nothing is parsed until the first render.
    pub const fn new(src: &'static str) -> Self {
        Self {
            src,
            compiled: OnceLock::new(),
        }
    }

    /// The template source, as written in the machine config.
    pub fn source(&self) -> &'static str {
        self.src
    }

    /// Whether the slot has already been classified and compiled (by a render or
    /// [`prepare`](Self::prepare)).
    pub fn is_compiled(&self) -> bool {
        self.compiled.get().is_some()
    }

    /// Classifies and compiles the template now (normally done on first render).
    /// Returns the syntax error, if any; rendering the slot would return the same error.
    pub fn prepare(&self) -> Result<(), TemplateError> {
        match self.compiled() {
            Compiled::Invalid(err) => Err(err.to_error(self.src)),
            _ => Ok(()),
        }
    }

    fn compiled(&self) -> &Compiled<'static> {
        self.compiled.get_or_init(|| {
            #[cfg(test)]
            tests::count_compile();
            fast_path(self.src).unwrap_or_else(|| classify(environment(), self.src))
        })
    }
}

impl fmt::Debug for TemplateSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TemplateSlot").field(&self.src).finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A template failed to parse or render (syntax error, attribute of an undefined value,
/// unknown filter, invalid JSON given to `fromjson`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// The template source.
    pub template: String,
    /// What went wrong, as reported by minijinja (kind and detail).
    pub message: String,
    /// 1-based line within the template, when known.
    pub line: Option<usize>,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        const MAX: usize = 200;
        if self.template.len() <= MAX {
            write!(f, " in template {:?}", self.template)
        } else {
            let mut end = MAX;
            while !self.template.is_char_boundary(end) {
                end -= 1;
            }
            write!(f, " in template {:?}...", &self.template[..end])
        }
    }
}

impl std::error::Error for TemplateError {}

impl From<TemplateError> for StateError {
    fn from(err: TemplateError) -> Self {
        StateError::new(error_type::TEMPLATE, err.to_string())
    }
}

/// Error data kept in a slot whose template does not compile (the source is the slot's).
#[derive(Debug)]
struct CompileError {
    message: String,
    line: Option<usize>,
}

impl CompileError {
    fn from_mj(err: &minijinja::Error, line_offset: usize) -> Self {
        let mut message = match err.detail() {
            Some(detail) => format!("{}: {}", err.kind(), detail),
            None => err.kind().to_string(),
        };
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self {
            message,
            line: err.line().map(|line| line + line_offset),
        }
    }

    fn to_error(&self, src: &str) -> TemplateError {
        TemplateError {
            template: src.to_owned(),
            message: self.message.clone(),
            line: self.line,
        }
    }
}

fn mj_error(src: &str, err: &minijinja::Error, line_offset: usize) -> TemplateError {
    CompileError::from_mj(err, line_offset).to_error(src)
}

// ---------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------

/// The process-wide minijinja environment used for every template.
///
/// Configuration: undefined behaviour [`UndefinedBehavior::Lenient`] (a missing value prints
/// as empty text and is `null` as a single expression; attribute access on it is an error),
/// no auto-escaping, lists and maps written as JSON in text output, and a `fromjson` filter
/// in addition to minijinja's built-ins (including `tojson`).
pub fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_formatter(format_value);
        env.add_filter("fromjson", fromjson);
        env
    })
}

/// Text output: lists and maps as JSON (Python `json.dumps` spacing), the rest as Jinja does.
fn format_value(
    out: &mut minijinja::Output,
    state: &mut minijinja::State,
    value: &MjValue,
) -> Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Seq | ValueKind::Map | ValueKind::Iterable => {
            let json = mj_to_json(value)?;
            out.write_str(&to_json_text(&json))?;
            Ok(())
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// `fromjson`: parses a JSON string into a value; any other value passes through unchanged.
fn fromjson(value: MjValue) -> Result<MjValue, minijinja::Error> {
    match value.as_str() {
        Some(text) => match crate::agents::output::parse_bounded(text) {
            Ok(json) => Ok(json_to_mj(&json)),
            Err(err) => Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("fromjson: invalid JSON: {err}"),
            )),
        },
        None => Ok(value),
    }
}

/// JSON text with Python's `json.dumps` default separators (`", "` and `": "`).
fn to_json_text(json: &Json) -> String {
    struct PySpaced;
    impl serde_json::ser::Formatter for PySpaced {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first {
                Ok(())
            } else {
                writer.write_all(b", ")
            }
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first {
                Ok(())
            } else {
                writer.write_all(b", ")
            }
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
        ) -> std::io::Result<()> {
            writer.write_all(b": ")
        }
    }
    let mut buf = Vec::with_capacity(64);
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, PySpaced);
    // Serializing a `serde_json::Value` into memory cannot fail.
    if serde::Serialize::serialize(json, &mut ser).is_err() {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

/// Renders a whole config tree: every string at every depth, in lists and maps alike.
pub fn render(value: &TemplateValue, scope: &Scope) -> Result<Json, TemplateError> {
    render_with(value, &scope.as_ref())
}

/// [`render`] with a borrowed scope.
pub fn render_with(value: &TemplateValue, scope: &ScopeRef<'_>) -> Result<Json, TemplateError> {
    Ok(match *value {
        TemplateValue::Null => Json::Null,
        TemplateValue::Bool(b) => Json::Bool(b),
        TemplateValue::Int(i) => Json::Number(i.into()),
        TemplateValue::Float(f) => Number::from_f64(f).map_or(Json::Null, Json::Number),
        TemplateValue::Str(slot) => eval(slot.compiled(), slot.src, scope)?,
        TemplateValue::List(items) => Json::Array(
            items
                .iter()
                .map(|item| render_with(item, scope))
                .collect::<Result<_, _>>()?,
        ),
        TemplateValue::Map(entries) => {
            let mut map = Map::with_capacity(entries.len());
            for (key, value) in entries {
                map.insert((*key).to_owned(), render_with(value, scope)?);
            }
            Json::Object(map)
        }
    })
}

/// Renders one template string (compiled on first use, then cached in the slot).
pub fn render_slot(slot: &TemplateSlot, scope: &Scope) -> Result<Json, TemplateError> {
    eval(slot.compiled(), slot.src, &scope.as_ref())
}

/// [`render_slot`] with a borrowed scope.
pub fn render_slot_with(slot: &TemplateSlot, scope: &ScopeRef<'_>) -> Result<Json, TemplateError> {
    eval(slot.compiled(), slot.src, scope)
}

/// Renders a config only known at run time (e.g. hook arguments): same rules as [`render`],
/// but each string is parsed on the fly (nothing is cached).
pub fn render_dynamic(value: &Json, scope: &Scope) -> Result<Json, TemplateError> {
    render_dynamic_with(value, &scope.as_ref())
}

fn render_dynamic_with(value: &Json, scope: &ScopeRef<'_>) -> Result<Json, TemplateError> {
    Ok(match value {
        Json::String(src) => eval(&classify(environment(), src), src, scope)?,
        Json::Array(items) => Json::Array(
            items
                .iter()
                .map(|item| render_dynamic_with(item, scope))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(entries) => {
            let mut map = Map::with_capacity(entries.len());
            for (key, value) in entries {
                map.insert(key.clone(), render_dynamic_with(value, scope)?);
            }
            Json::Object(map)
        }
        other => other.clone(),
    })
}

fn eval<'a>(
    compiled: &Compiled<'a>,
    src: &'a str,
    scope: &ScopeRef<'_>,
) -> Result<Json, TemplateError> {
    match compiled {
        Compiled::Literal => Ok(Json::String(src.to_owned())),
        Compiled::BarePath(path) => Ok(lookup_path(path, scope)),
        Compiled::Path {
            parts,
            expr,
            line_offset,
        } => match lookup_plain_path(parts, scope) {
            Some(json) => Ok(json),
            None => eval_expression(expr, src, *line_offset, scope),
        },
        Compiled::FastPath { parts, slow } => match lookup_plain_path(parts, scope) {
            Some(json) => Ok(json),
            None => eval(
                slow.get_or_init(|| Box::new(classify(environment(), src))),
                src,
                scope,
            ),
        },
        Compiled::Single {
            expr,
            line_offset,
            json,
        } => {
            let value = eval_expression(expr, src, *line_offset, scope)?;
            match value {
                // `{{ x | tojson }}` gives x (the reference parses rendered JSON back).
                Json::String(text) if *json => {
                    Ok(serde_json::from_str(&text).unwrap_or(Json::String(text)))
                }
                other => Ok(other),
            }
        }
        Compiled::PathText { pieces, tmpl } => {
            let text = match write_path_text(pieces, scope) {
                Some(text) => text,
                None => tmpl
                    .render(scope.root_value())
                    .map_err(|err| mj_error(src, &err, 0))?,
            };
            Ok(parse_rendered(text))
        }
        Compiled::Text(tmpl) => {
            let text = tmpl
                .render(scope.root_value())
                .map_err(|err| mj_error(src, &err, 0))?;
            Ok(parse_rendered(text))
        }
        Compiled::Invalid(err) => Err(err.to_error(src)),
    }
}

fn eval_expression(
    expr: &Expression<'_, '_>,
    src: &str,
    line_offset: usize,
    scope: &ScopeRef<'_>,
) -> Result<Json, TemplateError> {
    let value = expr
        .eval(scope.root_value())
        .map_err(|err| mj_error(src, &err, line_offset))?;
    mj_to_json(&value).map_err(|err| mj_error(src, &err, line_offset))
}

/// A `{{ a.b.c }}` path read on the JSON, giving what minijinja would: `None` when minijinja
/// must decide (an unknown variable, a step through something that is not an object, a
/// missing value before the last step, which is an error).
fn lookup_plain_path(parts: &[&str], scope: &ScopeRef<'_>) -> Option<Json> {
    let (first, rest) = parts.split_first()?;
    let mut current = scope.template_var(first)?;
    for (i, part) in rest.iter().enumerate() {
        match current.object()?.get(*part) {
            Some(next) => current = JsonRef::Json(next),
            // Undefined as the result is `null`; reading through it is an error.
            None => return (i + 1 == rest.len()).then_some(Json::Null),
        }
    }
    Some(current.to_json())
}

/// The value a plain path names, when it exists and every step is an object field.
fn resolve_plain_path<'a>(parts: &[&str], scope: &ScopeRef<'a>) -> Option<JsonRef<'a>> {
    let (first, rest) = parts.split_first()?;
    let mut current = scope.template_var(first)?;
    for part in rest {
        current = JsonRef::Json(current.object()?.get(*part)?);
    }
    Some(current)
}

/// Bare path lookup on the JSON itself: walks objects, anything else (or missing) is `null`.
fn lookup_path(path: &str, scope: &ScopeRef<'_>) -> Json {
    let mut parts = path.split('.');
    let Some(mut current) = parts.next().and_then(|name| scope.json_var(name)) else {
        return Json::Null;
    };
    for part in parts {
        match current.object().and_then(|map| map.get(part)) {
            Some(next) => current = JsonRef::Json(next),
            None => return Json::Null,
        }
    }
    current.to_json()
}

/// Rendered text: JSON if it parses (as the reference does), else the string.
///
/// An integer literal too large for 64 bits stays a string rather than becoming a lossy float.
fn parse_rendered(text: String) -> Json {
    let looks_like_json = text
        .bytes()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|b| {
            matches!(
                b,
                b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
            )
        });
    if !looks_like_json {
        return Json::String(text);
    }
    // Text nesting deeper than values entering a run may stays text (it could not be
    // checkpointed as a value).
    match crate::agents::output::parse_bounded(&text) {
        Ok(Json::Number(n)) if n.is_f64() && !text.contains(['.', 'e', 'E']) => Json::String(text),
        Ok(json) => json,
        Err(_) => Json::String(text),
    }
}

// ---------------------------------------------------------------------------------------------
// Value conversions
// ---------------------------------------------------------------------------------------------

/// JSON → minijinja, keeping integers as integers and map order.
pub(crate) fn json_to_mj(json: &Json) -> MjValue {
    match json {
        Json::Null => MjValue::from(()),
        Json::Bool(b) => MjValue::from(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                MjValue::from(i)
            } else if let Some(u) = n.as_u64() {
                MjValue::from(u)
            } else {
                MjValue::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => MjValue::from(s.as_str()),
        Json::Array(items) => MjValue::from(items.iter().map(json_to_mj).collect::<Vec<_>>()),
        Json::Object(map) => MjValue::from_pairs(
            map.iter()
                .map(|(k, v)| (MjValue::from(k.as_str()), json_to_mj(v))),
        ),
    }
}

/// minijinja → JSON. Undefined and none become `null`; integers stay integers (128-bit
/// values that do not fit 64 bits become floats); non-finite floats become `null`.
fn mj_to_json(value: &MjValue) -> Result<Json, minijinja::Error> {
    Ok(match value.kind() {
        ValueKind::Undefined | ValueKind::None => Json::Null,
        ValueKind::Bool => Json::Bool(value.is_true()),
        ValueKind::Number => number_to_json(value),
        ValueKind::String => Json::String(value.as_str().unwrap_or_default().to_owned()),
        ValueKind::Bytes => Json::String(
            value
                .as_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        ),
        ValueKind::Seq | ValueKind::Iterable => {
            let mut items = Vec::with_capacity(value.len().unwrap_or(0));
            for item in value.try_iter()? {
                items.push(mj_to_json(&item)?);
            }
            Json::Array(items)
        }
        ValueKind::Map => {
            if let Some(var) = value.downcast_object_ref::<Var>() {
                return Ok(var.json.clone());
            }
            let mut map = Map::new();
            if let Some(pairs) = value.as_object().and_then(|obj| obj.try_iter_pairs()) {
                for (key, item) in pairs {
                    map.insert(map_key(&key), mj_to_json(&item)?);
                }
            }
            Json::Object(map)
        }
        ValueKind::Invalid => {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::BadSerialization,
                value.to_string(),
            ));
        }
        _ => Json::String(value.to_string()),
    })
}

fn number_to_json(value: &MjValue) -> Json {
    if value.is_integer() {
        if let Ok(i) = i64::try_from(value.clone()) {
            return Json::Number(i.into());
        }
        if let Ok(u) = u64::try_from(value.clone()) {
            return Json::Number(u.into());
        }
        if let Ok(i) = i128::try_from(value.clone()) {
            return Number::from_f64(i as f64).map_or(Json::Null, Json::Number);
        }
        if let Ok(u) = u128::try_from(value.clone()) {
            return Number::from_f64(u as f64).map_or(Json::Null, Json::Number);
        }
    }
    f64::try_from(value.clone())
        .ok()
        .and_then(Number::from_f64)
        .map_or(Json::Null, Json::Number)
}

/// A JSON object key for a minijinja map key (numbers and booleans as their JSON text).
fn map_key(key: &MjValue) -> String {
    match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
        ValueKind::Bool => if key.is_true() { "true" } else { "false" }.to_owned(),
        ValueKind::None | ValueKind::Undefined => "null".to_owned(),
        ValueKind::Number => number_to_json(key).to_string(),
        _ => key.to_string(),
    }
}
