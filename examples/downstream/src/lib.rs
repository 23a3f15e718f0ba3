//! wordcount: counts the lines, words and bytes of a file (as `wc` does in the C
//! locale) without blocking the caller: a C library of its own, written on
//! asyncbridge's embedding API.
//!
//! Each C function checks and copies its arguments, then hands an async block to
//! `asyncbridge::ffi::embed::spawn`, which writes the `future_t *` the C caller waits
//! on, polls, cancels or gets a callback from, like any other asyncbridge future. The
//! value is a `wordcount_counts_t *` of this library's own type
//! (`WORDCOUNT_VALUE_COUNTS`), freed by `wordcount_counts_free`.
//!
//! The cdylib built from this crate also exports every `bridge_*`/`future_*` function
//! of asyncbridge: a C program links `libwordcount` alone, never `libasyncbridge` as
//! well (see README.md). The C declarations are in `include/wordcount.h`.

#![warn(missing_docs, rust_2018_idioms)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::{c_char, c_void, CStr, OsStr};
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use asyncbridge::embed::CancelCheck;
use asyncbridge::ffi::boundary::boundary;
use asyncbridge::ffi::bridge::bridge_t;
use asyncbridge::ffi::embed::{self, CTask, CValue};
use asyncbridge::ffi::future::future_t;
use asyncbridge::ffi::status::{bridge_status, BRIDGE_E_INVALID};
use asyncbridge::{Error, Failure};

/// The value type of a `wordcount_counts_t *` (what `future_value_type` returns for
/// the futures of this library). asyncbridge keeps 0 to 255 for its own types.
pub const WORDCOUNT_VALUE_COUNTS: u32 = 0x7763_0001;

/// How much is read between two looks at a cancellation request.
const CHUNK: usize = 64 * 1024;

/// What was counted. Allocated by the library as a future's value; a caller that took
/// it with `future_take_value` frees it with `wordcount_counts_free`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct wordcount_counts_t {
    /// Newline characters.
    pub lines: u64,
    /// Runs of bytes other than space, `\t`, `\n`, `\v`, `\f` and `\r`.
    pub words: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Counts over input that comes in pieces: a word may span two of them.
#[derive(Debug, Default)]
struct Counter {
    counts: wordcount_counts_t,
    in_word: bool,
}

impl Counter {
    fn feed(&mut self, chunk: &[u8]) {
        for &byte in chunk {
            let space = matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
            if byte == b'\n' {
                self.counts.lines += 1;
            }
            if !space && !self.in_word {
                self.counts.words += 1;
            }
            self.in_word = !space;
        }
        self.counts.bytes += chunk.len() as u64;
    }
}

fn count(text: &[u8]) -> wordcount_counts_t {
    let mut counter = Counter::default();
    counter.feed(text);
    counter.counts
}

/// A `BRIDGE_E_IO` failure for `error`, which happened while doing `what`.
fn io_failure(error: &std::io::Error, what: String) -> Failure {
    match error.raw_os_error() {
        Some(errno) => Failure::io(errno, what),
        None => Failure::new(Error::Io.code(), format!("{what}: {error}")),
    }
}

/// Reads `path` to its end, counting, on a thread that may block. Stops (and closes
/// the file) at the first chunk after a cancellation request; what it returns then is
/// not looked at.
fn count_file(
    path: &Path,
    cancel: &CancelCheck,
    progress: &dyn Fn(u64, u64),
) -> Result<wordcount_counts_t, Failure> {
    let shown = path.display();
    let mut file = File::open(path).map_err(|e| io_failure(&e, format!("open {shown}")))?;
    // The size is the total of the progress; unknown (0) for a pipe or a device.
    let total = match file.metadata() {
        Ok(meta) if meta.is_file() => meta.len(),
        _ => 0,
    };
    let mut counter = Counter::default();
    let mut buffer = vec![0; CHUNK];
    while !cancel.is_cancelled() {
        let n = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_failure(&e, format!("read {shown}"))),
        };
        counter.feed(&buffer[..n]);
        let done = counter.counts.bytes;
        // A file that grows while it is read ends past its size.
        progress(done, if total == 0 { 0 } else { total.max(done) });
    }
    Ok(counter.counts)
}

