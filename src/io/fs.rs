//! Whole-file reads and writes, off the loop.
//!
//! Each operation runs its system calls on tokio's blocking pool in chunks of
//! [`CHUNK`] bytes, and between chunks asks the caller's `cancelled` check and reports
//! progress. A stop request ends the blocking part at its next chunk boundary: what it
//! leaves behind is cleaned up there (an atomic write removes its temporary file)
//! before the returned future resolves [`FsError::Cancelled`].
//!
//! Poll these futures inside a tokio runtime, and run them to their end
//! (`embed::Task::shield` does that for an embedded block): the returned future then
//! resolves only after the blocking part ended. If one is dropped early anyway (a
//! runtime shutting down drops its tasks), its drop makes the blocking part stop and
//! waits for it (at most one chunk of I/O, or one fsync), so nothing of it outlives
//! the drop either. Except on a pipe, socket or device: a system call there may wait
//! forever (opening a FIFO that no one opens from the other end), so the drop does
//! not wait; the blocking part ends on its own once the call returns, and holds
//! nothing to clean up but its file descriptor.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crate::future::Failure;
use crate::status::Error;
use crate::sync::lock;

/// How many bytes a read or write moves between two cancellation checks.
pub const CHUNK: usize = 1 << 20;

/// How [`write`] treats the file already at its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Truncate it (or create it, mode 0666 less the umask) and write from the start.
    ///
    /// A write that fails or is cancelled midway leaves the file truncated with the
    /// part written so far: readers may see half of it. Use [`WriteMode::Atomic`]
    /// when they must not.
    Replace,
    /// Write at its end (creating it if missing). A write that fails or is cancelled
    /// midway leaves the bytes appended so far.
    Append,
    /// Write a temporary file beside it (same directory, unique name, created
    /// exclusively), fsync it, rename it over the path, fsync the directory: readers
    /// see the old file or the new one, never half of one.
    ///
    /// A write that fails or is cancelled before the rename leaves the old file
    /// untouched and removes the temporary file. The new file gets the old one's
    /// permission bits (0666 less the umask if there was none); a symbolic link at the
    /// path is replaced by the file, not followed. Once the rename is done the write
    /// has succeeded: a failing fsync of the directory afterwards is not reported.
    Atomic,
}

/// Why a file operation did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsError {
    /// It failed: `Error::Io` with the errno and a message naming the path, or
    /// `Error::TooLarge` for a read past its limit.
    Failed(Failure),
    /// The `cancelled` check answered true; the operation stopped and cleaned up.
    Cancelled,
}

impl FsError {
    /// The failure to hand on; a cancelled operation as a failure whose message says
    /// so (the embedding API ends such a future `Cancelled` whatever it returns).
    pub fn into_failure(self) -> Failure {
        match self {
            FsError::Failed(failure) => failure,
            FsError::Cancelled => Failure::new(Error::Closed.code(), "cancelled"),
        }
    }
}

/// Reads the whole file at `path`.
///
/// `max` 0 means no limit; a file longer than `max` bytes fails with
/// `Error::TooLarge` (at most `max + 1` bytes are ever held, whatever the file's size
/// says, and a file that grows while it is read is caught too). `progress(done,
/// total)` gets the bytes read so far and the size the file had when opened (0 for
/// files that report none, like pipes and `/proc`). OS errors fail with `Error::Io`,
/// their errno and a message like "read /x/y: No such file or directory" (EISDIR for
/// a directory).
pub async fn read<C, P>(
    path: PathBuf,
    max: u64,
    cancelled: C,
    progress: P,
) -> Result<Vec<u8>, FsError>
where
    C: Fn() -> bool + Send + 'static,
    P: Fn(u64, u64) + Send + 'static,
{
    off_loop(move |gate| {
        let cancelled = || gate.stop_requested() || cancelled();
        read_blocking(&path, max, &cancelled, &progress, &|| gate.may_hang())
    })
    .await
}

