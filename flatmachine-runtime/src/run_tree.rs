//! Run trees: the executions in a checkpoint store grouped under the run that started them
//! (`parent_execution_id`), each with where it stands and whether anything will resume it.
//!
//! A child run (`machine:`, `foreach:`, `launch:`) is resumed by its parent's resume as long
//! as the parent's newest checkpoint is still inside the state that started it (child ids are
//! derived from the parent's id, step, state and position, so the parent finds them again) or
//! holds it in its launch outbox. A child the parent left behind — a `mode: any` loser, a
//! child cancelled by a `timeout`, the children of a state whose failure `on_error` routed
//! away, children started by a visit the parent has since left — is **abandoned**: nothing
//! will resume it. A child whose parent has no checkpoint in the store is an **orphan**.
//! [`RunTree::load`] works that out for every execution; `inspect --tree` prints it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), flatmachine_runtime::persistence::PersistenceError> {
//! use flatmachine_runtime::persistence::CheckpointStore;
//! use flatmachine_runtime::run_tree::RunTree;
//!
//! let tree = RunTree::load(&CheckpointStore::local(".checkpoints")).await?;
//! print!("{}", tree.render(None));
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::engine::{child_id, launch_id};
use crate::persistence::{CheckpointStore, MachineSnapshot, PersistenceError, checkpoint_event};

/// Every execution of a store, in tree order.
#[derive(Debug, Clone, Serialize)]
pub struct RunTree {
    /// The executions, parents before their children (pre-order; children by id). A run
    /// whose parent is not in the store (an orphan) starts a tree of its own.
    pub runs: Vec<RunNode>,
}

/// One execution in a [`RunTree`].
#[derive(Debug, Clone, Serialize)]
pub struct RunNode {
    /// The execution id.
    pub execution_id: String,
    /// The execution that started it, as its checkpoints record.
    pub parent_execution_id: Option<String>,
    /// Depth in the tree (0 for a root).
    pub depth: usize,
    /// The machine its newest checkpoint names (`None` when it cannot be read).
    pub machine_name: Option<String>,
    /// The step of its newest checkpoint.
    pub step: Option<u64>,
    /// The event of its newest checkpoint.
    pub event: Option<String>,
    /// The state of its newest checkpoint.
    pub state: Option<String>,
    /// Why its newest checkpoint cannot be read, when it cannot.
    pub unreadable: Option<String>,
    /// What will become of it.
    pub fate: Fate,
}

/// Whether anything will resume an execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fate {
    /// It finished (`machine_end`): nothing to resume.
    Finished,
    /// A run started on its own that has not finished: resuming it continues it.
    ResumeIt,
    /// Resuming its parent resumes it: the parent's newest checkpoint is inside the state
    /// that started it, or lists it in the launch outbox.
    WithParent,
    /// Its parent left it behind: nothing will resume it (resume it by hand to finish it).
    Abandoned {
        /// Where the parent stands (`finished`, or `step N <event> <state>`).
        parent: String,
    },
    /// Its parent has no checkpoint in this store: nothing will resume it.
    Orphan,
    /// Its own or its parent's newest checkpoint cannot be read.
    Unknown,
}

/// What the store says about one execution.
struct Seen {
    snapshot: Result<MachineSnapshot, String>,
}

impl RunTree {
    /// Reads the newest checkpoint of every execution in `store` (those with a `latest`
    /// pointer) and builds the trees. Fails only when the store cannot be listed.
    pub async fn load(store: &CheckpointStore) -> Result<Self, PersistenceError> {
        let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
        for id in store.execution_ids().await? {
            let snapshot = match store.load_latest(&id).await {
                Ok(Some(s)) => Ok(s),
                Ok(None) => Err("no checkpoint".to_owned()),
                Err(e) => Err(e.to_string()),
            };
            seen.insert(id, Seen { snapshot });
        }
        Ok(Self::build(&seen))
    }

