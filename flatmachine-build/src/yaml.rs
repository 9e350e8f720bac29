//! YAML 1.2 loading with a location for every node (via `saphyr`), and conversion to JSON.
//!
//! The compiler keeps its own small node tree so that every later diagnostic can point at the
//! exact key or value in the user's file. See `docs/decisions.md` for why `saphyr`.

use crate::diagnostic::Diagnostic;
use crate::source::{FileId, SourceFile, Span};
use saphyr::Scalar;
use saphyr_parser::{Event, Parser, ScalarStyle};
use serde_json::{Map, Number, Value};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};

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
///
/// The tree is built straight from `saphyr_parser`'s events: no intermediate YAML tree exists,
/// so loading takes time and memory linear in the file's size.
pub fn parse(file_id: FileId, file: &SourceFile) -> Result<Node, Diagnostic> {
    let mut b = TreeBuilder {
        file_id,
        file,
        stack: Vec::new(),
        anchors: HashMap::new(),
        alias_budget: ALIAS_BUDGET,
        doc: None,
        documents_ended: 0,
        hasher: RandomState::new(),
    };
    for event in Parser::new_from_str(&file.text) {
        let (event, span) = event.map_err(|e| b.invalid(e.marker().index(), e.info()))?;
        b.on_event(event, span)?;
        if b.stack.len() > MAX_DEPTH {
            let at = b.stack.last().map_or(0, |f| f.start);
            return Err(b.too_deep(at));
        }
    }
    b.doc.ok_or_else(|| {
        Diagnostic::error(
            "the file is empty: expected a YAML mapping with `spec` and `data`",
            Some(Span::new(file_id, 0, 0)),
        )
    })
}

/// The deepest nesting of sequences and mappings a YAML file may have.
pub const MAX_DEPTH: usize = 256;

/// How many nodes aliases (`*name`) may copy in one file, all together (saphyr's default):
/// a few nested anchors could otherwise expand exponentially ("billion laughs").
const ALIAS_BUDGET: usize = 100_000;

/// A sequence or mapping whose end has not been seen yet.
struct Frame {
    /// Byte where it starts.
    start: usize,
    /// Anchor id (0 for none).
    anchor: usize,
    kind: FrameKind,
}

enum FrameKind {
    Seq(Vec<Node>),
    Map {
        entries: Vec<(Node, Node)>,
        /// A key waiting for its value.
        key: Option<Node>,
        /// Fingerprints of the keys so far (duplicate keys are an error, as YAML requires).
        seen: HashSet<u64>,
    },
}

/// Builds our [`Node`] tree from parser events.
struct TreeBuilder<'f> {
    file_id: FileId,
    file: &'f SourceFile,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    alias_budget: usize,
    doc: Option<Node>,
    /// Documents finished so far.
    documents_ended: usize,
    hasher: RandomState,
}

