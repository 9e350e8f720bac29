//! Run-time evaluation of CEL conditions (`expression_engine: cel`).
//!
//! `flatmachine-build` parses and checks every CEL condition at build time, then emits one
//! [`CelProgram`] per condition in a `static`. The program is parsed again on first use (the
//! `cel` crate's AST cannot be built in a `const`) and cached for the life of the process.
//!
//! Each evaluation binds one variable, `context`, to the machine context converted to CEL values
//! ([`to_cel`]): JSON objects become maps with string keys, arrays lists, integers `int` (or
//! `uint` above `i64::MAX`), other numbers `double`, `null` `null_type`. When the compiler could
//! see every top-level field the condition reads (`context.x`, `context["x"]`, `has(context.x)`),
//! only those fields are converted; otherwise the whole context is. See the CEL section of
//! `docs/expressions.md`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cel::ExecutionError;
use cel::extractors::This;
use cel::objects::{Key, Map};

use crate::context::{Context, Value};
use crate::expr::ExprError;

/// One CEL condition, parsed lazily, once per process.
///
/// Const-constructible so that generated code can place it in a `static`.
pub struct CelProgram {
    source: &'static str,
    fields: Option<&'static [&'static str]>,
    compiled: OnceLock<Result<cel::Program, String>>,
}

impl CelProgram {
    /// A condition with this source. `fields` lists every top-level context field the condition
    /// can read, when the compiler could tell (`None`: it may read any, so the whole context is
    /// converted). Nothing is parsed until the first evaluation.
    ///
    /// `source` is expected to have passed the compiler's checks (`flatmachine_build::expr::cel`),
    /// which also bound its nesting so that evaluation fits an ordinary thread stack.
    pub const fn new(source: &'static str, fields: Option<&'static [&'static str]>) -> Self {
        Self {
            source,
            fields,
            compiled: OnceLock::new(),
        }
    }

    /// The condition source, as written in the machine config.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// Whether the condition has already been parsed (by an evaluation or [`prepare`](Self::prepare)).
    pub fn is_compiled(&self) -> bool {
        self.compiled.get().is_some()
    }

    /// Parses the condition now (normally done on first evaluation). Returns the syntax error,
    /// if any; evaluating would return the same error.
    pub fn prepare(&self) -> Result<(), ExprError> {
        self.program().map(|_| ())
    }

    fn program(&self) -> Result<&cel::Program, ExprError> {
        self.compiled
            .get_or_init(|| parse(self.source))
            .as_ref()
            .map_err(|e| ExprError::new(format!("invalid CEL: {e}")).in_expression(self.source))
    }

    /// Evaluates the condition against the context.
    ///
    /// An empty (or blank) condition is true. Anything but a `bool` result, a type error, a
    /// missing field or key, an overflow or a division by zero is an [`ExprError`] naming the
    /// condition; it routes through the state's `on_error` like an error of the simple language.
    pub fn eval(&self, context: &Context) -> Result<bool, ExprError> {
        if self.source.trim().is_empty() {
            return Ok(true);
        }
        let program = self.program()?;
        let mut scope = root().new_inner_scope();
        let value = match self.fields {
            Some(fields) => object_fields(context, fields),
            None => object(context),
        };
        scope.add_variable_from_value("context", value);
        match program.execute(&scope) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(ExprError::new(format!(
                "a condition must evaluate to a bool, this one gave {} `{}`",
                cel_type_name(&other),
                describe(&other)
            ))
            .in_expression(self.source)),
            Err(e) => Err(ExprError::new(e.to_string()).in_expression(self.source)),
        }
    }
}

impl std::fmt::Debug for CelProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CelProgram")
            .field("source", &self.source)
            .field("fields", &self.fields)
            .finish_non_exhaustive()
    }
}

/// Stack for the thread that parses a condition: the `cel` crate's generated parser recurses
/// deeply (in a debug build a dozen nested parentheses overflow a 2 MiB stack, the default for
/// tokio workers). Each condition is parsed once per process, so the thread is cheap.
const PARSER_STACK: usize = 64 << 20;

fn parse(source: &'static str) -> Result<cel::Program, String> {
    std::thread::Builder::new()
        .name("cel-parser".into())
        .stack_size(PARSER_STACK)
        .spawn(move || cel::Program::compile(source).map_err(|e| e.to_string()))
        .map_err(|e| format!("could not start the CEL parser: {e}"))?
        .join()
        .unwrap_or_else(|_| Err("the CEL parser failed on this condition".into()))
}

