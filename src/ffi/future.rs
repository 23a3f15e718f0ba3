//! `future_t`: waiting for, inspecting and cancelling the result of submitted work.

use std::ffi::{c_char, c_void};
use std::mem::ManuallyDrop;

use crate::ffi::boundary::{boundary, status_of, FreeOnDrop};
use crate::ffi::handle::{arc_as_c, arc_borrow_arc, arc_into_c, arc_take, Castable, OwnedByArc};
use crate::ffi::job::{bridge_free_fn, bridge_then_fn, CWork};
use crate::ffi::status::{
    bridge_status, BRIDGE_E_INVALID, BRIDGE_OK, BRIDGE_RUN_BLOCKING, BRIDGE_RUN_ON_LOOP,
};
use crate::ffi::value::{BRIDGE_VALUE_INDEX, BRIDGE_VALUE_NONE, BRIDGE_VALUE_USER};
use crate::future::job::Job;
use crate::future::{Completion, Failure, Future, Kind};
use crate::sched::Placement;
use crate::status::timeout_from_ms;
use crate::sync::Arc;

/// The result of submitted work: shared, thread-safe and reference-counted.
///
/// Made by bridge_submit(); one reference more with future_retain(), one less with
/// future_release(). The running work and pending done callbacks hold references of
/// their own, so releasing never cancels anything.
///
/// Failures: a failure counts as observed once future_wait(), future_status(),
/// future_error_code() or future_error_message() has reported it, or a done callback
/// has been registered. A future freed with an unobserved failure is reported once to
/// its bridge's on_unhandled_error (stderr by default).
pub struct bridge_future {
    _private: [u8; 0],
}

/// The result of submitted work (see struct bridge_future).
pub type future_t = bridge_future;

impl Castable for future_t {
    type Rust = Completion<CKind>;
    type Ownership = OwnedByArc;
}

/// A done callback: `f` is borrowed for the call (future_retain() it to keep it).
/// It may retain, release, poll and register callbacks; it must not block, throw or
/// longjmp.
pub type future_done_fn = Option<unsafe extern "C" fn(f: *mut future_t, user_data: *mut c_void)>;

/// A progress callback: the latest `done` and `total` reported by the work. `f` is
/// borrowed for the call. It must not block, throw or longjmp.
pub type future_progress_fn =
    Option<unsafe extern "C" fn(f: *mut future_t, done: u64, total: u64, user_data: *mut c_void)>;

/// The C family of futures: `void *` values, C work and C callbacks.
pub struct CKind;

/// A value of a C future, freed by its `value_free` when dropped, with its type tag
/// (future_value_type()).
pub struct CValue {
    data: FreeOnDrop,
    kind: u32,
}

impl CValue {
    /// A value set by C work or a promise: BRIDGE_VALUE_USER.
    pub(crate) fn new(ptr: *mut c_void, free: bridge_free_fn) -> CValue {
        CValue::typed(ptr, free, BRIDGE_VALUE_USER)
    }

    /// A value made by the library, of type `kind` (a BRIDGE_VALUE_* constant).
    pub(crate) fn typed(ptr: *mut c_void, free: bridge_free_fn, kind: u32) -> CValue {
        CValue {
            data: FreeOnDrop::new(ptr, free),
            kind,
        }
    }

    /// The pointer, still owned by the value.
    fn as_ptr(&self) -> *mut c_void {
        self.data.get()
    }

    /// The type tag.
    pub(crate) fn kind(&self) -> u32 {
        self.kind
    }

    /// The pointer, now owned by the caller: its free function will not run.
    pub(crate) fn into_raw(self) -> *mut c_void {
        self.data.into_raw()
    }
}

/// A C done callback with its user data (freed, if a free function was given, once
/// the callback has run or was dropped unrun).
pub struct CCallback {
    func: unsafe extern "C" fn(f: *mut future_t, user_data: *mut c_void),
    user_data: FreeOnDrop,
}

impl CCallback {
    pub(crate) fn new(
        func: unsafe extern "C" fn(*mut future_t, *mut c_void),
        user_data: FreeOnDrop,
    ) -> CCallback {
        CCallback { func, user_data }
    }

    pub(crate) fn user_data(&self) -> *mut c_void {
        self.user_data.get()
    }
}

/// A C progress callback with its user data, shared by the deliveries of one
/// registration: the user data is freed once the registration is gone.
#[derive(Clone)]
pub struct CProgress(Arc<(ProgressFn, FreeOnDrop)>);

