//! The variables a template sees (`context`, `input`, `output`, ...), exposed to minijinja
//! lazily so that reading one field does not convert the whole context.

use super::*;

/// One variable of a scope: its JSON value, exposed to minijinja lazily.
///
/// When the value is a JSON object it is exposed as a map object whose fields are
/// converted on first access (costly ones are cached), so a template reading
/// `context.n` does not convert the whole context.
#[derive(Debug)]
pub(super) struct Var {
    pub(super) json: Json,
    /// Converted fields that are costly to convert (lists, maps, long strings), by key.
    pub(super) fields: Mutex<HashMap<String, MjValue>>,
    /// The converted value (non-object values only).
    pub(super) whole: OnceLock<MjValue>,
}

impl Var {
    pub(super) fn new(json: Json) -> Arc<Self> {
        Arc::new(Self {
            json,
            fields: Mutex::new(HashMap::new()),
            whole: OnceLock::new(),
        })
    }

    pub(super) fn to_mj(self: &Arc<Self>) -> MjValue {
        if self.json.is_object() {
            MjValue::from_dyn_object(self.clone())
        } else {
            self.whole.get_or_init(|| json_to_mj(&self.json)).clone()
        }
    }

    pub(super) fn field(&self, key: &str) -> Option<MjValue> {
        let value = self.json.as_object()?.get(key)?;
        let worth_caching = match value {
            Json::Array(_) | Json::Object(_) => true,
            Json::String(s) => s.len() > 32,
            _ => false,
        };
        if !worth_caching {
            return Some(json_to_mj(value));
        }
        let mut cache = self.fields.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = cache.get(key) {
            return Some(hit.clone());
        }
        let converted = json_to_mj(value);
        cache.insert(key.to_owned(), converted.clone());
        Some(converted)
    }
}

impl Object for Var {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &MjValue) -> Option<MjValue> {
        self.field(key.as_str()?)
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<MjValue> {
        self.field(key)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.mapped_enumerator(|this| match this.json.as_object() {
            Some(map) => Box::new(map.keys().map(|k| MjValue::from(k.as_str()))),
            None => Box::new(std::iter::empty()),
        })
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.json.as_object().map_or(0, Map::len))
    }
}

/// The root object templates see: `context`, `input`, `output` and the foreach item.
#[derive(Debug, Clone)]
pub(super) struct Root {
    pub(super) context: Arc<Var>,
    pub(super) input: Option<Arc<Var>>,
    pub(super) output: Option<Arc<Var>>,
    pub(super) item: Option<(Arc<str>, Arc<Var>)>,
}

impl Root {
    pub(super) fn get(&self, key: &str) -> Option<&Arc<Var>> {
        if let Some((name, item)) = &self.item
            && &**name == key
        {
            return Some(item);
        }
        match key {
            "context" => Some(&self.context),
            "input" => self.input.as_ref(),
            "output" => self.output.as_ref(),
            _ => None,
        }
    }
}

impl Object for Root {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &MjValue) -> Option<MjValue> {
        self.get(key.as_str()?).map(Var::to_mj)
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<MjValue> {
        self.get(key).map(Var::to_mj)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let mut names = vec![MjValue::from("context")];
        if self.input.is_some() {
            names.push(MjValue::from("input"));
        }
        if self.output.is_some() {
            names.push(MjValue::from("output"));
        }
        if let Some((name, _)) = &self.item
            && !matches!(&**name, "context" | "input" | "output")
        {
            names.push(MjValue::from(name.clone()));
        }
        Enumerator::Values(names)
    }
}

/// The variables templates can see: `context`, and optionally `input`, `output` and a
/// foreach item. Build it once per step and reuse it for all of the step's templates.
///
/// Cloning is cheap (shared data), so a foreach can build one base scope and
/// `clone().with_item(..)` it per item instead of copying the context again. The execution
/// loop uses [`ScopeRef`] instead, which borrows the variables and copies nothing.
#[derive(Debug, Clone)]
pub struct Scope {
    root: Arc<Root>,
}

