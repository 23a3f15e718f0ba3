//! The context handed to synchronous work while it runs.

use crate::future::{Failure, Future, Kind};

/// What running work can do to its own future: set its value, fail it, cancel it,
/// report progress, and ask whether it should stop.
///
/// A job lives only as long as the work's call; the work may share it with threads of
/// its own for that long.
pub struct Job<'a, K: Kind> {
    future: &'a Future<K>,
    /// The work runs on a loop thread (looked up once per run).
    on_loop: bool,
}

impl<'a, K: Kind> Job<'a, K> {
    pub(crate) fn new(future: &'a Future<K>) -> Job<'a, K> {
        Job {
            future,
            on_loop: crate::sys::thread_role::on_any_loop(),
        }
    }

    /// Whether the work runs on a loop thread, where a thread that ends inside it
    /// takes the process with it (see `bridge_work_fn`).
    pub(crate) fn on_loop(&self) -> bool {
        self.on_loop
    }

    /// Sets the value the future gets if the work succeeds; a value set before is
    /// dropped. A value whose future does not end `Ok` is dropped when it finishes.
    pub fn set_value(&self, value: K::Value) {
        self.future.stage_value(value);
    }

    /// Records the message the future gets if the work then returns a failure.
    /// Returns `code`, so work can `return job.fail(code, message)`.
    pub fn fail(&self, code: i32, message: impl Into<Vec<u8>>) -> i32 {
        self.future.stage_failure_message(message.into());
        code
    }

    /// The outcome of work that returned `code`: `Ok` for 0, else a failure with
    /// that code and the message given to [`Job::fail`] (or a default naming it).
    pub fn outcome_of(&self, code: i32) -> Result<(), Failure> {
        match code {
            0 => Ok(()),
            code => Err(self.future.staged_failure(code)),
        }
    }

    /// Whether the work should stop: cancelled by a caller, by itself, or by shutdown.
    pub fn is_cancelled(&self) -> bool {
        self.future.is_cancel_requested()
    }

    /// Cancels the work's own future: it ends `Cancelled` when the work returns.
    pub fn cancel(&self) {
        let _ = self.future.cancel();
    }

    /// Reports progress, read by [`Future::progress`].
    pub fn set_progress(&self, done: u64, total: u64) {
        self.future.set_progress(done, total);
    }
}
