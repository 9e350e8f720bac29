//! Robustness: the compiler never panics, whatever the YAML.
//!
//! A deterministic mutator (seeded xorshift) takes every YAML file of this repository's machine
//! folders (examples, test fixtures, UI cases), and of the conformance corpus when
//! `FLATMACHINE_CONFORMANCE_DIR` names it, and produces truncations, byte deletions/insertions/duplications, line swaps, indentation
//! changes and scalars replaced by other YAML tokens (`[`, `{`, `&a`, `*a`, `!!binary`, `~`,
//! `.nan`, very long strings, deep nesting, template and expression junk, ...). The corpus is
//! copied to a temporary directory once per test; each case overwrites one file in place, runs
//! `check` (and `compile`, rendering and graphs when there are no errors) on a machine that reads
//! that file, and restores it. Any panic is caught, minimised and reported with its input and
//! where it panicked. Generated code must also parse as Rust.
//!
//! The four families run as four tests (in parallel), each with a floor on its cases per seed
//! file (asserted): over 5,000 cases from the repository alone, over 15,000 with the corpus. `FLATMACHINE_FUZZ_ROUNDS=n` runs n
//! rounds with fresh seeds; `FLATMACHINE_FUZZ_TIMING=1` prints the cost per file.

use flatmachine_build::CodegenOptions;
use flatmachine_build::graph::{GraphFormat, render};
use std::cell::RefCell;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Instant;

// ---- deterministic randomness -----------------------------------------------------------------

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn seed_of(name: &str, family: u64) -> u64 {
    // FNV-1a of the file name, mixed with the family, so each file has its own stream.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ family.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

// ---- the seed files, copied ------------------------------------------------------------------

// Shared with the other test binaries; this one uses only part of it.
#[allow(dead_code)]
#[path = "support/conformance.rs"]
mod conformance;

/// Folders of this repository whose YAML files seed the mutations (copied with their layout, so
/// relative references resolve). Broken machines are good seeds too.
const REPO_SEEDS: &[&str] = &[
    "examples/machines",
    "tests/machines",
    "tests/ui/machines",
    "flatmachine-build/tests/machines",
];

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let mut entries: Vec<_> = std::fs::read_dir(from)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// One seed YAML file in the working copy.
struct Target {
    /// Path relative to the working copy (`repo/...` or `corpus/...`).
    rel: String,
    /// Its original bytes.
    original: Vec<u8>,
    /// The machine (relative path) to check when this file is mutated: the file itself for
    /// machines; for agents and profiles, a one-state machine written beside the file that loads
    /// it (cheaper than a corpus machine that loads a dozen other files); otherwise the file.
    root: String,
}

struct Workspace {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    targets: Vec<Target>,
}

impl Workspace {
    /// The repository's own YAML files, plus the conformance corpus when
    /// `FLATMACHINE_CONFORMANCE_DIR` names it.
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        for seed in REPO_SEEDS {
            copy_dir(&repository_root().join(seed), &dir.join("repo").join(seed));
        }
        if let Some(corpus) = conformance::corpus_dir_or(
            "the robustness tests mutate only the repository's own machine files",
        ) {
            copy_dir(&corpus, &dir.join("corpus"));
        }
        let mut files = Vec::new();
        yaml_files(&dir, &dir, &mut files);
        files.sort();
        let targets = files
            .into_iter()
            .map(|rel| {
                let original = std::fs::read(dir.join(&rel)).unwrap();
                let root = match spec_of(&original).as_deref() {
                    Some("flatmachine") => rel.clone(),
                    Some("flatagent") => wrap_agent(&dir, &rel),
                    Some("flatprofiles") => wrap_profiles(&dir, &rel, &original),
                    _ => rel.clone(),
                };
                Target {
                    rel,
                    original,
                    root,
                }
            })
            .collect();
        Workspace {
            _tmp: tmp,
            dir,
            targets,
        }
    }
}