type ProgressFn =
    unsafe extern "C" fn(f: *mut future_t, done: u64, total: u64, user_data: *mut c_void);

impl CProgress {
    pub(crate) fn new(func: ProgressFn, user_data: FreeOnDrop) -> CProgress {
        CProgress(Arc::new((func, user_data)))
    }

    pub(crate) fn user_data(&self) -> *mut c_void {
        self.0 .1.get()
    }
}

impl Kind for CKind {
    type Value = CValue;
    type Work = CWork;
    type Callback = CCallback;
    type ProgressCallback = CProgress;

    fn run(work: CWork, job: &Job<'_, CKind>) -> Result<(), Failure> {
        let code = work.run(job);
        job.outcome_of(code)
    }

    fn call(callback: CCallback, future: &Future<CKind>) {
        let f = arc_as_c::<future_t>(future.as_arc());
        // SAFETY: the callback was registered for this future; `f` stays valid for the
        // call because the finishing thread holds a reference.
        unsafe { (callback.func)(f, callback.user_data.get()) }
        // Dropping `callback` now frees its user data, after the call.
    }

    fn call_progress(callback: &CProgress, future: &Future<CKind>, done: u64, total: u64) {
        let f = arc_as_c::<future_t>(future.as_arc());
        // SAFETY: as for done callbacks; the delivery holds a reference for the call.
        unsafe { (callback.0 .0)(f, done, total, callback.user_data()) }
    }
}

/// Hands one reference of `future` to C.
pub(crate) fn into_c_future(future: Future<CKind>) -> *mut future_t {
    arc_into_c::<future_t>(future.into_arc())
}

/// Borrows the future behind a C pointer without touching its reference count.
///
/// # Safety
/// `f` is NULL or a future_t the caller holds a reference to (or is borrowing in a
/// done callback).
pub(crate) unsafe fn borrow(f: *const future_t) -> Option<ManuallyDrop<Future<CKind>>> {
    // SAFETY: `f` is NULL or a held reference per the contract above; the handle
    // made here is never dropped, so the reference count stays as it is.
    unsafe { arc_borrow_arc::<future_t>(f) }
        .map(|arc| ManuallyDrop::new(Future::from_arc(ManuallyDrop::into_inner(arc))))
}

/// Waits up to `timeout_ms` for the future to finish.
///
/// @param timeout_ms 0 polls; BRIDGE_FOREVER waits with no limit.
/// @return the final status (BRIDGE_OK, BRIDGE_FAILED, BRIDGE_CANCELLED) once finished;
///         BRIDGE_TIMEOUT if the time ran out (nothing is cancelled, the future stays
///         usable); BRIDGE_E_WOULD_DEADLOCK at once if the wait would block on a loop
///         thread of any bridge (a finished future still returns its status);
///         BRIDGE_E_NOT_RUNNING for a pending future in a fork child;
///         BRIDGE_E_INVALID for NULL or a timeout below -1.
/// Any thread but loop threads (see above); a finished future takes no lock.
#[no_mangle]
pub unsafe extern "C" fn future_wait(f: *mut future_t, timeout_ms: i64) -> bridge_status {
    boundary(|| {
        // SAFETY: `f` is NULL or a held reference per the API.
        let Some(future) = (unsafe { borrow(f) }) else {
            return BRIDGE_E_INVALID;
        };
        match timeout_from_ms(timeout_ms) {
            Ok(timeout) => status_of(future.wait(timeout)),
            Err(error) => error.code(),
        }
    })
}

/// The future's state, without waiting.
///
/// @return BRIDGE_PENDING, BRIDGE_OK, BRIDGE_FAILED or BRIDGE_CANCELLED;
///         BRIDGE_E_INVALID for NULL.
/// Any thread, loop threads included; takes no lock.
#[no_mangle]
pub unsafe extern "C" fn future_status(f: *const future_t) -> bridge_status {
    boundary(|| {
        // SAFETY: `f` is NULL or a held reference per the API.
        match unsafe { borrow(f) } {
            Some(future) => future.status().code(),
            None => BRIDGE_E_INVALID,
        }
    })
}

