//! The handle callers hold: waiting, reading the outcome, the reference counts.

use std::time::{Duration, Instant};

use super::state::{Completion, RELEASE_PENDING};
use super::{Failure, Kind};
use crate::sched::Owner;
use crate::status::{Error, Status};
use crate::sync::{Arc, Ordering};
use crate::sys::thread_role;

/// A thread-safe handle to the result of work submitted to a bridge.
///
/// Cloning makes another handle to the same result. Dropping the last handle never
/// cancels the work. The value is released exactly once, deterministically: when the
/// future finishes if no handle is left, else when the last handle is dropped (or the
/// last running done callback returns), on that thread.
pub struct Future<K: Kind> {
    completion: Arc<Completion<K>>,
    /// Whether this handle counts in `holders`. The running work, its task and the
    /// library's own callbacks hold references that do not keep the value alive.
    holder: bool,
}

impl<K: Kind> Clone for Future<K> {
    fn clone(&self) -> Self {
        if self.holder {
            self.completion.holders.fetch_add(1, Ordering::SeqCst);
        }
        Future {
            completion: self.completion.clone(),
            holder: self.holder,
        }
    }
}

impl<K: Kind> Drop for Future<K> {
    fn drop(&mut self) {
        if self.holder
            // The last handle of a finished future that left something to release.
            // Not finished yet: its finish finds no holder and releases. Finished with
            // nothing to release: nothing to do. Either way, no lock.
            && self.completion.holders.fetch_sub(1, Ordering::SeqCst) == RELEASE_PENDING | 1
        {
            self.release_if_unheld();
        }
    }
}

impl<K: Kind> std::fmt::Debug for Future<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Future")
            .field("status", &self.peek())
            .finish()
    }
}

impl<K: Kind> Future<K> {
    /// A handle on `completion`; `holder`: it owns one count of `holders` already.
    pub(super) fn from_completion(completion: Arc<Completion<K>>, holder: bool) -> Future<K> {
        Future { completion, holder }
    }

    pub(super) fn completion(&self) -> &Arc<Completion<K>> {
        &self.completion
    }

    pub(super) fn counts_as_holder(&self) -> bool {
        self.holder
    }

    /// Takes back a reference made by [`Future::into_arc`]; its handle count passes to
    /// the returned handle.
    pub(crate) fn from_arc(completion: Arc<Completion<K>>) -> Future<K> {
        Future {
            completion,
            holder: true,
        }
    }

    /// Turns this handle into one reference to the shared state that still counts as
    /// a handle (the value stays alive) until it comes back through
    /// [`Future::from_arc`] and is dropped.
    pub(crate) fn into_arc(mut self) -> Arc<Completion<K>> {
        if !self.holder {
            // An internal reference becomes a handle's.
            self.completion.holders.fetch_add(1, Ordering::SeqCst);
        }
        // The count this handle holds passes to the returned reference: `self`'s drop
        // gives back only its share of the shared state.
        self.holder = false;
        self.completion.clone()
    }

    /// The shared state, borrowed.
    pub(crate) fn as_arc(&self) -> &Arc<Completion<K>> {
        &self.completion
    }

    /// A reference for the work, its task or the library's own callbacks: it keeps
    /// the shared state but not the value alive.
    pub(crate) fn internal(&self) -> Future<K> {
        Future {
            completion: self.completion.clone(),
            holder: false,
        }
    }

    /// A new handle made from any reference.
    pub(crate) fn handle(&self) -> Future<K> {
        self.completion.holders.fetch_add(1, Ordering::SeqCst);
        Future {
            completion: self.completion.clone(),
            holder: true,
        }
    }

    /// The status without observing a failure (see [`Future::status`]).
    pub(crate) fn peek(&self) -> Status {
        Status::from_code(self.completion.status.load(Ordering::Acquire))
    }

    fn observe(&self, status: Status) -> Status {
        if status == Status::Failed {
            self.mark_observed();
        }
        status
    }

