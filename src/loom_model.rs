//! loom models of the completion state machine: every interleaving of finishing,
//! cancelling, waiting, registering a callback and releasing the last handle.
//!
//! Run with `RUSTFLAGS="--cfg asyncbridge_loom" cargo test --release --lib loom_model`.

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

use crate::delivery::queue::CompletionQueue;
use crate::future::testing::{owner, Counted};
use crate::future::{Boxed, Failure, Future, Outcome};
use crate::status::Status;
use crate::sync::Arc;

type K = Boxed<Counted>;

#[test]
fn finish_races_cancel_one_outcome_value_dropped_once() {
    loom::model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let f = Future::<K>::running(owner());
        let worker = {
            let f = f.clone();
            let drops = drops.clone();
            thread::spawn(move || f.finish(Outcome::Ok(Some(Counted(drops)))))
        };
        let cancelled = f.cancel().unwrap();
        worker.join().unwrap();
        let status = f.status();
        assert!(status == Status::Ok || status == Status::Cancelled);
        // cancel returns Ok on a pending future, or the final status on a finished one.
        assert!(cancelled == Status::Ok || cancelled == status);
        let dropped_early = drops.load(Ordering::SeqCst);
        assert_eq!(dropped_early, usize::from(status == Status::Cancelled));
        drop(f);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn callback_registered_while_finishing_runs_exactly_once() {
    loom::model(|| {
        let calls = Arc::new(AtomicUsize::new(0));
        let f = Future::<K>::running(owner());
        let worker = {
            let f = f.clone();
            thread::spawn(move || f.finish(Outcome::Failed(Failure::new(7, "no"))))
        };
        let c = calls.clone();
        f.on_done(Box::new(move |done: &Future<K>| {
            assert_eq!(done.status(), Status::Failed);
            c.fetch_add(1, Ordering::SeqCst);
        }))
        .unwrap();
        worker.join().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn waiter_never_misses_the_finish() {
    loom::model(|| {
        let f = Future::<K>::running(owner());
        let worker = {
            let f = f.clone();
            thread::spawn(move || f.finish(Outcome::Ok(None)))
        };
        // No limit: a lost wakeup would be a deadlock, which loom reports.
        assert_eq!(f.wait(None), Ok(Status::Ok));
        worker.join().unwrap();
    });
}

#[test]
fn queued_work_runs_or_is_dropped_never_both() {
    loom::model(|| {
        let ran = Arc::new(AtomicUsize::new(0));
        let released = Arc::new(AtomicUsize::new(0));
        let token = Counted(released.clone());
        let r = ran.clone();
        let f = Future::<K>::queued(
            owner(),
            Box::new(move |_job| {
                let _token = token;
                r.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
        );
        let runner = {
            let f = f.clone();
            thread::spawn(move || f.run_queued(&|| {}))
        };
        f.cancel().unwrap();
        runner.join().unwrap();
        let status = f.status();
        assert_eq!(
            released.load(Ordering::SeqCst),
            1,
            "the work is released once"
        );
        match ran.load(Ordering::SeqCst) {
            // Cancelled before it started: dropped unrun.
            0 => assert_eq!(status, Status::Cancelled),
            // Started first: a cancel that came while it ran wins once it returns; one
            // that came after it finished changes nothing.
            1 => assert!(status == Status::Cancelled || status == Status::Ok),
            n => panic!("ran {n} times"),
        }
    });
}

#[test]
fn last_release_races_finish_value_freed_once_at_once() {
    loom::model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let handle = Future::<K>::running(owner());
        let work = handle.internal();
        let releaser = thread::spawn(move || drop(handle));
        work.finish(Outcome::Ok(Some(Counted(drops.clone()))));
        releaser.join().unwrap();
        // Freed by whichever of the two came last, before it returned: the work's own
        // reference does not keep the value alive.
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        drop(work);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn last_release_races_a_failing_finish_reported_once() {
    loom::model(|| {
        let reports = Arc::new(AtomicUsize::new(0));
        let r = reports.clone();
        let owner = Arc::new(crate::sched::Owner::new(
            0,
            Some(Box::new(move |_, _| {
                r.fetch_add(1, Ordering::SeqCst);
            })),
        ));
        owner.admit().unwrap();
        let handle = Future::<K>::running(owner);
        let work = handle.internal();
        let releaser = thread::spawn(move || drop(handle));
        work.finish(Outcome::Failed(Failure::new(5, "nobody looked")));
        releaser.join().unwrap();
        // Whichever came last reported it, once, before returning.
        assert_eq!(reports.load(Ordering::SeqCst), 1);
        drop(work);
        assert_eq!(reports.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn releases_racing_a_finish_that_leaves_nothing() {
    loom::model(|| {
        let handle = Future::<K>::running(owner());
        let second = handle.clone();
        let work = handle.internal();
        let releaser = thread::spawn(move || drop(handle));
        work.finish(Outcome::Ok(None));
        // A handle kept past the finish still reads the outcome.
        assert_eq!(second.status(), Status::Ok);
        assert!(second.with_value(|_| ()).is_none());
        drop(second);
        releaser.join().unwrap();
        assert_eq!(work.status(), Status::Ok);
    });
}

#[test]
fn value_outlives_a_release_racing_its_callback() {
    loom::model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let handle = Future::<K>::running(owner());
        let work = handle.internal();
        let d = drops.clone();
        handle
            .on_done(Box::new(move |f: &Future<K>| {
                // The value is alive for the whole callback, whoever releases meanwhile.
                assert!(f.with_value(|_| ()).is_some());
                assert_eq!(d.load(Ordering::SeqCst), 0);
            }))
            .unwrap();
        let releaser = thread::spawn(move || drop(handle));
        work.finish(Outcome::Ok(Some(Counted(drops.clone()))));
        releaser.join().unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}

fn readable(queue: &CompletionQueue) -> bool {
    let mut pfd = libc::pollfd {
        fd: queue.fd().unwrap(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one valid pollfd without waiting.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

#[test]
fn queue_edge_finishing_races_dispatch() {
    loom::model(|| {
        let queue = Arc::new(CompletionQueue::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let notified = Arc::new(AtomicUsize::new(0));
        let n = notified.clone();
        queue.set_notify(Some(Box::new(move || {
            n.fetch_add(1, Ordering::SeqCst);
        })));
        let futures: Vec<_> = (0..2).map(|_| Future::<K>::running(owner())).collect();
        for f in &futures {
            let c = calls.clone();
            f.on_done_via(
                &queue,
                Box::new(move |done: &Future<K>| {
                    // Queued callbacks see the final state.
                    assert_eq!(done.status(), Status::Ok);
                    c.fetch_add(1, Ordering::SeqCst);
                }),
            )
            .unwrap();
        }
        let finishers: Vec<_> = futures
            .iter()
            .map(|f| {
                let work = f.internal();
                thread::spawn(move || work.finish(Outcome::Ok(None)))
            })
            .collect();
        let mut ran = queue.dispatch(0);
        for t in finishers {
            t.join().unwrap();
        }
        // Quiescent: readable exactly while something is pending.
        assert_eq!(readable(&queue), !queue.is_empty());
        ran += queue.dispatch(0);
        assert_eq!(ran, 2);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "each callback once");
        assert!(!readable(&queue));
        // One notify per empty->non-empty edge (at most one per push), plus one from
        // the first dispatch if it left work behind: never zero, never a storm.
        let notes = notified.load(Ordering::SeqCst);
        assert!((1..=3).contains(&notes), "{notes} notifications");
    });
}

#[test]
fn a_future_seen_finished_has_its_queue_readable() {
    // The finish raises the queue's descriptor with no lock held, but before the
    // outcome is published: whoever sees the future finished and then polls the
    // descriptor finds it readable (a waiter and a poller agree).
    loom::model(|| {
        let queue = Arc::new(CompletionQueue::new());
        let future = Future::<K>::running(owner());
        future
            .on_done_via(&queue, Box::new(|_: &Future<K>| {}))
            .unwrap();
        let work = future.internal();
        let finisher = thread::spawn(move || work.finish(Outcome::Ok(None)));
        if future.status() == Status::Ok {
            assert!(readable(&queue));
        }
        finisher.join().unwrap();
        assert_eq!(future.status(), Status::Ok);
        assert!(readable(&queue));
        assert_eq!(queue.dispatch(0), 1);
        assert!(!readable(&queue));
    });
}

#[test]
fn queue_freed_once_its_future_is_seen_finished_still_runs_the_callback() {
    // An owner that sees the future finished (by wait or status) and then frees the
    // queue must find the callback there: freeing runs what is queued, and a delivery
    // that came later would be dropped.
    loom::model(|| {
        let queue = Arc::new(CompletionQueue::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let f = Future::<K>::running(owner());
        let c = calls.clone();
        f.on_done_via(
            &queue,
            Box::new(move |done: &Future<K>| {
                assert_eq!(done.status(), Status::Ok);
                c.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
        let work = f.internal();
        let finisher = thread::spawn(move || work.finish(Outcome::Ok(None)));
        while !f.status().is_final() {
            thread::yield_now();
        }
        queue.close();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the callback ran in the close"
        );
        finisher.join().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    });
}

/// A future finished inside another's callback (as a chain or a combination does) runs
/// its callbacks after that callback, on the same thread; a cancel racing from another
/// thread must still leave one outcome and one call of each callback.
#[test]
fn a_future_finished_inside_a_callback_calls_back_once() {
    loom::model(|| {
        let first = Future::<K>::running(owner());
        let second = Future::<K>::running(owner());
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        second
            .on_done(Box::new(move |_: &Future<K>| {
                c.fetch_add(1, Ordering::SeqCst);
            }))
            .unwrap();
        let inner = second.clone();
        first
            .on_done(Box::new(move |_: &Future<K>| {
                inner.finish(Outcome::Ok(None));
            }))
            .unwrap();
        let canceller = {
            let second = second.clone();
            thread::spawn(move || second.cancel().unwrap())
        };
        first.finish(Outcome::Ok(None));
        canceller.join().unwrap();
        let status = second.status();
        assert!(status == Status::Ok || status == Status::Cancelled);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    });
}

/// A timeout and the work's own finish race: the future ends with the work's value
/// or timed out, never cancelled, and the value is dropped exactly once.
#[test]
fn a_timeout_races_the_finish() {
    loom::model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let f = Future::<K>::running(owner());
        let (timer, work) = (f.internal(), f.internal());
        let d = drops.clone();
        let t1 = thread::spawn(move || timer.time_out(5));
        let t2 = thread::spawn(move || {
            work.finish(Outcome::Ok(Some(Counted(d))));
        });
        t1.join().unwrap();
        t2.join().unwrap();
        match f.status() {
            Status::Ok => {
                assert!(f.with_value(|_| ()).is_some());
                assert_eq!(drops.load(Ordering::SeqCst), 0);
            }
            Status::Failed => {
                assert_eq!(f.failure().unwrap().code(), crate::Error::TimedOut.code());
                assert_eq!(drops.load(Ordering::SeqCst), 1, "dropped by the finish");
            }
            other => panic!("ended {other:?}"),
        }
        drop(f);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}

/// Two finishers of one future (a combination's inputs): exactly one outcome is taken,
/// and the callbacks run once.
#[test]
fn two_finishers_one_outcome() {
    loom::model(|| {
        let f = Future::<K>::waiting(owner(), None);
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        f.on_done(Box::new(move |_: &Future<K>| {
            c.fetch_add(1, Ordering::SeqCst);
        }))
        .unwrap();
        let (a, b) = (f.internal(), f.internal());
        let t1 = thread::spawn(move || a.finish(Outcome::Failed(Failure::new(3, "first"))));
        let t2 = thread::spawn(move || b.finish(Outcome::Cancelled));
        let (took_a, took_b) = (t1.join().unwrap(), t2.join().unwrap());
        assert!(took_a != took_b, "exactly one finisher took its outcome");
        let status = f.status();
        assert_eq!(status == Status::Failed, took_a);
        assert_eq!(status == Status::Cancelled, took_b);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    });
}

/// A withdrawal races the finish that queues the callback: the callback runs exactly
/// when it was not withdrawn, and the value lives until nothing holds it.
#[test]
fn a_withdrawal_races_the_finish() {
    loom::model(|| {
        let queue = Arc::new(CompletionQueue::new());
        let drops = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let f = Future::<K>::running(owner());
        let c = calls.clone();
        f.on_done_via(
            &queue,
            Box::new(move |_: &Future<K>| {
                c.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
        let (work, d) = (f.internal(), drops.clone());
        let finisher = thread::spawn(move || {
            work.finish(Outcome::Ok(Some(Counted(d))));
        });
        let withdrawn = f.withdraw_via(&queue, |_| true, |_| true);
        finisher.join().unwrap();
        queue.dispatch(0);
        assert_eq!(withdrawn + calls.load(Ordering::SeqCst), 1);
        assert_eq!(drops.load(Ordering::SeqCst), 0, "the handle still holds it");
        drop(f);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}

/// A promise settled while cancellation is requested and its cancel callback is being
/// registered: the future ends cancelled exactly when the callback ran, the callback
/// runs at most once and never after the settle returned, and the value is dropped
/// exactly once.
#[test]
fn a_promise_settle_races_cancel_and_its_registration() {
    use loom::sync::atomic::AtomicBool;
    loom::model(|| {
        let (promise, future) = crate::Promise::<K>::new(&owner()).unwrap();
        let drops = Arc::new(AtomicUsize::new(0));
        let ran = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicBool::new(false));
        let canceller = {
            let future = future.clone();
            thread::spawn(move || {
                future.cancel().unwrap();
            })
        };
        let (r, on) = (ran.clone(), running.clone());
        promise
            .on_cancel(Box::new(move || {
                on.store(true, Ordering::SeqCst);
                r.fetch_add(1, Ordering::SeqCst);
                on.store(false, Ordering::SeqCst);
            }))
            .unwrap();
        promise.resolve(Some(Counted(drops.clone())));
        assert!(
            !running.load(Ordering::SeqCst),
            "not running after the settle"
        );
        let ran_at_settle = ran.load(Ordering::SeqCst);
        canceller.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), ran_at_settle, "never after it");
        assert!(ran_at_settle <= 1);
        let status = future.status();
        assert_eq!(
            status == Status::Cancelled,
            ran_at_settle == 1,
            "{status:?}"
        );
        assert_eq!(
            drops.load(Ordering::SeqCst),
            usize::from(status == Status::Cancelled)
        );
        drop(future);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}

/// Work with a point of no return (embed's `Task::commit`) races a cancel: either the
/// commit wins and the work's outcome stands, or the cancel wins, the commit is
/// refused, and the future ends cancelled. Never a committed future ending cancelled.
#[test]
fn a_commit_races_a_cancel() {
    loom::model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let f = Future::<K>::running(owner());
        let worker = {
            let f = f.clone();
            let drops = drops.clone();
            thread::spawn(move || {
                let committed = f.commit();
                if committed {
                    f.finish(Outcome::Ok(Some(Counted(drops))));
                } else {
                    f.finish(Outcome::Cancelled);
                }
                committed
            })
        };
        let _ = f.cancel().unwrap();
        let committed = worker.join().unwrap();
        let expected = if committed {
            Status::Ok
        } else {
            Status::Cancelled
        };
        assert_eq!(f.status(), expected);
        drop(f);
        assert_eq!(drops.load(Ordering::SeqCst), usize::from(committed));
    });
}
