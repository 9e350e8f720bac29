//! Execution types: how an `agent:` state calls its agent (the state's `execution:` block).
//!
//! - `default`: one call.
//! - `retry`: up to `len(backoffs) + 1` attempts, sleeping `backoffs[i] ± jitter` between them.
//! - `parallel`: `n_samples` concurrent calls; the output collects every successful payload.
//! - `mdap_voting`: sequential samples with red-flagging and first-to-ahead-by-k voting (the
//!   MAKER paper's algorithm).
//!
//! [`execute`] runs a state's [`ExecutionSpec`] against an [`AgentExecutor`]; [`ExecutionType`]
//! is the parsed, validated form of that spec. Where this module deliberately differs from the
//! Python reference (errors instead of error payloads, exact api-call counts, ahead-by-k
//! voting), `docs/agents-execution.md` says what the reference does.

use super::executor::{AgentCall, AgentExecutor, AgentResult, Billing};
use crate::machine::ExecutionSpec;
use crate::{Context, StateError, Value};
use regex::Regex;
use std::fmt::Write as _;
use std::time::Duration;

/// Retry backoffs in seconds when `backoffs` is not given: 61 s in all, long enough for a
/// fresh requests-per-minute bucket.
pub const DEFAULT_BACKOFFS: [f64; 4] = [2.0, 8.0, 16.0, 35.0];
/// Retry jitter factor when `jitter` is not given (each delay varies by up to ±10%).
pub const DEFAULT_JITTER: f64 = 0.1;
/// Parallel samples when `n_samples` is not given.
pub const DEFAULT_N_SAMPLES: u64 = 3;
/// Voting margin when `k_margin` is not given.
pub const DEFAULT_K_MARGIN: u64 = 3;
/// Most voting samples when `max_candidates` is not given.
pub const DEFAULT_MAX_CANDIDATES: u64 = 10;

/// Error type names raised by execution types (matched by `on_error` maps, like the names in
/// [`crate::error_type`]).
pub mod error_type {
    /// The `execution:` block or the agent's voting metadata is invalid (unknown type, bad
    /// regex, bad JSON Schema, zero samples, ...).
    pub const EXECUTION: &str = "ExecutionError";
    /// `retry` with `retry_on_empty`: the last attempt still returned an empty payload.
    pub const EMPTY_RESPONSE: &str = "EmptyResponseError";
    /// `mdap_voting`: no sample produced a candidate without a red flag.
    pub const VOTING: &str = "VotingError";
}

fn execution_error(message: impl Into<String>) -> StateError {
    StateError::new(error_type::EXECUTION, message)
}

/// A parsed, validated `execution:` block.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecutionType {
    /// One call.
    Default,
    /// Retry failed (or, with `retry_on_empty`, empty) calls after a backoff.
    Retry {
        /// Delay in seconds before each retry; attempts = `backoffs.len() + 1`.
        backoffs: Vec<f64>,
        /// Each delay varies uniformly within ±`jitter` × delay.
        jitter: f64,
        /// An empty payload ([`AgentResult::is_empty`]) counts as a failure.
        retry_on_empty: bool,
    },
    /// Concurrent calls whose payloads are collected.
    Parallel {
        /// Number of calls (at least 1).
        n_samples: usize,
    },
    /// Sequential samples with red-flagging and first-to-ahead-by-k voting. The agent's
    /// `metadata.mdap` values override these when set.
    MdapVoting {
        /// A candidate wins when its votes exceed every other candidate's by this many.
        k_margin: u64,
        /// Most samples taken before falling back to the majority.
        max_candidates: u64,
        /// Red-flag replies estimated (characters / 4) above this many tokens.
        max_response_tokens: Option<u64>,
    },
}

