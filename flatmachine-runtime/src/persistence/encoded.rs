//! Checkpoints serialized once: [`EncodedCheckpoint`] (what the execution loop hands to a
//! backend) and [`CheckpointWriter`] (one per execution: the id and keys checked once).
//!
//! The execution loop never builds a [`MachineSnapshot`]: it writes the snapshot's wire JSON
//! straight from the run's state (the context borrowed, not copied), so a checkpoint costs one
//! serialization, whatever the backend does with the bytes.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::record::{CheckpointRecord, RecordCache};
use super::snapshot::to_python_json;
use super::{
    ForkOrigin, LaunchIntent, MachineSnapshot, PersistenceError, checkpoint_event,
    validate_execution_id,
};
use crate::Context;

/// A checkpoint ready to store: its key, the execution's `latest` key and the snapshot's JSON,
/// byte for byte what [`MachineSnapshot::to_json_vec`] writes (the reference's format).
///
/// Made by a [`CheckpointWriter`] (whose execution id was validated once, so every key is
/// valid) or by [`from_snapshot`](Self::from_snapshot). Cheap to clone (shared bytes).
#[derive(Debug, Clone)]
pub struct EncodedCheckpoint {
    key: Arc<str>,
    latest_key: Arc<str>,
    execution_id_len: usize,
    step: u64,
    event: &'static str,
    created_at: IsoTimestamp,
    json: Arc<[u8]>,
    fencing_token: Option<u64>,
}

impl EncodedCheckpoint {
    /// Encodes a snapshot (validating its execution id).
    pub fn from_snapshot(snapshot: &MachineSnapshot) -> Result<Self, PersistenceError> {
        let mut writer = CheckpointWriter::new(&snapshot.execution_id)?;
        let event = snapshot
            .event
            .as_deref()
            .unwrap_or(checkpoint_event::UNKNOWN);
        let json = to_python_json(snapshot).map_err(|source| PersistenceError::Serialize {
            key: super::snapshot_key(&snapshot.execution_id, snapshot.step, event),
            source,
        })?;
        Ok(Self {
            key: writer.key(snapshot.step, event),
            latest_key: writer.latest_key.clone(),
            execution_id_len: snapshot.execution_id.len(),
            step: snapshot.step,
            event: static_event(event),
            created_at: IsoTimestamp::parse(&snapshot.created_at),
            json: Arc::from(json),
            fencing_token: snapshot.fencing_token,
        })
    }

    /// The checkpoint's key (`{execution_id}/step_{step:06}_{event}.json`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The key, shared.
    pub fn key_shared(&self) -> &Arc<str> {
        &self.key
    }

    /// The key of the execution's `latest` pointer (`{execution_id}/latest`).
    pub fn latest_key(&self) -> &str {
        &self.latest_key
    }

    /// The execution id.
    pub fn execution_id(&self) -> &str {
        &self.key[..self.execution_id_len]
    }

    /// The step.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The event as written in the key (`unknown` for an event outside
    /// [`checkpoint_event::WRITTEN`]; the JSON has the snapshot's own).
    pub fn event(&self) -> &'static str {
        self.event
    }

    /// The snapshot's `created_at`.
    pub fn created_at(&self) -> &str {
        self.created_at.as_str()
    }

    /// The snapshot's JSON.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// The snapshot's JSON, shared.
    pub fn json_shared(&self) -> &Arc<[u8]> {
        &self.json
    }

    /// The fencing token the snapshot carries (its `fencing_token` field), if any: what a
    /// store that checks fencing compares with the newest token of the execution.
    pub fn fencing_token(&self) -> Option<u64> {
        self.fencing_token
    }

    /// Parses the JSON back into a snapshot (for backends that store structs).
    pub fn to_snapshot(&self) -> Result<MachineSnapshot, PersistenceError> {
        MachineSnapshot::from_json_slice(&self.json).map_err(|error| PersistenceError::Corrupt {
            key: self.key.to_string(),
            path: None,
            reason: format!("not a snapshot: {error}"),
        })
    }
}

