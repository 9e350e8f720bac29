//! Run-time endpoint overrides: one binary moves between a local model server, staging and
//! production without recompiling the profiles' `base_url`.
//!
//! Where a flatagent's call goes, first match wins:
//!
//! 1. [`MachineBuilder::profile_base_url`](crate::MachineBuilder::profile_base_url) for the
//!    agent's profile;
//! 2. [`MachineBuilder::base_url`](crate::MachineBuilder::base_url) (every agent);
//! 3. `$FLATMACHINE_BASE_URL_<PROFILE>` for the agent's profile (the name upper-cased, every
//!    character other than a letter or digit as `_`: profile `fast-local` →
//!    `FLATMACHINE_BASE_URL_FAST_LOCAL`);
//! 4. `$FLATMACHINE_BASE_URL` (every agent);
//! 5. the profile's (or inline model's) compiled `base_url`;
//! 6. the provider's own variable (`$OPENAI_BASE_URL`, `$ANTHROPIC_BASE_URL`,
//!    `$CEREBRAS_API_BASE`, ...);
//! 7. the provider's public endpoint.
//!
//! Code beats the environment, and within each a profile's setting beats the global one. The
//! agent's profile is the one its `model:` names, else the `default` profile of its
//! `profiles.yml`; an inline model without a profile sees only the global settings. An
//! endpoint set by any of 1–6 needs no key when none is set (local servers), see
//! [`providers`](super::providers).

use super::llm::{LlmBackend, LlmError, LlmRequest, LlmResponse};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;

/// The variable overriding every agent's endpoint.
pub const BASE_URL_ENV: &str = "FLATMACHINE_BASE_URL";

/// The variable overriding the endpoint of one profile's agents: `FLATMACHINE_BASE_URL_` and
/// the profile's name, upper-cased, with every character other than an ASCII letter or digit
/// written as `_`.
pub fn profile_base_url_env(profile: &str) -> String {
    let mut name = String::with_capacity(BASE_URL_ENV.len() + 1 + profile.len());
    name.push_str(BASE_URL_ENV);
    name.push('_');
    name.extend(profile.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    name
}

/// The endpoint the environment sets for an agent of `profile` (steps 3 and 4 above).
pub fn from_environment(profile: Option<&str>) -> Option<String> {
    let set = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    profile
        .and_then(|p| set(&profile_base_url_env(p)))
        .or_else(|| set(BASE_URL_ENV))
}

/// Endpoints set in code (steps 1 and 2 above), as the builder holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointOverrides {
    global: Option<String>,
    profiles: HashMap<String, String>,
}

impl EndpointOverrides {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends every agent's calls to `base_url`.
    pub fn global(mut self, base_url: impl Into<String>) -> Self {
        self.global = Some(base_url.into());
        self
    }

    /// Sends the calls of agents using `profile` to `base_url`.
    pub fn profile(mut self, profile: impl Into<String>, base_url: impl Into<String>) -> Self {
        self.profiles.insert(profile.into(), base_url.into());
        self
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.global.is_none() && self.profiles.is_empty()
    }

    /// The endpoint set for an agent of `profile`, if any.
    pub fn for_profile(&self, profile: Option<&str>) -> Option<&str> {
        profile
            .and_then(|p| self.profiles.get(p))
            .or(self.global.as_ref())
            .map(String::as_str)
    }

    /// `backend` with these overrides applied to every request (the request's `base_url`
    /// replaced when an override matches its [`profile`](LlmRequest::profile)).
    pub fn wrap(self, backend: Arc<dyn LlmBackend>) -> Arc<dyn LlmBackend> {
        if self.is_empty() {
            return backend;
        }
        Arc::new(WithEndpoints {
            inner: backend,
            overrides: self,
        })
    }
}

/// A backend whose requests get the overrides' endpoint.
struct WithEndpoints {
    inner: Arc<dyn LlmBackend>,
    overrides: EndpointOverrides,
}

#[async_trait]
impl LlmBackend for WithEndpoints {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        match self.overrides.for_profile(request.profile.as_deref()) {
            Some(base) => {
                let mut request = request.clone();
                request.base_url = Some(base.to_string());
                self.inner.complete(&request).await
            }
            None => self.inner.complete(request).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_variables_are_named_from_the_profile() {
        assert_eq!(
            profile_base_url_env("fast-local"),
            "FLATMACHINE_BASE_URL_FAST_LOCAL"
        );
        assert_eq!(profile_base_url_env("Smart"), "FLATMACHINE_BASE_URL_SMART");
    }

    #[test]
    fn a_profile_setting_beats_the_global_one() {
        let o = EndpointOverrides::new()
            .global("http://g")
            .profile("fast", "http://f");
        assert_eq!(o.for_profile(Some("fast")), Some("http://f"));
        assert_eq!(o.for_profile(Some("smart")), Some("http://g"));
        assert_eq!(o.for_profile(None), Some("http://g"));
        assert_eq!(EndpointOverrides::new().for_profile(Some("x")), None);
    }
}
