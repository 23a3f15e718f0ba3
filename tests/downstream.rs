//! The example downstream library (`examples/downstream`, package `wordcount`): a C
//! library of its own on the embedding API, which carries asyncbridge's C API.
//!
//! Builds it with the same profile, checks what its shared library exports and is
//! named, builds its C program with `-Wall -Wextra -Wpedantic -Werror` against
//! libwordcount alone and runs it under a watchdog, and runs the crate's own tests.
//!
//! `CC` picks the compiler (default `cc`), `CXX` the C++ compiler that checks the
//! header (default `c++`); `ASYNCBRIDGE_CFLAGS` adds flags, as for the C tests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const WATCHDOG: Duration = Duration::from_secs(120);

/// Functions of the example library itself, besides asyncbridge's.
const OWN_FUNCTIONS: [&str; 3] = [
    "wordcount_counts_free",
    "wordcount_file",
    "wordcount_text_later",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn downstream() -> PathBuf {
    root().join("examples/downstream")
}

/// target/<profile>, where cargo puts the libraries of this build.
fn profile_dir() -> PathBuf {
    // target/<profile>/deps/downstream-<hash> -> target/<profile>
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_owned()
}

/// `cargo <args> -p wordcount` with this test's profile (cargo holds no lock while
/// tests run, so a nested cargo is safe).
fn cargo_wordcount(args: &[&str]) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .args(args)
        .args(["-p", "wordcount", "--quiet"])
        .current_dir(root());
    if profile_dir().file_name().is_some_and(|n| n == "release") {
        command.arg("--release");
    }
    command
}

/// A directory holding libwordcount.so, under its SONAME too, and nothing else: a
/// program linked from there cannot pick up libasyncbridge by accident.
fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let status = cargo_wordcount(&["build", "--lib"])
            .status()
            .expect("cannot run cargo");
        assert!(status.success(), "cargo build -p wordcount failed");
        let lib = profile_dir().join("libwordcount.so");
        assert!(lib.exists(), "{} not built", lib.display());
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("downstream_lib");
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["libwordcount.so", "libwordcount.so.0"] {
            let link = dir.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&lib, &link).unwrap();
        }
        dir
    })
}

