//! Streams of values through the C API (bridge_channel_t, bridge_sender_t) and the
//! Rust embedding helper, called from Rust through their C signatures.

use std::ffi::{c_void, CStr};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use asyncbridge::delivery::stream::{Options, Sender};
use asyncbridge::ffi::bridge::*;
use asyncbridge::ffi::channel::*;
use asyncbridge::ffi::future::*;
use asyncbridge::ffi::queue::*;
use asyncbridge::ffi::status::*;
use asyncbridge::ffi::value::*;

/// A hang guard, never a measure: no test fails because something was slow.
const LONG_MS: i64 = 120_000;

fn start() -> *mut bridge_t {
    let mut b = null_mut();
    assert_eq!(unsafe { bridge_start(std::ptr::null(), &mut b) }, BRIDGE_OK);
    b
}

/// Counts how often each value was freed.
struct Tracker {
    frees: Vec<AtomicUsize>,
}

impl Tracker {
    fn new(n: usize) -> Arc<Tracker> {
        Arc::new(Tracker {
            frees: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        })
    }

    fn freed(&self, i: usize) -> usize {
        self.frees[i].load(Ordering::SeqCst)
    }

    /// Every one of the first `n` values was freed exactly once.
    fn assert_each_freed_once(&self, n: usize) {
        for i in 0..n {
            assert_eq!(self.freed(i), 1, "value {i} freed {} times", self.freed(i));
        }
    }
}

/// A test value: its index, and who counts its frees.
struct Val {
    index: usize,
    tracker: Arc<Tracker>,
}

fn val(tracker: &Arc<Tracker>, index: usize) -> *mut c_void {
    Box::into_raw(Box::new(Val {
        index,
        tracker: tracker.clone(),
    }))
    .cast()
}

unsafe extern "C" fn val_free(p: *mut c_void) {
    let v = unsafe { Box::from_raw(p.cast::<Val>()) };
    v.tracker.frees[v.index].fetch_add(1, Ordering::SeqCst);
}

fn index_of(p: *mut c_void) -> usize {
    assert!(!p.is_null());
    unsafe { &*p.cast::<Val>() }.index
}

fn new_channel(
    b: *mut bridge_t,
    capacity: u32,
    overflow: u32,
) -> (*mut bridge_sender_t, *mut bridge_channel_t) {
    let mut o = std::mem::MaybeUninit::<bridge_channel_options_t>::uninit();
    unsafe { bridge_channel_options_init(o.as_mut_ptr()) };
    let mut o = unsafe { o.assume_init() };
    o.capacity = capacity;
    o.overflow = overflow;
    let (mut s, mut c) = (null_mut(), null_mut());
    assert_eq!(
        unsafe { bridge_channel_new(b, &o, &mut s, &mut c) },
        BRIDGE_OK
    );
    (s, c)
}

/// Raw pointers cross to the threads of a test.
#[derive(Clone, Copy)]
struct P<T>(*mut T);
unsafe impl<T> Send for P<T> {}

/// What a next future ended with.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Value(usize),
    End,
    Failed(i32, String),
    Cancelled,
}

/// Waits for a next future, takes its value (freeing it as its owner) and releases it.
fn finish_next(f: *mut future_t) -> Got {
    let got = match unsafe { future_wait(f, LONG_MS) } {
        BRIDGE_OK => {
            if unsafe { future_value_type(f) } == BRIDGE_VALUE_NONE {
                Got::End
            } else {
                let p = unsafe { future_take_value(f) };
                let i = index_of(p);
                unsafe { val_free(p) };
                Got::Value(i)
            }
        }
        BRIDGE_FAILED => Got::Failed(unsafe { future_error_code(f) }, unsafe {
            CStr::from_ptr(future_error_message(f))
                .to_string_lossy()
                .into_owned()
        }),
        BRIDGE_CANCELLED => Got::Cancelled,
        other => panic!("next ended {other}"),
    };
    unsafe { future_release(f) };
    got
}

fn next(c: *mut bridge_channel_t) -> Got {
    let mut f = null_mut();
    assert_eq!(unsafe { bridge_channel_next(c, &mut f) }, BRIDGE_OK);
    finish_next(f)
}

/// Sends and waits for the send to end; returns its final status.
fn send_wait(s: *mut bridge_sender_t, v: *mut c_void) -> i32 {
    let mut f = null_mut();
    assert_eq!(
        unsafe { bridge_sender_send(s, v, Some(val_free), &mut f) },
        BRIDGE_OK
    );
    let status = unsafe { future_wait(f, LONG_MS) };
    unsafe { future_release(f) };
    status
}

/// A small deterministic random sequence (xorshift), seeded per test run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn values_in_order_then_the_end_repeated() {
    let b = start();
    let tracker = Tracker::new(100);
    let (s, c) = new_channel(b, 4, BRIDGE_OVERFLOW_WAIT);
    let (sp, t) = (P(s), tracker.clone());
    let producer = std::thread::spawn(move || {
        let sp = sp;
        for i in 0..100 {
            assert_eq!(send_wait(sp.0, val(&t, i)), BRIDGE_OK);
        }
        unsafe { bridge_sender_close(sp.0) };
    });
    for i in 0..100 {
        assert_eq!(next(c), Got::Value(i));
    }
    assert_eq!(next(c), Got::End);
    assert_eq!(next(c), Got::End, "the end is repeated");
    producer.join().unwrap();
    unsafe { bridge_channel_free(c) };
    tracker.assert_each_freed_once(100);
    unsafe { bridge_free(b) };
}