/// Every `*.yml` file under `dir`, relative to `base`.
fn yaml_files(base: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(base, &path, out);
        } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            let rel = path.strip_prefix(base).unwrap();
            out.push(rel.to_str().unwrap().to_string());
        }
    }
}

/// The value of a top-level `spec:` line (`flatmachine`, `flatagent`, `flatprofiles`).
fn spec_of(text: &[u8]) -> Option<String> {
    String::from_utf8_lossy(text).lines().find_map(|l| {
        l.strip_prefix("spec:")
            .map(|v| v.trim().trim_matches('"').to_string())
    })
}

/// A machine beside an agent file that uses it; returns its corpus-relative path.
fn wrap_agent(dir: &Path, rel: &str) -> String {
    let file = Path::new(rel).file_name().unwrap().to_str().unwrap();
    let wrapper = Path::new(rel).with_file_name(format!("__wrapper_machine__{file}"));
    std::fs::write(
        dir.join(&wrapper),
        format!(
            "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  name: wrapper\n  agents:\n    a: ./{file}\n  states:\n    start:\n      type: initial\n      agent: a\n      transitions:\n        - to: done\n    done:\n      type: final\n"
        ),
    )
    .unwrap();
    wrapper.to_str().unwrap().to_string()
}

/// An agent that names the first profile of a profiles file (so it is discovered and loaded)
/// and a machine that uses the agent, both beside it; returns the machine's path.
fn wrap_profiles(dir: &Path, rel: &str, original: &[u8]) -> String {
    let text = String::from_utf8_lossy(original);
    let mut profile = "__probe__".to_string();
    let mut in_profiles = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let body = line.trim();
        if body.starts_with('#') || body.is_empty() {
            continue;
        }
        match in_profiles {
            None if body == "model_profiles:" => in_profiles = Some(indent),
            Some(base) if indent > base && body.ends_with(':') => {
                profile = body.trim_end_matches(':').trim_matches('"').to_string();
                break;
            }
            _ => {}
        }
    }
    let agent = Path::new(rel).with_file_name("__probe_agent__.yml");
    std::fs::write(
        dir.join(&agent),
        format!(
            "spec: flatagent\nspec_version: \"1.0.0\"\ndata:\n  name: probe\n  model:\n    profile: {profile:?}\n  system: s\n  user: u\n"
        ),
    )
    .unwrap();
    wrap_agent(dir, agent.to_str().unwrap())
}

// ---- running one case -------------------------------------------------------------------------

thread_local! {
    static IN_CASE: RefCell<bool> = const { RefCell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A panic hook that records (message, file:line) while a case runs, and stays quiet; outside
/// cases it defers to the default hook.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_CASE.with(|c| *c.borrow()) {
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "<non-string panic>".into());
                let at = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                    .unwrap_or_default();
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{msg} (at {at})")));
            } else {
                default(info);
            }
        }));
    });
}

/// Run `f`, turning a panic into `Some("message (at file:line:col)")`.
fn guarded(f: impl FnOnce() -> Option<String>) -> Option<String> {
    install_hook();
    IN_CASE.with(|c| *c.borrow_mut() = true);
    let outcome = catch_unwind(AssertUnwindSafe(f));
    IN_CASE.with(|c| *c.borrow_mut() = false);
    match outcome {
        Ok(problem) => problem,
        Err(_) => Some(
            LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| "panic".into()),
        ),
    }
}

