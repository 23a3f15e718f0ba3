//! `bridge_channel_t` and `bridge_sender_t`: streams of values (`crate::delivery::stream`).
//!
//! A Rust crate can also export a C function that returns a channel fed by an async
//! block, with [`spawn_channel`]:
//!
//! ```
//! use asyncbridge::delivery::stream::{Options, Sender};
//! use asyncbridge::ffi::bridge::bridge_t;
//! use asyncbridge::ffi::channel::{spawn_channel, bridge_channel_t, CItem};
//! use asyncbridge::ffi::status::bridge_status;
//!
//! /// Counts from 1 to `n`, one line of text each, on the bridge's loop.
//! #[no_mangle]
//! pub unsafe extern "C" fn mylib_count(
//!     b: *mut bridge_t,
//!     n: u32,
//!     out: *mut *mut bridge_channel_t,
//! ) -> bridge_status {
//!     // SAFETY: `b` and `out` come from the C caller as they are.
//!     unsafe {
//!         spawn_channel(b, Options::default(), out, move |mut tx: Sender<CItem>| async move {
//!             for i in 1..=n {
//!                 // Waits while the consumer is `capacity` values behind; a
//!                 // cancelled stream drops this block at an await like this one.
//!                 if tx.send(CItem::bytes(format!("line {i}").into_bytes())).await.is_err() {
//!                     break;
//!                 }
//!             }
//!             Ok(())
//!         })
//!     }
//! }
//! # use asyncbridge::ffi::{bridge::*, channel::*, future::*, value::*};
//! # unsafe {
//! #     let b = bridge_default();
//! #     let mut c = std::ptr::null_mut();
//! #     assert_eq!(mylib_count(b, 2, &mut c), 0);
//! #     for want in [&b"line 1"[..], b"line 2"] {
//! #         let mut f = std::ptr::null_mut();
//! #         assert_eq!(bridge_channel_next(c, &mut f), 0);
//! #         assert_eq!(future_wait(f, -1), 0);
//! #         assert_eq!(future_value_type(f), BRIDGE_VALUE_BYTES);
//! #         let bytes = &*future_value(f).cast::<bridge_bytes_t>();
//! #         assert_eq!(std::slice::from_raw_parts(bytes.data, bytes.len), want);
//! #         future_release(f);
//! #     }
//! #     let mut f = std::ptr::null_mut();
//! #     assert_eq!(bridge_channel_next(c, &mut f), 0);
//! #     assert_eq!(future_wait(f, -1), 0);
//! #     assert_eq!(future_value_type(f), BRIDGE_VALUE_NONE);
//! #     future_release(f);
//! #     bridge_channel_free(c);
//! # }
//! ```

use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::task::Poll;

use crate::delivery::stream::{
    channel, End, Item, Options, Overflow, Pushed, Receiver, Sender, StartSend,
};
use crate::ffi::boundary::{boundary, PanicValue, SendPtr};
use crate::ffi::bridge::{borrow as borrow_bridge, bridge_t};
use crate::ffi::future::{future_t, into_c_future, CKind, CValue};
use crate::ffi::handle::{
    arc_clone, box_borrow, box_into_c, box_take, sized_options, Castable, OwnedByBox,
};
use crate::ffi::job::bridge_free_fn;
use crate::ffi::promise::bridge_cancel_fn;
use crate::ffi::queue::{borrow as borrow_queue, bridge_queue_t};
use crate::ffi::status::{
    bridge_status, BRIDGE_E_BUSY, BRIDGE_E_CLOSED, BRIDGE_E_INVALID, BRIDGE_E_NOT_RUNNING,
    BRIDGE_OK,
};
use crate::ffi::value::{
    bridge_bytes_free, bridge_bytes_t, bytes_into_c, BRIDGE_VALUE_BYTES, BRIDGE_VALUE_USER,
};
use crate::future::{Failure, Future};
use crate::runtime::Bridge;
use crate::status::Error;
use crate::sync::{Arc, Weak};

/// bridge_channel_options_t.overflow: lossless; a send waits while the channel holds
/// `capacity` values (back-pressure).
pub const BRIDGE_OVERFLOW_WAIT: u32 = 0;
/// bridge_channel_options_t.overflow: a send to a full channel frees the oldest value
/// still queued to make room, and counts it (bridge_channel_dropped()).
pub const BRIDGE_OVERFLOW_DROP_OLDEST: u32 = 1;
/// bridge_channel_options_t.overflow: one slot; a new value replaces the unread one,
/// which is freed and counted (bridge_channel_dropped()). For "the latest progress".
pub const BRIDGE_OVERFLOW_KEEP_LATEST: u32 = 2;

/// How bridge_channel_new() makes a channel. Initialise it with
/// bridge_channel_options_init(), then set the fields you need.
#[repr(C)]
pub struct bridge_channel_options {
    /// sizeof(bridge_channel_options_t), set by bridge_channel_options_init(). A
    /// smaller size is BRIDGE_E_INVALID. A larger one (a program built against a later
    /// header) is accepted when every byte past this struct is 0; up to 4096.
    pub size: u32,
    /// How many values may wait between producer and consumer; 0: 64. Ignored (1)
    /// with BRIDGE_OVERFLOW_KEEP_LATEST. With BRIDGE_OVERFLOW_WAIT the producer is
    /// never more than `capacity` values, plus the one send that waits, ahead of the
    /// consumer.
    pub capacity: u32,
    /// BRIDGE_OVERFLOW_WAIT (0, the default), BRIDGE_OVERFLOW_DROP_OLDEST or
    /// BRIDGE_OVERFLOW_KEEP_LATEST; anything else is BRIDGE_E_INVALID.
    pub overflow: u32,
}

