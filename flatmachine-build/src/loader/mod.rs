//! Loads a machine file and every file it references (agents, child machines, `profiles.yml`),
//! checks each against the JSON Schema of its format, and deserializes the typed config.
//!
//! Paths in `agents:` and `machines:` resolve relative to the directory of the file that names
//! them. A `profiles.yml` is looked for in the directory of each agent file (the reference's
//! discovery); the nearest one wins entirely, with the machine's as the fallback: the file its
//! `profiles:` key names, else a `profiles.yml` beside it.

use crate::diagnostic::{Diagnostic, Diagnostics, did_you_mean};
use crate::model::{
    AgentRef, AgentWrapper, MachineRef, MachineWrapper, ModelRef, ProfilesWrapper, SPEC_VERSION,
};
use crate::source::{FileId, SourceDb, Span};
use crate::yaml::{self, Node, PathSeg};
use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

mod schema;

use schema::{SchemaKind, SchemaProblem, ignored_path, schema_diagnostics, spec_problems};

/// Where a config lives: a file and the path of its root node inside that file's document
/// (empty for a whole file, longer for an inline agent or machine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub file: FileId,
    /// Path of the config's root inside the document.
    pub base: Vec<PathSeg>,
}

impl Origin {
    /// The path `base + rel`.
    pub fn path(&self, rel: &[PathSeg]) -> Vec<PathSeg> {
        let mut p = self.base.clone();
        p.extend_from_slice(rel);
        p
    }
}

/// Index of a machine in [`Project::machines`].
pub type MachineId = usize;

/// A loaded machine.
#[derive(Debug, Clone)]
pub struct MachineUnit {
    /// Where its config is.
    pub origin: Origin,
    /// Directory that relative references resolve against.
    pub dir: PathBuf,
    /// The typed config (absent when the file did not deserialize; errors say why).
    pub config: Option<MachineWrapper>,
    /// Agents by name.
    pub agents: IndexMap<String, AgentUnit>,
    /// Child machines by name → machine id (absent when the reference failed to load).
    pub machines: IndexMap<String, Option<MachineId>>,
    /// The machine's own `profiles.yml`, if one sits beside it.
    pub profiles: Option<ProfilesId>,
}

impl MachineUnit {
    /// A unit at `origin` with nothing loaded yet.
    fn empty(origin: Origin, dir: PathBuf) -> Self {
        MachineUnit {
            origin,
            dir,
            config: None,
            agents: IndexMap::new(),
            machines: IndexMap::new(),
            profiles: None,
        }
    }
}

/// Index of a profiles file in [`Project::profiles`].
pub type ProfilesId = usize;

/// A loaded `profiles.yml`.
#[derive(Debug, Clone)]
pub struct ProfilesUnit {
    /// Where it is.
    pub origin: Origin,
    /// The typed config.
    pub config: Option<ProfilesWrapper>,
}

/// How an agent was given.
#[derive(Debug, Clone)]
pub enum AgentUnit {
    /// A flatagent (by path or inline).
    FlatAgent {
        /// Where its config is.
        origin: Origin,
        /// The typed config.
        config: Option<AgentWrapper>,
        /// The profiles that apply to it.
        profiles: Option<ProfilesId>,
    },
    /// A typed adapter reference (`{type, ref, config}`), resolved at run time.
    Adapter {
        /// Adapter type.
        kind: String,
        /// What it loads.
        reference: Option<String>,
        /// Adapter settings.
        config: Option<serde_json::Map<String, Value>>,
    },
    /// The reference could not be loaded (the error is in the diagnostics).
    Missing,
    /// The agent file does not exist. The analysis reports the diagnostic (always an error)
    /// with what it knows about the states that call the agent.
    NotFound {
        /// The path as written in `agents:`.
        path: String,
        /// The "cannot read" diagnostic, located at the reference.
        diagnostic: Box<Diagnostic>,
    },
}

/// Everything read for one root machine.
#[derive(Debug, Default)]
pub struct Project {
    /// All files read.
    pub db: SourceDb,
    /// The YAML tree of each file.
    pub docs: HashMap<FileId, Node>,
    /// Every machine: the root first, then children as discovered.
    pub machines: Vec<MachineUnit>,
    /// Every profiles file.
    pub profiles: Vec<ProfilesUnit>,
    /// Problems found while loading.
    pub diagnostics: Diagnostics,
}

