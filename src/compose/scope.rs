//! Scopes: a group of operations that nothing outlives. Each operation added is a
//! member; the scope's join is a future that ends only once every member has ended,
//! and the library's futures end only once their work has stopped.
//!
//! The join is a promise's future of the bridge, settled by the scope: it counts as
//! pending work of the bridge, shutdown asks it to stop like any promise (which
//! closes the scope and cancels its members), and it ends once they have ended.

use crate::compose::token::Token;
use crate::future::{Failure, Future, Kind};
use crate::promise::Promise;
use crate::sched::Sched;
use crate::status::{Error, Status};
use crate::sync::{lock, Arc, Mutex, Weak};

/// A group of futures whose join ends once every one of them has ended.
///
/// Members are added with [`Scope::add`]; [`Scope::cancel`] cancels them through the
/// scope's token; [`Scope::join`] ends the additions and gives the join future;
/// [`Scope::close`] does both and cancels. Dropping the scope closes it.
pub struct Scope<K: Kind> {
    shared: Arc<ScopeShared<K>>,
}

struct ScopeShared<K: Kind> {
    /// Cancels the members; shared so that a C caller can borrow it.
    token: Arc<Token>,
    cancel_on_failure: bool,
    /// The join, as the library's own reference (it keeps no value alive).
    join: Future<K>,
    state: Mutex<ScopeState<K>>,
}

struct ScopeState<K: Kind> {
    /// Members added and not ended yet.
    members: usize,
    /// No more additions: joined, closed, or the join was cancelled.
    closed: bool,
    /// Settles the join once closed with no member left; `None` once settled.
    promise: Option<Promise<K>>,
    /// The first failure of a member, with `cancel_on_failure`: the join's failure.
    failure: Option<Failure>,
}

impl<K: Kind> Scope<K> {
    /// A scope whose join is `join`, settled through `promise` (both from one
    /// `Bridge::promise` call); its token is a child of `parent`, if given, and runs
    /// its deadlines on `sched`. With `cancel_on_failure`, the first member that fails
    /// cancels the others and the join fails with its code and message.
    pub(crate) fn new(
        promise: Promise<K>,
        join: Future<K>,
        parent: Option<&Token>,
        sched: Option<Weak<dyn Sched>>,
        cancel_on_failure: bool,
    ) -> Result<Scope<K>, Error> {
        let shared = Arc::new(ScopeShared {
            token: Arc::new(Token::new(sched, parent)),
            cancel_on_failure,
            join: join.internal(),
            state: Mutex::new(ScopeState {
                members: 0,
                closed: false,
                promise: None,
                failure: None,
            }),
        });
        lock(&shared.state).promise = Some(promise);
        // A request on the join (its cancel, its timeout, shutdown) closes the scope:
        // the join then ends as requested once every member has ended. Registered
        // with the promise in place: a request made already runs it now.
        let weak = Arc::downgrade(&shared);
        let on_cancel = Box::new(move || {
            if let Some(shared) = weak.upgrade() {
                shared.close();
                shared.token.cancel();
            }
        });
        shared.join.on_cancel(on_cancel)?;
        Ok(Scope { shared })
    }

    /// The scope's token: cancelled when the scope is cancelled or closed; children
    /// of it (nested scopes, tokens) are cancelled with it.
    pub fn token(&self) -> &Arc<Token> {
        &self.shared.token
    }

    /// Adds `future` as a member: the join waits for it, the scope's token cancels
    /// it. A closed scope refuses it with `Error::Closed` and cancels it.
    pub fn add(&self, future: &Future<K>) -> Result<(), Error> {
        let refused = {
            let mut state = lock(&self.shared.state);
            if !state.closed {
                state.members += 1;
            }
            state.closed
        };
        if refused {
            let _ = future.cancel();
            return Err(Error::Closed);
        }
        if let Err(error) = self.shared.token.add(future) {
            self.shared.leave();
            return Err(error);
        }
        let shared = self.shared.clone();
        let ended = move |done: &Future<K>| shared.ended(done);
        if let Err(error) = future.on_done_internal(Box::new(ended)) {
            self.shared.leave();
            return Err(error);
        }
        Ok(())
    }

