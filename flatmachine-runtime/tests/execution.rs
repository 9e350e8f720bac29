//! Execution types (`default`, `retry`, `parallel`, `mdap_voting`) against a scripted executor.

use async_trait::async_trait;
use flatmachine_runtime::agents::execution::{self, ExecutionType};
use flatmachine_runtime::agents::{AgentCall, AgentExecutor, AgentResult, Billing, Usage};
use flatmachine_runtime::machine::ExecutionSpec;
use flatmachine_runtime::{Context, StateError, Value};
use serde_json::json;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

type Step = Result<AgentResult, StateError>;

/// A test double of an agent executor: answers from a queue, counts calls, records when each
/// call started, and can sleep before answering.
struct Scripted {
    queue: Mutex<VecDeque<Step>>,
    calls: AtomicUsize,
    started: Mutex<Vec<Instant>>,
    delay: Option<Duration>,
    metadata: Option<Value>,
}

impl Scripted {
    fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Self {
            queue: Mutex::new(steps.into_iter().collect()),
            calls: AtomicUsize::new(0),
            started: Mutex::new(Vec::new()),
            delay: None,
            metadata: None,
        }
    }

    fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    fn with_metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Time between consecutive call starts.
    fn gaps(&self) -> Vec<Duration> {
        let started = self.started.lock().unwrap();
        started.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

#[async_trait]
impl AgentExecutor for Scripted {
    async fn execute(&self, _input: &Value, _context: &Context) -> Result<AgentResult, StateError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.started.lock().unwrap().push(Instant::now());
        let step = self.queue.lock().unwrap().pop_front();
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        step.unwrap_or_else(|| Err(StateError::new("ScriptExhausted", "no more steps")))
    }

    fn metadata(&self) -> Option<&Value> {
        self.metadata.as_ref()
    }
}

fn spec(kind: &'static str) -> ExecutionSpec {
    ExecutionSpec {
        kind,
        backoffs: None,
        jitter: None,
        n_samples: None,
        k_margin: None,
        max_candidates: None,
        retry_on_empty: false,
        max_response_tokens: None,
    }
}

/// A structured result of one call with some usage and cost.
fn out(v: Value) -> Step {
    Ok(AgentResult {
        usage: Usage {
            input_tokens: 10,
            output_tokens: 5,
            cached_tokens: 0,
        },
        cost: 0.25,
        ..AgentResult::from_output(v)
    })
}

fn text(t: &str) -> Step {
    Ok(AgentResult::from_content(t))
}

fn empty() -> Step {
    Ok(AgentResult {
        output: Some(json!({})),
        api_calls: 1,
        usage: Usage {
            input_tokens: 10,
            output_tokens: 0,
            cached_tokens: 0,
        },
        cost: 0.25,
        ..AgentResult::default()
    })
}

fn err(t: &str) -> Step {
    Err(StateError::new(t, format!("{t} happened")))
}

async fn run(spec: Option<&ExecutionSpec>, ex: &Scripted) -> Result<AgentResult, StateError> {
    let call = AgentCall {
        machine: "m",
        state: "s",
    };
    execution::execute(spec, ex, &call, &json!({"q": 1}), &Context::new()).await
}

/// A reply the provider billed that then failed to parse.
fn billed_err(t: &str) -> Step {
    Err(
        StateError::new(t, format!("{t} happened")).with_billing(Billing {
            api_calls: 1,
            usage: Usage {
                input_tokens: 7,
                output_tokens: 3,
                cached_tokens: 0,
            },
            cost: 0.5,
        }),
    )
}

fn votes(r: &AgentResult) -> &Value {
    &r.raw.as_ref().unwrap()["votes"]
}

// ---------------------------------------------------------------- default / parsing

#[tokio::test]
async fn default_calls_once_and_returns_the_result_unchanged() {
    let ex = Scripted::new([out(json!({"a": 1})), out(json!({"a": 2}))]);
    let r = run(None, &ex).await.unwrap();
    assert_eq!(r.output, Some(json!({"a": 1})));
    assert_eq!((r.api_calls, r.cost), (1, 0.25));
    assert_eq!(ex.calls(), 1);

    let ex = Scripted::new([err("RateLimitError")]);
    let e = run(Some(&spec("default")), &ex).await.unwrap_err();
    assert_eq!(e.error_type, "RateLimitError");
    assert_eq!(ex.calls(), 1);
}