impl Project {
    /// The root machine.
    pub fn root(&self) -> Option<&MachineUnit> {
        self.machines.first()
    }

    /// The YAML node at `rel` under an origin.
    pub fn node(&self, origin: &Origin, rel: &[PathSeg]) -> Option<&Node> {
        self.docs.get(&origin.file)?.at(&origin.path(rel))
    }

    /// The best span for `rel` under an origin: the node there, or the nearest existing parent.
    pub fn span(&self, origin: &Origin, rel: &[PathSeg]) -> Span {
        match self.docs.get(&origin.file) {
            Some(doc) => doc.nearest(&origin.path(rel)).span,
            None => Span::new(origin.file, 0, 0),
        }
    }

    /// The span of the key of `rel` under an origin (falls back to the value's span).
    pub fn key_span(&self, origin: &Origin, rel: &[PathSeg]) -> Span {
        self.docs
            .get(&origin.file)
            .and_then(|doc| doc.key_at(&origin.path(rel)))
            .map(|n| n.span)
            .unwrap_or_else(|| self.span(origin, rel))
    }

    /// Paths of every file read (for `cargo:rerun-if-changed` and `include_bytes!`).
    pub fn files_read(&self) -> Vec<PathBuf> {
        self.db.files().map(|(_, f)| f.path.clone()).collect()
    }
}

/// Load a machine file and everything it references. Problems are collected in
/// `Project::diagnostics`; loading goes as far as it can.
pub fn load(path: &Path) -> Project {
    load_with_display(path, None)
}

/// Like [`load`], showing the root file as `display` in diagnostics.
pub fn load_with_display(path: &Path, display: Option<String>) -> Project {
    let mut loader = Loader::new(path, display);
    match loader.read_file(path, None) {
        Ok(file) => {
            let origin = Origin { file, base: vec![] };
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            loader.machine_by_path.insert(normalize(path), 0);
            loader.load_machine(origin, dir);
        }
        Err(d) => loader.project.diagnostics.push(d),
    }
    loader.project
}

/// Load a flatagent file on its own (for `flatagent!`): the project has one machine unit with
/// no config, whose single agent (named after the file) is the file, with the `profiles.yml`
/// beside it.
pub fn load_agent_file(path: &Path, display: Option<String>) -> Project {
    let mut loader = Loader::new(path, display);
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let file_name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unit = match loader.read_file(path, None) {
        Ok(file) => {
            let origin = Origin { file, base: vec![] };
            loader
                .project
                .machines
                .push(MachineUnit::empty(origin.clone(), dir.clone()));
            loader.agent_at(origin, dir.clone(), &dir, None)
        }
        Err(d) => {
            loader.project.diagnostics.push(d);
            return loader.project;
        }
    };
    let key = Path::new(&file_name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "agent".into());
    loader.project.machines[0].agents.insert(key, unit);
    loader.project
}

struct Loader {
    project: Project,
    machine_by_path: HashMap<PathBuf, MachineId>,
    profiles_by_dir: HashMap<PathBuf, Option<ProfilesId>>,
    profiles_by_path: HashMap<PathBuf, Option<ProfilesId>>,
    display_base: PathBuf,
    root_display: Option<String>,
}

/// Lexically normalise a path (no file system access): drop `.`, fold `..`.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            // `a/..` cancels out; `..` after nothing (or after `..`) stays: `../../x`.
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn seg(key: &str) -> PathSeg {
    PathSeg::Key(key.to_string())
}

impl Loader {
    /// A loader whose root file is `path`, shown as `display` in diagnostics when given.
    fn new(path: &Path, display: Option<String>) -> Self {
        Loader {
            project: Project::default(),
            machine_by_path: HashMap::new(),
            profiles_by_dir: HashMap::new(),
            profiles_by_path: HashMap::new(),
            display_base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            root_display: display,
        }
    }

    fn display_of(&self, path: &Path) -> String {
        if self.project.db.files().next().is_none()
            && let Some(d) = &self.root_display
        {
            return d.clone();
        }
        let shown = match (&self.root_display, self.project.db.files().next()) {
            (Some(root_disp), Some((_, root))) => {
                let root_dir = Path::new(root_disp).parent().unwrap_or(Path::new(""));
                match path.strip_prefix(root.path.parent().unwrap_or(Path::new(""))) {
                    Ok(rel) => root_dir.join(rel),
                    Err(_) => path.to_path_buf(),
                }
            }
            _ => path
                .strip_prefix(&self.display_base)
                .map_or(path.to_path_buf(), |_| path.to_path_buf()),
        };
        normalize(&shown).display().to_string()
    }

