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

#[cfg(test)]
mod tests;

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
// Classification
// ---------------------------------------------------------------------------------------------

/// What a template string turned out to be.
enum Compiled<'a> {
    /// Plain text, no templating.
    Literal,
    /// `context.a.b` style path (the trimmed source).
    BarePath(&'a str),
    /// Exactly one `{{ expr }}` whose expression is a plain path (`input.item`, `output`):
    /// looked up on the JSON directly when every step is an object field; otherwise (a
    /// missing value in the middle, a list, a string) `expr` is evaluated as for `Single`.
    Path {
        /// The path's names (at least one).
        parts: Vec<&'a str>,
        expr: Expression<'a, 'a>,
        line_offset: usize,
    },
    /// `{{ plain.path }}` recognised without minijinja (see [`fast_path`]): looked up on the
    /// JSON as for `Path`; when that fails, the template is classified by minijinja (once)
    /// and evaluated as that.
    FastPath {
        parts: Vec<&'a str>,
        slow: OnceLock<Box<Compiled<'a>>>,
    },
    /// Exactly one `{{ expr }}`.
    Single {
        expr: Expression<'a, 'a>,
        /// Lines before the expression in the template (for error lines).
        line_offset: usize,
        /// The expression ends in `| tojson`: its JSON text is parsed back into the value.
        json: bool,
    },
    /// Text and `{{ plain.path }}` expressions only (`Hello {{ context.name }}!`): written
    /// straight from the JSON when every value read is a string or an integer; otherwise
    /// rendered by minijinja as for `Text`. Then parsed as JSON if possible.
    PathText {
        pieces: Vec<Piece<'a>>,
        tmpl: Template<'a, 'a>,
    },
    /// Anything else: rendered to text, then parsed as JSON if possible.
    Text(Template<'a, 'a>),
    /// Does not compile.
    Invalid(CompileError),
}

/// `^(output|context|input)(\.[A-Za-z_][A-Za-z0-9_]*)+$` (the reference's path pattern).
fn is_bare_path(s: &str) -> bool {
    let mut parts = s.split('.');
    if !matches!(parts.next(), Some("output" | "context" | "input")) {
        return false;
    }
    let mut count = 0;
    for part in parts {
        let mut bytes = part.bytes();
        match bytes.next() {
            Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
            _ => return false,
        }
        if !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return false;
        }
        count += 1;
    }
    count > 0
}

/// `name(.name)*` with Jinja identifiers, the first not a constant (`true`, `none`, ...):
/// an expression that only reads a variable and its fields.
fn plain_path(s: &str) -> Option<Vec<&str>> {
    let parts: Vec<&str> = s.split('.').collect();
    let first = parts.first()?;
    if matches!(
        *first,
        "true" | "false" | "none" | "True" | "False" | "None"
    ) {
        return None;
    }
    for part in &parts {
        let mut bytes = part.bytes();
        match bytes.next() {
            Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
            _ => return None,
        }
        if !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return None;
        }
    }
    Some(parts)
}

