//! The bridge: a tokio runtime driven by its own loop thread, a blocking pool, the
//! queues that feed them, and an orderly shutdown that resolves every future.

//!
//! - `on_loop`: the loop's dispatcher of on-loop work;
//! - `pool`: the blocking pool;
//! - `shutdown`: the shutdown sequence.
//!
//! The bridge is what the core knows as a `Sched`: futures reach it through that
//! trait, never by name.

mod on_loop;
mod pool;
mod shutdown;

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, AtomicUsize};
use std::thread::JoinHandle;
use std::time::Duration;

use once_cell::sync::OnceCell;
use tokio::sync::{oneshot, Notify};

use crate::compose::scope::Scope;
use crate::compose::token::Token;
use crate::future::{Failure, Future, Kind, Outcome};
use crate::promise::Promise;
use crate::sched::{Canceller, Owner, Queued, Sched, Stats, UnhandledHook};
pub use crate::sched::{Placement, Rejected};
use crate::status::Error;
use crate::sync::{Arc, CachePadded, Mutex, Ordering, Weak};
use crate::sys::fork;
use crate::sys::thread_role;

/// How a bridge is started.
pub struct Config {
    /// 0: one loop thread driving a current-thread runtime; N: a multi-thread runtime
    /// with N workers.
    pub worker_threads: usize,
    /// Upper bound of the blocking pool; 0: tokio's default (512).
    pub max_blocking_threads: usize,
    /// 0: unlimited; else submissions beyond this many pending futures are refused.
    pub max_pending: u64,
    /// Name of the bridge's threads.
    pub thread_name: String,
    /// Receives failures nobody observed; `None`: they are printed to stderr.
    pub on_unhandled_error: Option<UnhandledHook>,
    /// Low-latency mode: the loop, once idle, a blocking-pool task right after its
    /// work (never while idle), and a thread waiting for a future spin this long
    /// before they park (burning CPU meanwhile). Zero (the default): they
    /// park at once. At most one second.
    pub spin: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            worker_threads: 0,
            max_blocking_threads: 0,
            max_pending: 0,
            thread_name: "asyncbridge".to_owned(),
            on_unhandled_error: None,
            spin: Duration::ZERO,
        }
    }
}

const RUNNING: u8 = 0;
const STOPPING: u8 = 1;
const STOPPED: u8 = 2;

/// Work waiting for a thread. Closed by shutdown, after which pushes are refused.
struct WorkQueue {
    items: VecDeque<Arc<dyn Queued>>,
    /// On-loop queue only: the dispatcher task has been woken and not yet drained it.
    scheduled: bool,
    /// Blocking queue only: pool tasks draining it (a pending item costs a queue slot,
    /// not a pool task); of those, how many will take an item without being told
    /// (just started, woken for one, or spinning after their last item), and those
    /// asleep waiting for work, the most recently parked last (woken first).
    runners: usize,
    starting: usize,
    sleepers: Vec<Arc<pool::Sleeper>>,
    closed: bool,
}

impl WorkQueue {
    fn new() -> Mutex<WorkQueue> {
        Mutex::new(WorkQueue {
            items: VecDeque::new(),
            scheduled: false,
            runners: 0,
            starting: 0,
            sleepers: Vec::new(),
            closed: false,
        })
    }

    /// Gives back the memory of a burst once the queue has been drained, so its peak
    /// is not kept for the life of the bridge.
    fn release_excess(&mut self) {
        release_excess(&mut self.items);
    }
}

/// Gives back the memory of a burst from a drained buffer of queued items (see
/// `WorkQueue::release_excess`).
fn release_excess(items: &mut VecDeque<Arc<dyn Queued>>) {
    if items.capacity() > KEEP_QUEUE_SLOTS {
        items.shrink_to(KEEP_QUEUE_SLOTS);
    }
}

