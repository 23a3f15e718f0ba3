//! Futures that combine others: all, any.

use std::sync::atomic::{AtomicBool, AtomicUsize};

use crate::future::{Failure, Future, Kind, Outcome};
use crate::sched::Owner;
use crate::status::{Error, Status};
use crate::sync::{Arc, Ordering};

impl<K: Kind> Future<K> {
    /// A future that ends `Ok` when every input has ended `Ok`; `Failed` (with that
    /// input's code and message) as soon as one fails; otherwise `Cancelled` as soon
    /// as one is cancelled. Inputs are never cancelled by it; they may come from
    /// different bridges, and may be released by the caller right away. With no
    /// inputs it ends `Ok` at once. Its value is none.
    pub fn all(inputs: &[Future<K>]) -> Result<Future<K>, Error> {
        let combined = Future::<K>::combined(inputs)?;
        if inputs.is_empty() {
            combined.finish(Outcome::Ok(None));
            return Ok(combined);
        }
        let remaining = Arc::new(AtomicUsize::new(inputs.len()));
        for input in inputs {
            let (target, remaining) = (combined.internal(), remaining.clone());
            let step = move |done: &Future<K>| match done.peek() {
                Status::Ok => {
                    if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                        target.finish(Outcome::Ok(None));
                    }
                }
                Status::Failed => {
                    let failure = done
                        .failure_unobserved()
                        .cloned()
                        .unwrap_or_else(|| Failure::from_code(0));
                    // Only a failure the combination ends with is handed on: looking
                    // at the combination is looking at it, and the input is not
                    // reported again. One that comes after the combination finished
                    // (another failure first, a cancellation) is the input's own.
                    if target.finish(Outcome::Failed(failure)) {
                        done.mark_observed();
                    }
                }
                _ => {
                    target.finish(Outcome::Cancelled);
                }
            };
            input.on_done_internal(Box::new(step))?;
        }
        Ok(combined)
    }

    /// A future that ends `Ok` as soon as the first input ends, whatever that input's
    /// outcome; its value is `value_of(index)` of that input. Inputs are never
    /// cancelled by it. No inputs is `Error::Invalid`.
    pub fn any(
        inputs: &[Future<K>],
        value_of: impl Fn(usize) -> K::Value + Send + Sync + 'static,
    ) -> Result<Future<K>, Error> {
        if inputs.is_empty() {
            return Err(Error::Invalid);
        }
        let combined = Future::<K>::combined(inputs)?;
        let value_of = Arc::new(value_of);
        let decided = Arc::new(AtomicBool::new(false));
        for (index, input) in inputs.iter().enumerate() {
            let (target, value_of, decided) =
                (combined.internal(), value_of.clone(), decided.clone());
            let step = move |_: &Future<K>| {
                // Only the first makes a value: a later one would be made and dropped.
                if !decided.swap(true, Ordering::AcqRel) {
                    target.finish(Outcome::Ok(Some(value_of(index))));
                }
            };
            input.on_done_internal(Box::new(step))?;
        }
        Ok(combined)
    }

    /// A new future for a combination of `inputs`, kept by a bookkeeping companion of
    /// the first input's bridge (same unhandled-error hook, counted apart).
    fn combined(inputs: &[Future<K>]) -> Result<Future<K>, Error> {
        // The first input that belongs to a bridge (a combination of nothing belongs
        // to none) lends its hook and bridge.
        let lender = inputs
            .iter()
            .find(|f| f.owner().sched().is_some())
            .or(inputs.first());
        let owner = match lender {
            Some(input) => input.owner().companion(),
            None => Owner::new(0, None),
        };
        if inputs
            .iter()
            .any(|f| !f.peek().is_final() && f.owner().orphaned())
        {
            return Err(Error::NotRunning);
        }
        let owner = Arc::new(owner);
        owner.admit()?;
        Ok(Future::waiting(owner, None))
    }
}
