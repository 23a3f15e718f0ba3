//! Spawned processes: bridge_process_spawn() and bridge_child_t, a program that runs
//! beside its caller with its standard streams as byte streams.

use crate::ffi::boundary::boundary;
use crate::ffi::bridge::{bridge_t, retain_bridge};
use crate::ffi::embed::spawn_on;
use crate::ffi::future::future_t;
use crate::ffi::handle::{box_borrow, box_into_c, box_take, Castable, OwnedByBox};
use crate::ffi::process::{
    bridge_process_options_t, options_from_c, result_value, BRIDGE_PROCESS_MERGE_STDERR,
    BRIDGE_PROCESS_PIPE_STDERR, BRIDGE_PROCESS_PIPE_STDIN, BRIDGE_PROCESS_PIPE_STDOUT, SPAWN_FLAGS,
};
use crate::ffi::status::{bridge_status, BRIDGE_E_INVALID, BRIDGE_OK};
use crate::ffi::stream::{bridge_stream_t, stream_into_c};
use crate::io::child::{Child, Pipes};
use crate::io::process::ProcessOutput;
use crate::io::stream::Stream;
use crate::runtime::Bridge;
use crate::status::Error;
use crate::sync::Arc;
use crate::sys::child::set_errno;

/// A program started by bridge_process_spawn(), running beside its caller.
///
/// Its piped standard streams are taken as bridge_stream_t handles
/// (bridge_child_take_stdin() and its siblings), its end is waited for with
/// bridge_child_wait(), and bridge_child_free() lets go of it. Every function may be
/// called from any thread; bridge_child_free() must be the last call on a handle.
pub struct bridge_child {
    bridge: Arc<Bridge>,
    child: Child,
}

/// A program started by bridge_process_spawn() (see struct bridge_child).
pub type bridge_child_t = bridge_child;

impl Castable for bridge_child_t {
    type Rust = bridge_child;
    type Ownership = OwnedByBox;
}

/// Starts a program on the bridge `b` and returns at once: its standard streams are
/// read and written while it runs, as byte streams (bridge_stream_t), and its end is
/// waited for with bridge_child_wait().
///
/// The program has started when this returns: the fork and exec happen in the call,
/// on the calling thread. A program that cannot be started is reported here and never
/// later: BRIDGE_E_IO, with `errno` set to the reason (ENOENT, EACCES, ENOEXEC, a bad
/// cwd, EMFILE...).
///
/// Standard streams: each one named by a BRIDGE_PROCESS_PIPE_* flag is a pipe, whose
/// stream the caller takes once with bridge_child_take_stdin(),
/// bridge_child_take_stdout() or bridge_child_take_stderr(). The others are /dev/null,
/// except that `stdin_data` (only without BRIDGE_PROCESS_PIPE_STDIN) is written to the
/// program's input by the library, which then closes it (as bridge_process_run()
/// does), and that BRIDGE_PROCESS_MERGE_STDERR sends standard error wherever standard
/// output goes (into its pipe with BRIDGE_PROCESS_PIPE_STDOUT, in the order the
/// program wrote both). `max_output` is not used: nothing is collected, the reader of
/// a stream takes what it wants. The input pipe is written without SIGPIPE, whatever
/// the application's SIGPIPE action: a write to a program that no longer reads fails
/// with BRIDGE_E_IO (EPIPE). A pipe nobody reads fills up and then blocks the program
/// when it writes, as with any pipe.
///
/// The process group is the unit, as for bridge_process_run(). The program starts in
/// a group of its own; when it exits, whatever it left running in that group is
/// killed with SIGKILL and the program is reaped by the bridge's loop, whether anybody
/// waits or not, so the output streams reach their end (all the program wrote is
/// still read) and no zombie stays. These kill the whole group with SIGKILL too:
/// `timeout_ms` running out (counted from the start; the wait then fails with
/// BRIDGE_E_TIMED_OUT), bridge_child_kill(), cancelling a bridge_child_wait() future,
/// bridge_child_free() of a program still running, and the shutdown of the bridge. A
/// process that left the group (setsid) is out of reach. The library never installs a
/// SIGCHLD handler (see bridge_process_run() for how the exit is learned, and what
/// happens when the application reaps the program itself).
///
/// @param b the bridge: its loop watches the program and runs the streams' I/O.
/// @param opts the options (see struct bridge_process_options), read during the call
///        only: everything is copied.
/// @param out receives the child, which the caller frees with bridge_child_free();
///        written only on BRIDGE_OK.
/// @return BRIDGE_OK; BRIDGE_E_INVALID, with nothing started, for NULL `b`, `opts` or
///         `out`, options that bridge_process_run() refuses (but the
///         BRIDGE_PROCESS_PIPE_* flags), `stdin_data` together with
///         BRIDGE_PROCESS_PIPE_STDIN, or BRIDGE_PROCESS_PIPE_STDERR together with
///         BRIDGE_PROCESS_MERGE_STDERR; BRIDGE_E_IO, with errno set, when the program
///         cannot be started; BRIDGE_E_NOT_RUNNING once the bridge shut down.
/// Any thread, a loop thread included.
#[no_mangle]
pub unsafe extern "C" fn bridge_process_spawn(
    b: *mut bridge_t,
    opts: *const bridge_process_options_t,
    out: *mut *mut bridge_child_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `b` is NULL or a live bridge handle, per the API.
        let (Some(bridge), false) = (unsafe { retain_bridge(b) }, out.is_null()) else {
            return BRIDGE_E_INVALID;
        };
        // SAFETY: `opts` is NULL or points to at least `size` readable bytes of
        // options whose pointers are NULL or valid, per the API.
        let Some(options) = (unsafe { options_from_c(opts, SPAWN_FLAGS) }) else {
            return BRIDGE_E_INVALID;
        };
        // SAFETY: options_from_c read the whole struct; its flags are there.
        let flags = unsafe { (*opts).flags };
        let pipes = Pipes {
            stdin: flags & BRIDGE_PROCESS_PIPE_STDIN != 0,
            stdout: flags & BRIDGE_PROCESS_PIPE_STDOUT != 0,
            stderr: flags & BRIDGE_PROCESS_PIPE_STDERR != 0,
        };
        if (pipes.stdin && !options.stdin.is_empty())
            || (pipes.stderr && flags & BRIDGE_PROCESS_MERGE_STDERR != 0)
        {
            return BRIDGE_E_INVALID;
        }
        let spawned = match bridge.enter() {
            Ok(_inside) => Child::spawn(options, pipes),
            Err(error) => return error.code(),
        };
        match spawned {
            Ok(child) => {
                let handle = box_into_c::<bridge_child_t>(Box::new(bridge_child { bridge, child }));
                // SAFETY: `out` is non-NULL and writable, per the API.
                unsafe { out.write(handle) };
                BRIDGE_OK
            }
            Err(failure) => {
                let (code, errno) = (failure.code(), failure.os_error());
                drop(failure);
                // The last thing done, so that nothing after it changes errno.
                if code == Error::Io.code() {
                    set_errno(errno);
                }
                code
            }
        }
    })
}

