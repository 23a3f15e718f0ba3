//! bridge_file_read and bridge_file_write, called through their C signatures.
//!
//! Every test here takes one lock: the file-descriptor count of the process is
//! compared before and after, which other tests running at the same time would blur.

use std::ffi::{c_void, CStr, CString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use asyncbridge::ffi::bridge::*;
use asyncbridge::ffi::file::*;
use asyncbridge::ffi::future::*;
use asyncbridge::ffi::status::*;
use asyncbridge::ffi::value::*;

const MIB: usize = 1 << 20;
/// A watchdog for waits that end on their own; never a measure of speed.
const WATCHDOG_MS: i64 = 60_000;

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn start() -> *mut bridge_t {
    let mut b = null_mut();
    assert_eq!(unsafe { bridge_start(null(), &mut b) }, BRIDGE_OK);
    b
}

/// A directory of its own under the system's temporary directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "asyncbridge-ffi-file-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The names in the directory, sorted: temporary files show up here.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn read_file(b: *mut bridge_t, path: &Path, max: u64) -> *mut future_t {
    let path = c_path(path);
    let mut f = null_mut();
    assert_eq!(
        unsafe { bridge_file_read(b, path.as_ptr(), max, &mut f) },
        BRIDGE_OK
    );
    f
}

fn write_file(b: *mut bridge_t, path: &Path, data: &[u8], flags: u32) -> *mut future_t {
    let path = c_path(path);
    let mut f = null_mut();
    let status = unsafe {
        bridge_file_write(
            b,
            path.as_ptr(),
            data.as_ptr().cast(),
            data.len(),
            flags,
            &mut f,
        )
    };
    assert_eq!(status, BRIDGE_OK);
    f
}

fn wait(f: *mut future_t) -> bridge_status {
    unsafe { future_wait(f, WATCHDOG_MS) }
}

/// Waits for a read and hands back its bytes (the future is released).
fn read_ok(f: *mut future_t) -> Vec<u8> {
    assert_eq!(wait(f), BRIDGE_OK, "{:?}", message(f));
    unsafe {
        assert_eq!(future_value_type(f), BRIDGE_VALUE_BYTES);
        let bytes = future_take_value(f).cast::<bridge_bytes_t>();
        assert!(!bytes.is_null());
        let got = if (*bytes).len == 0 {
            assert!((*bytes).data.is_null());
            Vec::new()
        } else {
            std::slice::from_raw_parts((*bytes).data, (*bytes).len).to_vec()
        };
        bridge_bytes_free(bytes.cast());
        future_release(f);
        got
    }
}

fn write_ok(f: *mut future_t) {
    assert_eq!(wait(f), BRIDGE_OK, "{:?}", message(f));
    unsafe {
        assert_eq!(future_value_type(f), BRIDGE_VALUE_NONE);
        assert!(future_value(f).is_null());
        future_release(f);
    }
}

fn message(f: *mut future_t) -> Option<String> {
    let m = unsafe { future_error_message(f) };
    (!m.is_null()).then(|| unsafe { CStr::from_ptr(m) }.to_string_lossy().into_owned())
}

/// Waits for a failure and hands back (code, errno, message); the future is released.
fn failed(f: *mut future_t) -> (i32, i32, String) {
    assert_eq!(wait(f), BRIDGE_FAILED);
    let answer = unsafe { (future_error_code(f), future_os_error(f)) };
    let text = message(f).unwrap();
    unsafe { future_release(f) };
    (answer.0, answer.1, text)
}

fn progress(f: *mut future_t) -> (u64, u64) {
    let (mut done, mut total) = (0, 0);
    assert_eq!(
        unsafe { future_progress(f, &mut done, &mut total) },
        BRIDGE_OK
    );
    (done, total)
}