    fn build(seen: &BTreeMap<String, Seen>) -> Self {
        let parent_of = |id: &str| -> Option<&str> {
            seen.get(id)?
                .snapshot
                .as_ref()
                .ok()?
                .parent_execution_id
                .as_deref()
        };
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        for id in seen.keys() {
            if let Some(parent) = parent_of(id) {
                children.entry(parent).or_default().push(id);
            }
        }
        let fates: HashMap<&str, Fate> = seen
            .iter()
            .map(|(id, s)| {
                let siblings = parent_of(id)
                    .and_then(|p| children.get(p))
                    .map_or(0, Vec::len);
                (id.as_str(), fate(id, s, seen, siblings))
            })
            .collect();
        // Roots: runs without a parent, and runs whose parent is not in the store.
        let mut roots: Vec<&str> = seen
            .keys()
            .map(String::as_str)
            .filter(|id| parent_of(id).is_none_or(|p| !seen.contains_key(p)))
            .collect();
        let mut runs = Vec::with_capacity(seen.len());
        let mut placed: HashSet<&str> = HashSet::new();
        // Iterative pre-order walk (a hostile store may chain parents deeply), then whatever
        // a parent cycle kept out of reach, as roots of their own.
        let mut leftovers = seen.keys().map(String::as_str);
        loop {
            let mut stack: Vec<(&str, usize)> = roots.drain(..).rev().map(|r| (r, 0)).collect();
            while let Some((id, depth)) = stack.pop() {
                if !placed.insert(id) {
                    continue;
                }
                runs.push(node(id, depth, &seen[id], fates[id].clone()));
                if let Some(kids) = children.get(id) {
                    stack.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
                }
            }
            match leftovers.find(|id| !placed.contains(id)) {
                Some(id) => roots.push(id),
                None => break,
            }
        }
        Self { runs }
    }

    /// The runs of the tree that holds `execution_id` below it: the execution and everything
    /// it started, directly or not (`None` when the store does not have it).
    pub fn subtree(&self, execution_id: &str) -> Option<RunTree> {
        let start = self
            .runs
            .iter()
            .position(|r| r.execution_id == execution_id)?;
        let depth = self.runs[start].depth;
        let mut runs = vec![self.runs[start].clone()];
        runs.extend(
            self.runs[start + 1..]
                .iter()
                .take_while(|r| r.depth > depth)
                .cloned(),
        );
        for r in &mut runs {
            r.depth -= depth;
        }
        Some(RunTree { runs })
    }

    /// The trees as indented text, one run per line: id, machine, where it stands and what
    /// will become of it. `program` names the command that resumes runs (default `app`).
    pub fn render(&self, program: Option<&str>) -> String {
        let program = program.unwrap_or("app");
        let mut out = String::new();
        for run in &self.runs {
            let indent = "  ".repeat(run.depth);
            let branch = if run.depth > 0 { "└ " } else { "" };
            let machine = run.machine_name.as_deref().map_or("?".into(), printable);
            let standing = match (&run.unreadable, run.event.as_deref()) {
                (Some(reason), _) => format!("unreadable: {}", printable(reason)),
                (None, Some(checkpoint_event::MACHINE_END)) => {
                    format!("finished (step {})", run.step.unwrap_or(0))
                }
                (None, event) => format!(
                    "step {} {} {}",
                    run.step.unwrap_or(0),
                    printable(event.unwrap_or("?")),
                    printable(run.state.as_deref().unwrap_or("?"))
                ),
            };
            let fate = match &run.fate {
                Fate::Finished => String::new(),
                Fate::ResumeIt => {
                    format!(" — `{program} resume {}` continues it", run.execution_id)
                }
                Fate::WithParent => " — resumed with its parent".to_owned(),
                Fate::Abandoned { parent } => format!(
                    " — abandoned: its parent {}; nothing will resume it (`{program} resume {}` finishes it by hand)",
                    if parent == "finished" {
                        "finished without it".to_owned()
                    } else {
                        format!("is {}, past the state that started it", printable(parent))
                    },
                    run.execution_id
                ),
                Fate::Orphan => format!(
                    " — orphan: its parent {} has no checkpoint here; nothing will resume it",
                    printable(run.parent_execution_id.as_deref().unwrap_or("?"))
                ),
                Fate::Unknown => " — cannot tell (a checkpoint is unreadable)".to_owned(),
            };
            let _ = writeln!(
                out,
                "{indent}{branch}{}  {machine}  {standing}{fate}",
                run.execution_id
            );
        }
        out
    }
}