    /// Read and parse a file. `reference` is the span of the YAML value that named it.
    fn read_file(&mut self, path: &Path, reference: Option<Span>) -> Result<FileId, Diagnostic> {
        let norm = normalize(path);
        if let Some(id) = self.project.db.find(&norm) {
            return Ok(id);
        }
        let text = std::fs::read_to_string(&norm).map_err(|e| {
            let what = if e.kind() == std::io::ErrorKind::NotFound {
                "file not found".to_string()
            } else {
                e.to_string()
            };
            let shown = self.display_of(&norm);
            let help = if reference.is_some() {
                "paths are relative to the directory of the file that names them"
            } else {
                "check the path of the machine file"
            };
            Diagnostic::error(format!("cannot read `{shown}`: {what}"), reference).with_help(help)
        })?;
        let display = self.display_of(&norm);
        let id = self.project.db.add(norm, display, text);
        match yaml::parse(id, self.project.db.file(id)) {
            Ok(node) => {
                self.project.docs.insert(id, node);
                Ok(id)
            }
            Err(d) => Err(d),
        }
    }

    /// Check against a schema, then deserialize, reporting unknown keys as warnings.
    fn typed<T: DeserializeOwned>(
        &mut self,
        origin: &Origin,
        schema: SchemaKind,
        what: &str,
    ) -> Option<T> {
        let (json, errs, type_name, span) = {
            let node = self.project.node(origin, &[])?;
            let mut errs = Vec::new();
            let json = yaml::to_json(node, &mut errs);
            (json, errs, node.type_name(), node.span)
        };
        let had_json_errors = !errs.is_empty();
        self.project.diagnostics.extend(errs);
        if !json.is_object() {
            self.project.diagnostics.push(Diagnostic::error(
                format!("expected a {what} config (a mapping with `spec`, `spec_version` and `data`), found a {type_name}"),
                Some(span),
            ));
            return None;
        }
        let schema_ok = self.check_schema(origin, schema, &json);
        let mut unknown = Vec::new();
        // By value: the typed config takes over the JSON tree's strings instead of copying them.
        let result: Result<T, _> = serde_ignored::deserialize(json, |path| {
            unknown.push(ignored_path(&path));
        });
        match result {
            Ok(v) => {
                for p in unknown {
                    // Keys of later specs get their own diagnostic (`later_keys::check`).
                    if what == "machine" && crate::later_keys::later_key(&p).is_some() {
                        continue;
                    }
                    let key = match p.last() {
                        Some(PathSeg::Key(k)) => k.clone(),
                        _ => continue,
                    };
                    let span = self.project.key_span(origin, &p);
                    self.project.diagnostics.push(
                        Diagnostic::warning(format!("unknown key `{key}` is ignored"), Some(span))
                            .with_help(format!("`{key}` is not part of the FlatMachines {SPEC_VERSION} {what} format")),
                    );
                }
                if had_json_errors { None } else { Some(v) }
            }
            Err(e) => {
                if schema_ok {
                    self.project.diagnostics.push(Diagnostic::error(
                        format!("invalid {what} config: {e}"),
                        Some(self.project.span(origin, &[])),
                    ));
                }
                None
            }
        }
    }

    fn check_schema(&mut self, origin: &Origin, schema: SchemaKind, json: &Value) -> bool {
        let Some(validator) = schema.validator() else {
            return true;
        };
        let mut ok = true;
        for err in validator.iter_errors(json) {
            ok = false;
            for (path, d) in schema_diagnostics(&err) {
                let span = match &d {
                    SchemaProblem::Missing(_) => {
                        if path.is_empty() {
                            self.project.span(origin, &[]).sub(0, 0)
                        } else {
                            self.project.key_span(origin, &path)
                        }
                    }
                    SchemaProblem::Other(_) => self.project.span(origin, &path),
                };
                let diag = match d {
                    SchemaProblem::Missing(f) | SchemaProblem::Other(f) => f(span),
                };
                self.project.diagnostics.push(diag);
            }
        }
        ok
    }

