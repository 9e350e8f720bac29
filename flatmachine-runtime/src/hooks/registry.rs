//! [`HooksRegistry`]: resolves YAML `hooks: {class, args}` to hooks objects.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::{HookError, LoggingHooks, MachineHooks, MetricsHooks, NoopHooks};
use crate::Value;

/// Builds hooks for one machine run from the (already rendered) YAML `hooks.args` map.
pub type HooksConstructor = Arc<
    dyn Fn(&HooksFor, &serde_json::Map<String, Value>) -> Result<Arc<dyn MachineHooks>, HookError>
        + Send
        + Sync,
>;

/// The machine run hooks are being built for (given to constructors registered with
/// [`HooksRegistry::register_for`]): a parent and its children may name the same class, and
/// each run (and each resume) builds its own hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HooksFor {
    /// The machine's `data.name`.
    pub machine: &'static str,
    /// The compiled file the machine came from.
    pub source: &'static str,
    /// The execution the hooks serve.
    pub execution_id: String,
    /// The execution that started this one, for a child machine.
    pub parent_execution_id: Option<String>,
    /// Whether the hooks are built to resume the execution (rather than start it).
    pub resuming: bool,
}

impl HooksFor {
    /// A description of a run of `machine` (for calling [`HooksRegistry::build_for`] directly).
    pub fn new(machine: &'static str, execution_id: impl Into<String>) -> Self {
        Self {
            machine,
            source: "",
            execution_id: execution_id.into(),
            parent_execution_id: None,
            resuming: false,
        }
    }
}

/// Maps YAML `hooks.class` names to constructors.
///
/// The reference imports the class from `hooks.file` or `hooks.module`; compiled machines look
/// the name up here instead, in a registry the application fills in Rust. [`HooksRegistry::new`]
/// (also [`Default`]) has the built-ins under the reference's class names:
///
/// | class | built | args |
/// |---|---|---|
/// | `MachineHooks` | [`NoopHooks`] | none |
/// | `LoggingHooks` | [`LoggingHooks::from_args`] | `log_level` |
/// | `MetricsHooks` | [`MetricsHooks::from_args`] (a fresh instance per build) | none |
/// | `WebhookHooks` (feature `webhooks`) | `WebhookHooks::from_args` | `endpoint`/`url`, `timeout`, `api_key` |
///
/// Registering a name again replaces its constructor (built-ins included).
#[derive(Clone)]
pub struct HooksRegistry {
    constructors: BTreeMap<String, HooksConstructor>,
}

impl fmt::Debug for HooksRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HooksRegistry")
            .field("classes", &self.names())
            .finish()
    }
}

impl Default for HooksRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl HooksRegistry {
    /// A registry with the built-in classes (see the type's docs).
    pub fn new() -> Self {
        let mut registry = Self::empty();
        registry
            .register("MachineHooks", |args| match args.keys().next() {
                None => Ok(Arc::new(NoopHooks) as Arc<dyn MachineHooks>),
                Some(key) => Err(HookError::invalid_args(
                    "MachineHooks",
                    format!("unknown arg `{key}` (MachineHooks takes no args)"),
                )),
            })
            .register("LoggingHooks", |args| {
                Ok(Arc::new(LoggingHooks::from_args(args)?) as Arc<dyn MachineHooks>)
            })
            .register("MetricsHooks", |args| {
                Ok(Arc::new(MetricsHooks::from_args(args)?) as Arc<dyn MachineHooks>)
            });
        #[cfg(feature = "webhooks")]
        registry.register("WebhookHooks", |args| {
            Ok(Arc::new(super::WebhookHooks::from_args(args)?) as Arc<dyn MachineHooks>)
        });
        registry
    }

    /// A registry with no classes at all.
    pub fn empty() -> Self {
        Self {
            constructors: BTreeMap::new(),
        }
    }