/// The event name as a `'static` string (keys only ever hold these).
fn static_event(event: &str) -> &'static str {
    checkpoint_event::WRITTEN
        .iter()
        .find(|e| **e == event)
        .copied()
        .unwrap_or(checkpoint_event::UNKNOWN)
}

/// The parts of a snapshot, borrowed: serialized exactly like [`MachineSnapshot`] (same fields,
/// same order), without copying the context.
#[derive(Serialize)]
pub(crate) struct SnapshotParts<'a> {
    pub execution_id: &'a str,
    pub machine_name: &'static str,
    pub spec_version: &'static str,
    pub current_state: &'static str,
    pub context: &'a Context,
    pub step: u64,
    pub created_at: &'a str,
    pub event: Option<&'a str>,
    pub output: Option<&'a Context>,
    pub total_api_calls: Option<u64>,
    pub total_cost: Option<f64>,
    pub parent_execution_id: Option<&'a str>,
    pub pending_launches: Option<&'a [LaunchIntent]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_deadline: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<&'a ForkOrigin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<u64>,
}

/// Encodes the checkpoints of one execution: the execution id is validated once, the
/// `latest` key made once, and checkpoint keys and timestamps are written without `format!`.
#[derive(Debug, Clone)]
pub struct CheckpointWriter {
    /// `{execution_id}/step_`.
    prefix: String,
    execution_id_len: usize,
    latest_key: Arc<str>,
    /// The size of the last snapshot, to allocate the next one's buffer at once.
    size_hint: usize,
    /// The parts the last record shared (see [`record`](Self::record)).
    records: RecordCache,
}

impl CheckpointWriter {
    /// A writer for `execution_id` (rejected if it is not a valid execution id).
    pub fn new(execution_id: &str) -> Result<Self, PersistenceError> {
        validate_execution_id(execution_id)?;
        let mut prefix = String::with_capacity(execution_id.len() + 6);
        prefix.push_str(execution_id);
        prefix.push_str("/step_");
        let mut latest = String::with_capacity(execution_id.len() + 7);
        latest.push_str(execution_id);
        latest.push_str("/latest");
        Ok(Self {
            prefix,
            execution_id_len: execution_id.len(),
            latest_key: Arc::from(latest),
            size_hint: 256,
            records: RecordCache::default(),
        })
    }

    /// The execution id.
    pub fn execution_id(&self) -> &str {
        &self.prefix[..self.execution_id_len]
    }

    /// The `latest` key.
    pub fn latest_key(&self) -> &str {
        &self.latest_key
    }

    /// The key of the checkpoint at `step`/`event` (same as [`super::snapshot_key`]).
    fn key(&mut self, step: u64, event: &str) -> Arc<str> {
        let mut key = String::with_capacity(self.prefix.len() + 20 + event.len() + 5);
        key.push_str(&self.prefix);
        push_padded(&mut key, step, 6);
        key.push('_');
        key.push_str(event);
        key.push_str(".json");
        Arc::from(key)
    }

    /// Encodes one checkpoint, stamped now. `parts.execution_id` and `parts.created_at` are
    /// replaced by the writer's.
    pub(crate) fn encode(
        &mut self,
        parts: SnapshotParts<'_>,
    ) -> Result<EncodedCheckpoint, PersistenceError> {
        let event = static_event(parts.event.unwrap_or(checkpoint_event::UNKNOWN));
        let created_at = IsoTimestamp::now();
        let key = self.key(parts.step, event);
        let parts = SnapshotParts {
            execution_id: &self.prefix[..self.execution_id_len],
            created_at: created_at.as_str(),
            ..parts
        };
        let mut json = Vec::with_capacity(self.size_hint + self.size_hint / 8);
        super::snapshot::write_python_json(&mut json, &parts).map_err(|source| {
            PersistenceError::Serialize {
                key: key.to_string(),
                source,
            }
        })?;
        self.size_hint = json.len();
        Ok(EncodedCheckpoint {
            key,
            latest_key: self.latest_key.clone(),
            execution_id_len: self.execution_id_len,
            step: parts.step,
            event,
            created_at,
            json: Arc::from(json),
            fencing_token: parts.fencing_token,
        })
    }