impl ExecutionType {
    /// Parses a state's `execution:` block (`None` = [`ExecutionType::Default`]).
    ///
    /// Fails with an `ExecutionError` for an unknown `type`, a negative or non-finite backoff
    /// or jitter, or a zero `n_samples`, `k_margin` or `max_candidates`.
    pub fn from_spec(spec: Option<&ExecutionSpec>) -> Result<Self, StateError> {
        let Some(spec) = spec else {
            return Ok(ExecutionType::Default);
        };
        match spec.kind {
            "default" => Ok(ExecutionType::Default),
            "retry" => {
                let backoffs = spec
                    .backoffs
                    .map_or_else(|| DEFAULT_BACKOFFS.to_vec(), <[f64]>::to_vec);
                if let Some(bad) = backoffs.iter().find(|b| !b.is_finite() || **b < 0.0) {
                    return Err(execution_error(format!(
                        "retry backoffs must be non-negative numbers of seconds, got {bad}"
                    )));
                }
                let jitter = spec.jitter.unwrap_or(DEFAULT_JITTER);
                if !jitter.is_finite() || jitter < 0.0 {
                    return Err(execution_error(format!(
                        "retry jitter must be a non-negative number, got {jitter}"
                    )));
                }
                Ok(ExecutionType::Retry {
                    backoffs,
                    jitter,
                    retry_on_empty: spec.retry_on_empty,
                })
            }
            "parallel" => {
                let n = spec.n_samples.unwrap_or(DEFAULT_N_SAMPLES);
                let n_samples = usize::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
                    execution_error(format!("parallel n_samples must be at least 1, got {n}"))
                })?;
                Ok(ExecutionType::Parallel { n_samples })
            }
            "mdap_voting" => {
                let k_margin = spec.k_margin.unwrap_or(DEFAULT_K_MARGIN);
                let max_candidates = spec.max_candidates.unwrap_or(DEFAULT_MAX_CANDIDATES);
                check_voting_counts(k_margin, max_candidates)?;
                Ok(ExecutionType::MdapVoting {
                    k_margin,
                    max_candidates,
                    max_response_tokens: spec.max_response_tokens,
                })
            }
            other => Err(execution_error(format!(
                "unknown execution type `{other}` (expected default, retry, parallel or mdap_voting)"
            ))),
        }
    }

    /// Runs the agent with this execution type. Every call the provider billed is counted in
    /// the result, or in the error's [`billed`](StateError::billed) when the state fails.
    pub async fn execute(
        &self,
        executor: &dyn AgentExecutor,
        call: &AgentCall<'_>,
        input: &Value,
        context: &Context,
    ) -> Result<AgentResult, StateError> {
        let sample = Sample {
            executor,
            call,
            input,
            context,
        };
        match self {
            ExecutionType::Default => sample.take().await,
            ExecutionType::Retry {
                backoffs,
                jitter,
                retry_on_empty,
            } => run_retry(backoffs, *jitter, *retry_on_empty, &sample).await,
            ExecutionType::Parallel { n_samples } => run_parallel(*n_samples, &sample).await,
            ExecutionType::MdapVoting {
                k_margin,
                max_candidates,
                max_response_tokens,
            } => {
                let voting = Voting::configure(
                    *k_margin,
                    *max_candidates,
                    *max_response_tokens,
                    executor.metadata(),
                )?;
                voting.run(&sample).await
            }
        }
    }
}

/// One agent call as an execution type makes it, possibly many times.
struct Sample<'a> {
    executor: &'a dyn AgentExecutor,
    call: &'a AgentCall<'a>,
    input: &'a Value,
    context: &'a Context,
}

impl Sample<'_> {
    async fn take(&self) -> Result<AgentResult, StateError> {
        self.executor
            .execute_for(self.call, self.input, self.context)
            .await
    }
}

/// Runs an `agent:` state's call with its `execution:` block (`None` = one call).
///
/// Errors: the last attempt's error for `retry` (or `EmptyResponseError`), the first error
/// when every `parallel` call fails, `VotingError` when no voting sample is valid, and
/// `ExecutionError` for an invalid block. See the module docs and `docs/agents-execution.md`.
pub async fn execute(
    spec: Option<&ExecutionSpec>,
    executor: &dyn AgentExecutor,
    call: &AgentCall<'_>,
    input: &Value,
    context: &Context,
) -> Result<AgentResult, StateError> {
    ExecutionType::from_spec(spec)?
        .execute(executor, call, input, context)
        .await
}

/// Usage, calls and cost summed over several calls, failed ones included.
#[derive(Debug, Default)]
struct Totals(Billing);

