//! Cancellation tokens: one request that reaches many operations at once.
//!
//! A token keeps, for each future added to it, the way to cancel that future, only
//! until the future ends (its own done callback takes it out), so a token that lives
//! for the whole program and sees millions of short operations stays small. Tokens
//! form trees: cancelling one cancels its children. A child holds its parent, the
//! parent only names its children weakly, so a freed child leaves its parent's list
//! at once and a freed parent still passes a cancellation from above on to its
//! children.
//!
//! Locks: each token has one lock, and no code path holds two of them, nor calls
//! anything (a future's cancel, a callback) with one held. So a cancellation racing
//! with additions, new children or frees on other threads cannot deadlock, and a
//! callback may call back into the token.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::future::{CancelCallback, Future, Kind};
use crate::sched::{Canceller, Sched};
use crate::status::Error;
use crate::sync::{lock, Arc, AtomicBool, Mutex, Ordering, Weak};
use crate::sys::wakeup::Wakeup;

/// A cancellation token: cancelling it cancels every future added to it (as
/// [`Future::cancel`] does), its children, and runs its cancel callbacks.
///
/// Dropping the token does not cancel anything: the futures added are no longer
/// cancelled by it, its callbacks are dropped unrun, its deadline no longer fires.
/// Its children stay linked to its parent: cancelling the parent still cancels them.
pub struct Token {
    node: Arc<Node>,
}

/// The part of a token its children, its deadline timer and its futures' done
/// callbacks reach.
struct Node {
    /// Set once, under `state`'s lock; read without it.
    cancelled: AtomicBool,
    state: Mutex<NodeState>,
    /// The parent this token is listed in, and its name in that list. A token born
    /// cancelled is listed nowhere.
    parent: Option<(Arc<Node>, u64)>,
    /// The runtime that runs the deadline's timer.
    sched: Option<Weak<dyn Sched>>,
}

/// A cancel action of a future added to a token.
type Member = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct NodeState {
    /// Names members and children.
    next: u64,
    /// Futures added and not ended yet, by name, in the order added.
    members: BTreeMap<u64, Member>,
    children: BTreeMap<u64, Weak<Node>>,
    callbacks: Vec<CancelCallback>,
    /// The earliest deadline, and how to stop its timer.
    deadline: Option<(Instant, Canceller)>,
    /// The descriptor that becomes readable once cancelled, made on first request.
    wakeup: Option<Wakeup>,
}

impl NodeState {
    fn name(&mut self) -> u64 {
        let name = self.next;
        self.next += 1;
        name
    }
}

/// What a cancellation takes out of a token, to run with no lock held.
struct Taken {
    members: BTreeMap<u64, Member>,
    children: BTreeMap<u64, Weak<Node>>,
    callbacks: Vec<CancelCallback>,
    deadline: Option<Canceller>,
}

impl Node {
    fn lock(&self) -> crate::sync::MutexGuard<'_, NodeState> {
        lock(&self.state)
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Marks the token cancelled and takes out what the cancellation runs; `None`
    /// if it was cancelled already.
    fn take_for_cancel(&self) -> Option<Taken> {
        let mut state = self.lock();
        if self.cancelled.swap(true, Ordering::SeqCst) {
            return None;
        }
        if let Some(wakeup) = &state.wakeup {
            wakeup.raise();
        }
        Some(Taken {
            members: std::mem::take(&mut state.members),
            children: std::mem::take(&mut state.children),
            callbacks: std::mem::take(&mut state.callbacks),
            deadline: state.deadline.take().map(|(_, stop)| stop),
        })
    }

    /// Cancels this token and its whole subtree, one token at a time (a deep tree
    /// does not deepen the stack).
    fn cancel(self: &Arc<Node>) {
        let mut pending = vec![self.clone()];
        while let Some(node) = pending.pop() {
            let Some(taken) = node.take_for_cancel() else {
                continue;
            };
            if let Some(stop) = taken.deadline {
                stop();
            }
            for (_, member) in taken.members {
                member();
            }
            for callback in taken.callbacks {
                if catch_unwind(AssertUnwindSafe(callback)).is_err() {
                    eprintln!("asyncbridge: a token's cancel callback panicked");
                }
            }
            pending.extend(taken.children.into_values().filter_map(|c| c.upgrade()));
        }
    }

    /// A future added under `name` has ended: it is no longer kept.
    fn forget(&self, name: u64) {
        let member = self.lock().members.remove(&name);
        drop(member);
    }
}

