//! What the core needs of a runtime, and the bookkeeping a runtime shares with every
//! future it made.
//!
//! The core (futures, composition, promises) never names the runtime: it reaches the
//! bridge it belongs to through the `Sched` trait, which the runtime implements, and
//! keeps its counters, back-pressure, shutdown signalling and unhandled-error hook in
//! an `Owner`. The pending registry of an owner holds the futures nobody else would
//! resolve at shutdown (promises): shutdown asks each to stop.

use std::ffi::CStr;
use std::time::{Duration, Instant};

use crate::status::{Error, Status};
use crate::sync::{lock, Arc, AtomicBool, AtomicU64, CachePadded, Condvar, Mutex, Ordering, Weak};
use crate::sys::fork;

/// Where synchronous work runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// On the blocking pool: may block, may take long.
    Blocking,
    /// On a loop thread, in submission order: must not block.
    OnLoop,
}

/// A submission that was refused; the work comes back untouched.
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

/// Queued synchronous work, type-erased, as a runtime's queues hold it.
pub(crate) trait Queued: Send + Sync {
    /// Runs the work (or skips it if it was cancelled first). `returned` is called
    /// once the work has returned and before its future can be seen finished (not at
    /// all if the work did not run), so that the thread can count itself free before
    /// anyone learns of the result.
    fn run(self: Arc<Self>, returned: &dyn Fn());
    /// Drops the work unrun and finishes its future `Cancelled`, if not yet started.
    fn cancel_queued(self: Arc<Self>);
}

/// Stops a timer started by [`Sched::after`]; dropping it leaves the timer running.
pub(crate) type Canceller = Box<dyn FnOnce() + Send>;

/// What the core asks of the runtime its futures belong to.
pub(crate) trait Sched: Send + Sync {
    /// Whether the runtime accepts work.
    fn is_running(&self) -> bool;

    /// Queues `item` on a loop thread or the blocking pool; refused once shut down.
    fn push(&self, item: Arc<dyn Queued>, placement: Placement) -> Result<(), Error>;

    /// Calls `fire` on a runtime thread after `delay`; refused once shut down.
    fn after(&self, delay: Duration, fire: Box<dyn FnOnce() + Send>) -> Result<Canceller, Error>;
}

/// A future that only a shutdown's request would stop (a promise): the registry of its
/// owner holds it while it is pending.
pub(crate) trait Pending: Send + Sync {
    /// Shutdown's grace is over: requests cancellation, on the shutting-down thread.
    fn cancel_pending(self: Arc<Self>);
}

/// The pending registry: slots of weak references, reused once vacated.
#[derive(Default)]
struct Registry {
    slots: Vec<Option<Weak<dyn Pending>>>,
    vacant: Vec<usize>,
}

/// Called with the code and message of a failure that nobody observed.
pub type UnhandledHook = Box<dyn Fn(i32, &CStr) + Send + Sync>;

/// A hook shared by a bridge and the combined futures made from its futures.
type SharedHook = Arc<UnhandledHook>;

/// A snapshot of a bridge's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Futures accepted by `submit` (and the like) since start.
    pub submitted: u64,
    /// Futures that finished `Ok`.
    pub completed: u64,
    /// Futures that finished `Failed`.
    pub failed: u64,
    /// Futures that finished `Cancelled`.
    pub cancelled: u64,
    /// Futures not finished yet.
    pub pending: u64,
}

/// Bookkeeping shared by a bridge and every future it made.
///
/// The counters live on two cache lines of their own: one written by the threads that
/// submit, one by the threads that finish, so that neither side's writes take the
/// other's line away on every operation. What is in flight is their difference.
pub(crate) struct Owner {
    fork_generation: u64,
    max_pending: u64,
    /// How long the loop and waiters spin before parking (zero: they park at once).
    spin: Duration,
    /// Written by submitting threads: futures accepted (less those taken back).
    admitted: CachePadded<AtomicU64>,
    /// Written by finishing threads.
    finished: CachePadded<Finished>,
    /// Set once shutdown's grace period is over: running work is told to stop, and
    /// whatever it returns ends `Cancelled`.
    cancelling: AtomicBool,
    /// Set when shutdown starts, so that the last finishing future wakes it.
    draining: AtomicBool,
    idle_lock: Mutex<()>,
    idle: Condvar,
    on_unhandled: Option<SharedHook>,
    /// The runtime, for chaining work onto one of its futures and for timers; set
    /// once it exists.
    sched: std::sync::OnceLock<Weak<dyn Sched>>,
    pending: Mutex<Registry>,
}

