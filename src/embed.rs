//! The Rust embedding API: an async Rust block becomes a future of a bridge.
//!
//! This is how asyncbridge's own I/O functions (`bridge_http_send`,
//! `bridge_process_run`, `bridge_file_read`, ...) are written, and how another Rust
//! crate exports its async functions to C: [`spawn`] runs the block on the bridge's
//! loop and hands back a [`Future`] at once. For C, `ffi::embed` (feature `c-api`)
//! turns that into a `future_t *` with a typed value; see there for a complete
//! exported function.
//!
//! What the block gets, without writing any of it:
//! - a panic in the block fails the future with `Error::Panic`'s code and never
//!   unwinds further;
//! - cancellation (`future_cancel`, a timeout, shutdown past its grace) drops the
//!   block at its next await, and the future ends `Cancelled` only after the drop, so
//!   everything the block owned (sockets, child processes, temporary files with a
//!   guard that removes them) is gone by then;
//! - [`Task::shield`] keeps the block from being dropped while a section must run to
//!   its end (a blocking read that checks [`Task::is_cancelled`] every MiB); whatever
//!   the block returns after a request, the future ends as requested;
//! - shutdown waits for the block within its grace, then cancels it like above; the
//!   future is resolved either way;
//! - progress (`future_progress`, progress callbacks and queues) through
//!   [`Task::set_progress`].
//!
//! ```
//! use asyncbridge::{embed, Boxed, Bridge, Config, Status};
//! use std::time::Duration;
//!
//! let bridge = Bridge::start(Config::default()).unwrap();
//! let future = embed::spawn(&bridge, |task: embed::Task<Boxed<String>>| async move {
//!     for step in 1..=3 {
//!         tokio::time::sleep(Duration::from_millis(1)).await;
//!         task.set_progress(step, 3);
//!     }
//!     Ok(Some("three steps".to_owned()))
//! })
//! .unwrap();
//! assert_eq!(future.wait(Some(Duration::from_secs(10))), Ok(Status::Ok));
//! assert_eq!(future.progress(), Ok((3, 3)));
//! assert_eq!(future.take_value().as_deref(), Some("three steps"));
//! ```

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use crate::future::{Failure, Future, Kind};
use crate::runtime::Bridge;
use crate::status::Error;
use crate::sync::Arc;

/// What an embedded block can do while it runs: report progress, see a cancellation
/// request, shield a section from being dropped. Cheap to clone.
pub struct Task<K: Kind> {
    future: Future<K>,
    shield: Arc<AtomicUsize>,
}

impl<K: Kind> Clone for Task<K> {
    fn clone(&self) -> Task<K> {
        Task {
            future: self.future.internal(),
            shield: self.shield.clone(),
        }
    }
}

impl<K: Kind> std::fmt::Debug for Task<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// Runs the async block that `make` builds on `bridge`'s loop as the work of a new
/// future, returned at once.
///
/// Refused like a submission: `Error::NotRunning` once the bridge is shut down (or in
/// a fork child), `Error::Busy` at `max_pending`; `make` is not called then. `make`
/// runs on the calling thread; the block on the loop, where it must not block (use
/// [`Task::shield`] around `tokio::task::spawn_blocking` for blocking parts).
///
/// The block's `Ok(Some(value))` becomes the future's value, `Ok(None)` ends `Ok`
/// without one, `Err(failure)` fails it.
///
/// ```
/// use asyncbridge::{embed, Boxed, Bridge, Config, Status};
/// use std::time::Duration;
///
/// let bridge = Bridge::start(Config::default()).unwrap();
/// // Cancellation drops the block at its next await; the future ends Cancelled after.
/// let never = embed::spawn(&bridge, |_task: embed::Task<Boxed<()>>| async move {
///     std::future::pending::<()>().await;
///     Ok(None)
/// })
/// .unwrap();
/// never.cancel().unwrap();
/// assert_eq!(never.wait(Some(Duration::from_secs(10))), Ok(Status::Cancelled));
/// ```
pub fn spawn<K, M, F>(bridge: &Bridge, make: M) -> Result<Future<K>, Error>
where
    K: Kind,
    M: FnOnce(Task<K>) -> F,
    F: std::future::Future<Output = Result<Option<K::Value>, Failure>> + Send + 'static,
{
    bridge.spawn_with(|future| {
        let shield = Arc::new(AtomicUsize::new(0));
        let task = Task {
            future,
            shield: shield.clone(),
        };
        (make(task), Some(shield))
    })
}

impl<K: Kind> Task<K> {
    /// Reports progress, read by `future_progress` and delivered to progress
    /// callbacks (the latest values win when deliveries are slower).
    pub fn set_progress(&self, done: u64, total: u64) {
        self.future.set_progress(done, total);
    }

