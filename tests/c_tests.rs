//! Builds every C test (`tests/c/*.c`) and every example (`c_examples/*.c`) with
//! `-Wall -Wextra -Wpedantic -Werror` against the shared library cargo just built, and
//! runs each under a watchdog.
//!
//! `CC` picks the compiler (default `cc`); `ASYNCBRIDGE_CFLAGS` adds flags, e.g.
//! `-fsanitize=address,undefined` for a sanitizer run of the C side.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const WATCHDOG: Duration = Duration::from_secs(120);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A directory holding the freshly built library under its SONAME too.
fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // target/<profile>/deps/c_tests-<hash> -> target/<profile>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap();
        // `cargo test` builds the library only as an rlib: build the shared library
        // from the same sources with the same profile (cargo holds no lock while
        // tests run, so this nested build is safe).
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(cargo);
        build
            .args(["build", "--lib", "--quiet"])
            .current_dir(root());
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("cannot run cargo");
        assert!(status.success(), "cargo build --lib failed");
        let lib = profile_dir.join("libasyncbridge.so");
        assert!(lib.exists(), "{} not built", lib.display());
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_lib");
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["libasyncbridge.so", "libasyncbridge.so.0"] {
            let link = dir.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&lib, &link).unwrap();
        }
        dir
    })
}

fn compile(source: &Path) -> PathBuf {
    compile_with(source, &[])
}

/// Like [`compile`], with `extra_args` after the source: e.g. the output of
/// `pkg-config --cflags --libs` for a library an example uses.
fn compile_with(source: &Path, extra_args: &[String]) -> PathBuf {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let extra = std::env::var("ASYNCBRIDGE_CFLAGS").unwrap_or_default();
    let mut args = vec!["-std=c11".to_owned(), "-Wpedantic".to_owned()];
    args.extend(extra.split_whitespace().map(str::to_owned));
    compile_by(&cc, &args, source, extra_args)
}

/// Compiles `source` with `compiler` and its `flags` (besides the warnings, debug
/// information and threads every program gets) against the library.
fn compile_by(compiler: &str, flags: &[String], source: &Path, extra_args: &[String]) -> PathBuf {
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_bin");
    std::fs::create_dir_all(&out_dir).unwrap();
    let exe = out_dir.join(source.file_stem().unwrap());
    let cc = compiler;
    let lib = lib_dir();
    let output = Command::new(cc)
        .args([
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-g",
            "-pthread",
        ])
        .args(flags)
        .arg("-I")
        .arg(root().join("include"))
        .arg("-I")
        .arg(root().join("tests/c"))
        .arg(source)
        .args(extra_args)
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib.display()))
        .arg("-lasyncbridge")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(
        output.status.success(),
        "{} does not compile:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    exe
}

/// Runs `exe` with `args`, killing it after the watchdog; returns (success, stdout, stderr).
fn run(exe: &Path, args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            return (
                status.success(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            );
        }
        if started.elapsed() > WATCHDOG {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "{} hung for {:?} (watchdog)\nstdout:\n{}\nstderr:\n{}",
                exe.display(),
                WATCHDOG,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `exe` with `args` like `run`, but lets `drive` talk to it while it runs: `drive`
/// gets the child's pid (to send it signals) and its stdout lines as they come. The
/// child is killed if `drive` panics or the watchdog runs out. Returns (success, stdout,
/// stderr).
fn run_driven(
    exe: &Path,
    args: &[&str],
    drive: impl FnOnce(i32, &std::sync::mpsc::Receiver<String>),
) -> (bool, String, String) {
    use std::io::{BufRead, Read};
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            all.push_str(&line);
            all.push('\n');
            let _ = lines_tx.send(line);
        }
        all
    });
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all);
        all
    });
    let started = Instant::now();
    let driven = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drive(pid, &lines)));
    let mut hung = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if driven.is_err() || started.elapsed() > WATCHDOG {
            hung = driven.is_ok();
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    if let Err(panic) = driven {
        eprintln!("{} stdout:\n{stdout}\nstderr:\n{stderr}", exe.display());
        std::panic::resume_unwind(panic);
    }
    assert!(
        !hung,
        "{} hung for {:?} (watchdog)\nstdout:\n{stdout}\nstderr:\n{stderr}",
        exe.display(),
        WATCHDOG
    );
    (status.success(), stdout, stderr)
}

