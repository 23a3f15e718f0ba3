//! The bridge: a tokio runtime driven by its own loop thread, a blocking pool, the
//! queues that feed them, and an orderly shutdown that resolves every future.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicU8;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use once_cell::sync::OnceCell;
use tokio::sync::{oneshot, Notify};

use crate::sys::fork;
use crate::future::{Failure, Future, Kind, Queued};
use crate::sched::{Owner, Stats, UnhandledHook};
use crate::status::{Error, Status};
use crate::sync::{lock, Arc, Condvar, Mutex, MutexGuard, Ordering};
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
    /// Low-latency mode: the loop, once idle, and a thread waiting for a future spin
    /// this long before they park (burning CPU meanwhile). Zero (the default): they
    /// park at once.
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

/// Where synchronous work runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// On the blocking pool: may block, may take long.
    Blocking,
    /// On a loop thread, in submission order: must not block.
    OnLoop,
}

/// A submission the bridge refused; the work comes back untouched.
pub struct Rejected<W> {
    /// Why it was refused.
    pub error: Error,
    /// The work, never run.
    pub work: W,
}

impl<W> std::fmt::Debug for Rejected<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejected")
            .field("error", &self.error)
            .finish()
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
    /// (just started, or woken for one), and how many sleep in `blocking_ready`
    /// waiting for work. `wakeups` are sleepers told to get up that have not yet.
    runners: usize,
    starting: usize,
    parked: usize,
    wakeups: usize,
    closed: bool,
}

impl WorkQueue {
    fn new() -> Mutex<WorkQueue> {
        Mutex::new(WorkQueue {
            items: VecDeque::new(),
            scheduled: false,
            runners: 0,
            starting: 0,
            parked: 0,
            wakeups: 0,
            closed: false,
        })
    }

    /// Gives back the memory of a burst once the queue has been drained, so its peak
    /// is not kept for the life of the bridge.
    fn release_excess(&mut self) {
        if self.items.capacity() > KEEP_QUEUE_SLOTS {
            self.items.shrink_to(KEEP_QUEUE_SLOTS);
        }
    }
}

