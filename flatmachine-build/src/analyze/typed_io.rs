//! Checks of a machine's declared input and output (`data.input`, `data.output`, see
//! docs/typed.md): every `input.<field>` a template over the machine input reads must be
//! declared, and every final state's `output:` must set exactly the declared keys.

use super::{Cx, collect_strings, k};
use crate::diagnostic::{Diagnostic, did_you_mean};
use crate::model::{MachineData, OutputFieldDef, OutputType, StateType};
use crate::yaml::PathSeg;
use indexmap::IndexMap;

/// One call of a child machine: its name, the input mapping passed (and where it is), and
/// where the call is written.
type ChildCall<'a> = (
    &'a str,
    Option<(&'a crate::model::JsonMap, Vec<PathSeg>)>,
    Vec<PathSeg>,
);

impl Cx<'_> {
    /// Check the machine's templates against `data.input` and its final states' outputs
    /// against `data.output`, when declared.
    pub(super) fn typed_io(&mut self, data: &MachineData) {
        if let Some(fields) = &data.input {
            self.input_reads(data, fields);
        }
        if let Some(fields) = &data.output {
            self.final_outputs(data, fields);
        }
        self.child_inputs(data);
    }

    /// What a state passes to a child machine (`machine:`, `foreach`, `launch:`) against the
    /// child's `data.input`, when it declares one.
    fn child_inputs(&mut self, data: &MachineData) {
        use crate::model::{MachineField, MachineListItem};
        for (name, def) in &data.states {
            let state = [k("data"), k("states"), k(name)];
            let with = |field: &str| [&state[..], &[k(field)]].concat();
            let shared = def.input.as_ref().map(|i| (i, with("input")));
            let mut calls: Vec<ChildCall<'_>> = Vec::new();
            match &def.machine {
                Some(MachineField::One(child)) => {
                    calls.push((child, shared.clone(), with("machine")));
                }
                Some(MachineField::Many(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        let at = [&with("machine")[..], &[PathSeg::Index(i)]].concat();
                        let input = match item {
                            MachineListItem::WithInput(mi) => mi
                                .input
                                .as_ref()
                                .map(|inp| (inp, [&at[..], &[k("input")]].concat())),
                            MachineListItem::Name(_) => None,
                        }
                        .or_else(|| shared.clone());
                        calls.push((item.name(), input, at));
                    }
                }
                None => {}
            }
            for child in def.launch.as_ref().map(|l| l.names()).unwrap_or_default() {
                let input = def.launch_input.as_ref().map(|i| (i, with("launch_input")));
                calls.push((child, input, with("launch")));
            }
            for (child, input, at) in calls {
                self.child_input(name, child, input, &at);
            }
        }
    }

    /// One call of machine `child` from state `state` with `input` (its keys and where they
    /// are), or none (`at`: the `machine:` / `launch:` entry).
    fn child_input(
        &mut self,
        state: &str,
        child: &str,
        input: Option<(&crate::model::JsonMap, Vec<PathSeg>)>,
        at: &[PathSeg],
    ) {
        let Some(cid) = self.unit.machines.get(child).copied().flatten() else {
            return;
        };
        let unit = &self.project.machines[cid];
        let Some(fields) = unit.config.as_ref().and_then(|c| c.data.input.as_ref()) else {
            return;
        };
        let file = self.project.db.file(unit.origin.file).display.clone();
        let declared: Vec<&str> = fields.keys().map(String::as_str).collect();
        let passed: Vec<&str> = input
            .as_ref()
            .map(|(m, _)| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        if let Some((_, rel)) = &input {
            for key in &passed {
                if fields.contains_key(*key) {
                    continue;
                }
                let key_rel = [&rel[..], &[k(key)]].concat();
                let d = self.err_key(
                    format!("state `{state}` passes `{key}` to machine `{child}`, whose declared input (`data.input` in {file}) has no field `{key}`"),
                    &key_rel,
                );
                d.help.extend(did_you_mean(key, declared.iter().copied()));
                d.notes
                    .push(format!("declared fields: `{}`", declared.join("`, `")));
            }
        }
        let missing: Vec<&str> = fields
            .iter()
            .filter(|(f, d)| d.required != Some(false) && !passed.contains(&f.as_str()))
            .map(|(f, _)| f.as_str())
            .collect();
        if missing.is_empty() {
            return;
        }
        let rel = input
            .as_ref()
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| at.to_vec());
        let d = self.err_key(
            format!(
                "state `{state}` does not pass `{}` to machine `{child}`, whose declared input (`data.input` in {file}) requires it",
                missing.join("`, `")
            ),
            &rel,
        );
        d.help.push(
            "add it to the state's `input:` (or mark it `required: false` in the child)".into(),
        );
    }

    /// `input.<field>` in the templates over the machine input: the initial `context` and
    /// `hooks.args` (in a state, `input` is the context).
    fn input_reads(&mut self, data: &MachineData, fields: &IndexMap<String, OutputFieldDef>) {
        let mut strings = Vec::new();
        if let Some(c) = &data.context {
            collect_strings(
                &[k("data"), k("context")],
                &serde_json::Value::Object(c.clone()),
                &mut strings,
            );
        }
        if let Some(args) = data.hooks.as_ref().and_then(|h| h.args.as_ref()) {
            collect_strings(
                &[k("data"), k("hooks"), k("args")],
                &serde_json::Value::Object(args.clone()),
                &mut strings,
            );
        }
        for (rel, src) in strings {
            for path in crate::templates::attribute_reads(&src, "input") {
                self.input_read(&rel, &src, &path, fields);
            }
        }
    }

    /// One read `input.a.b...` (`path` = `[a, b, ...]`): the first segment that the
    /// declaration does not have is an error.
    fn input_read(
        &mut self,
        rel: &[PathSeg],
        src: &str,
        path: &[String],
        fields: &IndexMap<String, OutputFieldDef>,
    ) {
        let mut level = fields;
        let mut dotted = "input".to_string();
        for segment in path {
            let Some(def) = level.get(segment) else {
                let (offset, len) = segment_offset(src, &dotted, segment);
                let span = self.template_span(&self.unit.origin.clone(), rel, offset, len);
                let declared: Vec<&str> = level.keys().map(String::as_str).collect();
                let where_ = if dotted == "input" {
                    "the machine's declared input (`data.input`)".to_string()
                } else {
                    format!("`{dotted}` as declared in `data.input`")
                };
                let mut d = Diagnostic::error(
                    format!(
                        "template reads `{dotted}.{segment}`, but {where_} has no field `{segment}`"
                    ),
                    Some(span),
                );
                d.help
                    .extend(did_you_mean(segment, declared.iter().copied()));
                d.notes.push(if declared.is_empty() {
                    "it declares no fields".to_string()
                } else {
                    format!("declared fields: `{}`", declared.join("`, `"))
                });
                self.diags.push(d);
                return;
            };
            dotted = format!("{dotted}.{segment}");
            match (&def.kind, &def.properties) {
                (OutputType::Object, Some(props)) if !props.is_empty() => level = props,
                // A scalar, list, JSON value or free-form object: what is read inside it is
                // not declared.
                _ => return,
            }
        }
    }

    /// Every final state's `output:` against `data.output`.
    fn final_outputs(&mut self, data: &MachineData, fields: &IndexMap<String, OutputFieldDef>) {
        let declared: Vec<&str> = fields.keys().map(String::as_str).collect();
        for (name, def) in &data.states {
            if def.kind != Some(StateType::Final) {
                continue;
            }
            let state = [k("data"), k("states"), k(name)];
            let set: Vec<&str> = def
                .output
                .iter()
                .flat_map(|o| o.keys())
                .map(String::as_str)
                .collect();
            for key in &set {
                if fields.contains_key(*key) {
                    continue;
                }
                let rel = [&state[..], &[k("output"), k(key)]].concat();
                let d = self.err_key(
                    format!(
                        "final state `{name}` outputs `{key}`, which `data.output` does not declare"
                    ),
                    &rel,
                );
                d.help.extend(did_you_mean(key, declared.iter().copied()));
                d.notes.push(format!(
                    "declared output fields: `{}`",
                    declared.join("`, `")
                ));
            }
            let missing: Vec<&str> = fields
                .iter()
                .filter(|(f, d)| d.required != Some(false) && !set.contains(&f.as_str()))
                .map(|(f, _)| f.as_str())
                .collect();
            if missing.is_empty() {
                continue;
            }
            let rel = if def.output.is_some() {
                [&state[..], &[k("output")]].concat()
            } else {
                state.to_vec()
            };
            let list = missing.join("`, `");
            let d = self.err_key(
                format!(
                    "final state `{name}` does not output `{list}`, which `data.output` requires"
                ),
                &rel,
            );
            d.help.push(format!(
                "set {} in its `output:`, or mark {} `required: false` in `data.output`",
                if missing.len() == 1 { "it" } else { "them" },
                if missing.len() == 1 {
                    "the field"
                } else {
                    "the fields"
                },
            ));
        }
    }
}

/// Where `segment` of the read `<prefix>.<segment>` is in `src` (the whole template when the
/// text cannot be found, e.g. written with spaces or brackets).
fn segment_offset(src: &str, prefix: &str, segment: &str) -> (usize, usize) {
    let needle = format!("{prefix}.{segment}");
    let bytes = src.as_bytes();
    let mut from = 0;
    while let Some(pos) = src[from..].find(&needle) {
        let start = from + pos;
        let end = start + needle.len();
        let before_ok = start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b'.');
        let after_ok =
            end >= bytes.len() || !(bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_');
        if before_ok && after_ok {
            return (end - segment.len(), segment.len());
        }
        from = end;
    }
    (0, src.len())
}