/// Compiles and runs one C program; fails with its output unless it exits 0.
/// Returns its stdout.
fn build_and_run(source: &str, args: &[&str]) -> String {
    let exe = compile(&root().join(source));
    let (ok, stdout, stderr) = run(&exe, args);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(ok, "{source} failed:\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

/// Whether `ASYNCBRIDGE_C_SKIP` (comma-separated names) leaves this C test out, as a
/// sanitizer run does for a test the sanitizer itself cannot run; says so if it does.
fn skipped(name: &str) -> bool {
    let skip = std::env::var("ASYNCBRIDGE_C_SKIP").unwrap_or_default();
    let hit = skip.split(',').any(|s| s.trim() == name);
    if hit {
        println!("skipped: tests/c/{name}.c (ASYNCBRIDGE_C_SKIP)");
    }
    hit
}

/// One `#[test]` per C test file; each file's own "ok - name" lines list its cases.
macro_rules! c_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                if skipped(stringify!($name)) {
                    return;
                }
                let stdout = build_and_run(concat!("tests/c/", stringify!($name), ".c"), &[]);
                assert!(stdout.contains("ok - "), "ran no test case");
                assert!(!stdout.contains("not ok"), "a test case failed");
            }
        )*
        const C_TESTS: &[&str] = &[$(stringify!($name)),*];
    };
}

c_tests!(
    smoke,
    futures,
    cancel,
    callbacks,
    bridge,
    threads,
    fork,
    queue,
    time,
    signal,
    reentrant,
    thread_exit,
    hostile,
    promise,
    post,
    file,
    process,
    token,
    channel,
    stream,
);

/// A C++ exception escaping work is fatal, as documented: std::terminate() names it.
/// (Before the work was called from an outermost frame, it unwound into Rust, which
/// aborted with a message about foreign exceptions.)
#[test]
fn a_cxx_exception_escaping_work_terminates_naming_it() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_owned());
    let exe = compile_by(
        &cxx,
        &["-std=c++17".to_owned()],
        &root().join("tests/c/exception_in_work.cpp"),
        &[],
    );
    let (ok, stdout, stderr) = run(&exe, &[]);
    assert!(
        !ok && stdout.is_empty(),
        "the process went on:\n{stdout}{stderr}"
    );
    assert!(
        stderr.contains("terminate called after throwing an instance of 'std::runtime_error'")
            && stderr.contains("thrown by work"),
        "not terminated by the C++ runtime:\n{stderr}"
    );
}

/// CPython ends (pthread_exit) every thread that asks for the interpreter once it is
/// finalizing: a ctypes program that exits with Python work running on the pool used
/// to die with SIGABRT. Now the threads end, the work's futures fail as abandoned
/// (reported, being unobserved) and the process exits normally.
#[test]
fn a_python_ctypes_program_exits_with_work_in_flight() {
    let script = root().join("tests/python/exit_with_work_in_flight.py");
    let lib = lib_dir().join("libasyncbridge.so");
    let (ok, stdout, stderr) = run(
        Path::new("python3"),
        &[script.to_str().unwrap(), lib.to_str().unwrap()],
    );
    assert!(ok, "python3 failed:\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("exiting with work in flight"), "{stdout}");
    assert!(!stderr.contains("FATAL"), "{stderr}");
    let reports = stderr
        .matches("unobserved failure of a future (code -7)")
        .count();
    assert_eq!(
        reports, 4,
        "each worker's future fails abandoned:\n{stderr}"
    );
}

#[test]
fn every_c_test_file_is_listed() {
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root().join("tests/c")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "c") {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
            if !C_TESTS.contains(&stem.as_str()) {
                missing.push(stem);
            }
        }
    }
    assert!(missing.is_empty(), "add to c_tests!(...): {missing:?}");
}

#[test]
fn example_quickstart() {
    let out = build_and_run("c_examples/quickstart.c", &[]);
    assert!(out.contains("7 squared is 49"), "{out}");
    assert!(
        out.contains("callback: square(9) finished, value 81"),
        "{out}"
    );
    assert!(out.contains("code 42"), "{out}");
    assert!(
        out.contains("after shutdown, submit says: bridge not running"),
        "{out}"
    );
}

#[test]
fn example_promise_callback_api() {
    let out = build_and_run("c_examples/promise_callback_api.c", &[]);
    assert!(out.contains("both lookups: ok"), "{out}");
    assert!(
        out.contains("lookup 1: 10") && out.contains("lookup 2: 20"),
        "{out}"
    );
    assert!(
        out.contains("slow lookup: failed, timed out after 50 ms"),
        "{out}"
    );
    assert!(out.contains("cancelled lookup: cancelled"), "{out}");
    // Four lookups: two completed, the timed-out one failed, one cancelled; the
    // combination is counted apart.
    assert!(
        out.contains("stats: 4 submitted, 2 completed, 1 failed, 1 cancelled, 0 pending"),
        "{out}"
    );
    assert!(out.contains("shutdown: ok"), "{out}");
}