    /// One checkpoint as a [`CheckpointRecord`], stamped now: the context (and output)
    /// serialized only when they changed since the previous record, and shared otherwise.
    /// `parts.execution_id` and `parts.created_at` are replaced by the writer's.
    pub(crate) fn record(
        &mut self,
        parts: SnapshotParts<'_>,
    ) -> Result<CheckpointRecord, PersistenceError> {
        let parts = SnapshotParts {
            execution_id: &self.prefix[..self.execution_id_len],
            ..parts
        };
        self.records
            .record(&parts, IsoTimestamp::now_parts())
            .map_err(|source| PersistenceError::Serialize {
                key: super::snapshot_key(
                    parts.execution_id,
                    parts.step,
                    static_event(parts.event.unwrap_or(checkpoint_event::UNKNOWN)),
                ),
                source,
            })
    }
}

/// Appends `n` in decimal, zero-padded to `width` digits.
fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for _ in (digits.len() - i)..width {
        out.push('0');
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// A UTC time as Python's `isoformat()` writes it, kept inline (no heap):
/// `2026-11-24T19:22:17.123456+00:00` (the fraction left out when it is 0).
#[derive(Clone, Copy)]
pub(crate) struct IsoTimestamp {
    buf: [u8; 40],
    len: u8,
}

impl std::fmt::Debug for IsoTimestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl IsoTimestamp {
    /// Now. The date and time of day are formatted once per second (per thread); only the
    /// microseconds are written per call.
    pub(crate) fn now() -> Self {
        let (secs, micros) = Self::now_parts();
        thread_local! {
            static LAST_SECOND: std::cell::Cell<Option<(u64, IsoTimestamp)>> =
                const { std::cell::Cell::new(None) };
        }
        let mut out = match LAST_SECOND.get() {
            Some((last, whole)) if last == secs => whole,
            _ => {
                let whole = Self::from_parts(secs, 0);
                LAST_SECOND.set(Some((secs, whole)));
                whole
            }
        };
        if micros != 0 {
            // `whole` ends in "+00:00": put the fraction before it.
            out.len -= 6;
            out.byte(b'.');
            out.digits(u64::from(micros), 6);
            for b in b"+00:00" {
                out.byte(*b);
            }
        }
        out
    }

    /// Now, as seconds and microseconds since the Unix epoch (UTC).
    pub(crate) fn now_parts() -> (u64, u32) {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        (since_epoch.as_secs(), since_epoch.subsec_micros())
    }

    /// A timestamp read back from a snapshot (kept as is, cut at 40 bytes).
    fn parse(text: &str) -> Self {
        let mut buf = [0u8; 40];
        let mut end = text.len().min(buf.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        buf[..end].copy_from_slice(&text.as_bytes()[..end]);
        Self {
            buf,
            len: end as u8,
        }
    }

    /// Seconds + microseconds since the Unix epoch (UTC).
    pub(crate) fn from_parts(secs: u64, micros: u32) -> Self {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (year, month, day) = super::snapshot::civil_from_days(days);
        let mut out = Self {
            buf: [0u8; 40],
            len: 0,
        };
        out.digits(year, 4);
        out.byte(b'-');
        out.digits(month, 2);
        out.byte(b'-');
        out.digits(day, 2);
        out.byte(b'T');
        out.digits(rem / 3600, 2);
        out.byte(b':');
        out.digits((rem % 3600) / 60, 2);
        out.byte(b':');
        out.digits(rem % 60, 2);
        if micros != 0 {
            out.byte(b'.');
            out.digits(u64::from(micros), 6);
        }
        for b in b"+00:00" {
            out.byte(*b);
        }
        out
    }

    fn byte(&mut self, b: u8) {
        if usize::from(self.len) < self.buf.len() {
            self.buf[usize::from(self.len)] = b;
            self.len += 1;
        }
    }

    fn digits(&mut self, n: u64, width: usize) {
        // Written right to left; years past 9999 get more digits.
        let mut tmp = [b'0'; 20];
        let mut i = tmp.len();
        let mut n = n;
        while n > 0 || tmp.len() - i < width {
            i -= 1;
            tmp[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        for &b in &tmp[i..] {
            self.byte(b);
        }
    }

    /// The text.
    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII is ever written (or a prefix of a `&str` cut at a char boundary).
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn context() -> Context {
        let mut v = json!({"i": 3, "name": "Ünïcode ☃ 😀", "f": 1.5e16, "g": 0.1,
            "nested": {"a": [1, 2.0, null, true]}, "del": "\u{7f}"});
        std::mem::take(v.as_object_mut().unwrap())
    }

    #[test]
    fn parts_encode_like_the_snapshot_struct() {
        let ctx = context();
        let mut output = Context::new();
        output.insert("x".into(), json!("y"));
        let launches = vec![LaunchIntent::new("c1", "child", ctx.clone())];
        let mut writer = CheckpointWriter::new("exec-1").unwrap();
        let origin = ForkOrigin {
            execution_id: "source".into(),
            step: 4,
        };
        for (i, (out, parent, pending, fence, totals)) in [
            (None, None, None, None, (None, None)),
            (
                Some(&output),
                Some("p-1"),
                Some(launches.as_slice()),
                Some(3),
                (Some(2), Some(0.5)),
            ),
            (Some(&output), None, None, None, (Some(0), Some(-0.0))),
        ]
        .into_iter()
        .enumerate()
        {
            // The second case is a waiting checkpoint of a fork, with every optional field.
            let waiting = i == 1;
            let parts = || SnapshotParts {
                execution_id: "",
                machine_name: "m",
                spec_version: "1.0.0",
                current_state: "work",
                context: &ctx,
                step: 12,
                created_at: "",
                event: Some("execute"),
                output: out,
                total_api_calls: totals.0,
                total_cost: totals.1,
                parent_execution_id: parent,
                pending_launches: pending,
                waiting_channel: waiting.then_some("approval/7"),
                config_hash: (i > 0).then_some("fm-shape1:00112233445566778899aabbccddeeff"),
                wait_deadline: waiting.then_some("2026-11-24T19:15:37.123456+00:00"),
                forked_from: waiting.then_some(&origin),
                fencing_token: fence,
            };
            let encoded = writer.encode(parts()).unwrap();
            let snap = encoded.to_snapshot().unwrap();
            // A record writes the same bytes (its own timestamp), read back the same.
            let record = writer.record(parts()).unwrap();
            let stamped = MachineSnapshot {
                created_at: record.created_at(),
                ..snap.clone()
            };
            assert_eq!(record.to_json().unwrap(), stamped.to_json_vec().unwrap());
            assert_eq!(record.to_snapshot().unwrap(), stamped);
            assert_eq!(record.key(), encoded.key());
            assert_eq!(snap.fencing_token, fence);
            assert_eq!(snap.to_json_vec().unwrap(), encoded.json());
            assert_eq!(snap.created_at, encoded.created_at());
            assert_eq!(snap.context, ctx);
            assert_eq!(encoded.key(), "exec-1/step_000012_execute.json");
            assert_eq!(encoded.latest_key(), "exec-1/latest");
            assert_eq!(encoded.execution_id(), "exec-1");
            let again = EncodedCheckpoint::from_snapshot(&snap).unwrap();
            assert_eq!(again.json(), encoded.json());
            assert_eq!(again.key(), encoded.key());
        }
    }

    #[test]
    fn keys_match_snapshot_key() {
        let mut writer = CheckpointWriter::new("e").unwrap();
        for step in [0, 7, 999_999, 1_000_000, u64::MAX] {
            for event in checkpoint_event::ALL {
                assert_eq!(
                    &*writer.key(step, event),
                    super::super::snapshot_key("e", step, event)
                );
            }
        }
        assert!(CheckpointWriter::new("../x").is_err());
    }

    #[test]
    fn timestamps_match_python() {
        assert_eq!(
            IsoTimestamp::from_parts(1_795_547_737, 123_456).as_str(),
            "2026-11-24T19:15:37.123456+00:00"
        );
        assert_eq!(
            IsoTimestamp::from_parts(0, 0).as_str(),
            "1970-01-01T00:00:00+00:00"
        );
        assert_eq!(
            IsoTimestamp::from_parts(951_782_400, 1).as_str(),
            "2000-02-29T00:00:00.000001+00:00"
        );
    }
}
