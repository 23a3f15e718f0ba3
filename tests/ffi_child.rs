//! The C API of spawned processes (bridge_process_spawn, bridge_child_*), called from
//! Rust through its C signatures: streams read and written while the program runs,
//! its end, and nothing of it left behind.

use std::ffi::{c_char, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use asyncbridge::ffi::bridge::*;
use asyncbridge::ffi::child::*;
use asyncbridge::ffi::future::*;
use asyncbridge::ffi::process::*;
use asyncbridge::ffi::status::*;
use asyncbridge::ffi::stream::*;
use asyncbridge::ffi::value::*;

/// Tests that count this process's descriptors or children take it for writing; the
/// others, which run beside each other, for reading.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

/// Far above anything here: a future that takes this long is hung.
const WATCHDOG_MS: i64 = 60_000;

const PIPE_IN: u32 = BRIDGE_PROCESS_PIPE_STDIN;
const PIPE_OUT: u32 = BRIDGE_PROCESS_PIPE_STDOUT;
const PIPE_ERR: u32 = BRIDGE_PROCESS_PIPE_STDERR;

fn start() -> *mut bridge_t {
    let mut b = null_mut();
    assert_eq!(unsafe { bridge_start(null(), &mut b) }, BRIDGE_OK);
    b
}

/// What to spawn, in Rust terms.
#[derive(Clone, Default)]
struct Spec {
    program: String,
    args: Vec<String>,
    cwd: Option<String>,
    stdin: Vec<u8>,
    timeout_ms: u64,
    flags: u32,
}

fn sh(script: &str, flags: u32) -> Spec {
    Spec {
        program: "sh".to_owned(),
        args: vec!["-c".to_owned(), script.to_owned()],
        flags,
        ..Spec::default()
    }
}

impl Spec {
    /// bridge_process_spawn() with these options (every C string dropped right
    /// after); the errno it left on failure.
    fn try_spawn(&self, b: *mut bridge_t) -> Result<*mut bridge_child_t, (bridge_status, i32)> {
        let program = CString::new(self.program.as_str()).unwrap();
        let args: Vec<CString> = self
            .args
            .iter()
            .map(|a| CString::new(a.as_str()).unwrap())
            .collect();
        let argv: Vec<*const c_char> = args
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(null()))
            .collect();
        let cwd = self.cwd.as_ref().map(|c| CString::new(c.as_str()).unwrap());
        let mut opts = unsafe { std::mem::zeroed::<bridge_process_options_t>() };
        unsafe { bridge_process_options_init(&mut opts) };
        opts.program = program.as_ptr();
        opts.argv = argv.as_ptr();
        opts.cwd = cwd.as_ref().map_or(null(), |c| c.as_ptr());
        opts.stdin_data = self.stdin.as_ptr().cast();
        opts.stdin_len = self.stdin.len();
        opts.timeout_ms = self.timeout_ms;
        opts.flags = self.flags;
        let mut c = null_mut();
        let status = unsafe { bridge_process_spawn(b, &opts, &mut c) };
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        if status == BRIDGE_OK {
            assert!(!c.is_null());
            Ok(c)
        } else {
            assert!(c.is_null(), "out written on {status}");
            Err((status, errno))
        }
    }

    fn spawn(&self, b: *mut bridge_t) -> *mut bridge_child_t {
        self.try_spawn(b).expect("bridge_process_spawn")
    }
}

fn message(f: *mut future_t) -> String {
    let m = unsafe { future_error_message(f) };
    if m.is_null() {
        return String::new();
    }
    unsafe { CStr::from_ptr(m) }.to_string_lossy().into_owned()
}

/// Waits (watchdog) for a future; its final status.
fn finish(f: *mut future_t) -> bridge_status {
    let status = unsafe { future_wait(f, WATCHDOG_MS) };
    assert_ne!(status, BRIDGE_TIMEOUT, "watchdog: hung");
    status
}

/// One read of at most 64 KiB: what came (empty at the end of the stream).
fn read(s: *mut bridge_stream_t) -> Vec<u8> {
    let mut f = null_mut();
    assert_eq!(unsafe { bridge_stream_read(s, 0, &mut f) }, BRIDGE_OK);
    assert_eq!(finish(f), BRIDGE_OK, "read failed: {}", message(f));
    unsafe {
        assert_eq!(future_value_type(f), BRIDGE_VALUE_BYTES);
        let bytes = &*future_value(f).cast::<bridge_bytes_t>();
        let got = if bytes.len == 0 {
            Vec::new()
        } else {
            std::slice::from_raw_parts(bytes.data, bytes.len).to_vec()
        };
        future_release(f);
        got
    }
}

