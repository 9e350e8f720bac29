//! Shared helpers for flatmachine's integration tests.

pub mod loopback_llm;
