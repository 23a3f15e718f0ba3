//! Cancellation tokens and scopes (bridge_token_*, bridge_scope_*) through their C
//! signatures, against real operations: sleeps, processes, promises, HTTP exchanges
//! with a silent server started here, and C work that polls its cancellation.

use std::ffi::{c_void, CString};
use std::io::Read;
use std::net::TcpListener;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use asyncbridge::ffi::bridge::*;
use asyncbridge::ffi::channel::*;
use asyncbridge::ffi::future::*;
use asyncbridge::ffi::http::*;
use asyncbridge::ffi::job::*;
use asyncbridge::ffi::process::*;
use asyncbridge::ffi::promise::*;
use asyncbridge::ffi::scope::*;
use asyncbridge::ffi::status::*;
use asyncbridge::ffi::stream::*;
use asyncbridge::ffi::token::*;
use asyncbridge::ffi::value::*;

/// Far above anything here: a wait that takes this long is hung.
const WATCHDOG_MS: i64 = 60_000;

fn start() -> *mut bridge_t {
    let mut b = null_mut();
    assert_eq!(unsafe { bridge_start(null(), &mut b) }, BRIDGE_OK);
    b
}

fn token(b: *mut bridge_t, parent: *mut bridge_token_t) -> *mut bridge_token_t {
    let mut t = null_mut();
    assert_eq!(unsafe { bridge_token_new(b, parent, &mut t) }, BRIDGE_OK);
    t
}

fn scope(b: *mut bridge_t, parent: *mut bridge_token_t, flags: u32) -> *mut bridge_scope_t {
    let mut s = null_mut();
    assert_eq!(
        unsafe { bridge_scope_new(b, parent, flags, &mut s) },
        BRIDGE_OK
    );
    s
}

fn sleep(b: *mut bridge_t, ms: u64) -> *mut future_t {
    let mut f = null_mut();
    assert_eq!(unsafe { bridge_sleep(b, ms, &mut f) }, BRIDGE_OK);
    f
}

/// Waits (watchdog) for `f` to end; returns its status.
fn finish(f: *mut future_t) -> bridge_status {
    let status = unsafe { future_wait(f, WATCHDOG_MS) };
    assert_ne!(status, BRIDGE_TIMEOUT, "watchdog: the future hung");
    status
}

fn readable(fd: i32, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) == 1 && pfd.revents & libc::POLLIN != 0 }
}

/// Counts the calls of a cancel callback.
unsafe extern "C" fn count(user_data: *mut c_void) {
    unsafe { &*user_data.cast::<AtomicUsize>() }.fetch_add(1, Ordering::SeqCst);
}

fn counter(c: &AtomicUsize) -> *mut c_void {
    (c as *const AtomicUsize).cast_mut().cast()
}

/// A promise whose cancel callback settles it at once (the producer stops), counting
/// in `asked`.
struct Stoppable {
    future: *mut future_t,
}

/// What the stoppable promise's callback needs: the promise and a counter.
struct StopState {
    promise: *mut bridge_promise_t,
    asked: AtomicUsize,
}

unsafe extern "C" fn stop_promise(user_data: *mut c_void) {
    let state = unsafe { &*user_data.cast::<StopState>() };
    state.asked.fetch_add(1, Ordering::SeqCst);
    unsafe { bridge_promise_free(state.promise) };
}

fn stoppable(b: *mut bridge_t, state: &mut StopState) -> Stoppable {
    let mut future = null_mut();
    assert_eq!(
        unsafe { bridge_promise_new(b, &mut state.promise, &mut future) },
        BRIDGE_OK
    );
    let data = (state as *mut StopState).cast();
    assert_eq!(
        unsafe { bridge_promise_on_cancel(state.promise, Some(stop_promise), data) },
        BRIDGE_OK
    );
    Stoppable { future }
}

/// C work that runs until it is cancelled, noting that it started and that it saw
/// the cancellation (it gives up, failing, after the watchdog).
struct Polling {
    started: AtomicBool,
    saw_cancel: AtomicBool,
}

