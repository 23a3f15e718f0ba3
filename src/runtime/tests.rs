//! Tests of the bridge: placement, shutdown, the pool, back-pressure.

use super::*;
use crate::future::Boxed;
use crate::status::Status;
use crate::sync::lock;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Mutex as StdMutex;
use std::time::Instant;

type K = Boxed<u32>;

fn work(
    f: impl FnOnce(&crate::Job<'_, K>) -> Result<(), Failure> + Send + 'static,
) -> crate::future::BoxedWork<u32> {
    Box::new(f)
}

fn start() -> Bridge {
    Bridge::start(Config::default()).unwrap()
}

const LONG: Option<Duration> = Some(Duration::from_secs(30));

#[test]
fn on_loop_work_runs_on_the_loop_in_order_blocking_work_elsewhere() {
    let bridge = Arc::new(start());
    let order = Arc::new(StdMutex::new(Vec::new()));
    let mut futures = Vec::new();
    for i in 0..200u32 {
        let (o, b) = (order.clone(), bridge.clone());
        futures.push(
            bridge
                .submit::<K>(
                    work(move |job| {
                        assert!(b.in_loop());
                        o.lock().unwrap().push(i);
                        job.set_value(i);
                        Ok(())
                    }),
                    Placement::OnLoop,
                )
                .unwrap(),
        );
    }
    let b = bridge.clone();
    let blocking = bridge
        .submit::<K>(
            work(move |_| {
                if b.in_loop() {
                    Err(Failure::from_code(1))
                } else {
                    Ok(())
                }
            }),
            Placement::Blocking,
        )
        .unwrap();
    for (i, f) in futures.iter().enumerate() {
        assert_eq!(f.wait(LONG), Ok(Status::Ok));
        assert_eq!(f.with_value(|v| *v), Some(i as u32));
    }
    assert_eq!(blocking.wait(LONG), Ok(Status::Ok));
    assert_eq!(*order.lock().unwrap(), (0..200).collect::<Vec<_>>());
    assert!(!bridge.in_loop());
    let stats = bridge.stats();
    assert_eq!(
        (stats.submitted, stats.completed, stats.pending),
        (201, 201, 0)
    );
}

#[test]
fn async_work_is_dropped_at_its_await_when_cancelled() {
    let bridge = start();
    let dropped = Arc::new(AtomicBool::new(false));
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let guard = SetOnDrop(dropped.clone());
    let f = bridge
        .spawn::<K, _>(async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Some(1))
        })
        .unwrap();
    assert_eq!(f.wait(Some(Duration::from_millis(20))), Ok(Status::Timeout));
    assert_eq!(f.cancel(), Ok(Status::Ok));
    assert_eq!(f.wait(LONG), Ok(Status::Cancelled));
    assert!(
        dropped.load(std::sync::atomic::Ordering::SeqCst),
        "stopped before it ended"
    );

    let quick = bridge
        .spawn::<K, _>(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(Some(7))
        })
        .unwrap();
    assert_eq!(quick.wait(LONG), Ok(Status::Ok));
    assert_eq!(quick.take_value(), Some(7));

    let panics = bridge
        .spawn::<K, _>(async { panic!("async work panics") })
        .unwrap();
    assert_eq!(panics.wait(LONG), Ok(Status::Failed));
    assert_eq!(panics.failure().unwrap().code(), Error::Panic.code());
}

#[test]
fn shutdown_refuses_at_once_and_hands_work_back() {
    let bridge = start();
    assert_eq!(bridge.shutdown(Some(Duration::ZERO)), Ok(Status::Ok));
    assert!(!bridge.is_running());
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let rejected = bridge
        .submit::<K>(
            work(move |_| {
                r.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }),
            Placement::Blocking,
        )
        .unwrap_err();
    assert_eq!(rejected.error, Error::NotRunning);
    (rejected.work)(&crate::Job::new(&Future::running(Arc::new(Owner::new(
        0, None,
    )))))
    .unwrap();
    assert!(
        ran.load(std::sync::atomic::Ordering::SeqCst),
        "the work came back whole"
    );
    assert!(bridge.spawn::<K, _>(async { Ok(Some(1)) }).is_err());
    assert_eq!(bridge.shutdown(None), Ok(Status::Ok), "idempotent");
    assert_eq!(bridge.stats().submitted, 0);
}

