//! Unit tests of the state machine, its handles and its callbacks.

use super::testing::{owner, Counted};
use super::*;
use crate::delivery::queue::CompletionQueue;
use crate::sched::Owner;
use crate::status::Status;
use crate::sync::Ordering;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

type K = Boxed<Counted>;

#[test]
fn value_lives_until_the_last_handle() {
    let drops = Arc::new(AtomicUsize::new(0));
    let f = Future::<K>::running(owner());
    let g = f.clone();
    f.finish(Outcome::Ok(Some(Counted(drops.clone()))));
    assert_eq!(f.wait(Some(Duration::ZERO)), Ok(Status::Ok));
    assert!(f.with_value(|_| ()).is_some());
    drop(f);
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(g);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn taken_value_is_the_callers() {
    let drops = Arc::new(AtomicUsize::new(0));
    let f = Future::<K>::running(owner());
    f.finish(Outcome::Ok(Some(Counted(drops.clone()))));
    let value = f.take_value().expect("a value");
    assert!(f.take_value().is_none() && f.with_value(|_| ()).is_none());
    drop(f);
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(value);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn staged_value_of_failed_work_is_dropped_at_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    let d = drops.clone();
    let f = Future::<K>::queued(
        owner(),
        Box::new(move |job| {
            job.set_value(Counted(d));
            Err(job.outcome_of(job.fail(3, "bad")).unwrap_err())
        }),
    );
    let keep = f.clone();
    f.run_queued(&|| {});
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "dropped while a handle is held"
    );
    let failure = keep.failure().unwrap();
    assert_eq!((failure.code(), failure.message()), (3, c"bad"));
}

#[test]
fn failure_without_message_names_its_code() {
    let f = Future::<K>::queued(owner(), Box::new(|job| job.outcome_of(17)));
    f.run_queued(&|| {});
    assert_eq!(f.status(), Status::Failed);
    assert_eq!(f.failure().unwrap().message(), c"work failed with code 17");
}

#[test]
fn wait_times_out_and_stays_usable() {
    let f = Future::<K>::running(owner());
    let started = Instant::now();
    assert_eq!(f.wait(Some(Duration::from_millis(30))), Ok(Status::Timeout));
    assert!(started.elapsed() >= Duration::from_millis(30));
    assert_eq!(f.wait(Some(Duration::ZERO)), Ok(Status::Timeout));
    let g = f.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        g.finish(Outcome::Ok(None));
    });
    assert_eq!(f.wait(None), Ok(Status::Ok));
    t.join().unwrap();
}

#[test]
fn wait_on_a_loop_thread_is_refused_unless_finished() {
    let f = Future::<K>::running(owner());
    let g = f.clone();
    std::thread::spawn(move || {
        crate::sys::thread_role::enter_loop(u64::MAX);
        assert_eq!(
            g.wait(Some(Duration::from_secs(5))),
            Err(Error::WouldDeadlock)
        );
        assert_eq!(g.wait(None), Err(Error::WouldDeadlock));
        assert_eq!(g.wait(Some(Duration::ZERO)), Ok(Status::Timeout));
        g.finish(Outcome::Ok(None));
        assert_eq!(g.wait(None), Ok(Status::Ok));
    })
    .join()
    .unwrap();
    assert_eq!(f.status(), Status::Ok);
}

#[test]
fn cancel_queued_releases_work_before_returning() {
    let drops = Arc::new(AtomicUsize::new(0));
    let token = Counted(drops.clone());
    let f = Future::<K>::queued(
        owner(),
        Box::new(move |_| {
            let _t = token;
            panic!("cancelled work must not run");
        }),
    );
    assert_eq!(f.cancel(), Ok(Status::Ok));
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(f.status(), Status::Cancelled);
    f.run_queued(&|| {}); // the runner finds it cancelled and skips it
    assert_eq!(f.status(), Status::Cancelled);
    assert_eq!(f.cancel(), Ok(Status::Cancelled));
}