fn is_json_ws(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

fn classify<'a>(env: &'a Environment<'a>, src: &'a str) -> Compiled<'a> {
    if !src.contains("{{") && !src.contains("{%") {
        let trimmed = src.trim();
        return if is_bare_path(trimmed) {
            Compiled::BarePath(trimmed)
        } else {
            Compiled::Literal
        };
    }
    let ast = match minijinja::machinery::parse(src, "<template>", Default::default()) {
        Ok(ast) => ast,
        Err(err) => return Compiled::Invalid(CompileError::from_mj(&err, 0)),
    };
    if let Some((span, json)) = single_expression_span(&ast) {
        let (start, end) = (span.start_offset as usize, span.end_offset as usize);
        if let (Some(before), Some(expr_src), Some(after)) =
            (src.get(..start), src.get(start..end), src.get(end..))
        {
            // Sanity check: the span must be exactly what sits between the delimiters.
            let before = before.trim_end();
            let after = after.trim_start();
            let delimited = ["{{", "{{-", "{{+"].iter().any(|d| before.ends_with(d))
                && ["}}", "-}}", "+}}"].iter().any(|d| after.starts_with(d));
            if let (true, Ok(expr)) = (delimited, env.compile_expression(expr_src)) {
                let line_offset = usize::from(span.start_line).saturating_sub(1);
                if let Some(parts) = plain_path(expr_src.trim()) {
                    return Compiled::Path {
                        parts,
                        expr,
                        line_offset,
                    };
                }
                return Compiled::Single {
                    expr,
                    line_offset,
                    json,
                };
            }
        }
    }
    match env.template_from_str(src) {
        Ok(tmpl) => match path_text(src) {
            Some(pieces) => Compiled::PathText { pieces, tmpl },
            None => Compiled::Text(tmpl),
        },
        Err(err) => Compiled::Invalid(CompileError::from_mj(&err, 0)),
    }
}

/// `{{ name.name }}` (one line, spaces only inside the braces, nothing outside them, names
/// that are plain Jinja identifiers and do not start with an operator word): a
/// [`Compiled::FastPath`], which needs neither the minijinja environment nor its parser while
/// the path resolves (minijinja would classify it as a `Path` with the same parts). `None` for
/// anything else.
fn fast_path(src: &str) -> Option<Compiled<'_>> {
    let inner = src.strip_prefix("{{")?.strip_suffix("}}")?;
    let path = inner.trim_matches(' ');
    if path.is_empty()
        || !path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    {
        return None;
    }
    let parts = plain_path(path)?;
    if matches!(parts[0], "not" | "and" | "or" | "in" | "is" | "if" | "else") {
        return None;
    }
    Some(Compiled::FastPath {
        parts,
        slow: OnceLock::new(),
    })
}

/// A piece of a [`Compiled::PathText`] template.
enum Piece<'a> {
    Raw(&'a str),
    Path(Vec<&'a str>),
}

/// Splits a template made only of text and `{{ plain.path }}` expressions; `None` for any
/// other (blocks, comments, whitespace control, a trailing newline minijinja would trim,
/// expressions that are not plain paths).
fn path_text(src: &str) -> Option<Vec<Piece<'_>>> {
    if ["{%", "{#", "{{-", "-}}", "{{+", "+}}"]
        .iter()
        .any(|marker| src.contains(marker))
        || src.ends_with(['\n', '\r'])
    {
        return None;
    }
    let mut pieces = Vec::new();
    let mut rest = src;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            pieces.push(Piece::Raw(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}")?;
        pieces.push(Piece::Path(plain_path(after[..close].trim())?));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Raw(rest));
    }
    Some(pieces)
}

/// Writes a [`Compiled::PathText`] template from the JSON; `None` when a value is not a
/// string or an integer (minijinja decides how those print) or a path is not plain.
fn write_path_text(pieces: &[Piece<'_>], scope: &ScopeRef<'_>) -> Option<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Raw(text) => out.push_str(text),
            Piece::Path(parts) => match resolve_plain_path(parts, scope)? {
                JsonRef::Json(Json::String(text)) => out.push_str(text),
                JsonRef::Json(Json::Number(n)) if !n.is_f64() => {
                    let _ = write!(out, "{n}");
                }
                _ => return None,
            },
        }
    }
    Some(out)
}

