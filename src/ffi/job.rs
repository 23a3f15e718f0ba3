//! `bridge_job_t`: what C work can do while it runs.

use std::cell::Cell;
use std::ffi::{c_char, c_void, CStr};

use crate::ffi::boundary::{boundary, call_outermost, FreeOnDrop};
use crate::ffi::future::{future_t, CKind, CValue};
use crate::ffi::handle::{arc_as_c, ref_as_c, ref_borrow, Borrowed, Castable};
use crate::future::job::Job;
use crate::future::Future;

/// The context passed to running work: set the value, fail, check for cancellation,
/// report progress.
///
/// Borrowed: valid only during the work's call. The work may pass it to threads of
/// its own for that long.
pub struct bridge_job {
    _private: [u8; 0],
}

/// The context passed to running work (see struct bridge_job).
pub type bridge_job_t = bridge_job;

impl Castable for bridge_job_t {
    type Rust = Job<'static, CKind>;
    type Ownership = Borrowed;
}

/// Frees a pointer handed to the library (a work argument or a value).
pub type bridge_free_fn = Option<unsafe extern "C" fn(ptr: *mut c_void)>;

/// Work run by the bridge. Returns 0 for success, else a (positive) error code.
///
/// Must not longjmp out of its call. What happens when work does not return:
/// - pthread_exit() or a thread cancellation inside BRIDGE_RUN_BLOCKING work (CPython
///   does this to a thread calling into an interpreter that is finalizing): the
///   thread ends, running the work's cleanup handlers; the future ends BRIDGE_FAILED
///   with BRIDGE_E_ABANDONED (or BRIDGE_CANCELLED, if cancellation was requested), on
///   that thread, after `arg_free` and the value's free function have run; its done
///   callbacks run there too. The pool starts another thread, and the bridge keeps
///   working. Nothing on the stack above the work returns: the work must not have
///   handed out pointers to its own stack.
/// - The same inside BRIDGE_RUN_ON_LOOP work ends the loop thread, which the bridge
///   cannot do without: the process aborts with a message saying so.
/// - A C++ exception thrown out of the work is fatal: no frame can catch it, and the
///   C++ runtime calls std::terminate(), which names it. Catch exceptions in the work
///   and return a failure instead (bridge_job_fail()).
pub type bridge_work_fn =
    Option<unsafe extern "C" fn(job: *mut bridge_job_t, arg: *mut c_void) -> i32>;

/// Work chained after a future: runs with the finished `prev` borrowed for the call.
/// It is run like bridge_work_fn (the same rules for pthread_exit and exceptions).
pub type bridge_then_fn = Option<
    unsafe extern "C" fn(job: *mut bridge_job_t, prev: *mut future_t, arg: *mut c_void) -> i32,
>;

/// The function of submitted C work.
enum WorkFn {
    Plain(unsafe extern "C" fn(job: *mut bridge_job_t, arg: *mut c_void) -> i32),
    /// Chained by future_then: the future it follows is held until the work is gone.
    /// Boxed, so that plain work (every submission) takes less room in its future.
    Then(Box<ThenFn>),
}

/// The function of chained work and the future it follows.
type ThenFn = (
    unsafe extern "C" fn(*mut bridge_job_t, *mut future_t, *mut c_void) -> i32,
    Future<CKind>,
);

/// Submitted C work: the function, its argument and the argument's free function.
///
/// Dropping it frees the argument, so it is freed exactly once whether the work ran
/// or was dropped unrun.
pub struct CWork {
    /// Before `func`: the argument is freed before the future it follows is released.
    arg: FreeOnDrop,
    func: WorkFn,
}

impl CWork {
    pub(crate) fn new(
        func: unsafe extern "C" fn(*mut bridge_job_t, *mut c_void) -> i32,
        arg: *mut c_void,
        arg_free: bridge_free_fn,
    ) -> CWork {
        CWork {
            arg: FreeOnDrop::new(arg, arg_free),
            func: WorkFn::Plain(func),
        }
    }

    /// Work that runs after `prev`, which it receives borrowed.
    pub(crate) fn then(
        func: unsafe extern "C" fn(*mut bridge_job_t, *mut future_t, *mut c_void) -> i32,
        prev: Future<CKind>,
        arg: *mut c_void,
        arg_free: bridge_free_fn,
    ) -> CWork {
        CWork {
            arg: FreeOnDrop::new(arg, arg_free),
            func: WorkFn::Then(Box::new((func, prev))),
        }
    }

    /// Forgets the work without freeing its argument (a refused submission).
    pub(crate) fn disarm(self) {
        let _ = self.arg.into_raw();
    }

