//! Subprocesses: bridge_process_run(), its options and its result. (Programs spawned
//! with streaming pipes, which take the same options, are in `child`.)

use std::ffi::{c_char, c_void, CStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::time::Duration;

use crate::ffi::boundary::boundary;
use crate::ffi::bridge::{borrow, bridge_t};
use crate::ffi::embed::{spawn_on, CTask, CValue};
use crate::ffi::future::future_t;
use crate::ffi::handle::{box_into_c, box_take, sized_options, Castable, OwnedByBox};
use crate::ffi::status::{bridge_status, BRIDGE_E_INVALID};
use crate::ffi::value::{bridge_bytes_t, bytes_free_data, bytes_into_c, BRIDGE_VALUE_PROCESS};
use crate::io::process::{run, ProcessOptions, ProcessOutput};

/// bridge_process_options_t.flags: standard error goes into the `out` bytes, in the
/// order the program wrote both; `err` stays empty. With bridge_process_spawn():
/// standard error goes wherever standard output goes (into the stdout pipe under
/// BRIDGE_PROCESS_PIPE_STDOUT, else /dev/null).
pub const BRIDGE_PROCESS_MERGE_STDERR: u32 = 1;

/// bridge_process_options_t.flags, bridge_process_spawn() only: the program's standard
/// input is a pipe, written through the stream of bridge_child_take_stdin(). Not
/// together with stdin_data.
pub const BRIDGE_PROCESS_PIPE_STDIN: u32 = 2;

/// bridge_process_options_t.flags, bridge_process_spawn() only: the program's standard
/// output is a pipe, read through the stream of bridge_child_take_stdout().
pub const BRIDGE_PROCESS_PIPE_STDOUT: u32 = 4;

/// bridge_process_options_t.flags, bridge_process_spawn() only: the program's standard
/// error is a pipe of its own, read through the stream of bridge_child_take_stderr().
/// Not together with BRIDGE_PROCESS_MERGE_STDERR.
pub const BRIDGE_PROCESS_PIPE_STDERR: u32 = 8;

/// The flags bridge_process_run() knows; any other bit is BRIDGE_E_INVALID there.
const RUN_FLAGS: u32 = BRIDGE_PROCESS_MERGE_STDERR;

/// The flags bridge_process_spawn() knows; any other bit is BRIDGE_E_INVALID there.
pub(crate) const SPAWN_FLAGS: u32 = BRIDGE_PROCESS_MERGE_STDERR
    | BRIDGE_PROCESS_PIPE_STDIN
    | BRIDGE_PROCESS_PIPE_STDOUT
    | BRIDGE_PROCESS_PIPE_STDERR;

/// What bridge_process_run() and bridge_process_spawn() run. Initialise it with
/// bridge_process_options_init(), then set the fields you need; every string and
/// buffer is copied by the call, so all of it may be freed once that returns.
#[repr(C)]
pub struct bridge_process_options {
    /// sizeof(bridge_process_options_t), set by bridge_process_options_init(). A
    /// smaller size is BRIDGE_E_INVALID. A larger one (a program built against a later
    /// header) is accepted when every byte past this struct is 0, i.e. when it asks
    /// for nothing this version does not know; up to 4096.
    pub size: u32,
    /// The program: a path, or a name searched in PATH when it has no '/' (the PATH
    /// of `env` when it sets one, else this process's). A relative path with a '/' is
    /// found from `cwd` when that is set. Required, not empty.
    pub program: *const c_char,
    /// The arguments after the program's name (argv[1], ...), NULL-terminated; NULL:
    /// none. The program's argv[0] is `program`.
    pub argv: *const *const c_char,
    /// NULL: the program inherits this process's environment. Else its whole
    /// environment: "NAME=value" strings, NULL-terminated (an empty list is an empty
    /// environment); an entry without '=', or with an empty NAME, is BRIDGE_E_INVALID.
    pub env: *const *const c_char,
    /// The program's working directory; NULL: this process's. Empty is
    /// BRIDGE_E_INVALID.
    pub cwd: *const c_char,
    /// Written to the program's standard input, which is then closed (the program
    /// sees end of file); what it does not read is dropped, without SIGPIPE. With
    /// stdin_len 0 the program reads /dev/null. NULL with stdin_len > 0 is
    /// BRIDGE_E_INVALID; so is data together with BRIDGE_PROCESS_PIPE_STDIN.
    pub stdin_data: *const c_void,
    /// Bytes at stdin_data.
    pub stdin_len: usize,
    /// 0: no limit. Else after this many milliseconds (from the start) the program's
    /// process group is killed (SIGKILL) and reaped, and the future (of
    /// bridge_child_wait() for a spawned program) fails with BRIDGE_E_TIMED_OUT.
    pub timeout_ms: u64,
    /// The most bytes kept of each output stream; 0: 64 MiB. One more kills the
    /// group, reaps it, and fails the future with BRIDGE_E_TOO_LARGE (the message names
    /// the stream). At most this many bytes plus one are ever held per stream.
    /// Not used by bridge_process_spawn(), which collects nothing.
    pub max_output: u64,
    /// BRIDGE_PROCESS_* bits; any other bit is BRIDGE_E_INVALID, and so are the
    /// BRIDGE_PROCESS_PIPE_* bits for bridge_process_run().
    pub flags: u32,
}

/// What bridge_process_run() and bridge_process_spawn() run (see struct
/// bridge_process_options).
pub type bridge_process_options_t = bridge_process_options;

/// The value of a bridge_process_run() future that ended BRIDGE_OK (type
/// BRIDGE_VALUE_PROCESS): how the program ended and all of its output. Also the value
/// of a bridge_child_wait() future, with `out` and `err` empty (the output went
/// through the child's streams).
///
/// Made by the library; as a future's value it is freed with the future. Taken with
/// future_take_value(), the caller frees it with bridge_process_result_free(), which
/// frees `out` and `err` with it.
#[repr(C)]
pub struct bridge_process_result {
    /// The exit code; -1 when a signal ended the program, and when the application
    /// reaped the program itself before the library could (its own SIGCHLD handler
    /// waiting for any child, or SIGCHLD set to SIG_IGN): the status is lost then.
    pub exit_code: i32,
    /// The signal that ended the program; 0 when none did (or the status is lost).
    pub signal: i32,
    /// All of standard output (with standard error too under
    /// BRIDGE_PROCESS_MERGE_STDERR); `data` is NULL when `len` is 0.
    pub out: bridge_bytes_t,
    /// All of standard error (empty under BRIDGE_PROCESS_MERGE_STDERR); `data` is NULL
    /// when `len` is 0.
    pub err: bridge_bytes_t,
}

/// The value of a bridge_process_run() or bridge_child_wait() future (see struct
/// bridge_process_result).
pub type bridge_process_result_t = bridge_process_result;

/// Boxed by `result_value`; its bytes are boxed slices (`bytes_into_c`).
impl Castable for bridge_process_result_t {
    type Rust = bridge_process_result;
    type Ownership = OwnedByBox;
}

/// Fills `opts` with the defaults: size = sizeof(bridge_process_options_t), every
/// other field 0 or NULL (no program yet, no arguments, the inherited environment and
/// directory, no input, no timeout, 64 MiB per stream, no flags).
///
/// @param opts the options to fill; NULL does nothing.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_process_options_init(opts: *mut bridge_process_options_t) {
    boundary(|| {
        if opts.is_null() {
            return;
        }
        let defaults = bridge_process_options {
            size: std::mem::size_of::<bridge_process_options_t>() as u32,
            program: std::ptr::null(),
            argv: std::ptr::null(),
            env: std::ptr::null(),
            cwd: std::ptr::null(),
            stdin_data: std::ptr::null(),
            stdin_len: 0,
            timeout_ms: 0,
            max_output: 0,
            flags: 0,
        };
        // SAFETY: `opts` is non-NULL and, per the API, points to a writable
        // bridge_process_options_t; `write` does not read the old value.
        unsafe { opts.write(defaults) };
    })
}

