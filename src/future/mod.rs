//! Futures: one shared allocation per submission, held by the caller's handles, by
//! the work while it runs, by pending callbacks and queued deliveries.
//!
//! - `state`: the completion state machine, every transition in one place;
//! - `handle`: [`Future`], the handle callers hold, and the reference counts;
//! - `callbacks`: done and progress callbacks, direct or through queues;
//! - `job`: [`Job`], what synchronous work can do while it runs.

mod callbacks;
mod handle;
pub mod job;
mod state;

use std::ffi::{CStr, CString};

pub use handle::Future;
use job::Job;
pub use state::CancelCallback;
pub(crate) use state::Completion;

use crate::status::Error;
use crate::sync::Arc;

/// How a future ends: given to the one call that finishes it.
#[derive(Debug)]
pub enum Outcome<V> {
    /// Success, with a value (replacing one the work staged) or without one.
    Ok(Option<V>),
    /// The work failed.
    Failed(Failure),
    /// The work stopped because cancellation was requested.
    Cancelled,
    /// The work stopped because a timeout of this many milliseconds ran out: the
    /// future ends `Failed` with `Error::TimedOut`'s code.
    TimedOut(u64),
}

/// What a family of futures carries, and how its work and callbacks are run.
///
/// The C API is one such family (values are `void *` with a free function); Rust
/// users can use [`Boxed`]. The core never looks inside these types.
pub trait Kind: Sized + Send + Sync + 'static {
    /// The value of a future that ended `Ok`. Dropping it releases it.
    type Value: Send + 'static;
    /// Synchronous work, run once on a loop or blocking-pool thread. Dropping it
    /// unrun releases whatever it owns.
    type Work: Send + 'static;
    /// A done callback. Dropping it uncalled must be harmless.
    type Callback: Send + 'static;
    /// A progress callback, called each time progress is delivered through a queue.
    type ProgressCallback: Clone + Send + 'static;

    /// Runs `work`; its value goes through [`Job::set_value`].
    fn run(work: Self::Work, job: &Job<'_, Self>) -> Result<(), Failure>;

    /// Calls `callback` with the finished `future`.
    fn call(callback: Self::Callback, future: &Future<Self>);

    /// Calls `callback` with the latest progress of the pending `future`.
    fn call_progress(
        callback: &Self::ProgressCallback,
        future: &Future<Self>,
        done: u64,
        total: u64,
    );
}

/// Why work failed: a code and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    code: i32,
    message: CString,
    /// The errno behind an `Error::Io` failure; 0 otherwise.
    os_error: i32,
}

impl Failure {
    /// A failure with `code` and `message` (cut at its first NUL byte, if any).
    pub fn new(code: i32, message: impl Into<Vec<u8>>) -> Failure {
        let mut bytes = message.into();
        if let Some(nul) = bytes.iter().position(|&b| b == 0) {
            bytes.truncate(nul);
        }
        let message = CString::new(bytes).unwrap_or_default();
        Failure {
            code,
            message,
            os_error: 0,
        }
    }

    /// An `Error::Io` failure caused by the OS error `errno`; the message says what
    /// failed, the OS's description of the error is added to it.
    pub fn io(errno: i32, what: impl std::fmt::Display) -> Failure {
        // The OS's words without std's " (os error N)": the errno has its own getter.
        let text = std::io::Error::from_raw_os_error(errno).to_string();
        let description = match text.rfind(" (os error ") {
            Some(at) => &text[..at],
            None => &text,
        };
        Failure {
            os_error: errno,
            ..Failure::new(Error::Io.code(), format!("{what}: {description}"))
        }
    }

    /// An `Error::Io` failure from an I/O error: with its errno when it carries one,
    /// else with the error's own words; the message says what failed.
    pub fn from_io(error: &std::io::Error, what: impl std::fmt::Display) -> Failure {
        match error.raw_os_error() {
            Some(errno) => Failure::io(errno, what),
            None => Failure::new(Error::Io.code(), format!("{what}: {error}")),
        }
    }

    /// The errno behind an `Error::Io` failure; 0 for any other.
    pub fn os_error(&self) -> i32 {
        self.os_error
    }

    /// A failure with `code` and a default message naming it.
    pub fn from_code(code: i32) -> Failure {
        Failure::new(code, format!("work failed with code {code}"))
    }

    /// The failure of work that panicked.
    pub fn panic() -> Failure {
        Failure::new(Error::Panic.code(), "work panicked")
    }

    /// The failure code.
    pub fn code(&self) -> i32 {
        self.code
    }

    /// The failure message.
    pub fn message(&self) -> &CStr {
        &self.message
    }
}

