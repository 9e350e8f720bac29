//! Run-time helpers for compiled conditions (the "simple" expression language).
//!
//! `flatmachine-build` compiles every `condition:` into a Rust expression that calls the
//! functions in this module. Values are carried as [`Val`] (a [`Cow`] of a JSON [`Value`]):
//! lookups into the context borrow, only computed values (arithmetic, literals) are owned.
//!
//! The semantics follow the Python reference (`flatmachines` `SimpleExpressionEngine`, which
//! evaluates Python `ast` nodes over JSON values), with a few deliberate differences documented
//! in `docs/expressions.md`:
//!
//! * a number never equals a boolean, and numbers and booleans do not order against each other;
//! * arithmetic and ordering between mismatched types is an [`ExprError`] (as in Python, where it
//!   raises `TypeError`), never a silent coercion;
//! * float results that are not finite (JSON cannot hold them) are an error.

use std::borrow::{Borrow, Cow};
use std::cmp::Ordering;
use std::fmt;

use serde_json::Number;

pub use crate::context::{Context, Value};
use crate::error::{StateError, error_type};

/// A value flowing through a compiled expression: borrowed from the context, or computed.
pub type Val<'a> = Cow<'a, Value>;

/// The result of a fallible expression step.
pub type Result<T, E = ExprError> = std::result::Result<T, E>;

/// Longest string (in bytes) or array (in elements) that `*` repetition may build.
pub const MAX_REPEAT_LEN: usize = 1 << 24;

static NULL: Value = Value::Null;

/// An error raised while evaluating an expression (type mismatch, missing key, bad index, ...).
///
/// Converts into a [`StateError`] of type [`error_type::EXPRESSION`], so it routes through the
/// state's `on_error` like any other state failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    message: String,
}

impl ExprError {
    /// A new error with the given message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error, prefixed with the expression source it came from.
    pub fn in_expression(self, source: &str) -> Self {
        Self {
            message: format!("in expression `{source}`: {}", self.message),
        }
    }

    fn with_detail(self, detail: &str) -> Self {
        Self::new(format!("{} ({detail})", self.message))
    }
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExprError {}

impl From<ExprError> for StateError {
    fn from(error: ExprError) -> Self {
        StateError::new(error_type::EXPRESSION, error.message)
    }
}

/// The JSON type name of a value, as used in error messages.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn unsupported(op: &str, lhs: &Value, rhs: &Value) -> ExprError {
    ExprError::new(format!(
        "'{op}' not supported between {} and {}",
        type_name(lhs),
        type_name(rhs)
    ))
}

/// The result of a condition that cannot fail (no arithmetic, ordering or subscripts).
pub fn ok(value: bool) -> Result<bool> {
    Ok(value)
}

// ---------------------------------------------------------------------------------------------
// Literals and lookups
// ---------------------------------------------------------------------------------------------

/// The `null` literal.
pub fn null() -> Val<'static> {
    Cow::Borrowed(&NULL)
}

/// A boolean literal, or a boolean result used as a value.
pub fn boolean(value: bool) -> Val<'static> {
    Cow::Owned(Value::Bool(value))
}

/// An integer literal.
pub fn int(value: i64) -> Val<'static> {
    Cow::Owned(Value::from(value))
}

/// A float literal. The compiler only emits finite floats; a non-finite one becomes `null`.
pub fn float(value: f64) -> Val<'static> {
    Cow::Owned(Number::from_f64(value).map_or(Value::Null, Value::Number))
}

/// A string literal.
pub fn string(value: &str) -> Val<'static> {
    Cow::Owned(Value::String(value.to_owned()))
}

/// The whole context as a value (bare `context`). This copies the context; lookups such as
/// `context.a.b` use [`path`] instead, which borrows.
pub fn context(ctx: &Context) -> Val<'static> {
    Cow::Owned(Value::Object(ctx.clone()))
}

/// Maps with at most this many entries are searched in order rather than hashed.
const SCAN_MAX: usize = 8;

/// `map.get(key)`, comparing the keys of a small map in order instead of hashing `key`
/// (the map's SipHash costs more than a few string comparisons). Same result either way:
/// keys are unique.
#[inline]
fn lookup<'a>(map: &'a Context, key: &str) -> Option<&'a Value> {
    if map.len() <= SCAN_MAX {
        map.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
    } else {
        map.get(key)
    }
}

/// `context.a.b.c`: follows attribute accesses from the context, borrowing the result.
///
/// Each step behaves like [`field`]: a missing field, or a field of a non-object, is `null`.
pub fn path<'a>(ctx: &'a Context, segments: &[&str]) -> Val<'a> {
    let Some((first, rest)) = segments.split_first() else {
        return null();
    };
    let mut value = lookup(ctx, first).unwrap_or(&NULL);
    for segment in rest {
        value = match value {
            Value::Object(map) => lookup(map, segment).unwrap_or(&NULL),
            _ => &NULL,
        };
    }
    Cow::Borrowed(value)
}

