//! Issue 23: the events of child machines run as other OS processes (`SubprocessInvoker`
//! with the `fm_app` binary) reach the parent's event stream, tagged with the children's
//! execution ids and the parent's, like the events of children run in-process.

use std::collections::BTreeMap;
use std::sync::Arc;

use flatmachine_runtime::cli::SubprocessInvoker;
use flatmachine_runtime::events::{EventKind, RunEvent};
use flatmachine_runtime::hooks::{HooksRegistry, MachineHooks, NoopHooks};
use flatmachine_runtime::process::ChildEnv;
use flatmachine_runtime::{Machine, RunOptions};
use futures::StreamExt;
use serde_json::json;

flatmachine_runtime::flatmachine!("tests/machines/subprocess_parent.yml");

const BIN: &str = env!("CARGO_BIN_EXE_fm_app");

fn parent(dir: &std::path::Path) -> Machine {
    let mut registry = HooksRegistry::new();
    registry.register_instance("RunCounter", Arc::new(NoopHooks) as Arc<dyn MachineHooks>);
    let env = ChildEnv::inherit_all().set("FLATMACHINE_EXAMPLE_DIR", dir);
    Machine::of::<subprocess_parent::Machine>()
        .hooks_registry(registry)
        .invoker(Arc::new(SubprocessInvoker::new(BIN).with_env(env)))
        .checkpoint_dir(dir.join(".parent-checkpoints"))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_children_in_other_processes_reach_the_parent_stream() {
    let dir = tempfile::tempdir().unwrap();
    let machine = parent(dir.path());
    let mut stream = machine.stream(
        json!({"jobs": ["a", "b"]}),
        RunOptions::new().execution_id("sub-root"),
    );
    let mut seen: Vec<RunEvent> = Vec::new();
    while let Some(event) = stream.next().await {
        seen.push(event);
    }
    let result = stream.result().await.unwrap();
    assert_eq!(result.output["solo"], json!({"job": "solo", "done": true}));

    // The children really ran in other processes: four `work` actions, none in this one.
    let pids = std::fs::read_to_string(dir.path().join("work.pids")).unwrap();
    let pids: Vec<u32> = pids.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(pids.len(), 4, "{pids:?}");
    assert!(!pids.contains(&std::process::id()));

    // Four child executions, each with its whole run, tagged with its id and the parent's.
    let mut children: BTreeMap<&str, Vec<&RunEvent>> = BTreeMap::new();
    for e in seen.iter().filter(|e| &*e.execution_id != "sub-root") {
        children.entry(&e.execution_id).or_default().push(e);
    }
    assert_eq!(children.len(), 4, "{:?}", children.keys());
    for (id, events) in &children {
        for e in events {
            assert_eq!(e.parent_execution_id.as_deref(), Some("sub-root"), "{id}");
            assert_eq!(e.machine, "worker");
        }
        let kinds: Vec<&EventKind> = events
            .iter()
            .map(|e| &e.kind)
            .filter(|k| !matches!(k, EventKind::CheckpointSaved { .. }))
            .collect();
        assert_eq!(
            kinds[0],
            &EventKind::MachineStart { resumed: false },
            "{id}"
        );
        assert_eq!(
            kinds[1..5],
            [
                &EventKind::StateEnter {
                    state: "start",
                    step: 1
                },
                &EventKind::StateExit {
                    state: "start",
                    step: 1
                },
                &EventKind::Transition {
                    from: "start",
                    to: "done"
                },
                &EventKind::StateEnter {
                    state: "done",
                    step: 2
                },
            ],
            "{id}"
        );
        match kinds.last().unwrap() {
            EventKind::MachineEnd {
                final_state, steps, ..
            } => {
                assert_eq!(final_state, "done");
                assert_eq!(*steps, 2);
            }
            other => panic!("{id} ended with {other:?}"),
        }
        // The child's checkpoints (written by the child process) are reported too.
        assert!(
            events.iter().any(|e| matches!(
                e.kind,
                EventKind::CheckpointSaved {
                    event: "machine_end",
                    ..
                }
            )),
            "{id}"
        );
    }

    // `machine:` and `foreach` children's events come inside the state that runs them; the
    // launched child's after its `Launched` event.
    let at = |pred: &dyn Fn(&RunEvent) -> bool| seen.iter().position(pred).unwrap();
    let root_enter = |name: &'static str| {
        at(&move |e: &RunEvent| {
            &*e.execution_id == "sub-root"
                && matches!(e.kind, EventKind::StateEnter { state, .. } if state == name)
        })
    };
    let root_exit = |name: &'static str| {
        at(&move |e: &RunEvent| {
            &*e.execution_id == "sub-root"
                && matches!(e.kind, EventKind::StateExit { state, .. } if state == name)
        })
    };
    let first_of = |id: &str| at(&|e: &RunEvent| &*e.execution_id == id);
    let last_of = |id: &str| seen.iter().rposition(|e| &*e.execution_id == id).unwrap();
    let launched = seen
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::Launched {
                child_execution_id,
                machine,
                ..
            } => {
                assert_eq!(*machine, "worker");
                Some(child_execution_id.clone())
            }
            _ => None,
        })
        .expect("a Launched event");
    assert!(children.contains_key(launched.as_str()));
    let launched_at = at(&|e: &RunEvent| matches!(e.kind, EventKind::Launched { .. }));
    assert!(first_of(&launched) > launched_at);
    let inside: Vec<&&str> = children
        .keys()
        .filter(|id| **id != launched.as_str())
        .collect();
    assert_eq!(inside.len(), 3);
    let (start_in, start_out) = (root_enter("start"), root_exit("start"));
    let (fan_in, fan_out) = (root_enter("fan"), root_exit("fan"));
    let mut in_start = 0;
    let mut in_fan = 0;
    for id in inside {
        let (first, last) = (first_of(id), last_of(id));
        if start_in < first && last < start_out {
            in_start += 1;
        } else if fan_in < first && last < fan_out {
            in_fan += 1;
        } else {
            panic!("child {id} ran outside its state: {seen:#?}");
        }
    }
    assert_eq!((in_start, in_fan), (1, 2));
}
