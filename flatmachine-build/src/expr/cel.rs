//! CEL conditions (`expression_engine: cel`): checked at build time, evaluated at run time.
//!
//! [`check`] parses a condition with the `cel` crate (the parser the runtime uses), reports a
//! syntax error at the position the parser gives, and rejects every variable other than
//! `context` (and the variables a macro such as `all(x, ...)` binds) with a "did you mean". It
//! also works out which top-level context fields the condition reads, so the runtime converts
//! only those to CEL values.

use std::collections::BTreeSet;

use cel::common::ast::{Expr, IdedExpr, operators};
use cel::common::value::CelVal;

use super::{ContextPath, ExprSyntaxError, FieldComparison, Span, parser::scope_error};

/// Names a CEL condition may use besides `context`, for "did you mean" suggestions.
const KNOWN_NAMES: &[&str] = &[
    "context",
    "true",
    "false",
    "null",
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

/// The type identifiers of the CEL standard definitions (`type(x) == int`); the runtime binds
/// the same names (`flatmachine_runtime::cel::TYPE_NAMES`).
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

/// Every function the runtime's CEL environment has: the standard definitions (conversions,
/// string, list, map and time functions), the `optional` library of the `cel` crate, its `max`
/// and `min`, and the macros. A call of any other function is a compile error.
pub const FUNCTIONS: &[&str] = &[
    // Conversions and types.
    "bool",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "dyn",
    "type",
    "duration",
    "timestamp",
    // Strings, lists, maps.
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "max",
    "min",
    // Timestamps.
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
    // Optionals.
    "optional.none",
    "optional.of",
    "optional.ofNonZeroValue",
    "value",
    "hasValue",
    "or",
    "orValue",
    // Macros.
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
];

/// What the compiler learnt from a valid CEL condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CelCondition {
    /// Every top-level context field the condition reads, in name order, when it reads the
    /// context only through `context.<name>`, `context["<name>"]` or `has(context.<name>)`.
    /// `None` when it uses `context` as a whole (`size(context)`, `context[k]`, a macro over
    /// `context`...), in which case the runtime converts the whole context.
    pub fields: Option<Vec<String>>,
    /// Every top-level context field read as `context.<name>` or `context["<name>"]`, located
    /// at its first use in the source (for the compiler's context checks).
    pub reads: Vec<ContextPath>,
    /// Fields the condition expects may be missing: tested with `has(context.<name>)` or
    /// compared with `null`.
    pub tested: Vec<String>,
    /// Every comparison of a top-level context field with a string literal (`==`, `!=`).
    pub comparisons: Vec<FieldComparison>,
}

/// Deepest nesting a CEL condition may have (operators, calls, lists, macros; parentheses
/// alone do not count). The `cel` interpreter evaluates recursively: this keeps evaluation
/// within a 2 MiB thread stack even in a debug build (measured: depth 50 fits, 95 does not).
pub const MAX_CEL_DEPTH: usize = 32;

/// Stack for the thread that runs the `cel` parser. Its generated ANTLR parser recurses deeply:
/// in a debug build, 12 nested parentheses already overflow a 2 MiB stack.
pub const PARSER_STACK: usize = 64 << 20;

/// Parses and checks a CEL condition. An empty or whitespace-only condition is always true.
pub fn check(src: &str) -> Result<CelCondition, ExprSyntaxError> {
    if src.trim().is_empty() {
        return Ok(CelCondition {
            fields: Some(Vec::new()),
            reads: Vec::new(),
            tested: Vec::new(),
            comparisons: Vec::new(),
        });
    }
    let whole = Span::new(0, src.len());
    let owned = src.to_owned();
    // The parser (generated code) runs on its own thread with a large stack; a panic in it is
    // reported as an error rather than taking the compiler down.
    let worker = std::thread::Builder::new()
        .name("cel-parser".into())
        .stack_size(PARSER_STACK)
        .spawn(move || check_here(&owned));
    match worker.map(std::thread::JoinHandle::join) {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(ExprSyntaxError::new(
            "the CEL parser failed on this condition",
            whole,
        )),
        Err(e) => Err(ExprSyntaxError::new(
            format!("could not start the CEL parser: {e}"),
            whole,
        )),
    }
}