impl TreeBuilder<'_> {
    fn span(&self, span: saphyr_parser::Span) -> Span {
        let start = self.file.byte_of_char(span.start.index());
        let end = self.file.byte_of_char(span.end.index()).max(start);
        Span::new(self.file_id, start, end)
    }

    fn too_deep(&self, at: usize) -> Diagnostic {
        Diagnostic::error(
            format!("YAML nested too deeply (more than {MAX_DEPTH} levels)"),
            Some(Span::new(self.file_id, at, at)),
        )
        .with_help("a machine file needs a few levels; flatten this structure")
    }

    /// An invalid-YAML error at a character index.
    fn invalid(&self, char_index: usize, info: &str) -> Diagnostic {
        let at = self.file.byte_of_char(char_index);
        // saphyr's scanner has its own limit on flow nesting (`[[[…`, `{{{…`).
        if info.contains("recursion limit exceeded") {
            return self.too_deep(at);
        }
        Diagnostic::error(
            format!("invalid YAML: {info}"),
            Some(Span::new(self.file_id, at, at)),
        )
    }

    fn unreadable(&self, span: Span) -> Diagnostic {
        Diagnostic::error(
            "this YAML value could not be read (bad tag or unresolved alias)",
            Some(span),
        )
    }

    fn on_event(&mut self, event: Event<'_>, span: saphyr_parser::Span) -> Result<(), Diagnostic> {
        match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart(_) => {
                Ok(())
            }
            Event::DocumentEnd => {
                if self.doc.is_none() {
                    // A document with no node (`---` alone).
                    return Err(self.unreadable(self.span(span)));
                }
                self.documents_ended += 1;
                if self.documents_ended > 1 {
                    // A second, empty document (one with a node fails at that node).
                    let at = self.span(span).start;
                    return Err(Diagnostic::error(
                        "the file holds more than one YAML document",
                        Some(Span::new(self.file_id, at, at)),
                    )
                    .with_help("keep one machine, agent or profiles document per file"));
                }
                Ok(())
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                let start = self.file.byte_of_char(span.start.index());
                self.check_one_document(start)?;
                let kind = if matches!(event, Event::SequenceStart(..)) {
                    FrameKind::Seq(Vec::new())
                } else {
                    FrameKind::Map {
                        entries: Vec::new(),
                        key: None,
                        seen: HashSet::new(),
                    }
                };
                self.stack.push(Frame {
                    start,
                    anchor,
                    kind,
                });
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = self.stack.pop() else {
                    return Ok(());
                };
                let end = self.file.byte_of_char(span.start.index()).max(frame.start);
                let kind = match frame.kind {
                    FrameKind::Seq(mut items) => {
                        items.shrink_to_fit();
                        NodeKind::Seq(items)
                    }
                    FrameKind::Map { mut entries, .. } => {
                        entries.shrink_to_fit();
                        NodeKind::Map(entries)
                    }
                };
                let node = Node {
                    span: Span::new(self.file_id, frame.start, end),
                    kind,
                    block: false,
                };
                self.insert(node, frame.anchor)
            }
            Event::Scalar(text, style, anchor, tag) => {
                let span = self.span(span);
                self.check_one_document(span.start)?;
                let kind = match Scalar::parse_from_cow_and_metadata(text, style, tag.as_ref()) {
                    Some(Scalar::Null) => NodeKind::Null,
                    Some(Scalar::Boolean(b)) => NodeKind::Bool(b),
                    Some(Scalar::Integer(i)) => NodeKind::Int(i),
                    Some(Scalar::FloatingPoint(f)) => NodeKind::Float(f.into_inner()),
                    Some(Scalar::String(s)) => {
                        // The scanner's buffers grow by doubling: keep only the text.
                        let mut s = s.into_owned();
                        s.shrink_to_fit();
                        NodeKind::Str(s)
                    }
                    None => return Err(self.unreadable(span)),
                };
                let block = matches!(style, ScalarStyle::Literal | ScalarStyle::Folded)
                    && matches!(kind, NodeKind::Str(_));
                self.insert(Node { span, kind, block }, anchor)
            }
            Event::Alias(id) => {
                let span = self.span(span);
                self.check_one_document(span.start)?;
                let Some(target) = self.anchors.get(&id) else {
                    return Err(self.unreadable(span));
                };
                let mut budget = self.alias_budget;
                if !count_within(target, &mut budget) {
                    return Err(Diagnostic::error(
                        "invalid YAML: alias expansion exceeded the maximum node budget (possible billion-laughs attack)",
                        Some(Span::new(self.file_id, span.start, span.start)),
                    ));
                }
                self.alias_budget = budget;
                let mut node = target.clone();
                node.span = span;
                self.insert(node, 0)
            }
        }
    }

    /// A node starting at `at` outside any collection is a document's root: only one may exist.
    fn check_one_document(&self, at: usize) -> Result<(), Diagnostic> {
        if self.stack.is_empty() && self.doc.is_some() {
            return Err(Diagnostic::error(
                "the file holds more than one YAML document",
                Some(Span::new(self.file_id, at, at)),
            )
            .with_help("keep one machine, agent or profiles document per file"));
        }
        Ok(())
    }

    /// Add a finished node to the open collection (or make it the document).
    fn insert(&mut self, node: Node, anchor: usize) -> Result<(), Diagnostic> {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let Some(frame) = self.stack.last_mut() else {
            self.doc = Some(node);
            return Ok(());
        };
        match &mut frame.kind {
            FrameKind::Seq(items) => items.push(node),
            FrameKind::Map { entries, key, seen } => match key.take() {
                None => {
                    let fp = self.hasher.hash_one(Fingerprint(&node));
                    if !seen.insert(fp) && entries.iter().any(|(k, _)| same_value(k, &node)) {
                        return Err(Diagnostic::error(
                            "invalid YAML: duplicated key in mapping",
                            Some(Span::new(self.file_id, node.span.start, node.span.start)),
                        ));
                    }
                    *key = Some(node);
                }
                Some(k) => entries.push((k, node)),
            },
        }
        Ok(())
    }
}

