//! Every exported function called from Rust through its C signature, with
//! `extern "C"` callbacks, as a C program would.

use std::ffi::{c_char, c_void, CStr};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use asyncbridge::ffi::bridge::*;
use asyncbridge::ffi::future::*;
use asyncbridge::ffi::job::*;
use asyncbridge::ffi::status::*;

static VALUE_FREES: AtomicUsize = AtomicUsize::new(0);
static ARG_FREES: AtomicUsize = AtomicUsize::new(0);
static CALLBACKS: AtomicUsize = AtomicUsize::new(0);
/// Tests share the counters above; run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

unsafe extern "C" fn free_value(p: *mut c_void) {
    VALUE_FREES.fetch_add(1, Ordering::SeqCst);
    drop(unsafe { Box::from_raw(p.cast::<u64>()) });
}

unsafe extern "C" fn free_arg(p: *mut c_void) {
    ARG_FREES.fetch_add(1, Ordering::SeqCst);
    drop(unsafe { Box::from_raw(p.cast::<u64>()) });
}

/// Doubles the u64 behind `arg` into a boxed value; reports progress on the way.
unsafe extern "C" fn double(job: *mut bridge_job_t, arg: *mut c_void) -> i32 {
    let n = unsafe { *arg.cast::<u64>() };
    unsafe { bridge_job_set_progress(job, 1, 2) };
    assert!(!unsafe { bridge_job_is_cancelled(job) });
    let value = Box::into_raw(Box::new(n * 2)).cast::<c_void>();
    unsafe { bridge_job_set_value(job, value, Some(free_value)) };
    0
}

unsafe extern "C" fn failing(job: *mut bridge_job_t, _arg: *mut c_void) -> i32 {
    unsafe { bridge_job_fail(job, 7, c"seven".as_ptr()) }
}

unsafe extern "C" fn self_cancelling(job: *mut bridge_job_t, _arg: *mut c_void) -> i32 {
    unsafe { bridge_job_cancel(job) };
    assert!(unsafe { bridge_job_is_cancelled(job) });
    0
}

unsafe extern "C" fn waits_on_loop(_job: *mut bridge_job_t, arg: *mut c_void) -> i32 {
    // `arg` is a future of the same bridge: blocking on it here would deadlock.
    let f = arg.cast::<future_t>();
    match unsafe { future_wait(f, 1000) } {
        BRIDGE_E_WOULD_DEADLOCK => 0,
        other => 100 + other,
    }
}

unsafe extern "C" fn sleeper(job: *mut bridge_job_t, _arg: *mut c_void) -> i32 {
    while !unsafe { bridge_job_is_cancelled(job) } {
        std::thread::sleep(Duration::from_millis(1));
    }
    0
}

unsafe extern "C" fn count_callback(f: *mut future_t, user_data: *mut c_void) {
    assert_eq!(user_data as usize, 0xabc);
    assert!(unsafe { future_status(f) } >= 0);
    // Callbacks may retain and release.
    unsafe { future_release(future_retain(f)) };
    CALLBACKS.fetch_add(1, Ordering::SeqCst);
}

unsafe extern "C" fn record_unhandled(code: i32, message: *const c_char, user_data: *mut c_void) {
    let seen = unsafe { &*user_data.cast::<Mutex<Vec<(i32, String)>>>() };
    let message = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    seen.lock().unwrap().push((code, message));
}

fn start() -> *mut bridge_t {
    let mut cfg = std::mem::MaybeUninit::<bridge_config_t>::uninit();
    unsafe { bridge_config_init(cfg.as_mut_ptr()) };
    let cfg = unsafe { cfg.assume_init() };
    assert_eq!(cfg.size as usize, std::mem::size_of::<bridge_config_t>());
    let mut b = null_mut();
    assert_eq!(unsafe { bridge_start(&cfg, &mut b) }, BRIDGE_OK);
    b
}

fn boxed(n: u64) -> *mut c_void {
    Box::into_raw(Box::new(n)).cast()
}

