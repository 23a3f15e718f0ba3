//! Programs that run beside their caller and talk to it through streams: started at
//! once, their output read while it comes, their input written when the caller has it.
//!
//! [`Child::spawn`] starts a program the way [`crate::io::process::run`] does (a
//! process group of its own; no SIGCHLD handler; the exit learned through a pidfd, or
//! a look every 10 ms without one) and returns as soon as it runs. The rules, which
//! `bridge_process_spawn` documents for C too:
//!
//! - **Start.** A program that cannot be started (ENOENT, EACCES, ENOEXEC, a bad
//!   `cwd`, ...) fails the spawn itself with `Error::Io` and the errno; a [`Child`]
//!   always stands for a program that was started.
//! - **Streams.** Each standard stream the [`Pipes`] name is a [`Stream`] taken once
//!   with [`Child::take_stdin`] (a write side only), [`Child::take_stdout`] or
//!   [`Child::take_stderr`] (read sides only). A stream not piped is /dev/null, except
//!   that `ProcessOptions::stdin` data (allowed only without a stdin pipe) is written
//!   to the program's input by the library, which then closes it, and that
//!   `merge_stderr` sends standard error wherever standard output goes. The input is
//!   a socket written with MSG_NOSIGNAL: writing to a program that stopped reading
//!   fails with EPIPE instead of raising SIGPIPE in the caller. `max_output` is not
//!   used: nothing is collected, the reader of a stream takes what it wants.
//! - **The group is the unit.** A task on the runtime watches the program. When it
//!   exits, whatever it left running in its group (`sh -c 'server &'`) is killed with
//!   SIGKILL and the program is reaped, so a stream's end of file never waits for a
//!   background process that holds the pipe open. What the program wrote stays
//!   readable to its end.
//! - **Waiting.** [`Child::begin_wait`] (or [`Child::wait`]) resolves with the
//!   [`Exit`] once the program has exited and was reaped; one wait at a time, any
//!   number one after another. A wait dropped before its end (a cancelled future)
//!   kills the group with SIGKILL and reaps the program in the drop: once the drop
//!   returns, nothing of the group runs any more.
//! - **Timeout.** `ProcessOptions::timeout` counts from the start: then the group is
//!   killed, the program reaped, and every wait fails with `Error::TimedOut`. A
//!   program that exited before keeps its exit, however late a busy loop gets to it.
//! - **Ending early.** [`Child::kill`] sends SIGKILL to the group. Dropping the
//!   [`Child`] does too if the program has not ended, and the watching task reaps it.
//!   When the runtime goes away (the bridge shuts down), the watching task is dropped
//!   and kills and reaps every program still running. Killed grandchildren are reaped
//!   by their new parent (init or a subreaper).
//! - **Streams outlive the child.** A taken stream stays usable after the [`Child`]
//!   is dropped (reading what the program wrote to its end).
//!
//! Streams and the watching task need a tokio runtime with I/O and time enabled:
//! [`Child::spawn`] must be called inside one (`Bridge::enter`); the fork and exec
//! happen on the calling thread.

use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncWrite, Interest};
use tokio::net::UnixStream;
use tokio::sync::Notify;

use crate::future::Failure;
use crate::io::process::{self, Exit, ExitWatch, Feeder, Plan, Plumbing, ProcessOptions, Program};
use crate::io::stream::Stream;
use crate::status::Error;
use crate::sync::{lock, Arc, Mutex};
use crate::sys::child;

/// Which of a program's standard streams are pipes to this process (see [`Child`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pipes {
    /// Standard input is written through [`Child::take_stdin`]'s stream.
    pub stdin: bool,
    /// Standard output is read through [`Child::take_stdout`]'s stream.
    pub stdout: bool,
    /// Standard error is read through [`Child::take_stderr`]'s stream; not together
    /// with `ProcessOptions::merge_stderr`.
    pub stderr: bool,
}

