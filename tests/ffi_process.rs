//! The C API of subprocesses (bridge_process_run), called from Rust through its C
//! signatures. tests/c/process.c covers what needs a process of its own: the
//! application's SIGCHLD and SIGPIPE actions.

use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use asyncbridge::ffi::bridge::*;
use asyncbridge::ffi::future::*;
use asyncbridge::ffi::process::*;
use asyncbridge::ffi::status::*;
use asyncbridge::ffi::value::*;

/// Tests that count this process's descriptors or look at its signal actions take it
/// for writing; the others, which run beside each other, for reading.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

/// Far above any run here: a future that takes this long is hung.
const WATCHDOG_MS: i64 = 60_000;

fn start() -> *mut bridge_t {
    let mut b = null_mut();
    assert_eq!(unsafe { bridge_start(null(), &mut b) }, BRIDGE_OK);
    b
}

/// What to run, in Rust terms; `submit` builds the C options, calls
/// bridge_process_run() and drops every C string right after.
#[derive(Clone, Default)]
struct Spec {
    program: String,
    args: Vec<String>,
    env: Option<Vec<String>>,
    cwd: Option<String>,
    stdin: Vec<u8>,
    timeout_ms: u64,
    max_output: u64,
    flags: u32,
}

fn spec(program: &str, args: &[&str]) -> Spec {
    Spec {
        program: program.to_owned(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Spec::default()
    }
}

fn sh(script: &str) -> Spec {
    spec("sh", &["-c", script])
}

/// A NULL-terminated array of the strings' pointers.
fn list(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(null()))
        .collect()
}

impl Spec {
    fn submit(&self, b: *mut bridge_t) -> Result<*mut future_t, bridge_status> {
        let program = CString::new(self.program.as_str()).unwrap();
        let args: Vec<CString> = self
            .args
            .iter()
            .map(|a| CString::new(a.as_str()).unwrap())
            .collect();
        let argv = list(&args);
        let env: Option<Vec<CString>> = self.env.as_ref().map(|e| {
            e.iter()
                .map(|v| CString::new(v.as_str()).unwrap())
                .collect()
        });
        let envp = env.as_ref().map(|e| list(e));
        let cwd = self.cwd.as_ref().map(|c| CString::new(c.as_str()).unwrap());
        let mut opts = std::mem::MaybeUninit::<bridge_process_options_t>::uninit();
        unsafe { bridge_process_options_init(opts.as_mut_ptr()) };
        let mut opts = unsafe { opts.assume_init() };
        opts.program = program.as_ptr();
        opts.argv = argv.as_ptr();
        opts.env = envp.as_ref().map_or(null(), |e| e.as_ptr());
        opts.cwd = cwd.as_ref().map_or(null(), |c| c.as_ptr());
        opts.stdin_data = self.stdin.as_ptr().cast();
        opts.stdin_len = self.stdin.len();
        opts.timeout_ms = self.timeout_ms;
        opts.max_output = self.max_output;
        opts.flags = self.flags;
        let mut f = null_mut();
        match unsafe { bridge_process_run(b, &opts, &mut f) } {
            BRIDGE_OK => Ok(f),
            status => {
                assert!(f.is_null(), "out written on {status}");
                Err(status)
            }
        }
    }

    fn run(&self, b: *mut bridge_t) -> *mut future_t {
        let f = self.submit(b).expect("bridge_process_run");
        let status = unsafe { future_wait(f, WATCHDOG_MS) };
        assert_ne!(status, BRIDGE_TIMEOUT, "watchdog: the run hung");
        f
    }
}

/// A finished run's result, copied: (exit_code, signal, out, err).
struct Ran {
    exit_code: i32,
    signal: i32,
    out: Vec<u8>,
    err: Vec<u8>,
}

fn bytes(b: &bridge_bytes_t) -> Vec<u8> {
    if b.len == 0 {
        assert!(b.data.is_null(), "data of empty bytes is NULL");
        return Vec::new();
    }
    unsafe { std::slice::from_raw_parts(b.data, b.len) }.to_vec()
}