/// Content that differs from chunk to chunk, so a misplaced chunk shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
        .collect()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn mkfifo(path: &Path) {
    let c = c_path(path);
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn round_trips_of_empty_small_and_large_files() {
    let _serial = serial();
    let b = start();
    let scratch = Scratch::new("round");
    let path = scratch.path("f");
    for len in [0, 1, 5 * MIB + 3] {
        let data = pattern(len);
        let f = write_file(b, &path, &data, 0);
        assert_eq!(wait(f), BRIDGE_OK);
        assert_eq!(progress(f), (len as u64, len as u64));
        write_ok(f);
        assert_eq!(std::fs::read(&path).unwrap(), data);
        let f = read_file(b, &path, 0);
        assert_eq!(wait(f), BRIDGE_OK);
        assert_eq!(progress(f), (len as u64, len as u64));
        assert_eq!(read_ok(f), data);
    }
    // Zero bytes from a NULL pointer: an empty file, replacing the old one.
    let c = c_path(&path);
    let mut f = null_mut();
    assert_eq!(
        unsafe { bridge_file_write(b, c.as_ptr(), null(), 0, 0, &mut f) },
        BRIDGE_OK
    );
    write_ok(f);
    assert_eq!(std::fs::read(&path).unwrap(), b"");
    assert_eq!(scratch.names(), ["f"]);
    unsafe { bridge_free(b) };
}

#[test]
fn a_new_file_gets_mode_0666_less_the_umask() {
    let _serial = serial();
    let b = start();
    let scratch = Scratch::new("mode");
    // The umask is process-wide: read it by setting it, and put it back at once.
    let umask = unsafe { libc::umask(0o022) };
    unsafe { libc::umask(umask) };
    for flags in [0, BRIDGE_FILE_APPEND, BRIDGE_FILE_ATOMIC] {
        let path = scratch.path(&format!("new{flags}"));
        write_ok(write_file(b, &path, b"x", flags));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o666 & !umask, "flags {flags}");
    }
    unsafe { bridge_free(b) };
}

#[test]
fn max_allows_exactly_max_bytes() {
    let _serial = serial();
    let b = start();
    let scratch = Scratch::new("max");
    let path = scratch.path("f");
    let data = pattern(2 * MIB + 1);
    std::fs::write(&path, &data).unwrap();
    let len = data.len() as u64;
    assert_eq!(read_ok(read_file(b, &path, len)), data);
    let (code, errno, text) = failed(read_file(b, &path, len - 1));
    assert_eq!((code, errno), (BRIDGE_E_TOO_LARGE, 0));
    assert!(text.contains(&path.display().to_string()), "{text}");
    let (code, _, _) = failed(read_file(b, &path, 1));
    assert_eq!(code, BRIDGE_E_TOO_LARGE);
    unsafe { bridge_free(b) };
}