/// Runs a program on the bridge `b`: its own process group, its output collected,
/// its input fed; the future ends when the program has exited and been reaped.
///
/// The future ends BRIDGE_OK whatever the exit code or signal (a result is a result),
/// with a bridge_process_result_t (BRIDGE_VALUE_PROCESS). It fails only with:
/// - BRIDGE_E_IO when the program could not be started; future_os_error() gives the
///   errno (ENOENT, EACCES, ENOEXEC, a bad cwd, ...) and the message names the program
///   ("start ./tool: No such file or directory");
/// - BRIDGE_E_TIMED_OUT when `timeout_ms` ran out;
/// - BRIDGE_E_TOO_LARGE when an output stream passed `max_output`.
///
/// Progress (future_progress(), progress callbacks): the bytes of output read so far,
/// of a total of 0 (unknown).
///
/// The process group is the unit of work. When the program exits, whatever it left
/// running in its group (`sh -c 'server &'`) is killed with SIGKILL, so the future
/// never waits for a background process that holds the output open, and leaves none
/// behind; output written after the program's exit by those processes is not waited
/// for. future_cancel(), a timeout (this one or future_set_timeout()) and shutdown
/// kill the whole group with SIGKILL and reap the program before the future ends:
/// once it is final, no process of the group runs any more (killed grandchildren are
/// reaped by init or a subreaper). A process that left the group (setsid) is out of
/// reach.
///
/// The library never installs a SIGCHLD handler: the exit is learned through a pidfd
/// (Linux 5.3+; without one, by looking every 10 ms) and the program is reaped with
/// waitpid() on its own pid. An application's SIGCHLD handler keeps working; if it
/// reaps the program first (waitpid(-1, ...)), or SIGCHLD is set to SIG_IGN, the exit
/// status is lost and the result says exit_code -1, signal 0. Input is written
/// without SIGPIPE, whatever the application's SIGPIPE action.
///
/// @param b the bridge; its loop starts the program (fork and exec) and does the I/O.
/// @param opts the options, read during the call only: every string and buffer is
///        copied, so all of it may be freed once this returns.
/// @param out receives the future (one reference, the caller's; release it with
///        future_release()); written only on BRIDGE_OK.
/// @return BRIDGE_OK; BRIDGE_E_INVALID, with nothing started, for NULL `b`, `opts` or
///         `out`, a `size` that is not accepted (see struct bridge_process_options), a
///         NULL or empty `program`, an `env` entry without '=' or with an empty name, an
///         empty `cwd`, NULL `stdin_data` with `stdin_len` > 0, or a flag that is
///         unknown or BRIDGE_PROCESS_PIPE_* (bridge_process_spawn() only);
///         BRIDGE_E_NOT_RUNNING once shut down; BRIDGE_E_BUSY (max_pending).
/// Any thread, a loop thread included (the call only copies and submits).
#[no_mangle]
pub unsafe extern "C" fn bridge_process_run(
    b: *mut bridge_t,
    opts: *const bridge_process_options_t,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `b` is NULL or a live handle per the API.
        let (Some(bridge), false) = (unsafe { borrow(b) }, out.is_null()) else {
            return BRIDGE_E_INVALID;
        };
        // SAFETY: `opts` is NULL or points to at least `size` readable bytes of
        // options whose pointers are NULL or valid, per the API.
        let Some(options) = (unsafe { options_from_c(opts, RUN_FLAGS) }) else {
            return BRIDGE_E_INVALID;
        };
        spawn_on(bridge, out, move |task: CTask| async move {
            let output = run(options, |read| task.set_progress(read, 0)).await?;
            Ok(Some(result_value(output)))
        })
    })
}