fn read_to_end(s: *mut bridge_stream_t) -> Vec<u8> {
    let mut all = Vec::new();
    loop {
        let chunk = read(s);
        if chunk.is_empty() {
            return all;
        }
        all.extend(chunk);
    }
}

/// The next whole line (with its newline); what came after it stays in `buffered`.
fn read_line(s: *mut bridge_stream_t, buffered: &mut Vec<u8>) -> Vec<u8> {
    loop {
        if let Some(at) = buffered.iter().position(|&b| b == b'\n') {
            return buffered.drain(..=at).collect();
        }
        let chunk = read(s);
        assert!(!chunk.is_empty(), "the stream ended before a line");
        buffered.extend(chunk);
    }
}

/// Writes all of `data` (or fails): the future's final status.
fn write(s: *mut bridge_stream_t, data: &[u8]) -> bridge_status {
    let mut f = null_mut();
    assert_eq!(
        unsafe { bridge_stream_write(s, data.as_ptr().cast(), data.len(), &mut f) },
        BRIDGE_OK
    );
    let status = finish(f);
    unsafe { future_release(f) };
    status
}

fn shutdown(s: *mut bridge_stream_t) {
    let mut f = null_mut();
    assert_eq!(unsafe { bridge_stream_shutdown(s, &mut f) }, BRIDGE_OK);
    assert_eq!(finish(f), BRIDGE_OK, "{}", message(f));
    unsafe { future_release(f) };
}

fn wait_future(c: *mut bridge_child_t) -> *mut future_t {
    let mut f = null_mut();
    assert_eq!(unsafe { bridge_child_wait(c, &mut f) }, BRIDGE_OK);
    f
}

/// (exit_code, signal) of a wait that must end BRIDGE_OK; its out and err are empty.
fn exit_of(f: *mut future_t) -> (i32, i32) {
    assert_eq!(finish(f), BRIDGE_OK, "wait failed: {}", message(f));
    unsafe {
        assert_eq!(future_value_type(f), BRIDGE_VALUE_PROCESS);
        let r = &*future_value(f).cast::<bridge_process_result_t>();
        assert_eq!((r.out.len, r.err.len), (0, 0));
        assert!(r.out.data.is_null() && r.err.data.is_null());
        let exit = (r.exit_code, r.signal);
        future_release(f);
        exit
    }
}

fn wait(c: *mut bridge_child_t) -> (i32, i32) {
    exit_of(wait_future(c))
}

/// The processes of group `pgid` that are not zombies, as (pid, state).
fn live_members(pgid: i32) -> Vec<(i32, char)> {
    let mut live = Vec::new();
    for (pid, stat) in processes() {
        if stat.pgrp == pgid && !matches!(stat.state, 'Z' | 'X') {
            live.push((pid, stat.state));
        }
    }
    live
}

struct Stat {
    state: char,
    ppid: i32,
    pgrp: i32,
}

/// Every process of the system with its /proc/<pid>/stat fields that matter here.
fn processes() -> Vec<(i32, Stat)> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|at| &stat[at + 2..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split(' ').collect();
        all.push((
            pid,
            Stat {
                state: fields[0].chars().next().unwrap_or('?'),
                ppid: fields[1].parse().unwrap_or(0),
                pgrp: fields[2].parse().unwrap_or(0),
            },
        ));
    }
    all
}