impl Totals {
    fn add(&mut self, result: &AgentResult) {
        self.0 += result.billing();
    }

    /// Counts what a failed call was billed; returns the error without it (the totals carry
    /// it from now on).
    fn add_error(&mut self, mut error: StateError) -> StateError {
        if let Some(billed) = error.billed.take() {
            self.0 += *billed;
        }
        error
    }

    fn apply(&self, result: &mut AgentResult) {
        result.set_billing(self.0);
    }

    /// The error with every call counted so far.
    fn fail(&self, error: StateError) -> StateError {
        error.with_billing(self.0)
    }
}

/// `delay` seconds varied uniformly within ±`jitter` × `delay`, never negative.
fn jittered(delay: f64, jitter: f64) -> Duration {
    let spread = delay * jitter;
    let seconds = if spread > 0.0 {
        delay + (fastrand::f64() * 2.0 - 1.0) * spread
    } else {
        delay
    };
    Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX)
}

async fn run_retry(
    backoffs: &[f64],
    jitter: f64,
    retry_on_empty: bool,
    sample: &Sample<'_>,
) -> Result<AgentResult, StateError> {
    let attempts = backoffs.len() + 1;
    let mut totals = Totals::default();
    let mut last_error = execution_error("retry made no attempt");
    for attempt in 0..attempts {
        match sample.take().await {
            Ok(mut result) => {
                totals.add(&result);
                if !(retry_on_empty && result.is_empty()) {
                    totals.apply(&mut result);
                    return Ok(result);
                }
                last_error = StateError::new(
                    error_type::EMPTY_RESPONSE,
                    format!("empty response from agent after {} attempt(s)", attempt + 1),
                );
            }
            // The run tree's budget refused the call: retrying cannot help.
            Err(e) if e.error_type == crate::error::error_type::MAX_AGENT_CALLS => return Err(e),
            Err(e) => last_error = totals.add_error(e),
        }
        tracing::warn!(
            attempt = attempt + 1,
            attempts,
            error = %last_error,
            "agent attempt failed"
        );
        if let Some(&delay) = backoffs.get(attempt) {
            let delay = jittered(delay, jitter);
            tracing::info!(delay_s = delay.as_secs_f64(), "retrying agent call");
            tokio::time::sleep(delay).await;
        }
    }
    tracing::error!(attempts, error = %last_error, "all agent attempts failed");
    Err(totals.fail(last_error))
}

async fn run_parallel(n_samples: usize, sample: &Sample<'_>) -> Result<AgentResult, StateError> {
    let outcomes = futures::future::join_all((0..n_samples).map(|_| sample.take())).await;
    let mut totals = Totals::default();
    let mut payloads = Vec::new();
    let mut raws = Vec::new();
    let mut failures = Vec::new();
    let mut first_error = None;
    let mut metadata = None;
    for outcome in outcomes {
        match outcome {
            Ok(result) => {
                totals.add(&result);
                payloads.push(result.output_payload());
                raws.push(result.raw.unwrap_or(Value::Null));
                if metadata.is_none() {
                    metadata = result.metadata;
                }
            }
            // The run tree's budget refused a sample: the run fails on its limit.
            Err(e) if e.error_type == crate::error::error_type::MAX_AGENT_CALLS => return Err(e),
            Err(e) => {
                let e = totals.add_error(e);
                tracing::warn!(error = %e, "parallel sample failed");
                failures.push(serde_json::json!({
                    "error_type": e.error_type,
                    "message": e.message,
                }));
                first_error.get_or_insert(e);
            }
        }
    }
    if payloads.is_empty() {
        let error = first_error.unwrap_or_else(|| execution_error("parallel made no call"));
        return Err(totals.fail(error));
    }
    let count = payloads.len();
    let mut result = AgentResult {
        output: Some(serde_json::json!({ "results": payloads, "count": count })),
        raw: Some(serde_json::json!({ "results": raws, "failed": failures })),
        metadata,
        ..AgentResult::default()
    };
    totals.apply(&mut result);
    Ok(result)
}

