//! Where a machine's context keys come from, and the reads that no writer can satisfy.
//!
//! A key is *set* by an entry of `data.context`, an `output_to_context` entry of any state, the
//! runtime (`last_error`, `last_error_type`; and, when a state has a `tool_loop`, the loop's
//! progress keys `_tool_loop_turns`, `_tool_calls_count`, `_tool_loop_cost`,
//! `_tool_loop_content`, `_tool_loop_stop`), or a declaration of what an action or the hooks
//! class writes:
//!
//! ```yaml
//! metadata:
//!   writes:
//!     validate_order: [approved, reason]   # action → the context keys it sets
//!     AuditHooks: [audit_id]               # hooks class → the keys its callbacks set
//! ```
//!
//! Actions and hooks without such a declaration may set any key the compiler cannot see. So a
//! template or condition that reads `context.<key>` no writer sets is a warning when nothing
//! undeclared could set it, and also when it is close to a key that is set (a typo); a read the
//! template guards (`is defined`, `| default`, a truth test, `== None`) is never reported.
//!
//! An agent's prompts read `input.<field>`; a field that a state calling the agent does not pass
//! in its `input:` renders empty: a warning at the read naming the state, an error when the
//! field is a near miss of one the state passes (`custmer` for `customer`).
//!
//! A key whose every writer is known and gives a known set of strings — an agent's output field
//! with an `enum`, a literal in `data.context` — cannot equal another string: a condition that
//! compares it with one is an error (a warning when undeclared writers exist).

use crate::diagnostic::{Diagnostic, closest, did_you_mean};
use crate::ir::{Condition, StateIr};
use crate::loader::{AgentUnit, MachineUnit, Origin, Project};
use crate::model::{ExecutionType, MachineWrapper};
use crate::source::Span;
use crate::yaml::{NodeKind, PathSeg};
use indexmap::IndexMap;
use serde_json::Value;

/// Keys the runtime itself writes (the error route).
const RUNTIME_KEYS: &[&str] = &["last_error", "last_error_type"];

/// Keys a `tool_loop` state keeps up to date while it runs (docs/tools.md).
const TOOL_LOOP_KEYS: &[&str] = &[
    "_tool_loop_turns",
    "_tool_calls_count",
    "_tool_loop_cost",
    "_tool_loop_content",
    "_tool_loop_stop",
];

/// Most key names listed in a note.
const NOTE_KEYS: usize = 16;

fn k(s: &str) -> PathSeg {
    PathSeg::Key(s.to_string())
}

/// Where a key's values come from.
#[derive(Debug, Clone)]
enum Source {
    /// A `data.context` entry: its value when it is a literal (not a template).
    Initial(Option<Value>),
    /// An `output_to_context` entry of a state; the agent output field it copies, when that
    /// field has an `enum`.
    Output(Option<EnumField>),
    /// The runtime, or an action or hooks class that declares it writes the key.
    Opaque,
}

/// An agent output field with an `enum`, copied unchanged into the context.
#[derive(Debug, Clone)]
struct EnumField {
    agent: String,
    field: String,
    values: Vec<String>,
}

/// Every writer of the machine's context keys.
struct Writers {
    keys: IndexMap<String, Vec<Source>>,
    /// Actions and hooks with no `metadata.writes` entry: `action `x``, `hooks `H``.
    undeclared: Vec<String>,
}

/// One read of a context key, located.
struct Read {
    key: String,
    span: Span,
    guarded: bool,
}

/// The context checks of one machine: unknown keys read, and comparisons with a value the key
/// never has. `states` are its lowered states (their conditions parsed).
pub fn check(project: &Project, unit: &MachineUnit, states: &[StateIr]) -> Vec<Diagnostic> {
    let Some(cfg) = unit.config.as_ref() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let writers = writers(project, unit, cfg, &mut out);
    let reads = reads(project, &unit.origin, states);
    unknown_reads(cfg, &writers, &reads, &mut out);
    impossible_comparisons(project, &unit.origin, states, &writers, &mut out);
    out
}

