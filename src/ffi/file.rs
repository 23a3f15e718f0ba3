//! Files: whole-file reads and writes as futures.

use std::ffi::{c_char, c_void, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::ffi::boundary::boundary;
use crate::ffi::bridge::{borrow, bridge_t};
use crate::ffi::embed::{spawn_on, CTask, CValue};
use crate::ffi::future::future_t;
use crate::ffi::status::{bridge_status, BRIDGE_E_INVALID};
use crate::io::fs::{self, WriteMode};

/// bridge_file_write(): append to the file instead of replacing it.
pub const BRIDGE_FILE_APPEND: u32 = 1;
/// bridge_file_write(): write a temporary file beside it, fsync, rename: readers see
/// the old or the new file, never half of one.
pub const BRIDGE_FILE_ATOMIC: u32 = 2;

/// A C path as an owned path; NULL and "" are refused.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
unsafe fn path_arg(path: *const c_char) -> Option<PathBuf> {
    if path.is_null() {
        return None;
    }
    // SAFETY: non-NULL and NUL-terminated per the contract above.
    let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
    (!bytes.is_empty()).then(|| PathBuf::from(OsStr::from_bytes(bytes)))
}

/// The cancellation check and progress report of `task`, for the blocking thread.
fn hooks(
    task: &CTask,
) -> (
    impl Fn() -> bool + Send + 'static,
    impl Fn(u64, u64) + Send + 'static,
) {
    let check = task.cancel_check();
    let progress = task.clone();
    (
        move || check.is_cancelled(),
        move |done, total| progress.set_progress(done, total),
    )
}

/// Reads a whole file, off the calling thread; the future's value is its contents.
///
/// The file is read on the bridge's blocking threads, a MiB at a time. On BRIDGE_OK
/// the value is a bridge_bytes_t* (future_value_type() BRIDGE_VALUE_BYTES; `data`
/// NULL for an empty file), freed with the future, or by bridge_bytes_free() once
/// taken with future_take_value(). future_progress() gives the bytes read so far and
/// the size the file had when opened (0 for files that report none, like pipes and
/// /proc files).
///
/// Failures: BRIDGE_E_IO with the errno in future_os_error() (ENOENT, EACCES,
/// EISDIR for a directory, ...) and a message naming the path ("read /x/y: No such
/// file or directory"); BRIDGE_E_TOO_LARGE when the file holds more than `max`
/// bytes (at most `max` + 1 bytes are ever held in memory, whatever the file's size
/// says). future_cancel() stops the read within a MiB; the future ends
/// BRIDGE_CANCELLED once it has stopped and closed the file. On a FIFO or device,
/// where a system call may block for good (opening a FIFO that has no writer), the
/// cancel takes effect when that call returns; bridge_shutdown() does not wait for
/// it, and resolves the future BRIDGE_CANCELLED at once.
/// @param path the file; copied at the call (the caller may free it on return).
/// @param max the most bytes accepted; 0: no limit.
/// @param out receives the future (one reference, the caller's); written only on
///        BRIDGE_OK.
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `b`, `path` or `out`, or an empty
///         `path` (nothing starts); BRIDGE_E_NOT_RUNNING once shut down;
///         BRIDGE_E_BUSY (max_pending).
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_file_read(
    b: *mut bridge_t,
    path: *const c_char,
    max: u64,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `b` is NULL or a live handle, `path` NULL or a string, per the API.
        let (Some(bridge), Some(path), false) = (
            unsafe { borrow(b) },
            unsafe { path_arg(path) },
            out.is_null(),
        ) else {
            return BRIDGE_E_INVALID;
        };
        spawn_on(bridge, out, move |task: CTask| async move {
            let (cancelled, progress) = hooks(&task);
            let read = fs::read(path, max, cancelled, progress);
            match task.shield(read).await {
                Ok(bytes) => Ok(Some(CValue::bytes(bytes))),
                Err(error) => Err(error.into_failure()),
            }
        })
    })
}

/// Writes `len` bytes to a file, off the calling thread; the future ends BRIDGE_OK
/// without a value once they are written.
///
/// Without flags the file is replaced: truncated, or created with mode 0666 less the
/// umask. BRIDGE_FILE_APPEND writes at its end instead (creating it if missing).
/// BRIDGE_FILE_ATOMIC writes a temporary file in the same directory, fsyncs it,
/// renames it over `path` and fsyncs the directory: readers see the old file or the
/// new one, never half of one. The new file keeps the old one's permission bits; a
/// symbolic link at `path` is replaced, not followed.
///
/// The data is written on the bridge's blocking threads, a MiB at a time;
/// future_progress() gives the bytes written so far, of `len`. future_cancel() stops
/// the write within a MiB and the future ends BRIDGE_CANCELLED once it has stopped:
/// an ATOMIC write has then removed its temporary file and left the old file
/// untouched, as it does when it fails. A replacing write cancelled or failed midway
/// leaves the file truncated with the part written so far; an appending one leaves
/// the bytes appended so far. On a FIFO or device, where write() may block for good,
/// the cancel takes effect when that call returns; bridge_shutdown() does not wait for
/// it, and resolves the future BRIDGE_CANCELLED at once.
///
/// Failures: BRIDGE_E_IO with the errno in future_os_error() (ENOENT, ENOSPC,
/// EISDIR, ...) and a message naming the path ("write /x/y: No such file or
/// directory").
/// @param path the file; copied at the call (the caller may free it on return).
/// @param data the bytes, copied at the call; may be NULL when `len` is 0 (an empty
///        file).
/// @param flags 0, BRIDGE_FILE_APPEND or BRIDGE_FILE_ATOMIC.
/// @param out receives the future (one reference, the caller's); written only on
///        BRIDGE_OK.
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `b`, `path` or `out`, an empty
///         `path`, NULL `data` with `len` > 0, an unknown flag, or APPEND with
///         ATOMIC (nothing starts); BRIDGE_E_NOT_RUNNING once shut down;
///         BRIDGE_E_BUSY (max_pending).
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_file_write(
    b: *mut bridge_t,
    path: *const c_char,
    data: *const c_void,
    len: usize,
    flags: u32,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `b` is NULL or a live handle, `path` NULL or a string, per the API.
        let (Some(bridge), Some(path), false) = (
            unsafe { borrow(b) },
            unsafe { path_arg(path) },
            out.is_null(),
        ) else {
            return BRIDGE_E_INVALID;
        };
        let mode = match flags {
            0 => WriteMode::Replace,
            BRIDGE_FILE_APPEND => WriteMode::Append,
            BRIDGE_FILE_ATOMIC => WriteMode::Atomic,
            _ => return BRIDGE_E_INVALID,
        };
        let data = match (data.is_null(), len) {
            (_, 0) => Vec::new(),
            (true, _) => return BRIDGE_E_INVALID,
            // SAFETY: `data` points to `len` readable bytes per the API.
            (false, len) => unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) }.to_vec(),
        };
        spawn_on(bridge, out, move |task: CTask| async move {
            let (cancelled, progress) = hooks(&task);
            let check = task.cancel_check();
            let write = fs::write(
                path,
                data,
                mode,
                cancelled,
                move || check.commit(),
                progress,
            );
            match task.shield(write).await {
                Ok(()) => Ok(None),
                Err(error) => Err(error.into_failure()),
            }
        })
    })
}