fn node(id: &str, depth: usize, seen: &Seen, fate: Fate) -> RunNode {
    let snap = seen.snapshot.as_ref().ok();
    RunNode {
        execution_id: id.to_owned(),
        parent_execution_id: snap.and_then(|s| s.parent_execution_id.clone()),
        depth,
        machine_name: snap.map(|s| s.machine_name.clone()),
        step: snap.map(|s| s.step),
        event: snap.and_then(|s| s.event.clone()),
        state: snap.map(|s| s.current_state.clone()),
        unreadable: seen.snapshot.as_ref().err().cloned(),
        fate,
    }
}

/// What will become of execution `id` (`siblings`: how many runs name the same parent).
fn fate(id: &str, seen: &Seen, all: &BTreeMap<String, Seen>, siblings: usize) -> Fate {
    let Ok(snap) = &seen.snapshot else {
        return Fate::Unknown;
    };
    if snap.event.as_deref() == Some(checkpoint_event::MACHINE_END) {
        return Fate::Finished;
    }
    let Some(parent_id) = &snap.parent_execution_id else {
        return Fate::ResumeIt;
    };
    let Some(parent) = all.get(parent_id) else {
        return Fate::Orphan;
    };
    let Ok(parent) = &parent.snapshot else {
        return Fate::Unknown;
    };
    // Launches: the outbox (kept by every later checkpoint until the child finished).
    if parent
        .pending_launches
        .as_ref()
        .is_some_and(|p| p.iter().any(|l| l.execution_id == id))
    {
        return Fate::WithParent;
    }
    let parent_event = parent.event.as_deref().unwrap_or(checkpoint_event::UNKNOWN);
    let inside_state = matches!(
        parent_event,
        checkpoint_event::STATE_ENTER | checkpoint_event::EXECUTE
    );
    // `machine:` / `foreach:` children (and launches not recorded yet) of the state the
    // parent's resume runs again: their ids derive from that visit. Positions run from 0,
    // and only started children have checkpoints, so the siblings bound them.
    if inside_state
        && (0..siblings.max(1)).any(|position| {
            child_id(parent_id, parent.step, &parent.current_state, position) == id
                || launch_id(parent_id, parent.step, &parent.current_state, position) == id
        })
    {
        return Fate::WithParent;
    }
    Fate::Abandoned {
        parent: if parent_event == checkpoint_event::MACHINE_END {
            "finished".to_owned()
        } else {
            format!(
                "at step {} {parent_event} {}",
                parent.step, parent.current_state
            )
        },
    }
}