    fn load_machine(&mut self, origin: Origin, dir: PathBuf) -> MachineId {
        let id = self.project.machines.len();
        self.project
            .machines
            .push(MachineUnit::empty(origin.clone(), dir.clone()));
        if !self.check_spec(&origin, "flatmachine") {
            return id;
        }
        let config: Option<MachineWrapper> = self.typed(&origin, SchemaKind::Machine, "machine");
        crate::later_keys::check(&mut self.project, &origin);
        let mut agents = IndexMap::new();
        let mut machines = IndexMap::new();
        // `profiles: ./profiles.yml` (upstream machines all say it) names the machine's
        // profiles file; without it, the one beside the machine (looked up when needed).
        let declared_profiles = config
            .as_ref()
            .and_then(|c| c.data.profiles.clone())
            .map(|path| self.declared_profiles(&origin, &dir, &path));
        if let Some(cfg) = &config {
            for (name, aref) in cfg.data.agents.iter().flatten() {
                let rel = [seg("data"), seg("agents"), seg(name)];
                let unit = self.load_agent(&origin, &dir, &rel, aref, declared_profiles);
                agents.insert(name.clone(), unit);
            }
            for (name, mref) in cfg.data.machines.iter().flatten() {
                let rel = vec![seg("data"), seg("machines"), seg(name)];
                let child = self.load_child_machine(&origin, &dir, rel, mref);
                machines.insert(name.clone(), child);
            }
        }
        let unit = &mut self.project.machines[id];
        unit.config = config;
        unit.agents = agents;
        unit.machines = machines;
        unit.profiles = match declared_profiles {
            Some(declared) => declared,
            None => self
                .profiles_by_dir
                .get(&normalize(&dir))
                .copied()
                .flatten(),
        };
        id
    }

    /// The profiles file a machine names with `profiles:` (relative to the machine's folder).
    fn declared_profiles(&mut self, origin: &Origin, dir: &Path, path: &str) -> Option<ProfilesId> {
        let full = normalize(&dir.join(path));
        if let Some(found) = self.profiles_by_path.get(&full) {
            return *found;
        }
        let span = self.project.span(origin, &[seg("data"), seg("profiles")]);
        let found = match self.read_file(&full, Some(span)) {
            Ok(file) => Some(self.load_profiles(file)),
            Err(d) => {
                self.project.diagnostics.push(d);
                None
            }
        };
        self.profiles_by_path.insert(full, found);
        found
    }

    /// Checks and records a profiles file that has been read.
    fn load_profiles(&mut self, file: FileId) -> ProfilesId {
        let origin = Origin { file, base: vec![] };
        let config = if self.check_spec(&origin, "flatprofiles") {
            self.typed(&origin, SchemaKind::Profiles, "profiles")
        } else {
            None
        };
        if let Some(cfg) = &config {
            self.check_profile_layers(&origin, cfg);
        }
        self.project.profiles.push(ProfilesUnit { origin, config });
        self.project.profiles.len() - 1
    }

    fn load_child_machine(
        &mut self,
        origin: &Origin,
        dir: &Path,
        rel: Vec<PathSeg>,
        mref: &MachineRef,
    ) -> Option<MachineId> {
        let (path, inline_rel) = match mref {
            MachineRef::Path(p) => (Some(p.clone()), None),
            MachineRef::Inline(_) => (None, Some(rel.clone())),
            MachineRef::Reference(r) => match (&r.path, &r.inline) {
                (Some(p), _) => (Some(p.clone()), None),
                (None, Some(_)) => {
                    let mut r2 = rel.clone();
                    r2.push(seg("inline"));
                    (None, Some(r2))
                }
                (None, None) => {
                    let span = self.project.span(origin, &rel);
                    self.project.diagnostics.push(Diagnostic::error(
                        "machine reference needs `path` or `inline`",
                        Some(span),
                    ));
                    return None;
                }
            },
        };
        if let Some(inline_rel) = inline_rel {
            let child_origin = Origin {
                file: origin.file,
                base: origin.path(&inline_rel),
            };
            return Some(self.load_machine(child_origin, dir.to_path_buf()));
        }
        let path = path?;
        let mut value_rel = rel.clone();
        if matches!(mref, MachineRef::Reference(_)) {
            value_rel.push(seg("path"));
        }
        let span = self.project.span(origin, &value_rel);
        let full = normalize(&dir.join(&path));
        if let Some(&id) = self.machine_by_path.get(&full) {
            return Some(id);
        }
        match self.read_file(&full, Some(span)) {
            Ok(file) => {
                let id = self.project.machines.len();
                self.machine_by_path.insert(full.clone(), id);
                let child_dir = full.parent().map(Path::to_path_buf).unwrap_or_default();
                Some(self.load_machine(Origin { file, base: vec![] }, child_dir))
            }
            Err(d) => {
                self.project.diagnostics.push(d);
                None
            }
        }
    }

