//! The blocking pool: tasks on tokio's blocking threads that drain the bridge's queue
//! of blocking work, oldest first, at most `max_runners` of them.
//!
//! Work goes to the task that was busy most recently. A task whose work has returned
//! counts as free before the work's future can be seen finished, so the next
//! submission of a caller that waited for that result finds it about to look for
//! work rather than waking (or starting) another; a task that has to be woken is the
//! one that parked last. On a machine with few CPUs this keeps one stream of round
//! trips on one warm thread instead of rotating it over several, each of which may
//! be asleep on the other CPU. Tasks at the bottom of the stack end after their
//! keep-alive.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::{Shared, WorkQueue};
use crate::sched::Queued;
use crate::status::Error;
use crate::sync::{lock, Arc, MutexGuard, Ordering};
use crate::sys::thread_exit::Running;
use crate::sys::thread_role;

/// How long a pool task with nothing to do waits for more before it ends (and its
/// thread goes back to tokio's pool, which keeps it another 10 s). Handing an item to a
/// waiting task costs one wake-up; starting a task through tokio, when the thread that
/// just finished is not yet back in tokio's pool, can start another thread.
const RUNNER_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// How many pool threads that work ended (`pthread_exit` inside it) are replaced over
/// a bridge's life; past that, the pool shrinks by one for each. tokio starts threads
/// only on demand, so the room costs nothing until it is used.
pub(super) const ENDED_THREADS_REPLACED: usize = 4096;

/// A pool task asleep waiting for work.
pub(super) struct Sleeper {
    thread: std::thread::Thread,
    /// Set (under the queue's lock) by whoever takes it off the stack to wake it.
    woken: AtomicBool,
}

impl Shared {
    pub(super) fn push_blocking(&self, item: Arc<dyn Queued>) -> Result<(), Error> {
        let mut queue = lock(&self.blocking);
        if queue.closed {
            return Err(Error::NotRunning);
        }
        queue.items.push_back(item.clone());
        if self.spinning {
            self.blocking_len
                .store(queue.items.len(), Ordering::Release);
        }
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
    /// task only when those about to take one (starting, or returning from work) are
    /// fewer than the items waiting: the task that parked last is woken if there is
    /// one, else a new one started if the pool has room. Work still starts in
    /// submission order. Returns false if a task could not be started.
    pub(super) fn provide_runner(&self, mut queue: MutexGuard<'_, WorkQueue>) -> bool {
        let about_to_take = queue.starting + self.returning.load(Ordering::SeqCst);
        if queue.items.len() <= about_to_take {
            return true;
        }
        if let Some(sleeper) = queue.sleepers.pop() {
            queue.starting += 1;
            sleeper.woken.store(true, Ordering::Release);
            drop(queue);
            sleeper.thread.unpark();
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
        let Some(shared) = self.me.upgrade() else {
            let mut queue = lock(&self.blocking);
            queue.runners -= 1;
            queue.starting -= 1;
            return false;
        };
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

    /// Wakes every sleeping pool task (shutdown: they find the queue closed and end).
    pub(super) fn wake_sleepers(&self) {
        let sleepers = {
            let mut queue = lock(&self.blocking);
            let sleepers = std::mem::take(&mut queue.sleepers);
            queue.starting += sleepers.len();
            for sleeper in &sleepers {
                sleeper.woken.store(true, Ordering::Release);
            }
            sleepers
        };
        for sleeper in sleepers {
            sleeper.thread.unpark();
        }
    }

    /// A pool task: runs queued blocking work, oldest first; with none left, spins
    /// for more in low-latency mode, then sleeps up to [`RUNNER_KEEP_ALIVE`], then
    /// ends.
    fn drain_blocking(self: &Arc<Self>) {
        thread_role::enter_blocking(self.id);
        // Should work end this thread, the pool learns that it has one task less.
        let _armed = crate::sys::thread_exit::arm(&POOL_TASK, Running::Shared(self.clone()));
        let me = Arc::new(Sleeper {
            thread: std::thread::current(),
            woken: AtomicBool::new(false),
        });
        let spin = self.owner.spin();
        let mut queue = lock(&self.blocking);
        queue.starting -= 1;
        let mut busy = false;
        loop {
            if let Some(item) = queue.items.pop_front() {
                if self.spinning {
                    self.blocking_len
                        .store(queue.items.len(), Ordering::Release);
                }
                drop(queue);
                let counted = Cell::new(false);
                item.run(&|| {
                    self.returning.fetch_add(1, Ordering::SeqCst);
                    counted.set(true);
                });
                queue = lock(&self.blocking);
                if counted.get() {
                    // Under the lock: a submission counted this task as about to take
                    // its item, and this task looks at the queue before anyone else can.
                    self.returning.fetch_sub(1, Ordering::SeqCst);
                }
                busy = true;
                continue;
            }
            queue.release_excess();
            if queue.closed {
                queue.runners -= 1;
                return;
            }
            if busy && !spin.is_zero() {
                // Low-latency mode, right after work (never while idle): a caller that
                // waited for the result often submits again within microseconds.
                busy = false;
                queue.starting += 1;
                drop(queue);
                let until = Instant::now() + spin;
                while self.blocking_len.load(Ordering::Acquire) == 0 && Instant::now() < until {
                    std::hint::spin_loop();
                }
                queue = lock(&self.blocking);
                queue.starting -= 1;
                continue;
            }
            busy = false;
            match self.sleep(queue, &me) {
                Some(guard) => queue = guard,
                None => return,
            }
        }
    }

    /// Parks the pool task `me` until it is woken for an item (returns the queue,
    /// locked) or its keep-alive runs out (it has ended: returns `None`).
    fn sleep<'s>(
        &'s self,
        mut queue: MutexGuard<'s, WorkQueue>,
        me: &Arc<Sleeper>,
    ) -> Option<MutexGuard<'s, WorkQueue>> {
        me.woken.store(false, Ordering::Relaxed);
        queue.sleepers.push(me.clone());
        drop(queue);
        let deadline = Instant::now() + RUNNER_KEEP_ALIVE;
        loop {
            if me.woken.load(Ordering::Acquire) {
                let mut queue = lock(&self.blocking);
                // Counted as about to take an item by the one who woke it.
                queue.starting -= 1;
                return Some(queue);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let mut queue = lock(&self.blocking);
                if me.woken.load(Ordering::Acquire) {
                    queue.starting -= 1;
                    return Some(queue);
                }
                // Nobody took it off the stack: it ends.
                if let Some(at) = queue.sleepers.iter().position(|s| Arc::ptr_eq(s, me)) {
                    queue.sleepers.remove(at);
                }
                queue.runners -= 1;
                return None;
            }
            std::thread::park_timeout(left);
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
