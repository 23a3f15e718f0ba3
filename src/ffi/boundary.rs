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

impl PanicValue for u32 {
    fn panic_value() -> u32 {
        0
    }
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

/// A pointer handed to the library with the function that frees it (NULL: none),
/// which runs exactly once, when this is dropped, unless `FreeOnDrop::into_raw`
/// gives the pointer back first. It holds work arguments, values, and callbacks' user
/// data (dropped after the callback's last call, or when the registration is
/// withdrawn, dropped or refused).
pub struct FreeOnDrop {
    ptr: SendPtr,
    free: crate::ffi::job::bridge_free_fn,
}

impl FreeOnDrop {
    pub(crate) fn new(
        ptr: *mut std::ffi::c_void,
        free: crate::ffi::job::bridge_free_fn,
    ) -> FreeOnDrop {
        FreeOnDrop {
            ptr: SendPtr(ptr),
            free,
        }
    }

    /// The pointer, still owned (for a call).
    pub(crate) fn get(&self) -> *mut std::ffi::c_void {
        self.ptr.get()
    }

    /// The pointer, given back: its free function will not run.
    pub(crate) fn into_raw(mut self) -> *mut std::ffi::c_void {
        self.free = None;
        self.ptr.get()
    }
}

impl Drop for FreeOnDrop {
    fn drop(&mut self) {
        if let Some(free) = self.free {
            // SAFETY: the caller gave `free` for this pointer; dropping happens once.
            unsafe { free(self.ptr.get()) }
        }
    }
}

/// Calls `func(a, b, c)` (C work with up to three pointer arguments; a function that
/// takes fewer ignores the rest) from a frame that the unwinder takes for the
/// outermost frame of the thread, so that no unwind starting in C ever reaches a
/// Rust frame:
///
/// - `pthread_exit()` inside the work, or a thread cancellation (CPython ends a
///   thread that way when it calls into an interpreter that has finished): glibc's
///   forced unwind runs the work's own cleanup handlers, finds the end of the stack
///   here and ends the thread as it ends any thread. The Rust frames above are never
///   returned to; letting a forced unwind run through them would be undefined
///   behaviour (frames with destructors), or an abort (`catch_unwind`). The thread's
///   locals are still destroyed, which is how the library learns that the work is
///   gone (`crate::sys::thread_exit`).
/// - A C++ exception thrown out of the work finds no handler before the end of the
///   stack: the C++ runtime calls `std::terminate()`, as for an exception uncaught on
///   any thread ("terminate called after throwing an instance of ...").
///
/// On targets without the trampoline below the work is called directly, and either
/// of these aborts the process.
///
/// # Safety
/// `func` is a C function that may be called with these arguments.
pub unsafe fn call_outermost(
    func: unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_void) -> i32,
    a: *mut c_void,
    b: *mut c_void,
    c: *mut c_void,
) -> i32 {
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    {
        // SAFETY: the trampoline passes its first three arguments on to `func` in the
        // same registers and returns its result; it keeps the stack aligned.
        unsafe { asyncbridge_call_outermost(a, b, c, func) }
    }
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    {
        // SAFETY: per the function's contract.
        unsafe { func(a, b, c) }
    }
}

use std::ffi::c_void;

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
extern "C" {
    /// See `call_outermost`. Nothing unwinds out of it: a forced unwind ends the
    /// thread below it, and an exception terminates the process there.
    fn asyncbridge_call_outermost(
        a: *mut c_void,
        b: *mut c_void,
        c: *mut c_void,
        func: unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_void) -> i32,
    ) -> i32;
}

// The call frame information marks the return address as undefined: to the unwinder
// this frame is the thread's first, and the stack ends here. Hidden, so it is not part
// of the library's exported symbols.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
std::arch::global_asm!(
    ".pushsection .text.asyncbridge_call_outermost,\"ax\",@progbits",
    ".globl asyncbridge_call_outermost",
    ".hidden asyncbridge_call_outermost",
    ".type asyncbridge_call_outermost,@function",
    ".p2align 4",
    "asyncbridge_call_outermost:",
    ".cfi_startproc",
    ".cfi_undefined rip",
    "push rbp",
    ".cfi_adjust_cfa_offset 8",
    "mov rbp, rsp",
    "call rcx",
    "pop rbp",
    ".cfi_adjust_cfa_offset -8",
    "ret",
    ".cfi_endproc",
    ".size asyncbridge_call_outermost, .-asyncbridge_call_outermost",
    ".popsection",
);

#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
std::arch::global_asm!(
    ".pushsection .text.asyncbridge_call_outermost,\"ax\",@progbits",
    ".globl asyncbridge_call_outermost",
    ".hidden asyncbridge_call_outermost",
    ".type asyncbridge_call_outermost,%function",
    ".p2align 2",
    "asyncbridge_call_outermost:",
    ".cfi_startproc",
    ".cfi_undefined x30",
    "stp x29, x30, [sp, #-16]!",
    ".cfi_adjust_cfa_offset 16",
    "mov x29, sp",
    "blr x3",
    "ldp x29, x30, [sp], #16",
    ".cfi_adjust_cfa_offset -16",
    "ret",
    ".cfi_endproc",
    ".size asyncbridge_call_outermost, .-asyncbridge_call_outermost",
    ".popsection",
);