#[test]
fn os_errors_carry_the_errno_and_name_the_path() {
    let _serial = serial();
    let b = start();
    let scratch = Scratch::new("errors");
    let file = scratch.path("file");
    std::fs::write(&file, b"old").unwrap();
    let missing = scratch.path("missing");
    let under_file = file.join("x");
    let cases: [(PathBuf, i32, &str); 3] = [
        (missing.clone(), libc::ENOENT, "No such file or directory"),
        (scratch.0.clone(), libc::EISDIR, "Is a directory"),
        (under_file.clone(), libc::ENOTDIR, "Not a directory"),
    ];
    for (path, errno, words) in &cases {
        let (code, got, text) = failed(read_file(b, path, 0));
        assert_eq!((code, got), (BRIDGE_E_IO, *errno), "{text}");
        assert!(
            text.starts_with(&format!("read {}: {words}", path.display())),
            "{text}"
        );
    }
    let writes: [(PathBuf, u32, i32); 6] = [
        (missing.join("x"), 0, libc::ENOENT),
        (missing.join("x"), BRIDGE_FILE_APPEND, libc::ENOENT),
        (missing.join("x"), BRIDGE_FILE_ATOMIC, libc::ENOENT),
        (scratch.0.clone(), 0, libc::EISDIR),
        (under_file, 0, libc::ENOTDIR),
        (scratch.0.clone(), BRIDGE_FILE_APPEND, libc::EISDIR),
    ];
    for (path, flags, errno) in &writes {
        let (code, got, text) = failed(write_file(b, path, b"new", *flags));
        assert_eq!((code, got), (BRIDGE_E_IO, *errno), "{text}");
        assert!(
            text.starts_with(&format!("write {}: ", path.display())),
            "{text}"
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"old");
    assert_eq!(scratch.names(), ["file"]);
    unsafe { bridge_free(b) };
}

#[test]
fn append_adds_to_the_end() {
    let _serial = serial();
    let b = start();
    let scratch = Scratch::new("append");
    let path = scratch.path("log");
    write_ok(write_file(b, &path, b"one\n", BRIDGE_FILE_APPEND));
    write_ok(write_file(b, &path, b"two\n", BRIDGE_FILE_APPEND));
    let big = pattern(MIB + 7);
    write_ok(write_file(b, &path, &big, BRIDGE_FILE_APPEND));
    let mut expected = b"one\ntwo\n".to_vec();
    expected.extend_from_slice(&big);
    assert_eq!(read_ok(read_file(b, &path, 0)), expected);
    unsafe { bridge_free(b) };
}

#[test]
fn atomic_replaces_and_a_failed_one_keeps_the_old_file() {
    let _serial = serial();
    let b = start();
    let scratch = Scratch::new("atomic");
    let path = scratch.path("f");
    std::fs::write(&path, b"old").unwrap();
    let data = pattern(3 * MIB);
    write_ok(write_file(b, &path, &data, BRIDGE_FILE_ATOMIC));
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(scratch.names(), ["f"]);
    // A directory at the path: everything is written, then the rename fails.
    let dir = scratch.path("d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("inside"), b"kept").unwrap();
    let (code, errno, text) = failed(write_file(b, &dir, &data, BRIDGE_FILE_ATOMIC));
    assert_eq!((code, errno), (BRIDGE_E_IO, libc::EISDIR), "{text}");
    assert_eq!(std::fs::read(dir.join("inside")).unwrap(), b"kept");
    assert_eq!(scratch.names(), ["d", "f"]);
    // "f/" names a directory, though a file is called "f".
    let mut slashed = path.clone().into_os_string();
    slashed.push("/");
    let (code, errno, _) = failed(write_file(
        b,
        Path::new(&slashed),
        b"new",
        BRIDGE_FILE_ATOMIC,
    ));
    assert_eq!((code, errno), (BRIDGE_E_IO, libc::EISDIR));
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(scratch.names(), ["d", "f"]);
    unsafe { bridge_free(b) };
}

#[test]
fn the_directory_removed_midway_fails_an_atomic_write_and_leaves_nothing() {
    let _serial = serial();
    let b = start();
    let scratch = Scratch::new("gone");
    let dir = scratch.path("d");
    let path = dir.join("f");
    let data = pattern(64 * MIB);
    // A write that ends before the removal (a very fast machine) is tried again.
    for _ in 0..5 {
        std::fs::create_dir(&dir).unwrap();
        let f = write_file(b, &path, &data, BRIDGE_FILE_ATOMIC);
        // Once the temporary file exists, the directory goes with it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::read_dir(&dir).unwrap().count() == 0
            && unsafe { future_status(f) } == BRIDGE_PENDING
        {
            assert!(Instant::now() < deadline, "watchdog");
            std::thread::yield_now();
        }
        std::fs::remove_dir_all(&dir).unwrap();
        if wait(f) == BRIDGE_OK {
            unsafe { future_release(f) };
            continue;
        }
        let (code, errno, text) = failed(f);
        assert_eq!((code, errno), (BRIDGE_E_IO, libc::ENOENT), "{text}");
        assert!(!dir.exists());
        assert!(scratch.names().is_empty());
        unsafe { bridge_free(b) };
        return;
    }
    panic!("every write ended before its directory was removed");
}

#[test]
fn inputs_may_be_freed_when_the_call_returns() {
    let _serial = serial();
    let b = start();
    let scratch = Scratch::new("copied");
    let path = scratch.path("f");
    let data = pattern(2 * MIB);
    let mut f = null_mut();
    {
        let mut c = c_path(&path).into_bytes_with_nul();
        let mut copy = data.clone();
        let status = unsafe {
            bridge_file_write(
                b,
                c.as_ptr().cast(),
                copy.as_ptr().cast(),
                copy.len(),
                0,
                &mut f,
            )
        };
        assert_eq!(status, BRIDGE_OK);
        // Scribbled over, then freed, before the write could have read them.
        c.fill(b'z');
        copy.fill(0xEE);
    }
    write_ok(f);
    assert_eq!(std::fs::read(&path).unwrap(), data);
    {
        let mut c = c_path(&path).into_bytes_with_nul();
        let mut f = null_mut();
        assert_eq!(
            unsafe { bridge_file_read(b, c.as_ptr().cast(), 0, &mut f) },
            BRIDGE_OK
        );
        c.fill(b'z');
        drop(c);
        assert_eq!(read_ok(f), data);
    }
    assert_eq!(scratch.names(), ["f"]);
    unsafe { bridge_free(b) };
}

#[test]
fn bad_input_is_refused_and_starts_nothing() {
    let _serial = serial();
    let b = start();
    let scratch = Scratch::new("invalid");
    let path = scratch.path("f");
    let c = c_path(&path);
    let data = b"data";
    let sentinel = 0x1 as *mut future_t;
    let mut f = sentinel;
    unsafe {
        assert_eq!(
            bridge_file_read(null_mut(), c.as_ptr(), 0, &mut f),
            BRIDGE_E_INVALID
        );
        assert_eq!(bridge_file_read(b, null(), 0, &mut f), BRIDGE_E_INVALID);
        assert_eq!(
            bridge_file_read(b, c"".as_ptr(), 0, &mut f),
            BRIDGE_E_INVALID
        );
        assert_eq!(
            bridge_file_read(b, c.as_ptr(), 0, null_mut()),
            BRIDGE_E_INVALID
        );
        let d = data.as_ptr().cast::<c_void>();
        let n = data.len();
        for (bb, p, dd, len, flags, out) in [
            (null_mut(), c.as_ptr(), d, n, 0, &mut f as *mut _),
            (b, null(), d, n, 0, &mut f as *mut _),
            (b, c"".as_ptr(), d, n, 0, &mut f as *mut _),
            (b, c.as_ptr(), null(), n, 0, &mut f as *mut _),
            (b, c.as_ptr(), d, n, 4, &mut f as *mut _),
            (b, c.as_ptr(), d, n, 0x8000_0000, &mut f as *mut _),
            (
                b,
                c.as_ptr(),
                d,
                n,
                BRIDGE_FILE_APPEND | BRIDGE_FILE_ATOMIC,
                &mut f as *mut _,
            ),
            (
                b,
                c.as_ptr(),
                d,
                n,
                BRIDGE_FILE_ATOMIC | 8,
                &mut f as *mut _,
            ),
            (b, c.as_ptr(), d, n, 0, null_mut()),
        ] {
            assert_eq!(
                bridge_file_write(bb, p, dd, len, flags, out),
                BRIDGE_E_INVALID
            );
        }
    }
    assert_eq!(f, sentinel, "out written on a refused call");
    let mut stats = bridge_stats_t {
        submitted: 0,
        completed: 0,
        failed: 0,
        cancelled: 0,
        pending: 0,
    };
    assert_eq!(unsafe { bridge_stats(b, &mut stats) }, BRIDGE_OK);
    assert_eq!(stats.submitted, 0);
    assert!(scratch.names().is_empty());
    // A stopped bridge refuses both.
    assert_eq!(unsafe { bridge_shutdown(b, 0) }, BRIDGE_OK);
    unsafe {
        assert_eq!(
            bridge_file_read(b, c.as_ptr(), 0, &mut f),
            BRIDGE_E_NOT_RUNNING
        );
        assert_eq!(
            bridge_file_write(b, c.as_ptr(), data.as_ptr().cast(), 4, 0, &mut f),
            BRIDGE_E_NOT_RUNNING
        );
    }
    assert_eq!(f, sentinel);
    assert!(scratch.names().is_empty());
    unsafe { bridge_free(b) };
}

/// Reads a FIFO as the other end of a write: opens it (waiting for the writer),
/// reads `first` bytes, reports, waits for the go-ahead, then reads to the end and
/// reports the total.
fn fifo_reader(
    path: PathBuf,
    first: usize,
) -> (
    mpsc::Receiver<usize>,
    mpsc::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (report, reports) = mpsc::channel();
    let (go, went) = mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let mut fifo = std::fs::File::open(&path).unwrap();
        let mut buffer = vec![0u8; first];
        fifo.read_exact(&mut buffer).unwrap();
        assert_eq!(buffer, pattern(first));
        report.send(first).unwrap();
        went.recv().unwrap();
        let mut rest = Vec::new();
        fifo.read_to_end(&mut rest).unwrap();
        report.send(first + rest.len()).unwrap();
    });
    (reports, go, thread)
}