impl Drop for Node {
    /// Leaves the parent's list, and releases the parent with a loop, not a nested
    /// drop: a chain of tokens each made under the one before, whose handles were
    /// freed, is held up by its last node alone, and releasing it one stack frame set
    /// per level would overflow the stack (as [`Node::cancel`] would, if it recursed).
    fn drop(&mut self) {
        let mut parent = self.parent.take();
        while let Some((node, name)) = parent {
            let child = node.lock().children.remove(&name);
            drop(child);
            // With the last reference, this node goes now: its parent is taken out
            // first, so its own drop has nothing to climb, and the loop goes on with it.
            parent = Arc::into_inner(node).and_then(|mut node| node.parent.take());
        }
    }
}

impl Token {
    /// A new token, a child of `parent` if given (cancelled at once if the parent is
    /// cancelled already); `sched` runs its deadline's timer.
    pub(crate) fn new(sched: Option<Weak<dyn Sched>>, parent: Option<&Token>) -> Token {
        let node = match parent {
            None => Arc::new(Node::new(sched, None, false)),
            Some(parent) => {
                let parent = &parent.node;
                let mut state = parent.lock();
                if parent.is_cancelled() {
                    drop(state);
                    Arc::new(Node::new(sched, None, true))
                } else {
                    let name = state.name();
                    let node = Arc::new(Node::new(sched, Some((parent.clone(), name)), false));
                    state.children.insert(name, Arc::downgrade(&node));
                    node
                }
            }
        };
        Token { node }
    }

    /// Whether the token was cancelled (by [`Token::cancel`], a parent, a deadline).
    pub fn is_cancelled(&self) -> bool {
        self.node.is_cancelled()
    }

    /// Cancels the token: every future added and not ended yet is cancelled (as
    /// [`Future::cancel`] does), then the cancel callbacks run, then the children are
    /// cancelled, all on this thread. Idempotent.
    pub fn cancel(&self) {
        self.node.cancel();
    }

    /// Has the token cancel `future` when it is cancelled; at once, here, if it is
    /// cancelled already. The token keeps the future only until it ends, and never
    /// keeps its value alive. `Error::NotRunning` in a fork child.
    pub fn add<K: Kind>(&self, future: &Future<K>) -> Result<(), Error> {
        if future.peek().is_final() {
            return Ok(());
        }
        let target = future.internal();
        let name = {
            let mut state = self.node.lock();
            if self.node.is_cancelled() {
                drop(state);
                return future.cancel().map(drop);
            }
            let name = state.name();
            state.members.insert(
                name,
                Box::new(move || {
                    let _ = target.cancel();
                }),
            );
            name
        };
        // Registered after the member is listed: an end that comes first (or now,
        // for a future that ended meanwhile) finds it to take out.
        let node = Arc::downgrade(&self.node);
        let forget = move |_: &Future<K>| {
            if let Some(node) = node.upgrade() {
                node.forget(name);
            }
        };
        if let Err(error) = future.on_done_internal(Box::new(forget)) {
            self.node.forget(name);
            return Err(error);
        }
        Ok(())
    }

    /// Registers `callback`, run once when the token is cancelled, on the cancelling
    /// thread (a runtime thread for a deadline); at once, here, if it is cancelled
    /// already. Dropped unrun with the token.
    pub fn on_cancel(&self, callback: CancelCallback) {
        let mut state = self.node.lock();
        if self.node.is_cancelled() {
            drop(state);
            if catch_unwind(AssertUnwindSafe(callback)).is_err() {
                eprintln!("asyncbridge: a token's cancel callback panicked");
            }
            return;
        }
        state.callbacks.push(callback);
    }

    /// Cancels the token `delay` from now (at once for zero), unless an earlier
    /// deadline is set; the earliest deadline wins. The timer holds the token weakly
    /// and stops when the token is cancelled or dropped. `Error::NotRunning` when the
    /// runtime is gone or shut down; nothing happens to a cancelled token.
    pub fn set_deadline(&self, delay: Duration) -> Result<(), Error> {
        if self.is_cancelled() {
            return Ok(());
        }
        if delay.is_zero() {
            self.cancel();
            return Ok(());
        }
        let at = Instant::now().checked_add(delay);
        let sched = self
            .node
            .sched
            .as_ref()
            .and_then(Weak::upgrade)
            .filter(|s| s.is_running())
            .ok_or(Error::NotRunning)?;
        let Some(at) = at else {
            return Ok(()); // never comes
        };
        if self
            .node
            .lock()
            .deadline
            .as_ref()
            .is_some_and(|(earliest, _)| *earliest <= at)
        {
            return Ok(());
        }
        let node = Arc::downgrade(&self.node);
        let stop = sched.after(
            delay,
            Box::new(move || {
                if let Some(node) = node.upgrade() {
                    node.cancel();
                }
            }),
        )?;
        let mut state = self.node.lock();
        let replaced = if self.node.is_cancelled()
            || state
                .deadline
                .as_ref()
                .is_some_and(|(earliest, _)| *earliest <= at)
        {
            // Cancelled meanwhile, or an earlier deadline came in on another thread.
            Some(stop)
        } else {
            state.deadline.replace((at, stop)).map(|(_, old)| old)
        };
        drop(state);
        if let Some(stop) = replaced {
            stop();
        }
        Ok(())
    }

