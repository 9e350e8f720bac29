//! The conformance corpus (real FlatMachines configs nobody wrote for this project, found through
//! `FLATMACHINE_CONFORMANCE_DIR`; see `support/conformance.rs`) through `check()`, tier by tier
//! as its README describes. Without the variable these tests print a notice and check nothing;
//! the machines in `tests/machines/` and the UI cases cover the same checks.

use flatmachine_build::loader::AgentUnit;
use flatmachine_build::{Checked, Diagnostic};
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

#[path = "support/conformance.rs"]
mod conformance;

struct Row {
    path: String,
    spec: String,
    refs_resolve: String,
    notes: String,
}

fn manifest(corpus: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(corpus.join("MANIFEST.tsv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    assert_eq!(
        header,
        [
            "path",
            "spec",
            "spec_version",
            "states_count",
            "features_used",
            "refs_resolve",
            "notes"
        ]
    );
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            let col = |i: usize| c.get(i).copied().unwrap_or("").to_string();
            Row {
                path: col(0),
                spec: col(1),
                refs_resolve: col(5),
                notes: col(6),
            }
        })
        .collect()
}

const STRICT: &[&str] = &[
    "distributed_worker/config/echo_processor.yml",
    "distributed_worker/config/job_worker.yml",
    "distributed_worker/config/parallelization_checker.yml",
    "distributed_worker/config/stale_worker_reaper.yml",
    "fixtures-helloworld/machine.yml",
];

const LENIENT: &[&str] = &[
    "character_card/config/machine.yml",
    "dynamic_agent/config/machine.yml",
    "human-in-the-loop/config/machine.yml",
    "mdap/config/machine.yml",
    "writer_critic/config/machine.yml",
    "helloworld/config/machine.yml",
    "parallelism/config/sentiment_machine.yml",
    "peering/config/orchestrator.yml",
    "peering/config/peering_demo.yml",
    "peering/config/worker_node.yml",
    "peering/config/worker_task.yml",
    "research_paper_analysis/config/machine.yml",
    "research_paper_analysis/config/analyzer_machine.yml",
    "research_paper_analysis/config/refiner_machine.yml",
    "multi_paper_synthesizer/config/machine.yml",
    "multi_paper_synthesizer/paper_analyzer/config/machine.yml",
    "multi_paper_synthesizer/paper_analyzer/config/analyzer_machine.yml",
    "multi_paper_synthesizer/paper_analyzer/config/refiner_machine.yml",
    "rlm/config/machine.yml",
    "rlm/config/chunk_processor_machine.yml",
    "story_writer/config/machine.yml",
    "story_writer/config/chapter_machine.yml",
];

const OUTSIDE: &[&str] = &[
    "parallelism/config/main_machine.yml",
    "parallelism/config/foreach_machine.yml",
    "parallelism/config/doc_processor.yml",
    "parallelism/config/legal_review.yml",
    "parallelism/config/technical_review.yml",
    "parallelism/config/financial_review.yml",
    "fixtures-parallelism/main_machine.yml",
    "fixtures-parallelism/foreach_machine.yml",
    "fixtures-parallelism/doc_processor.yml",
    "fixtures-parallelism/legal_review.yml",
    "fixtures-parallelism/technical_review.yml",
    "fixtures-parallelism/financial_review.yml",
    "fixtures-peering/orchestrator.yml",
    "fixtures-peering/worker_node.yml",
    "fixtures-human-in-the-loop/machine.yml",
    "parallelism/config/machine.yml",
    "parallelism/config/notification_machine.yml",
    "parallelism/config/summarizer_machine.yml",
];

const UNRESOLVED: &[&str] = &[
    "coding_agent/config/machine.yml",
    "error_handling/config/machine.yml",
];

/// Non-1.0.0 keys the compiler knows as extensions (the runtime implements them), so they are
/// not warned about although the MANIFEST lists them.
/// `profiles` (a machine's `profiles: ./profiles.yml`, in every upstream example) is accepted and
/// used to find the file.
const ACCEPTED_EXTENSIONS: &[&str] = &["retry_on_empty", "profiles"];

