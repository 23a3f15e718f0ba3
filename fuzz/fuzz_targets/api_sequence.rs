//! Turns bytes into a sequence of C API calls over a few handles (NULLs, out-of-range
//! flags and timeouts included) on a shared bridge, then settles everything and checks
//! the books: every accepted argument freed once, every value freed or taken once,
//! every callback run once.
#![no_main]

use std::ffi::c_void;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use asyncbridge::ffi::bridge::*;
use asyncbridge::ffi::future::*;
use asyncbridge::ffi::job::*;
use asyncbridge::ffi::queue::*;
use asyncbridge::ffi::status::*;
use libfuzzer_sys::fuzz_target;

static ACCEPTED: AtomicU64 = AtomicU64::new(0);
static ARGS_FREED: AtomicU64 = AtomicU64::new(0);
static VALUES_SET: AtomicU64 = AtomicU64::new(0);
static VALUES_GONE: AtomicU64 = AtomicU64::new(0);
static CALLBACKS_WANTED: AtomicU64 = AtomicU64::new(0);
static CALLBACKS_RUN: AtomicU64 = AtomicU64::new(0);

struct Shared(*mut bridge_t);
// SAFETY: bridge_t is thread-safe.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

fn bridge() -> *mut bridge_t {
    static BRIDGE: OnceLock<Shared> = OnceLock::new();
    BRIDGE
        .get_or_init(|| {
            let mut b = null_mut();
            assert_eq!(unsafe { bridge_start(null(), &mut b) }, BRIDGE_OK);
            Shared(b)
        })
        .0
}

unsafe extern "C" fn free_arg(p: *mut c_void) {
    ARGS_FREED.fetch_add(1, Ordering::SeqCst);
    drop(unsafe { Box::from_raw(p.cast::<u8>()) });
}

unsafe extern "C" fn free_value(p: *mut c_void) {
    VALUES_GONE.fetch_add(1, Ordering::SeqCst);
    drop(unsafe { Box::from_raw(p.cast::<u8>()) });
}

unsafe extern "C" fn work(job: *mut bridge_job_t, arg: *mut c_void) -> i32 {
    let byte = unsafe { *arg.cast::<u8>() };
    VALUES_SET.fetch_add(1, Ordering::SeqCst);
    let value = Box::into_raw(Box::new(byte)).cast();
    unsafe { bridge_job_set_value(job, value, Some(free_value)) };
    unsafe { bridge_job_set_progress(job, u64::from(byte), 255) };
    match byte % 4 {
        0 => unsafe { bridge_job_fail(job, i32::from(byte) + 1, c"fuzzed".as_ptr()) },
        1 => {
            unsafe { bridge_job_cancel(job) };
            0
        }
        _ => 0,
    }
}

unsafe extern "C" fn then_work(
    job: *mut bridge_job_t,
    prev: *mut future_t,
    arg: *mut c_void,
) -> i32 {
    assert!(unsafe { future_status(prev) } != BRIDGE_PENDING);
    unsafe { work(job, arg) }
}

unsafe extern "C" fn callback(f: *mut future_t, _user_data: *mut c_void) {
    let status = unsafe { future_status(f) };
    assert!(
        matches!(status, BRIDGE_OK | BRIDGE_FAILED | BRIDGE_CANCELLED),
        "callback saw {status}"
    );
    CALLBACKS_RUN.fetch_add(1, Ordering::SeqCst);
}

fn take_value(v: *mut c_void, from_any: bool) {
    if v.is_null() {
    } else if from_any {
        // future_any's value: a malloc'ed size_t index, not a counted value.
        unsafe { libc_free(v) };
    } else {
        VALUES_GONE.fetch_add(1, Ordering::SeqCst);
        drop(unsafe { Box::from_raw(v.cast::<u8>()) });
    }
}

extern "C" {
    #[link_name = "free"]
    fn libc_free(p: *mut c_void);
}

