//! The C API of promises, queue posts, value types and finalizers, called from Rust
//! through its C signatures (the C tests in tests/c/promise.c and tests/c/post.c go
//! further).

use std::ffi::{c_void, CStr};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicUsize, Ordering};

use asyncbridge::ffi::bridge::*;
use asyncbridge::ffi::future::*;
use asyncbridge::ffi::promise::*;
use asyncbridge::ffi::queue::*;
use asyncbridge::ffi::signal::*;
use asyncbridge::ffi::status::*;
use asyncbridge::ffi::timer::*;
use asyncbridge::ffi::value::*;

fn start() -> *mut bridge_t {
    let mut b = null_mut();
    assert_eq!(unsafe { bridge_start(std::ptr::null(), &mut b) }, BRIDGE_OK);
    b
}

/// Counts calls and frees through its user data (an `AtomicUsize` pair).
struct Counts {
    calls: AtomicUsize,
    frees: AtomicUsize,
}

impl Counts {
    const fn new() -> Counts {
        Counts {
            calls: AtomicUsize::new(0),
            frees: AtomicUsize::new(0),
        }
    }

    fn ptr(&self) -> *mut c_void {
        (self as *const Counts).cast_mut().cast()
    }

    fn get(&self) -> (usize, usize) {
        (
            self.calls.load(Ordering::SeqCst),
            self.frees.load(Ordering::SeqCst),
        )
    }
}

unsafe extern "C" fn count_call(user_data: *mut c_void) {
    unsafe { &*user_data.cast::<Counts>() }
        .calls
        .fetch_add(1, Ordering::SeqCst);
}

unsafe extern "C" fn count_free(user_data: *mut c_void) {
    unsafe { &*user_data.cast::<Counts>() }
        .frees
        .fetch_add(1, Ordering::SeqCst);
}

unsafe extern "C" fn count_done(_f: *mut future_t, user_data: *mut c_void) {
    unsafe { count_call(user_data) }
}

unsafe extern "C" fn count_tick(_t: *mut bridge_timer_t, _ticks: u64, user_data: *mut c_void) {
    unsafe { count_call(user_data) }
}

unsafe extern "C" fn count_signal(
    _w: *mut bridge_signal_t,
    _signum: i32,
    _count: u64,
    user_data: *mut c_void,
) {
    unsafe { count_call(user_data) }
}

unsafe extern "C" fn free_boxed_u64(p: *mut c_void) {
    drop(unsafe { Box::from_raw(p.cast::<u64>()) });
}

#[test]
fn a_promise_resolved_failed_cancelled_and_abandoned() {
    let b = start();
    unsafe {
        // Resolved with a value of the user's.
        let (mut p, mut f) = (null_mut(), null_mut());
        assert_eq!(bridge_promise_new(b, &mut p, &mut f), BRIDGE_OK);
        assert_eq!(future_value_type(f), BRIDGE_VALUE_NONE);
        bridge_promise_set_progress(p, 1, 2);
        let (mut done, mut total) = (0, 0);
        assert_eq!(future_progress(f, &mut done, &mut total), BRIDGE_OK);
        assert_eq!((done, total), (1, 2));
        assert!(!bridge_promise_is_cancelled(p));
        bridge_promise_resolve(
            p,
            Box::into_raw(Box::new(7u64)).cast(),
            Some(free_boxed_u64),
        );
        assert_eq!(future_wait(f, 10_000), BRIDGE_OK);
        assert_eq!(future_value_type(f), BRIDGE_VALUE_USER);
        assert_eq!(*future_value(f).cast::<u64>(), 7);
        future_release(f);

        // Failed with code 0: fails with 1.
        assert_eq!(bridge_promise_new(b, &mut p, &mut f), BRIDGE_OK);
        bridge_promise_fail(p, 0, c"zero".as_ptr());
        assert_eq!(future_wait(f, 10_000), BRIDGE_FAILED);
        assert_eq!(future_error_code(f), 1);
        assert_eq!(CStr::from_ptr(future_error_message(f)), c"zero");
        assert_eq!(future_os_error(f), 0);
        future_release(f);

        // Cancelled: the cancel callback runs here, its user data is freed after it,
        // and the future ends cancelled once the holder lets go.
        static CANCEL: Counts = Counts::new();
        assert_eq!(bridge_promise_new(b, &mut p, &mut f), BRIDGE_OK);
        assert_eq!(
            bridge_promise_on_cancel_with_free(p, Some(count_call), CANCEL.ptr(), Some(count_free)),
            BRIDGE_OK
        );
        assert_eq!(
            bridge_promise_on_cancel(p, Some(count_call), null_mut()),
            BRIDGE_E_INVALID,
            "one per promise"
        );
        assert_eq!(future_cancel(f), BRIDGE_OK);
        assert_eq!(CANCEL.get(), (1, 1));
        assert!(bridge_promise_is_cancelled(p));
        assert_eq!(future_status(f), BRIDGE_PENDING);
        bridge_promise_free(p);
        assert_eq!(future_wait(f, 10_000), BRIDGE_CANCELLED);
        future_release(f);

        // Abandoned.
        assert_eq!(bridge_promise_new(b, &mut p, &mut f), BRIDGE_OK);
        bridge_promise_free(p);
        assert_eq!(future_wait(f, 10_000), BRIDGE_FAILED);
        assert_eq!(future_error_code(f), BRIDGE_E_ABANDONED);
        future_release(f);

        // Refused once shut down, the out-parameters untouched.
        assert_eq!(bridge_shutdown(b, 1000), BRIDGE_OK);
        let (mut p, mut f) = (8usize as *mut bridge_promise_t, 8usize as *mut future_t);
        assert_eq!(bridge_promise_new(b, &mut p, &mut f), BRIDGE_E_NOT_RUNNING);
        assert_eq!((p as usize, f as usize), (8, 8));
        bridge_free(b);
    }
}

