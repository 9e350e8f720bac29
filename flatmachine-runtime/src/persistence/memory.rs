//! [`MemoryBackend`]: checkpoints kept in process memory.

use std::collections::{BTreeMap, HashMap};

use super::record::EVENTS_IN_ORDER;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{
    CheckpointRecord, EncodedCheckpoint, MachineSnapshot, PersistenceBackend, PersistenceError,
    parse_snapshot_key, snapshot_key, validate_key,
};

/// In-memory checkpoint storage (the reference's `MemoryBackend`), the default when a machine
/// has no `persistence` section.
///
/// The execution loop hands it [`CheckpointRecord`]s ([`keeps_records`]): a checkpoint is
/// kept as its parts, the context shared by every checkpoint of the execution that has the
/// same context, and serialized only when it is read. A save costs no serialization and at
/// most one copy of the context per change; the JSON read back is byte for byte what the
/// other backends store. Snapshots saved through [`save`](PersistenceBackend::save) are kept
/// as their JSON bytes.
///
/// Checkpoints are indexed by execution, then by step and event (no string key per
/// checkpoint); the `latest` pointer of an execution names its checkpoint by position. Other
/// keys are kept as given. Reading an entry of the other kind converts it (a snapshot reads
/// as its JSON text; a text is parsed as a snapshot), as a file backend would.
///
/// [`keeps_records`]: PersistenceBackend::keeps_records
#[derive(Debug, Default)]
pub struct MemoryBackend {
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    /// Checkpoints and `latest` pointers, by execution id.
    executions: HashMap<Arc<str>, Execution>,
    /// Every other key.
    other: BTreeMap<Box<str>, Entry>,
}

/// Where a checkpoint sits among its execution's: (step, event in run order).
type Position = (u64, u8);

#[derive(Debug, Default)]
struct Execution {
    /// Sorted by position (run order), so the loop's saves are pushes.
    checkpoints: Vec<(Position, Entry)>,
    latest: Latest,
}

/// An execution's `latest` pointer.
#[derive(Debug, Default)]
enum Latest {
    #[default]
    None,
    /// Names the checkpoint at this position (what the loop writes): the text is its key.
    At(Position),
    /// Anything else saved under the key.
    Other(Box<Entry>),
}

impl Latest {
    fn is_some(&self) -> bool {
        !matches!(self, Latest::None)
    }

    fn entry(&self) -> Option<Entry> {
        match self {
            Latest::None => None,
            Latest::At((step, event)) => Some(Entry::Pointer(*step, *event)),
            Latest::Other(entry) => Some((**entry).clone()),
        }
    }
}

impl Execution {
    fn len(&self) -> usize {
        self.checkpoints.len() + usize::from(self.latest.is_some())
    }

    fn find(&self, at: Position) -> Result<usize, usize> {
        self.checkpoints.binary_search_by_key(&at, |(p, _)| *p)
    }

    fn get(&self, at: Position) -> Option<&Entry> {
        self.find(at).ok().map(|i| &self.checkpoints[i].1)
    }

    fn set(&mut self, at: Position, entry: Entry) {
        if self.checkpoints.last().is_none_or(|(last, _)| *last < at) {
            self.checkpoints.push((at, entry));
            return;
        }
        match self.find(at) {
            Ok(i) => self.checkpoints[i].1 = entry,
            Err(i) => self.checkpoints.insert(i, (at, entry)),
        }
    }

    fn remove(&mut self, at: Position) {
        if let Ok(i) = self.find(at) {
            self.checkpoints.remove(i);
        }
    }
}

#[derive(Debug, Clone)]
enum Entry {
    /// A snapshot's JSON.
    Json(Arc<[u8]>),
    /// A checkpoint made by the execution loop, serialized when read.
    Record(CheckpointRecord),
    Text(Arc<str>),
    /// A `latest` pointer naming a checkpoint of its execution: the text is that key.
    Pointer(u64, u8),
}

/// The events a checkpoint key can hold, in run order.
const EVENTS: [&str; 8] = EVENTS_IN_ORDER;

fn event_index(event: &str) -> Option<u8> {
    EVENTS.iter().position(|e| *e == event).map(|i| i as u8)
}

/// Where a key lives.
enum Slot<'a> {
    /// `{execution_id}/step_{step:06}_{event}.json`, written exactly so.
    Checkpoint(&'a str, (u64, u8)),
    /// `{execution_id}/latest`.
    Latest(&'a str),
    Other,
}

fn slot(key: &str) -> Slot<'_> {
    if let Some(execution_id) = key.strip_suffix("/latest")
        && !execution_id.is_empty()
    {
        return Slot::Latest(execution_id);
    }
    let Some((execution_id, step, event)) = parse_snapshot_key(key) else {
        return Slot::Other;
    };
    // Only keys `snapshot_key` writes: six digits, or more without a leading zero.
    let digits = key.len() - execution_id.len() - "/step__.json".len() - event.len();
    let canonical = digits == 6 || (digits > 6 && !key[execution_id.len() + 6..].starts_with('0'));
    match event_index(event) {
        Some(event) if canonical && !execution_id.is_empty() => {
            Slot::Checkpoint(execution_id, (step, event))
        }
        _ => Slot::Other,
    }
}

