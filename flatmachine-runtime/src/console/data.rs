//! What the console shows, read from a checkpoint store: pages of runs and one run in full.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::inspect::CheckpointRecord;
use crate::persistence::{
    CheckpointStore, MachineSnapshot, PersistenceError, checkpoint_event, parse_snapshot_key,
};
use crate::signals::millis_from_iso;
use crate::trace::{self, GraphTrace, TraceRecord};

/// Most runs one page lists.
pub const MAX_PAGE: usize = 200;
/// Most executions one list request reads while filtering (the page then ends early and its
/// cursor continues the scan).
pub const MAX_SCAN: usize = 2000;
/// Most timeline entries one request returns.
pub const MAX_TIMELINE: usize = 500;
/// Most children listed for a run.
pub const MAX_CHILDREN: usize = 200;
/// Most child ids probed per state visit that starts children.
const MAX_PROBES_PER_STEP: usize = 64;
/// Most child ids probed per run.
const MAX_PROBES: usize = 2000;

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Its newest checkpoint is neither final nor waiting, and no failure is recorded after it.
    Running,
    /// It waits for a signal.
    Waiting,
    /// It finished (`machine_end`).
    Finished,
    /// It ended with an error (a failure trace record newer than its newest checkpoint).
    Failed,
    /// Its newest checkpoint cannot be read.
    Unreadable,
}

impl Status {
    /// The status named `text`.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "running" => Self::Running,
            "waiting" => Self::Waiting,
            "finished" => Self::Finished,
            "failed" => Self::Failed,
            "unreadable" => Self::Unreadable,
            _ => return None,
        })
    }
}

/// One run in a list.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The execution id.
    pub id: String,
    /// The machine's name.
    pub machine: Option<String>,
    /// Where it stands.
    pub status: Status,
    /// The state of its newest checkpoint.
    pub state: Option<String>,
    /// Its step.
    pub step: Option<u64>,
    /// Its event.
    pub event: Option<String>,
    /// When it started (the graph record, else the `machine_start` checkpoint).
    pub started_at: Option<String>,
    /// When its newest checkpoint was written.
    pub updated_at: Option<String>,
    /// Agent calls so far.
    pub api_calls: Option<u64>,
    /// Cost so far.
    pub cost: Option<f64>,
    /// The run that started it.
    pub parent: Option<String>,
    /// The channel it waits on.
    pub waiting_channel: Option<String>,
    /// When its wait gives up.
    pub wait_deadline: Option<String>,
    /// The error of a failed run.
    pub failure: Option<trace::TracedError>,
    /// Why the newest checkpoint cannot be read.
    pub unreadable: Option<String>,
}

/// A page of runs.
#[derive(Debug, Clone, Serialize)]
pub struct RunPage {
    /// The runs, in store order.
    pub runs: Vec<RunSummary>,
    /// The cursor of the next page (`None`: this is the last).
    pub next_cursor: Option<String>,
    /// How many executions were read for this page.
    pub scanned: usize,
}

/// What a list request asks for.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    /// Only runs with this status.
    pub status: Option<Status>,
    /// Only runs whose id, machine or state contains this text (case-insensitive).
    pub search: Option<String>,
    /// Start after this id.
    pub cursor: Option<String>,
    /// Most runs.
    pub limit: usize,
}

/// One page of runs: executions after the cursor, read in batches until the page is full or
/// [`MAX_SCAN`] executions were read.
pub async fn list_runs(
    store: &CheckpointStore,
    query: &RunQuery,
) -> Result<RunPage, PersistenceError> {
    let limit = query.limit.clamp(1, MAX_PAGE);
    let filtering = query.status.is_some() || query.search.is_some();
    let needle = query.search.as_ref().map(|s| s.to_lowercase());
    let mut cursor = query.cursor.clone();
    let mut page = RunPage {
        runs: Vec::new(),
        next_cursor: None,
        scanned: 0,
    };
    loop {
        let batch = if filtering {
            200
        } else {
            limit - page.runs.len()
        };
        let ids = store
            .execution_ids_after(cursor.as_deref(), batch.min(MAX_SCAN - page.scanned))
            .await?;
        let exhausted = ids.len() < batch;
        let summaries = summaries(store, ids.clone()).await;
        for (id, run) in ids.iter().zip(summaries) {
            page.scanned += 1;
            cursor = Some(id.clone());
            let wanted = query.status.is_none_or(|s| s == run.status)
                && needle.as_ref().is_none_or(|n| {
                    run.id.to_lowercase().contains(n)
                        || run
                            .machine
                            .as_ref()
                            .is_some_and(|m| m.to_lowercase().contains(n))
                        || run
                            .state
                            .as_ref()
                            .is_some_and(|s| s.to_lowercase().contains(n))
                });
            if wanted {
                page.runs.push(run);
                if page.runs.len() >= limit {
                    break;
                }
            }
        }
        if page.runs.len() >= limit || page.scanned >= MAX_SCAN {
            page.next_cursor = cursor;
            break;
        }
        if exhausted {
            break;
        }
    }
    // A full page at the very end of the store still offers a (then empty) next page.
    Ok(page)
}

