//! The LLM providers flatmachine knows by name, in one table shared by the compiler (which
//! rejects a `provider:` it does not know unless the profile gives a `base_url`) and the runtime
//! (which sends each call to the provider's endpoint with the provider's key).
//!
//! Names, endpoints and key variables are those of LiteLLM, the library under the Python
//! reference, so a `profiles.yml` written for the reference reaches the same service with the
//! same environment: `provider: cerebras` goes to `https://api.cerebras.ai/v1` with
//! `$CEREBRAS_API_KEY`, never to OpenAI.

/// How a provider is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI-compatible chat completions (`POST {base}/chat/completions`).
    OpenAi,
    /// The Anthropic Messages API (`POST {base}/v1/messages`).
    Anthropic,
}

/// One known provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provider {
    /// The name as LiteLLM spells it (`together_ai`, `fireworks_ai`, ...).
    pub name: &'static str,
    /// Other spellings accepted for it (`together`, `fireworks`, ...).
    pub aliases: &'static [&'static str],
    /// Its wire format.
    pub wire: Wire,
    /// The public endpoint used when neither the profile nor the environment names one.
    pub base_url: &'static str,
    /// Environment variables naming another endpoint, first set wins (LiteLLM's names).
    pub base_url_env: &'static [&'static str],
    /// Environment variables holding the key, first set wins (LiteLLM's names); empty when the
    /// provider needs none (a local server).
    pub api_key_env: &'static [&'static str],
    /// Added to an endpoint given as a bare server root (`http://gpu:11434`): Ollama's
    /// OpenAI-compatible API lives under `/v1`, and LiteLLM's `OLLAMA_API_BASE` is the root.
    pub root_path: &'static str,
}

impl Provider {
    /// Whether calls to the provider's own endpoint need a key.
    pub fn needs_key(&self) -> bool {
        !self.api_key_env.is_empty()
    }

    /// Whether `name` (any case) names this provider.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

/// Every known provider.
pub const PROVIDERS: &[Provider] = &[
    Provider {
        name: "openai",
        aliases: &[],
        wire: Wire::OpenAi,
        base_url: "https://api.openai.com/v1",
        base_url_env: &["OPENAI_BASE_URL", "OPENAI_API_BASE"],
        api_key_env: &["OPENAI_API_KEY"],
        root_path: "",
    },
    Provider {
        name: "anthropic",
        aliases: &[],
        wire: Wire::Anthropic,
        base_url: "https://api.anthropic.com",
        base_url_env: &["ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"],
        api_key_env: &["ANTHROPIC_API_KEY"],
        root_path: "",
    },
    Provider {
        name: "cerebras",
        aliases: &[],
        wire: Wire::OpenAi,
        base_url: "https://api.cerebras.ai/v1",
        base_url_env: &["CEREBRAS_API_BASE"],
        api_key_env: &["CEREBRAS_API_KEY"],
        root_path: "",
    },
    Provider {
        name: "groq",
        aliases: &[],
        wire: Wire::OpenAi,
        base_url: "https://api.groq.com/openai/v1",
        base_url_env: &["GROQ_API_BASE"],
        api_key_env: &["GROQ_API_KEY"],
        root_path: "",
    },
    Provider {
        name: "together_ai",
        aliases: &["together", "togetherai"],
        wire: Wire::OpenAi,
        base_url: "https://api.together.ai/v1",
        base_url_env: &["TOGETHER_AI_API_BASE"],
        api_key_env: &[
            "TOGETHER_API_KEY",
            "TOGETHER_AI_API_KEY",
            "TOGETHERAI_API_KEY",
            "TOGETHER_AI_TOKEN",
        ],
        root_path: "",
    },
    Provider {
        name: "fireworks_ai",
        aliases: &["fireworks", "fireworksai"],
        wire: Wire::OpenAi,
        base_url: "https://api.fireworks.ai/inference/v1",
        base_url_env: &["FIREWORKS_API_BASE"],
        api_key_env: &[
            "FIREWORKS_API_KEY",
            "FIREWORKS_AI_API_KEY",
            "FIREWORKSAI_API_KEY",
            "FIREWORKS_AI_TOKEN",
        ],
        root_path: "",
    },
    Provider {
        name: "mistral",
        aliases: &[],
        wire: Wire::OpenAi,
        base_url: "https://api.mistral.ai/v1",
        base_url_env: &["MISTRAL_API_BASE"],
        api_key_env: &["MISTRAL_API_KEY"],
        root_path: "",
    },
    Provider {
        name: "deepseek",
        aliases: &[],
        wire: Wire::OpenAi,
        base_url: "https://api.deepseek.com/beta",
        base_url_env: &["DEEPSEEK_API_BASE"],
        api_key_env: &["DEEPSEEK_API_KEY"],
        root_path: "",
    },
    Provider {
        name: "openrouter",
        aliases: &[],
        wire: Wire::OpenAi,
        base_url: "https://openrouter.ai/api/v1",
        base_url_env: &["OPENROUTER_API_BASE"],
        api_key_env: &["OPENROUTER_API_KEY", "OR_API_KEY"],
        root_path: "",
    },
    Provider {
        name: "xai",
        aliases: &[],
        wire: Wire::OpenAi,
        base_url: "https://api.x.ai/v1",
        base_url_env: &["XAI_API_BASE"],
        api_key_env: &["XAI_API_KEY"],
        root_path: "",
    },
    Provider {
        name: "ollama",
        aliases: &["ollama_chat"],
        wire: Wire::OpenAi,
        // Ollama's OpenAI-compatible API; LiteLLM's `OLLAMA_API_BASE` is the server root, to
        // which `/v1` is added as for a profile's `base_url`.
        base_url: "http://localhost:11434",
        base_url_env: &["OLLAMA_API_BASE"],
        api_key_env: &[],
        root_path: "/v1",
    },
];

/// The provider `name` (any case, aliases included) names.
pub fn find(name: &str) -> Option<&'static Provider> {
    PROVIDERS.iter().find(|p| p.is(name))
}