/// How bridge_channel_new() makes a channel (see struct bridge_channel_options).
pub type bridge_channel_options_t = bridge_channel_options;

/// A value sent through a channel: a pointer, the function that frees it, and its
/// type tag (future_value_type() of the bridge_channel_next() future that delivers
/// it). It is freed exactly once: by whoever takes it from a future, or by the
/// library (after the push-mode callback returned, or when the channel drops it).
pub struct CItem {
    ptr: SendPtr,
    free: bridge_free_fn,
    kind: u32,
}

impl CItem {
    /// A value the caller made, with the function that frees it (NULL: none): type
    /// BRIDGE_VALUE_USER, as bridge_sender_send() sends.
    pub fn user(ptr: *mut c_void, free: bridge_free_fn) -> CItem {
        CItem::with_type(ptr, free, BRIDGE_VALUE_USER)
    }

    /// A value of type `type_tag` (a BRIDGE_VALUE_* constant, or one of the caller's
    /// own above 255), freed by `free`.
    pub fn with_type(ptr: *mut c_void, free: bridge_free_fn, type_tag: u32) -> CItem {
        CItem {
            ptr: SendPtr(ptr),
            free,
            kind: type_tag,
        }
    }

    /// Bytes, as a bridge_bytes_t* of type BRIDGE_VALUE_BYTES.
    pub fn bytes(bytes: Vec<u8>) -> CItem {
        let buffer = box_into_c::<bridge_bytes_t>(Box::new(bytes_into_c(bytes)));
        CItem::with_type(buffer.cast(), Some(bridge_bytes_free), BRIDGE_VALUE_BYTES)
    }

    /// The pointer, still owned by the item.
    fn get(&self) -> *mut c_void {
        self.ptr.get()
    }

    /// The pointer, given back: it will not be freed.
    fn into_raw(mut self) -> *mut c_void {
        self.free = None;
        self.ptr.get()
    }

    /// The value of a future, which frees it from now on.
    fn into_value(mut self) -> CValue {
        let free = self.free.take();
        CValue::typed(self.ptr.get(), free, self.kind)
    }
}

impl Drop for CItem {
    fn drop(&mut self) {
        if let Some(free) = self.free.take() {
            // SAFETY: the sender gave `free` for this pointer; it runs once, here.
            unsafe { free(self.ptr.get()) }
        }
    }
}

/// The consumer's side of a stream of values: values sent by a bridge_sender_t (from
/// any thread), read in order with bridge_channel_next() or delivered to a completion
/// queue with bridge_channel_on_value(), then one terminal state.
///
/// Made by bridge_channel_new() (or by a library's function that returns one); freed
/// with bridge_channel_free(). Every function on it may be called from any thread.
///
/// The terminal state comes after every value that was sent, exactly once, and every
/// later read repeats it: BRIDGE_OK without a value when the producer closed the
/// channel (bridge_sender_close()), BRIDGE_FAILED with the producer's code and message
/// (bridge_sender_fail(); BRIDGE_E_ABANDONED when the sender was freed unclosed), or
/// BRIDGE_CANCELLED when bridge_channel_cancel() came before the producer consumed its
/// sender (or when bridge_shutdown() stopped a library's producer, see
/// spawn_channel() in the Rust docs). Every value is freed exactly once: by whoever takes it from a future, after
/// the push-mode callback returns, when an overflow policy drops it, or when the
/// channel is freed with values still queued.
pub struct bridge_channel {
    _private: [u8; 0],
}

/// The consumer's side of a stream of values (see struct bridge_channel).
pub type bridge_channel_t = bridge_channel;

/// What a bridge_channel_t is.
pub(crate) struct Channel {
    receiver: Receiver<CItem>,
    bridge: Weak<Bridge>,
}

impl Castable for bridge_channel_t {
    type Rust = Channel;
    type Ownership = OwnedByBox;
}

/// The producer's side of a stream of values (see struct bridge_channel).
///
/// Made by bridge_channel_new(); consumed by exactly one of bridge_sender_close(),
/// bridge_sender_fail() and bridge_sender_free(); using it after that is undefined.
/// Every function on it may be called from any thread.
///
/// Cancellation follows a promise's rules: bridge_channel_cancel() (or freeing the
/// channel) requests it; bridge_sender_is_cancelled() turns true, every later send is
/// refused (its value freed), and the cancel callback (bridge_sender_on_cancel())
/// runs once on the requesting thread. The request and the consuming call are
/// ordered: if the request comes first, the callback runs and the channel ends
/// BRIDGE_CANCELLED whatever the producer then passes; if the consuming call comes
/// first, the callback never runs and the channel ends as the producer said. So a
/// channel ends cancelled exactly when its cancel callback ran, and only once the
/// producer stopped. A consuming call made while the cancel callback runs on another
/// thread waits for it to return (do not consume the sender while holding a lock the
/// callback takes).
pub struct bridge_sender {
    _private: [u8; 0],
}

