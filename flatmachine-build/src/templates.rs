//! Compile-time checks of Jinja templates with minijinja: syntax, and variables read that are
//! not in scope where the template sits.

use crate::diagnostic::closest;

/// One problem in a template, located by byte offset in the template source.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateProblem {
    /// What is wrong.
    pub message: String,
    /// Byte offset in the template source.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
    /// What to do.
    pub help: Option<String>,
    /// The variable read out of scope, for that kind of problem.
    pub var: Option<String>,
}

/// Names Jinja provides everywhere (its global functions, and what a `for` or macro binds), so
/// reading them is never "out of scope".
pub const JINJA_GLOBALS: &[&str] = &[
    "range",
    "dict",
    "namespace",
    "lipsum",
    "cycler",
    "joiner",
    "debug",
    "loop",
    "caller",
    "varargs",
    "kwargs",
    "self",
];

/// Whether a string is a template (`{{` or `{%`), as the reference decides.
pub fn is_template(src: &str) -> bool {
    src.contains("{{") || src.contains("{%")
}

fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
    env
}

/// Check only the syntax of a template (for places whose variables the compiler does not know,
/// such as agent prompts).
pub fn check_syntax(src: &str) -> Vec<TemplateProblem> {
    check_inner(src, None)
}

/// Check one template string. `scope` names the variables it may read.
pub fn check(src: &str, scope: &[String]) -> Vec<TemplateProblem> {
    check_inner(src, Some(scope))
}

fn check_inner(src: &str, scope: Option<&[String]>) -> Vec<TemplateProblem> {
    if !is_template(src) {
        return Vec::new();
    }
    let env = environment();
    let tmpl = match env.template_from_str(src) {
        Ok(t) => t,
        Err(e) => {
            let (offset, len) = match e.range() {
                Some(r) => (r.start, r.end.saturating_sub(r.start).max(1)),
                None => (line_offset(src, e.line().unwrap_or(1)), 1),
            };
            let detail = e
                .detail()
                .map(str::to_string)
                .unwrap_or_else(|| e.kind().to_string());
            let help = syntax_hint(&detail);
            return vec![TemplateProblem {
                message: format!("invalid template: {detail}"),
                offset,
                len,
                help,
                var: None,
            }];
        }
    };
    let Some(scope) = scope else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    let mut vars: Vec<String> = tmpl.undeclared_variables(false).into_iter().collect();
    vars.sort();
    for var in vars {
        if scope.iter().any(|s| s == &var) || JINJA_GLOBALS.contains(&var.as_str()) {
            continue;
        }
        let (offset, len) = find_word(src, &var).unwrap_or((0, 0));
        let in_scope = scope.join("`, `");
        let help = match closest(&var, scope.iter().map(String::as_str)) {
            Some(c) => format!("did you mean `{c}`?"),
            None => format!("in scope here: `{in_scope}`"),
        };
        problems.push(TemplateProblem {
            message: format!("template reads `{var}`, which is not in scope here"),
            offset,
            len,
            help: Some(help),
            var: Some(var),
        });
    }
    problems
}

/// A hint for the commonest Jinja syntax mistakes.
fn syntax_hint(detail: &str) -> Option<String> {
    if detail.contains("expected end of variable block") {
        Some("close the expression with `}}`".into())
    } else if detail.contains("unknown statement end")
        || detail.contains("expected end of block")
        || detail.contains("missing end")
    {
        Some(
            "each `{% if %}` closes with `{% endif %}` and each `{% for %}` with `{% endfor %}`"
                .into(),
        )
    } else if detail.contains("unexpected end of input") {
        Some("a `{{` or `{%` is not closed".into())
    } else {
        None
    }
}

fn line_offset(src: &str, line: usize) -> usize {
    src.split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum()
}

/// First occurrence of `word` as a whole identifier inside `{{ }}` / `{% %}`.
fn find_word(src: &str, word: &str) -> Option<(usize, usize)> {
    let bytes = src.as_bytes();
    let mut from = 0;
    while let Some(pos) = src[from..].find(word) {
        let start = from + pos;
        let end = start + word.len();
        let before_ok = start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b'.');
        let after_ok =
            end >= bytes.len() || !(bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_');
        let inside = src[..start]
            .rfind("{{")
            .or_else(|| src[..start].rfind("{%"))
            .is_some();
        if before_ok && after_ok && inside {
            return Some((start, word.len()));
        }
        from = end;
    }
    None
}

/// Whether a template reads like JSON text: after leading whitespace, `{"`, `{ "`, `["`, `[{`.
fn looks_like_json(src: &str) -> bool {
    let t = src.trim_start();
    let mut chars = t.chars();
    let first = chars.next();
    let next = chars.find(|c| !c.is_whitespace());
    matches!(
        (first, next),
        (Some('{'), Some('"')) | (Some('['), Some('"' | '{'))
    )
}