#[test]
fn cancel_while_running_wins_when_the_work_returns() {
    let f = Future::<K>::queued(
        owner(),
        Box::new(|job| {
            assert!(!job.is_cancelled());
            job.cancel();
            assert!(job.is_cancelled());
            Ok(())
        }),
    );
    f.run_queued(&|| {});
    assert_eq!(f.status(), Status::Cancelled);
}

#[test]
fn callbacks_run_once_in_order_then_at_once() {
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let f = Future::<K>::running(owner());
    for i in 0..3 {
        let o = order.clone();
        f.on_done(Box::new(move |_| o.lock().unwrap().push(i)))
            .unwrap();
    }
    f.finish(Outcome::Ok(None));
    let o = order.clone();
    f.on_done(Box::new(move |_| o.lock().unwrap().push(9)))
        .unwrap();
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 9]);
}

#[test]
fn a_panicking_callback_does_not_stop_the_others() {
    let calls = Arc::new(AtomicUsize::new(0));
    let owner = owner();
    let f = Future::<K>::running(owner.clone());
    f.on_done(Box::new(|_| panic!("callback panics"))).unwrap();
    let c = calls.clone();
    f.on_done(Box::new(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
    }))
    .unwrap();
    f.finish(Outcome::Ok(None));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(owner.stats().pending, 0);
}

#[test]
fn panicking_work_fails_with_the_panic_code() {
    let f = Future::<K>::queued(owner(), Box::new(|_| panic!("work panics")));
    f.run_queued(&|| {});
    assert_eq!(f.status(), Status::Failed);
    assert_eq!(f.failure().unwrap().code(), Error::Panic.code());
}

#[test]
fn unobserved_failure_is_reported_once_observed_is_not() {
    let reports = Arc::new(AtomicUsize::new(0));
    let r = reports.clone();
    let owner = Arc::new(Owner::new(
        0,
        Some(Box::new(move |code, msg| {
            assert_eq!((code, msg), (5, c"lost"));
            r.fetch_add(1, Ordering::SeqCst);
        })),
    ));
    owner.admit().unwrap();
    owner.admit().unwrap();
    let unobserved = Future::<K>::running(owner.clone());
    let observed = Future::<K>::running(owner);
    for f in [&unobserved, &observed] {
        f.finish(Outcome::Failed(Failure::new(5, "lost")));
    }
    assert_eq!(observed.wait(None), Ok(Status::Failed));
    let extra = unobserved.clone();
    drop(unobserved);
    assert_eq!(reports.load(Ordering::SeqCst), 0, "a handle is still held");
    drop(extra);
    drop(observed);
    assert_eq!(reports.load(Ordering::SeqCst), 1);
}

#[test]
fn unheld_failure_is_reported_by_the_finish_held_one_by_the_last_release() {
    let reports = Arc::new(AtomicUsize::new(0));
    let r = reports.clone();
    let owner = Arc::new(Owner::new(
        0,
        Some(Box::new(move |_, _| {
            r.fetch_add(1, Ordering::SeqCst);
        })),
    ));
    owner.admit().unwrap();
    owner.admit().unwrap();
    let forgotten = Future::<K>::running(owner.clone());
    let work = forgotten.internal();
    drop(forgotten);
    work.finish(Outcome::Failed(Failure::new(1, "nobody looks")));
    assert_eq!(
        reports.load(Ordering::SeqCst),
        1,
        "reported by the finish itself"
    );
    drop(work);

    let held = Future::<K>::running(owner);
    let work = held.internal();
    work.finish(Outcome::Failed(Failure::new(1, "looked at too late")));
    assert_eq!(reports.load(Ordering::SeqCst), 1, "still held");
    drop(held);
    assert_eq!(reports.load(Ordering::SeqCst), 2, "inside the last release");
    drop(work);
    assert_eq!(reports.load(Ordering::SeqCst), 2, "once");
}

#[test]
fn progress_is_read_back() {
    let f = Future::<K>::queued(
        owner(),
        Box::new(|job| {
            job.set_progress(3, 10);
            Ok(())
        }),
    );
    assert_eq!(f.progress(), Ok((0, 0)));
    f.run_queued(&|| {});
    assert_eq!(f.progress(), Ok((3, 10)));
}

