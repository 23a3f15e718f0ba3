//! Stress: threads doing random API calls through the C signatures while the bridge is
//! shut down under them, then the books must balance. A short run is part of the test
//! suite; `scripts/soak MINUTES` runs it for longer (ASYNCBRIDGE_SOAK_SECS).
//!
//! Operations: submit on the loop or the blocking pool (with or without a future),
//! wait with small timeouts, cancel, on_done, on_done_via with each thread's own queue,
//! take_value, retain and hand a future to another thread, release; make a promise
//! (with a counted cancel callback) that the next thread settles (resolve, fail or
//! free), post a function to the thread's queue; one thread shuts
//! the bridge down in the middle while the others keep submitting; another forks now
//! and then, and each child must find the bridge refusing work and exit at once. A
//! watchdog fails the test if the run (or a child) does not end in time.

use std::ffi::c_void;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use asyncbridge::ffi::bridge::*;
use asyncbridge::ffi::future::*;
use asyncbridge::ffi::job::*;
use asyncbridge::ffi::promise::*;
use asyncbridge::ffi::queue::*;
use asyncbridge::ffi::status::*;

/// The books: every counter that must balance at the end.
#[derive(Default)]
struct Books {
    accepted: AtomicU64,
    refused: AtomicU64,
    args_freed: AtomicU64,
    values_set: AtomicU64,
    values_freed: AtomicU64,
    values_taken: AtomicU64,
    callbacks_registered: AtomicU64,
    callbacks_run: AtomicU64,
    operations: AtomicU64,
    forks: AtomicU64,
    promises_made: AtomicU64,
    cancel_callbacks_registered: AtomicU64,
    cancel_callbacks_freed: AtomicU64,
    posts_made: AtomicU64,
    posts_run: AtomicU64,
    posts_freed: AtomicU64,
}

static BOOKS: Books = Books {
    accepted: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    args_freed: AtomicU64::new(0),
    values_set: AtomicU64::new(0),
    values_freed: AtomicU64::new(0),
    values_taken: AtomicU64::new(0),
    callbacks_registered: AtomicU64::new(0),
    callbacks_run: AtomicU64::new(0),
    operations: AtomicU64::new(0),
    forks: AtomicU64::new(0),
    promises_made: AtomicU64::new(0),
    cancel_callbacks_registered: AtomicU64::new(0),
    cancel_callbacks_freed: AtomicU64::new(0),
    posts_made: AtomicU64::new(0),
    posts_run: AtomicU64::new(0),
    posts_freed: AtomicU64::new(0),
};

/// The argument of a job: what it should do.
struct Arg {
    kind: u64,
}

unsafe extern "C" fn free_arg(p: *mut c_void) {
    BOOKS.args_freed.fetch_add(1, Ordering::SeqCst);
    drop(unsafe { Box::from_raw(p.cast::<Arg>()) });
}

unsafe extern "C" fn free_value(p: *mut c_void) {
    BOOKS.values_freed.fetch_add(1, Ordering::SeqCst);
    drop(unsafe { Box::from_raw(p.cast::<u64>()) });
}