/// `check()` a corpus file, shown by its corpus-relative path; a panic fails naming the file.
fn check_rel(corpus: &Path, rel: &str) -> Checked {
    let path = corpus.join(rel);
    catch_unwind(AssertUnwindSafe(|| {
        flatmachine_build::check(&path, Some(rel.to_string()))
    }))
    .unwrap_or_else(|_| panic!("check() panicked on corpus file {rel}"))
}

fn file_of<'a>(checked: &'a Checked, d: &Diagnostic) -> Option<&'a str> {
    d.span.map(|s| checked.db().file(s.file).display.as_str())
}

/// The `non-1.0.0 fields: a.b.c, d.e` items of a MANIFEST notes cell, as key paths.
fn non_spec_fields(notes: &str) -> Vec<String> {
    notes
        .split(';')
        .filter_map(|item| item.trim().strip_prefix("non-1.0.0 fields:"))
        .flat_map(|list| list.split(','))
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect()
}

#[test]
fn tiers_cover_every_machine_in_the_manifest() {
    let Some(corpus) = conformance::corpus_dir("corpus::tiers_cover_every_machine_in_the_manifest")
    else {
        return;
    };
    let rows = manifest(&corpus);
    let machines: BTreeSet<&str> = rows
        .iter()
        .filter(|r| r.spec == "flatmachine")
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(machines.len(), 47, "the README counts 47 machines");
    let tiers: Vec<&str> = [STRICT, LENIENT, OUTSIDE, UNRESOLVED].concat();
    let listed: BTreeSet<&str> = tiers.iter().copied().collect();
    assert_eq!(listed.len(), tiers.len(), "a file is listed in two tiers");
    assert_eq!(listed, machines);
    // The strict tier is exactly what the README's rule selects.
    let strict: BTreeSet<&str> = rows
        .iter()
        .filter(|r| {
            r.spec == "flatmachine" && r.refs_resolve == "yes" && !r.notes.contains("non-1.0.0")
        })
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(strict, STRICT.iter().copied().collect::<BTreeSet<_>>());
    for rel in UNRESOLVED {
        let row = rows.iter().find(|r| r.path == *rel).unwrap();
        assert_eq!(row.refs_resolve, "no", "{rel}");
    }
}

#[test]
fn strict_tier_has_no_diagnostics() {
    let Some(corpus) = conformance::corpus_dir("corpus::strict_tier_has_no_diagnostics") else {
        return;
    };
    for rel in STRICT {
        let checked = check_rel(&corpus, rel);
        assert!(
            checked.diagnostics.is_empty(),
            "{rel} should check clean:\n{}",
            checked.render(false)
        );
        assert!(checked.irs.iter().all(Option::is_some), "{rel}");
        let compiled = flatmachine_build::compile(
            &corpus.join(rel),
            Some(rel.to_string()),
            &Default::default(),
        )
        .unwrap_or_else(|c| panic!("{rel} should compile:\n{}", c.render(false)));
        syn::parse_file(&compiled.pretty())
            .unwrap_or_else(|e| panic!("generated code for {rel} does not parse: {e}"));
    }
}