impl Entries {
    fn get(&self, key: &str) -> Option<Entry> {
        match slot(key) {
            Slot::Checkpoint(id, at) => self.executions.get(id)?.get(at).cloned(),
            Slot::Latest(id) => self.executions.get(id)?.latest.entry(),
            Slot::Other => self.other.get(key).cloned(),
        }
    }

    fn execution(&mut self, id: &str) -> &mut Execution {
        self.executions.entry(Arc::from(id)).or_default()
    }

    fn set(&mut self, key: &str, entry: Entry) {
        match slot(key) {
            Slot::Checkpoint(id, at) => self.execution(id).set(at, entry),
            Slot::Latest(id) => self.execution(id).latest = Latest::Other(Box::new(entry)),
            Slot::Other => {
                self.other.insert(Box::from(key), entry);
            }
        }
    }

    fn remove(&mut self, key: &str) {
        let (id, execution) = match slot(key) {
            Slot::Other => {
                self.other.remove(key);
                return;
            }
            Slot::Checkpoint(id, at) => match self.executions.get_mut(id) {
                Some(execution) => {
                    execution.remove(at);
                    (id, execution)
                }
                None => return,
            },
            Slot::Latest(id) => match self.executions.get_mut(id) {
                Some(execution) => {
                    execution.latest = Latest::None;
                    (id, execution)
                }
                None => return,
            },
        };
        if execution.len() == 0 {
            self.executions.remove(id);
        }
    }

    /// The text of a `latest` pointer entry.
    fn pointer_text(id: &str, (step, event): (u64, u8)) -> String {
        snapshot_key(id, step, EVENTS[usize::from(event)])
    }

    fn len(&self) -> usize {
        self.other.len() + self.executions.values().map(Execution::len).sum::<usize>()
    }

    fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .other
            .keys()
            .filter(|k| k.starts_with(prefix))
            .map(|k| k.to_string())
            .collect();
        for (id, execution) in &self.executions {
            // Skip executions none of whose keys (`{id}/…`) can start with `prefix`.
            let common = prefix.len().min(id.len() + 1);
            let head = format!("{id}/");
            if !head.as_bytes()[..common].eq(&prefix.as_bytes()[..common]) {
                continue;
            }
            let names = execution
                .checkpoints
                .iter()
                .map(|&((step, event), _)| snapshot_key(id, step, EVENTS[usize::from(event)]))
                .chain(execution.latest.is_some().then(|| format!("{id}/latest")));
            keys.extend(names.filter(|k| k.starts_with(prefix)));
        }
        keys.sort_unstable();
        keys
    }
}

impl Entry {
    /// The entry as snapshot JSON bytes (records are serialized now).
    fn json(&self, key: &str) -> Result<Arc<[u8]>, PersistenceError> {
        Ok(match self {
            Entry::Json(json) => Arc::clone(json),
            Entry::Record(record) => Arc::from(record.to_json()?),
            Entry::Text(text) => Arc::from(text.as_bytes()),
            Entry::Pointer(step, event) => {
                Arc::from(Entries::pointer_text(key_execution(key), (*step, *event)).into_bytes())
            }
        })
    }

    /// The entry as text (a snapshot reads as its JSON text).
    fn text(&self, key: &str) -> Result<String, PersistenceError> {
        Ok(match self {
            Entry::Text(text) => text.to_string(),
            Entry::Pointer(step, event) => {
                Entries::pointer_text(key_execution(key), (*step, *event))
            }
            // The writer escapes everything outside ASCII, so this is always UTF-8.
            Entry::Json(_) | Entry::Record(_) => {
                String::from_utf8_lossy(&self.json(key)?).into_owned()
            }
        })
    }
}