fn check_voting_counts(k_margin: u64, max_candidates: u64) -> Result<(), StateError> {
    if k_margin == 0 {
        return Err(execution_error("mdap_voting k_margin must be at least 1"));
    }
    if max_candidates == 0 {
        return Err(execution_error(
            "mdap_voting max_candidates must be at least 1",
        ));
    }
    Ok(())
}

/// How a regex-parsed field is converted.
#[derive(Debug, Clone, Copy)]
enum FieldType {
    Str,
    Int,
    Json,
}

/// Why a sample was discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RedFlag {
    FormatError,
    ValidationFailed,
    LengthExceeded,
}

impl RedFlag {
    const ALL: [RedFlag; 3] = [
        RedFlag::FormatError,
        RedFlag::ValidationFailed,
        RedFlag::LengthExceeded,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RedFlag::FormatError => "format_error",
            RedFlag::ValidationFailed => "validation_failed",
            RedFlag::LengthExceeded => "length_exceeded",
        }
    }
}

/// `mdap_voting` with the agent's metadata applied.
struct Voting {
    k_margin: u64,
    max_candidates: u64,
    max_response_tokens: Option<u64>,
    patterns: Vec<(String, Regex, FieldType)>,
    schema: Option<jsonschema::Validator>,
}

/// A positive integer setting from `metadata.mdap`; the reference ignores falsy values
/// (`null`, `0`, `false`), so they mean "not set" here too.
fn metadata_count(mdap: &Value, key: &str) -> Result<Option<u64>, StateError> {
    match mdap.get(key) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
        Some(Value::Number(n)) => {
            let v = n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                    .map(|f| f as u64)
            });
            match v {
                Some(0) => Ok(None),
                Some(v) => Ok(Some(v)),
                None => Err(execution_error(format!(
                    "agent metadata.mdap.{key} must be a positive integer, got {n}"
                ))),
            }
        }
        Some(other) => Err(execution_error(format!(
            "agent metadata.mdap.{key} must be a positive integer, got {other}"
        ))),
    }
}