/// The output of a tool that must succeed.
fn tool(program: &str, args: &[&Path]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// (NEEDED libraries, SONAME) of an ELF file, by `readelf -d`.
fn dynamic_section(file: &Path) -> (Vec<String>, Option<String>) {
    let text = tool("readelf", &[Path::new("-d"), file]);
    let bracketed = |line: &str| {
        let start = line.find('[')? + 1;
        let end = line.rfind(']')?;
        Some(line[start..end].to_owned())
    };
    let needed = text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(bracketed)
        .collect();
    let soname = text
        .lines()
        .find(|l| l.contains("(SONAME)"))
        .and_then(bracketed);
    (needed, soname)
}

#[test]
fn the_library_exports_asyncbridge_and_its_own_functions_under_its_own_name() {
    let lib = lib_dir().join("libwordcount.so");
    let exported: BTreeSet<String> =
        tool("nm", &[Path::new("-D"), Path::new("--defined-only"), &lib])
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .map(str::to_owned)
            .collect();
    let asyncbridge = std::fs::read_to_string(root().join("tests/exported_symbols.txt")).unwrap();
    let mut expected: BTreeSet<String> = asyncbridge.lines().map(str::to_owned).collect();
    assert!(expected.contains("bridge_submit") && expected.contains("future_wait"));
    expected.extend(OWN_FUNCTIONS.map(str::to_owned));
    // Every function of asyncbridge.h, the library's own, and nothing else.
    assert_eq!(
        exported.difference(&expected).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "exported but not expected"
    );
    assert_eq!(
        expected.difference(&exported).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "expected but not exported"
    );
    // Its own name (asyncbridge's is not passed on to it) and one copy of asyncbridge:
    // its own, not a dependency on libasyncbridge.
    let (needed, soname) = dynamic_section(&lib);
    assert_eq!(soname.as_deref(), Some("libwordcount.so.0"));
    assert!(
        !needed.iter().any(|n| n.contains("asyncbridge")),
        "libwordcount needs {needed:?}"
    );
}

/// Compiles the demo as `name`, linked by `link_args` (libwordcount and nothing of
/// asyncbridge).
fn compile_demo(name: &str, link_args: &[String]) -> PathBuf {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let extra = std::env::var("ASYNCBRIDGE_CFLAGS").unwrap_or_default();
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("downstream_bin");
    std::fs::create_dir_all(&out_dir).unwrap();
    let exe = out_dir.join(name);
    let output = Command::new(&cc)
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-g",
            "-pthread",
        ])
        .args(extra.split_whitespace())
        .arg("-I")
        .arg(root().join("include"))
        .arg("-I")
        .arg(downstream().join("include"))
        .arg(downstream().join("c/wordcount_demo.c"))
        .arg("-o")
        .arg(&exe)
        .args(link_args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(
        output.status.success(),
        "wordcount_demo.c does not compile:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    exe
}

/// Runs `exe` with `args`, killing it after the watchdog; returns (status, stdout,
/// stderr). The library path cargo sets for tests is removed: the program finds its
/// library through its rpath, or not at all.
fn run(exe: &Path, args: &[&Path]) -> (ExitStatus, String, String) {
    let mut child = Command::new(exe)
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > WATCHDOG {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "{} hung for {WATCHDOG:?} (watchdog)\nstdout:\n{}\nstderr:\n{}",
                exe.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_demo_links_only_the_downstream_library_and_counts_and_cancels() {
    let lib = lib_dir();
    let exe = compile_demo(
        "wordcount_demo",
        &[
            format!("-L{}", lib.display()),
            "-lwordcount".to_owned(),
            format!("-Wl,-rpath,{}", lib.display()),
        ],
    );
    let (needed, _) = dynamic_section(&exe);
    assert!(
        needed.iter().any(|n| n == "libwordcount.so.0"),
        "{needed:?}"
    );
    assert!(
        !needed.iter().any(|n| n.contains("asyncbridge")),
        "the demo needs {needed:?}"
    );
    check_demo(&exe, "shared");
}

/// libwordcount.a holds asyncbridge too: a program linked with it needs no other
/// library of either.
#[test]
fn the_demo_links_the_static_library_alone() {
    lib_dir();
    let archive = profile_dir().join("libwordcount.a");
    assert!(archive.exists(), "{} not built", archive.display());
    let mut link_args = vec![archive.display().to_string()];
    // What Rust's standard library needs (`--print native-static-libs`).
    link_args.extend(["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl"].map(str::to_owned));
    let exe = compile_demo("wordcount_demo_static", &link_args);
    let (needed, _) = dynamic_section(&exe);
    assert!(
        !needed
            .iter()
            .any(|n| n.contains("wordcount") || n.contains("asyncbridge")),
        "the demo needs {needed:?}"
    );
    check_demo(&exe, "static");
}

/// Runs the demo on a file, a missing file and an empty path, and checks what it
/// prints and its exit status. `tag` keeps the files of concurrent runs apart.
fn check_demo(exe: &Path, tag: &str) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("downstream_files_{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("text.txt");
    std::fs::write(&text, "one two three\nfour five\n").unwrap();
    let missing = dir.join("missing.txt");
    let _ = std::fs::remove_file(&missing);
    let empty = Path::new("");

    let (status, stdout, stderr) = run(exe, &[&text, &missing, empty]);
    let expected = [
        format!(
            "{}: 2 lines, 5 words, 24 bytes (progress 24/24)",
            text.display()
        ),
        format!(
            "{0}: FAILED: open {0}: No such file or directory (errno 2)",
            missing.display()
        ),
        // The empty path is refused at the call.
        ": not started: ".to_owned(),
        "keystroke 1: CANCELLED".to_owned(),
        "keystroke 2: 1 lines, 3 words, 16 bytes (progress 1/1)".to_owned(),
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        expected.len(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for (line, expected) in lines.iter().zip(&expected) {
        assert!(
            line.starts_with(expected.as_str()),
            "{line:?} is not {expected:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    // Exit 1: two arguments could not be counted; not 2 (the cancelled count held).
    assert_eq!(
        status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(stderr, "");
}

#[test]
fn the_header_compiles_as_cpp_too() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_owned());
    let output = Command::new(&cxx)
        .args([
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-fsyntax-only",
        ])
        .arg("-I")
        .arg(root().join("include"))
        .args(["-x", "c++"])
        .arg(downstream().join("include/wordcount.h"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cxx}: {e}"));
    assert!(
        output.status.success(),
        "wordcount.h is not C++:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_downstream_crate_passes_its_own_tests() {
    let output = cargo_wordcount(&["test", "--lib"])
        .output()
        .expect("cannot run cargo");
    assert!(
        output.status.success(),
        "cargo test -p wordcount failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The crate's tests ran, not an empty selection.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let passed: Option<u32> = stdout
        .split("test result: ok. ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok());
    assert!(passed.is_some_and(|n| n > 0), "no test ran:\n{stdout}");
}