fuzz_target!(|data: &[u8]| {
    let b = bridge();
    let mut q = null_mut();
    assert_eq!(unsafe { bridge_queue_new(&mut q) }, BRIDGE_OK);
    let mut futures: Vec<*mut future_t> = Vec::new();
    // Futures made by future_any (retained copies share the pointer).
    let mut anys: Vec<*mut future_t> = Vec::new();
    // One extra reference to every future made, so the end can wait for all of them:
    // a combined future counts in no bridge's stats, and its queued callbacks must be
    // in the queue before the queue is freed.
    let mut made: Vec<*mut future_t> = Vec::new();
    let pick = |futures: &Vec<*mut future_t>, byte: u8| -> *mut future_t {
        // Sometimes NULL on purpose.
        if futures.is_empty() || byte % 16 == 15 {
            null_mut()
        } else {
            futures[byte as usize % futures.len()]
        }
    };
    let mut bytes = data.chunks(2);
    while let Some(&[op, arg]) = bytes.next() {
        let f = pick(&futures, arg);
        match op % 14 {
            0 | 1 => {
                let boxed = Box::into_raw(Box::new(arg)).cast::<c_void>();
                let flags = u32::from(op / 14 % 3); // 2 is invalid
                let mut out = null_mut();
                match unsafe {
                    bridge_submit(b, Some(work), boxed, Some(free_arg), flags, &mut out)
                } {
                    BRIDGE_OK => {
                        ACCEPTED.fetch_add(1, Ordering::SeqCst);
                        made.push(unsafe { future_retain(out) });
                        futures.push(out);
                    }
                    status => {
                        assert!(flags == 2 && status == BRIDGE_E_INVALID, "submit: {status}");
                        drop(unsafe { Box::from_raw(boxed.cast::<u8>()) });
                    }
                }
            }
            2 => {
                let timeout = i64::from(arg % 5) - 2; // -2 (invalid) .. 2 ms
                let status = unsafe { future_wait(f, timeout) };
                assert!(matches!(status, -1 | 0 | 2 | 3 | 4), "wait: {status}");
            }
            3 => {
                let status = unsafe { future_cancel(f) };
                assert!(matches!(status, -1 | 0 | 3 | 4), "cancel: {status}");
            }
            4 => {
                if unsafe { future_on_done(f, Some(callback), null_mut()) } == BRIDGE_OK {
                    CALLBACKS_WANTED.fetch_add(1, Ordering::SeqCst);
                }
            }
            5 => {
                if unsafe { future_on_done_via(f, q, Some(callback), null_mut()) } == BRIDGE_OK {
                    CALLBACKS_WANTED.fetch_add(1, Ordering::SeqCst);
                }
            }
            6 => {
                unsafe { bridge_queue_dispatch(q, usize::from(arg % 3)) };
            }
            7 => take_value(unsafe { future_take_value(f) }, anys.contains(&f)),
            8 => {
                let g = unsafe { future_retain(f) };
                if !g.is_null() {
                    futures.push(g);
                }
            }
            9 => {
                if !f.is_null() {
                    let at = futures.iter().position(|&x| x == f).unwrap();
                    unsafe { future_release(futures.swap_remove(at)) };
                    if !futures.contains(&f) {
                        // Gone: the address may be reused by another future.
                        anys.retain(|&x| x != f);
                    }
                }
            }
            10 => {
                let status = unsafe { future_set_timeout(f, u64::from(arg % 4)) };
                assert!(matches!(status, -1 | 0), "set_timeout: {status}");
            }
            11 => {
                let boxed = Box::into_raw(Box::new(arg)).cast::<c_void>();
                let mut out = null_mut();
                match unsafe { future_then(f, Some(then_work), boxed, Some(free_arg), 0, &mut out) }
                {
                    BRIDGE_OK => {
                        ACCEPTED.fetch_add(1, Ordering::SeqCst);
                        made.push(unsafe { future_retain(out) });
                        futures.push(out);
                    }
                    status => {
                        assert!(f.is_null() && status == BRIDGE_E_INVALID, "then: {status}");
                        drop(unsafe { Box::from_raw(boxed.cast::<u8>()) });
                    }
                }
            }
            12 => {
                let n = usize::from(arg) % (futures.len() + 1);
                let mut out = null_mut();
                let any = arg % 2 == 1;
                let status = if any {
                    unsafe { future_any(futures.as_ptr(), n, &mut out) }
                } else {
                    unsafe { future_all(futures.as_ptr(), n, &mut out) }
                };
                match status {
                    BRIDGE_OK => {
                        if any {
                            anys.push(out);
                        }
                        made.push(unsafe { future_retain(out) });
                        futures.push(out);
                    }
                    status => assert!(n == 0 && status == BRIDGE_E_INVALID, "combine: {status}"),
                }
            }
            _ => {
                let mut out = null_mut();
                assert_eq!(
                    unsafe { bridge_sleep(b, u64::from(arg % 3), &mut out) },
                    BRIDGE_OK
                );
                made.push(unsafe { future_retain(out) });
                futures.push(out);
            }
        }
    }
    // Settle: every future resolves (sleeps are short, timeouts small), then the books.
    for &f in &futures {
        unsafe { future_cancel(f) };
        let status = unsafe { future_wait(f, BRIDGE_FOREVER) };
        assert!(matches!(status, 0 | 3 | 4), "final wait: {status}");
    }
    for f in futures.drain(..) {
        unsafe { future_release(f) };
    }
    for f in made.drain(..) {
        unsafe { future_cancel(f) };
        let status = unsafe { future_wait(f, BRIDGE_FOREVER) };
        assert!(matches!(status, 0 | 3 | 4), "final wait: {status}");
        unsafe { future_release(f) };
    }
    let mut stats = bridge_stats {
        submitted: 0,
        completed: 0,
        failed: 0,
        cancelled: 0,
        pending: 1,
    };
    while stats.pending != 0 {
        unsafe { bridge_stats(b, &mut stats) };
        std::thread::yield_now();
    }
    unsafe { bridge_queue_free(q) }; // runs what is still queued
                                     // Direct callbacks of the last futures may still be running on a bridge thread, and
                                     // a value goes when the last of them returns: wait for both (a lost one hangs here,
                                     // which the fuzzer reports as a timeout).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while CALLBACKS_RUN.load(Ordering::SeqCst) < CALLBACKS_WANTED.load(Ordering::SeqCst)
        || VALUES_GONE.load(Ordering::SeqCst) < VALUES_SET.load(Ordering::SeqCst)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "stuck: callbacks {} of {}, values gone {} of {}",
            CALLBACKS_RUN.load(Ordering::SeqCst),
            CALLBACKS_WANTED.load(Ordering::SeqCst),
            VALUES_GONE.load(Ordering::SeqCst),
            VALUES_SET.load(Ordering::SeqCst)
        );
        std::thread::yield_now();
    }
    assert_eq!(
        CALLBACKS_RUN.load(Ordering::SeqCst),
        CALLBACKS_WANTED.load(Ordering::SeqCst)
    );
    assert_eq!(
        ARGS_FREED.load(Ordering::SeqCst),
        ACCEPTED.load(Ordering::SeqCst)
    );
    assert_eq!(
        VALUES_GONE.load(Ordering::SeqCst),
        VALUES_SET.load(Ordering::SeqCst)
    );
});
