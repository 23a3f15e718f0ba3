//! Running a program to its end: its output collected, its input fed, a time and an
//! output limit, and nothing of it left behind.
//!
//! [`run`] starts the program in a process group of its own and resolves once the
//! program has exited and been reaped. The rules, which `bridge_process_run` documents
//! for C too:
//!
//! - **Exit.** A result is a result: any exit code, or death by a signal, is
//!   `Ok`. [`run`] fails only when the program cannot be started (`Error::Io` with the
//!   errno: ENOENT, EACCES, ENOEXEC, a bad `cwd`, ...), on the timeout
//!   (`Error::TimedOut`) and when an output stream passes its limit
//!   (`Error::TooLarge`); in the last two the group is killed and reaped first.
//! - **The group is the unit.** When the program exits, whatever it left running in its
//!   process group (`sh -c 'server &'`) is killed with SIGKILL, so a run never waits
//!   for, nor leaves behind, a background process that holds its output open. Output
//!   those processes write after the program's exit is not waited for; everything the
//!   program itself wrote is read. A process that left the group (`setsid`) is out of
//!   reach and not killed.
//! - **Cancellation.** Dropping the future of [`run`] before its end (a cancelled or
//!   timed-out bridge future, shutdown) kills the whole group with SIGKILL and reaps
//!   the program in the drop, so nothing of the group runs any more once the drop
//!   returns. Killed grandchildren are reaped by their new parent (init or a
//!   subreaper), not by this process.
//! - **No SIGCHLD handler.** The exit is learned through a pidfd (Linux 5.3+), read
//!   by the runtime's reactor, and the program is reaped with `waitpid` on its own pid;
//!   no signal disposition is touched. Without pidfds (older kernels, other systems,
//!   or when `pidfd_open` is refused) the program is looked at with
//!   `waitid(WNOHANG | WNOWAIT)` every 10 ms instead. If the application reaps the
//!   program first (its own SIGCHLD handler waiting for any child, or SIGCHLD set to
//!   SIG_IGN), the exit status is lost: the result says [`Exit::Unknown`] (C:
//!   exit_code -1, signal 0), and the group is not killed, as its id may by then
//!   belong to someone else.
//! - **Input.** `stdin` is written to the program's standard input, which is then
//!   closed; with no input the program reads /dev/null. Input is fed through a socket
//!   pair written with MSG_NOSIGNAL, so a program that exits without reading all of it
//!   cannot raise SIGPIPE in a C host that keeps the default action (which would kill
//!   it); the rest of the input is dropped.
//! - **Memory.** At most `max_output` + 1 bytes of each stream are ever held; the
//!   byte after the limit fails the run.
//!
//! [`run`] must be polled inside a tokio runtime with I/O and time enabled (a bridge's
//! loop). Starting the program (fork and exec, through `std::process::Command`) happens
//! on the polling thread and takes as long as the OS needs for it.

use std::ffi::OsString;
use std::future::Future as _;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, Interest, ReadBuf};
use tokio::net::unix::pipe;
use tokio::net::UnixStream;
use tokio::time::Sleep;

use crate::future::Failure;
use crate::status::Error;
use crate::sys::child::{self, Reaped};

/// The output limit per stream when [`ProcessOptions::max_output`] is 0: 64 MiB.
const DEFAULT_MAX_OUTPUT: u64 = 64 << 20;

/// How often the exit is looked for when no pidfd is available.
const POLL_EXIT_EVERY: Duration = Duration::from_millis(10);

/// Reads of one stream per poll before the others get their turn.
const READS_PER_POLL: usize = 16;

/// What to run and how (see [`run`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessOptions {
    /// The program: a path, or a name searched in `PATH` when it has no '/' (the
    /// `PATH` of `env` when it sets one, else this process's).
    pub program: OsString,
    /// The arguments after the program's name (`argv[1..]`).
    pub args: Vec<OsString>,
    /// `None`: the program inherits this process's environment; else its whole
    /// environment, as (name, value) pairs.
    pub env: Option<Vec<(OsString, OsString)>>,
    /// `None`: this process's working directory. A relative `program` with a '/' is
    /// found from here.
    pub cwd: Option<PathBuf>,
    /// Written to the program's standard input, which is then closed.
    pub stdin: Vec<u8>,
    /// `None`: no limit; else the group is killed after this long, and the run fails
    /// with `Error::TimedOut`.
    pub timeout: Option<Duration>,
    /// The most bytes kept per output stream; 0 means 64 MiB. One more kills the
    /// group and fails the run with `Error::TooLarge`.
    pub max_output: u64,
    /// Standard error goes into the same pipe as standard output (in the order the
    /// program wrote them); [`ProcessOutput::stderr`] stays empty.
    pub merge_stderr: bool,
}

impl ProcessOptions {
    /// Options that run `program` with no arguments and the defaults for the rest.
    pub fn new(program: impl Into<OsString>) -> ProcessOptions {
        ProcessOptions {
            program: program.into(),
            ..ProcessOptions::default()
        }
    }

