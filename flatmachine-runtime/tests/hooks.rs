//! Hooks through the public API: defaults, composite, metrics, logging, registry.

mod common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use flatmachine_runtime::hooks::{
    ActionOutcome, CompositeHooks, HookError, HooksRegistry, LoggingHooks, MachineHooks,
    MetricsHooks, NoopHooks,
};
use flatmachine_runtime::{Context, StateError, Value, error_type};
use serde_json::json;

fn ctx(value: Value) -> Context {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn err(kind: &str, message: &str) -> StateError {
    StateError::new(kind, message)
}

/// Overrides nothing.
struct Bare;
impl MachineHooks for Bare {}

async fn assert_pass_through(hooks: &dyn MachineHooks) {
    let original = ctx(json!({"a": 1, "nested": {"b": [1, 2]}}));

    let mut context = original.clone();
    hooks.on_machine_start(&mut context).await.unwrap();
    assert_eq!(context, original);

    let mut output = json!({"result": 42});
    hooks.on_machine_end(&context, &mut output).await.unwrap();
    assert_eq!(output, json!({"result": 42}));

    hooks.on_state_enter("s", &mut context).await.unwrap();
    assert_eq!(context, original);

    let mut output = Some(json!({"x": 1}));
    hooks
        .on_state_exit("s", &mut context, &mut output)
        .await
        .unwrap();
    assert_eq!(output, Some(json!({"x": 1})));
    let mut none = None;
    hooks
        .on_state_exit("s", &mut context, &mut none)
        .await
        .unwrap();
    assert_eq!(none, None);

    let target = hooks.on_transition("s", "t", &mut context).await.unwrap();
    assert_eq!(target, "t");

    let recovery = hooks
        .on_error("s", &err("ActionError", "boom"), &mut context)
        .await
        .unwrap();
    assert_eq!(recovery, None);

    let outcome = hooks.on_action("anything", &mut context).await.unwrap();
    assert_eq!(outcome, ActionOutcome::NotHandled);
    assert_eq!(context, original);
}

#[tokio::test]
async fn defaults_pass_through() {
    assert_pass_through(&Bare).await;
    assert_pass_through(&NoopHooks).await;
    assert_pass_through(&LoggingHooks::default()).await;
    assert_pass_through(&MetricsHooks::new()).await;
    assert_pass_through(&CompositeHooks::default()).await;
    assert_eq!(ActionOutcome::default(), ActionOutcome::NotHandled);
    assert!(ActionOutcome::Handled.is_handled());
    assert!(!ActionOutcome::NotHandled.is_handled());
}

#[test]
fn hook_error_into_state_error() {
    // An action's own error type passes through unchanged, for `on_error` routing.
    let e: StateError = HookError::action("MyError", "bad input").into();
    assert_eq!(e, err("MyError", "bad input"));
    let e: StateError = HookError::from(err("ValueError", "v")).into();
    assert_eq!(e, err("ValueError", "v"));
    // Anything else is a HookError.
    let e: StateError = HookError::failed("db down").into();
    assert_eq!(e.error_type, error_type::HOOK);
    assert!(e.message.contains("db down"), "{}", e.message);
    let e: StateError = HookError::invalid_args("X", "nope").into();
    assert_eq!(e.error_type, error_type::HOOK);
    assert!(e.message.contains("`X`") && e.message.contains("nope"));
}

/// Appends its name to `context.trace` at every point; configurable answers.
struct Tracer {
    name: &'static str,
    redirect: Option<(&'static str, &'static str)>,
    recover: Option<&'static str>,
    handles: Option<&'static str>,
    fail_on_enter: bool,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Tracer {
    fn new(name: &'static str, calls: &Arc<Mutex<Vec<String>>>) -> Self {
        Self {
            name,
            redirect: None,
            recover: None,
            handles: None,
            fail_on_enter: false,
            calls: Arc::clone(calls),
        }
    }

    fn mark(&self, point: &str, context: &mut Context) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("{}:{point}", self.name));
        let trace = context
            .entry("trace")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(items) = trace {
            items.push(json!(self.name));
        }
    }
}

#[async_trait]
impl MachineHooks for Tracer {
    async fn on_machine_start(&self, context: &mut Context) -> Result<(), HookError> {
        self.mark("start", context);
        Ok(())
    }