#[test]
fn example_run_process() {
    // With no arguments: `uname -s`, whose answer this test asks the same way.
    let out = build_and_run("c_examples/run_process.c", &[]);
    let uname = Command::new("uname").arg("-s").output().unwrap();
    let system = String::from_utf8(uname.stdout).unwrap();
    assert!(out.contains("uname: exit code 0"), "{out}");
    assert!(out.contains(&format!("uname: stdout: {system}")), "{out}");
    assert!(out.contains("sort: exit code 0"), "{out}");
    assert!(out.contains("sort: stdout: apple\nfig\npear\n"), "{out}");
    assert!(
        out.contains("sleepy sh: failed: process sh timed out after 100 ms"),
        "{out}"
    );
    assert!(
        out.contains("no-such-tool: failed: start no-such-tool: No such file or directory"),
        "{out}"
    );
    assert!(
        out.contains("no-such-tool: not found, as expected"),
        "{out}"
    );
    assert!(out.contains("shutdown: ok"), "{out}");

    // With a command: that command, its arguments, its exit code and both streams.
    let out = build_and_run(
        "c_examples/run_process.c",
        &["sh", "-c", "echo to stdout; echo to stderr >&2; exit 4"],
    );
    assert!(out.contains("sh: exit code 4"), "{out}");
    assert!(out.contains("sh: stdout: to stdout\n"), "{out}");
    assert!(out.contains("sh: stderr: to stderr\n"), "{out}");
}

#[test]
fn example_cancel_scope() {
    let out = build_and_run("c_examples/cancel_scope.c", &[]);
    assert!(
        out.contains("search: time limit reached, closing the window"),
        "{out}"
    );
    assert!(
        out.contains("window: every operation has stopped (join: done)"),
        "{out}"
    );
    for name in [
        "refresh timer",
        "background program (sleep 30)",
        "API request",
        "search",
    ] {
        assert!(out.contains(&format!("{name}: cancelled")), "{out}");
    }
    assert!(out.contains("the API was told to stop: yes"), "{out}");
}

