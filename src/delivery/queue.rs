//! Completion queues: done and progress callbacks delivered on the thread the
//! application chooses (its GUI main loop), by `dispatch`.
//!
//! A queue is readable-while-non-empty through a file descriptor, and calls a
//! `notify` hook on each empty→non-empty edge, for loops that cannot watch a
//! descriptor. Entries are pushed by the thread that finishes a future (or reports
//! progress) while it holds that future's lock, so a withdrawal, which takes the same
//! lock, finds every registration either still on the future or already here.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::future::{Future, Kind};
use crate::status::{Error, Status};
use crate::sync::{lock, Arc, Condvar, Mutex};
use crate::sys::thread_role;
use crate::sys::wakeup::Wakeup;

/// Called on each empty→non-empty edge of a queue, from any thread.
pub type NotifyHook = Box<dyn Fn() + Send + Sync>;

thread_local! {
    /// The calling thread is inside a notify hook.
    static IN_HOOK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// One delivery waiting in a queue. Each holds a handle to its future, so the value
/// stays alive until the delivery has run.
pub(crate) enum Entry<K: Kind> {
    /// A done callback.
    Done {
        future: Future<K>,
        callback: K::Callback,
    },
    /// The latest progress of `future`, for its progress watch `watch`.
    Progress { future: Future<K>, watch: u64 },
    /// A call of a recurring source (a timer tick, a signal watch's arrivals).
    Source(Arc<dyn Deliver>),
}

/// Something a queue runs in its dispatch that is not a future's callback.
pub trait Deliver: Send + Sync {
    /// Runs on the dispatching thread; returns whether it called a callback.
    fn deliver(&self) -> bool;
}

impl<K: Kind> Entry<K> {
    fn future(&self) -> Option<&Future<K>> {
        match self {
            Entry::Done { future, .. } | Entry::Progress { future, .. } => Some(future),
            Entry::Source(_) => None,
        }
    }

    /// Runs the delivery; returns whether a callback was called (a progress delivery
    /// after the done callback, or of a withdrawn watch, calls nothing).
    fn run(self) -> bool {
        match self {
            Entry::Done { future, callback } => {
                // Takes the future's lock: an entry is queued just before its future's
                // status is published, under that lock, so the callback sees it final.
                future.mark_done_delivered();
                K::call(callback, &future);
                true
            }
            Entry::Progress { future, watch } => future.deliver_progress(watch),
            Entry::Source(source) => source.deliver(),
        }
    }
}

#[cfg(not(asyncbridge_loom))]
impl<K: Kind> crate::sources::Delivery for CompletionQueue<K> {
    fn deliver(&self, what: Arc<dyn Deliver>) -> bool {
        match self.push(Entry::Source(what)) {
            Ok(edge) => {
                if edge {
                    self.call_notify();
                }
                true
            }
            Err(_) => false,
        }
    }
}

struct State<K: Kind> {
    /// Deliveries with the sequence number they were queued under.
    entries: VecDeque<(u64, Entry<K>)>,
    /// The sequence number of the next delivery queued.
    next: u64,
    /// Freed by its owner: nothing is queued any more.
    closed: bool,
    /// Threads in `wait`; notifying nobody costs a syscall, so count.
    waiters: u32,
    /// Dropped (closing the descriptor) when the queue is closed.
    wakeup: Option<Wakeup>,
}

/// A queue of callbacks that run only inside [`CompletionQueue::dispatch`], on the
/// thread that calls it. It belongs to no bridge.
pub struct CompletionQueue<K: Kind> {
    /// The fork generation the queue was made in: in a fork child its lock may be
    /// held by a thread that does not exist there, so it is never touched.
    fork_generation: u64,
    state: Mutex<State<K>>,
    nonempty: Condvar,
    /// Held while a hook runs, so replacing it waits for a running call to end.
    notify: Mutex<Option<NotifyHook>>,
}

impl<K: Kind> Default for CompletionQueue<K> {
    fn default() -> Self {
        CompletionQueue::new()
    }
}

impl<K: Kind> CompletionQueue<K> {
    /// A new, empty queue with its descriptor, or without one if the process is out
    /// of descriptors (the notify hook and `wait` still work).
    pub fn new() -> CompletionQueue<K> {
        CompletionQueue {
            fork_generation: crate::sys::fork::generation(),
            state: Mutex::new(State {
                entries: VecDeque::new(),
                next: 0,
                closed: false,
                waiters: 0,
                wakeup: Wakeup::new().ok(),
            }),
            nonempty: Condvar::new(),
            notify: Mutex::new(None),
        }
    }

    /// Whether this process is a fork child of the one that made the queue. Such a
    /// queue is dead: nothing is delivered to it or dispatched from it, and no call
    /// touches its locks.
    pub fn orphaned(&self) -> bool {
        crate::sys::fork::generation() != self.fork_generation
    }

    /// The descriptor that is readable while callbacks are pending; `None` once closed,
    /// and in a fork child.
    pub fn fd(&self) -> Option<i32> {
        if self.orphaned() {
            return None;
        }
        lock(&self.state).wakeup.as_ref().map(Wakeup::fd)
    }

    /// Sets (or with `None` removes) the hook called on each empty→non-empty edge.
    /// When this returns, the previous hook is not running and will not be called again.
    /// In a fork child it does nothing (the hook is never called there).
    pub fn set_notify(&self, hook: Option<NotifyHook>) {
        if self.orphaned() {
            // Dropping the new hook runs no user code; the old one is left alone.
            return;
        }
        let old = std::mem::replace(&mut *lock(&self.notify), hook);
        drop(old);
    }

    /// Calls the hook, if any. Callers hold no lock of a future: the hook is user code.
    ///
    /// A hook that dispatches right away (GLib's g_main_context_invoke does, when the
    /// context is free) would re-enter here from its own dispatch; that nested call is
    /// skipped rather than deadlocking on the hook's lock.
    pub(crate) fn call_notify(&self) {
        if IN_HOOK.with(|h| h.get()) || self.orphaned() {
            return;
        }
        if let Some(hook) = lock(&self.notify).as_ref() {
            IN_HOOK.with(|h| h.set(true));
            // Reset even if a Rust hook panics.
            struct Reset;
            impl Drop for Reset {
                fn drop(&mut self) {
                    IN_HOOK.with(|h| h.set(false));
                }
            }
            let _reset = Reset;
            hook();
        }
    }

    /// Queues `entry`; gives it back if the queue is closed. Runs no user code, so it
    /// may be called under a future's lock: the caller drops a refused entry, and calls
    /// [`CompletionQueue::call_notify`] if this returns `Ok(true)` (an empty→non-empty
    /// edge), once it has let go of that lock.
    pub(crate) fn push(&self, entry: Entry<K>) -> Result<bool, Entry<K>> {
        if self.orphaned() {
            return Err(entry);
        }
        let mut state = lock(&self.state);
        if state.closed {
            return Err(entry);
        }
        let edge = state.entries.is_empty();
        let seq = state.next;
        state.next += 1;
        state.entries.push_back((seq, entry));
        if edge {
            if let Some(wakeup) = &state.wakeup {
                wakeup.raise();
            }
        }
        let wake = edge && state.waiters > 0;
        drop(state);
        if wake {
            self.nonempty.notify_all();
        }
        Ok(edge)
    }

    /// Runs callbacks on the calling thread: those pending when it was called, at most
    /// `max` of them (0: all). Returns how many ran. If callbacks are still pending
    /// when it returns, the descriptor stays readable and the hook is called again.
    ///
    /// It may be called again from inside one of its callbacks (a nested event loop,
    /// such as a modal dialog's): the nested call runs what is pending then, including
    /// completions that arrived after the outer call began, and the outer call goes
    /// on with whatever is left of its own share afterwards. In a fork child it runs
    /// nothing and returns 0.
    pub fn dispatch(&self, max: usize) -> usize {
        if self.orphaned() {
            return 0;
        }
        let mut state = lock(&self.state);
        // Deliveries queued from now on (by callbacks or other threads) wait for the
        // next dispatch, even if a callback withdraws some of those pending now.
        let end = state.next;
        let pending = state.entries.len();
        let limit = if max == 0 { pending } else { pending.min(max) };
        let mut ran = 0;
        for _ in 0..limit {
            let entry = match state.entries.front() {
                Some((seq, _)) if *seq < end => state.entries.pop_front().map(|(_, e)| e),
                _ => None,
            };
            let Some(entry) = entry else { break };
            drop(state);
            if entry.run() {
                ran += 1;
            }
            state = lock(&self.state);
        }
        // The descriptor is cleared here rather than when the last entry was taken:
        // the first callback runs a system call sooner, and a poller woken meanwhile
        // only finds nothing to do.
        let more = !state.entries.is_empty();
        if !more {
            if let Some(wakeup) = &state.wakeup {
                wakeup.clear();
            }
        }
        drop(state);
        if more {
            // A loop driven by the hook alone must hear about what is left.
            self.call_notify();
        }
        ran
    }

    /// Waits up to `timeout` (`None`: no limit) until a callback is pending.
    ///
    /// Returns `Status::Ok` once one is, `Status::Timeout` otherwise. A wait that would
    /// block on a bridge loop thread is `Error::WouldDeadlock`. A queue closed before
    /// or during the wait is `Error::Closed`, at once. In a fork child:
    /// `Error::NotRunning`, whatever the timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<Status, Error> {
        if self.orphaned() {
            return Err(Error::NotRunning);
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut state = lock(&self.state);
        if !state.entries.is_empty() {
            return Ok(Status::Ok);
        }
        if state.closed {
            return Err(Error::Closed);
        }
        if timeout == Some(Duration::ZERO) {
            return Ok(Status::Timeout);
        }
        if thread_role::on_any_loop() {
            return Err(Error::WouldDeadlock);
        }
        state.waiters += 1;
        let status = loop {
            if !state.entries.is_empty() {
                break Ok(Status::Ok);
            }
            if state.closed {
                break Err(Error::Closed);
            }
            let wait = match deadline {
                None => Duration::from_secs(3600),
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => break Ok(Status::Timeout),
                },
            };
            state = match self.nonempty.wait_timeout(state, wait) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        };
        state.waiters -= 1;
        status
    }

    /// Runs the callbacks still pending on the calling thread, then closes the queue:
    /// its descriptor is closed, completions arriving later for it are dropped, and
    /// threads blocked in [`CompletionQueue::wait`] return `Error::Closed` at once.
    ///
    /// In a fork child it runs nothing and touches nothing: the queue's callbacks
    /// belong to the parent, and its lock may be held by a thread that is not here.
    pub fn close(&self) -> usize {
        if self.orphaned() {
            return 0;
        }
        let (entries, wakeup, waiters) = {
            let mut state = lock(&self.state);
            state.closed = true;
            (
                std::mem::take(&mut state.entries),
                state.wakeup.take(),
                state.waiters > 0,
            )
        };
        if waiters {
            self.nonempty.notify_all();
        }
        drop(wakeup);
        self.set_notify(None);
        entries
            .into_iter()
            .map(|(_, entry)| entry.run())
            .filter(|&ran| ran)
            .count()
    }

    /// Closes the queue (see [`CompletionQueue::close`]) and drops this reference to it.
    /// In a fork child the queue is leaked instead: dropping the parent's deliveries
    /// could run the parent's free functions, or take a lock of a vanished thread.
    pub fn close_and_release(queue: Arc<Self>) -> usize {
        if queue.orphaned() {
            std::mem::forget(queue);
            return 0;
        }
        queue.close()
    }

    /// Removes the pending deliveries of `future` that `matches` selects; they will
    /// not run. The caller holds `future`'s lock and drops them after releasing it.
    pub(crate) fn remove(
        &self,
        future: &Future<K>,
        mut matches: impl FnMut(&Entry<K>) -> bool,
    ) -> Vec<Entry<K>> {
        let mut state = lock(&self.state);
        let mut removed = Vec::new();
        let mut kept = VecDeque::with_capacity(state.entries.len());
        for (seq, entry) in state.entries.drain(..) {
            if entry.future().is_some_and(|f| f.same_as(future)) && matches(&entry) {
                removed.push(entry);
            } else {
                kept.push_back((seq, entry));
            }
        }
        state.entries = kept;
        if state.entries.is_empty() && !removed.is_empty() {
            if let Some(wakeup) = &state.wakeup {
                wakeup.clear();
            }
        }
        removed
    }

    /// How many callbacks are pending (0 in a fork child).
    pub fn len(&self) -> usize {
        if self.orphaned() {
            return 0;
        }
        lock(&self.state).entries.len()
    }

    /// Whether no callback is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(all(test, not(asyncbridge_loom)))]
mod tests {
    use super::*;
    use crate::future::{Boxed, Failure};
    use crate::sched::Owner;
    use crate::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex as StdMutex;

    type K = Boxed<u32>;

    fn future() -> Future<K> {
        let owner = Arc::new(Owner::new(0, None));
        owner.admit().unwrap();
        Future::running(owner)
    }

    fn readable(queue: &CompletionQueue<K>) -> bool {
        let mut pfd = libc::pollfd {
            fd: queue.fd().unwrap(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one valid pollfd without waiting.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
    }

    fn counter(calls: &Arc<AtomicUsize>) -> crate::future::BoxedCallback<u32> {
        let calls = calls.clone();
        Box::new(move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[test]
    fn callbacks_run_only_in_dispatch_and_fd_follows_emptiness() {
        let queue = Arc::new(CompletionQueue::<K>::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let notified = Arc::new(AtomicUsize::new(0));
        let n = notified.clone();
        queue.set_notify(Some(Box::new(move || {
            n.fetch_add(1, Ordering::SeqCst);
        })));
        let futures: Vec<_> = (0..3).map(|_| future()).collect();
        for f in &futures {
            f.on_done_via(&queue, counter(&calls)).unwrap();
        }
        assert!(!readable(&queue));
        for f in &futures {
            std::thread::scope(|s| {
                s.spawn(|| f.finish(Ok(Some(1))));
            });
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0, "only inside dispatch");
        assert!(readable(&queue));
        assert_eq!(notified.load(Ordering::SeqCst), 1, "one edge, one notify");
        assert_eq!(queue.dispatch(2), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(readable(&queue), "one left");
        assert_eq!(
            notified.load(Ordering::SeqCst),
            2,
            "told again about what is left"
        );
        assert_eq!(queue.dispatch(0), 1);
        assert!(!readable(&queue));
        assert_eq!(queue.dispatch(0), 0);
        assert_eq!(notified.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn finished_future_is_queued_at_once_and_value_lives_until_delivery() {
        let queue = Arc::new(CompletionQueue::<K>::new());
        let f = future();
        f.finish(Ok(Some(7)));
        let seen = Arc::new(StdMutex::new(None));
        let s = seen.clone();
        f.on_done_via(
            &queue,
            Box::new(move |f| *s.lock().unwrap() = f.with_value(|v| *v)),
        )
        .unwrap();
        drop(f); // the queued delivery keeps the value alive
        assert_eq!(queue.dispatch(0), 1);
        assert_eq!(*seen.lock().unwrap(), Some(7));
    }

    #[test]
    fn arrivals_during_dispatch_wait_for_the_next_one() {
        let queue = Arc::new(CompletionQueue::<K>::new());
        let later = future();
        let first = future();
        let (q, l) = (queue.clone(), later.clone());
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        first
            .on_done_via(
                &queue,
                Box::new(move |_| {
                    l.on_done_via(&q, counter(&c)).unwrap();
                    l.finish(Ok(None));
                }),
            )
            .unwrap();
        first.finish(Ok(None));
        assert_eq!(queue.dispatch(0), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert!(readable(&queue));
        assert_eq!(queue.dispatch(0), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn wait_times_out_then_sees_a_delivery() {
        let queue = Arc::new(CompletionQueue::<K>::new());
        assert_eq!(
            queue.wait(Some(Duration::from_millis(20))),
            Ok(Status::Timeout)
        );
        assert_eq!(queue.wait(Some(Duration::ZERO)), Ok(Status::Timeout));
        let f = future();
        f.on_done_via(&queue, Box::new(|_| {})).unwrap();
        let g = f.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            g.finish(Err(Failure::from_code(3)));
        });
        assert_eq!(queue.wait(None), Ok(Status::Ok));
        t.join().unwrap();
        assert_eq!(queue.dispatch(0), 1);
    }

    #[test]
    fn close_runs_what_is_pending_and_drops_what_comes_later() {
        let queue = Arc::new(CompletionQueue::<K>::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let (early, late) = (future(), future());
        early.on_done_via(&queue, counter(&calls)).unwrap();
        late.on_done_via(&queue, counter(&calls)).unwrap();
        early.finish(Ok(None));
        assert_eq!(queue.close(), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(queue.fd(), None);
        late.finish(Ok(None));
        assert_eq!(queue.dispatch(0), 0);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn progress_is_coalesced_and_never_after_the_done_callback() {
        let queue = Arc::new(CompletionQueue::<K>::new());
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let s = seen.clone();
        let f = future();
        f.on_progress_via(
            &queue,
            Arc::new(move |_, done, total| s.lock().unwrap().push((done, total))),
        )
        .unwrap();
        for i in 1..=5 {
            f.set_progress(i, 5);
        }
        assert_eq!(queue.len(), 1, "one pending delivery");
        assert_eq!(queue.dispatch(0), 1);
        assert_eq!(*seen.lock().unwrap(), vec![(5, 5)], "the latest values win");
        // Queued before the done callback: delivered, and first.
        f.set_progress(6, 9);
        let s = seen.clone();
        f.on_done_via(&queue, Box::new(move |_| s.lock().unwrap().push((0, 0))))
            .unwrap();
        f.finish(Ok(None));
        assert_eq!(queue.dispatch(0), 2);
        assert_eq!(*seen.lock().unwrap(), vec![(5, 5), (6, 9), (0, 0)]);
        // After the done callback has run: nothing.
        let g = future();
        let s = seen.clone();
        g.on_progress_via(
            &queue,
            Arc::new(move |_, d, t| s.lock().unwrap().push((d, t))),
        )
        .unwrap();
        g.on_done(Box::new(|_| {})).unwrap();
        g.set_progress(1, 1);
        g.finish(Ok(None));
        assert_eq!(queue.dispatch(0), 0, "the delivery calls nothing");
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[test]
    fn withdrawn_callbacks_never_run_queued_or_not() {
        let queue = Arc::new(CompletionQueue::<K>::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let (waiting, queued) = (future(), future());
        waiting.on_done_via(&queue, counter(&calls)).unwrap();
        waiting
            .on_progress_via(&queue, Arc::new(|_, _, _| panic!("withdrawn")))
            .unwrap();
        queued.on_done_via(&queue, counter(&calls)).unwrap();
        queued.finish(Ok(None));
        waiting.set_progress(1, 2);
        assert_eq!(waiting.withdraw_via(&queue, |_| true, |_| true), 2);
        assert_eq!(queued.withdraw_via(&queue, |_| true, |_| true), 1);
        waiting.finish(Ok(None));
        queue.dispatch(0);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    /// A thread blocked in `wait` used to sleep its whole timeout (forever with no
    /// limit) when the queue was closed under it.
    #[test]
    fn close_wakes_a_blocked_wait() {
        for timeout in [None, Some(Duration::from_secs(10))] {
            let queue = Arc::new(CompletionQueue::<K>::new());
            let q = queue.clone();
            let waiter = std::thread::spawn(move || {
                let started = Instant::now();
                (q.wait(timeout), started.elapsed())
            });
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(queue.close(), 0);
            let (answer, waited) = waiter.join().unwrap();
            assert_eq!(answer, Err(Error::Closed));
            assert!(waited < Duration::from_secs(5), "woken, not timed out");
            assert_eq!(queue.wait(Some(Duration::ZERO)), Err(Error::Closed));
        }
    }

    /// A callback that runs a nested event loop gets the deliveries that are pending
    /// then, and those that arrive while it runs.
    #[test]
    fn a_nested_dispatch_delivers_what_is_pending() {
        let queue = Arc::new(CompletionQueue::<K>::new());
        let order = Arc::new(StdMutex::new(Vec::new()));
        let (first, second, third) = (future(), future(), future());
        let (q, o, late) = (queue.clone(), order.clone(), third.clone());
        first
            .on_done_via(
                &queue,
                Box::new(move |_| {
                    o.lock().unwrap().push("A begins");
                    let nested = q.dispatch(0);
                    // A completion that comes while this callback runs.
                    late.finish(Ok(None));
                    let again = q.dispatch(0);
                    o.lock().unwrap().push(if (nested, again) == (1, 1) {
                        "A ends"
                    } else {
                        "A ends with a wrong count"
                    });
                }),
            )
            .unwrap();
        for (f, name) in [(&second, "B"), (&third, "C")] {
            let o = order.clone();
            f.on_done_via(&queue, Box::new(move |_| o.lock().unwrap().push(name)))
                .unwrap();
        }
        first.finish(Ok(None));
        second.finish(Ok(None));
        assert_eq!(queue.dispatch(0), 1, "B and C ran in the nested dispatches");
        assert_eq!(*order.lock().unwrap(), ["A begins", "B", "C", "A ends"]);
        assert!(!readable(&queue));
    }
}
