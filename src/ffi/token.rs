//! `bridge_token_t`: one cancellation that reaches many operations.

use std::ffi::{c_int, c_void};
use std::time::Duration;

use crate::compose::token::Token;
use crate::ffi::boundary::{boundary, FreeOnDrop};
use crate::ffi::bridge::{borrow as borrow_bridge, bridge_t};
use crate::ffi::future::{borrow as borrow_future, future_t};
use crate::ffi::handle::{arc_borrow, arc_clone, arc_into_c, arc_take, Castable, OwnedByArc};
use crate::ffi::job::bridge_free_fn;
use crate::ffi::promise::bridge_cancel_fn;
use crate::ffi::status::{bridge_status, BRIDGE_E_INVALID, BRIDGE_OK};
use crate::sync::Arc;

/// A cancellation token: cancelling it cancels, at once and on the cancelling thread,
/// every future added to it (exactly as future_cancel() does: a promise's cancel
/// callback runs, async work is dropped, a process group is killed), every child
/// token (and so every scope made under it), and runs its cancel callbacks.
///
/// Made by bridge_token_new(), freed by bridge_token_free(); a scope's token
/// (bridge_scope_token()) belongs to the scope. Every function on it may be called
/// from any thread, and from its own cancel callbacks.
///
/// Memory: a future added is kept only until it ends, so a token that lives for the
/// whole program stays small however many operations pass through it. A child is
/// listed in its parent only while it lives.
pub struct bridge_token {
    _private: [u8; 0],
}

/// A cancellation token (see struct bridge_token).
pub type bridge_token_t = bridge_token;

impl Castable for bridge_token_t {
    type Rust = Token;
    type Ownership = OwnedByArc;
}

/// Borrows the token behind a handle.
///
/// # Safety
/// `t` is NULL or a live token handle (a scope's included).
pub(crate) unsafe fn borrow<'a>(t: *const bridge_token_t) -> Option<&'a Token> {
    // SAFETY: per the contract above.
    unsafe { arc_borrow::<bridge_token_t>(t) }
}

/// A reference of its own to the token behind a handle, for a call that runs
/// callbacks: they may free the handle meanwhile.
///
/// # Safety
/// As [`borrow`].
unsafe fn retain(t: *const bridge_token_t) -> Option<Arc<Token>> {
    // SAFETY: per the contract above.
    unsafe { arc_clone::<bridge_token_t>(t) }
}

/// Makes a token.
///
/// @param b the bridge whose timers run the token's deadline.
/// @param parent NULL, or a token whose cancellation cancels the new one too (if it
///        is cancelled already, the new token is born cancelled). The parent may be
///        freed first: its children stay linked to its own parent.
/// @param out receives the token; the caller frees it with bridge_token_free().
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `b` or `out`; BRIDGE_E_NOT_RUNNING
///         once the bridge is shut down (or in a fork child). `out` is written only
///         on BRIDGE_OK.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_token_new(
    b: *mut bridge_t,
    parent: *mut bridge_token_t,
    out: *mut *mut bridge_token_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `b` and `parent` are NULL or live handles per the API.
        let (Some(bridge), parent, false) = (
            unsafe { borrow_bridge(b) },
            unsafe { borrow(parent) },
            out.is_null(),
        ) else {
            return BRIDGE_E_INVALID;
        };
        match bridge.token(parent) {
            Ok(token) => {
                let token = Arc::new(token);
                // SAFETY: `out` is non-NULL and writable per the API.
                unsafe { out.write(arc_into_c::<bridge_token_t>(token)) };
                BRIDGE_OK
            }
            Err(error) => error.code(),
        }
    })
}

/// Cancels the token `ms` milliseconds from now, on a bridge thread (at once, on this
/// thread, for 0). The earliest deadline set wins: a later one changes nothing.
///
/// The timer does not keep the token alive: freeing or cancelling the token stops
/// it. Cancel callbacks run by a deadline run on a bridge thread: they must not block.
/// @return BRIDGE_OK (also on a token cancelled already, which nothing changes);
///         BRIDGE_E_INVALID for NULL; BRIDGE_E_NOT_RUNNING once the token's bridge is
///         shut down.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_token_set_deadline(
    t: *mut bridge_token_t,
    ms: u64,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `t` is NULL or a live token per the API.
        let Some(token) = (unsafe { retain(t) }) else {
            return BRIDGE_E_INVALID;
        };
        match token.set_deadline(Duration::from_millis(ms)) {
            Ok(()) => BRIDGE_OK,
            Err(error) => error.code(),
        }
    })
}

/// Cancels the token: every future added and not ended yet is cancelled as by
/// future_cancel(), then its cancel callbacks run, then its children are cancelled,
/// all on this thread, before this returns. Idempotent.
///
/// The futures end BRIDGE_CANCELLED once their work has stopped (at once for most;
/// a promise when its holder settles it).
/// @param t the token; NULL does nothing.
/// Any thread, the token's own cancel callbacks included; never blocks (but runs
/// the cancel callbacks of promises added, which must not block either).
#[no_mangle]
pub unsafe extern "C" fn bridge_token_cancel(t: *mut bridge_token_t) {
    boundary(|| {
        // SAFETY: `t` is NULL or a live token per the API.
        if let Some(token) = unsafe { retain(t) } {
            token.cancel();
        }
    })
}

