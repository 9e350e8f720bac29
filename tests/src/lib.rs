//! Shared helpers for flatmachine's integration tests.