/// The producer's side of a stream of values (see struct bridge_sender).
pub type bridge_sender_t = bridge_sender;

/// What a bridge_sender_t is.
pub(crate) struct SenderHandle {
    sender: Sender<CItem>,
    bridge: Weak<Bridge>,
    overflow: Overflow,
}

impl Castable for bridge_sender_t {
    type Rust = SenderHandle;
    type Ownership = OwnedByBox;
}

/// The push-mode callback of bridge_channel_on_value(): `value` is borrowed for the
/// call (it is freed after the callback returns). It must not block, throw or longjmp.
pub type bridge_channel_value_fn =
    Option<unsafe extern "C" fn(value: *mut c_void, user_data: *mut c_void)>;

/// A count for C (bridge_channel_dropped()); 0 if a panic was caught.
struct Count(u64);

impl PanicValue for Count {
    fn panic_value() -> Count {
        Count(0)
    }
}

/// Fills `o` with the defaults: size = sizeof(bridge_channel_options_t), capacity 0
/// (64), overflow BRIDGE_OVERFLOW_WAIT.
///
/// @param o the options to fill; NULL does nothing.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_channel_options_init(o: *mut bridge_channel_options_t) {
    boundary(|| {
        if o.is_null() {
            return;
        }
        let defaults = bridge_channel_options {
            size: std::mem::size_of::<bridge_channel_options_t>() as u32,
            capacity: 0,
            overflow: BRIDGE_OVERFLOW_WAIT,
        };
        // SAFETY: `o` is non-NULL and, per the API, points to a writable struct;
        // `write` does not read the old value.
        unsafe { o.write(defaults) };
    })
}

/// Reads C options; `None` if they are invalid. NULL: the defaults.
///
/// # Safety
/// `o` is NULL or points to at least `(*o).size` readable bytes.
unsafe fn options_from_c(o: *const bridge_channel_options_t) -> Option<Options> {
    if o.is_null() {
        return Some(Options::default());
    }
    // SAFETY: per this function's contract.
    let c = unsafe { sized_options(o) }?;
    let overflow = match c.overflow {
        BRIDGE_OVERFLOW_WAIT => Overflow::Wait,
        BRIDGE_OVERFLOW_DROP_OLDEST => Overflow::DropOldest,
        BRIDGE_OVERFLOW_KEEP_LATEST => Overflow::KeepLatest,
        _ => return None,
    };
    let capacity = match c.capacity {
        0 => crate::delivery::stream::DEFAULT_CAPACITY,
        n => n as usize,
    };
    Some(Options { capacity, overflow })
}

/// The bridge behind a handle, held weakly: a channel does not keep its bridge alive.
///
/// # Safety
/// `b` is NULL or a live bridge handle.
unsafe fn weak_bridge(b: *mut bridge_t) -> Option<Weak<Bridge>> {
    // SAFETY: per the contract above.
    unsafe { arc_clone::<bridge_t>(b) }.map(|bridge| Arc::downgrade(&bridge))
}

/// The running bridge of a channel, or BRIDGE_E_NOT_RUNNING.
fn running(bridge: &Weak<Bridge>) -> Result<Arc<Bridge>, bridge_status> {
    match bridge.upgrade() {
        Some(bridge) if bridge.is_running() => Ok(bridge),
        _ => Err(BRIDGE_E_NOT_RUNNING),
    }
}

/// Makes a channel: its producer's side and its consumer's side.
///
/// The channel belongs to the bridge `b` for its futures (next, send and done
/// futures are futures of `b`: they count in bridge_stats() and bridge_shutdown()
/// resolves them); it does not keep `b` alive: once `b` is shut down or freed, calls
/// that make futures return BRIDGE_E_NOT_RUNNING (bridge_sender_try_send(), close,
/// fail and free keep working).
/// @param b the bridge.
/// @param o the options (read during the call only); NULL: the defaults (capacity 64,
///        BRIDGE_OVERFLOW_WAIT).
/// @param sender_out receives the sender (see struct bridge_sender for how it is
///        consumed).
/// @param channel_out receives the channel; free it with bridge_channel_free().
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `b`, `sender_out` or `channel_out`, a
///         `size` that is not accepted or an unknown overflow policy;
///         BRIDGE_E_NOT_RUNNING once `b` is shut down. Both out-parameters are written
///         only on BRIDGE_OK.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_channel_new(
    b: *mut bridge_t,
    o: *const bridge_channel_options_t,
    sender_out: *mut *mut bridge_sender_t,
    channel_out: *mut *mut bridge_channel_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `b` is NULL or a live handle per the API.
        let (Some(bridge), false, false) = (
            unsafe { weak_bridge(b) },
            sender_out.is_null(),
            channel_out.is_null(),
        ) else {
            return BRIDGE_E_INVALID;
        };
        // SAFETY: `o` is NULL or points to `size` readable bytes per the API.
        let Some(options) = (unsafe { options_from_c(o) }) else {
            return BRIDGE_E_INVALID;
        };
        if let Err(status) = running(&bridge) {
            return status;
        }
        let (sender, receiver) = channel(options);
        let sender = SenderHandle {
            sender,
            bridge: bridge.clone(),
            overflow: options.overflow,
        };
        let channel = Channel { receiver, bridge };
        // SAFETY: both out-pointers are non-NULL and writable per the API.
        unsafe {
            sender_out.write(box_into_c::<bridge_sender_t>(Box::new(sender)));
            channel_out.write(box_into_c::<bridge_channel_t>(Box::new(channel)));
        }
        BRIDGE_OK
    })
}

