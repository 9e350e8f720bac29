//! YAML 1.2 loading with a location for every node (via `saphyr`), and conversion to JSON.
//!
//! The compiler keeps its own small node tree so that every later diagnostic can point at the
//! exact key or value in the user's file. See `docs/decisions.md` for why `saphyr`.

use crate::diagnostic::Diagnostic;
use crate::source::{FileId, SourceFile, Span};
use saphyr::{MarkedYaml, Scalar, ScanError, YamlData, YamlLoader};
use saphyr_parser::{Event, Parser, SpannedEventReceiver};
use serde_json::{Map, Number, Value};

/// A YAML node with its place in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the node's value is.
    pub span: Span,
    /// The value.
    pub kind: NodeKind,
    /// Whether a string was written as a block scalar (`|` or `>`): its text starts on the next line.
    pub block: bool,
}

/// The value of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// `null`, `~` or empty.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float (may be NaN or infinite in YAML; rejected when converted to JSON).
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order, with the key nodes kept for locations.
    Map(Vec<(Node, Node)>),
}

/// One step of a path into a document: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathSeg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

impl From<&str> for PathSeg {
    fn from(s: &str) -> Self {
        PathSeg::Key(s.to_string())
    }
}

impl From<usize> for PathSeg {
    fn from(i: usize) -> Self {
        PathSeg::Index(i)
    }
}

impl Node {
    /// The string value, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The entries, if this is a mapping.
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            NodeKind::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The key node and value node of `key`, if this is a mapping that has it.
    pub fn entry(&self, key: &str) -> Option<(&Node, &Node)> {
        self.as_map()?
            .iter()
            .find(|(k, _)| key_is(k, key))
            .map(|(k, v)| (k, v))
    }