/// Killed processes vanish once the kernel has torn them down; the watchdog only
/// catches one that was not killed.
fn assert_group_ends(pgid: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let live = live_members(pgid);
        if live.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "group {pgid} lives on: {live:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is still a child of this process (running or a zombie).
fn is_our_child(pid: i32) -> bool {
    let me = std::process::id() as i32;
    processes()
        .iter()
        .any(|(p, stat)| *p == pid && stat.ppid == me)
}

/// The program was reaped: it is not our child any more, not even a zombie.
fn assert_reaped(pid: i32) {
    assert!(!is_our_child(pid), "{pid} is still our child");
}

/// Waits (watchdog) until the program is reaped by the bridge's loop.
fn await_reaped(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while is_our_child(pid) {
        assert!(Instant::now() < deadline, "{pid} was never reaped");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A script that starts two background sleeps in its group, says "started" and
/// sleeps: a group of at least three once "started" has been read.
const GROUP_SCRIPT: &str = "sleep 100 & sleep 100 & echo started; sleep 100";

/// Spawns GROUP_SCRIPT and waits until its whole group runs; (child, its stdout).
fn running_group(b: *mut bridge_t) -> (*mut bridge_child_t, *mut bridge_stream_t) {
    let c = sh(GROUP_SCRIPT, PIPE_OUT).spawn(b);
    let out = unsafe { bridge_child_take_stdout(c) };
    assert!(!out.is_null());
    assert_eq!(read(out), b"started\n");
    let pgid = unsafe { bridge_child_pid(c) };
    assert!(live_members(pgid).len() >= 3, "{:?}", live_members(pgid));
    (c, out)
}

#[test]
fn output_comes_line_by_line_while_the_program_runs() {
    let _shared = EXCLUSIVE.read().unwrap();
    let mut cfg = unsafe { std::mem::zeroed::<bridge_config_t>() };
    unsafe { bridge_config_init(&mut cfg) };
    cfg.worker_threads = 2;
    let mut two = null_mut();
    assert_eq!(unsafe { bridge_start(&cfg, &mut two) }, BRIDGE_OK);
    for b in [start(), two] {
        // Each line answers one line of input: the program runs until the input ends.
        let script = "echo ready; while read x; do echo \"line $x\"; done; echo bye";
        let c = sh(script, PIPE_IN | PIPE_OUT).spawn(b);
        let (stdin, stdout) = unsafe { (bridge_child_take_stdin(c), bridge_child_take_stdout(c)) };
        assert!(!stdin.is_null() && !stdout.is_null());
        let waiting = wait_future(c);
        let mut buffered = Vec::new();
        assert_eq!(read_line(stdout, &mut buffered), b"ready\n");
        for n in 1..=3 {
            assert_eq!(write(stdin, format!("{n}\n").as_bytes()), BRIDGE_OK);
            assert_eq!(
                read_line(stdout, &mut buffered),
                format!("line {n}\n").as_bytes()
            );
            // It still runs: it waits for more input.
            assert_eq!(unsafe { future_status(waiting) }, BRIDGE_PENDING);
        }
        shutdown(stdin);
        assert_eq!(read_line(stdout, &mut buffered), b"bye\n");
        assert_eq!(read_to_end(stdout), b"");
        assert!(buffered.is_empty());
        assert_eq!(exit_of(waiting), (0, 0));
        assert_reaped(unsafe { bridge_child_pid(c) });
        unsafe {
            bridge_stream_close(stdin);
            bridge_stream_close(stdout);
            bridge_child_free(c);
            bridge_free(b);
        }
    }
}

/// More than any pipe buffer, written on one thread while another reads: cat sees
/// the end of its input after the shutdown and everything comes back.
#[test]
fn a_large_input_round_trips_through_cat() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let input: Vec<u8> = (0..(4u32 << 20) + 3)
        .map(|i| (i * 13 % 256) as u8)
        .collect();
    let cat = Spec {
        program: "cat".to_owned(),
        flags: PIPE_IN | PIPE_OUT,
        ..Spec::default()
    };
    let c = cat.spawn(b);
    let (stdin, stdout) = unsafe { (bridge_child_take_stdin(c), bridge_child_take_stdout(c)) };
    let data = input.clone();
    let stdin_addr = stdin as usize;
    let writer = std::thread::spawn(move || {
        let stdin = stdin_addr as *mut bridge_stream_t;
        assert_eq!(write(stdin, &data), BRIDGE_OK);
        shutdown(stdin);
        unsafe { bridge_stream_close(stdin) };
    });
    let back = read_to_end(stdout);
    writer.join().unwrap();
    assert!(
        back == input,
        "{} of {} bytes came back",
        back.len(),
        input.len()
    );
    assert_eq!(wait(c), (0, 0));
    unsafe {
        bridge_stream_close(stdout);
        bridge_child_free(c);
        bridge_free(b);
    }
}

#[test]
fn stderr_is_separate_or_merged() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let script = "echo one; echo two >&2; echo three";
    let c = sh(script, PIPE_OUT | PIPE_ERR).spawn(b);
    let (out, err) = unsafe { (bridge_child_take_stdout(c), bridge_child_take_stderr(c)) };
    assert_eq!(read_to_end(out), b"one\nthree\n");
    assert_eq!(read_to_end(err), b"two\n");
    assert_eq!(wait(c), (0, 0));
    unsafe {
        bridge_stream_close(out);
        bridge_stream_close(err);
        bridge_child_free(c);
    }

    let c = sh(script, PIPE_OUT | BRIDGE_PROCESS_MERGE_STDERR).spawn(b);
    assert!(unsafe { bridge_child_take_stderr(c) }.is_null());
    let out = unsafe { bridge_child_take_stdout(c) };
    assert_eq!(read_to_end(out), b"one\ntwo\nthree\n");
    assert_eq!(wait(c), (0, 0));
    unsafe {
        bridge_stream_close(out);
        bridge_child_free(c);
    }

    // Only stderr piped: stdout goes to /dev/null.
    let c = sh(script, PIPE_ERR).spawn(b);
    assert!(unsafe { bridge_child_take_stdout(c) }.is_null());
    let err = unsafe { bridge_child_take_stderr(c) };
    assert_eq!(read_to_end(err), b"two\n");
    assert_eq!(wait(c), (0, 0));
    unsafe {
        bridge_stream_close(err);
        bridge_child_free(c);
        bridge_free(b);
    }
}

#[test]
fn the_wait_gives_the_exit_code_or_the_signal() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let c = sh("exit 3", 0).spawn(b);
    assert_eq!(wait(c), (3, 0));
    // A wait after the end ends the same way, at once.
    assert_eq!(wait(c), (3, 0));
    unsafe { bridge_child_free(c) };
    let c = sh("kill -TERM $$", 0).spawn(b);
    assert_eq!(wait(c), (-1, libc::SIGTERM));
    unsafe { bridge_child_free(c) };

    // A taken result is freed with bridge_process_result_free().
    let c = sh("exit 4", 0).spawn(b);
    let f = wait_future(c);
    assert_eq!(finish(f), BRIDGE_OK);
    unsafe {
        let taken = future_take_value(f);
        assert_eq!((*taken.cast::<bridge_process_result_t>()).exit_code, 4);
        bridge_process_result_free(taken);
        future_release(f);
        bridge_child_free(c);
        bridge_free(b);
    }
}