#[test]
fn shutdown_grace_lets_work_finish_then_cancels_the_rest() {
    let bridge = start();
    let slow = bridge
        .submit::<K>(
            work(|job| {
                std::thread::sleep(Duration::from_millis(50));
                job.set_value(5);
                Ok(())
            }),
            Placement::Blocking,
        )
        .unwrap();
    let sleeping = bridge
        .spawn::<K, _>(async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Some(0))
        })
        .unwrap();
    // The grace period covers the slow work but not the hour-long sleep.
    let started = Instant::now();
    assert_eq!(
        bridge.shutdown(Some(Duration::from_millis(300))),
        Ok(Status::Ok)
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(slow.status(), Status::Ok);
    assert_eq!(sleeping.status(), Status::Cancelled);
    assert_eq!(bridge.stats().pending, 0);
}

#[test]
fn shutdown_leaves_stubborn_work_behind_and_cancels_it_later() {
    let bridge = start();
    let release = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let (r, s) = (release.clone(), started.clone());
    let stubborn = bridge
        .submit::<K>(
            work(move |_| {
                s.store(true, std::sync::atomic::Ordering::SeqCst);
                while !r.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(())
            }),
            Placement::Blocking,
        )
        .unwrap();
    while !started.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        bridge.shutdown(Some(Duration::from_millis(10))),
        Ok(Status::Timeout)
    );
    assert_eq!(stubborn.status(), Status::Pending);
    release.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(stubborn.wait(LONG), Ok(Status::Cancelled));
}

#[test]
fn blocking_work_fills_the_pool_and_no_more() {
    // Three pool threads: three items block together (each waits for the other
    // two), and 200 more wait in the queue without a pool task each.
    let bridge = Bridge::start(Config {
        max_blocking_threads: 3,
        ..Config::default()
    })
    .unwrap();
    let together = Arc::new(std::sync::Barrier::new(3));
    let gate = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut futures = Vec::new();
    for i in 0..203 {
        let (t, g, r, m) = (
            together.clone(),
            gate.clone(),
            running.clone(),
            most.clone(),
        );
        futures.push(
            bridge
                .submit::<K>(
                    work(move |_| {
                        let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                        m.fetch_max(now, Ordering::SeqCst);
                        if i < 3 {
                            t.wait();
                            while !g.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(1));
                            }
                        }
                        r.fetch_sub(1, Ordering::SeqCst);
                        Ok(())
                    }),
                    Placement::Blocking,
                )
                .unwrap(),
        );
    }
    while running.load(Ordering::SeqCst) < 3 {
        std::thread::sleep(Duration::from_millis(1));
    }
    {
        let queue = lock(&bridge.shared.blocking);
        assert_eq!(queue.items.len(), 200);
        assert_eq!(queue.runners, 3);
    }
    gate.store(true, Ordering::SeqCst);
    for f in &futures {
        assert_eq!(f.wait(LONG), Ok(Status::Ok));
    }
    assert_eq!(most.load(Ordering::SeqCst), 3);
    // Every pool task ends once it has found nothing to do for its keep-alive.
    wait_for_pool_tasks_to_end(&bridge);
}

