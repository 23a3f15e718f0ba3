//! `bridge_scope_t`: a group of operations that nothing outlives.

use crate::compose::scope::Scope;
use crate::ffi::boundary::boundary;
use crate::ffi::bridge::{borrow as borrow_bridge, bridge_t};
use crate::ffi::future::{borrow as borrow_future, future_t, into_c_future, CKind};
use crate::ffi::handle::{
    arc_as_c, arc_borrow, arc_clone, arc_into_c, arc_take, Castable, OwnedByArc,
};
use crate::ffi::status::{bridge_status, BRIDGE_E_INVALID, BRIDGE_OK};
use crate::ffi::token::{borrow as borrow_token, bridge_token_t};
use crate::sync::Arc;

/// A scope: operations added to it are its members, and its join (a future) ends only
/// once every member has ended. The library's futures end only once their work has
/// stopped, so nothing started in a scope outlives its join.
///
/// Made by bridge_scope_new(); consumed by bridge_scope_close(), which cancels what
/// still runs (there is no other free). Every function on it may be called from any
/// thread, and from the callbacks its own calls run: a member's cancel callback run
/// by bridge_scope_add() or bridge_scope_cancel() may even close the scope (the call
/// that runs it keeps what it needs until it returns).
///
/// The join is a future of the scope's bridge, counted in bridge_stats() as one
/// submission, pending from bridge_scope_new() until it ends. It ends BRIDGE_OK
/// once the scope is joined (or closed) and every member has ended, whatever the
/// members' outcomes; with BRIDGE_SCOPE_CANCEL_ON_FAILURE it fails with the first
/// failure of a member instead. Cancelling the join itself (future_cancel(),
/// future_set_timeout(), or bridge_shutdown() past its grace) closes the scope and
/// cancels every member; the join then ends BRIDGE_CANCELLED (BRIDGE_FAILED with
/// BRIDGE_E_TIMED_OUT for a timeout) once they have ended. So shutdown resolves
/// every join; but a shutdown without a time limit waits for a scope that is never
/// joined or closed, as it waits for any pending work.
pub struct bridge_scope {
    _private: [u8; 0],
}

/// A scope (see struct bridge_scope).
pub type bridge_scope_t = bridge_scope;

impl Castable for bridge_scope_t {
    type Rust = Scope<CKind>;
    // Not a box: a call that runs callbacks holds a reference of its own (`retain`),
    // so that a callback closing the scope does not free it under the call.
    type Ownership = OwnedByArc;
}

/// A reference of its own to the scope behind a handle, for a call that runs
/// callbacks: they may close the scope meanwhile.
///
/// # Safety
/// `s` is NULL or a live scope handle.
unsafe fn retain(s: *const bridge_scope_t) -> Option<Arc<Scope<CKind>>> {
    // SAFETY: per the contract above.
    unsafe { arc_clone::<bridge_scope_t>(s) }
}

/// bridge_scope_new() flag: the first member that fails cancels the others, and the
/// join fails with that member's code and message.
pub const BRIDGE_SCOPE_CANCEL_ON_FAILURE: u32 = 1;

/// Makes a scope.
///
/// @param b the bridge the join belongs to (and whose timers run the deadlines of the
///        scope's token).
/// @param parent NULL, or a token whose cancellation cancels the scope (its token is
///        a child of `parent`): pass an enclosing scope's token to nest scopes.
/// @param flags 0 or BRIDGE_SCOPE_CANCEL_ON_FAILURE.
/// @param out receives the scope; the caller consumes it with bridge_scope_close().
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `b` or `out`, or unknown flags;
///         BRIDGE_E_NOT_RUNNING once the bridge is shut down (or in a fork child);
///         BRIDGE_E_BUSY at max_pending (the join counts as pending work). `out` is
///         written only on BRIDGE_OK.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_scope_new(
    b: *mut bridge_t,
    parent: *mut bridge_token_t,
    flags: u32,
    out: *mut *mut bridge_scope_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `b` and `parent` are NULL or live handles per the API.
        let (Some(bridge), parent, false) = (
            unsafe { borrow_bridge(b) },
            unsafe { borrow_token(parent) },
            out.is_null(),
        ) else {
            return BRIDGE_E_INVALID;
        };
        if flags & !BRIDGE_SCOPE_CANCEL_ON_FAILURE != 0 {
            return BRIDGE_E_INVALID;
        }
        let cancel_on_failure = flags & BRIDGE_SCOPE_CANCEL_ON_FAILURE != 0;
        match bridge.scope::<CKind>(parent, cancel_on_failure) {
            Ok(scope) => {
                // SAFETY: `out` is non-NULL and writable per the API.
                unsafe { out.write(arc_into_c::<bridge_scope_t>(Arc::new(scope))) };
                BRIDGE_OK
            }
            Err(error) => error.code(),
        }
    })
}

