//! `bridge_t`: starting, stopping and submitting to a bridge.

use std::ffi::{c_char, c_void, CStr};
use std::sync::Arc;

use crate::ffi::boundary::{boundary, status_of, SendPtr};
use crate::ffi::future::{future_t, into_c_future, CKind};
use crate::ffi::handle::{
    arc_as_c, arc_borrow, arc_clone, arc_into_c, arc_take, Castable, OwnedByArc,
};
use crate::ffi::job::{bridge_free_fn, bridge_work_fn, CWork};
use crate::ffi::status::{
    bridge_status, BRIDGE_E_INVALID, BRIDGE_OK, BRIDGE_RUN_BLOCKING, BRIDGE_RUN_ON_LOOP,
};
use crate::future::Future;
use crate::runtime::{Bridge, Config, Placement};
use crate::status::timeout_from_ms;

/// A running bridge: an async runtime with its loop thread and blocking pool.
///
/// Made by bridge_start() (freed with bridge_free()) or bridge_default() (never freed).
/// Thread-safe: every function taking a bridge_t may be called from any thread.
pub struct bridge {
    _private: [u8; 0],
}

/// A running bridge (see struct bridge).
pub type bridge_t = bridge;

impl Castable for bridge_t {
    type Rust = Bridge;
    type Ownership = OwnedByArc;
}

/// How bridge_start() starts a bridge. Initialise it with bridge_config_init(), then
/// change the fields you need.
#[repr(C)]
pub struct bridge_config {
    /// sizeof(bridge_config_t), set by bridge_config_init(). Fields beyond it are not
    /// read (programs built against an older header); one that does not reach the
    /// fields of version 0.1 is BRIDGE_E_INVALID.
    pub size: u32,
    /// 0: one loop thread driving a current-thread runtime (default); N: N runtime
    /// workers (at most 1024).
    pub worker_threads: u32,
    /// Upper bound of the blocking pool that runs BRIDGE_RUN_BLOCKING work; 0: 512; at
    /// most 65536 (more is BRIDGE_E_INVALID).
    pub max_blocking_threads: u32,
    /// 0: unlimited; else bridge_submit() returns BRIDGE_E_BUSY while this many futures
    /// are pending.
    pub max_pending: u32,
    /// Name of the bridge's threads (copied; Linux shows 15 bytes); NULL: "asyncbridge".
    pub thread_name: *const c_char,
    /// Receives failures nobody observed (see future_t); NULL: they are printed to stderr.
    pub on_unhandled_error:
        Option<unsafe extern "C" fn(code: i32, message: *const c_char, user_data: *mut c_void)>,
    /// Passed to on_unhandled_error.
    pub user_data: *mut c_void,
    /// Low-latency mode, off (0) by default: the loop, once idle, a blocking-pool
    /// thread right after its work returned (never while idle), and any thread
    /// waiting in future_wait() spin this many microseconds before they sleep, which
    /// turns a wake-up (tens of microseconds on a busy machine) into a few. It burns
    /// CPU for that long after each burst of work and in each wait: see README,
    /// "Performance". At most 1000000. Read only if `size` covers it, so programs built
    /// against a header without this field keep working.
    pub spin_us: u32,
}

/// How bridge_start() starts a bridge (see struct bridge_config).
pub type bridge_config_t = bridge_config;

/// A snapshot of a bridge's counters, filled by bridge_stats().
#[repr(C)]
pub struct bridge_stats {
    /// Futures accepted since the bridge started.
    pub submitted: u64,
    /// Futures that finished BRIDGE_OK.
    pub completed: u64,
    /// Futures that finished BRIDGE_FAILED.
    pub failed: u64,
    /// Futures that finished BRIDGE_CANCELLED.
    pub cancelled: u64,
    /// Futures not finished yet.
    pub pending: u64,
}

/// A snapshot of a bridge's counters (see struct bridge_stats).
pub type bridge_stats_t = bridge_stats;

