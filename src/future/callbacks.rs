//! Done and progress callbacks: registered on a future, run by the thread that
//! finishes it or delivered through completion queues, withdrawn, and never run
//! recursively.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::{Future, Kind};
use crate::delivery::queue::CompletionQueue;
use crate::delivery::{Entry, Target};
use crate::status::Error;
use crate::sync::{Arc, Ordering, Weak};

/// Done callbacks; the first is stored inline so the common case does not allocate.
pub(super) struct Callbacks<C> {
    first: Option<C>,
    rest: Vec<C>,
}

impl<C> Callbacks<C> {
    pub(super) const fn new() -> Callbacks<C> {
        Callbacks {
            first: None,
            rest: Vec::new(),
        }
    }

    /// The first callback and those after it (`first` is `None` only if `rest` is
    /// empty).
    pub(super) fn from_parts(first: Option<C>, rest: Vec<C>) -> Callbacks<C> {
        Callbacks { first, rest }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest.is_empty()
    }

    pub(super) fn push(&mut self, cb: C) {
        if self.is_empty() {
            self.first = Some(cb);
        } else {
            self.rest.push(cb);
        }
    }

    pub(super) fn into_iter(self) -> impl Iterator<Item = C> {
        self.first.into_iter().chain(self.rest)
    }

    /// Calls `f` with each callback, in order. (Cheaper than `into_iter` for the usual
    /// one callback: no iterator over an empty list is made or dropped.)
    pub(super) fn for_each(self, mut f: impl FnMut(C)) {
        if let Some(first) = self.first {
            f(first);
        }
        if !self.rest.is_empty() {
            self.rest.into_iter().for_each(f);
        }
    }
}

/// A done callback as registered: run by the finishing thread, or queued.
pub(super) enum Registration<K: Kind> {
    Direct(K::Callback),
    /// Boxed: it is the largest, and the rarest on the hot path (a future keeps its
    /// first registration inline).
    Via(Box<(Arc<CompletionQueue>, K::Callback)>),
    /// The library's own: a chained or combined future, a timeout. Does not count
    /// as observing a failure.
    Internal(InternalCallback<K>),
}

/// A callback of the library's own, run by the finishing thread; must not block.
pub(crate) type InternalCallback<K> = Box<dyn FnOnce(&Future<K>) + Send>;

/// A done callback to run on the finishing thread once the lock is released.
pub(super) enum Direct<K: Kind> {
    User(K::Callback),
    Internal(InternalCallback<K>),
}

/// How often a delivery that finds its future still finishing yields before it sleeps.
const FINISHING_YIELDS: u32 = 64;

/// A progress callback delivered through a queue, at most one delivery pending.
pub(super) struct Watch<K: Kind> {
    pub(super) tag: u64,
    /// Weakly: a queued delivery holds this future, and a queue dropped without a close
    /// must still release both.
    pub(super) queue: Weak<CompletionQueue>,
    pub(super) callback: K::ProgressCallback,
    /// A delivery is queued and has not run yet: new progress only updates the values
    /// it will read.
    pub(super) queued: bool,
}