#[test]
fn input_data_without_a_pipe_is_fed_and_closed() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let cat = Spec {
        program: "cat".to_owned(),
        stdin: b"fed by the library\n".to_vec(),
        flags: PIPE_OUT,
        ..Spec::default()
    };
    let c = cat.spawn(b);
    assert!(unsafe { bridge_child_take_stdin(c) }.is_null());
    let out = unsafe { bridge_child_take_stdout(c) };
    assert_eq!(read_to_end(out), b"fed by the library\n");
    assert_eq!(wait(c), (0, 0));
    // Nothing piped and no data: the program reads and writes /dev/null.
    let c = sh("cat; echo lost", 0).spawn(b);
    assert_eq!(wait(c), (0, 0));
    unsafe {
        bridge_child_free(c);
        bridge_stream_close(out);
    }
    unsafe { bridge_free(b) };
}

/// Cancel, future_set_timeout and shutdown of a pending wait each end the whole group,
/// grandchildren included: the wait is final only once the program is reaped.
#[test]
fn ending_the_wait_kills_and_reaps_the_whole_group() {
    let _shared = EXCLUSIVE.read().unwrap();
    for how in ["cancel", "set_timeout", "shutdown"] {
        let b = start();
        let (c, out) = running_group(b);
        let pgid = unsafe { bridge_child_pid(c) };
        let f = wait_future(c);
        let expected = unsafe {
            match how {
                "cancel" => {
                    assert_eq!(future_cancel(f), BRIDGE_OK);
                    BRIDGE_CANCELLED
                }
                "set_timeout" => {
                    assert_eq!(future_set_timeout(f, 1), BRIDGE_OK);
                    BRIDGE_FAILED
                }
                _ => {
                    assert_eq!(bridge_shutdown(b, 50), BRIDGE_OK);
                    BRIDGE_CANCELLED
                }
            }
        };
        assert_eq!(finish(f), expected, "{how}");
        if how == "set_timeout" {
            assert_eq!(unsafe { future_error_code(f) }, BRIDGE_E_TIMED_OUT);
        }
        // Reaped before the future ended.
        assert_reaped(pgid);
        assert_group_ends(pgid);
        if how != "shutdown" {
            // Nothing of the group holds the pipe any more; a later wait knows.
            assert_eq!(read_to_end(out), b"");
            assert_eq!(wait(c), (-1, libc::SIGKILL));
        } else {
            let mut again = null_mut();
            assert_eq!(
                unsafe { bridge_child_wait(c, &mut again) },
                BRIDGE_E_NOT_RUNNING
            );
            assert!(again.is_null());
        }
        unsafe {
            future_release(f);
            bridge_stream_close(out);
            bridge_child_free(c);
            bridge_free(b);
        }
    }
}