/// The span of the expression when the template is exactly one `{{ expr }}` plus whitespace,
/// and whether its outermost operation is the `tojson` filter.
fn single_expression_span(ast: &Stmt<'_>) -> Option<(minijinja::machinery::Span, bool)> {
    use minijinja::machinery::ast::Expr;
    let Stmt::Template(tmpl) = ast else {
        return None;
    };
    let mut found = None;
    for child in &tmpl.children {
        match child {
            Stmt::EmitRaw(raw) if is_json_ws(raw.raw) => {}
            Stmt::EmitExpr(emit) if found.is_none() => {
                let json = matches!(&emit.expr, Expr::Filter(f) if f.name == "tojson");
                found = Some((emit.span(), json));
            }
            _ => return None,
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Scope
// ---------------------------------------------------------------------------------------------

/// One variable of a scope: its JSON value, exposed to minijinja lazily.
///
/// When the value is a JSON object it is exposed as a map object whose fields are
/// converted on first access (costly ones are cached), so a template reading
/// `context.n` does not convert the whole context.
#[derive(Debug)]
struct Var {
    json: Json,
    /// Converted fields that are costly to convert (lists, maps, long strings), by key.
    fields: Mutex<HashMap<String, MjValue>>,
    /// The converted value (non-object values only).
    whole: OnceLock<MjValue>,
}

impl Var {
    fn new(json: Json) -> Arc<Self> {
        Arc::new(Self {
            json,
            fields: Mutex::new(HashMap::new()),
            whole: OnceLock::new(),
        })
    }

    fn to_mj(self: &Arc<Self>) -> MjValue {
        if self.json.is_object() {
            MjValue::from_dyn_object(self.clone())
        } else {
            self.whole.get_or_init(|| json_to_mj(&self.json)).clone()
        }
    }

    fn field(&self, key: &str) -> Option<MjValue> {
        let value = self.json.as_object()?.get(key)?;
        let worth_caching = match value {
            Json::Array(_) | Json::Object(_) => true,
            Json::String(s) => s.len() > 32,
            _ => false,
        };
        if !worth_caching {
            return Some(json_to_mj(value));
        }
        let mut cache = self.fields.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = cache.get(key) {
            return Some(hit.clone());
        }
        let converted = json_to_mj(value);
        cache.insert(key.to_owned(), converted.clone());
        Some(converted)
    }
}

impl Object for Var {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &MjValue) -> Option<MjValue> {
        self.field(key.as_str()?)
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<MjValue> {
        self.field(key)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.mapped_enumerator(|this| match this.json.as_object() {
            Some(map) => Box::new(map.keys().map(|k| MjValue::from(k.as_str()))),
            None => Box::new(std::iter::empty()),
        })
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.json.as_object().map_or(0, Map::len))
    }
}

/// The root object templates see: `context`, `input`, `output` and the foreach item.
#[derive(Debug, Clone)]
struct Root {
    context: Arc<Var>,
    input: Option<Arc<Var>>,
    output: Option<Arc<Var>>,
    item: Option<(Arc<str>, Arc<Var>)>,
}

impl Root {
    fn get(&self, key: &str) -> Option<&Arc<Var>> {
        if let Some((name, item)) = &self.item
            && &**name == key
        {
            return Some(item);
        }
        match key {
            "context" => Some(&self.context),
            "input" => self.input.as_ref(),
            "output" => self.output.as_ref(),
            _ => None,
        }
    }
}

impl Object for Root {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &MjValue) -> Option<MjValue> {
        self.get(key.as_str()?).map(Var::to_mj)
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<MjValue> {
        self.get(key).map(Var::to_mj)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let mut names = vec![MjValue::from("context")];
        if self.input.is_some() {
            names.push(MjValue::from("input"));
        }
        if self.output.is_some() {
            names.push(MjValue::from("output"));
        }
        if let Some((name, _)) = &self.item
            && !matches!(&**name, "context" | "input" | "output")
        {
            names.push(MjValue::from(name.clone()));
        }
        Enumerator::Values(names)
    }
}

/// The variables templates can see: `context`, and optionally `input`, `output` and a
/// foreach item. Build it once per step and reuse it for all of the step's templates.
///
/// Cloning is cheap (shared data), so a foreach can build one base scope and
/// `clone().with_item(..)` it per item instead of copying the context again. The execution
/// loop uses [`ScopeRef`] instead, which borrows the variables and copies nothing.
#[derive(Debug, Clone)]
pub struct Scope {
    root: Arc<Root>,
}

impl Scope {
    /// A scope with `context` bound (copied once; fields are converted lazily).
    pub fn new(context: &Context) -> Self {
        Self {
            root: Arc::new(Root {
                context: Var::new(Json::Object(context.clone())),
                input: None,
                output: None,
                item: None,
            }),
        }
    }

    /// The scope of templates inside a state: `context`, and `input` bound to the same
    /// context (as the reference does), sharing one copy.
    pub fn for_state(context: &Context) -> Self {
        let var = Var::new(Json::Object(context.clone()));
        Self {
            root: Arc::new(Root {
                context: Arc::clone(&var),
                input: Some(var),
                output: None,
                item: None,
            }),
        }
    }

    /// Binds `input`.
    pub fn with_input(mut self, input: &Json) -> Self {
        Arc::make_mut(&mut self.root).input = Some(Var::new(input.clone()));
        self
    }

    /// Binds `output`.
    pub fn with_output(mut self, output: &Json) -> Self {
        Arc::make_mut(&mut self.root).output = Some(Var::new(output.clone()));
        self
    }

    /// Binds a foreach item under `name` (the state's `as:`, default `item`). The item
    /// shadows a variable of the same name in `{{ }}` templates.
    pub fn with_item(mut self, name: &str, item: &Json) -> Self {
        Arc::make_mut(&mut self.root).item = Some((Arc::from(name), Var::new(item.clone())));
        self
    }

    /// The same variables, borrowed (with the converted values this scope already holds).
    pub fn as_ref(&self) -> ScopeRef<'_> {
        let root = &self.root;
        let input = match &root.input {
            None => InputRef::None,
            Some(var) if Arc::ptr_eq(var, &root.context) => InputRef::Context,
            Some(var) => InputRef::Json(&var.json),
        };
        ScopeRef {
            context: root
                .context
                .json
                .as_object()
                .unwrap_or_else(|| empty_context()),
            input,
            output: root.output.as_ref().map(|v| &v.json),
            item: root.item.as_ref().map(|(name, v)| (&**name, &v.json)),
            vars: Vars {
                context: OnceLock::from(Arc::clone(&root.context)),
                input: root.input.clone().map(OnceLock::from).unwrap_or_default(),
                output: root.output.clone().map(OnceLock::from).unwrap_or_default(),
                item: root
                    .item
                    .as_ref()
                    .map(|(_, v)| OnceLock::from(Arc::clone(v)))
                    .unwrap_or_default(),
                root: OnceLock::from(Arc::clone(root)),
            },
        }
    }
}

fn empty_context() -> &'static Context {
    static EMPTY: OnceLock<Context> = OnceLock::new();
    EMPTY.get_or_init(Context::new)
}