/// Borrows the bridge behind a C handle.
///
/// A handle is a pointer made by `Arc::into_raw` (bridge_start), or the pointer of the
/// global bridge's `Arc`, which its static holds for good (bridge_default).
///
/// # Safety
/// `b` is NULL or a handle from bridge_start()/bridge_default() not yet freed.
pub(crate) unsafe fn borrow<'a>(b: *const bridge_t) -> Option<&'a Bridge> {
    // SAFETY: per the contract above, a non-NULL handle points to a live Bridge.
    unsafe { arc_borrow::<bridge_t>(b) }
}

/// One more reference to the bridge behind a C handle: for a call that runs user
/// callbacks (which may free the handle), and for an object that runs its operations
/// on that bridge (a stream) and may outlive the caller's handle.
///
/// # Safety
/// As [`borrow`].
pub(crate) unsafe fn retain_bridge(b: *const bridge_t) -> Option<Arc<Bridge>> {
    // SAFETY: a live handle is an `Arc` pointer whose count is at least one (see
    // `borrow`); the count taken here is given back when the returned `Arc` drops.
    unsafe { arc_clone::<bridge_t>(b) }
}

/// Fills `cfg` with the defaults: size = sizeof(bridge_config_t), one loop thread,
/// default blocking pool, no max_pending, thread name "asyncbridge", stderr for
/// unobserved failures.
///
/// @param cfg the configuration to fill; NULL does nothing.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_config_init(cfg: *mut bridge_config_t) {
    boundary(|| {
        if cfg.is_null() {
            return;
        }
        let defaults = bridge_config {
            size: std::mem::size_of::<bridge_config_t>() as u32,
            worker_threads: 0,
            max_blocking_threads: 0,
            max_pending: 0,
            thread_name: std::ptr::null(),
            on_unhandled_error: None,
            user_data: std::ptr::null_mut(),
            spin_us: 0,
        };
        // SAFETY: `cfg` is non-NULL and, per the API, points to a writable
        // bridge_config_t; `write` does not read the old (possibly uninitialised) value.
        unsafe { cfg.write(defaults) };
    })
}

/// Starts a bridge: its runtime, its loop thread and its blocking pool.
///
/// @param cfg the configuration, read during the call only; NULL: the defaults of
///        bridge_config_init().
/// @param out receives the bridge on success; the caller owns it and frees it with
///        bridge_free() (which shuts it down first if needed).
/// @return BRIDGE_OK; BRIDGE_E_INVALID if `out` is NULL, `cfg->size` does not cover
///         the fields of version 0.1 (size up to and including user_data) or a field is
///         out of range; BRIDGE_E_NOT_RUNNING if the runtime or its thread could not be
///         created.
/// Any thread, including a loop thread of another bridge.
#[no_mangle]
pub unsafe extern "C" fn bridge_start(
    cfg: *const bridge_config_t,
    out: *mut *mut bridge_t,
) -> bridge_status {
    boundary(|| {
        if out.is_null() {
            return BRIDGE_E_INVALID;
        }
        // SAFETY: a non-NULL `cfg` points to a readable configuration; `size` is read
        // first so that no field beyond what the caller allocated is read.
        let config = match unsafe { config_from_c(cfg) } {
            Some(config) => config,
            None => return BRIDGE_E_INVALID,
        };
        match Bridge::start(config) {
            Ok(bridge) => {
                let handle = arc_into_c::<bridge_t>(Arc::new(bridge));
                // SAFETY: `out` is non-NULL and writable per the API.
                unsafe { out.write(handle) };
                BRIDGE_OK
            }
            Err(error) => error.code(),
        }
    })
}

