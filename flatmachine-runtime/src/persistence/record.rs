//! [`CheckpointRecord`]: a checkpoint kept in compact parts, for stores in process memory.
//!
//! A store that keeps checkpoints in this process ([`MemoryBackend`](super::MemoryBackend))
//! does not need a checkpoint's JSON until someone reads it, so the execution loop hands it
//! records instead of whole snapshots
//! ([`PersistenceBackend::keeps_records`](super::PersistenceBackend::keeps_records)). A record
//! holds the context as its JSON, shared with the execution's other records while the context
//! does not change: the loop's [`CheckpointWriter`](super::CheckpointWriter) keeps a copy of
//! the last context and compares the run's context with it (in order, floats by their bits,
//! so equal means "serializes to the same bytes"). A step's usual `state_enter` / `execute` /
//! `state_exit` checkpoints then serialize the context once, when the state changed it,
//! instead of serializing three whole snapshots. The ids, names and numbers sit in a ~100-byte
//! record; reading it writes the JSON the loop would have written at save time, byte for byte.

use std::io::Write as _;
use std::sync::Arc;

use serde_json::{Number, Value};

use super::encoded::{IsoTimestamp, SnapshotParts};
use super::snapshot::write_python_json;
use super::{
    ForkOrigin, LaunchIntent, MachineSnapshot, PersistenceError, checkpoint_event, latest_key,
    snapshot_key,
};
use crate::Context;

/// The events in run order within a step: a record's `event` is its index here (the order
/// of [`checkpoint_event::rank`], with `tool_call` and `waiting` placed after any other event).
pub(crate) const EVENTS_IN_ORDER: [&str; 8] = [
    checkpoint_event::MACHINE_START,
    checkpoint_event::STATE_ENTER,
    checkpoint_event::EXECUTE,
    checkpoint_event::UNKNOWN,
    checkpoint_event::TOOL_CALL,
    checkpoint_event::WAITING,
    checkpoint_event::STATE_EXIT,
    checkpoint_event::MACHINE_END,
];

/// The index of `event` in [`EVENTS_IN_ORDER`] (an unknown event is `unknown`'s).
pub(crate) fn event_order(event: &str) -> u8 {
    EVENTS_IN_ORDER
        .iter()
        .position(|e| *e == event)
        .unwrap_or(3) as u8
}

/// A checkpoint in compact parts (the context as shared JSON), made by the execution loop for
/// a backend that [keeps records](super::PersistenceBackend::keeps_records).
/// [`to_json`](Self::to_json) writes exactly the bytes an
/// [`EncodedCheckpoint`](super::EncodedCheckpoint) of the same
/// checkpoint holds. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CheckpointRecord {
    execution: Arc<ExecutionParts>,
    current_state: &'static str,
    /// The context's JSON.
    context: Arc<[u8]>,
    /// `output` and `pending_launches`, when either is set.
    extra: Option<Arc<RecordExtra>>,
    step: u64,
    /// `created_at`, microseconds since the Unix epoch (formatted when read).
    created_micros: u64,
    total_api_calls: u64,
    total_cost: f64,
    fencing_token: u64,
    /// Which of the three fields above are set ([`HAS_API_CALLS`], …).
    flags: u8,
    /// Index in [`EVENTS_IN_ORDER`].
    event: u8,
}

const HAS_API_CALLS: u8 = 1;
const HAS_COST: u8 = 2;
const HAS_FENCING_TOKEN: u8 = 4;

/// What every record of one execution shares.
#[derive(Debug)]
struct ExecutionParts {
    execution_id: Arc<str>,
    machine_name: &'static str,
    spec_version: &'static str,
    parent_execution_id: Option<Box<str>>,
    config_hash: Option<&'static str>,
    forked_from: Option<ForkOrigin>,
}

#[derive(Debug, Default)]
struct RecordExtra {
    output: Option<Arc<[u8]>>,
    pending_launches: Option<Box<[u8]>>,
    waiting_channel: Option<Box<str>>,
    wait_deadline: Option<Box<str>>,
}

impl CheckpointRecord {
    /// The execution id.
    pub fn execution_id(&self) -> &str {
        &self.execution.execution_id
    }

    /// The execution id, shared.
    pub fn execution_id_shared(&self) -> &Arc<str> {
        &self.execution.execution_id
    }

