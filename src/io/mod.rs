//! Async I/O on the embedding API: each operation is an async Rust function that
//! knows nothing of C. `ffi` checks and copies a C caller's arguments, then runs these
//! through `ffi::embed`.
//!
//! - `http`: an HTTP(S) client with a connection pool per bridge (feature `http`);
//! - `process`: subprocesses in their own process group;
//! - `child`: subprocesses that run beside their caller, with streaming pipes;
//! - `fs`: whole-file reads and writes;
//! - `stream`: byte streams (connections, pipes) with one pending read and one
//!   pending write;
//! - `net`: TCP, Unix and TLS connections, listeners, name resolution;
//! - `tls`: which certificates TLS connections trust (feature `tls`, which `http`
//!   turns on).

pub mod child;
pub mod fs;
#[cfg(feature = "http")]
pub mod http;
pub mod net;
pub mod process;
pub mod stream;
#[cfg(feature = "tls")]
pub mod tls;
