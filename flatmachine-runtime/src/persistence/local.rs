//! [`LocalFileBackend`]: checkpoints as files below a directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::crc32::crc32;
use super::{
    EncodedCheckpoint, MachineSnapshot, PersistenceBackend, PersistenceError, validate_key,
};

/// File-based checkpoint storage (the reference's `LocalFileBackend`): key `a/b.json` is the
/// file `<root>/a/b.json`.
///
/// Writes are atomic: the bytes go to a temporary file `.<name>.<pid>-<n>.tmp` (unique per
/// write, so concurrent writers never share one) in the target's directory, which is fsynced,
/// renamed over the target, and the directory is fsynced so the rename survives a crash.
/// [`with_fsync(false)`](Self::with_fsync) skips the fsyncs (faster, still atomic for readers,
/// but a power loss may lose recent checkpoints). Temporary files left by killed writes are
/// removed when a run or resume of the execution next starts
/// ([`PersistenceBackend::remove_temporaries`]). Directories are created on the first write;
/// nothing is created by reading. Files starting with `.` are never listed.
///
/// # Checksums
///
/// Every snapshot `<name>.json` is followed by a checksum file `<name>.json.crc32`, one line
/// of JSON: `{"algorithm": "crc32", "checksum": "cbf43926", "length": 1234, "created_at":
/// "…"}` — the CRC-32 (zlib's) of the snapshot file's exact bytes, their number, and the
/// snapshot's `created_at`. The snapshot itself stays byte-identical to the reference's (which
/// rejects unknown fields, so the checksum cannot live inside it). On load, a checksum file
/// whose `created_at` matches the snapshot's must match its bytes, else the snapshot is refused
/// as [`PersistenceError::Corrupt`]. A snapshot without a checksum file (written by the
/// reference, or by a process killed between the two writes) loads unchecked, as does one
/// whose checksum file has another `created_at` (the snapshot was rewritten by a writer that
/// keeps no checksums). This detects damaged and hand-edited files, not deliberate forgery.
///
/// # A checkpoint
///
/// [`save_checkpoint`](PersistenceBackend::save_checkpoint) and
/// [`save_encoded`](PersistenceBackend::save_encoded) write a checkpoint in one hand-off to
/// the blocking pool: the snapshot (temporary file, fsync, rename), its checksum file (the
/// same, then one fsync of the directory for both renames), then the `latest` pointer (the
/// same, then the directory again). With fsync on that is 5 fsyncs per checkpoint, the least
/// that keeps `latest` from ever naming a checkpoint a power loss could take away. Missing
/// directories are noticed when creating a file fails, not by a `stat` before every write.
///
/// Reading a file that is not a valid snapshot reports [`PersistenceError::Corrupt`] with the
/// file's path and leaves the file untouched.
///
/// # Files on a shared host
///
/// Files are created `0600` and directories `0700` (on Unix; existing ones keep their
/// mode), temporary files exclusively (`O_EXCL`) and without following a symlink at their
/// name. Reads never follow a symlink either and accept only regular files: a snapshot of at
/// most [`DEFAULT_MAX_SNAPSHOT_BYTES`](Self::DEFAULT_MAX_SNAPSHOT_BYTES) (256 MiB,
/// [`with_max_snapshot_bytes`](Self::with_max_snapshot_bytes)), a `latest` pointer or checksum
/// file of at most [`MAX_SMALL_FILE_BYTES`](Self::MAX_SMALL_FILE_BYTES) (4 KiB). Anything else is
/// [`PersistenceError::Corrupt`] naming the file, and the content of a refused pointer is never
/// quoted.
#[derive(Debug, Clone)]
pub struct LocalFileBackend {
    root: PathBuf,
    fsync: bool,
    max_snapshot_bytes: u64,
}

impl Default for LocalFileBackend {
    /// Rooted at `.checkpoints` (relative to the current directory), like the reference.
    fn default() -> Self {
        Self::new(".checkpoints")
    }
}

impl LocalFileBackend {
    /// The directory the reference uses, relative to the current directory.
    pub const DEFAULT_ROOT: &'static str = ".checkpoints";