fn check_here(src: &str) -> Result<CelCondition, ExprSyntaxError> {
    let expr = cel::parser::Parser::new()
        .parse(src)
        .map_err(|errors| syntax_error(src, &errors))?;
    let mut walk = Walk {
        src,
        scopes: Vec::new(),
        fields: Some(BTreeSet::new()),
        read: Vec::new(),
        tested: Vec::new(),
        comparisons: Vec::new(),
    };
    walk.expr(&expr, 1)?;
    let reads = walk
        .read
        .iter()
        .map(|field| ContextPath {
            segments: vec![field.clone()],
            span: find_field_use(src, field).unwrap_or(Span::new(0, src.len())),
        })
        .collect();
    let comparisons = walk
        .comparisons
        .into_iter()
        .map(|(field, value)| FieldComparison {
            span: find_string_literal(src, &value).unwrap_or(Span::new(0, src.len())),
            field,
            value,
        })
        .collect();
    Ok(CelCondition {
        fields: walk.fields.map(|f| f.into_iter().collect()),
        reads,
        tested: walk.tested,
        comparisons,
    })
}

/// The first error the parser reports, located in the source.
fn syntax_error(src: &str, errors: &cel::ParseErrors) -> ExprSyntaxError {
    let Some(first) = errors.errors.first() else {
        return ExprSyntaxError::new("invalid CEL", Span::new(0, src.len()));
    };
    let (line, col) = first.pos;
    let offset = offset_of(src, line, col);
    let len = token_len(src, offset);
    let message = first
        .msg
        .strip_prefix("Syntax error: ")
        .unwrap_or(&first.msg);
    // ANTLR lists every token it could have taken (`expecting {'[', '{', '(', ...}`): too long
    // to help; keep what it found.
    match message.split_once(" expecting {") {
        Some((found, _)) => ExprSyntaxError::new(format!("CEL syntax error: {found}"), Span::new(offset, len))
            .with_help("a CEL value is a literal, `context.<field>`, a call, a list, a map or a parenthesised expression"),
        None => ExprSyntaxError::new(format!("CEL syntax error: {message}"), Span::new(offset, len)),
    }
}

/// Byte offset of a parser position (1-based line and column, in characters); the start of
/// the condition when the parser gives none.
fn offset_of(src: &str, line: isize, col: isize) -> usize {
    if line < 1 || col < 1 {
        return 0;
    }
    let col = col - 1;
    let mut start = 0;
    for (i, l) in src.split_inclusive('\n').enumerate() {
        if i + 1 == line as usize {
            return l
                .char_indices()
                .nth(col as usize)
                .map_or(start + l.trim_end_matches('\n').len(), |(b, _)| start + b);
        }
        start += l.len();
    }
    src.len()
}

/// Length of the token starting at `offset`: an identifier or number, a two-character
/// operator, else one character (0 at the end of the source).
fn token_len(src: &str, offset: usize) -> usize {
    let rest = &src[offset.min(src.len())..];
    let word = rest
        .char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
        .map_or(rest.len(), |(i, _)| i);
    if word > 0 {
        return word;
    }
    match ["&&", "||", "==", "!=", "<=", ">="]
        .iter()
        .find(|op| rest.starts_with(**op))
    {
        Some(op) => op.len(),
        None => rest.chars().next().map_or(0, char::len_utf8),
    }
}

struct Walk<'s> {
    src: &'s str,
    /// Variables bound by enclosing macros (comprehensions).
    scopes: Vec<String>,
    /// Top-level context fields read so far; `None` once `context` is used as a whole.
    fields: Option<BTreeSet<String>>,
    /// Top-level context fields read by name, in order of first use (kept when `fields` is
    /// given up).
    read: Vec<String>,
    /// Fields tested with `has()` or compared with `null`.
    tested: Vec<String>,
    /// (field, string) pairs compared with `==` / `!=`.
    comparisons: Vec<(String, String)>,
}