/// What went wrong in a case: a panic (message and place) or generated code that is not Rust.
///
/// Parsing the generated code with syn costs a third of a case, so it is done only when the
/// names and conditions that become identifiers and expressions (the signature) are new for
/// this target; other inputs differ only in literals, which `quote` escapes.
fn run_case(ws: &Workspace, t: &Target, bytes: &[u8], parsed: &mut HashSet<u64>) -> Option<String> {
    let path = ws.dir.join(&t.rel);
    std::fs::write(&path, bytes).unwrap();
    let root = ws.dir.join(&t.root);
    let outcome = guarded(|| {
        // `compile` runs the whole of `check` first, so this exercises both entry points.
        let opts = CodegenOptions {
            track_files_read: true,
            warnings_as_deprecations: true,
            ..Default::default()
        };
        let result = flatmachine_build::compile(&root, Some(t.root.clone()), &opts);
        let checked = match &result {
            Ok(compiled) => &compiled.checked,
            Err(checked) => &**checked,
        };
        let _ = checked.render(false);
        let _ = checked.render(true);
        for d in checked.diagnostics.iter() {
            let _ = d.location(checked.db());
        }
        match &result {
            Ok(compiled) => {
                for ir in checked.irs.iter().flatten() {
                    let _ = render(ir, GraphFormat::Dot);
                    let _ = render(ir, GraphFormat::Mermaid);
                }
                if !parsed.insert(signature(&checked.irs)) {
                    return None;
                }
                match syn::parse2::<syn::File>(compiled.tokens.clone()) {
                    Ok(_) => None,
                    Err(e) => Some(format!("generated code does not parse as Rust: {e}")),
                }
            }
            Err(c) => (!c.has_errors()).then(|| "compile() failed without an error".to_string()),
        }
    });
    std::fs::write(&path, &t.original).unwrap();
    outcome
}

/// What of the IR becomes identifiers or Rust expressions in generated code.
fn signature(irs: &[Option<flatmachine_build::ir::MachineIr>]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for ir in irs.iter().flatten() {
        (&ir.module, &ir.name, &ir.actions, &ir.children).hash(&mut h);
        format!("{:?}", ir.agents).hash(&mut h);
        (ir.engine == flatmachine_build::model::ExpressionEngine::Cel).hash(&mut h);
        for st in &ir.states {
            (&st.name, &st.variant).hash(&mut h);
            for tr in &st.transitions {
                tr.condition.as_ref().map(|(src, _)| src).hash(&mut h);
            }
        }
    }
    h.finish()
}

/// Shrink a failing input while the same problem (same message and place) reproduces: drop
/// lines, then single bytes.
fn minimise(ws: &Workspace, t: &Target, input: &[u8], problem: &str) -> Vec<u8> {
    let reproduces = |b: &[u8]| run_case(ws, t, b, &mut HashSet::new()).as_deref() == Some(problem);
    let mut cur = input.to_vec();
    let mut budget = 3000;
    // Lines.
    let mut i = 0;
    loop {
        let lines: Vec<&[u8]> = cur.split_inclusive(|&b| b == b'\n').collect();
        if i >= lines.len() || budget == 0 {
            break;
        }
        let candidate: Vec<u8> = lines
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, l)| l.iter().copied())
            .collect();
        budget -= 1;
        if reproduces(&candidate) {
            cur = candidate;
        } else {
            i += 1;
        }
    }
    // Bytes.
    let mut i = 0;
    while i < cur.len() && budget > 0 {
        let mut candidate = cur.clone();
        candidate.remove(i);
        budget -= 1;
        if reproduces(&candidate) {
            cur = candidate;
        } else {
            i += 1;
        }
    }
    cur
}