/// The summaries of `ids`, read a few at a time.
async fn summaries(store: &CheckpointStore, ids: Vec<String>) -> Vec<RunSummary> {
    futures::stream::iter(ids.into_iter().map(|id| {
        let store = store.clone();
        async move { summary(&store, &id).await }
    }))
    .buffered(16)
    .collect()
    .await
}

/// The summary of one execution (never fails: what cannot be read is said in the summary).
pub async fn summary(store: &CheckpointStore, id: &str) -> RunSummary {
    let mut run = RunSummary {
        id: id.to_owned(),
        machine: None,
        status: Status::Unreadable,
        state: None,
        step: None,
        event: None,
        started_at: None,
        updated_at: None,
        api_calls: None,
        cost: None,
        parent: None,
        waiting_channel: None,
        wait_deadline: None,
        failure: None,
        unreadable: None,
    };
    let latest = match store.load_latest(id).await {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => {
            run.unreadable = Some("no checkpoint".to_owned());
            return run;
        }
        Err(e) => {
            run.unreadable = Some(e.to_string());
            return run;
        }
    };
    let backend = store.backend();
    let trace_keys = backend
        .list(&format!("{id}/{}/", trace::TRACE_DIR))
        .await
        .unwrap_or_default();
    run.started_at = match trace_keys.iter().any(|k| *k == trace::graph_key(id)) {
        true => backend
            .load_text(&trace::graph_key(id))
            .await
            .ok()
            .flatten()
            .and_then(|text| serde_json::from_str::<GraphTrace>(&text).ok())
            .map(|g| g.started_at),
        false => None,
    };
    if run.started_at.is_none() {
        let first = crate::persistence::snapshot_key(id, 0, checkpoint_event::MACHINE_START);
        run.started_at = backend
            .load(&first)
            .await
            .ok()
            .flatten()
            .map(|s| s.created_at);
    }
    run.status = match latest.event.as_deref() {
        Some(checkpoint_event::MACHINE_END) => Status::Finished,
        Some(checkpoint_event::WAITING) => Status::Waiting,
        _ => Status::Running,
    };
    if run.status == Status::Running
        && let Some(failure) = newest_failure_key(&trace_keys)
        && failure_after(failure, &latest)
        && let Ok(Some(text)) = backend.load_text(failure).await
        && let Ok(TraceRecord::Failure(f)) = serde_json::from_str::<TraceRecord>(&text)
    {
        run.status = Status::Failed;
        run.failure = Some(f.error);
    }
    run.machine = Some(latest.machine_name);
    run.state = Some(latest.current_state);
    run.step = Some(latest.step);
    run.event = latest.event;
    run.updated_at = Some(latest.created_at);
    run.api_calls = latest.total_api_calls;
    run.cost = latest.total_cost;
    run.parent = latest.parent_execution_id;
    run.waiting_channel = latest.waiting_channel;
    run.wait_deadline = latest.wait_deadline;
    run
}

fn newest_failure_key(keys: &[String]) -> Option<&String> {
    keys.iter().filter(|k| k.ends_with("_failure.json")).max()
}

/// Whether the failure record `key` was written at or after the checkpoint `latest`.
fn failure_after(key: &str, latest: &MachineSnapshot) -> bool {
    let Some(name) = key.rsplit('/').next() else {
        return false;
    };
    let mut parts = name.split('_');
    let step: Option<u64> = parts.next().and_then(|s| s.parse().ok());
    let micros: Option<u64> = parts.next().and_then(|s| s.parse().ok());
    match (step, micros, millis_from_iso(&latest.created_at)) {
        (Some(step), Some(micros), Some(ms)) => step >= latest.step && micros / 1000 >= ms,
        (Some(step), _, _) => step >= latest.step,
        _ => false,
    }
}

