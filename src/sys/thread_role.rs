//! What the calling thread is to the bridges of this process.
//!
//! Deadlock detection rests on this: a loop thread that blocks waiting for a future
//! may be the very thread that has to run the work, so waits there are refused.

use std::cell::Cell;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A thread the library did not create.
    Foreign,
    /// A thread that drives the async runtime of bridge `id`.
    Loop(u64),
    /// A thread of bridge `id`'s blocking pool, where waiting is allowed.
    Blocking(u64),
}

thread_local! {
    static ROLE: Cell<Role> = const { Cell::new(Role::Foreign) };
    /// The bridge whose shutdown this thread is running (0: none).
    static STOPPING: Cell<u64> = const { Cell::new(0) };
}

/// Marks the calling thread as running bridge `id`'s shutdown until the guard drops.
///
/// Shutdown runs done callbacks of the futures it cancels; one of them calling
/// shutdown again on this thread must not wait for itself.
pub(crate) fn stopping(id: u64) -> impl Drop {
    struct Reset(u64);
    impl Drop for Reset {
        fn drop(&mut self) {
            STOPPING.with(|s| s.set(self.0));
        }
    }
    Reset(STOPPING.with(|s| s.replace(id)))
}

/// Whether the calling thread is inside bridge `id`'s shutdown.
pub(crate) fn is_stopping(id: u64) -> bool {
    STOPPING.with(|s| s.get() == id)
}

/// Marks the calling thread as a loop thread of bridge `id`.
pub(crate) fn enter_loop(id: u64) {
    ROLE.with(|r| r.set(Role::Loop(id)));
}

/// Marks the calling thread as a blocking-pool thread of bridge `id`.
pub(crate) fn enter_blocking(id: u64) {
    ROLE.with(|r| r.set(Role::Blocking(id)));
}

/// Whether the calling thread is a loop thread of any bridge.
pub(crate) fn on_any_loop() -> bool {
    ROLE.with(|r| matches!(r.get(), Role::Loop(_)))
}

/// Whether the calling thread is a loop thread of bridge `id`.
pub(crate) fn on_loop_of(id: u64) -> bool {
    ROLE.with(|r| r.get() == Role::Loop(id))
}

/// Whether the calling thread belongs to bridge `id` at all (loop or blocking pool).
pub(crate) fn belongs_to(id: u64) -> bool {
    ROLE.with(|r| matches!(r.get(), Role::Loop(b) | Role::Blocking(b) if b == id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_per_thread() {
        std::thread::spawn(|| {
            assert!(!on_any_loop() && !belongs_to(7));
            enter_loop(7);
            assert!(on_any_loop() && on_loop_of(7) && !on_loop_of(8) && belongs_to(7));
            enter_blocking(7);
            assert!(!on_any_loop() && belongs_to(7) && !belongs_to(8));
        })
        .join()
        .unwrap();
        assert!(!on_any_loop());
    }
}