unsafe extern "C" fn work(job: *mut bridge_job_t, arg: *mut c_void) -> i32 {
    let kind = unsafe { &*arg.cast::<Arg>() }.kind;
    let value = Box::into_raw(Box::new(kind)).cast::<c_void>();
    BOOKS.values_set.fetch_add(1, Ordering::SeqCst);
    unsafe { bridge_job_set_value(job, value, Some(free_value)) };
    match kind % 8 {
        // Fails: the value is freed at once.
        0 => unsafe { bridge_job_fail(job, 7, c"stress failure".as_ptr()) },
        // Cancels itself.
        1 => {
            unsafe { bridge_job_cancel(job) };
            0
        }
        // Works a little, stopping early when cancelled.
        2 => {
            for _ in 0..20 {
                if unsafe { bridge_job_is_cancelled(job) } {
                    break;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            0
        }
        _ => 0,
    }
}

unsafe extern "C" fn counted(_f: *mut future_t, _user_data: *mut c_void) {
    BOOKS.callbacks_run.fetch_add(1, Ordering::SeqCst);
}

unsafe extern "C" fn on_cancel(_user_data: *mut c_void) {}

unsafe extern "C" fn free_cancel_data(_user_data: *mut c_void) {
    BOOKS.cancel_callbacks_freed.fetch_add(1, Ordering::SeqCst);
}

unsafe extern "C" fn posted(_user_data: *mut c_void) {
    BOOKS.posts_run.fetch_add(1, Ordering::SeqCst);
}

unsafe extern "C" fn free_post_data(_user_data: *mut c_void) {
    BOOKS.posts_freed.fetch_add(1, Ordering::SeqCst);
}

/// Settles a promise one of three ways.
fn settle(p: *mut bridge_promise_t, how: u64) {
    match how % 3 {
        0 => {
            let value = Box::into_raw(Box::new(how)).cast::<c_void>();
            BOOKS.values_set.fetch_add(1, Ordering::SeqCst);
            unsafe { bridge_promise_resolve(p, value, Some(free_value)) }
        }
        1 => unsafe { bridge_promise_fail(p, 9, c"stress promise failure".as_ptr()) },
        _ => unsafe { bridge_promise_free(p) },
    }
}

/// A promise handle that may cross threads (the C API allows it).
struct PromisePtr(*mut bridge_promise_t);
// SAFETY: every promise function may be called from any thread.
unsafe impl Send for PromisePtr {}

/// A small xorshift generator: reproducible per thread, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A future handle that may cross threads (the C API allows it).
struct Handle(*mut future_t);
// SAFETY: future_t is thread-safe; the handle carries one reference.
unsafe impl Send for Handle {}

struct BridgePtr(*mut bridge_t);
// SAFETY: bridge_t is thread-safe.
unsafe impl Send for BridgePtr {}
// SAFETY: as above.
unsafe impl Sync for BridgePtr {}

fn worker(
    b: &BridgePtr,
    seed: u64,
    until: Instant,
    to_next: mpsc::Sender<Handle>,
    from_prev: mpsc::Receiver<Handle>,
    promises_to_next: mpsc::Sender<PromisePtr>,
    promises_from_prev: mpsc::Receiver<PromisePtr>,
) -> QueuePtr {
    let mut rng = Rng(seed | 1);
    let mut queue = null_mut();
    assert_eq!(unsafe { bridge_queue_new(&mut queue) }, BRIDGE_OK);
    let mut held: Vec<*mut future_t> = Vec::new();
    let mut to_settle: Vec<*mut bridge_promise_t> = Vec::new();
    while Instant::now() < until {
        BOOKS.operations.fetch_add(1, Ordering::Relaxed);
        while let Ok(Handle(f)) = from_prev.try_recv() {
            held.push(f);
        }
        while let Ok(PromisePtr(p)) = promises_from_prev.try_recv() {
            to_settle.push(p);
        }
        match rng.next() % 12 {
            10 if !to_settle.is_empty() && rng.next() % 2 == 0 => {
                let at = rng.next() as usize % to_settle.len();
                settle(to_settle.swap_remove(at), rng.next());
            }
            10 => {
                let (mut p, mut f) = (null_mut(), null_mut());
                match unsafe { bridge_promise_new(b.0, &mut p, &mut f) } {
                    BRIDGE_OK => {
                        BOOKS.promises_made.fetch_add(1, Ordering::SeqCst);
                        BOOKS
                            .cancel_callbacks_registered
                            .fetch_add(1, Ordering::SeqCst);
                        let s = unsafe {
                            bridge_promise_on_cancel_with_free(
                                p,
                                Some(on_cancel),
                                null_mut(),
                                Some(free_cancel_data),
                            )
                        };
                        assert_eq!(s, BRIDGE_OK);
                        held.push(f);
                        let _ = promises_to_next.send(PromisePtr(p));
                    }
                    BRIDGE_E_NOT_RUNNING | BRIDGE_E_BUSY => {
                        assert!(p.is_null() && f.is_null(), "out-parameters untouched");
                        BOOKS.refused.fetch_add(1, Ordering::SeqCst);
                    }
                    other => panic!("bridge_promise_new: {other}"),
                }
            }
            11 => {
                BOOKS.posts_made.fetch_add(1, Ordering::SeqCst);
                let s = unsafe {
                    bridge_queue_post_with_free(
                        queue,
                        Some(posted),
                        null_mut(),
                        Some(free_post_data),
                    )
                };
                assert_eq!(s, BRIDGE_OK);
            }
            0..=3 => {
                let kind = rng.next();
                let arg = Box::into_raw(Box::new(Arg { kind })).cast::<c_void>();
                let flags = (kind >> 8) as u32 % 2;
                let fire_and_forget = kind % 5 == 0;
                let mut f = null_mut();
                let out = if fire_and_forget {
                    null_mut()
                } else {
                    &mut f as *mut _
                };
                match unsafe { bridge_submit(b.0, Some(work), arg, Some(free_arg), flags, out) } {
                    BRIDGE_OK => {
                        BOOKS.accepted.fetch_add(1, Ordering::SeqCst);
                        if !fire_and_forget {
                            held.push(f);
                        }
                    }
                    BRIDGE_E_NOT_RUNNING | BRIDGE_E_BUSY => {
                        // Refused: the argument is still ours.
                        BOOKS.refused.fetch_add(1, Ordering::SeqCst);
                        drop(unsafe { Box::from_raw(arg.cast::<Arg>()) });
                    }
                    other => panic!("bridge_submit: {other}"),
                }
            }
            _ if held.is_empty() => {}
            4 => {
                let f = held[rng.next() as usize % held.len()];
                let s = unsafe { future_wait(f, (rng.next() % 3) as i64) };
                assert!(matches!(s, 0 | 2..=4), "future_wait: {s}");
            }
            5 => {
                let f = held[rng.next() as usize % held.len()];
                let s = unsafe { future_cancel(f) };
                assert!(matches!(s, 0 | 3 | 4), "future_cancel: {s}");
            }
            6 => {
                let f = held[rng.next() as usize % held.len()];
                BOOKS.callbacks_registered.fetch_add(1, Ordering::SeqCst);
                let s = if rng.next() % 2 == 0 {
                    unsafe { future_on_done(f, Some(counted), null_mut()) }
                } else {
                    unsafe { future_on_done_via(f, queue, Some(counted), null_mut()) }
                };
                assert_eq!(s, BRIDGE_OK);
            }
            7 => {
                let f = held[rng.next() as usize % held.len()];
                let v = unsafe { future_take_value(f) };
                if !v.is_null() {
                    BOOKS.values_taken.fetch_add(1, Ordering::SeqCst);
                    drop(unsafe { Box::from_raw(v.cast::<u64>()) });
                }
            }
            8 => {
                let f = held[rng.next() as usize % held.len()];
                let _ = to_next.send(Handle(unsafe { future_retain(f) }));
            }
            _ => {
                let at = rng.next() as usize % held.len();
                unsafe { future_release(held.swap_remove(at)) };
            }
        }
        unsafe { bridge_queue_dispatch(queue, 0) };
    }
    drop(to_next);
    drop(promises_to_next);
    // Settle every promise handed over first: the futures this thread and the others
    // wait for below may be theirs.
    for p in to_settle {
        settle(p, rng.next());
    }
    for PromisePtr(p) in promises_from_prev.iter() {
        settle(p, rng.next());
    }
    // Take what other threads handed over until they are done, then settle up: every
    // held future is waited for (shutdown resolves them all) and released.
    for Handle(f) in from_prev.iter() {
        held.push(f);
    }
    for f in held {
        let s = unsafe { future_wait(f, 30_000) };
        assert!(matches!(s, 0 | 3 | 4), "final wait: {s}");
        unsafe { future_release(f) };
    }
    // Freed once every future has resolved: a future released here may still finish
    // (and queue its callback) later.
    QueuePtr(queue)
}

struct QueuePtr(*mut bridge_queue_t);
// SAFETY: bridge_queue_t is thread-safe.
unsafe impl Send for QueuePtr {}

#[test]
fn random_operations_under_shutdown_balance_the_books() {
    let secs: f64 = std::env::var("ASYNCBRIDGE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let run = Duration::from_secs_f64(secs);
    let mut cfg = std::mem::MaybeUninit::<bridge_config_t>::uninit();
    unsafe { bridge_config_init(cfg.as_mut_ptr()) };
    let mut cfg = unsafe { cfg.assume_init() };
    cfg.max_pending = 2000; // back-pressure is part of the load
    cfg.on_unhandled_error = Some(ignore_unhandled);
    let mut b = null_mut();
    assert_eq!(unsafe { bridge_start(&cfg, &mut b) }, BRIDGE_OK);
    let bridge = BridgePtr(b);

    let done = AtomicBool::new(false);
    let started = Instant::now();
    let until = started + run;
    let queues = std::thread::scope(|s| {
        // Watchdog: a hang fails the run instead of wedging it.
        s.spawn(|| {
            let deadline = started + run + Duration::from_secs(120);
            while !done.load(Ordering::SeqCst) {
                assert!(Instant::now() < deadline, "stress run hung");
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        const THREADS: u64 = 4;
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..THREADS).map(|_| mpsc::channel()).unzip();
        let mut receivers: Vec<Option<mpsc::Receiver<Handle>>> =
            receivers.into_iter().map(Some).collect();
        let (promise_senders, promise_receivers): (Vec<_>, Vec<_>) =
            (0..THREADS).map(|_| mpsc::channel()).unzip();
        let mut promise_receivers: Vec<Option<mpsc::Receiver<PromisePtr>>> =
            promise_receivers.into_iter().map(Some).collect();
        let workers: Vec<_> = (0..THREADS as usize)
            .map(|i| {
                let to_next = senders[(i + 1) % THREADS as usize].clone();
                let from_prev = receivers[i].take().unwrap();
                let promises_to_next = promise_senders[(i + 1) % THREADS as usize].clone();
                let promises_from_prev = promise_receivers[i].take().unwrap();
                let bridge = &bridge;
                s.spawn(move || {
                    worker(
                        bridge,
                        0x9E37_79B9 * (i as u64 + 1),
                        until,
                        to_next,
                        from_prev,
                        promises_to_next,
                        promises_from_prev,
                    )
                })
            })
            .collect();
        drop(senders);
        drop(promise_senders);
        // Forks during the load, before and after the shutdown.
        s.spawn(|| {
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(100));
                fork_and_check(&bridge);
            }
        });
        // Shut down in the middle, while the workers keep submitting.
        std::thread::sleep(run / 2);
        let status = unsafe { bridge_shutdown(bridge.0, 50) };
        assert!(
            status == BRIDGE_OK || status == BRIDGE_TIMEOUT,
            "shutdown: {status}"
        );
        let queues: Vec<QueuePtr> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        done.store(true, Ordering::SeqCst);
        queues
    });

    let mut stats = bridge_stats {
        submitted: 0,
        completed: 0,
        failed: 0,
        cancelled: 0,
        pending: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert_eq!(unsafe { bridge_stats(bridge.0, &mut stats) }, BRIDGE_OK);
        if stats.pending == 0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Every future has resolved: freeing runs the callbacks still queued.
    for QueuePtr(q) in queues {
        unsafe { bridge_queue_free(q) };
    }
    unsafe { bridge_free(bridge.0) };
    let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
    println!(
        "stress: {:.1} s, {} operations, {} forks, {} accepted, {} refused; completed {}, failed {}, \
         cancelled {}; values set {}, freed {}, taken {}; callbacks {} of {}; {} promises, {} posts",
        started.elapsed().as_secs_f64(),
        get(&BOOKS.operations),
        get(&BOOKS.forks),
        get(&BOOKS.accepted),
        get(&BOOKS.refused),
        stats.completed,
        stats.failed,
        stats.cancelled,
        get(&BOOKS.values_set),
        get(&BOOKS.values_freed),
        get(&BOOKS.values_taken),
        get(&BOOKS.callbacks_run),
        get(&BOOKS.callbacks_registered),
        get(&BOOKS.promises_made),
        get(&BOOKS.posts_made),
    );
    assert_eq!(stats.pending, 0, "every future resolved");
    assert_eq!(
        stats.submitted,
        get(&BOOKS.accepted) + get(&BOOKS.promises_made)
    );
    assert_eq!(
        stats.completed + stats.failed + stats.cancelled,
        stats.submitted
    );
    assert_eq!(
        get(&BOOKS.args_freed),
        get(&BOOKS.accepted),
        "arg_free once per accepted submission"
    );
    assert_eq!(
        get(&BOOKS.values_freed) + get(&BOOKS.values_taken),
        get(&BOOKS.values_set),
        "every value freed or taken, once"
    );
    assert_eq!(
        get(&BOOKS.callbacks_run),
        get(&BOOKS.callbacks_registered),
        "every callback once"
    );
    assert_eq!(
        get(&BOOKS.cancel_callbacks_freed),
        get(&BOOKS.cancel_callbacks_registered),
        "every cancel callback's user data freed once"
    );
    assert_eq!(
        get(&BOOKS.posts_run),
        get(&BOOKS.posts_made),
        "every post ran once"
    );
    assert_eq!(
        get(&BOOKS.posts_freed),
        get(&BOOKS.posts_made),
        "and was freed once"
    );
    assert!(get(&BOOKS.promises_made) > 0, "promises were made");
    assert!(get(&BOOKS.forks) > 0, "forks happened under load");
    assert!(
        get(&BOOKS.refused) > 0,
        "the shutdown happened while submissions went on"
    );
}

/// Forks; the child, whose copy of the bridge has no threads, must be refused work at
/// once and exits with what it found (only async-signal-safe steps and the library's
/// own refusal run there). The parent waits for it, with a deadline.
fn fork_and_check(b: &BridgePtr) {
    // SAFETY: the child calls only bridge_submit (refused before it takes any lock)
    // and _exit; nothing in it unwinds.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let mut f = null_mut();
        let s = unsafe { bridge_submit(b.0, Some(work), null_mut(), None, 0, &mut f) };
        let code = if s == BRIDGE_E_NOT_RUNNING && f.is_null() {
            0
        } else {
            1
        };
        unsafe { libc::_exit(code) };
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child, without blocking.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid failed");
        if r == pid {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("a fork child hung");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the fork child was not refused work (wait status {status})"
    );
    BOOKS.forks.fetch_add(1, Ordering::SeqCst);
}

unsafe extern "C" fn ignore_unhandled(
    _code: i32,
    _message: *const std::ffi::c_char,
    _user_data: *mut c_void,
) {
}
