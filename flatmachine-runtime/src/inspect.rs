//! Reading an execution's history back from its checkpoints: what `flatmachine inspect` prints.
//!
//! [`ExecutionHistory::load`] reads every checkpoint of one execution from a
//! [`CheckpointStore`] (any backend: the reference's file layout, memory, SQLite, ...) in run
//! order and describes each one: step, event, state, the context keys that changed since the
//! checkpoint before, the error the state recorded (`last_error` / `last_error_type`), pending
//! launches, totals and output. A checkpoint that cannot be read is listed with the reason
//! instead of ending the inspection, so a damaged execution can still be looked at.
//!
//! ```no_run
//! # async fn demo() -> Result<(), flatmachine_runtime::persistence::PersistenceError> {
//! use flatmachine_runtime::inspect::ExecutionHistory;
//! use flatmachine_runtime::persistence::CheckpointStore;
//!
//! let store = CheckpointStore::local(".checkpoints");
//! let history = ExecutionHistory::load(&store, "3f2a9c").await?;
//! print!("{}", history.render_table());
//! println!("{}", serde_json::to_string_pretty(&history).unwrap());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::persistence::{
    CheckpointStore, ForkOrigin, LaunchIntent, MachineSnapshot, PersistenceError, checkpoint_event,
    parse_snapshot_key,
};
use crate::{Context, Value};

/// Everything the checkpoints of one execution tell about it.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutionHistory {
    /// The execution id.
    pub execution_id: String,
    /// The machine's name, from the newest readable checkpoint (empty if none is readable).
    pub machine_name: String,
    /// The execution that launched or invoked this one, if recorded.
    pub parent_execution_id: Option<String>,
    /// The machine's fingerprint (`config_hash`) in the newest readable checkpoint.
    pub config_hash: Option<String>,
    /// The execution and step this one was forked from, if it is a fork.
    pub forked_from: Option<ForkOrigin>,
    /// The key the `latest` pointer names (`None` without a pointer).
    pub latest: Option<String>,
    /// Every checkpoint, in run order (step, then event order within a step).
    pub checkpoints: Vec<CheckpointRecord>,
    /// Set when the execution is a distributed worker run whose claim was taken back: it
    /// cannot be resumed (see [`crate::distributed::superseded`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superseded: Option<crate::distributed::SupersededMark>,
}

/// One checkpoint as `inspect` describes it.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointRecord {
    /// The checkpoint's key (`{execution_id}/step_000003_execute.json`).
    pub key: String,
    /// Step number.
    pub step: u64,
    /// Checkpoint event (`machine_start`, `state_enter`, `execute`, `state_exit`, `machine_end`).
    pub event: String,
    /// The state the run was in; `None` when the checkpoint could not be read.
    pub state: Option<String>,
    /// When it was written, as stored.
    pub created_at: Option<String>,
    /// Context keys added, changed or removed since the previous readable checkpoint.
    pub changes: ContextChanges,
    /// The error recorded in the context, when this checkpoint is the first to show it.
    pub error: Option<RecordedError>,
    /// Launch intents in the outbox at this point.
    pub pending_launches: Vec<LaunchIntent>,
    /// Cumulative agent calls, as stored.
    pub total_api_calls: Option<u64>,
    /// Cumulative cost, as stored.
    pub total_cost: Option<f64>,
    /// The output, on the final checkpoints.
    pub output: Option<Context>,
    /// The channel the run waits on, on a `waiting` checkpoint.
    pub waiting_channel: Option<String>,
    /// When that wait gives up, if it has a `timeout`.
    pub wait_deadline: Option<String>,
    /// Why the checkpoint could not be read, when it could not.
    pub unreadable: Option<String>,
}

/// Top-level context keys that differ between two checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ContextChanges {
    /// Keys that appeared, with their new values.
    pub added: BTreeMap<String, Value>,
    /// Keys whose value changed: `[before, after]`.
    pub changed: BTreeMap<String, [Value; 2]>,
    /// Keys that disappeared.
    pub removed: Vec<String>,
}