/// The result of a future that must have ended BRIDGE_OK; releases it.
fn ran(f: *mut future_t) -> Ran {
    unsafe {
        assert_eq!(future_status(f), BRIDGE_OK, "failed: {}", message(f));
        assert_eq!(future_value_type(f), BRIDGE_VALUE_PROCESS);
        let r = &*future_value(f).cast::<bridge_process_result_t>();
        let ran = Ran {
            exit_code: r.exit_code,
            signal: r.signal,
            out: bytes(&r.out),
            err: bytes(&r.err),
        };
        future_release(f);
        ran
    }
}

fn message(f: *mut future_t) -> String {
    let m = unsafe { future_error_message(f) };
    if m.is_null() {
        return String::new();
    }
    unsafe { CStr::from_ptr(m) }.to_string_lossy().into_owned()
}

/// (code, errno, message) of a future that must have ended BRIDGE_FAILED; releases it.
fn failed(f: *mut future_t) -> (i32, i32, String) {
    unsafe {
        assert_eq!(future_status(f), BRIDGE_FAILED);
        let failure = (future_error_code(f), future_os_error(f), message(f));
        future_release(f);
        failure
    }
}

/// A fresh empty directory for one test.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ffi_process-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A script that writes its pid (its process group's id) to `file` once the `setup`
/// commands have run, then runs `then`.
fn pid_script(file: &Path, setup: &str, then: &str) -> String {
    let f = file.display();
    format!("{setup} echo $$ > {f}.tmp; mv {f}.tmp {f}; {then}")
}

/// Waits (watchdog) for the pid a script wrote to `file`.
fn await_pid(file: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            return text.trim().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no pid in {}", file.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The processes of group `pgid` that are not zombies, as (pid, state).
fn live_members(pgid: i32) -> Vec<(i32, char)> {
    let mut live = Vec::new();
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
        let state = fields[0].chars().next().unwrap_or('?');
        if fields[2].parse::<i32>() == Ok(pgid) && !matches!(state, 'Z' | 'X') {
            live.push((pid, state));
        }
    }
    live
}

/// Killed processes vanish as soon as the kernel has torn them down; the watchdog
/// only catches one that was not killed. Zombies of reparented grandchildren wait for
/// their new parent and are not counted.
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

/// The group leader (the program) was reaped before the future ended: no entry left.
fn assert_reaped(pid: i32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
    // Only a new process that got the same pid could be there; it would not be in
    // its own group of that id, nor our child.
    if let Ok(stat) = stat {
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: u32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        assert_ne!(ppid, std::process::id(), "{pid} is still our child: {stat}");
    }
}

#[test]
fn exit_codes_signals_and_an_empty_result() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let r = ran(sh("exit 3").run(b));
    assert_eq!((r.exit_code, r.signal), (3, 0));
    // Found in PATH; no output is NULL data.
    let r = ran(spec("true", &[]).run(b));
    assert_eq!(
        (r.exit_code, r.signal, r.out.len(), r.err.len()),
        (0, 0, 0, 0)
    );
    let r = ran(sh("printf x; kill -KILL $$").run(b));
    assert_eq!((r.exit_code, r.signal), (-1, libc::SIGKILL));
    assert_eq!(r.out, b"x");
    unsafe { bridge_free(b) };
}

#[test]
fn output_streams_separate_and_merged() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let script = "echo one; echo two >&2; echo three";
    let r = ran(sh(script).run(b));
    assert_eq!(
        (r.out.as_slice(), r.err.as_slice()),
        (&b"one\nthree\n"[..], &b"two\n"[..])
    );
    let merged = Spec {
        flags: BRIDGE_PROCESS_MERGE_STDERR,
        ..sh(script)
    };
    let r = ran(merged.run(b));
    assert_eq!(
        (r.out.as_slice(), r.err.as_slice()),
        (&b"one\ntwo\nthree\n"[..], &b""[..])
    );
    unsafe { bridge_free(b) };
}

