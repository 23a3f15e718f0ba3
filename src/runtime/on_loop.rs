//! The loop thread's share of the work: on-loop items run in submission order by one
//! dispatcher task, one wake-up and one critical section per batch.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::Shared;
use crate::sched::Queued;
use crate::status::Error;
use crate::sync::{lock, Arc, Ordering};

/// How many on-loop items the dispatcher runs before it lets other tasks run.
const DISPATCH_BATCH: usize = 64;

impl Shared {
    pub(super) fn push_on_loop(&self, item: Arc<dyn Queued>) -> Result<(), Error> {
        let mut queue = lock(&self.on_loop);
        if queue.closed {
            return Err(Error::NotRunning);
        }
        queue.items.push_back(item);
        if self.spinning {
            // Only a spinning dispatcher watches the length without the lock.
            self.on_loop_len.store(queue.items.len(), Ordering::Release);
        }
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
}

/// The items the dispatcher took out of the queue and has not run yet. Dropped with
/// the dispatcher's task (the runtime stops), it finishes each one `Cancelled`, so
/// that no future is left pending by a shutdown.
struct Batch(VecDeque<Arc<dyn Queued>>);

impl Drop for Batch {
    fn drop(&mut self) {
        for item in self.0.drain(..) {
            item.cancel_queued();
        }
    }
}

/// Runs the bridge's on-loop work in submission order, one wakeup per batch.
pub(super) async fn dispatch_on_loop(shared: Arc<Shared>) {
    let spin = shared.owner.spin();
    // Swapped with the queue's buffer under the lock: one critical section takes every
    // item waiting, and the two buffers keep their capacity between batches.
    let mut batch = Batch(VecDeque::new());
    loop {
        shared.on_loop_ready.notified().await;
        let mut ran = 0;
        loop {
            {
                let mut queue = lock(&shared.on_loop);
                std::mem::swap(&mut queue.items, &mut batch.0);
                if shared.spinning {
                    shared.on_loop_len.store(0, Ordering::Release);
                }
                if batch.0.is_empty() {
                    queue.release_excess();
                    if spin.is_zero() {
                        queue.scheduled = false;
                    }
                }
            }
            if batch.0.is_empty() {
                if spin.is_zero() || !spin_for_more(&shared, spin) {
                    break;
                }
                continue;
            }
            while let Some(item) = batch.0.pop_front() {
                item.run(&|| {});
                ran += 1;
                if ran % DISPATCH_BATCH == 0 {
                    // Let timers and other tasks run during a long stream of submissions.
                    tokio::task::yield_now().await;
                }
            }
            super::release_excess(&mut batch.0);
        }
    }
}

/// Low-latency mode, with the on-loop queue found empty: spins up to `spin` (without
/// its lock, the queue still marked scheduled so a submission meanwhile costs no
/// wake-up) and returns whether work came. If none did, marks the queue unscheduled,
/// so the next submission wakes the dispatcher as usual.
fn spin_for_more(shared: &Shared, spin: Duration) -> bool {
    let until = Instant::now() + spin;
    while shared.on_loop_len.load(Ordering::Acquire) == 0 && Instant::now() < until {
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