#[test]
fn cancel_resolves_only_once_the_write_stopped_at_a_chunk_boundary() {
    let _serial = serial();
    let b = start();
    let scratch = Scratch::new("cancel-fifo");
    let fifo = scratch.path("fifo");
    mkfifo(&fifo);
    let len = 8 * MIB;
    let (reports, go, reader) = fifo_reader(fifo.clone(), 2 * MIB);
    let f = write_file(b, &fifo, &pattern(len), 0);
    assert_eq!(reports.recv().unwrap(), 2 * MIB);
    // Two chunks are through; the third waits in write() on the full pipe.
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress(f).0 < 2 * MIB as u64 {
        assert!(Instant::now() < deadline, "watchdog");
        std::thread::yield_now();
    }
    assert_eq!(progress(f), (2 * MIB as u64, len as u64));
    assert_eq!(unsafe { future_cancel(f) }, BRIDGE_OK);
    // The write cannot stop while its chunk is blocked: still pending.
    assert_eq!(unsafe { future_wait(f, 50) }, BRIDGE_TIMEOUT);
    go.send(()).unwrap();
    let total = reports.recv().unwrap();
    reader.join().unwrap();
    // It stopped at the next chunk boundary, well before the end.
    assert_eq!(total % MIB, 0);
    assert!(total >= 3 * MIB && total < len, "{total}");
    assert_eq!(wait(f), BRIDGE_CANCELLED);
    assert_eq!(unsafe { future_value_type(f) }, BRIDGE_VALUE_NONE);
    unsafe { future_release(f) };
    unsafe { bridge_free(b) };
}

