//! Promises: futures completed by their holder rather than by work the bridge runs.
//!
//! This is how a callback-based API (a C library that reports completion through a
//! callback, a device SDK) becomes a future: make a promise, hand the future out, and
//! settle the promise from the callback. The future behaves like any other: waits,
//! callbacks, queues, then/all/any, timeouts, and shutdown, which asks the holder to
//! stop through the promise's cancel callback.
//!
//! ```
//! use asyncbridge::{Boxed, Bridge, Config, Status};
//! use std::time::Duration;
//!
//! let bridge = Bridge::start(Config::default()).unwrap();
//! let (promise, future) = bridge.promise::<Boxed<String>>().unwrap();
//! // The producer: any thread, any callback API's completion.
//! std::thread::spawn(move || promise.resolve(Some("done".to_owned())));
//! assert_eq!(future.wait(Some(Duration::from_secs(10))), Ok(Status::Ok));
//! assert_eq!(future.take_value().as_deref(), Some("done"));
//! ```

use crate::future::{CancelCallback, Failure, Future, Kind, Outcome};
use crate::sched::{Owner, Pending};
use crate::status::Error;
use crate::sync::{Arc, Weak};

/// The producer's side of a future: settled exactly once, by [`Promise::resolve`],
/// [`Promise::fail`], or dropping it.
///
/// Dropping an unsettled promise fails its future with `Error::Abandoned`, or ends it
/// `Cancelled` if cancellation had been requested. Every method may be called from
/// any thread.
pub struct Promise<K: Kind> {
    /// Does not keep the future's value alive: the future's handles do.
    future: Future<K>,
    /// The promise's place in its owner's pending registry, which shutdown reads.
    slot: usize,
    settled: bool,
}

/// The code a promise fails with when given `code`: failing always fails, so 0 is 1.
fn failing(code: i32) -> i32 {
    if code == 0 {
        1
    } else {
        code
    }
}

/// The message of a future whose promise was dropped unsettled.
const ABANDONED: &str = "the promise was freed without being resolved";

impl<K: Kind> Promise<K> {
    /// A new promise of `owner`'s and its future (the caller's one handle). Counts as
    /// a submission: refused with `Error::Busy` at `max_pending`.
    pub(crate) fn new(owner: &Arc<Owner>) -> Result<(Promise<K>, Future<K>), Error> {
        owner.admit()?;
        let future = Future::<K>::held(owner.clone());
        let pending: Weak<dyn Pending> = Arc::downgrade(future.as_arc()) as Weak<dyn Pending>;
        let slot = match owner.register(pending) {
            Ok(slot) => slot,
            Err(error) => {
                // Shutdown got there first. The future, never seen, goes unfinished.
                owner.retract();
                return Err(error);
            }
        };
        let promise = Promise {
            future: future.internal(),
            slot,
            settled: false,
        };
        Ok((promise, future))
    }

    /// Resolves the future `Ok` with `value` (or none). If cancellation was requested
    /// first, the future ends as requested (`Cancelled`, or `Failed` for a timeout)
    /// and `value` is dropped here, at once.
    pub fn resolve(mut self, value: Option<K::Value>) {
        self.settle(Outcome::Ok(value));
    }

    /// Fails the future with `code` (0 counts as 1: failing always fails) and
    /// `message`; if cancellation was requested first, it ends as requested.
    pub fn fail(self, code: i32, message: impl Into<Vec<u8>>) {
        self.fail_with(Failure::new(code, message));
    }

    /// Fails the future with `code` (0 counts as 1) and a default message naming it.
    pub fn fail_code(self, code: i32) {
        self.fail_with(Failure::from_code(failing(code)));
    }

    /// Fails the future with `failure`, as [`Promise::fail`] does (code 0 counts as 1).
    pub fn fail_with(mut self, failure: Failure) {
        let code = failing(failure.code());
        let failure = if code == failure.code() {
            failure
        } else {
            Failure::new(code, failure.message().to_bytes())
        };
        self.settle(Outcome::Failed(failure));
    }

