//! Status codes, flags and the version.

use std::ffi::c_char;

use crate::ffi::boundary::boundary;
use crate::status::describe;

/// A status: an outcome (>= 0) or a call error (< 0). One of the BRIDGE_* values.
pub type bridge_status = i32;

/// Success; the future holds its value.
pub const BRIDGE_OK: bridge_status = 0;
/// Not finished yet (future_status).
pub const BRIDGE_PENDING: bridge_status = 1;
/// The wait ran out; the future is still pending and usable.
pub const BRIDGE_TIMEOUT: bridge_status = 2;
/// Cancelled, and the work has stopped.
pub const BRIDGE_CANCELLED: bridge_status = 3;
/// The work failed: see future_error_code() and future_error_message().
pub const BRIDGE_FAILED: bridge_status = 4;
/// Call error: NULL or invalid argument. The call did nothing.
pub const BRIDGE_E_INVALID: bridge_status = -1;
/// Call error: the bridge is shut down, or this process is a fork child of the one
/// that started it. The call did nothing.
pub const BRIDGE_E_NOT_RUNNING: bridge_status = -2;
/// Call error: a blocking call was made on a bridge loop thread. The call did nothing.
pub const BRIDGE_E_WOULD_DEADLOCK: bridge_status = -3;
/// Call error: max_pending reached; nothing was submitted.
pub const BRIDGE_E_BUSY: bridge_status = -4;
/// Call error: an internal panic was caught at the boundary.
pub const BRIDGE_E_PANIC: bridge_status = -5;
/// The error code of a future failed by future_set_timeout().
pub const BRIDGE_E_TIMED_OUT: bridge_status = -6;
/// The error code of a future whose producer went away without resolving it: a
/// promise freed unresolved (bridge_promise_free()), or work whose thread exited
/// (pthread_exit) before the work returned.
pub const BRIDGE_E_ABANDONED: bridge_status = -7;
/// The error code of an OS error; future_os_error() gives the errno.
pub const BRIDGE_E_IO: bridge_status = -8;
/// The error code of a host name that could not be resolved.
pub const BRIDGE_E_DNS: bridge_status = -9;
/// The error code of a failed TLS handshake or certificate verification.
pub const BRIDGE_E_TLS: bridge_status = -10;
/// The error code of a peer that broke the protocol (malformed HTTP, ...).
pub const BRIDGE_E_PROTOCOL: bridge_status = -11;
/// The error code of an HTTP status >= 400 with BRIDGE_HTTP_FAIL_ON_STATUS.
pub const BRIDGE_E_HTTP_STATUS: bridge_status = -12;
/// The error code of a body or output that passed its configured limit.
pub const BRIDGE_E_TOO_LARGE: bridge_status = -13;
/// Call error, or the error code of an operation: the handle was closed while the call
/// or the operation waited on it (bridge_queue_wait() on a queue that another thread
/// freed; bridge_queue_post() on a queue being freed).
pub const BRIDGE_E_CLOSED: bridge_status = -14;
/// A timeout_ms meaning "no limit".
pub const BRIDGE_FOREVER: i64 = -1;

/// bridge_submit() flag: run the work on the blocking pool; it may block and take long.
pub const BRIDGE_RUN_BLOCKING: u32 = 0;
/// bridge_submit() flag: run the work on a loop thread, in submission order; it must
/// not block.
pub const BRIDGE_RUN_ON_LOOP: u32 = 1;

/// Describes a status or error code in words.
///
/// @param status any value; unknown ones get "unknown status".
/// @return static text owned by the library, never NULL; do not free it.
/// Any thread.
#[no_mangle]
pub extern "C" fn bridge_status_str(status: i32) -> *const c_char {
    boundary(|| describe(status).as_ptr())
}

/// The version of the library in use, e.g. "0.1.0".
///
/// Compare with the BRIDGE_VERSION macro to detect a header/library mismatch.
/// @return static text owned by the library, never NULL.
/// Any thread.
#[no_mangle]
pub extern "C" fn bridge_version() -> *const c_char {
    boundary(|| concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Error, Status};
    use std::ffi::CStr;

    #[test]
    fn constants_match_the_core() {
        assert_eq!(BRIDGE_OK, Status::Ok.code());
        assert_eq!(BRIDGE_PENDING, Status::Pending.code());
        assert_eq!(BRIDGE_TIMEOUT, Status::Timeout.code());
        assert_eq!(BRIDGE_CANCELLED, Status::Cancelled.code());
        assert_eq!(BRIDGE_FAILED, Status::Failed.code());
        assert_eq!(BRIDGE_E_INVALID, Error::Invalid.code());
        assert_eq!(BRIDGE_E_NOT_RUNNING, Error::NotRunning.code());
        assert_eq!(BRIDGE_E_WOULD_DEADLOCK, Error::WouldDeadlock.code());
        assert_eq!(BRIDGE_E_BUSY, Error::Busy.code());
        assert_eq!(BRIDGE_E_PANIC, Error::Panic.code());
        assert_eq!(BRIDGE_E_TIMED_OUT, Error::TimedOut.code());
        assert_eq!(BRIDGE_E_ABANDONED, Error::Abandoned.code());
        assert_eq!(BRIDGE_E_CLOSED, Error::Closed.code());
        for (constant, error) in [
            (BRIDGE_E_IO, Error::Io),
            (BRIDGE_E_DNS, Error::Dns),
            (BRIDGE_E_TLS, Error::Tls),
            (BRIDGE_E_PROTOCOL, Error::Protocol),
            (BRIDGE_E_HTTP_STATUS, Error::HttpStatus),
            (BRIDGE_E_TOO_LARGE, Error::TooLarge),
        ] {
            assert_eq!(constant, error.code());
        }
    }

    #[test]
    fn status_str_matches_the_core_texts() {
        for code in -15..=5 {
            // SAFETY: bridge_status_str returns a static NUL-terminated string.
            let text = unsafe { CStr::from_ptr(bridge_status_str(code)) };
            assert_eq!(text, describe(code));
        }
    }

    #[test]
    fn version_is_the_package_version() {
        // SAFETY: bridge_version returns a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(bridge_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