/// Requests cancellation of the future's work.
///
/// The future ends BRIDGE_CANCELLED once its work has stopped: at once if it had not
/// started (its arg_free runs before this returns), when the function returns for
/// running C work (which may poll bridge_job_is_cancelled()). A value produced anyway
/// is freed. Done callbacks of a future finished here run on this thread.
///
/// @return BRIDGE_OK on a pending future; on a finished one, its final status and
///         nothing changes; BRIDGE_E_NOT_RUNNING for a pending future in a fork child;
///         BRIDGE_E_INVALID for NULL.
/// Any thread; never blocks.
#[no_mangle]
pub unsafe extern "C" fn future_cancel(f: *mut future_t) -> bridge_status {
    boundary(|| {
        // SAFETY: `f` is NULL or a held reference per the API.
        match unsafe { borrow(f) } {
            Some(future) => status_of(future.cancel()),
            None => BRIDGE_E_INVALID,
        }
    })
}

/// The value of a future that ended BRIDGE_OK.
///
/// @return the value, borrowed: valid while the caller holds a reference and nobody
///         takes it with future_take_value(); NULL unless the future is BRIDGE_OK
///         (or the work set no value, or it was taken).
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn future_value(f: *const future_t) -> *mut c_void {
    boundary(|| {
        // SAFETY: `f` is NULL or a held reference per the API.
        unsafe { borrow(f) }
            .and_then(|future| future.with_value(CValue::as_ptr))
            .unwrap_or(std::ptr::null_mut())
    })
}

/// Takes the value out of a future that ended BRIDGE_OK.
///
/// @return the value; the caller owns it now and the library will not call its
///         value_free. NULL unless BRIDGE_OK, or if there is no value (any more):
///         afterwards future_value() returns NULL.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn future_take_value(f: *mut future_t) -> *mut c_void {
    boundary(|| {
        // SAFETY: `f` is NULL or a held reference per the API.
        unsafe { borrow(f) }
            .and_then(|future| future.take_value())
            .map_or(std::ptr::null_mut(), CValue::into_raw)
    })
}

/// The error code of a future that ended BRIDGE_FAILED (observes the failure).
///
/// @return the code the work returned (or a library code such as BRIDGE_E_PANIC);
///         0 unless BRIDGE_FAILED; BRIDGE_E_INVALID for NULL.
/// Work codes and library codes share this number. Library codes are negative
/// (BRIDGE_E_*), so work should return positive codes; a work that returns a negative
/// one reads like a library failure here. bridge_status_str() describes statuses and
/// library codes only (for a work's code 2 it says "timeout"): to show a failure, use
/// future_error_message(), which names a work's code as the work's.
/// Any thread; takes no lock.
#[no_mangle]
pub unsafe extern "C" fn future_error_code(f: *const future_t) -> i32 {
    boundary(|| {
        // SAFETY: `f` is NULL or a held reference per the API.
        match unsafe { borrow(f) } {
            Some(future) => future.failure().map_or(0, Failure::code),
            None => BRIDGE_E_INVALID,
        }
    })
}

/// The error message of a future that ended BRIDGE_FAILED (observes the failure).
///
/// @return a NUL-terminated message owned by the future, valid as long as the caller
///         holds a reference; NULL unless BRIDGE_FAILED, or for NULL.
/// Any thread; takes no lock.
#[no_mangle]
pub unsafe extern "C" fn future_error_message(f: *const future_t) -> *const c_char {
    boundary(|| {
        // SAFETY: `f` is NULL or a held reference per the API.
        let Some(future) = (unsafe { borrow(f) }) else {
            return std::ptr::null();
        };
        match future.failure() {
            // The message lives in the shared state, which outlives this handle copy.
            Some(failure) => failure.message().as_ptr(),
            None => std::ptr::null(),
        }
    })
}

/// The latest progress reported by the work with bridge_job_set_progress().
///
/// @param done_out receives units done (0 until reported); may be NULL.
/// @param total_out receives units in all; may be NULL.
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `f`; BRIDGE_E_NOT_RUNNING in a fork
///         child if the progress could not be read without risking a hang.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn future_progress(
    f: *const future_t,
    done_out: *mut u64,
    total_out: *mut u64,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `f` is NULL or a held reference per the API.
        let Some(future) = (unsafe { borrow(f) }) else {
            return BRIDGE_E_INVALID;
        };
        match future.progress() {
            Ok((done, total)) => {
                // SAFETY: non-NULL out-pointers are writable per the API.
                unsafe {
                    if !done_out.is_null() {
                        done_out.write(done);
                    }
                    if !total_out.is_null() {
                        total_out.write(total);
                    }
                }
                BRIDGE_OK
            }
            Err(error) => error.code(),
        }
    })
}

