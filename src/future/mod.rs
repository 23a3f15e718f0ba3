//! The completion state machine: one shared allocation per submission, held by the
//! caller's handles, by the work while it runs and by pending callbacks.
//!
//! States and who moves them:
//!
//! ```text
//!   Queued --run_queued--> Running --finish--> Done
//!     |                       ^
//!     +--cancel (drops work)--+ (then finish: Cancelled)
//! ```
//!
//! Exactly one thread takes a future out of `Queued` (the runner or a canceller), and
//! so exactly one thread calls `finish`; everything `finish` publishes is written
//! under the lock before the status word, so a reader that sees a final status with
//! an acquire load needs no lock to trust it.

use std::ffi::{CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::task::Waker;
use std::time::{Duration, Instant};

pub mod job;

use job::Job;
use crate::sched::Owner;
use crate::delivery::queue::{CompletionQueue, Entry};
use crate::status::{Error, Status};
use crate::sync::{
    lock, try_lock, Arc, AtomicBool, AtomicI32, AtomicUsize, Condvar, Mutex, MutexGuard, Ordering,
};
use crate::sys::thread_role;

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
}

impl Failure {
    /// A failure with `code` and `message` (cut at its first NUL byte, if any).
    pub fn new(code: i32, message: impl Into<Vec<u8>>) -> Failure {
        let mut bytes = message.into();
        if let Some(nul) = bytes.iter().position(|&b| b == 0) {
            bytes.truncate(nul);
        }
        let message = CString::new(bytes).unwrap_or_default();
        Failure { code, message }
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    /// Synchronous work waits in a queue; nothing of it has run.
    Queued,
    /// The work runs, or cancellation of queued work is releasing it.
    Running,
    /// Final; `status` holds the outcome.
    Done,
}

/// Done callbacks; the first is stored inline so the common case does not allocate.
struct Callbacks<C> {
    first: Option<C>,
    rest: Vec<C>,
}

impl<C> Callbacks<C> {
    const fn new() -> Callbacks<C> {
        Callbacks {
            first: None,
            rest: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest.is_empty()
    }

    fn push(&mut self, cb: C) {
        if self.is_empty() {
            self.first = Some(cb);
        } else {
            self.rest.push(cb);
        }
    }

    fn into_iter(self) -> impl Iterator<Item = C> {
        self.first.into_iter().chain(self.rest)
    }
}

/// A done callback as registered: run by the finishing thread, or queued.
enum Registration<K: Kind> {
    Direct(K::Callback),
    Via(Arc<CompletionQueue<K>>, K::Callback),
    /// The library's own: a chained or combined future, a timeout. Does not count
    /// as observing a failure.
    Internal(InternalCallback<K>),
}

/// A callback of the library's own, run by the finishing thread; must not block.
pub(crate) type InternalCallback<K> = Box<dyn FnOnce(&Future<K>) + Send>;

/// A done callback to run on the finishing thread once the lock is released.
enum Direct<K: Kind> {
    User(K::Callback),
    Internal(InternalCallback<K>),
}

/// A progress callback delivered through a queue, at most one delivery pending.
struct Watch<K: Kind> {
    id: u64,
    queue: Arc<CompletionQueue<K>>,
    callback: K::ProgressCallback,
    /// A delivery is queued and has not run yet: new progress only updates the values
    /// it will read.
    queued: bool,
}

struct Inner<K: Kind> {
    stage: Stage,
    work: Option<K::Work>,
    /// While running: the value staged by the work. Once `Ok`: the future's value.
    value: Option<K::Value>,
    /// The message staged by `Job::fail`, used if the work then fails.
    staged_message: Option<Vec<u8>>,
    callbacks: Callbacks<Registration<K>>,
    /// Progress callbacks delivered through queues.
    watches: Vec<Watch<K>>,
    next_watch: u64,
    /// Threads sleeping on `finished`; notifying nobody costs a syscall, so count.
    waiters: u32,
    /// The task of async work, woken by `cancel`.
    waker: Option<Waker>,
    progress: (u64, u64),
    /// The value was released (dropped, or the failure reported) once nobody held it.
    released: bool,
    /// Cancelled by a timeout of this many milliseconds: ends `Failed`, not `Cancelled`.
    timed_out: Option<u64>,
    /// A thread is finishing the future; another (a combination's second input) backs off.
    finishing: bool,
    /// A done callback has started: progress is no longer delivered.
    done_delivered: bool,
}

/// The shared state behind every [`Future`] handle of one submission.
pub struct Completion<K: Kind> {
    status: AtomicI32,
    /// Handles held by callers (and by done callbacks while they run). The value is
    /// released when this reaches 0 on a finished future, on that thread, at once;
    /// the work's and the queues' own references do not count.
    holders: AtomicUsize,
    cancel_requested: AtomicBool,
    observed: AtomicBool,
    failure: OnceLock<Failure>,
    owner: Arc<Owner>,
    inner: Mutex<Inner<K>>,
    finished: Condvar,
}

/// A thread-safe handle to the result of work submitted to a bridge.
///
/// Cloning makes another handle to the same result. Dropping the last handle never
/// cancels the work. The value is released exactly once, deterministically: when the
/// future finishes if no handle is left, else when the last handle is dropped (or the
/// last running done callback returns), on that thread.
pub struct Future<K: Kind> {
    completion: Arc<Completion<K>>,
    /// Whether this handle counts in `holders`. The running work, its task and the
    /// queues hold references that do not keep the value alive.
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
        if self.holder && self.completion.holders.fetch_sub(1, Ordering::SeqCst) == 1 {
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
    /// A future whose synchronous `work` waits in a queue.
    pub(crate) fn queued(owner: Arc<Owner>, work: K::Work) -> Future<K> {
        Future::with_stage(owner, Stage::Queued, Some(work))
    }

    /// A future that waits for others (a chain, a combination): no work of its own
    /// yet, so cancelling it finishes it at once.
    pub(crate) fn waiting(owner: Arc<Owner>, work: Option<K::Work>) -> Future<K> {
        Future::with_stage(owner, Stage::Queued, work)
    }

    /// A future whose async work is already under way.
    pub(crate) fn running(owner: Arc<Owner>) -> Future<K> {
        Future::with_stage(owner, Stage::Running, None)
    }

    fn with_stage(owner: Arc<Owner>, stage: Stage, work: Option<K::Work>) -> Future<K> {
        Future {
            holder: true,
            completion: Arc::new(Completion {
                status: AtomicI32::new(Status::Pending.code()),
                holders: AtomicUsize::new(1),
                cancel_requested: AtomicBool::new(false),
                observed: AtomicBool::new(false),
                failure: OnceLock::new(),
                owner,
                inner: Mutex::new(Inner {
                    stage,
                    work,
                    value: None,
                    staged_message: None,
                    callbacks: Callbacks::new(),
                    watches: Vec::new(),
                    next_watch: 0,
                    waiters: 0,
                    waker: None,
                    progress: (0, 0),
                    released: false,
                    timed_out: None,
                    finishing: false,
                    done_delivered: false,
                }),
                finished: Condvar::new(),
            }),
        }
    }

    /// Takes back a handle turned into a reference by [`Future::into_arc`]; the
    /// reference's handle count passes to the returned handle.
    pub fn from_arc(completion: Arc<Completion<K>>) -> Future<K> {
        Future {
            completion,
            holder: true,
        }
    }

    /// Turns this handle into one reference to the shared state that still counts as
    /// a handle (the value stays alive) until it comes back through
    /// [`Future::from_arc`] and is dropped.
    pub fn into_arc(self) -> Arc<Completion<K>> {
        if self.holder {
            // Kept for the returned reference; `self`'s drop gives one back.
            self.completion.holders.fetch_add(1, Ordering::SeqCst);
        }
        self.completion.clone()
    }

    /// A reference for the work, its task or a queue: it keeps the shared state but
    /// not the value alive.
    pub(crate) fn internal(&self) -> Future<K> {
        Future {
            completion: self.completion.clone(),
            holder: false,
        }
    }

    /// The internal reference of a queue entry.
    #[cfg(not(asyncbridge_loom))]
    fn internal_from(completion: Arc<Completion<K>>) -> Future<K> {
        Future {
            completion,
            holder: false,
        }
    }

    /// A new handle made from any reference.
    fn handle(&self) -> Future<K> {
        self.completion.holders.fetch_add(1, Ordering::SeqCst);
        Future {
            completion: self.completion.clone(),
            holder: true,
        }
    }

    /// Drops the value (and reports an unobserved failure) once the future has
    /// finished and no handle is left; at most once.
    fn release_if_unheld(&self) {
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
            || inner.released
            || self.completion.holders.load(Ordering::SeqCst) != 0
        {
            return None;
        }
        inner.released = true;
        Some(Release {
            value: inner.value.take(),
            unobserved: status == Status::Failed
                && !self.completion.observed.load(Ordering::Relaxed),
        })
    }

    /// Outside the lock: drops the value, reports an unobserved failure.
    fn release(&self, release: Option<Release<K::Value>>) {
        let Some(release) = release else { return };
        drop(release.value);
        if release.unobserved {
            if let Some(failure) = self.completion.failure.get() {
                self.completion
                    .owner
                    .report_unhandled(failure.code(), failure.message());
            }
        }
    }

    /// The shared state, borrowed.
    pub fn as_arc(&self) -> &Arc<Completion<K>> {
        &self.completion
    }

    /// The status without observing a failure (see [`Future::status`]).
    pub(crate) fn peek(&self) -> Status {
        Status::from_code(self.completion.status.load(Ordering::Acquire))
    }

    fn observe(&self, status: Status) -> Status {
        if status == Status::Failed {
            self.completion.observed.store(true, Ordering::Relaxed);
        }
        status
    }

    /// `Pending`, or the final status. Reporting `Failed` counts as observing the failure.
    pub fn status(&self) -> Status {
        self.observe(self.peek())
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K>> {
        lock(&self.completion.inner)
    }

    /// Locks, except in a fork child where the lock may belong to a vanished thread.
    fn lock_unless_orphaned(&self) -> Option<MutexGuard<'_, Inner<K>>> {
        if self.completion.owner.orphaned() {
            try_lock(&self.completion.inner)
        } else {
            Some(self.lock())
        }
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
        while inner.stage != Stage::Done {
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
        let done = inner.stage == Stage::Done;
        drop(inner);
        Ok(if done { self.status() } else { Status::Timeout })
    }

    /// Requests cancellation.
    ///
    /// On a pending future returns `Ok(Status::Ok)`; the future ends `Cancelled` once
    /// its work has stopped: at once if it had not started (its work is dropped here),
    /// at its next await for async work, when the function returns for running
    /// synchronous work. On a finished future changes nothing and returns its status.
    pub fn cancel(&self) -> Result<Status, Error> {
        let status = self.peek();
        if status.is_final() {
            return Ok(status);
        }
        if self.completion.owner.orphaned() {
            return Err(Error::NotRunning);
        }
        let mut inner = self.lock();
        match inner.stage {
            Stage::Done => {
                drop(inner);
                Ok(self.peek())
            }
            Stage::Queued => {
                inner.stage = Stage::Running;
                self.completion
                    .cancel_requested
                    .store(true, Ordering::SeqCst);
                let work = inner.work.take();
                drop(inner);
                // The work's resources are released before anyone can see the future
                // finished: cancelled means nothing of the work is left.
                drop(work);
                self.finish(Ok(None));
                Ok(Status::Ok)
            }
            Stage::Running => {
                self.completion
                    .cancel_requested
                    .store(true, Ordering::SeqCst);
                let waker = inner.waker.take();
                drop(inner);
                if let Some(waker) = waker {
                    waker.wake();
                }
                Ok(Status::Ok)
            }
        }
    }

    /// Whether cancellation was requested, by a caller, by the work itself or by shutdown.
    pub fn is_cancel_requested(&self) -> bool {
        self.completion.cancel_requested.load(Ordering::SeqCst)
            || self.completion.owner.cancelling()
    }

    pub(crate) fn request_cancel(&self) {
        self.completion
            .cancel_requested
            .store(true, Ordering::SeqCst);
    }

    /// Registers `callback`, run exactly once with the finished future: at once on
    /// this thread if it has finished, else on the thread that finishes it.
    /// Registering counts as observing a failure.
    pub fn on_done(&self, callback: K::Callback) -> Result<(), Error> {
        self.completion.observed.store(true, Ordering::Relaxed);
        if !self.peek().is_final() {
            if self.completion.owner.orphaned() {
                return Err(Error::NotRunning);
            }
            let mut inner = self.lock();
            if inner.stage != Stage::Done {
                inner.callbacks.push(Registration::Direct(callback));
                return Ok(());
            }
        }
        K::call(callback, self);
        Ok(())
    }

    /// Registers `callback` to run exactly once with the finished future, inside
    /// `queue.dispatch()` on whatever thread calls it: queued at once if the future
    /// has finished, else by the thread that finishes it. Registering counts as
    /// observing a failure. If the queue is closed before the callback was queued, it
    /// never runs.
    pub fn on_done_via(
        &self,
        queue: &Arc<CompletionQueue<K>>,
        callback: K::Callback,
    ) -> Result<(), Error> {
        self.completion.observed.store(true, Ordering::Relaxed);
        if queue.orphaned() || (!self.peek().is_final() && self.completion.owner.orphaned()) {
            return Err(Error::NotRunning);
        }
        let Some(mut inner) = self.lock_unless_orphaned() else {
            return Err(Error::NotRunning);
        };
        if inner.stage != Stage::Done {
            inner
                .callbacks
                .push(Registration::Via(queue.clone(), callback));
            return Ok(());
        }
        let pushed = queue.push(Entry::Done {
            future: self.handle(),
            callback,
        });
        drop(inner);
        match pushed {
            Ok(edge) => {
                if edge {
                    queue.call_notify();
                }
            }
            Err(refused) => drop(refused),
        }
        Ok(())
    }

    /// Registers `callback` for progress reported by the work, delivered through
    /// `queue`: at most one delivery is pending per registration, and it reads the
    /// latest values when it runs. None runs once the future has finished, so none
    /// runs after its done callback.
    pub fn on_progress_via(
        &self,
        queue: &Arc<CompletionQueue<K>>,
        callback: K::ProgressCallback,
    ) -> Result<(), Error> {
        if self.peek().is_final() {
            return Ok(()); // no progress will come
        }
        if self.completion.owner.orphaned() || queue.orphaned() {
            return Err(Error::NotRunning);
        }
        let mut inner = self.lock();
        if inner.stage != Stage::Done {
            let id = inner.next_watch;
            inner.next_watch += 1;
            inner.watches.push(Watch {
                id,
                queue: queue.clone(),
                callback,
                queued: false,
            });
        }
        Ok(())
    }

    /// Withdraws this future's callbacks registered with `queue` that the predicates
    /// select, whether still waiting for the future or already queued: once this
    /// returns they will not run (one already running in a dispatch on another thread
    /// finishes). Returns how many registrations were withdrawn.
    pub fn withdraw_via(
        &self,
        queue: &Arc<CompletionQueue<K>>,
        mut done: impl FnMut(&K::Callback) -> bool,
        mut progress: impl FnMut(&K::ProgressCallback) -> bool,
    ) -> usize {
        if queue.orphaned() {
            // A fork child and the parent's queue: nothing is ever delivered there, and
            // its lock may belong to a thread that is not here.
            return 0;
        }
        let mut removed_callbacks = Vec::new();
        let (removed_entries, withdrawn_watches) = {
            // A parent's future in a fork child: its lock may be held for good.
            let Some(mut inner) = self.lock_unless_orphaned() else {
                return 0;
            };
            let callbacks = std::mem::replace(&mut inner.callbacks, Callbacks::new());
            for registration in callbacks.into_iter() {
                match registration {
                    Registration::Via(q, cb) if Arc::ptr_eq(&q, queue) && done(&cb) => {
                        removed_callbacks.push(cb)
                    }
                    other => inner.callbacks.push(other),
                }
            }
            let before = inner.watches.len();
            inner
                .watches
                .retain(|w| !(Arc::ptr_eq(&w.queue, queue) && progress(&w.callback)));
            let withdrawn_watches = before - inner.watches.len();
            // Queued deliveries of withdrawn watches find no watch and do nothing;
            // queued done callbacks are taken out here, under this future's lock, which
            // every push of this future's entries holds too.
            let entries = queue.remove(self, |entry| match entry {
                Entry::Done { callback, .. } => done(callback),
                Entry::Progress { .. } | Entry::Source(_) => false,
            });
            (entries, withdrawn_watches)
        };
        let count = removed_callbacks.len() + removed_entries.len() + withdrawn_watches;
        drop(removed_callbacks);
        drop(removed_entries);
        count
    }

    /// Runs a queued progress delivery with the latest values, unless a done callback
    /// of the future has started or the watch was withdrawn. Returns whether it called.
    pub(crate) fn deliver_progress(&self, watch: u64) -> bool {
        let found = {
            let mut inner = self.lock();
            let (progress, over) = (inner.progress, inner.done_delivered);
            inner
                .watches
                .iter_mut()
                .find(|w| w.id == watch)
                .and_then(|w| {
                    w.queued = false;
                    (!over).then(|| (w.callback.clone(), progress))
                })
        };
        match found {
            Some((callback, (done, total))) => {
                K::call_progress(&callback, self, done, total);
                true
            }
            None => false,
        }
    }

    /// Registers a callback of the library's own, run once by the finishing thread (at
    /// once if finished). Does not count as observing a failure.
    pub(crate) fn on_done_internal(&self, callback: InternalCallback<K>) -> Result<(), Error> {
        if !self.peek().is_final() {
            if self.completion.owner.orphaned() {
                return Err(Error::NotRunning);
            }
            let mut inner = self.lock();
            if inner.stage != Stage::Done {
                inner.callbacks.push(Registration::Internal(callback));
                return Ok(());
            }
        }
        callback(self);
        Ok(())
    }

    /// Cancels the future because `ms` milliseconds ran out: it ends `Failed` with
    /// `Error::TimedOut`'s code once its work has stopped. A future already finished,
    /// or whose cancellation was already requested, is left alone.
    pub(crate) fn time_out(&self, ms: u64) {
        {
            let mut inner = self.lock();
            if inner.stage == Stage::Done || self.is_cancel_requested() {
                return;
            }
            inner.timed_out = Some(ms);
        }
        let _ = self.cancel();
    }

    /// The failure, without counting as observing it.
    pub(crate) fn failure_unobserved(&self) -> Option<&Failure> {
        match self.peek() {
            Status::Failed => self.completion.failure.get(),
            _ => None,
        }
    }

    /// The bookkeeping of the bridge this future belongs to.
    pub(crate) fn owner(&self) -> &Arc<Owner> {
        &self.completion.owner
    }

    /// Marks a failure as observed (its code and message are passed on elsewhere).
    pub(crate) fn mark_observed(&self) {
        self.completion.observed.store(true, Ordering::Relaxed);
    }

    /// A done callback of this future is about to run: no progress after it.
    pub(crate) fn mark_done_delivered(&self) {
        self.lock().done_delivered = true;
    }

    /// Calls `f` with the value of a future that ended `Ok` and still holds it.
    pub fn with_value<R>(&self, f: impl FnOnce(&K::Value) -> R) -> Option<R> {
        if self.peek() != Status::Ok {
            return None;
        }
        self.lock_unless_orphaned()?.value.as_ref().map(f)
    }

    /// Takes the value out of a future that ended `Ok`; the caller owns it now.
    pub fn take_value(&self) -> Option<K::Value> {
        if self.peek() != Status::Ok {
            return None;
        }
        self.lock_unless_orphaned()?.value.take()
    }

    /// The failure of a future that ended `Failed`; reading it counts as observing it.
    pub fn failure(&self) -> Option<&Failure> {
        if self.peek() != Status::Failed {
            return None;
        }
        self.observe(Status::Failed);
        self.completion.failure.get()
    }

    /// The latest progress reported by the work: `(done, total)`.
    pub fn progress(&self) -> Result<(u64, u64), Error> {
        match self.lock_unless_orphaned() {
            Some(inner) => Ok(inner.progress),
            None => Err(Error::NotRunning),
        }
    }

    /// Whether the two handles share one result.
    pub fn same_as(&self, other: &Future<K>) -> bool {
        Arc::ptr_eq(&self.completion, &other.completion)
    }

    /// Runs queued synchronous work, unless it was cancelled first.
    pub(crate) fn run_queued(&self) {
        let work = {
            let mut inner = self.lock();
            if inner.stage != Stage::Queued {
                return;
            }
            inner.stage = Stage::Running;
            inner.work.take()
        };
        let Some(work) = work else { return };
        if self.is_cancel_requested() {
            // Shutdown began between queueing and now: the work is dropped unrun.
            drop(work);
            self.finish(Ok(None));
            return;
        }
        let job = Job::new(self);
        #[cfg(not(asyncbridge_loom))]
        let armed = crate::sys::thread_exit::arm(&RUNNING_WORK, self.completion.clone());
        let result = catch_unwind(AssertUnwindSafe(|| K::run(work, &job)))
            .unwrap_or_else(|_| Err(Failure::panic()));
        #[cfg(not(asyncbridge_loom))]
        drop(armed);
        self.finish(result.map(|()| None));
    }

    /// Takes the work back out of a future no thread has seen (a refused submission).
    pub(crate) fn take_queued_work(&self) -> Option<K::Work> {
        let mut inner = self.lock();
        if inner.stage != Stage::Queued {
            return None;
        }
        inner.stage = Stage::Done;
        inner.work.take()
    }

    /// Drops queued work unrun and finishes the future `Cancelled`; no-op otherwise.
    pub(crate) fn cancel_if_queued(&self) {
        // `cancel` re-checks the stage under the lock.
        if self.lock().stage == Stage::Queued {
            let _ = self.cancel();
        }
    }

    /// Records the wakeup of async work; returns whether cancellation was requested.
    pub(crate) fn register_waker(&self, waker: &Waker) -> bool {
        let mut inner = self.lock();
        match &inner.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => inner.waker = Some(waker.clone()),
        }
        drop(inner);
        // Checked after storing: a `cancel` that stored its flag before we locked is
        // seen here, and one that locks after us takes the waker.
        self.is_cancel_requested()
    }

    pub(crate) fn stage_value(&self, value: K::Value) {
        let old = self.lock().value.replace(value);
        drop(old);
    }

    pub(crate) fn stage_failure_message(&self, message: Vec<u8>) {
        self.lock().staged_message = Some(message);
    }

    pub(crate) fn staged_failure(&self, code: i32) -> Failure {
        match self.lock().staged_message.take() {
            Some(message) => Failure::new(code, message),
            None => Failure::from_code(code),
        }
    }

    pub(crate) fn set_progress(&self, done: u64, total: u64) {
        let mut inner = self.lock();
        inner.progress = (done, total);
        if inner.watches.is_empty() {
            return;
        }
        let mut notify = Vec::new();
        let mut refused = Vec::new();
        for i in 0..inner.watches.len() {
            if inner.watches[i].queued {
                continue; // coalesced: the queued delivery will read these values
            }
            let entry = Entry::Progress {
                future: self.handle(),
                watch: inner.watches[i].id,
            };
            match inner.watches[i].queue.push(entry) {
                Ok(edge) => {
                    inner.watches[i].queued = true;
                    if edge {
                        notify.push(inner.watches[i].queue.clone());
                    }
                }
                Err(entry) => refused.push(entry),
            }
        }
        drop(inner);
        drop(refused);
        for queue in notify {
            queue.call_notify();
        }
    }

    /// Moves a running future to its final state and runs its callbacks.
    ///
    /// `result` is the work's outcome; `Ok(Some(v))` replaces any staged value.
    /// Cancellation requested meanwhile wins over the outcome, and a value that does
    /// not end up in an `Ok` future is dropped here, at once. Returns whether the
    /// future took `result` as its outcome (false: it had finished, or was cancelled).
    ///
    /// Called while this thread runs done callbacks, the callbacks of this future run
    /// after the current one returns, on this thread.
    pub(crate) fn finish(&self, result: Result<Option<K::Value>, Failure>) -> bool {
        let mut inner = self.lock();
        if inner.stage == Stage::Done || inner.finishing {
            return false;
        }
        inner.finishing = true;
        let taken = !self.is_cancel_requested();
        let (status, discarded) = if !taken {
            let staged = inner.value.take();
            let status = match inner.timed_out {
                Some(ms) => {
                    let failure =
                        Failure::new(Error::TimedOut.code(), format!("timed out after {ms} ms"));
                    let _ = self.completion.failure.set(failure);
                    Status::Failed
                }
                None => Status::Cancelled,
            };
            (status, (staged, result.ok().flatten()))
        } else {
            match result {
                Ok(value) => {
                    let old = match value {
                        Some(v) => inner.value.replace(v),
                        None => None,
                    };
                    (Status::Ok, (old, None))
                }
                Err(failure) => {
                    // Only this thread finishes, and only once, so the cell is empty.
                    let _ = self.completion.failure.set(failure);
                    (Status::Failed, (inner.value.take(), None))
                }
            }
        };
        if discarded.0.is_some() || discarded.1.is_some() {
            // Freed before anyone can see the future finished, and outside the lock
            // (a free function may call into the library). Nothing else finishes the
            // future meanwhile: `finishing` turns any other finisher away.
            drop(inner);
            drop(discarded);
            inner = self.lock();
        }
        inner.stage = Stage::Done;
        inner.staged_message = None;
        inner.waker = None;
        let registrations = std::mem::replace(&mut inner.callbacks, Callbacks::new());
        // Each queued callback's entry holds a handle until it has run; the entries are
        // pushed below, under the lock, where a withdrawal can find them.
        let mut callbacks = Callbacks::new();
        let mut entries = Vec::new();
        let mut user_callbacks = false;
        for registration in registrations.into_iter() {
            match registration {
                Registration::Direct(callback) => {
                    user_callbacks = true;
                    callbacks.push(Direct::User(callback))
                }
                Registration::Internal(callback) => callbacks.push(Direct::Internal(callback)),
                Registration::Via(queue, callback) => {
                    let entry = Entry::Done {
                        future: self.handle(),
                        callback,
                    };
                    entries.push((queue, entry));
                }
            }
        }
        // Progress must not be delivered after a done callback has started.
        if user_callbacks {
            inner.done_delivered = true;
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
            None => self.take_release(&mut inner, status),
        };
        let wake = inner.waiters > 0;
        let owner = &self.completion.owner;
        // Queued before the future can be seen finished: an owner that waits for it
        // and then frees the queue finds the callback there (freeing runs it; a later
        // delivery would be dropped), and finds the descriptor readable already (a
        // waiter and a poller agree). A dispatch that takes an entry early waits on
        // this lock (`mark_done_delivered`) before its callback runs, so the callback
        // still sees the final state.
        let mut notify = Vec::new();
        let mut refused = Vec::new();
        for (queue, entry) in entries {
            match queue.push(entry) {
                Ok(true) => notify.push(queue),
                Ok(false) => {}
                Err(entry) => refused.push(entry),
            }
        }
        // Counted before it can be seen finished, so stats read after a wait add up.
        owner.record(status);
        self.completion
            .status
            .store(status.code(), Ordering::Release);
        // No longer pending once final, and before the callbacks run: a shutdown
        // waiting for pending work must not wait for a callback that may be waiting
        // for it.
        owner.leave();
        drop(inner);
        // Outside the lock: a refused entry holds a handle whose drop may take it.
        drop(refused);
        if wake {
            self.completion.finished.notify_all();
        }
        for queue in notify {
            queue.call_notify();
        }
        match callback_handle {
            Some(handle) => run_unnested(move || {
                for callback in callbacks.into_iter() {
                    // A panicking Rust callback must not keep the others from running.
                    let call = || match callback {
                        Direct::User(callback) => K::call(callback, &handle),
                        Direct::Internal(callback) => callback(&handle),
                    };
                    if catch_unwind(AssertUnwindSafe(call)).is_err() {
                        eprintln!("asyncbridge: a done callback panicked");
                    }
                }
                // Dropping the last handle releases the value, here and now.
                drop(handle);
            }),
            None => self.release(release),
        }
        taken
    }
}

/// Done callbacks waiting to run on this thread, one after the other.
type AfterCallbacks = std::collections::VecDeque<Box<dyn FnOnce()>>;

// `Some` while this thread runs the done callbacks of a finish: futures finished
// meanwhile (by those callbacks, or by the library's own, which finish chained and
// combined futures) queue theirs here, and the outermost finish runs them once the
// current callback returns. Completion never recurses, so chains and nested
// combinations of any length cannot overflow the stack.
#[cfg(not(asyncbridge_loom))]
std::thread_local! {
    static AFTER: std::cell::RefCell<Option<AfterCallbacks>> =
        const { std::cell::RefCell::new(None) };
}
// loom runs its threads on one OS thread, so it brings its own locals.
#[cfg(asyncbridge_loom)]
loom::thread_local! {
    static AFTER: std::cell::RefCell<Option<AfterCallbacks>> = std::cell::RefCell::new(None);
}

/// Runs `callbacks` now, or, when this thread is already running done callbacks, as
/// soon as the one running returns (before the outermost finish returns).
fn run_unnested<F: FnOnce() + 'static>(callbacks: F) {
    let mut callbacks = Some(callbacks);
    let nested = AFTER.try_with(|after| {
        let mut after = after.borrow_mut();
        match after.as_mut() {
            Some(list) => {
                if let Some(callbacks) = callbacks.take() {
                    list.push_back(Box::new(callbacks));
                }
                true
            }
            None => {
                *after = Some(AfterCallbacks::new());
                false
            }
        }
    });
    let Some(callbacks) = callbacks else { return };
    if nested.is_err() {
        // This thread's locals are being destroyed (it is exiting): run them here.
        callbacks();
        return;
    }
    /// Ends the drain even if a Rust callback's panic escapes it.
    struct Drained;
    impl Drop for Drained {
        fn drop(&mut self) {
            let rest = AFTER.try_with(|after| after.borrow_mut().take());
            // Left over only by a panic: run them rather than lose them.
            if let Ok(Some(rest)) = rest {
                for callbacks in rest {
                    let _ = catch_unwind(AssertUnwindSafe(callbacks));
                }
            }
        }
    }
    let _drained = Drained;
    callbacks();
    loop {
        let next = AFTER.with(|after| after.borrow_mut().as_mut().and_then(|l| l.pop_front()));
        match next {
            Some(callbacks) => callbacks(),
            None => break,
        }
    }
}

/// What a finished future gives up once nobody holds it.
struct Release<V> {
    value: Option<V>,
    unobserved: bool,
}

/// Type-erased queued work, as the bridge's queues hold it.
#[cfg(not(asyncbridge_loom))]
pub(crate) trait Queued: Send + Sync {
    /// Runs the work (or skips it if it was cancelled first).
    fn run(self: Arc<Self>);
    /// Drops the work unrun and finishes its future `Cancelled`, if not yet started.
    fn cancel_queued(self: Arc<Self>);
}

#[cfg(not(asyncbridge_loom))]
std::thread_local! {
    /// The future whose synchronous work this thread is running.
    static RUNNING_WORK: crate::sys::thread_exit::Slot = const { crate::sys::thread_exit::Slot::new() };
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
        if thread_role::on_any_loop() {
            eprintln!(
                "asyncbridge: a loop thread ended inside work run on it (pthread_exit or \
                 thread cancellation); the bridge cannot go on without its loop: aborting"
            );
            std::process::abort();
        }
        Future::internal_from(self)
            .finish(Err(Failure::new(Error::Abandoned.code(), THREAD_ENDED)));
    }
}

#[cfg(not(asyncbridge_loom))]
impl<K: Kind> Queued for Completion<K> {
    fn run(self: Arc<Self>) {
        Future::internal_from(self).run_queued();
    }