impl ContextChanges {
    /// The changes from `before` to `after` (top-level keys).
    pub fn between(before: &Context, after: &Context) -> Self {
        let mut changes = Self::default();
        for (key, value) in after {
            match before.get(key) {
                None => {
                    changes.added.insert(key.clone(), value.clone());
                }
                Some(old) if old != value => {
                    changes
                        .changed
                        .insert(key.clone(), [old.clone(), value.clone()]);
                }
                Some(_) => {}
            }
        }
        changes.removed = before
            .keys()
            .filter(|key| !after.contains_key(*key))
            .cloned()
            .collect();
        changes
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// An error a failed state left in the context (`last_error_type: last_error`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedError {
    /// `context.last_error_type` (empty if absent).
    pub error_type: String,
    /// `context.last_error`.
    pub message: String,
}

impl ExecutionHistory {
    /// Reads every checkpoint of `execution_id` from `store`. Fails only when the store itself
    /// cannot be listed or the id is invalid; unreadable checkpoints are recorded as such.
    pub async fn load(
        store: &CheckpointStore,
        execution_id: &str,
    ) -> Result<Self, PersistenceError> {
        let latest = match store.latest_checkpoint_key(execution_id).await {
            Ok(latest) => latest,
            // A damaged pointer does not hide the checkpoints themselves.
            Err(PersistenceError::Corrupt { .. }) => None,
            Err(other) => return Err(other),
        };
        let mut keys: Vec<(u64, u8, String)> = store
            .checkpoint_keys(execution_id)
            .await?
            .into_iter()
            .filter_map(|key| {
                let (_, step, event) = parse_snapshot_key(&key)?;
                Some((step, checkpoint_event::rank(event), key))
            })
            .collect();
        keys.sort_unstable();

        let mut history = Self {
            execution_id: execution_id.to_owned(),
            machine_name: String::new(),
            parent_execution_id: None,
            config_hash: None,
            forked_from: None,
            latest,
            checkpoints: Vec::with_capacity(keys.len()),
            superseded: crate::distributed::superseded::superseded(store, execution_id)
                .await
                .ok()
                .flatten(),
        };
        let mut previous: Option<MachineSnapshot> = None;
        for (step, _, key) in keys {
            let event = parse_snapshot_key(&key)
                .map(|(_, _, event)| event.to_owned())
                .unwrap_or_default();
            let loaded = match store.backend().load(&key).await {
                Ok(Some(snapshot)) => Ok(snapshot),
                Ok(None) => Err("deleted while inspecting".to_owned()),
                Err(error) => Err(error.to_string()),
            };
            let snapshot = match loaded {
                Ok(snapshot) => snapshot,
                Err(reason) => {
                    history
                        .checkpoints
                        .push(CheckpointRecord::unreadable(key, step, event, reason));
                    continue;
                }
            };
            history.checkpoints.push(CheckpointRecord::of(
                key,
                step,
                event,
                &snapshot,
                previous.as_ref(),
            ));
            history.machine_name.clone_from(&snapshot.machine_name);
            history.config_hash.clone_from(&snapshot.config_hash);
            if snapshot.forked_from.is_some() {
                history.forked_from.clone_from(&snapshot.forked_from);
            }
            if snapshot.parent_execution_id.is_some() {
                history
                    .parent_execution_id
                    .clone_from(&snapshot.parent_execution_id);
            }
            previous = Some(snapshot);
        }
        Ok(history)
    }

