//! The compiler's warning about JSON built by text templates (issue 17, item 14): model text
//! inside `"{{ … }}"` in a JSON-looking template can add keys; the warning points at the
//! expression and suggests `tojson`.

use std::path::Path;

fn check(dir: &Path, yaml: &str) -> (String, usize, usize) {
    let path = dir.join("m.yml");
    std::fs::write(&path, yaml).unwrap();
    let checked = flatmachine_build::check(&path, Some("m.yml".into()));
    (
        checked.render(false),
        checked.diagnostics.errors().count(),
        checked.diagnostics.warnings().count(),
    )
}

const MACHINE: &str = r#"spec: flatmachine
spec_version: "1.0.0"
data:
  name: m
  agents:
    a: { type: external, ref: prog }
  states:
    start:
      type: initial
      agent: a
      output_to_context:
        person: '{"name": "{{ output.name }}", "role": "guest"}'
      transitions:
        - to: done
    done:
      type: final
"#;

#[test]
fn quoted_expression_in_json_text_is_a_located_warning_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (text, errors, warnings) = check(dir.path(), MACHINE);
    assert_eq!((errors, warnings), (0, 1), "{text}");
    assert!(
        text.contains("warning: this template builds JSON text"),
        "{text}"
    );
    // Line 12, on the `{{` of the quoted expression.
    assert!(text.contains("m.yml:12:28"), "{text}");
    assert!(text.contains("{{ output.name | tojson }}"), "{text}");
}

#[test]
fn tojson_and_plain_text_templates_are_not_reported() {
    let dir = tempfile::tempdir().unwrap();
    for fixed in [
        r#"'{"name": {{ output.name | tojson }}, "role": "guest"}'"#,
        r#"'Dear "{{ output.name }}", welcome'"#,
        r#""{{ output.name }}""#,
    ] {
        let yaml = MACHINE.replace(r#"'{"name": "{{ output.name }}", "role": "guest"}'"#, fixed);
        let (text, errors, warnings) = check(dir.path(), &yaml);
        assert_eq!((errors, warnings), (0, 0), "{fixed}: {text}");
    }
}