#[test]
fn a_cancelled_atomic_write_leaves_the_old_file_and_no_temporary() {
    let _serial = serial();
    let b = start();
    let scratch = Scratch::new("cancel-atomic");
    let path = scratch.path("f");
    let data = pattern(64 * MIB);
    let mut cancelled_midway = 0;
    // Cancelled at once, then once some chunks were written; a cancel that comes
    // after the end (a very fast machine) is tried again.
    for attempt in 0..6 {
        std::fs::write(&path, b"old").unwrap();
        let f = write_file(b, &path, &data, BRIDGE_FILE_ATOMIC);
        if attempt > 0 {
            let deadline = Instant::now() + Duration::from_secs(60);
            while progress(f).0 == 0 && unsafe { future_status(f) } == BRIDGE_PENDING {
                assert!(Instant::now() < deadline, "watchdog");
                std::thread::yield_now();
            }
        }
        unsafe { future_cancel(f) };
        match wait(f) {
            BRIDGE_CANCELLED => {
                assert_eq!(std::fs::read(&path).unwrap(), b"old");
                assert_eq!(scratch.names(), ["f"], "a temporary file is left");
                if attempt > 0 {
                    cancelled_midway += 1;
                }
            }
            status => {
                assert_eq!(status, BRIDGE_OK);
                assert_eq!(std::fs::read(&path).unwrap().len(), data.len());
                assert_eq!(scratch.names(), ["f"]);
            }
        }
        unsafe { future_release(f) };
        if cancelled_midway >= 2 {
            break;
        }
    }
    assert!(
        cancelled_midway > 0,
        "no cancel came before the write ended"
    );
    unsafe { bridge_free(b) };
}