/// What the bridge's threads and its futures share.
pub(crate) struct Shared {
    /// This very object, for the pool tasks it starts.
    me: Weak<Shared>,
    id: u64,
    owner: Arc<Owner>,
    state: AtomicU8,
    handle: tokio::runtime::Handle,
    /// Padded: both the submitting threads and the loop write it on every operation,
    /// and the fields around it are read on every submission.
    on_loop: CachePadded<Mutex<WorkQueue>>,
    /// Low-latency mode (`Config::spin`): the dispatcher spins before it parks.
    spinning: bool,
    /// Items in `on_loop`, kept only in low-latency mode, for the dispatcher to watch
    /// while it spins without the lock.
    on_loop_len: std::sync::atomic::AtomicUsize,
    on_loop_ready: Notify,
    blocking: CachePadded<Mutex<WorkQueue>>,
    /// Pool tasks whose work has returned and that have not yet looked for the next
    /// item: they will take one without being told.
    returning: CachePadded<std::sync::atomic::AtomicUsize>,
    /// Items in `blocking`, kept only in low-latency mode, for a pool task to watch
    /// while it spins without the lock.
    blocking_len: std::sync::atomic::AtomicUsize,
    /// At most this many pool tasks drain `blocking`: the pool's own bound.
    max_runners: usize,
    /// State that a layer above keeps per bridge (an HTTP connection pool), one per
    /// type; dropped at shutdown, `None` from then on.
    extensions: Mutex<Option<Vec<Arc<dyn std::any::Any + Send + Sync>>>>,
}

/// The part of a bridge only shutdown touches.
#[derive(Default)]
struct Control {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    done: bool,
}