#[test]
fn lenient_tier_only_warns_about_unknown_keys() {
    let Some(corpus) =
        conformance::corpus_dir("corpus::lenient_tier_only_warns_about_unknown_keys")
    else {
        return;
    };
    let rows = manifest(&corpus);
    for rel in LENIENT {
        let checked = check_rel(&corpus, rel);
        let rendered = checked.render(false);
        assert!(!checked.has_errors(), "{rel} has errors:\n{rendered}");
        // Reads of fields an agent without an `output` schema never returns (they render
        // empty in the reference too) are warnings, located in the machine.
        for w in checked.diagnostics.warnings() {
            if is_dataflow_warning(w) {
                continue;
            }
            if w.message.starts_with("the output of agent `") {
                assert_eq!(file_of(&checked, w), Some(*rel), "{rel}: {}", w.message);
                continue;
            }
            let key = w
                .message
                .strip_prefix("unknown key `")
                .and_then(|r| r.split('`').next());
            let key = key.unwrap_or_else(|| {
                panic!(
                    "{rel}: warning is not about an unknown key: {}\n{rendered}",
                    w.message
                )
            });
            assert!(!key.is_empty(), "{rel}: {}", w.message);
            let file = file_of(&checked, w)
                .unwrap_or_else(|| panic!("{rel}: unlocated warning {}", w.message));
            let text = &checked.db().file(w.span.unwrap().file).text;
            let at = &text[w.span.unwrap().start..w.span.unwrap().end];
            assert_eq!(
                at, key,
                "{rel}: the warning about `{key}` in {file} points at `{at}`"
            );
        }
        // Every non-1.0.0 field the MANIFEST names for this file is warned about, by name,
        // in this file.
        let row = rows.iter().find(|r| r.path == *rel).unwrap();
        let fields = non_spec_fields(&row.notes);
        assert!(
            !fields.is_empty() || row.notes.contains("non-1.0.0 via"),
            "{rel}: no non-1.0.0 notes"
        );
        for field in fields {
            let key = field.rsplit('.').next().unwrap();
            if ACCEPTED_EXTENSIONS.contains(&key) {
                continue;
            }
            assert!(
                checked.diagnostics.warnings().any(|w| {
                    file_of(&checked, w) == Some(*rel)
                        && w.message == format!("unknown key `{key}` is ignored")
                }),
                "{rel}: no warning names `{field}`:\n{rendered}"
            );
        }
        // And it compiles.
        let compiled = flatmachine_build::compile(
            &corpus.join(rel),
            Some(rel.to_string()),
            &Default::default(),
        );
        assert!(compiled.is_ok(), "{rel} should compile");
    }
}

/// Outside 1.0.0 and unresolved refs: compile, or fail with located errors; never panic.
#[test]
fn outside_and_unresolved_tiers_compile_or_fail_with_located_errors() {
    let Some(corpus) = conformance::corpus_dir(
        "corpus::outside_and_unresolved_tiers_compile_or_fail_with_located_errors",
    ) else {
        return;
    };
    for rel in OUTSIDE.iter().chain(UNRESOLVED) {
        let checked = check_rel(&corpus, rel);
        for e in checked.diagnostics.errors() {
            assert!(
                e.span.is_some(),
                "{rel}: error without a place: {}",
                e.message
            );
        }
        let path = corpus.join(rel);
        let compiled = catch_unwind(AssertUnwindSafe(|| {
            flatmachine_build::compile(&path, Some(rel.to_string()), &Default::default())
        }))
        .unwrap_or_else(|_| panic!("compile() panicked on {rel}"));
        assert_eq!(compiled.is_ok(), !checked.has_errors(), "{rel}");
    }
}

#[test]
fn two_initial_states_is_an_error() {
    let Some(corpus) = conformance::corpus_dir("corpus::two_initial_states_is_an_error") else {
        return;
    };
    let checked = check_rel(&corpus, "fixtures-human-in-the-loop/machine.yml");
    let e = checked
        .diagnostics
        .errors()
        .find(|e| e.message.contains("more than one initial state"))
        .unwrap_or_else(|| panic!("no two-initial error:\n{}", checked.render(false)));
    assert_eq!(
        checked.db().location(e.span.unwrap()),
        "fixtures-human-in-the-loop/machine.yml:17:13"
    );
}