/// A started program (see the module's documentation for every rule).
///
/// ```
/// use asyncbridge::io::child::{Child, Pipes};
/// use asyncbridge::io::process::{Exit, ProcessOptions};
///
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// rt.block_on(async {
///     let options = ProcessOptions {
///         args: vec!["-c".into(), "echo hello; exit 3".into()],
///         ..ProcessOptions::new("sh")
///     };
///     let pipes = Pipes { stdout: true, ..Pipes::default() };
///     let child = Child::spawn(options, pipes).unwrap();
///     let stdout = child.take_stdout().unwrap();
///     let line = stdout.begin_read(0).unwrap().run(|| true).await.unwrap();
///     assert_eq!(line, b"hello\n");
///     assert_eq!(child.wait().await.unwrap(), Exit::Code(3));
/// });
/// ```
pub struct Child {
    shared: Arc<Shared>,
    stdin: Mutex<Option<Stream>>,
    stdout: Mutex<Option<Stream>>,
    stderr: Mutex<Option<Stream>>,
}

impl std::fmt::Debug for Child {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Child")
            .field("pid", &self.shared.pid)
            .finish()
    }
}

/// What the child, its waits and its watching task share.
struct Shared {
    pid: i32,
    /// The program's name, for messages.
    name: String,
    state: Mutex<State>,
    /// Told when `State::end` is set.
    ended: Notify,
}

struct State {
    /// Kills and reaps the program if it is dropped unreaped (see `Program`'s drop).
    program: Program,
    /// Set once the program was reaped: what every wait answers from then on.
    end: Option<Result<Exit, Failure>>,
    /// The timeout ran out after this long (the group was killed).
    timed_out: Option<Duration>,
    /// A wait is pending.
    waiting: bool,
}

impl Shared {
    /// SIGKILL to the group, unless the program was reaped already.
    fn kill(&self) {
        lock(&self.state).program.kill_group();
    }

    /// The timeout ran out: if the program still runs, the group is killed and the end
    /// will say so (true). A program that has exited already (or was reaped by someone
    /// else) ended in time, however late the loop got here: false, and its exit stands.
    fn time_out(&self, after: Duration) -> bool {
        let mut state = lock(&self.state);
        if state.end.is_some() || child::has_exited(self.pid) != Some(false) {
            return false;
        }
        state.timed_out = Some(after);
        state.program.kill_group();
        true
    }

    /// Ends the program if that was not done yet: SIGKILL to the group (what the
    /// program left there, once it has exited; all of it before), then the program is
    /// reaped, blocking (after SIGKILL, only as long as the kernel takes to tear it
    /// down), and the waits are told.
    fn end_now(&self) {
        let mut state = lock(&self.state);
        if state.end.is_some() {
            return;
        }
        state.program.kill_group();
        let exit = state.program.reap_exited();
        state.end = Some(match state.timed_out {
            Some(after) => Err(Failure::new(
                Error::TimedOut.code(),
                format!(
                    "process {} timed out after {} ms",
                    self.name,
                    after.as_millis()
                ),
            )),
            None => Ok(exit),
        });
        drop(state);
        self.ended.notify_waiters();
    }
}

/// Ends the program when dropped: the watching task holds it, so that the program is
/// reaped when the task ends, and killed and reaped when the runtime drops the task.
struct EndOnDrop(Arc<Shared>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.end_now();
    }
}

impl Child {
    /// Starts a program with the streams `pipes` names (see the module's
    /// documentation).
    ///
    /// Fails with `Error::Invalid` for options that cannot run
    /// ([`ProcessOptions::check`]), input data together with a stdin pipe, or a
    /// standard error both piped and merged, and when not called inside a tokio
    /// runtime; with `Error::Io` (and the errno) when the program cannot be started.
    pub fn spawn(options: ProcessOptions, pipes: Pipes) -> Result<Child, Failure> {
        Child::spawn_watching(options, pipes, true)
    }