    fn load_agent(
        &mut self,
        origin: &Origin,
        dir: &Path,
        rel: &[PathSeg],
        aref: &AgentRef,
        machine_profiles: Option<Option<ProfilesId>>,
    ) -> AgentUnit {
        let (agent_origin, agent_dir) = match aref {
            AgentRef::Typed(t) => {
                return AgentUnit::Adapter {
                    kind: t.kind.clone(),
                    reference: t.reference.clone(),
                    config: t.config.clone(),
                };
            }
            AgentRef::Inline(_) => (
                Origin {
                    file: origin.file,
                    base: origin.path(rel),
                },
                dir.to_path_buf(),
            ),
            AgentRef::Path(p) => {
                let span = self.project.span(origin, rel);
                let full = normalize(&dir.join(p));
                let absent = !full.exists();
                match self.read_file(&full, Some(span)) {
                    Ok(file) => (
                        Origin { file, base: vec![] },
                        full.parent().map(Path::to_path_buf).unwrap_or_default(),
                    ),
                    Err(d) if absent => {
                        return AgentUnit::NotFound {
                            path: p.clone(),
                            diagnostic: Box::new(d),
                        };
                    }
                    Err(d) => {
                        self.project.diagnostics.push(d);
                        return AgentUnit::Missing;
                    }
                }
            }
        };
        self.agent_at(agent_origin, agent_dir, dir, machine_profiles)
    }

    /// A flatagent config at `agent_origin`: typed, with its profiles (its own folder's, else
    /// the machine's) and its profile names checked.
    fn agent_at(
        &mut self,
        agent_origin: Origin,
        agent_dir: PathBuf,
        dir: &Path,
        machine_profiles: Option<Option<ProfilesId>>,
    ) -> AgentUnit {
        if !self.check_spec(&agent_origin, "flatagent") {
            return AgentUnit::Missing;
        }
        let config: Option<AgentWrapper> = self.typed(&agent_origin, SchemaKind::Agent, "agent");
        // Profiles are discovered for every flatagent, so the `default` and `override` layers
        // apply to all of them: the agent's folder first, else the machine's (the nearest file
        // wins entirely).
        let profiles = if config.is_some() {
            match self.profiles_in(&agent_dir) {
                Some(p) => Some(p),
                None => match machine_profiles {
                    Some(declared) => declared,
                    None => self.profiles_in(dir),
                },
            }
        } else {
            None
        };
        if let Some(cfg) = &config {
            self.check_profile_refs(&agent_origin, cfg, profiles);
        }
        AgentUnit::FlatAgent {
            origin: agent_origin,
            config,
            profiles,
        }
    }