/// Writes `data` to the file at `path` as `mode` says.
///
/// `progress(done, total)` gets the bytes written so far, of `data.len()`. OS errors
/// fail with `Error::Io`, their errno and a message like "write /x/y: No such file or
/// directory".
///
/// `commit` is asked right before the rename of an `Atomic` write, its point of no
/// return: false (a cancel came first) stops it as cancelled; true means a cancel
/// arriving later no longer counts (see `embed::Task::commit`).
pub async fn write<C, K, P>(
    path: PathBuf,
    data: Vec<u8>,
    mode: WriteMode,
    cancelled: C,
    commit: K,
    progress: P,
) -> Result<(), FsError>
where
    C: Fn() -> bool + Send + 'static,
    K: Fn() -> bool + Send + 'static,
    P: Fn(u64, u64) + Send + 'static,
{
    off_loop(move |gate| {
        let cancelled = || gate.stop_requested() || cancelled();
        match mode {
            WriteMode::Replace | WriteMode::Append => write_in_place(
                &path,
                &data,
                mode == WriteMode::Append,
                &cancelled,
                &progress,
                &|| gate.may_hang(),
            ),
            WriteMode::Atomic => {
                let commit = || !gate.stop_requested() && commit();
                write_atomic(&path, &data, &cancelled, &commit, &progress)
            }
        }
    })
    .await
}

/// The read itself, on a blocking thread.
fn read_blocking(
    path: &Path,
    max: u64,
    cancelled: &dyn Fn() -> bool,
    progress: &dyn Fn(u64, u64),
    may_hang: &dyn Fn(),
) -> Result<Vec<u8>, FsError> {
    let failed = |error: std::io::Error| io_failure(error, "read", path);
    if cancelled() {
        return Err(FsError::Cancelled);
    }
    if !is_regular_or_missing(path) {
        may_hang();
    }
    let file = File::open(path).map_err(failed)?;
    let size = match file.metadata() {
        Ok(meta) if meta.is_file() => meta.len(),
        Ok(_) => {
            may_hang();
            0
        }
        Err(error) => return Err(failed(error)),
    };
    // One byte past the limit tells a file that is too long from one that fits.
    let limit = match max {
        0 => u64::MAX,
        max => max.saturating_add(1),
    };
    let mut data = Vec::new();
    // The size is only a hint (the file may change): reserve it, never rely on it.
    reserve(&mut data, size.min(limit)).map_err(failed)?;
    progress(0, size);
    loop {
        if cancelled() {
            return Err(FsError::Cancelled);
        }
        let want = (limit - data.len() as u64).min(CHUNK as u64);
        if want == 0 {
            break;
        }
        reserve(&mut data, want).map_err(failed)?;
        // `take` + `read_to_end` reads until `want` bytes or the end of the file,
        // retrying interrupted calls.
        let got = (&file).take(want).read_to_end(&mut data).map_err(failed)?;
        progress(data.len() as u64, size);
        if (got as u64) < want {
            break;
        }
    }
    if max != 0 && data.len() as u64 > max {
        return Err(FsError::Failed(Failure::new(
            Error::TooLarge.code(),
            format!(
                "read {}: the file is larger than the limit of {max} bytes",
                path.display()
            ),
        )));
    }
    Ok(data)
}

/// Room for `more` bytes, or ENOMEM instead of an abort when there is none.
fn reserve(data: &mut Vec<u8>, more: u64) -> std::io::Result<()> {
    let more = usize::try_from(more).unwrap_or(usize::MAX);
    data.try_reserve(more)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::ENOMEM))
}

/// A replacing or appending write, on a blocking thread.
fn write_in_place(
    path: &Path,
    data: &[u8],
    append: bool,
    cancelled: &dyn Fn() -> bool,
    progress: &dyn Fn(u64, u64),
    may_hang: &dyn Fn(),
) -> Result<(), FsError> {
    if cancelled() {
        return Err(FsError::Cancelled);
    }
    if !is_regular_or_missing(path) {
        may_hang();
    }
    let mut options = OpenOptions::new();
    if append {
        options.append(true);
    } else {
        options.write(true).truncate(true);
    }
    let mut file = options
        .create(true)
        .open(path)
        .map_err(|error| io_failure(error, "write", path))?;
    if !file.metadata().is_ok_and(|meta| meta.is_file()) {
        may_hang();
    }
    write_chunks(&mut file, path, data, cancelled, progress)
}

