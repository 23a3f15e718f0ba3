//! The operating system's pieces the core stands on, and with them all the unsafe code
//! outside the C boundary: the wakeup descriptor of completion queues, fork detection,
//! the roles of the library's threads, what happens when a thread ends under work, and
//! child processes watched without a SIGCHLD handler.

#[cfg(not(asyncbridge_loom))]
pub(crate) mod child;
pub(crate) mod fork;
#[cfg(not(asyncbridge_loom))]
pub(crate) mod thread_exit;
pub(crate) mod thread_role;
pub(crate) mod wakeup;