#[test]
fn a_mebibyte_of_input_comes_back_through_cat() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let input: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 % 256) as u8).collect();
    let cat = Spec {
        stdin: input.clone(),
        ..spec("cat", &[])
    };
    let f = cat.run(b);
    let mut done = 0;
    let mut total = 1;
    assert_eq!(
        unsafe { future_progress(f, &mut done, &mut total) },
        BRIDGE_OK
    );
    assert_eq!(
        (done, total),
        (1 << 20, 0),
        "progress: bytes read, no total"
    );
    let r = ran(f);
    assert_eq!(r.exit_code, 0);
    assert!(r.out == input, "{} bytes came back", r.out.len());
    unsafe { bridge_free(b) };
}

#[test]
fn environment_cwd_and_path_search() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let dir = scratch_dir("env");
    let tool = dir.join("say-where");
    std::fs::write(&tool, "#!/bin/sh\necho \"$GREETING from $(pwd)\"\n").unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    // The whole environment is replaced; its PATH is searched.
    let replaced = Spec {
        env: Some(vec![
            format!("PATH=/nonexistent:{}:/usr/bin:/bin", dir.display()),
            "GREETING=hi".to_owned(),
        ]),
        cwd: Some("/usr".to_owned()),
        ..spec("say-where", &[])
    };
    assert_eq!(ran(replaced.run(b)).out, b"hi from /usr\n");
    let only = Spec {
        env: Some(vec![
            "A=1".to_owned(),
            "B=x=y".to_owned(),
            "EMPTY=".to_owned(),
        ]),
        ..spec("/usr/bin/env", &[])
    };
    assert_eq!(ran(only.run(b)).out, b"A=1\nB=x=y\nEMPTY=\n");
    // Without a PATH of its own, this process's PATH finds the program.
    let no_path = Spec {
        env: Some(Vec::new()),
        ..spec("env", &[])
    };
    assert_eq!(ran(no_path.run(b)).out, b"");
    // NULL env: inherited.
    std::env::var("PATH").unwrap();
    let inherited = ran(spec("env", &[]).run(b)).out;
    let path_line = format!("PATH={}", std::env::var("PATH").unwrap());
    assert!(
        String::from_utf8_lossy(&inherited)
            .lines()
            .any(|l| l == path_line),
        "no {path_line}"
    );
    // A relative program with a '/' is found from cwd.
    let relative = Spec {
        cwd: Some(dir.display().to_string()),
        env: Some(vec!["GREETING=hello".to_owned()]),
        ..spec("./say-where", &[])
    };
    let expected = format!("hello from {}\n", dir.display());
    assert_eq!(
        String::from_utf8(ran(relative.run(b)).out).unwrap(),
        expected
    );
    std::fs::remove_dir_all(&dir).unwrap();
    unsafe { bridge_free(b) };
}

#[test]
fn a_program_that_cannot_start_fails_with_its_errno() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let (code, errno, message) = failed(spec("./nope", &[]).run(b));
    assert_eq!((code, errno), (BRIDGE_E_IO, libc::ENOENT));
    assert!(
        message.starts_with("start ./nope: No such file or directory"),
        "{message}"
    );
    let (code, errno, message) = failed(spec("surely-no-such-program", &["x"]).run(b));
    assert_eq!((code, errno), (BRIDGE_E_IO, libc::ENOENT), "{message}");
    // Even root may not execute a directory.
    let (code, errno, message) = failed(spec("/", &[]).run(b));
    assert_eq!((code, errno), (BRIDGE_E_IO, libc::EACCES), "{message}");
    assert!(message.contains("Permission denied"), "{message}");
    let bad_cwd = Spec {
        cwd: Some("/no/such/dir".to_owned()),
        ..spec("true", &[])
    };
    let (code, errno, message) = failed(bad_cwd.run(b));
    assert_eq!((code, errno), (BRIDGE_E_IO, libc::ENOENT));
    assert!(
        message.starts_with("start true in /no/such/dir: "),
        "{message}"
    );
    unsafe { bridge_free(b) };
}