#[test]
fn unresolved_refs_are_missing_file_errors() {
    let Some(corpus) = conformance::corpus_dir("corpus::unresolved_refs_are_missing_file_errors")
    else {
        return;
    };
    // A child machine file that does not exist is always an error.
    let rel = "coding_agent/config/machine.yml";
    let checked = check_rel(&corpus, rel);
    let errors: Vec<&Diagnostic> = checked.diagnostics.errors().collect();
    assert_eq!(errors.len(), 1, "{rel}:\n{}", checked.render(false));
    assert!(
        errors[0].message.contains("file not found")
            && errors[0].message.contains("codebase_explorer/machine.yml"),
        "{rel}: {}",
        errors[0].message
    );
    assert_eq!(
        checked.db().location(errors[0].span.unwrap()),
        "coding_agent/config/machine.yml:45:15"
    );
}

/// `error_handling` names a missing agent file on purpose and routes the failure of the only
/// state that calls it. A file that does not exist is still an error: every run would take the
/// error route.
#[test]
fn a_missing_agent_file_is_an_error_even_when_its_callers_route_errors() {
    let Some(corpus) = conformance::corpus_dir(
        "corpus::a_missing_agent_file_is_an_error_even_when_its_callers_route_errors",
    ) else {
        return;
    };
    let checked = check_rel(&corpus, "error_handling/config/machine.yml");
    let errors: Vec<&Diagnostic> = checked.diagnostics.errors().collect();
    assert_eq!(errors.len(), 1, "{}", checked.render(false));
    let e = errors[0];
    assert!(e.message.contains("nonexistent.yml"), "{}", e.message);
    assert_eq!(
        checked.db().location(e.span.unwrap()),
        "error_handling/config/machine.yml:16:13"
    );
    assert!(
        e.notes
            .iter()
            .any(|n| n.contains("`on_error` does not make")),
        "{:?}",
        e.notes
    );
}

/// Warnings of the context and agent-input checks (`dataflow`): real machines have such
/// mistakes and still run, so the lenient tier may show them.
fn is_dataflow_warning(d: &Diagnostic) -> bool {
    !d.is_error()
        && (d.message.starts_with("agent prompt reads `input.")
            || (d.message.starts_with("`context.") && d.message.contains("nothing in machine"))
            || (d.message.starts_with("`context.") && d.message.contains("is never")))
}

/// Wrap an agent file (by absolute path) in a one-state machine in `dir`.
fn wrapper_machine(dir: &Path, agent: &Path) -> PathBuf {
    let m = dir.join("wrapper.yml");
    std::fs::write(
        &m,
        format!(
            "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  name: wrapper\n  agents:\n    a: {:?}\n  states:\n    start:\n      type: initial\n      agent: a\n      transitions:\n        - to: done\n    done:\n      type: final\n",
            agent.display().to_string()
        ),
    )
    .unwrap();
    m
}

/// Every flatagent file loads through a machine without panicking; agents with no non-1.0.0
/// notes load clean (warnings about unknown keys only where the notes list such fields).
#[test]
fn every_agent_loads_through_a_machine() {
    let Some(corpus) = conformance::corpus_dir("corpus::every_agent_loads_through_a_machine")
    else {
        return;
    };
    let corpus = corpus.canonicalize().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rows = manifest(&corpus);
    let agents: Vec<&Row> = rows.iter().filter(|r| r.spec == "flatagent").collect();
    assert_eq!(agents.len(), 85);
    for row in agents {
        let agent = corpus.join(&row.path);
        let m = wrapper_machine(tmp.path(), &agent);
        let checked = catch_unwind(AssertUnwindSafe(|| flatmachine_build::check(&m, None)))
            .unwrap_or_else(|_| panic!("check() panicked on agent {}", row.path));
        let rendered = checked.render(false);
        let unit = checked.project.root().and_then(|r| r.agents.get("a"));
        let loaded = matches!(
            unit,
            Some(AgentUnit::FlatAgent {
                config: Some(_),
                ..
            })
        );
        if row.notes.contains("non-1.0.0 shape") {
            assert!(
                checked.has_errors(),
                "{}: expected a shape error:\n{rendered}",
                row.path
            );
            for e in checked.diagnostics.errors() {
                assert!(e.span.is_some(), "{}: unlocated {}", row.path, e.message);
            }
        } else {
            assert!(loaded, "{} did not load:\n{rendered}", row.path);
            assert!(!checked.has_errors(), "{}:\n{rendered}", row.path);
            // The wrapper calls the agent with no `input:`: reads of input fields are warned.
            for w in checked
                .diagnostics
                .warnings()
                .filter(|w| !is_dataflow_warning(w))
            {
                assert!(
                    w.message.starts_with("unknown key `") && row.notes.contains("non-1.0.0"),
                    "{}: unexpected warning:\n{rendered}",
                    row.path
                );
            }
        }
    }
}