    /// A descriptor that becomes readable once the token is cancelled (and stays
    /// so), for poll loops; owned by the token, closed when it is dropped.
    pub fn fd(&self) -> Result<std::os::fd::RawFd, Error> {
        let mut state = self.node.lock();
        if let Some(wakeup) = &state.wakeup {
            return Ok(wakeup.fd());
        }
        let wakeup = Wakeup::new().map_err(|_| Error::NotRunning)?;
        if self.node.is_cancelled() {
            wakeup.raise();
        }
        let fd = wakeup.fd();
        state.wakeup = Some(wakeup);
        Ok(fd)
    }

    /// How many futures the token keeps (added and not ended yet).
    #[cfg(test)]
    pub(crate) fn members(&self) -> usize {
        self.node.lock().members.len()
    }

    /// How many children are listed in this token.
    #[cfg(test)]
    pub(crate) fn children(&self) -> usize {
        self.node.lock().children.len()
    }
}

impl Node {
    fn new(
        sched: Option<Weak<dyn Sched>>,
        parent: Option<(Arc<Node>, u64)>,
        cancelled: bool,
    ) -> Node {
        Node {
            cancelled: AtomicBool::new(cancelled),
            state: Mutex::new(NodeState::default()),
            parent,
            sched,
        }
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        // The node may live on for its children; nothing of the handle's does.
        let (members, callbacks, deadline, wakeup) = {
            let mut state = self.node.lock();
            (
                std::mem::take(&mut state.members),
                std::mem::take(&mut state.callbacks),
                state.deadline.take(),
                state.wakeup.take(),
            )
        };
        if let Some((_, stop)) = deadline {
            stop();
        }
        drop((members, callbacks, wakeup));
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

#[cfg(all(test, not(asyncbridge_loom)))]
mod tests {
    use super::*;
    use crate::future::Boxed;
    use crate::promise::Promise;
    use crate::sched::Owner;
    use crate::status::Status;
    use std::sync::atomic::AtomicUsize;

    type K = Boxed<u32>;

    /// A pending future that a request finishes at once (it has no work yet).
    fn waiting() -> Future<K> {
        Future::waiting(crate::future::testing::owner(), None)
    }

    fn promise() -> (Promise<K>, Future<K>) {
        Promise::new(&Arc::new(Owner::new(0, None))).unwrap()
    }

    fn readable(fd: std::os::fd::RawFd) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one valid pollfd without waiting.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 && pfd.revents & libc::POLLIN != 0 }
    }