    async fn on_machine_end(
        &self,
        _context: &Context,
        output: &mut Value,
    ) -> Result<(), HookError> {
        if let Value::Object(map) = output {
            map.insert(self.name.to_string(), json!(true));
        }
        Ok(())
    }

    async fn on_state_enter(&self, _state: &str, context: &mut Context) -> Result<(), HookError> {
        if self.fail_on_enter {
            return Err(HookError::failed(format!("{} refuses", self.name)));
        }
        self.mark("enter", context);
        Ok(())
    }

    async fn on_state_exit(
        &self,
        _state: &str,
        _context: &mut Context,
        output: &mut Option<Value>,
    ) -> Result<(), HookError> {
        let n = output.as_ref().and_then(Value::as_i64).unwrap_or(0);
        *output = Some(json!(n * 10 + 1));
        Ok(())
    }

    async fn on_transition(
        &self,
        _from: &str,
        to: &str,
        context: &mut Context,
    ) -> Result<String, HookError> {
        self.mark(&format!("transition({to})"), context);
        match self.redirect {
            Some((when, then)) if when == to => Ok(then.to_string()),
            _ => Ok(to.to_string()),
        }
    }

    async fn on_error(
        &self,
        _state: &str,
        _error: &StateError,
        context: &mut Context,
    ) -> Result<Option<String>, HookError> {
        self.mark("error", context);
        Ok(self.recover.map(str::to_string))
    }

    async fn on_action(
        &self,
        action: &str,
        context: &mut Context,
    ) -> Result<ActionOutcome, HookError> {
        self.mark(&format!("action({action})"), context);
        if self.handles == Some(action) {
            context.insert(format!("done_by_{}", self.name), json!(action));
            Ok(ActionOutcome::Handled)
        } else {
            Ok(ActionOutcome::NotHandled)
        }
    }
}

fn calls_of(calls: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    std::mem::take(&mut *calls.lock().unwrap())
}

#[tokio::test]
async fn composite_calls_in_order_and_chains_values() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut a = Tracer::new("a", &calls);
    a.redirect = Some(("b", "c"));
    a.handles = Some("act");
    let mut b = Tracer::new("b", &calls);
    b.redirect = Some(("c", "d"));
    b.recover = Some("recover_b");
    b.handles = Some("act");
    let mut c = Tracer::new("c", &calls);
    c.recover = Some("recover_c");
    let composite =
        CompositeHooks::new([Arc::new(a) as Arc<dyn MachineHooks>, Arc::new(b)]).with(Arc::new(c));
    assert_eq!(composite.len(), 3);
    assert!(!composite.is_empty());
    assert_eq!(composite.hooks().len(), 3);

    // The context passes through each hook in turn.
    let mut context = Context::new();
    composite.on_machine_start(&mut context).await.unwrap();
    assert_eq!(context["trace"], json!(["a", "b", "c"]));
    composite.on_state_enter("s", &mut context).await.unwrap();
    assert_eq!(context["trace"], json!(["a", "b", "c", "a", "b", "c"]));
    assert_eq!(
        calls_of(&calls),
        [
            "a:start", "b:start", "c:start", "a:enter", "b:enter", "c:enter"
        ]
    );

    // The output passes through each hook in turn.
    let mut output = Some(json!(0));
    composite
        .on_state_exit("s", &mut context, &mut output)
        .await
        .unwrap();
    assert_eq!(output, Some(json!(111)));
    let mut output = json!({});
    composite
        .on_machine_end(&context, &mut output)
        .await
        .unwrap();
    assert_eq!(output, json!({"a": true, "b": true, "c": true}));

    // Redirects chain: a turns b into c, b turns c into d, c sees d.
    let target = composite
        .on_transition("s", "b", &mut context)
        .await
        .unwrap();
    assert_eq!(target, "d");
    assert_eq!(
        calls_of(&calls),
        ["a:transition(b)", "b:transition(c)", "c:transition(d)"]
    );
    let target = composite
        .on_transition("s", "x", &mut context)
        .await
        .unwrap();
    assert_eq!(target, "x");
    calls_of(&calls);

    // on_error: first Some wins, later hooks are not asked.
    let recovery = composite
        .on_error("s", &err("E", "m"), &mut context)
        .await
        .unwrap();
    assert_eq!(recovery.as_deref(), Some("recover_b"));
    assert_eq!(calls_of(&calls), ["a:error", "b:error"]);

    // on_action: every hook runs, in order; handled if any handled.
    let mut context = Context::new();
    let outcome = composite.on_action("act", &mut context).await.unwrap();
    assert_eq!(outcome, ActionOutcome::Handled);
    assert_eq!(
        calls_of(&calls),
        ["a:action(act)", "b:action(act)", "c:action(act)"]
    );
    assert_eq!(context["done_by_a"], json!("act"));
    assert_eq!(context["done_by_b"], json!("act"));
    let outcome = composite.on_action("other", &mut context).await.unwrap();
    assert_eq!(outcome, ActionOutcome::NotHandled);
}

