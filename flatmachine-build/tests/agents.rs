//! Flatagents through the compiler: model profile resolution (default → named → inline →
//! override; the nearest `profiles.yml` wins), prompt scope, reads of an agent's output, and
//! the generated agent statics and typed outputs.

use flatmachine_build::agents::ModelIr;
use flatmachine_build::ir::AgentKindIr;
use flatmachine_build::{Checked, Diagnostic};

/// Write `files` (path, text) under a fresh directory and check `m.yml` there.
fn check(files: &[(&str, &str)]) -> (tempfile::TempDir, Checked) {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
    }
    let checked = flatmachine_build::check(&dir.path().join("m.yml"), Some("m.yml".into()));
    (dir, checked)
}

/// A machine with one agent `a` (a path or an inline config, as YAML text), called by `start`
/// with the input `x` (what the test agents' prompts read) and these extra state lines.
fn machine(agent: &str, state: &str) -> String {
    format!(
        "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  name: m\n  agents:\n    a: {agent}\n  states:\n    start:\n      type: initial\n      agent: a\n      input: {{ x: 1 }}\n{state}      transitions:\n        - to: done\n    done:\n      type: final\n"
    )
}

fn agent(model: &str, extra: &str) -> String {
    format!(
        "spec: flatagent\nspec_version: \"1.0.0\"\ndata:\n  name: a\n  model: {model}\n  system: s\n  user: \"{{{{ input.x }}}}\"\n{extra}"
    )
}

fn profiles(body: &str) -> String {
    format!("spec: flatprofiles\nspec_version: \"1.0.0\"\ndata:\n{body}")
}

fn model(checked: &Checked) -> &ModelIr {
    let ir = checked.irs[0]
        .as_ref()
        .unwrap_or_else(|| panic!("no IR:\n{}", checked.render(false)));
    match &ir.agents[0].kind {
        AgentKindIr::Flat(f) => &f.model,
        other => panic!("not a flatagent: {other:?}\n{}", checked.render(false)),
    }
}

fn only<'a>(checked: &'a Checked, what: &str) -> &'a Diagnostic {
    let found: Vec<&Diagnostic> = checked
        .diagnostics
        .iter()
        .filter(|d| d.message.contains(what))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one `{what}`:\n{}",
        checked.render(false)
    );
    found[0]
}

/// No diagnostics but the warning about the custom key in `LAYERED` (custom keys are kept for
/// the `model` prompt variable, and warned about as outside the format).
fn clean(c: &Checked) {
    for d in c.diagnostics.iter() {
        assert_eq!(
            d.message,
            "unknown key `house_key` is ignored",
            "{}",
            c.render(false)
        );
    }
}

const LAYERED: &str = "  model_profiles:\n    base: { provider: openai, name: base-model, temperature: 0.1, top_p: 0.5, house_key: h }\n    fast: { name: fast-model, temperature: 0.2, max_tokens: 100 }\n    pin: { name: pinned, max_retries: 3, timeout: 12.5 }\n  default: base\n  override: pin\n";

#[test]
fn profile_layers_apply_in_order() {
    let (_d, c) = check(&[
        ("m.yml", &machine("./agents/a.yml", "")),
        (
            "agents/a.yml",
            &agent(
                "{ profile: fast, temperature: 0.9, seed: null, api_key_env: MY_KEY }",
                "",
            ),
        ),
        ("profiles.yml", &profiles(LAYERED)),
    ]);
    clean(&c);
    let m = model(&c);
    // default → named → inline (null skipped) → override.
    assert_eq!(m.provider.as_deref(), Some("openai"));
    assert_eq!(m.name, "pinned");
    assert_eq!(m.temperature, Some(0.9));
    assert_eq!(m.top_p, Some(0.5));
    assert_eq!(m.max_tokens, Some(100));
    assert_eq!(m.seed, None);
    assert_eq!(m.api_key_env.as_deref(), Some("MY_KEY"));
    assert_eq!((m.max_retries, m.timeout), (Some(3), Some(12.5)));
    // The prompt variable: custom keys kept, name qualified.
    assert_eq!(m.raw["house_key"], "h");
    assert_eq!(m.raw["name"], "openai/pinned");

    // A string names a profile; an inline config without `profile` still gets the default.
    let (_d, c) = check(&[
        ("m.yml", &machine("./a.yml", "")),
        ("a.yml", &agent("fast", "")),
        ("profiles.yml", &profiles(LAYERED)),
    ]);
    assert_eq!(model(&c).max_tokens, Some(100));
    assert_eq!(model(&c).temperature, Some(0.2));
    assert_eq!(model(&c).top_p, Some(0.5));
    let (_d, c) = check(&[
        ("m.yml", &machine("./a.yml", "")),
        ("a.yml", &agent("{ name: own }", "")),
        ("profiles.yml", &profiles(LAYERED)),
    ]);
    clean(&c);
    assert_eq!(model(&c).name, "pinned");
    assert_eq!(model(&c).temperature, Some(0.1));
    assert_eq!(model(&c).max_retries, Some(3));
}