/// The counters the finishing side writes.
#[derive(Default)]
struct Finished {
    /// Futures no longer in flight.
    left: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
}

impl Owner {
    pub(crate) fn new(max_pending: u64, on_unhandled: Option<UnhandledHook>) -> Owner {
        Owner::with_hook(max_pending, on_unhandled.map(std::sync::Arc::new))
    }

    fn with_hook(max_pending: u64, on_unhandled: Option<SharedHook>) -> Owner {
        Owner {
            fork_generation: fork::generation(),
            max_pending,
            spin: Duration::ZERO,
            admitted: CachePadded::new(AtomicU64::new(0)),
            finished: CachePadded::new(Finished::default()),
            cancelling: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            idle_lock: Mutex::new(()),
            idle: Condvar::new(),
            on_unhandled,
            sched: std::sync::OnceLock::new(),
            pending: Mutex::new(Registry::default()),
        }
    }

    /// Bookkeeping for a future combined from this bridge's futures: the same
    /// unhandled-error hook, counted apart (it is no work of the bridge's).
    pub(crate) fn companion(&self) -> Owner {
        let companion = Owner {
            fork_generation: self.fork_generation,
            ..Owner::with_hook(0, self.on_unhandled.clone())
        };
        // Chained work and timeouts of a combined future run on this bridge.
        if let Some(sched) = self.sched.get() {
            let _ = companion.sched.set(sched.clone());
        }
        companion
    }

    /// Remembers the runtime this bookkeeping belongs to.
    pub(crate) fn set_sched(&self, sched: Weak<dyn Sched>) {
        let _ = self.sched.set(sched);
    }

    /// Whether this bookkeeping ever belonged to a runtime (a combination of nothing
    /// does not).
    pub(crate) fn has_sched(&self) -> bool {
        self.sched.get().is_some()
    }

    /// The runtime, while it exists.
    pub(crate) fn sched(&self) -> Option<Arc<dyn Sched>> {
        self.sched.get().and_then(Weak::upgrade)
    }

    /// Keeps `pending` in the registry until [`Owner::unregister`]; returns its slot.
    /// Refused (`Error::NotRunning`) once shutdown has asked the registry to stop: a
    /// registration after that would never be asked.
    pub(crate) fn register(&self, pending: Weak<dyn Pending>) -> Result<usize, Error> {
        let mut registry = lock(&self.pending);
        // Read under the lock `cancel_all` takes after setting the flag: either its
        // snapshot has this registration, or this sees the flag.
        if self.cancelling() {
            return Err(Error::NotRunning);
        }
        Ok(match registry.vacant.pop() {
            Some(slot) => {
                registry.slots[slot] = Some(pending);
                slot
            }
            None => {
                registry.slots.push(Some(pending));
                registry.slots.len() - 1
            }
        })
    }

    /// Takes the registration in `slot` out of the registry.
    pub(crate) fn unregister(&self, slot: usize) {
        let mut registry = lock(&self.pending);
        if let Some(entry) = registry.slots.get_mut(slot) {
            if entry.take().is_some() {
                registry.vacant.push(slot);
            }
        }
    }

    /// Lets the loop and waiters spin for `spin` before parking.
    pub(crate) fn spinning(mut self, spin: Duration) -> Owner {
        self.spin = spin;
        self
    }

    /// How long the loop and waiters spin before parking.
    pub(crate) fn spin(&self) -> Duration {
        self.spin
    }

    /// Whether this process is a fork child of the one this bridge was started in.
    pub(crate) fn orphaned(&self) -> bool {
        fork::generation() != self.fork_generation
    }

