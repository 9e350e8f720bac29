//! Checks over the whole state graph: reachability, final states, reads of agent outputs.

use super::*;

impl Cx<'_> {
    /// In a state that calls a flatagent, `output.<field>` in `output_to_context` must be a
    /// field the agent's output will have.
    pub(super) fn check_output_reads(
        &mut self,
        def: &StateDefinition,
        rel: &[PathSeg],
        map: &serde_json::Map<String, serde_json::Value>,
    ) {
        if def.machine.is_some() || def.foreach.is_some() {
            return;
        }
        let Some(agent) = &def.agent else { return };
        let Some(AgentUnit::FlatAgent {
            origin,
            config: Some(cfg),
            ..
        }) = self.unit.agents.get(agent)
        else {
            return;
        };
        let shown = self.project.db.file(origin.file).display.clone();
        let parallel = def
            .execution
            .as_ref()
            .is_some_and(|e| e.kind == ExecutionType::Parallel);
        let schema = cfg.data.output.as_ref().filter(|o| !o.is_empty());
        // `mdap_voting` parses the reply with the agent's `metadata.parsing` patterns.
        let parsing = def
            .execution
            .as_ref()
            .filter(|e| e.kind == ExecutionType::MdapVoting)
            .and_then(|_| cfg.metadata.as_ref()?.get("parsing")?.as_object())
            .filter(|p| !p.is_empty());
        let tool_loop = def.tool_loop.as_ref().and_then(|t| t.config()).is_some();
        let (fields, also, note): (Vec<&str>, &[&str], String) = if tool_loop {
            let mut names: Vec<&str> = schema
                .map(|s| s.keys().map(String::as_str).collect())
                .unwrap_or_default();
            names.extend(TOOL_LOOP_OUTPUT);
            let note = format!(
                "in a `tool_loop` state the output is {}{}",
                TOOL_LOOP_OUTPUT.join(", "),
                if schema.is_some() {
                    format!(", and the fields of agent `{agent}`'s `output` schema")
                } else {
                    String::new()
                }
            );
            (names, &[], note)
        } else if parallel {
            (
                vec!["results", "count"],
                &[],
                "with `execution: {type: parallel}` the output is `{results, count}`".to_string(),
            )
        } else if let Some(parsing) = parsing {
            let names: Vec<&str> = parsing.keys().map(String::as_str).collect();
            let note = format!(
                "with `execution: {{type: mdap_voting}}` the output has the fields of `metadata.parsing` of agent `{agent}` (`{shown}`): {}",
                names.join(", ")
            );
            (names, &[], note)
        } else if let Some(schema) = schema {
            let names: Vec<&str> = schema.keys().map(String::as_str).collect();
            let note = format!("agent `{agent}` (`{shown}`) outputs: {}", names.join(", "));
            // `_raw` holds the reply when it is not valid JSON.
            (names, &["_raw"], note)
        } else {
            (
                vec!["content"],
                &[],
                format!(
                    "agent `{agent}` (`{shown}`) has no `output` schema, so its output is `{{content}}`, the reply text"
                ),
            )
        };
        let free_text = schema.is_none() && !parallel && parsing.is_none() && !tool_loop;
        let mut found = Vec::new();
        collect_strings(rel, &serde_json::Value::Object(map.clone()), &mut found);
        let origin = self.origin().clone();
        for (path, src) in found {
            for read in crate::agents::output_reads(&src) {
                if fields.contains(&read.field.as_str()) || also.contains(&read.field.as_str()) {
                    continue;
                }
                let span = self.template_span(&origin, &path, read.offset, read.len);
                let msg = format!(
                    "the output of agent `{agent}` has no field `{}`",
                    read.field
                );
                // Without a schema the shape is only a convention between the prompt and the
                // machine (real machines rely on it), so that is a warning.
                let mut d = if free_text {
                    Diagnostic::warning(msg, Some(span))
                } else {
                    Diagnostic::error(msg, Some(span))
                }
                .with_help_opt(did_you_mean(&read.field, fields.iter().copied()))
                .with_note(note.clone());
                if free_text {
                    d = d.with_help(format!(
                        "the field is always undefined: give the agent an `output:` schema with `{}`, or read `output.content`",
                        read.field
                    ));
                }
                self.diags.push(d);
            }
        }
    }

    pub(super) fn graph_checks(&mut self, states: &[StateIr], initial: usize) {
        // Reachability from the initial state (transitions and error routes).
        let n = states.len();
        let mut seen = vec![false; n];
        let mut queue = VecDeque::from([initial]);
        seen[initial] = true;
        while let Some(s) = queue.pop_front() {
            let st = &states[s];
            for t in st
                .transitions
                .iter()
                .map(|t| t.to)
                .chain(st.on_error.iter().map(|(_, t)| *t))
            {
                if !seen[t] {
                    seen[t] = true;
                    queue.push_back(t);
                }
            }
        }
        for (i, st) in states.iter().enumerate() {
            if !seen[i] {
                let rel = [k("data"), k("states"), k(&st.name)];
                self.warn_key(
                    format!("state `{}` is unreachable from the initial state", st.name),
                    &rel,
                );
            }
        }
        if !states
            .iter()
            .enumerate()
            .any(|(i, s)| seen[i] && s.is_final)
        {
            let name = &states[initial].name;
            self.warn_key(
                format!("no final state is reachable from the initial state `{name}`"),
                &[k("data"), k("states"), k(name)],
            )
            .help
            .push("mark the state where runs end `type: final`".into());
        }
    }
}