#[test]
fn header_is_standalone_c_and_cpp() {
    let include = root().join("include");
    for (compiler, std) in [
        ("cc", "c99"),
        ("cc", "c11"),
        ("c++", "c++11"),
        ("c++", "c++17"),
    ] {
        let lang = if compiler == "cc" { "c" } else { "c++" };
        let mut child = Command::new(compiler)
            .args(["-x", lang, &format!("-std={std}")])
            .args([
                "-Wall",
                "-Wextra",
                "-Wpedantic",
                "-Werror",
                "-fsyntax-only",
                "-",
            ])
            .arg("-I")
            .arg(&include)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"#include <asyncbridge.h>\n#include <asyncbridge.h>\nint main(void) { return BRIDGE_OK; }\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{compiler} -std={std}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A server of the tests, on 127.0.0.1 and a port of its choosing, killed when
/// dropped (the test's end, or its panic).
struct Server {
    child: std::process::Child,
    port: u16,
}

impl Server {
    /// Starts `python3 args...` and reads the port from its first line of output
    /// (`tests/servers/test_server.py` prints "port N"; `python3 -u -m http.server 0`
    /// prints "Serving HTTP on 127.0.0.1 port N ...").
    fn start(args: &[&str]) -> Server {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .args(args)
            .stdin(Stdio::piped()) // closed when we go: see --until-stdin-closes
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run python3");
        let mut line = String::new();
        let read = std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok());
        // Killed by its Drop if it said something else.
        let mut server = Server { child, port: 0 };
        match (read, port) {
            (Ok(_), Some(port)) => server.port = port,
            _ => panic!("python3 {args:?} did not start: {line:?}"),
        }
        server
    }

    /// `tests/servers/test_server.py` with `args`.
    fn test_server(args: &[&str]) -> Server {
        let script = root().join("tests/servers/test_server.py");
        let mut all = vec![script.to_str().unwrap(), "--until-stdin-closes"];
        all.extend_from_slice(args);
        Server::start(&all)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh, empty directory for one test.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn example_thread_pool_server() {
    // Request 123's backend answers only after the deadline; /orders/<id> fails with
    // 503 for every id ending in 9 (see tests/servers/test_server.py).
    let backend = Server::test_server(&["--slow", "123"]);
    let exe = compile(&root().join("c_examples/thread_pool_server.c"));
    let (ok, out, err) = run(&exe, &[&backend.url(""), "3000"]);
    print!("{out}");
    eprint!("{err}");
    // The program itself exits non-zero unless every request is accounted for and no
    // future is left pending; here the numbers are read back as a user would.
    assert!(
        ok,
        "thread_pool_server failed:\nstdout:\n{out}\nstderr:\n{err}"
    );
    for id in 0..400u32 {
        let prefix = format!("answer {id}: ");
        let answers: Vec<&str> = out.lines().filter(|l| l.starts_with(&prefix)).collect();
        assert_eq!(answers.len(), 1, "answers to request {id}: {answers:?}");
        let answer = &answers[0][prefix.len()..];
        if id == 123 {
            assert_eq!(answer, "504 timed out after 3000 ms", "request {id}");
        } else if id % 10 == 9 {
            assert!(
                answer.starts_with("502 ") && answer.contains("503"),
                "request {id}: {answer}"
            );
        } else {
            let expected = format!(
                "200 user-{id}, {} orders, {} in stock",
                id % 7,
                id * 3 % 100
            );
            assert_eq!(answer, expected, "request {id}");
        }
    }
    assert!(
        out.contains("served: 359, failed (502): 40, timed out (504): 1, refused: 0"),
        "{out}"
    );
    // All three calls of request 123 were still waiting for the backend.
    assert!(
        out.contains("backend calls cancelled at the deadline: 3"),
        "{out}"
    );
    assert!(out.contains("pending 0"), "{out}");
    assert!(out.contains("shutdown: ok"), "{out}");
}

/// Compiles a C++ example with `CXX` (default `c++`) as C++`std`, with the flags of
/// `ASYNCBRIDGE_CFLAGS` (a sanitizer run instruments the C++ side too).
fn compile_cxx(source: &str, std: u32) -> PathBuf {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_owned());
    let mut flags = vec![format!("-std=c++{std}")];
    let extra = std::env::var("ASYNCBRIDGE_CFLAGS").unwrap_or_default();
    flags.extend(extra.split_whitespace().map(str::to_owned));
    compile_by(&cxx, &flags, &root().join(source), &[])
}

#[test]
fn example_cpp_quickstart() {
    let exe = compile_cxx("c_examples/cpp_quickstart.cpp", 17);
    let (ok, out, err) = run(&exe, &[]);
    print!("{out}");
    eprint!("{err}");
    assert!(ok, "cpp_quickstart failed:\nstdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("sum of squares: 30\n"), "{out}");
    // std::stoi's exception, its what() as the failure's message.
    assert!(out.contains("parse failed (code 1): stoi\n"), "{out}");
    assert!(
        out.contains("slow work: timed out after 100 ms after "),
        "{out}"
    );
    assert!(out.contains("from the callback API: record 7\n"), "{out}");
    assert!(out.contains("first done: #1\n"), "{out}");
}

/// The coroutine example's chain of HTTP, file and process steps, against the test
/// server: one report made, one failing at a 503, one cancelled while it waits.
#[test]
fn example_coroutine_pipeline() {
    let server = Server::test_server(&[]);
    let dir = scratch_dir("coroutine_pipeline");
    let exe = compile_cxx("c_examples/coroutine_pipeline.cpp", 20);
    let (ok, out, err) = run(&exe, &[&server.url(""), dir.to_str().unwrap()]);
    print!("{out}");
    eprint!("{err}");
    assert!(
        ok,
        "coroutine_pipeline failed:\nstdout:\n{out}\nstderr:\n{err}"
    );
    let report = "user-42: 0 orders, 26 in stock\n";
    assert!(out.contains(&format!("report 42: {report}")), "{out}");
    assert_eq!(
        std::fs::read_to_string(dir.join("report-42.txt")).unwrap(),
        report
    );
    // wc ran on the file it wrote: the byte count is the report's.
    assert!(out.contains(&format!("wc:     {} ", report.len())), "{out}");
    assert!(
        out.contains("extra:  gave up: timed out after 200 ms\n"),
        "{out}"
    );
    assert!(
        out.contains("report 19: failed (code -12): HTTP 503 Service Unavailable\n"),
        "{out}"
    );
    assert!(out.contains("report 7: cancelled\n"), "{out}");
    // Only the one report, and no temporary file of the atomic write left behind.
    assert_eq!(entries(&dir), ["report-42.txt"]);
}

/// c_examples/http_get.c, compiled once for the tests that run it (in parallel).
fn http_get_exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| compile(&root().join("c_examples/http_get.c")))
}

/// A complete download through `python3 -m http.server`: the file arrives byte for
/// byte, with progress lines on the way.
#[test]
fn example_http_get_downloads_a_file() {
    let served = scratch_dir("http_get_served");
    // Not a multiple of any buffer size, and not all zeros.
    let content: Vec<u8> = (0..3_000_017u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(served.join("data.bin"), &content).unwrap();
    let server = Server::start(&[
        "-u",
        "-m",
        "http.server",
        "0",
        "--bind",
        "127.0.0.1",
        "--directory",
        served.to_str().unwrap(),
    ]);
    let exe = http_get_exe();
    let out_dir = scratch_dir("http_get_out");
    let output = out_dir.join("data.bin");

    let (ok, out, err) = run(exe, &[&server.url("/data.bin"), output.to_str().unwrap()]);
    print!("{out}");
    eprint!("{err}");
    assert!(ok, "http_get failed:\nstdout:\n{out}\nstderr:\n{err}");
    assert!(
        std::fs::read(&output).unwrap() == content,
        "the downloaded file differs"
    );
    assert!(
        out.contains(&format!(
            "saved 3000017 bytes to {} (HTTP 200)",
            output.display()
        )),
        "{out}"
    );
    // http.server sends Content-Length: every progress line knows the total.
    let progress: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("progress: "))
        .collect();
    assert!(!progress.is_empty(), "no progress line:\n{out}");
    for line in &progress {
        assert!(line.contains(" of 3000017 bytes ("), "{line}");
    }

    // A missing file: a failure that says so, and no file left.
    let missing = out_dir.join("missing.bin");
    let (ok, out, err) = run(
        exe,
        &[&server.url("/missing.bin"), missing.to_str().unwrap()],
    );
    assert!(!ok, "a 404 succeeded:\n{out}{err}");
    assert!(
        out.contains("failed: ") && out.contains("404"),
        "{out}{err}"
    );
    assert_eq!(entries(&out_dir), ["data.bin"]);
}

/// What goes wrong is said, exits non-zero and leaves no file: a body cut short, a
/// refused connection, a URL that is none; a redirect is followed.
#[test]
fn example_http_get_failures_leave_no_file() {
    let server = Server::test_server(&[]);
    let out_dir = scratch_dir("http_get_failures");
    let output = out_dir.join("out.bin");
    let output = output.to_str().unwrap();

    // 1 MiB announced, the connection closed after 300 000 bytes.
    let cut = server.url("/stream?size=1048576&chunk=50000&cut_at=300000");
    let (ok, out, err) = run(http_get_exe(), &[&cut, output]);
    assert!(!ok && out.contains("failed: "), "{out}{err}");
    assert_eq!(entries(&out_dir), Vec::<String>::new(), "{out}");

    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = format!("http://127.0.0.1:{port}/file");
    let (ok, out, err) = run(http_get_exe(), &[&refused, output]);
    assert!(!ok && out.contains("failed: "), "{out}{err}");
    assert!(out.to_lowercase().contains("refused"), "{out}");
    assert_eq!(entries(&out_dir), Vec::<String>::new(), "{out}");

    // Refused at once: nothing starts.
    for url in ["ftp://127.0.0.1/file", "no url", ""] {
        let (ok, out, err) = run(http_get_exe(), &[url, output]);
        assert!(
            !ok && err.contains("cannot download") && err.contains("invalid"),
            "{url:?}: {out}{err}"
        );
    }
    let (ok, _, err) = run(http_get_exe(), &[]);
    assert!(!ok && err.contains("usage: "), "{err}");
    assert_eq!(entries(&out_dir), Vec::<String>::new());

    // A redirect is followed; the file holds the final body.
    let redirect = server.url("/redirect?to=/stream%3Fsize%3D1000");
    let (ok, out, err) = run(http_get_exe(), &[&redirect, output]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("saved 1000 bytes"), "{out}");
    assert!(
        out.contains(&format!(
            "from {} (redirected)",
            server.url("/stream?size=1000")
        )),
        "{out}"
    );
    let expected: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    assert!(std::fs::read(output).unwrap() == expected);
}

/// Ctrl-C in the middle of a slow download: "cancelled", a non-zero exit, and no file
/// (partial or temporary) left behind.
#[test]
fn example_http_get_cancelled_by_sigint() {
    let server = Server::test_server(&[]);
    let exe = http_get_exe();
    let out_dir = scratch_dir("http_get_cancel");
    let output = out_dir.join("slow.bin");
    // 64 MiB at 16 KiB every 20 ms: over a minute, far longer than the test waits.
    let url = server.url("/stream?size=67108864&chunk=16384&delay_ms=20");
    let (ok, out, err) = run_driven(exe, &[&url, output.to_str().unwrap()], |pid, lines| {
        // Some bytes have arrived (not only the headers) before the signal.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.starts_with("progress: ") && !line.starts_with("progress: 0 ") => {
                    assert!(line.contains(" of 67108864 bytes ("), "{line}");
                    break;
                }
                Ok(_) => {}
                Err(e) => panic!("no progress within 30 s: {e:?}"),
            }
        }
        // SAFETY: kill() has no memory-safety preconditions; `pid` is our child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    });
    print!("{out}");
    eprint!("{err}");
    assert!(!ok, "http_get exited 0 after SIGINT:\n{out}{err}");
    assert!(out.contains("SIGINT: cancelling\n"), "{out}");
    assert!(out.ends_with("cancelled\n"), "{out}");
    assert!(!out.contains("saved "), "{out}");
    assert_eq!(entries(&out_dir), Vec::<String>::new(), "left behind");
}