/// Issue 18 #5: calls billed by failed attempts count, in the result and in the final error.
#[tokio::test]
async fn billed_failures_are_counted_by_every_execution_type() {
    let e = run(None, &Scripted::new([billed_err("OutputParseError")]))
        .await
        .unwrap_err();
    assert_eq!(e.billed.map(|b| b.api_calls), Some(1));

    let retry = ExecutionSpec {
        backoffs: Some(&[0.0, 0.0]),
        ..spec("retry")
    };
    let ex = Scripted::new([
        billed_err("OutputParseError"),
        err("RateLimitError"),
        out(json!({"a": 1})),
    ]);
    let r = run(Some(&retry), &ex).await.unwrap();
    assert_eq!((r.api_calls, r.cost), (2, 0.75));
    assert_eq!(r.usage.input_tokens, 7 + 10);

    let ex = Scripted::new([
        billed_err("OutputParseError"),
        billed_err("OutputParseError"),
        billed_err("OutputValidationError"),
    ]);
    let e = run(Some(&retry), &ex).await.unwrap_err();
    assert_eq!(e.error_type, "OutputValidationError");
    let billed = e.billed.unwrap();
    assert_eq!((billed.api_calls, billed.cost), (3, 1.5));
    assert_eq!(billed.usage.output_tokens, 9);

    let parallel = ExecutionSpec {
        n_samples: Some(2),
        ..spec("parallel")
    };
    let ex = Scripted::new([billed_err("OutputParseError"), out(json!({"a": 1}))]);
    let r = run(Some(&parallel), &ex).await.unwrap();
    assert_eq!(r.api_calls, 2);
    let ex = Scripted::new([
        billed_err("OutputParseError"),
        billed_err("OutputParseError"),
    ]);
    let e = run(Some(&parallel), &ex).await.unwrap_err();
    assert_eq!(e.billed.map(|b| b.api_calls), Some(2));

    let voting = ExecutionSpec {
        max_candidates: Some(2),
        ..spec("mdap_voting")
    };
    let ex = Scripted::new([
        billed_err("OutputParseError"),
        billed_err("OutputParseError"),
    ]);
    let e = run(Some(&voting), &ex).await.unwrap_err();
    assert_eq!(e.billed.map(|b| b.api_calls), Some(2));
}

#[tokio::test]
async fn unknown_kind_and_zero_counts_are_execution_errors() {
    let ex = Scripted::new([]);
    let e = run(Some(&spec("best_of")), &ex).await.unwrap_err();
    assert_eq!(e.error_type, "ExecutionError");
    assert!(e.message.contains("best_of"), "{}", e.message);

    for s in [
        ExecutionSpec {
            n_samples: Some(0),
            ..spec("parallel")
        },
        ExecutionSpec {
            k_margin: Some(0),
            ..spec("mdap_voting")
        },
        ExecutionSpec {
            max_candidates: Some(0),
            ..spec("mdap_voting")
        },
        ExecutionSpec {
            backoffs: Some(&[1.0, -2.0]),
            ..spec("retry")
        },
        ExecutionSpec {
            jitter: Some(f64::NAN),
            ..spec("retry")
        },
    ] {
        let e = run(Some(&s), &ex).await.unwrap_err();
        assert_eq!(e.error_type, "ExecutionError", "{s:?}");
    }
    assert_eq!(ex.calls(), 0);
}

#[test]
fn from_spec_applies_defaults() {
    assert_eq!(
        ExecutionType::from_spec(None).unwrap(),
        ExecutionType::Default
    );
    assert_eq!(
        ExecutionType::from_spec(Some(&spec("retry"))).unwrap(),
        ExecutionType::Retry {
            backoffs: vec![2.0, 8.0, 16.0, 35.0],
            jitter: 0.1,
            retry_on_empty: false,
        }
    );
    assert_eq!(
        ExecutionType::from_spec(Some(&spec("parallel"))).unwrap(),
        ExecutionType::Parallel { n_samples: 3 }
    );
    assert_eq!(
        ExecutionType::from_spec(Some(&spec("mdap_voting"))).unwrap(),
        ExecutionType::MdapVoting {
            k_margin: 3,
            max_candidates: 10,
            max_response_tokens: None,
        }
    );
}

// ---------------------------------------------------------------- retry