/// `base.name`: the field of an object, or `null` when the field is missing or `base` is not
/// an object (the reference uses `getattr(value, name, None)`).
pub fn field<'a>(base: Val<'a>, name: &str) -> Val<'a> {
    match base {
        Cow::Borrowed(Value::Object(map)) => Cow::Borrowed(lookup(map, name).unwrap_or(&NULL)),
        Cow::Owned(Value::Object(mut map)) => Cow::Owned(map.remove(name).unwrap_or(Value::Null)),
        _ => null(),
    }
}

/// `context[key]`: like [`index`] on the context object (a missing key is an error).
pub fn context_index<'a>(ctx: &'a Context, key: &impl Borrow<Value>) -> Result<Val<'a>> {
    match key.borrow() {
        Value::String(key) => lookup(ctx, key)
            .map(Cow::Borrowed)
            .ok_or_else(|| missing_key(key)),
        other => Err(ExprError::new(format!(
            "cannot index object with {}",
            type_name(other)
        ))),
    }
}

fn missing_key(key: &str) -> ExprError {
    ExprError::new(format!("key {key:?} not found in object"))
}

/// `base[index]`, with Python semantics:
///
/// * `object[string]`: the field; a missing key is an error (Python raises `KeyError`), unlike
///   `object.name`, which gives `null`;
/// * `array[integer]`: the element; negative indexes count from the end; out of range is an error;
/// * `string[integer]`: the one-character string at that (Unicode code point) index, likewise;
/// * anything else is an error.
pub fn index<'a>(base: Val<'a>, index: &impl Borrow<Value>) -> Result<Val<'a>> {
    match (base, index.borrow()) {
        (Cow::Borrowed(Value::Object(map)), Value::String(key)) => lookup(map, key)
            .map(Cow::Borrowed)
            .ok_or_else(|| missing_key(key)),
        (Cow::Owned(Value::Object(mut map)), Value::String(key)) => map
            .remove(key)
            .map(Cow::Owned)
            .ok_or_else(|| missing_key(key)),
        (Cow::Borrowed(Value::Array(items)), Value::Number(n)) => {
            let at = element_index(n, items.len())?;
            Ok(Cow::Borrowed(&items[at]))
        }
        (Cow::Owned(Value::Array(mut items)), Value::Number(n)) => {
            let at = element_index(n, items.len())?;
            Ok(Cow::Owned(items.swap_remove(at)))
        }
        (base, Value::Number(n)) if base.is_string() => {
            let text = base.as_str().unwrap_or_default();
            let count = text.chars().count();
            let at = element_index(n, count)?;
            let ch = text.chars().nth(at).unwrap_or_default();
            Ok(Cow::Owned(Value::String(ch.to_string())))
        }
        (base, index) => Err(ExprError::new(format!(
            "cannot index {} with {}",
            type_name(&base),
            type_name(index)
        ))),
    }
}