    /// Why these options cannot be run, if they cannot: an empty program, a NUL byte
    /// in a string, an environment name that is empty or holds '=', an empty `cwd`.
    pub fn check(&self) -> Result<(), &'static str> {
        use std::os::unix::ffi::OsStrExt;
        let has_nul = |s: &std::ffi::OsStr| s.as_bytes().contains(&0);
        if self.program.is_empty() {
            return Err("the program is empty");
        }
        if has_nul(&self.program) || self.args.iter().any(|a| has_nul(a)) {
            return Err("a NUL byte in the program or an argument");
        }
        for (name, value) in self.env.iter().flatten() {
            if name.is_empty() || name.as_bytes().contains(&b'=') {
                return Err("an environment name that is empty or holds '='");
            }
            if has_nul(name) || has_nul(value) {
                return Err("a NUL byte in the environment");
            }
        }
        match &self.cwd {
            Some(cwd) if cwd.as_os_str().is_empty() => Err("an empty cwd"),
            Some(cwd) if has_nul(cwd.as_os_str()) => Err("a NUL byte in the cwd"),
            _ => Ok(()),
        }
    }

    /// The per-stream limit in force.
    fn limit(&self) -> u64 {
        match self.max_output {
            0 => DEFAULT_MAX_OUTPUT,
            limit => limit,
        }
    }
}

/// How the program ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// This signal ended it.
    Signal(i32),
    /// The application reaped it before the library could (its own SIGCHLD handler
    /// waiting for any child, or SIGCHLD set to SIG_IGN): the status is lost.
    Unknown,
}

impl Exit {
    /// The exit code; -1 when a signal ended the program or the status is unknown.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(code) => code,
            Exit::Signal(_) | Exit::Unknown => -1,
        }
    }

    /// The signal that ended the program; 0 when none did (or unknown).
    pub fn signal(self) -> i32 {
        match self {
            Exit::Signal(signal) => signal,
            Exit::Code(_) | Exit::Unknown => 0,
        }
    }
}

/// What a finished program left: how it ended and all of its output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessOutput {
    /// How it ended.
    pub exit: Exit,
    /// All of standard output (with standard error too, if merged).
    pub stdout: Vec<u8>,
    /// All of standard error (empty if merged).
    pub stderr: Vec<u8>,
}

/// Runs a program to its end (see the module's documentation for every rule):
/// `progress` is called with the number of output bytes read so far, each time it
/// grows.
///
/// ```
/// use asyncbridge::io::process::{run, Exit, ProcessOptions};
///
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// let options = ProcessOptions {
///     args: vec!["-c".into(), "printf hello; exit 3".into()],
///     ..ProcessOptions::new("sh")
/// };
/// let output = rt.block_on(run(options, |_read| {})).unwrap();
/// assert_eq!(output.exit, Exit::Code(3));
/// assert_eq!(output.stdout, b"hello");
/// ```
pub async fn run(
    options: ProcessOptions,
    progress: impl Fn(u64),
) -> Result<ProcessOutput, Failure> {
    run_watching(options, progress, true).await
}