/// Whether `path` is a regular file, a directory (whose open fails at once), or
/// nothing yet: what opening it and moving its bytes cannot block on forever.
fn is_regular_or_missing(path: &Path) -> bool {
    std::fs::metadata(path).map_or(true, |meta| meta.is_file() || meta.is_dir())
}

/// Writes `data` to `file` a chunk at a time, checking `cancelled` before each.
fn write_chunks(
    file: &mut File,
    path: &Path,
    data: &[u8],
    cancelled: &dyn Fn() -> bool,
    progress: &dyn Fn(u64, u64),
) -> Result<(), FsError> {
    let total = data.len() as u64;
    progress(0, total);
    let mut done = 0u64;
    for chunk in data.chunks(CHUNK) {
        if cancelled() {
            return Err(FsError::Cancelled);
        }
        file.write_all(chunk)
            .map_err(|error| io_failure(error, "write", path))?;
        done += chunk.len() as u64;
        progress(done, total);
    }
    Ok(())
}

/// An atomic write, on a blocking thread.
fn write_atomic(
    path: &Path,
    data: &[u8],
    cancelled: &dyn Fn() -> bool,
    commit: &dyn Fn() -> bool,
    progress: &dyn Fn(u64, u64),
) -> Result<(), FsError> {
    let failed = |error: std::io::Error| io_failure(error, "write", path);
    if cancelled() {
        return Err(FsError::Cancelled);
    }
    // "dir/" names a directory; renaming over "dir" would ignore the slash.
    let Some(name) = path
        .file_name()
        .filter(|_| !path.as_os_str().as_bytes().ends_with(b"/"))
    else {
        return Err(failed(std::io::Error::from_raw_os_error(libc::EISDIR)));
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // The old file's permission bits, kept by the new one.
    let keep_mode = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => Some(meta.permissions().mode() & 0o7777),
        _ => None,
    };
    let (mut file, temporary) = TemporaryFile::create(dir, name).map_err(failed)?;
    if let Some(mode) = keep_mode {
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(failed)?;
    }
    write_chunks(&mut file, path, data, cancelled, progress)?;
    // fsync can take long; one last look before it, and one before the rename,
    // which is the point of no return.
    if cancelled() {
        return Err(FsError::Cancelled);
    }
    file.sync_all().map_err(failed)?;
    drop(file);
    if cancelled() || !commit() {
        return Err(FsError::Cancelled);
    }
    std::fs::rename(&temporary.path, path).map_err(failed)?;
    temporary.keep();
    // The rename is durable only once the directory is; a file system that cannot
    // fsync a directory still has the new file in place.
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// A temporary file beside the target, removed on drop unless kept.
struct TemporaryFile {
    path: PathBuf,
    kept: bool,
}

impl TemporaryFile {
    /// Creates a file with a new name in `dir`, exclusively (never an existing one).
    fn create(dir: &Path, target: &std::ffi::OsStr) -> std::io::Result<(File, TemporaryFile)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut tries = 0;
        loop {
            let mut name = OsString::from(".");
            name.push(target);
            name.push(format!(
                ".{}.{}.tmp",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((file, TemporaryFile { path, kept: false })),
                // Left by a process with the same id (a container, a crash) or made by
                // someone else: another name.
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && tries < 100 => {
                    tries += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The file became the target: nothing to remove.
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for TemporaryFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A failure `Error::Io` for `error`, saying "`verb` `path`: description".
fn io_failure(error: std::io::Error, verb: &str, path: &Path) -> FsError {
    // Errors the standard library makes itself (a write that wrote nothing) carry no
    // errno: EIO says "an I/O error" as well as anything.
    let errno = error.raw_os_error().unwrap_or(libc::EIO);
    FsError::Failed(Failure::io(errno, format!("{verb} {}", path.display())))
}

/// Where a blocking part is, so that a dropped future knows whether to wait for it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Queued,
    Running,
    /// Running, on a file where a system call may never return: not waited for.
    MayHang,
    Ended,
    /// Its future was dropped before it started: it must not start.
    Abandoned,
}

/// What a blocking part and its future share.
struct Gate {
    /// Set when the future is dropped: the blocking part stops at its next check.
    stop: AtomicBool,
    phase: Mutex<Phase>,
    changed: Condvar,
}

impl Gate {
    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The blocking part works on a pipe, socket or device.
    fn may_hang(&self) {
        let mut phase = lock(&self.phase);
        if *phase == Phase::Running {
            *phase = Phase::MayHang;
            self.changed.notify_all();
        }
    }

    fn set(&self, phase: Phase) {
        *lock(&self.phase) = phase;
        self.changed.notify_all();
    }
}

/// Marks the blocking part ended when it returns or unwinds.
struct Running<'a>(&'a Gate);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.set(Phase::Ended);
    }
}

/// While armed (`Some`), dropping it stops the blocking part and waits until it has
/// ended.
struct WaitOnDrop(Option<Arc<Gate>>);

impl Drop for WaitOnDrop {
    fn drop(&mut self) {
        let Some(gate) = self.0.take() else {
            return;
        };
        gate.stop.store(true, Ordering::SeqCst);
        let mut phase = lock(&gate.phase);
        if *phase == Phase::Queued {
            *phase = Phase::Abandoned;
            return;
        }
        while *phase == Phase::Running {
            phase = gate
                .changed
                .wait(phase)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Runs `work` on tokio's blocking pool; see the module docs for what a drop does.
async fn off_loop<T, W>(work: W) -> Result<T, FsError>
where
    T: Send + 'static,
    W: FnOnce(&Gate) -> Result<T, FsError> + Send + 'static,
{
    let gate = Arc::new(Gate {
        stop: AtomicBool::new(false),
        phase: Mutex::new(Phase::Queued),
        changed: Condvar::new(),
    });
    let shared = gate.clone();
    let blocking = tokio::task::spawn_blocking(move || {
        {
            let mut phase = lock(&shared.phase);
            if *phase == Phase::Abandoned {
                return Err(FsError::Cancelled);
            }
            *phase = Phase::Running;
        }
        let _running = Running(&shared);
        work(&shared)
    });
    let mut armed = WaitOnDrop(Some(gate));
    let joined = blocking.await;
    // Joined: the blocking part has ended (or never ran); nothing to wait for.
    armed.0 = None;
    match joined {
        Ok(result) => result,
        Err(error) if error.is_panic() => Err(FsError::Failed(Failure::panic())),
        // The runtime is shutting down and dropped it unrun.
        Err(_) => Err(FsError::Cancelled),
    }
}

// OS calls through and through: Miri cannot run them (ASan, TSan and valgrind do).
#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex as StdMutex;

    /// A directory of its own under the system's temporary directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "asyncbridge-fs-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

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

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn never() -> impl Fn() -> bool + Send + 'static {
        || false
    }

    fn ignore() -> impl Fn(u64, u64) + Send + 'static {
        |_, _| {}
    }

    fn read_now(path: PathBuf, max: u64) -> Result<Vec<u8>, FsError> {
        runtime().block_on(read(path, max, never(), ignore()))
    }

    fn write_now(path: PathBuf, data: &[u8], mode: WriteMode) -> Result<(), FsError> {
        runtime().block_on(write(path, data.to_vec(), mode, never(), || true, ignore()))
    }

    fn failure(error: FsError) -> Failure {
        match error {
            FsError::Failed(failure) => failure,
            FsError::Cancelled => panic!("cancelled, not failed"),
        }
    }

    /// Content that differs from chunk to chunk, so a misplaced chunk shows.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
            .collect()
    }

    #[test]
    fn write_then_read_round_trips_at_chunk_edges() {
        let scratch = Scratch::new("round");
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let path = scratch.path("f");
            let data = pattern(len);
            for mode in [WriteMode::Replace, WriteMode::Atomic] {
                write_now(path.clone(), &data, mode).unwrap();
                assert_eq!(std::fs::read(&path).unwrap(), data, "{mode:?} {len}");
                assert_eq!(read_now(path.clone(), 0).unwrap(), data);
            }
        }
        assert_eq!(scratch.names(), ["f"]);
    }

    #[test]
    fn the_limit_allows_exactly_max_bytes() {
        let scratch = Scratch::new("max");
        let path = scratch.path("f");
        std::fs::write(&path, pattern(CHUNK + 5)).unwrap();
        let len = (CHUNK + 5) as u64;
        assert_eq!(read_now(path.clone(), len).unwrap().len() as u64, len);
        assert_eq!(read_now(path.clone(), u64::MAX).unwrap().len() as u64, len);
        let too_large = failure(read_now(path.clone(), len - 1).unwrap_err());
        assert_eq!(too_large.code(), Error::TooLarge.code());
        assert_eq!(too_large.os_error(), 0);
        assert!(too_large
            .message()
            .to_str()
            .unwrap()
            .contains(&path.display().to_string()));
        // An empty file fits any limit.
        std::fs::write(&path, b"").unwrap();
        assert_eq!(read_now(path, 1).unwrap(), b"");
    }

    #[test]
    fn the_limit_holds_for_files_without_a_size() {
        // /proc files say they are empty; the limit is counted on what is read.
        let got = read_now(PathBuf::from("/proc/self/status"), 0).unwrap();
        assert!(got.len() > 10);
        let too_large = failure(read_now(PathBuf::from("/proc/self/status"), 10).unwrap_err());
        assert_eq!(too_large.code(), Error::TooLarge.code());
    }

    #[test]
    fn read_errors_carry_errno_and_path() {
        let scratch = Scratch::new("rerr");
        let missing = scratch.path("missing");
        let cases = [
            (missing.clone(), libc::ENOENT),
            (scratch.0.clone(), libc::EISDIR),
        ];
        for (path, errno) in cases {
            let failed = failure(read_now(path.clone(), 0).unwrap_err());
            assert_eq!(failed.code(), Error::Io.code());
            assert_eq!(failed.os_error(), errno);
            let message = failed.message().to_str().unwrap().to_owned();
            assert!(
                message.starts_with(&format!("read {}: ", path.display())),
                "{message}"
            );
        }
    }

    #[test]
    fn append_adds_and_creates() {
        let scratch = Scratch::new("append");
        let path = scratch.path("log");
        write_now(path.clone(), b"one ", WriteMode::Append).unwrap();
        write_now(path.clone(), b"two", WriteMode::Append).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one two");
        write_now(path.clone(), b"new", WriteMode::Replace).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn atomic_keeps_the_permission_bits() {
        let scratch = Scratch::new("mode");
        let path = scratch.path("f");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_now(path.clone(), b"new", WriteMode::Atomic).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn a_failed_atomic_write_keeps_the_old_file_and_no_temporary() {
        let scratch = Scratch::new("afail");
        // A directory at the path: the rename fails after everything was written.
        let dir = scratch.path("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("inside"), b"kept").unwrap();
        let failed =
            failure(write_now(dir.clone(), &pattern(CHUNK + 1), WriteMode::Atomic).unwrap_err());
        assert_eq!(failed.code(), Error::Io.code());
        assert_eq!(failed.os_error(), libc::EISDIR);
        assert_eq!(std::fs::read(dir.join("inside")).unwrap(), b"kept");
        assert_eq!(scratch.names(), ["d"]);
        // A trailing slash names a directory, even when a file has that name.
        let file = scratch.path("f");
        std::fs::write(&file, b"old").unwrap();
        let mut slashed = file.clone().into_os_string();
        slashed.push("/");
        let failed = failure(write_now(slashed.into(), b"new", WriteMode::Atomic).unwrap_err());
        assert_eq!(failed.os_error(), libc::EISDIR);
        assert_eq!(std::fs::read(&file).unwrap(), b"old");
        // No directory to write into.
        let failed =
            failure(write_now(scratch.path("none/f"), b"new", WriteMode::Atomic).unwrap_err());
        assert_eq!(failed.os_error(), libc::ENOENT);
        let message = failed.message().to_str().unwrap().to_owned();
        assert!(message.starts_with(&format!("write {}: ", scratch.path("none/f").display())));
        assert_eq!(scratch.names(), ["d", "f"]);
    }

    #[test]
    fn a_bare_name_writes_atomically_in_the_current_directory() {
        struct RemoveFile(String);
        impl Drop for RemoveFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let name = format!("asyncbridge-fs-bare-{}", std::process::id());
        let _cleanup = RemoveFile(name.clone());
        write_now(PathBuf::from(&name), b"here", WriteMode::Atomic).unwrap();
        assert_eq!(std::fs::read(&name).unwrap(), b"here");
    }

    #[test]
    fn cancelling_stops_between_chunks_and_cleans_up() {
        let scratch = Scratch::new("cancel");
        let path = scratch.path("f");
        std::fs::write(&path, b"old").unwrap();
        for mode in [WriteMode::Atomic, WriteMode::Replace] {
            // Cancelled after the second chunk's progress.
            let seen = Arc::new(StdMutex::new(Vec::new()));
            let stop = Arc::new(AtomicBool::new(false));
            let (record, flag) = (seen.clone(), stop.clone());
            let result = runtime().block_on(write(
                path.clone(),
                pattern(8 * CHUNK),
                mode,
                move || stop.load(Ordering::SeqCst),
                || true,
                move |done, total| {
                    record.lock().unwrap().push((done, total));
                    if done >= 2 * CHUNK as u64 {
                        flag.store(true, Ordering::SeqCst);
                    }
                },
            ));
            assert_eq!(result, Err(FsError::Cancelled));
            let total = 8 * CHUNK as u64;
            assert_eq!(
                *seen.lock().unwrap(),
                [(0, total), (CHUNK as u64, total), (2 * CHUNK as u64, total)]
            );
            let left = std::fs::read(&path).unwrap();
            match mode {
                WriteMode::Atomic => assert_eq!(left, b"old"),
                _ => assert_eq!(left, pattern(2 * CHUNK)),
            }
            assert_eq!(scratch.names(), ["f"]);
        }
    }

    #[test]
    fn read_progress_counts_of_the_size() {
        let scratch = Scratch::new("rprog");
        let path = scratch.path("f");
        std::fs::write(&path, pattern(2 * CHUNK + 3)).unwrap();
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let record = seen.clone();
        let got = runtime()
            .block_on(read(path, 0, never(), move |done, total| {
                record.lock().unwrap().push((done, total))
            }))
            .unwrap();
        assert_eq!(got, pattern(2 * CHUNK + 3));
        let size = 2 * CHUNK as u64 + 3;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.first(), Some(&(0, size)));
        assert_eq!(seen.last(), Some(&(size, size)));
        assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn a_cancelled_read_stops() {
        let scratch = Scratch::new("rcancel");
        let path = scratch.path("f");
        std::fs::write(&path, b"data").unwrap();
        let result = runtime().block_on(read(path, 0, || true, ignore()));
        assert_eq!(result, Err(FsError::Cancelled));
    }

    #[test]
    fn dropping_the_future_waits_for_the_blocking_part() {
        let scratch = Scratch::new("drop");
        let path = scratch.path("f");
        std::fs::write(&path, b"old").unwrap();
        let rt = runtime();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let started_tx = StdMutex::new(Some(started_tx));
        let write = write(
            path.clone(),
            pattern(64 * CHUNK),
            WriteMode::Atomic,
            never(),
            || true,
            move |done, _| {
                if done > 0 {
                    if let Some(tx) = started_tx.lock().unwrap().take() {
                        tx.send(()).unwrap();
                    }
                    // Slow enough that the drop comes while chunks remain.
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            },
        );
        let _task = rt.spawn(write);
        rt.block_on(started_rx).unwrap();
        assert_eq!(scratch.names().len(), 2, "no temporary file while writing");
        // As a bridge's loop does at shutdown: the tasks are dropped on this thread,
        // the write mid-way, and blocking threads are not waited for. The drop of the
        // write returns only once its blocking part has stopped and removed its
        // temporary file.
        rt.shutdown_timeout(std::time::Duration::ZERO);
        assert_eq!(scratch.names(), ["f"]);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }
}
