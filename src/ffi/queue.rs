//! `bridge_queue_t`: completion queues that deliver callbacks on the application's
//! own thread.

use std::ffi::{c_int, c_void};
use std::mem::ManuallyDrop;

use crate::delivery::queue::CompletionQueue;
use crate::ffi::boundary::{boundary, status_of, FreeOnDrop, SendPtr};
use crate::ffi::future::{borrow as borrow_future, future_done_fn, future_progress_fn, future_t};
use crate::ffi::future::{CCallback, CProgress};
use crate::ffi::handle::{arc_borrow_arc, arc_clone, arc_into_c, arc_take, Castable, OwnedByArc};
use crate::ffi::job::bridge_free_fn;
use crate::ffi::status::{bridge_status, BRIDGE_E_INVALID, BRIDGE_OK};
use crate::status::timeout_from_ms;
use crate::sync::Arc;

/// A completion queue: callbacks registered with future_on_done_via() or
/// future_on_progress_via() run only inside bridge_queue_dispatch(), on the thread that
/// calls it (typically a GUI main loop).
///
/// Made by bridge_queue_new(), freed by bridge_queue_free(). It belongs to no bridge:
/// futures of any bridge may deliver to it. Thread-safe.
///
/// After fork(), in the child, a queue made by the parent is dead and no call on it
/// touches a lock (its threads are gone, and a lock one of them held stays held):
/// bridge_queue_fd() returns -1, bridge_queue_dispatch() runs nothing and returns 0,
/// bridge_queue_wait() returns BRIDGE_E_NOT_RUNNING at once whatever its timeout,
/// bridge_queue_set_notify() does nothing, future_on_done_via() and
/// future_on_progress_via() return BRIDGE_E_NOT_RUNNING, future_withdraw_via()
/// returns 0, and bridge_queue_free() runs no callback and leaks the queue. Queues
/// made in the child work normally.
pub struct bridge_queue {
    _private: [u8; 0],
}

/// A completion queue (see struct bridge_queue).
pub type bridge_queue_t = bridge_queue;

impl Castable for bridge_queue_t {
    type Rust = CompletionQueue;
    type Ownership = OwnedByArc;
}

/// A function posted to a queue with bridge_queue_post(). It must not block, throw or
/// longjmp; it may call into the library (post again, free the queue).
pub type bridge_post_fn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// The hook of bridge_queue_set_notify(): called from any thread when callbacks become
/// pending. It must not block, throw, or call into the library.
pub type bridge_notify_fn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// Borrows the queue behind a C handle as a shared reference.
///
/// # Safety
/// `q` is NULL or a handle from bridge_queue_new() not yet freed.
pub(crate) unsafe fn borrow(
    q: *const bridge_queue_t,
) -> Option<ManuallyDrop<Arc<CompletionQueue>>> {
    // SAFETY: per the contract above.
    unsafe { arc_borrow_arc::<bridge_queue_t>(q) }
}

/// Creates a completion queue.
///
/// @param out receives the queue; the caller owns it and frees it with bridge_queue_free().
/// @return BRIDGE_OK, or BRIDGE_E_INVALID if `out` is NULL.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_queue_new(out: *mut *mut bridge_queue_t) -> bridge_status {
    boundary(|| {
        if out.is_null() {
            return BRIDGE_E_INVALID;
        }
        let queue = Arc::new(CompletionQueue::new());
        // SAFETY: `out` is non-NULL and writable per the API.
        unsafe { out.write(arc_into_c::<bridge_queue_t>(queue)) };
        BRIDGE_OK
    })
}

/// The queue's file descriptor: readable while callbacks are pending, and cleared by the
/// bridge_queue_dispatch() that leaves none pending, before it returns (level-triggered;
/// written once per empty→non-empty transition).
///
/// Watch it (poll, QSocketNotifier, g_unix_fd_add) and call bridge_queue_dispatch()
/// when it is readable. Never read, write or close it.
/// @return the descriptor, owned by the queue (closed by bridge_queue_free()); -1 for
///         NULL, for a parent's queue in a fork child, or if the process had no
///         descriptor to spare when the queue was made (use bridge_queue_set_notify()
///         then).
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_queue_fd(q: *const bridge_queue_t) -> c_int {
    // SAFETY: `q` is NULL or a live handle per the API.
    boundary(|| unsafe { borrow(q) }.and_then(|q| q.fd()).unwrap_or(-1))
}