/// Takes one of the child's streams out of it, as a C handle.
///
/// # Safety
/// `c` is NULL or a live child handle.
unsafe fn take(
    c: *mut bridge_child_t,
    which: fn(&Child) -> Option<Stream>,
) -> *mut bridge_stream_t {
    // SAFETY: per this function's contract.
    let Some(handle) = (unsafe { box_borrow::<bridge_child_t>(c) }) else {
        return std::ptr::null_mut();
    };
    match which(&handle.child) {
        Some(stream) => stream_into_c(handle.bridge.clone(), stream),
        None => std::ptr::null_mut(),
    }
}

/// Takes the stream that writes the program's standard input (BRIDGE_PROCESS_PIPE_STDIN).
///
/// It has a write side only (a read ends at once with end of stream).
/// bridge_stream_shutdown() (or bridge_stream_close()) closes the pipe: the program
/// reads end of file. Writes fail with BRIDGE_E_IO (EPIPE) once the program no longer
/// reads; no SIGPIPE is raised.
///
/// @param c the child; NULL returns NULL.
/// @return the stream, which the caller closes with bridge_stream_close() (it stays
///         usable after bridge_child_free()); NULL if standard input was not piped, or
///         its stream was taken already.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_child_take_stdin(c: *mut bridge_child_t) -> *mut bridge_stream_t {
    // SAFETY: `c` is NULL or a live child handle, per the API.
    boundary(|| unsafe { take(c, Child::take_stdin) })
}

/// Takes the stream that reads the program's standard output
/// (BRIDGE_PROCESS_PIPE_STDOUT; with BRIDGE_PROCESS_MERGE_STDERR, standard error too).
///
/// It has a read side only (a write fails with BRIDGE_E_CLOSED). Bytes arrive as the
/// program writes them; the stream ends (a read of 0 bytes) once the program and
/// everything of its group have closed the pipe, which happens at the latest when the
/// program has exited, since what it leaves in its group is killed then (a process
/// that left the group, with setsid, may hold it longer). All the program wrote is read
/// before the end.
///
/// @param c the child; NULL returns NULL.
/// @return the stream, which the caller closes with bridge_stream_close() (it stays
///         usable after bridge_child_free()); NULL if standard output was not piped,
///         or its stream was taken already.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_child_take_stdout(c: *mut bridge_child_t) -> *mut bridge_stream_t {
    // SAFETY: `c` is NULL or a live child handle, per the API.
    boundary(|| unsafe { take(c, Child::take_stdout) })
}

