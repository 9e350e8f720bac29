// An agent's structured output becomes a serde struct in the machine's `agents` module.
flatmachine_runtime::flatmachine!("ui/machines/typed_outputs.yml");

use serde_json::json;
use typed_outputs::agents::{
    DescriberDetails, DescriberDetailsChaptersItem, DescriberOutput, DescriberVerdict,
};

fn main() {
    let value = json!({
        "title": "Dune",
        "count": 3,
        "ratio": 0.5,
        "ok": true,
        "extra": {"any": [1, 2]},
        "tags": ["sf", "classic"],
        "anything": [1, "two"],
        "verdict": "needs work",
        "details": {"author": "Herbert", "chapters": [{"name": "One"}]},
        "loose": {"k": 1},
        "type": "novel",
        "first-name": "Frank"
    });
    let out: DescriberOutput = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(out.title, "Dune");
    assert_eq!(out.count, 3i64);
    assert_eq!(out.ratio, 0.5f64);
    assert!(out.ok);
    assert_eq!(out.extra, json!({"any": [1, 2]}));
    assert_eq!(out.tags, vec!["sf".to_string(), "classic".to_string()]);
    assert_eq!(out.anything, vec![json!(1), json!("two")]);
    assert_eq!(out.verdict, DescriberVerdict::NeedsWork);
    assert_eq!(
        out.details,
        DescriberDetails {
            author: "Herbert".into(),
            pages: None,
            chapters: vec![DescriberDetailsChaptersItem { name: "One".into() }],
        }
    );
    assert_eq!(out.loose.get("k"), Some(&json!(1)));
    assert_eq!(out.type_, "novel");
    assert_eq!(out.first_name, "Frank");
    assert_eq!(out.note, None);
    // Round trip: the renamed fields serialize under their YAML names.
    let back = serde_json::to_value(&out).unwrap();
    assert_eq!(back["first-name"], "Frank");
    assert_eq!(back["verdict"], "needs work");
    // A wrong enum value or a missing required field does not deserialize.
    let mut bad = value.clone();
    bad["verdict"] = json!("maybe");
    assert!(serde_json::from_value::<DescriberOutput>(bad).is_err());
    let mut missing = value;
    missing.as_object_mut().unwrap().remove("title");
    assert!(serde_json::from_value::<DescriberOutput>(missing).is_err());
    // The type knows its agent.
    assert_eq!(DescriberOutput::AGENT, "describer");
    let config = DescriberOutput::config();
    assert_eq!(config.name, "every-type");
    assert_eq!(config.model.name, "gpt-4o-mini");
    assert_eq!(config.output.unwrap().len(), 13);
}
