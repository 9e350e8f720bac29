//! [`LoggingHooks`]: `tracing` events for every step of a run.

use async_trait::async_trait;
use tracing::Level;

use super::{HookError, MachineHooks};
use crate::engine::ActionCall;
use crate::{Context, StateError, Value};

/// Emits one `tracing` event for the machine start and end, every state entry and exit, every
/// transition and every error routed to hooks, all at one configurable level (default `INFO`).
///
/// Never changes the context, output or next state. Events use the target
/// `flatmachine_runtime::hooks::logging`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggingHooks {
    level: Level,
}

impl Default for LoggingHooks {
    fn default() -> Self {
        Self::new(Level::INFO)
    }
}

/// Emits a `tracing` event at a level chosen at run time.
macro_rules! log_at {
    ($level:expr, $($arg:tt)+) => {{
        let level: Level = $level;
        if level == Level::ERROR {
            tracing::error!($($arg)+)
        } else if level == Level::WARN {
            tracing::warn!($($arg)+)
        } else if level == Level::INFO {
            tracing::info!($($arg)+)
        } else if level == Level::DEBUG {
            tracing::debug!($($arg)+)
        } else {
            tracing::trace!($($arg)+)
        }
    }};
}

impl LoggingHooks {
    /// Hooks that log at `level`.
    pub fn new(level: Level) -> Self {
        Self { level }
    }

    /// The level events are emitted at.
    pub fn level(&self) -> Level {
        self.level
    }

    /// Builds from YAML `hooks.args`: optional `log_level` (or `level`), either a name (`trace`,
    /// `debug`, `info`, `warning`/`warn`, `error`, `critical`; any case) or a Python `logging`
    /// number (10 debug, 20 info, 30 warning, 40 error, 50 critical; below 10 is trace).
    /// A null value means the default (`info`); any other key is an error.
    pub fn from_args(args: &serde_json::Map<String, Value>) -> Result<Self, HookError> {
        const CLASS: &str = "LoggingHooks";
        let mut level = Level::INFO;
        for (key, value) in args {
            match key.as_str() {
                "log_level" | "level" => {
                    if !value.is_null() {
                        level = parse_level(value)
                            .ok_or_else(|| HookError::invalid_args(CLASS, format!("`{key}` must be a level name (trace, debug, info, warning, error, critical) or a Python logging number, got {value}")))?;
                    }
                }
                other => {
                    return Err(HookError::invalid_args(
                        CLASS,
                        format!("unknown arg `{other}` (expected `log_level`)"),
                    ));
                }
            }
        }
        Ok(Self::new(level))
    }
}

/// A `tracing` level from a name or a Python `logging` level number.
fn parse_level(value: &Value) -> Option<Level> {
    match value {
        Value::String(name) => match name.trim().to_ascii_lowercase().as_str() {
            "trace" => Some(Level::TRACE),
            "debug" => Some(Level::DEBUG),
            "info" => Some(Level::INFO),
            "warn" | "warning" => Some(Level::WARN),
            "error" | "critical" | "fatal" => Some(Level::ERROR),
            _ => None,
        },
        Value::Number(n) => {
            let n = n.as_f64()?;
            Some(if n < 10.0 {
                Level::TRACE
            } else if n < 20.0 {
                Level::DEBUG
            } else if n < 30.0 {
                Level::INFO
            } else if n < 40.0 {
                Level::WARN
            } else {
                Level::ERROR
            })
        }
        _ => None,
    }
}

#[async_trait]
impl MachineHooks for LoggingHooks {
    async fn on_machine_start(&self, _context: &mut Context) -> Result<(), HookError> {
        log_at!(self.level, "Machine execution started");
        Ok(())
    }

    async fn on_machine_end(
        &self,
        _context: &Context,
        output: &mut Value,
    ) -> Result<(), HookError> {
        log_at!(self.level, output = %output, "Machine execution ended with output: {output}");
        Ok(())
    }

    async fn on_state_enter(&self, state: &str, _context: &mut Context) -> Result<(), HookError> {
        log_at!(self.level, state, "Entering state: {state}");
        Ok(())
    }

    async fn on_state_exit(
        &self,
        state: &str,
        _context: &mut Context,
        _output: &mut Option<Value>,
    ) -> Result<(), HookError> {
        log_at!(self.level, state, "Exiting state: {state}");
        Ok(())
    }

    async fn on_transition(
        &self,
        from: &str,
        to: &str,
        _context: &mut Context,
    ) -> Result<String, HookError> {
        log_at!(self.level, from, to, "Transition: {from} -> {to}");
        Ok(to.to_string())
    }

    async fn on_tool_calls(
        &self,
        state: &str,
        calls: &mut [super::PendingToolCall],
        _context: &mut Context,
    ) -> Result<super::ToolLoopControl, HookError> {
        let names: Vec<&str> = calls.iter().map(|c| c.call.name.as_str()).collect();
        let tools = names.join(", ");
        log_at!(self.level, state, tools = %tools, "Tool calls in {state}: {tools}");
        Ok(super::ToolLoopControl::Continue)
    }

    async fn on_tool_result(
        &self,
        state: &str,
        result: &mut super::ToolResultRecord,
        _context: &mut Context,
    ) -> Result<super::ToolLoopControl, HookError> {
        let (tool, is_error) = (result.call.name.as_str(), result.output.is_error);
        log_at!(
            self.level,
            state,
            tool,
            is_error,
            "Tool {tool} in {state} done (error: {is_error})"
        );
        Ok(super::ToolLoopControl::Continue)
    }

    async fn on_action_done(
        &self,
        call: &ActionCall,
        _context: &Context,
        error: Option<&StateError>,
    ) {
        let (action, state, machine) = (call.action, call.state, call.machine);
        match error {
            None => log_at!(self.level, action, state, machine, "Action {action} done"),
            Some(e) => log_at!(
                self.level,
                action,
                state,
                machine,
                error = %e,
                "Action {action} failed: {e}"
            ),
        }
    }

    async fn on_error(
        &self,
        state: &str,
        error: &StateError,
        _context: &mut Context,
    ) -> Result<Option<String>, HookError> {
        log_at!(
            self.level,
            state,
            error_type = %error.error_type,
            error = %error.message,
            "Error in state {state}: {error}"
        );
        Ok(None)
    }
}