/// Counts `node`'s nodes against `budget`; false (stopping early) when the budget runs out.
fn count_within(node: &Node, budget: &mut usize) -> bool {
    let mut todo = vec![node];
    while let Some(n) = todo.pop() {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        match &n.kind {
            NodeKind::Seq(items) => todo.extend(items),
            NodeKind::Map(entries) => todo.extend(entries.iter().flat_map(|(k, v)| [k, v])),
            _ => {}
        }
    }
    true
}

/// Hashes a node's value (not its place), consistently with [`same_value`].
struct Fingerprint<'a>(&'a Node);

impl std::hash::Hash for Fingerprint<'_> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let node = self.0;
        std::mem::discriminant(&node.kind).hash(h);
        match &node.kind {
            NodeKind::Null => {}
            NodeKind::Bool(b) => b.hash(h),
            NodeKind::Int(i) => i.hash(h),
            NodeKind::Float(f) => float_bits(*f).hash(h),
            NodeKind::Str(s) => s.hash(h),
            NodeKind::Seq(items) => {
                items.len().hash(h);
                for i in items {
                    Fingerprint(i).hash(h);
                }
            }
            NodeKind::Map(entries) => {
                entries.len().hash(h);
                for (k, v) in entries {
                    Fingerprint(k).hash(h);
                    Fingerprint(v).hash(h);
                }
            }
        }
    }
}

/// Float identity as YAML keys see it: every NaN is one value, and `-0.0` is `0.0`.
fn float_bits(f: f64) -> u64 {
    if f.is_nan() {
        f64::NAN.to_bits()
    } else if f == 0.0 {
        0
    } else {
        f.to_bits()
    }
}

/// Whether two nodes hold the same value (wherever they are).
fn same_value(a: &Node, b: &Node) -> bool {
    match (&a.kind, &b.kind) {
        (NodeKind::Null, NodeKind::Null) => true,
        (NodeKind::Bool(x), NodeKind::Bool(y)) => x == y,
        (NodeKind::Int(x), NodeKind::Int(y)) => x == y,
        (NodeKind::Float(x), NodeKind::Float(y)) => float_bits(*x) == float_bits(*y),
        (NodeKind::Str(x), NodeKind::Str(y)) => x == y,
        (NodeKind::Seq(x), NodeKind::Seq(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        (NodeKind::Map(x), NodeKind::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| same_value(ka, kb) && same_value(va, vb))
        }
        _ => false,
    }
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
    fn documents_anchors_and_tags() {
        for two in ["a: 1\n---\nb: 2\n", "a: 1\n---\n", "a: 1\n--- x\n"] {
            let (_, r) = load(two);
            let e = r.unwrap_err();
            assert!(
                e.message.contains("more than one YAML document"),
                "{two:?}: {e:?}"
            );
        }
        // An explicit empty document is a null (the loader then asks for a mapping).
        let (_, r) = load("---\n");
        assert_eq!(r.unwrap().kind, NodeKind::Null);
        let (_, n) = load("a: &x {k: [1, two]}\nb: *x\nc: !custom {d: 1}\ne: !!str 12\n");
        let n = n.unwrap();
        let mut errs = vec![];
        let v = to_json(&n, &mut errs);
        assert!(errs.is_empty());
        assert_eq!(v["b"], serde_json::json!({"k": [1, "two"]}));
        assert_eq!(v["c"], serde_json::json!({"d": 1}));
        assert_eq!(v["e"], "12");
        let (_, r) = load("a: !!int abc\n");
        assert!(r.unwrap_err().message.contains("could not be read"));
        let (_, r) = load("a: *nowhere\n");
        assert!(r.is_err());
        let (_, r) = load("{[1, 2]: a, [1, 2]: b}\n");
        assert!(r.unwrap_err().message.contains("duplicated key"));
        let (_, r) = load("{1: a, '1': b, 1.0: c, null: d, ~: e}\n");
        assert!(r.unwrap_err().message.contains("duplicated key"));
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