#[tokio::test]
async fn composite_stops_at_first_failure_and_error_none_when_nobody_recovers() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let first = Tracer::new("first", &calls);
    let mut failing = Tracer::new("failing", &calls);
    failing.fail_on_enter = true;
    let last = Tracer::new("last", &calls);
    let mut composite = CompositeHooks::default();
    composite.push(Arc::new(first));
    composite.push(Arc::new(failing));
    composite.push(Arc::new(last));

    let mut context = Context::new();
    let error = composite
        .on_state_enter("s", &mut context)
        .await
        .unwrap_err();
    assert_eq!(error, HookError::failed("failing refuses"));
    assert_eq!(calls_of(&calls), ["first:enter"]);

    let recovery = composite
        .on_error("s", &err("E", "m"), &mut context)
        .await
        .unwrap();
    assert_eq!(recovery, None);
    assert_eq!(
        calls_of(&calls),
        ["first:error", "failing:error", "last:error"]
    );
    assert!(format!("{composite:?}").contains("len: 3"));
}

#[tokio::test]
async fn metrics_counts() {
    let metrics = MetricsHooks::new();
    let reader = metrics.clone();
    let hooks: Arc<dyn MachineHooks> = Arc::new(metrics);
    let mut context = Context::new();
    for state in ["start", "work", "work", "work", "done"] {
        hooks.on_state_enter(state, &mut context).await.unwrap();
    }
    for (from, to) in [
        ("start", "work"),
        ("work", "work"),
        ("work", "work"),
        ("work", "done"),
    ] {
        assert_eq!(
            hooks.on_transition(from, to, &mut context).await.unwrap(),
            to
        );
    }
    let error = err("AgentError", "x");
    assert_eq!(
        hooks.on_error("work", &error, &mut context).await.unwrap(),
        None
    );
    hooks.on_error("work", &error, &mut context).await.unwrap();
    hooks.on_error("start", &error, &mut context).await.unwrap();

    let snap = reader.snapshot();
    assert_eq!(snap.state_count("work"), 3);
    assert_eq!(snap.state_count("start"), 1);
    assert_eq!(snap.state_count("nowhere"), 0);
    assert_eq!(snap.total_states_executed, 5);
    assert_eq!(snap.transition_count("work", "work"), 2);
    assert_eq!(snap.transition_count("work", "done"), 1);
    assert_eq!(snap.transition_count("done", "work"), 0);
    assert_eq!(snap.errors_in("work"), 2);
    assert_eq!(snap.errors_in("start"), 1);
    assert_eq!(snap.error_count, 3);
    assert_eq!(
        snap.to_json(),
        json!({
            "state_counts": {"done": 1, "start": 1, "work": 3},
            "transition_counts": {"start->work": 1, "work->done": 1, "work->work": 2},
            "total_states_executed": 5,
            "error_count": 3,
            "error_counts": {"start": 1, "work": 2},
            "action_counts": {},
            "action_error_counts": {},
        })
    );
    assert!(context.is_empty());

    reader.reset();
    assert_eq!(reader.snapshot(), Default::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_thread_safe() {
    let metrics = MetricsHooks::new();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let m = metrics.clone();
        tasks.push(tokio::spawn(async move {
            let mut context = Context::new();
            for _ in 0..250 {
                m.on_state_enter("s", &mut context).await.unwrap();
                m.on_transition("s", "t", &mut context).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let snap = metrics.snapshot();
    assert_eq!(snap.state_count("s"), 2000);
    assert_eq!(snap.transition_count("s", "t"), 2000);
}

#[test]
fn logging_args() {
    use tracing::Level;
    let args = |v: Value| ctx(v);
    assert_eq!(LoggingHooks::default().level(), Level::INFO);
    assert_eq!(
        LoggingHooks::from_args(&args(json!({}))).unwrap().level(),
        Level::INFO
    );
    for (given, level) in [
        (json!("DEBUG"), Level::DEBUG),
        (json!("warning"), Level::WARN),
        (json!("critical"), Level::ERROR),
        (json!(10), Level::DEBUG),
        (json!(20), Level::INFO),
        (json!(30), Level::WARN),
        (json!(40), Level::ERROR),
        (json!(5), Level::TRACE),
        (Value::Null, Level::INFO),
    ] {
        let hooks = LoggingHooks::from_args(&args(json!({"log_level": given.clone()}))).unwrap();
        assert_eq!(hooks.level(), level, "{given}");
    }
    assert_eq!(
        LoggingHooks::from_args(&args(json!({"level": "trace"})))
            .unwrap()
            .level(),
        Level::TRACE
    );
    for bad in [
        json!({"log_level": "loud"}),
        json!({"log_level": [1]}),
        json!({"colour": 1}),
    ] {
        let error = LoggingHooks::from_args(&args(bad.clone())).unwrap_err();
        assert!(
            matches!(&error, HookError::InvalidArgs { class, .. } if class == "LoggingHooks"),
            "{bad}: {error}"
        );
    }
}

use common::Recorder;

#[test]
fn logging_emits_at_configured_level() {
    let recorder = Arc::new(Recorder::default());
    let dispatch = tracing::Dispatch::from(Arc::clone(&recorder));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        runtime.block_on(async {
            let hooks = LoggingHooks::new(tracing::Level::WARN);
            let mut context = Context::new();
            hooks.on_machine_start(&mut context).await.unwrap();
            hooks.on_state_enter("work", &mut context).await.unwrap();
            hooks
                .on_state_exit("work", &mut context, &mut None)
                .await
                .unwrap();
            let to = hooks
                .on_transition("work", "done", &mut context)
                .await
                .unwrap();
            assert_eq!(to, "done");
            let mut output = json!({"ok": true});
            hooks.on_machine_end(&context, &mut output).await.unwrap();
            assert_eq!(output, json!({"ok": true}));
        })
    });
    let events = recorder.events.lock().unwrap().clone();
    let messages: Vec<&str> = events.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(
        messages,
        [
            "Machine execution started",
            "Entering state: work",
            "Exiting state: work",
            "Transition: work -> done",
            "Machine execution ended with output: {\"ok\":true}",
        ]
    );
    assert!(
        events
            .iter()
            .all(|(level, _)| *level == tracing::Level::WARN)
    );
}

#[tokio::test]
async fn registry_builds_builtins() {
    let registry = HooksRegistry::new();
    let names = registry.names();
    for name in ["LoggingHooks", "MachineHooks", "MetricsHooks"] {
        assert!(names.contains(&name), "{names:?}");
        assert!(registry.contains(name));
    }
    assert_eq!(
        registry.contains("WebhookHooks"),
        cfg!(feature = "webhooks")
    );
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);

    let hooks = registry
        .build("LoggingHooks", &ctx(json!({"log_level": "debug"})))
        .unwrap();
    assert_pass_through(hooks.as_ref()).await;
    let hooks = registry.build("MetricsHooks", &Context::new()).unwrap();
    assert_pass_through(hooks.as_ref()).await;
    let hooks = registry.build("MachineHooks", &Context::new()).unwrap();
    assert_pass_through(hooks.as_ref()).await;

    let error = registry
        .build("MetricsHooks", &ctx(json!({"x": 1})))
        .err()
        .unwrap();
    assert!(matches!(error, HookError::InvalidArgs { .. }), "{error}");
    assert!(error.to_string().contains("`x`"), "{error}");
    assert!(
        registry
            .build("MachineHooks", &ctx(json!({"x": 1})))
            .is_err()
    );
    assert!(format!("{:?}", HooksRegistry::default()).contains("LoggingHooks"));
}

#[test]
fn registry_unknown_class_lists_names_and_suggests() {
    let registry = HooksRegistry::new();
    let error = registry
        .build("LogingHooks", &Context::new())
        .err()
        .unwrap();
    let HookError::UnknownClass {
        name,
        registered,
        suggestion,
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!(name, "LogingHooks");
    assert!(registered.contains(&"MetricsHooks".to_string()));
    assert_eq!(suggestion.as_deref(), Some("LoggingHooks"));
    let message = error.to_string();
    assert!(
        message.contains("unknown hooks class `LogingHooks`"),
        "{message}"
    );
    assert!(
        message.contains("did you mean `LoggingHooks`?"),
        "{message}"
    );
    assert!(
        message.contains("LoggingHooks, MachineHooks, MetricsHooks"),
        "{message}"
    );

    let error = registry
        .build("Frobnicator", &Context::new())
        .err()
        .unwrap();
    let message = error.to_string();
    assert!(!message.contains("did you mean"), "{message}");
    assert!(
        message.contains("registered classes: LoggingHooks"),
        "{message}"
    );

    let error = HooksRegistry::empty()
        .build("LoggingHooks", &Context::new())
        .err()
        .unwrap();
    assert!(
        error.to_string().contains("registered classes: (none)"),
        "{error}"
    );
    assert_eq!(StateError::from(error).error_type, error_type::HOOK);
}

/// Takes `{"prefix": str}`; handles the action `greet`.
struct Greeter {
    prefix: String,
}

#[async_trait]
impl MachineHooks for Greeter {
    async fn on_action(
        &self,
        action: &str,
        context: &mut Context,
    ) -> Result<ActionOutcome, HookError> {
        match action {
            "greet" => {
                let name = context.get("name").and_then(Value::as_str).unwrap_or("?");
                let greeting = format!("{}{name}", self.prefix);
                context.insert("greeting".into(), json!(greeting));
                Ok(ActionOutcome::Handled)
            }
            "explode" => Err(HookError::action("GreeterError", "no greeting today")),
            _ => Ok(ActionOutcome::NotHandled),
        }
    }
}

#[tokio::test]
async fn registry_custom_classes() {
    let mut registry = HooksRegistry::empty();
    registry.register("Greeter", |args| {
        let prefix = match args.get("prefix") {
            Some(Value::String(p)) => p.clone(),
            None => "Hello, ".to_string(),
            Some(other) => {
                return Err(HookError::invalid_args(
                    "Greeter",
                    format!("prefix must be a string, got {other}"),
                ));
            }
        };
        Ok(Arc::new(Greeter { prefix }) as Arc<dyn MachineHooks>)
    });
    let metrics = MetricsHooks::new();
    registry.register_instance("SharedMetrics", Arc::new(metrics.clone()));
    assert_eq!(registry.names(), ["Greeter", "SharedMetrics"]);

    let hooks = registry
        .build("Greeter", &ctx(json!({"prefix": "Hi "})))
        .unwrap();
    let mut context = ctx(json!({"name": "Ada"}));
    assert_eq!(
        hooks.on_action("greet", &mut context).await.unwrap(),
        ActionOutcome::Handled
    );
    assert_eq!(context["greeting"], json!("Hi Ada"));
    assert_eq!(
        hooks.on_action("other", &mut context).await.unwrap(),
        ActionOutcome::NotHandled
    );
    let error: StateError = hooks
        .on_action("explode", &mut context)
        .await
        .unwrap_err()
        .into();
    assert_eq!(error, err("GreeterError", "no greeting today"));
    assert!(
        registry
            .build("Greeter", &ctx(json!({"prefix": 3})))
            .is_err()
    );

    // Every build of a registered instance shares its state.
    for _ in 0..2 {
        let shared = registry
            .build("SharedMetrics", &ctx(json!({"ignored": true})))
            .unwrap();
        shared.on_state_enter("s", &mut context).await.unwrap();
    }
    assert_eq!(metrics.snapshot().state_count("s"), 2);

    // Registering again replaces; removing forgets.
    registry.register_instance("Greeter", Arc::new(NoopHooks));
    let hooks = registry.build("Greeter", &Context::new()).unwrap();
    assert_eq!(
        hooks.on_action("greet", &mut context).await.unwrap(),
        ActionOutcome::NotHandled
    );
    assert!(registry.remove("Greeter"));
    assert!(!registry.remove("Greeter"));
    assert!(!registry.contains("Greeter"));

    // A replaced built-in.
    let mut registry = HooksRegistry::new();
    registry.register_instance("MetricsHooks", Arc::new(metrics.clone()));
    let hooks = registry.build("MetricsHooks", &Context::new()).unwrap();
    hooks.on_state_enter("t", &mut context).await.unwrap();
    assert_eq!(metrics.snapshot().state_count("t"), 1);
}