    /// The step.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The event (one of [`checkpoint_event::WRITTEN`], or `unknown`).
    pub fn event(&self) -> &'static str {
        EVENTS_IN_ORDER[usize::from(self.event)]
    }

    /// The event's position within its step, in run order.
    pub(crate) fn order(&self) -> u8 {
        self.event
    }

    /// The checkpoint's key (`{execution_id}/step_{step:06}_{event}.json`).
    pub fn key(&self) -> String {
        snapshot_key(self.execution_id(), self.step, self.event())
    }

    /// The key of the execution's `latest` pointer.
    pub fn latest_key(&self) -> String {
        latest_key(self.execution_id())
    }

    /// The snapshot's `created_at`, as written in its JSON.
    pub fn created_at(&self) -> String {
        self.timestamp().as_str().to_owned()
    }

    fn timestamp(&self) -> IsoTimestamp {
        IsoTimestamp::from_parts(
            self.created_micros / 1_000_000,
            (self.created_micros % 1_000_000) as u32,
        )
    }

    /// The snapshot's JSON (the reference's wire format).
    pub fn to_json(&self) -> Result<Vec<u8>, PersistenceError> {
        let mut out = Vec::with_capacity(256 + self.context.len());
        self.write_json(&mut out)
            .map_err(|source| PersistenceError::Serialize {
                key: self.key(),
                source,
            })?;
        Ok(out)
    }

    /// Writes what serializing [`SnapshotParts`] writes (same fields, order and separators),
    /// with the context, output and outbox spliced in as the JSON they were kept as.
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        fn raw(out: &mut Vec<u8>, json: Option<&[u8]>) {
            out.extend_from_slice(json.unwrap_or(b"null"));
        }
        let execution = &*self.execution;
        let extra = self.extra.as_deref();
        let flag = |bit: u8| self.flags & bit != 0;
        out.extend_from_slice(b"{\"execution_id\": ");
        write_python_json(out, &*execution.execution_id)?;
        out.extend_from_slice(b", \"machine_name\": ");
        write_python_json(out, execution.machine_name)?;
        out.extend_from_slice(b", \"spec_version\": ");
        write_python_json(out, execution.spec_version)?;
        out.extend_from_slice(b", \"current_state\": ");
        write_python_json(out, self.current_state)?;
        out.extend_from_slice(b", \"context\": ");
        raw(out, Some(&self.context));
        let _ = write!(out, ", \"step\": {}, \"created_at\": ", self.step);
        write_python_json(out, self.timestamp().as_str())?;
        out.extend_from_slice(b", \"event\": ");
        write_python_json(out, self.event())?;
        out.extend_from_slice(b", \"output\": ");
        raw(out, extra.and_then(|e| e.output.as_deref()));
        out.extend_from_slice(b", \"total_api_calls\": ");
        write_python_json(out, &flag(HAS_API_CALLS).then_some(self.total_api_calls))?;
        out.extend_from_slice(b", \"total_cost\": ");
        write_python_json(out, &flag(HAS_COST).then_some(self.total_cost))?;
        out.extend_from_slice(b", \"parent_execution_id\": ");
        write_python_json(out, &execution.parent_execution_id)?;
        out.extend_from_slice(b", \"pending_launches\": ");
        raw(out, extra.and_then(|e| e.pending_launches.as_deref()));
        if let Some(channel) = extra.and_then(|e| e.waiting_channel.as_deref()) {
            out.extend_from_slice(b", \"waiting_channel\": ");
            write_python_json(out, channel)?;
        }
        if let Some(hash) = execution.config_hash {
            out.extend_from_slice(b", \"config_hash\": ");
            write_python_json(out, hash)?;
        }
        if let Some(deadline) = extra.and_then(|e| e.wait_deadline.as_deref()) {
            out.extend_from_slice(b", \"wait_deadline\": ");
            write_python_json(out, deadline)?;
        }
        if let Some(origin) = &execution.forked_from {
            out.extend_from_slice(b", \"forked_from\": ");
            write_python_json(out, origin)?;
        }
        if flag(HAS_FENCING_TOKEN) {
            let _ = write!(out, ", \"fencing_token\": {}", self.fencing_token);
        }
        out.push(b'}');
        Ok(())
    }

    /// The snapshot (parsed from [`to_json`](Self::to_json), so it is what a backend storing
    /// bytes would load).
    pub fn to_snapshot(&self) -> Result<MachineSnapshot, PersistenceError> {
        let json = self.to_json()?;
        MachineSnapshot::from_json_slice(&json).map_err(|error| PersistenceError::Corrupt {
            key: self.key(),
            path: None,
            reason: format!("not a snapshot: {error}"),
        })
    }
}

/// What [`CheckpointWriter::record`](super::CheckpointWriter) keeps between the records of
/// one execution so that equal parts are serialized once and shared.
#[derive(Debug, Default)]
pub(crate) struct RecordCache {
    execution: Option<Arc<ExecutionParts>>,
    /// The context of the last record, and its JSON.
    context: Option<(Context, Arc<[u8]>)>,
    output: Option<(Context, Arc<[u8]>)>,
}