/// Sets the hook called each time the queue goes from empty to non-empty, and again
/// by a dispatch that returns with callbacks still pending.
///
/// The hook runs on any thread (a bridge thread, or one that cancelled a future); it
/// must not block, throw or call into the library: post a message to your loop and
/// dispatch from there (Qt: QMetaObject::invokeMethod(..., Qt::QueuedConnection);
/// Win32: PostMessage; GLib: attach an idle source, g_idle_add() or
/// g_source_attach(g_idle_source_new(), ctx) -- not g_main_context_invoke(), which runs
/// the function at once, on the calling thread, whenever the context is free). A hook
/// that dispatches at once anyway is not called again from inside that dispatch.
/// @param notify the hook; NULL removes it.
/// @param user_data passed to `notify`.
/// Once this returns, the previous hook is not running and will not be called again.
/// `q` NULL does nothing. Any thread, but not from inside the hook itself.
#[no_mangle]
pub unsafe extern "C" fn bridge_queue_set_notify(
    q: *mut bridge_queue_t,
    notify: bridge_notify_fn,
    user_data: *mut c_void,
) {
    boundary(|| {
        // SAFETY: `q` is NULL or a live handle per the API.
        let Some(queue) = (unsafe { borrow(q) }) else {
            return;
        };
        let user_data = SendPtr(user_data);
        queue.set_notify(notify.map(|notify| {
            Box::new(move || {
                // SAFETY: the hook and its user data were given for this purpose.
                unsafe { notify(user_data.get()) }
            }) as Box<dyn Fn() + Send + Sync>
        }));
    })
}

/// Runs pending callbacks on the calling thread.
///
/// Runs the callbacks that were pending when it was called, at most `max` of them;
/// completions arriving meanwhile wait for the next dispatch, so a steady stream
/// cannot hold the caller forever. If it returns with callbacks still pending, the
/// descriptor stays readable and the notify hook is called again before it returns.
/// @param max the most deliveries to take; 0: all that are pending.
/// @return how many callbacks ran (a progress delivery that was due after its
///         future's done callback calls nothing and is not counted); 0 for NULL.
/// Any thread (the callbacks run on it); callbacks may call into the library.
///
/// Nested event loops: a callback may call bridge_queue_dispatch() on the same queue
/// again (a modal dialog's loop: QDialog::exec(), a nested GMainLoop). The nested call
/// runs what is pending at that moment, including completions that came after the
/// outer call began, so nothing waits for the outer callback to return; each callback
/// still runs once, and counts in the return value of the dispatch that ran it. GLib:
/// a source that dispatches the queue from its callback must allow recursion,
/// g_source_set_can_recurse(source, TRUE), or GLib will not call it while its own
/// callback is running, and deliveries wait until the dialog closes.
/// In a fork child, a parent's queue: runs nothing, returns 0.
#[no_mangle]
pub unsafe extern "C" fn bridge_queue_dispatch(q: *mut bridge_queue_t, max: usize) -> usize {
    // A callback may free the queue: the dispatch holds a reference of its own, and
    // the free finishes when the dispatch returns.
    // SAFETY: `q` is NULL or a live handle per the API.
    boundary(|| unsafe { arc_clone::<bridge_queue_t>(q) }.map_or(0, |q| q.dispatch(max)))
}

/// Waits until a callback is pending, for loops that block on the queue alone.
///
/// @param timeout_ms 0 polls; BRIDGE_FOREVER waits with no limit.
/// @return BRIDGE_OK once a callback is pending (it has not run: call
///         bridge_queue_dispatch()); BRIDGE_TIMEOUT if none came in time;
///         BRIDGE_E_CLOSED, at once, when another thread frees the queue with
///         bridge_queue_free() while this call waits (the queue is gone when this
///         returns: do not use it again); BRIDGE_E_WOULD_DEADLOCK if the wait would
///         block on a bridge loop thread; BRIDGE_E_NOT_RUNNING, at once, for a
///         parent's queue in a fork child; BRIDGE_E_INVALID for NULL or a timeout
///         below -1.
/// Any thread but loop threads. Freeing the queue is safe only while this call is
/// already blocked in it (or not called at all): a call that starts after
/// bridge_queue_free() uses freed memory.
#[no_mangle]
pub unsafe extern "C" fn bridge_queue_wait(
    q: *mut bridge_queue_t,
    timeout_ms: i64,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `q` is NULL or a live handle per the API.
        let Some(queue) = (unsafe { borrow(q) }) else {
            return BRIDGE_E_INVALID;
        };
        // Another thread may free the queue while this one waits: the wait holds a
        // reference of its own, so the free wakes it instead of freeing under it.
        let queue = Arc::clone(&queue);
        match timeout_from_ms(timeout_ms) {
            Ok(timeout) => status_of(queue.wait(timeout)),
            Err(error) => error.code(),
        }
    })
}

