//! Tests of timeouts, chains and combinations on a running bridge.

use super::*;
use crate::future::Boxed;
use crate::status::Status;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

type K = Boxed<usize>;
const LONG: Option<Duration> = Some(Duration::from_secs(30));

fn bridge() -> Bridge {
    Bridge::start(Config::default()).unwrap()
}

#[test]
fn sleep_never_ends_early() {
    let b = bridge();
    for ms in [0u64, 1, 5, 20] {
        let started = Instant::now();
        let f = b.sleep::<K>(Duration::from_millis(ms)).unwrap();
        assert_eq!(f.wait(LONG), Ok(Status::Ok));
        assert!(started.elapsed() >= Duration::from_millis(ms));
    }
}

#[test]
fn timeout_fails_pending_work_and_spares_finished_work() {
    let b = bridge();
    let slow = b
        .submit::<K>(
            Box::new(|job| {
                while !job.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(())
            }),
            Placement::Blocking,
        )
        .unwrap();
    slow.set_timeout(Duration::from_millis(20)).unwrap();
    assert_eq!(slow.wait(LONG), Ok(Status::Failed));
    let failure = slow.failure().unwrap();
    assert_eq!(failure.code(), Error::TimedOut.code());
    assert_eq!(failure.message(), c"timed out after 20 ms");

    let quick = b.sleep::<K>(Duration::ZERO).unwrap();
    assert_eq!(quick.wait(LONG), Ok(Status::Ok));
    quick.set_timeout(Duration::ZERO).unwrap();
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(quick.status(), Status::Ok);
}

#[test]
fn then_runs_after_any_outcome_and_cancels_alone() {
    let b = bridge();
    let failing = b
        .submit::<K>(
            Box::new(|_| Err(Failure::new(3, "first"))),
            Placement::OnLoop,
        )
        .unwrap();
    let next = failing
        .then(
            Box::new(|job| {
                job.set_value(9);
                Ok(())
            }),
            Placement::Blocking,
        )
        .unwrap();
    assert_eq!(next.wait(LONG), Ok(Status::Ok));
    assert_eq!(next.take_value(), Some(9));

    let gate = b.sleep::<K>(Duration::from_millis(50)).unwrap();
    let never = gate
        .then(
            Box::new(|_| panic!("cancelled before its turn")),
            Placement::OnLoop,
        )
        .unwrap();
    assert_eq!(never.cancel(), Ok(Status::Ok));
    assert_eq!(never.status(), Status::Cancelled);
    assert_eq!(gate.wait(LONG), Ok(Status::Ok));
}

#[test]
fn then_on_a_shut_down_bridge_is_cancelled() {
    let b = bridge();
    let prev = b.sleep::<K>(Duration::from_secs(3600)).unwrap();
    let next = prev.then(Box::new(|_| Ok(())), Placement::OnLoop).unwrap();
    assert_eq!(b.shutdown(Some(Duration::ZERO)), Ok(Status::Ok));
    assert_eq!(prev.status(), Status::Cancelled);
    assert_eq!(next.wait(LONG), Ok(Status::Cancelled));
    let after = prev.then(Box::new(|_| Ok(())), Placement::OnLoop).unwrap();
    assert_eq!(after.status(), Status::Cancelled);
}

#[test]
fn a_combination_takes_the_bridge_of_an_input_that_has_one() {
    let b = bridge();
    let nothing = Future::<K>::all(&[]).unwrap(); // belongs to no bridge
    let pending = b.sleep::<K>(Duration::from_secs(3600)).unwrap();
    let both = Future::all(&[nothing, pending]).unwrap();
    assert_eq!(both.set_timeout(Duration::from_millis(5)), Ok(()));
    assert_eq!(both.wait(LONG), Ok(Status::Failed));
    assert_eq!(both.failure().unwrap().code(), Error::TimedOut.code());
}