/// The root CEL context with the standard functions, built once (registering them costs more
/// than most evaluations).
///
/// Two standard functions are replaced to follow the CEL spec where the crate does not:
/// `size` of a string counts code points (not bytes), and `contains` with an argument of the
/// wrong type is an error (not `false`).
fn root() -> &'static cel::Context<'static> {
    static ROOT: OnceLock<cel::Context<'static>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let mut ctx = cel::Context::default();
        ctx.add_function("size", size);
        ctx.add_function("contains", contains);
        ctx.add_function("bool", to_bool);
        ctx.add_function("string", to_string);
        ctx.add_function("bytes", to_bytes);
        ctx.add_function("int", to_int);
        ctx.add_function("dyn", to_dyn);
        ctx.add_function("type", type_of);
        for name in TYPE_NAMES {
            ctx.add_variable_from_value(*name, CelType::value(name));
        }
        ctx
    })
}

/// The type identifiers of the CEL standard definitions, bound as values so that
/// `type(x) == int` compares types. `flatmachine-build` accepts exactly these names (its
/// `expr::cel::TYPE_NAMES`).
pub const TYPE_NAMES: &[&str] = &[
    "bool",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
];

/// A CEL type as a value: what `type(x)` returns and what the identifiers `int`, `string`, ...
/// are bound to. Two types are equal when their names are.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CelType(&'static str);

impl cel::objects::Opaque for CelType {
    fn runtime_type_name(&self) -> &str {
        "type"
    }
}

impl CelType {
    fn value(name: &'static str) -> cel::Value {
        cel::Value::Opaque(Arc::new(CelType(name)))
    }
}

/// `type(x)`: the type of a value (`type(1) == int`, `type(int) == type`). Timestamps and
/// durations are `google.protobuf.Timestamp` and `google.protobuf.Duration`, as in the spec.
fn type_of(
    _ftx: &cel::FunctionContext,
    This(value): This<cel::Value>,
) -> Result<cel::Value, ExecutionError> {
    let name = match &value {
        cel::Value::Opaque(o) if o.runtime_type_name() == "type" => "type",
        cel::Value::Opaque(o) if o.runtime_type_name() == "optional_type" => "optional_type",
        cel::Value::Null => "null_type",
        cel::Value::Duration(_) => "google.protobuf.Duration",
        cel::Value::Timestamp(_) => "google.protobuf.Timestamp",
        other => cel_type_name(other),
    };
    Ok(CelType::value(name))
}

/// `dyn(x)`: `x` (a type-checker hint in CEL; values here are dynamic anyway).
fn to_dyn(
    _ftx: &cel::FunctionContext,
    This(value): This<cel::Value>,
) -> Result<cel::Value, ExecutionError> {
    Ok(value)
}

/// `bool(x)`: a bool unchanged; a string as the spec reads it (`"1"`, `"t"`, `"true"`,
/// `"TRUE"`, `"True"` and `"0"`, `"f"`, `"false"`, `"FALSE"`, `"False"`); anything else is an
/// error.
fn to_bool(
    ftx: &cel::FunctionContext,
    This(this): This<cel::Value>,
) -> Result<bool, ExecutionError> {
    match &this {
        cel::Value::Bool(b) => Ok(*b),
        cel::Value::String(s) => match s.as_str() {
            "1" | "t" | "true" | "TRUE" | "True" => Ok(true),
            "0" | "f" | "false" | "FALSE" | "False" => Ok(false),
            other => Err(ftx.error(format!("cannot convert string {other:?} to bool"))),
        },
        other => Err(ftx.error(format!("no overload for bool({})", cel_type_name(other)))),
    }
}

/// `string(x)`: the crate's conversion, plus `bool` (`"true"` / `"false"`) as the spec has it.
fn to_string(
    ftx: &cel::FunctionContext,
    This(this): This<cel::Value>,
) -> Result<cel::Value, ExecutionError> {
    match this {
        cel::Value::Bool(b) => Ok(cel::Value::String(Arc::new(b.to_string()))),
        cel::Value::Bytes(b) => String::from_utf8(b.to_vec())
            .map(|s| cel::Value::String(Arc::new(s)))
            .map_err(|_| ftx.error("bytes are not valid UTF-8")),
        other => cel::functions::string(ftx, This(other)),
    }
}