impl Scope {
    /// A scope with `context` bound (copied once; fields are converted lazily).
    pub fn new(context: &Context) -> Self {
        Self {
            root: Arc::new(Root {
                context: Var::new(Json::Object(context.clone())),
                input: None,
                output: None,
                item: None,
            }),
        }
    }

    /// The scope of templates inside a state: `context`, and `input` bound to the same
    /// context (as the reference does), sharing one copy.
    pub fn for_state(context: &Context) -> Self {
        let var = Var::new(Json::Object(context.clone()));
        Self {
            root: Arc::new(Root {
                context: Arc::clone(&var),
                input: Some(var),
                output: None,
                item: None,
            }),
        }
    }

    /// Binds `input`.
    pub fn with_input(mut self, input: &Json) -> Self {
        Arc::make_mut(&mut self.root).input = Some(Var::new(input.clone()));
        self
    }

    /// Binds `output`.
    pub fn with_output(mut self, output: &Json) -> Self {
        Arc::make_mut(&mut self.root).output = Some(Var::new(output.clone()));
        self
    }

    /// Binds a foreach item under `name` (the state's `as:`, default `item`). The item
    /// shadows a variable of the same name in `{{ }}` templates.
    pub fn with_item(mut self, name: &str, item: &Json) -> Self {
        Arc::make_mut(&mut self.root).item = Some((Arc::from(name), Var::new(item.clone())));
        self
    }

    /// The same variables, borrowed (with the converted values this scope already holds).
    pub fn as_ref(&self) -> ScopeRef<'_> {
        let root = &self.root;
        let input = match &root.input {
            None => InputRef::None,
            Some(var) if Arc::ptr_eq(var, &root.context) => InputRef::Context,
            Some(var) => InputRef::Json(&var.json),
        };
        ScopeRef {
            context: root
                .context
                .json
                .as_object()
                .unwrap_or_else(|| empty_context()),
            input,
            output: root.output.as_ref().map(|v| &v.json),
            item: root.item.as_ref().map(|(name, v)| (&**name, &v.json)),
            vars: Vars {
                context: OnceLock::from(Arc::clone(&root.context)),
                input: root.input.clone().map(OnceLock::from).unwrap_or_default(),
                output: root.output.clone().map(OnceLock::from).unwrap_or_default(),
                item: root
                    .item
                    .as_ref()
                    .map(|(_, v)| OnceLock::from(Arc::clone(v)))
                    .unwrap_or_default(),
                root: OnceLock::from(Arc::clone(root)),
            },
        }
    }
}

pub(super) fn empty_context() -> &'static Context {
    static EMPTY: OnceLock<Context> = OnceLock::new();
    EMPTY.get_or_init(Context::new)
}

/// What `input` is bound to in a [`ScopeRef`].
#[derive(Debug, Clone, Copy)]
pub(super) enum InputRef<'a> {
    None,
    /// The context itself (templates inside a state).
    Context,
    Json(&'a Json),
}

/// The minijinja side of a [`ScopeRef`]: each variable converted (copied) only when a
/// template that needs minijinja reads it, then kept.
#[derive(Debug, Clone, Default)]
pub(super) struct Vars {
    pub(super) context: OnceLock<Arc<Var>>,
    pub(super) input: OnceLock<Arc<Var>>,
    pub(super) output: OnceLock<Arc<Var>>,
    pub(super) item: OnceLock<Arc<Var>>,
    pub(super) root: OnceLock<Arc<Root>>,
}

/// A [`Scope`] that borrows its variables: nothing is copied to build it, and plain paths
/// (`{{ input.item }}`, `context.a.b`) are read straight from the borrowed JSON. Only a
/// template that needs minijinja (filters, operators, text with several parts) makes the
/// copy a [`Scope`] makes up front, once per scope.
#[derive(Debug, Clone)]
pub struct ScopeRef<'a> {
    context: &'a Context,
    input: InputRef<'a>,
    output: Option<&'a Json>,
    item: Option<(&'a str, &'a Json)>,
    vars: Vars,
}