#[test]
fn all_and_any() {
    let b = bridge();
    let sleeps: Vec<_> = [30u64, 5, 15]
        .iter()
        .map(|&ms| b.sleep::<K>(Duration::from_millis(ms)).unwrap())
        .collect();
    let all = Future::all(&sleeps).unwrap();
    let any = Future::any(&sleeps, |i| i).unwrap();
    assert_eq!(any.wait(LONG), Ok(Status::Ok));
    assert_eq!(any.take_value(), Some(1));
    assert_eq!(all.wait(LONG), Ok(Status::Ok));

    let failing = b
        .submit::<K>(
            Box::new(|_| Err(Failure::new(8, "eight"))),
            Placement::OnLoop,
        )
        .unwrap();
    let pending = b.sleep::<K>(Duration::from_secs(3600)).unwrap();
    let all = Future::all(&[pending.clone(), failing]).unwrap();
    assert_eq!(all.wait(LONG), Ok(Status::Failed));
    assert_eq!(all.failure().unwrap().code(), 8);
    assert_eq!(
        pending.status(),
        Status::Pending,
        "inputs are never cancelled"
    );
    pending.cancel().unwrap();
    let all = Future::all(&[pending]).unwrap();
    assert_eq!(all.wait(LONG), Ok(Status::Cancelled));
    assert_eq!(Future::<K>::all(&[]).unwrap().status(), Status::Ok);
    assert!(matches!(Future::<K>::any(&[], |i| i), Err(Error::Invalid)));
}

/// Deep enough to overflow a thread's stack if completion recursed (under Miri,
/// which is thousands of times slower, deep enough to run every step).
const DEEP: usize = if cfg!(miri) { 100 } else { 10_000 };

/// Completion must not recurse: a 10,000-link chain cancelled by shutdown used to
/// cancel each link inside the previous one's finish, and overflowed the stack.
#[test]
fn a_long_chain_is_cancelled_by_shutdown_without_recursion() {
    let b = bridge();
    let head = b.sleep::<K>(Duration::from_secs(3600)).unwrap();
    let mut last = head.clone();
    for _ in 0..DEEP {
        last = last.then(Box::new(|_| Ok(())), Placement::OnLoop).unwrap();
    }
    assert_eq!(b.shutdown(Some(Duration::ZERO)), Ok(Status::Ok));
    assert_eq!(last.wait(LONG), Ok(Status::Cancelled));
    assert_eq!(head.status(), Status::Cancelled);
}

#[test]
fn combinations_nested_ten_thousand_deep_finish_without_recursion() {
    let b = bridge();
    let gate = b.sleep::<K>(Duration::from_millis(20)).unwrap();
    let mut all = gate.clone();
    let mut any = gate.clone();
    for _ in 0..DEEP {
        all = Future::all(std::slice::from_ref(&all)).unwrap();
        any = Future::any(std::slice::from_ref(&any), |i| i).unwrap();
    }
    assert_eq!(all.wait(LONG), Ok(Status::Ok));
    assert_eq!(any.wait(LONG), Ok(Status::Ok));
    assert_eq!(any.take_value(), Some(0));
}

/// A failure `all` does not end with is the input's own, and is reported when the
/// input is dropped unobserved; the one it ends with is not reported twice.
#[test]
fn all_hands_on_only_the_failure_it_ends_with() {
    let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
    let r = reports.clone();
    let b = Bridge::start(Config {
        on_unhandled_error: Some(Box::new(move |code, _| r.lock().unwrap().push(code))),
        ..Config::default()
    })
    .unwrap();
    let gated = |code: i32, gate: Arc<AtomicBool>| {
        b.submit::<K>(
            Box::new(move |_| {
                while !gate.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(Failure::from_code(code))
            }),
            Placement::Blocking,
        )
        .unwrap()
    };
    let settle = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while b.stats().pending > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let reported = |n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while reports.lock().unwrap().len() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        // A report that should not come would come about as soon: give it time.
        std::thread::sleep(Duration::from_millis(20));
    };
    // Cancelled first, then an input fails: nothing hands that failure on.
    let gate = Arc::new(AtomicBool::new(false));
    let p1 = gated(21, gate.clone());
    let all = Future::all(std::slice::from_ref(&p1)).unwrap();
    assert_eq!(all.cancel(), Ok(Status::Ok));
    assert_eq!(all.status(), Status::Cancelled);
    gate.store(true, Ordering::SeqCst);
    settle();
    drop(p1);
    // The last handle may be the finishing thread's, while its callbacks run.
    reported(1);
    assert_eq!(*reports.lock().unwrap(), vec![21]);

    // Two inputs fail: the first is handed on, the second is the input's own.
    reports.lock().unwrap().clear();
    let (g1, g2) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (p1, p2) = (gated(21, g1.clone()), gated(22, g2.clone()));
    let all = Future::all(&[p1.clone(), p2.clone()]).unwrap();
    g1.store(true, Ordering::SeqCst);
    assert_eq!(all.wait(LONG), Ok(Status::Failed));
    assert_eq!(all.failure().unwrap().code(), 21);
    g2.store(true, Ordering::SeqCst);
    settle();
    drop((p1, p2, all));
    reported(1);
    assert_eq!(*reports.lock().unwrap(), vec![22]);
}
