//! C futures from async Rust: the C side of the embedding API (`crate::embed`).
//!
//! A Rust crate that depends on asyncbridge exports its own C function returning a
//! `future_t *` like this (the crate's `Cargo.toml`: `crate-type = ["cdylib"]`,
//! `asyncbridge = { version = "0.1" }` with its default `c-api` feature):
//!
//! ```
//! use asyncbridge::ffi::bridge::bridge_t;
//! use asyncbridge::ffi::embed::{self, CTask, CValue};
//! use asyncbridge::ffi::future::future_t;
//! use asyncbridge::ffi::status::bridge_status;
//!
//! /// Doubles `x` on the bridge's loop, after a little wait.
//! #[no_mangle]
//! pub unsafe extern "C" fn mylib_double(
//!     b: *mut bridge_t,
//!     x: u64,
//!     out: *mut *mut future_t,
//! ) -> bridge_status {
//!     // Arguments are checked and copied here, before anything starts.
//!     unsafe {
//!         embed::spawn(b, out, move |task: CTask| async move {
//!             tokio::time::sleep(std::time::Duration::from_millis(1)).await;
//!             task.set_progress(1, 1);
//!             Ok(Some(CValue::bytes((2 * x).to_string().into_bytes())))
//!         })
//!     }
//! }
//! # use asyncbridge::ffi::{bridge::*, future::*, value::*};
//! # unsafe {
//! #     let b = bridge_default();
//! #     let mut f = std::ptr::null_mut();
//! #     assert_eq!(mylib_double(b, 21, &mut f), 0);
//! #     assert_eq!(future_wait(f, -1), 0);
//! #     assert_eq!(future_value_type(f), BRIDGE_VALUE_BYTES);
//! #     let bytes = &*future_value(f).cast::<bridge_bytes_t>();
//! #     assert_eq!(std::slice::from_raw_parts(bytes.data, bytes.len), b"42");
//! #     future_release(f);
//! # }
//! ```
//!
//! # One copy of asyncbridge per process
//!
//! Each copy of the library has its own global bridge, its own record of which
//! threads are loop threads (so `BRIDGE_E_WOULD_DEADLOCK` would not see the other
//! copy's) and its own fork handling; a `future_t` made by one copy must never reach
//! the other. A downstream C library therefore *is* the asyncbridge of the programs
//! that link it: its cdylib exports every `bridge_*`/`future_*` function of this crate
//! (Rust keeps the `#[no_mangle]` functions of its dependencies), its header includes
//! `asyncbridge.h`, and a program links it instead of `libasyncbridge`, never both.
//! Two such libraries in one program must be built into one cdylib (a crate that
//! depends on both). A crate that uses asyncbridge from Rust only and exports nothing
//! to C turns the C API off: `default-features = false` (keeping `http` if wanted).

use std::ffi::c_void;

use crate::embed::Task;
use crate::ffi::boundary::boundary;
use crate::ffi::bridge::{borrow, bridge_t};
use crate::ffi::future::{future_t, into_c_future, CKind};
use crate::ffi::job::bridge_free_fn;
use crate::ffi::status::{bridge_status, BRIDGE_E_INVALID, BRIDGE_OK};
use crate::future::Failure;
use crate::runtime::Bridge;

pub use crate::ffi::future::CValue;

/// The task handle of a block behind a C future (see [`crate::embed::Task`]).
pub type CTask = Task<CKind>;

impl CValue {
    /// A value the caller made, with the function that frees it: type
    /// `BRIDGE_VALUE_USER`, as set by C work.
    pub fn user(ptr: *mut c_void, free: bridge_free_fn) -> CValue {
        CValue::new(ptr, free)
    }

    /// A value of type `type_tag` (a `BRIDGE_VALUE_*` constant, or one of the caller's
    /// own above 255), freed by `free`.
    pub fn with_type(ptr: *mut c_void, free: bridge_free_fn, type_tag: u32) -> CValue {
        CValue::typed(ptr, free, type_tag)
    }

    /// Bytes, as a `bridge_bytes_t *` of type `BRIDGE_VALUE_BYTES`.
    pub fn bytes(bytes: Vec<u8>) -> CValue {
        crate::ffi::value::bytes_value(bytes)
    }
}

/// The bridge behind a C handle, borrowed for the call.
///
/// # Safety
/// `b` is NULL or a live `bridge_t *` of this copy of the library.
pub unsafe fn bridge<'a>(b: *mut bridge_t) -> Option<&'a Bridge> {
    // SAFETY: per the contract above.
    unsafe { borrow(b) }
}

/// Runs the block `make` builds on the bridge `b` (see [`crate::embed::spawn`]) and
/// writes its future to `*out`: the body of an exported C function.
///
/// Returns `BRIDGE_OK`; `BRIDGE_E_INVALID` for a NULL `b` or `out`;
/// `BRIDGE_E_NOT_RUNNING` once shut down; `BRIDGE_E_BUSY` at `max_pending`. `*out`
/// is written only on `BRIDGE_OK`, and `make` is called only then. Panics in `make`
/// or the block are caught (`BRIDGE_E_PANIC` for `make`'s).
///
/// # Safety
/// `b` is NULL or a live `bridge_t *`; `out` is NULL or writable.
pub unsafe fn spawn<M, F>(b: *mut bridge_t, out: *mut *mut future_t, make: M) -> bridge_status
where
    M: FnOnce(CTask) -> F,
    F: std::future::Future<Output = Result<Option<CValue>, Failure>> + Send + 'static,
{
    boundary(|| {
        // SAFETY: per this function's contract.
        let (Some(bridge), false) = (unsafe { borrow(b) }, out.is_null()) else {
            return BRIDGE_E_INVALID;
        };
        spawn_on(bridge, out, make)
    })
}

/// [`spawn`] on a bridge already borrowed (the library's own I/O functions, which
/// check their other arguments first).
pub(crate) fn spawn_on<M, F>(bridge: &Bridge, out: *mut *mut future_t, make: M) -> bridge_status
where
    M: FnOnce(CTask) -> F,
    F: std::future::Future<Output = Result<Option<CValue>, Failure>> + Send + 'static,
{
    match crate::embed::spawn(bridge, make) {
        Ok(future) => {
            // SAFETY: the callers checked `out` is non-NULL; writable per the API.
            unsafe { out.write(into_c_future(future)) };
            BRIDGE_OK
        }
        Err(error) => error.code(),
    }
}