impl<'a> ScopeRef<'a> {
    /// A scope with `context` bound.
    pub fn new(context: &'a Context) -> Self {
        Self {
            context,
            input: InputRef::None,
            output: None,
            item: None,
            vars: Vars::default(),
        }
    }

    /// The scope of templates inside a state: `context`, and `input` bound to the same
    /// context (as the reference does).
    pub fn for_state(context: &'a Context) -> Self {
        Self {
            input: InputRef::Context,
            ..Self::new(context)
        }
    }

    /// Binds `input`.
    pub fn with_input(mut self, input: &'a Json) -> Self {
        self.input = InputRef::Json(input);
        self.vars.input = OnceLock::new();
        self.vars.root = OnceLock::new();
        self
    }

    /// Binds `output`.
    pub fn with_output(mut self, output: &'a Json) -> Self {
        self.output = Some(output);
        self.vars.output = OnceLock::new();
        self.vars.root = OnceLock::new();
        self
    }

    /// Binds a foreach item under `name` (see [`Scope::with_item`]). The variables already
    /// converted for minijinja are kept.
    pub fn with_item(mut self, name: &'a str, item: &'a Json) -> Self {
        self.item = Some((name, item));
        self.vars.item = OnceLock::new();
        self.vars.root = OnceLock::new();
        self
    }

    pub(super) fn context_var(&self) -> &Arc<Var> {
        self.vars
            .context
            .get_or_init(|| Var::new(Json::Object(self.context.clone())))
    }

    /// The root object for minijinja (converting what was not converted yet).
    pub(super) fn root_value(&self) -> MjValue {
        let root = self.vars.root.get_or_init(|| {
            let context = Arc::clone(self.context_var());
            let input = match self.input {
                InputRef::None => None,
                InputRef::Context => Some(Arc::clone(&context)),
                InputRef::Json(json) => Some(Arc::clone(
                    self.vars.input.get_or_init(|| Var::new(json.clone())),
                )),
            };
            let output = self
                .output
                .map(|json| Arc::clone(self.vars.output.get_or_init(|| Var::new(json.clone()))));
            let item = self.item.map(|(name, json)| {
                (
                    Arc::from(name),
                    Arc::clone(self.vars.item.get_or_init(|| Var::new(json.clone()))),
                )
            });
            Arc::new(Root {
                context,
                input,
                output,
                item,
            })
        });
        MjValue::from_dyn_object(Arc::clone(root))
    }

    /// `context`, `input` or `output` (bare paths read these directly).
    pub(super) fn json_var(&self, name: &str) -> Option<JsonRef<'a>> {
        match name {
            "context" => Some(JsonRef::Map(self.context)),
            "input" => match self.input {
                InputRef::None => None,
                InputRef::Context => Some(JsonRef::Map(self.context)),
                InputRef::Json(json) => Some(JsonRef::Json(json)),
            },
            "output" => self.output.map(JsonRef::Json),
            _ => None,
        }
    }

    /// A variable as a `{{ }}` template sees it: the foreach item shadows the others.
    pub(super) fn template_var(&self, name: &str) -> Option<JsonRef<'a>> {
        match self.item {
            Some((item, json)) if item == name => Some(JsonRef::Json(json)),
            _ => self.json_var(name),
        }
    }
}

/// A borrowed variable: the context map itself, or a JSON value.
#[derive(Clone, Copy)]
pub(super) enum JsonRef<'a> {
    Map(&'a Context),
    Json(&'a Json),
}

impl<'a> JsonRef<'a> {
    pub(super) fn object(self) -> Option<&'a Context> {
        match self {
            JsonRef::Map(map) => Some(map),
            JsonRef::Json(json) => json.as_object(),
        }
    }

    pub(super) fn to_json(self) -> Json {
        match self {
            JsonRef::Map(map) => Json::Object(map.clone()),
            JsonRef::Json(json) => json.clone(),
        }
    }
}
