//! The completion state machine: every transition of a future, in one place.
//!
//! ```text
//!   Queued --run_queued--> Running --finish--> Finishing --> Done --last release--> Released
//!     |                       ^                   ^
//!     +--request (drops work)-+ (finish: the      |
//!                               request decides)  |
//!   Held (a promise) --settle (resolve, fail, free)-+
//! ```
//!
//! A future's outcome is decided in exactly one call of [`Future::finish`] (or of
//! `settle`, for a promise) with an [`Outcome`]; a cancellation request made before
//! that call replaces what the work returns (`Cancelled`, or `TimedOut` when the
//! request was a timeout). Exactly one thread moves a future out of `Queued` (its
//! runner or a canceller) and so exactly one thread finishes queued work; everything
//! `finish` publishes is written under the lock before the status word, so a reader
//! that sees a final status with an acquire load needs no lock to trust it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::task::Waker;

use super::callbacks::{run_unnested, Callbacks, Direct, Registration, Watch};
use super::{Failure, Future, Kind, Outcome};
use crate::delivery::queue::{CompletionQueue, Edge};
use crate::delivery::Entry;
use crate::sched::Owner;
use crate::status::{Error, Status};
use crate::sync::{
    current_thread, lock, Arc, AtomicBool, AtomicI32, AtomicUsize, Condvar, Mutex, Ordering,
    ThreadId, WaitGraph, Weak,
};

/// Where a future is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Stage {
    /// Synchronous work waits in a queue, or a chained or combined future waits for
    /// its inputs; nothing of the work has run.
    Queued,
    /// The work runs (or its async task does), or a request is releasing queued work.
    Running,
    /// A promise's holder will settle it; only a request's callback runs meanwhile.
    Held,
    /// One thread is finishing it; every other finisher backs off.
    Finishing,
    /// Final: `status` holds the outcome.
    Done,
    /// Final, and the value was released (dropped, or the failure reported) once
    /// nobody held the future.
    Released,
}

impl Stage {
    /// `Done` or `Released`: the outcome is published.
    pub(super) fn is_final(self) -> bool {
        matches!(self, Stage::Done | Stage::Released)
    }
}

/// A request to stop the work.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Request {
    /// `cancel`, the work itself, or shutdown: ends `Cancelled`.
    Cancel,
    /// A timeout of this many milliseconds: ends `Failed` with `Error::TimedOut`.
    Timeout(u64),
}

/// A request as a future keeps it: the milliseconds of a timeout wait in the cold
/// part, so the common state stays small.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Requested {
    Cancel,
    Timeout,
}

/// What a future holds besides its outcome, one thing at a time: the work while it is
/// queued, the waker of its task while async work runs, then the value (staged by
/// running synchronous work, or given when it finishes; the value of an `Ok` future).
/// Work is taken before it runs, only synchronous work stages a value, and async work
/// gives its value only as it finishes, so no two of them are ever needed at once.
pub(super) enum Slot<K: Kind> {
    Empty,
    Work(K::Work),
    Waker(Waker),
    Value(K::Value),
}

impl<K: Kind> Slot<K> {
    /// Takes out what `pick` accepts (leaving the slot empty); anything else it hands
    /// back stays.
    fn take<T>(&mut self, pick: impl FnOnce(Slot<K>) -> Result<T, Slot<K>>) -> Option<T> {
        match pick(std::mem::replace(self, Slot::Empty)) {
            Ok(taken) => Some(taken),
            Err(other) => {
                *self = other;
                None
            }
        }
    }

    pub(super) fn take_work(&mut self) -> Option<K::Work> {
        self.take(|slot| match slot {
            Slot::Work(work) => Ok(work),
            other => Err(other),
        })
    }

    fn take_waker(&mut self) -> Option<Waker> {
        self.take(|slot| match slot {
            Slot::Waker(waker) => Ok(waker),
            other => Err(other),
        })
    }

    /// Keeps `waker` unless the one kept already wakes the same task.
    fn set_waker(&mut self, waker: &Waker) {
        match self {
            Slot::Waker(kept) if kept.will_wake(waker) => {}
            Slot::Empty | Slot::Waker(_) => *self = Slot::Waker(waker.clone()),
            // Never the case for async work (nothing is queued or staged for it).
            Slot::Work(_) | Slot::Value(_) => {}
        }
    }

    pub(super) fn take_value(&mut self) -> Option<K::Value> {
        self.take(|slot| match slot {
            Slot::Value(value) => Ok(value),
            other => Err(other),
        })
    }