unsafe extern "C" fn poll_cancel(job: *mut bridge_job_t, arg: *mut c_void) -> i32 {
    let polling = unsafe { &*arg.cast::<Polling>() };
    polling.started.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_millis(WATCHDOG_MS as u64);
    while Instant::now() < deadline {
        if unsafe { bridge_job_is_cancelled(job) } {
            polling.saw_cancel.store(true, Ordering::SeqCst);
            return 0;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    1
}

/// `sh -c`, writing its pid (its process group) to a file, then `sleep 30`.
fn run_sleep(b: *mut bridge_t, pid_file: &std::path::Path) -> *mut future_t {
    let f = pid_file.display();
    let script = CString::new(format!("echo $$ > {f}.tmp; mv {f}.tmp {f}; sleep 30")).unwrap();
    let program = CString::new("sh").unwrap();
    let dash_c = CString::new("-c").unwrap();
    let argv = [dash_c.as_ptr(), script.as_ptr(), null()];
    let mut opts = std::mem::MaybeUninit::<bridge_process_options_t>::uninit();
    unsafe { bridge_process_options_init(opts.as_mut_ptr()) };
    let mut opts = unsafe { opts.assume_init() };
    opts.program = program.as_ptr();
    opts.argv = argv.as_ptr();
    let mut out = null_mut();
    assert_eq!(unsafe { bridge_process_run(b, &opts, &mut out) }, BRIDGE_OK);
    out
}

fn await_pid(file: &std::path::Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            return text.trim().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no pid in {}", file.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The processes of group `pgid` that are not zombies.
fn live_members(pgid: i32) -> Vec<i32> {
    let mut live = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|at| &stat[at + 2..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split(' ').collect();
        let zombie = matches!(fields[0], "Z" | "X");
        if fields[2].parse::<i32>() == Ok(pgid) && !zombie {
            live.push(pid);
        }
    }
    live
}

/// A loopback server that accepts and never answers; the connections count.
fn silent_server() -> (u16, std::sync::Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = [0; 1024];
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    (port, accepted)
}

fn http_get(b: *mut bridge_t, url: &str) -> *mut future_t {
    let url = CString::new(url).unwrap();
    let mut req = std::mem::MaybeUninit::<bridge_http_request_t>::uninit();
    unsafe { bridge_http_request_init(req.as_mut_ptr()) };
    let mut req = unsafe { req.assume_init() };
    req.url = url.as_ptr();
    let mut f = null_mut();
    assert_eq!(unsafe { bridge_http_send(b, &req, &mut f) }, BRIDGE_OK);
    f
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "watchdog: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One bridge_token_cancel() stops a sleep, a process group, a promise, an HTTP
/// exchange, C work, a stream read and a channel's next at once: each ends BRIDGE_CANCELLED, through the same path as
/// future_cancel().
#[test]
fn one_cancel_stops_every_kind_of_operation() {
    let b = start();
    let t = token(b, null_mut());
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ffi_token-mixed");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let sleeping = sleep(b, 600_000);
    let pid_file = dir.join("pid");
    let process = run_sleep(b, &pid_file);
    let mut stop = StopState {
        promise: null_mut(),
        asked: AtomicUsize::new(0),
    };
    let promised = stoppable(b, &mut stop);
    let (port, accepted) = silent_server();
    let exchange = http_get(b, &format!("http://127.0.0.1:{port}/"));
    let polling = Polling {
        started: AtomicBool::new(false),
        saw_cancel: AtomicBool::new(false),
    };
    let mut work = null_mut();
    let arg = (&polling as *const Polling).cast_mut().cast();
    assert_eq!(
        unsafe {
            bridge_submit(
                b,
                Some(poll_cancel),
                arg,
                None,
                BRIDGE_RUN_BLOCKING,
                &mut work,
            )
        },
        BRIDGE_OK
    );
    // A read of a stream that nothing is written to.
    let (mut near, mut far) = (null_mut(), null_mut());
    assert_eq!(
        unsafe { bridge_stream_pair(b, &mut near, &mut far) },
        BRIDGE_OK
    );
    let mut reading = null_mut();
    assert_eq!(
        unsafe { bridge_stream_read(near, 0, &mut reading) },
        BRIDGE_OK
    );
    // A next of a channel whose producer sends nothing yet.
    let (mut sender, mut channel) = (null_mut(), null_mut());
    assert_eq!(
        unsafe { bridge_channel_new(b, null(), &mut sender, &mut channel) },
        BRIDGE_OK
    );
    let mut next = null_mut();
    assert_eq!(
        unsafe { bridge_channel_next(channel, &mut next) },
        BRIDGE_OK
    );
    let futures = [
        sleeping,
        process,
        promised.future,
        exchange,
        work,
        reading,
        next,
    ];
    for &f in &futures {
        assert_eq!(unsafe { bridge_token_add(t, f) }, BRIDGE_OK);
    }
    // Everything is under way before the cancellation.
    let pgid = await_pid(&pid_file);
    wait_until("the exchange connects", || {
        accepted.load(Ordering::SeqCst) == 1
    });
    wait_until("the work starts", || polling.started.load(Ordering::SeqCst));
    for &f in &futures {
        assert_eq!(unsafe { future_status(f) }, BRIDGE_PENDING);
    }

    unsafe { bridge_token_cancel(t) };
    assert!(unsafe { bridge_token_is_cancelled(t) });
    assert_eq!(
        stop.asked.load(Ordering::SeqCst),
        1,
        "on_cancel ran in the cancel"
    );
    for (n, &f) in futures.iter().enumerate() {
        assert_eq!(finish(f), BRIDGE_CANCELLED, "future {n}");
    }
    assert!(polling.saw_cancel.load(Ordering::SeqCst), "the job saw it");
    // Ended means stopped: the group was killed and reaped before the future ended.
    wait_until("the process group ends", || live_members(pgid).is_empty());
    // The cancelled read gave its side back: the stream reads on, nothing lost.
    let message = b"after the cancel";
    let mut wrote = null_mut();
    assert_eq!(
        unsafe { bridge_stream_write(far, message.as_ptr().cast(), message.len(), &mut wrote) },
        BRIDGE_OK
    );
    assert_eq!(finish(wrote), BRIDGE_OK);
    let mut again = null_mut();
    assert_eq!(
        unsafe { bridge_stream_read(near, 0, &mut again) },
        BRIDGE_OK
    );
    assert_eq!(finish(again), BRIDGE_OK);
    let got = unsafe { &*future_value(again).cast::<bridge_bytes_t>() };
    assert_eq!(
        unsafe { std::slice::from_raw_parts(got.data, got.len) },
        message
    );
    // The cancelled next lost nothing either: the channel goes on.
    let value = Box::into_raw(Box::new(7u32)).cast::<c_void>();
    unsafe extern "C" fn free_u32(p: *mut c_void) {
        drop(unsafe { Box::from_raw(p.cast::<u32>()) });
    }
    assert_eq!(
        unsafe { bridge_sender_try_send(sender, value, Some(free_u32)) },
        BRIDGE_OK
    );
    let mut next_again = null_mut();
    assert_eq!(
        unsafe { bridge_channel_next(channel, &mut next_again) },
        BRIDGE_OK
    );
    assert_eq!(finish(next_again), BRIDGE_OK);
    assert_eq!(unsafe { *future_value(next_again).cast::<u32>() }, 7);
    unsafe {
        future_release(next_again);
        bridge_sender_close(sender);
        bridge_channel_free(channel);
        future_release(wrote);
        future_release(again);
        bridge_stream_close(near);
        bridge_stream_close(far);
        for f in futures {
            future_release(f);
        }
        bridge_token_free(t);
        bridge_free(b);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_parent_cancels_its_children_and_their_scopes() {
    let b = start();
    let parent = token(b, null_mut());
    let child = token(b, parent);
    let grandchild = token(b, child);
    let s = scope(b, child, 0);
    let (in_token, in_scope) = (sleep(b, 600_000), sleep(b, 600_000));
    unsafe {
        assert_eq!(bridge_token_add(grandchild, in_token), BRIDGE_OK);
        assert_eq!(bridge_scope_add(s, in_scope), BRIDGE_OK);
        // A child's cancellation does not reach up.
        let sibling = token(b, parent);
        bridge_token_cancel(sibling);
        assert!(!bridge_token_is_cancelled(parent) && !bridge_token_is_cancelled(child));
        bridge_token_free(sibling);

        // A freed middle token still passes the cancellation on.
        bridge_token_free(child);
        bridge_token_cancel(parent);
        assert!(bridge_token_is_cancelled(grandchild));
        assert!(bridge_token_is_cancelled(bridge_scope_token(s)));
        assert_eq!(finish(in_token), BRIDGE_CANCELLED);
        assert_eq!(finish(in_scope), BRIDGE_CANCELLED);
        // Born cancelled under a cancelled parent.
        let late = token(b, parent);
        assert!(bridge_token_is_cancelled(late));
        bridge_token_free(late);

        let mut join = null_mut();
        bridge_scope_close(s, &mut join);
        assert_eq!(finish(join), BRIDGE_OK);
        for f in [in_token, in_scope, join] {
            future_release(f);
        }
        bridge_token_free(grandchild);
        bridge_token_free(parent);
        bridge_free(b);
    }
}

#[test]
fn deadlines_cancel_and_the_earliest_wins() {
    let b = start();
    unsafe {
        // A later deadline after an earlier one changes nothing, and the reverse
        // brings it forward.
        for (first, second) in [(20, 600_000), (600_000, 20)] {
            let t = token(b, null_mut());
            let f = sleep(b, 600_000);
            assert_eq!(bridge_token_add(t, f), BRIDGE_OK);
            assert_eq!(bridge_token_set_deadline(t, first), BRIDGE_OK);
            assert_eq!(bridge_token_set_deadline(t, second), BRIDGE_OK);
            assert_eq!(finish(f), BRIDGE_CANCELLED);
            assert!(bridge_token_is_cancelled(t));
            // Nothing changes on a cancelled token.
            assert_eq!(bridge_token_set_deadline(t, 1), BRIDGE_OK);
            future_release(f);
            bridge_token_free(t);
        }
        // 0: at once, on this thread.
        let t = token(b, null_mut());
        let asked = AtomicUsize::new(0);
        assert_eq!(
            bridge_token_on_cancel(t, Some(count), counter(&asked)),
            BRIDGE_OK
        );
        assert_eq!(bridge_token_set_deadline(t, 0), BRIDGE_OK);
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        bridge_token_free(t);

        // A freed token's deadline does not fire: a later deadline of another token
        // fires first.
        let freed = token(b, null_mut());
        let kept_out = sleep(b, 600_000);
        assert_eq!(bridge_token_add(freed, kept_out), BRIDGE_OK);
        assert_eq!(bridge_token_set_deadline(freed, 10), BRIDGE_OK);
        bridge_token_free(freed);
        let clock = token(b, null_mut());
        let tick = sleep(b, 600_000);
        assert_eq!(bridge_token_add(clock, tick), BRIDGE_OK);
        assert_eq!(bridge_token_set_deadline(clock, 50), BRIDGE_OK);
        assert_eq!(finish(tick), BRIDGE_CANCELLED);
        assert_eq!(future_status(kept_out), BRIDGE_PENDING);
        assert_eq!(future_cancel(kept_out), BRIDGE_OK);
        assert_eq!(finish(kept_out), BRIDGE_CANCELLED);
        future_release(kept_out);
        future_release(tick);
        bridge_token_free(clock);

        // A shut-down bridge runs no timer.
        let t = token(b, null_mut());
        assert_eq!(bridge_shutdown(b, 1000), BRIDGE_OK);
        assert_eq!(bridge_token_set_deadline(t, 10), BRIDGE_E_NOT_RUNNING);
        let mut refused = null_mut();
        assert_eq!(
            bridge_token_new(b, null_mut(), &mut refused),
            BRIDGE_E_NOT_RUNNING
        );
        assert!(refused.is_null());
        bridge_token_free(t);
        bridge_free(b);
    }
}

#[test]
fn the_fd_becomes_readable_exactly_when_cancelled() {
    let b = start();
    unsafe {
        let t = token(b, null_mut());
        let fd = bridge_token_fd(t);
        assert!(fd >= 0);
        assert_eq!(bridge_token_fd(t), fd, "one descriptor");
        assert!(!readable(fd, 0));
        bridge_token_cancel(t);
        assert!(readable(fd, 0));
        assert!(readable(fd, 0), "and stays readable");
        bridge_token_free(t);

        // By a deadline, on a bridge thread: a poll loop wakes.
        let t = token(b, null_mut());
        let fd = bridge_token_fd(t);
        assert!(!readable(fd, 0));
        assert_eq!(bridge_token_set_deadline(t, 20), BRIDGE_OK);
        assert!(readable(fd, WATCHDOG_MS as i32));
        assert!(bridge_token_is_cancelled(t));
        bridge_token_free(t);
        // Closed with the token.
        assert_eq!(libc::fcntl(fd, libc::F_GETFD), -1);

        // Asked for after the cancellation: readable at once.
        let t = token(b, null_mut());
        bridge_token_cancel(t);
        assert!(readable(bridge_token_fd(t), 0));
        bridge_token_free(t);
        bridge_free(b);
    }
}

#[test]
fn adding_to_a_cancelled_token_cancels_at_once() {
    let b = start();
    unsafe {
        let t = token(b, null_mut());
        bridge_token_cancel(t);
        let mut stop = StopState {
            promise: null_mut(),
            asked: AtomicUsize::new(0),
        };
        let promised = stoppable(b, &mut stop);
        assert_eq!(bridge_token_add(t, promised.future), BRIDGE_OK);
        assert_eq!(stop.asked.load(Ordering::SeqCst), 1, "before add returned");
        assert_eq!(future_status(promised.future), BRIDGE_CANCELLED);
        let asked = AtomicUsize::new(0);
        assert_eq!(
            bridge_token_on_cancel(t, Some(count), counter(&asked)),
            BRIDGE_OK
        );
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "a late callback runs at once"
        );
        // A finished future is left as it is.
        let done = sleep(b, 0);
        assert_eq!(finish(done), BRIDGE_OK);
        assert_eq!(bridge_token_add(t, done), BRIDGE_OK);
        assert_eq!(future_status(done), BRIDGE_OK);
        future_release(done);
        future_release(promised.future);
        bridge_token_free(t);
        bridge_free(b);
    }
}

/// The finalizer of a cancel callback's user data runs exactly once on every path:
/// after the callback, with the token's free when it never ran, at once if refused.
#[test]
fn cancel_callback_finalizers_run_exactly_once() {
    let b = start();
    unsafe {
        // The user data is a pair of counters, (calls, frees): `count` counts in the
        // first, at the pair's own address, `count_free` in the second.
        unsafe extern "C" fn count_free(user_data: *mut c_void) {
            let pair = unsafe { &*user_data.cast::<[AtomicUsize; 2]>() };
            pair[1].fetch_add(1, Ordering::SeqCst);
        }
        let pair = [AtomicUsize::new(0), AtomicUsize::new(0)];
        let data = (&pair as *const [AtomicUsize; 2]).cast_mut().cast();
        let get = || {
            (
                pair[0].load(Ordering::SeqCst),
                pair[1].load(Ordering::SeqCst),
            )
        };

        let t = token(b, null_mut());
        assert_eq!(
            bridge_token_on_cancel_with_free(t, Some(count), data, Some(count_free)),
            BRIDGE_OK
        );
        assert_eq!(get(), (0, 0));
        bridge_token_cancel(t);
        assert_eq!(get(), (1, 1), "after the call");
        bridge_token_free(t);
        assert_eq!(get(), (1, 1));

        let t = token(b, null_mut());
        assert_eq!(
            bridge_token_on_cancel_with_free(t, Some(count), data, Some(count_free)),
            BRIDGE_OK
        );
        bridge_token_free(t);
        assert_eq!(get(), (1, 2), "never called: freed with the token");

        assert_eq!(
            bridge_token_on_cancel_with_free(null_mut(), Some(count), data, Some(count_free)),
            BRIDGE_E_INVALID
        );
        assert_eq!(get(), (1, 3), "refused: freed at once");
        bridge_free(b);
    }
}

/// Cancel callbacks run once each, in order, on the cancelling thread, and may call
/// back into the token, freeing it included.
#[test]
fn cancel_callbacks_may_cancel_add_and_free() {
    struct Reentrant {
        token: *mut bridge_token_t,
        added: *mut future_t,
        ran_on: std::sync::Mutex<Vec<std::thread::ThreadId>>,
    }
    unsafe extern "C" fn reenter(user_data: *mut c_void) {
        let r = unsafe { &*user_data.cast::<Reentrant>() };
        r.ran_on.lock().unwrap().push(std::thread::current().id());
        unsafe {
            bridge_token_cancel(r.token);
            assert_eq!(bridge_token_add(r.token, r.added), BRIDGE_OK);
            bridge_token_free(r.token);
        }
    }
    let b = start();
    let r = Reentrant {
        token: token(b, null_mut()),
        added: sleep(b, 600_000),
        ran_on: std::sync::Mutex::new(Vec::new()),
    };
    let data = (&r as *const Reentrant).cast_mut().cast();
    unsafe {
        assert_eq!(
            bridge_token_on_cancel(r.token, Some(reenter), data),
            BRIDGE_OK
        );
        let canceller = r.token as usize;
        let id = std::thread::spawn(move || {
            bridge_token_cancel(canceller as *mut bridge_token_t);
            std::thread::current().id()
        })
        .join()
        .unwrap();
        assert_eq!(*r.ran_on.lock().unwrap(), vec![id]);
        assert_eq!(finish(r.added), BRIDGE_CANCELLED);
        future_release(r.added);
        bridge_free(b);
    }
}

/// Cancels, additions, child tokens and frees race from many threads; every future
/// added ends cancelled, and nothing deadlocks.
#[test]
fn cancel_add_and_free_race_across_threads() {
    let b = start();
    for _ in 0..10 {
        let root = token(b, null_mut()) as usize;
        let bridge = b as usize;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(5));
        let threads: Vec<_> = (0..4)
            .map(|n| {
                let barrier = barrier.clone();
                std::thread::spawn(move || unsafe {
                    let (b, root) = (bridge as *mut bridge_t, root as *mut bridge_token_t);
                    barrier.wait();
                    let mut futures = Vec::new();
                    for i in 0..100 {
                        let child = token(b, root);
                        let f = sleep(b, 600_000);
                        assert_eq!(bridge_token_add(child, f), BRIDGE_OK);
                        assert_eq!(bridge_token_add(root, f), BRIDGE_OK);
                        if (i + n) % 2 == 0 {
                            bridge_token_cancel(child);
                        }
                        bridge_token_free(child);
                        futures.push(f as usize);
                    }
                    futures
                })
            })
            .collect();
        barrier.wait();
        unsafe { bridge_token_cancel(root as *mut bridge_token_t) };
        for thread in threads {
            for f in thread.join().unwrap() {
                let f = f as *mut future_t;
                assert_eq!(finish(f), BRIDGE_CANCELLED);
                unsafe { future_release(f) };
            }
        }
        unsafe { bridge_token_free(root as *mut bridge_token_t) };
    }
    unsafe { bridge_free(b) };
}

/// The test harness's default stack: a deep recursion would overflow it.
const DEFAULT_TEST_STACK: usize = 2 << 20;

/// Runs `free` on a thread with the harness's default stack, whatever RUST_MIN_STACK
/// says, so that a drop recursing once per level of a chain overflows it.
fn free_on_a_default_stack(free: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(DEFAULT_TEST_STACK)
        .spawn(free)
        .unwrap()
        .join()
        .unwrap();
}

/// Each token made under the previous one, whose handle is freed at once (the parent
/// may be freed first): the last free releases the whole chain, which must not cost a
/// stack frame per token (a stack overflow aborts the program). Cancelling before the
/// free reaches the whole chain.
#[test]
fn freeing_the_end_of_a_long_token_chain_does_not_overflow_the_stack() {
    let b = start();
    let head = token(b, null_mut());
    let mut last = token(b, head);
    for _ in 0..30_000 {
        let next = token(b, last);
        unsafe { bridge_token_free(last) };
        last = next;
    }
    unsafe {
        bridge_token_cancel(head);
        assert!(bridge_token_is_cancelled(last), "the chain is intact");
        bridge_token_free(head);
    }
    let last = last as usize;
    free_on_a_default_stack(move || unsafe { bridge_token_free(last as *mut bridge_token_t) });
    unsafe { bridge_free(b) };
}

/// Nested scopes, each under the previous one's token, form the same chain: closed
/// from the outside in, the innermost close releases it without a stack frame per
/// scope. (A scope made under a closed one is born cancelled, linked to nothing.)
#[test]
fn closing_the_innermost_of_deeply_nested_scopes_does_not_overflow_the_stack() {
    let b = start();
    let mut scopes = vec![scope(b, null_mut(), 0)];
    for _ in 0..30_000 {
        let parent = unsafe { bridge_scope_token(*scopes.last().unwrap()) };
        scopes.push(scope(b, parent, 0));
    }
    let innermost = scopes.pop().unwrap();
    for s in scopes {
        let mut join = null_mut();
        unsafe {
            bridge_scope_close(s, &mut join);
            assert_eq!(future_status(join), BRIDGE_OK, "no member: ended at once");
            future_release(join);
        }
    }
    let innermost = innermost as usize;
    free_on_a_default_stack(move || unsafe {
        let mut join = null_mut();
        bridge_scope_close(innermost as *mut bridge_scope_t, &mut join);
        assert_eq!(future_status(join), BRIDGE_OK);
        future_release(join);
    });
    unsafe { bridge_free(b) };
}

/// A member that ignores the cancellation for a while (a promise its holder settles
/// later) keeps the join pending until it ends.
#[test]
fn the_join_waits_for_every_member() {
    let b = start();
    unsafe {
        let s = scope(b, null_mut(), 0);
        let (mut promise, mut held) = (null_mut(), null_mut());
        assert_eq!(bridge_promise_new(b, &mut promise, &mut held), BRIDGE_OK);
        let napping = sleep(b, 600_000);
        let quick = sleep(b, 1);
        for f in [held, napping, quick] {
            assert_eq!(bridge_scope_add(s, f), BRIDGE_OK);
        }
        let mut join = null_mut();
        assert_eq!(bridge_scope_join(s, &mut join), BRIDGE_OK);
        assert_eq!(finish(quick), BRIDGE_OK);
        assert_eq!(future_wait(join, 20), BRIDGE_TIMEOUT, "two members run on");
        bridge_scope_cancel(s);
        assert_eq!(finish(napping), BRIDGE_CANCELLED);
        assert!(bridge_promise_is_cancelled(promise));
        assert_eq!(
            future_status(join),
            BRIDGE_PENDING,
            "the promise's holder did not stop"
        );
        bridge_promise_resolve(promise, null_mut(), None);
        assert_eq!(finish(held), BRIDGE_CANCELLED);
        assert_eq!(finish(join), BRIDGE_OK);
        let mut again = null_mut();
        bridge_scope_close(s, &mut again);
        assert_eq!(again, join, "the same join");
        for f in [held, napping, quick, join, again] {
            future_release(f);
        }
        bridge_free(b);
    }
}

#[test]
fn close_cancels_and_later_additions_are_refused() {
    let b = start();
    unsafe {
        let s = scope(b, null_mut(), 0);
        let running = sleep(b, 600_000);
        assert_eq!(bridge_scope_add(s, running), BRIDGE_OK);
        let mut join = null_mut();
        assert_eq!(bridge_scope_join(s, &mut join), BRIDGE_OK);
        let late = sleep(b, 600_000);
        assert_eq!(bridge_scope_add(s, late), BRIDGE_E_CLOSED);
        assert_eq!(finish(late), BRIDGE_CANCELLED, "refused means cancelled");
        assert_eq!(
            future_status(running),
            BRIDGE_PENDING,
            "join does not cancel"
        );
        bridge_scope_close(s, null_mut());
        assert_eq!(finish(running), BRIDGE_CANCELLED);
        assert_eq!(finish(join), BRIDGE_OK);
        for f in [running, late, join] {
            future_release(f);
        }
        bridge_free(b);
    }
}

unsafe extern "C" fn fail_with_7(job: *mut bridge_job_t, _arg: *mut c_void) -> i32 {
    unsafe { bridge_job_fail(job, 7, c"member broke".as_ptr()) }
}

#[test]
fn cancel_on_failure_fails_the_join_with_the_first_failure() {
    let b = start();
    unsafe {
        let s = scope(b, null_mut(), BRIDGE_SCOPE_CANCEL_ON_FAILURE);
        let napping = sleep(b, 600_000);
        assert_eq!(bridge_scope_add(s, napping), BRIDGE_OK);
        let mut failing = null_mut();
        assert_eq!(
            bridge_submit(
                b,
                Some(fail_with_7),
                null_mut(),
                None,
                BRIDGE_RUN_BLOCKING,
                &mut failing
            ),
            BRIDGE_OK
        );
        assert_eq!(bridge_scope_add(s, failing), BRIDGE_OK);
        assert_eq!(
            finish(napping),
            BRIDGE_CANCELLED,
            "the failure cancelled the rest"
        );
        let mut join = null_mut();
        bridge_scope_close(s, &mut join);
        assert_eq!(finish(join), BRIDGE_FAILED);
        assert_eq!(future_error_code(join), 7);
        let message = std::ffi::CStr::from_ptr(future_error_message(join));
        assert_eq!(message.to_str().unwrap(), "member broke");
        for f in [napping, failing, join] {
            future_release(f);
        }

        // Without the flag, the join says only that everything ended.
        let s = scope(b, null_mut(), 0);
        let mut failing = null_mut();
        assert_eq!(
            bridge_submit(
                b,
                Some(fail_with_7),
                null_mut(),
                None,
                BRIDGE_RUN_BLOCKING,
                &mut failing
            ),
            BRIDGE_OK
        );
        assert_eq!(bridge_scope_add(s, failing), BRIDGE_OK);
        assert_eq!(finish(failing), BRIDGE_FAILED);
        let mut join = null_mut();
        bridge_scope_close(s, &mut join);
        assert_eq!(finish(join), BRIDGE_OK);
        future_release(failing);
        future_release(join);
        bridge_free(b);
    }
}

/// Shutdown resolves the join of a scope that was never joined, and of one joined
/// with members running: their members are stopped, and the joins end.
#[test]
fn shutdown_resolves_the_joins() {
    let b = start();
    unsafe {
        let joined = scope(b, null_mut(), 0);
        let open = scope(b, null_mut(), 0);
        let (a, c) = (sleep(b, 600_000), sleep(b, 600_000));
        assert_eq!(bridge_scope_add(joined, a), BRIDGE_OK);
        assert_eq!(bridge_scope_add(open, c), BRIDGE_OK);
        let mut join = null_mut();
        assert_eq!(bridge_scope_join(joined, &mut join), BRIDGE_OK);
        assert_eq!(bridge_shutdown(b, 0), BRIDGE_OK);
        assert_eq!(future_status(join), BRIDGE_CANCELLED);
        assert_eq!(future_status(a), BRIDGE_CANCELLED);
        assert_eq!(future_status(c), BRIDGE_CANCELLED);
        let mut open_join = null_mut();
        assert_eq!(bridge_scope_join(open, &mut open_join), BRIDGE_OK);
        assert_eq!(future_status(open_join), BRIDGE_CANCELLED);
        let mut stats = std::mem::zeroed::<bridge_stats_t>();
        assert_eq!(bridge_stats(b, &mut stats), BRIDGE_OK);
        assert_eq!(stats.pending, 0);
        bridge_scope_close(joined, null_mut());
        bridge_scope_close(open, null_mut());
        let mut refused = null_mut();
        assert_eq!(
            bridge_scope_new(b, null_mut(), 0, &mut refused),
            BRIDGE_E_NOT_RUNNING
        );
        assert!(refused.is_null());
        for f in [a, c, join, open_join] {
            future_release(f);
        }
        bridge_free(b);
    }
}

/// A member whose cancel callback closes the scope it is in, then stops (frees its
/// promise): what the callback needs, and what it saw.
struct ClosingMember {
    scope: *mut bridge_scope_t,
    promise: *mut bridge_promise_t,
    future: *mut future_t,
    join: std::sync::atomic::AtomicPtr<future_t>,
    ran: AtomicUsize,
}

unsafe extern "C" fn close_the_scope(user_data: *mut c_void) {
    let m = unsafe { &*user_data.cast::<ClosingMember>() };
    m.ran.fetch_add(1, Ordering::SeqCst);
    let mut join = null_mut();
    unsafe {
        bridge_scope_close(m.scope, &mut join);
        bridge_promise_free(m.promise);
    }
    m.join.store(join, Ordering::SeqCst);
}

/// A member of `s` (not added yet) whose cancel callback closes `s`.
fn closing_member(b: *mut bridge_t, s: *mut bridge_scope_t) -> Box<ClosingMember> {
    let mut m = Box::new(ClosingMember {
        scope: s,
        promise: null_mut(),
        future: null_mut(),
        join: Default::default(),
        ran: AtomicUsize::new(0),
    });
    unsafe {
        assert_eq!(
            bridge_promise_new(b, &mut m.promise, &mut m.future),
            BRIDGE_OK
        );
        let data = (&*m as *const ClosingMember).cast_mut().cast();
        assert_eq!(
            bridge_promise_on_cancel(m.promise, Some(close_the_scope), data),
            BRIDGE_OK
        );
    }
    m
}

/// A member's cancel callback, run by bridge_scope_cancel() or bridge_scope_add(),
/// may close the scope: the call goes on with the scope it was given and returns as
/// usual, the members left are still cancelled, and the join ends once they ended.
#[test]
fn a_cancel_callback_may_close_the_scope_under_add_and_cancel() {
    let b = start();
    unsafe {
        // Under bridge_scope_cancel(), with a member after it still to cancel.
        let s = scope(b, null_mut(), 0);
        let m = closing_member(b, s);
        let napping = sleep(b, 600_000);
        assert_eq!(bridge_scope_add(s, m.future), BRIDGE_OK);
        assert_eq!(bridge_scope_add(s, napping), BRIDGE_OK);
        bridge_scope_cancel(s);
        assert_eq!(m.ran.load(Ordering::SeqCst), 1);
        assert_eq!(
            finish(napping),
            BRIDGE_CANCELLED,
            "cancelled after the close"
        );
        assert_eq!(finish(m.future), BRIDGE_CANCELLED);
        let join = m.join.load(Ordering::SeqCst);
        assert_eq!(finish(join), BRIDGE_OK);
        for f in [napping, m.future, join] {
            future_release(f);
        }

        // Under bridge_scope_add() to a cancelled scope: the member was taken (the
        // join waited for it) before its callback closed the scope.
        let s = scope(b, null_mut(), 0);
        bridge_scope_cancel(s);
        let m = closing_member(b, s);
        assert_eq!(bridge_scope_add(s, m.future), BRIDGE_OK);
        assert_eq!(m.ran.load(Ordering::SeqCst), 1);
        assert_eq!(finish(m.future), BRIDGE_CANCELLED);
        let join = m.join.load(Ordering::SeqCst);
        assert_eq!(finish(join), BRIDGE_OK);
        for f in [m.future, join] {
            future_release(f);
        }

        // Under bridge_scope_add() to a joined scope: refused, and cancelled.
        let s = scope(b, null_mut(), 0);
        let mut first = null_mut();
        assert_eq!(bridge_scope_join(s, &mut first), BRIDGE_OK);
        let m = closing_member(b, s);
        assert_eq!(bridge_scope_add(s, m.future), BRIDGE_E_CLOSED);
        assert_eq!(m.ran.load(Ordering::SeqCst), 1);
        assert_eq!(finish(m.future), BRIDGE_CANCELLED);
        let join = m.join.load(Ordering::SeqCst);
        assert_eq!(join, first, "the same join");
        assert_eq!(finish(join), BRIDGE_OK);
        for f in [m.future, first, join] {
            future_release(f);
        }
        bridge_free(b);
    }
}

/// A scope nested through its parent's token: closing the outer scope cancels the
/// inner one, and the outer join, with the inner join as a member, waits for both.
/// (The inner join, a member the outer scope cancelled, ends cancelled.)
#[test]
fn nested_scopes_through_the_parent_token() {
    let b = start();
    unsafe {
        let outer = scope(b, null_mut(), 0);
        let inner = scope(b, bridge_scope_token(outer), 0);
        let (mut promise, mut held) = (null_mut(), null_mut());
        assert_eq!(bridge_promise_new(b, &mut promise, &mut held), BRIDGE_OK);
        assert_eq!(bridge_scope_add(inner, held), BRIDGE_OK);
        let mut inner_join = null_mut();
        bridge_scope_close(inner, &mut inner_join);
        assert_eq!(bridge_scope_add(outer, inner_join), BRIDGE_OK);
        let mut outer_join = null_mut();
        bridge_scope_close(outer, &mut outer_join);
        assert!(bridge_promise_is_cancelled(promise));
        assert_eq!(future_wait(outer_join, 20), BRIDGE_TIMEOUT);
        bridge_promise_free(promise);
        assert_eq!(finish(outer_join), BRIDGE_OK);
        assert_eq!(future_status(inner_join), BRIDGE_CANCELLED);
        for f in [held, inner_join, outer_join] {
            future_release(f);
        }
        bridge_free(b);
    }
}

#[test]
fn null_and_invalid_inputs_are_refused() {
    let b = start();
    unsafe {
        let t = token(b, null_mut());
        let s = scope(b, null_mut(), 0);
        let f = sleep(b, 600_000);
        let mut out = null_mut();
        assert_eq!(
            bridge_token_new(null_mut(), null_mut(), &mut out),
            BRIDGE_E_INVALID
        );
        assert_eq!(
            bridge_token_new(b, null_mut(), null_mut()),
            BRIDGE_E_INVALID
        );
        assert!(out.is_null());
        assert_eq!(bridge_token_set_deadline(null_mut(), 1), BRIDGE_E_INVALID);
        bridge_token_cancel(null_mut());
        assert!(!bridge_token_is_cancelled(null()));
        assert_eq!(bridge_token_fd(null_mut()), -1);
        assert_eq!(bridge_token_add(null_mut(), f), BRIDGE_E_INVALID);
        assert_eq!(bridge_token_add(t, null_mut()), BRIDGE_E_INVALID);
        assert_eq!(
            bridge_token_on_cancel(null_mut(), Some(count), null_mut()),
            BRIDGE_E_INVALID
        );
        assert_eq!(
            bridge_token_on_cancel(t, None, null_mut()),
            BRIDGE_E_INVALID
        );
        bridge_token_free(null_mut());

        let mut sout = null_mut();
        assert_eq!(
            bridge_scope_new(null_mut(), null_mut(), 0, &mut sout),
            BRIDGE_E_INVALID
        );
        assert_eq!(
            bridge_scope_new(b, null_mut(), 0, null_mut()),
            BRIDGE_E_INVALID
        );
        assert_eq!(
            bridge_scope_new(b, null_mut(), 2, &mut sout),
            BRIDGE_E_INVALID
        );
        assert!(sout.is_null());
        assert_eq!(bridge_scope_add(null_mut(), f), BRIDGE_E_INVALID);
        assert_eq!(bridge_scope_add(s, null_mut()), BRIDGE_E_INVALID);
        assert!(bridge_scope_token(null_mut()).is_null());
        bridge_scope_cancel(null_mut());
        let mut join = null_mut();
        assert_eq!(bridge_scope_join(null_mut(), &mut join), BRIDGE_E_INVALID);
        assert_eq!(bridge_scope_join(s, null_mut()), BRIDGE_E_INVALID);
        assert!(join.is_null());
        bridge_scope_close(null_mut(), &mut join);
        assert!(join.is_null());

        // Nothing was touched by the refusals.
        assert_eq!(future_status(f), BRIDGE_PENDING);
        assert!(!bridge_token_is_cancelled(t));
        assert_eq!(future_cancel(f), BRIDGE_OK);
        assert_eq!(finish(f), BRIDGE_CANCELLED);
        future_release(f);
        bridge_scope_close(s, null_mut());
        bridge_token_free(t);
        bridge_free(b);
    }
}