    /// Whether cancellation was requested (by a caller, a timeout or shutdown), or the
    /// future has ended: the block should stop. Only a shielded section needs to ask;
    /// elsewhere the block is dropped at its next await.
    pub fn is_cancelled(&self) -> bool {
        self.future.is_cancel_requested() || self.future.peek().is_final()
    }

    /// Marks the block's point of no return, for work whose last step cannot be
    /// undone (renaming a file into place): if no cancellation was requested yet,
    /// none will count from now on and the future ends as the block says; returns
    /// true. If one was, returns false: the block should undo what it did and stop.
    pub fn commit(&self) -> bool {
        self.future.commit()
    }

    /// A check of [`Task::is_cancelled`] for another thread (the blocking part of a
    /// shielded section).
    pub fn cancel_check(&self) -> CancelCheck {
        CancelCheck(Box::new(self.clone()))
    }

    /// Resolves once cancellation is requested: for a shielded section that waits
    /// for something else at the same time (`tokio::select!`).
    pub fn cancelled(&self) -> Cancelled<'_, K> {
        Cancelled(self)
    }

    /// Runs `section` to its end even if cancellation is requested meanwhile: the
    /// block is not dropped while it is pending. The section sees the request through
    /// [`Task::is_cancelled`] or [`Task::cancelled`] and should end soon after it; the
    /// future then ends as requested whatever the block returns.
    ///
    /// ```
    /// use asyncbridge::{embed, Boxed, Bridge, Config, Status};
    /// use std::time::Duration;
    ///
    /// let bridge = Bridge::start(Config::default()).unwrap();
    /// let (started_tx, started_rx) = std::sync::mpsc::channel();
    /// let (stopped_tx, stopped_rx) = std::sync::mpsc::channel();
    /// let future = embed::spawn(&bridge, |task: embed::Task<Boxed<u64>>| async move {
    ///     let check = task.cancel_check();
    ///     let blocking = tokio::task::spawn_blocking(move || {
    ///         started_tx.send(()).unwrap();
    ///         let mut steps = 0;
    ///         while !check.is_cancelled() {
    ///             std::thread::sleep(Duration::from_millis(1));
    ///             steps += 1;
    ///         }
    ///         stopped_tx.send(()).unwrap();
    ///         steps
    ///     });
    ///     let steps = task.shield(blocking).await.unwrap();
    ///     Ok(Some(steps))
    /// })
    /// .unwrap();
    /// started_rx.recv().unwrap();
    /// future.cancel().unwrap();
    /// assert_eq!(future.wait(Some(Duration::from_secs(10))), Ok(Status::Cancelled));
    /// // The blocking part had stopped before the future ended.
    /// assert!(stopped_rx.try_recv().is_ok());
    /// ```
    pub fn shield<F: std::future::Future>(&self, section: F) -> Shielded<F> {
        self.shield.fetch_add(1, Ordering::SeqCst);
        Shielded {
            section: Box::pin(section),
            shield: Some(self.shield.clone()),
        }
    }
}

/// [`Task::is_cancelled`] for another thread.
pub struct CancelCheck(Box<dyn IsCancelled>);

trait IsCancelled: Send + Sync {
    fn is_cancelled(&self) -> bool;
    fn commit(&self) -> bool;
}

impl<K: Kind> IsCancelled for Task<K> {
    fn is_cancelled(&self) -> bool {
        Task::is_cancelled(self)
    }

    fn commit(&self) -> bool {
        Task::commit(self)
    }
}

impl CancelCheck {
    /// Whether the task's cancellation was requested or its future has ended.
    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }

    /// [`Task::commit`], from another thread.
    pub fn commit(&self) -> bool {
        self.0.commit()
    }
}

impl std::fmt::Debug for CancelCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CancelCheck")
            .field(&self.is_cancelled())
            .finish()
    }
}

/// The future of [`Task::cancelled`].
pub struct Cancelled<'a, K: Kind>(&'a Task<K>);

impl<K: Kind> std::future::Future for Cancelled<'_, K> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        // The task's waker is registered with the future on every poll of the block:
        // a request wakes the block, which polls this again.
        if self.0.is_cancelled() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// The future of [`Task::shield`].
pub struct Shielded<F> {
    section: Pin<Box<F>>,
    shield: Option<Arc<AtomicUsize>>,
}

impl<F> Shielded<F> {
    fn lower(&mut self) {
        if let Some(shield) = self.shield.take() {
            shield.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl<F: std::future::Future> std::future::Future for Shielded<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let poll = self.section.as_mut().poll(cx);
        if poll.is_ready() {
            // The block may be dropped at its next await again; the task polls it
            // at once, so a request made meanwhile is seen there.
            self.lower();
            cx.waker().wake_by_ref();
        }
        poll
    }
}

impl<F> Drop for Shielded<F> {
    fn drop(&mut self) {
        self.lower();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Boxed, Config, Status};
    use std::time::Duration;

