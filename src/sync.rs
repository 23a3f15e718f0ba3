//! The synchronisation primitives of the core, swapped for loom's under
//! `--cfg asyncbridge_loom` so the completion state machine can be model-checked.
//!
//! The cfg is not plain `loom` because tokio reacts to that name and would then
//! expect loom itself.

#[cfg(asyncbridge_loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering},
    Condvar, Mutex, MutexGuard,
};
#[cfg(not(asyncbridge_loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering},
    Condvar, Mutex, MutexGuard,
};
// Reference counts stay std's under loom too: the objects they keep are handed around
// as trait objects with `Arc<Self>` receivers, which loom's Arc cannot be. What loom
// checks is the completion protocol, whose counts (`holders`) are its atomics.
pub(crate) use std::sync::{Arc, Weak};

/// Names the calling thread (under loom, the modelled thread: loom runs them all on
/// one OS thread).
#[cfg(asyncbridge_loom)]
pub(crate) fn current_thread() -> loom::thread::ThreadId {
    loom::thread::current().id()
}
/// Names the calling thread.
#[cfg(not(asyncbridge_loom))]
pub(crate) fn current_thread() -> std::thread::ThreadId {
    std::thread::current().id()
}
/// What [`current_thread`] returns.
#[cfg(asyncbridge_loom)]
pub(crate) type ThreadId = loom::thread::ThreadId;
/// What [`current_thread`] returns.
#[cfg(not(asyncbridge_loom))]
pub(crate) type ThreadId = std::thread::ThreadId;

/// Keeps `T` on cache lines of its own (two 64-byte lines: x86's adjacent-line
/// prefetch pairs them), so that writes to it do not take neighbouring data's line
/// away from the threads that use that data.
#[repr(align(128))]
pub(crate) struct CachePadded<T>(T);

impl<T> CachePadded<T> {
    pub(crate) const fn new(value: T) -> CachePadded<T> {
        CachePadded(value)
    }
}

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Lets another thread run (under loom, another modelled thread).
pub(crate) fn yield_now() {
    #[cfg(asyncbridge_loom)]
    loom::thread::yield_now();
    #[cfg(not(asyncbridge_loom))]
    std::thread::yield_now();
}

/// Locks `mutex`, ignoring poisoning.
///
/// Every critical section in this crate leaves its data consistent before it can
/// panic, so a panic on one thread must not wedge every later call on the others.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Locks `mutex` only if that can be done without blocking.
///
/// Used in a fork child, where a lock may be held by a thread that no longer exists.
pub(crate) fn try_lock<T>(mutex: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    // loom's try_lock answers with std's error type too.
    use std::sync::TryLockError;
    match mutex.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// Who runs which callback, and which thread waits for which callback to return,
/// for callers that wait for a running callback before they go on (a source's stop, a
/// promise's settle). A wait that would close a cycle of waits would never end; such a
/// caller asks [`WaitGraph::would_wait_for_itself`] and does not wait.
///
/// `O` names the objects whose callbacks run, `T` the threads.
pub(crate) struct WaitGraph<O, T> {
    /// (object, thread running its callback).
    running: Vec<(O, T)>,
    /// (waiting thread, object whose running callback it waits for).
    waits: Vec<(T, O)>,
}

impl<O: Copy + PartialEq, T: Copy + PartialEq> WaitGraph<O, T> {
    pub(crate) const fn new() -> WaitGraph<O, T> {
        WaitGraph {
            running: Vec::new(),
            waits: Vec::new(),
        }
    }

    /// `thread` runs `object`'s callback, until [`WaitGraph::returned`].
    pub(crate) fn running(&mut self, object: O, thread: T) {
        self.running.push((object, thread));
    }

    pub(crate) fn returned(&mut self, object: O, thread: T) {
        remove(&mut self.running, (object, thread));
    }

    /// `thread` waits for `object`'s running callback, until [`WaitGraph::waited`].
    /// Registered under the same lock as the check before it, so of two waits that
    /// would close a cycle, the second sees the first.
    pub(crate) fn waiting(&mut self, thread: T, object: O) {
        self.waits.push((thread, object));
    }

    pub(crate) fn waited(&mut self, thread: T, object: O) {
        remove(&mut self.waits, (thread, object));
    }

    /// Whether `thread` waiting for `object`'s running callback would wait for itself:
    /// the thread running it is `thread`, or waits (through other waits) for a
    /// callback that `thread` is running.
    pub(crate) fn would_wait_for_itself(&self, thread: T, object: O) -> bool {
        let mut object = object;
        // Each step follows one registered wait; more steps than waits is a cycle.
        for _ in 0..=self.waits.len() {
            let Some(&(_, runner)) = self.running.iter().find(|(o, _)| *o == object) else {
                return false;
            };
            if runner == thread {
                return true;
            }
            match self.waits.iter().find(|(t, _)| *t == runner) {
                Some(&(_, next)) => object = next,
                None => return false,
            }
        }
        true
    }
}

fn remove<I: PartialEq>(list: &mut Vec<I>, item: I) {
    if let Some(at) = list.iter().position(|x| *x == item) {
        list.swap_remove(at);
    }
}
