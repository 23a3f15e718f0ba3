//! The blocking pool: tasks on tokio's blocking threads that drain the bridge's queue
//! of blocking work, oldest first, at most `max_runners` of them.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use super::{Shared, WorkQueue};
use crate::sched::Queued;
use crate::status::Error;
use crate::sync::{lock, Arc, MutexGuard};
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

impl Shared {
    pub(super) fn push_blocking(&self, item: Arc<dyn Queued>) -> Result<(), Error> {
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
    pub(super) fn provide_runner(&self, mut queue: MutexGuard<'_, WorkQueue>) -> bool {
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
