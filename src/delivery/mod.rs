//! Delivery on the application's threads: completion queues and what they run.
//!
//! A queue knows nothing of futures or sources. What it holds is an `Entry`: either
//! a call into an object that keeps its own callbacks (a future's done or progress
//! callback, a source's tick), named by the object and a tag, or a function posted to
//! the queue. The object decides at delivery what runs; a withdrawn callback simply
//! finds nothing to run.

pub mod queue;
pub mod stream;

use crate::sync::Arc;

/// An object whose callbacks a queue delivers. Each queued entry holds one reference,
/// which passes to [`Target::deliver`] or [`Target::discard`], exactly one of them.
pub(crate) trait Target: Send + Sync {
    /// Runs the callback `tag` names, on the dispatching thread; returns whether a
    /// callback was called.
    fn deliver(self: Arc<Self>, tag: u64) -> bool;

    /// The entry for `tag` is dropped without running (refused, or withdrawn).
    fn discard(self: Arc<Self>, tag: u64);
}

/// A function posted to a queue. Dropping it unrun must release what it owns.
pub(crate) type Posted = Box<dyn FnOnce() + Send>;

enum Delivery {
    To(Arc<dyn Target>, u64),
    Post(Posted),
}

/// One delivery waiting in a queue.
pub(crate) struct Entry(Option<Delivery>);

impl Entry {
    /// A delivery of `target`'s callback `tag`; the reference passes to the entry.
    pub(crate) fn to(target: Arc<dyn Target>, tag: u64) -> Entry {
        Entry(Some(Delivery::To(target, tag)))
    }

    /// A posted function.
    pub(crate) fn post(call: Posted) -> Entry {
        Entry(Some(Delivery::Post(call)))
    }

    /// Runs the delivery; returns whether a callback was called.
    pub(crate) fn run(mut self) -> bool {
        match self.0.take() {
            Some(Delivery::To(target, tag)) => target.deliver(tag),
            Some(Delivery::Post(call)) => {
                call();
                true
            }
            None => false,
        }
    }

    /// Whether this is the delivery of `target`'s callback `tag` (`target` compared by
    /// address).
    pub(crate) fn is(&self, target: *const (), tag: u64) -> bool {
        match &self.0 {
            Some(Delivery::To(t, g)) => {
                *g == tag && std::ptr::eq(Arc::as_ptr(t).cast::<()>(), target)
            }
            _ => false,
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        match self.0.take() {
            Some(Delivery::To(target, tag)) => target.discard(tag),
            Some(Delivery::Post(call)) => drop(call),
            None => {}
        }
    }
}