/// [`run`], learning of the exit through a pidfd if `use_pidfd` (and the system has
/// them), else by polling.
async fn run_watching(
    options: ProcessOptions,
    progress: impl Fn(u64),
    use_pidfd: bool,
) -> Result<ProcessOutput, Failure> {
    if let Err(why) = options.check() {
        return Err(Failure::new(Error::Invalid.code(), why));
    }
    let name = options.program.to_string_lossy().into_owned();
    let limit = options.limit();
    let plan = Plan {
        stdin: if options.stdin.is_empty() {
            Plumbing::Null
        } else {
            Plumbing::Pipe
        },
        stdout: Plumbing::Pipe,
        stderr: if options.merge_stderr {
            Plumbing::IntoStdout
        } else {
            Plumbing::Pipe
        },
    };
    let (mut program, ends) = start(&options, plan)?;

    let mut out = Reader::new(ends.stdout, "stdout", limit)?;
    let mut err = match ends.stderr {
        Some(fd) => Some(Reader::new(Some(fd), "stderr", limit)?),
        None => None,
    };
    let mut feeder = match ends.stdin {
        Some(fd) => Some(Feeder::new(fd, options.stdin)?),
        None => None,
    };
    let mut exit = ExitWatch::new(program.pid, use_pidfd);
    let mut deadline: Option<Pin<Box<Sleep>>> =
        options.timeout.map(|t| Box::pin(tokio::time::sleep(t)));
    let mut scratch = vec![0u8; 64 << 10].into_boxed_slice();
    let mut read = 0u64;

    let timeout = options.timeout;
    let end = std::future::poll_fn(|cx| {
        if let Some(feeder) = feeder.as_mut() {
            feeder.pump(cx);
        }
        let before = read;
        for reader in std::iter::once(&mut out).chain(err.as_mut()) {
            if let Err(stop) = reader.pump(cx, &mut scratch, &mut read) {
                return Poll::Ready(Err(stop));
            }
        }
        if read != before {
            progress(read);
        }
        if exit.poll_exited(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        match (
            deadline.as_mut().map(|sleep| sleep.as_mut().poll(cx)),
            timeout,
        ) {
            (Some(Poll::Ready(())), Some(after)) => Poll::Ready(Err(Stop::TimedOut(after))),
            _ => Poll::Pending,
        }
    })
    .await;
    if let Err(stop) = end {
        return Err(program.stop(stop, &mut exit, &name, limit).await);
    }

    // Whatever the program left in its group is killed before its output is drained,
    // so the drain ends: all the program wrote is in the pipes, and a killed process
    // writes no more.
    program.kill_group();
    let before = read;
    for reader in std::iter::once(&mut out).chain(err.as_mut()) {
        if let Err(stop) = reader.drain(&mut scratch, &mut read) {
            return Err(program.stop(stop, &mut exit, &name, limit).await);
        }
    }
    if read != before {
        progress(read);
    }
    Ok(ProcessOutput {
        exit: program.reap_exited(),
        stdout: out.data,
        stderr: err.map(|reader| reader.data).unwrap_or_default(),
    })
}

/// Why a run stops before the program's exit.
enum Stop {
    /// Its time, this long, ran out.
    TimedOut(Duration),
    /// This stream passed its limit.
    TooLarge(&'static str),
    /// Reading this stream failed.
    ReadFailed(&'static str, io::Error),
}

/// Where one of a program's standard streams goes when it is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plumbing {
    /// /dev/null.
    Null,
    /// A pipe whose other end this process keeps (for standard input, a socket: see
    /// [`Ends::stdin`]).
    Pipe,
    /// Standard error only: wherever standard output goes.
    IntoStdout,
}

/// Where each of a program's standard streams goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) stdin: Plumbing,
    pub(crate) stdout: Plumbing,
    pub(crate) stderr: Plumbing,
}

/// The descriptors this process keeps of a started program's standard streams: one
/// for each stream the plan piped.
pub(crate) struct Ends {
    /// The read end of standard output's pipe.
    pub(crate) stdout: Option<OwnedFd>,
    /// The read end of standard error's pipe.
    pub(crate) stderr: Option<OwnedFd>,
    /// This process's side of a socket pair whose other side is the program's
    /// standard input: a socket, not a pipe, so that it can be written with
    /// MSG_NOSIGNAL (see [`child::send_no_sigpipe`]).
    pub(crate) stdin: Option<std::os::unix::net::UnixStream>,
}

/// Whether the program can be started, as far as a look at the file system tells:
/// the errno it would fail with if not (ENOENT, ENOTDIR, EACCES).
///
/// The spawn reports these too, but not everywhere: where `posix_spawn`'s vfork is
/// emulated by a fork (under valgrind, for one) the failure of the exec happens in the
/// child, which then exits 127, and with SIGCHLD ignored even that is lost.
fn startable(options: &ProcessOptions) -> Result<(), i32> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &std::path::Path| -> Result<(), i32> {
        let path = match (&options.cwd, path.is_relative()) {
            (Some(cwd), true) => cwd.join(path),
            _ => path.to_owned(),
        };
        let meta =
            std::fs::metadata(&path).map_err(|e| e.raw_os_error().unwrap_or(libc::ENOENT))?;
        if meta.is_dir() || meta.permissions().mode() & 0o111 == 0 {
            return Err(libc::EACCES);
        }
        Ok(())
    };
    let program = std::path::Path::new(&options.program);
    if options.program.as_bytes().contains(&b'/') {
        return executable(program);
    }
    let inherited = std::env::var_os("PATH");
    let path = options
        .env
        .as_ref()
        .and_then(|env| {
            env.iter()
                .find(|(name, _)| name.as_bytes() == b"PATH")
                .map(|(_, value)| value.clone())
        })
        .or(inherited)
        .unwrap_or_else(|| "/usr/bin:/bin".into());
    let mut denied = false;
    for dir in std::env::split_paths(&path) {
        let dir = if dir.as_os_str().is_empty() {
            std::path::PathBuf::from(".")
        } else {
            dir
        };
        match executable(&dir.join(program)) {
            Ok(()) => return Ok(()),
            Err(libc::EACCES) => denied = true,
            Err(_) => {}
        }
    }
    Err(if denied { libc::EACCES } else { libc::ENOENT })
}

