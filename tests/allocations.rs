//! Allocations per submission, counted by a global allocator: one (the shared future
//! state; on-loop and blocking work wait in the bridge's own queues, run by tasks that
//! already exist) and none per wait or callback in the common case.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use asyncbridge::ffi::bridge::*;
use asyncbridge::ffi::future::*;
use asyncbridge::ffi::job::*;
use asyncbridge::ffi::status::*;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

unsafe extern "C" fn nothing(_job: *mut bridge_job_t, _arg: *mut c_void) -> i32 {
    0
}

unsafe extern "C" fn on_done(_f: *mut future_t, user_data: *mut c_void) {
    unsafe { &*user_data.cast::<AtomicUsize>() }.fetch_add(1, Ordering::SeqCst);
}

/// Allocations per submit + callback + wait + release, averaged over many rounds.
fn per_round(b: *mut bridge_t, flags: u32) -> f64 {
    let calls = AtomicUsize::new(0);
    let round = || {
        let mut f = null_mut();
        assert_eq!(
            unsafe { bridge_submit(b, Some(nothing), null_mut(), None, flags, &mut f) },
            BRIDGE_OK
        );
        let data = (&calls as *const AtomicUsize).cast_mut().cast();
        assert_eq!(unsafe { future_on_done(f, Some(on_done), data) }, BRIDGE_OK);
        assert_eq!(unsafe { future_wait(f, 10_000) }, BRIDGE_OK);
        unsafe { future_release(f) };
    };
    for _ in 0..200 {
        round(); // warm up: queues, thread-locals, pool threads
    }
    const ROUNDS: usize = 2000;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..ROUNDS {
        round();
    }
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    // A wait returns once the future is final; its callback may still be running.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while calls.load(Ordering::SeqCst) < ROUNDS + 200 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert_eq!(calls.load(Ordering::SeqCst), ROUNDS + 200);
    (after - before) as f64 / ROUNDS as f64
}

unsafe extern "C" fn wait_for_gate(_job: *mut bridge_job_t, gate: *mut c_void) -> i32 {
    let gate = unsafe { &*gate.cast::<AtomicBool>() };
    while !gate.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    0
}

/// Allocations per blocking submission while many are pending: a one-thread pool is
/// held by gated work while 2000 more are submitted.
fn per_pending_blocking_item() -> f64 {
    const ITEMS: usize = 2000;
    let mut cfg = std::mem::MaybeUninit::<bridge_config_t>::uninit();
    unsafe { bridge_config_init(cfg.as_mut_ptr()) };
    let mut cfg = unsafe { cfg.assume_init() };
    cfg.max_blocking_threads = 1;
    let mut b = null_mut();
    assert_eq!(unsafe { bridge_start(&cfg, &mut b) }, BRIDGE_OK);
    let mut futures = vec![null_mut(); ITEMS];
    let mut per_item = 0.0;
    // The first round grows the bridge's queue; the second is counted.
    for round in 0..2 {
        let gate = AtomicBool::new(false);
        let mut gated = null_mut();
        let gate_arg = (&gate as *const AtomicBool).cast_mut().cast();
        assert_eq!(
            unsafe {
                bridge_submit(
                    b,
                    Some(wait_for_gate),
                    gate_arg,
                    None,
                    BRIDGE_RUN_BLOCKING,
                    &mut gated,
                )
            },
            BRIDGE_OK
        );
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for f in futures.iter_mut() {
            assert_eq!(
                unsafe {
                    bridge_submit(b, Some(nothing), null_mut(), None, BRIDGE_RUN_BLOCKING, f)
                },
                BRIDGE_OK
            );
        }
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        gate.store(true, Ordering::SeqCst);
        for f in futures.iter().chain([&gated]) {
            assert_eq!(unsafe { future_wait(*f, 10_000) }, BRIDGE_OK);
            unsafe { future_release(*f) };
        }
        if round == 1 {
            per_item = (after - before) as f64 / ITEMS as f64;
        }
    }
    unsafe { bridge_free(b) };
    per_item
}

#[test]
fn one_allocation_per_submission() {
    let mut b = null_mut();
    assert_eq!(unsafe { bridge_start(std::ptr::null(), &mut b) }, BRIDGE_OK);
    let on_loop = per_round(b, BRIDGE_RUN_ON_LOOP);
    let blocking = per_round(b, BRIDGE_RUN_BLOCKING);
    let pending = per_pending_blocking_item();
    println!(
        "allocations per submission: on the loop {on_loop:.2}, on the blocking pool \
         {blocking:.2} (one at a time), {pending:.2} (2000 pending at once)"
    );
    // Averages: now and then the blocking pool starts a task or a thread (a handful of
    // allocations), which a whole extra allocation per submission would dwarf.
    assert!(
        on_loop < 1.5,
        "on-loop submission allocates {on_loop:.2} times"
    );
    assert!(
        blocking < 1.5,
        "blocking submission allocates {blocking:.2} times"
    );
    // Pending blocking work waits in the bridge's own queue: no pool task each.
    assert!(
        pending < 1.5,
        "pending blocking submissions allocate {pending:.2} times each"
    );
    unsafe { bridge_free(b) };
}