#[test]
fn readme_example_compiles_and_runs() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme.find("```c\n").expect("a C example in the README") + 5;
    let end = start + readme[start..].find("```").unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("readme");
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("readme_example.c");
    std::fs::write(&source, &readme[start..end]).unwrap();
    let exe = compile(&source);
    let (ok, stdout, stderr) = run(&exe, &[]);
    assert!(
        ok && stdout.trim() == "49",
        "stdout: {stdout}\nstderr: {stderr}"
    );
}

#[test]
fn example_poll_loop() {
    let out = build_and_run("c_examples/poll_loop.c", &[]);
    // The program exits non-zero unless every callback ran on the main thread with the
    // right result and every input line was read; here the output is read back too.
    for id in 0..20u32 {
        let line = format!("done: job {id} -> {}", id * id);
        assert!(out.contains(&line), "no \"{line}\" in:\n{out}");
    }
    for n in 1..=6 {
        assert!(out.contains(&format!("input: line {n}")), "{out}");
    }
    assert!(out.contains("all 20 jobs done"), "{out}");
    assert!(
        out.contains("callbacks off the main thread: 0, wrong results: 0"),
        "{out}"
    );
}

#[test]
fn example_tail_process() {
    // The default command: five lines a tenth of a second apart, one on stderr
    // (merged), exit code 3. The program itself fails on a callback off the main
    // thread or a failed read.
    let out = build_and_run("c_examples/tail_process.c", &[]);
    for n in 1..=5 {
        assert!(out.contains(&format!("line: tick {n}")), "{out}");
    }
    assert!(out.contains("line: bye from stderr"), "{out}");
    assert!(out.contains("the program exited with code 3"), "{out}");
    assert!(out.contains("6 lines,"), "{out}");
    assert!(out.contains("callbacks off the main thread: 0"), "{out}");

    // A command of the caller's, a line without its newline at the end, a signal.
    let out = build_and_run(
        "c_examples/tail_process.c",
        &["sh", "-c", "printf 'a\nb\nno newline'; kill -KILL $$"],
    );
    for line in ["line: a", "line: b", "line: no newline"] {
        assert!(out.contains(line), "{out}");
    }
    assert!(out.contains("killed by signal 9"), "{out}");

    // A program that cannot start is refused at the spawn, with errno's reason.
    let exe = compile(&root().join("c_examples/tail_process.c"));
    let (ok, _, stderr) = run(&exe, &["./no-such-program"]);
    assert!(!ok);
    assert!(
        stderr.contains("cannot start ./no-such-program: ") && stderr.contains("No such file"),
        "{stderr}"
    );
}