#[test]
fn free_of_a_running_child_kills_and_reaps_its_group() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let (c, out) = running_group(b);
    let pgid = unsafe { bridge_child_pid(c) };
    unsafe { bridge_child_free(c) };
    await_reaped(pgid);
    assert_group_ends(pgid);
    // The stream taken before outlives the child and ends.
    assert_eq!(read_to_end(out), b"");
    unsafe { bridge_stream_close(out) };

    // A pending wait ends with SIGKILL when the child is freed.
    let (c, out) = running_group(b);
    let f = wait_future(c);
    unsafe { bridge_child_free(c) };
    assert_eq!(exit_of(f), (-1, libc::SIGKILL));
    unsafe {
        bridge_stream_close(out);
        bridge_free(b);
    }
}

#[test]
fn kill_ends_the_group_and_the_wait_says_sigkill() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let (c, out) = running_group(b);
    let pgid = unsafe { bridge_child_pid(c) };
    assert_eq!(unsafe { bridge_child_kill(c) }, BRIDGE_OK);
    assert_eq!(wait(c), (-1, libc::SIGKILL));
    assert_reaped(pgid);
    assert_group_ends(pgid);
    // Ended already: nothing to do, still OK.
    assert_eq!(unsafe { bridge_child_kill(c) }, BRIDGE_OK);
    unsafe {
        bridge_stream_close(out);
        bridge_child_free(c);
        bridge_free(b);
    }
}

/// What the program leaves in its group is killed when it exits: the output ends.
#[test]
fn background_processes_do_not_hold_the_output_open() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let c = sh("sleep 100 & echo done", PIPE_OUT).spawn(b);
    let pgid = unsafe { bridge_child_pid(c) };
    let out = unsafe { bridge_child_take_stdout(c) };
    assert_eq!(read_to_end(out), b"done\n");
    assert_group_ends(pgid);
    assert_eq!(wait(c), (0, 0));
    unsafe {
        bridge_stream_close(out);
        bridge_child_free(c);
        bridge_free(b);
    }
}

#[test]
fn the_timeout_kills_the_group_and_fails_the_wait() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let slow = Spec {
        timeout_ms: 100,
        ..sh(GROUP_SCRIPT, PIPE_OUT)
    };
    let c = slow.spawn(b);
    let pgid = unsafe { bridge_child_pid(c) };
    let out = unsafe { bridge_child_take_stdout(c) };
    // Nobody waits: the bridge keeps the time; the output ends with the group.
    assert_eq!(read_to_end(out), b"started\n");
    await_reaped(pgid);
    assert_group_ends(pgid);
    let f = wait_future(c);
    assert_eq!(finish(f), BRIDGE_FAILED);
    unsafe {
        assert_eq!(future_error_code(f), BRIDGE_E_TIMED_OUT);
        assert_eq!(message(f), "process sh timed out after 100 ms");
        future_release(f);
        bridge_stream_close(out);
        bridge_child_free(c);
        bridge_free(b);
    }
}

unsafe extern "C" fn hold_the_loop(_f: *mut future_t, _user_data: *mut std::ffi::c_void) {
    std::thread::sleep(Duration::from_millis(3000));
}