/// Runs the callbacks still pending on the calling thread, then frees the queue and
/// closes its descriptor. Completions that arrive afterwards for this queue are
/// dropped: their callbacks never run (values are still freed exactly once).
///
/// Teardown order for an owner that goes away (a window): first stop watching the
/// descriptor (it is closed here and its number may be reused) and remove the notify
/// hook; withdraw the callbacks that must not run any more (future_withdraw_via());
/// then free the queue.
/// Threads blocked in bridge_queue_wait() on this queue return BRIDGE_E_CLOSED.
///
/// From inside one of this queue's own callbacks it is safe too: the queue refuses new
/// deliveries at once, the notify hook is not called again, and the rest of the free
/// (running what is still pending, closing the descriptor) happens when the dispatch
/// that runs the callback returns (or a dispatch of the queue on another thread, if
/// that one returns first).
///
/// A notify hook that has already posted a call of bridge_queue_dispatch() to the
/// application's loop (a GLib idle source, a queued Qt invocation) must have that
/// call removed first (g_source_destroy(), or a QObject context that dies with the
/// queue), or make sure it finds out the queue is gone: dispatching a freed queue is
/// undefined. Removing the hook with bridge_queue_set_notify(q, NULL, NULL) first only
/// stops new calls of the hook.
/// @param q the queue; NULL does nothing. Using it afterwards is undefined.
/// Any thread, the queue's own callbacks included. In a fork child, a parent's queue:
/// runs nothing and is leaked.
#[no_mangle]
pub unsafe extern "C" fn bridge_queue_free(q: *mut bridge_queue_t) {
    boundary(|| {
        // SAFETY: `q` is NULL or a handle the caller gives up, made by bridge_queue_new.
        if let Some(queue) = unsafe { arc_take::<bridge_queue_t>(q) } {
            CompletionQueue::close_and_release(queue);
        }
    })
}

/// Registers a done callback that runs only inside bridge_queue_dispatch(q), on
/// whatever thread calls it, exactly once, with the finished future.
///
/// It is queued at once if the future has finished, otherwise when it finishes
/// (completed, failed, cancelled or shut down). The pending delivery holds a reference
/// to the future, so its value lives until the callback has returned. Registering
/// counts as observing a failure. Withdraw it with future_withdraw_via().
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `f`, `q` or `cb`; BRIDGE_E_NOT_RUNNING
///         in a fork child for a pending future of the parent, or a queue of the
///         parent.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn future_on_done_via(
    f: *mut future_t,
    q: *mut bridge_queue_t,
    cb: future_done_fn,
    user_data: *mut c_void,
) -> bridge_status {
    // SAFETY: as future_on_done_via_with_free(), with nothing to free.
    unsafe { future_on_done_via_with_free(f, q, cb, user_data, None) }
}

/// future_on_done_via() with a free function for `user_data`.
///
/// `user_data_free(user_data)` runs exactly once, whatever this returns: right after
/// `cb` returns, inside the dispatch that ran it; or where the callback is dropped
/// unrun: by future_withdraw_via(), by the thread that finishes the future when the
/// queue is already freed, or before this returns if it is refused.
/// @param user_data_free frees `user_data`; NULL: nothing to free.
/// @return as future_on_done_via().
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn future_on_done_via_with_free(
    f: *mut future_t,
    q: *mut bridge_queue_t,
    cb: future_done_fn,
    user_data: *mut c_void,
    user_data_free: bridge_free_fn,
) -> bridge_status {
    boundary(|| {
        let user_data = FreeOnDrop::new(user_data, user_data_free);
        // SAFETY: `f` and `q` are NULL or live handles per the API.
        let (Some(future), Some(queue), Some(func)) =
            (unsafe { borrow_future(f) }, unsafe { borrow(q) }, cb)
        else {
            return BRIDGE_E_INVALID;
        };
        match future.on_done_via(&queue, CCallback::new(func, user_data)) {
            Ok(()) => BRIDGE_OK,
            Err(error) => error.code(),
        }
    })
}

/// Registers a progress callback that runs only inside bridge_queue_dispatch(q), each
/// time the work reports progress with bridge_job_set_progress().
///
/// Coalesced: at most one delivery per registration is pending; when it runs it reads
/// the latest values. None runs once a done callback of the future has started, so
/// none runs after it; a delivery queued before the done callback in the same queue
/// runs first, so the last values reported are seen. Withdraw it with
/// future_withdraw_via().
/// @return BRIDGE_OK (also on a finished future, where it never runs); BRIDGE_E_INVALID
///         for NULL `f`, `q` or `cb`; BRIDGE_E_NOT_RUNNING in a fork child for a
///         pending future or a queue of the parent.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn future_on_progress_via(
    f: *mut future_t,
    q: *mut bridge_queue_t,
    cb: future_progress_fn,
    user_data: *mut c_void,
) -> bridge_status {
    // SAFETY: as future_on_progress_via_with_free(), with nothing to free.
    unsafe { future_on_progress_via_with_free(f, q, cb, user_data, None) }
}