    /// The value node of `key`, if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|(_, v)| v)
    }

    /// The node at a path of keys and indexes.
    pub fn at(&self, path: &[PathSeg]) -> Option<&Node> {
        let mut node = self;
        for seg in path {
            node = match (seg, &node.kind) {
                (PathSeg::Key(k), NodeKind::Map(_)) => node.get(k)?,
                (PathSeg::Index(i), NodeKind::Seq(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// The key node for the last segment of `path` (when it is a mapping key).
    pub fn key_at(&self, path: &[PathSeg]) -> Option<&Node> {
        let (last, parent) = path.split_last()?;
        match last {
            PathSeg::Key(k) => self.at(parent)?.entry(k).map(|(k, _)| k),
            PathSeg::Index(_) => None,
        }
    }

    /// The deepest node along `path` that exists: the best place to point at for a problem there.
    pub fn nearest(&self, path: &[PathSeg]) -> &Node {
        let mut node = self;
        for seg in path {
            let next = match (seg, &node.kind) {
                (PathSeg::Key(k), NodeKind::Map(_)) => node.get(k),
                (PathSeg::Index(i), NodeKind::Seq(items)) => items.get(*i),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node
    }

    /// A short name of the node's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Null => "null",
            NodeKind::Bool(_) => "boolean",
            NodeKind::Int(_) => "integer",
            NodeKind::Float(_) => "float",
            NodeKind::Str(_) => "string",
            NodeKind::Seq(_) => "sequence",
            NodeKind::Map(_) => "mapping",
        }
    }
}

/// Whether a key node's text (see [`key_text`]) is `key`, without allocating for string keys.
fn key_is(node: &Node, key: &str) -> bool {
    match &node.kind {
        NodeKind::Str(s) => s == key,
        NodeKind::Seq(_) | NodeKind::Map(_) => false,
        _ => key_text(node).as_deref() == Some(key),
    }
}

/// The text of a scalar key (`yes`, `1` and `null` keys become the strings "yes", "1", "null").
pub fn key_text(key: &Node) -> Option<String> {
    match &key.kind {
        NodeKind::Str(s) => Some(s.clone()),
        NodeKind::Int(i) => Some(i.to_string()),
        NodeKind::Float(f) => Some(f.to_string()),
        NodeKind::Bool(b) => Some(b.to_string()),
        NodeKind::Null => Some("null".to_string()),
        NodeKind::Seq(_) | NodeKind::Map(_) => None,
    }
}

/// Parse one YAML document. An empty file is an error, as is more than one document, and so is
/// nesting deeper than [`MAX_DEPTH`] (checked on the parser's events, before any tree is built,
/// so no input can exhaust the stack).
pub fn parse(file_id: FileId, file: &SourceFile) -> Result<Node, Diagnostic> {
    let docs = load_limited(file_id, file)?;
    let mut docs = docs.into_iter();
    let Some(doc) = docs.next() else {
        return Err(Diagnostic::error(
            "the file is empty: expected a YAML mapping with `spec` and `data`",
            Some(Span::new(file_id, 0, 0)),
        ));
    };
    if let Some(second) = docs.next() {
        let at = file.byte_of_char(second.span.start.index());
        return Err(Diagnostic::error(
            "the file holds more than one YAML document",
            Some(Span::new(file_id, at, at)),
        )
        .with_help("keep one machine, agent or profiles document per file"));
    }
    convert(file_id, file, &doc, 0)
}

/// Drives saphyr's event parser (which keeps its own stacks on the heap) into saphyr's tree
/// loader, counting open sequences and mappings: deeper than [`MAX_DEPTH`] stops at once with a
/// located error, so neither the tree nor anything that walks it recursively ever gets deep.
fn load_limited<'a>(
    file_id: FileId,
    file: &'a SourceFile,
) -> Result<Vec<MarkedYaml<'a>>, Diagnostic> {
    let too_deep = |at: usize| {
        Diagnostic::error(
            format!("YAML nested too deeply (more than {MAX_DEPTH} levels)"),
            Some(Span::new(file_id, at, at)),
        )
        .with_help("a machine file needs a few levels; flatten this structure")
    };
    let invalid = |e: &ScanError| {
        let at = file.byte_of_char(e.marker().index());
        // saphyr's scanner has its own limit on flow nesting (`[[[…`, `{{{…`).
        if e.info().contains("recursion limit exceeded") {
            return too_deep(at);
        }
        Diagnostic::error(
            format!("invalid YAML: {}", e.info()),
            Some(Span::new(file_id, at, at)),
        )
    };
    let mut loader: YamlLoader<'a, MarkedYaml<'a>> = YamlLoader::default();
    let mut depth = 0usize;
    for event in Parser::new_from_str(&file.text) {
        let (event, span) = event.map_err(|e| invalid(&e))?;
        match event {
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(too_deep(file.byte_of_char(span.start.index())));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
        loader.on_event(event, span);
        if let Some(e) = loader.error() {
            return Err(invalid(e));
        }
    }
    Ok(loader.into_documents())
}

/// The deepest nesting of sequences and mappings a YAML file may have.
pub const MAX_DEPTH: usize = 256;

fn convert(
    file_id: FileId,
    file: &SourceFile,
    y: &MarkedYaml<'_>,
    depth: usize,
) -> Result<Node, Diagnostic> {
    let start = file.byte_of_char(y.span.start.index());
    let end = file.byte_of_char(y.span.end.index()).max(start);
    let span = Span::new(file_id, start, end);
    if depth > MAX_DEPTH {
        return Err(Diagnostic::error("YAML nested too deeply", Some(span)));
    }
    let block =
        matches!(y.data, YamlData::Value(Scalar::String(_))) && is_block_scalar(file, start);
    let kind = match &y.data {
        YamlData::Value(s) => match s {
            Scalar::Null => NodeKind::Null,
            Scalar::Boolean(b) => NodeKind::Bool(*b),
            Scalar::Integer(i) => NodeKind::Int(*i),
            Scalar::FloatingPoint(f) => NodeKind::Float(f.into_inner()),
            Scalar::String(s) => NodeKind::Str(s.to_string()),
        },
        YamlData::Representation(text, _, _) => NodeKind::Str(text.to_string()),
        YamlData::Sequence(items) => NodeKind::Seq(
            items
                .iter()
                .map(|i| convert(file_id, file, i, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        YamlData::Mapping(map) => {
            let mut entries = Vec::with_capacity(map.len());
            for (k, v) in map.iter() {
                entries.push((
                    convert(file_id, file, k, depth + 1)?,
                    convert(file_id, file, v, depth + 1)?,
                ));
            }
            NodeKind::Map(entries)
        }
        YamlData::Tagged(_, inner) => return convert(file_id, file, inner, depth + 1),
        YamlData::Alias(_) | YamlData::BadValue => {
            return Err(Diagnostic::error(
                "this YAML value could not be read (bad tag or unresolved alias)",
                Some(span),
            ));
        }
    };
    Ok(Node { span, kind, block })
}

/// Whether the string whose text starts at byte `start` was written as a block scalar: the
/// line before it ends in a `|` or `>` header.
fn is_block_scalar(file: &SourceFile, start: usize) -> bool {
    let (line, _) = file.line_col(start);
    if line < 2 {
        return false;
    }
    let prev = &file.text[file.line_start(line - 1)..file.line_start(line)];
    let prev = prev.split(" #").next().unwrap_or(prev).trim_end();
    let last = prev.rsplit([' ', '\t']).next().unwrap_or("");
    let mut chars = last.chars();
    matches!(chars.next(), Some('|' | '>'))
        && chars.all(|c| c == '-' || c == '+' || c.is_ascii_digit())
}

impl Node {
    /// The place in the file of byte `offset` of this string's value (for errors inside a
    /// template or expression). Exact for plain, single-line quoted and block scalars.
    pub fn span_in_value(&self, file: &SourceFile, offset: usize, len: usize) -> Span {
        let Some(text) = self.as_str() else {
            return self.span;
        };
        let offset = offset.min(text.len());
        if self.block {
            let before = &text[..offset];
            let line_idx = before.matches('\n').count();
            let col = offset - before.rfind('\n').map_or(0, |i| i + 1);
            let (first_line, _) = file.line_col(self.span.start);
            let indent = self.span.start - file.line_start(first_line);
            let at = file.line_start(first_line + line_idx) + indent + col;
            let at = at.min(file.text.len());
            return Span::new(self.span.file, at, (at + len).min(file.text.len()));
        }
        let quoted = matches!(
            file.text.as_bytes().get(self.span.start),
            Some(b'"' | b'\'')
        );
        let base = self.span.start + usize::from(quoted);
        let raw = file.text.get(base..self.span.end).unwrap_or("");
        if raw.len() >= offset && raw.get(..offset) == text.get(..offset) {
            return Span::new(
                self.span.file,
                base + offset,
                (base + offset + len).min(self.span.end),
            );
        }
        self.span
    }
}

/// Convert to JSON, reporting values JSON cannot hold (NaN, infinities, non-scalar keys).
pub fn to_json(node: &Node, errors: &mut Vec<Diagnostic>) -> Value {
    match &node.kind {
        NodeKind::Null => Value::Null,
        NodeKind::Bool(b) => Value::Bool(*b),
        NodeKind::Int(i) => Value::Number((*i).into()),
        NodeKind::Float(f) => match Number::from_f64(*f) {
            Some(n) => Value::Number(n),
            None => {
                errors.push(
                    Diagnostic::error(
                        format!("`{f}` cannot be represented in JSON"),
                        Some(node.span),
                    )
                    .with_help("quote it if you meant a string"),
                );
                Value::Null
            }
        },
        NodeKind::Str(s) => Value::String(s.clone()),
        NodeKind::Seq(items) => Value::Array(items.iter().map(|i| to_json(i, errors)).collect()),
        NodeKind::Map(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                match key_text(k) {
                    Some(key) => {
                        map.insert(key, to_json(v, errors));
                    }
                    None => errors.push(Diagnostic::error(
                        "mapping keys must be plain scalars (strings, numbers, booleans)",
                        Some(k.span),
                    )),
                }
            }
            Value::Object(map)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceDb;

    fn load(text: &str) -> (SourceDb, Result<Node, Diagnostic>) {
        let mut db = SourceDb::new();
        let id = db.add("t.yml".into(), "t.yml".into(), text.into());
        let r = parse(id, db.file(id));
        (db, r)
    }

    #[test]
    fn yaml_1_2_scalars() {
        let (_, n) = load("yes: no\non: off\nx: 010\ny: 1e3\n");
        let n = n.unwrap();
        let mut errs = vec![];
        let v = to_json(&n, &mut errs);
        assert!(errs.is_empty());
        assert_eq!(v["yes"], "no");
        assert_eq!(v["on"], "off");
        assert_eq!(v["x"], 10);
        assert_eq!(v["y"].as_f64(), Some(1000.0));
    }

    #[test]
    fn locations_point_at_values_and_keys() {
        let (db, n) = load("data:\n  states:\n    start:\n      to: reviw\n");
        let n = n.unwrap();
        let path: Vec<PathSeg> = vec!["data".into(), "states".into(), "start".into(), "to".into()];
        let v = n.at(&path).unwrap();
        assert_eq!(db.location(v.span), "t.yml:4:11");
        let k = n.key_at(&path).unwrap();
        assert_eq!(db.location(k.span), "t.yml:4:7");
    }

    #[test]
    fn duplicate_keys_and_bad_yaml_are_located_errors() {
        let (db, r) = load("a: 1\na: 2\n");
        let e = r.unwrap_err();
        assert!(e.message.contains("invalid YAML"), "{}", e.message);
        assert!(db.location(e.span.unwrap()).starts_with("t.yml:"));
        let (_, r) = load("a: [1, 2\n");
        assert!(r.is_err());
        let (_, r) = load("");
        assert!(r.is_err());
    }

    #[test]
    fn nan_is_rejected_in_json() {
        let (_, n) = load("a: .nan\n");
        let mut errs = vec![];
        to_json(&n.unwrap(), &mut errs);
        assert_eq!(errs.len(), 1);
    }

    #[test]
    fn block_scalars_are_marked() {
        let text = "a: |\n  hello\n  {{ x }}\nb: plain {{ y }}\nc: 'q {{ z }}'\n";
        let (db, n) = load(text);
        let n = n.unwrap();
        let f = db.file(crate::source::FileId(0));
        let a = n.get("a").unwrap();
        assert!(a.block);
        assert_eq!(db.location(a.span_in_value(f, 9, 2)), "t.yml:3:6");
        let b = n.get("b").unwrap();
        assert!(!b.block);
        assert_eq!(db.location(b.span_in_value(f, 6, 2)), "t.yml:4:10");
        let c = n.get("c").unwrap();
        assert_eq!(db.location(c.span_in_value(f, 2, 2)), "t.yml:5:7");
    }
}