impl Clone for RecordCache {
    /// A writer's clone starts with an empty cache.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl RecordCache {
    /// A record of `parts` (whose `execution_id` must be the writer's, already validated),
    /// stamped `created_at` (seconds, microseconds). Pending launches that cannot be
    /// serialized are the only error.
    pub(crate) fn record(
        &mut self,
        parts: &SnapshotParts<'_>,
        created_at: (u64, u32),
    ) -> Result<CheckpointRecord, serde_json::Error> {
        let execution = match &self.execution {
            Some(e)
                if *e.execution_id == *parts.execution_id
                    && e.machine_name == parts.machine_name
                    && e.spec_version == parts.spec_version
                    && e.parent_execution_id.as_deref() == parts.parent_execution_id
                    && e.config_hash == parts.config_hash
                    && e.forked_from.as_ref() == parts.forked_from =>
            {
                Arc::clone(e)
            }
            _ => Arc::clone(self.execution.insert(Arc::new(ExecutionParts {
                execution_id: Arc::from(parts.execution_id),
                machine_name: parts.machine_name,
                spec_version: parts.spec_version,
                parent_execution_id: parts.parent_execution_id.map(Box::from),
                config_hash: parts.config_hash,
                forked_from: parts.forked_from.cloned(),
            }))),
        };
        let context = share(&mut self.context, parts.context)?;
        let output = parts
            .output
            .map(|o| share(&mut self.output, o))
            .transpose()?;
        let pending_launches = parts
            .pending_launches
            .map(super::snapshot::to_python_json::<[LaunchIntent]>)
            .transpose()?
            .map(Vec::into_boxed_slice);
        let waiting_channel = parts.waiting_channel.map(Box::from);
        let wait_deadline = parts.wait_deadline.map(Box::from);
        let extra = (output.is_some()
            || pending_launches.is_some()
            || waiting_channel.is_some()
            || wait_deadline.is_some())
        .then(|| {
            Arc::new(RecordExtra {
                output,
                pending_launches,
                waiting_channel,
                wait_deadline,
            })
        });
        let mut flags = 0;
        for (set, bit) in [
            (parts.total_api_calls.is_some(), HAS_API_CALLS),
            (parts.total_cost.is_some(), HAS_COST),
            (parts.fencing_token.is_some(), HAS_FENCING_TOKEN),
        ] {
            if set {
                flags |= bit;
            }
        }
        Ok(CheckpointRecord {
            execution,
            current_state: parts.current_state,
            context,
            extra,
            step: parts.step,
            created_micros: created_at.0 * 1_000_000 + u64::from(created_at.1),
            total_api_calls: parts.total_api_calls.unwrap_or(0),
            total_cost: parts.total_cost.unwrap_or(0.0),
            fencing_token: parts.fencing_token.unwrap_or(0),
            flags,
            event: event_order(parts.event.unwrap_or(checkpoint_event::UNKNOWN)),
        })
    }
}

/// The cached JSON when `now` is still the same as the cached map, else `now` serialized (and
/// cached, with a copy of `now`).
fn share(
    cache: &mut Option<(Context, Arc<[u8]>)>,
    now: &Context,
) -> Result<Arc<[u8]>, serde_json::Error> {
    if let Some((map, json)) = cache
        && same_map(map, now)
    {
        return Ok(Arc::clone(json));
    }
    let json: Arc<[u8]> = Arc::from(super::snapshot::to_python_json(now)?);
    match cache {
        Some((map, cached)) => {
            map.clone_from(now);
            *cached = Arc::clone(&json);
        }
        None => *cache = Some((now.clone(), Arc::clone(&json))),
    }
    Ok(json)
}

/// Whether two maps serialize to the same JSON: same keys in the same order, values
/// [`same_json`].
pub(crate) fn same_map(a: &Context, b: &Context) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && same_json(va, vb))
}

/// Whether two values serialize to the same JSON. Unlike `==`, object keys must be in the
/// same order and floats equal bit for bit (`0.0` and `-0.0` differ; `1` and `1.0` differ
/// under `==` already).
pub(crate) fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => same_number(x, y),
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => same_map(x, y),
        _ => false,
    }
}

fn same_number(x: &Number, y: &Number) -> bool {
    if x.is_f64() || y.is_f64() {
        return x.is_f64()
            && y.is_f64()
            && x.as_f64().map(f64::to_bits) == y.as_f64().map(f64::to_bits);
    }
    x == y
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Context {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test maps are objects"),
        }
    }

    #[test]
    fn equality_follows_the_serialized_form() {
        let a = map(json!({"x": 1, "y": [1.5, {"z": null}]}));
        assert!(same_map(&a, &a.clone()));
        // Same entries, other order: `==` says equal, the JSON differs.
        let swapped = map(json!({"y": [1.5, {"z": null}], "x": 1}));
        assert_eq!(a, swapped);
        assert!(!same_map(&a, &swapped));
        let nested = |v: Value| map(json!({"o": v}));
        assert!(!same_map(
            &nested(json!({"a": 1, "b": 2})),
            &nested(json!({"b": 2, "a": 1}))
        ));
        assert!(!same_json(&json!(0.0), &json!(-0.0)));
        assert!(same_json(&json!(-0.0), &json!(-0.0)));
        assert!(!same_json(&json!(1), &json!(1.0)));
        assert!(!same_json(&json!(1), &json!("1")));
        assert!(!same_json(&json!([1]), &json!([1, 2])));
        assert!(same_json(&json!(u64::MAX), &json!(u64::MAX)));
    }
}