#[test]
fn example_value_stream() {
    let out = build_and_run("c_examples/value_stream.c", &[]);
    // The program exits non-zero unless push mode saw every progress value before its
    // done future ended and the cancelled stream ended cancelled.
    for step in 1..=10 {
        assert!(out.contains(&format!("progress: {step}/10\n")), "{out}");
    }
    assert!(
        out.contains("copy: finished after 10 progress values"),
        "{out}"
    );
    for n in 1..=3 {
        assert!(
            out.contains(&format!("grep: match on line {}\n", n * 7)),
            "{out}"
        );
    }
    assert!(out.contains("grep: ended "), "{out}");
}

/// Needs GLib's development files: skipped without them, unless
/// `ASYNCBRIDGE_REQUIRE_GUI` is set (as in CI), where their absence is a failure.
#[test]
fn example_glib_main_loop() {
    let required = std::env::var_os("ASYNCBRIDGE_REQUIRE_GUI").is_some();
    let pkg_config = |args: &[&str]| {
        Command::new("pkg-config")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
    };
    let flags = match (
        pkg_config(&["--exists", "glib-2.0"]),
        pkg_config(&["--cflags", "--libs", "glib-2.0"]),
    ) {
        (Some(_), Some(out)) => String::from_utf8(out.stdout).unwrap(),
        _ => {
            assert!(
                !required,
                "ASYNCBRIDGE_REQUIRE_GUI is set, but glib-2.0 is not installed \
                 (apt-get install libglib2.0-dev pkg-config)"
            );
            println!("skipped: glib-2.0 not installed (apt-get install libglib2.0-dev)");
            return;
        }
    };
    let flags: Vec<String> = flags.split_whitespace().map(str::to_owned).collect();
    let exe = compile_with(&root().join("c_examples/glib_main_loop.c"), &flags);
    for (mode, args) in [("fd", &[][..]), ("notify", &["notify"][..])] {
        let (ok, stdout, stderr) = run(&exe, args);
        print!("{stdout}");
        eprint!("{stderr}");
        assert!(
            ok,
            "glib_main_loop {mode} failed:\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(
            stdout.contains(&format!("mode {mode}: 40 jobs done, 3 failed as planned")),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "mode {mode}: callbacks off the main loop: 0, wrong: 0"
            )),
            "{stdout}"
        );
        assert!(stdout.contains(&format!("mode {mode}: ok")), "{stdout}");
    }
}