    fn cancel_queued(self: Arc<Self>) {
        Future::internal_from(self).cancel_if_queued();
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

#[cfg(all(test, not(asyncbridge_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    type K = Boxed<Counted>;

    fn owner() -> Arc<Owner> {
        let owner = Arc::new(Owner::new(0, None));
        owner.admit().unwrap();
        owner
    }

    #[test]
    fn value_lives_until_the_last_handle() {
        let drops = Arc::new(AtomicUsize::new(0));
        let f = Future::<K>::running(owner());
        let g = f.clone();
        f.finish(Ok(Some(Counted(drops.clone()))));
        assert_eq!(f.wait(Some(Duration::ZERO)), Ok(Status::Ok));
        assert!(f.with_value(|_| ()).is_some());
        drop(f);
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(g);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn taken_value_is_the_callers() {
        let drops = Arc::new(AtomicUsize::new(0));
        let f = Future::<K>::running(owner());
        f.finish(Ok(Some(Counted(drops.clone()))));
        let value = f.take_value().expect("a value");
        assert!(f.take_value().is_none() && f.with_value(|_| ()).is_none());
        drop(f);
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(value);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn staged_value_of_failed_work_is_dropped_at_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let d = drops.clone();
        let f = Future::<K>::queued(
            owner(),
            Box::new(move |job| {
                job.set_value(Counted(d));
                Err(job.outcome_of(job.fail(3, "bad")).unwrap_err())
            }),
        );
        let keep = f.clone();
        f.run_queued();
        assert_eq!(
            drops.load(Ordering::SeqCst),
            1,
            "dropped while a handle is held"
        );
        let failure = keep.failure().unwrap();
        assert_eq!((failure.code(), failure.message()), (3, c"bad"));
    }

    #[test]
    fn failure_without_message_names_its_code() {
        let f = Future::<K>::queued(owner(), Box::new(|job| job.outcome_of(17)));
        f.run_queued();
        assert_eq!(f.status(), Status::Failed);
        assert_eq!(f.failure().unwrap().message(), c"work failed with code 17");
    }

    #[test]
    fn wait_times_out_and_stays_usable() {
        let f = Future::<K>::running(owner());
        let started = Instant::now();
        assert_eq!(f.wait(Some(Duration::from_millis(30))), Ok(Status::Timeout));
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(f.wait(Some(Duration::ZERO)), Ok(Status::Timeout));
        let g = f.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            g.finish(Ok(None));
        });
        assert_eq!(f.wait(None), Ok(Status::Ok));
        t.join().unwrap();
    }