/// What `input` is bound to in a [`ScopeRef`].
#[derive(Debug, Clone, Copy)]
enum InputRef<'a> {
    None,
    /// The context itself (templates inside a state).
    Context,
    Json(&'a Json),
}

/// The minijinja side of a [`ScopeRef`]: each variable converted (copied) only when a
/// template that needs minijinja reads it, then kept.
#[derive(Debug, Clone, Default)]
struct Vars {
    context: OnceLock<Arc<Var>>,
    input: OnceLock<Arc<Var>>,
    output: OnceLock<Arc<Var>>,
    item: OnceLock<Arc<Var>>,
    root: OnceLock<Arc<Root>>,
}

/// A [`Scope`] that borrows its variables: nothing is copied to build it, and plain paths
/// (`{{ input.item }}`, `context.a.b`) are read straight from the borrowed JSON. Only a
/// template that needs minijinja (filters, operators, text with several parts) makes the
/// copy a [`Scope`] makes up front, once per scope.
#[derive(Debug, Clone)]
pub struct ScopeRef<'a> {
    context: &'a Context,
    input: InputRef<'a>,
    output: Option<&'a Json>,
    item: Option<(&'a str, &'a Json)>,
    vars: Vars,
}

impl<'a> ScopeRef<'a> {
    /// A scope with `context` bound.
    pub fn new(context: &'a Context) -> Self {
        Self {
            context,
            input: InputRef::None,
            output: None,
            item: None,
            vars: Vars::default(),
        }
    }