fn writers(
    project: &Project,
    unit: &MachineUnit,
    cfg: &MachineWrapper,
    out: &mut Vec<Diagnostic>,
) -> Writers {
    let data = &cfg.data;
    let mut keys: IndexMap<String, Vec<Source>> = IndexMap::new();
    for (key, value) in data.context.iter().flatten() {
        let literal = match value {
            Value::String(s) if crate::templates::is_template(s) => None,
            v => Some(v.clone()),
        };
        keys.entry(key.clone())
            .or_default()
            .push(Source::Initial(literal));
    }
    for key in RUNTIME_KEYS {
        keys.entry(key.to_string())
            .or_default()
            .push(Source::Opaque);
    }
    if data
        .states
        .values()
        .any(|s| s.tool_loop.as_ref().and_then(|t| t.config()).is_some())
    {
        for key in TOOL_LOOP_KEYS {
            keys.entry(key.to_string())
                .or_default()
                .push(Source::Opaque);
        }
    }
    for def in data.states.values() {
        for (key, value) in def.output_to_context.iter().flatten() {
            let field = enum_field(unit, def, value);
            keys.entry(key.clone())
                .or_default()
                .push(Source::Output(field));
        }
    }
    let declared = declared_writes(project, unit, cfg, out);
    let mut undeclared = Vec::new();
    let actions: indexmap::IndexSet<&str> = data
        .states
        .values()
        .filter_map(|s| s.action.as_deref())
        .collect();
    for action in actions {
        match declared.get(action) {
            Some(written) => {
                for key in written {
                    keys.entry(key.clone()).or_default().push(Source::Opaque);
                }
            }
            None => undeclared.push(format!("action `{action}`")),
        }
    }
    if let Some(hooks) = &data.hooks {
        match declared.get(hooks.class.as_str()) {
            Some(written) => {
                for key in written {
                    keys.entry(key.clone()).or_default().push(Source::Opaque);
                }
            }
            None => undeclared.push(format!("hooks `{}`", hooks.class)),
        }
    }
    Writers { keys, undeclared }
}

/// The enum field an `output_to_context` value copies unchanged (`"{{ output.category }}"`),
/// from a flatagent called with the default or retry execution whose schema gives the field
/// an `enum`.
fn enum_field(
    unit: &MachineUnit,
    def: &crate::model::StateDefinition,
    value: &Value,
) -> Option<EnumField> {
    if def.machine.is_some() || def.foreach.is_some() {
        return None;
    }
    let plain_call = def
        .execution
        .as_ref()
        .is_none_or(|e| matches!(e.kind, ExecutionType::Default | ExecutionType::Retry));
    if !plain_call {
        return None;
    }
    let agent = def.agent.as_ref()?;
    let AgentUnit::FlatAgent {
        config: Some(agent_cfg),
        ..
    } = unit.agents.get(agent)?
    else {
        return None;
    };
    let field = crate::reads::single_field(value.as_str()?, "output")?;
    let values = agent_cfg
        .data
        .output
        .as_ref()?
        .get(&field)?
        .enum_values
        .clone()?;
    Some(EnumField {
        agent: agent.clone(),
        field,
        values,
    })
}

/// `metadata.writes`: action or hooks class → the keys it writes. Entries that are not a list
/// of names, or name no action or hooks class of the machine, are warnings.
fn declared_writes(
    project: &Project,
    unit: &MachineUnit,
    cfg: &MachineWrapper,
    out: &mut Vec<Diagnostic>,
) -> IndexMap<String, Vec<String>> {
    let mut declared = IndexMap::new();
    let Some(writes) = cfg.metadata.as_ref().and_then(|m| m.get("writes")) else {
        return declared;
    };
    let rel = [k("metadata"), k("writes")];
    let Some(map) = writes.as_object() else {
        out.push(
            Diagnostic::warning(
                "`metadata.writes` is ignored: expected a map from action (or hooks class) names to lists of context keys",
                Some(project.span(&unit.origin, &rel)),
            ),
        );
        return declared;
    };
    let mut writers: Vec<&str> = cfg
        .data
        .states
        .values()
        .filter_map(|s| s.action.as_deref())
        .collect();
    writers.extend(cfg.data.hooks.as_ref().map(|h| h.class.as_str()));
    for (name, keys) in map {
        let at = [k("metadata"), k("writes"), k(name)];
        let names: Option<Vec<String>> = keys
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect());
        let Some(names) = names else {
            out.push(Diagnostic::warning(
                format!("`metadata.writes.{name}` is ignored: expected a list of context keys"),
                Some(project.span(&unit.origin, &at)),
            ));
            continue;
        };
        if !writers.contains(&name.as_str()) {
            let d = Diagnostic::warning(
                format!("`metadata.writes` names `{name}`, which is neither an action of this machine nor its hooks class"),
                Some(project.key_span(&unit.origin, &at)),
            )
            .with_help_opt(did_you_mean(name, writers.iter().copied()));
            out.push(d);
        }
        declared.insert(name.clone(), names);
    }
    declared
}