    /// Whether cancellation was requested (`Future::cancel`, a timeout, shutdown).
    pub fn is_cancelled(&self) -> bool {
        self.future.is_cancel_requested()
    }

    /// Registers the callback that a cancellation request runs, once, on the
    /// requesting thread (the caller of `cancel`, of shutdown, or a bridge thread for
    /// a timeout); at once on this thread if cancellation was already requested. It
    /// may settle the promise itself. A second registration is `Error::Invalid` (and
    /// drops `callback`). Once the promise is settled the callback is not running and
    /// never runs; it is dropped then.
    pub fn on_cancel(&self, callback: CancelCallback) -> Result<(), Error> {
        // A handle of its own: the callback may settle (and so free) this promise.
        let future = self.future.internal();
        future.on_cancel(callback)
    }

    /// A handle for registering the cancel callback without borrowing the promise
    /// meanwhile (a C caller's callback may free the promise before it returns).
    #[cfg_attr(not(feature = "c-api"), allow(dead_code))]
    pub(crate) fn registration_handle(&self) -> Future<K> {
        self.future.internal()
    }

    /// Reports progress, read by `Future::progress` and delivered to progress
    /// callbacks.
    pub fn set_progress(&self, done: u64, total: u64) {
        self.future.set_progress(done, total);
    }

    /// A new handle to the promise's future.
    pub fn future(&self) -> Future<K> {
        self.future.handle()
    }

    fn settle(&mut self, outcome: Outcome<K::Value>) {
        self.settled = true;
        self.future.owner().unregister(self.slot);
        self.future.settle(outcome);
    }
}

impl<K: Kind> Drop for Promise<K> {
    fn drop(&mut self) {
        if !self.settled {
            self.settle(Outcome::Failed(Failure::new(
                Error::Abandoned.code(),
                ABANDONED,
            )));
        }
    }
}

impl<K: Kind> std::fmt::Debug for Promise<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Promise")
            .field("future", &self.future)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

#[cfg(all(test, not(asyncbridge_loom)))]
mod tests {
    use super::*;
    use crate::future::testing::Counted;
    use crate::future::Boxed;
    use crate::status::Status;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    type K = Boxed<Counted>;
    const LONG: Option<Duration> = Some(Duration::from_secs(30));

    fn new_promise() -> (Promise<K>, Future<K>) {
        Promise::new(&Arc::new(Owner::new(0, None))).unwrap()
    }

    #[test]
    fn resolved_from_another_thread_with_its_value() {
        let drops = Arc::new(AtomicUsize::new(0));
        let (promise, future) = new_promise();
        let d = drops.clone();
        let holder = std::thread::spawn(move || promise.resolve(Some(Counted(d))));
        assert_eq!(future.wait(LONG), Ok(Status::Ok));
        holder.join().unwrap();
        assert!(future.with_value(|_| ()).is_some());
        assert_eq!(future.owner().stats().pending, 0);
        drop(future);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn failing_always_fails() {
        let (promise, future) = new_promise();
        promise.fail(0, "zero is not success");
        assert_eq!(future.status(), Status::Failed);
        let failure = future.failure().unwrap();
        assert_eq!(
            (failure.code(), failure.message()),
            (1, c"zero is not success")
        );
    }

    #[test]
    fn dropped_unsettled_is_abandoned_or_cancelled() {
        let (promise, future) = new_promise();
        drop(promise);
        assert_eq!(future.status(), Status::Failed);
        assert_eq!(future.failure().unwrap().code(), Error::Abandoned.code());

        let (promise, future) = new_promise();
        assert_eq!(future.cancel(), Ok(Status::Ok));
        assert_eq!(
            future.status(),
            Status::Pending,
            "cancelled once the holder stops"
        );
        assert!(promise.is_cancelled());
        drop(promise);
        assert_eq!(future.status(), Status::Cancelled);
    }

    #[test]
    fn a_value_resolved_after_a_cancel_is_dropped_at_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let (promise, future) = new_promise();
        future.cancel().unwrap();
        promise.resolve(Some(Counted(drops.clone())));
        assert_eq!(drops.load(Ordering::SeqCst), 1, "while a handle is held");
        assert_eq!(future.status(), Status::Cancelled);
    }