    /// The scope of templates inside a state: `context`, and `input` bound to the same
    /// context (as the reference does).
    pub fn for_state(context: &'a Context) -> Self {
        Self {
            input: InputRef::Context,
            ..Self::new(context)
        }
    }

    /// Binds `input`.
    pub fn with_input(mut self, input: &'a Json) -> Self {
        self.input = InputRef::Json(input);
        self.vars.input = OnceLock::new();
        self.vars.root = OnceLock::new();
        self
    }

    /// Binds `output`.
    pub fn with_output(mut self, output: &'a Json) -> Self {
        self.output = Some(output);
        self.vars.output = OnceLock::new();
        self.vars.root = OnceLock::new();
        self
    }

    /// Binds a foreach item under `name` (see [`Scope::with_item`]). The variables already
    /// converted for minijinja are kept.
    pub fn with_item(mut self, name: &'a str, item: &'a Json) -> Self {
        self.item = Some((name, item));
        self.vars.item = OnceLock::new();
        self.vars.root = OnceLock::new();
        self
    }

    fn context_var(&self) -> &Arc<Var> {
        self.vars
            .context
            .get_or_init(|| Var::new(Json::Object(self.context.clone())))
    }

    /// The root object for minijinja (converting what was not converted yet).
    fn root_value(&self) -> MjValue {
        let root = self.vars.root.get_or_init(|| {
            let context = Arc::clone(self.context_var());
            let input = match self.input {
                InputRef::None => None,
                InputRef::Context => Some(Arc::clone(&context)),
                InputRef::Json(json) => Some(Arc::clone(
                    self.vars.input.get_or_init(|| Var::new(json.clone())),
                )),
            };
            let output = self
                .output
                .map(|json| Arc::clone(self.vars.output.get_or_init(|| Var::new(json.clone()))));
            let item = self.item.map(|(name, json)| {
                (
                    Arc::from(name),
                    Arc::clone(self.vars.item.get_or_init(|| Var::new(json.clone()))),
                )
            });
            Arc::new(Root {
                context,
                input,
                output,
                item,
            })
        });
        MjValue::from_dyn_object(Arc::clone(root))
    }

    /// `context`, `input` or `output` (bare paths read these directly).
    fn json_var(&self, name: &str) -> Option<JsonRef<'a>> {
        match name {
            "context" => Some(JsonRef::Map(self.context)),
            "input" => match self.input {
                InputRef::None => None,
                InputRef::Context => Some(JsonRef::Map(self.context)),
                InputRef::Json(json) => Some(JsonRef::Json(json)),
            },
            "output" => self.output.map(JsonRef::Json),
            _ => None,
        }
    }

    /// A variable as a `{{ }}` template sees it: the foreach item shadows the others.
    fn template_var(&self, name: &str) -> Option<JsonRef<'a>> {
        match self.item {
            Some((item, json)) if item == name => Some(JsonRef::Json(json)),
            _ => self.json_var(name),
        }
    }
}

/// A borrowed variable: the context map itself, or a JSON value.
#[derive(Clone, Copy)]
enum JsonRef<'a> {
    Map(&'a Context),
    Json(&'a Json),
}

impl<'a> JsonRef<'a> {
    fn object(self) -> Option<&'a Context> {
        match self {
            JsonRef::Map(map) => Some(map),
            JsonRef::Json(json) => json.as_object(),
        }
    }

    fn to_json(self) -> Json {
        match self {
            JsonRef::Map(map) => Json::Object(map.clone()),
            JsonRef::Json(json) => json.clone(),
        }
    }
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