    /// The history as an aligned text table, one row per checkpoint, with launches, output
    /// and unreadable checkpoints on indented lines below their row.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "execution {}  machine {}  parent {}  checkpoints {}  latest {}",
            escape_controls(&self.execution_id),
            escape_controls(or_dash(&self.machine_name)),
            escape_controls(self.parent_execution_id.as_deref().unwrap_or("-")),
            self.checkpoints.len(),
            escape_controls(self.latest.as_deref().unwrap_or("-")),
        );
        if let Some(hash) = &self.config_hash {
            let _ = writeln!(out, "shape {hash}");
        }
        if let Some(origin) = &self.forked_from {
            let _ = writeln!(
                out,
                "forked from execution {} at step {}",
                origin.execution_id, origin.step
            );
        }
        let rows: Vec<[String; 5]> = self
            .checkpoints
            .iter()
            .map(|c| {
                [
                    c.step.to_string(),
                    c.event.clone(),
                    c.state.clone().unwrap_or_else(|| "?".to_owned()),
                    describe_changes(&c.changes),
                    c.error
                        .as_ref()
                        .map(|e| format!("{}: {}", or_dash(&e.error_type), e.message))
                        .unwrap_or_default(),
                ]
                .map(|cell| escape_controls(&cell))
            })
            .collect();
        if let Some(mark) = &self.superseded {
            let _ = writeln!(out, "superseded: {}", mark.describe());
        }
        let header = ["STEP", "EVENT", "STATE", "CONTEXT CHANGES", "ERROR"];
        let mut widths = header.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        push_row(&mut out, &header.map(str::to_owned), &widths);
        let mut launches_before: &[LaunchIntent] = &[];
        for (row, record) in rows.iter().zip(&self.checkpoints) {
            push_row(&mut out, row, &widths);
            if let Some(reason) = &record.unreadable {
                let _ = writeln!(out, "      unreadable: {}", escape_controls(reason));
            }
            if let Some(channel) = &record.waiting_channel {
                let _ = match &record.wait_deadline {
                    Some(deadline) => writeln!(out, "      waiting on {channel} until {deadline}"),
                    None => writeln!(out, "      waiting on {channel}"),
                };
            }
            // The outbox is carried by every later checkpoint: show it where it changes.
            let launches = record.pending_launches.as_slice();
            if launches == launches_before {
                push_output(&mut out, record);
                continue;
            }
            launches_before = launches;
            for intent in launches {
                let _ = writeln!(
                    out,
                    "      launch {} ({}) {} input {}",
                    escape_controls(&intent.machine),
                    escape_controls(&intent.execution_id),
                    if intent.launched {
                        "started"
                    } else {
                        "not started"
                    },
                    escape_controls(&Value::Object(intent.input.clone()).to_string()),
                );
            }
            push_output(&mut out, record);
        }
        out
    }
}

fn push_output(out: &mut String, record: &CheckpointRecord) {
    if let Some(output) = &record.output {
        let _ = writeln!(
            out,
            "      output {}",
            escape_controls(&Value::Object(output.clone()).to_string())
        );
    }
}

impl CheckpointRecord {
    /// The record of checkpoint `key` holding `snapshot`: its context compared with the
    /// readable checkpoint `previous` (none for the first), its error when `previous` did not
    /// show the same one.
    pub(crate) fn of(
        key: String,
        step: u64,
        event: String,
        snapshot: &MachineSnapshot,
        previous: Option<&MachineSnapshot>,
    ) -> Self {
        let empty = Context::new();
        let before = previous.map_or(&empty, |p| &p.context);
        let error = recorded_error(&snapshot.context)
            .filter(|now| previous.and_then(|p| recorded_error(&p.context)).as_ref() != Some(now));
        Self {
            key,
            step,
            event,
            state: Some(snapshot.current_state.clone()),
            created_at: Some(snapshot.created_at.clone()),
            changes: ContextChanges::between(before, &snapshot.context),
            error,
            pending_launches: snapshot.pending_launches.clone().unwrap_or_default(),
            total_api_calls: snapshot.total_api_calls,
            total_cost: snapshot.total_cost,
            output: snapshot.output.clone(),
            waiting_channel: snapshot.waiting_channel.clone(),
            wait_deadline: snapshot.wait_deadline.clone(),
            unreadable: None,
        }
    }

