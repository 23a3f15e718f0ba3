//! Child processes watched without a SIGCHLD handler: a pidfd (Linux 5.3+) tells when
//! the child has exited, `waitid(WNOWAIT)` looks at an exit without reaping it,
//! `waitpid` on the child's own pid reaps it, `killpg` ends its process group.
//!
//! Nothing here waits for "any child" or touches signal dispositions, so an
//! application's own SIGCHLD handler and `waitpid` calls keep working; if such a
//! handler reaps one of these children first, the functions here say the child is
//! [`Reaped::Gone`] instead of reaping something else.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// What `waitpid` found for a child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reaped {
    /// Still running (only from a non-blocking look).
    Running,
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it.
    Signalled(i32),
    /// Someone else reaped it already (ECHILD): the application's own SIGCHLD handler,
    /// or SIGCHLD set to SIG_IGN, which makes the kernel reap children itself.
    Gone,
}

/// A descriptor that becomes readable once the process `pid` (our child) has exited.
/// Fails with ENOSYS before Linux 5.3 and on other systems; callers fall back to
/// polling [`has_exited`].
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: pidfd_open takes a pid and flags, no pointers.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // The descriptor is close-on-exec (pidfd_open always sets it).
        // SAFETY: `fd` is a fresh descriptor owned by nobody else; it fits an int.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
}

/// Whether our child `pid` has exited, looked at without reaping it (it stays a zombie,
/// so its pid, and the process group id it leads, cannot be reused meanwhile).
/// `None`: it is not ours to wait for any more (reaped by someone else).
pub(crate) fn has_exited(pid: i32) -> Option<bool> {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value of this plain C struct.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a writable siginfo_t; no other pointers.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            // With WNOHANG, si_pid stays 0 while the child runs.
            // SAFETY: waitid filled `info` (or left it zeroed); si_pid reads its pid field.
            return Some(unsafe { info.si_pid() } != 0);
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            _ => return None,
        }
    }
}

/// Reaps our child `pid`: waits for it if `block`, else only looks.
///
/// Blocking is for a child that was just sent SIGKILL, which it cannot catch or ignore:
/// the wait is as long as the kernel takes to tear the process down.
pub(crate) fn reap(pid: i32, block: bool) -> Reaped {
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        let mut status = 0;
        // SAFETY: `status` is a writable int; no other pointers.
        let rc = unsafe { libc::waitpid(pid, &mut status, flags) };
        if rc == 0 {
            return Reaped::Running;
        }
        if rc < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                _ => return Reaped::Gone,
            }
        }
        if libc::WIFEXITED(status) {
            return Reaped::Exited(libc::WEXITSTATUS(status));
        }
        if libc::WIFSIGNALED(status) {
            return Reaped::Signalled(libc::WTERMSIG(status));
        }
        // Stopped or continued: reported only with WUNTRACED / WCONTINUED, not asked.
        return Reaped::Running;
    }
}