/// Reads a C configuration; `None` if it is invalid.
///
/// # Safety
/// `cfg` is NULL or points to at least `(*cfg).size` readable bytes of a bridge_config_t.
unsafe fn config_from_c(cfg: *const bridge_config_t) -> Option<Config> {
    let mut config = Config::default();
    if cfg.is_null() {
        return Some(config);
    }
    // SAFETY: `size` is the first field, always present.
    let size = unsafe { std::ptr::addr_of!((*cfg).size).read() } as usize;
    // The fields of the 0.1 contract must all be there; later ones are read if present.
    if size < std::mem::offset_of!(bridge_config_t, spin_us) {
        return None;
    }
    // SAFETY: the caller's struct holds at least the contract's fields, which are all
    // this reads through `c` (later fields are read below only if `size` covers them).
    let c = unsafe { &*cfg };
    config.worker_threads = c.worker_threads as usize;
    config.max_blocking_threads = c.max_blocking_threads as usize;
    config.max_pending = u64::from(c.max_pending);
    if size >= std::mem::size_of::<bridge_config_t>() {
        config.spin = std::time::Duration::from_micros(u64::from(c.spin_us));
    }
    if !c.thread_name.is_null() {
        // SAFETY: a non-NULL thread_name is a NUL-terminated string per the API.
        let name = unsafe { CStr::from_ptr(c.thread_name) };
        config.thread_name = name.to_string_lossy().into_owned();
    }
    if let Some(hook) = c.on_unhandled_error {
        let user_data = SendPtr(c.user_data);
        config.on_unhandled_error = Some(Box::new(move |code, message: &CStr| {
            // SAFETY: the hook is a C function the caller gave for this purpose; the
            // message is NUL-terminated and lives for the call.
            unsafe { hook(code, message.as_ptr(), user_data.get()) }
        }));
    }
    Some(config)
}

/// The process-wide bridge, started with the defaults on the first call.
///
/// @return the bridge, owned by the library: bridge_free() on it does nothing (it
///         may still be shut down with bridge_shutdown(), for good). NULL if it could
///         not be started; a later call tries again.
/// Any thread; concurrent first calls start one bridge. In a fork child it is the
/// parent's bridge, which is not running there; if the fork happened while a thread of
/// the parent was inside the first bridge_default(), the child gets NULL, at once, from
/// every call (that start cannot finish without the thread).
#[no_mangle]
pub extern "C" fn bridge_default() -> *mut bridge_t {
    boundary(|| match Bridge::global_shared() {
        Ok(bridge) => arc_as_c::<bridge_t>(bridge),
        Err(_) => std::ptr::null_mut(),
    })
}

/// Whether the bridge accepts work.
///
/// @return true while running; false once bridge_shutdown() was called, in a fork
///         child of the process that started it, or for NULL.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_is_running(b: *const bridge_t) -> bool {
    // SAFETY: `b` is NULL or a live handle per the API.
    boundary(|| unsafe { borrow(b) }.is_some_and(Bridge::is_running))
}

/// Whether the calling thread is one of the bridge's loop threads (where blocking
/// waits are refused with BRIDGE_E_WOULD_DEADLOCK).
///
/// @return false for NULL, for threads of the blocking pool and for foreign threads.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_in_loop(b: *const bridge_t) -> bool {
    // SAFETY: `b` is NULL or a live handle per the API.
    boundary(|| unsafe { borrow(b) }.is_some_and(Bridge::in_loop))
}

