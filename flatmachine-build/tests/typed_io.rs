//! A machine's declared input and output (`data.input`, `data.output`; docs/typed.md): reads
//! of undeclared input fields and final outputs that do not match the declaration are located
//! errors with a did-you-mean; the generated code has `Input`, `Output`, the
//! `TypedMachineDef` impl and `agents::AnyOutput`.

use flatmachine_build::{Checked, CodegenOptions, Severity};

/// Check `yaml` as `m.yml` in a fresh directory.
fn check(yaml: &str) -> (tempfile::TempDir, Checked) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yml"), yaml).unwrap();
    let checked = flatmachine_build::check(&dir.path().join("m.yml"), Some("m.yml".into()));
    (dir, checked)
}

/// A machine with this `data.input`, initial `context` and `data.output` (YAML blocks
/// indented under `data:`), and a final state `done` with this `output` block.
fn machine(input: &str, context: &str, output: &str, done_output: &str) -> String {
    format!(
        "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  name: m\n{input}{context}{output}  states:\n    start:\n      type: initial\n      transitions:\n        - to: done\n    done:\n      type: final\n{done_output}"
    )
}

const INPUT: &str = "  input:\n    customer:\n      type: object\n      properties:\n        name:\n          type: str\n    priority:\n      type: int\n      required: false\n";

fn errors(checked: &Checked) -> Vec<String> {
    checked
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.render(checked.db(), false))
        .collect()
}

#[test]
fn reading_an_undeclared_input_field_is_a_located_error_with_a_hint() {
    let (_dir, checked) = check(&machine(
        INPUT,
        "  context:\n    who: \"{{ input.custmer.name }}\"\n    p: \"{{ input.priority | default(3) }}\"\n",
        "",
        "",
    ));
    let errors = errors(&checked);
    assert_eq!(errors.len(), 1, "{}", checked.render(false));
    let e = &errors[0];
    assert!(
        e.contains("template reads `input.custmer`, but the machine's declared input (`data.input`) has no field `custmer`"),
        "{e}"
    );
    assert!(e.contains("m.yml:15:20"), "{e}");
    assert!(e.contains("did you mean `customer`?"), "{e}");
    assert!(e.contains("declared fields: `customer`, `priority`"), "{e}");
}

#[test]
fn nested_reads_follow_declared_properties() {
    let (_dir, checked) = check(&machine(
        INPUT,
        "  context:\n    who: \"{{ input.customer.nmae }}\"\n",
        "",
        "",
    ));
    let errors = errors(&checked);
    assert_eq!(errors.len(), 1, "{}", checked.render(false));
    assert!(
        errors[0].contains("`input.customer` as declared in `data.input` has no field `nmae`"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("did you mean `name`?"), "{}", errors[0]);
}

#[test]
fn declared_reads_and_hooks_args_are_checked_too() {
    // Declared fields and a bare `input` are fine ...
    let ok = machine(
        INPUT,
        "  context:\n    who: \"{{ input.customer.name }}\"\n    p: \"{{ input.priority }}\"\n    all: \"{{ input | tojson }}\"\n",
        "",
        "",
    );
    let (_dir, checked) = check(&ok);
    assert!(errors(&checked).is_empty(), "{}", checked.render(false));
    // ... `hooks.args` read the machine input as well.
    let hooks = machine(
        INPUT,
        "  hooks:\n    class: LoggingHooks\n    args:\n      level: \"{{ input.levle }}\"\n",
        "",
        "",
    );
    let (_dir, checked) = check(&hooks);
    let errors = errors(&checked);
    assert_eq!(errors.len(), 1, "{}", checked.render(false));
    assert!(errors[0].contains("no field `levle`"), "{}", errors[0]);
}

#[test]
fn without_a_declaration_input_reads_are_not_checked() {
    let (_dir, checked) = check(&machine(
        "",
        "  context:\n    who: \"{{ input.anything.at_all }}\"\n",
        "",
        "",
    ));
    assert!(errors(&checked).is_empty(), "{}", checked.render(false));
}

const OUTPUT: &str = "  output:\n    category:\n      type: str\n      enum: [billing, bug]\n    reply:\n      type: str\n      required: false\n";

#[test]
fn a_final_output_key_not_declared_is_an_error() {
    let (_dir, checked) = check(&machine(
        "",
        "",
        OUTPUT,
        "      output:\n        categry: \"x\"\n        category: billing\n",
    ));
    let errors = errors(&checked);
    assert_eq!(errors.len(), 1, "{}", checked.render(false));
    assert!(
        errors[0]
            .contains("final state `done` outputs `categry`, which `data.output` does not declare"),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].contains("did you mean `category`?"),
        "{}",
        errors[0]
    );
}