    /// [`Child::spawn`], learning of the exit through a pidfd if `use_pidfd` (and the
    /// system has them), else by polling.
    fn spawn_watching(
        options: ProcessOptions,
        pipes: Pipes,
        use_pidfd: bool,
    ) -> Result<Child, Failure> {
        let invalid = |why: &str| Failure::new(Error::Invalid.code(), why);
        options.check().map_err(invalid)?;
        if pipes.stdin && !options.stdin.is_empty() {
            return Err(invalid("input data and a stdin pipe"));
        }
        if pipes.stderr && options.merge_stderr {
            return Err(invalid("standard error both piped and merged"));
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(invalid("not inside a tokio runtime"));
        };
        let piped = |yes: bool| if yes { Plumbing::Pipe } else { Plumbing::Null };
        let plan = Plan {
            stdin: piped(pipes.stdin || !options.stdin.is_empty()),
            stdout: piped(pipes.stdout),
            stderr: match (pipes.stderr, options.merge_stderr) {
                (false, true) => Plumbing::IntoStdout,
                (piped_stderr, _) => piped(piped_stderr),
            },
        };
        let (program, ends) = process::start(&options, plan)?;
        // The timeout counts from here, not from the watching task's first poll, which
        // a busy loop may run much later. One past what an instant can hold never
        // comes.
        let deadline = options.timeout.and_then(|after| {
            let at = tokio::time::Instant::now().checked_add(after)?;
            Some(Deadline { after, at })
        });
        let pid = program.pid();
        let shared = Arc::new(Shared {
            pid,
            name: options.program.to_string_lossy().into_owned(),
            state: Mutex::new(State {
                program,
                end: None,
                timed_out: None,
                waiting: false,
            }),
            ended: Notify::new(),
        });
        // From here on, a failure kills and reaps the program as this guard drops.
        let guard = EndOnDrop(shared.clone());
        let exit = ExitWatch::new(pid, use_pidfd);
        let (mut input, mut feeder) = (None, None);
        if let Some(socket) = ends.stdin {
            if pipes.stdin {
                input = Some(Input::new(socket)?);
            } else {
                feeder = Some(Feeder::new(socket, options.stdin)?);
            }
        }
        let reader = |fd| {
            process::watch_pipe(fd).map(|pipe| Stream::new(Some(pipe), None::<tokio::io::Sink>))
        };
        let stdout = ends.stdout.map(reader).transpose()?;
        let stderr = ends.stderr.map(reader).transpose()?;
        let stdin = input.map(|input| Stream::new(None::<tokio::io::Empty>, Some(input)));
        runtime.spawn(watch(guard, exit, deadline, feeder));
        Ok(Child {
            shared,
            stdin: Mutex::new(stdin),
            stdout: Mutex::new(stdout),
            stderr: Mutex::new(stderr),
        })
    }

    /// The program's pid, which is also its process group's id. Once the program has
    /// been reaped the pid may belong to another process.
    pub fn pid(&self) -> i32 {
        self.shared.pid
    }

    /// The stream that writes the program's standard input (write side only), once;
    /// `None` if it was not piped or was taken already. Shutting its write side down
    /// (or closing it) is the program's end of file.
    pub fn take_stdin(&self) -> Option<Stream> {
        lock(&self.stdin).take()
    }

    /// The stream that reads the program's standard output (read side only), once;
    /// `None` if it was not piped or was taken already.
    pub fn take_stdout(&self) -> Option<Stream> {
        lock(&self.stdout).take()
    }

    /// The stream that reads the program's standard error (read side only), once;
    /// `None` if it was not piped or was taken already.
    pub fn take_stderr(&self) -> Option<Stream> {
        lock(&self.stderr).take()
    }

    /// Sends SIGKILL to the program's whole group; nothing once the program was
    /// reaped. A wait then resolves with `Exit::Signal(SIGKILL)` (or with how the
    /// program ended, if it ended first).
    pub fn kill(&self) {
        self.shared.kill();
    }

    /// Claims the child's one wait: `Error::Busy` while another is pending. Run it
    /// with [`WaitOp::run`]; dropped unrun, it only gives the claim back.
    pub fn begin_wait(&self) -> Result<WaitOp, Error> {
        let mut state = lock(&self.shared.state);
        if state.waiting {
            return Err(Error::Busy);
        }
        state.waiting = true;
        Ok(WaitOp {
            shared: self.shared.clone(),
            armed: false,
        })
    }

    /// Waits for the program's end: [`Child::begin_wait`] and [`WaitOp::run`] in one
    /// (a wait already pending: a failure with `Error::Busy`'s code).
    pub async fn wait(&self) -> Result<Exit, Failure> {
        let wait = self
            .begin_wait()
            .map_err(|error| Failure::new(error.code(), "another wait is pending"))?;
        wait.run().await
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // The watching task sees the exit this causes and reaps the program.
        self.shared.kill();
    }
}

