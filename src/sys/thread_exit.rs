//! Work whose thread ends under it.
//!
//! C work may end its own thread: `pthread_exit()`, a thread cancellation, or CPython,
//! which ends any thread that calls into an interpreter that has finished. The C call
//! is made so that nothing unwinds into Rust (`ffi::boundary::call_outermost`): the
//! thread simply ends, and no frame above the work ever returns. What does still
//! happen on that thread is the destruction of its thread locals; the slots below
//! hold what must be finished then.
//!
//! Destructors of thread locals run in the reverse order of their first use on the
//! thread, so a slot armed closer to the work is finished first: the work's argument
//! is freed, then its future resolves, then the pool learns it lost a thread.

use std::cell::Cell;

use crate::sync::Arc;

/// Something running on this thread that must be finished if the thread ends under it.
pub(crate) trait Abandon: Send + Sync {
    /// Called on the ending thread, while its locals are destroyed.
    fn abandon(self: Arc<Self>);
}

/// What a slot holds while something runs.
pub(crate) enum Running {
    /// To be finished on the ending thread.
    Shared(Arc<dyn Abandon>),
    /// Nothing can be finished: the process cannot go on without this thread. The
    /// message is printed and the process aborts.
    Fatal(&'static str),
}

/// One slot: what this thread is running, to finish if it ends meanwhile.
pub(crate) struct Slot(Cell<Option<Running>>);

impl Slot {
    pub(crate) const fn new() -> Slot {
        Slot(Cell::new(None))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        match self.0.get_mut().take() {
            Some(Running::Shared(running)) => running.abandon(),
            Some(Running::Fatal(message)) => {
                eprintln!("asyncbridge: {message}");
                std::process::abort();
            }
            None => {}
        }
    }
}

/// Keeps `running` in the thread's slot `key` until the guard drops (the normal way
/// out), when the slot gets back what it held before.
pub(crate) fn arm(key: &'static std::thread::LocalKey<Slot>, running: Running) -> Armed {
    let previous = key
        .try_with(|slot| slot.0.replace(Some(running)))
        .ok()
        .flatten();
    Armed { key, previous }
}

/// Restores a slot when what it guarded returned normally.
pub(crate) struct Armed {
    key: &'static std::thread::LocalKey<Slot>,
    previous: Option<Running>,
}

impl Drop for Armed {
    fn drop(&mut self) {
        let previous = self.previous.take();
        let _ = self.key.try_with(|slot| slot.0.set(previous));
    }
}