fn counts_value(counts: wordcount_counts_t) -> CValue {
    let ptr = Box::into_raw(Box::new(counts));
    CValue::with_type(
        ptr.cast(),
        Some(wordcount_counts_free),
        WORDCOUNT_VALUE_COUNTS,
    )
}

/// A copy of the C string `s`; `None` for NULL.
///
/// # Safety
/// `s` is NULL or a NUL-terminated string.
unsafe fn copy_c_string(s: *const c_char) -> Option<Vec<u8>> {
    if s.is_null() {
        return None;
    }
    // SAFETY: per this function's contract.
    Some(unsafe { CStr::from_ptr(s) }.to_bytes().to_vec())
}

/// Counts the lines, words and bytes of the file at `path`, read on the bridge's
/// blocking pool. See `include/wordcount.h`.
///
/// # Safety
/// `b` is NULL or a live bridge; `path` is NULL or a NUL-terminated string; `out` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn wordcount_file(
    b: *mut bridge_t,
    path: *const c_char,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: per this function's contract.
        let path = match unsafe { copy_c_string(path) } {
            Some(path) if !path.is_empty() => PathBuf::from(OsStr::from_bytes(&path)),
            _ => return BRIDGE_E_INVALID,
        };
        let make = move |task: CTask| async move {
            let cancel = task.cancel_check();
            let reporter = task.clone();
            let reading = tokio::task::spawn_blocking(move || {
                count_file(&path, &cancel, &|done, total| {
                    reporter.set_progress(done, total)
                })
            });
            // Not dropped while the thread reads: the future ends only once the file
            // is closed, whatever ends it.
            match task.shield(reading).await {
                Ok(counted) => counted.map(|counts| Some(counts_value(counts))),
                Err(join) if join.is_panic() => Err(Failure::panic()),
                Err(_) => Err(Failure::new(
                    Error::NotRunning.code(),
                    "the bridge shut down before the file was read",
                )),
            }
        };
        // SAFETY: `b` and `out` per this function's contract.
        unsafe { embed::spawn(b, out, make) }
    })
}

/// Counts `text` once `delay_ms` milliseconds have passed, on the bridge's loop. See
/// `include/wordcount.h`.
///
/// # Safety
/// `b` is NULL or a live bridge; `text` is NULL or a NUL-terminated string; `out` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn wordcount_text_later(
    b: *mut bridge_t,
    text: *const c_char,
    delay_ms: u64,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: per this function's contract.
        let Some(text) = (unsafe { copy_c_string(text) }) else {
            return BRIDGE_E_INVALID;
        };
        let make = move |task: CTask| async move {
            task.set_progress(0, 1);
            // A cancel request drops the block here.
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let counts = count(&text);
            task.set_progress(1, 1);
            Ok(Some(counts_value(counts)))
        };
        // SAFETY: `b` and `out` per this function's contract.
        unsafe { embed::spawn(b, out, make) }
    })
}