/// Takes the stream that reads the program's standard error
/// (BRIDGE_PROCESS_PIPE_STDERR), like bridge_child_take_stdout().
///
/// @param c the child; NULL returns NULL.
/// @return the stream, which the caller closes with bridge_stream_close() (it stays
///         usable after bridge_child_free()); NULL if standard error was not piped,
///         or its stream was taken already.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_child_take_stderr(c: *mut bridge_child_t) -> *mut bridge_stream_t {
    // SAFETY: `c` is NULL or a live child handle, per the API.
    boundary(|| unsafe { take(c, Child::take_stderr) })
}

/// The program's process id, which is also the id of its process group.
///
/// Once the program has been reaped (its wait ended, or it was killed and freed) the
/// id may be given to another process: signal it only while the child is known to run.
///
/// @param c the child; NULL returns -1.
/// @return the pid (> 0); -1 for NULL.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_child_pid(c: *const bridge_child_t) -> i32 {
    boundary(|| {
        // SAFETY: `c` is NULL or a live child handle, per the API.
        match unsafe { box_borrow::<bridge_child_t>(c) } {
            Some(handle) => handle.child.pid(),
            None => -1,
        }
    })
}

/// Waits for the program's end: a future that ends once the program has exited and
/// been reaped.
///
/// The future ends BRIDGE_OK, whatever the exit code or signal, with a
/// bridge_process_result_t (BRIDGE_VALUE_PROCESS) whose `exit_code` and `signal` say
/// how the program ended, and whose `out` and `err` are empty (the output went through
/// the streams). A program killed by bridge_child_kill() or bridge_child_free() ends
/// with signal SIGKILL. The future fails with BRIDGE_E_TIMED_OUT when `timeout_ms` ran
/// out.
///
/// Cancelling the future (future_cancel(), future_set_timeout(), a token, the bridge's
/// shutdown) kills the program's whole group with SIGKILL and reaps the program before
/// the future ends BRIDGE_CANCELLED: once it is final, nothing of the group runs any
/// more. A wait after the end ends at once, the same way.
///
/// @param c the child; NULL is BRIDGE_E_INVALID.
/// @param out receives the future (the caller's one reference; release it with
///        future_release()), written only on BRIDGE_OK; NULL is BRIDGE_E_INVALID.
/// @return BRIDGE_OK; BRIDGE_E_INVALID; BRIDGE_E_BUSY while another wait of this child
///         is pending; BRIDGE_E_NOT_RUNNING once the bridge shut down (which has
///         killed and reaped the program).
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_child_wait(
    c: *mut bridge_child_t,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `c` is NULL or a live child handle, per the API.
        let (Some(handle), false) = (unsafe { box_borrow::<bridge_child_t>(c) }, out.is_null())
        else {
            return BRIDGE_E_INVALID;
        };
        let wait = match handle.child.begin_wait() {
            Ok(wait) => wait,
            Err(error) => return error.code(),
        };
        spawn_on(&handle.bridge, out, move |_task| {
            // Run here, when the future exists: from now on its cancellation kills.
            let wait = wait.run();
            async move {
                let exit = wait.await?;
                Ok(Some(result_value(ProcessOutput {
                    exit,
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                })))
            }
        })
    })
}

/// Sends SIGKILL to the program's whole process group.
///
/// A pending bridge_child_wait() then ends with signal SIGKILL (or with how the
/// program ended, if it ended first). Once the program has been reaped this does
/// nothing: its pid and group id may belong to others by then.
///
/// @param c the child; NULL is BRIDGE_E_INVALID.
/// @return BRIDGE_OK (also when the program had ended already); BRIDGE_E_INVALID.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_child_kill(c: *mut bridge_child_t) -> bridge_status {
    boundary(|| {
        // SAFETY: `c` is NULL or a live child handle, per the API.
        let Some(handle) = (unsafe { box_borrow::<bridge_child_t>(c) }) else {
            return BRIDGE_E_INVALID;
        };
        handle.child.kill();
        BRIDGE_OK
    })
}

/// Frees a child handle; a program still running is killed (SIGKILL to its whole
/// group) first.
///
/// Does not block: the program is reaped on the bridge's loop (at once if the bridge
/// has shut down, which has reaped it already). A pending bridge_child_wait() future
/// ends with signal SIGKILL (or with how the program ended). Streams taken from the
/// child stay usable and are closed by their owner; those not taken are closed here.
///
/// @param c the child; NULL does nothing.
/// Any thread, including a callback of one of the child's futures. Using `c`
/// afterwards is undefined.
#[no_mangle]
pub unsafe extern "C" fn bridge_child_free(c: *mut bridge_child_t) {
    boundary(|| {
        // SAFETY: `c` is NULL or a live child handle that the caller gives up.
        drop(unsafe { box_take::<bridge_child_t>(c) });
    })
}