/// Waits (up to 30 s) until the pool has no task left.
fn wait_for_pool_tasks_to_end(bridge: &Bridge) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while lock(&bridge.shared.blocking).runners != 0 {
        assert!(Instant::now() < deadline, "pool tasks did not end");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Makes `rounds` blocking round trips one after the other, checking after each that
/// the pool has one task.
fn round_trips_on_one_pool_task(bridge: &Bridge, rounds: usize) {
    for round in 0..rounds {
        let f = bridge
            .submit::<K>(work(|_| Ok(())), Placement::Blocking)
            .unwrap();
        assert_eq!(f.wait(LONG), Ok(Status::Ok));
        let runners = lock(&bridge.shared.blocking).runners;
        assert_eq!(runners, 1, "round {round}: {runners} pool tasks");
    }
}

#[test]
fn an_idle_pool_task_waits_for_the_next_item_and_shutdown_ends_it() {
    let bridge = start();
    let round_trip = || {
        let f = bridge
            .submit::<K>(work(|_| Ok(())), Placement::Blocking)
            .unwrap();
        assert_eq!(f.wait(LONG), Ok(Status::Ok));
    };
    let settled = |parked: usize, runners: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            {
                let queue = lock(&bridge.shared.blocking);
                if queue.sleepers.len() == parked && queue.runners == runners {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "pool tasks did not settle");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    round_trip();
    settled(1, 1);
    // The sleeping task takes the next item: no second task.
    round_trip();
    settled(1, 1);
    assert_eq!(bridge.shutdown(LONG), Ok(Status::Ok));
    settled(0, 0);
}

#[test]
fn one_stream_of_round_trips_stays_on_one_pool_task() {
    // A task counts itself free before its result can be seen, so the caller's next
    // submission finds it about to look for work: no second task is woken or started.
    let bridge = start();
    // Fewer under Miri, whose threads are slow; the property is the same each round.
    round_trips_on_one_pool_task(&bridge, if cfg!(miri) { 20 } else { 300 });
}

#[test]
fn a_spinning_pool_task_takes_the_next_item_and_ends_at_shutdown() {
    // Low-latency mode: after its work a pool task spins for more instead of parking
    // (and counts as about to take an item meanwhile), so the next submission wakes
    // nobody and starts no second task; shutdown still ends it.
    let bridge = Bridge::start(Config {
        spin: Duration::from_millis(20),
        ..Config::default()
    })
    .unwrap();
    round_trips_on_one_pool_task(&bridge, if cfg!(miri) { 20 } else { 200 });
    assert_eq!(bridge.shutdown(LONG), Ok(Status::Ok));
    wait_for_pool_tasks_to_end(&bridge);
}

#[test]
fn queued_work_is_dropped_unrun_by_shutdown() {
    let bridge = Bridge::start(Config {
        max_blocking_threads: 1,
        ..Config::default()
    })
    .unwrap();
    let gate = Arc::new(AtomicBool::new(false));
    let g = gate.clone();
    let blocker = bridge
        .submit::<K>(
            work(move |job| {
                while !g.load(std::sync::atomic::Ordering::SeqCst) && !job.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(())
            }),
            Placement::Blocking,
        )
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let queued: Vec<_> = (0..50)
        .map(|_| {
            let r = runs.clone();
            bridge
                .submit::<K>(
                    work(move |_| {
                        r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Ok(())
                    }),
                    Placement::Blocking,
                )
                .unwrap()
        })
        .collect();
    let s = bridge.shutdown(Some(Duration::ZERO)).unwrap();
    assert!(s == Status::Ok || s == Status::Timeout);
    assert_eq!(blocker.wait(LONG), Ok(Status::Cancelled));
    for f in &queued {
        assert_eq!(f.wait(LONG), Ok(Status::Cancelled));
    }
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 0);
    let stats = bridge.stats();
    assert_eq!((stats.cancelled, stats.pending), (51, 0));
}

#[test]
fn shutdown_from_its_own_threads_would_deadlock_but_drop_does_not_hang() {
    let bridge = Arc::new(start());
    let b = bridge.clone();
    let f = bridge
        .submit::<K>(
            work(move |_| match b.shutdown(None) {
                Err(Error::WouldDeadlock) => Ok(()),
                _ => Err(Failure::from_code(1)),
            }),
            Placement::OnLoop,
        )
        .unwrap();
    assert_eq!(f.wait(LONG), Ok(Status::Ok));
    let b = bridge.clone();
    let g = bridge
        .submit::<K>(
            work(move |_| match b.shutdown(None) {
                Err(Error::WouldDeadlock) => Ok(()),
                _ => Err(Failure::from_code(1)),
            }),
            Placement::Blocking,
        )
        .unwrap();
    assert_eq!(g.wait(LONG), Ok(Status::Ok));

    // The last handle dropped on the loop thread itself: the loop finishes the
    // shutdown on its own once this work returns. Dropping shuts down with no
    // grace period, so the running work itself ends cancelled.
    let own = Arc::new(StdMutex::new(Some(start())));
    let inner = own.lock().unwrap().as_ref().unwrap().shared.clone();
    let o = own.clone();
    let last = inner_submit(&own, move |_| {
        drop(o.lock().unwrap().take());
        Ok(())
    });
    assert_eq!(last.wait(LONG), Ok(Status::Cancelled));
    let deadline = Instant::now() + Duration::from_secs(20);
    while inner.state.load(Ordering::SeqCst) != STOPPED && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(inner.state.load(Ordering::SeqCst), STOPPED);
}

fn inner_submit(
    bridge: &StdMutex<Option<Bridge>>,
    f: impl FnOnce(&crate::Job<'_, K>) -> Result<(), Failure> + Send + 'static,
) -> Future<K> {
    let guard = bridge.lock().unwrap();
    guard
        .as_ref()
        .unwrap()
        .submit::<K>(work(f), Placement::OnLoop)
        .unwrap()
}

#[test]
fn callback_run_by_shutdown_may_call_shutdown_again() {
    let bridge = Arc::new(
        Bridge::start(Config {
            max_blocking_threads: 1,
            ..Config::default()
        })
        .unwrap(),
    );
    let blocker = bridge
        .submit::<K>(
            work(|job| {
                while !job.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(())
            }),
            Placement::Blocking,
        )
        .unwrap();
    let queued = bridge
        .submit::<K>(work(|_| Ok(())), Placement::Blocking)
        .unwrap();
    let answer = Arc::new(StdMutex::new(None));
    let (b, a) = (bridge.clone(), answer.clone());
    queued
        .on_done(Box::new(move |_| {
            *a.lock().unwrap() = Some(b.shutdown(None))
        }))
        .unwrap();
    let status = bridge.shutdown(Some(Duration::ZERO)).unwrap();
    assert!(status == Status::Ok || status == Status::Timeout);
    assert_eq!(*answer.lock().unwrap(), Some(Ok(Status::Ok)));
    assert_eq!(queued.status(), Status::Cancelled);
    assert_eq!(blocker.wait(LONG), Ok(Status::Cancelled));
}

#[test]
fn max_pending_is_back_pressure() {
    let bridge = Bridge::start(Config {
        max_pending: 2,
        ..Config::default()
    })
    .unwrap();
    let gate = Arc::new(AtomicBool::new(false));
    let blockers: Vec<_> = (0..2)
        .map(|_| {
            let g = gate.clone();
            bridge
                .submit::<K>(
                    work(move |_| {
                        while !g.load(std::sync::atomic::Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Ok(())
                    }),
                    Placement::Blocking,
                )
                .unwrap()
        })
        .collect();
    let busy = bridge
        .submit::<K>(work(|_| Ok(())), Placement::OnLoop)
        .unwrap_err();
    assert_eq!(busy.error, Error::Busy);
    gate.store(true, std::sync::atomic::Ordering::SeqCst);
    for f in &blockers {
        assert_eq!(f.wait(LONG), Ok(Status::Ok));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while bridge.stats().pending > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(bridge
        .submit::<K>(work(|_| Ok(())), Placement::OnLoop)
        .is_ok());
    assert_eq!(bridge.stats().submitted, 3);
}

#[test]
fn multi_thread_runtime_works_and_keeps_loop_order() {
    let bridge = Arc::new(
        Bridge::start(Config {
            worker_threads: 2,
            ..Config::default()
        })
        .unwrap(),
    );
    let order = Arc::new(StdMutex::new(Vec::new()));
    let futures: Vec<_> = (0..100u32)
        .map(|i| {
            let (o, b) = (order.clone(), bridge.clone());
            bridge
                .submit::<K>(
                    work(move |_| {
                        assert!(b.in_loop());
                        o.lock().unwrap().push(i);
                        Ok(())
                    }),
                    Placement::OnLoop,
                )
                .unwrap()
        })
        .collect();
    for f in &futures {
        assert_eq!(f.wait(LONG), Ok(Status::Ok));
    }
    assert_eq!(*order.lock().unwrap(), (0..100).collect::<Vec<_>>());
    let b = bridge.clone();
    let blocking = bridge
        .submit::<K>(
            work(move |_| {
                if b.in_loop() {
                    Err(Failure::from_code(1))
                } else {
                    Ok(())
                }
            }),
            Placement::Blocking,
        )
        .unwrap();
    assert_eq!(blocking.wait(LONG), Ok(Status::Ok));
    assert_eq!(bridge.shutdown(LONG), Ok(Status::Ok));
}

#[test]
fn spin_mode_round_trips_run_timers_and_shut_down() {
    let bridge = Bridge::start(Config {
        spin: Duration::from_micros(50),
        ..Config::default()
    })
    .unwrap();
    for i in 0..2000u32 {
        let f = bridge
            .submit::<K>(
                work(move |job| {
                    job.set_value(i);
                    Ok(())
                }),
                Placement::OnLoop,
            )
            .unwrap();
        assert_eq!(f.wait(LONG), Ok(Status::Ok));
        assert_eq!(f.take_value(), Some(i));
    }
    // The loop still runs timers and async work between spins.
    let slept = bridge
        .spawn::<K, _>(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(Some(1))
        })
        .unwrap();
    assert_eq!(slept.wait(LONG), Ok(Status::Ok));
    // A wait shorter than the spin still times out.
    let pending = bridge
        .spawn::<K, _>(async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(None)
        })
        .unwrap();
    assert_eq!(
        pending.wait(Some(Duration::from_micros(10))),
        Ok(Status::Timeout)
    );
    assert_eq!(bridge.shutdown(Some(Duration::ZERO)), Ok(Status::Ok));
    assert_eq!(pending.status(), Status::Cancelled);
}

#[test]
fn global_bridge_is_one_and_not_dropped_by_handles() {
    let a = Bridge::global().unwrap();
    let b = std::thread::spawn(|| Bridge::global().unwrap() as *const Bridge as usize)
        .join()
        .unwrap();
    assert_eq!(a as *const Bridge as usize, b);
    assert!(a.is_global() && a.is_running());
    let other = start();
    assert!(!other.is_global());
}

#[test]
fn bad_configuration_is_invalid() {
    assert!(matches!(
        Bridge::start(Config {
            worker_threads: 100_000,
            ..Config::default()
        }),
        Err(Error::Invalid)
    ));
    assert!(matches!(
        Bridge::start(Config {
            spin: Duration::from_millis(1001),
            ..Config::default()
        }),
        Err(Error::Invalid)
    ));
}

#[test]
fn shutdown_asks_a_promise_to_stop_and_waits_for_its_holder() {
    let bridge = start();
    let (promise, future) = bridge.promise::<K>().unwrap();
    let asked_on = Arc::new(StdMutex::new(None));
    let a = asked_on.clone();
    promise
        .on_cancel(Box::new(move || {
            *a.lock().unwrap() = Some(std::thread::current().id())
        }))
        .unwrap();
    assert_eq!(bridge.stats().pending, 1);
    assert_eq!(
        bridge.shutdown(Some(Duration::from_millis(20))),
        Ok(Status::Timeout),
        "the holder has not settled it"
    );
    assert_eq!(*asked_on.lock().unwrap(), Some(std::thread::current().id()));
    assert!(promise.is_cancelled());
    assert_eq!(future.status(), Status::Pending);
    promise.resolve(Some(3));
    assert_eq!(future.status(), Status::Cancelled);
    assert_eq!(bridge.stats().pending, 0);
    assert!(matches!(bridge.promise::<K>(), Err(Error::NotRunning)));

    // Settled during the grace: nothing is left behind.
    let bridge = start();
    let (promise, future) = bridge.promise::<K>().unwrap();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        promise.resolve(Some(4));
    });
    assert_eq!(bridge.shutdown(LONG), Ok(Status::Ok));
    holder.join().unwrap();
    assert_eq!(future.with_value(|v| *v), Some(4));
}