impl Voting {
    /// Applies the agent's metadata: `mdap` overrides, `parsing` patterns, `validation` schema.
    fn configure(
        k_margin: u64,
        max_candidates: u64,
        max_response_tokens: Option<u64>,
        metadata: Option<&Value>,
    ) -> Result<Self, StateError> {
        let mut voting = Voting {
            k_margin,
            max_candidates,
            max_response_tokens,
            patterns: Vec::new(),
            schema: None,
        };
        let Some(Value::Object(metadata)) = metadata else {
            return Ok(voting);
        };
        if let Some(mdap) = metadata.get("mdap").filter(|m| !m.is_null()) {
            if !mdap.is_object() {
                return Err(execution_error("agent metadata.mdap must be a mapping"));
            }
            if let Some(k) = metadata_count(mdap, "k_margin")? {
                voting.k_margin = k;
            }
            if let Some(m) = metadata_count(mdap, "max_candidates")? {
                voting.max_candidates = m;
            }
            if let Some(t) = metadata_count(mdap, "max_response_tokens")? {
                voting.max_response_tokens = Some(t);
            }
        }
        match metadata.get("parsing") {
            None | Some(Value::Null) => {}
            Some(Value::Object(fields)) => {
                for (name, config) in fields {
                    voting.patterns.extend(parse_pattern(name, config)?);
                }
            }
            Some(_) => {
                return Err(execution_error(
                    "agent metadata.parsing must map field names to {pattern, type}",
                ));
            }
        }
        match metadata.get("validation") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) if m.is_empty() => {}
            Some(schema) => {
                let validator = jsonschema::validator_for(schema).map_err(|e| {
                    execution_error(format!(
                        "agent metadata.validation is not a valid JSON Schema: {e}"
                    ))
                })?;
                voting.schema = Some(validator);
            }
        }
        Ok(voting)
    }

    /// Takes samples until a candidate is ahead by `k_margin`, or `max_candidates` samples.
    async fn run(&self, sample: &Sample<'_>) -> Result<AgentResult, StateError> {
        let mut totals = Totals::default();
        // Candidates in order of first appearance: (voting key, value, votes, metadata).
        let mut tally: Vec<(String, Value, u64, Option<Value>)> = Vec::new();
        let mut flags: Vec<(RedFlag, u64)> = RedFlag::ALL.iter().map(|f| (*f, 0)).collect();
        let mut last_flag_detail = None;
        let mut samples = 0u64;
        let mut failed = 0u64;
        let mut last_error = None;
        let mut winner = None;

        for _ in 0..self.max_candidates {
            let result = match sample.take().await {
                Ok(r) => r,
                // The run tree's budget refused the call: the run fails on its limit.
                Err(e) if e.error_type == crate::error::error_type::MAX_AGENT_CALLS => {
                    return Err(e);
                }
                Err(e) => {
                    let e = totals.add_error(e);
                    tracing::warn!(error = %e, "voting sample failed");
                    failed += 1;
                    last_error = Some(e);
                    continue;
                }
            };
            samples += 1;
            totals.add(&result);
            let candidate = match self.candidate(&result) {
                Ok(c) => c,
                Err((flag, detail)) => {
                    tracing::debug!(red_flag = flag.as_str(), %detail, "voting sample red-flagged");
                    if let Some(entry) = flags.iter_mut().find(|(f, _)| *f == flag) {
                        entry.1 += 1;
                    }
                    last_flag_detail = Some(format!("{}: {detail}", flag.as_str()));
                    continue;
                }
            };
            let key = canonical_json(&candidate);
            let index = match tally.iter().position(|(k, ..)| *k == key) {
                Some(i) => i,
                None => {
                    tally.push((key, candidate, 0, result.metadata.clone()));
                    tally.len() - 1
                }
            };
            tally[index].2 += 1;
            let votes = tally[index].2;
            let best_other = tally
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != index)
                .map(|(_, (_, _, v, _))| *v)
                .max()
                .unwrap_or(0);
            if votes >= best_other.saturating_add(self.k_margin) {
                winner = Some((index, "margin"));
                break;
            }
        }

        let winner = winner.or_else(|| {
            // Majority: most votes; ties go to the candidate seen first (as the reference's
            // `Counter.most_common`).
            let mut best: Option<usize> = None;
            for (i, entry) in tally.iter().enumerate() {
                if best.is_none_or(|b| entry.2 > tally[b].2) {
                    best = Some(i);
                }
            }
            best.map(|i| (i, "majority"))
        });

        let red_flags: serde_json::Map<String, Value> = flags
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(f, n)| (f.as_str().to_string(), Value::from(*n)))
            .collect();

        let Some((index, decided_by)) = winner else {
            if samples == 0
                && let Some(e) = last_error
            {
                return Err(totals.fail(e));
            }
            let mut message =
                format!("mdap_voting found no valid candidate in {samples} sample(s)");
            if failed > 0 {
                let _ = write!(message, " ({failed} more call(s) failed)");
            }
            let counts: Vec<String> = flags
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(f, n)| format!("{} {n}", f.as_str()))
                .collect();
            if !counts.is_empty() {
                let _ = write!(message, "; red flags: {}", counts.join(", "));
            }
            if let Some(detail) = last_flag_detail {
                let _ = write!(message, "; last: {detail}");
            }
            return Err(totals.fail(StateError::new(error_type::VOTING, message)));
        };

        let votes: serde_json::Map<String, Value> = tally
            .iter()
            .map(|(k, _, v, _)| (k.clone(), Value::from(*v)))
            .collect();
        let raw = serde_json::json!({
            "votes": votes,
            "samples": samples,
            "failed": failed,
            "red_flags": red_flags,
            "decided_by": decided_by,
            "k_margin": self.k_margin,
            "max_candidates": self.max_candidates,
        });
        let (_, output, _, metadata) = tally.swap_remove(index);
        let mut result = AgentResult {
            output: Some(output),
            raw: Some(raw),
            metadata,
            ..AgentResult::default()
        };
        totals.apply(&mut result);
        Ok(result)
    }

    /// The sample's candidate answer, or why it is red-flagged.
    fn candidate(&self, result: &AgentResult) -> Result<Value, (RedFlag, String)> {
        let content = result.content.as_deref().unwrap_or("");
        let (candidate, measured) = if !self.patterns.is_empty() {
            if content.is_empty() {
                return Err((RedFlag::FormatError, "empty reply".into()));
            }
            (self.parse(content)?, None)
        } else if let Some(output) = result.output.as_ref().filter(|o| !o.is_null()) {
            let measured = content.is_empty().then(|| canonical_json(output));
            (output.clone(), measured)
        } else if !content.is_empty() {
            (serde_json::json!({ "content": content }), None)
        } else {
            return Err((RedFlag::FormatError, "no output and no text".into()));
        };
        if let Some(schema) = &self.schema
            && let Err(e) = schema.validate(&candidate)
        {
            return Err((RedFlag::ValidationFailed, e.to_string()));
        }
        if let Some(limit) = self.max_response_tokens {
            let chars = measured.as_deref().unwrap_or(content).chars().count() as u64;
            if chars / 4 > limit {
                return Err((
                    RedFlag::LengthExceeded,
                    format!("about {} tokens, limit {limit}", chars / 4),
                ));
            }
        }
        Ok(candidate)
    }

    /// Applies every `metadata.parsing` pattern to the reply text; all must match.
    fn parse(&self, content: &str) -> Result<Value, (RedFlag, String)> {
        let mut parsed = serde_json::Map::new();
        for (name, regex, kind) in &self.patterns {
            let text = regex
                .captures(content)
                .and_then(|c| c.get(1))
                .map(|m| m.as_str())
                .ok_or_else(|| {
                    (
                        RedFlag::FormatError,
                        format!("pattern for `{name}` did not match"),
                    )
                })?;
            let value = match kind {
                FieldType::Str => Value::String(text.to_string()),
                FieldType::Int => {
                    let t = text.trim();
                    t.parse::<i64>()
                        .map(Value::from)
                        .or_else(|_| t.parse::<u64>().map(Value::from))
                        .map_err(|_| {
                            (
                                RedFlag::FormatError,
                                format!("`{name}` is not an integer: {text:?}"),
                            )
                        })?
                }
                FieldType::Json => super::output::parse_bounded(text)
                    .map_err(|e| (RedFlag::FormatError, format!("`{name}` is not JSON: {e}")))?,
            };
            parsed.insert(name.clone(), value);
        }
        Ok(Value::Object(parsed))
    }
}