/// What the bridge's threads and its futures share.
pub(crate) struct Shared {
    id: u64,
    owner: Arc<Owner>,
    state: AtomicU8,
    handle: tokio::runtime::Handle,
    on_loop: Mutex<WorkQueue>,
    /// Items in `on_loop`, for the dispatcher to watch while it spins without the lock.
    on_loop_len: std::sync::atomic::AtomicUsize,
    on_loop_ready: Notify,
    blocking: Mutex<WorkQueue>,
    /// Pool tasks with nothing to do sleep here for a while before they end.
    blocking_ready: Condvar,
    /// At most this many pool tasks drain `blocking`: the pool's own bound.
    max_runners: usize,
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

/// How many on-loop items the dispatcher runs before it lets other tasks run.
const DISPATCH_BATCH: usize = 64;

/// tokio's bound on its blocking pool when none is configured.
const DEFAULT_MAX_BLOCKING_THREADS: usize = 512;

/// How long a pool task with nothing to do waits for more before it ends (and its
/// thread goes back to tokio's pool, which keeps it another 10 s). Handing an item to a
/// waiting task costs one wake-up; starting a task through tokio, when the thread that
/// just finished is not yet back in tokio's pool, can start another thread.
const RUNNER_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// How many pool threads that work ended (`pthread_exit` inside it) are replaced over
/// a bridge's life; past that, the pool shrinks by one for each. tokio starts threads
/// only on demand, so the room costs nothing until it is used.
const ENDED_THREADS_REPLACED: usize = 4096;

/// A drained work queue keeps at most this many slots (see `WorkQueue::release_excess`).
const KEEP_QUEUE_SLOTS: usize = 1024;

impl Bridge {
    /// Starts a bridge: its runtime, its loop thread and its (lazily grown) blocking pool.
    ///
    /// Fails with `Error::Invalid` for an unusable configuration and
    /// `Error::NotRunning` when the runtime or its thread cannot be created.
    pub fn start(config: Config) -> Result<Bridge, Error> {
        if config.worker_threads > 1024 || config.max_blocking_threads > 65536 {
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
        builder.max_blocking_threads(max_runners + ENDED_THREADS_REPLACED);
        // Every thread tokio starts is a loop thread until it runs blocking work,
        // which marks itself (tokio starts workers and blocking threads alike).
        let runtime = builder
            .enable_all()
            .thread_name(config.thread_name.clone())
            .on_thread_start(move || thread_role::enter_loop(id))
            .build()
            .map_err(|_| Error::NotRunning)?;
        let shared = Arc::new(Shared {
            id,
            owner: Arc::new(
                Owner::new(config.max_pending, config.on_unhandled_error).spinning(config.spin),
            ),
            state: AtomicU8::new(RUNNING),
            handle: runtime.handle().clone(),
            on_loop: WorkQueue::new(),
            on_loop_len: std::sync::atomic::AtomicUsize::new(0),
            on_loop_ready: Notify::new(),
            blocking: WorkQueue::new(),
            blocking_ready: Condvar::new(),
            max_runners,
        });
        shared.owner.set_bridge(Arc::downgrade(&shared));
        runtime.spawn(dispatch_on_loop(shared.clone()));
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
        if let Err(error) = self.check_running() {
            return Err(Rejected { error, work });
        }
        if let Err(error) = self.shared.owner.admit() {
            return Err(Rejected { error, work });
        }
        let future = Future::<K>::queued(self.shared.owner.clone(), work);
        let item: Arc<dyn Queued> = future.as_arc().clone();
        match self.shared.push(item, placement) {
            Ok(()) => Ok(future),
            // Refused before any thread could see the item: the work is still inside.
            Err(error) => match future.take_queued_work() {
                Some(work) => {
                    self.shared.owner.retract();
                    Err(Rejected { error, work })
                }
                None => Ok(future),
            },
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

    /// The bridge's shared state, for a recurring source; refused once shut down.
    pub(crate) fn shared_for_sources(&self) -> Result<&Arc<Shared>, Error> {
        self.check_running()?;
        Ok(&self.shared)
    }

    /// A future that ends `Ok` (with no value) after `duration`, never earlier.
    pub fn sleep<K: Kind>(&self, duration: Duration) -> Result<Future<K>, Error> {
        self.spawn(async move {
            tokio::time::sleep(duration).await;
            Ok(None)
        })
    }

    /// Shuts the bridge down.
    ///
    /// From the moment it is called new work is refused. Work already submitted gets
    /// up to `timeout` (`None`: no limit) to finish; then whatever is still pending is
    /// cancelled, queued work is dropped unrun, the loop stops and every future
    /// reaches a final state. Returns `Status::Ok` when all work finished or stopped
    /// in time, `Status::Timeout` when running blocking work had to be left behind
    /// (its future ends `Cancelled` when it returns). A second call returns
    /// `Status::Ok`. On a thread of this bridge: `Error::WouldDeadlock`.
    pub fn shutdown(&self, timeout: Option<Duration>) -> Result<Status, Error> {
        if let Some(answer) = self.shutdown_at_once() {
            return answer;
        }
        let mut control = lock(&self.control);
        if control.done {
            return Ok(Status::Ok);
        }
        let status = self.shared.stop(&mut control, timeout);
        Ok(status)
    }
}

impl Bridge {
    /// The answer of [`Bridge::shutdown`] when it has nothing to do or must not wait
    /// (already stopped, a fork child, a thread of this bridge, a callback that this
    /// bridge's own shutdown is running); `None` when it would do the work.
    ///
    /// Such a call may come while the bridge is being dropped (from a callback of the
    /// shutdown that dropping runs), so the C layer asks this before it takes a
    /// reference to the bridge.
    pub fn shutdown_at_once(&self) -> Option<Result<Status, Error>> {
        if self.shared.owner.orphaned() {
            // The threads are gone with the parent; nothing here may wait or lock.
            self.shared.state.store(STOPPED, Ordering::SeqCst);
            return Some(Ok(Status::Ok));
        }
        if self.shared.state.load(Ordering::SeqCst) == STOPPED {
            return Some(Ok(Status::Ok));
        }
        if thread_role::belongs_to(self.shared.id) {
            return Some(Err(Error::WouldDeadlock));
        }
        if thread_role::is_stopping(self.shared.id) {
            // Called from a done callback that this very shutdown is running.
            return Some(Ok(Status::Ok));
        }
        None
    }
}

impl Shared {
    /// Runs a Rust future on the runtime as the work of a new future of this bridge.
    pub(crate) fn spawn<K, F>(&self, work: F) -> Result<Future<K>, Error>
    where
        K: Kind,
        F: std::future::Future<Output = Result<Option<K::Value>, Failure>> + Send + 'static,
    {
        self.owner.admit()?;
        let future = Future::<K>::running(self.owner.clone());
        // Built outside the task: if the runtime is gone and drops the task unpolled,
        // the guard still finishes the future.
        let guard = FinishOnDrop(future.internal());
        self.handle.spawn(async move {
            let guard = guard;
            let outcome = {
                let mut work = std::pin::pin!(work);
                std::future::poll_fn(|cx| {
                    if guard.0.register_waker(cx.waker()) {
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
            match outcome {
                Some(result) => guard.0.finish(result),
                None => guard.0.finish(Ok(None)),
            }
        });
        Ok(future)
    }

    /// Queues `item` for the loop or the blocking pool; refused once shut down.
    pub(crate) fn push(
        self: &Arc<Self>,
        item: Arc<dyn Queued>,
        placement: Placement,
    ) -> Result<(), Error> {
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

    fn push_on_loop(&self, item: Arc<dyn Queued>) -> Result<(), Error> {
        let mut queue = lock(&self.on_loop);
        if queue.closed {
            return Err(Error::NotRunning);
        }
        queue.items.push_back(item);
        self.on_loop_len.store(queue.items.len(), Ordering::SeqCst);
        // One wakeup per batch: while the dispatcher has not drained the queue, it
        // will see this item without being told.
        let wake = !queue.scheduled;
        queue.scheduled = true;
        drop(queue);
        if wake {
            self.on_loop_ready.notify_one();
        }
        Ok(())
    }

    fn push_blocking(self: &Arc<Self>, item: Arc<dyn Queued>) -> Result<(), Error> {
        let mut queue = lock(&self.blocking);
        if queue.closed {
            return Err(Error::NotRunning);
        }
        queue.items.push_back(item.clone());
        if self.provide_runner(queue) {
            return Ok(());
        }
        // tokio panics when it cannot start a thread. With no other task left to run
        // it, the item is taken back, if still queued, and refused.
        let mut queue = lock(&self.blocking);
        if queue.runners == 0 {
            if let Some(at) = queue.items.iter().position(|i| Arc::ptr_eq(i, &item)) {
                queue.items.remove(at);
                return Err(Error::NotRunning);
            }
        }
        Ok(())
    }

    /// Makes sure a pool task will take each waiting item, given the locked `queue`.
    /// A pool task drains the queue until it finds it empty, so items need another
    /// task only when those about to take one are fewer than the items waiting: a
    /// sleeping task is woken if there is one, else a new one started if the pool has
    /// room. Work still starts in submission order. Returns false if a task could not
    /// be started.
    fn provide_runner(self: &Arc<Self>, mut queue: MutexGuard<'_, WorkQueue>) -> bool {
        if queue.items.len() <= queue.starting {
            return true;
        }
        if queue.parked > 0 {
            queue.parked -= 1;
            queue.wakeups += 1;
            queue.starting += 1;
            drop(queue);
            self.blocking_ready.notify_one();
            return true;
        }
        let spawn = queue.runners < self.max_runners;
        if spawn {
            queue.runners += 1;
            queue.starting += 1;
        }
        drop(queue);
        if !spawn {
            return true;
        }
        let shared = self.clone();
        let spawned = catch_unwind(AssertUnwindSafe(|| {
            drop(self.handle.spawn_blocking(move || shared.drain_blocking()));
        }));
        if spawned.is_err() {
            let mut queue = lock(&self.blocking);
            queue.runners -= 1;
            queue.starting -= 1;
            return false;
        }
        true
    }

    /// A pool task: runs queued blocking work, oldest first; with none left, waits
    /// up to [`RUNNER_KEEP_ALIVE`] for more, then ends.
    fn drain_blocking(self: &Arc<Self>) {
        thread_role::enter_blocking(self.id);
        // Should work end this thread, the pool learns that it has one task less.
        let _armed = crate::sys::thread_exit::arm(&POOL_TASK, self.clone());
        let mut queue = lock(&self.blocking);
        queue.starting -= 1;
        loop {
            if let Some(item) = queue.items.pop_front() {
                drop(queue);
                item.run();
                queue = lock(&self.blocking);
                continue;
            }
            queue.release_excess();
            if queue.closed {
                queue.runners -= 1;
                return;
            }
            queue.parked += 1;
            let deadline = Instant::now() + RUNNER_KEEP_ALIVE;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                queue = match self.blocking_ready.wait_timeout(queue, left) {
                    Ok((guard, _)) => guard,
                    Err(poisoned) => poisoned.into_inner().0,
                };
                if queue.wakeups > 0 {
                    // Told to take an item (whichever sleeper wakes first takes it).
                    queue.wakeups -= 1;
                    queue.starting -= 1;
                    break;
                }
                if queue.closed || Instant::now() >= deadline {
                    // Nobody told this one: it is still counted asleep.
                    queue.parked -= 1;
                    queue.runners -= 1;
                    return;
                }
            }
        }
    }

    /// The shutdown sequence; `control` is locked, so it runs once.
    fn stop(&self, control: &mut Control, timeout: Option<Duration>) -> Status {
        let _stopping = thread_role::stopping(self.id);
        self.state.store(STOPPING, Ordering::SeqCst);
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        if timeout != Some(Duration::ZERO) {
            self.owner.wait_idle(deadline);
        }
        // The queues close before anything is cancelled: a pool task or the dispatcher
        // could otherwise take a queued item meanwhile and finish it cancelled on its
        // own thread. This way queued work is dropped, and its callbacks run, here.
        let queued: Vec<_> = [&self.on_loop, &self.blocking]
            .into_iter()
            .flat_map(|queue| {
                let mut queue = lock(queue);
                queue.closed = true;
                std::mem::take(&mut queue.items)
            })
            .collect();
        // Sleeping pool tasks end now rather than at their keep-alive.
        self.blocking_ready.notify_all();
        self.owner.cancel_all();
        for item in queued {
            item.cancel_queued();
        }
        if let Some(stop) = control.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = control.thread.take() {
            // The loop thread drops the runtime, which drops every async task: their
            // guards finish them `Cancelled`. On a thread of this bridge (a bridge
            // dropped from its own callback) joining would never end: the loop thread
            // finishes the shutdown by itself once the current call returns.
            if !thread_role::belongs_to(self.id) {
                let _ = thread.join();
            }
        }
        self.state.store(STOPPED, Ordering::SeqCst);
        control.done = true;
        if self.owner.in_flight() == 0 {
            Status::Ok
        } else {
            Status::Timeout
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if self.shared.owner.orphaned() {
            // In a fork child the loop thread does not exist: joining it, or waking it
            // through the runtime, could touch a lock held forever. Leak instead.
            let control = std::mem::take(
                self.control
                    .get_mut()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            );
            std::mem::forget(control);
            std::mem::forget(self.shared.clone());
            return;
        }
        let control = std::mem::take(
            self.control
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        let mut control = control;
        if !control.done {
            self.shared.stop(&mut control, Some(Duration::ZERO));
        }
    }
}

std::thread_local! {
    /// The bridge whose pool task this thread is running.
    static POOL_TASK: crate::sys::thread_exit::Slot = const { crate::sys::thread_exit::Slot::new() };
}

impl crate::sys::thread_exit::Abandon for Shared {
    /// Work ended this pool thread: the task it was is gone. Another one takes over
    /// the items waiting, if no other task is about to.
    fn abandon(self: Arc<Self>) {
        let mut queue = lock(&self.blocking);
        queue.runners -= 1;
        if !queue.closed {
            self.provide_runner(queue);
        }
    }
}

/// Finishes a future `Cancelled` if its task is dropped before finishing it.
struct FinishOnDrop<K: Kind>(Future<K>);

impl<K: Kind> Drop for FinishOnDrop<K> {
    fn drop(&mut self) {
        if !self.0.status().is_final() {
            self.0.request_cancel();
            self.0.finish(Ok(None));
        }
    }
}

/// Runs the bridge's on-loop work in submission order, one wakeup per batch.
async fn dispatch_on_loop(shared: Arc<Shared>) {
    let spin = shared.owner.spin();
    loop {
        shared.on_loop_ready.notified().await;
        let mut ran = 0;
        loop {
            let next = {
                let mut queue = lock(&shared.on_loop);
                let next = queue.items.pop_front();
                shared
                    .on_loop_len
                    .store(queue.items.len(), Ordering::SeqCst);
                if next.is_none() {
                    queue.release_excess();
                    if spin.is_zero() {
                        queue.scheduled = false;
                    }
                }
                next
            };
            let Some(item) = next else {
                if spin.is_zero() || !spin_for_more(&shared, spin) {
                    break;
                }
                continue;
            };
            item.run();
            ran += 1;
            if ran % DISPATCH_BATCH == 0 {
                // Let timers and other tasks run during a long stream of submissions.
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Low-latency mode, with the on-loop queue found empty: spins up to `spin` (without
/// its lock, the queue still marked scheduled so a submission meanwhile costs no
/// wake-up) and returns whether work came. If none did, marks the queue unscheduled,
/// so the next submission wakes the dispatcher as usual.
fn spin_for_more(shared: &Shared, spin: Duration) -> bool {
    let until = Instant::now() + spin;
    while shared.on_loop_len.load(Ordering::SeqCst) == 0 && Instant::now() < until {
        std::hint::spin_loop();
    }
    let mut queue = lock(&shared.on_loop);
    if queue.items.is_empty() {
        queue.scheduled = false;
        false
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::future::Boxed;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::Mutex as StdMutex;

    type K = Boxed<u32>;

    fn work(
        f: impl FnOnce(&crate::Job<'_, K>) -> Result<(), Failure> + Send + 'static,
    ) -> crate::future::BoxedWork<u32> {
        Box::new(f)
    }

    fn start() -> Bridge {
        Bridge::start(Config::default()).unwrap()
    }

    const LONG: Option<Duration> = Some(Duration::from_secs(30));

    #[test]
    fn on_loop_work_runs_on_the_loop_in_order_blocking_work_elsewhere() {
        let bridge = Arc::new(start());
        let order = Arc::new(StdMutex::new(Vec::new()));
        let mut futures = Vec::new();
        for i in 0..200u32 {
            let (o, b) = (order.clone(), bridge.clone());
            futures.push(
                bridge
                    .submit::<K>(
                        work(move |job| {
                            assert!(b.in_loop());
                            o.lock().unwrap().push(i);
                            job.set_value(i);
                            Ok(())
                        }),
                        Placement::OnLoop,
                    )
                    .unwrap(),
            );
        }
        let b = bridge.clone();
        let blocking = bridge
            .submit::<K>(
                work(move |_| {
                    if b.in_loop() {
                        Err(Failure::from_code(1))
                    } else {
                        Ok(())
                    }
                }),
                Placement::Blocking,
            )
            .unwrap();
        for (i, f) in futures.iter().enumerate() {
            assert_eq!(f.wait(LONG), Ok(Status::Ok));
            assert_eq!(f.with_value(|v| *v), Some(i as u32));
        }
        assert_eq!(blocking.wait(LONG), Ok(Status::Ok));
        assert_eq!(*order.lock().unwrap(), (0..200).collect::<Vec<_>>());
        assert!(!bridge.in_loop());
        let stats = bridge.stats();
        assert_eq!(
            (stats.submitted, stats.completed, stats.pending),
            (201, 201, 0)
        );
    }

    #[test]
    fn async_work_is_dropped_at_its_await_when_cancelled() {
        let bridge = start();
        let dropped = Arc::new(AtomicBool::new(false));
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let guard = SetOnDrop(dropped.clone());
        let f = bridge
            .spawn::<K, _>(async move {
                let _guard = guard;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Some(1))
            })
            .unwrap();
        assert_eq!(f.wait(Some(Duration::from_millis(20))), Ok(Status::Timeout));
        assert_eq!(f.cancel(), Ok(Status::Ok));
        assert_eq!(f.wait(LONG), Ok(Status::Cancelled));
        assert!(
            dropped.load(std::sync::atomic::Ordering::SeqCst),
            "stopped before it ended"
        );

        let quick = bridge
            .spawn::<K, _>(async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(Some(7))
            })
            .unwrap();
        assert_eq!(quick.wait(LONG), Ok(Status::Ok));
        assert_eq!(quick.take_value(), Some(7));

        let panics = bridge
            .spawn::<K, _>(async { panic!("async work panics") })
            .unwrap();
        assert_eq!(panics.wait(LONG), Ok(Status::Failed));
        assert_eq!(panics.failure().unwrap().code(), Error::Panic.code());
    }

    #[test]
    fn shutdown_refuses_at_once_and_hands_work_back() {
        let bridge = start();
        assert_eq!(bridge.shutdown(Some(Duration::ZERO)), Ok(Status::Ok));
        assert!(!bridge.is_running());
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let rejected = bridge
            .submit::<K>(
                work(move |_| {
                    r.store(true, std::sync::atomic::Ordering::SeqCst);
                    Ok(())
                }),
                Placement::Blocking,
            )
            .unwrap_err();
        assert_eq!(rejected.error, Error::NotRunning);
        (rejected.work)(&crate::Job::new(&Future::running(Arc::new(Owner::new(
            0, None,
        )))))
        .unwrap();
        assert!(
            ran.load(std::sync::atomic::Ordering::SeqCst),
            "the work came back whole"
        );
        assert!(bridge.spawn::<K, _>(async { Ok(Some(1)) }).is_err());
        assert_eq!(bridge.shutdown(None), Ok(Status::Ok), "idempotent");
        assert_eq!(bridge.stats().submitted, 0);
    }

    #[test]
    fn shutdown_grace_lets_work_finish_then_cancels_the_rest() {
        let bridge = start();
        let slow = bridge
            .submit::<K>(
                work(|job| {
                    std::thread::sleep(Duration::from_millis(50));
                    job.set_value(5);
                    Ok(())
                }),
                Placement::Blocking,
            )
            .unwrap();
        let sleeping = bridge
            .spawn::<K, _>(async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Some(0))
            })
            .unwrap();
        // The grace period covers the slow work but not the hour-long sleep.
        let started = Instant::now();
        assert_eq!(
            bridge.shutdown(Some(Duration::from_millis(300))),
            Ok(Status::Ok)
        );
        assert!(started.elapsed() < Duration::from_secs(20));
        assert_eq!(slow.status(), Status::Ok);
        assert_eq!(sleeping.status(), Status::Cancelled);
        assert_eq!(bridge.stats().pending, 0);
    }

    #[test]
    fn shutdown_leaves_stubborn_work_behind_and_cancels_it_later() {
        let bridge = start();
        let release = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicBool::new(false));
        let (r, s) = (release.clone(), started.clone());
        let stubborn = bridge
            .submit::<K>(
                work(move |_| {
                    s.store(true, std::sync::atomic::Ordering::SeqCst);
                    while !r.load(std::sync::atomic::Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Ok(())
                }),
                Placement::Blocking,
            )
            .unwrap();
        while !started.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            bridge.shutdown(Some(Duration::from_millis(10))),
            Ok(Status::Timeout)
        );
        assert_eq!(stubborn.status(), Status::Pending);
        release.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(stubborn.wait(LONG), Ok(Status::Cancelled));
    }

    #[test]
    fn blocking_work_fills_the_pool_and_no_more() {
        // Three pool threads: three items block together (each waits for the other
        // two), and 200 more wait in the queue without a pool task each.
        let bridge = Bridge::start(Config {
            max_blocking_threads: 3,
            ..Config::default()
        })
        .unwrap();
        let together = Arc::new(std::sync::Barrier::new(3));
        let gate = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut futures = Vec::new();
        for i in 0..203 {
            let (t, g, r, m) = (
                together.clone(),
                gate.clone(),
                running.clone(),
                most.clone(),
            );
            futures.push(
                bridge
                    .submit::<K>(
                        work(move |_| {
                            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                            m.fetch_max(now, Ordering::SeqCst);
                            if i < 3 {
                                t.wait();
                                while !g.load(Ordering::SeqCst) {
                                    std::thread::sleep(Duration::from_millis(1));
                                }
                            }
                            r.fetch_sub(1, Ordering::SeqCst);
                            Ok(())
                        }),
                        Placement::Blocking,
                    )
                    .unwrap(),
            );
        }
        while running.load(Ordering::SeqCst) < 3 {
            std::thread::sleep(Duration::from_millis(1));
        }
        {
            let queue = lock(&bridge.shared.blocking);
            assert_eq!(queue.items.len(), 200);
            assert_eq!(queue.runners, 3);
        }
        gate.store(true, Ordering::SeqCst);
        for f in &futures {
            assert_eq!(f.wait(LONG), Ok(Status::Ok));
        }
        assert_eq!(most.load(Ordering::SeqCst), 3);
        // Every pool task ends once it has found nothing to do for its keep-alive.
        let deadline = Instant::now() + Duration::from_secs(30);
        while lock(&bridge.shared.blocking).runners != 0 {
            assert!(Instant::now() < deadline, "pool tasks did not end");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn an_idle_pool_task_waits_for_the_next_item_and_shutdown_ends_it() {
        let bridge = start();
        let round_trip = || {
            let f = bridge
                .submit::<K>(work(|_| Ok(())), Placement::Blocking)
                .unwrap();
            assert_eq!(f.wait(LONG), Ok(Status::Ok));
        };
        let settled = |parked: usize, runners: usize| {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                {
                    let queue = lock(&bridge.shared.blocking);
                    if queue.parked == parked && queue.runners == runners {
                        return;
                    }
                }
                assert!(Instant::now() < deadline, "pool tasks did not settle");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        round_trip();
        settled(1, 1);
        // The sleeping task takes the next item: no second task.
        round_trip();
        settled(1, 1);
        assert_eq!(bridge.shutdown(LONG), Ok(Status::Ok));
        settled(0, 0);
    }

    #[test]
    fn queued_work_is_dropped_unrun_by_shutdown() {
        let bridge = Bridge::start(Config {
            max_blocking_threads: 1,
            ..Config::default()
        })
        .unwrap();
        let gate = Arc::new(AtomicBool::new(false));
        let g = gate.clone();
        let blocker = bridge
            .submit::<K>(
                work(move |job| {
                    while !g.load(std::sync::atomic::Ordering::SeqCst) && !job.is_cancelled() {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Ok(())
                }),
                Placement::Blocking,
            )
            .unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let queued: Vec<_> = (0..50)
            .map(|_| {
                let r = runs.clone();
                bridge
                    .submit::<K>(
                        work(move |_| {
                            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            Ok(())
                        }),
                        Placement::Blocking,
                    )
                    .unwrap()
            })
            .collect();
        let s = bridge.shutdown(Some(Duration::ZERO)).unwrap();
        assert!(s == Status::Ok || s == Status::Timeout);
        assert_eq!(blocker.wait(LONG), Ok(Status::Cancelled));
        for f in &queued {
            assert_eq!(f.wait(LONG), Ok(Status::Cancelled));
        }
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 0);
        let stats = bridge.stats();
        assert_eq!((stats.cancelled, stats.pending), (51, 0));
    }

    #[test]
    fn shutdown_from_its_own_threads_would_deadlock_but_drop_does_not_hang() {
        let bridge = Arc::new(start());
        let b = bridge.clone();
        let f = bridge
            .submit::<K>(
                work(move |_| match b.shutdown(None) {
                    Err(Error::WouldDeadlock) => Ok(()),
                    _ => Err(Failure::from_code(1)),
                }),
                Placement::OnLoop,
            )
            .unwrap();
        assert_eq!(f.wait(LONG), Ok(Status::Ok));
        let b = bridge.clone();
        let g = bridge
            .submit::<K>(
                work(move |_| match b.shutdown(None) {
                    Err(Error::WouldDeadlock) => Ok(()),
                    _ => Err(Failure::from_code(1)),
                }),
                Placement::Blocking,
            )
            .unwrap();
        assert_eq!(g.wait(LONG), Ok(Status::Ok));

        // The last handle dropped on the loop thread itself: the loop finishes the
        // shutdown on its own once this work returns. Dropping shuts down with no
        // grace period, so the running work itself ends cancelled.
        let own = Arc::new(StdMutex::new(Some(start())));
        let inner = own.lock().unwrap().as_ref().unwrap().shared.clone();
        let o = own.clone();
        let last = inner_submit(&own, move |_| {
            drop(o.lock().unwrap().take());
            Ok(())
        });
        assert_eq!(last.wait(LONG), Ok(Status::Cancelled));
        let deadline = Instant::now() + Duration::from_secs(20);
        while inner.state.load(Ordering::SeqCst) != STOPPED && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(inner.state.load(Ordering::SeqCst), STOPPED);
    }

    fn inner_submit(
        bridge: &StdMutex<Option<Bridge>>,
        f: impl FnOnce(&crate::Job<'_, K>) -> Result<(), Failure> + Send + 'static,
    ) -> Future<K> {
        let guard = bridge.lock().unwrap();
        guard
            .as_ref()
            .unwrap()
            .submit::<K>(work(f), Placement::OnLoop)
            .unwrap()
    }

    #[test]
    fn callback_run_by_shutdown_may_call_shutdown_again() {
        let bridge = Arc::new(
            Bridge::start(Config {
                max_blocking_threads: 1,
                ..Config::default()
            })
            .unwrap(),
        );
        let blocker = bridge
            .submit::<K>(
                work(|job| {
                    while !job.is_cancelled() {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Ok(())
                }),
                Placement::Blocking,
            )
            .unwrap();
        let queued = bridge
            .submit::<K>(work(|_| Ok(())), Placement::Blocking)
            .unwrap();
        let answer = Arc::new(StdMutex::new(None));
        let (b, a) = (bridge.clone(), answer.clone());
        queued
            .on_done(Box::new(move |_| {
                *a.lock().unwrap() = Some(b.shutdown(None))
            }))
            .unwrap();
        let status = bridge.shutdown(Some(Duration::ZERO)).unwrap();
        assert!(status == Status::Ok || status == Status::Timeout);
        assert_eq!(*answer.lock().unwrap(), Some(Ok(Status::Ok)));
        assert_eq!(queued.status(), Status::Cancelled);
        assert_eq!(blocker.wait(LONG), Ok(Status::Cancelled));
    }

    #[test]
    fn max_pending_is_back_pressure() {
        let bridge = Bridge::start(Config {
            max_pending: 2,
            ..Config::default()
        })
        .unwrap();
        let gate = Arc::new(AtomicBool::new(false));
        let blockers: Vec<_> = (0..2)
            .map(|_| {
                let g = gate.clone();
                bridge
                    .submit::<K>(
                        work(move |_| {
                            while !g.load(std::sync::atomic::Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(1));
                            }
                            Ok(())
                        }),
                        Placement::Blocking,
                    )
                    .unwrap()
            })
            .collect();
        let busy = bridge
            .submit::<K>(work(|_| Ok(())), Placement::OnLoop)
            .unwrap_err();
        assert_eq!(busy.error, Error::Busy);
        gate.store(true, std::sync::atomic::Ordering::SeqCst);
        for f in &blockers {
            assert_eq!(f.wait(LONG), Ok(Status::Ok));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while bridge.stats().pending > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(bridge
            .submit::<K>(work(|_| Ok(())), Placement::OnLoop)
            .is_ok());
        assert_eq!(bridge.stats().submitted, 3);
    }

    #[test]
    fn multi_thread_runtime_works_and_keeps_loop_order() {
        let bridge = Arc::new(
            Bridge::start(Config {
                worker_threads: 2,
                ..Config::default()
            })
            .unwrap(),
        );
        let order = Arc::new(StdMutex::new(Vec::new()));
        let futures: Vec<_> = (0..100u32)
            .map(|i| {
                let (o, b) = (order.clone(), bridge.clone());
                bridge
                    .submit::<K>(
                        work(move |_| {
                            assert!(b.in_loop());
                            o.lock().unwrap().push(i);
                            Ok(())
                        }),
                        Placement::OnLoop,
                    )
                    .unwrap()
            })
            .collect();
        for f in &futures {
            assert_eq!(f.wait(LONG), Ok(Status::Ok));
        }
        assert_eq!(*order.lock().unwrap(), (0..100).collect::<Vec<_>>());
        let b = bridge.clone();
        let blocking = bridge
            .submit::<K>(
                work(move |_| {
                    if b.in_loop() {
                        Err(Failure::from_code(1))
                    } else {
                        Ok(())
                    }
                }),
                Placement::Blocking,
            )
            .unwrap();
        assert_eq!(blocking.wait(LONG), Ok(Status::Ok));
        assert_eq!(bridge.shutdown(LONG), Ok(Status::Ok));
    }

    #[test]
    fn spin_mode_round_trips_run_timers_and_shut_down() {
        let bridge = Bridge::start(Config {
            spin: Duration::from_micros(50),
            ..Config::default()
        })
        .unwrap();
        for i in 0..2000u32 {
            let f = bridge
                .submit::<K>(
                    work(move |job| {
                        job.set_value(i);
                        Ok(())
                    }),
                    Placement::OnLoop,
                )
                .unwrap();
            assert_eq!(f.wait(LONG), Ok(Status::Ok));
            assert_eq!(f.take_value(), Some(i));
        }
        // The loop still runs timers and async work between spins.
        let slept = bridge
            .spawn::<K, _>(async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(Some(1))
            })
            .unwrap();
        assert_eq!(slept.wait(LONG), Ok(Status::Ok));
        // A wait shorter than the spin still times out.
        let pending = bridge
            .spawn::<K, _>(async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(None)
            })
            .unwrap();
        assert_eq!(
            pending.wait(Some(Duration::from_micros(10))),
            Ok(Status::Timeout)
        );
        assert_eq!(bridge.shutdown(Some(Duration::ZERO)), Ok(Status::Ok));
        assert_eq!(pending.status(), Status::Cancelled);
    }

    #[test]
    fn global_bridge_is_one_and_not_dropped_by_handles() {
        let a = Bridge::global().unwrap();
        let b = std::thread::spawn(|| Bridge::global().unwrap() as *const Bridge as usize)
            .join()
            .unwrap();
        assert_eq!(a as *const Bridge as usize, b);
        assert!(a.is_global() && a.is_running());
        let other = start();
        assert!(!other.is_global());
    }

    #[test]
    fn bad_configuration_is_invalid() {
        assert!(matches!(
            Bridge::start(Config {
                worker_threads: 100_000,
                ..Config::default()
            }),
            Err(Error::Invalid)
        ));
    }
}