#[test]
fn the_output_limit_fails_the_run_and_kills_the_group() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let dir = scratch_dir("limit");
    let pid_file = dir.join("pid");
    let flood = Spec {
        max_output: 64 << 10,
        ..sh(&pid_script(&pid_file, "sleep 100 &", "yes"))
    };
    let (code, _, message) = failed(flood.run(b));
    assert_eq!(code, BRIDGE_E_TOO_LARGE);
    assert_eq!(
        message,
        "process sh: stdout passed its limit of 65536 bytes"
    );
    let pgid = await_pid(&pid_file);
    assert_reaped(pgid);
    assert_group_ends(pgid);

    // At the limit exactly is fine, for both streams.
    let exact = Spec {
        max_output: 5,
        ..sh("printf 12345; printf abcde >&2")
    };
    let r = ran(exact.run(b));
    assert_eq!(
        (r.out.as_slice(), r.err.as_slice()),
        (&b"12345"[..], &b"abcde"[..])
    );
    let over = Spec {
        max_output: 5,
        ..sh("printf 12345; printf abcdef >&2")
    };
    let (code, _, message) = failed(over.run(b));
    assert_eq!(code, BRIDGE_E_TOO_LARGE);
    assert!(
        message.contains("stderr passed its limit of 5 bytes"),
        "{message}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    unsafe { bridge_free(b) };
}

#[test]
fn the_timeout_fails_the_run_and_kills_the_group() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let dir = scratch_dir("timeout");
    let pid_file = dir.join("pid");
    let slow = Spec {
        timeout_ms: 200,
        ..sh(&pid_script(&pid_file, "sleep 100 &", "sleep 100"))
    };
    let (code, errno, message) = failed(slow.run(b));
    assert_eq!((code, errno), (BRIDGE_E_TIMED_OUT, 0));
    assert_eq!(message, "process sh timed out after 200 ms");
    let pgid = await_pid(&pid_file);
    assert_reaped(pgid);
    assert_group_ends(pgid);
    std::fs::remove_dir_all(&dir).unwrap();
    unsafe { bridge_free(b) };
}

#[test]
fn background_processes_do_not_hold_the_run_and_are_killed() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let dir = scratch_dir("background");
    let pid_file = dir.join("pid");
    let r = ran(sh(&pid_script(&pid_file, "sleep 100 &", "echo done")).run(b));
    assert_eq!((r.exit_code, r.out.as_slice()), (0, &b"done\n"[..]));
    assert_group_ends(await_pid(&pid_file));
    std::fs::remove_dir_all(&dir).unwrap();
    unsafe { bridge_free(b) };
}

