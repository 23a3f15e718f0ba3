//! The C boundary. Each file holds one C object's `extern "C"` functions; their doc
//! comments are the documentation of `include/asyncbridge.h`.
//!
//! Nothing here decides semantics: a function checks its arguments, turns pointers
//! into core objects, calls the core inside [`boundary::boundary`], and turns the
//! answer into C values.

#![allow(non_camel_case_types)]
// One safety rule covers every function here, stated once in the header's preamble:
// each pointer argument is NULL or a live object of the named type. Repeating it in a
// `# Safety` section of each function would repeat it in each header comment too.
#![allow(clippy::missing_safety_doc)]

pub mod boundary;
pub mod bridge;
pub mod channel;
pub mod child;
pub mod embed;
pub mod file;
pub mod future;
pub(crate) mod handle;
#[cfg(feature = "http")]
pub mod http;
pub mod job;
pub mod net;
pub mod process;
pub mod promise;
pub mod queue;
pub mod scope;
pub mod signal;
pub mod status;
pub mod stream;
pub mod timer;
pub mod token;
pub mod value;