#[test]
fn a_required_output_missing_from_a_final_state_is_an_error() {
    // No `output:` at all, and an `output:` without `category`.
    for done in ["", "      output:\n        reply: hi\n"] {
        let (_dir, checked) = check(&machine("", "", OUTPUT, done));
        let errors = errors(&checked);
        assert_eq!(errors.len(), 1, "{}", checked.render(false));
        assert!(
            errors[0].contains(
                "final state `done` does not output `category`, which `data.output` requires"
            ),
            "{}",
            errors[0]
        );
        assert!(errors[0].contains("required: false"), "{}", errors[0]);
    }
    // Optional fields may be left out.
    let (_dir, checked) = check(&machine(
        "",
        "",
        OUTPUT,
        "      output:\n        category: bug\n",
    ));
    assert!(errors(&checked).is_empty(), "{}", checked.render(false));
}

#[test]
fn generated_code_has_the_typed_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.yml");
    std::fs::write(
        &path,
        machine(
            INPUT,
            "  context:\n    who: \"{{ input.customer.name }}\"\n",
            OUTPUT,
            "      output:\n        category: bug\n        reply: \"{{ context.who }}\"\n",
        ),
    )
    .unwrap();
    let compiled =
        flatmachine_build::compile(&path, Some("m.yml".into()), &CodegenOptions::default())
            .unwrap_or_else(|c| panic!("{}", c.render(false)));
    let code = compiled.pretty();
    for expected in [
        "pub struct Input {",
        "pub customer: InputCustomer,",
        "pub struct InputCustomer {",
        "pub priority: ::core::option::Option<i64>,",
        "pub struct Output {",
        "pub enum OutputCategory {",
        "deserialize_with = \"::flatmachine_runtime::typed::lenient::optional_text\"",
        "impl ::flatmachine_runtime::typed::TypedMachineDef for Machine {",
        "type Input = Input;",
        "type Output = Output;",
    ] {
        assert!(code.contains(expected), "missing `{expected}` in:\n{code}");
    }
}

#[test]
fn an_undeclared_side_is_a_json_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.yml");
    std::fs::write(&path, machine("", "", "", "")).unwrap();
    let compiled =
        flatmachine_build::compile(&path, Some("m.yml".into()), &CodegenOptions::default())
            .unwrap_or_else(|c| panic!("{}", c.render(false)));
    let code = compiled.pretty();
    assert!(
        code.contains("type Input = ::flatmachine_runtime::Value;"),
        "{code}"
    );
    assert!(
        code.contains("type Output = ::flatmachine_runtime::Value;"),
        "{code}"
    );
    assert!(!code.contains("pub struct Input"), "{code}");
}

/// A parent calling `child.yml` (which declares `order_id` and an optional `note`) from a
/// `machine:` state with `input`, and launching it with `launch_input`.
fn parent_and_child(input: &str, launch_input: &str) -> (tempfile::TempDir, Checked) {
    let dir = tempfile::tempdir().unwrap();
    let child = "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  name: child\n  input:\n    order_id:\n      type: str\n    note:\n      type: str\n      required: false\n  context:\n    id: \"{{ input.order_id }}\"\n  states:\n    start:\n      type: initial\n      transitions:\n        - to: done\n    done:\n      type: final\n";
    std::fs::write(dir.path().join("child.yml"), child).unwrap();
    let parent = format!(
        "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  name: parent\n  machines:\n    child: ./child.yml\n  states:\n    start:\n      type: initial\n      machine: child\n{input}      transitions:\n        - to: go\n    go:\n      launch: child\n{launch_input}      transitions:\n        - to: done\n    done:\n      type: final\n"
    );
    std::fs::write(dir.path().join("m.yml"), parent).unwrap();
    let checked = flatmachine_build::check(&dir.path().join("m.yml"), Some("m.yml".into()));
    (dir, checked)
}

#[test]
fn what_a_state_passes_to_a_child_is_checked_against_the_childs_input() {
    let ok_input = "      input:\n        order_id: \"{{ context.id }}\"\n";
    let ok_launch = "      launch_input:\n        order_id: x\n        note: y\n";
    let (_dir, checked) = parent_and_child(ok_input, ok_launch);
    assert!(errors(&checked).is_empty(), "{}", checked.render(false));

    // A misspelt key (and so the required field missing) in `input`; nothing at all passed to
    // the launched child.
    let (_dir, checked) =
        parent_and_child("      input:\n        order_di: \"{{ context.id }}\"\n", "");
    let errors = errors(&checked);
    assert_eq!(errors.len(), 3, "{}", checked.render(false));
    let all = errors.join("\n");
    assert!(
        all.contains("state `start` passes `order_di` to machine `child`, whose declared input (`data.input` in child.yml) has no field `order_di`"),
        "{all}"
    );
    assert!(all.contains("did you mean `order_id`?"), "{all}");
    assert!(
        all.contains("state `start` does not pass `order_id` to machine `child`"),
        "{all}"
    );
    assert!(
        all.contains("state `go` does not pass `order_id` to machine `child`"),
        "{all}"
    );
}
