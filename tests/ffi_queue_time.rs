//! The queue, time, composition, timer and signal functions called from Rust through
//! their C signatures, with `extern "C"` callbacks, as a C program would.

use std::ffi::{c_int, c_void, CStr};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use asyncbridge::ffi::bridge::*;
use asyncbridge::ffi::future::*;
use asyncbridge::ffi::job::*;
use asyncbridge::ffi::queue::*;
use asyncbridge::ffi::signal::*;
use asyncbridge::ffi::status::*;
use asyncbridge::ffi::timer::*;

fn start() -> *mut bridge_t {
    let mut b = null_mut();
    assert_eq!(unsafe { bridge_start(null(), &mut b) }, BRIDGE_OK);
    b
}

fn wait_for(what: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !what() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    what()
}

unsafe extern "C" fn reports_progress(job: *mut bridge_job_t, _arg: *mut c_void) -> i32 {
    for i in 1..=10 {
        unsafe { bridge_job_set_progress(job, i, 10) };
    }
    0
}

unsafe extern "C" fn count_done(_f: *mut future_t, user_data: *mut c_void) {
    unsafe { &*user_data.cast::<AtomicUsize>() }.fetch_add(1, Ordering::SeqCst);
}

unsafe extern "C" fn last_progress(
    _f: *mut future_t,
    done: u64,
    _total: u64,
    user_data: *mut c_void,
) {
    unsafe { &*user_data.cast::<AtomicU64>() }.store(done, Ordering::SeqCst);
}

unsafe extern "C" fn count_notify(user_data: *mut c_void) {
    unsafe { &*user_data.cast::<AtomicUsize>() }.fetch_add(1, Ordering::SeqCst);
}

fn ptr<T>(value: &T) -> *mut c_void {
    (value as *const T).cast_mut().cast()
}

#[test]
fn completion_queue_through_the_c_api() {
    let b = start();
    let mut q = null_mut();
    assert_eq!(unsafe { bridge_queue_new(&mut q) }, BRIDGE_OK);
    assert!(unsafe { bridge_queue_fd(q) } >= 0);
    let (done, notified, progress) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicU64::new(0));
    unsafe { bridge_queue_set_notify(q, Some(count_notify), ptr(&notified)) };
    let mut f = null_mut();
    assert_eq!(
        unsafe {
            bridge_submit(
                b,
                Some(reports_progress),
                null_mut(),
                None,
                BRIDGE_RUN_BLOCKING,
                &mut f,
            )
        },
        BRIDGE_OK
    );
    assert_eq!(
        unsafe { future_on_progress_via(f, q, Some(last_progress), ptr(&progress)) },
        BRIDGE_OK
    );
    assert_eq!(
        unsafe { future_on_done_via(f, q, Some(count_done), ptr(&done)) },
        BRIDGE_OK
    );
    assert_eq!(unsafe { future_wait(f, 10_000) }, BRIDGE_OK);
    assert_eq!(done.load(Ordering::SeqCst), 0, "only inside dispatch");
    assert_eq!(unsafe { bridge_queue_wait(q, 10_000) }, BRIDGE_OK);
    assert!(notified.load(Ordering::SeqCst) >= 1);
    assert!(unsafe { bridge_queue_dispatch(q, 0) } >= 1);
    assert_eq!(done.load(Ordering::SeqCst), 1);
    assert_eq!(unsafe { bridge_queue_wait(q, 0) }, BRIDGE_TIMEOUT);

    // Withdrawn before it was dispatched: never runs.
    let other = AtomicUsize::new(0);
    assert_eq!(
        unsafe { future_on_done_via(f, q, Some(count_done), ptr(&other)) },
        BRIDGE_OK
    );
    assert_eq!(unsafe { future_withdraw_via(f, q, ptr(&other)) }, 1);
    assert_eq!(unsafe { bridge_queue_dispatch(q, 0) }, 0);
    assert_eq!(other.load(Ordering::SeqCst), 0);

    unsafe {
        bridge_queue_set_notify(q, None, null_mut());
        future_release(f);
        bridge_queue_free(q);
        bridge_free(b);
    }
}

unsafe extern "C" fn then_reads_prev(
    job: *mut bridge_job_t,
    prev: *mut future_t,
    _arg: *mut c_void,
) -> i32 {
    // The previous future is borrowed for the call: its outcome is readable here.
    if unsafe { future_status(prev) } == BRIDGE_OK {
        0
    } else {
        unsafe { bridge_job_fail(job, 9, c"prev did not end ok".as_ptr()) }
    }
}

