//! The bridge: a tokio runtime driven by its own loop thread, a blocking pool, the
//! queues that feed them, and an orderly shutdown that resolves every future.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicU8;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use once_cell::sync::OnceCell;
use tokio::sync::{oneshot, Notify};

use crate::fork;
use crate::future::{Failure, Future, Kind, Queued};
use crate::owner::{Owner, Stats, UnhandledHook};
use crate::status::{Error, Status};
use crate::sync::{lock, Arc, Mutex, Ordering};
use crate::thread_role;

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
}

impl Default for Config {
    fn default() -> Config {
        Config {
            worker_threads: 0,
            max_blocking_threads: 0,
            max_pending: 0,
            thread_name: "asyncbridge".to_owned(),
            on_unhandled_error: None,
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
    closed: bool,
}

impl WorkQueue {
    fn new() -> Mutex<WorkQueue> {
        Mutex::new(WorkQueue {
            items: VecDeque::new(),
            scheduled: false,
            closed: false,
        })
    }
}

/// What the bridge's threads and its futures share.
struct Shared {
    id: u64,
    owner: Arc<Owner>,
    state: AtomicU8,
    handle: tokio::runtime::Handle,
    on_loop: Mutex<WorkQueue>,
    on_loop_ready: Notify,
    blocking: Mutex<WorkQueue>,
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
static GLOBAL: OnceCell<Bridge> = OnceCell::new();

/// How many on-loop items the dispatcher runs before it lets other tasks run.
const DISPATCH_BATCH: usize = 64;

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
        if config.max_blocking_threads > 0 {
            builder.max_blocking_threads(config.max_blocking_threads);
        }
        // Every thread tokio starts is a loop thread until it runs blocking work,
        // which marks itself (tokio starts workers and blocking threads alike).
        let runtime = builder
            .enable_time()
            .thread_name(config.thread_name.clone())
            .on_thread_start(move || thread_role::enter_loop(id))
            .build()
            .map_err(|_| Error::NotRunning)?;
        let shared = Arc::new(Shared {
            id,
            owner: Arc::new(Owner::new(config.max_pending, config.on_unhandled_error)),
            state: AtomicU8::new(RUNNING),
            handle: runtime.handle().clone(),
            on_loop: WorkQueue::new(),
            on_loop_ready: Notify::new(),
            blocking: WorkQueue::new(),
        });
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
    pub fn global() -> Result<&'static Bridge, Error> {
        GLOBAL.get_or_try_init(|| Bridge::start(Config::default()))
    }

    /// Whether this is the bridge [`Bridge::global`] returns (never starts it).
    pub fn is_global(&self) -> bool {
        matches!(GLOBAL.get(), Some(global) if std::ptr::eq(global, self))
    }

    /// Whether the bridge accepts work: started, not shut down, and not inherited
    /// through `fork()`.
    pub fn is_running(&self) -> bool {
        !self.shared.owner.orphaned() && self.shared.state.load(Ordering::SeqCst) == RUNNING
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
        let pushed = match placement {
            Placement::OnLoop => self.shared.push_on_loop(item),
            Placement::Blocking => self.shared.push_blocking(item),
        };
        match pushed {
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
        F: std::future::Future<Output = Result<K::Value, Failure>> + Send + 'static,
    {
        self.check_running()?;
        self.shared.owner.admit()?;
        let future = Future::<K>::running(self.shared.owner.clone());
        // Built outside the task: if the runtime is gone and drops the task unpolled,
        // the guard still finishes the future.
        let guard = FinishOnDrop(future.clone());
        self.shared.handle.spawn(async move {
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
                Some(result) => guard.0.finish(result.map(Some)),
                None => guard.0.finish(Ok(None)),
            }
        });
        Ok(future)
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
        if self.shared.owner.orphaned() {
            // The threads are gone with the parent; nothing here may wait or lock.
            self.shared.state.store(STOPPED, Ordering::SeqCst);
            return Ok(Status::Ok);
        }
        if self.shared.state.load(Ordering::SeqCst) == STOPPED {
            return Ok(Status::Ok);
        }
        if thread_role::belongs_to(self.shared.id) {
            return Err(Error::WouldDeadlock);
        }
        let mut control = lock(&self.control);
        if control.done {
            return Ok(Status::Ok);
        }
        let status = self.shared.stop(&mut control, timeout);
        Ok(status)
    }
}

impl Shared {
    fn push_on_loop(&self, item: Arc<dyn Queued>) -> Result<(), Error> {
        let mut queue = lock(&self.on_loop);
        if queue.closed {
            return Err(Error::NotRunning);
        }
        queue.items.push_back(item);
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
        drop(queue);
        // One pool task per item; each takes whichever item is first, so work starts
        // in submission order.
        let shared = self.clone();
        let spawned = catch_unwind(AssertUnwindSafe(|| {
            drop(
                self.handle
                    .spawn_blocking(move || shared.run_one_blocking()),
            );
        }));
        if spawned.is_err() {
            // tokio panics when it cannot start a thread; undo the push if the item
            // is still ours to undo.
            let mut queue = lock(&self.blocking);
            if let Some(at) = queue.items.iter().position(|i| Arc::ptr_eq(i, &item)) {
                queue.items.remove(at);
                return Err(Error::NotRunning);
            }
        }
        Ok(())
    }

    fn run_one_blocking(&self) {
        thread_role::enter_blocking(self.id);
        let next = lock(&self.blocking).items.pop_front();
        if let Some(item) = next {
            item.run();
        }
    }

    /// The shutdown sequence; `control` is locked, so it runs once.
    fn stop(&self, control: &mut Control, timeout: Option<Duration>) -> Status {
        self.state.store(STOPPING, Ordering::SeqCst);
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        if timeout != Some(Duration::ZERO) {
            self.owner.wait_idle(deadline);
        }
        self.owner.cancel_all();
        for queue in [&self.on_loop, &self.blocking] {
            let items = {
                let mut queue = lock(queue);
                queue.closed = true;
                std::mem::take(&mut queue.items)
            };
            for item in items {
                item.cancel_queued();
            }
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

/// Finishes a future `Cancelled` if its task is dropped before finishing it.
struct FinishOnDrop<K: Kind>(Future<K>);

impl<K: Kind> Drop for FinishOnDrop<K> {
    fn drop(&mut self) {
        self.0.request_cancel();
        self.0.finish(Ok(None));
    }
}

/// Runs the bridge's on-loop work in submission order, one wakeup per batch.
async fn dispatch_on_loop(shared: Arc<Shared>) {
    loop {
        shared.on_loop_ready.notified().await;
        let mut ran = 0;
        loop {
            let next = {
                let mut queue = lock(&shared.on_loop);
                let next = queue.items.pop_front();
                if next.is_none() {
                    queue.scheduled = false;
                }
                next
            };
            let Some(item) = next else { break };
            item.run();
            ran += 1;
            if ran % DISPATCH_BATCH == 0 {
                // Let timers and other tasks run during a long stream of submissions.
                tokio::task::yield_now().await;
            }
        }
    }
}