/// A running async runtime that any thread can hand work to.
///
/// Dropping a bridge shuts it down with no grace period (see [`Bridge::shutdown`]);
/// dropped on one of its own threads, the shutdown finishes on another thread.
pub struct Bridge {
    shared: Arc<Shared>,
    control: Mutex<Control>,
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
static GLOBAL: OnceCell<Arc<Bridge>> = OnceCell::new();
/// The threads inside the first start of the global bridge (low 32 bits) and the fork
/// generation they belong to (high 32 bits), so that a fork child can tell that the
/// start it would wait for belongs to a thread it does not have.
static GLOBAL_STARTERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// tokio's bound on its blocking pool when none is configured.
const DEFAULT_MAX_BLOCKING_THREADS: usize = 512;

/// The longest spin a configuration may ask for.
const MAX_SPIN: Duration = Duration::from_secs(1);

/// A drained work queue keeps at most this many slots (see `WorkQueue::release_excess`).
const KEEP_QUEUE_SLOTS: usize = 1024;

impl Bridge {
    /// Starts a bridge: its runtime, its loop thread and its (lazily grown) blocking pool.
    ///
    /// Fails with `Error::Invalid` for an unusable configuration and
    /// `Error::NotRunning` when the runtime or its thread cannot be created.
    pub fn start(config: Config) -> Result<Bridge, Error> {
        if config.worker_threads > 1024
            || config.max_blocking_threads > 65536
            || config.spin > MAX_SPIN
        {
            return Err(Error::Invalid);
        }
        fork::install_handler();
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut builder = if config.worker_threads == 0 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(config.worker_threads);
            b
        };
        // tokio's own bound leaves room for the threads that work ended (they still
        // count in tokio's pool); the bridge keeps to its bound by itself.
        let max_runners = match config.max_blocking_threads {
            0 => DEFAULT_MAX_BLOCKING_THREADS,
            n => n,
        };
        builder.max_blocking_threads(max_runners + pool::ENDED_THREADS_REPLACED);
        // Every thread tokio starts is a loop thread until it runs blocking work,
        // which marks itself (tokio starts workers and blocking threads alike).
        let runtime = builder
            .enable_all()
            .thread_name(config.thread_name.clone())
            .on_thread_start(move || thread_role::enter_loop(id))
            .build()
            .map_err(|_| Error::NotRunning)?;
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            id,
            owner: Arc::new(
                Owner::new(config.max_pending, config.on_unhandled_error).spinning(config.spin),
            ),
            state: AtomicU8::new(RUNNING),
            handle: runtime.handle().clone(),
            on_loop: CachePadded::new(WorkQueue::new()),
            spinning: !config.spin.is_zero(),
            on_loop_len: std::sync::atomic::AtomicUsize::new(0),
            on_loop_ready: Notify::new(),
            blocking: CachePadded::new(WorkQueue::new()),
            returning: CachePadded::new(std::sync::atomic::AtomicUsize::new(0)),
            blocking_len: std::sync::atomic::AtomicUsize::new(0),
            max_runners,
            extensions: Mutex::new(Some(Vec::new())),
        });
        let sched: Weak<dyn Sched> = shared.me.clone();
        shared.owner.set_sched(sched);
        runtime.spawn(on_loop::dispatch_on_loop(shared.clone()));
        let (stop, stopped) = oneshot::channel::<()>();
        let current_thread = config.worker_threads == 0;
        let thread = std::thread::Builder::new()
            .name(config.thread_name)
            .spawn(move || {
                // With a current-thread runtime this thread is the loop; with workers,
                // it only owns the runtime so that it is dropped outside any async context.
                if current_thread {
                    thread_role::enter_loop(id);
                }
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                runtime.shutdown_timeout(Duration::ZERO);
            })
            .map_err(|_| Error::NotRunning)?;
        Ok(Bridge {
            shared,
            control: Mutex::new(Control {
                stop: Some(stop),
                thread: Some(thread),
                done: false,
            }),
        })
    }

    /// The process-wide bridge, started with the default configuration on first use.
    ///
    /// If starting fails, the next call tries again.
    ///
    /// In a fork child of a process that had started it, it is that process's bridge,
    /// which is not running here. In a fork child of a process in which a thread was
    /// starting it at the time of the fork, it is `Error::NotRunning`, at once and for
    /// good: that thread does not exist in the child, and its start never finishes.
    pub fn global() -> Result<&'static Bridge, Error> {
        Bridge::global_shared().map(|bridge| &**bridge)
    }

    /// The global bridge, shared (see [`Bridge::global`]).
    pub(crate) fn global_shared() -> Result<&'static Arc<Bridge>, Error> {
        use std::sync::atomic::Ordering as StdOrdering;
        if let Some(bridge) = GLOBAL.get() {
            return Ok(bridge);
        }
        // Before the count goes up: a fork after that must be seen as one.
        fork::install_handler();
        let generation = u64::from(fork::generation() as u32);
        let mut starters = GLOBAL_STARTERS.load(StdOrdering::SeqCst);
        loop {
            let next = if starters >> 32 == generation {
                starters + 1
            } else if starters & u64::from(u32::MAX) == 0 {
                (generation << 32) | 1
            } else {
                // The cell is half-made by a thread of the parent, for ever.
                return Err(Error::NotRunning);
            };
            match GLOBAL_STARTERS.compare_exchange(
                starters,
                next,
                StdOrdering::SeqCst,
                StdOrdering::SeqCst,
            ) {
                Ok(_) => break,
                Err(now) => starters = now,
            }
        }
        let bridge = GLOBAL.get_or_try_init(|| Bridge::start(Config::default()).map(Arc::new));
        GLOBAL_STARTERS.fetch_sub(1, StdOrdering::SeqCst);
        bridge
    }

    /// Whether this is the bridge [`Bridge::global`] returns (never starts it).
    pub fn is_global(&self) -> bool {
        matches!(GLOBAL.get(), Some(global) if std::ptr::eq(&**global, self))
    }

    /// Whether the bridge accepts work: started, not shut down, and not inherited
    /// through `fork()`.
    pub fn is_running(&self) -> bool {
        self.shared.is_running()
    }

    /// Whether the calling thread is one of this bridge's loop threads.
    pub fn in_loop(&self) -> bool {
        thread_role::on_loop_of(self.shared.id)
    }

    /// The bridge's counters.
    pub fn stats(&self) -> Stats {
        self.shared.owner.stats()
    }

    fn check_running(&self) -> Result<(), Error> {
        if self.is_running() {
            Ok(())
        } else {
            Err(Error::NotRunning)
        }
    }

    /// Submits synchronous `work`, to run on the loop or on the blocking pool.
    ///
    /// On success the work belongs to the bridge and runs (or is dropped unrun, if
    /// cancelled first or shut down) exactly once. On failure it comes back unrun:
    /// `Error::NotRunning` (shut down, fork child) or `Error::Busy` (`max_pending`).
    pub fn submit<K: Kind>(
        &self,
        work: K::Work,
        placement: Placement,
    ) -> Result<Future<K>, Rejected<K::Work>> {
        self.submit_shared(work, placement).map(Future::from_arc)
    }

    /// [`Bridge::submit`], the caller's handle given as the shared state it counts
    /// for (see [`Future::from_arc`]), which is what a C handle is.
    pub(crate) fn submit_shared<K: Kind>(
        &self,
        work: K::Work,
        placement: Placement,
    ) -> Result<Arc<crate::future::Completion<K>>, Rejected<K::Work>> {
        if let Err(error) = self.check_running() {
            return Err(Rejected { error, work });
        }
        if let Err(error) = self.shared.owner.admit() {
            return Err(Rejected { error, work });
        }
        let completion = Future::<K>::queued_shared(self.shared.owner.clone(), work);
        let item: Arc<dyn Queued> = completion.clone();
        match self.shared.push(item, placement) {
            Ok(()) => Ok(completion),
            // Refused before any thread could see the item: the work is still inside.
            Err(error) => {
                let future = Future::from_arc(completion);
                match future.take_queued_work() {
                    Some(work) => {
                        self.shared.owner.retract();
                        Err(Rejected { error, work })
                    }
                    None => Ok(future.into_arc()),
                }
            }
        }
    }

    /// Runs a Rust future on the loop; its output becomes the future's outcome.
    ///
    /// Cancellation drops `work` at its next await. A panic in `work` fails the
    /// future with `Error::Panic`'s code.
    pub fn spawn<K, F>(&self, work: F) -> Result<Future<K>, Error>
    where
        K: Kind,
        F: std::future::Future<Output = Result<Option<K::Value>, Failure>> + Send + 'static,
    {
        self.check_running()?;
        self.shared.spawn(work)
    }

    /// Like [`Bridge::spawn`], with `make` given a handle to the new future and able
    /// to return a shield count (see `Shared::spawn_with`).
    pub(crate) fn spawn_with<K, F, M>(&self, make: M) -> Result<Future<K>, Error>
    where
        K: Kind,
        F: std::future::Future<Output = Result<Option<K::Value>, Failure>> + Send + 'static,
        M: FnOnce(Future<K>) -> (F, Option<Arc<AtomicUsize>>),
    {
        self.check_running()?;
        self.shared.spawn_with(make)
    }

    /// The bridge's one `T`, made by `init` on first use: state a layer above keeps
    /// per bridge, such as a connection pool. Dropped at shutdown; refused
    /// (`Error::NotRunning`) from then on.
    pub fn extension<T, I>(&self, init: I) -> Result<Arc<T>, Error>
    where
        T: Send + Sync + 'static,
        I: FnOnce() -> T,
    {
        self.check_running()?;
        let mut extensions = crate::sync::lock(&self.shared.extensions);
        let list = extensions.as_mut().ok_or(Error::NotRunning)?;
        if let Some(found) = list.iter().find_map(|e| e.clone().downcast::<T>().ok()) {
            return Ok(found);
        }
        let made = Arc::new(init());
        list.push(made.clone());
        Ok(made)
    }

    /// Enters the bridge's runtime on the calling thread until the guard drops, so that
    /// I/O objects made meanwhile register with its reactor (tokio's `from_std`
    /// conversions: a socket bound synchronously, then served on the loop). Refused
    /// (`Error::NotRunning`) once shut down.
    pub fn enter(&self) -> Result<tokio::runtime::EnterGuard<'_>, Error> {
        self.check_running()?;
        Ok(self.shared.handle().enter())
    }

    /// The bridge's shared state, for a recurring source; refused once shut down.
    pub(crate) fn shared_for_sources(&self) -> Result<&Arc<Shared>, Error> {
        self.check_running()?;
        Ok(&self.shared)
    }

    /// A promise of this bridge and its future (the caller's one handle): a future
    /// that the promise's holder settles, which shutdown asks to stop like running
    /// work (see [`Promise`]). Refused like [`Bridge::submit`]: `Error::NotRunning`
    /// once shut down (and in a fork child), `Error::Busy` at `max_pending`.
    pub fn promise<K: Kind>(&self) -> Result<(Promise<K>, Future<K>), Error> {
        self.check_running()?;
        Promise::new(&self.shared.owner)
    }

    /// A cancellation token whose deadlines run on this bridge, a child of `parent`
    /// when given (cancelled with it; born cancelled if it already is). Refused
    /// (`Error::NotRunning`) once shut down.
    pub fn token(&self, parent: Option<&Token>) -> Result<Token, Error> {
        self.check_running()?;
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        let sched: Weak<dyn Sched> = weak;
        Ok(Token::new(Some(sched), parent))
    }

    /// A scope of this bridge: its token a child of `parent` when given, its join a
    /// future of this bridge (one submission in [`Bridge::stats`]). With
    /// `cancel_on_failure`, the first member that fails cancels the others and the join
    /// fails with its code and message. Refused like [`Bridge::promise`].
    pub fn scope<K: Kind>(
        &self,
        parent: Option<&Token>,
        cancel_on_failure: bool,
    ) -> Result<Scope<K>, Error> {
        let (promise, join) = self.promise::<K>()?;
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        let sched: Weak<dyn Sched> = weak;
        Scope::new(promise, join, parent, Some(sched), cancel_on_failure)
    }

    /// A future that ends `Ok` (with no value) after `duration`, never earlier.
    pub fn sleep<K: Kind>(&self, duration: Duration) -> Result<Future<K>, Error> {
        self.spawn(async move {
            tokio::time::sleep(duration).await;
            Ok(None)
        })
    }
}