/// Registers a done callback, run exactly once with the finished future.
///
/// If the future has finished, `cb` runs at once on the calling thread, before this
/// returns. Otherwise it runs on the thread that finishes the future: a bridge thread,
/// or the thread whose future_cancel() or bridge_shutdown() finished it. Callbacks run
/// in registration order. Registering counts as observing a failure.
/// A future finished while its finishing thread is running done callbacks (cancelled
/// from inside one, or chained or combined after the future being finished) runs its
/// callbacks right after the running callback returns, on that thread, before the
/// outermost finish returns; its status is final at once. So completion never
/// recurses, whatever the length of a chain or the depth of a combination.
///
/// @param cb the callback (see future_done_fn); it must not block.
/// @param user_data passed to `cb`.
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `f` or `cb`; BRIDGE_E_NOT_RUNNING for
///         a pending future in a fork child (the callback will never run).
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn future_on_done(
    f: *mut future_t,
    cb: future_done_fn,
    user_data: *mut c_void,
) -> bridge_status {
    // SAFETY: as future_on_done_with_free(), with nothing to free.
    unsafe { future_on_done_with_free(f, cb, user_data, None) }
}

/// future_on_done() with a free function for `user_data`.
///
/// `user_data_free(user_data)` runs exactly once, whatever this returns: right after
/// `cb` returns, on the thread that ran it; or, if `cb` never runs (refused here, or
/// in a fork child), before this returns. Callback wrappers (C++ lambdas, closures of
/// other languages) can hand their state over this way and never leak it.
/// @param user_data_free frees `user_data`; NULL: nothing to free (future_on_done()).
/// @return as future_on_done().
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn future_on_done_with_free(
    f: *mut future_t,
    cb: future_done_fn,
    user_data: *mut c_void,
    user_data_free: bridge_free_fn,
) -> bridge_status {
    boundary(|| {
        let user_data = FreeOnDrop::new(user_data, user_data_free);
        // SAFETY: `f` is NULL or a held reference per the API.
        let (Some(future), Some(func)) = (unsafe { borrow(f) }, cb) else {
            return BRIDGE_E_INVALID;
        };
        match future.on_done(CCallback::new(func, user_data)) {
            Ok(()) => BRIDGE_OK,
            Err(error) => error.code(),
        }
    })
}

/// The type of the value of a future that ended BRIDGE_OK.
///
/// @return BRIDGE_VALUE_USER for a value set by C work (bridge_job_set_value()) or a
///         promise (bridge_promise_resolve()); BRIDGE_VALUE_INDEX for future_any()'s;
///         the library's own types for the values of its I/O functions;
///         BRIDGE_VALUE_NONE while pending, unless BRIDGE_OK, when the future has no
///         value (none was set, or it was taken), and for NULL.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn future_value_type(f: *const future_t) -> u32 {
    boundary(|| {
        // SAFETY: `f` is NULL or a held reference per the API.
        unsafe { borrow(f) }
            .and_then(|future| future.with_value(CValue::kind))
            .unwrap_or(BRIDGE_VALUE_NONE)
    })
}

/// The OS error behind a BRIDGE_E_IO failure (observes the failure).
///
/// @return the errno value (ENOENT, ECONNREFUSED, ...) of a future that ended
///         BRIDGE_FAILED with code BRIDGE_E_IO; 0 for any other future, and for NULL.
/// Any thread; takes no lock.
#[no_mangle]
pub unsafe extern "C" fn future_os_error(f: *const future_t) -> i32 {
    boundary(|| {
        // SAFETY: `f` is NULL or a held reference per the API.
        unsafe { borrow(f) }
            .and_then(|future| future.failure().map(Failure::os_error))
            .unwrap_or(0)
    })
}

/// Adds a reference to the future.
///
/// @return `f`, which the caller now holds one more reference to (release it with
///         future_release()); NULL for NULL.
/// Any thread, done callbacks included.
#[no_mangle]
pub unsafe extern "C" fn future_retain(f: *mut future_t) -> *mut future_t {
    boundary(|| {
        // SAFETY: `f` is NULL or a held reference per the API.
        match unsafe { borrow(f) } {
            Some(future) => into_c_future(Future::clone(&future)),
            None => std::ptr::null_mut(),
        }
    })
}