    /// The record of checkpoint `key`, which cannot be read (`reason`).
    pub(crate) fn unreadable(key: String, step: u64, event: String, reason: String) -> Self {
        Self {
            key,
            step,
            event,
            state: None,
            created_at: None,
            changes: ContextChanges::default(),
            error: None,
            pending_launches: Vec::new(),
            total_api_calls: None,
            total_cost: None,
            output: None,
            waiting_channel: None,
            wait_deadline: None,
            unreadable: Some(reason),
        }
    }
}

/// The newest checkpoint of one execution, as [`list_executions`] reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutionSummary {
    /// The execution id.
    pub execution_id: String,
    /// The machine's name (`None` when the newest checkpoint cannot be read).
    pub machine_name: Option<String>,
    /// The state of the newest checkpoint.
    pub current_state: Option<String>,
    /// Its step.
    pub step: Option<u64>,
    /// Its event.
    pub event: Option<String>,
}

/// The executions in `store` that have a `latest` pointer, with where each one stands.
pub async fn list_executions(
    store: &CheckpointStore,
) -> Result<Vec<ExecutionSummary>, PersistenceError> {
    let mut out = Vec::new();
    for id in store.execution_ids().await? {
        let latest = store.load_latest(&id).await.ok().flatten();
        out.push(ExecutionSummary {
            machine_name: latest.as_ref().map(|s| s.machine_name.clone()),
            current_state: latest.as_ref().map(|s| s.current_state.clone()),
            step: latest.as_ref().map(|s| s.step),
            event: latest.and_then(|s| s.event),
            execution_id: id,
        });
    }
    Ok(out)
}