/// Starts the program in a process group of its own, its standard streams plumbed as
/// `plan` says; the program's ends of the pipes are closed here once it has them.
pub(crate) fn start(options: &ProcessOptions, plan: Plan) -> Result<(Program, Ends), Failure> {
    let what = || match &options.cwd {
        Some(cwd) => format!(
            "start {} in {}",
            options.program.to_string_lossy(),
            cwd.display()
        ),
        None => format!("start {}", options.program.to_string_lossy()),
    };
    let failed = |error: io::Error| match error.raw_os_error() {
        Some(errno) => Failure::io(errno, what()),
        None => Failure::new(Error::Invalid.code(), format!("{}: {error}", what())),
    };
    if let Err(errno) = startable(options) {
        return Err(Failure::io(errno, what()));
    }
    let (stdout, out_theirs) = match plan.stdout {
        Plumbing::Pipe => {
            let (mine, theirs) = child::pipe().map_err(failed)?;
            (Some(mine), Some(theirs))
        }
        Plumbing::Null | Plumbing::IntoStdout => (None, None),
    };
    let (stderr, err_theirs) = match (plan.stderr, &out_theirs) {
        (Plumbing::Pipe, _) => {
            let (mine, theirs) = child::pipe().map_err(failed)?;
            (Some(mine), Stdio::from(theirs))
        }
        (Plumbing::IntoStdout, Some(out)) => (None, Stdio::from(out.try_clone().map_err(failed)?)),
        (Plumbing::IntoStdout, None) | (Plumbing::Null, _) => (None, Stdio::null()),
    };
    let (stdin, stdin_theirs) = match plan.stdin {
        Plumbing::Pipe => {
            let (mine, theirs) = std::os::unix::net::UnixStream::pair().map_err(failed)?;
            (Some(mine), Stdio::from(OwnedFd::from(theirs)))
        }
        Plumbing::Null | Plumbing::IntoStdout => (None, Stdio::null()),
    };

    let mut command = Command::new(&options.program);
    command
        .args(&options.args)
        .process_group(0)
        .stdin(stdin_theirs)
        .stdout(out_theirs.map_or_else(Stdio::null, Stdio::from))
        .stderr(err_theirs);
    if let Some(env) = &options.env {
        command.env_clear();
        command.envs(env.iter().map(|(name, value)| (name, value)));
    }
    if let Some(cwd) = &options.cwd {
        command.current_dir(cwd);
    }
    let spawned = command.spawn();
    // The command holds the program's ends of the pipes: closed now, so that end of
    // file comes when the program's group has closed them.
    drop(command);
    let started = spawned.map_err(failed)?;
    let pid = i32::try_from(started.id()).unwrap_or(i32::MAX);
    // Dropping std's handle neither waits nor kills; `Program` owns the child now.
    drop(started);
    let ends = Ends {
        stdout,
        stderr,
        stdin,
    };
    Ok((Program { pid, reaped: false }, ends))
}

/// A started program not yet reaped: the guard that kills its group and reaps it if
/// the run is dropped (cancelled) before its end.
pub(crate) struct Program {
    pid: i32,
    reaped: bool,
}

impl Program {
    /// The program's pid, which is also its process group's id.
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Kills whatever is left of the group, if the program is still ours to wait for
    /// (running or a zombie, it holds the group's id, which cannot be reused
    /// meanwhile).
    pub(crate) fn kill_group(&self) {
        if !self.reaped && child::has_exited(self.pid).is_some() {
            child::kill_group(self.pid);
        }
    }

    /// Reaps the program once its exit was seen (or once it was sent SIGKILL).
    pub(crate) fn reap_exited(&mut self) -> Exit {
        // It has exited, so this does not wait: blocking only covers a look that
        // raced with the exit notice.
        let exit = match child::reap(self.pid, true) {
            Reaped::Exited(code) => Exit::Code(code),
            Reaped::Signalled(signal) => Exit::Signal(signal),
            Reaped::Running | Reaped::Gone => Exit::Unknown,
        };
        self.reaped = true;
        exit
    }

    /// Kills the group, waits for the program's end and reaps it, then says why the
    /// run failed.
    async fn stop(&mut self, stop: Stop, exit: &mut ExitWatch, name: &str, limit: u64) -> Failure {
        self.kill_group();
        std::future::poll_fn(|cx| exit.poll_exited(cx)).await;
        self.reap_exited();
        match stop {
            Stop::TimedOut(after) => Failure::new(
                Error::TimedOut.code(),
                format!("process {name} timed out after {} ms", after.as_millis()),
            ),
            Stop::TooLarge(stream) => Failure::new(
                Error::TooLarge.code(),
                format!("process {name}: {stream} passed its limit of {limit} bytes"),
            ),
            Stop::ReadFailed(stream, error) => Failure::io(
                error.raw_os_error().unwrap_or(libc::EIO),
                format!("read the {stream} of {name}"),
            ),
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // The run was dropped before its end: cancelled, shut down, or a panic. The
        // group gets SIGKILL, which no process can catch or ignore, and the program is
        // reaped right here, blocking: the drop is what tells the bridge the work has
        // stopped, so it must not return while the program may still run, and after
        // SIGKILL the wait is only the kernel tearing the process down.
        self.kill_group();
        child::reap(self.pid, true);
        self.reaped = true;
    }
}

/// The read end of a pipe, registered with the runtime's reactor.
pub(crate) fn watch_pipe(fd: OwnedFd) -> Result<pipe::Receiver, Failure> {
    pipe::Receiver::from_owned_fd(fd)
        .map_err(|e| Failure::io(e.raw_os_error().unwrap_or(libc::EIO), "watch a pipe"))
}

/// One output stream being read into memory, up to its limit.
struct Reader {
    /// `None` once it reached end of file.
    pipe: Option<pipe::Receiver>,
    data: Vec<u8>,
    name: &'static str,
    limit: u64,
}

impl Reader {
    /// A reader of the pipe `fd`; one without a pipe is at its end already.
    fn new(fd: Option<OwnedFd>, name: &'static str, limit: u64) -> Result<Reader, Failure> {
        let pipe = fd.map(watch_pipe).transpose()?;
        Ok(Reader {
            pipe,
            data: Vec::new(),
            name,
            limit,
        })
    }