    /// Counts one more future in flight, unless `max_pending` is reached.
    pub(crate) fn admit(&self) -> Result<(), Error> {
        if self.max_pending == 0 {
            self.admitted.fetch_add(1, Ordering::SeqCst);
        } else {
            // `left` only grows: a stale read counts more in flight, never fewer, so
            // the bound is never passed.
            self.admitted
                .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |admitted| {
                    let left = self.finished.left.load(Ordering::SeqCst);
                    (admitted.saturating_sub(left) < self.max_pending).then_some(admitted + 1)
                })
                .map_err(|_| Error::Busy)?;
        }
        Ok(())
    }

    /// Undoes an [`admit`](Owner::admit) whose submission was refused after all.
    pub(crate) fn retract(&self) {
        self.admitted.fetch_sub(1, Ordering::SeqCst);
        self.wake_if_idle();
    }

    /// Counts a future's final state.
    pub(crate) fn record(&self, status: Status) {
        let counter = match status {
            Status::Ok => &self.finished.completed,
            Status::Failed => &self.finished.failed,
            _ => &self.finished.cancelled,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A future is finished: it no longer counts as pending.
    pub(crate) fn leave(&self) {
        self.finished.left.fetch_add(1, Ordering::SeqCst);
        self.wake_if_idle();
    }

    /// Wakes a shutdown waiting for the last future in flight.
    fn wake_if_idle(&self) {
        // SeqCst pairs with `wait_idle`: either it sees the count at zero, or this
        // thread sees `draining` and wakes it, under the lock it waits with.
        if self.draining.load(Ordering::SeqCst) && self.in_flight() == 0 {
            let _guard = lock(&self.idle_lock);
            self.idle.notify_all();
        }
    }

    pub(crate) fn in_flight(&self) -> u64 {
        // `left` first: every future it counts was admitted before, so the difference
        // is never below the true count at the moment `admitted` is read.
        let left = self.finished.left.load(Ordering::SeqCst);
        self.admitted.load(Ordering::SeqCst).saturating_sub(left)
    }

    /// Waits until nothing is in flight, or until `deadline` (`None`: no limit).
    /// Returns whether nothing is in flight.
    pub(crate) fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        self.draining.store(true, Ordering::SeqCst);
        let mut guard = lock(&self.idle_lock);
        loop {
            if self.in_flight() == 0 {
                return true;
            }
            let wait = match deadline {
                None => Duration::from_secs(3600),
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return false,
                },
            };
            guard = match self.idle.wait_timeout(guard, wait) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// From now on running work is told to stop and ends `Cancelled`; each future in
    /// the pending registry is asked to stop, on this thread.
    pub(crate) fn cancel_all(&self) {
        self.cancelling.store(true, Ordering::SeqCst);
        let pending: Vec<_> = lock(&self.pending)
            .slots
            .iter()
            .flatten()
            .filter_map(Weak::upgrade)
            .collect();
        for future in pending {
            future.cancel_pending();
        }
    }

    pub(crate) fn cancelling(&self) -> bool {
        self.cancelling.load(Ordering::SeqCst)
    }

    /// Reports a failure that nobody observed: to the hook, else to stderr.
    pub(crate) fn report_unhandled(&self, code: i32, message: &CStr) {
        match &self.on_unhandled {
            Some(hook) => hook(code, message),
            None => eprintln!(
                "asyncbridge: unobserved failure of a future (code {code}): {}",
                message.to_string_lossy()
            ),
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let pending = self.in_flight();
        Stats {
            submitted: self.admitted.load(Ordering::Relaxed),
            completed: self.finished.completed.load(Ordering::Relaxed),
            failed: self.finished.failed.load(Ordering::Relaxed),
            cancelled: self.finished.cancelled.load(Ordering::Relaxed),
            pending,
        }
    }
}

#[cfg(all(test, not(asyncbridge_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn max_pending_refuses_and_recovers() {
        let owner = Owner::new(2, None);
        assert_eq!(owner.admit(), Ok(()));
        assert_eq!(owner.admit(), Ok(()));
        assert_eq!(owner.admit(), Err(Error::Busy));
        owner.leave();
        assert_eq!(owner.admit(), Ok(()));
        owner.retract();
        let s = owner.stats();
        assert_eq!((s.submitted, s.pending), (2, 1));
    }

    #[test]
    fn wait_idle_wakes_on_last_leave() {
        let owner = Arc::new(Owner::new(0, None));
        owner.admit().unwrap();
        let o = owner.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            o.leave();
        });
        let started = Instant::now();
        assert!(owner.wait_idle(Some(Instant::now() + Duration::from_secs(10))));
        assert!(started.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
        owner.admit().unwrap();
        assert!(!owner.wait_idle(Some(Instant::now() + Duration::from_millis(20))));
    }

    #[test]
    fn hook_receives_unhandled_failures() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let owner = Owner::new(
            0,
            Some(Box::new(move |code, msg| {
                s.lock().unwrap().push((code, msg.to_owned()))
            })),
        );
        owner.report_unhandled(9, c"boom");
        assert_eq!(*seen.lock().unwrap(), vec![(9, c"boom".to_owned())]);
    }
}
