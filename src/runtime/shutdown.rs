//! Shutdown: refuse new work, give running work its grace, cancel the rest, stop the
//! loop, and leave no future unresolved.

use std::time::{Duration, Instant};

use super::{Bridge, Control, Shared, STOPPED, STOPPING};
use crate::status::{Error, Status};
use crate::sync::{lock, Ordering};
use crate::sys::thread_role;

impl Bridge {
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
        let queued: Vec<_> = [&*self.on_loop, &*self.blocking]
            .into_iter()
            .flat_map(|queue| {
                let mut queue = lock(queue);
                queue.closed = true;
                std::mem::take(&mut queue.items)
            })
            .collect();
        // Sleeping pool tasks end now rather than at their keep-alive.
        self.wake_sleepers();
        self.owner.cancel_all();
        for item in queued {
            item.cancel_queued();
        }
        // Per-bridge state (pooled connections) goes before the loop stops; tasks
        // still using it hold references of their own and drop them with the runtime.
        let extensions = crate::sync::lock(&self.extensions).take();
        drop(extensions);
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