    /// Puts `value` in; gives back the value it replaces. A waker left there by async
    /// work that finishes with this value is no longer needed.
    fn set_value(&mut self, value: K::Value) -> Option<K::Value> {
        match std::mem::replace(self, Slot::Value(value)) {
            Slot::Value(old) => Some(old),
            _ => None,
        }
    }

    pub(super) fn value(&self) -> Option<&K::Value> {
        match self {
            Slot::Value(value) => Some(value),
            _ => None,
        }
    }
}

/// A promise's cancel callback: run once, on the requesting thread.
pub type CancelCallback = Box<dyn FnOnce() + Send>;

/// What only some futures use, allocated on first use: progress, its callbacks,
/// done callbacks waiting in queues, a promise's cancel callback.
pub(super) struct Cold<K: Kind> {
    /// The message staged by `Job::fail`, used if the work then fails.
    pub(super) staged_message: Option<Vec<u8>>,
    pub(super) progress: (u64, u64),
    /// Progress callbacks delivered through queues.
    pub(super) watches: Vec<Watch<K>>,
    /// A done callback has started: no progress is delivered any more.
    pub(super) progress_over: bool,
    /// Done callbacks whose delivery waits in a queue, by tag. The queue is named
    /// weakly: its entry holds this future, and a queue dropped without a close must
    /// still release both.
    pub(super) queued: Vec<(u64, Weak<CompletionQueue>, K::Callback)>,
    /// Names queue deliveries of this future (watches and queued callbacks).
    next_tag: u64,
    pub(super) on_cancel: Option<CancelCallback>,
    /// A cancel callback was registered (it may have run since): one per promise.
    pub(super) cancel_registered: bool,
    /// The thread running the cancel callback; settling from another thread waits.
    pub(super) cancelling_on: Option<ThreadId>,
    /// The milliseconds of a timeout request.
    pub(super) timeout_ms: u64,
    /// Done callbacks registered after the first (which `Inner` keeps), in order.
    pub(super) more_callbacks: Vec<Registration<K>>,
    /// The work passed its point of no return (see `Future::commit`): requests no
    /// longer count.
    pub(super) committed: bool,
}

impl<K: Kind> Cold<K> {
    /// A new tag for a queue delivery of this future.
    pub(super) fn new_tag(&mut self) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        tag
    }

    /// Keeps a done callback whose delivery is about to be queued on `queue`; returns
    /// the delivery's tag.
    pub(super) fn hold_queued(
        &mut self,
        queue: &Arc<CompletionQueue>,
        callback: K::Callback,
    ) -> u64 {
        let tag = self.new_tag();
        self.queued.push((tag, Arc::downgrade(queue), callback));
        tag
    }
}

impl<K: Kind> Default for Cold<K> {
    fn default() -> Self {
        Cold {
            staged_message: None,
            progress: (0, 0),
            watches: Vec::new(),
            progress_over: false,
            queued: Vec::new(),
            next_tag: 0,
            on_cancel: None,
            cancel_registered: false,
            cancelling_on: None,
            timeout_ms: 0,
            more_callbacks: Vec::new(),
            committed: false,
        }
    }
}

pub(super) struct Inner<K: Kind> {
    pub(super) stage: Stage,
    requested: Option<Requested>,
    /// The finishing thread is raising queue descriptors with the lock let go, and
    /// publishes the outcome next (it runs no user code meanwhile).
    pub(super) raising: bool,
    /// Threads sleeping on `finished`; notifying nobody costs a syscall, so count.
    pub(super) waiters: u32,
    /// The work, the waker of its task, or the value.
    pub(super) slot: Slot<K>,
    /// The first done callback; the others wait in the cold part. None only if
    /// there are no others either.
    first_callback: Option<Registration<K>>,
    pub(super) cold: Option<Box<Cold<K>>>,
}

impl<K: Kind> Inner<K> {
    pub(super) fn cold(&mut self) -> &mut Cold<K> {
        self.cold.get_or_insert_with(Box::default)
    }

    /// The request made, if any.
    fn request(&self) -> Option<Request> {
        self.requested.map(|requested| match requested {
            Requested::Cancel => Request::Cancel,
            Requested::Timeout => Request::Timeout(self.cold.as_ref().map_or(0, |c| c.timeout_ms)),
        })
    }

    fn set_request(&mut self, request: Request) {
        self.requested = Some(match request {
            Request::Cancel => Requested::Cancel,
            Request::Timeout(ms) => {
                self.cold().timeout_ms = ms;
                Requested::Timeout
            }
        });
    }