/// Shuts the bridge down, resolving every one of its futures.
///
/// From the moment it is called, new work is refused with BRIDGE_E_NOT_RUNNING. Work
/// already submitted gets up to `timeout_ms` to finish; then whatever is still pending
/// is cancelled (queued work is dropped unrun, its arg_free called), the loop stops,
/// and every future reaches a final state. Done callbacks of futures it finishes run
/// on the calling thread or the loop thread. The handle stays valid until
/// bridge_free(); futures outlive it.
///
/// @param timeout_ms grace period for submitted work; 0: none; BRIDGE_FOREVER: no limit.
/// @return BRIDGE_OK when all work finished or stopped in time (and for a second call);
///         BRIDGE_TIMEOUT when running blocking work had to be left behind (its future
///         ends BRIDGE_CANCELLED when the function returns); BRIDGE_E_INVALID for NULL
///         or a timeout below -1; BRIDGE_E_WOULD_DEADLOCK on a thread of this bridge.
/// Work running on the loop thread when the grace period ends is waited for (such
/// work must not block); only blocking-pool work is left behind.
/// Deadlock: must not be called from this bridge's own threads (work or callbacks
/// running there); call bridge_free() there instead, which does not block.
/// A done callback that this shutdown runs may call bridge_free(b): the handle stays
/// valid until this call returns, and the free finishes then (do not use `b` after).
/// It may also call bridge_shutdown(b) again, which returns BRIDGE_OK at once.
#[no_mangle]
pub unsafe extern "C" fn bridge_shutdown(b: *mut bridge_t, timeout_ms: i64) -> bridge_status {
    boundary(|| {
        // SAFETY: `b` is NULL or a live handle per the API.
        let Some(bridge) = (unsafe { borrow(b) }) else {
            return BRIDGE_E_INVALID;
        };
        let timeout = match timeout_from_ms(timeout_ms) {
            Ok(timeout) => timeout,
            Err(error) => return error.code(),
        };
        // Called from a callback of the shutdown that bridge_free() runs, the bridge's
        // count is already zero: answered without a reference.
        if let Some(answer) = bridge.shutdown_at_once() {
            return status_of(answer);
        }
        // SAFETY: as above. A done callback that this shutdown runs may free the
        // handle: the reference taken here keeps the bridge until the shutdown has
        // returned, and the free finishes then.
        let Some(bridge) = (unsafe { retain_bridge(b) }) else {
            return BRIDGE_E_INVALID;
        };
        status_of(bridge.shutdown(timeout))
    })
}

/// Shuts the bridge down with no grace period if it is still running, then frees the
/// handle. Its futures stay valid.
///
/// @param b the bridge; NULL, or the bridge of bridge_default(), does nothing.
/// Any thread. On one of the bridge's own threads it does not block: the loop thread
/// finishes the shutdown once the current call returns. Inside a done callback that a
/// bridge_shutdown() of this bridge is running (on any thread), the free finishes when
/// that bridge_shutdown() returns. Using `b` afterwards is undefined.
#[no_mangle]
pub unsafe extern "C" fn bridge_free(b: *mut bridge_t) {
    boundary(|| {
        // SAFETY: `b` is NULL or a live handle per the API.
        let Some(bridge) = (unsafe { borrow(b) }) else {
            return;
        };
        if bridge.is_global() {
            return;
        }
        // SAFETY: a handle that is not the global bridge came from Arc::into_raw in
        // bridge_start, and the caller gives up its reference. A shutdown of this
        // bridge still running (this may be one of its callbacks) holds another, and
        // the bridge goes when that shutdown returns.
        drop(unsafe { arc_take::<bridge_t>(b) });
    })
}

/// Reads the bridge's counters.
///
/// @param out receives the snapshot.
/// @return BRIDGE_OK, or BRIDGE_E_INVALID if `b` or `out` is NULL.
/// Any thread; works after shutdown too.
#[no_mangle]
pub unsafe extern "C" fn bridge_stats(
    b: *const bridge_t,
    out: *mut bridge_stats_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `b` is NULL or a live handle per the API.
        let Some(bridge) = (unsafe { borrow(b) }) else {
            return BRIDGE_E_INVALID;
        };
        if out.is_null() {
            return BRIDGE_E_INVALID;
        }
        let s = bridge.stats();
        let stats = bridge_stats {
            submitted: s.submitted,
            completed: s.completed,
            failed: s.failed,
            cancelled: s.cancelled,
            pending: s.pending,
        };
        // SAFETY: `out` is non-NULL and writable per the API.
        unsafe { out.write(stats) };
        BRIDGE_OK
    })
}