/// A program that exits before its timeout ran out ends with its exit, even when the
/// loop comes to watch it only after the deadline: here a done callback holds the
/// loop from 30 ms to 3030 ms (documented "must not block", but any busy loop does the
/// same), the program (`true`) exits at once, its timeout is 1500 ms. The margins are
/// wide so that a loaded machine cannot make the program itself miss its timeout.
#[test]
fn a_program_that_exited_before_its_timeout_is_not_timed_out_by_a_late_loop() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let mut blocker = null_mut();
    assert_eq!(unsafe { bridge_sleep(b, 30, &mut blocker) }, BRIDGE_OK);
    assert_eq!(
        unsafe { future_on_done(blocker, Some(hold_the_loop), null_mut()) },
        BRIDGE_OK
    );
    let quick = Spec {
        program: "true".to_owned(),
        timeout_ms: 1500,
        ..Spec::default()
    };
    let c = quick.spawn(b);
    assert_eq!(wait(c), (0, 0));
    assert_eq!(finish(blocker), BRIDGE_OK);
    unsafe {
        future_release(blocker);
        bridge_child_free(c);
        bridge_free(b);
    }
}

/// Decided: a program that cannot start fails the spawn itself, with errno set.
#[test]
fn a_program_that_cannot_start_is_refused_at_once_with_errno() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let nope = Spec {
        program: "./no-such-program".to_owned(),
        flags: PIPE_IN | PIPE_OUT | PIPE_ERR,
        ..Spec::default()
    };
    assert_eq!(nope.try_spawn(b).err(), Some((BRIDGE_E_IO, libc::ENOENT)));
    let in_path = Spec {
        program: "surely-no-such-program".to_owned(),
        ..Spec::default()
    };
    assert_eq!(
        in_path.try_spawn(b).err(),
        Some((BRIDGE_E_IO, libc::ENOENT))
    );
    let directory = Spec {
        program: "/".to_owned(),
        ..Spec::default()
    };
    assert_eq!(
        directory.try_spawn(b).err(),
        Some((BRIDGE_E_IO, libc::EACCES))
    );
    let bad_cwd = Spec {
        program: "true".to_owned(),
        cwd: Some("/no/such/dir".to_owned()),
        ..Spec::default()
    };
    assert_eq!(
        bad_cwd.try_spawn(b).err(),
        Some((BRIDGE_E_IO, libc::ENOENT))
    );
    unsafe { bridge_free(b) };
}