/// One checkpoint in a run's timeline: what `inspect` records of it (in the JSON, its fields
/// sit beside `index`), with `pending_launches` only where the outbox changed.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    /// Position in the run's checkpoints (0 = first).
    pub index: usize,
    /// The checkpoint.
    #[serde(flatten)]
    pub checkpoint: CheckpointRecord,
}

/// A window of a run's timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    /// Checkpoints the run has.
    pub total: usize,
    /// Index of the first entry returned.
    pub offset: usize,
    /// The entries.
    pub entries: Vec<TimelineEntry>,
}

/// The run's checkpoint keys in run order.
pub async fn ordered_keys(
    store: &CheckpointStore,
    id: &str,
) -> Result<Vec<String>, PersistenceError> {
    let mut keys: Vec<(u64, u8, String)> = store
        .checkpoint_keys(id)
        .await?
        .into_iter()
        .filter_map(|key| {
            let (_, step, event) = parse_snapshot_key(&key)?;
            Some((step, checkpoint_event::rank(event), key))
        })
        .collect();
    keys.sort_unstable();
    Ok(keys.into_iter().map(|(_, _, k)| k).collect())
}

async fn load_many(
    store: &CheckpointStore,
    keys: &[String],
) -> Vec<Result<MachineSnapshot, String>> {
    futures::stream::iter(keys.iter().cloned().map(|key| {
        let backend = store.backend().clone();
        async move {
            match backend.load(&key).await {
                Ok(Some(s)) => Ok(s),
                Ok(None) => Err("deleted while reading".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        }
    }))
    .buffered(16)
    .collect()
    .await
}

/// Entries `offset..offset + limit` of the run's timeline (`offset` `None`: the newest
/// `limit`), each with the changes since the checkpoint before it.
pub async fn timeline(
    store: &CheckpointStore,
    id: &str,
    keys: &[String],
    offset: Option<usize>,
    limit: usize,
) -> Timeline {
    let limit = limit.clamp(1, MAX_TIMELINE);
    let total = keys.len();
    let start = offset
        .unwrap_or_else(|| total.saturating_sub(limit))
        .min(total);
    let end = (start + limit).min(total);
    let from = start.saturating_sub(1);
    let loaded = load_many(store, &keys[from..end]).await;
    let _ = id;
    let mut previous: Option<MachineSnapshot> = None;
    let mut entries = Vec::with_capacity(end - start);
    for (i, (key, snapshot)) in keys[from..end].iter().zip(loaded).enumerate() {
        let index = from + i;
        let (_, step, event) = parse_snapshot_key(key).unwrap_or(("", 0, ""));
        let snapshot = match snapshot {
            Ok(s) => s,
            Err(reason) => {
                if index >= start {
                    entries.push(TimelineEntry {
                        index,
                        checkpoint: CheckpointRecord::unreadable(
                            key.clone(),
                            step,
                            event.to_owned(),
                            reason,
                        ),
                    });
                }
                continue;
            }
        };
        if index >= start {
            let mut checkpoint = CheckpointRecord::of(
                key.clone(),
                step,
                event.to_owned(),
                &snapshot,
                previous.as_ref(),
            );
            let launches_before = previous.as_ref().and_then(|p| p.pending_launches.as_ref());
            if snapshot.pending_launches.as_ref() == launches_before {
                checkpoint.pending_launches.clear();
            }
            entries.push(TimelineEntry { index, checkpoint });
        }
        previous = Some(snapshot);
    }
    Timeline {
        total,
        offset: start,
        entries,
    }
}

/// The states a run went through: one per step, in order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Path {
    /// `(step, state)` of each step's first readable checkpoint.
    pub steps: Vec<(u64, String)>,
    /// Visits per state.
    pub visits: BTreeMap<String, u64>,
    /// Transitions taken: `(from, to, times)`.
    pub edges: Vec<(String, String, u64)>,
}

#[derive(Deserialize)]
struct StateOnly {
    current_state: String,
}

/// Which checkpoints a path was computed from: the execution, how many, the newest.
type PathKey = (String, usize, String);

/// Paths computed lately, by execution and the checkpoint keys they were computed from: the
/// run page and its graph image ask for the same path one after the other.
#[derive(Debug, Default)]
pub struct PathCache {
    entries: std::sync::Mutex<Vec<(PathKey, std::sync::Arc<Path>)>>,
}

impl PathCache {
    const SIZE: usize = 16;

    /// The path of `id` whose ordered checkpoint keys are `keys`, computed or remembered.
    pub async fn path(
        &self,
        store: &CheckpointStore,
        id: &str,
        keys: &[String],
    ) -> std::sync::Arc<Path> {
        let key = (
            id.to_owned(),
            keys.len(),
            keys.last().cloned().unwrap_or_default(),
        );
        if let Some((_, p)) = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(k, _)| *k == key)
        {
            return p.clone();
        }
        let computed = std::sync::Arc::new(path(store, keys).await);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= Self::SIZE {
            entries.remove(0);
        }
        entries.push((key, computed.clone()));
        computed
    }
}