#[test]
fn a_failure_or_an_abandoned_sender_comes_after_the_values() {
    let b = start();
    let tracker = Tracker::new(2);
    let (s, c) = new_channel(b, 0, BRIDGE_OVERFLOW_WAIT);
    assert_eq!(send_wait(s, val(&tracker, 0)), BRIDGE_OK);
    unsafe { bridge_sender_fail(s, 42, c"disk full".as_ptr()) };
    assert_eq!(next(c), Got::Value(0));
    assert_eq!(next(c), Got::Failed(42, "disk full".into()));
    assert_eq!(next(c), Got::Failed(42, "disk full".into()));
    unsafe { bridge_channel_free(c) };

    let (s, c) = new_channel(b, 0, BRIDGE_OVERFLOW_WAIT);
    assert_eq!(send_wait(s, val(&tracker, 1)), BRIDGE_OK);
    unsafe { bridge_sender_free(s) };
    assert_eq!(next(c), Got::Value(1));
    assert!(matches!(next(c), Got::Failed(BRIDGE_E_ABANDONED, _)));
    unsafe { bridge_channel_free(c) };
    tracker.assert_each_freed_once(2);
    unsafe { bridge_free(b) };
}

unsafe extern "C" fn count_cancel(user_data: *mut c_void) {
    unsafe { &*user_data.cast::<AtomicUsize>() }.fetch_add(1, Ordering::SeqCst);
}

/// Many rounds of a producer sending as fast as it can while the consumer reads,
/// cancels a next now and then, and cancels or frees the channel at a random point.
/// Whatever the interleaving: the values read are exactly 0..k in order, where k is
/// the number of sends that ended BRIDGE_OK (lossless), every value is freed exactly
/// once, the terminal state is read once the values are and repeats, and it is
/// BRIDGE_CANCELLED exactly when the producer's cancel callback ran.
#[test]
fn cancellation_races_lose_no_value_and_free_each_once() {
    let b = start();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    const N: usize = 200;
    for round in 0..60 {
        let tracker = Tracker::new(N);
        let capacity = 1 + rng.below(4) as u32;
        let (s, c) = new_channel(b, capacity, BRIDGE_OVERFLOW_WAIT);
        let callback_runs = Arc::new(AtomicUsize::new(0));
        assert_eq!(
            unsafe {
                bridge_sender_on_cancel(
                    s,
                    Some(count_cancel),
                    Arc::as_ptr(&callback_runs).cast_mut().cast(),
                )
            },
            BRIDGE_OK
        );
        let (sp, t) = (P(s), tracker.clone());
        let how_to_end = rng.below(3);
        let producer = std::thread::spawn(move || {
            let sp = sp;
            let mut ok = 0;
            let mut made = 0;
            for i in 0..N {
                made += 1;
                match send_wait(sp.0, val(&t, i)) {
                    BRIDGE_OK => ok += 1,
                    BRIDGE_CANCELLED => break,
                    other => panic!("send ended {other}"),
                }
                if unsafe { bridge_sender_is_cancelled(sp.0) } {
                    break;
                }
            }
            match how_to_end {
                0 => unsafe { bridge_sender_close(sp.0) },
                1 => unsafe { bridge_sender_fail(sp.0, 7, std::ptr::null()) },
                _ => unsafe { bridge_sender_free(sp.0) },
            }
            (ok, made)
        });
        let cancel_at = rng.below(N as u64 + 20) as usize;
        let free_instead = rng.below(4) == 0;
        let mut seen = Vec::new();
        let mut cancelled_by_us = false;
        let terminal = loop {
            if seen.len() == cancel_at && !cancelled_by_us {
                cancelled_by_us = true;
                if free_instead {
                    unsafe { bridge_channel_free(c) };
                    break None;
                }
                unsafe { bridge_channel_cancel(c) };
            }
            let mut f = null_mut();
            assert_eq!(unsafe { bridge_channel_next(c, &mut f) }, BRIDGE_OK);
            let cancelled_this = rng.below(8) == 0;
            if cancelled_this {
                // A cancelled next loses nothing: its value comes with the next one.
                unsafe { future_cancel(f) };
            }
            match finish_next(f) {
                Got::Value(i) => seen.push(i),
                // Ours, or the terminal state: the next call tells.
                Got::Cancelled if cancelled_this => {}
                other => break Some(other),
            }
        };
        let (ok, made) = producer.join().unwrap();
        let expected: Vec<usize> = (0..seen.len()).collect();
        assert_eq!(seen, expected, "round {round}: values in order, none lost");
        if let Some(terminal) = terminal {
            assert_eq!(
                seen.len(),
                ok,
                "round {round}: every value sent OK was read"
            );
            let ran = callback_runs.load(Ordering::SeqCst);
            assert!(ran <= 1);
            assert_eq!(
                terminal == Got::Cancelled,
                ran == 1,
                "round {round}: cancelled exactly when the cancel callback ran ({terminal:?})"
            );
            if ran == 0 {
                let want = match how_to_end {
                    0 => Got::End,
                    1 => Got::Failed(7, "the producer failed with code 7".into()),
                    _ => Got::Failed(
                        BRIDGE_E_ABANDONED,
                        "the stream's sender was freed without being closed".into(),
                    ),
                };
                assert_eq!(terminal, want, "round {round}");
            }
            assert_eq!(
                next(c),
                terminal,
                "round {round}: the terminal state repeats"
            );
            unsafe { bridge_channel_free(c) };
        }
        tracker.assert_each_freed_once(made);
        for i in made..N {
            assert_eq!(tracker.freed(i), 0);
        }
    }
    unsafe { bridge_free(b) };
}