/// Resolves a (possibly negative) integer index against a length.
fn element_index(index: &Number, len: usize) -> Result<usize> {
    let Some(i) = as_int(index) else {
        return Err(ExprError::new(format!(
            "index must be an integer, not {index}"
        )));
    };
    let len_i = len as i128;
    let resolved = if i < 0 { i + len_i } else { i };
    if (0..len_i).contains(&resolved) {
        Ok(resolved as usize)
    } else {
        Err(ExprError::new(format!(
            "index {i} out of range for length {len}"
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// Truthiness and comparisons
// ---------------------------------------------------------------------------------------------

/// Python truthiness: `null`, `false`, `0`, `0.0`, `""`, `[]` and `{}` are false; all else true.
pub fn truthy(value: &impl Borrow<Value>) -> bool {
    match value.borrow() {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => match num(n) {
            Num::Int(i) => i != 0,
            Num::Float(f) => f != 0.0,
        },
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

/// `lhs == rhs`: JSON equality, except that numbers compare numerically (`1 == 1.0`) and a
/// number never equals a boolean. Arrays and objects compare element by element.
pub fn eq(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> bool {
    values_equal(lhs.borrow(), rhs.borrow())
}

fn values_equal(lhs: &Value, rhs: &Value) -> bool {
    match (lhs, rhs) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Number(a), Value::Number(b)) => cmp_numbers(a, b) == Ordering::Equal,
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| values_equal(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, x)| b.get(key).is_some_and(|y| values_equal(x, y)))
        }
        _ => false,
    }
}

/// `lhs != rhs`: the negation of [`eq`].
pub fn ne(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> bool {
    !values_equal(lhs.borrow(), rhs.borrow())
}

/// `lhs < rhs` (see [`compare`] for which types order).
pub fn lt(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> Result<bool> {
    Ok(compare("<", lhs.borrow(), rhs.borrow())? == Ordering::Less)
}

/// `lhs <= rhs` (see [`compare`] for which types order).
pub fn le(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> Result<bool> {
    Ok(compare("<=", lhs.borrow(), rhs.borrow())? != Ordering::Greater)
}

/// `lhs > rhs` (see [`compare`] for which types order).
pub fn gt(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> Result<bool> {
    Ok(compare(">", lhs.borrow(), rhs.borrow())? == Ordering::Greater)
}

/// `lhs >= rhs` (see [`compare`] for which types order).
pub fn ge(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> Result<bool> {
    Ok(compare(">=", lhs.borrow(), rhs.borrow())? != Ordering::Less)
}

/// Orders two values for the operator `op` (used in the error message):
///
/// * numbers numerically (integers and floats compare exactly);
/// * strings lexicographically by Unicode code point;
/// * booleans with `false < true`;
/// * arrays lexicographically like Python: the first pair of elements that are not [`eq`]
///   decides (and must itself be orderable), otherwise the shorter array is smaller.
///
/// Any other pair of types is an error naming both, e.g. `'>=' not supported between null and
/// number`.
pub fn compare(op: &str, lhs: &Value, rhs: &Value) -> Result<Ordering> {
    match (lhs, rhs) {
        (Value::Number(a), Value::Number(b)) => Ok(cmp_numbers(a, b)),
        (Value::String(a), Value::String(b)) => Ok(a.cmp(b)),
        (Value::Bool(a), Value::Bool(b)) => Ok(a.cmp(b)),
        (Value::Array(a), Value::Array(b)) => {
            match a.iter().zip(b).find(|(x, y)| !values_equal(x, y)) {
                Some((x, y)) => compare(op, x, y),
                None => Ok(a.len().cmp(&b.len())),
            }
        }
        _ => Err(unsupported(op, lhs, rhs)),
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------------------------

/// A JSON number, widened: every `i64` and `u64` fits in `i128`.
#[derive(Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

fn num(n: &Number) -> Num {
    if let Some(i) = n.as_i64() {
        Num::Int(i128::from(i))
    } else if let Some(u) = n.as_u64() {
        Num::Int(i128::from(u))
    } else {
        Num::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

fn as_int(n: &Number) -> Option<i128> {
    match num(n) {
        Num::Int(i) => Some(i),
        Num::Float(_) => None,
    }
}

/// Orders two numbers exactly (no rounding of large integers to float).
fn cmp_numbers(a: &Number, b: &Number) -> Ordering {
    match (num(a), num(b)) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        (Num::Int(x), Num::Float(y)) => cmp_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => cmp_int_float(y, x).reverse(),
    }
}

/// Exact comparison of an integer (at most 65 bits) with a finite float.
fn cmp_int_float(i: i128, f: f64) -> Ordering {
    // 2^64 is exactly representable; every integer we hold is within ±2^64.
    const LIMIT: f64 = 18_446_744_073_709_551_616.0;
    if f.is_nan() {
        return Ordering::Equal;
    }
    let floor = f.floor();
    if floor >= LIMIT {
        return Ordering::Less;
    }
    if floor < -LIMIT {
        return Ordering::Greater;
    }
    // |floor| <= 2^64 and integral: the conversion is exact.
    let floor_i = floor as i128;
    match i.cmp(&floor_i) {
        Ordering::Equal if f > floor => Ordering::Less,
        other => other,
    }
}

fn int_value(op: &str, i: Option<i128>) -> Result<Val<'static>> {
    let value = i.and_then(|i| {
        i64::try_from(i)
            .map(Value::from)
            .or_else(|_| u64::try_from(i).map(Value::from))
            .ok()
    });
    value
        .map(Cow::Owned)
        .ok_or_else(|| ExprError::new(format!("integer overflow in '{op}'")))
}

fn float_value(op: &str, f: f64) -> Result<Val<'static>> {
    Number::from_f64(f)
        .map(|n| Cow::Owned(Value::Number(n)))
        .ok_or_else(|| ExprError::new(format!("result of '{op}' is not a finite number")))
}

fn to_f64(n: Num) -> f64 {
    match n {
        Num::Int(i) => i as f64,
        Num::Float(f) => f,
    }
}

/// Applies an arithmetic operator to two numbers: integer if both are integers (checked),
/// float otherwise.
fn arith(
    op: &str,
    a: &Number,
    b: &Number,
    on_int: fn(i128, i128) -> Option<i128>,
    on_float: fn(f64, f64) -> f64,
) -> Result<Val<'static>> {
    match (num(a), num(b)) {
        (Num::Int(x), Num::Int(y)) => int_value(op, on_int(x, y)),
        (x, y) => float_value(op, on_float(to_f64(x), to_f64(y))),
    }
}

// ---------------------------------------------------------------------------------------------
// Arithmetic
// ---------------------------------------------------------------------------------------------

/// `lhs + rhs`: numbers add (integer + integer stays an integer, overflow is an error; mixing
/// in a float gives a float); strings concatenate; arrays concatenate.
pub fn add(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> Result<Val<'static>> {
    let (lhs, rhs) = (lhs.borrow(), rhs.borrow());
    match (lhs, rhs) {
        (Value::Number(a), Value::Number(b)) => arith("+", a, b, i128::checked_add, |x, y| x + y),
        (Value::String(a), Value::String(b)) => Ok(Cow::Owned(Value::String(format!("{a}{b}")))),
        (Value::Array(a), Value::Array(b)) => Ok(Cow::Owned(Value::Array(
            a.iter().chain(b).cloned().collect(),
        ))),
        _ => Err(unsupported("+", lhs, rhs)),
    }
}

/// `lhs - rhs`: numbers only.
pub fn sub(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> Result<Val<'static>> {
    let (lhs, rhs) = (lhs.borrow(), rhs.borrow());
    match (lhs, rhs) {
        (Value::Number(a), Value::Number(b)) => arith("-", a, b, i128::checked_sub, |x, y| x - y),
        _ => Err(unsupported("-", lhs, rhs)),
    }
}

/// `lhs * rhs`: numbers multiply; a string or array times an integer (either order) repeats it
/// like Python (zero or a negative count gives an empty result). A repetition longer than
/// [`MAX_REPEAT_LEN`] is an error.
pub fn mul(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> Result<Val<'static>> {
    let (lhs, rhs) = (lhs.borrow(), rhs.borrow());
    match (lhs, rhs) {
        (Value::Number(a), Value::Number(b)) => arith("*", a, b, i128::checked_mul, |x, y| x * y),
        (Value::String(s), Value::Number(n)) | (Value::Number(n), Value::String(s)) => {
            match as_int(n) {
                Some(count) => {
                    let count = repeat_count(s.len(), count)?;
                    Ok(Cow::Owned(Value::String(s.repeat(count))))
                }
                None => Err(unsupported("*", lhs, rhs).with_detail("the count must be an integer")),
            }
        }
        (Value::Array(items), Value::Number(n)) | (Value::Number(n), Value::Array(items)) => {
            match as_int(n) {
                Some(count) => {
                    let count = repeat_count(items.len(), count)?;
                    let mut repeated = Vec::with_capacity(items.len() * count);
                    for _ in 0..count {
                        repeated.extend(items.iter().cloned());
                    }
                    Ok(Cow::Owned(Value::Array(repeated)))
                }
                None => Err(unsupported("*", lhs, rhs).with_detail("the count must be an integer")),
            }
        }
        _ => Err(unsupported("*", lhs, rhs)),
    }
}

fn repeat_count(len: usize, count: i128) -> Result<usize> {
    if count <= 0 || len == 0 {
        return Ok(0);
    }
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    match len.checked_mul(count) {
        Some(total) if total <= MAX_REPEAT_LEN => Ok(count),
        _ => Err(ExprError::new(format!(
            "repetition result is too long (the limit is {MAX_REPEAT_LEN})"
        ))),
    }
}

/// `lhs / rhs`: true division of numbers, always a float; dividing by zero is an error.
pub fn div(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> Result<Val<'static>> {
    let (lhs, rhs) = (lhs.borrow(), rhs.borrow());
    match (lhs, rhs) {
        (Value::Number(a), Value::Number(b)) => {
            let divisor = to_f64(num(b));
            if divisor == 0.0 {
                return Err(ExprError::new("division by zero"));
            }
            float_value("/", to_f64(num(a)) / divisor)
        }
        _ => Err(unsupported("/", lhs, rhs)),
    }
}

/// `-operand`: numbers only (integer negation is checked).
pub fn neg(operand: &impl Borrow<Value>) -> Result<Val<'static>> {
    match operand.borrow() {
        Value::Number(n) => match num(n) {
            Num::Int(i) => int_value("-", i.checked_neg()),
            Num::Float(f) => float_value("-", -f),
        },
        other => Err(ExprError::new(format!(
            "unary '-' not supported for {}",
            type_name(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(value: Value) -> Context {
        match value {
            Value::Object(map) => map,
            _ => panic!("test context must be an object"),
        }
    }

    fn err_msg<T: fmt::Debug>(result: Result<T>) -> String {
        result.expect_err("expected an error").message().to_owned()
    }

    // ---- errors -------------------------------------------------------------------------

    #[test]
    fn expr_error_display_and_state_error() {
        let e = ExprError::new("boom");
        assert_eq!(e.to_string(), "boom");
        assert_eq!(e.message(), "boom");
        let s: StateError = e.clone().into();
        assert_eq!(s.error_type, error_type::EXPRESSION);
        assert_eq!(s.message, "boom");
        assert_eq!(
            e.in_expression("context.x > 1").message(),
            "in expression `context.x > 1`: boom"
        );
        let _: &dyn std::error::Error = &ExprError::new("x");
        assert_eq!(ok(true), Ok(true));
    }

    #[test]
    fn expr_type_names() {
        assert_eq!(type_name(&json!(null)), "null");
        assert_eq!(type_name(&json!(true)), "boolean");
        assert_eq!(type_name(&json!(1)), "number");
        assert_eq!(type_name(&json!(1.5)), "number");
        assert_eq!(type_name(&json!("s")), "string");
        assert_eq!(type_name(&json!([])), "array");
        assert_eq!(type_name(&json!({})), "object");
    }

    // ---- literals and lookups -----------------------------------------------------------

    #[test]
    fn expr_literals() {
        assert_eq!(*null(), json!(null));
        assert_eq!(*boolean(true), json!(true));
        assert_eq!(*int(-3), json!(-3));
        assert_eq!(*float(1.5), json!(1.5));
        assert_eq!(*float(f64::INFINITY), json!(null));
        assert_eq!(*string("hi"), json!("hi"));
    }

    #[test]
    fn expr_path_borrows_and_defaults_to_null() {
        let c = ctx(json!({"a": {"b": {"c": 3}}, "n": 1, "list": [1, 2]}));
        let v = path(&c, &["a", "b", "c"]);
        assert!(matches!(v, Cow::Borrowed(_)));
        assert_eq!(*v, json!(3));
        assert_eq!(*path(&c, &["a", "missing"]), json!(null));
        assert_eq!(*path(&c, &["missing", "deeper"]), json!(null));
        // Attribute of a non-object is null (getattr(value, name, None)).
        assert_eq!(*path(&c, &["n", "x"]), json!(null));
        assert_eq!(*path(&c, &["list", "x"]), json!(null));
        assert_eq!(*path(&c, &[]), json!(null));
    }

    #[test]
    fn expr_whole_context() {
        let c = ctx(json!({"a": 1}));
        assert_eq!(*context(&c), json!({"a": 1}));
        assert!(!truthy(&context(&Context::new())));
    }

    #[test]
    fn expr_field_on_borrowed_and_owned() {
        let v = json!({"a": {"b": 1}});
        let a = field(Cow::Borrowed(&v), "a");
        assert!(matches!(a, Cow::Borrowed(_)));
        assert_eq!(*field(a, "b"), json!(1));
        assert_eq!(*field(Cow::Owned(json!({"x": [1]})), "x"), json!([1]));
        assert_eq!(*field(Cow::Owned(json!({"x": 1})), "y"), json!(null));
        for base in [json!(null), json!(1), json!("s"), json!([1]), json!(true)] {
            assert_eq!(*field(Cow::Owned(base), "x"), json!(null));
        }
    }

    #[test]
    fn expr_index_object() {
        let v = json!({"a": 1});
        assert_eq!(*index(Cow::Borrowed(&v), &json!("a")).unwrap(), json!(1));
        assert_eq!(
            *index(Cow::Owned(v.clone()), &json!("a")).unwrap(),
            json!(1)
        );
        assert_eq!(
            err_msg(index(Cow::Borrowed(&v), &json!("b"))),
            "key \"b\" not found in object"
        );
        assert_eq!(
            err_msg(index(Cow::Owned(v.clone()), &json!("b"))),
            "key \"b\" not found in object"
        );
        assert_eq!(
            err_msg(index(Cow::Borrowed(&v), &json!(1))),
            "cannot index object with number"
        );
    }

    #[test]
    fn expr_index_context() {
        let c = ctx(json!({"a": [1, 2]}));
        assert_eq!(*context_index(&c, &json!("a")).unwrap(), json!([1, 2]));
        assert_eq!(
            err_msg(context_index(&c, &json!("zz"))),
            "key \"zz\" not found in object"
        );
        assert_eq!(
            err_msg(context_index(&c, &json!(0))),
            "cannot index object with number"
        );
    }

    #[test]
    fn expr_index_array() {
        let v = json!([10, 20, 30]);
        let at = |i: Value| index(Cow::Borrowed(&v), &i);
        assert_eq!(*at(json!(0)).unwrap(), json!(10));
        assert_eq!(*at(json!(2)).unwrap(), json!(30));
        assert_eq!(*at(json!(-1)).unwrap(), json!(30));
        assert_eq!(*at(json!(-3)).unwrap(), json!(10));
        assert_eq!(err_msg(at(json!(3))), "index 3 out of range for length 3");
        assert_eq!(err_msg(at(json!(-4))), "index -4 out of range for length 3");
        assert_eq!(
            err_msg(at(json!(u64::MAX))),
            format!("index {} out of range for length 3", u64::MAX)
        );
        assert_eq!(err_msg(at(json!(1.0))), "index must be an integer, not 1.0");
        assert_eq!(err_msg(at(json!("0"))), "cannot index array with string");
        assert_eq!(err_msg(at(json!(true))), "cannot index array with boolean");
        assert_eq!(
            *index(Cow::Owned(v.clone()), &json!(-2)).unwrap(),
            json!(20)
        );
        assert_eq!(
            err_msg(index(Cow::Owned(json!([])), &json!(0))),
            "index 0 out of range for length 0"
        );
    }

    #[test]
    fn expr_index_string_by_code_point() {
        let v = json!("héllo");
        assert_eq!(*index(Cow::Borrowed(&v), &json!(1)).unwrap(), json!("é"));
        assert_eq!(*index(Cow::Borrowed(&v), &json!(-1)).unwrap(), json!("o"));
        assert_eq!(
            err_msg(index(Cow::Borrowed(&v), &json!(5))),
            "index 5 out of range for length 5"
        );
        assert_eq!(
            err_msg(index(Cow::Borrowed(&v), &json!("a"))),
            "cannot index string with string"
        );
    }

    #[test]
    fn expr_index_other_types() {
        for base in [json!(null), json!(1), json!(true)] {
            let name = type_name(&base);
            assert_eq!(
                err_msg(index(Cow::Owned(base), &json!(0))),
                format!("cannot index {name} with number")
            );
        }
    }

    // ---- truthiness ---------------------------------------------------------------------

    #[test]
    fn expr_truthiness() {
        for v in [
            json!(null),
            json!(false),
            json!(0),
            json!(0.0),
            json!(-0.0),
            json!(""),
            json!([]),
            json!({}),
        ] {
            assert!(!truthy(&v), "{v} should be falsy");
        }
        for v in [
            json!(true),
            json!(1),
            json!(-1),
            json!(u64::MAX),
            json!(0.1),
            json!("0"),
            json!(" "),
            json!([0]),
            json!({"a": null}),
        ] {
            assert!(truthy(&v), "{v} should be truthy");
        }
    }

    // ---- equality -----------------------------------------------------------------------

    #[test]
    fn expr_equality() {
        assert!(eq(&json!(1), &json!(1.0)));
        assert!(eq(&json!(1.0), &json!(1)));
        assert!(!eq(&json!(1), &json!(1.5)));
        assert!(eq(&json!(u64::MAX), &json!(u64::MAX)));
        assert!(!eq(&json!(u64::MAX), &json!(i64::MAX)));
        assert!(eq(&json!(-0.0), &json!(0)));
        assert!(eq(&json!(null), &json!(null)));
        assert!(eq(&json!("a"), &json!("a")));
        assert!(!eq(&json!("a"), &json!("A")));
        assert!(eq(&json!(true), &json!(true)));
        assert!(!eq(&json!(true), &json!(false)));
        // Numbers never equal booleans (Python: 1 == True).
        assert!(!eq(&json!(1), &json!(true)));
        assert!(!eq(&json!(0), &json!(false)));
        assert!(ne(&json!(0), &json!(false)));
        // Mixed types are simply unequal, never an error.
        assert!(!eq(&json!(null), &json!(0)));
        assert!(!eq(&json!("1"), &json!(1)));
        assert!(!eq(&json!([]), &json!({})));
        assert!(ne(&json!(null), &json!("")));
        // Containers compare elementwise with the same rules.
        assert!(eq(&json!([1, [2.0, "x"]]), &json!([1.0, [2, "x"]])));
        assert!(!eq(&json!([1, 2]), &json!([1, 2, 3])));
        assert!(!eq(&json!([1]), &json!([true])));
        assert!(eq(
            &json!({"a": 1, "b": [1]}),
            &json!({"b": [1.0], "a": 1.0})
        ));
        assert!(!eq(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(!eq(&json!({"a": 1}), &json!({"b": 1})));
        assert!(!eq(&json!({"a": 1}), &json!({"a": 2})));
    }

    #[test]
    fn expr_large_integer_float_equality_is_exact() {
        // 2^53 + 1 is not representable as f64; Python compares exactly.
        let big = (1_i64 << 53) + 1;
        assert!(!eq(&json!(big), &json!((1_i64 << 53) as f64)));
        assert!(gt(&json!(big), &json!((1_i64 << 53) as f64)).unwrap());
        assert!(eq(&json!(1_i64 << 53), &json!((1_i64 << 53) as f64)));
        assert!(lt(&json!(u64::MAX), &json!(1e20)).unwrap());
        assert!(gt(&json!(i64::MIN), &json!(-1e20)).unwrap());
        assert!(lt(&json!(2), &json!(2.5)).unwrap());
        assert!(gt(&json!(3), &json!(2.5)).unwrap());
        assert!(gt(&json!(-2), &json!(-2.5)).unwrap());
        assert!(lt(&json!(-3), &json!(-2.5)).unwrap());
    }

    // ---- ordering -----------------------------------------------------------------------

    #[test]
    fn expr_ordering_numbers() {
        assert!(lt(&json!(1), &json!(2)).unwrap());
        assert!(!lt(&json!(2), &json!(2)).unwrap());
        assert!(le(&json!(2), &json!(2.0)).unwrap());
        assert!(gt(&json!(2.5), &json!(2)).unwrap());
        assert!(ge(&json!(2), &json!(2)).unwrap());
        assert!(!ge(&json!(1), &json!(2)).unwrap());
        assert!(lt(&json!(-1), &json!(u64::MAX)).unwrap());
    }

    #[test]
    fn expr_ordering_strings_bools_arrays() {
        assert!(lt(&json!("abc"), &json!("abd")).unwrap());
        assert!(lt(&json!("ab"), &json!("abc")).unwrap());
        assert!(lt(&json!("Z"), &json!("a")).unwrap());
        assert!(lt(&json!("z"), &json!("é")).unwrap());
        assert!(lt(&json!("\u{ffff}"), &json!("\u{10000}")).unwrap());
        assert!(lt(&json!(false), &json!(true)).unwrap());
        assert!(ge(&json!(true), &json!(true)).unwrap());
        assert!(lt(&json!([1, 2]), &json!([1, 3])).unwrap());
        assert!(lt(&json!([1, 2]), &json!([1, 2, 0])).unwrap());
        assert!(le(&json!([1, 2]), &json!([1.0, 2.0])).unwrap());
        assert!(gt(&json!([[1, "b"]]), &json!([[1, "a"]])).unwrap());
        assert!(lt(&json!([]), &json!([null])).unwrap());
        // Equal prefixes of unorderable elements are fine (== decides them).
        assert!(lt(&json!([null, 1]), &json!([null, 2])).unwrap());
        assert!(lt(&json!([{"a": 1}]), &json!([{"a": 1}, 0])).unwrap());
    }

    #[test]
    fn expr_ordering_errors() {
        assert_eq!(
            err_msg(ge(&json!(null), &json!(8))),
            "'>=' not supported between null and number"
        );
        assert_eq!(
            err_msg(lt(&json!("1"), &json!(1))),
            "'<' not supported between string and number"
        );
        assert_eq!(
            err_msg(gt(&json!(true), &json!(0))),
            "'>' not supported between boolean and number"
        );
        assert_eq!(
            err_msg(le(&json!({}), &json!({}))),
            "'<=' not supported between object and object"
        );
        assert_eq!(
            err_msg(lt(&json!(null), &json!(null))),
            "'<' not supported between null and null"
        );
        // The first differing array elements must be orderable.
        assert_eq!(
            err_msg(lt(&json!([1, "a"]), &json!([1, 2]))),
            "'<' not supported between string and number"
        );
        assert_eq!(
            err_msg(compare("<", &json!([1]), &json!("a"))),
            "'<' not supported between array and string"
        );
    }

    // ---- arithmetic ---------------------------------------------------------------------

    #[test]
    fn expr_add() {
        assert_eq!(*add(&json!(1), &json!(2)).unwrap(), json!(3));
        assert!(add(&json!(1), &json!(2)).unwrap().as_i64().is_some());
        assert_eq!(*add(&json!(1), &json!(0.5)).unwrap(), json!(1.5));
        assert_eq!(*add(&json!(0.5), &json!(1)).unwrap(), json!(1.5));
        assert!(add(&json!(1), &json!(1.0)).unwrap().is_f64());
        assert_eq!(*add(&json!("ab"), &json!("cd")).unwrap(), json!("abcd"));
        assert_eq!(*add(&json!([1]), &json!([2, 3])).unwrap(), json!([1, 2, 3]));
        assert_eq!(
            *add(&json!(i64::MAX), &json!(1)).unwrap(),
            json!(9_223_372_036_854_775_808_u64)
        );
        assert_eq!(
            err_msg(add(&json!(u64::MAX), &json!(1))),
            "integer overflow in '+'"
        );
        assert_eq!(
            err_msg(add(&json!(1e308), &json!(1e308))),
            "result of '+' is not a finite number"
        );
        assert_eq!(
            err_msg(add(&json!("a"), &json!(1))),
            "'+' not supported between string and number"
        );
        assert_eq!(
            err_msg(add(&json!(true), &json!(1))),
            "'+' not supported between boolean and number"
        );
        assert_eq!(
            err_msg(add(&json!(null), &json!(1))),
            "'+' not supported between null and number"
        );
        assert_eq!(
            err_msg(add(&json!({}), &json!({}))),
            "'+' not supported between object and object"
        );
    }

    #[test]
    fn expr_sub() {
        assert_eq!(*sub(&json!(1), &json!(3)).unwrap(), json!(-2));
        assert_eq!(*sub(&json!(1.5), &json!(1)).unwrap(), json!(0.5));
        assert_eq!(
            err_msg(sub(&json!(i64::MIN), &json!(1))),
            "integer overflow in '-'"
        );
        assert_eq!(
            err_msg(sub(&json!("a"), &json!("a"))),
            "'-' not supported between string and string"
        );
        assert_eq!(
            err_msg(sub(&json!([1]), &json!([1]))),
            "'-' not supported between array and array"
        );
    }

    #[test]
    fn expr_mul() {
        assert_eq!(*mul(&json!(6), &json!(7)).unwrap(), json!(42));
        assert_eq!(*mul(&json!(2), &json!(0.25)).unwrap(), json!(0.5));
        assert_eq!(
            err_msg(mul(&json!(i64::MAX), &json!(i64::MAX))),
            "integer overflow in '*'"
        );
        assert_eq!(
            err_msg(mul(&json!(u64::MAX), &json!(u64::MAX))),
            "integer overflow in '*'"
        );
        assert_eq!(*mul(&json!("ab"), &json!(3)).unwrap(), json!("ababab"));
        assert_eq!(*mul(&json!(2), &json!("ab")).unwrap(), json!("abab"));
        assert_eq!(*mul(&json!("ab"), &json!(0)).unwrap(), json!(""));
        assert_eq!(*mul(&json!("ab"), &json!(-2)).unwrap(), json!(""));
        assert_eq!(
            *mul(&json!([1, 2]), &json!(2)).unwrap(),
            json!([1, 2, 1, 2])
        );
        assert_eq!(*mul(&json!(2), &json!([0])).unwrap(), json!([0, 0]));
        assert_eq!(*mul(&json!([1]), &json!(-1)).unwrap(), json!([]));
        assert_eq!(*mul(&json!([]), &json!(u64::MAX)).unwrap(), json!([]));
        assert_eq!(
            err_msg(mul(&json!("ab"), &json!(1.5))),
            "'*' not supported between string and number (the count must be an integer)"
        );
        assert_eq!(
            err_msg(mul(&json!([1]), &json!(2.0))),
            "'*' not supported between array and number (the count must be an integer)"
        );
        assert_eq!(
            err_msg(mul(&json!("a"), &json!(i64::MAX))),
            format!("repetition result is too long (the limit is {MAX_REPEAT_LEN})")
        );
        assert_eq!(
            err_msg(mul(&json!("a"), &json!("b"))),
            "'*' not supported between string and string"
        );
        assert_eq!(
            err_msg(mul(&json!(true), &json!(2))),
            "'*' not supported between boolean and number"
        );
    }

    #[test]
    fn expr_div() {
        let q = div(&json!(7), &json!(2)).unwrap();
        assert_eq!(*q, json!(3.5));
        let q = div(&json!(4), &json!(2)).unwrap();
        assert!(q.is_f64(), "true division always gives a float");
        assert!(eq(&q, &json!(2)));
        assert_eq!(*div(&json!(1.0), &json!(4)).unwrap(), json!(0.25));
        assert_eq!(err_msg(div(&json!(1), &json!(0))), "division by zero");
        assert_eq!(err_msg(div(&json!(1), &json!(0.0))), "division by zero");
        assert_eq!(err_msg(div(&json!(0), &json!(-0.0))), "division by zero");
        assert_eq!(
            err_msg(div(&json!(1e308), &json!(1e-308))),
            "result of '/' is not a finite number"
        );
        assert_eq!(
            err_msg(div(&json!("a"), &json!(1))),
            "'/' not supported between string and number"
        );
    }

    #[test]
    fn expr_neg() {
        assert_eq!(*neg(&json!(5)).unwrap(), json!(-5));
        assert_eq!(*neg(&json!(-1.5)).unwrap(), json!(1.5));
        assert_eq!(
            *neg(&json!(i64::MIN)).unwrap(),
            json!(9_223_372_036_854_775_808_u64)
        );
        assert_eq!(
            *neg(&json!(9_223_372_036_854_775_808_u64)).unwrap(),
            json!(i64::MIN)
        );
        assert_eq!(err_msg(neg(&json!(u64::MAX))), "integer overflow in '-'");
        assert_eq!(
            err_msg(neg(&json!("a"))),
            "unary '-' not supported for string"
        );
        assert_eq!(
            err_msg(neg(&json!(true))),
            "unary '-' not supported for boolean"
        );
        assert_eq!(
            err_msg(neg(&json!(null))),
            "unary '-' not supported for null"
        );
    }
}