/// Every read of a context key in the states' templates and conditions.
fn reads(project: &Project, origin: &Origin, states: &[StateIr]) -> Vec<Read> {
    let mut out = Vec::new();
    for st in states {
        let def = &st.def;
        let base = vec![k("data"), k("states"), k(&st.name)];
        let at = |extra: &[PathSeg]| {
            let mut p = base.clone();
            p.extend_from_slice(extra);
            p
        };
        // In a state's templates `input` is the context too; a final `output` sees `context`.
        let both: &[&str] = &["context", "input"];
        let mut templates: Vec<(Vec<PathSeg>, &Value, &[&str])> = Vec::new();
        let maps = [
            ("input", def.input.as_ref()),
            ("output_to_context", def.output_to_context.as_ref()),
            ("launch_input", def.launch_input.as_ref()),
        ];
        let owned: Vec<(Vec<PathSeg>, Value)> = maps
            .iter()
            .filter_map(|(field, m)| m.map(|m| (at(&[k(field)]), Value::Object(m.clone()))))
            .chain(
                [("foreach", &def.foreach), ("key", &def.key)]
                    .into_iter()
                    .filter_map(|(field, v)| {
                        v.as_ref()
                            .map(|v| (at(&[k(field)]), Value::String(v.clone())))
                    }),
            )
            .collect();
        for (path, value) in &owned {
            templates.push((path.clone(), value, both));
        }
        let final_output = def.output.as_ref().map(|m| Value::Object(m.clone()));
        if let Some(v) = &final_output {
            templates.push((at(&[k("output")]), v, &["context"]));
        }
        let list_inputs: Vec<(Vec<PathSeg>, Value)> = match &def.machine {
            Some(crate::model::MachineField::Many(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(j, item)| match item {
                    crate::model::MachineListItem::WithInput(mi) => mi.input.as_ref().map(|i| {
                        (
                            at(&[k("machine"), PathSeg::Index(j), k("input")]),
                            Value::Object(i.clone()),
                        )
                    }),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        for (path, value) in &list_inputs {
            templates.push((path.clone(), value, both));
        }
        for (path, value, vars) in templates {
            let mut strings = Vec::new();
            collect_strings(&path, value, &mut strings);
            for (spath, src) in strings {
                for var in vars {
                    for r in crate::reads::field_reads(&src, var) {
                        out.push(Read {
                            key: r.field,
                            span: template_span(project, origin, &spath, r.offset, r.len),
                            guarded: r.guarded,
                        });
                    }
                }
            }
        }
        for t in &st.transitions {
            let Some((_, Some(cond))) = &t.condition else {
                continue;
            };
            let crel = at(&[k("transitions"), PathSeg::Index(t.position), k("condition")]);
            match cond {
                Condition::Simple(expr) => {
                    for p in expr.context_path_refs() {
                        let key = p.segments[0].clone();
                        let guarded = expr.compares_with_null(&key);
                        out.push(Read {
                            span: template_span(project, origin, &crel, p.span.offset, p.span.len),
                            key,
                            guarded,
                        });
                    }
                }
                Condition::Cel(cel) => {
                    for r in &cel.reads {
                        let key = r.segments[0].clone();
                        out.push(Read {
                            span: template_span(project, origin, &crel, r.span.offset, r.span.len),
                            guarded: cel.tested.contains(&key),
                            key,
                        });
                    }
                }
            }
        }
    }
    out
}

fn unknown_reads(
    cfg: &MachineWrapper,
    writers: &Writers,
    reads: &[Read],
    out: &mut Vec<Diagnostic>,
) {
    let set: Vec<&str> = writers
        .keys
        .keys()
        .map(String::as_str)
        .filter(|k| !RUNTIME_KEYS.contains(k))
        .collect();
    let machine = cfg.data.name.as_deref().unwrap_or("this machine");
    let mut reported: Vec<&str> = Vec::new();
    for read in reads {
        if read.guarded
            || writers.keys.contains_key(&read.key)
            || reported.contains(&read.key.as_str())
            || reads.iter().any(|r| r.key == read.key && r.guarded)
        {
            continue;
        }
        // With undeclared writers, only a near miss of a key that is set is worth a warning.
        let close = if writers.undeclared.is_empty() {
            closest(&read.key, set.iter().copied())
        } else {
            near_miss(&read.key, set.iter().copied())
        };
        if !writers.undeclared.is_empty() && close.is_none() {
            continue;
        }
        reported.push(&read.key);
        let mut d = Diagnostic::warning(
            format!(
                "`context.{}` is read here, but nothing in machine `{machine}` sets it",
                read.key
            ),
            Some(read.span),
        )
        .with_note(set_note(&set));
        if let Some(c) = close {
            d = d.with_help(format!("did you mean `{c}`?"));
        }
        if writers.undeclared.is_empty() {
            d = d.with_help(format!(
                "set it with a `context:` entry or an `output_to_context` entry, or guard the read (`context.{} | default(..)`, `is defined`)",
                read.key
            ));
        } else {
            d = d.with_note(format!(
                "{} may set keys the compiler cannot see; list what they write under `metadata.writes` (e.g. `{}: [{}]`) and the key counts as set",
                join_names(&writers.undeclared),
                writers.undeclared[0]
                    .split('`')
                    .nth(1)
                    .unwrap_or_default(),
                read.key
            ));
        }
        out.push(d);
    }
}

fn impossible_comparisons(
    project: &Project,
    origin: &Origin,
    states: &[StateIr],
    writers: &Writers,
    out: &mut Vec<Diagnostic>,
) {
    for st in states {
        for t in &st.transitions {
            let Some((_, Some(cond))) = &t.condition else {
                continue;
            };
            let comparisons = match cond {
                Condition::Simple(expr) => expr.string_comparisons(),
                Condition::Cel(cel) => cel.comparisons.clone(),
            };
            for c in comparisons {
                let Some(sources) = writers.keys.get(&c.field) else {
                    continue;
                };
                let Some((allowed, from)) = known_values(sources) else {
                    continue;
                };
                if allowed.contains(&Value::String(c.value.clone())) {
                    continue;
                }
                let rel = [
                    k("data"),
                    k("states"),
                    k(&st.name),
                    k("transitions"),
                    PathSeg::Index(t.position),
                    k("condition"),
                ];
                let span = template_span(project, origin, &rel, c.span.offset, c.span.len);
                let strings: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
                let message = format!(
                    "`context.{}` is never `{}`: {from}",
                    c.field,
                    Value::String(c.value.clone())
                );
                let mut d = if writers.undeclared.is_empty() {
                    Diagnostic::error(message, Some(span))
                } else {
                    Diagnostic::warning(message, Some(span)).with_note(format!(
                        "unless {} writes it: they may set keys the compiler cannot see",
                        join_names(&writers.undeclared)
                    ))
                };
                d = d
                    .with_note(format!(
                        "its values: {}",
                        allowed
                            .iter()
                            .map(|v| format!("`{v}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .with_help_opt(did_you_mean(&c.value, strings.iter().copied()));
                out.push(d);
            }
        }
    }
}

/// Every value a key can have, when all its writers are known: the enum of the agent output
/// fields copied into it and the literals of `data.context`; with a description of where the
/// values come from.
fn known_values(sources: &[Source]) -> Option<(Vec<Value>, String)> {
    let mut values: Vec<Value> = Vec::new();
    let mut from: Vec<String> = Vec::new();
    for s in sources {
        match s {
            Source::Initial(Some(v)) => {
                if !values.contains(v) {
                    values.push(v.clone());
                }
            }
            Source::Output(Some(f)) => {
                for v in &f.values {
                    let v = Value::String(v.clone());
                    if !values.contains(&v) {
                        values.push(v);
                    }
                }
                let what = format!(
                    "the `{}` field of agent `{}`'s output has an `enum` without it",
                    f.field, f.agent
                );
                if !from.contains(&what) {
                    from.push(what);
                }
            }
            Source::Initial(None) | Source::Output(None) | Source::Opaque => return None,
        }
    }
    if from.is_empty() {
        // Only literals: a constant, not worth a check of its own.
        return None;
    }
    Some((values, from.join("; ")))
}

/// The candidate a typo of `name` would be: one edit (insertion, deletion, substitution or
/// transposition) per four characters. Names shorter than four characters have none: `x` and
/// `y` are different keys, not a typo.
fn near_miss<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let allowed = name.chars().count() / 4;
    if allowed == 0 {
        return None;
    }
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn set_note(set: &[&str]) -> String {
    if set.is_empty() {
        return "no context key is set in this machine".to_string();
    }
    let shown: Vec<String> = set
        .iter()
        .take(NOTE_KEYS)
        .map(|k| format!("`{k}`"))
        .collect();
    let more = set.len().saturating_sub(NOTE_KEYS);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("keys set in this machine: {}{tail}", shown.join(", "))
}

fn join_names(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The span of `len` bytes at `offset` in the string at `rel` (the node itself when it is not
/// a string, the nearest node when the path is gone).
fn template_span(
    project: &Project,
    origin: &Origin,
    rel: &[PathSeg],
    offset: usize,
    len: usize,
) -> Span {
    let file = project.db.file(origin.file);
    match project.node(origin, rel) {
        Some(n) if matches!(n.kind, NodeKind::Str(_)) => n.span_in_value(file, offset, len),
        Some(n) => n.span,
        None => project.span(origin, rel),
    }
}

/// Every string in a value tree, with its path.
fn collect_strings(rel: &[PathSeg], v: &Value, out: &mut Vec<(Vec<PathSeg>, String)>) {
    match v {
        Value::String(s) => out.push((rel.to_vec(), s.clone())),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let mut p = rel.to_vec();
                p.push(PathSeg::Index(i));
                collect_strings(&p, item, out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let mut p = rel.to_vec();
                p.push(PathSeg::Key(key.clone()));
                collect_strings(&p, item, out);
            }
        }
        _ => {}
    }
}

/// Reads of `input.<field>` in a flatagent's prompts that a state calling the agent does not
/// pass, located at the read in the agent file and naming the states: an error when the field
/// is a near miss of a passed one (a typo), else a warning.
pub fn agent_inputs(project: &Project, unit: &MachineUnit) -> Vec<Diagnostic> {
    let Some(cfg) = unit.config.as_ref() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, agent) in &unit.agents {
        let AgentUnit::FlatAgent {
            origin,
            config: Some(agent_cfg),
            ..
        } = agent
        else {
            continue;
        };
        let callers: Vec<(&String, Vec<&str>)> = cfg
            .data
            .states
            .iter()
            .filter(|(_, s)| s.agent.as_deref() == Some(key.as_str()))
            .map(|(name, s)| {
                let passed = s
                    .input
                    .iter()
                    .flat_map(|m| m.keys().map(String::as_str))
                    .collect();
                (name, passed)
            })
            .collect();
        if callers.is_empty() {
            continue;
        }
        let d = &agent_cfg.data;
        let prompts = [
            ("system", d.system.as_ref()),
            ("user", Some(&d.user)),
            ("instruction_suffix", d.instruction_suffix.as_ref()),
        ];
        let mut reported: Vec<String> = Vec::new();
        for (field, src) in prompts {
            let Some(src) = src else { continue };
            let reads = crate::reads::field_reads(src, "input");
            for read in &reads {
                if read.guarded || reported.contains(&read.field) {
                    continue;
                }
                let lacking: Vec<&(&String, Vec<&str>)> = callers
                    .iter()
                    .filter(|(_, passed)| !passed.contains(&read.field.as_str()))
                    .collect();
                if lacking.is_empty() {
                    continue;
                }
                reported.push(read.field.clone());
                let rel = [k("data"), k(field)];
                let span = template_span(project, origin, &rel, read.offset, read.len);
                let message = format!(
                    "agent prompt reads `input.{}`, which state `{}` does not pass",
                    read.field, lacking[0].0
                );
                // A field that is a near miss of one the state passes is a typo: an error. One
                // the state does not pass at all renders empty (as in the reference), which real
                // machines do by oversight and still run: a warning.
                let typo = lacking
                    .iter()
                    .find_map(|(_, passed)| did_you_mean(&read.field, passed.iter().copied()));
                let mut diag = if typo.is_some() {
                    Diagnostic::error(message, Some(span))
                } else {
                    Diagnostic::warning(message, Some(span))
                };
                for (state, passed) in &lacking {
                    let what = if passed.is_empty() {
                        format!(
                            "state `{state}` calls agent `{key}` with no `input:`, so the agent's input is empty"
                        )
                    } else {
                        format!(
                            "state `{state}` calls agent `{key}` with `input:` {}",
                            passed
                                .iter()
                                .map(|p| format!("`{p}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    diag = diag.with_note(what);
                }
                diag = match typo {
                    Some(close) => diag.with_help(close),
                    None => diag.with_help(format!(
                    "pass it in the state's `input:` (`{}: \"{{{{ context.{} }}}}\"`), or guard the read (`input.{} | default(..)`)",
                        read.field, read.field, read.field
                    )),
                };
                out.push(diag);
            }
        }
    }
    out
}