    /// Registers `constructor` under the class name `name` (replacing any previous one).
    /// The constructor sees only the args; use [`register_for`](Self::register_for) to also
    /// learn which machine and execution the hooks are for.
    pub fn register<F>(&mut self, name: impl Into<String>, constructor: F) -> &mut Self
    where
        F: Fn(&serde_json::Map<String, Value>) -> Result<Arc<dyn MachineHooks>, HookError>
            + Send
            + Sync
            + 'static,
    {
        self.register_for(name, move |_for: &HooksFor, args| constructor(args))
    }

    /// Registers a constructor that is told which machine run the hooks are built for
    /// ([`HooksFor`]: machine name, execution id, parent execution id).
    pub fn register_for<F>(&mut self, name: impl Into<String>, constructor: F) -> &mut Self
    where
        F: Fn(
                &HooksFor,
                &serde_json::Map<String, Value>,
            ) -> Result<Arc<dyn MachineHooks>, HookError>
            + Send
            + Sync
            + 'static,
    {
        self.constructors.insert(name.into(), Arc::new(constructor));
        self
    }

    /// Registers one shared instance under `name`: every build returns a clone of `hooks` and
    /// ignores the args. Useful to read a [`MetricsHooks`] after the run, or to share state.
    pub fn register_instance(
        &mut self,
        name: impl Into<String>,
        hooks: Arc<dyn MachineHooks>,
    ) -> &mut Self {
        self.register(name, move |_args| Ok(Arc::clone(&hooks)))
    }

    /// Removes the class `name`; returns whether it was registered.
    pub fn remove(&mut self, name: &str) -> bool {
        self.constructors.remove(name).is_some()
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.constructors.contains_key(name)
    }

    /// The registered class names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.constructors.keys().map(String::as_str).collect()
    }

    /// Builds the hooks of class `name` from `args` (the YAML `hooks.args`, already rendered).
    ///
    /// An unregistered name is a [`HookError::UnknownClass`] listing the registered names and,
    /// when one is close, suggesting it.
    pub fn build(
        &self,
        name: &str,
        args: &serde_json::Map<String, Value>,
    ) -> Result<Arc<dyn MachineHooks>, HookError> {
        self.build_for(name, &HooksFor::new("", ""), args)
    }

    /// Builds the hooks of class `name` for the machine run `target` (what the engine calls).
    pub fn build_for(
        &self,
        name: &str,
        target: &HooksFor,
        args: &serde_json::Map<String, Value>,
    ) -> Result<Arc<dyn MachineHooks>, HookError> {
        match self.constructors.get(name) {
            Some(constructor) => constructor(target, args),
            None => Err(HookError::UnknownClass {
                name: name.to_string(),
                registered: self.constructors.keys().cloned().collect(),
                suggestion: closest(name, self.constructors.keys()).map(str::to_string),
            }),
        }
    }
}

/// The candidate closest to `name` (case-insensitive), if it is close enough to be a likely typo.
fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a String>) -> Option<&'a str> {
    let wanted = name.to_lowercase();
    let wanted_len = wanted.chars().count();
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        let lower = candidate.to_lowercase();
        let distance = if !wanted.is_empty() && (lower.contains(&wanted) || wanted.contains(&lower))
        {
            // A part of the name (`Logging` for `LoggingHooks`) counts as close.
            1
        } else {
            levenshtein(&wanted, &lower)
        };
        if best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate.as_str()));
        }
    }
    let limit = (wanted_len / 3).max(2);
    best.filter(|(d, _)| *d <= limit).map(|(_, c)| c)
}

/// Edit distance (insertions, deletions, substitutions) between two strings, by chars.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("loginghooks", "logginghooks"), 1);
    }

    #[test]
    fn suggestions() {
        let names: Vec<String> = ["LoggingHooks", "MetricsHooks", "MachineHooks"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(closest("LogingHooks", names.iter()), Some("LoggingHooks"));
        assert_eq!(closest("metricshooks", names.iter()), Some("MetricsHooks"));
        assert_eq!(closest("Metrics", names.iter()), Some("MetricsHooks"));
        assert_eq!(closest("Zebra", names.iter()), None);
        assert_eq!(closest("", names.iter()), None);
    }
}
