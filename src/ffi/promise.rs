//! `bridge_promise_t`: futures completed by their holder.

use std::ffi::{c_char, c_void, CStr};

use crate::ffi::boundary::{boundary, FreeOnDrop};
use crate::ffi::bridge::{borrow as borrow_bridge, bridge_t};
use crate::ffi::future::{future_t, into_c_future, CKind, CValue};
use crate::ffi::handle::{box_borrow, box_into_c, box_take, Castable, OwnedByBox};
use crate::ffi::job::bridge_free_fn;
use crate::ffi::status::{bridge_status, BRIDGE_E_INVALID, BRIDGE_OK};
use crate::promise::Promise;

/// The producer's side of a future: whoever holds it settles the future, from any
/// thread, exactly once. This is how a callback-based API (libcurl's multi interface,
/// a database driver, a hardware SDK) becomes asyncbridge futures: make a promise,
/// hand out the future, settle the promise from the API's completion callback.
///
/// Made by bridge_promise_new(); consumed by exactly one of bridge_promise_resolve(),
/// bridge_promise_fail() and bridge_promise_free(). Using it after that is undefined.
/// Every function on it may be called from any thread.
///
/// Cancellation: future_cancel() on the future, future_set_timeout() running out, or
/// bridge_shutdown() past its grace requests it. bridge_promise_is_cancelled() turns
/// true, and the cancel callback (bridge_promise_on_cancel()) runs once on the
/// requesting thread. A request and the consuming call are ordered, one before the
/// other: if the request comes first, the registered cancel callback runs and the
/// future ends BRIDGE_CANCELLED (BRIDGE_FAILED with BRIDGE_E_TIMED_OUT when the
/// request was a timeout) whatever the holder then passes, a value being freed at
/// once; if the consuming call comes first, the cancel callback never runs and the
/// future ends as the holder said. So a future ends cancelled exactly when its
/// registered cancel callback ran: cancelled means the producer stopped.
///
/// Blocking: a consuming call made while the cancel callback runs on another thread
/// waits for it to return. So do not settle a promise while holding a lock that its
/// cancel callback takes. Cancel callbacks that settle each other's promises (two
/// operations that stop together) do not deadlock: when the wait would close a cycle,
/// the consuming call returns without waiting, and that one callback may still be
/// running then. A cancel callback must return: one whose thread ends inside it
/// (pthread_exit) leaves every later consuming call waiting.
///
/// Shutdown treats a promise like running work: it requests cancellation when its
/// grace ends and returns BRIDGE_TIMEOUT if the holder has not settled the promise by
/// then; the future resolves when the holder does.
pub struct bridge_promise {
    _private: [u8; 0],
}

/// The producer's side of a future (see struct bridge_promise).
pub type bridge_promise_t = bridge_promise;

impl Castable for bridge_promise_t {
    type Rust = Promise<CKind>;
    type Ownership = OwnedByBox;
}

/// A promise's cancel callback (bridge_promise_on_cancel()). It may settle the promise
/// itself; it must not block, throw or longjmp.
pub type bridge_cancel_fn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// Makes a promise and its future.
///
/// Refused like bridge_submit(): BRIDGE_E_NOT_RUNNING once the bridge is shut down (or
/// in a fork child), BRIDGE_E_BUSY at max_pending. The future counts in
/// bridge_stats() as submitted, and as pending until the promise is settled.
/// @param b the bridge the future belongs to (its timeouts, chained work and shutdown).
/// @param promise_out receives the promise (the caller holds it; see struct
///        bridge_promise for how it is consumed).
/// @param future_out receives the future: one reference, the caller's (release it
///        with future_release()).
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `b`, `promise_out` or `future_out`;
///         BRIDGE_E_NOT_RUNNING; BRIDGE_E_BUSY. Both out-parameters are written only
///         on BRIDGE_OK.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_promise_new(
    b: *mut bridge_t,
    promise_out: *mut *mut bridge_promise_t,
    future_out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `b` is NULL or a live handle per the API.
        let (Some(bridge), false, false) = (
            unsafe { borrow_bridge(b) },
            promise_out.is_null(),
            future_out.is_null(),
        ) else {
            return BRIDGE_E_INVALID;
        };
        match bridge.promise::<CKind>() {
            Ok((promise, future)) => {
                // SAFETY: both out-pointers are non-NULL and writable per the API.
                unsafe {
                    promise_out.write(box_into_c::<bridge_promise_t>(Box::new(promise)));
                    future_out.write(into_c_future(future));
                }
                BRIDGE_OK
            }
            Err(error) => error.code(),
        }
    })
}

/// Resolves the future BRIDGE_OK with `value`, and consumes the promise.
///
/// Ownership of `value` passes to the library, as with bridge_job_set_value():
/// `value_free(value)` (if not NULL) runs exactly once, when the future's last
/// reference is released; at once, here, if cancellation was requested first (the
/// future then ends as requested, not BRIDGE_OK). Its type is BRIDGE_VALUE_USER.
/// When this returns the cancel callback is not running and never runs.
/// @param p the promise; NULL does nothing (and frees nothing).
/// @param value the value (NULL: none); value_free may be NULL.
/// Any thread, the cancel callback included. Using `p` afterwards is undefined.
#[no_mangle]
pub unsafe extern "C" fn bridge_promise_resolve(
    p: *mut bridge_promise_t,
    value: *mut c_void,
    value_free: bridge_free_fn,
) {
    boundary(|| {
        // SAFETY: `p` is NULL or a live promise the caller gives up per the API.
        if let Some(promise) = unsafe { box_take::<bridge_promise_t>(p) } {
            let value =
                (!value.is_null() || value_free.is_some()).then(|| CValue::new(value, value_free));
            promise.resolve(value);
        }
    })
}

