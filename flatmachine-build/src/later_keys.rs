//! Keys of later FlatMachines specs that this compiler does not implement.
//!
//! An unknown key is normally a warning ("unknown key `x` is ignored"): most are notes the
//! author left for readers or other tools. But a key that a later spec defines to *change what
//! a run does* cannot be ignored silently: the author expects the behaviour, the run would go
//! on without it. Those are compile errors naming the spec version that defines them; keys a
//! later spec defines only to annotate (or to tune something this runtime does differently)
//! stay warnings, with the version named in the help. `wait_for`, which this compiler
//! implements, is an ordinary key under any `spec_version`.

use crate::diagnostic::Diagnostic;
use crate::loader::{Origin, Project};
use crate::yaml::{NodeKind, PathSeg};

/// One key a later spec defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaterKey {
    /// Where it sits: `data.<key>`, `data.states.*.<key>`, ... (`*` = any name).
    pub path: &'static [&'static str],
    /// The spec version that defines it.
    pub spec_version: &'static str,
    /// What it does there.
    pub what: &'static str,
    /// What to write instead with this compiler.
    pub instead: &'static str,
    /// Whether the key changes what a run does (an error) or only annotates (a warning).
    pub changes_behaviour: bool,
}

/// The later keys this compiler knows about, by path.
pub const LATER_KEYS: &[LaterKey] = &[
    LaterKey {
        path: &["data", "lifecycle_hooks"],
        spec_version: "4.2.1",
        what: "machine lifecycle hooks resolved by name",
        instead: "use `hooks: {class: Name}` (FlatMachines 1.0.0) and register `Name` in the `HooksRegistry`",
        changes_behaviour: true,
    },
    LaterKey {
        path: &["data", "states", "*", "hooks"],
        spec_version: "4.2.1",
        what: "hooks local to one state",
        instead: "use the machine's `hooks: {class: ..}` (every callback receives the state name) or an `action:`",
        changes_behaviour: true,
    },
    LaterKey {
        path: &["data", "persistence", "db_path"],
        spec_version: "4.2.1",
        what: "the SQLite file of `backend: sqlite`",
        instead: "set `settings.backends.sqlite_path`, or `MachineBuilder::checkpoint_dir`",
        changes_behaviour: true,
    },
    LaterKey {
        path: &["data", "settings", "backends", "trigger"],
        spec_version: "4.2.1",
        what: "how a dispatcher is woken when a signal arrives",
        instead: "nothing: dispatchers here find new signals themselves (see docs/signals.md)",
        changes_behaviour: false,
    },
    LaterKey {
        path: &["data", "settings", "backends", "trigger_path"],
        spec_version: "4.2.1",
        what: "the directory of file triggers",
        instead: "nothing: dispatchers here find new signals themselves (see docs/signals.md)",
        changes_behaviour: false,
    },
];

/// The later key at `path` (a path inside a machine config), if it is one.
pub fn later_key(path: &[PathSeg]) -> Option<&'static LaterKey> {
    LATER_KEYS.iter().find(|k| {
        k.path.len() == path.len()
            && k.path.iter().zip(path).all(|(want, seg)| match seg {
                PathSeg::Key(key) => *want == "*" || want == key,
                PathSeg::Index(_) => false,
            })
    })
}

/// Reports every later key in the machine config at `origin`: an error for those that change
/// what a run does, a warning for the others.
pub fn check(project: &mut Project, origin: &Origin) {
    let mut found = Vec::new();
    if let Some(root) = project.node(origin, &[]) {
        for key in LATER_KEYS {
            collect(root, key.path, &mut Vec::new(), key, &mut found);
        }
    }
    for (path, key) in found {
        let span = project.key_span(origin, &path);
        let name = key.path.last().copied().unwrap_or_default();
        let message = if key.changes_behaviour {
            format!(
                "`{name}` ({}) is defined by FlatMachines spec {}, which this compiler does not implement for this key",
                key.what, key.spec_version
            )
        } else {
            format!(
                "`{name}` ({}) is defined by FlatMachines spec {} and is ignored here",
                key.what, key.spec_version
            )
        };
        let diagnostic = if key.changes_behaviour {
            Diagnostic::error(message, Some(span)).with_help(format!(
                "a run would go on as if it were not there; {}",
                key.instead
            ))
        } else {
            Diagnostic::warning(message, Some(span)).with_help(key.instead.to_string())
        };
        project.diagnostics.push(diagnostic);
    }
}

/// Paths below `node` matching `pattern` (relative to it), appended to `at`.
fn collect(
    node: &crate::yaml::Node,
    pattern: &[&str],
    at: &mut Vec<PathSeg>,
    key: &'static LaterKey,
    found: &mut Vec<(Vec<PathSeg>, &'static LaterKey)>,
) {
    let Some((first, rest)) = pattern.split_first() else {
        found.push((at.clone(), key));
        return;
    };
    let NodeKind::Map(entries) = &node.kind else {
        return;
    };
    for (k, v) in entries {
        let Some(name) = crate::yaml::key_text(k) else {
            continue;
        };
        if *first != "*" && *first != name.as_str() {
            continue;
        }
        at.push(PathSeg::Key(name));
        collect(v, rest, at, key, found);
        at.pop();
    }
}