/// Cancel, future_set_timeout and shutdown each end a running group: the future is
/// final only once the program is reaped, and nothing of the group runs after.
#[test]
fn cancel_timeout_and_shutdown_kill_the_whole_group() {
    let _shared = EXCLUSIVE.read().unwrap();
    let dir = scratch_dir("cancel");
    for (n, how) in ["cancel", "set_timeout", "shutdown"]
        .into_iter()
        .enumerate()
    {
        let b = start();
        let pid_file = dir.join(format!("pid{n}"));
        let script = pid_script(&pid_file, "sleep 100 & sleep 100 &", "sleep 100");
        let f = sh(&script).submit(b).unwrap();
        let pgid = await_pid(&pid_file);
        let deadline = Instant::now() + Duration::from_secs(30);
        while live_members(pgid).len() < 4 {
            assert!(Instant::now() < deadline, "{:?}", live_members(pgid));
            std::thread::sleep(Duration::from_millis(5));
        }
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
        assert_eq!(unsafe { future_wait(f, WATCHDOG_MS) }, expected, "{how}");
        if how == "set_timeout" {
            assert_eq!(unsafe { future_error_code(f) }, BRIDGE_E_TIMED_OUT);
        }
        // Final: the program was reaped in the drop, before the future ended.
        assert_reaped(pgid);
        assert_group_ends(pgid);
        unsafe {
            future_release(f);
            bridge_free(b);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_options_are_refused_and_start_nothing() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let submitted = || {
        let mut stats = unsafe { std::mem::zeroed::<bridge_stats_t>() };
        assert_eq!(unsafe { bridge_stats(b, &mut stats) }, BRIDGE_OK);
        stats.submitted
    };
    let before = submitted();
    let refused = |s: Spec| assert_eq!(s.submit(b).err(), Some(BRIDGE_E_INVALID));
    refused(spec("", &[]));
    refused(Spec {
        env: Some(vec!["NO_EQUALS".to_owned()]),
        ..spec("true", &[])
    });
    refused(Spec {
        env: Some(vec!["=value".to_owned()]),
        ..spec("true", &[])
    });
    refused(Spec {
        cwd: Some(String::new()),
        ..spec("true", &[])
    });
    for flags in [2, 4, 1 << 31, u32::MAX] {
        refused(Spec {
            flags,
            ..spec("true", &[])
        });
    }

    let mut opts = unsafe { std::mem::zeroed::<bridge_process_options_t>() };
    unsafe { bridge_process_options_init(&mut opts) };
    assert_eq!(
        opts.size as usize,
        std::mem::size_of::<bridge_process_options_t>()
    );
    assert!(opts.program.is_null() && opts.argv.is_null() && opts.env.is_null());
    assert_eq!(
        (opts.stdin_len, opts.timeout_ms, opts.max_output, opts.flags),
        (0, 0, 0, 0)
    );
    let program = c"true";
    opts.program = program.as_ptr();
    let mut f = null_mut();
    let run = |opts: &bridge_process_options_t, f: &mut *mut future_t| unsafe {
        bridge_process_run(b, opts, f)
    };
    // NULL handle, options or out.
    assert_eq!(
        unsafe { bridge_process_run(null_mut(), &opts, &mut f) },
        BRIDGE_E_INVALID
    );
    assert_eq!(
        unsafe { bridge_process_run(b, null(), &mut f) },
        BRIDGE_E_INVALID
    );
    assert_eq!(
        unsafe { bridge_process_run(b, &opts, null_mut()) },
        BRIDGE_E_INVALID
    );
    // NULL program; NULL input with a length.
    let mut bad = opts_copy(&opts);
    bad.program = null();
    assert_eq!(run(&bad, &mut f), BRIDGE_E_INVALID);
    let mut bad = opts_copy(&opts);
    bad.stdin_len = 1;
    assert_eq!(run(&bad, &mut f), BRIDGE_E_INVALID);
    // Sizes: 0, short by one, absurd.
    for size in [0, opts.size - 1, 4097, u32::MAX] {
        let mut bad = opts_copy(&opts);
        bad.size = size;
        assert_eq!(run(&bad, &mut f), BRIDGE_E_INVALID, "size {size}");
    }
    assert!(f.is_null(), "out written on a refusal");
    assert_eq!(submitted(), before, "something was submitted");

    // A larger struct (a later header) is accepted when its extra bytes are 0, and
    // refused when they ask for something.
    #[repr(C)]
    struct Later {
        opts: bridge_process_options_t,
        extra: [u64; 2],
    }
    let mut later = Later {
        opts: opts_copy(&opts),
        extra: [0; 2],
    };
    later.opts.size = std::mem::size_of::<Later>() as u32;
    assert_eq!(run(&later.opts, &mut f), BRIDGE_OK);
    assert_eq!(unsafe { future_wait(f, WATCHDOG_MS) }, BRIDGE_OK);
    unsafe { future_release(f) };
    f = null_mut();
    later.extra[1] = 1;
    assert_eq!(run(&later.opts, &mut f), BRIDGE_E_INVALID);
    assert!(f.is_null());

    // NULL options pointer for init, NULL result for free: no-ops.
    unsafe {
        bridge_process_options_init(null_mut());
        bridge_process_result_free(null_mut());
    }
    // After shutdown: refused as not running.
    assert_eq!(unsafe { bridge_shutdown(b, -1) }, BRIDGE_OK);
    assert_eq!(run(&opts, &mut f), BRIDGE_E_NOT_RUNNING);
    assert!(f.is_null());
    unsafe { bridge_free(b) };
}

fn opts_copy(opts: &bridge_process_options_t) -> bridge_process_options_t {
    unsafe { std::ptr::read(opts) }
}

/// Every input is copied at the call: the caller may overwrite and free it all at
/// once.
#[test]
fn inputs_are_copied_at_the_call() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let mut strings: Vec<Vec<u8>> = [
        "sh",
        "-c",
        "printf '%s|%s|' \"$1\" \"$V\"; pwd; cat",
        "argv0",
        "one",
        "V=two",
        "/tmp",
    ]
    .iter()
    .map(|s| format!("{s}\0").into_bytes())
    .collect();
    let mut input = b"three".to_vec();
    let ptr = |v: &Vec<u8>| v.as_ptr().cast::<c_char>();
    let mut argv = vec![
        ptr(&strings[1]),
        ptr(&strings[2]),
        ptr(&strings[3]),
        ptr(&strings[4]),
        null(),
    ];
    let mut env = vec![ptr(&strings[5]), null()];
    let mut opts = unsafe { std::mem::zeroed::<bridge_process_options_t>() };
    unsafe { bridge_process_options_init(&mut opts) };
    opts.program = ptr(&strings[0]);
    opts.argv = argv.as_ptr();
    opts.env = env.as_ptr();
    opts.cwd = ptr(&strings[6]);
    opts.stdin_data = input.as_ptr().cast();
    opts.stdin_len = input.len();
    let mut f = null_mut();
    assert_eq!(unsafe { bridge_process_run(b, &opts, &mut f) }, BRIDGE_OK);
    // Overwritten, then freed, before the program can have started.
    for s in &mut strings {
        let len = s.len();
        s[..len - 1].fill(b'X');
    }
    input.fill(b'X');
    argv.fill(null());
    env.fill(null());
    opts = unsafe { std::mem::zeroed() };
    drop((strings, input, argv, env, opts));
    assert_eq!(unsafe { future_wait(f, WATCHDOG_MS) }, BRIDGE_OK);
    let r = ran(f);
    assert_eq!(String::from_utf8(r.out).unwrap(), "one|two|/tmp\nthree");
    unsafe { bridge_free(b) };
}

#[test]
fn a_taken_result_is_freed_with_its_bytes() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let f = sh("printf out; printf err >&2").run(b);
    let taken = unsafe { future_take_value(f) };
    assert!(!taken.is_null());
    let r = unsafe { &*taken.cast::<bridge_process_result_t>() };
    assert_eq!(
        (bytes(&r.out), bytes(&r.err)),
        (b"out".to_vec(), b"err".to_vec())
    );
    unsafe {
        assert_eq!(future_value_type(f), BRIDGE_VALUE_NONE);
        bridge_process_result_free(taken);
        future_release(f);
        bridge_free(b);
    }
}