    /// A backend rooted at `root`, with fsync on. The directory is created on the first write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            fsync: true,
            max_snapshot_bytes: Self::DEFAULT_MAX_SNAPSHOT_BYTES,
        }
    }

    /// The largest snapshot file read by default: 256 MiB.
    pub const DEFAULT_MAX_SNAPSHOT_BYTES: u64 = 256 * 1024 * 1024;

    /// The largest `latest` pointer or checksum file read: 4 KiB.
    pub const MAX_SMALL_FILE_BYTES: u64 = 4096;

    /// Refuses to read snapshot files larger than `bytes` (default
    /// [`DEFAULT_MAX_SNAPSHOT_BYTES`](Self::DEFAULT_MAX_SNAPSHOT_BYTES)).
    pub fn with_max_snapshot_bytes(mut self, bytes: u64) -> Self {
        self.max_snapshot_bytes = bytes;
        self
    }

    /// Turns fsync of written files and their directories on (the default) or off.
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether writes are fsynced.
    pub fn fsync(&self) -> bool {
        self.fsync
    }

    /// The file for `key` (after validating the key).
    pub fn path_for(&self, key: &str) -> Result<PathBuf, PersistenceError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    async fn write(&self, key: &str, bytes: Vec<u8>) -> Result<(), PersistenceError> {
        let path = self.path_for(key)?;
        let root = self.root.clone();
        let fsync = self.fsync;
        blocking(move || write_atomic(&root, &path, &bytes, fsync, fsync)).await
    }

    /// Writes a snapshot's bytes, then its checksum file (one directory fsync covers both).
    async fn write_snapshot(
        &self,
        key: &str,
        bytes: Vec<u8>,
        created_at: &str,
    ) -> Result<(), PersistenceError> {
        let path = self.path_for(key)?;
        let sum_path = self.path_for(&checksum_key(key))?;
        let sum = checksum_record(&bytes, created_at);
        let root = self.root.clone();
        let fsync = self.fsync;
        blocking(move || {
            write_atomic(&root, &path, &bytes, fsync, false)?;
            write_atomic(&root, &sum_path, &sum, fsync, fsync)
        })
        .await
    }

    /// Writes a checkpoint (snapshot, checksum, `latest` pointer) in one blocking hand-off.
    /// The keys must be valid.
    async fn write_checkpoint(
        &self,
        key: &str,
        latest_key: &str,
        json: impl AsRef<[u8]> + Send + 'static,
        created_at: impl AsRef<str> + Send + 'static,
    ) -> Result<(), PersistenceError> {
        let path = self.root.join(key);
        let sum_path = self.root.join(checksum_key(key));
        let latest_path = self.root.join(latest_key);
        let pointer = key.to_owned();
        let root = self.root.clone();
        let fsync = self.fsync;
        blocking(move || {
            let json = json.as_ref();
            let sum = checksum_record(json, created_at.as_ref());
            write_atomic(&root, &path, json, fsync, false)?;
            write_atomic(&root, &sum_path, &sum, fsync, fsync)?;
            write_atomic(&root, &latest_path, pointer.as_bytes(), fsync, fsync)
        })
        .await
    }

    /// Checks `bytes` (the file of `key`, parsed as `snapshot`) against its checksum file.
    async fn verify(
        &self,
        key: &str,
        path: &Path,
        bytes: &[u8],
        snapshot: &MachineSnapshot,
    ) -> Result<(), PersistenceError> {
        let sum_key = checksum_key(key);
        let Some((sum_path, record)) = self.read(&sum_key, Self::MAX_SMALL_FILE_BYTES).await?
        else {
            return Ok(());
        };
        let corrupt = |reason: String| PersistenceError::Corrupt {
            key: key.to_owned(),
            path: Some(path.to_owned()),
            reason,
        };
        let record: serde_json::Value = serde_json::from_slice(&record).map_err(|e| {
            corrupt(format!(
                "its checksum file {} is not valid JSON: {e}",
                sum_path.display()
            ))
        })?;
        if record.get("created_at").and_then(|v| v.as_str()) != Some(snapshot.created_at.as_str()) {
            tracing::warn!(
                checkpoint = %path.display(),
                "checksum file belongs to an earlier version of the snapshot; loading it unchecked"
            );
            return Ok(());
        }
        let stored = record.get("checksum").and_then(|v| v.as_str());
        let length = record.get("length").and_then(|v| v.as_u64());
        let computed = format!("{:08x}", crc32(bytes));
        if record.get("algorithm").and_then(|v| v.as_str()) != Some("crc32")
            || stored.is_none()
            || length.is_none()
        {
            return Err(corrupt(format!(
                "its checksum file {} is not a crc32 record",
                sum_path.display()
            )));
        }
        if stored != Some(computed.as_str()) || length != Some(bytes.len() as u64) {
            return Err(corrupt(format!(
                "checksum mismatch: the file was changed after it was written (stored crc32 {}, {} bytes; found crc32 {computed}, {} bytes; see {})",
                stored.unwrap_or_default(),
                length.unwrap_or_default(),
                bytes.len(),
                sum_path.display()
            )));
        }
        Ok(())
    }

    /// The bytes of `key`'s file, at most `limit` of them (see the type's docs).
    async fn read(
        &self,
        key: &str,
        limit: u64,
    ) -> Result<Option<(PathBuf, Vec<u8>)>, PersistenceError> {
        let path = self.path_for(key)?;
        let key = key.to_owned();
        blocking(move || {
            let bytes = read_regular_file(&key, &path, limit)?;
            Ok(bytes.map(|bytes| (path, bytes)))
        })
        .await
    }
}