/// Sends a value: the future ends BRIDGE_OK once the value is in the channel.
///
/// The value is consumed by every return but BRIDGE_E_BUSY: it goes into the channel
/// (then `value_free(value)` runs exactly once, when the consumer is done with it), or
/// it is freed here, at once, when the call fails or the channel is cancelled. The
/// future ends BRIDGE_OK at once when there is room, or when the overflow policy makes
/// room (BRIDGE_OVERFLOW_DROP_OLDEST, KEEP_LATEST); with BRIDGE_OVERFLOW_WAIT and a full
/// channel it ends BRIDGE_OK once the consumer made room and the value went in. It ends
/// BRIDGE_CANCELLED, the value freed and not sent, when the consumer cancelled or freed
/// the channel (before or while it waited), when the future itself is cancelled
/// (future_cancel(), a timeout) before the value went in, and at bridge_shutdown(). So
/// BRIDGE_OK means the value will be read (unless the channel is freed first) and
/// BRIDGE_CANCELLED means it was freed unsent.
///
/// One send at a time: while a send's future is pending, another send or try_send
/// returns BRIDGE_E_BUSY and does not consume its value.
/// @param s the sender.
/// @param value the value (its type for the consumer is BRIDGE_VALUE_USER); NULL is a
///        value too.
/// @param value_free frees `value`; NULL: nothing to free.
/// @param out receives the future (one reference, the caller's; release it with
///        future_release()), written only on BRIDGE_OK. NULL: no future, allowed only
///        with BRIDGE_OVERFLOW_DROP_OLDEST and KEEP_LATEST, where a send never waits
///        (with BRIDGE_OVERFLOW_WAIT it is BRIDGE_E_INVALID: a producer that cannot
///        see its send finish cannot know when to send the next).
/// @return BRIDGE_OK; BRIDGE_E_BUSY (a send is pending, or the bridge's max_pending
///         is reached; `value` not consumed);
///         BRIDGE_E_INVALID for NULL `s`, or NULL `out` with BRIDGE_OVERFLOW_WAIT;
///         BRIDGE_E_NOT_RUNNING when a future is asked for and the channel's bridge is
///         shut down. A cancelled channel is not an error here: the future ends
///         BRIDGE_CANCELLED (see bridge_sender_try_send() for an answer at once).
/// Any thread, one call at a time per sender or not (concurrent calls get BUSY).
#[no_mangle]
pub unsafe extern "C" fn bridge_sender_send(
    s: *mut bridge_sender_t,
    value: *mut c_void,
    value_free: bridge_free_fn,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        let item = CItem::user(value, value_free);
        // SAFETY: `s` is NULL or a live sender per the API.
        let Some(handle) = (unsafe { box_borrow::<bridge_sender_t>(s) }) else {
            return BRIDGE_E_INVALID;
        };
        if out.is_null() && handle.overflow == Overflow::Wait {
            return BRIDGE_E_INVALID;
        }
        let claim = match handle.sender.claim() {
            Ok(claim) => claim,
            Err(_) => {
                // Not consumed: the caller keeps its value.
                item.into_raw();
                return BRIDGE_E_BUSY;
            }
        };
        if out.is_null() {
            // Drop policies: in at once, or freed here when the channel is cancelled.
            drop(claim.send(item));
            return BRIDGE_OK;
        }
        let bridge = match running(&handle.bridge) {
            Ok(bridge) => bridge,
            Err(status) => return status,
        };
        // Sent only once the future exists: a refused future leaves the value unsent.
        let mut unsent = Some((claim, item));
        let made = if unsent.as_ref().is_some_and(|(claim, _)| claim.would_wait()) {
            bridge.spawn_with(|future: Future<CKind>| {
                let answer = match unsent.take() {
                    Some((claim, item)) => claim.send(item),
                    None => StartSend::Sent, // taken only here, once
                };
                (wait_sent(answer, future), None)
            })
        } else {
            bridge.promise::<CKind>().map(|(promise, future)| {
                match unsent.take().map(|(claim, item)| claim.send(item)) {
                    Some(StartSend::Busy(item) | StartSend::Closed(item)) => {
                        drop(item);
                        let _ = future.cancel();
                        drop(promise);
                    }
                    _ => promise.resolve(None),
                }
                future
            })
        };
        match made {
            Ok(future) => {
                // SAFETY: `out` is non-NULL and writable per the API.
                unsafe { out.write(into_c_future(future)) };
                BRIDGE_OK
            }
            Err(Error::Busy) => {
                // max_pending: not consumed, like a send that is pending.
                if let Some((_claim, item)) = unsent {
                    item.into_raw();
                }
                BRIDGE_E_BUSY
            }
            Err(error) => error.code(),
        }
    })
}

