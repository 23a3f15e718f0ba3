//! `bridge_timer_t`: periodic timers.

use std::ffi::c_void;
use std::time::Duration;

use crate::delivery::queue::CompletionQueue;
use crate::ffi::boundary::{boundary, FreeOnDrop};
use crate::ffi::bridge::{borrow as borrow_bridge, bridge_t};
use crate::ffi::handle::{arc_borrow, arc_into_c, arc_ref_as_c, arc_take, Castable, OwnedByArc};
use crate::ffi::job::bridge_free_fn;
use crate::ffi::queue::{borrow as borrow_queue, bridge_queue_t};
use crate::ffi::status::{bridge_status, BRIDGE_E_INVALID, BRIDGE_OK};
use crate::sources::Source;
use crate::sync::Arc;

/// A periodic timer of a bridge. Made by bridge_timer_start(), stopped by
/// bridge_timer_stop(), freed by bridge_timer_free(). Thread-safe.
pub struct bridge_timer {
    _private: [u8; 0],
}

/// A periodic timer (see struct bridge_timer).
pub type bridge_timer_t = bridge_timer;

impl Castable for bridge_timer_t {
    type Rust = Source;
    type Ownership = OwnedByArc;
}

/// A timer tick: `ticks` is how many periods have passed since the previous call
/// (1, or more when ticks came late and were coalesced). Must not block, throw or
/// longjmp; may call bridge_timer_stop() on its own timer.
pub type bridge_timer_fn =
    Option<unsafe extern "C" fn(timer: *mut bridge_timer_t, ticks: u64, user_data: *mut c_void)>;

/// The delivery of a source: through a queue, or on the loop for NULL.
///
/// # Safety
/// `q` is NULL or a live queue handle.
pub(crate) unsafe fn delivery(q: *mut bridge_queue_t) -> Option<Arc<CompletionQueue>> {
    // SAFETY: per the contract above.
    unsafe { borrow_queue(q) }.map(|queue| Arc::clone(&queue))
}

/// Starts a periodic timer on the bridge's loop.
///
/// The first tick comes `first_ms` after this call, then one every `period_ms`
/// (0: the timer ticks once). Ticks never come early. A tick that comes late counts
/// the periods that passed (`ticks` > 1) and the next one stays on the original
/// schedule: missed ticks are coalesced, never delivered in a burst. The same holds
/// while a tick waits in a queue: later ticks add to its count.
/// @param q NULL: `cb` runs on the loop thread (it must not block); else `cb` runs
///        inside bridge_queue_dispatch(q). If `q` is freed, the timer stops.
/// @param cb called for each (coalesced) tick.
/// @param user_data passed to `cb`.
/// @param out receives the timer; the caller owns it and frees it with
///        bridge_timer_free(). It keeps ticking until stopped, freed, or the bridge
///        shuts down.
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `b`, `cb` or `out`;
///         BRIDGE_E_NOT_RUNNING once the bridge is shut down.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_timer_start(
    b: *mut bridge_t,
    first_ms: u64,
    period_ms: u64,
    q: *mut bridge_queue_t,
    cb: bridge_timer_fn,
    user_data: *mut c_void,
    out: *mut *mut bridge_timer_t,
) -> bridge_status {
    // SAFETY: as bridge_timer_start_with_free(), with nothing to free.
    unsafe { bridge_timer_start_with_free(b, first_ms, period_ms, q, cb, user_data, None, out) }
}

/// bridge_timer_start() with a free function for `user_data`.
///
/// `user_data_free(user_data)` runs exactly once, whatever this returns: when the timer
/// has stopped (bridge_timer_stop(), _free(), its queue freed) and no call of `cb`
/// is running: inside that stop, or when the running call returns; before this
/// returns if it is refused.
/// @param user_data_free frees `user_data`; NULL: nothing to free.
/// @return as bridge_timer_start().
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_timer_start_with_free(
    b: *mut bridge_t,
    first_ms: u64,
    period_ms: u64,
    q: *mut bridge_queue_t,
    cb: bridge_timer_fn,
    user_data: *mut c_void,
    user_data_free: bridge_free_fn,
    out: *mut *mut bridge_timer_t,
) -> bridge_status {
    boundary(|| {
        // Built first: dropped on every way out (refused, or with the source).
        let user_data = FreeOnDrop::new(user_data, user_data_free);
        // SAFETY: `b` is NULL or a live handle per the API.
        let (Some(bridge), Some(cb), false) = (unsafe { borrow_bridge(b) }, cb, out.is_null())
        else {
            return BRIDGE_E_INVALID;
        };
        let callback = Box::new(move |source: &Source, ticks: u64| {
            let timer = arc_ref_as_c::<bridge_timer_t>(source);
            // SAFETY: the callback and user data were given for this timer; the
            // handle is the source's own address and outlives the call.
            unsafe { cb(timer, ticks, user_data.get()) }
        });
        // SAFETY: `q` is NULL or a live handle per the API.
        let delivery = unsafe { delivery(q) };
        let first = Duration::from_millis(first_ms);
        let period = Duration::from_millis(period_ms);
        match Source::timer(bridge, first, period, callback, delivery) {
            Ok(timer) => {
                // SAFETY: `out` is non-NULL and writable per the API.
                unsafe { out.write(arc_into_c::<bridge_timer_t>(timer)) };
                BRIDGE_OK
            }
            Err(error) => error.code(),
        }
    })
}

/// Stops the timer: no tick starts after this returns.
///
/// A tick running on another thread is waited for (ticks must not block); called
/// from the timer's own callback it returns at once. Ticks already queued are dropped.
/// Stops made from timer and signal-watch callbacks never wait for each other: when
/// the running tick is itself waiting, directly or through other stops, for a
/// callback this thread is running (two ticks that stop each other's timer), this
/// returns at once instead, and that running tick is the timer's last. So do not
/// free what a tick uses right after such a stop; free it from the tick, or after
/// the stopping callback has returned.
/// @param t the timer; NULL does nothing. Stopping twice is harmless.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_timer_stop(t: *mut bridge_timer_t) {
    // SAFETY: `t` is NULL or a live timer handle per the API.
    boundary(|| unsafe { stop_source(t) })
}

/// Stops the source behind a timer or signal-watch handle; NULL does nothing.
///
/// # Safety
/// `handle` is NULL or a live handle of its type.
pub(crate) unsafe fn stop_source<C: Castable<Rust = Source, Ownership = OwnedByArc>>(
    handle: *const C,
) {
    // SAFETY: per the contract above.
    if let Some(source) = unsafe { arc_borrow(handle) } {
        source.stop();
    }
}

/// Stops the source behind a timer or signal-watch handle and drops the handle's
/// reference; NULL does nothing.
///
/// # Safety
/// `handle` is NULL or a live handle of its type, which the caller gives up.
pub(crate) unsafe fn free_source<C: Castable<Rust = Source, Ownership = OwnedByArc>>(
    handle: *const C,
) {
    // SAFETY: per the contract above.
    if let Some(source) = unsafe { arc_take(handle) } {
        source.stop();
    }
}

/// Stops the timer (as bridge_timer_stop()) and frees the handle.
///
/// @param t the timer; NULL does nothing. Using it afterwards is undefined; it may be
///        freed from its own callback.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_timer_free(t: *mut bridge_timer_t) {
    // SAFETY: the caller gives up a live timer handle (or passes NULL) per the API.
    boundary(|| unsafe { free_source(t) })
}