static SIGPIPES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn count_sigpipe(_: libc::c_int) {
    SIGPIPES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// With a SIGPIPE handler of the application's in place (a C program at the default
/// action would die instead): the write fails with EPIPE and raises no SIGPIPE.
#[test]
fn writing_to_a_program_that_exited_fails_with_epipe_not_sigpipe() {
    let _alone = EXCLUSIVE.write().unwrap();
    let mut counting = unsafe { std::mem::zeroed::<libc::sigaction>() };
    counting.sa_sigaction = count_sigpipe as extern "C" fn(libc::c_int) as libc::sighandler_t;
    let mut old = unsafe { std::mem::zeroed::<libc::sigaction>() };
    assert_eq!(
        unsafe { libc::sigaction(libc::SIGPIPE, &counting, &mut old) },
        0
    );
    let b = start();
    let c = sh("exit 0", PIPE_IN).spawn(b);
    let stdin = unsafe { bridge_child_take_stdin(c) };
    assert_eq!(wait(c), (0, 0));
    let data = vec![0u8; 1 << 20];
    let mut f = null_mut();
    assert_eq!(
        unsafe { bridge_stream_write(stdin, data.as_ptr().cast(), data.len(), &mut f) },
        BRIDGE_OK
    );
    assert_eq!(finish(f), BRIDGE_FAILED);
    unsafe {
        assert_eq!(
            (future_error_code(f), future_os_error(f)),
            (BRIDGE_E_IO, libc::EPIPE)
        );
        future_release(f);
        bridge_stream_close(stdin);
        bridge_child_free(c);
        bridge_free(b);
        libc::sigaction(libc::SIGPIPE, &old, null_mut());
    }
    assert_eq!(SIGPIPES.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn null_and_invalid_inputs_are_refused() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let refused = |s: Spec| assert_eq!(s.try_spawn(b).err().map(|e| e.0), Some(BRIDGE_E_INVALID));
    // Input data and a stdin pipe; stderr both piped and merged; unknown flags.
    refused(Spec {
        program: "cat".to_owned(),
        stdin: b"x".to_vec(),
        flags: PIPE_IN,
        ..Spec::default()
    });
    refused(sh(
        "true",
        PIPE_OUT | PIPE_ERR | BRIDGE_PROCESS_MERGE_STDERR,
    ));
    refused(sh("true", PIPE_ERR | BRIDGE_PROCESS_MERGE_STDERR));
    for flags in [16, 1 << 31, u32::MAX] {
        refused(sh("true", flags));
    }
    refused(Spec::default());

    let mut opts = unsafe { std::mem::zeroed::<bridge_process_options_t>() };
    unsafe { bridge_process_options_init(&mut opts) };
    opts.program = c"true".as_ptr();
    let mut c = null_mut();
    unsafe {
        assert_eq!(
            bridge_process_spawn(null_mut(), &opts, &mut c),
            BRIDGE_E_INVALID
        );
        assert_eq!(bridge_process_spawn(b, null(), &mut c), BRIDGE_E_INVALID);
        assert_eq!(bridge_process_spawn(b, &opts, null_mut()), BRIDGE_E_INVALID);
        let mut bad = std::ptr::read(&opts);
        bad.size -= 1;
        assert_eq!(bridge_process_spawn(b, &bad, &mut c), BRIDGE_E_INVALID);
    }
    assert!(c.is_null());

    // The pipe flags are spawn's only.
    for flags in [PIPE_IN, PIPE_OUT, PIPE_ERR] {
        opts.flags = flags;
        let mut f = null_mut();
        assert_eq!(
            unsafe { bridge_process_run(b, &opts, &mut f) },
            BRIDGE_E_INVALID
        );
        assert!(f.is_null());
    }

    // NULL child handles.
    unsafe {
        assert!(bridge_child_take_stdin(null_mut()).is_null());
        assert!(bridge_child_take_stdout(null_mut()).is_null());
        assert!(bridge_child_take_stderr(null_mut()).is_null());
        assert_eq!(bridge_child_pid(null()), -1);
        let mut f = null_mut();
        assert_eq!(bridge_child_wait(null_mut(), &mut f), BRIDGE_E_INVALID);
        assert!(f.is_null());
        assert_eq!(bridge_child_kill(null_mut()), BRIDGE_E_INVALID);
        bridge_child_free(null_mut());
    }

    // A live child: NULL out, a second wait, streams taken once or never piped.
    let c = sh("cat", PIPE_IN).spawn(b);
    unsafe {
        assert!(bridge_child_pid(c) > 0);
        assert_eq!(bridge_child_wait(c, null_mut()), BRIDGE_E_INVALID);
        let f = wait_future(c);
        let mut second = null_mut();
        assert_eq!(bridge_child_wait(c, &mut second), BRIDGE_E_BUSY);
        assert!(second.is_null());
        assert!(bridge_child_take_stdout(c).is_null());
        assert!(bridge_child_take_stderr(c).is_null());
        let stdin = bridge_child_take_stdin(c);
        assert!(!stdin.is_null());
        assert!(bridge_child_take_stdin(c).is_null());
        // Reading the input stream ends at once; the program still runs.
        assert_eq!(read(stdin), b"");
        assert_eq!(future_status(f), BRIDGE_PENDING);
        bridge_stream_close(stdin);
        assert_eq!(exit_of(f), (0, 0));
        bridge_child_free(c);
    }

    // After shutdown nothing starts.
    assert_eq!(unsafe { bridge_shutdown(b, -1) }, BRIDGE_OK);
    assert_eq!(
        sh("true", 0).try_spawn(b).err().map(|e| e.0),
        Some(BRIDGE_E_NOT_RUNNING)
    );
    unsafe { bridge_free(b) };
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Our children that are zombies (exited, not reaped).
fn zombies() -> Vec<i32> {
    let me = std::process::id() as i32;
    processes()
        .into_iter()
        .filter(|(_, stat)| stat.ppid == me && stat.state == 'Z')
        .map(|(pid, _)| pid)
        .collect()
}

/// Every way to end a child, many times over: no descriptor stays open and no child
/// stays a zombie, waited for or not.
#[test]
fn no_descriptor_and_no_zombie_is_left() {
    let _alone = EXCLUSIVE.write().unwrap();
    let b = start();
    let round = || {
        // Read to its end, waited for, streams closed.
        let c = sh("echo out; echo err >&2", PIPE_IN | PIPE_OUT | PIPE_ERR).spawn(b);
        let (i, o, e) = unsafe {
            (
                bridge_child_take_stdin(c),
                bridge_child_take_stdout(c),
                bridge_child_take_stderr(c),
            )
        };
        assert_eq!(read_to_end(o), b"out\n");
        assert_eq!(read_to_end(e), b"err\n");
        assert_eq!(wait(c), (0, 0));
        unsafe {
            bridge_stream_close(i);
            bridge_stream_close(o);
            bridge_stream_close(e);
            bridge_child_free(c);
        }
        // Streams never taken, never waited for, freed while running.
        let c = sh("sleep 100", PIPE_IN | PIPE_OUT | PIPE_ERR).spawn(b);
        unsafe { bridge_child_free(c) };
        // Exits by itself, never waited for.
        let c = Spec {
            stdin: vec![b'x'; 200_000],
            ..sh("exit 0", 0)
        }
        .spawn(b);
        let pid = unsafe { bridge_child_pid(c) };
        await_reaped(pid);
        unsafe { bridge_child_free(c) };
        // A cancelled wait.
        let (c, out) = running_group(b);
        let f = wait_future(c);
        unsafe {
            future_cancel(f);
            assert_eq!(finish(f), BRIDGE_CANCELLED);
            future_release(f);
            bridge_stream_close(out);
            bridge_child_free(c);
        }
        // Timed out.
        let c = Spec {
            timeout_ms: 10,
            ..sh("sleep 100", 0)
        }
        .spawn(b);
        let f = wait_future(c);
        assert_eq!(finish(f), BRIDGE_FAILED);
        unsafe {
            future_release(f);
            bridge_child_free(c);
        }
        // Could not start.
        let nope = Spec {
            program: "./nope".to_owned(),
            flags: PIPE_IN | PIPE_OUT | PIPE_ERR,
            ..Spec::default()
        };
        assert!(nope.try_spawn(b).is_err());
    };
    // A first round, so that the runtime's own lazily opened descriptors are there
    // before counting.
    round();
    let before = open_fds();
    for _ in 0..5 {
        round();
    }
    // Freed children are reaped on the loop, soon after.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !zombies().is_empty() || open_fds() != before {
        assert!(
            Instant::now() < deadline,
            "zombies {:?}, {} descriptors instead of {before}",
            zombies(),
            open_fds()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe { bridge_free(b) };
    assert!(zombies().is_empty());
}

/// A program that moved itself into another process group (here: the group of a
/// helper it forked, which ends when the program does) is out of reach of the group's
/// SIGKILL; the kill goes to the program's own pid too, so a cancelled wait ends once
/// the program is killed and reaped, not when it would have ended by itself.
#[test]
fn cancelling_the_wait_of_a_program_that_left_its_group_kills_it() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let script = "import os, sys, time\n\
                  parent = os.getpid()\n\
                  helper = os.fork()\n\
                  if helper == 0:\n\
                  \x20   os.setpgid(0, 0)\n\
                  \x20   while os.getppid() == parent:\n\
                  \x20       time.sleep(0.05)\n\
                  \x20   os._exit(0)\n\
                  try:\n\
                  \x20   os.setpgid(helper, helper)\n\
                  except OSError:\n\
                  \x20   pass\n\
                  os.setpgid(0, helper)\n\
                  print('moved', flush=True)\n\
                  time.sleep(600)\n";
    let spec = Spec {
        program: "python3".to_owned(),
        args: vec!["-c".to_owned(), script.to_owned()],
        flags: PIPE_OUT,
        ..Spec::default()
    };
    let c = spec.spawn(b);
    let pid = unsafe { bridge_child_pid(c) };
    let out = unsafe { bridge_child_take_stdout(c) };
    let mut buffered = Vec::new();
    assert_eq!(read_line(out, &mut buffered), b"moved\n");
    assert_ne!(
        unsafe { libc::getpgid(pid) },
        pid,
        "the program did not leave its group"
    );
    let f = wait_future(c);
    assert_eq!(unsafe { future_cancel(f) }, BRIDGE_OK);
    // Without the kill by pid this waits out the program's 600 s (the watchdog fails).
    assert_eq!(finish(f), BRIDGE_CANCELLED);
    assert_reaped(pid);
    unsafe {
        future_release(f);
        bridge_stream_close(out);
        bridge_child_free(c);
        bridge_free(b);
    }
}
