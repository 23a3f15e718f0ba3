//! Outcomes and errors, with the numbers the C API gives them.

use std::ffi::CStr;
use std::time::Duration;

/// The state of a future, or the result of waiting for one.
///
/// The discriminants are the C API's `BRIDGE_OK` .. `BRIDGE_FAILED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Status {
    /// Finished with success; the future holds its value.
    Ok = 0,
    /// Not finished yet.
    Pending = 1,
    /// A wait ran out; the future is still pending and usable.
    Timeout = 2,
    /// Cancelled, and the work has stopped.
    Cancelled = 3,
    /// The work failed; the future holds a [`Failure`](crate::Failure).
    Failed = 4,
}

impl Status {
    /// The C API's number for this status.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// Whether this is the final state of a future (`Ok`, `Cancelled` or `Failed`).
    pub const fn is_final(self) -> bool {
        matches!(self, Status::Ok | Status::Cancelled | Status::Failed)
    }

    /// Converts a stored number back; anything unknown reads as `Pending`.
    pub(crate) const fn from_code(code: i32) -> Status {
        match code {
            0 => Status::Ok,
            2 => Status::Timeout,
            3 => Status::Cancelled,
            4 => Status::Failed,
            _ => Status::Pending,
        }
    }
}

/// Why a call did nothing.
///
/// The discriminants are the C API's `BRIDGE_E_*` numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Error {
    /// NULL or invalid argument.
    Invalid = -1,
    /// The bridge is shut down, or this process is a fork child of the one that started it.
    NotRunning = -2,
    /// A blocking call was made on a bridge loop thread.
    WouldDeadlock = -3,
    /// `max_pending` reached; nothing was submitted.
    Busy = -4,
    /// An internal panic was caught.
    Panic = -5,
    /// The error code of a future failed by a timeout.
    TimedOut = -6,
    /// The error code of a future whose producer went away without resolving it (a
    /// promise freed unresolved, work whose thread exited before it returned).
    Abandoned = -7,
    /// The error code of an OS error; the failure carries the errno.
    Io = -8,
    /// The error code of a host name that could not be resolved.
    Dns = -9,
    /// The error code of a failed TLS handshake or certificate verification.
    Tls = -10,
    /// The error code of a peer that broke the protocol.
    Protocol = -11,
    /// The error code of an HTTP status >= 400, when asked to fail on it.
    HttpStatus = -12,
    /// The error code of a body or output that passed its configured limit.
    TooLarge = -13,
    /// The handle was closed while the operation waited on it.
    Closed = -14,
}

impl Error {
    /// The C API's number for this error.
    pub const fn code(self) -> i32 {
        self as i32
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(self.code()).to_string_lossy())
    }
}

impl std::error::Error for Error {}

/// A static description of any status or error number (a C string, for the C API).
pub fn describe(code: i32) -> &'static CStr {
    match code {
        0 => c"ok",
        1 => c"pending",
        2 => c"timeout: the wait ran out, the future is still pending",
        3 => c"cancelled",
        4 => c"failed",
        -1 => c"invalid argument",
        -2 => c"bridge not running",
        -3 => c"would deadlock: blocking call on a bridge loop thread",
        -4 => c"busy: max_pending reached",
        -5 => c"internal panic caught at the boundary",
        -6 => c"timed out",
        -7 => c"abandoned: the producer went away without resolving the future",
        -8 => c"I/O error (future_os_error gives the errno)",
        -9 => c"host name could not be resolved",
        -10 => c"TLS handshake or certificate verification failed",
        -11 => c"protocol error: the peer sent something malformed",
        -12 => c"HTTP status 400 or above",
        -13 => c"too large: a configured limit was passed",
        -14 => c"closed: the handle was closed while the call waited on it",
        _ => c"unknown status",
    }
}

/// Reads a C timeout in milliseconds: `-1` is no limit (`None`), other negatives are invalid.
pub fn timeout_from_ms(timeout_ms: i64) -> Result<Option<Duration>, Error> {
    match timeout_ms {
        -1 => Ok(None),
        ms if ms < 0 => Err(Error::Invalid),
        ms => Ok(Some(Duration::from_millis(ms as u64))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for s in [
            Status::Ok,
            Status::Timeout,
            Status::Cancelled,
            Status::Failed,
        ] {
            assert_eq!(Status::from_code(s.code()), s);
        }
        assert_eq!(Status::from_code(1), Status::Pending);
        assert!(Status::Cancelled.is_final() && !Status::Timeout.is_final());
    }

    #[test]
    fn every_code_has_its_own_text() {
        let texts: Vec<_> = (-14..=4).map(describe).collect();
        let mut unique = texts.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), texts.len());
        assert_eq!(describe(99), c"unknown status");
        assert_eq!(Error::Busy.to_string(), "busy: max_pending reached");
    }

    #[test]
    fn timeouts() {
        assert_eq!(timeout_from_ms(-1), Ok(None));
        assert_eq!(timeout_from_ms(-2), Err(Error::Invalid));
        assert_eq!(timeout_from_ms(0), Ok(Some(Duration::ZERO)));
        assert_eq!(timeout_from_ms(1500), Ok(Some(Duration::from_millis(1500))));
    }
}