#[test]
fn posts_run_in_dispatch_and_free_their_data_once() {
    static POST: Counts = Counts::new();
    unsafe {
        let mut q = null_mut();
        assert_eq!(bridge_queue_new(&mut q), BRIDGE_OK);
        assert_eq!(
            bridge_queue_post(q, Some(count_call), POST.ptr()),
            BRIDGE_OK
        );
        assert_eq!(
            bridge_queue_post_with_free(q, Some(count_call), POST.ptr(), Some(count_free)),
            BRIDGE_OK
        );
        assert_eq!(POST.get(), (0, 0), "never inline");
        assert_eq!(bridge_queue_dispatch(q, 0), 2);
        assert_eq!(POST.get(), (2, 1));
        // Refused: nothing runs, and the free still runs once.
        assert_eq!(
            bridge_queue_post_with_free(q, None, POST.ptr(), Some(count_free)),
            BRIDGE_E_INVALID
        );
        assert_eq!(POST.get(), (2, 2));
        // Pending when the queue is freed: run by the free.
        assert_eq!(
            bridge_queue_post(q, Some(count_call), POST.ptr()),
            BRIDGE_OK
        );
        bridge_queue_free(q);
        assert_eq!(POST.get(), (3, 2));
    }
}

#[test]
fn every_with_free_registration_frees_once() {
    let b = start();
    unsafe {
        // A done callback on a finished future: called, then freed.
        static DONE: Counts = Counts::new();
        let mut f = null_mut();
        assert_eq!(bridge_sleep(b, 0, &mut f), BRIDGE_OK);
        assert_eq!(future_wait(f, 10_000), BRIDGE_OK);
        assert_eq!(
            future_on_done_with_free(f, Some(count_done), DONE.ptr(), Some(count_free)),
            BRIDGE_OK
        );
        assert_eq!(DONE.get(), (1, 1));

        // Through a queue, withdrawn: freed, never called.
        static VIA: Counts = Counts::new();
        let mut q = null_mut();
        assert_eq!(bridge_queue_new(&mut q), BRIDGE_OK);
        assert_eq!(
            future_on_done_via_with_free(f, q, Some(count_done), VIA.ptr(), Some(count_free)),
            BRIDGE_OK
        );
        assert_eq!(future_withdraw_via(f, q, VIA.ptr()), 1);
        assert_eq!(VIA.get(), (0, 1));

        // Progress on a finished future: freed at once (no progress will come).
        static PROGRESS: Counts = Counts::new();
        unsafe extern "C" fn on_progress(_f: *mut future_t, _d: u64, _t: u64, u: *mut c_void) {
            unsafe { count_call(u) }
        }
        assert_eq!(
            future_on_progress_via_with_free(
                f,
                q,
                Some(on_progress),
                PROGRESS.ptr(),
                Some(count_free)
            ),
            BRIDGE_OK
        );
        assert_eq!(PROGRESS.get(), (0, 1));
        future_release(f);
        bridge_queue_free(q);

        // A timer: freed when freed (it is idle then).
        static TIMER: Counts = Counts::new();
        let mut t = null_mut();
        assert_eq!(
            bridge_timer_start_with_free(
                b,
                1,
                1,
                null_mut(),
                Some(count_tick),
                TIMER.ptr(),
                Some(count_free),
                &mut t
            ),
            BRIDGE_OK
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while TIMER.get().0 == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        bridge_timer_free(t);
        let (ticks, frees) = TIMER.get();
        assert!(ticks >= 1);
        assert_eq!(frees, 1);

        // A signal watch refused for SIGKILL: freed before the call returns.
        static SIGNAL: Counts = Counts::new();
        let mut w = null_mut();
        assert_eq!(
            bridge_signal_start_with_free(
                b,
                libc::SIGKILL,
                null_mut(),
                Some(count_signal),
                SIGNAL.ptr(),
                Some(count_free),
                &mut w
            ),
            BRIDGE_E_INVALID
        );
        assert_eq!(SIGNAL.get(), (0, 1));
        assert!(w.is_null());

        // bytes_free takes NULL.
        bridge_bytes_free(null_mut());
        assert_eq!(bridge_shutdown(b, 1000), BRIDGE_OK);
        bridge_free(b);
    }
}