    /// Calls the work with `job` and then frees its argument; returns the work's code.
    pub(crate) fn run(self, job: &Job<'_, CKind>) -> i32 {
        // SAFETY: only the lifetime is widened: the pointer is used during this call,
        // which the job outlives.
        let job_static =
            unsafe { std::mem::transmute::<&Job<'_, CKind>, &Job<'static, CKind>>(job) };
        let job_ptr = ref_as_c::<bridge_job_t>(job_static).cast::<c_void>();
        let (func, second, third) = match &self.func {
            WorkFn::Plain(func) => (
                // SAFETY: a two-argument C function called with a third argument it
                // ignores: both calling conventions `call_outermost` has a trampoline
                // for pass arguments in registers and leave them to the caller.
                unsafe {
                    std::mem::transmute::<
                        unsafe extern "C" fn(*mut bridge_job_t, *mut c_void) -> i32,
                        unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_void) -> i32,
                    >(*func)
                },
                self.arg.get(),
                std::ptr::null_mut(),
            ),
            WorkFn::Then(then) => (
                // SAFETY: the same function type with its pointer arguments untyped.
                unsafe {
                    std::mem::transmute::<
                        unsafe extern "C" fn(*mut bridge_job_t, *mut future_t, *mut c_void) -> i32,
                        unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_void) -> i32,
                    >(then.0)
                },
                arc_as_c::<future_t>(then.1.as_arc()).cast::<c_void>(),
                self.arg.get(),
            ),
        };
        if job.on_loop() {
            // A loop thread that ends inside work takes the process with it (see
            // `future::arm_running_work`): nothing would be left to free.
            // SAFETY: as below; the work stays on the stack for the call.
            let code = unsafe { call_outermost(func, job_ptr, second, third) };
            drop(self);
            return code;
        }
        // The work waits in this thread's slot while it runs, not on the stack: should
        // the thread end inside it (see `call_outermost`), destroying the slot drops
        // it, which frees its argument and releases the future it follows, exactly
        // once as always. (Were this thread's locals already gone, the closure would
        // not run and the work would stay here.)
        let mut work = Some(self);
        let previous = RUNNING
            .try_with(|slot| slot.replace(work.take()))
            .ok()
            .flatten();
        // SAFETY: `func` is the C work given with this argument (and `prev`, held by
        // the work in its slot); the job pointer stays valid for the call.
        let code = unsafe { call_outermost(func, job_ptr, second, third) };
        let work = work.or_else(|| {
            RUNNING
                .try_with(|slot| slot.replace(previous))
                .ok()
                .flatten()
        });
        drop(work);
        code
    }
}

thread_local! {
    /// The C work this thread is running.
    static RUNNING: Cell<Option<CWork>> = const { Cell::new(None) };
}

/// Borrows the job behind a C pointer.
///
/// # Safety
/// `job` is NULL or the pointer passed to a work function that is still running.
unsafe fn borrow<'a>(job: *const bridge_job_t) -> Option<&'a Job<'a, CKind>> {
    // SAFETY: per the contract above; the job lives as long as the work's call.
    unsafe { ref_borrow::<bridge_job_t>(job) }
}

/// Sets the value the future gets if the work succeeds.
///
/// Ownership: `value` passes to the library. `value_free(value)` (if not NULL) runs
/// exactly once: at once if the future does not end BRIDGE_OK (or if another value is
/// set later); otherwise when the last reference to the future is released (inside
/// that future_release(), or when the last running done callback returns). A value
/// taken with future_take_value() is never freed by the library.
///
/// @param job the running work's job; NULL does nothing (and frees nothing).
/// Any thread, during the work's call.
#[no_mangle]
pub unsafe extern "C" fn bridge_job_set_value(
    job: *mut bridge_job_t,
    value: *mut c_void,
    value_free: bridge_free_fn,
) {
    boundary(|| {
        // SAFETY: `job` is NULL or the running work's job per the API.
        if let Some(job) = unsafe { borrow(job) } {
            job.set_value(CValue::new(value, value_free));
        }
    })
}

/// Records the message of the failure the work is about to return.
///
/// Use as `return bridge_job_fail(job, code, "message");`. The future ends
/// BRIDGE_FAILED with the code the work returns and this message (the last one given).
/// If the work returns 0 the message is ignored.
///
/// @param job the running work's job; NULL records nothing.
/// @param code returned unchanged.
/// @param message copied; NULL means a default message naming the code.
/// @return `code`.
/// Any thread, during the work's call.
#[no_mangle]
pub unsafe extern "C" fn bridge_job_fail(
    job: *mut bridge_job_t,
    code: i32,
    message: *const c_char,
) -> i32 {
    boundary(|| {
        // SAFETY: `job` is NULL or the running work's job per the API.
        if let (Some(job), false) = (unsafe { borrow(job) }, message.is_null()) {
            // SAFETY: a non-NULL message is a NUL-terminated string per the API.
            let message = unsafe { CStr::from_ptr(message) };
            job.fail(code, message.to_bytes());
        }
        code
    })
}

/// Whether the work should stop: its future was cancelled (future_cancel(),
/// bridge_job_cancel()) or its bridge is shutting down past the grace period.
///
/// Long-running work should poll this and return early; the future ends
/// BRIDGE_CANCELLED when the work returns, whatever it returns.
/// @return false for NULL.
/// Any thread, during the work's call.
#[no_mangle]
pub unsafe extern "C" fn bridge_job_is_cancelled(job: *const bridge_job_t) -> bool {
    // SAFETY: `job` is NULL or the running work's job per the API.
    boundary(|| unsafe { borrow(job) }.is_some_and(Job::is_cancelled))
}

/// Cancels the work's own future: it ends BRIDGE_CANCELLED when the work returns
/// (any value it set is freed then).
///
/// @param job the running work's job; NULL does nothing.
/// Any thread, during the work's call.
#[no_mangle]
pub unsafe extern "C" fn bridge_job_cancel(job: *mut bridge_job_t) {
    boundary(|| {
        // SAFETY: `job` is NULL or the running work's job per the API.
        if let Some(job) = unsafe { borrow(job) } {
            job.cancel();
        }
    })
}

/// Reports progress, readable with future_progress() from any thread.
///
/// @param job the running work's job; NULL does nothing.
/// @param done units done so far.
/// @param total units in all (0 if unknown).
/// Any thread, during the work's call.
#[no_mangle]
pub unsafe extern "C" fn bridge_job_set_progress(job: *mut bridge_job_t, done: u64, total: u64) {
    boundary(|| {
        // SAFETY: `job` is NULL or the running work's job per the API.
        if let Some(job) = unsafe { borrow(job) } {
            job.set_progress(done, total);
        }
    })
}
