//! Time and composition: timeouts on futures, work chained after a future, and
//! futures that combine others (all, any); cancellation tokens and scopes. Nothing
//! here blocks a loop thread: each step is a callback of the library's own, run by
//! the thread that finishes a future, or a timer of the runtime the future belongs to
//! (reached through `Sched`).

mod combine;
pub mod scope;
mod then;
mod timeout;
pub mod token;