    /// How many bytes the next read may take: up to one past the limit.
    fn room(&self, scratch: usize) -> usize {
        let left = self.limit.saturating_add(1) - self.data.len() as u64;
        usize::try_from(left).unwrap_or(usize::MAX).min(scratch)
    }

    /// Keeps `bytes`, growing the buffer no further than the limit allows.
    fn keep(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        let needed = self.data.len() + bytes.len();
        if needed > self.data.capacity() {
            let most = usize::try_from(self.limit.saturating_add(1)).unwrap_or(usize::MAX);
            let grown = (self.data.capacity() * 2).max(needed).max(4096).min(most);
            self.data.reserve_exact(grown.max(needed) - self.data.len());
        }
        self.data.extend_from_slice(bytes);
        if self.data.len() as u64 > self.limit {
            return Err(Stop::TooLarge(self.name));
        }
        Ok(())
    }

    /// Reads what the pipe holds now; the task is woken when there is more.
    fn pump(
        &mut self,
        cx: &mut Context<'_>,
        scratch: &mut [u8],
        read: &mut u64,
    ) -> Result<(), Stop> {
        for _ in 0..READS_PER_POLL {
            let room = self.room(scratch.len());
            let Some(pipe) = self.pipe.as_mut() else {
                return Ok(());
            };
            let mut buf = ReadBuf::new(&mut scratch[..room]);
            match Pin::new(pipe).poll_read(cx, &mut buf) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(e)) => return Err(Stop::ReadFailed(self.name, e)),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => self.pipe = None,
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    *read += n as u64;
                    self.keep(&scratch[..n])?;
                }
            }
        }
        // More may be waiting: come back once the other streams had their turn.
        cx.waker().wake_by_ref();
        Ok(())
    }

    /// Reads what the pipe holds now, without waiting for more (even what the reactor
    /// has not seen yet).
    fn drain(&mut self, scratch: &mut [u8], read: &mut u64) -> Result<(), Stop> {
        loop {
            let room = self.room(scratch.len());
            let Some(pipe) = self.pipe.as_ref() else {
                break;
            };
            match child::read_now(pipe.as_fd(), &mut scratch[..room]) {
                Ok(0) => self.pipe = None,
                Ok(n) => {
                    *read += n as u64;
                    self.keep(&scratch[..n])?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(Stop::ReadFailed(self.name, e)),
            }
        }
        Ok(())
    }
}

/// The program's input being written, then closed.
pub(crate) struct Feeder {
    /// `None` once all was written (which closed it) or the program stopped reading.
    socket: Option<UnixStream>,
    data: Vec<u8>,
    written: usize,
}

impl Feeder {
    pub(crate) fn new(
        socket: std::os::unix::net::UnixStream,
        data: Vec<u8>,
    ) -> Result<Feeder, Failure> {
        let watch =
            |e: io::Error| Failure::io(e.raw_os_error().unwrap_or(libc::EIO), "watch a socket");
        socket.set_nonblocking(true).map_err(watch)?;
        let socket = UnixStream::from_std(socket).map_err(watch)?;
        Ok(Feeder {
            socket: Some(socket),
            data,
            written: 0,
        })
    }

    /// Writes what the socket takes now; the task is woken when it takes more.
    pub(crate) fn pump(&mut self, cx: &mut Context<'_>) {
        while let Some(socket) = self.socket.as_ref() {
            if self.written == self.data.len() {
                // Closing it is the program's end of file.
                self.stop();
                return;
            }
            match socket.poll_write_ready(cx) {
                Poll::Pending => return,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return self.stop(),
            }
            let rest = &self.data[self.written..];
            // try_io clears the readiness on WouldBlock, so the next poll waits for room.
            match socket.try_io(Interest::WRITABLE, || {
                child::send_no_sigpipe(socket.as_fd(), rest)
            }) {
                Ok(n) => self.written += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) => {}
                // EPIPE, ECONNRESET: the program will not read the rest.
                Err(_) => return self.stop(),
            }
        }
    }

    fn stop(&mut self) {
        self.socket = None;
        self.data = Vec::new();
    }
}