    #[test]
    fn wait_on_a_loop_thread_is_refused_unless_finished() {
        let f = Future::<K>::running(owner());
        let g = f.clone();
        std::thread::spawn(move || {
            crate::sys::thread_role::enter_loop(u64::MAX);
            assert_eq!(
                g.wait(Some(Duration::from_secs(5))),
                Err(Error::WouldDeadlock)
            );
            assert_eq!(g.wait(None), Err(Error::WouldDeadlock));
            assert_eq!(g.wait(Some(Duration::ZERO)), Ok(Status::Timeout));
            g.finish(Ok(None));
            assert_eq!(g.wait(None), Ok(Status::Ok));
        })
        .join()
        .unwrap();
        assert_eq!(f.status(), Status::Ok);
    }

    #[test]
    fn cancel_queued_releases_work_before_returning() {
        let drops = Arc::new(AtomicUsize::new(0));
        let token = Counted(drops.clone());
        let f = Future::<K>::queued(
            owner(),
            Box::new(move |_| {
                let _t = token;
                panic!("cancelled work must not run");
            }),
        );
        assert_eq!(f.cancel(), Ok(Status::Ok));
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_eq!(f.status(), Status::Cancelled);
        f.run_queued(); // the runner finds it cancelled and skips it
        assert_eq!(f.status(), Status::Cancelled);
        assert_eq!(f.cancel(), Ok(Status::Cancelled));
    }