/// Frees a `wordcount_counts_t *` taken from a future; NULL does nothing.
///
/// # Safety
/// `counts` is NULL or a value of type `WORDCOUNT_VALUE_COUNTS` taken with
/// `future_take_value` and not freed yet.
#[no_mangle]
pub unsafe extern "C" fn wordcount_counts_free(counts: *mut c_void) {
    boundary(|| {
        if !counts.is_null() {
            // SAFETY: made by `counts_value` with `Box::into_raw`; the caller gives
            // up its only copy.
            drop(unsafe { Box::from_raw(counts.cast::<wordcount_counts_t>()) });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use asyncbridge::ffi::bridge::{bridge_default, bridge_free, bridge_shutdown, bridge_start};
    use asyncbridge::ffi::future::{
        future_cancel, future_error_code, future_error_message, future_os_error, future_progress,
        future_release, future_status, future_take_value, future_value, future_value_type,
        future_wait,
    };
    use asyncbridge::ffi::status::*;
    use asyncbridge::ffi::value::BRIDGE_VALUE_NONE;
    use std::ffi::CString;
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A watchdog for waits that must end: far longer than any of them takes.
    const WATCHDOG_MS: i64 = 60_000;

    /// A path in the temporary directory, removed when dropped.
    struct TempPath(PathBuf);

    impl TempPath {
        fn new(tag: &str) -> TempPath {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("wordcount-{}-{n}-{tag}", std::process::id());
            TempPath(std::env::temp_dir().join(name))
        }

        fn with_content(tag: &str, content: &[u8]) -> TempPath {
            let path = TempPath::new(tag);
            std::fs::write(&path.0, content).unwrap();
            path
        }

        fn c(&self) -> CString {
            CString::new(self.0.as_os_str().as_bytes()).unwrap()
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    fn counts_of(f: *mut future_t) -> wordcount_counts_t {
        unsafe {
            assert_eq!(future_value_type(f), WORDCOUNT_VALUE_COUNTS);
            *future_value(f).cast::<wordcount_counts_t>()
        }
    }

    fn message(f: *mut future_t) -> String {
        unsafe { CStr::from_ptr(future_error_message(f)) }
            .to_string_lossy()
            .into_owned()
    }

    fn counts(lines: u64, words: u64, bytes: u64) -> wordcount_counts_t {
        wordcount_counts_t {
            lines,
            words,
            bytes,
        }
    }

    #[test]
    fn counts_like_wc_in_the_c_locale() {
        assert_eq!(count(b""), counts(0, 0, 0));
        assert_eq!(count(b"one two\tthree\nfour"), counts(1, 4, 18));
        assert_eq!(count(b"  \x0b\x0c\r\n"), counts(1, 0, 6));
        // Bytes that are not ASCII whitespace are word bytes, UTF-8 or not.
        assert_eq!(count(b"\xc3\xa9 \xc2\xa0 \xff"), counts(0, 3, 7));
    }

    #[test]
    fn a_word_split_between_two_reads_counts_once() {
        let mut counter = Counter::default();
        for piece in [&b"hel"[..], b"lo wor", b"", b"ld\n", b" x"] {
            counter.feed(piece);
        }
        assert_eq!(counter.counts, counts(1, 3, 14));
    }

    #[test]
    fn a_file_is_counted_with_its_progress_and_type() {
        // Several chunks, a word across each chunk boundary.
        let line = b"alpha beta gamma delta\n";
        let content: Vec<u8> = line
            .iter()
            .copied()
            .cycle()
            .take(line.len() * 10_000)
            .collect();
        let file = TempPath::with_content("big", &content);
        let b = bridge_default();
        let mut f = std::ptr::null_mut();
        unsafe {
            assert_eq!(wordcount_file(b, file.c().as_ptr(), &mut f), BRIDGE_OK);
            assert_eq!(future_wait(f, WATCHDOG_MS), BRIDGE_OK);
            assert_eq!(counts_of(f), counts(10_000, 40_000, content.len() as u64));
            let (mut done, mut total) = (0, 0);
            assert_eq!(future_progress(f, &mut done, &mut total), BRIDGE_OK);
            assert_eq!((done, total), (content.len() as u64, content.len() as u64));
            future_release(f);
        }
    }

    #[test]
    fn a_taken_value_is_freed_by_its_own_function() {
        let file = TempPath::with_content("small", b"one two three\nfour five\n");
        let mut f = std::ptr::null_mut();
        unsafe {
            assert_eq!(
                wordcount_file(bridge_default(), file.c().as_ptr(), &mut f),
                BRIDGE_OK
            );
            assert_eq!(future_wait(f, WATCHDOG_MS), BRIDGE_OK);
            let value = future_take_value(f);
            assert_eq!(*value.cast::<wordcount_counts_t>(), counts(2, 5, 24));
            assert_eq!(future_value_type(f), BRIDGE_VALUE_NONE);
            assert!(future_value(f).is_null());
            wordcount_counts_free(value);
            wordcount_counts_free(std::ptr::null_mut());
            future_release(f);
        }
    }

    #[test]
    fn the_path_is_copied_at_the_call() {
        let file = TempPath::with_content("copied", b"a b c\n");
        let mut f = std::ptr::null_mut();
        let mut path = file.c().into_bytes_with_nul();
        unsafe {
            assert_eq!(
                wordcount_file(bridge_default(), path.as_ptr().cast(), &mut f),
                BRIDGE_OK
            );
        }
        // The caller's buffer now names a file that does not exist.
        path.fill(b'x');
        *path.last_mut().unwrap() = 0;
        unsafe {
            assert_eq!(future_wait(f, WATCHDOG_MS), BRIDGE_OK);
            assert_eq!(counts_of(f), counts(1, 3, 6));
            future_release(f);
        }
    }

    #[test]
    fn a_missing_file_fails_with_its_errno_and_path() {
        let missing = TempPath::new("missing");
        let mut f = std::ptr::null_mut();
        unsafe {
            assert_eq!(
                wordcount_file(bridge_default(), missing.c().as_ptr(), &mut f),
                BRIDGE_OK
            );
            assert_eq!(future_wait(f, WATCHDOG_MS), BRIDGE_FAILED);
            assert_eq!(future_error_code(f), BRIDGE_E_IO);
            assert_eq!(future_os_error(f), libc::ENOENT);
            assert_eq!(
                message(f),
                format!("open {}: No such file or directory", missing.0.display())
            );
            assert_eq!(future_value_type(f), BRIDGE_VALUE_NONE);
            future_release(f);
        }
    }

    #[test]
    fn a_directory_fails_on_read_with_eisdir() {
        let dir = TempPath::new("dir");
        std::fs::create_dir(&dir.0).unwrap();
        let mut f = std::ptr::null_mut();
        unsafe {
            assert_eq!(
                wordcount_file(bridge_default(), dir.c().as_ptr(), &mut f),
                BRIDGE_OK
            );
            assert_eq!(future_wait(f, WATCHDOG_MS), BRIDGE_FAILED);
            assert_eq!(future_error_code(f), BRIDGE_E_IO);
            assert_eq!(future_os_error(f), libc::EISDIR);
            assert!(message(f).starts_with(&format!("read {}: ", dir.0.display())));
            future_release(f);
        }
    }

    #[test]
    fn bad_arguments_are_refused_and_start_nothing() {
        let file = TempPath::with_content("args", b"x");
        let path = file.c();
        let sentinel = 0x10 as *mut future_t;
        let mut f = sentinel;
        unsafe {
            let b = bridge_default();
            assert_eq!(
                wordcount_file(b, std::ptr::null(), &mut f),
                BRIDGE_E_INVALID
            );
            assert_eq!(wordcount_file(b, c"".as_ptr(), &mut f), BRIDGE_E_INVALID);
            assert_eq!(
                wordcount_file(std::ptr::null_mut(), path.as_ptr(), &mut f),
                BRIDGE_E_INVALID
            );
            assert_eq!(
                wordcount_file(b, path.as_ptr(), std::ptr::null_mut()),
                BRIDGE_E_INVALID
            );
            assert_eq!(
                wordcount_text_later(b, std::ptr::null(), 0, &mut f),
                BRIDGE_E_INVALID
            );
            assert_eq!(
                wordcount_text_later(std::ptr::null_mut(), c"x".as_ptr(), 0, &mut f),
                BRIDGE_E_INVALID
            );
            assert_eq!(
                wordcount_text_later(b, c"x".as_ptr(), 0, std::ptr::null_mut()),
                BRIDGE_E_INVALID
            );
        }
        assert_eq!(f, sentinel, "out was written by a refused call");
    }

    #[test]
    fn a_shut_down_bridge_refuses_and_ends_what_it_ran() {
        let mut b = std::ptr::null_mut();
        let mut pending = std::ptr::null_mut();
        unsafe {
            assert_eq!(bridge_start(std::ptr::null(), &mut b), BRIDGE_OK);
            assert_eq!(
                wordcount_text_later(b, c"never".as_ptr(), u64::MAX, &mut pending),
                BRIDGE_OK
            );
            assert_eq!(bridge_shutdown(b, 0), BRIDGE_OK);
            assert_eq!(future_status(pending), BRIDGE_CANCELLED);
            let mut f = 0x10 as *mut future_t;
            assert_eq!(
                wordcount_text_later(b, c"late".as_ptr(), 0, &mut f),
                BRIDGE_E_NOT_RUNNING
            );
            assert_eq!(
                wordcount_file(b, c"/".as_ptr(), &mut f),
                BRIDGE_E_NOT_RUNNING
            );
            assert_eq!(f, 0x10 as *mut future_t);
            future_release(pending);
            bridge_free(b);
        }
    }

    #[test]
    fn text_is_counted_after_its_delay_and_a_cancel_drops_it() {
        let b = bridge_default();
        let (mut later, mut never) = (std::ptr::null_mut(), std::ptr::null_mut());
        unsafe {
            assert_eq!(
                wordcount_text_later(b, c"the final text\n".as_ptr(), 1, &mut later),
                BRIDGE_OK
            );
            assert_eq!(
                wordcount_text_later(b, c"a draft".as_ptr(), u64::MAX, &mut never),
                BRIDGE_OK
            );
            assert_eq!(future_wait(later, WATCHDOG_MS), BRIDGE_OK);
            assert_eq!(counts_of(later), counts(1, 3, 15));
            assert_eq!(future_wait(never, 0), BRIDGE_TIMEOUT);
            assert_eq!(future_cancel(never), BRIDGE_OK);
            assert_eq!(future_wait(never, WATCHDOG_MS), BRIDGE_CANCELLED);
            assert_eq!(future_value_type(never), BRIDGE_VALUE_NONE);
            let (mut done, mut total) = (9, 9);
            assert_eq!(future_progress(never, &mut done, &mut total), BRIDGE_OK);
            assert_eq!((done, total), (0, 1));
            future_release(later);
            future_release(never);
        }
    }

    /// Cancelling a read that is under way: the reading thread stops at its next chunk
    /// and closes the file before the future ends CANCELLED. A FIFO lets the test decide
    /// when each chunk arrives.
    #[test]
    fn a_cancelled_read_closes_the_file_before_it_ends() {
        let fifo = TempPath::new("fifo");
        let c_path = fifo.c();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let mut f = std::ptr::null_mut();
        unsafe {
            assert_eq!(
                wordcount_file(bridge_default(), c_path.as_ptr(), &mut f),
                BRIDGE_OK
            );
        }
        // Opening for writing waits for the reader to open its end.
        let mut writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo.0)
            .unwrap();
        writer.write_all(&[b'w'; 1000]).unwrap();
        let started = std::time::Instant::now();
        loop {
            let (mut done, mut total) = (0, 0);
            unsafe { future_progress(f, &mut done, &mut total) };
            if done > 0 {
                // A pipe has no size: the total is unknown.
                assert_eq!(total, 0);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "nothing was read"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        unsafe { assert_eq!(future_cancel(f), BRIDGE_OK) };
        // The reader is blocked in read(): more input wakes it, it sees the request
        // and closes its end, which ends the writes with EPIPE (SIGPIPE is ignored in
        // Rust programs).
        let feeder = std::thread::spawn(move || loop {
            if let Err(e) = writer.write_all(&[b'w'; 4096]) {
                return e.kind();
            }
        });
        unsafe {
            assert_eq!(future_wait(f, WATCHDOG_MS), BRIDGE_CANCELLED);
        }
        // Nobody has the FIFO open for reading any more: a non-blocking open for
        // writing says so (ENXIO).
        let opened = unsafe { libc::open(c_path.as_ptr(), libc::O_WRONLY | libc::O_NONBLOCK) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        if opened >= 0 {
            unsafe { libc::close(opened) };
        }
        assert_eq!(
            (opened, errno),
            (-1, Some(libc::ENXIO)),
            "the file is still open"
        );
        assert_eq!(feeder.join().unwrap(), ErrorKind::BrokenPipe);
        unsafe {
            assert_eq!(future_value_type(f), BRIDGE_VALUE_NONE);
            future_release(f);
        }
    }

    #[test]
    fn the_header_agrees_with_the_library() {
        let header = include_str!("../include/wordcount.h");
        assert!(header.contains(&format!(
            "#define WORDCOUNT_VALUE_COUNTS 0x{WORDCOUNT_VALUE_COUNTS:08x}u"
        )));
        let fields: Vec<&str> = header
            .lines()
            .map(str::trim)
            .skip_while(|l| !l.starts_with("typedef struct wordcount_counts {"))
            .skip(1)
            .take_while(|l| !l.starts_with('}'))
            .filter(|l| l.starts_with("uint64_t"))
            .collect();
        assert_eq!(
            fields,
            ["uint64_t lines;", "uint64_t words;", "uint64_t bytes;"]
        );
        assert_eq!(std::mem::size_of::<wordcount_counts_t>(), 24);
        for function in [
            "wordcount_file(",
            "wordcount_text_later(",
            "wordcount_counts_free(",
        ] {
            assert!(header.contains(function), "{function} is not declared");
        }
    }
}
