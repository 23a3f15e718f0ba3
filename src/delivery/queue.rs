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

use crate::delivery::{Entry, Posted};
use crate::status::{Error, Status};
use crate::sync::{lock, Arc, Condvar, Mutex, MutexGuard};
use crate::sys::thread_role;
use crate::sys::wakeup::Wakeup;

/// Called on each empty→non-empty edge of a queue, from any thread.
pub type NotifyHook = Box<dyn Fn() + Send + Sync>;

/// An empty→non-empty edge of a queue that its pusher has yet to raise (see
/// [`CompletionQueue::push_unraised`]). The reference keeps the descriptor open should
/// the queue be closed meanwhile.
#[must_use = "an edge must be raised"]
pub(crate) struct Edge {
    wakeup: Option<Arc<Wakeup>>,
    /// Threads were waiting in `CompletionQueue::wait` when it was pushed.
    waiters: bool,
}

thread_local! {
    /// The calling thread is inside a notify hook.
    static IN_HOOK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The queues (by address) whose dispatch this thread is inside, innermost last.
    static DISPATCHING: std::cell::RefCell<Vec<usize>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Marks the calling thread as inside a queue's dispatch while it lives.
struct Dispatching(usize);

impl Dispatching {
    fn enter(queue: usize) -> Dispatching {
        let _ = DISPATCHING.try_with(|d| d.borrow_mut().push(queue));
        Dispatching(queue)
    }

    /// Whether this thread is inside a dispatch of `queue`.
    fn inside(queue: usize) -> bool {
        DISPATCHING
            .try_with(|d| d.borrow().contains(&queue))
            .unwrap_or(false)
    }
}

impl Drop for Dispatching {
    fn drop(&mut self) {
        let _ = DISPATCHING.try_with(|d| {
            let mut d = d.borrow_mut();
            if let Some(at) = d.iter().rposition(|&q| q == self.0) {
                d.remove(at);
            }
        });
    }
}

struct State {
    /// Deliveries with the sequence number they were queued under.
    entries: VecDeque<(u64, Entry)>,
    /// The sequence number of the next delivery queued.
    next: u64,
    /// Freed by its owner: nothing is queued any more.
    closed: bool,
    /// Closed from inside one of its own callbacks: the dispatch running it finishes
    /// the close when it returns.
    close_deferred: bool,
    /// Threads in `wait`; notifying nobody costs a syscall, so count.
    waiters: u32,
    /// Dropped when the queue is closed (which closes the descriptor, once a push
    /// that is raising it has done so).
    wakeup: Option<Arc<Wakeup>>,
}

/// A queue of callbacks that run only inside [`CompletionQueue::dispatch`], on the
/// thread that calls it. It belongs to no bridge.
pub struct CompletionQueue {
    /// The fork generation the queue was made in: in a fork child its lock may be
    /// held by a thread that does not exist there, so it is never touched.
    fork_generation: u64,
    state: Mutex<State>,
    nonempty: Condvar,
    /// Held while a hook runs, so replacing it waits for a running call to end.
    notify: Mutex<Option<NotifyHook>>,
}

impl Default for CompletionQueue {
    fn default() -> Self {
        CompletionQueue::new()
    }
}

impl CompletionQueue {
    /// A new, empty queue with its descriptor, or without one if the process is out
    /// of descriptors (the notify hook and `wait` still work).
    pub fn new() -> CompletionQueue {
        CompletionQueue {
            fork_generation: crate::sys::fork::generation(),
            state: Mutex::new(State {
                entries: VecDeque::new(),
                next: 0,
                closed: false,
                close_deferred: false,
                waiters: 0,
                wakeup: Wakeup::new().ok().map(Arc::new),
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
        lock(&self.state).wakeup.as_ref().map(|w| w.fd())
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
    pub(crate) fn push(&self, entry: Entry) -> Result<bool, Entry> {
        let (state, edge) = self.enqueue(entry)?;
        if edge {
            // Under the lock: a dispatch cannot run this entry and clear the descriptor
            // before it is raised.
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

    /// [`CompletionQueue::push`], leaving the edge (if any) to the caller, who raises
    /// it with [`CompletionQueue::raise`] with no lock held (then calls the notify
    /// hook). Only for an entry whose delivery waits until the pusher has raised it
    /// (a finishing future's, see `Future::deliver`): so a dispatch cannot run it, find
    /// the queue empty and clear the descriptor before the raise, and the descriptor is
    /// never left readable with nothing pending.
    pub(crate) fn push_unraised(&self, entry: Entry) -> Result<Option<Edge>, Entry> {
        let (state, edge) = self.enqueue(entry)?;
        Ok(edge.then(|| Edge {
            wakeup: state.wakeup.clone(),
            waiters: state.waiters > 0,
        }))
    }

    /// Appends `entry` unless the queue is closed (or a parent's, in a fork child);
    /// returns the locked state and whether the queue was empty before.
    fn enqueue(&self, entry: Entry) -> Result<(MutexGuard<'_, State>, bool), Entry> {
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
        Ok((state, edge))
    }

    /// Makes the descriptor readable for `edge`, then wakes the threads in
    /// [`CompletionQueue::wait`]. Outside the queue's lock, so that a poller it wakes
    /// does not find that lock held.
    pub(crate) fn raise(&self, edge: Edge) {
        if let Some(wakeup) = edge.wakeup {
            wakeup.raise();
        }
        if edge.waiters {
            self.nonempty.notify_all();
        }
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
        let ran = {
            let _inside = Dispatching::enter(self.address());
            self.dispatch_pending(max)
        };
        if !Dispatching::inside(self.address()) && lock(&self.state).close_deferred {
            // A callback closed the queue: the close ends here, now that no frame of
            // this thread's dispatches still uses it.
            self.finish_close();
        }
        ran
    }

    fn address(&self) -> usize {
        self as *const CompletionQueue as usize
    }

    fn dispatch_pending(&self, max: usize) -> usize {
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
        // Closed meanwhile (from a callback): what is left runs in the close, and the
        // hook, which the owner may have torn down with the queue, is not called.
        let more = !state.entries.is_empty() && !state.closed;
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
    ///
    /// Called from inside one of the queue's own callbacks, it refuses new deliveries
    /// at once and returns 0; the rest (running what is pending, closing the
    /// descriptor) happens when the outermost dispatch of the queue on this thread
    /// returns, so that dispatch never touches a queue that is gone.
    pub fn close(&self) -> usize {
        if self.orphaned() {
            return 0;
        }
        if Dispatching::inside(self.address()) {
            let waiters = {
                let mut state = lock(&self.state);
                state.closed = true;
                state.close_deferred = true;
                state.waiters > 0
            };
            if waiters {
                self.nonempty.notify_all();
            }
            return 0;
        }
        self.finish_close()
    }

    fn finish_close(&self) -> usize {
        let (entries, wakeup, waiters) = {
            let mut state = lock(&self.state);
            state.closed = true;
            state.close_deferred = false;
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

    /// Runs `call` inside a later dispatch, in order with the other deliveries; never
    /// inline. A queue that is closed refuses it (`Error::Closed`; `Error::NotRunning`
    /// in a fork child) and drops it.
    pub fn post(&self, call: Box<dyn FnOnce() + Send>) -> Result<(), Error> {
        let call: Posted = call;
        match self.push(Entry::post(call)) {
            Ok(edge) => {
                if edge {
                    self.call_notify();
                }
                Ok(())
            }
            Err(refused) => {
                drop(refused);
                Err(if self.orphaned() {
                    Error::NotRunning
                } else {
                    Error::Closed
                })
            }
        }
    }

    /// Takes out the pending deliveries of `target`'s callbacks named by `tags`; they
    /// will not run. The caller drops them once it holds no lock of `target`'s.
    pub(crate) fn remove(&self, target: *const (), tags: &[u64]) -> Vec<Entry> {
        let mut state = lock(&self.state);
        let mut removed = Vec::new();
        let mut kept = VecDeque::with_capacity(state.entries.len());
        for (seq, entry) in state.entries.drain(..) {
            if tags.iter().any(|&tag| entry.is(target, tag)) {
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