/// A [`Kind`] for Rust callers: boxed closures and any `Send` value.
pub struct Boxed<V>(std::marker::PhantomData<fn() -> V>);

/// Synchronous work of the [`Boxed`] kind.
pub type BoxedWork<V> = Box<dyn FnOnce(&Job<'_, Boxed<V>>) -> Result<(), Failure> + Send>;
/// A done callback of the [`Boxed`] kind.
pub type BoxedCallback<V> = Box<dyn FnOnce(&Future<Boxed<V>>) + Send>;

/// A progress callback of the [`Boxed`] kind.
pub type BoxedProgress<V> = Arc<dyn Fn(&Future<Boxed<V>>, u64, u64) + Send + Sync>;

impl<V: Send + 'static> Kind for Boxed<V> {
    type Value = V;
    type Work = BoxedWork<V>;
    type Callback = BoxedCallback<V>;
    type ProgressCallback = BoxedProgress<V>;

    fn run(work: Self::Work, job: &Job<'_, Self>) -> Result<(), Failure> {
        work(job)
    }

    fn call(callback: Self::Callback, future: &Future<Self>) {
        callback(future)
    }

    fn call_progress(
        callback: &Self::ProgressCallback,
        future: &Future<Self>,
        done: u64,
        total: u64,
    ) {
        callback(future, done, total)
    }
}

/// Lets shutdown stop a promise's future (see [`crate::sched::Pending`]).
impl<K: Kind> crate::sched::Pending for Completion<K> {
    fn cancel_pending(self: Arc<Self>) {
        let _ = Future::from_completion(self, false).cancel();
    }
}

/// Lets a runtime's queues run and drop queued work.
impl<K: Kind> crate::sched::Queued for Completion<K> {
    fn run(self: Arc<Self>, returned: &dyn Fn()) {
        Future::from_completion(self, false).run_queued(returned);
    }

    fn cancel_queued(self: Arc<Self>) {
        Future::from_completion(self, false).cancel_if_queued();
    }
}

#[cfg(not(asyncbridge_loom))]
std::thread_local! {
    /// The future whose synchronous work this thread is running.
    static RUNNING_WORK: crate::sys::thread_exit::Slot =
        const { crate::sys::thread_exit::Slot::new() };
}

/// Keeps the future whose work this thread runs where the thread's end finds it. On a
/// loop thread there is nothing to finish, only the process to stop: no reference is
/// taken there.
#[cfg(not(asyncbridge_loom))]
fn arm_running_work<K: Kind>(
    future: &Future<K>,
    job: &Job<'_, K>,
) -> crate::sys::thread_exit::Armed {
    use crate::sys::thread_exit::{arm, Running};
    if job.on_loop() {
        arm(&RUNNING_WORK, Running::Fatal(LOOP_THREAD_ENDED))
    } else {
        arm(&RUNNING_WORK, Running::Shared(future.as_arc().clone()))
    }
}

/// Why the process stops when a loop thread ends inside work.
#[cfg(not(asyncbridge_loom))]
const LOOP_THREAD_ENDED: &str = "a loop thread ended inside work run on it (pthread_exit or \
     thread cancellation); the bridge cannot go on without its loop: aborting";

/// loom's threads cannot end under work: nothing to arm.
#[cfg(asyncbridge_loom)]
struct NotArmed;

#[cfg(asyncbridge_loom)]
fn arm_running_work<K: Kind>(_future: &Future<K>, _job: &Job<'_, K>) -> NotArmed {
    NotArmed
}

/// The message of a future whose work's thread ended inside it.
#[cfg(not(asyncbridge_loom))]
const THREAD_ENDED: &str = "the thread running the work ended before the work returned \
     (pthread_exit or thread cancellation inside the work)";

#[cfg(not(asyncbridge_loom))]
impl<K: Kind> crate::sys::thread_exit::Abandon for Completion<K> {
    /// The work's thread ended inside it: the future fails with `Error::Abandoned` (or
    /// ends as cancelled, if that was requested), its callbacks running on the ending
    /// thread. A loop thread cannot end without taking its runtime with it, and with
    /// it every async task of the bridge, so that is fatal.
    fn abandon(self: Arc<Self>) {
        if crate::sys::thread_role::on_any_loop() {
            eprintln!("asyncbridge: {LOOP_THREAD_ENDED}");
            std::process::abort();
        }
        Future::from_completion(self, false).finish(Outcome::Failed(Failure::new(
            Error::Abandoned.code(),
            THREAD_ENDED,
        )));
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(all(test, not(asyncbridge_loom)))]
mod tests;