    /// Unknown profile names are errors, since the compiler sees the files: the reference
    /// warns and falls back to the `default` profile, but a typo silently sending prompts to
    /// another model is a costly surprise.
    fn check_profile_refs(
        &mut self,
        origin: &Origin,
        cfg: &AgentWrapper,
        profiles: Option<ProfilesId>,
    ) {
        let (name, rel) = match &cfg.data.model {
            Some(ModelRef::Profile(p)) => (p.clone(), vec![seg("data"), seg("model")]),
            Some(ModelRef::Config(c)) => match &c.profile {
                Some(p) => (p.clone(), vec![seg("data"), seg("model"), seg("profile")]),
                None => return,
            },
            None => return,
        };
        let span = self.project.span(origin, &rel);
        let Some(pid) = profiles else {
            // A bare string model without profiles is the model name itself in the reference
            // (`model: gpt-4o`), so only `{profile: ...}` needs a profiles file.
            if matches!(cfg.data.model, Some(ModelRef::Config(_))) {
                self.project.diagnostics.push(
                    Diagnostic::error(format!("model profile `{name}` is used but no `profiles.yml` was found"), Some(span))
                        .with_help("put a `profiles.yml` (spec: flatprofiles) beside the agent or machine file"),
                );
            }
            return;
        };
        let Some(pcfg) = &self.project.profiles[pid].config else {
            return;
        };
        if !pcfg.data.model_profiles.contains_key(&name) {
            let names: Vec<&str> = pcfg
                .data
                .model_profiles
                .keys()
                .map(String::as_str)
                .collect();
            let shown = self
                .project
                .db
                .file(self.project.profiles[pid].origin.file)
                .display
                .clone();
            let mut diag = Diagnostic::error(format!("unknown model profile `{name}`"), Some(span))
                .with_help_opt(did_you_mean(&name, names.iter().copied()))
                .with_note(format!(
                    "profiles defined in `{shown}`: {}",
                    names.join(", ")
                ));
            if let Some(d) = pcfg
                .data
                .default
                .as_ref()
                .filter(|d| pcfg.data.model_profiles.contains_key(*d))
            {
                diag = diag.with_note(format!(
                    "the Python reference would warn and use the default profile `{d}`; a \
                     misspelt profile is an error here so prompts never go to another model"
                ));
            }
            self.project.diagnostics.push(diag);
        }
    }

    /// `default` and `override` must name profiles of the file; the reference only logs a
    /// warning and skips the layer, so this is a warning too.
    fn check_profile_layers(&mut self, origin: &Origin, cfg: &ProfilesWrapper) {
        let names: Vec<&str> = cfg.data.model_profiles.keys().map(String::as_str).collect();
        for (key, value) in [
            ("default", cfg.data.default.as_ref()),
            ("override", cfg.data.override_.as_ref()),
        ] {
            let Some(value) = value else { continue };
            if cfg.data.model_profiles.contains_key(value) {
                continue;
            }
            let span = self.project.span(origin, &[seg("data"), seg(key)]);
            let mut d = Diagnostic::warning(
                format!("`{key}` names unknown model profile `{value}`, so it is ignored"),
                Some(span),
            )
            .with_help_opt(did_you_mean(value, names.iter().copied()));
            if d.help.is_empty() {
                d = d.with_note(format!("profiles defined here: {}", names.join(", ")));
            }
            self.project.diagnostics.push(d);
        }
    }

    /// The `profiles.yml` in `dir`, if there is one.
    fn profiles_in(&mut self, dir: &Path) -> Option<ProfilesId> {
        let dir = normalize(dir);
        if let Some(found) = self.profiles_by_dir.get(&dir) {
            return *found;
        }
        let path = dir.join("profiles.yml");
        if let Some(found) = self.profiles_by_path.get(&path) {
            let found = *found;
            self.profiles_by_dir.insert(dir, found);
            return found;
        }
        let found = if path.is_file() {
            match self.read_file(&path, None) {
                Ok(file) => Some(self.load_profiles(file)),
                Err(d) => {
                    self.project.diagnostics.push(d);
                    None
                }
            }
        } else {
            None
        };
        self.profiles_by_path.insert(path, found);
        self.profiles_by_dir.insert(dir, found);
        found
    }

    /// Check `spec:` (and warn on a `spec_version` major mismatch). False if it is not a config of this kind.
    fn check_spec(&mut self, origin: &Origin, expected: &str) -> bool {
        let Some(node) = self.project.node(origin, &[]) else {
            return false;
        };
        let (ok, found) = spec_problems(node, expected);
        self.project.diagnostics.extend(found);
        ok
    }
}

#[cfg(test)]
mod normalize_tests {
    use super::normalize;
    use std::path::Path;

    #[test]
    fn leading_parent_directories_stay() {
        assert_eq!(
            normalize(Path::new("../../x/y.yml")),
            Path::new("../../x/y.yml")
        );
        assert_eq!(normalize(Path::new("a/../../b.yml")), Path::new("../b.yml"));
        assert_eq!(
            normalize(Path::new("./a/./b/../c.yml")),
            Path::new("a/c.yml")
        );
        assert_eq!(normalize(Path::new("/r/a/../b.yml")), Path::new("/r/b.yml"));
    }
}
