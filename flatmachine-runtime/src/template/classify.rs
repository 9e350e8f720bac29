//! Classification of template strings: literal text, a plain path, one typed expression or a
//! full template, decided once per string.

use super::*;

/// What a template string turned out to be.
pub(super) enum Compiled<'a> {
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
pub(super) fn is_bare_path(s: &str) -> bool {
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
pub(super) fn plain_path(s: &str) -> Option<Vec<&str>> {
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

pub(super) fn is_json_ws(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

pub(super) fn classify<'a>(env: &'a Environment<'a>, src: &'a str) -> Compiled<'a> {
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
pub(super) fn fast_path(src: &str) -> Option<Compiled<'_>> {
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
pub(super) enum Piece<'a> {
    Raw(&'a str),
    Path(Vec<&'a str>),
}

/// Splits a template made only of text and `{{ plain.path }}` expressions; `None` for any
/// other (blocks, comments, whitespace control, a trailing newline minijinja would trim,
/// expressions that are not plain paths).
pub(super) fn path_text(src: &str) -> Option<Vec<Piece<'_>>> {
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
pub(super) fn write_path_text(pieces: &[Piece<'_>], scope: &ScopeRef<'_>) -> Option<String> {
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
pub(super) fn single_expression_span(ast: &Stmt<'_>) -> Option<(minijinja::machinery::Span, bool)> {
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
