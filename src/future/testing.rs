//! Helpers for the tests of the core (unit tests and loom models alike).

use crate::sched::Owner;
use crate::sync::{Arc, AtomicUsize, Ordering};

/// A value that counts how often it was dropped.
pub(crate) struct Counted(pub(crate) Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Bookkeeping with one future admitted, for a future made by hand.
pub(crate) fn owner() -> Arc<Owner> {
    let owner = Arc::new(Owner::new(0, None));
    owner.admit().unwrap();
    owner
}
