//! Conditions and Jinja templates: parsing, scopes, and spans pointing into the user's file.

use super::*;

impl Cx<'_> {
    /// Parse a condition; report syntax errors at the right column.
    pub(super) fn condition(&mut self, rel: &[PathSeg], src: &str) -> Option<expr::Expr> {
        let parsed = expr::parse(src);
        self.condition_result(rel, parsed)
    }

    pub(super) fn cel_condition(
        &mut self,
        rel: &[PathSeg],
        src: &str,
    ) -> Option<expr::cel::CelCondition> {
        let parsed = expr::cel::check(src);
        self.condition_result(rel, parsed)
    }

    /// A parsed condition, or its error reported at the offending text.
    pub(super) fn condition_result<T>(
        &mut self,
        rel: &[PathSeg],
        parsed: Result<T, expr::ExprSyntaxError>,
    ) -> Option<T> {
        match parsed {
            Ok(e) => Some(e),
            Err(e) => {
                let span = match self.node(rel) {
                    Some(n) => n.span_in_value(
                        self.project.db.file(self.origin().file),
                        e.offset,
                        e.len.max(1),
                    ),
                    None => self.project.span(self.origin(), rel),
                };
                let mut d =
                    Diagnostic::error(format!("invalid condition: {}", e.message), Some(span));
                d.help.extend(e.help);
                self.diags.push(d);
                None
            }
        }
    }

    /// Check every template string in a value tree; return the tree for embedding.
    pub(super) fn templates(
        &mut self,
        rel: &[PathSeg],
        value: serde_json::Value,
        scope: &Scope,
    ) -> TemplateIr {
        let mut path = rel.to_vec();
        self.check_templates(&mut path, &value, scope);
        TemplateIr(value)
    }

    /// Check every template string under `value`, which is at `path` (restored on return).
    pub(super) fn check_templates(
        &mut self,
        path: &mut Vec<PathSeg>,
        value: &serde_json::Value,
        scope: &Scope,
    ) {
        match value {
            serde_json::Value::String(s) => {
                self.check_template(path, s, scope);
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    path.push(PathSeg::Index(i));
                    self.check_templates(path, v, scope);
                    path.pop();
                }
            }
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    path.push(PathSeg::Key(key.clone()));
                    self.check_templates(path, v, scope);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    pub(super) fn template_str(&mut self, rel: &[PathSeg], src: &str, scope: &Scope) -> TemplateIr {
        self.check_template(rel, src, scope);
        TemplateIr(serde_json::Value::String(src.to_string()))
    }

    pub(super) fn check_template(&mut self, rel: &[PathSeg], src: &str, scope: &Scope) {
        let origin = self.origin().clone();
        self.check_template_in(&origin, rel, src, Some(scope), false);
    }

    /// The span of `len` bytes at `offset` inside the template string at `rel` under `origin`.
    pub(super) fn template_span(
        &self,
        origin: &Origin,
        rel: &[PathSeg],
        offset: usize,
        len: usize,
    ) -> Span {
        let file = self.project.db.file(origin.file);
        match self.project.node(origin, rel) {
            Some(n) if matches!(n.kind, NodeKind::Str(_)) => n.span_in_value(file, offset, len),
            Some(n) => n.span,
            None => self.project.span(origin, rel),
        }
    }

    /// Check a template at `rel` under `origin`; with no scope, only its syntax. In an agent's
    /// prompt, a variable out of scope gets the hint that agents see only their input.
    pub(super) fn check_template_in(
        &mut self,
        origin: &Origin,
        rel: &[PathSeg],
        src: &str,
        scope: Option<&Scope>,
        agent_prompt: bool,
    ) {
        if !agent_prompt {
            // Machine templates whose text is JSON are parsed into values when rendered.
            for problem in crate::templates::quoted_expressions_in_json(src) {
                let span = self.template_span(origin, rel, problem.offset, problem.len);
                let mut d = Diagnostic::warning(problem.message, Some(span));
                d.help.extend(problem.help);
                d.notes.push(
                    "the rendered text is parsed as JSON; see docs/templates.md, \"Building JSON\""
                        .into(),
                );
                self.diags.push(d);
            }
        }
        let problems = match scope {
            Some(scope) => crate::templates::check(src, &scope.names),
            None => crate::templates::check_syntax(src),
        };
        if problems.is_empty() {
            // Finding the node walks the path from the document's root: only for problems.
            return;
        }
        let found: Vec<Diagnostic> = problems
            .into_iter()
            .map(|problem| {
                let span = self.template_span(origin, rel, problem.offset, problem.len);
                let message = match (&problem.var, agent_prompt) {
                    (Some(var), true) => {
                        format!("agent prompt reads `{var}`, which is not in scope in prompts")
                    }
                    _ => problem.message,
                };
                let mut d = Diagnostic::error(message, Some(span));
                match (&problem.var, agent_prompt) {
                    (Some(var), true) => {
                        let names = scope.map(|s| s.names.as_slice()).unwrap_or_default();
                        let close = did_you_mean(var, names.iter().map(String::as_str));
                        let obvious = ["context", "output"].contains(&var.as_str());
                        if let Some(c) = close.filter(|_| !obvious) {
                            d.help.push(c);
                        } else {
                            d.help.push(
                                "agents see only `input`: pass it from the state's `input:`".into(),
                            );
                        }
                        d.notes
                            .push(format!("a prompt may read `{}`", PROMPT_SCOPE.join("`, `")));
                    }
                    _ => d.help.extend(problem.help),
                }
                d
            })
            .collect();
        self.diags.extend(found);
    }
}

/// Every string in a value tree, with its path.
pub(super) fn collect_strings(
    rel: &[PathSeg],
    v: &serde_json::Value,
    out: &mut Vec<(Vec<PathSeg>, String)>,
) {
    match v {
        serde_json::Value::String(s) => out.push((rel.to_vec(), s.clone())),
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let mut p = rel.to_vec();
                p.push(PathSeg::Index(i));
                collect_strings(&p, item, out);
            }
        }
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                let mut p = rel.to_vec();
                p.push(PathSeg::Key(key.clone()));
                collect_strings(&p, item, out);
            }
        }
        _ => {}
    }
}
