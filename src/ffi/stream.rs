//! Byte streams: bridge_stream_t, what connections and process pipes are read and
//! written through.

use std::ffi::c_void;

use crate::ffi::boundary::boundary;
use crate::ffi::bridge::{bridge_t, retain_bridge};
use crate::ffi::embed::{spawn_on, CValue};
use crate::ffi::future::future_t;
use crate::ffi::handle::{box_borrow, box_into_c, box_take, Castable, OwnedByBox};
use crate::ffi::status::{bridge_status, BRIDGE_E_INVALID, BRIDGE_OK};
use crate::ffi::value::BRIDGE_VALUE_STREAM;
use crate::io::stream::Stream;
use crate::runtime::Bridge;
use crate::status::Error;
use crate::sync::Arc;

/// A byte stream: a TCP, Unix or TLS connection, or a pipe of a spawned process.
///
/// Made by the library: the value of a bridge_connect() or bridge_listener_accept()
/// future (type BRIDGE_VALUE_STREAM, taken with future_take_value()), or handed out by
/// bridge_child_take_stdin() and its siblings. Freed with bridge_stream_close().
///
/// A stream takes one pending read and one pending write (or shutdown) at a time; a
/// second one of the same side is refused with BRIDGE_E_BUSY, so the order of the
/// bytes is always the order of the calls. Every function may be called from any
/// thread; the operations run on the bridge's loop, and their futures are futures of
/// the bridge the stream was made by (waited, chained, cancelled, delivered to queues
/// like any other).
pub struct bridge_stream {
    bridge: Arc<Bridge>,
    stream: Stream,
}

/// A byte stream (see struct bridge_stream).
pub type bridge_stream_t = bridge_stream;

impl Castable for bridge_stream_t {
    type Rust = bridge_stream;
    type Ownership = OwnedByBox;
}

/// A new handle of `stream`, whose operations run on `bridge`.
pub(crate) fn stream_into_c(bridge: Arc<Bridge>, stream: Stream) -> *mut bridge_stream_t {
    box_into_c::<bridge_stream_t>(Box::new(bridge_stream { bridge, stream }))
}

/// `stream` as a future value of type BRIDGE_VALUE_STREAM: a future freed with the
/// value still in it closes the stream.
pub(crate) fn stream_value(bridge: Arc<Bridge>, stream: Stream) -> CValue {
    CValue::with_type(
        stream_into_c(bridge, stream).cast(),
        Some(stream_value_free),
        BRIDGE_VALUE_STREAM,
    )
}

/// The value free function of a stream: closes it.
unsafe extern "C" fn stream_value_free(s: *mut c_void) {
    // SAFETY: the value was made by `stream_value` and is given up here.
    unsafe { bridge_stream_close(s.cast()) }
}

/// Reads from a stream: a future whose value is the bytes that arrived.
///
/// The future ends BRIDGE_OK with a bridge_bytes_t* (type BRIDGE_VALUE_BYTES) of 1 to
/// `max` bytes, as many as had arrived, as soon as at least one has; with 0 bytes
/// (`len` 0) at the end of the stream (the peer shut its side down, the process closed
/// its end of the pipe), and again for every read after that. It fails with BRIDGE_E_IO
/// and the errno for an OS error (ECONNRESET...), BRIDGE_E_TLS for a broken TLS record,
/// and BRIDGE_E_CLOSED when bridge_stream_close() is called while it waits.
///
/// Cancelling the future (future_cancel(), a token, a timeout) loses no byte: what had
/// not been delivered is read by the next read. A read holds no buffer while it waits.
///
/// @param s the stream; NULL is BRIDGE_E_INVALID.
/// @param max the most bytes to deliver; 0 means 64 KiB; more than 1 MiB is read as
///        1 MiB.
/// @param out receives the future (the caller's one reference; release it with
///        future_release()), written only on BRIDGE_OK; NULL is BRIDGE_E_INVALID.
/// @return BRIDGE_OK; BRIDGE_E_INVALID; BRIDGE_E_BUSY while another read of this stream
///         is pending (its future not yet ended); BRIDGE_E_NOT_RUNNING once the bridge
///         shut down (and BRIDGE_E_BUSY at its max_pending).
/// Any thread. Using `s` after bridge_stream_close() is undefined.
#[no_mangle]
pub unsafe extern "C" fn bridge_stream_read(
    s: *mut bridge_stream_t,
    max: usize,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `s` is NULL or a live stream handle, per the API.
        let (Some(handle), false) = (unsafe { box_borrow::<bridge_stream_t>(s) }, out.is_null())
        else {
            return BRIDGE_E_INVALID;
        };
        let read = match handle.stream.begin_read(max) {
            Ok(read) => read,
            Err(error) => return error.code(),
        };
        spawn_on(&handle.bridge, out, move |task| async move {
            let bytes = read.run(|| task.commit()).await?;
            Ok(Some(CValue::bytes(bytes)))
        })
    })
}

