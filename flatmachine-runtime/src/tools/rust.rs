//! Tools written in Rust: a closure over a typed argument ([`tool_fn`]), a [`TypedTool`]
//! implementation, and the handlers of inline (YAML) tools ([`InlineTool`]).

use super::{Tool, ToolDefinition, ToolError, ToolInvocation, ToolOutput};
use crate::Value;
use async_trait::async_trait;
use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

/// The JSON Schema `schemars` derives for `A`, as a tool's `parameters` (the `$schema` and
/// `title` keys dropped: providers do not need them and some reject `$schema`).
fn parameters_of<A: JsonSchema>() -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(A))
        .unwrap_or_else(|_| super::empty_object_schema());
    if let Value::Object(map) = &mut schema {
        map.remove("$schema");
        map.remove("title");
        if !map.contains_key("properties") && map.get("type") == Some(&Value::from("object")) {
            map.insert("properties".into(), Value::Object(serde_json::Map::new()));
        }
    }
    schema
}

/// Reads validated arguments into `A`; a mismatch (a schema `schemars` could not express) is
/// a tool error for the model.
fn read_args<A: DeserializeOwned>(tool: &str, arguments: Value) -> Result<A, ToolError> {
    serde_json::from_value(arguments)
        .map_err(|e| ToolError::new(format!("invalid arguments for `{tool}`: {e}")))
}

/// A Rust tool made from an async closure over a serde argument type (see [`tool_fn`]).
pub struct FnTool<A, F> {
    definition: ToolDefinition,
    f: F,
    args: PhantomData<fn(A)>,
}

/// A tool named `name` that deserializes the model's arguments into `A` and calls `f`.
///
/// The tool's `parameters` schema is `A`'s JSON Schema from `schemars`, so the model is told
/// exactly what Rust accepts:
///
/// ```
/// use flatmachine_runtime::tools::{ToolError, tool_fn};
///
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Add {
///     /// The first number.
///     a: i64,
///     /// The second number.
///     b: i64,
/// }
///
/// let add = tool_fn("add", "Adds two numbers", |args: Add| async move {
///     Ok::<_, ToolError>((args.a + args.b).to_string())
/// });
/// # let _ = add;
/// ```
pub fn tool_fn<A, F, Fut, O>(
    name: impl Into<String>,
    description: impl Into<String>,
    f: F,
) -> FnTool<A, F>
where
    A: DeserializeOwned + JsonSchema + Send + 'static,
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, ToolError>> + Send + 'static,
    O: Into<ToolOutput>,
{
    FnTool {
        definition: ToolDefinition::new(name, description, parameters_of::<A>()),
        f,
        args: PhantomData,
    }
}

#[async_trait]
impl<A, F, Fut, O> Tool for FnTool<A, F>
where
    A: DeserializeOwned + JsonSchema + Send + 'static,
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, ToolError>> + Send + 'static,
    O: Into<ToolOutput>,
{
    fn definition(&self) -> &ToolDefinition {
        &self.definition
    }

    async fn call(
        &self,
        arguments: Value,
        _invocation: &ToolInvocation,
    ) -> Result<ToolOutput, ToolError> {
        let args = read_args::<A>(&self.definition.name, arguments)?;
        (self.f)(args).await.map(Into::into)
    }
}

/// A tool as a Rust type: its argument type (serde + schemars), name and description, and an
/// async `run`. Register it with `MachineBuilder::typed_tool(..)` (or wrap it in [`Typed`]).
///
/// ```
/// use flatmachine_runtime::tools::{ToolError, ToolInvocation, ToolOutput, TypedTool};
///
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Words {
///     /// The text to count the words of.
///     text: String,
/// }
///
/// struct WordCount;
///
/// #[async_trait::async_trait]
/// impl TypedTool for WordCount {
///     type Args = Words;
///     fn name(&self) -> &str { "word_count" }
///     fn description(&self) -> &str { "Counts the words of a text" }
///     async fn run(&self, args: Words, _: &ToolInvocation) -> Result<ToolOutput, ToolError> {
///         Ok(args.text.split_whitespace().count().to_string().into())
///     }
/// }
/// ```
#[async_trait]
pub trait TypedTool: Send + Sync + 'static {
    /// The arguments: their JSON Schema is what the model sees.
    type Args: DeserializeOwned + JsonSchema + Send;

    /// The name the model calls it by.
    fn name(&self) -> &str;

    /// What it does.
    fn description(&self) -> &str;

    /// Runs the tool with arguments that fit the schema.
    async fn run(
        &self,
        args: Self::Args,
        invocation: &ToolInvocation,
    ) -> Result<ToolOutput, ToolError>;
}

/// A [`TypedTool`] as a [`Tool`].
pub struct Typed<T> {
    definition: ToolDefinition,
    tool: T,
}

impl<T: TypedTool> Typed<T> {
    /// Wraps `tool`, deriving its definition once.
    pub fn new(tool: T) -> Self {
        let definition =
            ToolDefinition::new(tool.name(), tool.description(), parameters_of::<T::Args>());
        Self { definition, tool }
    }
}

#[async_trait]
impl<T: TypedTool> Tool for Typed<T> {
    fn definition(&self) -> &ToolDefinition {
        &self.definition
    }

    async fn call(
        &self,
        arguments: Value,
        invocation: &ToolInvocation,
    ) -> Result<ToolOutput, ToolError> {
        let args = read_args::<T::Args>(&self.definition.name, arguments)?;
        self.tool.run(args, invocation).await
    }
}

/// The implementation of an inline (YAML) tool: an async closure over the validated arguments
/// object and the invocation (`MachineBuilder::tool_handler`).
pub type HandlerFn = Arc<
    dyn Fn(Value, ToolInvocation) -> BoxFuture<'static, Result<ToolOutput, ToolError>>
        + Send
        + Sync,
>;

/// An inline tool: the definition written in the agent YAML and the Rust handler registered
/// for its name.
pub struct InlineTool {
    definition: ToolDefinition,
    handler: HandlerFn,
}

impl InlineTool {
    /// The tool `definition` served by `handler`.
    pub fn new(definition: ToolDefinition, handler: HandlerFn) -> Self {
        Self {
            definition,
            handler,
        }
    }
}

#[async_trait]
impl Tool for InlineTool {
    fn definition(&self) -> &ToolDefinition {
        &self.definition
    }

    async fn call(
        &self,
        arguments: Value,
        invocation: &ToolInvocation,
    ) -> Result<ToolOutput, ToolError> {
        (self.handler)(arguments, invocation.clone()).await
    }
}