#[test]
fn then_with_hands_the_work_the_future_it_follows() {
    let bridge = start();
    let first = bridge
        .submit::<K>(
            work(|job| {
                job.set_value(20);
                Ok(())
            }),
            Placement::Blocking,
        )
        .unwrap();
    let second = first
        .then_with(
            |prev| {
                work(move |job| {
                    job.set_value(prev.with_value(|v| v + 1).unwrap_or(0));
                    Ok(())
                })
            },
            Placement::OnLoop,
        )
        .unwrap();
    assert_eq!(second.wait(LONG), Ok(Status::Ok));
    assert_eq!(second.take_value(), Some(21));
}

/// An async future's own task used to look at its status when it ended, which counted
/// as observing its failure: a failure nobody looked at was never reported.
#[test]
fn an_unobserved_async_failure_is_reported() {
    let reports = Arc::new(AtomicUsize::new(0));
    let r = reports.clone();
    let bridge = Bridge::start(Config {
        on_unhandled_error: Some(Box::new(move |code, _| {
            assert_eq!(code, 5);
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })),
        ..Config::default()
    })
    .unwrap();
    let f = bridge
        .spawn::<K, _>(async { Err(Failure::new(5, "nobody looks")) })
        .unwrap();
    while !f.peek().is_final() {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(f);
    assert_eq!(reports.load(std::sync::atomic::Ordering::SeqCst), 1);
}