/// Writes to a stream: a future that ends BRIDGE_OK (no value) once all of the bytes
/// are written.
///
/// The bytes are copied at the call: `data` may be freed when this returns. Writes of
/// one stream go out in the order of their calls (one at a time). The future fails
/// with BRIDGE_E_IO and the errno for an OS error (EPIPE, ECONNRESET...), and with
/// BRIDGE_E_CLOSED when bridge_stream_close() is called while it waits, or when the
/// stream's write side was shut down (bridge_stream_shutdown()) or never existed (the
/// stdout of a process). Cancelling it may leave part of the bytes written.
///
/// @param s the stream; NULL is BRIDGE_E_INVALID.
/// @param data the bytes; NULL is BRIDGE_E_INVALID unless `len` is 0.
/// @param len how many bytes; 0 writes nothing and ends OK.
/// @param out receives the future (the caller's one reference), written only on
///        BRIDGE_OK; NULL is BRIDGE_E_INVALID.
/// @return BRIDGE_OK; BRIDGE_E_INVALID; BRIDGE_E_BUSY while another write or a
///         shutdown of this stream is pending; BRIDGE_E_NOT_RUNNING once the bridge
///         shut down.
/// Any thread. Using `s` after bridge_stream_close() is undefined.
#[no_mangle]
pub unsafe extern "C" fn bridge_stream_write(
    s: *mut bridge_stream_t,
    data: *const c_void,
    len: usize,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `s` is NULL or a live stream handle, per the API.
        let (Some(handle), false) = (unsafe { box_borrow::<bridge_stream_t>(s) }, out.is_null())
        else {
            return BRIDGE_E_INVALID;
        };
        if data.is_null() && len > 0 {
            return BRIDGE_E_INVALID;
        }
        let bytes = if len == 0 {
            Vec::new()
        } else {
            // SAFETY: `data` is non-NULL and holds `len` readable bytes, per the API.
            unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) }.to_vec()
        };
        let write = match handle.stream.begin_write(bytes) {
            Ok(write) => write,
            Err(error) => return error.code(),
        };
        spawn_on(&handle.bridge, out, move |_task| async move {
            write.run().await.map(|()| None)
        })
    })
}

/// Ends a stream's write side once the writes before it are out: a TCP FIN, a TLS
/// close_notify, a pipe closed (the process reads end of file). The read side stays
/// open: the peer's answer can still be read to its end.
///
/// The future ends BRIDGE_OK (no value) once the side is shut down; shutting down a
/// side that is already shut down ends OK again. Later writes fail with
/// BRIDGE_E_CLOSED. It fails like bridge_stream_write().
///
/// @param s the stream; NULL is BRIDGE_E_INVALID.
/// @param out receives the future (the caller's one reference), written only on
///        BRIDGE_OK; NULL is BRIDGE_E_INVALID.
/// @return BRIDGE_OK; BRIDGE_E_INVALID; BRIDGE_E_BUSY while a write of this stream is
///         pending; BRIDGE_E_NOT_RUNNING once the bridge shut down.
/// Any thread. Using `s` after bridge_stream_close() is undefined.
#[no_mangle]
pub unsafe extern "C" fn bridge_stream_shutdown(
    s: *mut bridge_stream_t,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `s` is NULL or a live stream handle, per the API.
        let (Some(handle), false) = (unsafe { box_borrow::<bridge_stream_t>(s) }, out.is_null())
        else {
            return BRIDGE_E_INVALID;
        };
        let shutdown = match handle.stream.begin_shutdown() {
            Ok(shutdown) => shutdown,
            Err(error) => return error.code(),
        };
        spawn_on(&handle.bridge, out, move |_task| async move {
            shutdown.run().await.map(|()| None)
        })
    })
}

/// Closes a stream and frees its handle.
///
/// A read, write or shutdown still pending ends FAILED with BRIDGE_E_CLOSED (not
/// CANCELLED: the operation did not stop on request, the stream went away under it).
/// An idle connection or pipe is closed before this returns; one an operation is using
/// is closed on the bridge's loop as that operation ends, which it does at once. A
/// connection closed this way is not shut down first: call bridge_stream_shutdown() and
/// wait for it for an orderly end (a TLS close_notify).
///
/// @param s the stream; NULL does nothing.
/// Any thread, including a callback of one of the stream's futures. Using `s`
/// afterwards is undefined.
#[no_mangle]
pub unsafe extern "C" fn bridge_stream_close(s: *mut bridge_stream_t) {
    boundary(|| {
        // SAFETY: `s` is NULL or a live stream handle that the caller gives up.
        if let Some(handle) = unsafe { box_take::<bridge_stream_t>(s) } {
            handle.stream.close();
        }
    })
}

/// Makes two streams connected to each other, like socketpair(): what is written to
/// one is read from the other, and shutting one's write side down is the other's end
/// of stream. For tests of code that speaks a protocol, and for two parts of a program
/// that talk through streams.
///
/// @param b the bridge the streams' operations run on; NULL is BRIDGE_E_INVALID.
/// @param first_out receives one stream; NULL is BRIDGE_E_INVALID.
/// @param second_out receives the other; NULL is BRIDGE_E_INVALID.
///        Both are written only on BRIDGE_OK; the caller closes each with
///        bridge_stream_close().
/// @return BRIDGE_OK; BRIDGE_E_INVALID; BRIDGE_E_NOT_RUNNING once the bridge shut
///         down; BRIDGE_E_IO when the process is out of file descriptors.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_stream_pair(
    b: *mut bridge_t,
    first_out: *mut *mut bridge_stream_t,
    second_out: *mut *mut bridge_stream_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `b` is NULL or a live bridge handle, per the API.
        let Some(bridge) = (unsafe { retain_bridge(b) }) else {
            return BRIDGE_E_INVALID;
        };
        if first_out.is_null() || second_out.is_null() {
            return BRIDGE_E_INVALID;
        }
        let made = match bridge.enter() {
            Ok(_inside) => Stream::pair(),
            Err(error) => return error.code(),
        };
        let Ok((first, second)) = made else {
            return Error::Io.code();
        };
        // SAFETY: both are non-NULL and writable, per the API.
        unsafe {
            first_out.write(stream_into_c(bridge.clone(), first));
            second_out.write(stream_into_c(bridge, second));
        }
        BRIDGE_OK
    })
}