/// Tells when the program has exited (it stays a zombie until reaped).
pub(crate) struct ExitWatch {
    pid: i32,
    how: Watching,
}

enum Watching {
    /// Readable once the program exited.
    Pidfd(AsyncFd<OwnedFd>),
    /// No pidfd: a look every [`POLL_EXIT_EVERY`].
    Polling(Pin<Box<Sleep>>),
}

impl ExitWatch {
    /// Watches `pid` through a pidfd if `use_pidfd` and the system gives one, else by
    /// looking every [`POLL_EXIT_EVERY`]. Must be made inside a runtime.
    pub(crate) fn new(pid: i32, use_pidfd: bool) -> ExitWatch {
        let pidfd = if use_pidfd {
            child::pidfd_open(pid).ok().and_then(|fd| {
                // SAFETY: the OwnedFd is an open descriptor that the AsyncFd owns from
                // here on and never swaps (no get_mut, no into_inner).
                unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
            })
        } else {
            None
        };
        let how = match pidfd {
            Some(fd) => Watching::Pidfd(fd),
            None => Watching::Polling(Box::pin(tokio::time::sleep(Duration::ZERO))),
        };
        ExitWatch { pid, how }
    }

    /// Ready once the program has exited (or was reaped by someone else).
    pub(crate) fn poll_exited(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut self.how {
                Watching::Pidfd(fd) => {
                    return match fd.poll_read_ready(cx) {
                        Poll::Ready(Ok(_)) => Poll::Ready(()),
                        Poll::Pending => Poll::Pending,
                        // Unexpected, but the look below still works.
                        Poll::Ready(Err(_)) => {
                            self.how =
                                Watching::Polling(Box::pin(tokio::time::sleep(Duration::ZERO)));
                            continue;
                        }
                    };
                }
                Watching::Polling(sleep) => {
                    // Gone (reaped by the application) counts as exited too.
                    if child::has_exited(self.pid) != Some(false) {
                        return Poll::Ready(());
                    }
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    sleep
                        .as_mut()
                        .reset(tokio::time::Instant::now() + POLL_EXIT_EVERY);
                }
            }
        }
    }
}

