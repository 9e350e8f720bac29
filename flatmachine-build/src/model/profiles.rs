//! The model profiles format (`spec: flatprofiles`), after `profiles.d.ts`.

use super::JsonMap;
use super::agent::JsonModeName;
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A `profiles.yml` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProfilesWrapper {
    /// Always `flatprofiles`.
    pub spec: String,
    /// Semver of the spec the file was written for.
    pub spec_version: String,
    /// The profiles.
    pub data: ProfilesData,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<JsonMap>,
}

/// Named model profiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProfilesData {
    /// Profiles by name.
    pub model_profiles: IndexMap<String, ModelProfileConfig>,
    /// Profile used when an agent names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Profile forced on every agent.
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_: Option<String>,
}

super::agent::model_settings! {
    /// One model profile.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct ModelProfileConfig {
        /// Model name.
        pub name: String,
    }
}