    // A watchdog, not a timing: under ThreadSanitizer with RUST_BACKTRACE set, the
    // panic test's backtrace alone took over 10 s to print.
    const LONG: Option<Duration> = Some(Duration::from_secs(120));

    #[test]
    fn a_panic_fails_the_future() {
        let bridge = Bridge::start(Config::default()).unwrap();
        let f = spawn(&bridge, |_t: Task<Boxed<()>>| async move {
            if Some(1).is_some() {
                panic!("boom");
            }
            Ok(None)
        })
        .unwrap();
        assert_eq!(f.wait(LONG), Ok(Status::Failed));
        assert_eq!(f.failure().unwrap().code(), Error::Panic.code());
    }

    #[test]
    fn cancel_ends_cancelled_only_after_the_block_is_dropped() {
        struct Flag(std::sync::mpsc::Sender<()>);
        impl Drop for Flag {
            fn drop(&mut self) {
                std::thread::sleep(Duration::from_millis(50));
                self.0.send(()).unwrap();
            }
        }
        let bridge = Bridge::start(Config::default()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let f = spawn(&bridge, |_t: Task<Boxed<()>>| async move {
            let _flag = Flag(tx);
            started_tx.send(()).unwrap();
            std::future::pending::<()>().await;
            Ok(None)
        })
        .unwrap();
        started_rx.recv().unwrap();
        f.cancel().unwrap();
        assert_eq!(f.wait(LONG), Ok(Status::Cancelled));
        assert!(rx.try_recv().is_ok(), "ended before the block was dropped");
    }

    #[test]
    fn a_shielded_section_runs_on_and_the_request_decides() {
        let bridge = Bridge::start(Config::default()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let f = spawn(&bridge, |t: Task<Boxed<u32>>| async move {
            started_tx.send(()).unwrap();
            let section = async {
                t.cancelled().await;
                tokio::time::sleep(Duration::from_millis(30)).await;
                tx.send(()).unwrap();
                7
            };
            let v = t.shield(section).await;
            // Dropped at this await: the request is seen once the shield is down.
            std::future::pending::<()>().await;
            Ok(Some(v))
        })
        .unwrap();
        started_rx.recv().unwrap();
        f.cancel().unwrap();
        assert_eq!(f.wait(LONG), Ok(Status::Cancelled));
        assert!(rx.try_recv().is_ok(), "the shielded section did not finish");
        assert_eq!(f.take_value(), None);
    }

    #[test]
    fn after_commit_a_request_changes_nothing() {
        let bridge = Bridge::start(Config::default()).unwrap();
        let (committed_tx, committed_rx) = std::sync::mpsc::channel::<bool>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let f = spawn(&bridge, |t: Task<Boxed<u32>>| async move {
            let check = t.cancel_check();
            let section = tokio::task::spawn_blocking(move || {
                committed_tx.send(check.commit()).unwrap();
                go_rx.recv().unwrap();
            });
            t.shield(section).await.unwrap();
            Ok(Some(5))
        })
        .unwrap();
        assert!(committed_rx.recv().unwrap());
        // Too late: the work is past its point of no return.
        assert_eq!(f.cancel(), Ok(Status::Ok));
        go_tx.send(()).unwrap();
        assert_eq!(f.wait(LONG), Ok(Status::Ok));
        assert_eq!(f.take_value(), Some(5));

        // A request first: commit refuses and the future ends cancelled.
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let f = spawn(&bridge, |t: Task<Boxed<bool>>| async move {
            let check = t.cancel_check();
            let section = tokio::task::spawn_blocking(move || {
                started_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                check.commit()
            });
            let committed = t.shield(section).await.unwrap();
            Ok(Some(committed))
        })
        .unwrap();
        started_rx.recv().unwrap();
        f.cancel().unwrap();
        go_tx.send(()).unwrap();
        assert_eq!(f.wait(LONG), Ok(Status::Cancelled));
    }

    #[test]
    fn shutdown_cancels_the_block_after_its_grace() {
        let bridge = Bridge::start(Config::default()).unwrap();
        let f = spawn(&bridge, |_t: Task<Boxed<()>>| async move {
            std::future::pending::<()>().await;
            Ok(None)
        })
        .unwrap();
        assert_eq!(
            bridge.shutdown(Some(Duration::from_millis(20))),
            Ok(Status::Ok)
        );
        assert_eq!(f.status(), Status::Cancelled);
        let refused = spawn(&bridge, |_t: Task<Boxed<()>>| async move { Ok(None) });
        assert_eq!(refused.err(), Some(Error::NotRunning));
    }
}