/// Fails the future with `code` and `message`, and consumes the promise.
///
/// Code 0 is treated as 1 (failing always fails). If cancellation was requested first,
/// the future ends as requested instead. When this returns the cancel callback is not
/// running and never runs.
/// @param p the promise; NULL does nothing.
/// @param code the error code (positive codes are the application's).
/// @param message copied; NULL means a default message naming the code.
/// Any thread, the cancel callback included. Using `p` afterwards is undefined.
#[no_mangle]
pub unsafe extern "C" fn bridge_promise_fail(
    p: *mut bridge_promise_t,
    code: i32,
    message: *const c_char,
) {
    boundary(|| {
        // SAFETY: `p` is NULL or a live promise the caller gives up per the API.
        if let Some(promise) = unsafe { box_take::<bridge_promise_t>(p) } {
            if message.is_null() {
                promise.fail_code(code);
            } else {
                // SAFETY: a non-NULL message is a NUL-terminated string per the API.
                let message = unsafe { CStr::from_ptr(message) };
                promise.fail(code, message.to_bytes());
            }
        }
    })
}

/// Consumes the promise without settling it: the future ends BRIDGE_FAILED with
/// BRIDGE_E_ABANDONED, or BRIDGE_CANCELLED if cancellation had been requested.
///
/// When this returns the cancel callback is not running and never runs.
/// @param p the promise; NULL does nothing.
/// Any thread, the cancel callback included. Using `p` afterwards is undefined.
#[no_mangle]
pub unsafe extern "C" fn bridge_promise_free(p: *mut bridge_promise_t) {
    // SAFETY: `p` is NULL or a live promise the caller gives up per the API.
    boundary(|| drop(unsafe { box_take::<bridge_promise_t>(p) }))
}

/// Reports progress, readable with future_progress() and delivered to progress
/// callbacks (future_on_progress_via()).
///
/// @param p the promise; NULL does nothing.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_promise_set_progress(
    p: *mut bridge_promise_t,
    done: u64,
    total: u64,
) {
    boundary(|| {
        // SAFETY: `p` is NULL or a live promise per the API.
        if let Some(promise) = unsafe { box_borrow::<bridge_promise_t>(p) } {
            promise.set_progress(done, total);
        }
    })
}

/// Whether cancellation was requested: future_cancel(), future_set_timeout() running
/// out, or bridge_shutdown() past its grace.
///
/// @return false for NULL.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_promise_is_cancelled(p: *const bridge_promise_t) -> bool {
    // SAFETY: `p` is NULL or a live promise per the API.
    boundary(|| unsafe { box_borrow::<bridge_promise_t>(p) }.is_some_and(Promise::is_cancelled))
}

/// Registers the promise's cancel callback: `cb(user_data)` runs once, on the thread
/// that requests cancellation (the caller of future_cancel() or bridge_shutdown(); a
/// bridge thread for future_set_timeout()), or at once, on this thread, before this
/// returns, if cancellation was already requested.
///
/// At most one per promise. The callback may settle the promise itself (typically it
/// stops the operation, whose completion then settles it). After the promise is
/// settled the callback is not running and never runs.
/// @param cb the callback; it must not block.
/// @param user_data passed to `cb`.
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `p` or `cb`, or a second registration.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_promise_on_cancel(
    p: *mut bridge_promise_t,
    cb: bridge_cancel_fn,
    user_data: *mut c_void,
) -> bridge_status {
    // SAFETY: as bridge_promise_on_cancel_with_free(), with nothing to free.
    unsafe { bridge_promise_on_cancel_with_free(p, cb, user_data, None) }
}

/// bridge_promise_on_cancel() with a free function for `user_data`.
///
/// `user_data_free(user_data)` runs exactly once, whatever this returns: right after
/// `cb` returns, on the thread that ran it; or, if `cb` never runs, when the promise
/// is settled (inside the consuming call), or before this returns if it is refused.
/// @param user_data_free frees `user_data`; NULL: nothing to free.
/// @return as bridge_promise_on_cancel().
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_promise_on_cancel_with_free(
    p: *mut bridge_promise_t,
    cb: bridge_cancel_fn,
    user_data: *mut c_void,
    user_data_free: bridge_free_fn,
) -> bridge_status {
    boundary(|| {
        let user_data = FreeOnDrop::new(user_data, user_data_free);
        // SAFETY: `p` is NULL or a live promise per the API.
        let (Some(promise), Some(func)) = (unsafe { box_borrow::<bridge_promise_t>(p) }, cb) else {
            return BRIDGE_E_INVALID;
        };
        let callback = Box::new(move || {
            // SAFETY: the callback and its user data were given for this promise.
            unsafe { func(user_data.get()) }
            // Dropping `user_data` here frees it, after the call.
        });
        // The callback may consume the promise (free it) before this returns: what is
        // used from here on is a handle of the future's own, not the promise.
        let future = promise.registration_handle();
        match future.on_cancel(callback) {
            Ok(()) => BRIDGE_OK,
            Err(error) => error.code(),
        }
    })
}