#[tokio::test(start_paused = true)]
async fn retry_succeeds_after_two_failures_with_exact_delays() {
    let s = ExecutionSpec {
        backoffs: Some(&[2.0, 8.0, 16.0]),
        jitter: Some(0.0),
        ..spec("retry")
    };
    let ex = Scripted::new([
        err("RateLimitError"),
        err("Timeout"),
        out(json!({"ok": true})),
    ]);
    let start = Instant::now();
    let r = run(Some(&s), &ex).await.unwrap();
    assert_eq!(r.output, Some(json!({"ok": true})));
    assert_eq!(ex.calls(), 3);
    let gaps = ex.gaps();
    assert_eq!(gaps.len(), 2);
    for (gap, want) in gaps.iter().zip([2.0, 8.0]) {
        let want = Duration::from_secs_f64(want);
        assert!(
            *gap >= want && *gap <= want + Duration::from_millis(2),
            "{gap:?} vs {want:?}"
        );
    }
    assert!(start.elapsed() < Duration::from_secs_f64(10.01));
    // Failed attempts returned no result: only the successful call is counted.
    assert_eq!((r.api_calls, r.cost), (1, 0.25));
}

#[tokio::test(start_paused = true)]
async fn retry_default_backoffs_with_jitter_stay_within_ten_percent() {
    // Default backoffs [2, 8, 16, 35] and default jitter 0.1: five attempts.
    for _ in 0..5 {
        let ex = Scripted::new((0..5).map(|_| err("InternalServerError")));
        let e = run(Some(&spec("retry")), &ex).await.unwrap_err();
        assert_eq!(e.error_type, "InternalServerError");
        assert_eq!(ex.calls(), 5);
        let gaps = ex.gaps();
        assert_eq!(gaps.len(), 4);
        for (gap, base) in gaps.iter().zip([2.0, 8.0, 16.0, 35.0]) {
            let lo = Duration::from_secs_f64(base * 0.9);
            let hi = Duration::from_secs_f64(base * 1.1) + Duration::from_millis(2);
            assert!(*gap >= lo && *gap <= hi, "{gap:?} outside ±10% of {base}s");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retry_exhaustion_returns_the_last_error_type() {
    let s = ExecutionSpec {
        backoffs: Some(&[1.0, 1.0]),
        ..spec("retry")
    };
    let ex = Scripted::new([
        err("APIConnectionError"),
        err("Timeout"),
        err("RateLimitError"),
        out(json!({"never": "reached"})),
    ]);
    let e = run(Some(&s), &ex).await.unwrap_err();
    assert_eq!(e.error_type, "RateLimitError");
    assert_eq!(e.message, "RateLimitError happened");
    assert_eq!(ex.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn retry_on_empty_retries_and_sums_usage_over_attempts() {
    let s = ExecutionSpec {
        backoffs: Some(&[1.0, 1.0, 1.0]),
        jitter: Some(0.0),
        retry_on_empty: true,
        ..spec("retry")
    };
    let ex = Scripted::new([empty(), err("Timeout"), empty(), out(json!({"x": 1}))]);
    let r = run(Some(&s), &ex).await.unwrap();
    assert_eq!(r.output, Some(json!({"x": 1})));
    assert_eq!(ex.calls(), 4);
    // Three results came back (two empty, one good); the Err counts nothing.
    assert_eq!(r.api_calls, 3);
    assert_eq!(r.cost, 0.75);
    assert_eq!(r.usage.input_tokens, 30);
    assert_eq!(r.usage.output_tokens, 5);
}

#[tokio::test(start_paused = true)]
async fn retry_on_empty_still_empty_is_an_empty_response_error() {
    let s = ExecutionSpec {
        backoffs: Some(&[1.0]),
        retry_on_empty: true,
        ..spec("retry")
    };
    let ex = Scripted::new([empty(), text("")]);
    let e = run(Some(&s), &ex).await.unwrap_err();
    assert_eq!(e.error_type, "EmptyResponseError");
    assert_eq!(ex.calls(), 2);

    // Without retry_on_empty an empty payload is a success.
    let ex = Scripted::new([empty(), out(json!({"x": 1}))]);
    let r = run(Some(&spec("retry")), &ex).await.unwrap();
    assert_eq!(r.output, Some(json!({})));
    assert_eq!(ex.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_with_empty_backoffs_makes_one_attempt() {
    let s = ExecutionSpec {
        backoffs: Some(&[]),
        ..spec("retry")
    };
    let ex = Scripted::new([err("RateLimitError"), out(json!({"x": 1}))]);
    let start = Instant::now();
    let e = run(Some(&s), &ex).await.unwrap_err();
    assert_eq!(e.error_type, "RateLimitError");
    assert_eq!(ex.calls(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

// ---------------------------------------------------------------- parallel

#[tokio::test]
async fn parallel_collects_successes_in_call_order() {
    let s = ExecutionSpec {
        n_samples: Some(5),
        ..spec("parallel")
    };
    let ex = Scripted::new([
        out(json!({"n": 1})),
        err("RateLimitError"),
        text("two"),
        err("Timeout"),
        out(json!({"n": 3})),
    ]);
    let r = run(Some(&s), &ex).await.unwrap();
    assert_eq!(ex.calls(), 5);
    assert_eq!(
        r.output,
        Some(json!({"results": [{"n": 1}, {"content": "two"}, {"n": 3}], "count": 3}))
    );
    // One per real call that returned: exactly the calls made, no over-counting.
    assert_eq!(r.api_calls, 3);
    assert_eq!(r.cost, 0.5);
    assert_eq!(r.usage.input_tokens, 20);
    let raw = r.raw.unwrap();
    assert_eq!(raw["failed"].as_array().unwrap().len(), 2);
    assert_eq!(raw["failed"][0]["error_type"], "RateLimitError");
}

#[tokio::test]
async fn parallel_defaults_to_three_samples_and_counts_every_call() {
    let ex = Scripted::new((0..4).map(|i| out(json!({"i": i}))));
    let r = run(Some(&spec("parallel")), &ex).await.unwrap();
    assert_eq!(ex.calls(), 3);
    assert_eq!(r.output.unwrap()["count"], 3);
    assert_eq!(r.api_calls, 3);
}

#[tokio::test]
async fn parallel_all_failed_returns_the_first_error() {
    let s = ExecutionSpec {
        n_samples: Some(3),
        ..spec("parallel")
    };
    let ex = Scripted::new([
        err("RateLimitError"),
        err("Timeout"),
        err("InternalServerError"),
    ]);
    let e = run(Some(&s), &ex).await.unwrap_err();
    assert_eq!(e.error_type, "RateLimitError");
    assert_eq!(ex.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn parallel_calls_run_concurrently() {
    let s = ExecutionSpec {
        n_samples: Some(6),
        ..spec("parallel")
    };
    let ex = Scripted::new((0..6).map(|i| out(json!({"i": i})))).with_delay(Duration::from_secs(1));
    let start = Instant::now();
    let r = run(Some(&s), &ex).await.unwrap();
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_millis(1100),
        "{elapsed:?}"
    );
    assert_eq!(r.output.unwrap()["count"], 6);
    // All six started at the same instant.
    assert!(ex.gaps().iter().all(|g| g.is_zero()));
}

// ---------------------------------------------------------------- mdap_voting

fn voting(k: u64, max: u64) -> ExecutionSpec {
    ExecutionSpec {
        k_margin: Some(k),
        max_candidates: Some(max),
        ..spec("mdap_voting")
    }
}

#[tokio::test]
async fn mdap_clear_winner_by_margin() {
    let ex = Scripted::new([
        out(json!({"a": 1, "b": 2})),
        out(json!({"a": 9})),
        // Same object, other key order: the same vote.
        out(json!({"b": 2, "a": 1})),
        out(json!({"a": 1, "b": 2})),
        out(json!({"never": "reached"})),
    ]);
    let r = run(Some(&voting(2, 10)), &ex).await.unwrap();
    assert_eq!(ex.calls(), 4);
    assert_eq!(r.output, Some(json!({"a": 1, "b": 2})));
    let raw = r.raw.as_ref().unwrap();
    assert_eq!(raw["decided_by"], "margin");
    assert_eq!(raw["samples"], 4);
    assert_eq!(votes(&r), &json!({r#"{"a":1,"b":2}"#: 3, r#"{"a":9}"#: 1}));
    assert_eq!((r.api_calls, r.cost), (4, 1.0));
    assert_eq!(r.usage.input_tokens, 40);
}

#[tokio::test]
async fn mdap_needs_a_lead_of_k_not_just_k_votes() {
    // k = 2: after A, B, B the reference stops (B has 2 votes) although B leads by one.
    // Ahead-by-k continues until A leads 4 to 2.
    let ex = Scripted::new([
        text("A"),
        text("B"),
        text("B"),
        text("A"),
        text("A"),
        text("A"),
        text("B"),
    ]);
    let r = run(Some(&voting(2, 10)), &ex).await.unwrap();
    assert_eq!(ex.calls(), 6);
    assert_eq!(r.output, Some(json!({"content": "A"})));
    assert_eq!(r.raw.as_ref().unwrap()["decided_by"], "margin");
    assert_eq!(
        votes(&r),
        &json!({r#"{"content":"A"}"#: 4, r#"{"content":"B"}"#: 2})
    );
}

#[tokio::test]
async fn mdap_single_candidate_wins_with_k_votes() {
    let ex = Scripted::new([text("A"), text("A"), text("A"), text("A")]);
    let r = run(Some(&voting(3, 10)), &ex).await.unwrap();
    assert_eq!(ex.calls(), 3);
    assert_eq!(r.output, Some(json!({"content": "A"})));
}

#[tokio::test]
async fn mdap_majority_fallback_after_max_candidates() {
    let ex = Scripted::new([text("A"), text("B"), text("A"), text("B"), text("A")]);
    let r = run(Some(&voting(3, 5)), &ex).await.unwrap();
    assert_eq!(ex.calls(), 5);
    assert_eq!(r.output, Some(json!({"content": "A"})));
    assert_eq!(r.raw.as_ref().unwrap()["decided_by"], "majority");

    // A tie goes to the candidate seen first (the reference's Counter.most_common), even
    // though B reached two votes first.
    let ex = Scripted::new([text("A"), text("B"), text("B"), text("A")]);
    let r = run(Some(&voting(3, 4)), &ex).await.unwrap();
    assert_eq!(r.output, Some(json!({"content": "A"})));
}

#[tokio::test]
async fn mdap_regex_parsing_with_types() {
    let meta = json!({"parsing": {
        "move": {"pattern": "MOVE:\\s*(\\w+)", "type": "str"},
        "count": {"pattern": "COUNT:\\s*(-?\\d+)", "type": "int"},
        "state": {"pattern": "STATE:\\s*(\\{.*\\})", "type": "json"},
    }});
    let ex = Scripted::new([
        // DOTALL: `.` crosses the newline inside the JSON.
        text("thinking...\nMOVE: left\nCOUNT: 3\nSTATE: {\"x\":\n 1}"),
        text("MOVE: left COUNT: 3 STATE: {\"x\": 1}"),
    ])
    .with_metadata(meta);
    let r = run(Some(&voting(2, 10)), &ex).await.unwrap();
    assert_eq!(ex.calls(), 2);
    assert_eq!(
        r.output,
        Some(json!({"move": "left", "count": 3, "state": {"x": 1}}))
    );
}

#[tokio::test]
async fn mdap_red_flags_each_reason() {
    let meta = json!({
        "parsing": {
            "answer": {"pattern": "ANSWER: (\\d+)", "type": "int"},
        },
        "validation": {
            "type": "object",
            "properties": {"answer": {"type": "integer", "maximum": 100}},
            "required": ["answer"],
        },
    });
    let s = ExecutionSpec {
        max_response_tokens: Some(5),
        ..voting(2, 10)
    };
    let ex = Scripted::new([
        text("no answer here"),                             // format_error
        text("ANSWER: 999"),                                // validation_failed
        text("ANSWER: 7 and a very long explanation..."),   // length_exceeded (> 20 chars)
        Ok(AgentResult::from_output(json!({"answer": 7}))), // patterns set: no text → format
        text("ANSWER: 7"),
        text("ANSWER: 7"),
    ])
    .with_metadata(meta);
    let r = run(Some(&s), &ex).await.unwrap();
    assert_eq!(ex.calls(), 6);
    assert_eq!(r.output, Some(json!({"answer": 7})));
    let raw = r.raw.unwrap();
    assert_eq!(
        raw["red_flags"],
        json!({"format_error": 2, "validation_failed": 1, "length_exceeded": 1})
    );
    assert_eq!(raw["samples"], 6);
    assert_eq!(r.api_calls, 6);
}

#[tokio::test]
async fn mdap_validation_schema_on_structured_output() {
    let meta = json!({"validation": {
        "type": "object",
        "properties": {"label": {"enum": ["yes", "no"]}},
        "required": ["label"],
    }});
    let ex = Scripted::new([
        out(json!({"label": "maybe"})),
        out(json!({"other": 1})),
        out(json!({"label": "no"})),
    ])
    .with_metadata(meta);
    let r = run(Some(&voting(1, 10)), &ex).await.unwrap();
    assert_eq!(ex.calls(), 3);
    assert_eq!(r.output, Some(json!({"label": "no"})));
    assert_eq!(r.raw.unwrap()["red_flags"], json!({"validation_failed": 2}));
}

#[tokio::test]
async fn mdap_agent_metadata_overrides_yaml_settings() {
    // YAML says k = 5, at most 10 samples, no length limit; the agent's metadata says k = 1,
    // at most 3 samples, and at most 2 tokens.
    let meta = json!({"mdap": {"k_margin": 1, "max_candidates": 3, "max_response_tokens": 2}});
    let ex = Scripted::new([
        text("far too long a reply"),
        text("ok"),
        text("never reached"),
    ])
    .with_metadata(meta);
    let r = run(Some(&voting(5, 10)), &ex).await.unwrap();
    assert_eq!(ex.calls(), 2);
    assert_eq!(r.output, Some(json!({"content": "ok"})));
    let raw = r.raw.unwrap();
    assert_eq!(raw["k_margin"], 1);
    assert_eq!(raw["max_candidates"], 3);
    assert_eq!(raw["red_flags"], json!({"length_exceeded": 1}));

    // Falsy overrides are ignored, as in the reference.
    let meta = json!({"mdap": {"k_margin": 0, "max_candidates": null}});
    let ex = Scripted::new((0..4).map(|_| text("same"))).with_metadata(meta);
    let r = run(Some(&voting(2, 10)), &ex).await.unwrap();
    assert_eq!(ex.calls(), 2);
    assert_eq!(r.raw.unwrap()["k_margin"], 2);

    // max_candidates from metadata caps the samples.
    let meta = json!({"mdap": {"max_candidates": 2}});
    let ex = Scripted::new([text("A"), text("B"), text("A")]).with_metadata(meta);
    let r = run(Some(&voting(3, 10)), &ex).await.unwrap();
    assert_eq!(ex.calls(), 2);
    assert_eq!(r.output, Some(json!({"content": "A"})));
}

#[tokio::test]
async fn mdap_all_red_flagged_is_a_voting_error() {
    let meta = json!({"parsing": {"answer": {"pattern": "ANSWER: (\\d+)", "type": "int"}}});
    let ex = Scripted::new([
        text("nope"),
        err("RateLimitError"),
        text("ANSWER: x"),
        text("still nope"),
    ])
    .with_metadata(meta);
    let e = run(Some(&voting(2, 4)), &ex).await.unwrap_err();
    assert_eq!(e.error_type, "VotingError");
    assert!(e.message.contains("3 sample(s)"), "{}", e.message);
    assert!(e.message.contains("1 more call(s) failed"), "{}", e.message);
    assert!(e.message.contains("format_error 3"), "{}", e.message);
    assert_eq!(ex.calls(), 4);
}

#[tokio::test]
async fn mdap_failed_samples_are_skipped_and_all_failed_returns_the_last_error() {
    let ex = Scripted::new([err("Timeout"), text("A"), err("Timeout"), text("A")]);
    let r = run(Some(&voting(2, 10)), &ex).await.unwrap();
    assert_eq!(ex.calls(), 4);
    assert_eq!(r.output, Some(json!({"content": "A"})));
    let raw = r.raw.unwrap();
    assert_eq!(
        (raw["samples"].clone(), raw["failed"].clone()),
        (json!(2), json!(2))
    );
    assert_eq!(r.api_calls, 2);

    let ex = Scripted::new([err("Timeout"), err("RateLimitError")]);
    let e = run(Some(&voting(2, 2)), &ex).await.unwrap_err();
    assert_eq!(e.error_type, "RateLimitError");
}

#[tokio::test]
async fn mdap_bad_metadata_is_an_execution_error_not_a_panic() {
    let bad = [
        json!({"parsing": {"a": {"pattern": "(unclosed", "type": "str"}}}),
        json!({"parsing": {"a": {"pattern": "no group", "type": "str"}}}),
        json!({"parsing": {"a": {"pattern": "(x)", "type": "float"}}}),
        json!({"parsing": ["not", "a", "map"]}),
        json!({"validation": {"type": "no-such-type"}}),
        json!({"mdap": {"k_margin": "three"}}),
    ];
    for meta in bad {
        let ex = Scripted::new([text("x")]).with_metadata(meta.clone());
        let e = run(Some(&voting(1, 1)), &ex).await.unwrap_err();
        assert_eq!(e.error_type, "ExecutionError", "{meta}");
        assert_eq!(ex.calls(), 0, "{meta}");
    }
}