/// On the default single loop thread, and on a runtime of two workers, where a run
/// moves between threads.
#[test]
fn two_hundred_runs_at_once() {
    let _shared = EXCLUSIVE.read().unwrap();
    two_hundred_on(start());
    let mut cfg = unsafe { std::mem::zeroed::<bridge_config_t>() };
    unsafe { bridge_config_init(&mut cfg) };
    cfg.worker_threads = 2;
    let mut b = null_mut();
    assert_eq!(unsafe { bridge_start(&cfg, &mut b) }, BRIDGE_OK);
    two_hundred_on(b);
}

fn two_hundred_on(b: *mut bridge_t) {
    let futures: Vec<_> = (0..200)
        .map(|i| {
            let s = Spec {
                stdin: format!("{i}").into_bytes(),
                ..spec(
                    "sh",
                    &[
                        "-c",
                        "read n; printf '%s:%s' \"$1\" \"$n\"",
                        "sh",
                        &format!("arg{i}"),
                    ],
                )
            };
            s.submit(b).unwrap()
        })
        .collect();
    for (i, f) in futures.into_iter().enumerate() {
        assert_eq!(unsafe { future_wait(f, WATCHDOG_MS) }, BRIDGE_OK);
        let r = ran(f);
        assert_eq!(String::from_utf8(r.out).unwrap(), format!("arg{i}:{i}"));
    }
    unsafe { bridge_free(b) };
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn sigchld_action() -> libc::sighandler_t {
    let mut old = unsafe { std::mem::zeroed::<libc::sigaction>() };
    assert_eq!(
        unsafe { libc::sigaction(libc::SIGCHLD, null(), &mut old) },
        0
    );
    old.sa_sigaction
}

/// Every kind of ending, many times over: no descriptor is left open, and the
/// SIGCHLD action is the one the process had.
#[test]
fn no_descriptor_leaks_and_no_sigchld_handler() {
    let _alone = EXCLUSIVE.write().unwrap();
    let action = sigchld_action();
    let b = start();
    // A first run of each kind, so that the runtime's own lazily opened descriptors
    // (its blocking threads, its timer) are there before counting.
    let kinds = [
        Spec {
            stdin: vec![b'x'; 100_000],
            ..spec("cat", &[])
        },
        sh("printf out; printf err >&2; exit 1"),
        spec("./nope", &[]),
        Spec {
            timeout_ms: 20,
            ..spec("sleep", &["100"])
        },
        Spec {
            max_output: 10,
            ..spec("yes", &[])
        },
        Spec {
            stdin: vec![b'x'; 1 << 20],
            ..sh("exit 0")
        },
        sh("sleep 100 & echo left"),
    ];
    for kind in &kinds {
        unsafe { future_release(kind.run(b)) };
    }
    let before = open_fds();
    for _ in 0..10 {
        for kind in &kinds {
            unsafe { future_release(kind.run(b)) };
        }
        let f = spec("sleep", &["100"]).submit(b).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        unsafe {
            future_cancel(f);
            assert_eq!(future_wait(f, WATCHDOG_MS), BRIDGE_CANCELLED);
            future_release(f);
        }
    }
    assert_eq!(open_fds(), before, "descriptors leaked");
    assert_eq!(sigchld_action(), action, "the SIGCHLD action changed");
    assert_eq!(action, libc::SIG_DFL);
    unsafe { bridge_free(b) };
    assert_eq!(sigchld_action(), action);
}

/// Arguments, environment and input are bytes, not text: none of it must be UTF-8.
#[test]
fn bytes_that_are_not_utf8_pass_through() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let program = c"sh";
    let script = c"printf '%s|%s|' \"$1\" \"$V\"; cat";
    let arg0 = c"sh";
    let arg = CString::new(vec![0xff, 0xfe, b'a']).unwrap();
    let var = CString::new(vec![b'V', b'=', 0xc3, 0x28]).unwrap();
    let argv = [
        c"-c".as_ptr(),
        script.as_ptr(),
        arg0.as_ptr(),
        arg.as_ptr(),
        null(),
    ];
    let env = [var.as_ptr(), null()];
    let input = [0u8, 0x80, 0xff, 0];
    let mut opts = unsafe { std::mem::zeroed::<bridge_process_options_t>() };
    unsafe { bridge_process_options_init(&mut opts) };
    opts.program = program.as_ptr();
    opts.argv = argv.as_ptr();
    opts.env = env.as_ptr();
    opts.stdin_data = input.as_ptr().cast();
    opts.stdin_len = input.len();
    let mut f = null_mut();
    assert_eq!(unsafe { bridge_process_run(b, &opts, &mut f) }, BRIDGE_OK);
    assert_eq!(unsafe { future_wait(f, WATCHDOG_MS) }, BRIDGE_OK);
    let r = ran(f);
    assert_eq!(
        r.out,
        [&[0xff, 0xfe, b'a', b'|', 0xc3, 0x28, b'|'][..], &input[..]].concat()
    );
    unsafe { bridge_free(b) };
}