/// In a template that builds JSON text, every `"{{ expr }}"`: an expression written inside
/// JSON quotes, where a value holding `"` (model text, a tool's output) can close the string
/// and add or change keys. Each is located on the `{{ … }}`; the fix is `{{ expr | tojson }}`
/// without the quotes. Expressions already piped through `tojson` are left alone.
pub fn quoted_expressions_in_json(src: &str) -> Vec<TemplateProblem> {
    let mut out = Vec::new();
    if !looks_like_json(src) {
        return out;
    }
    let mut from = 0;
    while let Some(found) = src[from..].find("\"{{") {
        let open = from + found + 1;
        let Some(close) = src[open + 2..].find("}}").map(|c| open + 2 + c) else {
            break;
        };
        let expr = src[open + 2..close].trim();
        from = close + 2;
        if !src[from..].starts_with('"') || expr.contains("tojson") {
            continue;
        }
        out.push(TemplateProblem {
            message: format!(
                "this template builds JSON text with `\"{{{{ {expr} }}}}\"`: a value containing `\"` can close the string and add or change keys"
            ),
            offset: open,
            len: from - open,
            help: Some(format!(
                "write `{{{{ {expr} | tojson }}}}` without the surrounding quotes: it writes a JSON value with every quote escaped"
            )),
            var: None,
        });
    }
    out
}

/// The attribute paths a template reads under variable `var`: `{{ input.customer.name }}`
/// gives `[customer, name]` for `input`. A bare `{{ input }}` and subscripts (`input[k]`) give
/// nothing. Invalid templates give nothing (their syntax is reported elsewhere).
pub fn attribute_reads(src: &str, var: &str) -> Vec<Vec<String>> {
    if !is_template(src) {
        return Vec::new();
    }
    let env = environment();
    let Ok(tmpl) = env.template_from_str(src) else {
        return Vec::new();
    };
    let mut reads: Vec<Vec<String>> = tmpl
        .undeclared_variables(true)
        .into_iter()
        .filter_map(|path| {
            let rest = path.strip_prefix(var)?.strip_prefix('.')?;
            Some(rest.split('.').map(str::to_string).collect())
        })
        .collect();
    reads.sort();
    reads
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn misspelt_variable() {
        let p = check("x {{ contxt.x }}", &scope(&["context", "input"]));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].offset, 5);
        assert_eq!(p[0].help.as_deref(), Some("did you mean `context`?"));
    }

    #[test]
    fn syntax_error_is_located() {
        let p = check("a\n{{ context.x }", &scope(&["context"]));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].message.starts_with("invalid template"));
        assert!(p[0].offset >= 2, "{p:?}");
    }

    #[test]
    fn loops_and_sets_are_fine() {
        let p = check(
            "{% for x in context.items %}{{ x }}{% endfor %}{% set y = 1 %}{{ y }}",
            &scope(&["context"]),
        );
        assert!(p.is_empty(), "{p:?}");
        assert!(check("plain", &scope(&[])).is_empty());
        let p = check(
            "{% for i in range(3) %}{{ loop.index }}{{ i }}{% endfor %}{{ dict(a=1) }}",
            &scope(&[]),
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn quoted_expression_in_json_text_is_found() {
        let src =
            r#"{"name": "{{ output.name }}", "n": {{ output.n }}, "ok": {{ output.ok | tojson }}}"#;
        let p = quoted_expressions_in_json(src);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            &src[p[0].offset..p[0].offset + p[0].len],
            "{{ output.name }}"
        );
        assert!(
            p[0].help
                .as_deref()
                .unwrap()
                .contains("{{ output.name | tojson }}")
        );
        // Not JSON-looking, or already escaped: nothing to say.
        assert!(quoted_expressions_in_json(r#"Say "{{ input.x }}" please"#).is_empty());
        assert!(quoted_expressions_in_json(r#"{{ output.name }}"#).is_empty());
        assert!(quoted_expressions_in_json(r#"["{{ x | tojson }}"]"#).is_empty());
        assert_eq!(
            quoted_expressions_in_json(r#"[{"a": "{{ x }}"}, "{{y}}"]"#).len(),
            2
        );
    }

    #[test]
    fn attribute_reads_follow_dotted_paths() {
        let src = "{{ input.customer.name }} {{ input.priority | default(1) }} {{ context.x }} {{ input }}";
        assert_eq!(
            attribute_reads(src, "input"),
            vec![
                vec!["customer".to_string(), "name".to_string()],
                vec!["priority".to_string()]
            ]
        );
        assert!(attribute_reads("{% set input = 1 %}{{ input.x }}", "input").is_empty());
        assert!(attribute_reads("plain text", "input").is_empty());
    }
}