/// future_on_progress_via() with a free function for `user_data`.
///
/// `user_data_free(user_data)` runs exactly once, whatever this returns: when the
/// registration is gone (withdrawn with future_withdraw_via(), or dropped with the
/// future once its last reference and last delivery are gone), after its last call;
/// before this returns if it is refused, or if the future has finished already (no
/// progress will come).
/// @param user_data_free frees `user_data`; NULL: nothing to free.
/// @return as future_on_progress_via().
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn future_on_progress_via_with_free(
    f: *mut future_t,
    q: *mut bridge_queue_t,
    cb: future_progress_fn,
    user_data: *mut c_void,
    user_data_free: bridge_free_fn,
) -> bridge_status {
    boundary(|| {
        let user_data = FreeOnDrop::new(user_data, user_data_free);
        // SAFETY: `f` and `q` are NULL or live handles per the API.
        let (Some(future), Some(queue), Some(func)) =
            (unsafe { borrow_future(f) }, unsafe { borrow(q) }, cb)
        else {
            return BRIDGE_E_INVALID;
        };
        match future.on_progress_via(&queue, CProgress::new(func, user_data)) {
            Ok(()) => BRIDGE_OK,
            Err(error) => error.code(),
        }
    })
}

/// Withdraws the callbacks of `f` registered on `q` with `user_data`, done and
/// progress alike, whether the future is still running or they are already queued.
///
/// For an owner that goes away while its work is in flight (a window closing): once
/// this returns, none of them will run. (One already running inside a dispatch on
/// another thread finishes; call this on the dispatching thread to rule that out.)
/// @return how many registrations were withdrawn; 0 for NULL `f` or `q`, and in a
///         fork child for a queue of the parent (nothing is delivered there) or a
///         parent's future whose lock a vanished thread holds.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn future_withdraw_via(
    f: *mut future_t,
    q: *mut bridge_queue_t,
    user_data: *mut c_void,
) -> usize {
    boundary(|| {
        // SAFETY: `f` and `q` are NULL or live handles per the API.
        let (Some(future), Some(queue)) = (unsafe { borrow_future(f) }, unsafe { borrow(q) })
        else {
            return 0;
        };
        future.withdraw_via(
            &queue,
            |cb| cb.user_data() == user_data,
            |cb| cb.user_data() == user_data,
        )
    })
}

/// Runs `fn(user_data)` inside a later bridge_queue_dispatch(q), on the thread that
/// dispatches, in order with the queue's other deliveries (libdispatch's
/// dispatch_async to the main queue; Qt's QMetaObject::invokeMethod).
///
/// Never runs it inline, not even when called from inside a dispatch of `q` (it then
/// waits for the next dispatch). A queue freed first runs it in bridge_queue_free(),
/// like a pending callback.
/// @param fn the function; it must not block.
/// @param user_data passed to `fn`.
/// @return BRIDGE_OK (`fn` will run exactly once); BRIDGE_E_INVALID for NULL `q` or
///         `fn`; BRIDGE_E_CLOSED if the queue is being freed (from inside one of its
///         own callbacks); BRIDGE_E_NOT_RUNNING for a parent's queue in a fork child.
///         On an error `fn` never runs.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_queue_post(
    q: *mut bridge_queue_t,
    fn_: bridge_post_fn,
    user_data: *mut c_void,
) -> bridge_status {
    // SAFETY: as bridge_queue_post_with_free(), with nothing to free.
    unsafe { bridge_queue_post_with_free(q, fn_, user_data, None) }
}

/// bridge_queue_post() with a free function for `user_data`.
///
/// `user_data_free(user_data)` runs exactly once, whatever this returns: right after
/// `fn` returns, on the dispatching thread; before this returns if the post is
/// refused.
/// @param user_data_free frees `user_data`; NULL: nothing to free.
/// @return as bridge_queue_post().
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_queue_post_with_free(
    q: *mut bridge_queue_t,
    fn_: bridge_post_fn,
    user_data: *mut c_void,
    user_data_free: bridge_free_fn,
) -> bridge_status {
    boundary(|| {
        let user_data = FreeOnDrop::new(user_data, user_data_free);
        // SAFETY: `q` is NULL or a live handle per the API.
        let (Some(queue), Some(func)) = (unsafe { borrow(q) }, fn_) else {
            return BRIDGE_E_INVALID;
        };
        let call = Box::new(move || {
            // SAFETY: the function and its user data were given for this post.
            unsafe { func(user_data.get()) }
            // Dropping `user_data` here frees it, after the call.
        });
        match queue.post(call) {
            Ok(()) => BRIDGE_OK,
            Err(error) => error.code(),
        }
    })
}
