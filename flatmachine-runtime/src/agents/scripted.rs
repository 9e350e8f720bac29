//! [`ScriptedBackend`]: a deterministic, offline [`LlmBackend`] for examples and tests.

use super::llm::{LlmBackend, LlmError, LlmErrorKind, LlmRequest, LlmResponse};
use async_trait::async_trait;
use std::collections::VecDeque;
use std::sync::Mutex;

type Script = Box<dyn Fn(&LlmRequest) -> Result<LlmResponse, LlmError> + Send + Sync>;

/// A backend that answers from a script instead of a model: no network, no key.
///
/// Either a function of the request ([`ScriptedBackend::new`]) or a fixed sequence of replies
/// ([`ScriptedBackend::replies`]). Every request is recorded, so tests can check the prompts
/// and parameters that would have been sent.
///
/// A request with `stream` set (`stream: true` in the model profile) is answered word by
/// word: each word (with the space after it) is a token delta on the run's event stream
/// ([`events`](crate::events)), with a short pause between words when
/// [`with_stream_delay`](Self::with_stream_delay) sets one — as a model would stream it.
pub struct ScriptedBackend {
    script: Script,
    requests: Mutex<Vec<LlmRequest>>,
    stream_delay: std::time::Duration,
}

impl ScriptedBackend {
    /// Answers each request with `f(request)`.
    pub fn new(
        f: impl Fn(&LlmRequest) -> Result<LlmResponse, LlmError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            script: Box::new(f),
            requests: Mutex::new(Vec::new()),
            stream_delay: std::time::Duration::ZERO,
        }
    }

    /// Pauses `delay` between the words of a streamed reply (none by default).
    pub fn with_stream_delay(mut self, delay: std::time::Duration) -> Self {
        self.stream_delay = delay;
        self
    }

    /// Answers with these replies in order; a request after the last one fails with an
    /// `APIError` saying the script ran out.
    pub fn replies(replies: impl IntoIterator<Item = Result<LlmResponse, LlmError>>) -> Self {
        let queue = Mutex::new(replies.into_iter().collect::<VecDeque<_>>());
        Self::new(move |_| {
            queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
                .unwrap_or_else(|| {
                    Err(LlmError::new(
                        LlmErrorKind::Api,
                        "the scripted backend has no more replies",
                    ))
                })
        })
    }

    /// Answers every request with the same text.
    pub fn always(text: impl Into<String>) -> Self {
        let text = text.into();
        Self::new(move |_| Ok(LlmResponse::text(text.clone())))
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<LlmRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl std::fmt::Debug for ScriptedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedBackend").finish_non_exhaustive()
    }
}

#[async_trait]
impl LlmBackend for ScriptedBackend {
    fn name(&self) -> &str {
        "scripted"
    }

    async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(request.clone());
        let mut reply = (self.script)(request)?;
        reply.attempts = reply.attempts.max(1);
        if request.stream {
            for (i, word) in reply
                .content
                .split_inclusive(char::is_whitespace)
                .enumerate()
            {
                if i > 0 && !self.stream_delay.is_zero() {
                    tokio::time::sleep(self.stream_delay).await;
                }
                crate::events::emit_token_delta(word);
            }
        }
        Ok(reply)
    }
}