/// The work of a send future: the value goes in once there is room (and the future
/// was not cancelled by then), else it is freed and the future ends cancelled.
async fn wait_sent(
    answer: StartSend<CItem>,
    future: Future<CKind>,
) -> Result<Option<CValue>, Failure> {
    let mut pending = match answer {
        StartSend::Sent => return Ok(None),
        StartSend::Waiting(pending) => pending,
        StartSend::Busy(item) | StartSend::Closed(item) => {
            drop(item);
            let _ = future.cancel();
            return Ok(None);
        }
    };
    let sent = std::future::poll_fn(|cx| pending.poll_sent(cx, || future.commit())).await;
    if let Err(item) = sent {
        drop(item);
        // Ends cancelled: asked for, or the consumer's doing.
        let _ = future.cancel();
    }
    Ok(None)
}

/// Sends a value if the channel has room now (or its overflow policy makes room).
///
/// @param s the sender.
/// @param value the value (type BRIDGE_VALUE_USER); consumed only on BRIDGE_OK.
/// @param value_free frees `value`; NULL: nothing to free.
/// @return BRIDGE_OK (consumed: in the channel); BRIDGE_E_BUSY when the channel is
///         full (BRIDGE_OVERFLOW_WAIT) or a send is pending (not consumed);
///         BRIDGE_E_CLOSED when the consumer cancelled or freed the channel (not
///         consumed); BRIDGE_E_INVALID for NULL `s` (not consumed).
/// Any thread; never blocks; needs no running bridge.
#[no_mangle]
pub unsafe extern "C" fn bridge_sender_try_send(
    s: *mut bridge_sender_t,
    value: *mut c_void,
    value_free: bridge_free_fn,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `s` is NULL or a live sender per the API.
        let Some(handle) = (unsafe { box_borrow::<bridge_sender_t>(s) }) else {
            return BRIDGE_E_INVALID;
        };
        match handle.sender.try_send(CItem::user(value, value_free)) {
            Ok(()) => BRIDGE_OK,
            Err(crate::delivery::stream::TrySendError::Full(item)) => {
                item.into_raw();
                BRIDGE_E_BUSY
            }
            Err(crate::delivery::stream::TrySendError::Closed(item)) => {
                item.into_raw();
                BRIDGE_E_CLOSED
            }
        }
    })
}

/// Whether the consumer asked the producer to stop (bridge_channel_cancel(), or the
/// channel was freed): the producer should stop and consume its sender.
///
/// @return false for NULL.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_sender_is_cancelled(s: *const bridge_sender_t) -> bool {
    boundary(|| {
        // SAFETY: `s` is NULL or a live sender per the API.
        unsafe { box_borrow::<bridge_sender_t>(s) }.is_some_and(|h| h.sender.is_cancelled())
    })
}

/// Registers the sender's cancel callback: `cb(user_data)` runs once, on the thread
/// that requests cancellation (the caller of bridge_channel_cancel() or
/// bridge_channel_free(); a bridge thread when a push-mode done future is cancelled
/// or shut down), or at once, on this thread, before this returns, if cancellation was
/// already requested.
///
/// At most one per sender. The callback may consume the sender itself. Once the
/// sender is consumed the callback is not running and never runs.
/// @param cb the callback; it must not block, throw or longjmp.
/// @param user_data passed to `cb`.
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `s` or `cb`, or a second registration.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_sender_on_cancel(
    s: *mut bridge_sender_t,
    cb: bridge_cancel_fn,
    user_data: *mut c_void,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `s` is NULL or a live sender per the API.
        let (Some(handle), Some(func)) = (unsafe { box_borrow::<bridge_sender_t>(s) }, cb) else {
            return BRIDGE_E_INVALID;
        };
        let user_data = SendPtr(user_data);
        // The callback may free the sender before this returns: what is used from
        // here on is a handle of its own.
        let registration = handle.sender.cancel_registration();
        let callback = Box::new(move || {
            // SAFETY: the callback and its user data were given for this sender.
            unsafe { func(user_data.get()) }
        });
        match registration.on_cancel(callback) {
            Ok(()) => BRIDGE_OK,
            Err(error) => error.code(),
        }
    })
}

/// Ends the channel after every value sent (a send still pending included): the
/// consumer reads them, then BRIDGE_OK without a value. Consumes the sender.
///
/// If cancellation was requested first, the channel ends BRIDGE_CANCELLED instead.
/// When this returns the cancel callback is not running and never runs.
/// @param s the sender; NULL does nothing.
/// Any thread, the cancel callback included. Using `s` afterwards is undefined.
#[no_mangle]
pub unsafe extern "C" fn bridge_sender_close(s: *mut bridge_sender_t) {
    boundary(|| {
        // SAFETY: `s` is NULL or a live sender the caller gives up per the API.
        if let Some(handle) = unsafe { box_take::<bridge_sender_t>(s) } {
            handle.sender.close();
        }
    })
}