/// Drops one reference to the future. Never cancels anything.
///
/// When it drops the last reference of a finished future, the value's value_free runs
/// here, and an unobserved failure is reported to on_unhandled_error.
/// @param f the future; NULL does nothing. Using `f` afterwards, unless other
///        references are held, is undefined.
/// Any thread, done callbacks included.
#[no_mangle]
pub unsafe extern "C" fn future_release(f: *mut future_t) {
    boundary(|| {
        // SAFETY: `f` is NULL or a reference the caller gives up, made by
        // into_c_future.
        drop(unsafe { arc_take::<future_t>(f) }.map(Future::from_arc));
    })
}

/// Gives a pending future a time limit.
///
/// If the future is still pending `ms` milliseconds from now, its work is cancelled
/// (as by future_cancel()) and, once the work has stopped, the future ends
/// BRIDGE_FAILED with code BRIDGE_E_TIMED_OUT and a message naming the limit
/// ("timed out after 250 ms"). A future that finishes first, or was cancelled first,
/// is not affected. The timer runs on the future's bridge and never blocks it.
/// @return BRIDGE_OK (also on a finished future: no effect); BRIDGE_E_INVALID for
///         NULL; BRIDGE_E_NOT_RUNNING if the future's bridge is shut down.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn future_set_timeout(f: *mut future_t, ms: u64) -> bridge_status {
    boundary(|| {
        // SAFETY: `f` is NULL or a held reference per the API.
        let Some(future) = (unsafe { borrow(f) }) else {
            return BRIDGE_E_INVALID;
        };
        match future.set_timeout(std::time::Duration::from_millis(ms)) {
            Ok(()) => BRIDGE_OK,
            Err(error) => error.code(),
        }
    })
}

/// Chains work after a future: `fn(job, prev, arg)` runs on `prev`'s bridge once
/// `prev` has finished, whatever its outcome, like work given to bridge_submit().
///
/// `prev` is borrowed for the call (read its status, value or error there); the new
/// future holds a reference to it until the work has run or been dropped. Cancelling
/// the new future before `prev` finishes cancels only the new one. If `prev`'s bridge
/// is shut down (before or after this call), the new future ends BRIDGE_CANCELLED.
/// Ownership of `arg` as for bridge_submit(): on BRIDGE_OK, `arg_free(arg)` runs
/// exactly once, after `fn` ran or when it is dropped unrun; on error nothing is called.
/// Chains may be long: each link is scheduled when the one before finishes, without
/// recursion.
/// @param flags BRIDGE_RUN_BLOCKING or BRIDGE_RUN_ON_LOOP, as for bridge_submit().
/// @param out receives the new future (one reference, the caller's); NULL is allowed
///        (fire and forget).
/// @return BRIDGE_OK; BRIDGE_E_INVALID (NULL `prev` or `fn`, unknown flags, or a
///         `prev` that belongs to no bridge and so has nothing to run `fn` on:
///         future_all() of no inputs, or of inputs made by no bridge);
///         BRIDGE_E_BUSY (max_pending of `prev`'s bridge); BRIDGE_E_NOT_RUNNING in a
///         fork child.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn future_then(
    prev: *mut future_t,
    fn_: bridge_then_fn,
    arg: *mut c_void,
    arg_free: bridge_free_fn,
    flags: u32,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `prev` is NULL or a held reference per the API.
        let (Some(prev), Some(func)) = (unsafe { borrow(prev) }, fn_) else {
            return BRIDGE_E_INVALID;
        };
        let placement = match flags {
            BRIDGE_RUN_BLOCKING => Placement::Blocking,
            BRIDGE_RUN_ON_LOOP => Placement::OnLoop,
            _ => return BRIDGE_E_INVALID,
        };
        match prev.then_with(|prev| CWork::then(func, prev, arg, arg_free), placement) {
            Ok(next) => {
                if !out.is_null() {
                    // SAFETY: `out` is non-NULL and writable per the API.
                    unsafe { out.write(into_c_future(next)) };
                }
                BRIDGE_OK
            }
            Err(rejected) => {
                rejected.work.disarm();
                rejected.error.code()
            }
        }
    })
}