#[async_trait]
impl PersistenceBackend for LocalFileBackend {
    async fn save(&self, key: &str, snapshot: &MachineSnapshot) -> Result<(), PersistenceError> {
        validate_key(key)?;
        let bytes = snapshot.to_json_for(key)?;
        self.write_snapshot(key, bytes, &snapshot.created_at).await
    }

    async fn save_checkpoint(
        &self,
        key: &str,
        latest_key: &str,
        snapshot: std::sync::Arc<MachineSnapshot>,
    ) -> Result<(), PersistenceError> {
        validate_key(key)?;
        validate_key(latest_key)?;
        let bytes = snapshot.to_json_for(key)?;
        let created_at = snapshot.created_at.clone();
        self.write_checkpoint(key, latest_key, bytes, created_at)
            .await
    }

    async fn save_encoded(&self, checkpoint: EncodedCheckpoint) -> Result<(), PersistenceError> {
        // The keys of an `EncodedCheckpoint` were validated when its writer was made.
        let created_at = checkpoint.created_at().to_owned();
        self.write_checkpoint(
            checkpoint.key(),
            checkpoint.latest_key(),
            checkpoint.json_shared().clone(),
            created_at,
        )
        .await
    }

    async fn load(&self, key: &str) -> Result<Option<MachineSnapshot>, PersistenceError> {
        let Some((path, bytes)) = self.read(key, self.max_snapshot_bytes).await? else {
            return Ok(None);
        };
        let snapshot = MachineSnapshot::from_json_slice(&bytes).map_err(|error| {
            PersistenceError::Corrupt {
                key: key.to_owned(),
                path: Some(path.clone()),
                reason: format!("not a valid snapshot: {error}"),
            }
        })?;
        self.verify(key, &path, &bytes, &snapshot).await?;
        Ok(Some(snapshot))
    }

    async fn save_text(&self, key: &str, text: &str) -> Result<(), PersistenceError> {
        self.write(key, text.as_bytes().to_vec()).await
    }

