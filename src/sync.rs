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