/// Fails the channel after every value sent: the consumer reads them, then
/// BRIDGE_FAILED with `code` and `message`. Consumes the sender.
///
/// Code 0 is treated as 1 (failing always fails). If cancellation was requested
/// first, the channel ends BRIDGE_CANCELLED instead. When this returns the cancel
/// callback is not running and never runs.
/// @param s the sender; NULL does nothing.
/// @param message copied; NULL: a default message naming the code.
/// Any thread, the cancel callback included. Using `s` afterwards is undefined.
#[no_mangle]
pub unsafe extern "C" fn bridge_sender_fail(
    s: *mut bridge_sender_t,
    code: i32,
    message: *const c_char,
) {
    boundary(|| {
        // SAFETY: `s` is NULL or a live sender the caller gives up per the API.
        if let Some(handle) = unsafe { box_take::<bridge_sender_t>(s) } {
            let code = if code == 0 { 1 } else { code };
            if message.is_null() {
                handle
                    .sender
                    .fail(code, format!("the producer failed with code {code}"));
            } else {
                // SAFETY: a non-NULL message is a NUL-terminated string per the API.
                let message = unsafe { CStr::from_ptr(message) };
                handle.sender.fail(code, message.to_bytes());
            }
        }
    })
}

/// Consumes the sender without closing the channel: after every value sent it ends
/// BRIDGE_FAILED with BRIDGE_E_ABANDONED, or BRIDGE_CANCELLED if cancellation had been
/// requested.
///
/// When this returns the cancel callback is not running and never runs.
/// @param s the sender; NULL does nothing.
/// Any thread, the cancel callback included. Using `s` afterwards is undefined.
#[no_mangle]
pub unsafe extern "C" fn bridge_sender_free(s: *mut bridge_sender_t) {
    // SAFETY: `s` is NULL or a live sender the caller gives up per the API.
    boundary(|| drop(unsafe { box_take::<bridge_sender_t>(s) }))
}

/// Reads the next value: a future that ends BRIDGE_OK with it, or with the terminal
/// state once every value was read.
///
/// The future ends BRIDGE_OK with the next value (future_value(); its type,
/// future_value_type(), is BRIDGE_VALUE_USER for bridge_sender_send()'s values, or the
/// tag a library's producer gave; take it with future_take_value(), else it is freed
/// with the future); after the last value, with the terminal state: BRIDGE_OK without
/// a value (BRIDGE_VALUE_NONE) when the producer closed the channel, BRIDGE_FAILED with
/// the producer's code and message, or BRIDGE_CANCELLED. Every later next repeats the
/// terminal state. Values come in the order they were sent.
///
/// Cancelling the future (future_cancel(), a timeout, bridge_shutdown()) loses no
/// value: it ends BRIDGE_CANCELLED without one, and the value it would have read is
/// read by the next call. A next pending when the channel is freed ends
/// BRIDGE_CANCELLED.
/// @param c the channel.
/// @param out receives the future (one reference, the caller's; release it with
///        future_release()), written only on BRIDGE_OK.
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `c` or `out`; BRIDGE_E_BUSY while
///         another next is pending, and for good once bridge_channel_on_value() was
///         called; BRIDGE_E_NOT_RUNNING once the channel's bridge is shut down.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_channel_next(
    c: *mut bridge_channel_t,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `c` is NULL or a live channel per the API.
        let (Some(channel), false) = (unsafe { box_borrow::<bridge_channel_t>(c) }, out.is_null())
        else {
            return BRIDGE_E_INVALID;
        };
        let reader = match channel.receiver.reader() {
            Ok(reader) => reader,
            Err(error) => return error.code(),
        };
        let bridge = match running(&channel.bridge) {
            Ok(bridge) => bridge,
            Err(status) => return status,
        };
        let made = bridge.spawn_with(|future: Future<CKind>| {
            let work = async move {
                let item =
                    std::future::poll_fn(|cx| reader.poll_read(cx, || future.commit())).await;
                match item {
                    Item::Value(item) => Ok(Some(item.into_value())),
                    Item::End(end) => end_outcome(end, &future),
                    Item::Withheld | Item::Gone => {
                        let _ = future.cancel();
                        Ok(None)
                    }
                }
            };
            (work, None)
        });
        match made {
            Ok(future) => {
                // SAFETY: `out` is non-NULL and writable per the API.
                unsafe { out.write(into_c_future(future)) };
                BRIDGE_OK
            }
            Err(error) => error.code(),
        }
    })
}

/// The outcome of a future that reports the end `end` (a next or a done future).
fn end_outcome(end: End, future: &Future<CKind>) -> Result<Option<CValue>, Failure> {
    match end {
        End::Closed => Ok(None),
        End::Failed { code, message } => Err(Failure::new(code, message.into_bytes())),
        End::Cancelled => {
            let _ = future.cancel();
            Ok(None)
        }
    }
}

/// A push-mode callback with its user data.
#[derive(Clone, Copy)]
struct ValueCallback {
    func: unsafe extern "C" fn(value: *mut c_void, user_data: *mut c_void),
    user_data: SendPtr,
}