#[test]
fn the_nearest_profiles_file_wins_entirely() {
    // The agent's folder has its own profiles.yml (no default): the machine's is not merged.
    let (_d, c) = check(&[
        ("m.yml", &machine("./agents/a.yml", "")),
        ("agents/a.yml", &agent("fast", "")),
        (
            "agents/profiles.yml",
            &profiles("  model_profiles:\n    fast: { name: near }\n"),
        ),
        ("profiles.yml", &profiles(LAYERED)),
    ]);
    clean(&c);
    assert_eq!(model(&c).name, "near");
    assert_eq!(model(&c).top_p, None);
    assert_eq!(model(&c).max_retries, None);
    // An inline agent uses the machine's folder.
    let inline = "\n      spec: flatagent\n      spec_version: \"1.0.0\"\n      data:\n        model: fast\n        system: s\n        user: u\n";
    let (_d, c) = check(&[
        ("m.yml", &machine(inline, "")),
        ("profiles.yml", &profiles(LAYERED)),
    ]);
    clean(&c);
    assert_eq!(model(&c).max_tokens, Some(100));
}

#[test]
fn unknown_profiles_and_missing_names() {
    // With a default the reference falls back to it; here a typo is an error with
    // did-you-mean, which says what the reference would have done.
    let (_d, c) = check(&[
        ("m.yml", &machine("./a.yml", "")),
        ("a.yml", &agent("fsat", "")),
        ("profiles.yml", &profiles(LAYERED)),
    ]);
    let e = only(&c, "unknown model profile `fsat`");
    assert!(e.is_error());
    assert_eq!(e.help, ["did you mean `fast`?"]);
    assert_eq!(c.db().location(e.span.unwrap()), "a.yml:5:10");
    assert!(
        e.notes.iter().any(|n| n.contains("default profile `base`")),
        "{:?}",
        e.notes
    );
    assert!(!c.render(false).contains("has no `name`"));
    // Without one too.
    let (_d, c) = check(&[
        ("m.yml", &machine("./a.yml", "")),
        ("a.yml", &agent("{ profile: fsat }", "")),
        (
            "profiles.yml",
            &profiles("  model_profiles:\n    fast: { name: f }\n"),
        ),
    ]);
    assert!(only(&c, "unknown model profile `fsat`").is_error());
    assert!(!c.render(false).contains("has no `name`"));
    // `default` / `override` naming a missing profile: a warning in profiles.yml.
    let (_d, c) = check(&[
        ("m.yml", &machine("./a.yml", "")),
        ("a.yml", &agent("fast", "")),
        (
            "profiles.yml",
            &profiles(
                "  model_profiles:\n    fast: { name: f }\n  default: fats\n  override: nope\n",
            ),
        ),
    ]);
    let w = only(&c, "`default` names unknown model profile `fats`");
    assert!(!w.is_error());
    assert_eq!(w.help, ["did you mean `fast`?"]);
    assert_eq!(c.db().location(w.span.unwrap()), "profiles.yml:6:12");
    assert!(!only(&c, "`override` names unknown model profile `nope`").is_error());
    assert!(!c.has_errors(), "{}", c.render(false));
    // No name after resolution: a located error.
    let (_d, c) = check(&[
        ("m.yml", &machine("./a.yml", "")),
        ("a.yml", &agent("{ provider: openai }", "")),
    ]);
    let e = only(&c, "the model of agent `a` has no `name`");
    assert!(e.is_error());
    assert_eq!(c.db().location(e.span.unwrap()), "a.yml:5:10");
    // A bare string without profiles.yml is the model name (today's behaviour).
    let (_d, c) = check(&[
        ("m.yml", &machine("./a.yml", "")),
        ("a.yml", &agent("gpt-4o", "")),
    ]);
    assert!(c.diagnostics.is_empty(), "{}", c.render(false));
    assert_eq!(model(&c).name, "gpt-4o");
}

/// An agent without `model` or `system` (the reference runs it with the default profile and
/// "You are a helpful assistant.").
fn bare_agent() -> String {
    "spec: flatagent\nspec_version: \"1.0.0\"\ndata:\n  name: a\n  user: \"{{ input.x }}\"\n"
        .to_string()
}