/// `bytes(x)`: the UTF-8 bytes of a string, or bytes unchanged.
fn to_bytes(
    ftx: &cel::FunctionContext,
    This(this): This<cel::Value>,
) -> Result<cel::Value, ExecutionError> {
    match this {
        cel::Value::String(s) => Ok(cel::Value::Bytes(Arc::new(s.as_bytes().to_vec()))),
        b @ cel::Value::Bytes(_) => Ok(b),
        other => Err(ftx.error(format!("no overload for bytes({})", cel_type_name(&other)))),
    }
}

/// `int(x)`: the crate's conversion, plus a timestamp as seconds since the Unix epoch.
fn to_int(
    ftx: &cel::FunctionContext,
    This(this): This<cel::Value>,
) -> Result<cel::Value, ExecutionError> {
    match this {
        cel::Value::Timestamp(t) => Ok(cel::Value::Int(t.timestamp())),
        other => cel::functions::int(ftx, This(other)),
    }
}

/// `size(x)` / `x.size()`: code points of a string, bytes of bytes, entries of a list or map.
fn size(ftx: &cel::FunctionContext, This(this): This<cel::Value>) -> Result<i64, ExecutionError> {
    let n = match &this {
        cel::Value::String(s) => s.chars().count(),
        cel::Value::Bytes(b) => b.len(),
        cel::Value::List(l) => l.len(),
        cel::Value::Map(m) => m.map.len(),
        other => {
            return Err(ftx.error(format!("no size for {}", cel_type_name(other))));
        }
    };
    i64::try_from(n).map_err(|_| ftx.error("size out of range"))
}

/// `s.contains(sub)` for strings (and bytes); also `list.contains(x)` and `map.contains(key)`,
/// which the `cel` crate offers beyond the spec. Any other pairing is an error.
fn contains(
    ftx: &cel::FunctionContext,
    This(this): This<cel::Value>,
    arg: cel::Value,
) -> Result<bool, ExecutionError> {
    match (&this, &arg) {
        (cel::Value::String(s), cel::Value::String(sub)) => Ok(s.contains(sub.as_str())),
        (cel::Value::Bytes(b), cel::Value::Bytes(sub)) => {
            Ok(sub.is_empty() || b.windows(sub.len()).any(|w| w == sub.as_slice()))
        }
        (cel::Value::List(items), _) => Ok(items.contains(&arg)),
        (cel::Value::Map(m), _) => {
            let key: Key = arg
                .clone()
                .try_into()
                .map_err(ExecutionError::UnsupportedKeyType)?;
            Ok(m.map.contains_key(&key))
        }
        _ => Err(ftx.error(format!(
            "no overload for {}.contains({})",
            cel_type_name(&this),
            cel_type_name(&arg)
        ))),
    }
}

/// Converts a JSON value to a CEL value.
///
/// `null` → `null`, booleans → `bool`, integers that fit `i64` → `int`, larger non-negative
/// integers → `uint`, other numbers → `double`, strings → `string`, arrays → `list`, objects →
/// `map` with `string` keys.
pub fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                cel::Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                cel::Value::UInt(u)
            } else {
                cel::Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => object(map),
    }
}

fn object(map: &Context) -> cel::Value {
    let converted: HashMap<Key, cel::Value> = map
        .iter()
        .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
        .collect();
    cel::Value::Map(Map {
        map: Arc::new(converted),
    })
}

/// The context with only the named top-level fields converted (those it has).
fn object_fields(map: &Context, fields: &[&str]) -> cel::Value {
    let converted: HashMap<Key, cel::Value> = fields
        .iter()
        .filter_map(|k| {
            map.get(*k)
                .map(|v| (Key::String(Arc::new((*k).to_string())), to_cel(v)))
        })
        .collect();
    cel::Value::Map(Map {
        map: Arc::new(converted),
    })
}

/// The CEL type name of a value, as used in error messages.
fn cel_type_name(value: &cel::Value) -> &'static str {
    match value {
        cel::Value::List(_) => "list",
        cel::Value::Map(_) => "map",
        cel::Value::Function(..) => "function",
        cel::Value::Int(_) => "int",
        cel::Value::UInt(_) => "uint",
        cel::Value::Float(_) => "double",
        cel::Value::String(_) => "string",
        cel::Value::Bytes(_) => "bytes",
        cel::Value::Bool(_) => "bool",
        cel::Value::Duration(_) => "duration",
        cel::Value::Timestamp(_) => "timestamp",
        cel::Value::Opaque(_) => "opaque",
        cel::Value::Null => "null",
    }
}