#[test]
fn submit_wait_value_progress_release() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let b = start();
    assert!(unsafe { bridge_is_running(b) });
    assert!(!unsafe { bridge_in_loop(b) });
    let (frees_before, args_before) = (
        VALUE_FREES.load(Ordering::SeqCst),
        ARG_FREES.load(Ordering::SeqCst),
    );
    let mut f = null_mut();
    let rc = unsafe {
        bridge_submit(
            b,
            Some(double),
            boxed(21),
            Some(free_arg),
            BRIDGE_RUN_BLOCKING,
            &mut f,
        )
    };
    assert_eq!(rc, BRIDGE_OK);
    assert_eq!(unsafe { future_wait(f, 10_000) }, BRIDGE_OK);
    assert_eq!(unsafe { future_status(f) }, BRIDGE_OK);
    assert_eq!(unsafe { *future_value(f).cast::<u64>() }, 42);
    assert_eq!(ARG_FREES.load(Ordering::SeqCst), args_before + 1);
    let (mut done, mut total) = (0, 0);
    assert_eq!(
        unsafe { future_progress(f, &mut done, &mut total) },
        BRIDGE_OK
    );
    assert_eq!((done, total), (1, 2));
    assert_eq!(unsafe { future_error_code(f) }, 0);
    assert!(unsafe { future_error_message(f) }.is_null());
    let g = unsafe { future_retain(f) };
    assert_eq!(g, f);
    unsafe { future_release(f) };
    assert_eq!(
        VALUE_FREES.load(Ordering::SeqCst),
        frees_before,
        "one reference left"
    );
    unsafe { future_release(g) };
    assert_eq!(VALUE_FREES.load(Ordering::SeqCst), frees_before + 1);

    // Taken values are the caller's.
    let mut f = null_mut();
    assert_eq!(
        unsafe {
            bridge_submit(
                b,
                Some(double),
                boxed(5),
                Some(free_arg),
                BRIDGE_RUN_ON_LOOP,
                &mut f,
            )
        },
        BRIDGE_OK
    );
    assert_eq!(unsafe { future_wait(f, BRIDGE_FOREVER) }, BRIDGE_OK);
    let taken = unsafe { future_take_value(f) };
    assert!(unsafe { future_value(f) }.is_null());
    unsafe { future_release(f) };
    assert_eq!(VALUE_FREES.load(Ordering::SeqCst), frees_before + 1);
    assert_eq!(unsafe { *Box::from_raw(taken.cast::<u64>()) }, 10);

    let mut stats = bridge_stats {
        submitted: 0,
        completed: 0,
        failed: 0,
        cancelled: 0,
        pending: 9,
    };
    assert_eq!(unsafe { bridge_stats(b, &mut stats) }, BRIDGE_OK);
    assert_eq!((stats.submitted, stats.completed), (2, 2));
    assert_eq!(unsafe { bridge_shutdown(b, 1000) }, BRIDGE_OK);
    assert!(!unsafe { bridge_is_running(b) });
    unsafe { bridge_free(b) };
}

