//! A file descriptor that is readable exactly while a completion queue is non-empty:
//! an eventfd on Linux, a pipe elsewhere. The queue raises it on its empty→non-empty
//! edge (under its lock, or just after for a finishing future's delivery, which cannot
//! run before) and clears it under its lock once it has found itself empty, so it is
//! written once per edge, not once per callback.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The readable-while-non-empty descriptor of a completion queue.
pub(crate) struct Wakeup {
    /// The descriptor applications watch.
    read: OwnedFd,
    /// Where it is raised: the same eventfd, or the pipe's write end.
    #[cfg(not(target_os = "linux"))]
    write: OwnedFd,
}

impl Wakeup {
    #[cfg(target_os = "linux")]
    pub(crate) fn new() -> io::Result<Wakeup> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        Ok(Wakeup {
            read: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn new() -> io::Result<Wakeup> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe writes.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both are fresh descriptors owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        for fd in [&read, &write] {
            // SAFETY: fcntl on a descriptor we own, no pointers.
            unsafe {
                let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
                libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        Ok(Wakeup { read, write })
    }

    /// The descriptor to watch for readability.
    pub(crate) fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Makes the descriptor readable. Called once per empty→non-empty edge.
    pub(crate) fn raise(&self) {
        let one: u64 = 1;
        #[cfg(target_os = "linux")]
        let fd = self.read.as_raw_fd();
        #[cfg(not(target_os = "linux"))]
        let fd = self.write.as_raw_fd();
        // SAFETY: writes the 8 bytes of `one` (an eventfd needs exactly 8; a pipe takes
        // them as a token). Failure (counter full, pipe full) leaves it readable anyway.
        let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }

    /// Makes the descriptor unreadable again. Called when the queue empties.
    pub(crate) fn clear(&self) {
        let mut buf = [0u8; 64];
        // SAFETY: reads into a buffer of the length given; the descriptor is
        // non-blocking, so an empty one returns at once. An eventfd is reset by one
        // read; a pipe holds at most one token per edge, drained here.
        unsafe {
            while libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) > 0 {
                if cfg!(target_os = "linux") {
                    break;
                }
            }
        }
    }
}

#[cfg(all(test, not(asyncbridge_loom)))]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one valid pollfd without waiting.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n == 1 && pfd.revents & libc::POLLIN != 0
    }

    #[test]
    fn readable_between_raise_and_clear() {
        let w = Wakeup::new().unwrap();
        assert!(!readable(w.fd()));
        w.raise();
        assert!(readable(w.fd()));
        w.clear();
        assert!(!readable(w.fd()));
        w.clear();
        assert!(!readable(w.fd()));
    }
}