impl Shared {
    /// Runs a Rust future on the runtime as the work of a new future of this bridge.
    pub(crate) fn spawn<K, F>(&self, work: F) -> Result<Future<K>, Error>
    where
        K: Kind,
        F: std::future::Future<Output = Result<Option<K::Value>, Failure>> + Send + 'static,
    {
        self.spawn_with(|_| (work, None))
    }

    /// Runs the Rust future that `make` builds, given a handle to its own future, as
    /// the work of a new future of this bridge.
    ///
    /// A cancellation request drops the work at its next await, unless `shield` (when
    /// `make` returns one) is above zero then: the work then runs on, sees the request
    /// through its handle, and whatever it returns, the future ends as requested. The
    /// future finishes only once the work has been dropped.
    pub(crate) fn spawn_with<K, F, M>(&self, make: M) -> Result<Future<K>, Error>
    where
        K: Kind,
        F: std::future::Future<Output = Result<Option<K::Value>, Failure>> + Send + 'static,
        M: FnOnce(Future<K>) -> (F, Option<Arc<AtomicUsize>>),
    {
        self.owner.admit()?;
        let future = Future::<K>::running(self.owner.clone());
        // Built outside the task: if the runtime is gone and drops the task unpolled,
        // the guard still finishes the future.
        let guard = FinishOnDrop(future.internal());
        let (work, shield) = make(future.internal());
        self.handle.spawn(async move {
            let guard = guard;
            let outcome = {
                let mut work = std::pin::pin!(work);
                std::future::poll_fn(|cx| {
                    if guard.0.register_waker(cx.waker())
                        && shield
                            .as_ref()
                            .map_or(true, |s| s.load(Ordering::SeqCst) == 0)
                    {
                        return std::task::Poll::Ready(None);
                    }
                    match catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
                        Ok(std::task::Poll::Ready(r)) => std::task::Poll::Ready(Some(r)),
                        Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
                        Err(_) => std::task::Poll::Ready(Some(Err(Failure::panic()))),
                    }
                })
                .await
            };
            // `work` is dropped by now: a cancelled future ends only once it stopped.
            // A request made meanwhile wins over what shielded work returned.
            guard.0.finish(match outcome {
                Some(Ok(value)) => Outcome::Ok(value),
                Some(Err(failure)) => Outcome::Failed(failure),
                None => Outcome::Cancelled,
            })
        });
        Ok(future)
    }

    /// Queues `item` for the loop or the blocking pool; refused once shut down.
    pub(crate) fn push(&self, item: Arc<dyn Queued>, placement: Placement) -> Result<(), Error> {
        match placement {
            Placement::OnLoop => self.push_on_loop(item),
            Placement::Blocking => self.push_blocking(item),
        }
    }

    /// Whether the bridge accepts work.
    pub(crate) fn is_running(&self) -> bool {
        !self.owner.orphaned() && self.state.load(Ordering::SeqCst) == RUNNING
    }

    /// The runtime, for the library's own tasks (timeouts, timers, signal watches).
    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

/// Finishes a future `Cancelled` if its task is dropped before finishing it.
struct FinishOnDrop<K: Kind>(Future<K>);

impl<K: Kind> Drop for FinishOnDrop<K> {
    fn drop(&mut self) {
        // `peek`, not `status`: looking here must not count as observing a failure,
        // or an unobserved one would never be reported.
        if !self.0.peek().is_final() {
            self.0.finish(Outcome::Cancelled);
        }
    }
}

impl Sched for Shared {
    fn is_running(&self) -> bool {
        Shared::is_running(self)
    }

    fn push(&self, item: Arc<dyn Queued>, placement: Placement) -> Result<(), Error> {
        Shared::push(self, item, placement)
    }

    fn after(&self, delay: Duration, fire: Box<dyn FnOnce() + Send>) -> Result<Canceller, Error> {
        if !self.is_running() {
            return Err(Error::NotRunning);
        }
        let timer = self.handle.spawn(async move {
            tokio::time::sleep(delay).await;
            fire();
        });
        let abort = timer.abort_handle();
        Ok(Box::new(move || abort.abort()))
    }
}

#[cfg(test)]
mod compose_tests;
#[cfg(test)]
mod tests;