    /// Adds a done callback after those registered before.
    pub(super) fn push_callback(&mut self, registration: Registration<K>) {
        if self.first_callback.is_none() {
            self.first_callback = Some(registration);
        } else {
            self.cold().more_callbacks.push(registration);
        }
    }

    /// Takes every done callback out, in the order registered.
    pub(super) fn take_callbacks(&mut self) -> Callbacks<Registration<K>> {
        let first = self.first_callback.take();
        let rest = match self.cold.as_mut() {
            Some(cold) => std::mem::take(&mut cold.more_callbacks),
            None => Vec::new(),
        };
        Callbacks::from_parts(first, rest)
    }
}

/// The shared state behind every [`Future`] handle of one submission.
pub(crate) struct Completion<K: Kind> {
    pub(super) status: AtomicI32,
    /// Handles held by callers (and by done callbacks and queued deliveries while they
    /// wait or run). The value is released when this reaches 0 on a finished future,
    /// on that thread, at once; the work's own references do not count.
    pub(super) holders: AtomicUsize,
    /// Mirrors `Inner::request.is_some()`, for work that polls without the lock.
    pub(super) cancel_requested: AtomicBool,
    pub(super) observed: AtomicBool,
    /// A promise's future: shutdown stops it through its request, like any other.
    pub(super) promised: bool,
    /// Boxed: most futures never fail, and the cell is read without the lock.
    pub(super) failure: std::sync::OnceLock<Box<Failure>>,
    pub(super) owner: Arc<Owner>,
    pub(super) inner: Mutex<Inner<K>>,
    pub(super) finished: Condvar,
}

/// Which thread runs which promise's cancel callback, and which settling thread waits
/// for which promise's callback to return, across all promises (by address): a settle
/// that would close a cycle of waits (two cancel callbacks settling each other's
/// promise) does not wait.
static CANCEL_CALLS: std::sync::Mutex<WaitGraph<usize, ThreadId>> =
    std::sync::Mutex::new(WaitGraph::new());

/// `CANCEL_CALLS`, locked (a std lock under loom too: nothing inside yields to loom).
fn cancel_calls() -> std::sync::MutexGuard<'static, WaitGraph<usize, ThreadId>> {
    CANCEL_CALLS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// In `Completion::holders`, beside the count: set by a finish that left something for
/// the last handle to release (a value to drop, or a failure to report), which that
/// handle's drop does under the lock.
pub(super) const RELEASE_PENDING: usize = 1 << (usize::BITS - 1);
/// In `Completion::holders`, beside the count: set by a finish that left nothing to
/// release.
pub(super) const RELEASE_NONE: usize = 1 << (usize::BITS - 2);
/// The count of handles in `Completion::holders`.
pub(super) const HOLDER_COUNT: usize = RELEASE_NONE - 1;

/// What queueing a finished future's deliveries leaves to do once its lock is
/// released.
#[derive(Default)]
struct Deliveries {
    /// The queues that went from empty to non-empty: each edge is raised before the
    /// future can be seen finished (and taken then), each hook called afterwards.
    edges: Vec<(Arc<CompletionQueue>, Option<Edge>)>,
    /// Entries of closed queues: dropped.
    refused: Vec<Entry>,
}

impl Deliveries {
    fn raise(&mut self) {
        for (queue, edge) in &mut self.edges {
            if let Some(edge) = edge.take() {
                queue.raise(edge);
            }
        }
    }

    fn absorb(&mut self, other: Deliveries) {
        self.edges.extend(other.edges);
        self.refused.extend(other.refused);
    }

    fn notify(mut self) {
        // Raised already unless the lock had to be kept (see `finish_locked`).
        self.raise();
        drop(self.refused);
        for (queue, _) in self.edges {
            queue.call_notify();
        }
    }
}

/// What a finished future gives up once nobody holds it.
pub(super) struct Release<V> {
    value: Option<V>,
    unobserved: bool,
}

impl<K: Kind> Future<K> {
    pub(super) fn with_stage(owner: Arc<Owner>, stage: Stage, work: Option<K::Work>) -> Future<K> {
        Future::from_completion(Future::shared(owner, stage, work), true)
    }

