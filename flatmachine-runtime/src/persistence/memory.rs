//! [`MemoryBackend`]: checkpoints kept in process memory.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{MachineSnapshot, PersistenceBackend, PersistenceError, validate_key};

/// In-memory checkpoint storage (the reference's `MemoryBackend`), the default when a machine
/// has no `persistence` section.
///
/// Snapshots are kept as structs behind `Arc`s, never as JSON, so a save through
/// [`CheckpointStore`](super::CheckpointStore) costs a map insert. Text entries (the `latest`
/// pointers) are kept as strings. Reading an entry of the other kind converts it (a snapshot
/// reads as its JSON text; a text is parsed as a snapshot), as a file backend would.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    entries: Mutex<BTreeMap<String, Entry>>,
}

#[derive(Debug, Clone)]
enum Entry {
    Snapshot(Arc<MachineSnapshot>),
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

    /// The stored snapshot under `key`, shared (no copy); `None` if absent or not a snapshot.
    pub fn get_shared(&self, key: &str) -> Option<Arc<MachineSnapshot>> {
        match self.entries().get(key) {
            Some(Entry::Snapshot(snapshot)) => Some(Arc::clone(snapshot)),
            _ => None,
        }
    }

    fn entries(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic elsewhere while holding the lock cannot leave the map half-updated (every
        // critical section is a single map operation), so a poisoned lock is still usable.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn insert(&self, key: &str, entry: Entry) -> Result<(), PersistenceError> {
        validate_key(key)?;
        self.entries().insert(key.to_owned(), entry);
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Entry>, PersistenceError> {
        validate_key(key)?;
        Ok(self.entries().get(key).cloned())
    }
}

#[async_trait]
impl PersistenceBackend for MemoryBackend {
    async fn save(&self, key: &str, snapshot: &MachineSnapshot) -> Result<(), PersistenceError> {
        self.insert(key, Entry::Snapshot(Arc::new(snapshot.clone())))
    }

    async fn save_shared(
        &self,
        key: &str,
        snapshot: Arc<MachineSnapshot>,
    ) -> Result<(), PersistenceError> {
        self.insert(key, Entry::Snapshot(snapshot))
    }

    async fn load(&self, key: &str) -> Result<Option<MachineSnapshot>, PersistenceError> {
        match self.get(key)? {
            None => Ok(None),
            Some(Entry::Snapshot(snapshot)) => Ok(Some((*snapshot).clone())),
            Some(Entry::Text(text)) => MachineSnapshot::from_json_slice(text.as_bytes())
                .map(Some)
                .map_err(|error| PersistenceError::Corrupt {
                    key: key.to_owned(),
                    path: None,
                    reason: format!("not a snapshot: {error}"),
                }),
        }
    }

    async fn save_text(&self, key: &str, text: &str) -> Result<(), PersistenceError> {
        self.insert(key, Entry::Text(Arc::from(text)))
    }

    async fn load_text(&self, key: &str) -> Result<Option<String>, PersistenceError> {
        match self.get(key)? {
            None => Ok(None),
            Some(Entry::Text(text)) => Ok(Some(text.to_string())),
            Some(Entry::Snapshot(snapshot)) => {
                let bytes =
                    snapshot
                        .to_json_vec()
                        .map_err(|source| PersistenceError::Serialize {
                            key: key.to_owned(),
                            source,
                        })?;
                // The writer escapes everything outside ASCII, so this is always UTF-8.
                Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
            }
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
            .cloned()
            .collect())
    }
}