/// The path of a run, from the first checkpoint of each step (only the state is read).
pub async fn path(store: &CheckpointStore, keys: &[String]) -> Path {
    let mut firsts: Vec<&String> = Vec::new();
    let mut last_step = None;
    for key in keys {
        let Some((_, step, event)) = parse_snapshot_key(key) else {
            continue;
        };
        // `machine_start` and `machine_end` name no state of the machine's graph.
        if event == checkpoint_event::MACHINE_START || event == checkpoint_event::MACHINE_END {
            continue;
        }
        if last_step != Some(step) {
            firsts.push(key);
            last_step = Some(step);
        }
    }
    let states: Vec<Option<(u64, String)>> =
        futures::stream::iter(firsts.into_iter().cloned().map(|key| {
            let backend = store.backend().clone();
            async move {
                let (_, step, _) = parse_snapshot_key(&key)?;
                let text = backend.load_text(&key).await.ok()??;
                let state: StateOnly = serde_json::from_str(&text).ok()?;
                Some((step, state.current_state))
            }
        }))
        .buffered(32)
        .collect()
        .await;
    let mut path = Path::default();
    let mut edges: HashMap<(String, String), u64> = HashMap::new();
    let mut order: Vec<(String, String)> = Vec::new();
    for (step, state) in states.into_iter().flatten() {
        *path.visits.entry(state.clone()).or_default() += 1;
        if let Some((_, prev)) = path.steps.last() {
            let edge = (prev.clone(), state.clone());
            let count = edges.entry(edge.clone()).or_default();
            if *count == 0 {
                order.push(edge);
            }
            *count += 1;
        }
        path.steps.push((step, state));
    }
    path.edges = order
        .into_iter()
        .map(|e| {
            let n = edges[&e];
            (e.0, e.1, n)
        })
        .collect();
    path
}

/// A run linked to another: a child it started, or its parent.
#[derive(Debug, Clone, Serialize)]
pub struct Link {
    /// How: `machine` (a `machine:` / `foreach` child), `launch`, or `parent`.
    pub relation: &'static str,
    /// The step of the parent that started it, when known.
    pub step: Option<u64>,
    /// The parent's state that started it, when known.
    pub state: Option<String>,
    /// The linked run.
    pub run: RunSummary,
}