#[test]
fn failure_cancel_callbacks_and_deadlock() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let b = start();
    let mut f = null_mut();
    assert_eq!(
        unsafe {
            bridge_submit(
                b,
                Some(failing),
                null_mut(),
                None,
                BRIDGE_RUN_ON_LOOP,
                &mut f,
            )
        },
        BRIDGE_OK
    );
    assert_eq!(unsafe { future_wait(f, 10_000) }, BRIDGE_FAILED);
    assert_eq!(unsafe { future_error_code(f) }, 7);
    assert_eq!(unsafe { CStr::from_ptr(future_error_message(f)) }, c"seven");
    let calls = CALLBACKS.load(Ordering::SeqCst);
    assert_eq!(
        unsafe { future_on_done(f, Some(count_callback), 0xabc as *mut c_void) },
        BRIDGE_OK
    );
    assert_eq!(CALLBACKS.load(Ordering::SeqCst), calls + 1, "ran at once");
    unsafe { future_release(f) };

    let mut f = null_mut();
    assert_eq!(
        unsafe {
            bridge_submit(
                b,
                Some(self_cancelling),
                null_mut(),
                None,
                BRIDGE_RUN_BLOCKING,
                &mut f,
            )
        },
        BRIDGE_OK
    );
    assert_eq!(unsafe { future_wait(f, 10_000) }, BRIDGE_CANCELLED);
    unsafe { future_release(f) };

    let mut running = null_mut();
    assert_eq!(
        unsafe {
            bridge_submit(
                b,
                Some(sleeper),
                null_mut(),
                None,
                BRIDGE_RUN_BLOCKING,
                &mut running,
            )
        },
        BRIDGE_OK
    );
    assert_eq!(
        unsafe { future_on_done(running, Some(count_callback), 0xabc as *mut c_void) },
        BRIDGE_OK
    );
    let mut waiter = null_mut();
    let arg = running.cast::<c_void>();
    assert_eq!(
        unsafe {
            bridge_submit(
                b,
                Some(waits_on_loop),
                arg,
                None,
                BRIDGE_RUN_ON_LOOP,
                &mut waiter,
            )
        },
        BRIDGE_OK
    );
    assert_eq!(
        unsafe { future_wait(waiter, 10_000) },
        BRIDGE_OK,
        "the loop refused to block"
    );
    assert_eq!(unsafe { future_wait(running, 10) }, BRIDGE_TIMEOUT);
    assert_eq!(unsafe { future_cancel(running) }, BRIDGE_OK);
    assert_eq!(unsafe { future_wait(running, 10_000) }, BRIDGE_CANCELLED);
    assert_eq!(
        unsafe { future_cancel(running) },
        BRIDGE_CANCELLED,
        "finished: unchanged"
    );
    // A wait returns once the future is final; its callback may still be running on
    // the thread that finished it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while CALLBACKS.load(Ordering::SeqCst) < calls + 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(CALLBACKS.load(Ordering::SeqCst), calls + 2);
    unsafe {
        future_release(waiter);
        future_release(running);
        bridge_free(b);
    }
}

#[test]
fn unobserved_failure_reaches_the_hook() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    static SEEN: Mutex<Vec<(i32, String)>> = Mutex::new(Vec::new());
    let seen = &SEEN;
    let mut cfg = std::mem::MaybeUninit::<bridge_config_t>::uninit();
    unsafe { bridge_config_init(cfg.as_mut_ptr()) };
    let mut cfg = unsafe { cfg.assume_init() };
    cfg.thread_name = c"ffi-test".as_ptr();
    cfg.on_unhandled_error = Some(record_unhandled);
    cfg.user_data = (seen as *const Mutex<Vec<(i32, String)>>).cast_mut().cast();
    let mut b = null_mut();
    assert_eq!(unsafe { bridge_start(&cfg, &mut b) }, BRIDGE_OK);
    assert_eq!(
        unsafe {
            bridge_submit(
                b,
                Some(failing),
                null_mut(),
                None,
                BRIDGE_RUN_ON_LOOP,
                null_mut(),
            )
        },
        BRIDGE_OK
    );
    assert_eq!(unsafe { bridge_shutdown(b, BRIDGE_FOREVER) }, BRIDGE_OK);
    assert_eq!(*seen.lock().unwrap(), vec![(7, "seven".to_owned())]);
    unsafe { bridge_free(b) };
}

