//! The types of future values, and `bridge_bytes_t`, the library's byte buffers.

use std::ffi::c_void;

use crate::ffi::boundary::boundary;
use crate::ffi::future::CValue;
use crate::ffi::handle::{box_into_c, box_take, Castable, OwnedByBox};

/// future_value_type(): no value (pending, not BRIDGE_OK, or BRIDGE_OK without one).
pub const BRIDGE_VALUE_NONE: u32 = 0;
/// future_value_type(): a void* set by C work or a promise, with its free function.
pub const BRIDGE_VALUE_USER: u32 = 1;
/// future_value_type(): a bridge_bytes_t*, freed with bridge_bytes_free() once taken.
pub const BRIDGE_VALUE_BYTES: u32 = 2;
/// future_value_type(): a bridge_http_response_t*.
pub const BRIDGE_VALUE_HTTP_RESPONSE: u32 = 3;
/// future_value_type(): a bridge_process_result_t*.
pub const BRIDGE_VALUE_PROCESS: u32 = 4;
/// future_value_type(): a size_t* (future_any()), freed with free() once taken.
pub const BRIDGE_VALUE_INDEX: u32 = 5;
/// future_value_type(): a bridge_stream_t* (a connection made or accepted); once taken
/// with future_take_value(), the caller closes it with bridge_stream_close().
pub const BRIDGE_VALUE_STREAM: u32 = 6;
/// future_value_type(): a bridge_addresses_t* (bridge_dns_resolve()), freed with
/// bridge_addresses_free() once taken.
pub const BRIDGE_VALUE_ADDRESSES: u32 = 7;

/// Bytes made by the library (a file's contents, a process's output, a body).
///
/// As a future's value it is freed with the future; taken with future_take_value(),
/// the caller frees it with bridge_bytes_free(). `data` is NULL when `len` is 0.
#[repr(C)]
pub struct bridge_bytes {
    /// The bytes, owned by this struct; not NUL-terminated.
    pub data: *mut u8,
    /// How many.
    pub len: usize,
}

/// Bytes made by the library (see struct bridge_bytes).
pub type bridge_bytes_t = bridge_bytes;

/// The struct itself is boxed; its `data` is a boxed slice of `len` bytes.
impl Castable for bridge_bytes_t {
    type Rust = bridge_bytes;
    type Ownership = OwnedByBox;
}

/// `bytes` as a future value of type BRIDGE_VALUE_BYTES.
#[allow(dead_code)] // the I/O functions' values; tested below
pub(crate) fn bytes_value(bytes: Vec<u8>) -> CValue {
    let buffer = box_into_c::<bridge_bytes_t>(Box::new(bytes_into_c(bytes)));
    CValue::typed(buffer.cast(), Some(bridge_bytes_free), BRIDGE_VALUE_BYTES)
}

/// `bytes` as a bridge_bytes_t held by value (in a struct of the library's), whose
/// data [`bytes_free_data`] frees.
pub(crate) fn bytes_into_c(bytes: Vec<u8>) -> bridge_bytes {
    let len = bytes.len();
    let data = if len == 0 {
        std::ptr::null_mut()
    } else {
        Box::into_raw(bytes.into_boxed_slice()).cast::<u8>()
    };
    bridge_bytes { data, len }
}

/// Frees the data of a bridge_bytes_t made by [`bytes_into_c`] (not the struct).
///
/// # Safety
/// `bytes` came from `bytes_into_c` and its data is freed only here, once.
pub(crate) unsafe fn bytes_free_data(bytes: &bridge_bytes) {
    if !bytes.data.is_null() {
        // SAFETY: `data` and `len` describe the boxed slice made by `bytes_into_c`.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(bytes.data, bytes.len)) });
    }
}

/// Frees a bridge_bytes_t made by the library (a bridge_free_fn).
///
/// @param bytes a bridge_bytes_t* taken from a future; NULL does nothing. Using it
///        afterwards is undefined.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_bytes_free(bytes: *mut c_void) {
    boundary(|| {
        // SAFETY: `bytes` is NULL or a bridge_bytes_t made by `bytes_value` and given
        // up by the caller.
        let Some(buffer) = (unsafe { box_take::<bridge_bytes_t>(bytes.cast()) }) else {
            return;
        };
        // SAFETY: the struct was made by `bytes_value` through `bytes_into_c`.
        unsafe { bytes_free_data(&buffer) };
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_free() {
        for content in [&b""[..], b"hello"] {
            let value = bytes_value(content.to_vec());
            assert_eq!(value.kind(), BRIDGE_VALUE_BYTES);
            let raw = value.into_raw().cast::<bridge_bytes_t>();
            // SAFETY: made just above, not freed yet.
            let bytes = unsafe { &*raw };
            assert_eq!(bytes.len, content.len());
            if content.is_empty() {
                assert!(bytes.data.is_null());
            } else {
                // SAFETY: `data` holds `len` bytes.
                let got = unsafe { std::slice::from_raw_parts(bytes.data, bytes.len) };
                assert_eq!(got, content);
            }
            // SAFETY: taken from its value, freed once.
            unsafe { bridge_bytes_free(raw.cast()) };
        }
        // SAFETY: NULL is a no-op.
        unsafe { bridge_bytes_free(std::ptr::null_mut()) };
    }
}