    /// The shared state of a new future, with one handle counted (see
    /// [`Future::from_arc`]).
    fn shared(owner: Arc<Owner>, stage: Stage, work: Option<K::Work>) -> Arc<Completion<K>> {
        Arc::new(Completion {
            status: AtomicI32::new(Status::Pending.code()),
            holders: AtomicUsize::new(1),
            cancel_requested: AtomicBool::new(false),
            observed: AtomicBool::new(false),
            promised: stage == Stage::Held,
            failure: std::sync::OnceLock::new(),
            owner,
            inner: Mutex::new(Inner {
                stage,
                requested: None,
                raising: false,
                waiters: 0,
                slot: match work {
                    Some(work) => Slot::Work(work),
                    None => Slot::Empty,
                },
                first_callback: None,
                cold: None,
            }),
            finished: Condvar::new(),
        })
    }

    /// A future whose synchronous `work` waits in a queue.
    #[cfg(any(test, asyncbridge_loom))]
    pub(crate) fn queued(owner: Arc<Owner>, work: K::Work) -> Future<K> {
        Future::with_stage(owner, Stage::Queued, Some(work))
    }

    /// [`Future::queued`], as the one reference its submitter holds (see
    /// [`Future::from_arc`]).
    pub(crate) fn queued_shared(owner: Arc<Owner>, work: K::Work) -> Arc<Completion<K>> {
        Future::shared(owner, Stage::Queued, Some(work))
    }

    /// A future that waits for others (a chain, a combination): no work of its own
    /// yet, so a request finishes it at once.
    pub(crate) fn waiting(owner: Arc<Owner>, work: Option<K::Work>) -> Future<K> {
        Future::with_stage(owner, Stage::Queued, work)
    }

    /// A future whose async work is already under way.
    pub(crate) fn running(owner: Arc<Owner>) -> Future<K> {
        Future::with_stage(owner, Stage::Running, None)
    }

    /// A future its holder settles (see `crate::promise`).
    pub(crate) fn held(owner: Arc<Owner>) -> Future<K> {
        Future::with_stage(owner, Stage::Held, None)
    }

    /// Whether cancellation was requested, by a caller, by the work itself, by a
    /// timeout or by shutdown.
    pub fn is_cancel_requested(&self) -> bool {
        let c = self.completion();
        c.cancel_requested.load(Ordering::SeqCst) || self.shutdown_cancels()
    }

    /// Whether shutdown past its grace counts as a request for this future: for all but
    /// promises, which shutdown asks through a request of their own.
    fn shutdown_cancels(&self) -> bool {
        let c = self.completion();
        !c.promised && c.owner.cancelling()
    }

    /// Requests cancellation.
    ///
    /// On a pending future returns `Ok(Status::Ok)`; the future ends `Cancelled` once
    /// its work has stopped: at once if it had not started (its work is dropped here),
    /// at its next await for async work, when the function returns for running
    /// synchronous work, when its holder settles it for a promise (whose cancel
    /// callback runs here first). On a finished future changes nothing and returns
    /// its status.
    pub fn cancel(&self) -> Result<Status, Error> {
        self.request(Request::Cancel)
    }

    /// Cancels the future because `ms` milliseconds ran out: it ends `Failed` with
    /// `Error::TimedOut`'s code once its work has stopped. A future already finished,
    /// or whose cancellation was already requested, is left alone.
    pub(crate) fn time_out(&self, ms: u64) {
        let _ = self.request(Request::Timeout(ms));
    }

