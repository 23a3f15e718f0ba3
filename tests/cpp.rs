//! The C++ tests of `include/asyncbridge.hpp` (`tests/cpp/`, a CTest suite): configured,
//! built with `-Wall -Wextra -Wpedantic -Werror` against the shared library cargo just
//! built, and run, once per compiler (g++, clang++) and standard (C++17, C++20), each a
//! `#[test]` of its own, under AddressSanitizer + UBSan.
//!
//! - `ASYNCBRIDGE_CXX_SANITIZE=0` builds without the sanitizers (e.g. to run the
//!   programs under valgrind afterwards).
//! - A missing clang++ (or C++ compiler) or cmake skips what needs it with a note,
//!   unless `ASYNCBRIDGE_REQUIRE_GUI` is set (as in CI), where it is a failure.
//! - Without cmake the programs are compiled directly with the same flags and run one
//!   by one, so a machine with Rust and a C++ compiler alone still runs them;
//!   `ASYNCBRIDGE_CXX_DIRECT=1` does that even where cmake exists.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Per program, as the CTest suite's TIMEOUT.
const WATCHDOG: Duration = Duration::from_secs(120);

/// What a test program exits with when it does not apply to its build (CTest's
/// SKIP_RETURN_CODE): the coroutine tests, built as C++17.
const SKIP_CODE: i32 = 77;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn suite() -> PathBuf {
    root().join("tests/cpp")
}

/// target/<profile>, holding libasyncbridge.so once [`build_library`] has run.
fn profile_dir() -> PathBuf {
    // target/<profile>/deps/cpp-<hash> -> target/<profile>
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_owned()
}

/// Builds the shared library with this test's profile (`cargo test` builds only the
/// rlib; cargo holds no lock while tests run, so the nested build is safe) and returns
/// the directory holding it.
fn build_library() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(cargo);
        build
            .args(["build", "--lib", "--quiet"])
            .current_dir(root());
        let dir = profile_dir();
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("cannot run cargo");
        assert!(status.success(), "cargo build --lib failed");
        assert!(
            dir.join("libasyncbridge.so").exists(),
            "{} has no libasyncbridge.so",
            dir.display()
        );
        dir
    })
}

