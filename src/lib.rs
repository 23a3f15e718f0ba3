//! asyncbridge: submit work to a long-lived tokio runtime from any thread of a C or
//! C++ program and get a thread-safe future back — the pattern of Python's
//! `asyncio.run_coroutine_threadsafe()`, with its pitfalls designed out.
//!
//! The crate has two layers. The core ([`Bridge`], [`Future`], [`Job`]) is safe
//! Rust and usable from Rust directly; `ffi` is the thin C boundary whose
//! documentation becomes `include/asyncbridge.h`.
//!
//! From Rust, with boxed closures as work and any `Send` value:
//!
//! ```
//! use asyncbridge::{Boxed, Bridge, Config, Placement, Status};
//! use std::time::Duration;
//!
//! let bridge = Bridge::start(Config::default()).unwrap();
//! let future = bridge
//!     .submit::<Boxed<u64>>(
//!         Box::new(|job| {
//!             job.set_value(6 * 7);
//!             Ok(())
//!         }),
//!         Placement::Blocking,
//!     )
//!     .unwrap();
//! assert_eq!(future.wait(Some(Duration::from_secs(10))), Ok(Status::Ok));
//! assert_eq!(future.take_value(), Some(42));
//! assert_eq!(bridge.shutdown(None), Ok(Status::Ok));
//! ```

#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]
#![deny(unsafe_op_in_unsafe_fn)]
// Loom builds model the core alone; the runtime that uses the rest is left out.
#![cfg_attr(asyncbridge_loom, allow(dead_code))]

pub mod compose;
pub mod delivery;
pub mod future;
pub mod promise;
pub mod sched;
pub mod status;
mod sync;
mod sys;

#[cfg(not(asyncbridge_loom))]
pub mod runtime;
#[cfg(not(asyncbridge_loom))]
pub mod sources;

#[cfg(not(asyncbridge_loom))]
pub mod embed;
#[cfg(not(asyncbridge_loom))]
pub mod io;

#[cfg(all(feature = "c-api", not(asyncbridge_loom)))]
pub mod ffi;

#[cfg(all(test, asyncbridge_loom))]
mod loom_model;

pub use delivery::queue::{CompletionQueue, NotifyHook};
pub use future::job::Job;
pub use future::{Boxed, Failure, Future, Kind, Outcome};
pub use promise::Promise;
#[cfg(not(asyncbridge_loom))]
pub use runtime::{Bridge, Config, Placement, Rejected};
pub use sched::{Stats, UnhandledHook};
pub use status::{Error, Status};