/// Run every case a family generates over every seed file; fail with a report (minimised input,
/// panic place) if anything panicked. Returns the number of cases and of seed files.
fn run_family(family: u64, name: &str, generate: Family) -> (usize, usize) {
    install_hook();
    // Run on a thread with the stack rustc gives proc macros and cargo gives build scripts.
    let name = name.to_string();
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            let start = Instant::now();
            let ws = Workspace::new();
            let mut cases = 0;
            let mut failures: Vec<(String, String, String, Vec<u8>)> = Vec::new();
            let rounds: u64 = std::env::var("FLATMACHINE_FUZZ_ROUNDS")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(1);
            for (round, t) in (0..rounds).flat_map(|r| ws.targets.iter().map(move |t| (r, t))) {
                let mut rng = Rng::new(seed_of(&t.rel, family + 100 * round));
                let t0 = Instant::now();
                let mut k = 0;
                let mut parsed = HashSet::new();
                for (what, bytes) in generate(&mut rng, &t.original) {
                    k += 1;
                    cases += 1;
                    if let Some(problem) = run_case(&ws, t, &bytes, &mut parsed) {
                        failures.push((t.rel.clone(), what, problem, bytes));
                    }
                }
                if std::env::var_os("FLATMACHINE_FUZZ_TIMING").is_some() {
                    let per_case = t0.elapsed().as_secs_f64() * 1000.0 / k.max(1) as f64;
                    println!("{per_case:>8.2} ms/case  {} (through {})", t.rel, t.root);
                }
            }
            println!(
                "robustness/{name}: {cases} cases over {} files in {:.1?}",
                ws.targets.len(),
                start.elapsed()
            );
            if !failures.is_empty() {
                let mut report = format!("{} of {cases} cases failed\n", failures.len());
                let mut seen = std::collections::BTreeSet::new();
                for (rel, what, problem, bytes) in &failures {
                    if !seen.insert(problem.clone()) || seen.len() > 5 {
                        continue;
                    }
                    let t = ws.targets.iter().find(|t| &t.rel == rel).unwrap();
                    let min = minimise(&ws, t, bytes, problem);
                    report.push_str(&format!(
                        "\n--- {rel} ({what}), checked through {}\n{problem}\nminimal input \
                         ({} bytes):\n{}\n",
                        t.root,
                        min.len(),
                        String::from_utf8_lossy(&min)
                    ));
                }
                panic!("{report}");
            }
            (cases, ws.targets.len())
        })
        .unwrap()
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A mutation family: the described mutants of one file.
type Mutants = Vec<(String, Vec<u8>)>;
type Family = fn(&mut Rng, &[u8]) -> Mutants;

// ---- mutation families ------------------------------------------------------------------------

/// Truncations every N bytes (12 or 13 per file, from the empty file on).
fn truncations(_rng: &mut Rng, src: &[u8]) -> Mutants {
    let step = (src.len() / 12).max(1);
    (0..src.len())
        .step_by(step)
        .map(|at| (format!("truncated at byte {at}"), src[..at].to_vec()))
        .collect()
}

const INSERT_BYTES: &[u8] = b":-[]{}#&*!|>%@`\"'?,\n\t \\\x00\xff\xc3";

/// Byte deletions, insertions and duplicated ranges.
fn byte_edits(rng: &mut Rng, src: &[u8]) -> Mutants {
    let mut out = Vec::new();
    if src.is_empty() {
        return out;
    }
    for _ in 0..7 {
        let at = rng.below(src.len());
        let mut b = src.to_vec();
        b.remove(at);
        out.push((format!("deleted byte {at}"), b));
    }
    for _ in 0..7 {
        let at = rng.below(src.len() + 1);
        let byte = *rng.pick(INSERT_BYTES);
        let mut b = src.to_vec();
        b.insert(at, byte);
        out.push((format!("inserted {byte:#04x} at {at}"), b));
    }
    for _ in 0..4 {
        let start = rng.below(src.len());
        let len = 1 + rng.below(64.min(src.len() - start));
        let mut b = src.to_vec();
        let chunk = src[start..start + len].to_vec();
        let at = rng.below(src.len() + 1);
        b.splice(at..at, chunk);
        out.push((format!("duplicated {start}..{} at {at}", start + len), b));
    }
    out
}

