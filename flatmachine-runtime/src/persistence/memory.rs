//! [`MemoryBackend`]: checkpoints kept in process memory.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{
    EncodedCheckpoint, MachineSnapshot, PersistenceBackend, PersistenceError, validate_key,
};

/// In-memory checkpoint storage (the reference's `MemoryBackend`), the default when a machine
/// has no `persistence` section.
///
/// Snapshots are kept as their JSON bytes (the reference's wire format), the compact form:
/// the execution loop serializes a checkpoint once and the store keeps those bytes
/// ([`PersistenceBackend::save_encoded_now`]), so a save costs one serialization and a map
/// insert, and a `latest` pointer shares its checkpoint's key. Loading parses the JSON. Text
/// entries (the `latest` pointers) are kept as strings; reading an entry of the other kind
/// converts it (a snapshot reads as its JSON text; a text is parsed as a snapshot), as a file
/// backend would.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    entries: Mutex<BTreeMap<Arc<str>, Entry>>,
}

#[derive(Debug, Clone)]
enum Entry {
    /// A snapshot's JSON.
    Snapshot(Arc<[u8]>),
    Text(Arc<str>),
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
        self.entries().is_empty()
    }

    /// The stored snapshot under `key` (parsed from its JSON); `None` if absent, not a
    /// snapshot, or not valid.
    pub fn get_shared(&self, key: &str) -> Option<Arc<MachineSnapshot>> {
        let json = match self.entries().get(key) {
            Some(Entry::Snapshot(json)) => Arc::clone(json),
            _ => return None,
        };
        MachineSnapshot::from_json_slice(&json).ok().map(Arc::new)
    }

    /// The JSON of the snapshot stored under `key`, shared (no copy); `None` if absent or
    /// not a snapshot.
    pub fn get_json(&self, key: &str) -> Option<Arc<[u8]>> {
        match self.entries().get(key) {
            Some(Entry::Snapshot(json)) => Some(Arc::clone(json)),
            _ => None,
        }
    }

    /// Heap bytes held by the stored keys and values (not counting the map's own nodes).
    pub fn stored_bytes(&self) -> usize {
        self.entries()
            .iter()
            .map(|(key, entry)| {
                key.len()
                    + match entry {
                        Entry::Snapshot(json) => json.len(),
                        Entry::Text(text) => text.len(),
                    }
            })
            .sum()
    }

    fn entries(&self) -> MutexGuard<'_, BTreeMap<Arc<str>, Entry>> {
        // A panic elsewhere while holding the lock cannot leave the map half-updated (every
        // critical section is a single map operation), so a poisoned lock is still usable.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn insert(&self, key: &str, entry: Entry) -> Result<(), PersistenceError> {
        validate_key(key)?;
        set(&mut self.entries(), key, entry);
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Entry>, PersistenceError> {
        validate_key(key)?;
        Ok(self.entries().get(key).cloned())
    }

    fn encode(key: &str, snapshot: &MachineSnapshot) -> Result<Entry, PersistenceError> {
        let json = snapshot.to_json_for(key)?;
        Ok(Entry::Snapshot(Arc::from(json)))
    }
}

/// Replaces the entry under `key`, reusing the stored key when there is one.
fn set(entries: &mut BTreeMap<Arc<str>, Entry>, key: &str, entry: Entry) {
    match entries.get_mut(key) {
        Some(slot) => *slot = entry,
        None => {
            entries.insert(Arc::from(key), entry);
        }
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
        set(&mut entries, key, entry);
        set(&mut entries, latest_key, Entry::Text(Arc::from(key)));
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
        let key = checkpoint.key_shared();
        let mut entries = self.entries();
        entries.insert(
            Arc::clone(key),
            Entry::Snapshot(Arc::clone(checkpoint.json_shared())),
        );
        set(
            &mut entries,
            checkpoint.latest_key(),
            Entry::Text(Arc::clone(key)),
        );
        Some(Ok(()))
    }

    async fn load(&self, key: &str) -> Result<Option<MachineSnapshot>, PersistenceError> {
        let bytes = match self.get(key)? {
            None => return Ok(None),
            Some(Entry::Snapshot(json)) => json,
            Some(Entry::Text(text)) => Arc::from(text.as_bytes()),
        };
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
            Some(Entry::Text(text)) => Ok(Some(text.to_string())),
            // The writer escapes everything outside ASCII, so this is always UTF-8.
            Some(Entry::Snapshot(json)) => Ok(Some(String::from_utf8_lossy(&json).into_owned())),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), PersistenceError> {
        validate_key(key)?;
        self.entries().remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, PersistenceError> {
        let entries = self.entries();
        Ok(entries
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .map(|(key, _)| key)
            .take_while(|key| key.starts_with(prefix))
            .map(|key| key.to_string())
            .collect())
    }
}