/// With BRIDGE_OVERFLOW_WAIT the producer is never more than capacity values, plus
/// the send that waits, ahead of the consumer, measured on every value.
#[test]
fn back_pressure_bounds_the_producer() {
    let b = start();
    const N: usize = 300;
    const CAP: usize = 3;
    let tracker = Tracker::new(N);
    let (s, c) = new_channel(b, CAP as u32, BRIDGE_OVERFLOW_WAIT);
    let started = Arc::new(AtomicUsize::new(0));
    let (sp, t, st) = (P(s), tracker.clone(), started.clone());
    let producer = std::thread::spawn(move || {
        let sp = sp;
        for i in 0..N {
            st.fetch_add(1, Ordering::SeqCst);
            assert_eq!(send_wait(sp.0, val(&t, i)), BRIDGE_OK);
        }
        unsafe { bridge_sender_close(sp.0) };
    });
    let mut rng = Rng(12345);
    let mut max_ahead = 0;
    for i in 0..N {
        if rng.below(10) == 0 {
            // Let the producer run into the bound now and then.
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(next(c), Got::Value(i));
        let ahead = started.load(Ordering::SeqCst) - (i + 1);
        max_ahead = max_ahead.max(ahead);
        assert!(ahead <= CAP + 1, "the producer got {ahead} values ahead");
    }
    assert_eq!(next(c), Got::End);
    producer.join().unwrap();
    println!("at most {max_ahead} ahead");
    unsafe { bridge_channel_free(c) };
    tracker.assert_each_freed_once(N);
    unsafe { bridge_free(b) };
}

/// The bound is reached exactly: `capacity` sends end at once, the next one waits
/// until a value is read; meanwhile other sends are BUSY and keep their values.
#[test]
fn a_full_channel_makes_the_send_wait_and_others_busy() {
    let b = start();
    let tracker = Tracker::new(8);
    let (s, c) = new_channel(b, 3, BRIDGE_OVERFLOW_WAIT);
    for i in 0..3 {
        let mut f = null_mut();
        assert_eq!(
            unsafe { bridge_sender_send(s, val(&tracker, i), Some(val_free), &mut f) },
            BRIDGE_OK
        );
        assert_eq!(unsafe { future_status(f) }, BRIDGE_OK, "room: OK at once");
        unsafe { future_release(f) };
    }
    let mut waiting = null_mut();
    assert_eq!(
        unsafe { bridge_sender_send(s, val(&tracker, 3), Some(val_free), &mut waiting) },
        BRIDGE_OK
    );
    assert_eq!(unsafe { future_status(waiting) }, BRIDGE_PENDING);
    // Another send and a try_send are refused and keep their values.
    let v4 = val(&tracker, 4);
    let mut f = null_mut();
    assert_eq!(
        unsafe { bridge_sender_send(s, v4, Some(val_free), &mut f) },
        BRIDGE_E_BUSY
    );
    assert_eq!(
        unsafe { bridge_sender_try_send(s, v4, Some(val_free)) },
        BRIDGE_E_BUSY
    );
    assert_eq!(tracker.freed(4), 0, "not consumed");
    assert_eq!(next(c), Got::Value(0));
    assert_eq!(unsafe { future_wait(waiting, LONG_MS) }, BRIDGE_OK);
    unsafe { future_release(waiting) };
    // Full again (1, 2, 3): try_send is BUSY; after a read it goes in.
    assert_eq!(
        unsafe { bridge_sender_try_send(s, v4, Some(val_free)) },
        BRIDGE_E_BUSY
    );
    assert_eq!(next(c), Got::Value(1));
    assert_eq!(
        unsafe { bridge_sender_try_send(s, v4, Some(val_free)) },
        BRIDGE_OK
    );
    unsafe { bridge_sender_close(s) };
    for i in 2..5 {
        assert_eq!(next(c), Got::Value(i));
    }
    assert_eq!(next(c), Got::End);
    unsafe { bridge_channel_free(c) };
    tracker.assert_each_freed_once(5);
    unsafe { bridge_free(b) };
}

#[test]
fn drop_oldest_counts_and_keep_latest_replaces() {
    let b = start();
    let tracker = Tracker::new(10);
    let (s, c) = new_channel(b, 3, BRIDGE_OVERFLOW_DROP_OLDEST);
    for i in 0..10 {
        assert_eq!(
            unsafe { bridge_sender_send(s, val(&tracker, i), Some(val_free), null_mut()) },
            BRIDGE_OK
        );
    }
    assert_eq!(unsafe { bridge_channel_dropped(c) }, 7);
    for i in 0..7 {
        assert_eq!(tracker.freed(i), 1, "dropped values are freed at once");
    }
    unsafe { bridge_sender_close(s) };
    for i in 7..10 {
        assert_eq!(next(c), Got::Value(i));
    }
    assert_eq!(next(c), Got::End);
    unsafe { bridge_channel_free(c) };
    tracker.assert_each_freed_once(10);

    let tracker = Tracker::new(10);
    // Capacity is ignored: one slot.
    let (s, c) = new_channel(b, 8, BRIDGE_OVERFLOW_KEEP_LATEST);
    for i in 0..5 {
        let mut f = null_mut();
        assert_eq!(
            unsafe { bridge_sender_send(s, val(&tracker, i), Some(val_free), &mut f) },
            BRIDGE_OK
        );
        assert_eq!(unsafe { future_status(f) }, BRIDGE_OK, "never waits");
        unsafe { future_release(f) };
    }
    assert_eq!(unsafe { bridge_channel_dropped(c) }, 4);
    assert_eq!(next(c), Got::Value(4));
    assert_eq!(
        unsafe { bridge_sender_try_send(s, val(&tracker, 5), Some(val_free)) },
        BRIDGE_OK
    );
    assert_eq!(
        unsafe { bridge_sender_try_send(s, val(&tracker, 6), Some(val_free)) },
        BRIDGE_OK
    );
    assert_eq!(unsafe { bridge_channel_dropped(c) }, 5);
    assert_eq!(next(c), Got::Value(6));
    unsafe { bridge_sender_close(s) };
    assert_eq!(next(c), Got::End);
    unsafe { bridge_channel_free(c) };
    tracker.assert_each_freed_once(7);
    unsafe { bridge_free(b) };
}

/// What the push-mode callback of a test sees.
struct Push {
    done: AtomicUsize, // the done future, as an address
    calls: AtomicUsize,
    started: AtomicUsize,
    in_order: AtomicBool,
    done_early: AtomicBool,
    too_far_ahead: AtomicBool,
}

const PUSH_CAP: usize = 4;

unsafe extern "C" fn on_value(value: *mut c_void, user_data: *mut c_void) {
    let push = unsafe { &*user_data.cast::<Push>() };
    let i = index_of(value);
    let calls = push.calls.fetch_add(1, Ordering::SeqCst) + 1;
    if i + 1 != calls {
        push.in_order.store(false, Ordering::SeqCst);
    }
    let done = push.done.load(Ordering::SeqCst) as *mut future_t;
    if !done.is_null() && unsafe { future_status(done) } != BRIDGE_PENDING {
        push.done_early.store(true, Ordering::SeqCst);
    }
    if push.started.load(Ordering::SeqCst) > calls + PUSH_CAP {
        push.too_far_ahead.store(true, Ordering::SeqCst);
    }
}

/// Push mode: the callback runs in the queue's dispatch once per value, in order,
/// with back-pressure up to the callback; the done future ends after the last call.
#[test]
fn push_mode_delivers_in_order_and_ends_after_the_last_value() {
    let b = start();
    const N: usize = 500;
    let tracker = Tracker::new(N);
    let (s, c) = new_channel(b, PUSH_CAP as u32, BRIDGE_OVERFLOW_WAIT);
    let mut q = null_mut();
    assert_eq!(unsafe { bridge_queue_new(&mut q) }, BRIDGE_OK);
    let push = Box::new(Push {
        done: AtomicUsize::new(0),
        calls: AtomicUsize::new(0),
        started: AtomicUsize::new(0),
        in_order: AtomicBool::new(true),
        done_early: AtomicBool::new(false),
        too_far_ahead: AtomicBool::new(false),
    });
    let push_ptr: *const Push = &*push;
    let mut done = null_mut();
    assert_eq!(
        unsafe {
            bridge_channel_on_value(c, q, Some(on_value), push_ptr.cast_mut().cast(), &mut done)
        },
        BRIDGE_OK
    );
    push.done.store(done as usize, Ordering::SeqCst);
    let mut f = null_mut();
    assert_eq!(
        unsafe { bridge_channel_next(c, &mut f) },
        BRIDGE_E_BUSY,
        "push mode owns the channel"
    );
    let (sp, t, pp) = (P(s), tracker.clone(), P(push_ptr.cast_mut()));
    let producer = std::thread::spawn(move || {
        let (sp, pp) = (sp, pp);
        for i in 0..N {
            unsafe { &*pp.0 }.started.fetch_add(1, Ordering::SeqCst);
            assert_eq!(send_wait(sp.0, val(&t, i)), BRIDGE_OK);
        }
        unsafe { bridge_sender_close(sp.0) };
    });
    while unsafe { future_status(done) } == BRIDGE_PENDING {
        unsafe { bridge_queue_wait(q, 50) };
        unsafe { bridge_queue_dispatch(q, 0) };
    }
    producer.join().unwrap();
    assert_eq!(unsafe { future_status(done) }, BRIDGE_OK);
    assert_eq!(unsafe { future_value_type(done) }, BRIDGE_VALUE_NONE);
    assert_eq!(
        push.calls.load(Ordering::SeqCst),
        N,
        "every value before done"
    );
    assert!(push.in_order.load(Ordering::SeqCst));
    assert!(
        !push.done_early.load(Ordering::SeqCst),
        "done before a call"
    );
    assert!(!push.too_far_ahead.load(Ordering::SeqCst), "back-pressure");
    tracker.assert_each_freed_once(N);
    unsafe { future_release(done) };
    unsafe { bridge_channel_free(c) };
    unsafe { bridge_queue_free(q) };
    unsafe { bridge_free(b) };
}

unsafe extern "C" fn ignore_value(_value: *mut c_void, _user_data: *mut c_void) {}

#[test]
fn push_mode_fails_closed_when_its_queue_is_freed() {
    let b = start();
    let tracker = Tracker::new(3);
    let (s, c) = new_channel(b, 0, BRIDGE_OVERFLOW_WAIT);
    let mut q = null_mut();
    assert_eq!(unsafe { bridge_queue_new(&mut q) }, BRIDGE_OK);
    unsafe { bridge_queue_free(q) };
    let mut q = null_mut();
    assert_eq!(unsafe { bridge_queue_new(&mut q) }, BRIDGE_OK);
    let mut done = null_mut();
    assert_eq!(
        unsafe { bridge_channel_on_value(c, q, Some(ignore_value), null_mut(), &mut done) },
        BRIDGE_OK
    );
    unsafe { bridge_queue_free(q) };
    assert_eq!(send_wait(s, val(&tracker, 0)), BRIDGE_OK);
    assert_eq!(unsafe { future_wait(done, LONG_MS) }, BRIDGE_FAILED);
    assert_eq!(unsafe { future_error_code(done) }, BRIDGE_E_CLOSED);
    assert!(
        unsafe { bridge_sender_is_cancelled(s) },
        "the producer is asked to stop"
    );
    assert_eq!(send_wait(s, val(&tracker, 1)), BRIDGE_CANCELLED);
    assert_eq!(
        tracker.freed(1),
        1,
        "a value sent after the cancel is freed at once"
    );
    unsafe { bridge_sender_close(s) };
    unsafe { future_release(done) };
    unsafe { bridge_channel_free(c) };
    tracker.assert_each_freed_once(2);
    unsafe { bridge_free(b) };
}

#[test]
fn a_second_pending_next_is_busy_and_a_cancelled_one_loses_nothing() {
    let b = start();
    let tracker = Tracker::new(1);
    let (s, c) = new_channel(b, 0, BRIDGE_OVERFLOW_WAIT);
    let mut first = null_mut();
    assert_eq!(unsafe { bridge_channel_next(c, &mut first) }, BRIDGE_OK);
    let mut second = null_mut();
    assert_eq!(
        unsafe { bridge_channel_next(c, &mut second) },
        BRIDGE_E_BUSY
    );
    assert_eq!(unsafe { future_cancel(first) }, BRIDGE_OK);
    assert_eq!(finish_next(first), Got::Cancelled);
    assert_eq!(send_wait(s, val(&tracker, 0)), BRIDGE_OK);
    assert_eq!(
        next(c),
        Got::Value(0),
        "the next after a cancelled one works"
    );
    unsafe { bridge_sender_close(s) };
    unsafe { bridge_channel_free(c) };
    tracker.assert_each_freed_once(1);
    unsafe { bridge_free(b) };
}

#[test]
fn shutdown_resolves_pending_next_and_send() {
    let b = start();
    let tracker = Tracker::new(2);
    let (s1, c1) = new_channel(b, 0, BRIDGE_OVERFLOW_WAIT);
    let (s2, c2) = new_channel(b, 1, BRIDGE_OVERFLOW_WAIT);
    let mut reading = null_mut();
    assert_eq!(unsafe { bridge_channel_next(c1, &mut reading) }, BRIDGE_OK);
    assert_eq!(send_wait(s2, val(&tracker, 0)), BRIDGE_OK);
    let mut sending = null_mut();
    assert_eq!(
        unsafe { bridge_sender_send(s2, val(&tracker, 1), Some(val_free), &mut sending) },
        BRIDGE_OK
    );
    assert_eq!(unsafe { future_status(sending) }, BRIDGE_PENDING);
    let mut stats = std::mem::MaybeUninit::<bridge_stats_t>::uninit();
    assert_eq!(unsafe { bridge_stats(b, stats.as_mut_ptr()) }, BRIDGE_OK);
    assert_eq!(
        unsafe { stats.assume_init() }.pending,
        2,
        "futures of the bridge"
    );
    assert_eq!(unsafe { bridge_shutdown(b, 0) }, BRIDGE_OK);
    assert_eq!(unsafe { future_status(reading) }, BRIDGE_CANCELLED);
    assert_eq!(unsafe { future_status(sending) }, BRIDGE_CANCELLED);
    assert_eq!(tracker.freed(1), 1, "the pending send's value is freed");
    let mut f = null_mut();
    assert_eq!(
        unsafe { bridge_channel_next(c2, &mut f) },
        BRIDGE_E_NOT_RUNNING
    );
    unsafe {
        future_release(reading);
        future_release(sending);
        bridge_sender_close(s1);
        bridge_sender_close(s2);
        bridge_channel_free(c1);
        bridge_channel_free(c2);
    }
    tracker.assert_each_freed_once(2);
    unsafe { bridge_free(b) };
}

#[test]
fn the_cancel_callback_follows_the_promise_rules() {
    let b = start();
    let runs = AtomicUsize::new(0);
    let runs_ptr: *mut c_void = (&runs as *const AtomicUsize).cast_mut().cast();
    let (s, c) = new_channel(b, 0, BRIDGE_OVERFLOW_WAIT);
    assert_eq!(
        unsafe { bridge_sender_on_cancel(s, Some(count_cancel), runs_ptr) },
        BRIDGE_OK
    );
    assert_eq!(
        unsafe { bridge_sender_on_cancel(s, Some(count_cancel), runs_ptr) },
        BRIDGE_E_INVALID,
        "one per sender"
    );
    assert!(!unsafe { bridge_sender_is_cancelled(s) });
    unsafe { bridge_channel_cancel(c) };
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "on the requesting thread, at once"
    );
    unsafe { bridge_channel_cancel(c) };
    assert_eq!(runs.load(Ordering::SeqCst), 1, "once");
    assert!(unsafe { bridge_sender_is_cancelled(s) });
    let v = 0usize;
    assert_eq!(
        unsafe { bridge_sender_try_send(s, (&v as *const usize).cast_mut().cast(), None) },
        BRIDGE_E_CLOSED
    );
    // Not final until the producer consumed its sender.
    let mut f = null_mut();
    assert_eq!(unsafe { bridge_channel_next(c, &mut f) }, BRIDGE_OK);
    assert_eq!(unsafe { future_wait(f, 0) }, BRIDGE_TIMEOUT);
    unsafe { bridge_sender_close(s) };
    assert_eq!(finish_next(f), Got::Cancelled);
    unsafe { bridge_channel_free(c) };

    // Registered after the request: at once. Consumed first: never.
    let (s, c) = new_channel(b, 0, BRIDGE_OVERFLOW_WAIT);
    unsafe { bridge_channel_cancel(c) };
    assert_eq!(
        unsafe { bridge_sender_on_cancel(s, Some(count_cancel), runs_ptr) },
        BRIDGE_OK
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    unsafe { bridge_sender_free(s) };
    assert_eq!(next(c), Got::Cancelled, "cancelled wins over abandoned");
    unsafe { bridge_channel_free(c) };
    let (s, c) = new_channel(b, 0, BRIDGE_OVERFLOW_WAIT);
    assert_eq!(
        unsafe { bridge_sender_on_cancel(s, Some(count_cancel), runs_ptr) },
        BRIDGE_OK
    );
    unsafe { bridge_sender_close(s) };
    unsafe { bridge_channel_cancel(c) };
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the producer had stopped");
    assert_eq!(next(c), Got::End);
    unsafe { bridge_channel_free(c) };
    unsafe { bridge_free(b) };
}

/// Dropped with the producer block of `spawn_channel`.
struct Flag(Arc<AtomicBool>);

impl Drop for Flag {
    fn drop(&mut self) {
        // Slow on purpose: an end decided before the drop finished would be seen.
        std::thread::sleep(Duration::from_millis(20));
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_rust_producer_is_dropped_when_the_consumer_cancels() {
    let b = start();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = Flag(dropped.clone());
    let mut c = null_mut();
    let status = unsafe {
        spawn_channel(
            b,
            Options {
                capacity: 2,
                ..Options::default()
            },
            &mut c,
            move |mut tx: Sender<CItem>| async move {
                let _flag = flag;
                let mut i = 0u64;
                loop {
                    i += 1;
                    let bytes = i.to_string().into_bytes();
                    if tx.send(CItem::bytes(bytes)).await.is_err() {
                        // Not reached: the block is dropped at the await first.
                        return Ok(());
                    }
                }
            },
        )
    };
    assert_eq!(status, BRIDGE_OK);
    for want in ["1", "2", "3"] {
        let mut f = null_mut();
        assert_eq!(unsafe { bridge_channel_next(c, &mut f) }, BRIDGE_OK);
        assert_eq!(unsafe { future_wait(f, LONG_MS) }, BRIDGE_OK);
        assert_eq!(unsafe { future_value_type(f) }, BRIDGE_VALUE_BYTES);
        let bytes = unsafe { &*future_value(f).cast::<bridge_bytes_t>() };
        assert_eq!(
            unsafe { std::slice::from_raw_parts(bytes.data, bytes.len) },
            want.as_bytes()
        );
        unsafe { future_release(f) };
    }
    unsafe { bridge_channel_cancel(c) };
    // What was sent before the request is still read, then the end.
    let terminal = loop {
        let mut f = null_mut();
        assert_eq!(unsafe { bridge_channel_next(c, &mut f) }, BRIDGE_OK);
        let status = unsafe { future_wait(f, LONG_MS) };
        unsafe { future_release(f) };
        if status != BRIDGE_OK {
            break status;
        }
    };
    assert_eq!(terminal, BRIDGE_CANCELLED);
    assert!(
        dropped.load(Ordering::SeqCst),
        "cancelled only once the block was dropped"
    );
    unsafe { bridge_channel_free(c) };
    unsafe { bridge_free(b) };
}

#[test]
fn a_rust_producer_closes_or_fails_the_channel_with_its_result() {
    let b = start();
    let mut c = null_mut();
    let status = unsafe {
        spawn_channel(
            b,
            Options::default(),
            &mut c,
            |mut tx: Sender<CItem>| async move {
                let _ = tx.send(CItem::bytes(b"only".to_vec())).await;
                Err(asyncbridge::Failure::new(9, "gave up"))
            },
        )
    };
    assert_eq!(status, BRIDGE_OK);
    let mut f = null_mut();
    assert_eq!(unsafe { bridge_channel_next(c, &mut f) }, BRIDGE_OK);
    assert_eq!(unsafe { future_wait(f, LONG_MS) }, BRIDGE_OK);
    unsafe { future_release(f) };
    let mut f = null_mut();
    assert_eq!(unsafe { bridge_channel_next(c, &mut f) }, BRIDGE_OK);
    assert_eq!(unsafe { future_wait(f, LONG_MS) }, BRIDGE_FAILED);
    assert_eq!(unsafe { future_error_code(f) }, 9);
    unsafe { future_release(f) };
    unsafe { bridge_channel_free(c) };
    let mut c2 = null_mut();
    assert_eq!(
        unsafe {
            spawn_channel(
                null_mut(),
                Options::default(),
                &mut c2,
                |_tx: Sender<CItem>| async { Ok(()) },
            )
        },
        BRIDGE_E_INVALID
    );
    unsafe { bridge_free(b) };
}

#[test]
fn null_and_invalid_arguments_are_refused() {
    let b = start();
    let tracker = Tracker::new(4);
    let (mut s, mut c) = (null_mut(), null_mut());
    unsafe {
        assert_eq!(
            bridge_channel_new(null_mut(), std::ptr::null(), &mut s, &mut c),
            BRIDGE_E_INVALID
        );
        assert_eq!(
            bridge_channel_new(b, std::ptr::null(), null_mut(), &mut c),
            BRIDGE_E_INVALID
        );
        assert_eq!(
            bridge_channel_new(b, std::ptr::null(), &mut s, null_mut()),
            BRIDGE_E_INVALID
        );
        let mut o = std::mem::MaybeUninit::<bridge_channel_options_t>::uninit();
        bridge_channel_options_init(o.as_mut_ptr());
        let mut o = o.assume_init();
        o.overflow = 3;
        assert_eq!(bridge_channel_new(b, &o, &mut s, &mut c), BRIDGE_E_INVALID);
        o.overflow = 0;
        o.size = 4;
        assert_eq!(bridge_channel_new(b, &o, &mut s, &mut c), BRIDGE_E_INVALID);
        assert!(s.is_null() && c.is_null(), "nothing written on failure");
        bridge_channel_options_init(null_mut());

        let mut f = null_mut();
        assert_eq!(
            bridge_sender_send(null_mut(), val(&tracker, 0), Some(val_free), &mut f),
            BRIDGE_E_INVALID
        );
        assert_eq!(
            tracker.freed(0),
            1,
            "send consumes its value on INVALID too"
        );
        assert_eq!(
            bridge_sender_try_send(null_mut(), null_mut(), None),
            BRIDGE_E_INVALID
        );
        assert!(!bridge_sender_is_cancelled(std::ptr::null()));
        assert_eq!(
            bridge_sender_on_cancel(null_mut(), Some(count_cancel), null_mut()),
            BRIDGE_E_INVALID
        );
        assert_eq!(bridge_channel_next(null_mut(), &mut f), BRIDGE_E_INVALID);
        assert_eq!(bridge_channel_dropped(std::ptr::null()), 0);
        bridge_channel_cancel(null_mut());
        bridge_channel_free(null_mut());
        bridge_sender_close(null_mut());
        bridge_sender_fail(null_mut(), 1, std::ptr::null());
        bridge_sender_free(null_mut());

        let (s, c) = new_channel(b, 0, BRIDGE_OVERFLOW_WAIT);
        assert_eq!(
            bridge_sender_send(s, val(&tracker, 1), Some(val_free), null_mut()),
            BRIDGE_E_INVALID,
            "no future with WAIT"
        );
        assert_eq!(tracker.freed(1), 1);
        assert_eq!(
            bridge_sender_on_cancel(s, None, null_mut()),
            BRIDGE_E_INVALID
        );
        assert_eq!(bridge_channel_next(c, null_mut()), BRIDGE_E_INVALID);
        let mut q = null_mut();
        assert_eq!(bridge_queue_new(&mut q), BRIDGE_OK);
        let mut done = null_mut();
        assert_eq!(
            bridge_channel_on_value(null_mut(), q, Some(ignore_value), null_mut(), &mut done),
            BRIDGE_E_INVALID
        );
        assert_eq!(
            bridge_channel_on_value(c, null_mut(), Some(ignore_value), null_mut(), &mut done),
            BRIDGE_E_INVALID
        );
        assert_eq!(
            bridge_channel_on_value(c, q, None, null_mut(), &mut done),
            BRIDGE_E_INVALID
        );
        assert_eq!(
            bridge_channel_on_value(c, q, Some(ignore_value), null_mut(), null_mut()),
            BRIDGE_E_INVALID
        );
        // Refused calls did not take the channel's reader.
        assert_eq!(
            bridge_sender_send(s, val(&tracker, 2), Some(val_free), &mut f),
            BRIDGE_OK
        );
        future_release(f);
        assert_eq!(next(c), Got::Value(2));
        bridge_sender_close(s);
        bridge_channel_free(c);
        bridge_queue_free(q);
        assert_eq!(bridge_shutdown(b, 0), BRIDGE_OK);
        let (mut s, mut c) = (null_mut(), null_mut());
        assert_eq!(
            bridge_channel_new(b, std::ptr::null(), &mut s, &mut c),
            BRIDGE_E_NOT_RUNNING
        );
    }
    unsafe { bridge_free(b) };
}

/// What a slow cancel callback records.
struct SlowCancel {
    running: AtomicBool,
    calls: AtomicUsize,
}

unsafe extern "C" fn slow_cancel(user_data: *mut c_void) {
    let slow = unsafe { &*user_data.cast::<SlowCancel>() };
    slow.running.store(true, Ordering::SeqCst);
    slow.calls.fetch_add(1, Ordering::SeqCst);
    // Slow on purpose: a consuming call that did not wait would see it running.
    std::thread::sleep(Duration::from_millis(50));
    slow.running.store(false, Ordering::SeqCst);
}

/// A consuming call made while the cancel callback runs on another thread returns
/// only after it: then the callback is not running and never runs.
#[test]
fn consuming_the_sender_waits_for_a_running_cancel_callback() {
    let b = start();
    let slow = Arc::new(SlowCancel {
        running: AtomicBool::new(false),
        calls: AtomicUsize::new(0),
    });
    let (s, c) = new_channel(b, 0, BRIDGE_OVERFLOW_WAIT);
    assert_eq!(
        unsafe {
            bridge_sender_on_cancel(s, Some(slow_cancel), Arc::as_ptr(&slow).cast_mut().cast())
        },
        BRIDGE_OK
    );
    let cp = P(c);
    let canceller = std::thread::spawn(move || {
        let cp = cp;
        unsafe { bridge_channel_cancel(cp.0) };
    });
    while !slow.running.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    unsafe { bridge_sender_close(s) };
    assert!(
        !slow.running.load(Ordering::SeqCst),
        "close returned during the callback"
    );
    canceller.join().unwrap();
    assert_eq!(slow.calls.load(Ordering::SeqCst), 1);
    assert_eq!(next(c), Got::Cancelled);
    unsafe { bridge_channel_free(c) };
    unsafe { bridge_free(b) };
}

unsafe extern "C" fn free_sender_in_callback(user_data: *mut c_void) {
    unsafe { bridge_sender_free(user_data.cast()) };
}

/// The cancel callback may consume the sender itself, on the requesting thread or
/// at once in the registration.
#[test]
fn the_cancel_callback_may_consume_the_sender() {
    let b = start();
    let (s, c) = new_channel(b, 0, BRIDGE_OVERFLOW_WAIT);
    assert_eq!(
        unsafe { bridge_sender_on_cancel(s, Some(free_sender_in_callback), s.cast()) },
        BRIDGE_OK
    );
    unsafe { bridge_channel_cancel(c) };
    assert_eq!(
        next(c),
        Got::Cancelled,
        "the sender is gone: cancelled at once"
    );
    unsafe { bridge_channel_free(c) };

    let (s, c) = new_channel(b, 0, BRIDGE_OVERFLOW_WAIT);
    unsafe { bridge_channel_cancel(c) };
    assert_eq!(
        unsafe { bridge_sender_on_cancel(s, Some(free_sender_in_callback), s.cast()) },
        BRIDGE_OK
    );
    assert_eq!(next(c), Got::Cancelled);
    unsafe { bridge_channel_free(c) };
    unsafe { bridge_free(b) };
}

/// max_pending refuses a send's future like any submission: BRIDGE_E_BUSY, and the
/// value stays the caller's; a next is refused the same way.
#[test]
fn max_pending_refuses_without_consuming_the_value() {
    let mut cfg = std::mem::MaybeUninit::<bridge_config_t>::uninit();
    unsafe { bridge_config_init(cfg.as_mut_ptr()) };
    let mut cfg = unsafe { cfg.assume_init() };
    cfg.max_pending = 1;
    let mut b = null_mut();
    assert_eq!(unsafe { bridge_start(&cfg, &mut b) }, BRIDGE_OK);
    let tracker = Tracker::new(2);
    let (s, c) = new_channel(b, 1, BRIDGE_OVERFLOW_WAIT);
    let (s2, c2) = new_channel(b, 1, BRIDGE_OVERFLOW_WAIT);
    let mut reading = null_mut();
    assert_eq!(unsafe { bridge_channel_next(c2, &mut reading) }, BRIDGE_OK);
    let v = val(&tracker, 0);
    let mut f = null_mut();
    assert_eq!(
        unsafe { bridge_sender_send(s, v, Some(val_free), &mut f) },
        BRIDGE_E_BUSY
    );
    assert_eq!(tracker.freed(0), 0, "not consumed");
    let mut g = null_mut();
    assert_eq!(unsafe { bridge_channel_next(c, &mut g) }, BRIDGE_E_BUSY);
    unsafe { bridge_sender_close(s2) };
    assert_eq!(finish_next(reading), Got::End);
    assert_eq!(send_wait(s, v), BRIDGE_OK, "the same value, later");
    assert_eq!(next(c), Got::Value(0));
    unsafe {
        bridge_sender_close(s);
        bridge_channel_free(c);
        bridge_channel_free(c2);
    }
    tracker.assert_each_freed_once(1);
    unsafe { bridge_free(b) };
}

/// What the racing cancel callback saw.
struct Race {
    ran: AtomicUsize,
    consumed: AtomicBool,
    late: AtomicBool,
}

unsafe extern "C" fn race_cancel(user_data: *mut c_void) {
    let race = unsafe { &*user_data.cast::<Race>() };
    if race.consumed.load(Ordering::SeqCst) {
        race.late.store(true, Ordering::SeqCst);
    }
    race.ran.fetch_add(1, Ordering::SeqCst);
}

/// A cancel and the consuming call racing on two threads are ordered: the callback
/// never runs after the consuming call returned, and the channel ends cancelled
/// exactly when it ran.
#[test]
fn cancel_and_close_racing_are_ordered() {
    let b = start();
    for round in 0..500 {
        let race = Arc::new(Race {
            ran: AtomicUsize::new(0),
            consumed: AtomicBool::new(false),
            late: AtomicBool::new(false),
        });
        let (s, c) = new_channel(b, 0, BRIDGE_OVERFLOW_WAIT);
        assert_eq!(
            unsafe {
                bridge_sender_on_cancel(s, Some(race_cancel), Arc::as_ptr(&race).cast_mut().cast())
            },
            BRIDGE_OK
        );
        let go = Arc::new(std::sync::Barrier::new(2));
        let (sp, r, g) = (P(s), race.clone(), go.clone());
        let closer = std::thread::spawn(move || {
            let sp = sp;
            g.wait();
            unsafe { bridge_sender_close(sp.0) };
            r.consumed.store(true, Ordering::SeqCst);
        });
        go.wait();
        unsafe { bridge_channel_cancel(c) };
        closer.join().unwrap();
        assert!(
            !race.late.load(Ordering::SeqCst),
            "round {round}: ran after close returned"
        );
        let ran = race.ran.load(Ordering::SeqCst);
        let want = if ran == 1 { Got::Cancelled } else { Got::End };
        assert_eq!(next(c), want, "round {round}");
        unsafe { bridge_channel_free(c) };
    }
    unsafe { bridge_free(b) };
}