impl Walk<'_> {
    fn bound(&self, name: &str) -> bool {
        self.scopes.iter().any(|s| s == name)
    }

    /// Whether this is the `context` variable itself (not a macro variable of that name).
    fn is_context(&self, e: &IdedExpr) -> bool {
        matches!(&e.expr, Expr::Ident(n) if n == "context" && !self.bound("context"))
    }

    fn field(&mut self, name: &str) {
        if let Some(f) = &mut self.fields {
            f.insert(name.to_string());
        }
        if !self.read.iter().any(|r| r == name) {
            self.read.push(name.to_string());
        }
    }

    /// The top-level field `e` reads, if it is `context.<name>` or `context["<name>"]`.
    fn context_field<'e>(&self, e: &'e IdedExpr) -> Option<&'e str> {
        match &e.expr {
            Expr::Select(sel) if self.is_context(&sel.operand) => Some(&sel.field),
            Expr::Call(call)
                if call.func_name == operators::INDEX
                    && call.target.is_none()
                    && call.args.len() == 2
                    && self.is_context(&call.args[0]) =>
            {
                match &call.args[1].expr {
                    Expr::Literal(CelVal::String(key)) => Some(key.as_str()),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Notes `field == 'text'`, `field != null` and the like.
    fn comparison(&mut self, call: &cel::common::ast::CallExpr) {
        if !(call.func_name == operators::EQUALS || call.func_name == operators::NOT_EQUALS)
            || call.args.len() != 2
        {
            return;
        }
        for (a, b) in [
            (&call.args[0], &call.args[1]),
            (&call.args[1], &call.args[0]),
        ] {
            let Some(field) = self.context_field(a) else {
                continue;
            };
            match &b.expr {
                Expr::Literal(CelVal::String(text)) => {
                    self.comparisons.push((field.to_string(), text.to_string()));
                }
                Expr::Literal(CelVal::Null) => self.tested.push(field.to_string()),
                _ => {}
            }
        }
    }

    fn expr(&mut self, e: &IdedExpr, depth: usize) -> Result<(), ExprSyntaxError> {
        if depth > MAX_CEL_DEPTH {
            return Err(ExprSyntaxError::new(
                format!("condition is nested too deeply (the limit is {MAX_CEL_DEPTH} levels)"),
                Span::new(0, self.src.len()),
            ));
        }
        let d = depth + 1;
        match &e.expr {
            Expr::Unspecified | Expr::Literal(_) => Ok(()),
            Expr::Ident(name) => {
                if name == "context"
                    || name.starts_with('@')
                    || self.bound(name)
                    || TYPE_NAMES.contains(&name.as_str())
                {
                    if name == "context" && !self.bound(name) {
                        // Used as a whole: every field may be read.
                        self.fields = None;
                    }
                    Ok(())
                } else {
                    Err(self.unknown(name))
                }
            }
            Expr::Select(sel) => {
                if self.is_context(&sel.operand) {
                    self.field(&sel.field);
                    if sel.test {
                        self.tested.push(sel.field.clone());
                    }
                    Ok(())
                } else {
                    self.expr(&sel.operand, d)
                }
            }
            Expr::Call(call) => {
                self.comparison(call);
                if call.func_name == operators::INDEX
                    && call.target.is_none()
                    && call.args.len() == 2
                    && self.is_context(&call.args[0])
                    && let Expr::Literal(CelVal::String(key)) = &call.args[1].expr
                {
                    self.field(key);
                    return Ok(());
                }
                let mut qualified = false;
                if let Some(target) = &call.target {
                    // `optional.of(x)` and friends: a qualified function, not a variable.
                    qualified =
                        matches!(&target.expr, Expr::Ident(n) if n == "optional" && !self.bound(n));
                    if !qualified {
                        self.expr(target, d)?;
                    }
                }
                self.known_function(&call.func_name, qualified)?;
                call.args.iter().try_for_each(|a| self.expr(a, d))
            }
            Expr::Comprehension(c) => {
                self.expr(&c.iter_range, d)?;
                self.expr(&c.accu_init, d)?;
                let depth = self.scopes.len();
                self.scopes.push(c.accu_var.clone());
                self.expr(&c.result, d)?;
                self.scopes.push(c.iter_var.clone());
                if let Some(v) = &c.iter_var2 {
                    self.scopes.push(v.clone());
                }
                let inner = self
                    .expr(&c.loop_cond, d)
                    .and_then(|()| self.expr(&c.loop_step, d));
                self.scopes.truncate(depth);
                inner
            }
            Expr::List(list) => list.elements.iter().try_for_each(|x| self.expr(x, d)),
            Expr::Map(map) => map
                .entries
                .iter()
                .try_for_each(|entry| self.entry(entry, d)),
            Expr::Struct(st) => st.entries.iter().try_for_each(|entry| self.entry(entry, d)),
        }
    }

    fn entry(
        &mut self,
        entry: &cel::common::ast::IdedEntryExpr,
        depth: usize,
    ) -> Result<(), ExprSyntaxError> {
        match &entry.expr {
            cel::common::ast::EntryExpr::StructField(f) => self.expr(&f.value, depth),
            cel::common::ast::EntryExpr::MapEntry(m) => {
                self.expr(&m.key, depth)?;
                self.expr(&m.value, depth)
            }
        }
    }

    /// A call of a function the runtime does not have is an error at the call, naming it.
    /// Operators (`_==_`, `!_`, `@in`, ...) are not functions a condition names.
    fn known_function(&self, name: &str, qualified: bool) -> Result<(), ExprSyntaxError> {
        if name.starts_with(['_', '!', '-', '@']) {
            return Ok(());
        }
        let full = if qualified {
            format!("optional.{name}")
        } else {
            name.to_string()
        };
        if FUNCTIONS.contains(&full.as_str()) {
            return Ok(());
        }
        let span = find_call(self.src, name).unwrap_or(Span::new(0, self.src.len()));
        let mut error = ExprSyntaxError::new(
            format!(
                "unknown CEL function `{full}`: it is not in the CEL standard definitions this runtime implements"
            ),
            span,
        );
        error.help = Some(
            match crate::diagnostic::closest(&full, FUNCTIONS.iter().copied()) {
                Some(close) => format!("did you mean `{close}`?"),
                None => "the functions are listed in docs/expressions.md".to_string(),
            },
        );
        Err(error)
    }

    /// The error for an unknown variable, at its first use in the source.
    fn unknown(&self, name: &str) -> ExprSyntaxError {
        let offset = find_ident(self.src, name).unwrap_or(0);
        let mut error = scope_error(name, Span::new(offset, name.len()), KNOWN_NAMES);
        if error.help.is_none() && !KNOWN_NAMES.contains(&name) {
            error.help =
                Some("a CEL condition reads `context` (and the variables its macros bind)".into());
        }
        error
    }
}

/// Where `context.<field>` (or `context['<field>']`, `context["<field>"]`) is first written.
fn find_field_use(src: &str, field: &str) -> Option<Span> {
    let forms = [
        format!("context.{field}"),
        format!("context['{field}']"),
        format!("context[\"{field}\"]"),
    ];
    let mut from = 0;
    while let Some(at) = find_ident(&src[from..], "context").map(|o| o + from) {
        if let Some(form) = forms.iter().find(|f| src[at..].starts_with(f.as_str())) {
            let end = at + form.len();
            let whole_word = !src[end..].starts_with(|c: char| c.is_alphanumeric() || c == '_');
            if whole_word || !form.ends_with(field) {
                return Some(Span::new(at, form.len()));
            }
        }
        from = at + "context".len();
    }
    None
}

/// Where `name(` (a call, global or method) first appears outside a string literal.
fn find_call(src: &str, name: &str) -> Option<Span> {
    let mut from = 0;
    while let Some(at) = src[from..].find(name).map(|o| o + from) {
        let before_ok = !src[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let after = src[at + name.len()..].trim_start();
        if before_ok && after.starts_with('(') && !in_string(src, at) {
            return Some(Span::new(at, name.len()));
        }
        from = at + name.len();
    }
    None
}

/// Whether byte `at` of `src` is inside a quoted string (a rough scan: quotes and escapes).
fn in_string(src: &str, at: usize) -> bool {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in src.char_indices() {
        if i >= at {
            break;
        }
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None => {}
        }
    }
    quote.is_some()
}

/// Where the string literal `'<text>'` (or `"<text>"`) first appears.
fn find_string_literal(src: &str, text: &str) -> Option<Span> {
    [format!("'{text}'"), format!("\"{text}\"")]
        .iter()
        .filter_map(|lit| src.find(lit.as_str()).map(|at| Span::new(at, lit.len())))
        .min_by_key(|s| s.offset)
}

/// Byte offset of the first use of `name` as an identifier (not inside a string literal, not
/// after a `.`).
fn find_ident(src: &str, name: &str) -> Option<usize> {
    let bytes = src.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        if let Some(q) = quote {
            if b == b'\\' {
                i += 2;
                continue;
            }
            if b == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if b == b'"' || b == b'\'' {
            quote = Some(b);
            i += 1;
            continue;
        }
        let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        if is_word(b) {
            let start = i;
            while i < bytes.len() && is_word(bytes[i]) {
                i += 1;
            }
            let before = src[..start].trim_end();
            if &src[start..i] == name && !before.ends_with('.') {
                return Some(start);
            }
            continue;
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(src: &str) -> Option<Vec<String>> {
        check(src).unwrap().fields
    }

    #[test]
    fn fields_read() {
        assert_eq!(
            fields("context.b > 1 && has(context.a) && context['c'] == 'x'"),
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(
            fields("context.items.all(i, i.ok)"),
            Some(vec!["items".into()])
        );
        assert_eq!(fields("size(context) > 0"), None);
        assert_eq!(fields("context[context.k] == 1"), None);
        assert_eq!(fields("true"), Some(vec![]));
        assert_eq!(fields(""), Some(vec![]));
        // A macro variable named `context` shadows the machine context.
        assert_eq!(
            fields("context.xs.exists(context, context.y)"),
            Some(vec!["xs".into()])
        );
    }

    #[test]
    fn macro_variables_are_in_scope_only_inside() {
        assert!(check("context.xs.all(x, x > 0)").is_ok());
        assert!(check("context.xs.map(x, x * 2).exists(y, y > 3)").is_ok());
        let e = check("context.xs.all(x, x > 0) && x > 1").unwrap_err();
        assert_eq!(
            e.message,
            "unknown name `x`: conditions can only read `context`"
        );
    }

    #[test]
    fn unknown_variables_are_located_with_a_suggestion() {
        let src = "'contxt' == contxt.name";
        let e = check(src).unwrap_err();
        assert_eq!(&src[e.offset..e.offset + e.len], "contxt");
        assert_eq!(e.offset, 12);
        assert_eq!(e.help.as_deref(), Some("did you mean `context`?"));
        let e = check("input.x == 1").unwrap_err();
        assert!(
            e.message.contains("`input` is not in scope"),
            "{}",
            e.message
        );
    }

    #[test]
    fn standard_functions_and_types_are_known() {
        for src in [
            "bool(\"1\")",
            "bool(context.flag)",
            "type(1) == int",
            "type(context.x) == type(null) || type(context.x) == null_type",
            "dyn(context.n) == 1 && uint(context.n) == 1u && double('1.5') > 1.0",
            "string(context.n) == '1' && bytes('a') == b'a'",
            "timestamp(context.at).getHours() > 3 && duration('1h') > duration('30m')",
            "'abc'.startsWith('a') && 'abc'.endsWith('c') && 'abc'.matches('b')",
            "size(context.xs) > 0 && context.xs.exists(x, x == 1)",
            "optional.of(1).hasValue()",
        ] {
            assert!(check(src).is_ok(), "{src}: {:?}", check(src));
        }
    }

    #[test]
    fn unknown_functions_are_located_with_a_suggestion() {
        let src = "context.name.lowerAscii() == 'x'";
        let e = check(src).unwrap_err();
        assert_eq!(&src[e.offset..e.offset + e.len], "lowerAscii", "{e:?}");
        assert!(
            e.message.contains("unknown CEL function `lowerAscii`"),
            "{e:?}"
        );
        let src = "'startswith(' == 'x' || context.s.startswith('a')";
        let e = check(src).unwrap_err();
        assert_eq!(e.offset, 34, "{e:?}");
        assert_eq!(e.help.as_deref(), Some("did you mean `startsWith`?"));
        let e = check("optional.nothing()").unwrap_err();
        assert!(e.message.contains("`optional.nothing`"), "{e:?}");
    }

    #[test]
    fn syntax_errors_are_located() {
        let src = "context.score >= && context.ready";
        let e = check(src).unwrap_err();
        assert!(e.message.starts_with("CEL syntax error: "), "{}", e.message);
        assert_eq!(&src[e.offset..e.offset + e.len], "&&", "{e:?}");
        let e = check("context.a ==").unwrap_err();
        assert_eq!(e.offset, 12, "{e:?}");
        assert_eq!(e.len, 0);
        // Second line, after a multi-byte character.
        let src = "context.x == 1\n  || 'é' == )";
        let e = check(src).unwrap_err();
        assert_eq!(&src[e.offset..e.offset + e.len], ")", "{e:?}");
    }

    #[test]
    fn odd_input_never_panics() {
        for src in [
            "(",
            ")",
            "[[[",
            "'unterminated",
            "\"",
            "\\",
            "context.",
            "1 +",
            "{",
            "}",
            "@x",
            "..",
            "context.a.b.c.d(",
            "b'\\xff'",
            "r'",
            "has()",
            "has(context)",
            "x.all()",
            "[1,2].map(1, 2)",
            "{1: 2}.filter(k, v, true)",
            "\u{0}",
            "🙂",
            "context.🙂",
        ] {
            let _ = check(src);
        }
        let deep = format!("{}1{}", "(".repeat(500), ")".repeat(500));
        assert!(check(&deep).is_err());
        let chain = format!("{}1 == 1", "1 + ".repeat(5000));
        let e = check(&chain).unwrap_err();
        assert!(e.message.contains("nested too deeply"), "{e:?}");
        let ok = format!("{}1 == 1", "1 + ".repeat(MAX_CEL_DEPTH - 3));
        assert!(check(&ok).is_ok());
    }
}