#[test]
fn null_and_invalid_arguments() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    unsafe {
        bridge_config_init(null_mut());
        assert_eq!(bridge_start(null(), null_mut()), BRIDGE_E_INVALID);
        let mut cfg = std::mem::MaybeUninit::<bridge_config_t>::uninit();
        bridge_config_init(cfg.as_mut_ptr());
        let mut cfg = cfg.assume_init();
        cfg.size = std::mem::offset_of!(bridge_config_t, spin_us) as u32 - 1;
        let mut b = null_mut();
        assert_eq!(bridge_start(&cfg, &mut b), BRIDGE_E_INVALID);
        assert!(b.is_null(), "out is written only on success");
        assert!(!bridge_is_running(null()));
        assert!(!bridge_in_loop(null()));
        assert_eq!(bridge_shutdown(null_mut(), 0), BRIDGE_E_INVALID);
        bridge_free(null_mut());
        assert_eq!(bridge_stats(null(), null_mut()), BRIDGE_E_INVALID);
        let b = start();
        assert_eq!(bridge_stats(b, null_mut()), BRIDGE_E_INVALID);
        assert_eq!(bridge_shutdown(b, -2), BRIDGE_E_INVALID);
        assert_eq!(
            bridge_submit(null_mut(), Some(failing), null_mut(), None, 0, null_mut()),
            BRIDGE_E_INVALID
        );
        assert_eq!(
            bridge_submit(b, None, null_mut(), None, 0, null_mut()),
            BRIDGE_E_INVALID
        );
        let args = ARG_FREES.load(Ordering::SeqCst);
        let arg = boxed(1);
        assert_eq!(
            bridge_submit(b, Some(double), arg, Some(free_arg), 2, null_mut()),
            BRIDGE_E_INVALID
        );
        assert_eq!(
            ARG_FREES.load(Ordering::SeqCst),
            args,
            "refused: arg_free not called"
        );
        drop(Box::from_raw(arg.cast::<u64>()));
        assert_eq!(future_wait(null_mut(), 0), BRIDGE_E_INVALID);
        assert_eq!(future_status(null()), BRIDGE_E_INVALID);
        assert_eq!(future_cancel(null_mut()), BRIDGE_E_INVALID);
        assert!(future_value(null()).is_null());
        assert!(future_take_value(null_mut()).is_null());
        assert_eq!(future_error_code(null()), BRIDGE_E_INVALID);
        assert!(future_error_message(null()).is_null());
        assert_eq!(
            future_progress(null(), null_mut(), null_mut()),
            BRIDGE_E_INVALID
        );
        assert_eq!(
            future_on_done(null_mut(), Some(count_callback), null_mut()),
            BRIDGE_E_INVALID
        );
        assert!(future_retain(null_mut()).is_null());
        future_release(null_mut());
        bridge_job_set_value(null_mut(), null_mut(), None);
        assert_eq!(bridge_job_fail(null_mut(), 3, null()), 3);
        assert!(!bridge_job_is_cancelled(null()));
        bridge_job_cancel(null_mut());
        bridge_job_set_progress(null_mut(), 1, 1);
        let mut f = null_mut();
        assert_eq!(
            bridge_submit(b, Some(sleeper), null_mut(), None, 0, &mut f),
            BRIDGE_OK
        );
        assert_eq!(future_wait(f, -5), BRIDGE_E_INVALID);
        assert_eq!(future_on_done(f, None, null_mut()), BRIDGE_E_INVALID);
        bridge_free(b);
        assert_eq!(
            future_wait(f, 10_000),
            BRIDGE_CANCELLED,
            "bridge_free resolved it"
        );
        future_release(f);
        assert_eq!(
            bridge_submit(bridge_default(), None, null_mut(), None, 0, null_mut()),
            BRIDGE_E_INVALID
        );
    }
}

#[test]
fn default_bridge_is_shared_and_not_freed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = bridge_default();
    assert!(!d.is_null());
    assert_eq!(d, bridge_default());
    unsafe { bridge_free(d) };
    assert!(unsafe { bridge_is_running(d) });
    let mut f = null_mut();
    assert_eq!(
        unsafe {
            bridge_submit(
                d,
                Some(double),
                boxed(1),
                Some(free_arg),
                BRIDGE_RUN_ON_LOOP,
                &mut f,
            )
        },
        BRIDGE_OK
    );
    assert_eq!(unsafe { future_wait(f, 10_000) }, BRIDGE_OK);
    unsafe { future_release(f) };
}

#[test]
fn status_strings_and_version() {
    let text = |s| {
        unsafe { CStr::from_ptr(bridge_status_str(s)) }
            .to_str()
            .unwrap()
    };
    assert_eq!(text(BRIDGE_OK), "ok");
    assert_eq!(
        text(BRIDGE_E_WOULD_DEADLOCK),
        "would deadlock: blocking call on a bridge loop thread"
    );
    assert_eq!(text(1234), "unknown status");
    assert_eq!(
        unsafe { CStr::from_ptr(bridge_version()) }
            .to_str()
            .unwrap(),
        env!("CARGO_PKG_VERSION")
    );
}
