//! Example machines for flatmachine.