    /// The one way a request is made. The first request of a future is the one that
    /// counts; later ones change nothing.
    fn request(&self, request: Request) -> Result<Status, Error> {
        let status = self.peek();
        if status.is_final() {
            return Ok(status);
        }
        if self.completion().owner.orphaned() {
            return Err(Error::NotRunning);
        }
        let mut inner = self.lock();
        if inner.stage.is_final() {
            drop(inner);
            return Ok(self.peek());
        }
        if inner.stage == Stage::Finishing || inner.cold.as_ref().is_some_and(|c| c.committed) {
            // Still pending to the caller, and past the point where a request counts.
            return Ok(Status::Ok);
        }
        if inner.requested.is_some() || (request != Request::Cancel && self.is_cancel_requested()) {
            // A timeout after a cancellation (or a shutdown's) is not a timeout.
            return Ok(Status::Ok);
        }
        inner.set_request(request);
        self.completion()
            .cancel_requested
            .store(true, Ordering::SeqCst);
        match inner.stage {
            Stage::Queued => {
                inner.stage = Stage::Running;
                let work = inner.slot.take_work();
                drop(inner);
                // The work's resources are released before anyone can see the future
                // finished: cancelled means nothing of the work is left.
                drop(work);
                self.finish(Outcome::Cancelled);
            }
            Stage::Running => {
                let waker = inner.slot.take_waker();
                drop(inner);
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            Stage::Held => {
                let callback = inner.cold.as_mut().and_then(|c| c.on_cancel.take());
                if let Some(callback) = callback {
                    self.run_cancel_callback(inner, callback);
                }
            }
            Stage::Finishing | Stage::Done | Stage::Released => {}
        }
        Ok(Status::Ok)
    }

    /// Runs a promise's cancel callback on this thread, marked as running so that a
    /// holder settling on another thread waits for it to return.
    fn run_cancel_callback(
        &self,
        mut inner: crate::sync::MutexGuard<'_, Inner<K>>,
        callback: CancelCallback,
    ) {
        let me = current_thread();
        inner.cold().cancelling_on = Some(me);
        cancel_calls().running(self.key(), me);
        drop(inner);
        if catch_unwind(AssertUnwindSafe(callback)).is_err() {
            eprintln!("asyncbridge: a cancel callback panicked");
        }
        cancel_calls().returned(self.key(), me);
        let mut inner = self.lock();
        inner.cold().cancelling_on = None;
        let wake = inner.waiters > 0;
        drop(inner);
        if wake {
            self.completion().finished.notify_all();
        }
    }

    /// Registers a promise's cancel callback: run once on the requesting thread, or at
    /// once on this one if cancellation was already requested. A second registration,
    /// and one on a future that is no promise, is `Error::Invalid`; on a settled one
    /// the callback is dropped unrun.
    pub(crate) fn on_cancel(&self, callback: CancelCallback) -> Result<(), Error> {
        let inner = self.lock();
        if !self.completion().promised {
            drop(inner);
            drop(callback);
            return Err(Error::Invalid);
        }
        let mut inner = inner;
        if inner.stage != Stage::Held {
            drop(inner);
            drop(callback);
            return Ok(());
        }
        let cold = inner.cold();
        if cold.cancel_registered {
            drop(inner);
            drop(callback);
            return Err(Error::Invalid);
        }
        cold.cancel_registered = true;
        if inner.requested.is_some() {
            self.run_cancel_callback(inner, callback);
        } else {
            inner.cold().on_cancel = Some(callback);
        }
        Ok(())
    }

    /// A promise's holder settles it: the future ends with `outcome`, or as requested
    /// if cancellation came first. Waits for a cancel callback running on another
    /// thread to return, so that when this returns none runs and none will. Returns
    /// whether the future took `outcome`.
    pub(crate) fn settle(&self, outcome: Outcome<K::Value>) -> bool {
        let me = current_thread();
        let mut inner = self.lock();
        loop {
            match inner.cold.as_ref().and_then(|c| c.cancelling_on) {
                Some(thread) if thread != me => {
                    {
                        let mut calls = cancel_calls();
                        if calls.would_wait_for_itself(me, self.key()) {
                            // That callback waits, through other settles, for one this
                            // thread is running: waiting would never end. Settled now,
                            // with that callback still running.
                            break;
                        }
                        calls.waiting(me, self.key());
                    }
                    inner.waiters += 1;
                    inner = match self.completion().finished.wait(inner) {
                        Ok(guard) => guard,
                        Err(poisoned) => poisoned.into_inner(),
                    };
                    inner.waiters -= 1;
                    cancel_calls().waited(me, self.key());
                }
                _ => break,
            }
        }
        if inner.stage != Stage::Held {
            return false;
        }
        // Leaving `Held` under the lock that checked for a running cancel callback: a
        // request from now on finds the future finishing and calls nothing.
        inner.stage = Stage::Running;
        let on_cancel = inner.cold.as_mut().and_then(|c| c.on_cancel.take());
        self.finish_locked(inner, outcome, on_cancel)
    }

    /// Runs queued synchronous work, unless a request came first; calls `returned`
    /// once the work has returned, before the future finishes.
    pub(crate) fn run_queued(&self, returned: &dyn Fn()) {
        let work = {
            let mut inner = self.lock();
            if inner.stage != Stage::Queued {
                return;
            }
            inner.stage = Stage::Running;
            inner.slot.take_work()
        };
        let Some(work) = work else { return };
        if self.is_cancel_requested() {
            // Shutdown began between queueing and now: the work is dropped unrun.
            drop(work);
            self.finish(Outcome::Cancelled);
            return;
        }
        let job = super::job::Job::new(self);
        let armed = super::arm_running_work(self, &job);
        let result = catch_unwind(AssertUnwindSafe(|| K::run(work, &job)))
            .unwrap_or_else(|_| Err(Failure::panic()));
        drop(armed);
        returned();
        self.finish(match result {
            Ok(()) => Outcome::Ok(None),
            Err(failure) => Outcome::Failed(failure),
        });
    }

    /// Takes the work back out of a future no thread has seen (a refused submission).
    pub(crate) fn take_queued_work(&self) -> Option<K::Work> {
        let mut inner = self.lock();
        if inner.stage != Stage::Queued {
            return None;
        }
        inner.stage = Stage::Released;
        inner.slot.take_work()
    }

    /// Drops queued work unrun and finishes the future `Cancelled`; no-op otherwise.
    pub(crate) fn cancel_if_queued(&self) {
        // `request` re-checks the stage under the lock.
        if self.lock().stage == Stage::Queued {
            let _ = self.cancel();
        }
    }

    /// Running work is past its point of no return (a file renamed into place): from
    /// now on a request changes nothing, and the work's outcome stands. Returns false,
    /// committing nothing, if a request came first (the work should stop instead).
    pub(crate) fn commit(&self) -> bool {
        let mut inner = self.lock();
        if inner.stage != Stage::Running || inner.requested.is_some() || self.shutdown_cancels() {
            return false;
        }
        inner.cold().committed = true;
        true
    }

    /// Records the wakeup of async work; returns whether cancellation was requested.
    pub(crate) fn register_waker(&self, waker: &Waker) -> bool {
        self.lock().slot.set_waker(waker);
        // Checked after storing: a request that stored its flag before we locked is
        // seen here, and one that locks after us takes the waker.
        self.is_cancel_requested()
    }

    pub(crate) fn stage_value(&self, value: K::Value) {
        let old = self.lock().slot.set_value(value);
        drop(old);
    }

    pub(crate) fn stage_failure_message(&self, message: Vec<u8>) {
        self.lock().cold().staged_message = Some(message);
    }

    pub(crate) fn staged_failure(&self, code: i32) -> Failure {
        match self
            .lock()
            .cold
            .as_mut()
            .and_then(|c| c.staged_message.take())
        {
            Some(message) => Failure::new(code, message),
            None => Failure::from_code(code),
        }
    }

    /// Moves a future to its final state and runs its callbacks.
    ///
    /// `Outcome::Ok(Some(v))` replaces any staged value. A request made before wins
    /// over an `Ok` or `Failed` outcome, and gives a `Cancelled` one its reason (a
    /// timeout). A value that does not end up in an `Ok` future is dropped here, at
    /// once. Returns whether the future took `outcome` as given (false: it had
    /// finished already, or the request decided).
    ///
    /// Called while this thread runs done callbacks, the callbacks of this future run
    /// after the current one returns, on this thread.
    pub(crate) fn finish(&self, outcome: Outcome<K::Value>) -> bool {
        let inner = self.lock();
        self.finish_locked(inner, outcome, None)
    }

    fn finish_locked<'s>(
        &'s self,
        mut inner: crate::sync::MutexGuard<'s, Inner<K>>,
        outcome: Outcome<K::Value>,
        unused_cancel_callback: Option<CancelCallback>,
    ) -> bool {
        if matches!(
            inner.stage,
            Stage::Finishing | Stage::Done | Stage::Released | Stage::Held
        ) {
            drop(inner);
            drop(unused_cancel_callback);
            return false;
        }
        inner.stage = Stage::Finishing;
        let completion = self.completion();
        let committed = inner.cold.as_ref().is_some_and(|c| c.committed);
        let request = inner
            .request()
            .or_else(|| self.shutdown_cancels().then_some(Request::Cancel))
            .filter(|_| !committed);
        // What the request overrides is dropped below, outside the lock.
        let (outcome, taken, overridden) = match (outcome, request) {
            (Outcome::Cancelled, Some(Request::Timeout(ms))) => {
                (Outcome::TimedOut(ms), false, None)
            }
            (given @ (Outcome::Cancelled | Outcome::TimedOut(_)), _) => (given, true, None),
            (given, None) => (given, true, None),
            (given, Some(request)) => (
                match request {
                    Request::Cancel => Outcome::Cancelled,
                    Request::Timeout(ms) => Outcome::TimedOut(ms),
                },
                false,
                Some(given),
            ),
        };
        let (status, discarded) = match outcome {
            Outcome::Ok(value) => {
                let old = match value {
                    Some(v) => inner.slot.set_value(v),
                    None => None,
                };
                (Status::Ok, old)
            }
            Outcome::Failed(failure) => {
                // Only this thread finishes, and only once, so the cell is empty.
                let _ = completion.failure.set(Box::new(failure));
                (Status::Failed, inner.slot.take_value())
            }
            Outcome::TimedOut(ms) => {
                let failure =
                    Failure::new(Error::TimedOut.code(), format!("timed out after {ms} ms"));
                let _ = completion.failure.set(Box::new(failure));
                (Status::Failed, inner.slot.take_value())
            }
            Outcome::Cancelled => (Status::Cancelled, inner.slot.take_value()),
        };
        if discarded.is_some() || overridden.is_some() || unused_cancel_callback.is_some() {
            // Freed before anyone can see the future finished, and outside the lock
            // (a free function may call into the library). Nothing else finishes the
            // future meanwhile: `Finishing` turns any other finisher away.
            drop(inner);
            drop(discarded);
            drop(overridden);
            drop(unused_cancel_callback);
            inner = self.lock();
        }
        drop(inner.slot.take_waker());
        if let Some(cold) = inner.cold.as_mut() {
            cold.staged_message = None;
        }
        let mut callbacks = Callbacks::new();
        let mut user_callbacks = false;
        // Queued before the future can be seen finished: an owner that waits for it
        // and then frees the queue finds the callback there (freeing runs it; a later
        // delivery would be dropped), and finds the descriptor readable already (a
        // waiter and a poller agree).
        let mut queued = self.sort_callbacks(&mut inner, &mut callbacks, &mut user_callbacks);
        if queued.as_ref().is_some_and(|q| !q.edges.is_empty()) {
            // The descriptors are raised with no lock held, so that a poller they wake
            // finds neither the queue's lock nor this future's taken. The future stays
            // `Finishing` meanwhile: a dispatch that takes one of its deliveries waits
            // until it is done (see `deliver`), so a callback sees the final state.
            inner.raising = true;
            drop(inner);
            if let Some(queued) = queued.as_mut() {
                queued.raise();
            }
            inner = self.lock();
            inner.raising = false;
            // Callbacks registered meanwhile (a `Finishing` future still takes them).
            if let Some(mut late) =
                self.sort_callbacks(&mut inner, &mut callbacks, &mut user_callbacks)
            {
                late.raise();
                if let Some(queued) = queued.as_mut() {
                    queued.absorb(late);
                }
            }
        }
        inner.stage = Stage::Done;
        // Whether the last handle will have anything to release (a value, or a failure
        // to report if nobody looked), marked in the word that counts the handles. The
        // handle dropped last either sees the mark (and releases, under the lock, or
        // knows there is nothing to) or was dropped before it, which the finish sees as
        // no holder left. A handle dropped before the finish, or after one that left
        // nothing, takes no lock.
        let unheld = if status == Status::Failed || inner.slot.value().is_some() {
            completion
                .holders
                .fetch_or(RELEASE_PENDING, Ordering::SeqCst)
                & HOLDER_COUNT
                == 0
        } else {
            inner.stage = Stage::Released;
            completion.holders.fetch_or(RELEASE_NONE, Ordering::SeqCst);
            false
        };
        // Progress must not be delivered after a done callback has started.
        if user_callbacks {
            if let Some(cold) = inner.cold.as_mut() {
                cold.progress_over = true;
            }
        }
        // Callbacks hold a handle while they run, taken before the future can be seen
        // finished: the value stays alive until the last of them returns. Without
        // callbacks, whether anyone still holds the future is decided now, under the
        // lock: if nobody does, the value goes with this finish; if somebody does, it
        // goes inside their last release, never on this thread later.
        let callback_handle = (!callbacks.is_empty()).then(|| self.handle());
        // Decided before anything (status, stats) can tell a caller it finished.
        let release = match callback_handle {
            Some(_) => None,
            None if unheld => self.take_release(&mut inner, status),
            None => None,
        };
        let wake = inner.waiters > 0;
        let owner = &completion.owner;
        // Counted before it can be seen finished, so stats read after a wait add up.
        owner.record(status);
        completion.status.store(status.code(), Ordering::Release);
        // No longer pending once final, and before the callbacks run: a shutdown
        // waiting for pending work must not wait for a callback that may be waiting
        // for it.
        owner.leave();
        drop(inner);
        if wake {
            completion.finished.notify_all();
        }
        // Outside the lock: a refused entry holds a handle whose drop may take it, and
        // a notify hook is user code.
        if let Some(queued) = queued {
            queued.notify();
        }
        match callback_handle {
            Some(handle) => run_unnested(move || {
                callbacks.for_each(|callback| {
                    // A panicking Rust callback must not keep the others from running.
                    let call = || match callback {
                        Direct::User(callback) => K::call(callback, &handle),
                        Direct::Internal(callback) => callback(&handle),
                    };
                    if catch_unwind(AssertUnwindSafe(call)).is_err() {
                        eprintln!("asyncbridge: a done callback panicked");
                    }
                });
                // Dropping the last handle releases the value, here and now.
                drop(handle);
            }),
            None => self.release(release),
        }
        taken
    }