// Processes, pidfds and pipes: Miri cannot run them (ASan, TSan and valgrind do).
#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Runs `options` on a runtime of its own, with a watchdog far above any run here.
    fn run_on_runtime(options: ProcessOptions, use_pidfd: bool) -> Result<ProcessOutput, Failure> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let run = run_watching(options, |_| {}, use_pidfd);
            tokio::time::timeout(Duration::from_secs(60), run)
                .await
                .expect("watchdog: the run hung")
        })
    }

    fn sh(script: &str) -> ProcessOptions {
        ProcessOptions {
            args: vec!["-c".into(), script.into()],
            ..ProcessOptions::new("sh")
        }
    }

    /// A fresh empty directory for one test.
    fn scratch_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("asyncbridge-process-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
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
            if fields[2].parse::<i32>() == Ok(pgid) && state != 'Z' && state != 'X' {
                live.push((pid, state));
            }
        }
        live
    }

    /// Waits (watchdog 30 s) until no process of the group is alive.
    fn assert_group_ends(pgid: i32) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let live = live_members(pgid);
            if live.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "group {pgid} lives on: {live:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The pid a script wrote to `file` as its first act.
    fn read_pid(file: &std::path::Path) -> i32 {
        let text = std::fs::read_to_string(file).unwrap();
        text.trim().parse().unwrap()
    }

    #[test]
    fn exit_codes_and_both_streams() {
        for use_pidfd in [true, false] {
            let output =
                run_on_runtime(sh("printf out; printf err >&2; exit 7"), use_pidfd).unwrap();
            assert_eq!(output.exit, Exit::Code(7));
            assert_eq!((output.exit.code(), output.exit.signal()), (7, 0));
            assert_eq!(output.stdout, b"out");
            assert_eq!(output.stderr, b"err");
        }
    }

    /// The exit can be seen before the reactor has seen the output: what the program
    /// wrote just before it exited is read all the same.
    #[test]
    fn output_written_just_before_the_exit_is_kept() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for round in 0..200 {
            let use_pidfd = round % 2 == 0;
            let output = rt
                .block_on(run_watching(
                    sh("printf out; printf err >&2"),
                    |_| {},
                    use_pidfd,
                ))
                .unwrap();
            assert_eq!(
                (output.stdout.as_slice(), output.stderr.as_slice()),
                (&b"out"[..], &b"err"[..]),
                "round {round}"
            );
        }
    }

    #[test]
    fn death_by_a_signal() {
        let output = run_on_runtime(sh("printf before; kill -TERM $$"), true).unwrap();
        assert_eq!(output.exit, Exit::Signal(libc::SIGTERM));
        assert_eq!(
            (output.exit.code(), output.exit.signal()),
            (-1, libc::SIGTERM)
        );
        assert_eq!(output.stdout, b"before");
    }

    #[test]
    fn merged_streams_keep_their_order() {
        let options = ProcessOptions {
            merge_stderr: true,
            ..sh("echo 1; echo 2 >&2; echo 3; echo 4 >&2")
        };
        let output = run_on_runtime(options, true).unwrap();
        assert_eq!(output.stdout, b"1\n2\n3\n4\n");
        assert!(output.stderr.is_empty());
    }

    #[test]
    fn a_large_input_comes_back_through_cat() {
        let input: Vec<u8> = (0..(1u32 << 20) + 17).map(|i| (i % 251) as u8).collect();
        for use_pidfd in [true, false] {
            let options = ProcessOptions {
                stdin: input.clone(),
                ..ProcessOptions::new("cat")
            };
            let output = run_on_runtime(options, use_pidfd).unwrap();
            assert_eq!(output.exit, Exit::Code(0));
            assert!(output.stdout == input, "{} bytes back", output.stdout.len());
        }
    }

    #[test]
    fn input_the_program_does_not_read_is_dropped() {
        let options = ProcessOptions {
            stdin: vec![b'x'; 8 << 20],
            ..sh("exit 0")
        };
        let output = run_on_runtime(options, true).unwrap();
        assert_eq!(output.exit, Exit::Code(0));
    }

    #[test]
    fn no_input_reads_as_end_of_file() {
        let output = run_on_runtime(ProcessOptions::new("cat"), true).unwrap();
        assert_eq!(output.exit, Exit::Code(0));
        assert!(output.stdout.is_empty());
    }

    #[test]
    fn the_output_limit_is_exact_and_kills_the_group() {
        let exact = ProcessOptions {
            max_output: 1000,
            ..sh("head -c 1000 /dev/zero; head -c 1000 /dev/zero >&2")
        };
        let output = run_on_runtime(exact, true).unwrap();
        assert_eq!((output.stdout.len(), output.stderr.len()), (1000, 1000));

        let dir = scratch_dir("limit");
        let pid_file = dir.join("pid");
        for stream in ["", ">&2"] {
            let script = format!(
                "echo $$ > {}; sleep 100 & head -c 1001 /dev/zero {stream}; sleep 100",
                pid_file.display()
            );
            let over = ProcessOptions {
                max_output: 1000,
                ..sh(&script)
            };
            let failure = run_on_runtime(over, true).unwrap_err();
            assert_eq!(failure.code(), Error::TooLarge.code());
            let name = if stream.is_empty() {
                "stdout"
            } else {
                "stderr"
            };
            assert_eq!(
                failure.message().to_str().unwrap(),
                format!("process sh: {name} passed its limit of 1000 bytes")
            );
            assert_group_ends(read_pid(&pid_file));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_endless_stream_stops_at_the_limit() {
        let options = ProcessOptions {
            max_output: 3 << 20,
            merge_stderr: true,
            ..ProcessOptions::new("yes")
        };
        let failure = run_on_runtime(options, true).unwrap_err();
        assert_eq!(failure.code(), Error::TooLarge.code());
    }

    #[test]
    fn the_timeout_kills_the_group() {
        let dir = scratch_dir("timeout");
        let pid_file = dir.join("pid");
        for use_pidfd in [true, false] {
            let options = ProcessOptions {
                timeout: Some(Duration::from_millis(100)),
                ..sh(&format!(
                    "echo $$ > {}; sleep 100 & sleep 100",
                    pid_file.display()
                ))
            };
            let failure = run_on_runtime(options, use_pidfd).unwrap_err();
            assert_eq!(failure.code(), Error::TimedOut.code());
            assert_eq!(
                failure.message().to_str().unwrap(),
                "process sh timed out after 100 ms"
            );
            assert_group_ends(read_pid(&pid_file));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn what_the_program_leaves_running_is_killed_not_waited_for() {
        let dir = scratch_dir("leftover");
        let pid_file = dir.join("pid");
        let script = format!("echo $$ > {}; sleep 100 & echo started", pid_file.display());
        let output = run_on_runtime(sh(&script), true).unwrap();
        assert_eq!(output.exit, Exit::Code(0));
        assert_eq!(output.stdout, b"started\n");
        assert_group_ends(read_pid(&pid_file));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn programs_that_cannot_start_fail_with_their_errno() {
        let dir = scratch_dir("start");
        let not_executable = dir.join("data");
        std::fs::write(&not_executable, "hello").unwrap();
        let cases = [
            (
                ProcessOptions::new("./nope-not-here"),
                libc::ENOENT,
                "start ./nope-not-here: ",
            ),
            (
                ProcessOptions::new("no-such-program-anywhere"),
                libc::ENOENT,
                "start no-such-program-anywhere: ",
            ),
            // Even root may not run a directory, nor a file without an execute bit.
            (ProcessOptions::new("/"), libc::EACCES, "start /: "),
            (
                ProcessOptions::new(&not_executable),
                libc::EACCES,
                "start /",
            ),
            (
                ProcessOptions {
                    cwd: Some("/nonexistent-dir".into()),
                    ..ProcessOptions::new("true")
                },
                libc::ENOENT,
                "start true in /nonexistent-dir: ",
            ),
        ];
        for (options, errno, start) in cases {
            let failure = run_on_runtime(options, true).unwrap_err();
            let message = failure.message().to_str().unwrap().to_owned();
            assert_eq!(failure.code(), Error::Io.code(), "{message}");
            assert_eq!(failure.os_error(), errno, "{message}");
            assert!(message.starts_with(start), "{message}");
            let description = std::io::Error::from_raw_os_error(errno).to_string();
            let description = description.split(" (os error").next().unwrap().to_owned();
            assert!(message.contains(&description), "{message}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_environment_is_replaced_whole_and_path_is_searched() {
        let dir = scratch_dir("env");
        let script = dir.join("greet-from-here");
        std::fs::write(&script, "#!/bin/sh\necho \"hello $WHO from $PWD\"\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let options = ProcessOptions {
            env: Some(vec![
                (
                    "PATH".into(),
                    format!("/nonexistent:{}", dir.display()).into(),
                ),
                ("WHO".into(), "you".into()),
            ]),
            cwd: Some("/".into()),
            ..ProcessOptions::new("greet-from-here")
        };
        let output = run_on_runtime(options, true).unwrap();
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            "hello you from /\n"
        );

        // Nothing else is inherited.
        let options = ProcessOptions {
            env: Some(vec![("ONLY".into(), "this=one".into())]),
            ..ProcessOptions::new("/usr/bin/env")
        };
        let output = run_on_runtime(options, true).unwrap();
        assert_eq!(output.stdout, b"ONLY=this=one\n");
        let options = ProcessOptions {
            env: Some(Vec::new()),
            ..ProcessOptions::new("/usr/bin/env")
        };
        assert_eq!(run_on_runtime(options, true).unwrap().stdout, b"");
        // Inherited when not given.
        let options = ProcessOptions::new("env");
        let inherited = String::from_utf8(run_on_runtime(options, true).unwrap().stdout).unwrap();
        assert!(inherited.contains("PATH="), "{inherited}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn options_that_cannot_run_are_invalid() {
        let bad = [
            ProcessOptions::new(""),
            ProcessOptions::new("a\0b"),
            ProcessOptions {
                args: vec!["ok".into(), "nul\0".into()],
                ..ProcessOptions::new("true")
            },
            ProcessOptions {
                env: Some(vec![("".into(), "x".into())]),
                ..ProcessOptions::new("true")
            },
            ProcessOptions {
                env: Some(vec![("A=B".into(), "x".into())]),
                ..ProcessOptions::new("true")
            },
            ProcessOptions {
                env: Some(vec![("A".into(), "x\0".into())]),
                ..ProcessOptions::new("true")
            },
            ProcessOptions {
                cwd: Some("".into()),
                ..ProcessOptions::new("true")
            },
        ];
        for options in bad {
            assert!(options.check().is_err(), "{options:?}");
            let failure = run_on_runtime(options, true).unwrap_err();
            assert_eq!(failure.code(), Error::Invalid.code());
        }
        assert_eq!(ProcessOptions::new("true").check(), Ok(()));
    }

    #[test]
    fn progress_counts_the_bytes_read() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let seen = AtomicU64::new(0);
        let calls = AtomicU64::new(0);
        let output = rt
            .block_on(run(
                sh("head -c 300000 /dev/zero; head -c 5 /dev/zero >&2"),
                |read| {
                    assert!(read > seen.swap(read, Ordering::SeqCst), "not growing");
                    calls.fetch_add(1, Ordering::SeqCst);
                },
            ))
            .unwrap();
        assert_eq!(output.stdout.len() + output.stderr.len(), 300_005);
        assert_eq!(seen.load(Ordering::SeqCst), 300_005);
        assert!(calls.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn dropping_the_run_kills_and_reaps_the_group() {
        let dir = scratch_dir("drop");
        let pid_file = dir.join("pid");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let script = format!(
            "sleep 100 & sleep 100 & echo $$ > {}.tmp; mv {0}.tmp {0}; sleep 100",
            pid_file.display()
        );
        let pgid = rt.block_on(async {
            let mut run = Box::pin(run(sh(&script), |_| {}));
            while !pid_file.exists() {
                let polled = tokio::time::timeout(Duration::from_millis(5), &mut run).await;
                assert!(polled.is_err(), "ended early: {polled:?}");
            }
            let pgid = read_pid(&pid_file);
            assert!(live_members(pgid).len() >= 3, "{:?}", live_members(pgid));
            drop(run);
            pgid
        });
        // The program itself is reaped by the drop: not even a zombie is left.
        assert!(!std::path::Path::new(&format!("/proc/{pgid}")).exists());
        assert_group_ends(pgid);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