#[test]
fn example_timer_signal() {
    let exe = compile(&root().join("c_examples/timer_signal.c"));
    let (ok, out, err) = run_driven(&exe, &["--wait"], |pid, lines| {
        // Reads lines until one satisfies `want`; panics (killing the child) if none
        // comes within 30 s.
        let wait_for = |want: &dyn Fn(&str) -> bool, what: &str| {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match lines.recv_timeout(left) {
                    Ok(line) if want(&line) => return line,
                    Ok(_) => {}
                    Err(e) => panic!("no {what} line within 30 s: {e:?}"),
                }
            }
        };
        let ready = wait_for(&|l| l.starts_with("ready pid="), "ready");
        assert_eq!(ready, format!("ready pid={pid}"));
        let send = |signal: i32| {
            // SAFETY: kill() has no memory-safety preconditions; `pid` is our child.
            let rc = unsafe { libc::kill(pid, signal) };
            assert_eq!(rc, 0, "kill({pid}, {signal})");
        };
        // Some reports first, then the signals, one at a time with pauses.
        wait_for(&|l| l.starts_with("report 1 done"), "first report");
        send(libc::SIGUSR1);
        wait_for(&|l| l.starts_with("cleanup 1 done"), "first cleanup");
        std::thread::sleep(Duration::from_millis(100));
        send(libc::SIGUSR1);
        wait_for(&|l| l.starts_with("cleanup 2 done"), "second cleanup");
        std::thread::sleep(Duration::from_millis(100));
        send(libc::SIGTERM);
        wait_for(&|l| l.starts_with("SIGTERM: shutting down"), "shutdown");
    });
    print!("{out}");
    eprint!("{err}");
    assert!(ok, "timer_signal failed:\nstdout:\n{out}\nstderr:\n{err}");
    let summary = out
        .lines()
        .find(|l| l.starts_with("summary: "))
        .unwrap_or_else(|| panic!("a summary line:\n{out}"));
    let field = |name: &str| -> u32 {
        let at = summary
            .find(&format!("{name} "))
            .unwrap_or_else(|| panic!("{name} in {summary}"));
        summary[at + name.len() + 1..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a number after {name} in {summary}"))
    };
    assert_eq!(field("cleanups"), 2, "{summary}");
    assert!(field("reports") >= 1, "{summary}");
    assert_eq!(field("failed"), 0, "{summary}");
    assert!(summary.ends_with("shutdown ok"), "{summary}");
}

/// c_examples/echo_server.c under 200 concurrent clients, each sending a few messages
/// of different sizes and checking every byte that comes back; then SIGTERM with some
/// connections still open, which the server closes before it exits cleanly.
#[test]
fn example_echo_server() {
    use std::io::{Read, Write};
    const THREADS: usize = 10;
    const PER_THREAD: usize = 20;
    const ROUNDS: usize = 4;
    const IDLE: usize = 10;
    let message = |conn: usize, round: usize| -> Vec<u8> {
        let len = 1 + (conn * 31 + round * 977) % 8192;
        (0..len)
            .map(|i| ((i + conn * 7 + round) % 251) as u8)
            .collect()
    };
    let expected_bytes: usize = (0..THREADS * PER_THREAD)
        .flat_map(|conn| (0..ROUNDS).map(move |round| (conn, round)))
        .map(|(conn, round)| message(conn, round).len())
        .sum();
    let exe = compile(&root().join("c_examples/echo_server.c"));
    let (ok, out, err) = run_driven(&exe, &[], |pid, lines| {
        let first = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a \"listening on\" line");
        let port: u16 = first
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("not a listening line: {first}"));
        let connect = move || {
            let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            // Hang guards only.
            c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            c
        };
        let clients: Vec<_> = (0..THREADS)
            .map(|t| {
                std::thread::spawn(move || {
                    let ids: Vec<usize> = (t * PER_THREAD..(t + 1) * PER_THREAD).collect();
                    // All of this thread's connections are open at once.
                    let mut conns: Vec<_> = ids.iter().map(|_| connect()).collect();
                    for round in 0..ROUNDS {
                        for (c, &id) in conns.iter_mut().zip(&ids) {
                            c.write_all(&message(id, round)).unwrap();
                        }
                        for (c, &id) in conns.iter_mut().zip(&ids) {
                            let want = message(id, round);
                            let mut got = vec![0u8; want.len()];
                            c.read_exact(&mut got).unwrap();
                            assert!(got == want, "connection {id}, round {round}: bytes differ");
                        }
                    }
                    // The client's end: the server ends its side too.
                    for c in &mut conns {
                        c.shutdown(std::net::Shutdown::Write).unwrap();
                        let mut rest = Vec::new();
                        c.read_to_end(&mut rest).unwrap();
                        assert!(rest.is_empty(), "bytes after the echo: {rest:?}");
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        // Open and proven served (one echo each), then left open for the stop.
        let mut idle: Vec<_> = (0..IDLE).map(|_| connect()).collect();
        for c in &mut idle {
            c.write_all(b"x").unwrap();
            let mut one = [0u8; 1];
            c.read_exact(&mut one).unwrap();
        }
        // SAFETY: kill() has no memory-safety preconditions; `pid` is our child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        for c in &mut idle {
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "{rest:?}");
        }
    });
    print!("{out}");
    eprint!("{err}");
    assert!(ok, "echo_server failed:\nstdout:\n{out}\nstderr:\n{err}");
    let total = THREADS * PER_THREAD + IDLE;
    assert!(
        out.contains(&format!("SIGTERM: stopping with {IDLE} open connection(s)")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "connections: {total}, finished: {total}, failed: 0, bytes echoed: {}, pending 0",
            expected_bytes + IDLE
        )),
        "{out}"
    );
    assert!(out.contains("shutdown: ok"), "{out}");
}