#[test]
fn agents_without_model_or_system_use_the_defaults() {
    let (_d, c) = check(&[
        ("m.yml", &machine("./a.yml", "")),
        ("a.yml", &bare_agent()),
        ("profiles.yml", &profiles(LAYERED)),
    ]);
    clean(&c);
    let m = model(&c);
    assert_eq!(m.name, "pinned");
    assert_eq!(m.profile.as_deref(), Some("base"));
    let ir = c.irs[0].as_ref().unwrap();
    let AgentKindIr::Flat(f) = &ir.agents[0].kind else {
        panic!("not a flatagent")
    };
    assert_eq!(f.system, None);
    // No profiles file at all: a located error saying what is missing.
    let (_d, c) = check(&[("m.yml", &machine("./a.yml", "")), ("a.yml", &bare_agent())]);
    let e = only(&c, "agent `a` has no `model` and no `profiles.yml` applies");
    assert!(e.is_error());
    assert_eq!(c.db().location(e.span.unwrap()), "a.yml:3:1");
    // A profiles file without a default.
    let (_d, c) = check(&[
        ("m.yml", &machine("./a.yml", "")),
        ("a.yml", &bare_agent()),
        (
            "profiles.yml",
            &profiles("  model_profiles:\n    fast: { name: f }\n"),
        ),
    ]);
    assert!(
        only(
            &c,
            "agent `a` has no `model` and its `profiles.yml` has no `default` profile"
        )
        .is_error()
    );
}

#[test]
fn a_machine_names_its_profiles_file() {
    // `profiles: ./conf/models.yml` is accepted (no unknown-key warning) and used.
    let m =
        machine("./a.yml", "").replace("  name: m\n", "  name: m\n  profiles: ./conf/models.yml\n");
    let (_d, c) = check(&[
        ("m.yml", &m),
        ("a.yml", &agent("fast", "")),
        ("conf/models.yml", &profiles(LAYERED)),
    ]);
    clean(&c);
    assert_eq!(model(&c).max_tokens, Some(100));
    // A missing file is a located error.
    let (_d, c) = check(&[("m.yml", &m), ("a.yml", &agent("gpt-4o", ""))]);
    let e = only(&c, "cannot read `conf/models.yml`");
    assert!(e.is_error());
    assert_eq!(c.db().location(e.span.unwrap()), "m.yml:5:13");
}

#[test]
fn providers_must_be_known_or_have_a_base_url() {
    let with = |model: &str| {
        check(&[
            ("m.yml", &machine("./a.yml", "")),
            ("a.yml", &agent(model, "")),
        ])
    };
    // Known providers (and their aliases), any case.
    for p in [
        "cerebras",
        "groq",
        "together",
        "fireworks_ai",
        "Ollama",
        "openrouter",
    ] {
        let (_d, c) = with(&format!("{{ name: m, provider: {p} }}"));
        clean(&c);
    }
    // Unknown without base_url: an error at the provider, with did-you-mean.
    let (_d, c) = with("{ name: m, provider: cerebas }");
    let e = only(&c, "unknown provider `cerebas` and no `base_url`");
    assert!(e.is_error());
    assert_eq!(e.help[0], "did you mean `cerebras`?");
    assert_eq!(c.db().location(e.span.unwrap()), "a.yml:5:31");
    // Unknown with a base_url: an OpenAI-compatible server of one's own.
    let (_d, c) = with("{ name: m, provider: vllm, base_url: \"http://localhost:8000/v1\" }");
    clean(&c);
    // From a profile: the error points into profiles.yml.
    let (_d, c) = check(&[
        ("m.yml", &machine("./a.yml", "")),
        ("a.yml", &agent("fast", "")),
        (
            "profiles.yml",
            &profiles("  model_profiles:\n    fast: { name: f, provider: acme }\n"),
        ),
    ]);
    let e = only(&c, "unknown provider `acme`");
    assert_eq!(c.db().location(e.span.unwrap()), "profiles.yml:5:32");
    // A provider prefix in the name counts too.
    let (_d, c) = with("\"acme/model-1\"");
    assert!(only(&c, "unknown provider `acme` (the prefix of the model name)").is_error());
    // json_mode and prompt_caching reach the model settings.
    let (_d, c) = with("{ name: m, json_mode: json_object, prompt_caching: true }");
    clean(&c);
    assert_eq!(model(&c).json_mode.as_deref(), Some("json_object"));
    assert!(model(&c).prompt_caching);
    let (_d, c) = with("{ name: m, json_mode: json_objetc }");
    assert!(c.has_errors());
    assert!(
        c.render(false).contains("did you mean `json_object`?"),
        "{}",
        c.render(false)
    );
}

fn prompt_agent(user: &str) -> String {
    format!(
        "spec: flatagent\nspec_version: \"1.0.0\"\ndata:\n  model: gpt-4o\n  system: s\n  user: \"{user}\"\n"
    )
}