    async fn load_text(&self, key: &str) -> Result<Option<String>, PersistenceError> {
        // Texts are `latest` pointers, except when a snapshot is read as text (`copy_executions`).
        let limit = if key.ends_with(".json") {
            self.max_snapshot_bytes
        } else {
            Self::MAX_SMALL_FILE_BYTES
        };
        let Some((path, bytes)) = self.read(key, limit).await? else {
            return Ok(None);
        };
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|error| PersistenceError::Corrupt {
                key: key.to_owned(),
                path: Some(path),
                reason: format!(
                    "not UTF-8 text (invalid byte at offset {})",
                    error.utf8_error().valid_up_to()
                ),
            })
    }

    async fn delete(&self, key: &str) -> Result<(), PersistenceError> {
        let path = self.path_for(key)?;
        // A snapshot's checksum file goes with it (snapshot first; a checksum file left alone
        // by an interrupted delete is never read).
        let sum = if key.ends_with(".json") {
            Some(self.path_for(&checksum_key(key))?)
        } else {
            None
        };
        blocking(move || {
            for path in std::iter::once(path).chain(sum) {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(PersistenceError::Io {
                            op: "delete",
                            path,
                            source,
                        });
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn remove_temporaries(&self, execution_id: &str) -> Result<(), PersistenceError> {
        let dir = self.path_for(execution_id)?;
        blocking(move || remove_temporaries(&dir)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, PersistenceError> {
        // Walk only below the directory part of the prefix.
        let dir_part = match prefix.rfind('/') {
            Some(slash) => &prefix[..slash],
            None => "",
        };
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path_for(dir_part)?
        };
        let base = if dir_part.is_empty() {
            String::new()
        } else {
            format!("{dir_part}/")
        };
        let prefix = prefix.to_owned();
        blocking(move || {
            let mut keys = Vec::new();
            walk(&start, &base, &prefix, &mut keys)?;
            keys.sort();
            Ok(keys)
        })
        .await
    }

    fn file_path(&self, key: &str) -> Option<PathBuf> {
        self.path_for(key).ok()
    }

    async fn execution_ids_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, PersistenceError> {
        // One directory read of the root, then a `latest` check for the page's ids only.
        let root = self.root.clone();
        let after = after.map(str::to_owned);
        blocking(move || {
            let entries = match fs::read_dir(&root) {
                Ok(entries) => entries,
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(source) => {
                    return Err(PersistenceError::Io {
                        op: "list",
                        path: root.clone(),
                        source,
                    });
                }
            };
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|name| {
                    !name.starts_with('.') && after.as_deref().is_none_or(|a| name.as_str() > a)
                })
                .collect();
            names.sort_unstable();
            let mut ids = Vec::new();
            for name in names {
                if ids.len() >= limit {
                    break;
                }
                let latest = root.join(&name).join("latest");
                if fs::symlink_metadata(&latest).is_ok_and(|m| m.is_file()) {
                    ids.push(name);
                }
            }
            Ok(ids)
        })
        .await
    }
}

/// Runs blocking file-system work off the async worker threads.
async fn blocking<T, F>(work: F) -> Result<T, PersistenceError>
where
    F: FnOnce() -> Result<T, PersistenceError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| PersistenceError::Other(Box::new(error)))?
}

/// Collects the keys of regular files below `dir` (whose key prefix is `base`) that start
/// with `prefix`. Dot-files (temporary files), checksum files (part of their snapshot's
/// entry), symlinks and non-UTF-8 names are skipped.
fn walk(
    dir: &Path,
    base: &str,
    prefix: &str,
    keys: &mut Vec<String>,
) -> Result<(), PersistenceError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotADirectory => return Ok(()),
        Err(source) => {
            return Err(PersistenceError::Io {
                op: "list",
                path: dir.to_owned(),
                source,
            });
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| PersistenceError::Io {
            op: "list",
            path: dir.to_owned(),
            source,
        })?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || name.ends_with(".json.crc32") {
            continue;
        }
        let key = format!("{base}{name}");
        // Prune directories that cannot contain a match.
        let could_match = key.starts_with(prefix) || prefix.starts_with(&format!("{key}/"));
        if !could_match {
            continue;
        }
        let file_type = entry.file_type().map_err(|source| PersistenceError::Io {
            op: "list",
            path: entry.path(),
            source,
        })?;
        if file_type.is_dir() {
            walk(&entry.path(), &format!("{key}/"), prefix, keys)?;
        } else if file_type.is_file() && key.starts_with(prefix) {
            keys.push(key);
        }
    }
    Ok(())
}

/// The key of a snapshot's checksum file.
fn checksum_key(key: &str) -> String {
    format!("{key}.crc32")
}

/// The content of a checksum file (see [`LocalFileBackend`]).
fn checksum_record(bytes: &[u8], created_at: &str) -> Vec<u8> {
    let record = serde_json::json!({
        "algorithm": "crc32",
        "checksum": format!("{:08x}", crc32(bytes)),
        "length": bytes.len(),
        "created_at": created_at,
    });
    record.to_string().into_bytes()
}

