//! `bridge_signal_t`: Unix signal watches.

use std::ffi::c_void;

use crate::ffi::boundary::{boundary, FreeOnDrop};
use crate::ffi::bridge::{borrow as borrow_bridge, bridge_t};
use crate::ffi::handle::{arc_into_c, arc_ref_as_c, Castable, OwnedByArc};
use crate::ffi::job::bridge_free_fn;
use crate::ffi::queue::bridge_queue_t;
use crate::ffi::status::{bridge_status, BRIDGE_E_INVALID, BRIDGE_OK};
use crate::ffi::timer::{delivery, free_source, stop_source};
use crate::sources::Source;

/// A watch of a Unix signal. Made by bridge_signal_start(), stopped by
/// bridge_signal_stop(), freed by bridge_signal_free(). Thread-safe.
pub struct bridge_signal {
    _private: [u8; 0],
}

/// A watch of a Unix signal (see struct bridge_signal).
pub type bridge_signal_t = bridge_signal;

impl Castable for bridge_signal_t {
    type Rust = Source;
    type Ownership = OwnedByArc;
}

/// Signal arrivals: `count` is how many times `signum` arrived since the previous
/// call (at least 1). Runs outside the signal handler, so it may do anything a normal
/// callback may; it must not block, throw or longjmp.
pub type bridge_signal_fn = Option<
    unsafe extern "C" fn(
        watch: *mut bridge_signal_t,
        signum: i32,
        count: u64,
        user_data: *mut c_void,
    ),
>;

/// Watches a Unix signal (SIGINT, SIGTERM, SIGUSR1, SIGHUP, ...).
///
/// Every arrival is counted inside the signal handler, which does nothing else; the
/// counts are delivered to `cb` outside it: on the loop thread, or through a queue.
/// Arrivals that come before a call has run add to its count, so the counts add up
/// to the number of arrivals. Several watches of one signal all see every arrival.
/// Stopping a watch removes only its own action: other watches, and any handler
/// installed before the first watch, keep running.
///
/// Signals that arrive while no watch exists: before the first watch of a signal,
/// its usual disposition applies (e.g. SIGTERM terminates). Once a signal has been
/// watched, a handler for it stays installed for the life of the process: arrivals
/// while no watch exists are dropped (a handler installed before the first watch is
/// still called) and the default action no longer happens.
/// @param signum the signal; SIGKILL, SIGSTOP, SIGSEGV, SIGBUS, SIGILL and SIGFPE are
///        refused.
/// @param q NULL: `cb` runs on the loop thread; else inside bridge_queue_dispatch(q).
///        If `q` is freed, the watch stops.
/// @param out receives the watch; the caller owns it and frees it with
///        bridge_signal_free().
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `b`, `cb` or `out`, or a refused or
///         unknown signal; BRIDGE_E_NOT_RUNNING once the bridge is shut down.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_signal_start(
    b: *mut bridge_t,
    signum: i32,
    q: *mut bridge_queue_t,
    cb: bridge_signal_fn,
    user_data: *mut c_void,
    out: *mut *mut bridge_signal_t,
) -> bridge_status {
    // SAFETY: as bridge_signal_start_with_free(), with nothing to free.
    unsafe { bridge_signal_start_with_free(b, signum, q, cb, user_data, None, out) }
}

/// bridge_signal_start() with a free function for `user_data`.
///
/// `user_data_free(user_data)` runs exactly once, whatever this returns: when the watch
/// has stopped (bridge_signal_stop(), _free(), its queue freed) and no call of `cb`
/// is running: inside that stop, or when the running call returns; before this
/// returns if it is refused.
/// @param user_data_free frees `user_data`; NULL: nothing to free.
/// @return as bridge_signal_start().
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_signal_start_with_free(
    b: *mut bridge_t,
    signum: i32,
    q: *mut bridge_queue_t,
    cb: bridge_signal_fn,
    user_data: *mut c_void,
    user_data_free: bridge_free_fn,
    out: *mut *mut bridge_signal_t,
) -> bridge_status {
    boundary(|| {
        // Built first: dropped on every way out (refused, or with the source).
        let user_data = FreeOnDrop::new(user_data, user_data_free);
        // SAFETY: `b` is NULL or a live handle per the API.
        let (Some(bridge), Some(cb), false) = (unsafe { borrow_bridge(b) }, cb, out.is_null())
        else {
            return BRIDGE_E_INVALID;
        };
        let callback = Box::new(move |source: &Source, count: u64| {
            let watch = arc_ref_as_c::<bridge_signal_t>(source);
            // SAFETY: the callback and user data were given for this watch; the handle
            // is the source's own address and outlives the call.
            unsafe { cb(watch, signum, count, user_data.get()) }
        });
        // SAFETY: `q` is NULL or a live handle per the API.
        let delivery = unsafe { delivery(q) };
        match Source::signal(bridge, signum, callback, delivery) {
            Ok(watch) => {
                // SAFETY: `out` is non-NULL and writable per the API.
                unsafe { out.write(arc_into_c::<bridge_signal_t>(watch)) };
                BRIDGE_OK
            }
            Err(error) => error.code(),
        }
    })
}

/// Stops the watch: no call starts after this returns; its signal action is removed.
///
/// A call running on another thread is waited for; called from the watch's own
/// callback it returns at once, and so it does when the running call is itself
/// waiting, directly or through other stops, for a timer or watch callback this
/// thread is running (it would never end): that running call is then the last.
/// @param w the watch; NULL does nothing. Stopping twice is harmless.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_signal_stop(w: *mut bridge_signal_t) {
    // SAFETY: `w` is NULL or a live watch handle per the API.
    boundary(|| unsafe { stop_source(w) })
}

/// Stops the watch (as bridge_signal_stop()) and frees the handle.
///
/// @param w the watch; NULL does nothing. Using it afterwards is undefined.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_signal_free(w: *mut bridge_signal_t) {
    // SAFETY: the caller gives up a live watch handle (or passes NULL) per the API.
    boundary(|| unsafe { free_source(w) })
}
