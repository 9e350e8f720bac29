//! The machine's graph as SVG, drawn on the server: states in layers by distance from the
//! initial state, transitions as arrows, the path a run took and where it stands highlighted.
//! Every text is XML-escaped.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

use super::data::{Path, Status};
use crate::trace::GraphTrace;

const NODE_H: f64 = 34.0;
const LAYER_GAP: f64 = 70.0;
const NODE_GAP: f64 = 28.0;
const CHAR_W: f64 = 7.4;
const MARGIN: f64 = 20.0;
/// Longest name drawn in full.
const MAX_LABEL: usize = 32;
/// Most states drawn (larger machines are cut, with a note).
const MAX_STATES: usize = 400;

/// Escapes `text` for XML text and attribute values.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

struct Node {
    x: f64,
    y: f64,
    w: f64,
}

/// The SVG of `graph`, with `path` (visited states and transitions taken) and `current` (the
/// state the run is in or ended in) highlighted.
pub fn render(graph: &GraphTrace, path: &Path, current: Option<&str>, status: Status) -> String {
    let states = &graph.states[..graph.states.len().min(MAX_STATES)];
    let index: HashMap<&str, usize> = states
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    // Layers: breadth-first distance from the initial state over the transitions, then error
    // routes; states reached by neither go last.
    let mut layer = vec![usize::MAX; states.len()];
    let mut queue = VecDeque::new();
    if let Some(&i) = index.get(graph.initial.as_str()) {
        layer[i] = 0;
        queue.push_back(i);
    }
    for pass_errors in [false, true] {
        if pass_errors {
            queue.extend((0..states.len()).filter(|i| layer[*i] != usize::MAX));
        }
        while let Some(i) = queue.pop_front() {
            for e in &graph.edges {
                if e.on_error != pass_errors && !pass_errors {
                    continue;
                }
                if e.from != states[i].name {
                    continue;
                }
                if let Some(&j) = index.get(e.to.as_str())
                    && layer[j] == usize::MAX
                {
                    layer[j] = layer[i] + 1;
                    queue.push_back(j);
                }
            }
        }
    }
    let deepest = layer.iter().filter(|l| **l != usize::MAX).max().copied();
    let last = deepest.map_or(0, |d| d + 1);
    for l in &mut layer {
        if *l == usize::MAX {
            *l = last;
        }
    }
    let layers = layer.iter().max().map_or(0, |m| m + 1);
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); layers];
    for (i, l) in layer.iter().enumerate() {
        rows[*l].push(i);
    }
    let widths: Vec<f64> = states
        .iter()
        .map(|s| {
            let label = short(&s.name, MAX_LABEL).chars().count();
            let kind = s.kind.chars().count() + 2;
            (label.max(kind) as f64 * CHAR_W + 24.0).max(70.0)
        })
        .collect();
    let row_width = |row: &Vec<usize>| {
        row.iter().map(|i| widths[*i]).sum::<f64>() + NODE_GAP * row.len().saturating_sub(1) as f64
    };
    let width = rows.iter().map(row_width).fold(200.0, f64::max) + 2.0 * MARGIN + 60.0;
    let mut nodes: Vec<Node> = (0..states.len())
        .map(|_| Node {
            x: 0.0,
            y: 0.0,
            w: 0.0,
        })
        .collect();
    for (l, row) in rows.iter().enumerate() {
        let mut x = (width - row_width(row)) / 2.0;
        for &i in row {
            nodes[i] = Node {
                x,
                y: MARGIN + l as f64 * (NODE_H + LAYER_GAP),
                w: widths[i],
            };
            x += widths[i] + NODE_GAP;
        }
    }
    let height = MARGIN * 2.0 + layers as f64 * (NODE_H + LAYER_GAP) - LAYER_GAP + 20.0;
    let taken: HashMap<(&str, &str), u64> = path
        .edges
        .iter()
        .map(|(a, b, n)| ((a.as_str(), b.as_str()), *n))
        .collect();

    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"##
    );
    svg.push_str(
        r##"<defs><marker id="a" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#888"/></marker><marker id="t" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#1f6feb"/></marker></defs>"##,
    );
    let _ = write!(
        svg,
        r##"<rect width="100%" height="100%" fill="#fff"/><title>{}</title>"##,
        xml_escape(&graph.machine)
    );
    // Edges first, under the nodes. Several edges between the same pair are drawn once.
    let mut drawn: Vec<(usize, usize)> = Vec::new();
    for e in &graph.edges {
        let (Some(&a), Some(&b)) = (index.get(e.from.as_str()), index.get(e.to.as_str())) else {
            continue;
        };
        if drawn.contains(&(a, b)) {
            continue;
        }
        drawn.push((a, b));
        let count = taken.get(&(e.from.as_str(), e.to.as_str())).copied();
        let (stroke, marker, w) = match count {
            Some(_) => ("#1f6feb", "t", 2.5),
            None if e.on_error => ("#d29922", "a", 1.2),
            None => ("#999", "a", 1.2),
        };
        let dash = if e.on_error {
            r#" stroke-dasharray="5,4""#
        } else {
            ""
        };
        let (na, nb) = (&nodes[a], &nodes[b]);
        let d = if a == b {
            let x = na.x + na.w;
            let y = na.y + NODE_H / 2.0;
            format!(
                "M{:.1},{:.1} C{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}",
                x,
                y - 8.0,
                x + 40.0,
                y - 30.0,
                x + 40.0,
                y + 30.0,
                x,
                y + 8.0
            )
        } else if nb.y > na.y {
            let (x1, y1) = (na.x + na.w / 2.0, na.y + NODE_H);
            let (x2, y2) = (nb.x + nb.w / 2.0, nb.y);
            format!(
                "M{x1:.1},{y1:.1} C{x1:.1},{:.1} {x2:.1},{:.1} {x2:.1},{y2:.1}",
                y1 + 30.0,
                y2 - 30.0
            )
        } else {
            // Back or sideways: around the right of both.
            let (x1, y1) = (na.x + na.w, na.y + NODE_H / 2.0);
            let (x2, y2) = (nb.x + nb.w, nb.y + NODE_H / 2.0);
            let bend = x1.max(x2) + 30.0 + (na.y - nb.y).abs() / 6.0;
            format!("M{x1:.1},{y1:.1} C{bend:.1},{y1:.1} {bend:.1},{y2:.1} {x2:.1},{y2:.1}")
        };
        let mut title = format!("{} → {}", e.from, e.to);
        if let Some(label) = &e.label {
            let _ = write!(
                title,
                "{} {label}",
                if e.on_error { " on error" } else { " when" }
            );
        }
        if let Some(n) = count {
            let _ = write!(title, " (taken {n}×)");
        }
        let _ = write!(
            svg,
            r##"<path class="edge{}" d="{d}" fill="none" stroke="{stroke}" stroke-width="{w}"{dash} marker-end="url(#{marker})"><title>{}</title></path>"##,
            if count.is_some() { " taken" } else { "" },
            xml_escape(&title)
        );
        if let (Some(n), false) = (count, a == b) {
            let (mx, my) = (
                (na.x + na.w / 2.0 + nb.x + nb.w / 2.0) / 2.0,
                (na.y + NODE_H + nb.y) / 2.0,
            );
            if n > 1 {
                let _ = write!(
                    svg,
                    r##"<text x="{:.1}" y="{my:.1}" fill="#1f6feb" font-size="11">{n}×</text>"##,
                    mx + 4.0
                );
            }
        }
    }
    for (i, s) in states.iter().enumerate() {
        let n = &nodes[i];
        let visits = path.visits.get(&s.name).copied().unwrap_or(0);
        let is_current = current == Some(s.name.as_str());
        let (fill, stroke, sw) = if is_current {
            match status {
                Status::Failed => ("#ffebe9", "#cf222e", 3.0),
                Status::Finished => ("#dafbe1", "#1a7f37", 3.0),
                Status::Waiting => ("#fff8c5", "#9a6700", 3.0),
                _ => ("#ddf4ff", "#0969da", 3.0),
            }
        } else if visits > 0 {
            ("#ddf4ff", "#1f6feb", 1.5)
        } else {
            ("#f6f8fa", "#8c959f", 1.0)
        };
        let rx = if s.is_final { 17.0 } else { 6.0 };
        let mut title = format!("{} ({})", s.name, s.kind);
        if let Some(d) = &s.detail {
            let _ = write!(title, ": {d}");
        }
        if visits > 0 {
            let _ = write!(title, ", visited {visits}×");
        }
        let _ = write!(
            svg,
            r##"<g class="state{}{}" data-state="{}"><title>{}</title><rect x="{:.1}" y="{:.1}" width="{:.1}" height="{NODE_H}" rx="{rx}" fill="{fill}" stroke="{stroke}" stroke-width="{sw}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-weight="600">{}</text><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#57606a" font-size="10">{}</text></g>"##,
            if is_current { " current" } else { "" },
            if visits > 0 { " visited" } else { "" },
            xml_escape(&s.name),
            xml_escape(&title),
            n.x,
            n.y,
            n.w,
            n.x + n.w / 2.0,
            n.y + 15.0,
            xml_escape(&short(&s.name, MAX_LABEL)),
            n.x + n.w / 2.0,
            n.y + 28.0,
            xml_escape(&s.kind),
        );
    }
    if graph.states.len() > MAX_STATES {
        let _ = write!(
            svg,
            r##"<text x="{MARGIN}" y="{:.1}" fill="#cf222e">{} more states not drawn</text>"##,
            height - 6.0,
            graph.states.len() - MAX_STATES
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{GraphEdge, GraphState};

    fn state(name: &str, kind: &str) -> GraphState {
        GraphState {
            name: name.into(),
            kind: kind.into(),
            detail: None,
            is_final: kind == "final",
            starts_children: false,
        }
    }

    #[test]
    fn names_are_escaped_and_the_path_is_highlighted() {
        let graph = GraphTrace {
            machine: "m<x>".into(),
            config_hash: None,
            started_at: String::new(),
            initial: "start".into(),
            states: vec![
                state("start", "action"),
                state("<b>&", "agent"),
                state("done", "final"),
            ],
            edges: vec![
                GraphEdge {
                    from: "start".into(),
                    to: "<b>&".into(),
                    label: Some("context.x < 3".into()),
                    on_error: false,
                },
                GraphEdge {
                    from: "<b>&".into(),
                    to: "done".into(),
                    label: None,
                    on_error: false,
                },
            ],
        };
        let mut path = Path::default();
        path.visits.insert("start".into(), 1);
        path.visits.insert("<b>&".into(), 1);
        path.edges.push(("start".into(), "<b>&".into(), 1));
        let svg = render(&graph, &path, Some("<b>&"), Status::Running);
        assert!(!svg.contains("<b>"), "{svg}");
        assert!(svg.contains("&lt;b&gt;&amp;"));
        assert!(svg.contains("context.x &lt; 3"));
        assert_eq!(svg.matches("class=\"edge taken\"").count(), 1);
        assert_eq!(svg.matches("state current").count(), 1);
    }
}