/// One call of an exported function with every pointer argument NULL, as C, with the
/// answer its return type promises; `None` if the function takes no pointer.
fn null_call(prototype: &str) -> Option<String> {
    let open = prototype.find('(')?;
    let head = prototype[..open].trim();
    let name_at = head.rfind([' ', '*'])? + 1;
    let (ret, name) = (head[..name_at].trim(), &head[name_at..]);
    let params = prototype[open + 1..prototype.rfind(')')?].trim();
    let args: Vec<&str> = if params == "void" {
        Vec::new()
    } else {
        params
            .split(',')
            .map(|p| {
                if p.contains('*') || p.trim().split(' ').next()?.ends_with("_fn") {
                    Some("NULL")
                } else {
                    Some("0")
                }
            })
            .collect::<Option<Vec<_>>>()?
    };
    if !args.contains(&"NULL") {
        return None;
    }
    let call = format!("{name}({})", args.join(", "));
    // What each return type answers for a NULL handle (the header documents each).
    let check = match ret {
        "void" => format!("{call}; int ok = 1;"),
        "bool" => format!("int ok = {call} == false;"),
        "size_t" => format!("int ok = {call} == 0;"),
        // bridge_channel_dropped: a count, 0 for NULL.
        "uint64_t" => format!("int ok = {call} == 0;"),
        "int" => format!("int ok = {call} == -1;"),
        // bridge_listener_port: 0 for NULL.
        "uint16_t" => format!("int ok = {call} == 0;"),
        "bridge_status" => format!("int ok = {call} == BRIDGE_E_INVALID;"),
        // bridge_job_fail returns the code it is given, whatever the job.
        "int32_t" if name == "bridge_job_fail" => format!("int ok = {call} == 0;"),
        // An errno: 0 when there is none, NULL included.
        "int32_t" if name == "future_os_error" => format!("int ok = {call} == 0;"),
        // future_value_type: BRIDGE_VALUE_NONE.
        "uint32_t" => format!("int ok = {call} == 0;"),
        "int32_t" => format!("int ok = {call} == BRIDGE_E_INVALID;"),
        r if r.ends_with('*') => format!("int ok = {call} == NULL;"),
        other => panic!("{name}: no rule for return type {other}"),
    };
    Some(format!(
        "    {{ {check} printf(\"%s - {name}\\n\", ok ? \"ok\" : \"not ok\"); bad += !ok; }}\n"
    ))
}

/// Every function the header declares, called with NULL for each pointer: generated
/// from the header, so a new function is covered the moment it is declared.
#[test]
fn every_function_answers_null_arguments() {
    let header = std::fs::read_to_string(root().join("include/asyncbridge.h")).unwrap();
    let mut prototypes = Vec::new();
    let mut current = String::new();
    for line in header.lines() {
        let starts = !line.starts_with(' ')
            && !line.starts_with('#')
            && !line.starts_with('/')
            && !line.starts_with('}')
            && !line.starts_with("typedef")
            && !line.starts_with("struct")
            && line.contains('(');
        if current.is_empty() && !starts {
            continue;
        }
        current.push_str(line.trim());
        current.push(' ');
        if line.trim_end().ends_with(");") {
            prototypes.push(std::mem::take(&mut current));
        }
    }
    assert!(
        prototypes.len() >= 40,
        "parsed {} prototypes",
        prototypes.len()
    );
    let calls: Vec<String> = prototypes.iter().filter_map(|p| null_call(p)).collect();
    // Only the functions without a pointer parameter are left out.
    assert_eq!(calls.len(), prototypes.len() - 3, "{prototypes:#?}");
    let mut source = String::from(
        "/* Generated by tests/c_tests.rs from include/asyncbridge.h. */\n\
         #include <asyncbridge.h>\n#include <stdio.h>\n\nint main(void) {\n    int bad = 0;\n",
    );
    calls.iter().for_each(|c| source.push_str(c));
    source.push_str("    return bad != 0;\n}\n");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("null_arguments");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("null_arguments.c");
    std::fs::write(&path, source).unwrap();
    let exe = compile(&path);
    let (ok, stdout, stderr) = run(&exe, &[]);
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok - ")).count(),
        calls.len()
    );
}