/// The children of run `id`: derived ids probed at each step whose state starts children
/// (child ids are derived from the parent, step, state and position), and the launch outbox.
pub async fn children(
    store: &CheckpointStore,
    id: &str,
    graph: Option<&GraphTrace>,
    path: &Path,
    latest: Option<&MachineSnapshot>,
) -> Vec<Link> {
    let mut found: Vec<(String, &'static str, Option<u64>, Option<String>)> = Vec::new();
    let mut probes = 0;
    if let Some(graph) = graph {
        let starters: HashMap<&str, &trace::GraphState> = graph
            .states
            .iter()
            .filter(|s| s.starts_children)
            .map(|s| (s.name.as_str(), s))
            .collect();
        'steps: for (step, state) in &path.steps {
            let Some(gs) = starters.get(state.as_str()) else {
                continue;
            };
            let launches = gs.kind == "launch";
            for position in 0..MAX_PROBES_PER_STEP {
                if probes >= MAX_PROBES || found.len() >= MAX_CHILDREN {
                    break 'steps;
                }
                probes += 1;
                let (child, relation) = if launches {
                    (
                        crate::engine::launch_id(id, *step, state, position),
                        "launch",
                    )
                } else {
                    (
                        crate::engine::child_id(id, *step, state, position),
                        "machine",
                    )
                };
                match store.latest_checkpoint_key(&child).await {
                    Ok(Some(_)) => found.push((child, relation, Some(*step), Some(state.clone()))),
                    _ => break,
                }
            }
        }
    }
    if let Some(latest) = latest {
        for intent in latest.pending_launches.iter().flatten() {
            if !found.iter().any(|(c, ..)| *c == intent.execution_id) && found.len() < MAX_CHILDREN
            {
                found.push((intent.execution_id.clone(), "launch", None, None));
            }
        }
    }
    let summaries = summaries(store, found.iter().map(|(c, ..)| c.clone()).collect()).await;
    found
        .into_iter()
        .zip(summaries)
        .map(|((_, relation, step, state), run)| Link {
            relation,
            step,
            state,
            run,
        })
        .collect()
}

/// Everything the run page shows.
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    /// The summary.
    pub run: RunSummary,
    /// The machine's graph, when the run wrote one.
    pub graph: Option<GraphTrace>,
    /// The states it went through.
    pub path: Path,
    /// The newest checkpoints (or the window asked for).
    pub timeline: Timeline,
    /// Agent calls, oldest first.
    pub calls: Vec<TraceRecord>,
    /// State errors with their routes, and failures.
    pub errors: Vec<TraceRecord>,
    /// Trace records left out (the oldest beyond the read limit).
    pub trace_omitted: usize,
    /// Trace records that could not be read.
    pub trace_unreadable: Vec<String>,
    /// The runs it started.
    pub children: Vec<Link>,
    /// The run that started it.
    pub parent: Option<Link>,
}

/// The run page of `id`; `None` when the store has no checkpoint of it.
pub async fn run_detail(
    store: &CheckpointStore,
    paths: &PathCache,
    id: &str,
    timeline_limit: usize,
) -> Result<Option<RunDetail>, PersistenceError> {
    let keys = ordered_keys(store, id).await?;
    if keys.is_empty()
        && store
            .latest_checkpoint_key(id)
            .await
            .ok()
            .flatten()
            .is_none()
    {
        return Ok(None);
    }
    let run = summary(store, id).await;
    let latest = store.load_latest(id).await.ok().flatten();
    let traces = trace::load_trace(store, id).await?;
    let path: Path = (*paths.path(store, id, &keys).await).clone();
    let timeline = timeline(store, id, &keys, None, timeline_limit).await;
    let children = children(store, id, traces.graph.as_ref(), &path, latest.as_ref()).await;
    let parent = match &run.parent {
        Some(p) if crate::persistence::validate_execution_id(p).is_ok() => Some(Link {
            relation: "parent",
            step: None,
            state: None,
            run: summary(store, p).await,
        }),
        _ => None,
    };
    let (calls, errors) = traces
        .records
        .into_iter()
        .partition(|r| matches!(r, TraceRecord::AgentCall(_)));
    Ok(Some(RunDetail {
        run,
        graph: traces.graph,
        path,
        timeline,
        calls,
        errors,
        trace_omitted: traces.omitted,
        trace_unreadable: traces.unreadable,
        children,
        parent,
    }))
}

/// A window of the timeline of `id` (for "load earlier").
pub async fn timeline_window(
    store: &CheckpointStore,
    id: &str,
    offset: usize,
    limit: usize,
) -> Result<Timeline, PersistenceError> {
    let keys = ordered_keys(store, id).await?;
    Ok(timeline(store, id, &keys, Some(offset), limit).await)
}

/// What changes when a run moves on: its newest checkpoint and its trace records.
pub async fn version(store: &CheckpointStore, id: &str) -> Result<String, PersistenceError> {
    let latest = store.latest_checkpoint_key(id).await.ok().flatten();
    let traces = store
        .backend()
        .list(&format!("{id}/{}/", trace::TRACE_DIR))
        .await?;
    Ok(format!(
        "{}|{}",
        latest.unwrap_or_default(),
        traces.last().map(String::as_str).unwrap_or_default()
    ))
}