    /// Cancels every member, and whatever is added later (until closed).
    pub fn cancel(&self) {
        self.shared.token.cancel();
    }

    /// Ends the additions; returns a handle to the join, which ends once every member
    /// has ended: `Ok`, or `Failed` with the first member's failure under
    /// `cancel_on_failure`, or as requested if the join itself was cancelled.
    pub fn join(&self) -> Future<K> {
        self.shared.close();
        self.shared.join.handle()
    }

    /// [`Scope::join`], and cancels what still runs. Closing is idempotent: the scope
    /// refuses additions from now on, and dropping it changes nothing more. (By
    /// reference, so that a scope shared with calls still running can be closed.)
    pub fn close(&self) -> Future<K> {
        let join = self.join();
        self.cancel();
        join
    }

    /// How many members have not ended yet.
    #[cfg(test)]
    pub(crate) fn members(&self) -> usize {
        lock(&self.shared.state).members
    }
}

impl<K: Kind> Drop for Scope<K> {
    fn drop(&mut self) {
        self.shared.close();
        self.shared.token.cancel();
    }
}

impl<K: Kind> ScopeShared<K> {
    /// No more additions; settles the join if no member is left.
    fn close(&self) {
        let settle = {
            let mut state = lock(&self.state);
            state.closed = true;
            Self::settling(&mut state)
        };
        Self::settle(settle);
    }

    /// A member has gone (ended, or its addition failed).
    fn leave(&self) {
        let settle = {
            let mut state = lock(&self.state);
            state.members -= 1;
            Self::settling(&mut state)
        };
        Self::settle(settle);
    }

    fn ended(&self, done: &Future<K>) {
        if self.cancel_on_failure && done.peek() == Status::Failed {
            let first = {
                let mut state = lock(&self.state);
                let first = state.failure.is_none();
                if first {
                    state.failure = done.failure_unobserved().cloned();
                }
                first
            };
            if first {
                // The join reports it: looking at the join is looking at it.
                done.mark_observed();
                self.token.cancel();
            }
        }
        self.leave();
    }

    /// Under the lock: what settles the join, if it is time.
    fn settling(state: &mut ScopeState<K>) -> Option<(Promise<K>, Option<Failure>)> {
        if !state.closed || state.members > 0 {
            return None;
        }
        let promise = state.promise.take()?;
        Some((promise, state.failure.take()))
    }

    /// Outside the lock: settling runs the join's callbacks.
    fn settle(settle: Option<(Promise<K>, Option<Failure>)>) {
        match settle {
            Some((promise, None)) => promise.resolve(None),
            Some((promise, Some(failure))) => promise.fail_with(failure),
            None => {}
        }
    }
}

impl<K: Kind> std::fmt::Debug for Scope<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("members", &lock(&self.shared.state).members)
            .field("cancelled", &self.shared.token.is_cancelled())
            .finish()
    }
}

#[cfg(all(test, not(asyncbridge_loom)))]
mod tests {
    use super::*;
    use crate::future::Boxed;
    use crate::sched::Owner;

    type K = Boxed<u32>;

    fn owner() -> Arc<Owner> {
        Arc::new(Owner::new(0, None))
    }

    fn scope(owner: &Arc<Owner>, parent: Option<&Token>, cancel_on_failure: bool) -> Scope<K> {
        let (promise, join) = Promise::new(owner).unwrap();
        Scope::new(promise, join, parent, None, cancel_on_failure).unwrap()
    }