    #[test]
    fn cancel_reaches_every_member_once_and_callbacks_on_this_thread() {
        let token = Token::new(None, None);
        let futures: Vec<_> = (0..5).map(|_| waiting()).collect();
        for f in &futures {
            token.add(f).unwrap();
        }
        let (promise, promised) = promise();
        token.add(&promised).unwrap();
        let asked = Arc::new(AtomicUsize::new(0));
        let a = asked.clone();
        promise
            .on_cancel(Box::new(move || {
                a.fetch_add(1, Ordering::SeqCst);
            }))
            .unwrap();
        let ran_on = Arc::new(std::sync::Mutex::new(Vec::new()));
        let r = ran_on.clone();
        token.on_cancel(Box::new(move || {
            r.lock().unwrap().push(std::thread::current().id())
        }));
        assert_eq!(token.members(), 6);
        token.cancel();
        token.cancel();
        assert!(token.is_cancelled());
        for f in &futures {
            assert_eq!(f.peek(), Status::Cancelled);
        }
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "the promise's on_cancel ran"
        );
        assert_eq!(promised.peek(), Status::Pending, "until its holder settles");
        drop(promise);
        assert_eq!(promised.peek(), Status::Cancelled);
        assert_eq!(*ran_on.lock().unwrap(), vec![std::thread::current().id()]);
        assert_eq!(token.members(), 0);
    }

    #[test]
    fn ended_futures_leave_at_once_so_the_token_stays_small() {
        let token = Token::new(None, None);
        for _ in 0..100_000 {
            let (promise, future) = promise();
            token.add(&future).unwrap();
            promise.resolve(Some(1));
            assert_eq!(future.peek(), Status::Ok);
        }
        assert_eq!(token.members(), 0);
        // One that ended before it was added is not kept either.
        let (promise, future) = promise();
        promise.resolve(None);
        token.add(&future).unwrap();
        assert_eq!(token.members(), 0);
        token.cancel();
        assert_eq!(future.peek(), Status::Ok, "an ended future is not touched");
    }

    #[test]
    fn adding_to_a_cancelled_token_cancels_at_once() {
        let token = Token::new(None, None);
        token.cancel();
        let f = waiting();
        token.add(&f).unwrap();
        assert_eq!(f.peek(), Status::Cancelled);
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        token.on_cancel(Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(ran.load(Ordering::SeqCst), 1, "at once");
    }

    #[test]
    fn a_parent_cancels_its_children_and_grandchildren_not_the_reverse() {
        let parent = Token::new(None, None);
        let child = Token::new(None, Some(&parent));
        let grandchild = Token::new(None, Some(&child));
        let f = waiting();
        grandchild.add(&f).unwrap();
        child.cancel();
        assert!(!parent.is_cancelled());
        assert!(grandchild.is_cancelled());
        assert_eq!(f.peek(), Status::Cancelled);

        let other = Token::new(None, Some(&parent));
        // A freed middle token still passes the cancellation on.
        let middle = Token::new(None, Some(&other));
        let below = Token::new(None, Some(&middle));
        drop(middle);
        parent.cancel();
        assert!(other.is_cancelled() && below.is_cancelled());
        // Born cancelled under a cancelled parent.
        assert!(Token::new(None, Some(&parent)).is_cancelled());
    }

    #[test]
    fn a_freed_child_leaves_its_parent_and_a_freed_token_cancels_nothing() {
        let parent = Token::new(None, None);
        let children: Vec<_> = (0..100).map(|_| Token::new(None, Some(&parent))).collect();
        assert_eq!(parent.children(), 100);
        drop(children);
        assert_eq!(parent.children(), 0);

        let child = Token::new(None, Some(&parent));
        let f = waiting();
        child.add(&f).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        child.on_cancel(Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        drop(child);
        parent.cancel();
        assert_eq!(f.peek(), Status::Pending);
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }

    /// Each token made under the previous one, which is dropped at once: the last
    /// one holds the whole chain up, and dropping it, on a thread with the test
    /// harness's default stack, must not cost a stack frame per token.
    #[test]
    fn dropping_the_end_of_a_long_chain_does_not_recurse() {
        let head = Token::new(None, None);
        let mut last = Token::new(None, Some(&head));
        for _ in 0..30_000 {
            last = Token::new(None, Some(&last));
        }
        assert_eq!(head.children(), 1);
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || drop(last))
            .unwrap()
            .join()
            .unwrap();
        // The first of the chain leaves the list only once the chain is released.
        assert_eq!(head.children(), 0, "the whole chain went");
    }

    #[test]
    fn the_fd_is_readable_exactly_once_cancelled() {
        let token = Token::new(None, None);
        let fd = token.fd().unwrap();
        assert_eq!(token.fd().unwrap(), fd, "one descriptor");
        assert!(!readable(fd));
        token.cancel();
        assert!(readable(fd));
        assert!(readable(fd), "and stays so");
        // Asked for after the cancellation: readable at once.
        let late = Token::new(None, None);
        late.cancel();
        assert!(readable(late.fd().unwrap()));
    }

    #[test]
    fn callbacks_may_call_back_into_the_token() {
        let token = Arc::new(Token::new(None, None));
        let t = token.clone();
        let added = waiting();
        let a = added.internal();
        token.on_cancel(Box::new(move || {
            t.cancel();
            t.add(&a).unwrap();
            t.on_cancel(Box::new(|| {}));
            let _ = t.fd();
        }));
        token.cancel();
        assert_eq!(added.peek(), Status::Cancelled);
    }

    /// Cancels, additions, new children and frees race from many threads: nothing
    /// deadlocks, and every future added ends cancelled.
    #[test]
    fn cancel_add_child_and_free_race() {
        for _ in 0..20 {
            let root = Arc::new(Token::new(None, None));
            let barrier = Arc::new(std::sync::Barrier::new(5));
            let mut threads = Vec::new();
            for n in 0..4 {
                let (root, barrier) = (root.clone(), barrier.clone());
                threads.push(std::thread::spawn(move || {
                    barrier.wait();
                    let mut tokens = Vec::new();
                    let mut futures = Vec::new();
                    for i in 0..200 {
                        let child = Token::new(None, Some(&root));
                        let f = waiting();
                        child.add(&f).unwrap();
                        root.add(&f).unwrap();
                        if (i + n) % 3 == 0 {
                            drop(child);
                        } else {
                            tokens.push(child);
                        }
                        futures.push(f);
                    }
                    (tokens, futures)
                }));
            }
            barrier.wait();
            root.cancel();
            for t in threads {
                let (tokens, futures) = t.join().unwrap();
                // Made before the cancellation or after it (born cancelled).
                assert!(tokens.iter().all(Token::is_cancelled));
                for f in futures {
                    assert_eq!(f.peek(), Status::Cancelled);
                }
            }
            assert_eq!((root.members(), root.children()), (0, 0));
        }
    }
}