/// A claimed wait (see [`Child::begin_wait`]).
pub struct WaitOp {
    shared: Arc<Shared>,
    /// Dropping it kills the group (set by `run`).
    armed: bool,
}

impl std::fmt::Debug for WaitOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitOp")
            .field("pid", &self.shared.pid)
            .finish()
    }
}

impl WaitOp {
    /// The wait: resolves with how the program ended once it was reaped, or fails
    /// with `Error::TimedOut` when its timeout ran out.
    ///
    /// From this call on (not only from the first poll), dropping the returned future
    /// before it resolves kills the group with SIGKILL and reaps the program before
    /// the drop returns.
    pub fn run(mut self) -> impl Future<Output = Result<Exit, Failure>> + Send + 'static {
        self.armed = true;
        async move {
            loop {
                let notified = self.shared.ended.notified();
                tokio::pin!(notified);
                // Registered before the look, so an end between the two still wakes.
                notified.as_mut().enable();
                let end = lock(&self.shared.state).end.clone();
                if let Some(end) = end {
                    return end;
                }
                notified.await;
            }
        }
    }
}

impl Drop for WaitOp {
    fn drop(&mut self) {
        if self.armed {
            // Nothing when the program has ended; else the cancelled wait ends it.
            self.shared.end_now();
        }
        lock(&self.shared.state).waiting = false;
    }
}

/// When the timeout runs out.
struct Deadline {
    /// The timeout, for the message.
    after: Duration,
    /// The start plus `after`.
    at: tokio::time::Instant,
}

/// The watching task: feeds input data, keeps the time, and ends when the program
/// has exited; `guard` then reaps it (or kills and reaps it, if the runtime drops the
/// task first).
async fn watch(
    guard: EndOnDrop,
    mut exit: ExitWatch,
    deadline: Option<Deadline>,
    mut feeder: Option<Feeder>,
) {
    let mut deadline =
        deadline.map(|Deadline { after, at }| (after, Box::pin(tokio::time::sleep_until(at))));
    std::future::poll_fn(|cx| {
        if let Some(feeder) = feeder.as_mut() {
            feeder.pump(cx);
        }
        // The exit first: a program that ended is not timed out, even when the loop
        // comes here only after its deadline.
        if exit.poll_exited(cx).is_ready() {
            return Poll::Ready(());
        }
        let expired = match deadline.as_mut() {
            Some((after, sleep)) => sleep.as_mut().poll(cx).is_ready().then_some(*after),
            None => None,
        };
        if let Some(after) = expired {
            deadline = None;
            // The exit watch may not know yet (a pidfd's readiness comes with the
            // reactor's next turn): `time_out` asks the kernel before it kills.
            if !guard.0.time_out(after) {
                return Poll::Ready(());
            }
        }
        // Killed or not, the exit watch is registered: it wakes this task.
        Poll::Pending
    })
    .await;
    drop(feeder);
    drop(guard);
}

/// The program's standard input, written through this process's side of a socket
/// pair with MSG_NOSIGNAL: a program that stopped reading makes a write fail with
/// EPIPE, never raises SIGPIPE here.
struct Input(UnixStream);

impl Input {
    fn new(socket: std::os::unix::net::UnixStream) -> Result<Input, Failure> {
        let watch =
            |e: io::Error| Failure::io(e.raw_os_error().unwrap_or(libc::EIO), "watch a socket");
        socket.set_nonblocking(true).map_err(watch)?;
        // Nothing reads this side: what the program writes to its standard input is
        // refused (EPIPE) rather than piled up unread.
        let _ = socket.shutdown(std::net::Shutdown::Read);
        UnixStream::from_std(socket).map(Input).map_err(watch)
    }
}

impl AsyncWrite for Input {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let socket = &self.get_mut().0;
        loop {
            ready!(socket.poll_write_ready(cx))?;
            // try_io clears the readiness on WouldBlock: the next poll waits for room.
            match socket.try_io(Interest::WRITABLE, || {
                child::send_no_sigpipe(socket.as_fd(), buf)
            }) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

// Processes, pidfds and pipes: Miri cannot run them.
#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    /// A watchdog far above anything here: hitting it means a hang.
    const WATCHDOG: Duration = Duration::from_secs(60);

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn sh(script: &str) -> ProcessOptions {
        ProcessOptions {
            args: vec!["-c".into(), script.into()],
            ..ProcessOptions::new("sh")
        }
    }

    const OUT: Pipes = Pipes {
        stdin: false,
        stdout: true,
        stderr: false,
    };

    async fn guarded<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(WATCHDOG, f)
            .await
            .expect("watchdog: hung")
    }