    /// Under the lock of a finishing future: takes the done callbacks registered so
    /// far, adds those run by the finishing thread to `callbacks` (noting in
    /// `user_callbacks` whether any is the user's) and queues the delivery of the
    /// others; returns what is left to do about those, if there were any.
    fn sort_callbacks(
        &self,
        inner: &mut Inner<K>,
        callbacks: &mut Callbacks<Direct<K>>,
        user_callbacks: &mut bool,
    ) -> Option<Deliveries> {
        let mut deliveries = Vec::new();
        inner
            .take_callbacks()
            .for_each(|registration| match registration {
                Registration::Direct(callback) => {
                    *user_callbacks = true;
                    callbacks.push(Direct::User(callback))
                }
                Registration::Internal(callback) => callbacks.push(Direct::Internal(callback)),
                Registration::Via(via) => deliveries.push(*via),
            });
        (!deliveries.is_empty()).then(|| self.queue_deliveries(inner, deliveries))
    }

    /// Under the lock of a future that is finishing: queues the delivery of each done
    /// callback registered through a queue. Each entry holds a handle until it has
    /// run, taken before whether anyone still holds the future is decided; the
    /// callbacks wait here, by tag, where a withdrawal can find them.
    fn queue_deliveries(
        &self,
        inner: &mut Inner<K>,
        deliveries: Vec<(Arc<CompletionQueue>, K::Callback)>,
    ) -> Deliveries {
        let mut queued = Deliveries::default();
        for (queue, callback) in deliveries {
            let tag = inner.cold().hold_queued(&queue, callback);
            match queue.push_unraised(Entry::to(self.handle().into_target(), tag)) {
                Ok(Some(edge)) => queued.edges.push((queue, Some(edge))),
                Ok(None) => {}
                Err(entry) => queued.refused.push(entry),
            }
        }
        queued
    }