/// Copies `n` future handles out of a C array; `None` if the array or an element is
/// NULL.
///
/// # Safety
/// `fs` is NULL or points to `n` readable pointers, each NULL or a held reference.
unsafe fn handles(fs: *const *mut future_t, n: usize) -> Option<Vec<Future<CKind>>> {
    if fs.is_null() {
        return (n == 0).then(Vec::new);
    }
    // SAFETY: per the contract above.
    let pointers = unsafe { std::slice::from_raw_parts(fs, n) };
    pointers
        .iter()
        // SAFETY: each element is NULL or a held reference.
        .map(|&f| unsafe { borrow(f) }.map(|f| Future::clone(&f)))
        .collect()
}

/// A future that ends BRIDGE_OK when all of `fs` have ended BRIDGE_OK; BRIDGE_FAILED
/// (with that input's code and message) as soon as one fails; otherwise
/// BRIDGE_CANCELLED as soon as one is cancelled.
///
/// Inputs are never cancelled by it, may come from different bridges, and may be
/// released by the caller right after this call. Its value is NULL. n == 0 gives a
/// future that is BRIDGE_OK at once. A failure it hands on counts as observed on the
/// input; the combined future reports it if nobody looks at it. future_then() and
/// future_set_timeout() on the combined future use the bridge of the first input that
/// has one.
/// @param fs an array of `n` futures (borrowed for the call).
/// @param out receives the new future (one reference, the caller's).
/// @return BRIDGE_OK; BRIDGE_E_INVALID (NULL `out`, NULL `fs` with n > 0, a NULL
///         element); BRIDGE_E_NOT_RUNNING in a fork child.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn future_all(
    fs: *const *mut future_t,
    n: usize,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `fs` is NULL or an array of `n` held references per the API.
        let (Some(inputs), false) = (unsafe { handles(fs, n) }, out.is_null()) else {
            return BRIDGE_E_INVALID;
        };
        match Future::all(&inputs) {
            Ok(all) => {
                // SAFETY: `out` is non-NULL and writable per the API.
                unsafe { out.write(into_c_future(all)) };
                BRIDGE_OK
            }
            Err(error) => error.code(),
        }
    })
}

unsafe extern "C" fn free_malloced(ptr: *mut c_void) {
    // SAFETY: `ptr` came from libc::malloc in future_any's value.
    unsafe { libc::free(ptr) }
}

/// A size_t in malloc'ed memory (C may free() it), or NULL if memory ran out.
fn malloced_index(index: usize) -> *mut c_void {
    // SAFETY: malloc of a size_t; written only if it succeeded.
    unsafe {
        let p = libc::malloc(std::mem::size_of::<usize>()).cast::<usize>();
        if !p.is_null() {
            p.write(index);
        }
        p.cast()
    }
}

/// A future that ends BRIDGE_OK as soon as the first of `fs` ends, whatever that
/// input's outcome; its value points to a size_t holding that input's index in `fs`.
///
/// The value is freed with the future; taken with future_take_value(), free() it.
/// Inputs are never cancelled by it, may come from different bridges, and may be
/// released by the caller right after this call. Inputs finished already count in
/// array order. future_then() and future_set_timeout() on the combined future use the
/// bridge of the first input that has one.
/// @param fs an array of `n` futures (borrowed for the call).
/// @param out receives the new future (one reference, the caller's).
/// @return BRIDGE_OK; BRIDGE_E_INVALID (n == 0, NULL `fs` or `out`, a NULL element);
///         BRIDGE_E_NOT_RUNNING in a fork child.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn future_any(
    fs: *const *mut future_t,
    n: usize,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `fs` is NULL or an array of `n` held references per the API.
        let (Some(inputs), false) = (unsafe { handles(fs, n) }, out.is_null()) else {
            return BRIDGE_E_INVALID;
        };
        let value_of = |index| {
            CValue::typed(
                malloced_index(index),
                Some(free_malloced),
                BRIDGE_VALUE_INDEX,
            )
        };
        match Future::any(&inputs, value_of) {
            Ok(any) => {
                // SAFETY: `out` is non-NULL and writable per the API.
                unsafe { out.write(into_c_future(any)) };
                BRIDGE_OK
            }
            Err(error) => error.code(),
        }
    })
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// The shared state of a C future is one allocation per submission; what only
    /// some futures use (failures, more callbacks, progress, queue deliveries, a
    /// timeout's milliseconds) lives outside it. A field added to the hot part shows
    /// here.
    #[test]
    fn a_c_future_stays_small() {
        let size = std::mem::size_of::<crate::future::Completion<CKind>>();
        assert!(size <= 136, "Completion<CKind> is {size} bytes");
    }
}
