//! Fork detection.
//!
//! A child made by `fork()` holds copies of every bridge of its parent but none of
//! their threads, and any lock such a thread held stays locked forever. The child
//! handler below bumps a generation number; each bridge remembers the generation it
//! was started in, and every entry point compares the two before it touches a lock.
//!
//! These are std atomics even under loom: a static cannot hold loom's, and the
//! number is only ever compared, never used to order other memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static GENERATION: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();

extern "C" fn in_child_after_fork() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Installs the child handler, once per process. Called before the first bridge starts.
pub(crate) fn install_handler() {
    INSTALL.call_once(|| {
        // SAFETY: registers a handler that only increments an atomic, which is
        // async-signal-safe as `fork` requires; the handler is a plain `extern "C"` fn
        // that lives for the whole program.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(in_child_after_fork)) };
        // Without the handler a fork child could hang on a lock of its parent's; there
        // is nothing better to do than say so.
        if rc != 0 {
            eprintln!("asyncbridge: pthread_atfork failed ({rc}); fork detection is off");
        }
    });
}

/// Installs the handler when the library is loaded, before any thread of the program
/// can call into it: otherwise a fork while one thread was inside the first
/// `install_handler` would leave the child waiting for ever on the `Once` that thread
/// was running (and a fork before it ran would go unnoticed).
#[cfg(all(not(asyncbridge_loom), target_os = "linux"))]
#[used]
#[link_section = ".init_array"]
static INSTALL_AT_LOAD: extern "C" fn() = {
    extern "C" fn install_at_load() {
        install_handler();
    }
    install_at_load
};

/// The current fork generation of this process.
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

#[cfg(all(test, not(asyncbridge_loom)))]
mod tests {
    use super::*;

    #[test]
    fn child_sees_a_new_generation() {
        install_handler();
        let before = generation();
        // SAFETY: the child only reads an atomic and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = if generation() == before + 1 { 0 } else { 1 };
            // SAFETY: _exit is async-signal-safe and skips the parent's atexit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just made.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(generation(), before, "the parent keeps its generation");
    }
}