/// One `metadata.parsing` entry: `{pattern, type}`. Entries without a pattern are skipped (as
/// the reference does).
fn parse_pattern(
    name: &str,
    config: &Value,
) -> Result<Option<(String, Regex, FieldType)>, StateError> {
    let Value::Object(config) = config else {
        return Err(execution_error(format!(
            "agent metadata.parsing.{name} must be a mapping with `pattern` and `type`"
        )));
    };
    let pattern = match config.get("pattern") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(p)) if p.is_empty() => return Ok(None),
        Some(Value::String(p)) => p,
        Some(_) => {
            return Err(execution_error(format!(
                "agent metadata.parsing.{name}.pattern must be a string"
            )));
        }
    };
    let kind = match config.get("type") {
        None | Some(Value::Null) => FieldType::Str,
        Some(Value::String(t)) => match t.as_str() {
            "str" => FieldType::Str,
            "int" => FieldType::Int,
            "json" => FieldType::Json,
            other => {
                return Err(execution_error(format!(
                    "agent metadata.parsing.{name}.type must be str, int or json, got `{other}`"
                )));
            }
        },
        Some(other) => {
            return Err(execution_error(format!(
                "agent metadata.parsing.{name}.type must be str, int or json, got {other}"
            )));
        }
    };
    // DOTALL, as the reference compiles with `re.DOTALL`.
    let regex = regex::RegexBuilder::new(pattern)
        .dot_matches_new_line(true)
        .build()
        .map_err(|e| {
            execution_error(format!(
                "agent metadata.parsing.{name}.pattern is not a valid regex: {e}"
            ))
        })?;
    if regex.captures_len() < 2 {
        return Err(execution_error(format!(
            "agent metadata.parsing.{name}.pattern needs a capture group (group 1 is the value)"
        )));
    }
    Ok(Some((name.to_string(), regex, kind)))
}

/// JSON text with object keys sorted at every level: the voting key.
fn canonical_json(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), sorted(v)))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}