#[test]
fn failure_messages_stop_at_nul() {
    let f = Failure::new(1, &b"abc\0def"[..]);
    assert_eq!(f.message(), c"abc");
    assert_eq!(Failure::panic().code(), -5);
}

// Delivery through completion queues.
type Q = Boxed<u32>;

fn future() -> Future<Q> {
    Future::running(owner())
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

fn counter(calls: &Arc<AtomicUsize>) -> BoxedCallback<u32> {
    let calls = calls.clone();
    Box::new(move |_| {
        calls.fetch_add(1, Ordering::SeqCst);
    })
}

#[test]
fn callbacks_run_only_in_dispatch_and_fd_follows_emptiness() {
    let queue = Arc::new(CompletionQueue::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let notified = Arc::new(AtomicUsize::new(0));
    let n = notified.clone();
    queue.set_notify(Some(Box::new(move || {
        n.fetch_add(1, Ordering::SeqCst);
    })));
    let futures: Vec<_> = (0..3).map(|_| future()).collect();
    for f in &futures {
        f.on_done_via(&queue, counter(&calls)).unwrap();
    }
    assert!(!readable(&queue));
    for f in &futures {
        std::thread::scope(|s| {
            s.spawn(|| f.finish(Outcome::Ok(Some(1))));
        });
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "only inside dispatch");
    assert!(readable(&queue));
    assert_eq!(notified.load(Ordering::SeqCst), 1, "one edge, one notify");
    assert_eq!(queue.dispatch(2), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(readable(&queue), "one left");
    assert_eq!(
        notified.load(Ordering::SeqCst),
        2,
        "told again about what is left"
    );
    assert_eq!(queue.dispatch(0), 1);
    assert!(!readable(&queue));
    assert_eq!(queue.dispatch(0), 0);
    assert_eq!(notified.load(Ordering::SeqCst), 2);
}

#[test]
fn finished_future_is_queued_at_once_and_value_lives_until_delivery() {
    let queue = Arc::new(CompletionQueue::new());
    let f = future();
    f.finish(Outcome::Ok(Some(7)));
    let seen = Arc::new(StdMutex::new(None));
    let s = seen.clone();
    f.on_done_via(
        &queue,
        Box::new(move |f| *s.lock().unwrap() = f.with_value(|v| *v)),
    )
    .unwrap();
    drop(f); // the queued delivery keeps the value alive
    assert_eq!(queue.dispatch(0), 1);
    assert_eq!(*seen.lock().unwrap(), Some(7));
}

#[test]
fn arrivals_during_dispatch_wait_for_the_next_one() {
    let queue = Arc::new(CompletionQueue::new());
    let later = future();
    let first = future();
    let (q, l) = (queue.clone(), later.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    first
        .on_done_via(
            &queue,
            Box::new(move |_| {
                l.on_done_via(&q, counter(&c)).unwrap();
                l.finish(Outcome::Ok(None));
            }),
        )
        .unwrap();
    first.finish(Outcome::Ok(None));
    assert_eq!(queue.dispatch(0), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!(readable(&queue));
    assert_eq!(queue.dispatch(0), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn wait_times_out_then_sees_a_delivery() {
    let queue = Arc::new(CompletionQueue::new());
    assert_eq!(
        queue.wait(Some(Duration::from_millis(20))),
        Ok(Status::Timeout)
    );
    assert_eq!(queue.wait(Some(Duration::ZERO)), Ok(Status::Timeout));
    let f = future();
    f.on_done_via(&queue, Box::new(|_| {})).unwrap();
    let g = f.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        g.finish(Outcome::Failed(Failure::from_code(3)));
    });
    assert_eq!(queue.wait(None), Ok(Status::Ok));
    t.join().unwrap();
    assert_eq!(queue.dispatch(0), 1);
}

#[test]
fn close_runs_what_is_pending_and_drops_what_comes_later() {
    let queue = Arc::new(CompletionQueue::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let (early, late) = (future(), future());
    early.on_done_via(&queue, counter(&calls)).unwrap();
    late.on_done_via(&queue, counter(&calls)).unwrap();
    early.finish(Outcome::Ok(None));
    assert_eq!(queue.close(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(queue.fd(), None);
    late.finish(Outcome::Ok(None));
    assert_eq!(queue.dispatch(0), 0);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn progress_is_coalesced_and_never_after_the_done_callback() {
    let queue = Arc::new(CompletionQueue::new());
    let seen = Arc::new(StdMutex::new(Vec::new()));
    let s = seen.clone();
    let f = future();
    f.on_progress_via(
        &queue,
        Arc::new(move |_, done, total| s.lock().unwrap().push((done, total))),
    )
    .unwrap();
    for i in 1..=5 {
        f.set_progress(i, 5);
    }
    assert_eq!(queue.len(), 1, "one pending delivery");
    assert_eq!(queue.dispatch(0), 1);
    assert_eq!(*seen.lock().unwrap(), vec![(5, 5)], "the latest values win");
    // Queued before the done callback: delivered, and first.
    f.set_progress(6, 9);
    let s = seen.clone();
    f.on_done_via(&queue, Box::new(move |_| s.lock().unwrap().push((0, 0))))
        .unwrap();
    f.finish(Outcome::Ok(None));
    assert_eq!(queue.dispatch(0), 2);
    assert_eq!(*seen.lock().unwrap(), vec![(5, 5), (6, 9), (0, 0)]);
    // After the done callback has run: nothing.
    let g = future();
    let s = seen.clone();
    g.on_progress_via(
        &queue,
        Arc::new(move |_, d, t| s.lock().unwrap().push((d, t))),
    )
    .unwrap();
    g.on_done(Box::new(|_| {})).unwrap();
    g.set_progress(1, 1);
    g.finish(Outcome::Ok(None));
    assert_eq!(queue.dispatch(0), 0, "the delivery calls nothing");
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[test]
fn withdrawn_callbacks_never_run_queued_or_not() {
    let queue = Arc::new(CompletionQueue::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let (waiting, queued) = (future(), future());
    waiting.on_done_via(&queue, counter(&calls)).unwrap();
    waiting
        .on_progress_via(&queue, Arc::new(|_, _, _| panic!("withdrawn")))
        .unwrap();
    queued.on_done_via(&queue, counter(&calls)).unwrap();
    queued.finish(Outcome::Ok(None));
    waiting.set_progress(1, 2);
    assert_eq!(waiting.withdraw_via(&queue, |_| true, |_| true), 2);
    assert_eq!(queued.withdraw_via(&queue, |_| true, |_| true), 1);
    waiting.finish(Outcome::Ok(None));
    queue.dispatch(0);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// A thread blocked in `wait` used to sleep its whole timeout (forever with no
/// limit) when the queue was closed under it.
#[test]
fn close_wakes_a_blocked_wait() {
    for timeout in [None, Some(Duration::from_secs(10))] {
        let queue = Arc::new(CompletionQueue::new());
        let q = queue.clone();
        let waiter = std::thread::spawn(move || {
            let started = Instant::now();
            (q.wait(timeout), started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(queue.close(), 0);
        let (answer, waited) = waiter.join().unwrap();
        assert_eq!(answer, Err(Error::Closed));
        assert!(waited < Duration::from_secs(5), "woken, not timed out");
        assert_eq!(queue.wait(Some(Duration::ZERO)), Err(Error::Closed));
    }
}

/// A callback that runs a nested event loop gets the deliveries that are pending
/// then, and those that arrive while it runs.
#[test]
fn a_nested_dispatch_delivers_what_is_pending() {
    let queue = Arc::new(CompletionQueue::new());
    let order = Arc::new(StdMutex::new(Vec::new()));
    let (first, second, third) = (future(), future(), future());
    let (q, o, late) = (queue.clone(), order.clone(), third.clone());
    first
        .on_done_via(
            &queue,
            Box::new(move |_| {
                o.lock().unwrap().push("A begins");
                let nested = q.dispatch(0);
                // A completion that comes while this callback runs.
                late.finish(Outcome::Ok(None));
                let again = q.dispatch(0);
                o.lock().unwrap().push(if (nested, again) == (1, 1) {
                    "A ends"
                } else {
                    "A ends with a wrong count"
                });
            }),
        )
        .unwrap();
    for (f, name) in [(&second, "B"), (&third, "C")] {
        let o = order.clone();
        f.on_done_via(&queue, Box::new(move |_| o.lock().unwrap().push(name)))
            .unwrap();
    }
    first.finish(Outcome::Ok(None));
    second.finish(Outcome::Ok(None));
    assert_eq!(queue.dispatch(0), 1, "B and C ran in the nested dispatches");
    assert_eq!(*order.lock().unwrap(), ["A begins", "B", "C", "A ends"]);
    assert!(!readable(&queue));
}

/// A queue dropped without a close used to keep its finished future's value and its
/// queued callback for ever (the future named the queue, whose entry held the future).
#[test]
fn a_queue_dropped_unclosed_releases_what_it_held() {
    let drops = Arc::new(AtomicUsize::new(0));
    let f = Future::<K>::running(owner());
    let queue = Arc::new(CompletionQueue::new());
    let token = Counted(drops.clone());
    f.on_done_via(
        &queue,
        Box::new(move |_| {
            let _token = token;
        }),
    )
    .unwrap();
    f.finish(Outcome::Ok(Some(Counted(drops.clone()))));
    drop(f);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "the queued delivery holds both"
    );
    drop(queue);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        2,
        "the value and the callback, once each"
    );
}

/// A queue closed from inside its own callback does not call its notify hook again,
/// even with deliveries left: the close runs them, and the owner may have torn the
/// hook's target down with the queue.
#[test]
fn a_queue_closed_by_its_callback_calls_no_hook_after() {
    let queue = Arc::new(CompletionQueue::new());
    let notified = Arc::new(AtomicUsize::new(0));
    let n = notified.clone();
    queue.set_notify(Some(Box::new(move || {
        n.fetch_add(1, Ordering::SeqCst);
    })));
    let ran = Arc::new(AtomicUsize::new(0));
    let at_close = Arc::new(AtomicUsize::new(usize::MAX));
    let (q, r, n, c) = (
        queue.clone(),
        ran.clone(),
        notified.clone(),
        at_close.clone(),
    );
    queue
        .post(Box::new(move || {
            let r2 = r.clone();
            // Comes after the dispatch began: left for later.
            q.post(Box::new(move || {
                r2.fetch_add(1, Ordering::SeqCst);
            }))
            .unwrap();
            q.close();
            c.store(n.load(Ordering::SeqCst), Ordering::SeqCst);
            r.fetch_add(1, Ordering::SeqCst);
        }))
        .unwrap();
    assert_eq!(queue.dispatch(0), 1);
    assert_eq!(ran.load(Ordering::SeqCst), 2, "the close ran what was left");
    assert_eq!(
        notified.load(Ordering::SeqCst),
        at_close.load(Ordering::SeqCst),
        "no hook after the close"
    );
}

#[test]
fn whoever_sees_a_future_finished_finds_its_queue_readable() {
    // The finish raises the queue's descriptor with no lock held, before it publishes
    // the outcome: a thread that watches the status and then polls the descriptor
    // never finds it finished and the descriptor not yet readable.
    let queue = Arc::new(CompletionQueue::new());
    for round in 0..2000 {
        let future = Future::<K>::running(owner());
        future
            .on_done_via(&queue, Box::new(|_: &Future<K>| {}))
            .unwrap();
        let work = future.internal();
        let finisher = std::thread::spawn(move || work.finish(Outcome::Ok(None)));
        while future.status() != Status::Ok {
            std::hint::spin_loop();
        }
        assert!(
            readable(&queue),
            "round {round}: finished, descriptor not readable"
        );
        finisher.join().unwrap();
        assert_eq!(queue.dispatch(0), 1);
        assert!(!readable(&queue));
    }
}