/// Every flatprofiles file loads: a copy beside a probe agent that asks for a profile that is
/// not there gives exactly the "unknown model profile" error, which is only reported once the
/// profiles file was read and typed.
#[test]
fn every_profiles_file_loads() {
    let Some(corpus) = conformance::corpus_dir("corpus::every_profiles_file_loads") else {
        return;
    };
    let rows = manifest(&corpus);
    let profiles: Vec<&Row> = rows.iter().filter(|r| r.spec == "flatprofiles").collect();
    assert_eq!(profiles.len(), 17);
    for row in profiles {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(corpus.join(&row.path), tmp.path().join("profiles.yml")).unwrap();
        let agent = tmp.path().join("probe.yml");
        std::fs::write(
            &agent,
            "spec: flatagent\nspec_version: \"1.0.0\"\ndata:\n  name: probe\n  model:\n    profile: __probe__\n  system: s\n  user: u\n",
        )
        .unwrap();
        let m = wrapper_machine(tmp.path(), &agent);
        let checked = catch_unwind(AssertUnwindSafe(|| flatmachine_build::check(&m, None)))
            .unwrap_or_else(|_| panic!("check() panicked on profiles {}", row.path));
        let rendered = checked.render(false);
        // The reference falls back to a usable `default`; here an unknown name is always an
        // error (a typo must not send prompts to another model).
        let probe: Vec<&Diagnostic> = checked
            .diagnostics
            .iter()
            .filter(|d| d.message.starts_with("unknown model profile `__probe__`"))
            .collect();
        assert_eq!(probe.len(), 1, "{}:\n{rendered}", row.path);
        assert!(probe[0].is_error(), "{}", row.path);
        let errors: Vec<&Diagnostic> = checked.diagnostics.errors().collect();
        assert_eq!(errors.len(), 1, "{}:\n{rendered}", row.path);
        let expected: Vec<String> = non_spec_fields(&row.notes)
            .iter()
            .map(|f| f.rsplit('.').next().unwrap().to_string())
            .collect();
        for w in checked
            .diagnostics
            .warnings()
            .filter(|w| !w.message.starts_with("unknown model profile `__probe__`"))
        {
            let named = expected
                .iter()
                .any(|k| w.message == format!("unknown key `{k}` is ignored"));
            assert!(named, "{}: unexpected warning:\n{rendered}", row.path);
        }
        for k in &expected {
            assert!(
                checked
                    .diagnostics
                    .warnings()
                    .any(|w| w.message.contains(&format!("`{k}`"))),
                "{}: no warning names `{k}`",
                row.path
            );
        }
    }
}

/// Agent and profiles files given where a machine is expected: a located `spec` error.
#[test]
fn non_machine_files_are_rejected_by_spec() {
    let Some(corpus) = conformance::corpus_dir("corpus::non_machine_files_are_rejected_by_spec")
    else {
        return;
    };
    for row in manifest(&corpus)
        .iter()
        .filter(|r| r.spec == "flatagent" || r.spec == "flatprofiles")
    {
        let checked = check_rel(&corpus, &row.path);
        let errors: Vec<&Diagnostic> = checked.diagnostics.errors().collect();
        assert_eq!(errors.len(), 1, "{}:\n{}", row.path, checked.render(false));
        assert_eq!(
            errors[0].message,
            format!("expected `spec: flatmachine`, found `{}`", row.spec)
        );
        assert!(errors[0].span.is_some());
    }
}