/// Whether `program` can be run (`program --version` succeeds).
fn found(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn required() -> bool {
    std::env::var_os("ASYNCBRIDGE_REQUIRE_GUI").is_some()
}

fn sanitize() -> bool {
    std::env::var("ASYNCBRIDGE_CXX_SANITIZE").map_or(true, |v| v != "0")
}

/// Says why a configuration does not run, or fails for it under ASYNCBRIDGE_REQUIRE_GUI.
fn skip(what: &str) {
    assert!(
        !required(),
        "ASYNCBRIDGE_REQUIRE_GUI is set, but {what} (apt-get install g++ clang cmake)"
    );
    println!("SKIPPED: {what}");
}

fn check_output(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs one configuration: `cxx` as C++`std`, through CMake and CTest, or compiled
/// directly when cmake is missing.
fn run_configuration(cxx: &str, std: u32) {
    // One configuration at a time: each builds with two jobs, on a shared machine.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());

    let compiler = if found(cxx) {
        cxx
    } else if cxx == "g++" && found("c++") {
        "c++" // the system's C++ compiler stands in for g++
    } else {
        skip(&format!(
            "{cxx} is not installed: the C++{std} tests with it did not run"
        ));
        return;
    };
    let lib_dir = build_library();
    let started = Instant::now();
    let direct = std::env::var("ASYNCBRIDGE_CXX_DIRECT").is_ok_and(|v| v == "1");
    if !direct && found("cmake") {
        with_cmake(compiler, std, lib_dir);
    } else {
        if !direct {
            skip("cmake is not installed: the suite is compiled directly instead of by CMake");
        }
        direct_build(compiler, std, lib_dir);
    }
    println!(
        "{compiler} C++{std} (sanitizers {}): {:.1} s",
        if sanitize() { "on" } else { "off" },
        started.elapsed().as_secs_f64()
    );
}

fn with_cmake(compiler: &str, std: u32, lib_dir: &Path) {
    let build = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cpp-{compiler}-{std}"));
    let configure = Command::new("cmake")
        .arg("-S")
        .arg(suite())
        .arg("-B")
        .arg(&build)
        .arg(format!("-DCMAKE_CXX_COMPILER={compiler}"))
        .arg(format!("-DCMAKE_CXX_STANDARD={std}"))
        .arg(format!("-DASYNCBRIDGE_LIB_DIR={}", lib_dir.display()))
        .arg(format!(
            "-DASYNCBRIDGE_SANITIZE={}",
            if sanitize() { "ON" } else { "OFF" }
        ))
        .output()
        .expect("cannot run cmake");
    check_output("cmake (configure)", &configure);
    let compile = Command::new("cmake")
        .arg("--build")
        .arg(&build)
        .args(["-j", "2"])
        .output()
        .expect("cannot run cmake --build");
    check_output("cmake --build", &compile);
    let ctest = Command::new("ctest")
        .args(["--output-on-failure", "--no-tests=error"])
        .current_dir(&build)
        .output()
        .expect("cannot run ctest");
    print!("{}", String::from_utf8_lossy(&ctest.stdout));
    check_output("ctest", &ctest);
}

/// The test programs, as tests/cpp/CMakeLists.txt lists them.
fn programs() -> Vec<String> {
    let cmake = std::fs::read_to_string(suite().join("CMakeLists.txt")).unwrap();
    let line = cmake
        .lines()
        .find_map(|l| l.trim().strip_prefix("set(ASYNCBRIDGE_CPP_TESTS "))
        .expect("no set(ASYNCBRIDGE_CPP_TESTS ...) in tests/cpp/CMakeLists.txt");
    line.trim_end_matches(')')
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn direct_build(compiler: &str, std: u32, lib_dir: &Path) {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cpp-direct-{compiler}-{std}"));
    // The library under its SONAME, which the programs look for at run time.
    let libs = out.join("lib");
    std::fs::create_dir_all(&libs).unwrap();
    for name in ["libasyncbridge.so", "libasyncbridge.so.0"] {
        let link = libs.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib_dir.join("libasyncbridge.so"), &link).unwrap();
    }
    let mut flags: Vec<String> = [
        "-Wall",
        "-Wextra",
        "-Wpedantic",
        "-Werror",
        "-g",
        "-pthread",
    ]
    .map(str::to_owned)
    .to_vec();
    flags.push(format!("-std=c++{std}"));
    if sanitize() {
        flags.extend(
            [
                "-fsanitize=address,undefined",
                "-fno-omit-frame-pointer",
                "-fno-sanitize-recover=undefined",
            ]
            .map(str::to_owned),
        );
    }
    let server = root().join("tests/servers/test_server.py");
    for name in programs() {
        let exe = out.join(&name);
        let compile = Command::new(compiler)
            .args(&flags)
            .arg("-I")
            .arg(root().join("include"))
            .arg(format!(
                "-DASYNCBRIDGE_TEST_SERVER=\"{}\"",
                server.display()
            ))
            .arg("-DASYNCBRIDGE_TEST_PYTHON=\"python3\"")
            .arg(suite().join(format!("{name}.cpp")))
            .arg("-o")
            .arg(&exe)
            .arg(format!("-L{}", libs.display()))
            .arg("-lasyncbridge")
            .arg(format!("-Wl,-rpath,{}", libs.display()))
            .output()
            .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
        check_output(&format!("{compiler} tests/cpp/{name}.cpp"), &compile);
        run_program(&exe);
    }
}

/// Runs a test program under the watchdog; exit 0 passes, SKIP_CODE is a skip.
fn run_program(exe: &Path) {
    let mut child = Command::new(exe)
        .env("UBSAN_OPTIONS", "print_stacktrace=1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > WATCHDOG {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    if output.status.code() == Some(SKIP_CODE) {
        return;
    }
    assert!(
        output.status.success(),
        "{} failed ({}{}):\nstdout:\n{stdout}\nstderr:\n{}",
        exe.display(),
        output.status,
        if started.elapsed() > WATCHDOG {
            ", killed by the watchdog"
        } else {
            ""
        },
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn gxx_cpp17() {
    run_configuration("g++", 17);
}

#[test]
fn gxx_cpp20() {
    run_configuration("g++", 20);
}

#[test]
fn clangxx_cpp17() {
    run_configuration("clang++", 17);
}

#[test]
fn clangxx_cpp20() {
    run_configuration("clang++", 20);
}