    #[test]
    fn one_cancel_callback_on_the_requesting_thread_or_at_once() {
        let (promise, future) = new_promise();
        let ran_on = Arc::new(std::sync::Mutex::new(Vec::new()));
        let r = ran_on.clone();
        promise
            .on_cancel(Box::new(move || {
                r.lock().unwrap().push(std::thread::current().id())
            }))
            .unwrap();
        assert_eq!(promise.on_cancel(Box::new(|| {})), Err(Error::Invalid));
        let canceller = std::thread::spawn(move || {
            future.cancel().unwrap();
            (std::thread::current().id(), future)
        });
        let (canceller_id, future) = canceller.join().unwrap();
        assert_eq!(*ran_on.lock().unwrap(), vec![canceller_id]);
        promise.resolve(None);
        assert_eq!(future.status(), Status::Cancelled);

        // Registered after the request: at once, here.
        let (promise, future) = new_promise();
        future.cancel().unwrap();
        let r = ran_on.clone();
        promise
            .on_cancel(Box::new(move || {
                r.lock().unwrap().push(std::thread::current().id())
            }))
            .unwrap();
        assert_eq!(ran_on.lock().unwrap()[1], std::thread::current().id());
        drop(promise);
        assert_eq!(future.status(), Status::Cancelled);
    }

    #[test]
    fn an_unused_cancel_callback_is_dropped_by_the_settle() {
        let drops = Arc::new(AtomicUsize::new(0));
        let (promise, future) = new_promise();
        let token = Counted(drops.clone());
        promise
            .on_cancel(Box::new(move || {
                let _token = token;
                panic!("never cancelled");
            }))
            .unwrap();
        promise.resolve(None);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_eq!(future.status(), Status::Ok);
    }

    /// Two promises whose cancel callbacks settle each other's promise, cancelled at
    /// once from two threads: each settle used to wait for the other's callback, which
    /// was waiting for it, for ever.
    #[test]
    fn cancel_callbacks_settling_each_other_do_not_deadlock() {
        use std::sync::{Barrier, Mutex as StdMutex};
        for _ in 0..50 {
            let (p1, f1) = new_promise();
            let (p2, f2) = new_promise();
            let slots: [Arc<StdMutex<Option<Promise<K>>>>; 2] = [
                Arc::new(StdMutex::new(Some(p1))),
                Arc::new(StdMutex::new(Some(p2))),
            ];
            let inside = Arc::new(Barrier::new(2));
            for (me, other) in [(0, 1), (1, 0)] {
                let (other, inside) = (slots[other].clone(), inside.clone());
                let target = slots[me]
                    .lock()
                    .unwrap()
                    .as_ref()
                    .unwrap()
                    .registration_handle();
                target
                    .on_cancel(Box::new(move || {
                        // Both callbacks are running before either settles.
                        inside.wait();
                        if let Some(promise) = other.lock().unwrap().take() {
                            promise.resolve(None);
                        }
                    }))
                    .unwrap();
            }
            let (g1, g2) = (f1.clone(), f2.clone());
            let a = std::thread::spawn(move || g1.cancel().unwrap());
            let b = std::thread::spawn(move || g2.cancel().unwrap());
            a.join().unwrap();
            b.join().unwrap();
            assert_eq!(f1.wait(LONG), Ok(Status::Cancelled));
            assert_eq!(f2.wait(LONG), Ok(Status::Cancelled));
        }
    }

    /// A promise made just after shutdown asked the registry to stop would never be
    /// asked: it is refused instead.
    #[test]
    fn a_promise_made_after_shutdown_asked_is_refused() {
        let owner = Arc::new(Owner::new(0, None));
        owner.cancel_all();
        assert!(matches!(Promise::<K>::new(&owner), Err(Error::NotRunning)));
        let stats = owner.stats();
        assert_eq!((stats.submitted, stats.pending), (0, 0));
    }
}