/// Copies C options; `None` if they are invalid, a flag outside `known_flags`
/// included. The flags are in the options as far as they say how to run
/// (`merge_stderr`); the caller reads the rest from the struct itself.
///
/// # Safety
/// `opts` is NULL or points to at least `(*opts).size` readable bytes of a
/// bridge_process_options_t whose pointers are NULL or valid for what the fields say.
pub(crate) unsafe fn options_from_c(
    opts: *const bridge_process_options_t,
    known_flags: u32,
) -> Option<ProcessOptions> {
    // SAFETY: per this function's contract.
    let c = unsafe { sized_options(opts) }?;
    if c.flags & !known_flags != 0 || (c.stdin_data.is_null() && c.stdin_len > 0) {
        return None;
    }
    // SAFETY: a non-NULL `program` is NUL-terminated, per the API.
    let program = unsafe { string(c.program) }?;
    // SAFETY: a non-NULL `argv` is a NULL-terminated list of strings, per the API.
    let args = unsafe { strings(c.argv) };
    let env = if c.env.is_null() {
        None
    } else {
        // SAFETY: `env` is a NULL-terminated list of strings, per the API.
        let entries = unsafe { strings(c.env) };
        let pairs = entries.into_iter().map(|entry| {
            let mut entry = entry.into_vec();
            let equals = entry.iter().position(|&byte| byte == b'=')?;
            let value = entry.split_off(equals + 1);
            entry.pop();
            Some((OsString::from_vec(entry), OsString::from_vec(value)))
        });
        Some(pairs.collect::<Option<Vec<_>>>()?)
    };
    // SAFETY: a non-NULL `cwd` is NUL-terminated, per the API.
    let cwd = unsafe { string(c.cwd) }.map(Into::into);
    let stdin = if c.stdin_len == 0 {
        Vec::new()
    } else {
        // SAFETY: `stdin_data` is non-NULL (checked) and holds `stdin_len` bytes.
        unsafe { std::slice::from_raw_parts(c.stdin_data.cast::<u8>(), c.stdin_len) }.to_vec()
    };
    let options = ProcessOptions {
        program,
        args,
        env,
        cwd,
        stdin,
        timeout: (c.timeout_ms != 0).then(|| Duration::from_millis(c.timeout_ms)),
        max_output: c.max_output,
        merge_stderr: c.flags & BRIDGE_PROCESS_MERGE_STDERR != 0,
    };
    options.check().ok()?;
    Some(options)
}