/// Sends SIGKILL to every process of the group `pgid`. A group with no process left is
/// not an error.
///
/// Only call it while the group's leader is our unreaped child (running or a zombie):
/// then the id cannot belong to another group.
pub(crate) fn kill_group(pgid: i32) {
    // SAFETY: killpg takes two integers, no pointers.
    unsafe { libc::killpg(pgid, libc::SIGKILL) };
    // The leader too, by its pid: it may have moved to another group of its session
    // (setpgid), out of reach of the killpg, and a blocking reap would then wait for
    // it to end by itself. Still our unreaped child, the pid names no one else.
    // SAFETY: kill takes two integers, no pointers.
    unsafe { libc::kill(pgid, libc::SIGKILL) };
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    let rc = unsafe { libc::pipe(fds.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors owned by nobody else.
    let ends = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    for fd in [&ends.0, &ends.1] {
        // SAFETY: fcntl on a descriptor we own, no pointers. (Without pipe2, a fork on
        // another thread between pipe and here can still inherit them.)
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(ends)
}

/// Writes what a stream socket takes of `data` without blocking and without raising
/// SIGPIPE when the peer is gone (EPIPE instead: a write to a pipe would kill a C
/// program that keeps SIGPIPE's default action).
pub(crate) fn send_no_sigpipe(socket: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let flags = libc::MSG_DONTWAIT;
    // SAFETY: `data` is readable for its length; `socket` is a live descriptor.
    let sent = unsafe { libc::send(socket.as_raw_fd(), data.as_ptr().cast(), data.len(), flags) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// Reads what a non-blocking descriptor holds now (WouldBlock when nothing), whatever
/// a reactor last saw of it: tokio's `try_read` answers WouldBlock without reading
/// until its reactor has seen the descriptor readable.
pub(crate) fn read_now(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length; `fd` is a live descriptor.
    let read = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if read < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(read as usize)
}

/// Sets the calling thread's `errno`, for a C function that reports an OS error the
/// POSIX way (its return value says that it failed, errno says why).
pub(crate) fn set_errno(errno: i32) {
    #[cfg(any(target_os = "linux", target_os = "emscripten", target_os = "redox"))]
    // SAFETY: __errno_location returns the calling thread's errno, always writable.
    unsafe {
        *libc::__errno_location() = errno
    };
    #[cfg(target_os = "android")]
    // SAFETY: __errno returns the calling thread's errno, always writable.
    unsafe {
        *libc::__errno() = errno
    };
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    // SAFETY: __error returns the calling thread's errno, always writable.
    unsafe {
        *libc::__error() = errno
    };
    #[cfg(not(any(
        target_os = "linux",
        target_os = "emscripten",
        target_os = "redox",
        target_os = "android",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd"
    )))]
    let _ = errno;
}

// fork, exec and pidfds: Miri cannot run them.
#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    #[test]
    fn set_errno_is_what_the_thread_reads_next() {
        set_errno(libc::ENOENT);
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOENT)
        );
        set_errno(libc::EACCES);
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::EACCES)
        );
    }

    #[test]
    #[allow(clippy::zombie_processes)] // reaped by the functions under test
    fn exit_seen_without_reaping_then_reaped_once() {
        let child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let pid = child.id() as i32;
        while has_exited(pid) != Some(true) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // Still there to look at again, and to reap.
        assert_eq!(has_exited(pid), Some(true));
        assert_eq!(reap(pid, false), Reaped::Exited(3));
        assert_eq!(reap(pid, false), Reaped::Gone);
        assert_eq!(has_exited(pid), None);
    }

    #[test]
    #[allow(clippy::zombie_processes)] // reaped by the functions under test
    fn a_killed_group_is_reaped_blocking_with_its_signal() {
        let child = Command::new("sleep")
            .arg("100")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let pidfd = pidfd_open(pid);
        assert_eq!(has_exited(pid), Some(false));
        assert_eq!(reap(pid, false), Reaped::Running);
        kill_group(pid);
        assert_eq!(reap(pid, true), Reaped::Signalled(libc::SIGKILL));
        drop(pidfd);
    }

    /// SIGPIPE blocked on this thread stays pending where it was raised (Linux keeps
    /// a blocked signal pending even while ignored, as Rust programs ignore SIGPIPE):
    /// the send must leave none.
    #[test]
    fn sending_to_a_closed_peer_is_epipe_not_sigpipe() {
        use std::os::fd::AsFd;
        // SAFETY: plain C signal-set calls on local sets; this thread's mask is put
        // back before the test ends.
        unsafe {
            let mut block: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut block);
            libc::sigaddset(&mut block, libc::SIGPIPE);
            libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old);
            let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
            drop(theirs);
            let fd = OwnedFd::from(mine);
            let error = send_no_sigpipe(fd.as_fd(), b"x").unwrap_err();
            let mut pending: libc::sigset_t = std::mem::zeroed();
            libc::sigpending(&mut pending);
            let raised = libc::sigismember(&pending, libc::SIGPIPE) == 1;
            if raised {
                let zero = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                libc::sigtimedwait(&block, std::ptr::null_mut(), &zero);
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            assert_eq!(error.raw_os_error(), Some(libc::EPIPE));
            assert!(!raised, "SIGPIPE was raised");
        }
    }
}