    #[test]
    fn the_join_waits_for_a_member_that_ignores_cancellation() {
        let owner = owner();
        let scope = scope(&owner, None, false);
        let (slow, slow_future) = Promise::<K>::new(&owner).unwrap();
        let (quick, quick_future) = Promise::<K>::new(&owner).unwrap();
        scope.add(&slow_future).unwrap();
        scope.add(&quick_future).unwrap();
        assert_eq!(scope.members(), 2);
        let join = scope.close();
        assert!(slow.is_cancelled() && quick.is_cancelled());
        quick.resolve(None);
        assert_eq!(join.peek(), Status::Pending, "the slow member still runs");
        slow.resolve(Some(7));
        assert_eq!(slow_future.peek(), Status::Cancelled);
        assert_eq!(join.peek(), Status::Ok);
    }

    #[test]
    fn adding_after_the_join_is_refused_and_cancels() {
        let owner = owner();
        let scope = scope(&owner, None, false);
        let join = scope.join();
        assert_eq!(join.peek(), Status::Ok, "no member: at once");
        let (late, late_future) = Promise::<K>::new(&owner).unwrap();
        assert_eq!(scope.add(&late_future), Err(Error::Closed));
        assert!(late.is_cancelled());
        drop(late);
        assert_eq!(late_future.peek(), Status::Cancelled);
        assert_eq!(scope.join().peek(), Status::Ok, "joining twice is harmless");
    }

    #[test]
    fn the_first_failure_cancels_the_rest_and_fails_the_join() {
        let owner = owner();
        let scope = scope(&owner, None, true);
        let (failing, failing_future) = Promise::<K>::new(&owner).unwrap();
        let (other, other_future) = Promise::<K>::new(&owner).unwrap();
        scope.add(&failing_future).unwrap();
        scope.add(&other_future).unwrap();
        let join = scope.join();
        failing.fail(42, "broken");
        assert!(other.is_cancelled());
        assert_eq!(join.peek(), Status::Pending);
        drop(other);
        assert_eq!(join.peek(), Status::Failed);
        let failure = join.failure().unwrap();
        assert_eq!((failure.code(), failure.message()), (42, c"broken"));

        // Without the flag a failure is the member's own business.
        let scope = self::scope(&owner, None, false);
        let (failing, failing_future) = Promise::<K>::new(&owner).unwrap();
        scope.add(&failing_future).unwrap();
        failing.fail(42, "broken");
        assert_eq!(scope.close().peek(), Status::Ok);
    }

    #[test]
    fn cancelling_the_join_closes_the_scope_and_cancels_members() {
        let owner = owner();
        let scope = scope(&owner, None, false);
        let (member, member_future) = Promise::<K>::new(&owner).unwrap();
        scope.add(&member_future).unwrap();
        let join = scope.join();
        join.cancel().unwrap();
        assert!(member.is_cancelled());
        assert_eq!(join.peek(), Status::Pending, "until the member ended");
        drop(member);
        assert_eq!(join.peek(), Status::Cancelled);

        // Shutdown asks the join like any promise, before anyone joined.
        let scope = self::scope(&owner, None, false);
        let (member, member_future) = Promise::<K>::new(&owner).unwrap();
        scope.add(&member_future).unwrap();
        owner.cancel_all();
        assert!(member.is_cancelled());
        drop(member);
        let join = scope.join();
        assert_eq!(join.peek(), Status::Cancelled);
        assert_eq!(owner.stats().pending, 0);
    }

    #[test]
    fn a_nested_scope_is_cancelled_with_its_parent_token() {
        let owner = owner();
        let outer = scope(&owner, None, false);
        let inner = scope(&owner, Some(outer.token()), false);
        let (member, member_future) = Promise::<K>::new(&owner).unwrap();
        inner.add(&member_future).unwrap();
        outer.add(&inner.join()).unwrap();
        let outer_join = outer.close();
        assert!(member.is_cancelled());
        assert_eq!(outer_join.peek(), Status::Pending);
        member.resolve(None);
        assert_eq!(outer_join.peek(), Status::Ok);
        drop(inner);
    }
}