/// The execution id of a `{execution_id}/latest` key.
fn key_execution(key: &str) -> &str {
    key.rsplit_once('/').map_or("", |(id, _)| id)
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of stored keys.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored snapshot under `key` (parsed from its JSON); `None` if absent, not a
    /// snapshot, or not valid.
    pub fn get_shared(&self, key: &str) -> Option<Arc<MachineSnapshot>> {
        let json = self.get_json(key)?;
        MachineSnapshot::from_json_slice(&json).ok().map(Arc::new)
    }

    /// The JSON of the snapshot stored under `key` (a checkpoint record is serialized now);
    /// `None` if absent or not a snapshot.
    pub fn get_json(&self, key: &str) -> Option<Arc<[u8]>> {
        let entry = self.entries().get(key)?;
        match entry {
            Entry::Json(_) | Entry::Record(_) => entry.json(key).ok(),
            Entry::Text(_) | Entry::Pointer(..) => None,
        }
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        // A panic elsewhere while holding the lock cannot leave the maps half-updated (no
        // code that can panic runs between the updates of one operation), so a poisoned lock
        // is still usable.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn insert(&self, key: &str, entry: Entry) -> Result<(), PersistenceError> {
        validate_key(key)?;
        self.entries().set(key, entry);
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Entry>, PersistenceError> {
        validate_key(key)?;
        Ok(self.entries().get(key))
    }

    fn encode(key: &str, snapshot: &MachineSnapshot) -> Result<Entry, PersistenceError> {
        let json = snapshot.to_json_for(key)?;
        Ok(Entry::Json(Arc::from(json)))
    }
}

#[async_trait]
impl PersistenceBackend for MemoryBackend {
    async fn save(&self, key: &str, snapshot: &MachineSnapshot) -> Result<(), PersistenceError> {
        self.insert(key, Self::encode(key, snapshot)?)
    }

    async fn save_shared(
        &self,
        key: &str,
        snapshot: Arc<MachineSnapshot>,
    ) -> Result<(), PersistenceError> {
        self.save(key, &snapshot).await
    }

    async fn save_checkpoint(
        &self,
        key: &str,
        latest_key: &str,
        snapshot: Arc<MachineSnapshot>,
    ) -> Result<(), PersistenceError> {
        validate_key(key)?;
        validate_key(latest_key)?;
        let entry = Self::encode(key, &snapshot)?;
        let mut entries = self.entries();
        entries.set(key, entry);
        entries.set(latest_key, Entry::Text(Arc::from(key)));
        Ok(())
    }

    async fn save_encoded(&self, checkpoint: EncodedCheckpoint) -> Result<(), PersistenceError> {
        self.save_encoded_now(&checkpoint).unwrap_or(Ok(()))
    }

    fn save_encoded_now(
        &self,
        checkpoint: &EncodedCheckpoint,
    ) -> Option<Result<(), PersistenceError>> {
        // The keys of an `EncodedCheckpoint` were validated when its writer was made.
        let key = checkpoint.key();
        let mut entries = self.entries();
        entries.set(key, Entry::Json(Arc::clone(checkpoint.json_shared())));
        entries.set(checkpoint.latest_key(), Entry::Text(Arc::from(key)));
        Some(Ok(()))
    }

    fn keeps_records(&self) -> bool {
        true
    }

    fn save_record_now(&self, record: CheckpointRecord) -> Result<(), PersistenceError> {
        // The execution id of a record was validated when its writer was made, so both keys
        // are valid.
        let at = (record.step(), record.order());
        let mut entries = self.entries();
        let id = record.execution_id_shared();
        let execution = match entries.executions.get_mut(&**id) {
            Some(execution) => execution,
            None => entries.executions.entry(Arc::clone(id)).or_default(),
        };
        execution.set(at, Entry::Record(record));
        execution.latest = Latest::At(at);
        Ok(())
    }

    async fn load(&self, key: &str) -> Result<Option<MachineSnapshot>, PersistenceError> {
        let Some(entry) = self.get(key)? else {
            return Ok(None);
        };
        let bytes = entry.json(key)?;
        MachineSnapshot::from_json_slice(&bytes)
            .map(Some)
            .map_err(|error| PersistenceError::Corrupt {
                key: key.to_owned(),
                path: None,
                reason: format!("not a snapshot: {error}"),
            })
    }

    async fn save_text(&self, key: &str, text: &str) -> Result<(), PersistenceError> {
        self.insert(key, Entry::Text(Arc::from(text)))
    }

    async fn load_text(&self, key: &str) -> Result<Option<String>, PersistenceError> {
        match self.get(key)? {
            None => Ok(None),
            Some(entry) => entry.text(key).map(Some),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), PersistenceError> {
        validate_key(key)?;
        self.entries().remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, PersistenceError> {
        Ok(self.entries().keys(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keys_snapshot_key_writes_are_checkpoint_slots() {
        let is_checkpoint = |key: &str| matches!(slot(key), Slot::Checkpoint(..));
        assert!(is_checkpoint("e/step_000001_execute.json"));
        assert!(is_checkpoint("a/b/step_1234567_unknown.json"));
        assert!(!is_checkpoint("e/step_0000001_execute.json"));
        assert!(!is_checkpoint("e/step_00001_execute.json"));
        assert!(!is_checkpoint("e/step_000001_other.json"));
        assert!(!is_checkpoint("step_000001_execute.json"));
        assert!(matches!(slot("e/latest"), Slot::Latest("e")));
        assert!(matches!(slot("latest"), Slot::Other));
        for step in [0, 5, 999_999, 1_000_000, 12_345_678] {
            for event in EVENTS {
                let key = snapshot_key("x", step, event);
                assert!(
                    matches!(slot(&key), Slot::Checkpoint("x", (s, _)) if s == step),
                    "{key}"
                );
            }
        }
    }
}