    #[test]
    fn cancel_while_running_wins_when_the_work_returns() {
        let f = Future::<K>::queued(
            owner(),
            Box::new(|job| {
                assert!(!job.is_cancelled());
                job.cancel();
                assert!(job.is_cancelled());
                Ok(())
            }),
        );
        f.run_queued();
        assert_eq!(f.status(), Status::Cancelled);
    }

    #[test]
    fn callbacks_run_once_in_order_then_at_once() {
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let f = Future::<K>::running(owner());
        for i in 0..3 {
            let o = order.clone();
            f.on_done(Box::new(move |_| o.lock().unwrap().push(i)))
                .unwrap();
        }
        f.finish(Ok(None));
        let o = order.clone();
        f.on_done(Box::new(move |_| o.lock().unwrap().push(9)))
            .unwrap();
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 9]);
    }

    #[test]
    fn a_panicking_callback_does_not_stop_the_others() {
        let calls = Arc::new(AtomicUsize::new(0));
        let owner = owner();
        let f = Future::<K>::running(owner.clone());
        f.on_done(Box::new(|_| panic!("callback panics"))).unwrap();
        let c = calls.clone();
        f.on_done(Box::new(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        }))
        .unwrap();
        f.finish(Ok(None));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(owner.stats().pending, 0);
    }

    #[test]
    fn panicking_work_fails_with_the_panic_code() {
        let f = Future::<K>::queued(owner(), Box::new(|_| panic!("work panics")));
        f.run_queued();
        assert_eq!(f.status(), Status::Failed);
        assert_eq!(f.failure().unwrap().code(), Error::Panic.code());
    }

    #[test]
    fn unobserved_failure_is_reported_once_observed_is_not() {
        let reports = Arc::new(AtomicUsize::new(0));
        let r = reports.clone();
        let owner = Arc::new(Owner::new(
            0,
            Some(Box::new(move |code, msg| {
                assert_eq!((code, msg), (5, c"lost"));
                r.fetch_add(1, Ordering::SeqCst);
            })),
        ));
        owner.admit().unwrap();
        owner.admit().unwrap();
        let unobserved = Future::<K>::running(owner.clone());
        let observed = Future::<K>::running(owner);
        for f in [&unobserved, &observed] {
            f.finish(Err(Failure::new(5, "lost")));
        }
        assert_eq!(observed.wait(None), Ok(Status::Failed));
        let extra = unobserved.clone();
        drop(unobserved);
        assert_eq!(reports.load(Ordering::SeqCst), 0, "a handle is still held");
        drop(extra);
        drop(observed);
        assert_eq!(reports.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn unheld_failure_is_reported_by_the_finish_held_one_by_the_last_release() {
        let reports = Arc::new(AtomicUsize::new(0));
        let r = reports.clone();
        let owner = Arc::new(Owner::new(
            0,
            Some(Box::new(move |_, _| {
                r.fetch_add(1, Ordering::SeqCst);
            })),
        ));
        owner.admit().unwrap();
        owner.admit().unwrap();
        let forgotten = Future::<K>::running(owner.clone());
        let work = forgotten.internal();
        drop(forgotten);
        work.finish(Err(Failure::new(1, "nobody looks")));
        assert_eq!(
            reports.load(Ordering::SeqCst),
            1,
            "reported by the finish itself"
        );
        drop(work);

        let held = Future::<K>::running(owner);
        let work = held.internal();
        work.finish(Err(Failure::new(1, "looked at too late")));
        assert_eq!(reports.load(Ordering::SeqCst), 1, "still held");
        drop(held);
        assert_eq!(reports.load(Ordering::SeqCst), 2, "inside the last release");
        drop(work);
        assert_eq!(reports.load(Ordering::SeqCst), 2, "once");
    }

    #[test]
    fn progress_is_read_back() {
        let f = Future::<K>::queued(
            owner(),
            Box::new(|job| {
                job.set_progress(3, 10);
                Ok(())
            }),
        );
        assert_eq!(f.progress(), Ok((0, 0)));
        f.run_queued();
        assert_eq!(f.progress(), Ok((3, 10)));
    }

    #[test]
    fn failure_messages_stop_at_nul() {
        let f = Failure::new(1, &b"abc\0def"[..]);
        assert_eq!(f.message(), c"abc");
        assert_eq!(Failure::panic().code(), -5);
    }
}