/// Push mode: `func(value, user_data)` runs inside bridge_queue_dispatch(q) once per
/// value, in order; `done_out` receives a future that ends with the terminal state
/// after the last call returned.
///
/// Each value is borrowed for the call and freed after it returns (the callback must
/// not free it). Values go to the queue in batches: whatever the channel holds when
/// the previous batch was delivered; values handed to the queue and not yet delivered
/// count against the capacity, so with BRIDGE_OVERFLOW_WAIT the producer is never more
/// than `capacity` values (plus the one send that waits) ahead of the callback.
///
/// The done future ends after the last callback returned, with the terminal state:
/// BRIDGE_OK without a value (closed), BRIDGE_FAILED with the producer's code and
/// message, or BRIDGE_CANCELLED. It also ends in two other cases. When `q` is freed
/// before the end: BRIDGE_FAILED with BRIDGE_E_CLOSED; the channel is cancelled (the
/// producer is asked to stop) and values not delivered are freed. When the done future
/// is cancelled (future_cancel(), a timeout, bridge_shutdown()) or the channel is
/// freed: BRIDGE_CANCELLED; the channel is cancelled (the sender's cancel callback runs
/// on a bridge thread then) and the delivery stops: values not yet given to `func` are
/// freed without it, and the channel's values are no longer read.
///
/// When the delivery stops that way, a call that the dispatching thread was just
/// starting may still run after the done future ended; none starts in a dispatch that
/// begins afterwards. So keep `user_data` valid until the done future has ended and
/// `q` was dispatched once more (or freed); when the thread that dispatches `q` is the
/// one that cancels, the done future's end is enough.
/// @param c the channel; afterwards bridge_channel_next() on it is BRIDGE_E_BUSY.
/// @param q the queue whose bridge_queue_dispatch() runs `func`.
/// @param func the callback; it must not block, throw or longjmp.
/// @param user_data passed to `func`.
/// @param done_out receives the done future (one reference, the caller's), written
///        only on BRIDGE_OK.
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `c`, `q`, `func` or `done_out`;
///         BRIDGE_E_BUSY while a next is pending or push mode was set before;
///         BRIDGE_E_NOT_RUNNING once the channel's bridge is shut down.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_channel_on_value(
    c: *mut bridge_channel_t,
    q: *mut bridge_queue_t,
    func: bridge_channel_value_fn,
    user_data: *mut c_void,
    done_out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `c` and `q` are NULL or live handles per the API.
        let (Some(channel), Some(queue), Some(func), false) = (
            unsafe { box_borrow::<bridge_channel_t>(c) },
            unsafe { borrow_queue(q) },
            func,
            done_out.is_null(),
        ) else {
            return BRIDGE_E_INVALID;
        };
        let queue = Arc::clone(&queue);
        let callback = ValueCallback {
            func,
            user_data: SendPtr(user_data),
        };
        let reader = match channel.receiver.reader() {
            Ok(reader) => reader,
            Err(error) => return error.code(),
        };
        let bridge = match running(&channel.bridge) {
            Ok(bridge) => bridge,
            Err(status) => return status,
        };
        let made = bridge.spawn_with(|future: Future<CKind>| {
            let pusher = reader.into_push();
            let work = async move {
                loop {
                    match std::future::poll_fn(|cx| pusher.poll_batch(cx)).await {
                        Pushed::Batch(batch) => {
                            let deliver = Box::new(move || {
                                let callback = callback;
                                batch.deliver(|item| {
                                    // SAFETY: the callback and its user data were
                                    // given for this channel; the value is borrowed
                                    // for the call.
                                    unsafe { (callback.func)(item.get(), callback.user_data.get()) }
                                });
                            });
                            if queue.post(deliver).is_err() {
                                // The batch was dropped with the entry: freed, counted.
                                pusher.cancel();
                                return Err(Failure::new(
                                    Error::Closed.code(),
                                    "the completion queue was freed before the channel ended",
                                ));
                            }
                        }
                        Pushed::End(end) => return end_outcome(end, &future),
                        Pushed::Gone => {
                            std::future::poll_fn(|cx| pusher.poll_delivered(cx)).await;
                            let _ = future.cancel();
                            return Ok(None);
                        }
                    }
                }
            };
            (work, None)
        });
        match made {
            Ok(future) => {
                // SAFETY: `done_out` is non-NULL and writable per the API.
                unsafe { done_out.write(into_c_future(future)) };
                BRIDGE_OK
            }
            Err(error) => error.code(),
        }
    })
}

/// Asks the producer to stop: bridge_sender_is_cancelled() turns true, later sends are
/// refused (their values freed), a send waiting for room ends BRIDGE_CANCELLED (its
/// value freed), and the sender's cancel callback runs here, on this thread.
///
/// Values sent before the request are still read (by next or push mode), then the
/// terminal state: BRIDGE_CANCELLED once the producer has consumed its sender. If the
/// producer consumed it first (closed, failed, freed), nothing changes: its values and
/// its terminal state are read as it said. Idempotent.
/// @param c the channel; NULL does nothing.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_channel_cancel(c: *mut bridge_channel_t) {
    boundary(|| {
        // SAFETY: `c` is NULL or a live channel per the API.
        if let Some(channel) = unsafe { box_borrow::<bridge_channel_t>(c) } {
            channel.receiver.cancel();
        }
    })
}