fn lines_of(src: &[u8]) -> Vec<Vec<u8>> {
    src.split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

/// Line swaps, indentation changes, dropped and repeated lines.
fn line_edits(rng: &mut Rng, src: &[u8]) -> Mutants {
    let lines = lines_of(src);
    let mut out = Vec::new();
    if lines.len() < 2 {
        return out;
    }
    for _ in 0..6 {
        let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
        let mut l = lines.clone();
        l.swap(a, b);
        out.push((format!("swapped lines {} and {}", a + 1, b + 1), l.concat()));
    }
    for _ in 0..6 {
        let i = rng.below(lines.len());
        let mut l = lines.clone();
        let what = match rng.below(5) {
            0 => {
                l[i].splice(0..0, *b"  ");
                "indented 2 more"
            }
            1 => {
                l[i].splice(0..0, *b" ");
                "indented 1 more"
            }
            2 => {
                let n = l[i].iter().take_while(|&&c| c == b' ').count().min(2);
                l[i].drain(..n);
                "dedented"
            }
            3 => {
                let n = l[i].iter().take_while(|&&c| c == b' ').count();
                l[i].splice(..n, std::iter::repeat_n(b'\t', n / 2));
                "spaces to tabs"
            }
            _ => {
                let n = l[i].iter().take_while(|&&c| c == b' ').count();
                l[i].drain(..n);
                "dedented to column 1"
            }
        };
        out.push((format!("line {}: {what}", i + 1), l.concat()));
    }
    for _ in 0..3 {
        let i = rng.below(lines.len());
        let mut l = lines.clone();
        l.remove(i);
        out.push((format!("dropped line {}", i + 1), l.concat()));
    }
    for _ in 0..3 {
        let i = rng.below(lines.len());
        let mut l = lines.clone();
        let dup = l[i].clone();
        l.insert(i, dup);
        out.push((format!("repeated line {}", i + 1), l.concat()));
    }
    out
}

fn tokens() -> Vec<String> {
    let mut t: Vec<String> = [
        "[",
        "]",
        "{",
        "}",
        "&a",
        "*a",
        "&a x",
        "*undefined",
        "!!binary",
        "!!binary aGVsbG8=",
        "!!str",
        "!!int x",
        "!!map",
        "!!seq []",
        "!!float nan",
        "!custom tag",
        "~",
        "null",
        ".nan",
        ".inf",
        "-.inf",
        "true",
        "no",
        "0x1F",
        "0o17",
        "1e999",
        "-0",
        "99999999999999999999999999",
        "-9223372036854775809",
        "''",
        "\"\"",
        "\"\\u0000\"",
        "\"\\uD800\"",
        "\"\\xff\"",
        "|",
        ">",
        "|-",
        "?",
        "-",
        ":",
        "- a",
        "{a: 1, a: 2}",
        "[1, [2, [3]]]",
        "{{ context.x }",
        "\"{{ }}\"",
        "\"{% if x %}\"",
        "\"{{ a | nosuchfilter(1, }}\"",
        "\"{{ contxt.x }}\"",
        "\"{{ input.x }}\"",
        "\"context.x == \"",
        "\"context.x >= 1 and\"",
        "\"(((((context.x\"",
        "\"context['x'\"",
        "🦀🦀🦀",
        "\"\u{202e}evil\"",
        "<<: *a",
        "@",
        "`",
        "%YAML 1.2",
        "---",
        "...",
        "\t",
        "é",
        "start",
        "done",
        "initial",
        "final",
        "retry",
        "mdap_voting",
        "self",
        "r#type",
        "0",
        "1.5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    t.push("x".repeat(10_000));
    t.push(format!("\"{}\"", "{{ context.a }}".repeat(500)));
    t.push(format!("{}{}", "[".repeat(200), "]".repeat(200)));
    t.push("[".repeat(300));
    t.push(format!("{}1{}", "{a: ".repeat(120), "}".repeat(120)));
    t
}

/// Scalars replaced by other YAML tokens, and keys replaced by odd keys.
fn token_edits(rng: &mut Rng, src: &[u8]) -> Mutants {
    let Ok(text) = std::str::from_utf8(src) else {
        return Vec::new();
    };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    // (line index, byte offset of the value in the line) for `key: value` and `- value` lines.
    let mut values = Vec::new();
    let mut keys = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let body = l.trim_end_matches('\n');
        let indent = body.len() - body.trim_start().len();
        let rest = &body[indent..];
        if rest.starts_with('#') || rest.is_empty() {
            continue;
        }
        if let Some(colon) = rest.find(": ") {
            values.push((i, indent + colon + 2));
            keys.push((i, indent, indent + colon));
        } else if let Some(stripped) = rest.strip_prefix("- ") {
            let _ = stripped;
            values.push((i, indent + 2));
        } else if rest.ends_with(':') {
            keys.push((i, indent, indent + rest.len() - 1));
        }
    }
    let toks = tokens();
    let odd_keys = [
        "? [a, b]", "1", "null", "~", "[a]", "{a: b}", "\"\"", "type", "to", "states", "data",
        "spec", "<<", "on_error", "\"a b\"", "é",
    ];
    let mut out = Vec::new();
    if !values.is_empty() {
        for _ in 0..16 {
            let &(i, at) = rng.pick(&values);
            let tok = rng.pick(&toks);
            let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
            let nl = if l[i].ends_with('\n') { "\n" } else { "" };
            l[i] = format!("{}{tok}{nl}", &l[i][..at]);
            let shown: String = tok.chars().take(40).collect();
            out.push((
                format!("line {}: value -> `{shown}`", i + 1),
                l.concat().into_bytes(),
            ));
        }
    }
    if !keys.is_empty() {
        for _ in 0..4 {
            let &(i, start, end) = rng.pick(&keys);
            let key = if rng.below(2) == 0 {
                rng.pick(&odd_keys).to_string()
            } else {
                // Another key of the same file: duplicates and misplaced keys.
                let &(j, s, e) = rng.pick(&keys);
                lines[j][s..e].to_string()
            };
            let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
            l[i] = format!("{}{key}{}", &l[i][..start], &l[i][end..]);
            out.push((
                format!("line {}: key -> `{key}`", i + 1),
                l.concat().into_bytes(),
            ));
        }
    }
    out
}

// ---- the tests --------------------------------------------------------------------------------

/// Least cases per seed file, per family (short files give fewer truncations and edits).
const FLOOR_TRUNCATIONS: usize = 12;
const FLOOR_BYTES: usize = 17;
const FLOOR_LINES: usize = 17;
const FLOOR_TOKENS: usize = 19;

#[test]
fn mutated_truncations_never_panic() {
    let (n, files) = run_family(1, "truncations", truncations);
    assert!(
        n >= FLOOR_TRUNCATIONS * files,
        "{n} cases over {files} files"
    );
}

#[test]
fn mutated_bytes_never_panic() {
    let (n, files) = run_family(2, "bytes", byte_edits);
    assert!(n >= FLOOR_BYTES * files, "{n} cases over {files} files");
}

#[test]
fn mutated_lines_never_panic() {
    let (n, files) = run_family(3, "lines", line_edits);
    assert!(n >= FLOOR_LINES * files, "{n} cases over {files} files");
}

#[test]
fn mutated_tokens_never_panic() {
    let (n, files) = run_family(4, "tokens", token_edits);
    assert!(n >= FLOOR_TOKENS * files, "{n} cases over {files} files");
}

/// The mutator is deterministic: the same seed gives the same cases.
#[test]
fn mutator_is_deterministic() {
    let src = std::fs::read(repository_root().join("examples/machines/distributed/job_worker.yml"))
        .unwrap();
    for family in [truncations, byte_edits, line_edits, token_edits] {
        let a = family(&mut Rng::new(42), &src);
        let b = family(&mut Rng::new(42), &src);
        assert_eq!(a, b);
        assert!(!a.is_empty());
    }
}

/// A panic inside a case is caught and reported with its message and place.
#[test]
fn panics_are_caught_with_their_place() {
    let problem = guarded(|| panic!("boom {}", 42)).expect("a panic is a problem");
    assert!(problem.starts_with("boom 42 (at "), "{problem}");
    assert!(problem.contains("robustness.rs:"), "{problem}");
    assert_eq!(guarded(|| None), None);
}

// ---- hostile inputs: depth, size, aliases (issue 12) -----------------------------------------
//
// Each case is checked from a file in a fresh directory; it must give a located error (or
// succeed), never overflow the stack, and finish (bounded work: the inputs are fixed). These
// run on the test harness's 2 MiB threads, smaller than rustc's, so they also cover
// `flatmachine!`.

fn check_text(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("machine.yml");
    std::fs::write(&path, text).unwrap();
    let checked = flatmachine_build::check(&path, Some("machine.yml".into()));
    (checked.has_errors(), checked.render(false))
}

fn assert_too_deep(text: &str, line: usize) {
    let (errors, rendered) = check_text(text);
    assert!(errors, "{rendered}");
    assert!(rendered.contains("nested too deeply"), "{rendered}");
    assert!(
        rendered.contains(&format!("machine.yml:{line}:")),
        "located at line {line}: {rendered}"
    );
}

#[test]
fn deep_block_mappings_are_a_located_error() {
    let mut text = String::from("spec: flatmachine\ndata:\n");
    for depth in 0..8_000 {
        text.push_str(&" ".repeat(2 + depth));
        text.push_str("k:\n");
    }
    // The document is level 1, `data`'s value (line 3) level 2: line 257 holds level 256 and
    // the mapping opened on line 258 is one too many.
    assert_too_deep(&text, 258);
}

#[test]
fn deep_block_sequences_on_one_line_are_a_located_error() {
    let text = format!("spec: flatmachine\ndata:\n  {}1\n", "- ".repeat(100_000));
    assert_too_deep(&text, 3);
}

#[test]
fn deep_flow_nesting_is_a_located_error() {
    for (open, close) in [("[", "]"), ("{a: ", "}")] {
        let n = 1_000_000 / open.len();
        let text = format!(
            "spec: flatmachine\ndata:\n  x: {}1{}\n",
            open.repeat(n),
            close.repeat(n)
        );
        assert_too_deep(&text, 3);
    }
}

#[test]
fn nesting_up_to_the_limit_is_fine() {
    // 256 levels in all: the document mapping, `data`, then 254 flow sequences.
    let n = flatmachine_build::yaml::MAX_DEPTH - 2;
    let text = format!(
        "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  name: deep\n  context:\n    x: {}1{}\n  states:\n    start:\n      type: initial\n      transitions:\n        - to: done\n    done:\n      type: final\n",
        "[".repeat(n - 2),
        "]".repeat(n - 2)
    );
    let (errors, rendered) = check_text(&text);
    assert!(!rendered.contains("nested too deeply"), "{rendered}");
    let _ = errors;
}

#[test]
fn alias_bombs_are_refused() {
    // Billion laughs: each level doubles ten times; 9 levels would be 10^9 nodes.
    let mut text =
        String::from("spec: flatmachine\ndata:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        text.push_str(&format!("  a{i}: &a{i} [{refs}]\n"));
    }
    let (errors, rendered) = check_text(&text);
    assert!(errors, "{rendered}");
    assert!(rendered.contains("alias expansion exceeded"), "{rendered}");
}

#[test]
fn a_large_machine_loads() {
    // 2 MB of states: loading is linear (see benches/load.rs); quadratic loading would not
    // finish this test in any reasonable time.
    let mut text = String::from(
        "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  name: big\n  context:\n    note: \"é\"\n  states:\n    start:\n      type: initial\n      transitions:\n        - to: s0\n",
    );
    let mut i = 0;
    while text.len() < 2 << 20 {
        text.push_str(&format!(
            "    s{i}:\n      transitions:\n        - to: s{}\n",
            i + 1
        ));
        i += 1;
    }
    text.push_str(&format!(
        "    s{i}:\n      transitions:\n        - to: done\n    done:\n      type: final\n"
    ));
    let (errors, rendered) = check_text(&text);
    assert!(!errors, "{}", &rendered[..rendered.len().min(2000)]);
}