/// Why [`report`] printed nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// The store could not be read.
    #[error(transparent)]
    Persistence(#[from] PersistenceError),
    /// The execution has no checkpoint in the store.
    #[error("execution `{0}` has no checkpoints")]
    NotFound(String),
    /// The report could not be written as JSON.
    #[error("cannot write the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// What the `inspect` commands print: the history of `execution_id` (or, with `None`, one
/// line per execution), as a table or as pretty JSON; ends with a newline.
pub async fn report(
    store: &CheckpointStore,
    execution_id: Option<&str>,
    json: bool,
) -> Result<String, InspectError> {
    let mut text = match execution_id {
        Some(id) => {
            let history = ExecutionHistory::load(store, id).await?;
            if history.checkpoints.is_empty()
                && history.latest.is_none()
                && history.superseded.is_none()
            {
                return Err(InspectError::NotFound(id.to_owned()));
            }
            if !json {
                return Ok(history.render_table());
            }
            serde_json::to_string_pretty(&history)?
        }
        None => {
            let list = list_executions(store).await?;
            if json {
                serde_json::to_string_pretty(&list)?
            } else {
                let mut out = String::new();
                for e in &list {
                    let _ = writeln!(
                        out,
                        "{}  {}  step {}  {}  {}",
                        escape_controls(&e.execution_id),
                        escape_controls(e.machine_name.as_deref().unwrap_or("?")),
                        e.step.map_or_else(|| "?".to_owned(), |s| s.to_string()),
                        escape_controls(e.event.as_deref().unwrap_or("?")),
                        escape_controls(
                            e.current_state
                                .as_deref()
                                .unwrap_or("(latest checkpoint unreadable)")
                        ),
                    );
                }
                return Ok(out);
            }
        }
    };
    text.push('\n');
    Ok(text)
}

fn recorded_error(context: &Context) -> Option<RecordedError> {
    let message = context.get("last_error").filter(|v| !v.is_null())?;
    Some(RecordedError {
        error_type: context
            .get("last_error_type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        message: match message {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        },
    })
}

const MAX_VALUE_CHARS: usize = 40;

fn describe_changes(changes: &ContextChanges) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (key, value) in &changes.added {
        parts.push(format!("+{key}={}", short(value)));
    }
    for (key, [_, after]) in &changes.changed {
        parts.push(format!("~{key}={}", short(after)));
    }
    for key in &changes.removed {
        parts.push(format!("-{key}"));
    }
    parts.join(" ")
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= MAX_VALUE_CHARS {
        return text;
    }
    let cut: String = text.chars().take(MAX_VALUE_CHARS - 1).collect();
    format!("{cut}…")
}

/// `text` safe to print on a terminal: control characters (C0, DEL, C1: escape sequences,
/// carriage returns, newlines that would break a row) and the bidirectional-text overrides are
/// written as escapes (`\n`, `\u{1b}`), everything else as it is. What the table shows of
/// checkpoint contents goes through this, since model replies and error texts end up there.
pub fn escape_controls(text: &str) -> String {
    let needs =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(needs) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

fn push_row(out: &mut String, cells: &[String; 5], widths: &[usize; 5]) {
    let mut line = String::new();
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        if i == 0 {
            let _ = write!(line, "{cell:>width$}");
        } else {
            let _ = write!(line, "  {cell:<width$}");
        }
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(value: Value) -> Context {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("test contexts are objects"),
        }
    }

    #[test]
    fn changes_between_contexts() {
        let before = ctx(json!({"a": 1, "b": "x", "gone": true}));
        let after = ctx(json!({"a": 2, "b": "x", "new": [1]}));
        let changes = ContextChanges::between(&before, &after);
        assert_eq!(changes.added, BTreeMap::from([("new".into(), json!([1]))]));
        assert_eq!(
            changes.changed,
            BTreeMap::from([("a".into(), [json!(1), json!(2)])])
        );
        assert_eq!(changes.removed, vec!["gone".to_owned()]);
        assert_eq!(describe_changes(&changes), "+new=[1] ~a=2 -gone");
        assert!(ContextChanges::between(&after, &after).is_empty());
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("plain ünïcode"), "plain ünïcode");
        assert_eq!(
            escape_controls("a\u{1b}[2Jb\r\nc\u{7f}\u{9b}\u{202e}"),
            "a\\u{1b}[2Jb\\r\\nc\\u{7f}\\u{9b}\\u{202e}"
        );
    }

    #[test]
    fn long_values_are_shortened() {
        let long = json!("y".repeat(100));
        let text = short(&long);
        assert_eq!(text.chars().count(), MAX_VALUE_CHARS);
        assert!(text.ends_with('…'));
    }

    #[tokio::test]
    async fn history_of_a_memory_store() {
        let store = CheckpointStore::memory();
        let mut first = MachineSnapshot::new("run-1", "demo", "1.0.0", "start", Context::new(), 0);
        first.event = Some("machine_start".into());
        store.save(first).await.unwrap();
        let mut second = MachineSnapshot::new(
            "run-1",
            "demo",
            "1.0.0",
            "charge",
            ctx(json!({"last_error": "declined", "last_error_type": "ValueError"})),
            1,
        );
        second.event = Some("execute".into());
        second.pending_launches =
            Some(vec![LaunchIntent::new("child-1", "notify", Context::new())]);
        store.save(second).await.unwrap();

        let history = ExecutionHistory::load(&store, "run-1").await.unwrap();
        assert_eq!(history.machine_name, "demo");
        assert_eq!(
            history.latest.as_deref(),
            Some("run-1/step_000001_execute.json")
        );
        assert_eq!(history.checkpoints.len(), 2);
        let failed = &history.checkpoints[1];
        assert_eq!(
            failed.error,
            Some(RecordedError {
                error_type: "ValueError".into(),
                message: "declined".into()
            })
        );
        assert_eq!(failed.pending_launches.len(), 1);
        let table = history.render_table();
        assert!(table.contains("ValueError: declined"), "{table}");
        assert!(
            table.contains("launch notify (child-1) not started"),
            "{table}"
        );
    }
}