#[test]
fn time_and_composition_through_the_c_api() {
    let b = start();
    let started = Instant::now();
    let mut sleep = null_mut();
    assert_eq!(unsafe { bridge_sleep(b, 20, &mut sleep) }, BRIDGE_OK);
    let mut next = null_mut();
    assert_eq!(
        unsafe {
            future_then(
                sleep,
                Some(then_reads_prev),
                null_mut(),
                None,
                BRIDGE_RUN_ON_LOOP,
                &mut next,
            )
        },
        BRIDGE_OK
    );
    assert_eq!(unsafe { future_wait(next, 10_000) }, BRIDGE_OK);
    assert!(
        started.elapsed() >= Duration::from_millis(20),
        "never early"
    );

    let mut long = null_mut();
    assert_eq!(unsafe { bridge_sleep(b, 3_600_000, &mut long) }, BRIDGE_OK);
    assert_eq!(unsafe { future_set_timeout(long, 10) }, BRIDGE_OK);
    assert_eq!(unsafe { future_wait(long, 10_000) }, BRIDGE_FAILED);
    assert_eq!(unsafe { future_error_code(long) }, BRIDGE_E_TIMED_OUT);
    let message = unsafe { CStr::from_ptr(future_error_message(long)) };
    assert_eq!(message, c"timed out after 10 ms");

    let inputs = [sleep, next];
    let mut all = null_mut();
    let mut any = null_mut();
    assert_eq!(
        unsafe { future_all(inputs.as_ptr(), 2, &mut all) },
        BRIDGE_OK
    );
    assert_eq!(
        unsafe { future_any(inputs.as_ptr(), 2, &mut any) },
        BRIDGE_OK
    );
    assert_eq!(unsafe { future_wait(all, 10_000) }, BRIDGE_OK);
    assert_eq!(unsafe { future_wait(any, 10_000) }, BRIDGE_OK);
    assert_eq!(
        unsafe { *future_value(any).cast::<usize>() },
        0,
        "the first input, finished first"
    );
    assert_eq!(
        unsafe { future_any(inputs.as_ptr(), 0, &mut any) },
        BRIDGE_E_INVALID
    );
    for f in [sleep, next, long, all, any] {
        unsafe { future_release(f) };
    }
    unsafe { bridge_free(b) };
}

unsafe extern "C" fn count_ticks(_t: *mut bridge_timer_t, ticks: u64, user_data: *mut c_void) {
    unsafe { &*user_data.cast::<AtomicU64>() }.fetch_add(ticks, Ordering::SeqCst);
}

unsafe extern "C" fn count_signals(
    _w: *mut bridge_signal_t,
    signum: c_int,
    count: u64,
    user_data: *mut c_void,
) {
    assert_eq!(signum, libc::SIGWINCH);
    unsafe { &*user_data.cast::<AtomicU64>() }.fetch_add(count, Ordering::SeqCst);
}

#[test]
fn timers_and_signal_watches_through_the_c_api() {
    let b = start();
    let ticks = AtomicU64::new(0);
    let mut t = null_mut();
    assert_eq!(
        unsafe { bridge_timer_start(b, 1, 2, null_mut(), Some(count_ticks), ptr(&ticks), &mut t) },
        BRIDGE_OK
    );
    assert!(wait_for(|| ticks.load(Ordering::SeqCst) >= 3));
    unsafe { bridge_timer_stop(t) };
    let at_stop = ticks.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        ticks.load(Ordering::SeqCst),
        at_stop,
        "no tick after stop returned"
    );
    unsafe { bridge_timer_free(t) };

    let arrivals = AtomicU64::new(0);
    let mut w = null_mut();
    assert_eq!(
        unsafe {
            bridge_signal_start(
                b,
                libc::SIGWINCH,
                null_mut(),
                Some(count_signals),
                ptr(&arrivals),
                &mut w,
            )
        },
        BRIDGE_OK
    );
    for _ in 0..10 {
        // SAFETY: raise delivers SIGWINCH to this thread; the handler only counts.
        unsafe { libc::raise(libc::SIGWINCH) };
    }
    assert!(wait_for(|| arrivals.load(Ordering::SeqCst) == 10));
    unsafe {
        bridge_signal_stop(w);
        bridge_signal_free(w);
    }
    let mut refused = null_mut();
    assert_eq!(
        unsafe {
            bridge_signal_start(
                b,
                libc::SIGKILL,
                null_mut(),
                Some(count_signals),
                null_mut(),
                &mut refused,
            )
        },
        BRIDGE_E_INVALID
    );
    unsafe { bridge_free(b) };
}