#[test]
fn prompts_read_only_the_agent_variables() {
    let ok = "{{ input.x }} {{ model.name }} {{ tools | length }} {{ tools_prompt }} {% for i in range(2) %}{{ loop.index }}{{ i }}{% endfor %}{% set y = 1 %}{{ y }}";
    let (_d, c) = check(&[
        ("m.yml", &machine("./a.yml", "")),
        ("a.yml", &prompt_agent(ok)),
    ]);
    assert!(c.diagnostics.is_empty(), "{}", c.render(false));
    let (_d, c) = check(&[
        ("m.yml", &machine("./a.yml", "")),
        ("a.yml", &prompt_agent("Hi {{ context.name }}")),
    ]);
    let e = only(&c, "agent prompt reads `context`");
    assert!(e.is_error());
    assert_eq!(c.db().location(e.span.unwrap()), "a.yml:6:16");
    assert_eq!(
        e.help,
        ["agents see only `input`: pass it from the state's `input:`"]
    );
    let (_d, c) = check(&[
        ("m.yml", &machine("./a.yml", "")),
        ("a.yml", &prompt_agent("Hi {{ inptu.name }}")),
    ]);
    assert_eq!(
        only(&c, "agent prompt reads `inptu`").help,
        ["did you mean `input`?"]
    );
}

fn schema_agent() -> String {
    agent(
        "gpt-4o",
        "  output:\n    score: { type: int }\n    feedback: { type: str }\n",
    )
}

#[test]
fn output_reads_match_what_the_agent_returns() {
    let otc = |t: &str| format!("      output_to_context:\n        v: \"{t}\"\n");
    // A schema: its fields.
    let (_d, c) = check(&[
        ("m.yml", &machine("./a.yml", &otc("{{ output.scroe }}"))),
        ("a.yml", &schema_agent()),
    ]);
    let e = only(&c, "the output of agent `a` has no field `scroe`");
    assert!(e.is_error());
    assert_eq!(e.help, ["did you mean `score`?"]);
    assert_eq!(c.db().location(e.span.unwrap()), "m.yml:13:23");
    let (_d, c) = check(&[
        (
            "m.yml",
            &machine(
                "./a.yml",
                &otc("{{ output.score }} {{ output['feedback'] }} {{ output._raw }}"),
            ),
        ),
        ("a.yml", &schema_agent()),
    ]);
    assert!(c.diagnostics.is_empty(), "{}", c.render(false));
    // No schema: only `content`; another field is a warning (always undefined).
    let (_d, c) = check(&[
        (
            "m.yml",
            &machine("./a.yml", &otc("{{ output.content }} {{ output.score }}")),
        ),
        ("a.yml", &agent("gpt-4o", "")),
    ]);
    assert!(!only(&c, "has no field `score`").is_error());
    assert!(!c.has_errors());
    // Parallel: `{results, count}`.
    let parallel = |t: &str| {
        format!(
            "      execution: {{ type: parallel, n_samples: 2 }}\n{}",
            otc(t)
        )
    };
    let (_d, c) = check(&[
        (
            "m.yml",
            &machine(
                "./a.yml",
                &parallel("{{ output.results }} {{ output.count }}"),
            ),
        ),
        ("a.yml", &schema_agent()),
    ]);
    assert!(c.diagnostics.is_empty(), "{}", c.render(false));
    let (_d, c) = check(&[
        (
            "m.yml",
            &machine("./a.yml", &parallel("{{ output.score }}")),
        ),
        ("a.yml", &schema_agent()),
    ]);
    assert!(only(&c, "has no field `score`").is_error());
    // Typed adapters are not checked.
    let (_d, c) = check(&[(
        "m.yml",
        &machine("{ type: custom, ref: x }", &otc("{{ output.anything }}")),
    )]);
    assert!(c.diagnostics.is_empty(), "{}", c.render(false));
}

#[test]
fn generated_code_has_agent_statics_and_typed_outputs() {
    let (dir, _) = check(&[
        (
            "m.yml",
            &machine("./a.yml", "").replace(
                "    a: ./a.yml\n",
                "    a: ./a.yml\n    ext: { type: custom, ref: pkg.mod, config: { k: 1 } }\n",
            ),
        ),
        ("a.yml", &schema_agent()),
    ]);
    let compiled = flatmachine_build::compile(
        &dir.path().join("m.yml"),
        Some("m.yml".into()),
        &Default::default(),
    )
    .unwrap_or_else(|c| panic!("{}", c.render(false)));
    let code = compiled.pretty();
    syn::parse_file(&code).unwrap();
    for want in [
        "static AGENT_0: ::flatmachine_runtime::agents::AgentConfig",
        "flatagent: Some(&AGENT_0)",
        "kind: \"custom\"",
        "reference: Some(\"pkg.mod\")",
        "pub struct AOutput",
        "pub score: i64",
        "pub feedback: ::std::string::String",
    ] {
        assert!(code.contains(want), "no `{want}` in:\n{code}");
    }
}