impl<K: Kind> Future<K> {
    /// Registers `callback`, run exactly once with the finished future: at once on
    /// this thread if it has finished, else on the thread that finishes it.
    /// Registering counts as observing a failure.
    pub fn on_done(&self, callback: K::Callback) -> Result<(), Error> {
        self.mark_observed();
        if !self.peek().is_final() {
            if self.completion().owner.orphaned() {
                return Err(Error::NotRunning);
            }
            let mut inner = self.lock();
            if !inner.stage.is_final() {
                inner.push_callback(Registration::Direct(callback));
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
    /// is dropped unrun.
    pub fn on_done_via(
        &self,
        queue: &Arc<CompletionQueue>,
        callback: K::Callback,
    ) -> Result<(), Error> {
        self.mark_observed();
        if queue.orphaned() || (!self.peek().is_final() && self.completion().owner.orphaned()) {
            return Err(Error::NotRunning);
        }
        let Some(mut inner) = self.lock_unless_orphaned() else {
            return Err(Error::NotRunning);
        };
        if !inner.stage.is_final() {
            inner.push_callback(Registration::Via(Box::new((queue.clone(), callback))));
            return Ok(());
        }
        let tag = inner.cold().hold_queued(queue, callback);
        let pushed = queue.push(Entry::to(self.handle().into_target(), tag));
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
    /// runs after its done callback. The callback is dropped when the future is
    /// released, or when it is withdrawn.
    pub fn on_progress_via(
        &self,
        queue: &Arc<CompletionQueue>,
        callback: K::ProgressCallback,
    ) -> Result<(), Error> {
        if self.peek().is_final() {
            return Ok(()); // no progress will come
        }
        if self.completion().owner.orphaned() || queue.orphaned() {
            return Err(Error::NotRunning);
        }
        let mut inner = self.lock();
        if !inner.stage.is_final() {
            let cold = inner.cold();
            let tag = cold.new_tag();
            cold.watches.push(Watch {
                tag,
                queue: Arc::downgrade(queue),
                callback,
                queued: false,
            });
        }
        Ok(())
    }

    /// Withdraws this future's callbacks registered with `queue` that the predicates
    /// select, whether still waiting for the future or already queued: once this
    /// returns they will not run (one already running in a dispatch on another thread
    /// finishes), and they have been dropped. Returns how many were withdrawn.
    pub fn withdraw_via(
        &self,
        queue: &Arc<CompletionQueue>,
        mut done: impl FnMut(&K::Callback) -> bool,
        mut progress: impl FnMut(&K::ProgressCallback) -> bool,
    ) -> usize {
        if queue.orphaned() {
            // A fork child and the parent's queue: nothing is ever delivered there, and
            // its lock may belong to a thread that is not here.
            return 0;
        }
        let mut removed_callbacks = Vec::new();
        let mut removed_watches = Vec::new();
        let mut tags = Vec::new();
        {
            // A parent's future in a fork child: its lock may be held for good.
            let Some(mut inner) = self.lock_unless_orphaned() else {
                return 0;
            };
            let callbacks = inner.take_callbacks();
            for registration in callbacks.into_iter() {
                match registration {
                    Registration::Via(via) if Arc::ptr_eq(&via.0, queue) && done(&via.1) => {
                        removed_callbacks.push(via.1)
                    }
                    other => inner.push_callback(other),
                }
            }
            if let Some(cold) = inner.cold.as_mut() {
                let mut kept = Vec::with_capacity(cold.queued.len());
                for (tag, q, cb) in cold.queued.drain(..) {
                    if std::ptr::eq(q.as_ptr(), Arc::as_ptr(queue)) && done(&cb) {
                        tags.push(tag);
                        removed_callbacks.push(cb);
                    } else {
                        kept.push((tag, q, cb));
                    }
                }
                cold.queued = kept;
                let mut kept = Vec::with_capacity(cold.watches.len());
                for watch in cold.watches.drain(..) {
                    if std::ptr::eq(watch.queue.as_ptr(), Arc::as_ptr(queue))
                        && progress(&watch.callback)
                    {
                        if watch.queued {
                            tags.push(watch.tag);
                        }
                        removed_watches.push(watch);
                    } else {
                        kept.push(watch);
                    }
                }
                cold.watches = kept;
            }
        }
        // Their pending deliveries would find nothing to run; taken out now, they let
        // go of the future (and perhaps its value) at once rather than at a dispatch.
        let entries = if tags.is_empty() {
            Vec::new()
        } else {
            queue.remove(self.target_address(), &tags)
        };
        let count = removed_callbacks.len() + removed_watches.len();
        drop(removed_callbacks);
        drop(removed_watches);
        drop(entries);
        count
    }

    /// Registers a callback of the library's own, run once by the finishing thread (at
    /// once if finished). Does not count as observing a failure.
    pub(crate) fn on_done_internal(&self, callback: InternalCallback<K>) -> Result<(), Error> {
        if !self.peek().is_final() {
            if self.completion().owner.orphaned() {
                return Err(Error::NotRunning);
            }
            let mut inner = self.lock();
            if !inner.stage.is_final() {
                inner.push_callback(Registration::Internal(callback));
                return Ok(());
            }
        }
        callback(self);
        Ok(())
    }

    /// Records progress and queues a delivery for each watch that has none pending.
    pub(crate) fn set_progress(&self, done: u64, total: u64) {
        let mut inner = self.lock();
        let cold = inner.cold();
        cold.progress = (done, total);
        if cold.watches.is_empty() || cold.progress_over {
            return;
        }
        let mut notify = Vec::new();
        let mut notify_none = Vec::new();
        let mut refused = Vec::new();
        for i in 0..cold.watches.len() {
            if cold.watches[i].queued {
                continue; // coalesced: the queued delivery will read these values
            }
            // A queue that is gone delivers nothing any more.
            let Some(queue) = cold.watches[i].queue.upgrade() else {
                continue;
            };
            let entry = Entry::to(self.handle().into_target(), cold.watches[i].tag);
            match queue.push(entry) {
                Ok(edge) => {
                    cold.watches[i].queued = true;
                    if edge {
                        notify.push(queue);
                        continue;
                    }
                }
                Err(entry) => refused.push(entry),
            }
            // Dropped after the lock, with the others: never the queue's last
            // reference under this future's lock.
            notify_none.push(queue);
        }
        drop(inner);
        drop(refused);
        drop(notify_none);
        for queue in notify {
            queue.call_notify();
        }
    }

    /// Runs the queued delivery `tag`: a done callback, or a progress callback with the
    /// latest values unless a done callback has started. Returns whether it called.
    fn deliver(&self, tag: u64) -> bool {
        let mut inner = self.lock();
        // A finish that raised the queue's descriptor without holding the lock has yet
        // to publish the outcome (see `finish_locked`): it is about to, on a thread that
        // is running. A few yields let it; past them, sleep until it wakes the waiters.
        let mut yields = 0;
        while inner.raising {
            if yields < FINISHING_YIELDS {
                yields += 1;
                drop(inner);
                crate::sync::yield_now();
                inner = self.lock();
            } else {
                inner.waiters += 1;
                inner = match self.completion().finished.wait(inner) {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                };
                inner.waiters -= 1;
            }
        }
        let Some(cold) = inner.cold.as_mut() else {
            return false;
        };
        if let Some(at) = cold.queued.iter().position(|(t, _, _)| *t == tag) {
            let (_, _, callback) = cold.queued.remove(at);
            // Under the lock the finish published its status with: the callback sees
            // the final state, and no progress comes after it.
            cold.progress_over = true;
            drop(inner);
            K::call(callback, self);
            return true;
        }
        let (progress, over) = (cold.progress, cold.progress_over);
        let found = cold
            .watches
            .iter_mut()
            .find(|w| w.tag == tag)
            .and_then(|w| {
                w.queued = false;
                (!over).then(|| w.callback.clone())
            });
        drop(inner);
        match found {
            Some(callback) => {
                K::call_progress(&callback, self, progress.0, progress.1);
                true
            }
            None => false,
        }
    }

    /// A delivery that will not run: its done callback (if still here) is dropped,
    /// and its watch may queue again.
    fn discard(&self, tag: u64) {
        let dropped = {
            let mut inner = self.lock();
            let Some(cold) = inner.cold.as_mut() else {
                return;
            };
            if let Some(watch) = cold.watches.iter_mut().find(|w| w.tag == tag) {
                watch.queued = false;
            }
            cold.queued
                .iter()
                .position(|(t, _, _)| *t == tag)
                .map(|at| cold.queued.remove(at))
        };
        drop(dropped);
    }

    /// This handle, as the reference a queued delivery holds (it keeps the value).
    pub(super) fn into_target(self) -> Arc<dyn Target> {
        let completion: Arc<dyn Target> = self.completion().clone();
        if self.counts_as_holder() {
            // The holder count passes to the delivery, which gives it back when it runs
            // or is dropped.
            self.completion().holders.fetch_add(1, Ordering::SeqCst);
        }
        drop(self);
        completion
    }

    /// This future's address as queues know it (see `CompletionQueue::remove`).
    fn target_address(&self) -> *const () {
        Arc::as_ptr(self.completion()).cast::<()>()
    }
}

impl<K: Kind> Target for super::state::Completion<K> {
    fn deliver(self: Arc<Self>, tag: u64) -> bool {
        // The entry's holder count is this handle's now: dropping it after the call
        // may release the value, here.
        Future::from_completion(self, true).deliver(tag)
    }

    fn discard(self: Arc<Self>, tag: u64) {
        Future::from_completion(self, true).discard(tag)
    }
}

/// Done callbacks waiting to run on this thread, one after the other.
type AfterCallbacks = std::collections::VecDeque<Box<dyn FnOnce()>>;

/// The done callbacks of finishes on this thread (one thread-local, so that a finish
/// looks it up twice, not once per field).
struct After {
    /// This thread is running the done callbacks of a finish: futures finished
    /// meanwhile (by those callbacks, or by the library's own, which finish chained and
    /// combined futures) queue theirs in `queue`, and the outermost finish runs them
    /// once the current callback returns. Completion never recurses, so chains and
    /// nested combinations of any length cannot overflow the stack.
    draining: std::cell::Cell<bool>,
    queue: std::cell::RefCell<AfterCallbacks>,
}

impl After {
    const fn new() -> After {
        After {
            draining: std::cell::Cell::new(false),
            queue: std::cell::RefCell::new(AfterCallbacks::new()),
        }
    }

    /// The next callbacks waiting; with none left, the drain is over.
    fn next(&self) -> Option<Box<dyn FnOnce()>> {
        let next = self.queue.borrow_mut().pop_front();
        if next.is_none() {
            self.draining.set(false);
        }
        next
    }
}

#[cfg(not(asyncbridge_loom))]
std::thread_local! {
    static AFTER: After = const { After::new() };
}
// loom runs its threads on one OS thread, so it brings its own locals.
#[cfg(asyncbridge_loom)]
loom::thread_local! {
    static AFTER: After = After::new();
}

/// Runs `callbacks` now, or, when this thread is already running done callbacks, as
/// soon as the one running returns (before the outermost finish returns).
pub(super) fn run_unnested<F: FnOnce() + 'static>(callbacks: F) {
    let mut callbacks = Some(callbacks);
    let nested = AFTER.try_with(|after| {
        if after.draining.get() {
            if let Some(callbacks) = callbacks.take() {
                after.queue.borrow_mut().push_back(Box::new(callbacks));
            }
            true
        } else {
            after.draining.set(true);
            false
        }
    });
    let Some(callbacks) = callbacks else { return };
    if nested.is_err() {
        // This thread's locals are being destroyed (it is exiting): run them here.
        callbacks();
        return;
    }
    /// Ends the drain if a Rust callback's panic escapes it, running what is left
    /// rather than losing it.
    struct Drained(bool);
    impl Drop for Drained {
        fn drop(&mut self) {
            if self.0 {
                return;
            }
            while let Ok(Some(callbacks)) = AFTER.try_with(After::next) {
                let _ = catch_unwind(AssertUnwindSafe(callbacks));
            }
        }
    }
    let mut drained = Drained(false);
    callbacks();
    while let Some(callbacks) = AFTER.with(After::next) {
        callbacks();
    }
    drained.0 = true;
}