#[test]
fn a_cancelled_replace_stops_writing() {
    let _serial = serial();
    let b = start();
    let scratch = Scratch::new("cancel-replace");
    let path = scratch.path("f");
    let len = 64 * MIB;
    let data = pattern(len);
    // A cancel that comes after the end (a very fast machine) is tried again.
    for _ in 0..5 {
        let f = write_file(b, &path, &data, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while progress(f).0 == 0 && unsafe { future_status(f) } == BRIDGE_PENDING {
            assert!(Instant::now() < deadline, "watchdog");
            std::thread::yield_now();
        }
        unsafe { future_cancel(f) };
        let status = wait(f);
        unsafe { future_release(f) };
        if status == BRIDGE_OK {
            continue;
        }
        assert_eq!(status, BRIDGE_CANCELLED);
        // Whole chunks were written, and the file no longer grows.
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(size % MIB as u64, 0);
        assert!(size > 0 && size < len as u64, "{size}");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        assert_eq!(std::fs::read(&path).unwrap(), pattern(size as usize));
        unsafe { bridge_free(b) };
        return;
    }
    panic!("no cancel came before the write ended");
}

#[test]
fn shutdown_with_an_atomic_write_in_flight_leaves_no_temporary() {
    let _serial = serial();
    let scratch = Scratch::new("shutdown");
    let path = scratch.path("f");
    let data = pattern(64 * MIB);
    // A write that ends before the shutdown (a very fast machine) is tried again.
    for _ in 0..5 {
        std::fs::write(&path, b"old").unwrap();
        let b = start();
        let f = write_file(b, &path, &data, BRIDGE_FILE_ATOMIC);
        let deadline = Instant::now() + Duration::from_secs(60);
        while progress(f).0 == 0 && unsafe { future_status(f) } == BRIDGE_PENDING {
            assert!(Instant::now() < deadline, "watchdog");
            std::thread::yield_now();
        }
        assert_eq!(unsafe { bridge_shutdown(b, 0) }, BRIDGE_OK);
        // Resolved by the shutdown, after the write stopped and cleaned up.
        let status = unsafe { future_status(f) };
        assert_eq!(scratch.names(), ["f"], "a temporary file is left");
        unsafe { future_release(f) };
        unsafe { bridge_free(b) };
        if status == BRIDGE_OK {
            continue;
        }
        assert_eq!(status, BRIDGE_CANCELLED);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        return;
    }
    panic!("every write ended before the shutdown");
}

#[test]
fn shutdown_does_not_wait_for_a_write_blocked_on_a_pipe() {
    let _serial = serial();
    let b = start();
    let scratch = Scratch::new("shutdown-fifo");
    let fifo = scratch.path("fifo");
    mkfifo(&fifo);
    let len = 8 * MIB;
    let (reports, go, reader) = fifo_reader(fifo.clone(), MIB);
    let f = write_file(b, &fifo, &pattern(len), 0);
    assert_eq!(reports.recv().unwrap(), MIB);
    // The write is blocked in write() until the reader goes on, maybe forever: the
    // shutdown resolves its future without waiting for it.
    assert_eq!(unsafe { bridge_shutdown(b, 0) }, BRIDGE_OK);
    assert_eq!(unsafe { future_status(f) }, BRIDGE_CANCELLED);
    // Once its system call returns, it stops at the chunk boundary by itself.
    go.send(()).unwrap();
    let total = reports.recv().unwrap();
    reader.join().unwrap();
    assert!(total < len && total % MIB == 0, "{total}");
    unsafe { future_release(f) };
    unsafe { bridge_free(b) };
}

#[test]
fn shutdown_does_not_wait_for_a_read_blocked_opening_a_fifo() {
    let _serial = serial();
    let b = start();
    let scratch = Scratch::new("shutdown-open");
    let fifo = scratch.path("fifo");
    mkfifo(&fifo);
    // No writer: the open blocks until one comes.
    let f = read_file(b, &fifo, 0);
    assert_eq!(unsafe { future_wait(f, 50) }, BRIDGE_TIMEOUT);
    assert_eq!(unsafe { bridge_shutdown(b, 0) }, BRIDGE_OK);
    assert_eq!(unsafe { future_status(f) }, BRIDGE_CANCELLED);
    // A writer lets the open return; the read then stops without reading. Whether this
    // write lands depends on whether the reader has closed the FIFO already (then it
    // fails with EPIPE): either way the open has returned, which is all it is for.
    let _ = std::fs::write(&fifo, b"late");
    unsafe { future_release(f) };
    unsafe { bridge_free(b) };
}

#[test]
fn reading_a_pipe_reports_no_total() {
    let _serial = serial();
    let b = start();
    let scratch = Scratch::new("pipe");
    let fifo = scratch.path("fifo");
    mkfifo(&fifo);
    let f = read_file(b, &fifo, 0);
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, pattern(MIB + 9)).unwrap())
    };
    writer.join().unwrap();
    assert_eq!(wait(f), BRIDGE_OK);
    assert_eq!(progress(f), ((MIB + 9) as u64, 0));
    assert_eq!(read_ok(f), pattern(MIB + 9));
    unsafe { bridge_free(b) };
}

#[test]
fn no_file_descriptor_is_left_open() {
    let _serial = serial();
    let b = start();
    let scratch = Scratch::new("fds");
    let path = scratch.path("f");
    // Warm up: the blocking pool's threads and the loop exist before counting.
    write_ok(write_file(b, &path, b"warm", 0));
    let before = open_fds();
    for round in 0..3 {
        let data = pattern(MIB + round);
        for flags in [0, BRIDGE_FILE_APPEND, BRIDGE_FILE_ATOMIC] {
            write_ok(write_file(b, &path, &data, flags));
        }
        assert!(!read_ok(read_file(b, &path, 0)).is_empty());
        failed(read_file(b, &path, 1));
        failed(read_file(b, &scratch.path("missing"), 0));
        failed(read_file(b, &scratch.0, 0));
        failed(write_file(b, &scratch.0, b"x", BRIDGE_FILE_ATOMIC));
        let f = write_file(b, &path, &pattern(16 * MIB), BRIDGE_FILE_ATOMIC);
        unsafe { future_cancel(f) };
        assert!(matches!(wait(f), BRIDGE_CANCELLED | BRIDGE_OK));
        unsafe { future_release(f) };
    }
    assert_eq!(open_fds(), before);
    assert_eq!(scratch.names(), ["f"]);
    unsafe { bridge_free(b) };
}