/// Every name a provider may be given, canonical names first.
pub fn names() -> impl Iterator<Item = &'static str> {
    PROVIDERS
        .iter()
        .map(|p| p.name)
        .chain(PROVIDERS.iter().flat_map(|p| p.aliases.iter().copied()))
}

impl Provider {
    /// The chat endpoint of this OpenAI-compatible provider at `base`:
    /// `{base}/chat/completions`, with [`root_path`](Self::root_path) inserted when `base` is a
    /// bare server root, and nothing added when `base` already ends with the path.
    pub fn openai_endpoint(&self, base: &str) -> String {
        let base = base.trim().trim_end_matches('/');
        if base.ends_with("/chat/completions") {
            return base.to_string();
        }
        let after_scheme = base.split_once("://").map_or(base, |(_, rest)| rest);
        if after_scheme.contains('/') {
            format!("{base}/chat/completions")
        } else {
            format!("{base}{}/chat/completions", self.root_path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_in_any_case_and_by_alias() {
        assert_eq!(find("Cerebras").map(|p| p.name), Some("cerebras"));
        assert_eq!(find("together").map(|p| p.name), Some("together_ai"));
        assert_eq!(find("fireworks").map(|p| p.name), Some("fireworks_ai"));
        assert!(find("ollama").is_some_and(|p| !p.needs_key()));
        assert!(find("nope").is_none());
        let all: Vec<_> = names().collect();
        assert!(all.contains(&"together"));
        for p in PROVIDERS {
            assert!(p.base_url.starts_with("http"), "{}", p.name);
        }
    }

    #[test]
    fn endpoints() {
        let ollama = find("ollama").unwrap();
        let openai = find("openai").unwrap();
        assert_eq!(
            ollama.openai_endpoint("http://localhost:11434"),
            "http://localhost:11434/v1/chat/completions"
        );
        assert_eq!(
            ollama.openai_endpoint("http://localhost:11434/v1/"),
            "http://localhost:11434/v1/chat/completions"
        );
        assert_eq!(
            openai.openai_endpoint("http://localhost:8000"),
            "http://localhost:8000/chat/completions"
        );
        assert_eq!(
            openai.openai_endpoint("https://api.groq.com/openai/v1"),
            "https://api.groq.com/openai/v1/chat/completions"
        );
        assert_eq!(
            openai.openai_endpoint("http://h/v1/chat/completions"),
            "http://h/v1/chat/completions"
        );
    }
}