    async fn read(stream: &Stream) -> Vec<u8> {
        guarded(stream.begin_read(0).unwrap().run(|| true))
            .await
            .unwrap()
    }

    /// Everything up to the end of the stream.
    async fn read_to_end(stream: &Stream) -> Vec<u8> {
        let mut all = Vec::new();
        loop {
            let chunk = read(stream).await;
            if chunk.is_empty() {
                return all;
            }
            all.extend(chunk);
        }
    }

    /// Reads until `line` (with its newline) has come, whole.
    async fn read_line(stream: &Stream, buffered: &mut Vec<u8>) -> Vec<u8> {
        loop {
            if let Some(at) = buffered.iter().position(|&b| b == b'\n') {
                return buffered.drain(..=at).collect();
            }
            let chunk = read(stream).await;
            assert!(!chunk.is_empty(), "end of stream before a line");
            buffered.extend(chunk);
        }
    }

    /// The processes of group `pgid` that are not zombies.
    fn live_members(pgid: i32) -> Vec<i32> {
        let mut live = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some(after) = stat.rfind(')').map(|at| &stat[at + 2..]) else {
                continue;
            };
            let fields: Vec<&str> = after.split(' ').collect();
            if fields[2].parse::<i32>() == Ok(pgid) && !matches!(fields[0], "Z" | "X") {
                live.push(pid);
            }
        }
        live
    }

    fn assert_group_ends(pgid: i32) {
        let deadline = std::time::Instant::now() + WATCHDOG;
        while !live_members(pgid).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "group {pgid} lives on"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The program is not our child any more: reaped, not even a zombie.
    fn is_reaped(pid: i32) -> bool {
        child::has_exited(pid).is_none()
    }

    #[test]
    fn output_is_read_while_the_program_runs() {
        runtime().block_on(async {
            let pipes = Pipes { stdin: true, ..OUT };
            let child =
                Child::spawn(sh("echo first; read reply; echo \"got $reply\""), pipes).unwrap();
            let (stdin, stdout) = (child.take_stdin().unwrap(), child.take_stdout().unwrap());
            let mut buffered = Vec::new();
            // The program waits for its input: this line came while it runs.
            assert_eq!(read_line(&stdout, &mut buffered).await, b"first\n");
            assert!(!is_reaped(child.pid()));
            assert_eq!(child::has_exited(child.pid()), Some(false));
            guarded(stdin.begin_write(b"yes\n".to_vec()).unwrap().run())
                .await
                .unwrap();
            assert_eq!(read_line(&stdout, &mut buffered).await, b"got yes\n");
            assert_eq!(read_to_end(&stdout).await, b"");
            assert_eq!(guarded(child.wait()).await.unwrap(), Exit::Code(0));
            assert!(is_reaped(child.pid()));
        });
    }

    #[test]
    fn a_large_input_comes_back_through_cat_with_its_end_of_file() {
        let input: Vec<u8> = (0..(3u32 << 20) + 5).map(|i| (i % 253) as u8).collect();
        for use_pidfd in [true, false] {
            let back = runtime().block_on(async {
                let pipes = Pipes { stdin: true, ..OUT };
                let child =
                    Child::spawn_watching(ProcessOptions::new("cat"), pipes, use_pidfd).unwrap();
                let (stdin, stdout) = (child.take_stdin().unwrap(), child.take_stdout().unwrap());
                // Written beside the reading: cat's output would fill its pipe and
                // stop it reading long before the input is all in.
                let data = input.clone();
                let writing = tokio::spawn(async move {
                    stdin.begin_write(data).unwrap().run().await.unwrap();
                    // cat ends only on its end of file.
                    stdin.begin_shutdown().unwrap().run().await.unwrap();
                });
                let back = read_to_end(&stdout).await;
                guarded(writing).await.unwrap();
                assert_eq!(guarded(child.wait()).await.unwrap(), Exit::Code(0));
                back
            });
            assert!(back == input, "{} bytes back", back.len());
        }
    }

    #[test]
    fn stderr_separate_or_merged() {
        runtime().block_on(async {
            let script = "echo one; echo two >&2; echo three";
            let pipes = Pipes {
                stderr: true,
                ..OUT
            };
            let child = Child::spawn(sh(script), pipes).unwrap();
            let (out, err) = (child.take_stdout().unwrap(), child.take_stderr().unwrap());
            assert_eq!(read_to_end(&out).await, b"one\nthree\n");
            assert_eq!(read_to_end(&err).await, b"two\n");
            assert_eq!(guarded(child.wait()).await.unwrap(), Exit::Code(0));

            let merged = ProcessOptions {
                merge_stderr: true,
                ..sh(script)
            };
            let child = Child::spawn(merged, OUT).unwrap();
            assert!(child.take_stderr().is_none());
            let out = child.take_stdout().unwrap();
            assert_eq!(read_to_end(&out).await, b"one\ntwo\nthree\n");
            assert_eq!(guarded(child.wait()).await.unwrap(), Exit::Code(0));
        });
    }

    #[test]
    fn streams_are_taken_once_and_unpiped_ones_are_dev_null() {
        runtime().block_on(async {
            // Not piped: reads /dev/null, writes to it.
            let child =
                Child::spawn(sh("cat; echo lost; echo lost >&2"), Pipes::default()).unwrap();
            assert!(child.take_stdin().is_none());
            assert!(child.take_stdout().is_none());
            assert!(child.take_stderr().is_none());
            assert_eq!(guarded(child.wait()).await.unwrap(), Exit::Code(0));

            let child = Child::spawn(sh("exit 0"), OUT).unwrap();
            assert!(child.take_stdout().is_some());
            assert!(child.take_stdout().is_none());
            assert_eq!(guarded(child.wait()).await.unwrap(), Exit::Code(0));
        });
    }

    #[test]
    fn input_data_without_a_pipe_is_fed_then_closed() {
        runtime().block_on(async {
            let options = ProcessOptions {
                stdin: b"fed\n".to_vec(),
                ..ProcessOptions::new("cat")
            };
            let child = Child::spawn(options, OUT).unwrap();
            assert!(child.take_stdin().is_none());
            let out = child.take_stdout().unwrap();
            assert_eq!(read_to_end(&out).await, b"fed\n");
            assert_eq!(guarded(child.wait()).await.unwrap(), Exit::Code(0));
        });
    }

    #[test]
    fn exit_codes_and_signals_and_waits_after_the_end() {
        for use_pidfd in [true, false] {
            runtime().block_on(async {
                let child =
                    Child::spawn_watching(sh("exit 5"), Pipes::default(), use_pidfd).unwrap();
                assert_eq!(guarded(child.wait()).await.unwrap(), Exit::Code(5));
                // Every wait after the end answers the same.
                assert_eq!(guarded(child.wait()).await.unwrap(), Exit::Code(5));
                let child = Child::spawn_watching(sh("kill -TERM $$"), Pipes::default(), use_pidfd)
                    .unwrap();
                assert_eq!(
                    guarded(child.wait()).await.unwrap(),
                    Exit::Signal(libc::SIGTERM)
                );
            });
        }
    }

    #[test]
    fn one_wait_at_a_time() {
        runtime().block_on(async {
            let child = Child::spawn(
                ProcessOptions::new("cat"),
                Pipes {
                    stdin: true,
                    ..Pipes::default()
                },
            )
            .unwrap();
            let first = child.begin_wait().unwrap();
            assert_eq!(child.begin_wait().err(), Some(Error::Busy));
            // Dropped unrun: only the claim is given back, the program runs on.
            drop(first);
            assert_eq!(child::has_exited(child.pid()), Some(false));
            let wait = child.begin_wait().unwrap().run();
            drop(child.take_stdin());
            assert_eq!(guarded(wait).await.unwrap(), Exit::Code(0));
        });
    }

    #[test]
    fn kill_ends_the_group_and_the_wait_says_so() {
        runtime().block_on(async {
            let child = Child::spawn(sh("sleep 100 & echo started; sleep 100"), OUT).unwrap();
            let out = child.take_stdout().unwrap();
            assert_eq!(read(&out).await, b"started\n");
            child.kill();
            assert_eq!(
                guarded(child.wait()).await.unwrap(),
                Exit::Signal(libc::SIGKILL)
            );
            assert_group_ends(child.pid());
            // Nothing of the group holds the pipe: it ends.
            assert_eq!(read_to_end(&out).await, b"");
            child.kill();
        });
    }

    #[test]
    fn what_the_program_leaves_running_is_killed_at_its_exit() {
        runtime().block_on(async {
            let child = Child::spawn(sh("sleep 100 & echo done"), OUT).unwrap();
            let out = child.take_stdout().unwrap();
            // The background sleep holds the pipe open until it is killed.
            assert_eq!(read_to_end(&out).await, b"done\n");
            assert_eq!(guarded(child.wait()).await.unwrap(), Exit::Code(0));
            assert_group_ends(child.pid());
        });
    }

    #[test]
    fn a_dropped_wait_kills_and_reaps_the_whole_group_before_it_returns() {
        runtime().block_on(async {
            let child =
                Child::spawn(sh("sleep 100 & sleep 100 & echo started; sleep 100"), OUT).unwrap();
            let out = child.take_stdout().unwrap();
            assert_eq!(read(&out).await, b"started\n");
            let pgid = child.pid();
            assert!(live_members(pgid).len() >= 3);
            let mut wait = Box::pin(child.begin_wait().unwrap().run());
            let polled = tokio::time::timeout(Duration::from_millis(1), &mut wait).await;
            assert!(polled.is_err(), "ended early: {polled:?}");
            drop(wait);
            assert!(is_reaped(pgid), "not reaped in the drop");
            assert_group_ends(pgid);
            // Later waits know how it ended.
            assert_eq!(
                guarded(child.wait()).await.unwrap(),
                Exit::Signal(libc::SIGKILL)
            );
        });
    }

    #[test]
    fn a_wait_dropped_before_its_first_poll_still_kills() {
        runtime().block_on(async {
            let child = Child::spawn(sh("sleep 100"), Pipes::default()).unwrap();
            drop(child.begin_wait().unwrap().run());
            assert!(is_reaped(child.pid()));
        });
    }

    #[test]
    fn dropping_the_child_kills_the_group_and_the_task_reaps_it() {
        let rt = runtime();
        let pgid = rt.block_on(async {
            let child = Child::spawn(sh("sleep 100 & echo started; sleep 100"), OUT).unwrap();
            let out = child.take_stdout().unwrap();
            assert_eq!(read(&out).await, b"started\n");
            let pgid = child.pid();
            drop(child);
            // The stream outlives the child and ends with the group.
            assert_eq!(read_to_end(&out).await, b"");
            let deadline = std::time::Instant::now() + WATCHDOG;
            while !is_reaped(pgid) {
                assert!(std::time::Instant::now() < deadline, "not reaped");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            pgid
        });
        assert_group_ends(pgid);
    }

    #[test]
    fn the_runtime_going_away_kills_and_reaps_what_runs() {
        let rt = runtime();
        let child = rt
            .block_on(async { Child::spawn(sh("sleep 100 & sleep 100"), Pipes::default()) })
            .unwrap();
        let pgid = child.pid();
        drop(rt);
        assert!(is_reaped(pgid));
        assert_group_ends(pgid);
        drop(child);
    }

    #[test]
    fn the_timeout_kills_the_group_and_fails_the_wait() {
        for use_pidfd in [true, false] {
            runtime().block_on(async {
                let options = ProcessOptions {
                    timeout: Some(Duration::from_millis(50)),
                    ..sh("sleep 100 & sleep 100")
                };
                let child = Child::spawn_watching(options, Pipes::default(), use_pidfd).unwrap();
                // Nobody waits meanwhile: the watching task keeps the time.
                let deadline = std::time::Instant::now() + WATCHDOG;
                while !is_reaped(child.pid()) {
                    assert!(std::time::Instant::now() < deadline, "not ended");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                assert_group_ends(child.pid());
                let failure = guarded(child.wait()).await.unwrap_err();
                assert_eq!(failure.code(), Error::TimedOut.code());
                assert_eq!(
                    failure.message().to_str().unwrap(),
                    "process sh timed out after 50 ms"
                );
            });
        }
    }

    #[test]
    fn the_timeout_counts_from_the_spawn_not_from_the_watching_tasks_first_poll() {
        for use_pidfd in [true, false] {
            runtime().block_on(async {
                let options = ProcessOptions {
                    timeout: Some(Duration::from_millis(3000)),
                    ..sh("sleep 100")
                };
                let spawned = std::time::Instant::now();
                let child = Child::spawn_watching(options, Pipes::default(), use_pidfd).unwrap();
                // The loop is busy until the deadline: the watching task runs only then.
                std::thread::sleep(Duration::from_millis(3000));
                let failure = guarded(child.wait()).await.unwrap_err();
                assert_eq!(failure.code(), Error::TimedOut.code());
                // Counted from the task's first poll, the end would come at 6 s; from the
                // spawn, as soon as the loop is free again (the margin is 1.5 s).
                let took = spawned.elapsed();
                assert!(
                    took < Duration::from_millis(4500),
                    "ended {took:?} after the spawn"
                );
            });
        }
    }

    #[test]
    fn a_program_that_exited_in_time_keeps_its_exit_when_the_loop_comes_late() {
        for use_pidfd in [true, false] {
            runtime().block_on(async {
                let options = ProcessOptions {
                    timeout: Some(Duration::from_millis(1500)),
                    ..sh("exit 3")
                };
                let child = Child::spawn_watching(options, Pipes::default(), use_pidfd).unwrap();
                // The watching task runs once, then the loop is busy well past both the
                // exit and the deadline: both are due when the task runs again. (Wide
                // margins: the program must exit in time even on a loaded machine.)
                tokio::task::yield_now().await;
                std::thread::sleep(Duration::from_millis(3000));
                assert_eq!(guarded(child.wait()).await.unwrap(), Exit::Code(3));
            });
        }
    }

    #[test]
    fn a_program_that_cannot_start_fails_the_spawn() {
        runtime().block_on(async {
            let failure = Child::spawn(ProcessOptions::new("./no-such-program"), OUT).unwrap_err();
            assert_eq!(failure.code(), Error::Io.code());
            assert_eq!(failure.os_error(), libc::ENOENT);
            assert!(
                failure
                    .message()
                    .to_str()
                    .unwrap()
                    .starts_with("start ./no-such-program: "),
                "{failure:?}"
            );
        });
    }

    #[test]
    fn contradictions_and_no_runtime_are_invalid() {
        let invalid = |options: ProcessOptions, pipes: Pipes| {
            let failure = Child::spawn(options, pipes).unwrap_err();
            assert_eq!(failure.code(), Error::Invalid.code(), "{failure:?}");
        };
        // Outside a runtime, nothing starts.
        invalid(ProcessOptions::new("true"), Pipes::default());
        let rt = runtime();
        let _inside = rt.enter();
        invalid(
            ProcessOptions {
                stdin: b"data".to_vec(),
                ..ProcessOptions::new("cat")
            },
            Pipes {
                stdin: true,
                ..Pipes::default()
            },
        );
        invalid(
            ProcessOptions {
                merge_stderr: true,
                ..ProcessOptions::new("true")
            },
            Pipes {
                stdout: true,
                stderr: true,
                ..Pipes::default()
            },
        );
        invalid(ProcessOptions::new(""), Pipes::default());
    }

    #[test]
    fn writing_to_a_program_that_stopped_reading_is_epipe() {
        runtime().block_on(async {
            let pipes = Pipes {
                stdin: true,
                ..Pipes::default()
            };
            let child = Child::spawn(sh("exit 0"), pipes).unwrap();
            let stdin = child.take_stdin().unwrap();
            assert_eq!(guarded(child.wait()).await.unwrap(), Exit::Code(0));
            let failure = guarded(stdin.begin_write(vec![0; 1 << 20]).unwrap().run())
                .await
                .unwrap_err();
            assert_eq!(failure.code(), Error::Io.code());
            assert_eq!(failure.os_error(), libc::EPIPE);
        });
    }
}