/// How many values the overflow policy freed (BRIDGE_OVERFLOW_DROP_OLDEST, KEEP_LATEST).
///
/// @return the count; 0 for NULL.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_channel_dropped(c: *const bridge_channel_t) -> u64 {
    boundary(|| {
        // SAFETY: `c` is NULL or a live channel per the API.
        Count(unsafe { box_borrow::<bridge_channel_t>(c) }.map_or(0, |c| c.receiver.dropped()))
    })
    .0
}

/// Frees the channel: cancels it if the producer has not consumed its sender (its
/// cancel callback runs here), frees the values still queued, here, and refuses every
/// later send (their values freed at once; a pending send ends BRIDGE_CANCELLED). A
/// pending next future ends BRIDGE_CANCELLED; a push-mode delivery stops (see
/// bridge_channel_on_value()).
///
/// @param c the channel; NULL does nothing.
/// Any thread. Using `c` afterwards is undefined.
#[no_mangle]
pub unsafe extern "C" fn bridge_channel_free(c: *mut bridge_channel_t) {
    // SAFETY: `c` is NULL or a live channel the caller gives up per the API.
    boundary(|| drop(unsafe { box_take::<bridge_channel_t>(c) }))
}

/// Runs the producer block that `make` builds on the bridge `b` and writes the
/// channel it feeds to `*out`: the body of a C function exported by a Rust crate.
///
/// `make` gets the channel's [`Sender`] (of [`CItem`] values) and runs on the calling
/// thread; the block on the bridge's loop, where it must not block. The block's
/// `Ok(())` closes the channel after every value it sent, `Err(failure)` fails it with
/// the failure's code and message, a panic fails it with `BRIDGE_E_PANIC`. The block
/// may also end the channel itself with [`Sender::close`] or [`Sender::fail`]: the
/// first decision stands. When the consumer cancels (or frees) the channel, the block
/// is dropped at its next await and
/// the channel ends cancelled after that; `bridge_shutdown()` drops it too (the
/// channel ends cancelled). The block's task is a future of `b` while it runs.
///
/// Returns `BRIDGE_OK`; `BRIDGE_E_INVALID` for a NULL `b` or `out`;
/// `BRIDGE_E_NOT_RUNNING` once shut down; `BRIDGE_E_BUSY` at `max_pending`. `*out` is
/// written, and `make` called, only on `BRIDGE_OK`.
///
/// # Safety
/// `b` is NULL or a live `bridge_t *`; `out` is NULL or writable.
pub unsafe fn spawn_channel<M, F>(
    b: *mut bridge_t,
    options: Options,
    out: *mut *mut bridge_channel_t,
    make: M,
) -> bridge_status
where
    M: FnOnce(Sender<CItem>) -> F,
    F: std::future::Future<Output = Result<(), Failure>> + Send + 'static,
{
    boundary(|| {
        // SAFETY: per this function's contract.
        let (Some(bridge), false) = (unsafe { borrow_bridge(b) }, out.is_null()) else {
            return BRIDGE_E_INVALID;
        };
        // SAFETY: as above.
        let Some(weak) = (unsafe { weak_bridge(b) }) else {
            return BRIDGE_E_INVALID;
        };
        let (sender, receiver) = channel::<CItem>(options);
        let (sender, ender) = sender.detach_end();
        let made = bridge.spawn_with(|_future: Future<CKind>| {
            let block = make(sender);
            let work = async move {
                let mut ender = EndOnDrop(Some(ender));
                let mut block = Box::pin(block);
                let result = std::future::poll_fn(|cx| {
                    let stop = ender.0.as_ref().map_or(true, |e| {
                        std::future::Future::poll(std::pin::pin!(e.cancelled()), cx).is_ready()
                    });
                    if stop {
                        return Poll::Ready(None);
                    }
                    match catch_unwind(AssertUnwindSafe(|| block.as_mut().poll(cx))) {
                        Ok(Poll::Ready(result)) => Poll::Ready(Some(result)),
                        Ok(Poll::Pending) => Poll::Pending,
                        Err(_) => Poll::Ready(Some(Err(Failure::new(
                            Error::Panic.code(),
                            "the channel's producer panicked",
                        )))),
                    }
                })
                .await;
                // The block (and the sender in it) goes before the end is decided.
                drop(block);
                if let Some(ender) = ender.0.take() {
                    match result {
                        Some(Ok(())) => ender.close(),
                        Some(Err(failure)) => {
                            ender.fail(failure.code(), failure.message().to_bytes())
                        }
                        None => ender.cancel(),
                    }
                }
                Ok(None)
            };
            (work, None)
        });
        match made {
            Ok(_future) => {
                let channel = Channel {
                    receiver,
                    bridge: weak,
                };
                // SAFETY: `out` is non-NULL and writable per this function's contract.
                unsafe { out.write(box_into_c::<bridge_channel_t>(Box::new(channel))) };
                BRIDGE_OK
            }
            Err(error) => error.code(),
        }
    })
}

/// Ends the stream cancelled if the producer's task is dropped before deciding (its
/// bridge shut down).
struct EndOnDrop(Option<crate::delivery::stream::Ender<CItem>>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        if let Some(ender) = self.0.take() {
            ender.cancel();
        }
    }
}