/// Whether the token was cancelled: bridge_token_cancel(), a parent's cancellation,
/// its deadline, or its scope's cancel or close.
///
/// @return false for NULL.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_token_is_cancelled(t: *const bridge_token_t) -> bool {
    // SAFETY: `t` is NULL or a live token per the API.
    boundary(|| unsafe { borrow(t) }.is_some_and(Token::is_cancelled))
}

/// A descriptor that becomes readable once the token is cancelled, and stays
/// readable: watch it with poll(), a QSocketNotifier, g_unix_fd_add().
///
/// Do not read, write or close it: it is owned by the token and closed by
/// bridge_token_free(). Every call returns the same descriptor.
/// @return the descriptor; -1 for NULL, or if the system refuses a descriptor.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_token_fd(t: *mut bridge_token_t) -> c_int {
    boundary(|| {
        // SAFETY: `t` is NULL or a live token per the API.
        match unsafe { borrow(t) }.map(Token::fd) {
            Some(Ok(fd)) => fd,
            _ => -1,
        }
    })
}

/// Has the token cancel `f` when it is cancelled: at once, here, if the token is
/// cancelled already.
///
/// The caller's reference is not taken: the caller still releases `f`. The token
/// keeps `f` only until it ends, and never keeps its value alive. A future may be
/// added to several tokens; the first cancellation counts.
/// @return BRIDGE_OK (also for a finished `f`, which nothing changes);
///         BRIDGE_E_INVALID for NULL `t` or `f`; BRIDGE_E_NOT_RUNNING for a pending
///         future in a fork child.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_token_add(
    t: *mut bridge_token_t,
    f: *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `t` and `f` are NULL or live handles per the API.
        let (Some(token), Some(future)) = (unsafe { retain(t) }, unsafe { borrow_future(f) })
        else {
            return BRIDGE_E_INVALID;
        };
        match token.add(&future) {
            Ok(()) => BRIDGE_OK,
            Err(error) => error.code(),
        }
    })
}

/// Registers a cancel callback: `cb(user_data)` runs once, on the thread that cancels
/// the token (a bridge thread for a deadline), after the token's futures were
/// cancelled; or at once, on this thread, before this returns, if the token is
/// cancelled already.
///
/// Any number may be registered; they run in the order registered. A callback may
/// call any function on the token (cancel, add, free). One that has not run when the
/// token is freed never runs; but one a cancellation on another thread has begun to
/// run may still be running when bridge_token_free() returns: free what it uses from
/// a finalizer (bridge_token_on_cancel_with_free()), not right after the free.
/// @param cb the callback; it must not block, throw or longjmp.
/// @param user_data passed to `cb`.
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `t` or `cb`.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_token_on_cancel(
    t: *mut bridge_token_t,
    cb: bridge_cancel_fn,
    user_data: *mut c_void,
) -> bridge_status {
    // SAFETY: as bridge_token_on_cancel_with_free(), with nothing to free.
    unsafe { bridge_token_on_cancel_with_free(t, cb, user_data, None) }
}

/// bridge_token_on_cancel() with a free function for `user_data`.
///
/// `user_data_free(user_data)` runs exactly once, whatever this returns: right after
/// `cb` returns, on the thread that ran it; or, if `cb` never runs, when the token is
/// freed (inside bridge_token_free()), or before this returns if it is refused. So it
/// is the safe place to free what the callback uses.
/// @param user_data_free frees `user_data`; NULL: nothing to free.
/// @return as bridge_token_on_cancel().
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_token_on_cancel_with_free(
    t: *mut bridge_token_t,
    cb: bridge_cancel_fn,
    user_data: *mut c_void,
    user_data_free: bridge_free_fn,
) -> bridge_status {
    boundary(|| {
        let user_data = FreeOnDrop::new(user_data, user_data_free);
        // SAFETY: `t` is NULL or a live token per the API.
        let (Some(token), Some(func)) = (unsafe { retain(t) }, cb) else {
            return BRIDGE_E_INVALID;
        };
        token.on_cancel(Box::new(move || {
            // SAFETY: the callback and its user data were given for this token.
            unsafe { func(user_data.get()) }
            // Dropping `user_data` here frees it, after the call.
        }));
        BRIDGE_OK
    })
}

/// Frees the token without cancelling anything: the futures added are no longer
/// cancelled by it, callbacks that have not run never run, its deadline no longer
/// fires, its descriptor is closed, and it leaves its parent's list. Its children
/// stay linked to its parent (cancelling the parent still cancels them).
///
/// @param t the token; NULL does nothing. Never a scope's token. Using it afterwards
///        is undefined; it may be freed from its own cancel callback.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_token_free(t: *mut bridge_token_t) {
    // SAFETY: the caller gives up a live token (or passes NULL) per the API.
    boundary(|| drop(unsafe { arc_take::<bridge_token_t>(t) }))
}