    /// Marks a failure as observed (its code and message are passed on elsewhere).
    pub(crate) fn mark_observed(&self) {
        self.completion.observed.store(true, Ordering::Relaxed);
    }

    /// `Pending`, or the final status. Reporting `Failed` counts as observing the failure.
    pub fn status(&self) -> Status {
        self.observe(self.peek())
    }

    /// Waits up to `timeout` (`None`: no limit) for the future to finish.
    ///
    /// Returns the final status, or `Status::Timeout` with nothing cancelled.
    /// `Duration::ZERO` polls. A wait that would block on a loop thread is
    /// `Error::WouldDeadlock`; in a fork child, a wait on a pending future is
    /// `Error::NotRunning`.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<Status, Error> {
        let status = self.peek();
        if status.is_final() {
            return Ok(self.observe(status));
        }
        if self.completion.owner.orphaned() {
            return Err(Error::NotRunning);
        }
        if timeout == Some(Duration::ZERO) {
            return Ok(Status::Timeout);
        }
        if thread_role::on_any_loop() {
            return Err(Error::WouldDeadlock);
        }
        let started = Instant::now();
        let deadline = timeout.and_then(|t| started.checked_add(t));
        // Low-latency mode: a wake-up costs tens of microseconds on a busy VM; a short
        // spin on the status word catches a result that is about to come.
        let spin = self.completion.owner.spin();
        if !spin.is_zero() {
            let spin_until = started + timeout.map_or(spin, |t| t.min(spin));
            loop {
                let status = self.peek();
                if status.is_final() {
                    return Ok(self.observe(status));
                }
                if Instant::now() >= spin_until {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        let mut inner = self.lock();
        inner.waiters += 1;
        while !inner.stage.is_final() {
            // No deadline (no limit, or one too far to represent): sleep in long slices.
            let wait = match deadline {
                None => Duration::from_secs(3600),
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => break,
                },
            };
            inner = match self.completion.finished.wait_timeout(inner, wait) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        inner.waiters -= 1;
        let done = inner.stage.is_final();
        drop(inner);
        Ok(if done { self.status() } else { Status::Timeout })
    }

    /// The failure, without counting as observing it.
    pub(crate) fn failure_unobserved(&self) -> Option<&Failure> {
        match self.peek() {
            Status::Failed => self.completion.failure.get().map(|f| &**f),
            _ => None,
        }
    }

    /// The bookkeeping of the bridge this future belongs to.
    pub(crate) fn owner(&self) -> &Arc<Owner> {
        &self.completion.owner
    }

    /// Calls `f` with the value of a future that ended `Ok` and still holds it.
    pub fn with_value<R>(&self, f: impl FnOnce(&K::Value) -> R) -> Option<R> {
        if self.peek() != Status::Ok {
            return None;
        }
        self.lock_unless_orphaned()?.slot.value().map(f)
    }

    /// Takes the value out of a future that ended `Ok`; the caller owns it now.
    pub fn take_value(&self) -> Option<K::Value> {
        if self.peek() != Status::Ok {
            return None;
        }
        self.lock_unless_orphaned()?.slot.take_value()
    }

    /// The failure of a future that ended `Failed`; reading it counts as observing it.
    pub fn failure(&self) -> Option<&Failure> {
        if self.peek() != Status::Failed {
            return None;
        }
        self.observe(Status::Failed);
        self.completion.failure.get().map(|f| &**f)
    }

    /// The latest progress reported by the work: `(done, total)`.
    pub fn progress(&self) -> Result<(u64, u64), Error> {
        match self.lock_unless_orphaned() {
            Some(inner) => Ok(inner.cold.as_ref().map_or((0, 0), |c| c.progress)),
            None => Err(Error::NotRunning),
        }
    }

    /// Whether the two handles share one result.
    pub fn same_as(&self, other: &Future<K>) -> bool {
        Arc::ptr_eq(&self.completion, &other.completion)
    }
}
