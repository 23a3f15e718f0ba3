//! Work chained after a future.

use crate::future::{Future, Kind};
use crate::sched::{Placement, Queued, Rejected};
use crate::status::Error;
use crate::sync::Arc;

impl<K: Kind> Future<K> {
    /// Runs `work` on this future's bridge once this future has finished, whatever
    /// its outcome; returns the new future for it.
    ///
    /// Cancelling the new future before this one finishes cancels only the new one
    /// (its work is dropped unrun). If this future's bridge is shut down (now or before
    /// this finishes), the new future ends `Cancelled` and its work is dropped unrun.
    /// Refused by `max_pending` (`Error::Busy`), in a fork child (`Error::NotRunning`),
    /// and for a future that belongs to no bridge (`Error::Invalid`: a combination of
    /// no inputs, or of inputs that belong to none), which has nothing to run on.
    pub fn then(
        &self,
        work: K::Work,
        placement: Placement,
    ) -> Result<Future<K>, Rejected<K::Work>> {
        self.then_with(|_| work, placement)
    }

    /// Like [`Future::then`], with the work made from this future (a handle to it,
    /// which the work may keep, for example to read its value) when it is chained.
    pub fn then_with(
        &self,
        make_work: impl FnOnce(Future<K>) -> K::Work,
        placement: Placement,
    ) -> Result<Future<K>, Rejected<K::Work>> {
        let work = make_work(self.handle());
        let owner = self.owner().clone();
        if !owner.has_sched() {
            return Err(Rejected {
                error: Error::Invalid,
                work,
            });
        }
        if owner.orphaned() {
            return Err(Rejected {
                error: Error::NotRunning,
                work,
            });
        }
        if let Err(error) = owner.admit() {
            return Err(Rejected { error, work });
        }
        let next = Future::<K>::waiting(owner.clone(), Some(work));
        let item: Arc<dyn Queued> = next.as_arc().clone();
        let schedule = move |_: &Future<K>| {
            let refused = match owner.sched() {
                Some(sched) if sched.is_running() => sched.push(item.clone(), placement).is_err(),
                _ => true,
            };
            if refused {
                item.cancel_queued();
            }
        };
        if let Err(error) = self.on_done_internal(Box::new(schedule)) {
            // A fork child: nothing was registered; take the work back.
            return match next.take_queued_work() {
                Some(work) => {
                    next.owner().retract();
                    Err(Rejected { error, work })
                }
                None => Ok(next),
            };
        }
        Ok(next)
    }
}
