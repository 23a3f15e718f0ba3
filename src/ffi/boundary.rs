//! The panic boundary and pointer helpers shared by every `extern "C"` function.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::ffi::status::{bridge_status, BRIDGE_E_PANIC};
use crate::status::{Error, Status};

/// The value a C function returns when a panic was caught inside it.
pub trait PanicValue {
    /// `BRIDGE_E_PANIC`, NULL, false or 0, as fits the return type.
    fn panic_value() -> Self;
}

impl PanicValue for i32 {
    fn panic_value() -> i32 {
        BRIDGE_E_PANIC
    }
}

impl PanicValue for bool {
    fn panic_value() -> bool {
        false
    }
}

impl PanicValue for () {
    fn panic_value() {}
}

impl PanicValue for usize {
    fn panic_value() -> usize {
        0
    }
}

impl<T> PanicValue for *mut T {
    fn panic_value() -> *mut T {
        std::ptr::null_mut()
    }
}

impl<T> PanicValue for *const T {
    fn panic_value() -> *const T {
        std::ptr::null()
    }
}

/// Runs the body of an exported function; a panic becomes `T::panic_value()` and
/// never unwinds into C.
pub fn boundary<T: PanicValue>(body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| T::panic_value())
}

/// A core answer as a C status.
pub fn status_of(result: Result<Status, Error>) -> bridge_status {
    match result {
        Ok(status) => status.code(),
        Err(error) => error.code(),
    }
}

/// A `void *` that C hands over to be passed back later, on any thread.
///
/// The C API documents that such pointers (work arguments, values, user data) cross
/// threads; whether what they point to may is the caller's promise.
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut std::ffi::c_void);

// SAFETY: see the type's documentation: moving the pointer value between threads is
// what the C API promises its callers, who vouch for the pointee.
unsafe impl Send for SendPtr {}
// SAFETY: as above; the library never dereferences it.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `SendPtr`).
    pub fn get(self) -> *mut std::ffi::c_void {
        self.0
    }
}