/// Submits `work(job, arg)` to the bridge and returns at once.
///
/// The work's return value decides the outcome: 0 is BRIDGE_OK with the value set by
/// bridge_job_set_value() (or NULL); non-zero is BRIDGE_FAILED with that code and the
/// message given to bridge_job_fail() (or a default naming the code). Work codes
/// should be positive; negative codes are the library's (see future_error_code() for
/// how the two are told apart).
///
/// Ownership of `arg`: it passes to the library only when this returns BRIDGE_OK; from
/// then on `arg_free(arg)` (if not NULL) runs exactly once: after the work ran, or when
/// the work is dropped without running (cancelled first, shutdown). On any error
/// nothing is called and `arg` stays the caller's.
///
/// @param b the bridge.
/// @param work the work; runs once, on the blocking pool or on the loop (see flags).
/// @param arg passed to `work`.
/// @param arg_free frees `arg`, or NULL.
/// @param flags BRIDGE_RUN_BLOCKING (may block, may take long) or BRIDGE_RUN_ON_LOOP
///        (runs on the loop thread in submission order; must not block).
/// @param out receives the future; the caller owns one reference and releases it with
///        future_release(). NULL: fire and forget; a failure nobody observes then goes
///        to the bridge's on_unhandled_error.
/// @return BRIDGE_OK; BRIDGE_E_INVALID (NULL `b` or `work`, unknown flags);
///         BRIDGE_E_NOT_RUNNING (shut down, or a fork child); BRIDGE_E_BUSY
///         (max_pending reached).
/// Any thread, including the bridge's own (submitting never blocks).
#[no_mangle]
pub unsafe extern "C" fn bridge_submit(
    b: *mut bridge_t,
    work: bridge_work_fn,
    arg: *mut c_void,
    arg_free: bridge_free_fn,
    flags: u32,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `b` is NULL or a live handle per the API.
        let Some(bridge) = (unsafe { borrow(b) }) else {
            return BRIDGE_E_INVALID;
        };
        let Some(work) = work else {
            return BRIDGE_E_INVALID;
        };
        let placement = match flags {
            BRIDGE_RUN_BLOCKING => Placement::Blocking,
            BRIDGE_RUN_ON_LOOP => Placement::OnLoop,
            _ => return BRIDGE_E_INVALID,
        };
        let work = CWork::new(work, arg, arg_free);
        match bridge.submit_shared::<CKind>(work, placement) {
            Ok(future) => {
                if out.is_null() {
                    drop(Future::from_arc(future));
                } else {
                    // SAFETY: `out` is non-NULL and writable per the API.
                    unsafe { out.write(arc_into_c::<future_t>(future)) };
                }
                BRIDGE_OK
            }
            Err(rejected) => {
                // The caller keeps `arg`: its free function must not run.
                rejected.work.disarm();
                rejected.error.code()
            }
        }
    })
}

/// A future that ends BRIDGE_OK (value NULL) after `ms` milliseconds, never earlier.
///
/// The wait happens on the bridge's loop, blocking no thread; cancel it with
/// future_cancel(). bridge_sleep(b, 0, &f) completes on the loop's next turn.
/// @param out receives the future (one reference, the caller's).
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `b` or `out`; BRIDGE_E_NOT_RUNNING
///         once shut down; BRIDGE_E_BUSY (max_pending).
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_sleep(
    b: *mut bridge_t,
    ms: u64,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `b` is NULL or a live handle per the API.
        let (Some(bridge), false) = (unsafe { borrow(b) }, out.is_null()) else {
            return BRIDGE_E_INVALID;
        };
        match bridge.sleep::<CKind>(std::time::Duration::from_millis(ms)) {
            Ok(future) => {
                // SAFETY: `out` is non-NULL and writable per the API.
                unsafe { out.write(into_c_future(future)) };
                BRIDGE_OK
            }
            Err(error) => error.code(),
        }
    })
}
