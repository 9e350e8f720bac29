//! Validation of storage keys and execution ids, shared by the persistence backends and the
//! file lock: a key names a file below a root directory and must never escape it.

use std::path::{Component, Path};

/// A key or execution id that cannot be used as a path below a storage directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key {key:?}: {reason}")]
pub struct InvalidKey {
    /// The rejected key (or execution id).
    pub key: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

/// Checks a storage key: `/`-separated segments, each non-empty, not starting with `.` (this
/// rules out `.` and `..` and keeps names clear of temporary files), no NUL or backslash, not
/// absolute. Example of a valid key: `3f2a…/step_000001_execute.json`.
pub fn validate_key(key: &str) -> Result<(), InvalidKey> {
    let fail = |reason| {
        Err(InvalidKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return fail("the key is empty");
    }
    if key.starts_with('/') {
        return fail("absolute paths are not allowed");
    }
    for segment in key.split('/') {
        if let Err(reason) = check_segment(segment) {
            return fail(reason);
        }
    }
    Ok(())
}

/// The longest execution id accepted, in bytes. An id names a directory and a lock file
/// (`<id>.lock`), and file systems limit a name to 255 bytes; 128 leaves room for that and is
/// far above a UUID (36 bytes).
pub const MAX_EXECUTION_ID_LEN: usize = 128;

/// Checks an execution id used as one path segment (a directory or file name): the rules of
/// [`validate_key`], no `/`, and at most [`MAX_EXECUTION_ID_LEN`] bytes.
pub fn validate_execution_id(execution_id: &str) -> Result<(), InvalidKey> {
    let reason = if execution_id.is_empty() {
        "the execution id is empty"
    } else if execution_id.len() > MAX_EXECUTION_ID_LEN {
        "an execution id must be at most 128 bytes long"
    } else if execution_id.contains('/') {
        "an execution id must not contain `/`"
    } else {
        match check_segment(execution_id) {
            Ok(()) => return Ok(()),
            Err(reason) => reason,
        }
    };
    Err(InvalidKey {
        key: shorten(execution_id),
        reason,
    })
}

/// The id for an error message: long ids are cut (at a character boundary) so a hostile id
/// does not flood the message.
fn shorten(id: &str) -> String {
    if id.len() <= MAX_EXECUTION_ID_LEN {
        return id.to_owned();
    }
    let mut end = MAX_EXECUTION_ID_LEN;
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &id[..end], id.len())
}

fn check_segment(segment: &str) -> Result<(), &'static str> {
    if segment.is_empty() {
        return Err("empty path segments (`//` or a trailing `/`) are not allowed");
    }
    if segment == ".." {
        return Err("`..` segments are not allowed");
    }
    if segment.starts_with('.') {
        return Err("segments must not start with `.`");
    }
    if segment.contains('\0') {
        return Err("NUL bytes are not allowed");
    }
    if segment.contains('\\') {
        return Err("backslashes are not allowed");
    }
    // Belt and braces for platform-specific syntax (drive prefixes on Windows).
    let mut components = Path::new(segment).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(_)), None) => Ok(()),
        _ => Err("the segment is not a plain file name"),
    }
}
