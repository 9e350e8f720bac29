//! Diagnostics (errors and warnings) located in the user's YAML, rendered like rustc's.

use crate::source::{SourceDb, Span};
use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Compilation goes on and code is generated.
    Warning,
    /// No code is generated.
    Error,
}

/// One problem found in the user's files.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, in one line.
    pub message: String,
    /// Where (none for problems with no place, such as an unreadable root file).
    pub span: Option<Span>,
    /// A short label under the caret.
    pub label: Option<String>,
    /// What to do about it ("did you mean `review`?").
    pub help: Vec<String>,
    /// Extra facts.
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// A new error.
    pub fn error(message: impl Into<String>, span: Option<Span>) -> Self {
        Self::new(Severity::Error, message, span)
    }

    /// A new warning.
    pub fn warning(message: impl Into<String>, span: Option<Span>) -> Self {
        Self::new(Severity::Warning, message, span)
    }

    fn new(severity: Severity, message: impl Into<String>, span: Option<Span>) -> Self {
        Self {
            severity,
            message: message.into(),
            span,
            label: None,
            help: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Add a label under the caret.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Add a help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help.push(help.into());
        self
    }

    /// Add a help line if there is one.
    pub fn with_help_opt(mut self, help: Option<String>) -> Self {
        self.help.extend(help);
        self
    }

    /// Add a note.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Render in rustc's format (`error: msg`, ` --> file:line:col`, source line, caret, help).
    pub fn render(&self, db: &SourceDb, color: bool) -> String {
        let level = match self.severity {
            Severity::Error => Level::ERROR,
            Severity::Warning => Level::WARNING,
        };
        let mut group = Group::with_title(level.primary_title(self.message.as_str()));
        if let Some(span) = self.span {
            let file = db.file(span.file);
            let (start, end) = clamp_span(&file.text, span.start, span.end);
            let mut ann = AnnotationKind::Primary.span(start..end);
            if let Some(label) = &self.label {
                ann = ann.label(label.as_str());
            }
            group = group.element(
                Snippet::source(file.text.as_str())
                    .path(file.display.as_str())
                    .fold(true)
                    .annotation(ann),
            );
        }
        for note in &self.notes {
            group = group.element(Level::NOTE.message(note.as_str()));
        }
        for help in &self.help {
            group = group.element(Level::HELP.message(help.as_str()));
        }
        let report: [Group<'_>; 1] = [group];
        let renderer = if color {
            Renderer::styled()
        } else {
            Renderer::plain()
        };
        renderer.render(&report)
    }

    /// `file:line:col` of this diagnostic, if it has a place.
    pub fn location(&self, db: &SourceDb) -> Option<String> {
        self.span.map(|s| db.location(s))
    }
}

/// Keep a span inside the text and on character boundaries, and never empty if the text has room
/// (an empty span would draw no caret).
fn clamp_span(text: &str, start: usize, end: usize) -> (usize, usize) {
    let mut start = start.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = end.clamp(start, text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    if end == start && start < text.len() {
        end = start + text[start..].chars().next().map_or(0, char::len_utf8);
        if &text[start..end] == "\n" {
            end = start;
        }
    }
    (start, end)
}

/// A list of diagnostics gathered in one pass.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one.
    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }

    /// All of them, in the order found.
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }

    /// Whether any is an error.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    /// Errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| d.is_error())
    }

    /// Warnings only.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| !d.is_error())
    }

    /// The most recently added one.
    pub fn last_mut(&mut self) -> Option<&mut Diagnostic> {
        self.items.last_mut()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sort by file and position, errors first at equal places, and drop exact duplicates.
    pub fn sort(&mut self) {
        self.items.sort_by(|a, b| {
            let ka = a.span.map(|s| (s.file, s.start));
            let kb = b.span.map(|s| (s.file, s.start));
            ka.cmp(&kb).then(b.severity.cmp(&a.severity))
        });
        self.items.dedup();
    }

    /// Render all of them, separated by blank lines.
    pub fn render(&self, db: &SourceDb, color: bool) -> String {
        let mut out = String::new();
        for d in &self.items {
            out.push_str(&d.render(db, color));
            out.push_str("\n\n");
        }
        out
    }

    /// Take the list out.
    pub fn into_vec(self) -> Vec<Diagnostic> {
        self.items
    }
}

impl Extend<Diagnostic> for Diagnostics {
    fn extend<T: IntoIterator<Item = Diagnostic>>(&mut self, iter: T) {
        self.items.extend(iter);
    }
}

/// The closest candidate to `name` (Jaro similarity ≥ 0.7, as clap does), as a help line.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    closest(name, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// The closest candidate to `name` by Jaro similarity, if any reaches 0.7.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro(name, c);
        if score >= 0.7 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}