    /// Drops the value (and reports an unobserved failure) once the future has
    /// finished and no handle is left; at most once.
    pub(super) fn release_if_unheld(&self) {
        let Some(mut inner) = self.lock_unless_orphaned() else {
            return; // a fork child that cannot take the lock leaks instead
        };
        let status = self.peek();
        let release = self.take_release(&mut inner, status);
        drop(inner);
        self.release(release);
    }

    /// Under the lock: takes what is to be released if the future is finished, no
    /// handle is left and nothing was released yet.
    fn take_release(&self, inner: &mut Inner<K>, status: Status) -> Option<Release<K::Value>> {
        if inner.stage != Stage::Done
            || self.completion().holders.load(Ordering::SeqCst) & HOLDER_COUNT != 0
        {
            return None;
        }
        inner.stage = Stage::Released;
        Some(Release {
            value: inner.slot.take_value(),
            unobserved: status == Status::Failed
                && !self.completion().observed.load(Ordering::Relaxed),
        })
    }

    /// Outside the lock: drops the value, reports an unobserved failure.
    fn release(&self, release: Option<Release<K::Value>>) {
        let Some(release) = release else { return };
        drop(release.value);
        if release.unobserved {
            if let Some(failure) = self.completion().failure.get() {
                self.completion()
                    .owner
                    .report_unhandled(failure.code(), failure.message());
            }
        }
    }

    /// Names this future in `CANCEL_CALLS`.
    fn key(&self) -> usize {
        Arc::as_ptr(self.completion()) as usize
    }

    pub(super) fn lock(&self) -> crate::sync::MutexGuard<'_, Inner<K>> {
        lock(&self.completion().inner)
    }

    /// Locks, except in a fork child where the lock may belong to a vanished thread.
    pub(super) fn lock_unless_orphaned(&self) -> Option<crate::sync::MutexGuard<'_, Inner<K>>> {
        if self.completion().owner.orphaned() {
            crate::sync::try_lock(&self.completion().inner)
        } else {
            Some(self.lock())
        }
    }
}