/// `text` with control characters escaped (checkpoints are untrusted input).
fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Why [`report`] printed nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunTreeError {
    /// The store could not be read.
    #[error(transparent)]
    Persistence(#[from] PersistenceError),
    /// The execution has no checkpoint in the store.
    #[error("execution `{0}` has no checkpoints")]
    NotFound(String),
    /// The report could not be written as JSON.
    #[error("cannot write the run tree as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// What `inspect --tree` prints: the tree below `execution_id` (or every tree), as text or
/// as pretty JSON (`{"runs": [...]}`, pre-order, each run with its `depth` and `fate`).
pub async fn report(
    store: &CheckpointStore,
    execution_id: Option<&str>,
    json: bool,
) -> Result<String, RunTreeError> {
    let tree = RunTree::load(store).await?;
    let tree = match execution_id {
        Some(id) => tree
            .subtree(id)
            .ok_or_else(|| RunTreeError::NotFound(id.to_owned()))?,
        None => tree,
    };
    if json {
        let mut text = serde_json::to_string_pretty(&tree)?;
        text.push('\n');
        return Ok(text);
    }
    Ok(tree.render(None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Context;
    use crate::persistence::LaunchIntent;

    fn snap(id: &str, parent: Option<&str>, step: u64, event: &str, state: &str) -> Seen {
        let mut s = MachineSnapshot::new(id, "m", "1.0.0", state, Context::new(), step);
        s.event = Some(event.to_owned());
        s.parent_execution_id = parent.map(str::to_owned);
        Seen { snapshot: Ok(s) }
    }

    #[test]
    fn fates_follow_the_parents_checkpoint() {
        let live = child_id("p", 3, "fan", 1);
        let left = child_id("p", 2, "fan", 0);
        let launched = "launched-1";
        let mut seen = BTreeMap::new();
        let mut parent = snap("p", None, 3, "execute", "fan");
        if let Ok(s) = &mut parent.snapshot {
            s.pending_launches = Some(vec![LaunchIntent::new(launched, "w", Context::new())]);
        }
        seen.insert("p".to_owned(), parent);
        seen.insert(live.clone(), snap(&live, Some("p"), 2, "execute", "work"));
        seen.insert(
            left.clone(),
            snap(&left, Some("p"), 1, "state_enter", "work"),
        );
        seen.insert(
            launched.to_owned(),
            snap(launched, Some("p"), 1, "execute", "work"),
        );
        seen.insert(
            "done".to_owned(),
            snap("done", Some("p"), 2, "machine_end", "end"),
        );
        seen.insert(
            "lost".to_owned(),
            snap("lost", Some("gone"), 1, "execute", "x"),
        );
        // A parent cycle is still listed.
        seen.insert("c1".to_owned(), snap("c1", Some("c2"), 1, "execute", "x"));
        seen.insert("c2".to_owned(), snap("c2", Some("c1"), 1, "execute", "x"));
        let tree = RunTree::build(&seen);
        let fate_of = |id: &str| {
            tree.runs
                .iter()
                .find(|r| r.execution_id == id)
                .map(|r| r.fate.clone())
                .unwrap()
        };
        assert_eq!(fate_of("p"), Fate::ResumeIt);
        assert_eq!(fate_of(&live), Fate::WithParent);
        assert_eq!(fate_of(launched), Fate::WithParent);
        assert_eq!(fate_of("done"), Fate::Finished);
        assert_eq!(
            fate_of(&left),
            Fate::Abandoned {
                parent: "at step 3 execute fan".into()
            }
        );
        assert_eq!(fate_of("lost"), Fate::Orphan);
        assert_eq!(tree.runs.len(), 8);
        // Roots in id order, then the cycle, entered at its smallest id.
        let order: Vec<(&str, usize)> = tree
            .runs
            .iter()
            .map(|r| (r.execution_id.as_str(), r.depth))
            .filter(|(id, _)| ["lost", "p", "c1", "c2"].contains(id))
            .collect();
        assert_eq!(order, [("lost", 0), ("p", 0), ("c1", 0), ("c2", 1)]);
        let text = tree.render(Some("fm"));
        assert!(
            text.contains(&format!("└ {left}  m  step 1 state_enter work — abandoned")),
            "{text}"
        );
        assert!(text.contains("`fm resume p` continues it"), "{text}");
        let sub = tree.subtree("p").unwrap();
        assert_eq!(sub.runs.len(), 5);
        assert!(sub.runs.iter().skip(1).all(|r| r.depth == 1));
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("plain"), "plain");
    }
}