/// A short rendering of a result value for error messages.
fn describe(value: &cel::Value) -> String {
    let text = match value {
        cel::Value::Int(i) => i.to_string(),
        cel::Value::UInt(u) => format!("{u}u"),
        cel::Value::Float(f) => f.to_string(),
        cel::Value::String(s) => format!("{s:?}"),
        cel::Value::Null => "null".to_string(),
        other => format!("{other:?}"),
    };
    if text.len() > 80 {
        let cut = (0..=77)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}...", &text[..cut])
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(v: Value) -> Context {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn parses_once_on_first_use() {
        static P: CelProgram = CelProgram::new("context.a > 1", Some(&["a"]));
        assert!(!P.is_compiled());
        assert_eq!(P.eval(&ctx(json!({"a": 2}))), Ok(true));
        assert!(P.is_compiled());
        assert_eq!(P.eval(&ctx(json!({"a": 0}))), Ok(false));
    }

    #[test]
    fn restricted_fields_leave_others_out() {
        // `size(context)` would see only the listed fields: the compiler never lists fields
        // for such a condition, this checks the runtime honours the list it is given.
        static P: CelProgram = CelProgram::new("size(context) == 1", Some(&["a"]));
        assert_eq!(P.eval(&ctx(json!({"a": 1, "b": 2}))), Ok(true));
    }

    #[test]
    fn blank_is_true_and_bad_syntax_is_an_error() {
        static BLANK: CelProgram = CelProgram::new("  ", None);
        assert_eq!(BLANK.eval(&Context::new()), Ok(true));
        static BAD: CelProgram = CelProgram::new("context.a >", None);
        let e = BAD.eval(&Context::new()).unwrap_err();
        assert!(
            e.message()
                .starts_with("in expression `context.a >`: invalid CEL")
        );
        assert!(BAD.prepare().is_err());
    }

    #[test]
    fn standard_conversions_and_types() {
        let c = ctx(json!({"flag": "true", "n": 3, "on": true, "s": "x"}));
        for (src, want) in [
            ("bool(\"1\")", true),
            ("bool(context.flag)", true),
            ("bool(context.on)", true),
            ("!bool(\"False\")", true),
            ("type(1) == int", true),
            ("type(1u) == uint", true),
            ("type(1.5) == double", true),
            ("type('a') == string", true),
            ("type(b'a') == bytes", true),
            ("type(true) == bool", true),
            ("type([]) == list", true),
            ("type({}) == map", true),
            ("type(null) == null_type", true),
            ("type(int) == type", true),
            ("type(context.n) == int", true),
            ("type(context.s) == int", false),
            ("dyn(context.n) == 3", true),
            ("string(context.on) == 'true'", true),
            ("string(b'hi') == 'hi'", true),
            ("bytes(bytes('hi')) == b'hi'", true),
            ("int(timestamp('1970-01-01T00:01:00Z')) == 60", true),
            ("duration('90s') == duration('1m30s')", true),
            ("uint(context.n) == 3u && double(context.n) == 3.0", true),
            (
                "'abc'.startsWith('a') && 'abc'.endsWith('c') && 'abc'.matches('^a.c$')",
                true,
            ),
            (
                "timestamp('2024-03-05T10:00:00Z').getFullYear() == 2024",
                true,
            ),
        ] {
            let p: &'static CelProgram = Box::leak(Box::new(CelProgram::new(
                Box::leak(src.to_string().into_boxed_str()),
                None,
            )));
            assert_eq!(p.eval(&c), Ok(want), "{src}");
        }
        static BAD: CelProgram = CelProgram::new("bool('maybe')", None);
        let e = BAD.eval(&Context::new()).unwrap_err();
        assert!(
            e.message()
                .contains("cannot convert string \"maybe\" to bool"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn large_integers_are_uint() {
        assert!(matches!(
            to_cel(&json!(u64::MAX)),
            cel::Value::UInt(u64::MAX)
        ));
        assert!(matches!(to_cel(&json!(-3)), cel::Value::Int(-3)));
        assert!(matches!(to_cel(&json!(2.0)), cel::Value::Float(_)));
    }
}