/// Removes the temporary files (`.<name>.<pid>-<n>.tmp`, and the reference-era `.<name>.tmp`)
/// in `dir`; a missing directory is fine.
fn remove_temporaries(dir: &Path) -> Result<(), PersistenceError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error)
            if matches!(
                error.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(());
        }
        Err(source) => {
            return Err(PersistenceError::Io {
                op: "list",
                path: dir.to_owned(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") {
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => tracing::debug!(path = %path.display(), "removed a stale temporary file"),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(PersistenceError::Io {
                        op: "remove temporary file",
                        path,
                        source,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Numbers the temporary files of this process, so no two writes share one.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically (temporary file + rename), creating directories.
/// `fsync` syncs the file before the rename; `sync_parent` syncs the directory after it.
fn write_atomic(
    root: &Path,
    path: &Path,
    bytes: &[u8],
    fsync: bool,
    sync_parent: bool,
) -> Result<(), PersistenceError> {
    let parent = path.parent().unwrap_or(root);
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let io_error = |op, path: &Path| {
        let path = path.to_owned();
        move |source| PersistenceError::Io { op, path, source }
    };
    let (temp, mut file) = create_temporary(parent, &name, fsync)?;
    let result = (|| {
        file.write_all(bytes).map_err(io_error("write", &temp))?;
        if fsync {
            file.sync_all().map_err(io_error("fsync", &temp))?;
        }
        drop(file);
        fs::rename(&temp, path).map_err(io_error("rename", &temp))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
        return result;
    }
    if sync_parent {
        sync_dir(parent).map_err(io_error("fsync directory", parent))?;
    }
    Ok(())
}

/// Creates a new temporary file `.<name>.<pid>-<n>.tmp` in `parent` (see [`create_private`]);
/// a name left by an earlier process is skipped, not reused.
fn create_temporary(
    parent: &Path,
    name: &str,
    fsync: bool,
) -> Result<(PathBuf, File), PersistenceError> {
    let mut attempts = 0;
    loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = parent.join(format!(".{name}.{}-{n}.tmp", std::process::id()));
        // The directory exists but for the first write of an execution: create it when the
        // file cannot be created, rather than checking before every write.
        let created = match create_private(&temp) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                ensure_dir(parent, fsync)?;
                create_private(&temp)
            }
            other => other,
        };
        match created {
            Ok(file) => return Ok((temp, file)),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists && attempts < 16 => {
                attempts += 1;
            }
            Err(source) => {
                return Err(PersistenceError::Io {
                    op: "create",
                    path: temp,
                    source,
                });
            }
        }
    }
}

/// Creates `dir` (and missing parents); with `fsync`, fsyncs the directories that gained an
/// entry so the new directories survive a crash.
fn ensure_dir(dir: &Path, fsync: bool) -> Result<(), PersistenceError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut current = Some(dir);
    while let Some(path) = current {
        if path.as_os_str().is_empty() || path.is_dir() {
            break;
        }
        missing.push(path.to_owned());
        current = path.parent();
    }
    create_private_dir_all(dir).map_err(|source| PersistenceError::Io {
        op: "create directory",
        path: dir.to_owned(),
        source,
    })?;
    if fsync {
        for created in &missing {
            let parent = match created.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            sync_dir(parent).map_err(|source| PersistenceError::Io {
                op: "fsync directory",
                path: parent.to_owned(),
                source,
            })?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    OpenOptions::new().read(true).open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Directories cannot be opened for fsync on this platform; the rename is still atomic.
    Ok(())
}

/// Creates a new file for writing, readable by its owner only (`0600` on Unix), failing if the
/// name exists (`O_EXCL`, which also refuses a symlink planted at the name).
pub(crate) fn create_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// `create_dir_all`, new directories `0700` on Unix.
pub(crate) fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Opens `path` for reading without following a symlink at its name and without blocking
/// on a FIFO (Unix).
pub(crate) fn open_no_follow(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
        options.custom_flags(flags.bits() as i32);
    }
    options.open(path)
}

/// Whether an open error means the name is a symlink (`ELOOP` from `O_NOFOLLOW`).
fn is_symlink_refusal(error: &io::Error) -> bool {
    #[cfg(unix)]
    {
        error.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
    }
    #[cfg(not(unix))]
    {
        let _ = error;
        false
    }
}

/// The content of the regular file `path` (storing `key`), at most `limit` bytes; `None` when
/// it does not exist. A symlink, a non-regular file or a larger file is
/// [`PersistenceError::Corrupt`] (naming the file, never quoting it).
fn read_regular_file(
    key: &str,
    path: &Path,
    limit: u64,
) -> Result<Option<Vec<u8>>, PersistenceError> {
    use std::io::Read as _;
    let corrupt = |reason: String| PersistenceError::Corrupt {
        key: key.to_owned(),
        path: Some(path.to_owned()),
        reason,
    };
    let io_error = |source| PersistenceError::Io {
        op: "read",
        path: path.to_owned(),
        source,
    };
    let file = match open_no_follow(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) if is_symlink_refusal(&error) => {
            return Err(corrupt(
                "it is a symbolic link, and checkpoint files are never read through links".into(),
            ));
        }
        Err(source) => return Err(io_error(source)),
    };
    let metadata = file.metadata().map_err(io_error)?;
    if !metadata.is_file() {
        return Err(corrupt("it is not a regular file".into()));
    }
    let too_large = |size: String| {
        corrupt(format!(
            "it is {size} bytes, more than the {limit} bytes read from such a file"
        ))
    };
    if metadata.len() > limit {
        return Err(too_large(metadata.len().to_string()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(format!("more than {limit}")));
    }
    Ok(Some(bytes))
}