/// Adds `f` to the scope: the join waits for it to end, and the scope's cancellation
/// cancels it (at once, here, if the scope is cancelled already).
///
/// The caller's reference is not taken: the caller still releases `f`; the scope
/// keeps it only until it ends. `f` may belong to any bridge.
/// @return BRIDGE_OK; BRIDGE_E_CLOSED if the scope was joined or closed (or its join
///         cancelled): `f` is cancelled then, and the join does not wait for it;
///         BRIDGE_E_INVALID for NULL `s` or `f`; BRIDGE_E_NOT_RUNNING for a pending
///         future in a fork child.
/// Any thread. Cancelling `f` here runs its cancel callback (a promise's) on this
/// thread, which may use the scope, close it included.
#[no_mangle]
pub unsafe extern "C" fn bridge_scope_add(
    s: *mut bridge_scope_t,
    f: *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `s` and `f` are NULL or live handles per the API.
        let (Some(scope), Some(future)) = (unsafe { retain(s) }, unsafe { borrow_future(f) })
        else {
            return BRIDGE_E_INVALID;
        };
        match scope.add(&future) {
            Ok(()) => BRIDGE_OK,
            Err(error) => error.code(),
        }
    })
}

/// The scope's token, borrowed: valid until the scope is closed; never free it.
///
/// It is cancelled when the scope is cancelled or closed, or its parent is. Use it as
/// the parent of nested scopes and tokens, add futures to it that the join should
/// not wait for, or give it a deadline (bridge_token_set_deadline()).
/// @return the token; NULL for NULL.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_scope_token(s: *mut bridge_scope_t) -> *mut bridge_token_t {
    boundary(|| {
        // SAFETY: `s` is NULL or a live scope per the API.
        match unsafe { arc_borrow::<bridge_scope_t>(s) } {
            Some(scope) => arc_as_c::<bridge_token_t>(scope.token()),
            None => std::ptr::null_mut(),
        }
    })
}

/// Cancels every member (as future_cancel() does), on this thread; members added
/// later are cancelled as they are added. The scope stays open: join or close it.
///
/// @param s the scope; NULL does nothing.
/// Any thread. The members' cancel callbacks (a promise's) run on this thread before
/// this returns; they may use the scope, close it included.
#[no_mangle]
pub unsafe extern "C" fn bridge_scope_cancel(s: *mut bridge_scope_t) {
    boundary(|| {
        // SAFETY: `s` is NULL or a live scope per the API.
        if let Some(scope) = unsafe { retain(s) } {
            scope.cancel();
        }
    })
}

/// Ends the additions (bridge_scope_add() is BRIDGE_E_CLOSED from now on) and gives
/// the join: it ends once every member has ended (see struct bridge_scope).
///
/// May be called more than once; each call gives a new reference to the same join.
/// @param out receives one reference to the join; release it with future_release().
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `s` or `out`.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_scope_join(
    s: *mut bridge_scope_t,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `s` is NULL or a live scope per the API.
        let (Some(scope), false) = (unsafe { retain(s) }, out.is_null()) else {
            return BRIDGE_E_INVALID;
        };
        let join = scope.join();
        // SAFETY: `out` is non-NULL and writable per the API.
        unsafe { out.write(into_c_future(join)) };
        BRIDGE_OK
    })
}

/// Closes the scope and consumes it: no more additions, every member still running
/// is cancelled (on this thread), and the join ends once every member has ended.
///
/// @param s the scope; NULL does nothing (and writes nothing).
/// @param join_out NULL, or receives one reference to the join (release it with
///        future_release()).
/// Any thread. Using `s`, or its token, afterwards is undefined; so is closing it
/// again from a cancel callback this call runs.
#[no_mangle]
pub unsafe extern "C" fn bridge_scope_close(s: *mut bridge_scope_t, join_out: *mut *mut future_t) {
    boundary(|| {
        // SAFETY: `s` is NULL or a live scope the caller gives up per the API. A call
        // on it still running (one whose callback is closing it, or on another thread)
        // holds a reference of its own: the scope goes when the last call returns.
        if let Some(scope) = unsafe { arc_take::<bridge_scope_t>(s) } {
            let join = scope.close();
            if !join_out.is_null() {
                // SAFETY: a non-NULL `join_out` is writable per the API.
                unsafe { join_out.write(into_c_future(join)) };
            }
        }
    })
}