/// A copy of a C string; `None` for NULL.
///
/// # Safety
/// `s` is NULL or NUL-terminated.
unsafe fn string(s: *const c_char) -> Option<OsString> {
    if s.is_null() {
        return None;
    }
    // SAFETY: per the contract above.
    Some(OsString::from_vec(
        unsafe { CStr::from_ptr(s) }.to_bytes().to_vec(),
    ))
}

/// Copies of a NULL-terminated list of C strings; empty for NULL.
///
/// # Safety
/// `list` is NULL or a NULL-terminated array of NUL-terminated strings.
unsafe fn strings(list: *const *const c_char) -> Vec<OsString> {
    let mut copies = Vec::new();
    if list.is_null() {
        return copies;
    }
    for at in 0.. {
        // SAFETY: the array goes on up to and including its NULL entry.
        let entry = unsafe { list.add(at).read() };
        // SAFETY: each entry before the NULL is a NUL-terminated string.
        match unsafe { string(entry) } {
            Some(copy) => copies.push(copy),
            None => break,
        }
    }
    copies
}

/// A finished run as a future value of type BRIDGE_VALUE_PROCESS.
pub(crate) fn result_value(output: ProcessOutput) -> CValue {
    let result = bridge_process_result {
        exit_code: output.exit.code(),
        signal: output.exit.signal(),
        out: bytes_into_c(output.stdout),
        err: bytes_into_c(output.stderr),
    };
    let result = box_into_c::<bridge_process_result_t>(Box::new(result));
    CValue::with_type(
        result.cast(),
        Some(bridge_process_result_free),
        BRIDGE_VALUE_PROCESS,
    )
}

/// Frees a bridge_process_result_t made by the library, its `out` and `err` bytes
/// with it (a bridge_free_fn).
///
/// @param r a bridge_process_result_t* taken from a future with future_take_value();
///        NULL does nothing. Using it afterwards is undefined.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_process_result_free(r: *mut c_void) {
    boundary(|| {
        // SAFETY: `r` is NULL or a bridge_process_result_t made by `result_value` and
        // given up by the caller.
        let Some(result) = (unsafe { box_take::<bridge_process_result_t>(r.cast()) }) else {
            return;
        };
        // SAFETY: both were made by `bytes_into_c` and belong to this result alone.
        unsafe {
            bytes_free_data(&result.out);
            bytes_free_data(&result.err);
        }
    })
}
