//! Tracing setup for Lambda and local runs, and the secret type that never prints.

mod logging;
mod secret;

pub use logging::{init_tracing, init_tracing_to, init_tracing_with, LogFormat, LogSettings};
pub use secret::Secret;
