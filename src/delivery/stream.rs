//! Streams of values: one producer, one consumer, many values over time, then one end.
//!
//! [`channel`] makes the two sides. The [`Sender`] sends values and ends the stream
//! ([`Sender::close`], [`Sender::fail`], or dropping it); the [`Receiver`] takes the
//! values in order, then the end, which every later call repeats. The consumer may ask
//! the producer to stop ([`Receiver::cancel`]); the producer sees the request through
//! [`Sender::is_cancelled`], [`Sender::cancelled`] or a cancel callback, and the
//! stream ends [`End::Cancelled`] once the producer has stopped (its sender consumed).
//!
//! ```
//! use asyncbridge::delivery::stream::{channel, End, Options};
//!
//! let (tx, mut rx) = channel::<u32>(Options::default());
//! // A producer thread, or an async block with `tx.send(v).await`.
//! std::thread::spawn(move || {
//!     for i in 0..3 {
//!         tx.try_send(i).unwrap();
//!     }
//!     tx.close();
//! })
//! .join()
//! .unwrap();
//! let mut seen = Vec::new();
//! let end = loop {
//!     match rx.try_recv() {
//!         Some(Ok(value)) => seen.push(value),
//!         Some(Err(end)) => break end,
//!         None => unreachable!("everything was sent"),
//!     }
//! };
//! assert_eq!((seen, end), (vec![0, 1, 2], End::Closed));
//! // The end is repeated.
//! assert_eq!(rx.try_recv(), Some(Err(End::Closed)));
//! ```
//!
//! What holds, whatever the threads do:
//! - values come out in the order they were sent, each at most once, and every value
//!   is dropped exactly once (delivered and dropped by its taker, or dropped by the
//!   stream: by an overflow policy, when sent after a cancellation, when the receiver
//!   goes);
//! - the end comes after every value that was accepted, exactly once (and is then
//!   repeated); a value whose send reported success is delivered unless the receiver
//!   is dropped first;
//! - with [`Overflow::Wait`] the producer is never more than `capacity` values, plus
//!   the one send that waits for room, ahead of the consumer;
//! - the end is [`End::Cancelled`] exactly when a cancellation request came before the
//!   sender was consumed (or the runner of a producer block stopped it), and it comes
//!   only once the sender was consumed.

use std::collections::VecDeque;
use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::status::Error;
use crate::sync::{current_thread, lock, Arc, Condvar, Mutex, MutexGuard, ThreadId, WaitGraph};

/// What a full stream does with a new value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Lossless: the producer waits for room (back-pressure).
    #[default]
    Wait,
    /// The oldest value still queued is dropped to make room, and counted.
    DropOldest,
    /// One slot: a new value replaces the unread one, which is counted as dropped.
    KeepLatest,
}

/// How a stream is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// How many values may wait between the two sides (at least 1; 1 with
    /// [`Overflow::KeepLatest`], whatever is given).
    pub capacity: usize,
    /// What a send does when the stream is full.
    pub overflow: Overflow,
}

/// The capacity of [`Options::default`].
pub const DEFAULT_CAPACITY: usize = 64;

impl Default for Options {
    fn default() -> Options {
        Options {
            capacity: DEFAULT_CAPACITY,
            overflow: Overflow::Wait,
        }
    }
}

/// How a stream ended. The receiver sees it after the last value, and again on every
/// later call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The producer closed the stream: every value was sent.
    Closed,
    /// The producer failed, with a code and a message; a sender dropped without
    /// closing fails with `Error::Abandoned`'s code.
    Failed {
        /// The failure code (never 0).
        code: i32,
        /// What failed.
        message: CString,
    },
    /// The consumer asked the producer to stop and it did.
    Cancelled,
}

impl End {
    /// A failure with `code` (0 counts as 1: failing always fails) and `message` (cut
    /// at its first NUL byte).
    pub fn failed(code: i32, message: impl Into<Vec<u8>>) -> End {
        let mut bytes = message.into();
        if let Some(nul) = bytes.iter().position(|&b| b == 0) {
            bytes.truncate(nul);
        }
        End::Failed {
            code: if code == 0 { 1 } else { code },
            message: CString::new(bytes).unwrap_or_default(),
        }
    }
}

/// The message of a stream whose sender was dropped without being closed.
const ABANDONED: &str = "the stream's sender was freed without being closed";

/// A producer's cancel callback: run once, on the thread that requests cancellation.
pub type CancelCallback = Box<dyn FnOnce() + Send>;

/// Who reads the stream: nobody, a pending read, or push mode for good.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reading {
    Idle,
    Busy,
    Pushed,
}

struct State<V> {
    queue: VecDeque<V>,
    /// Values taken by a push-mode batch whose callback has not returned yet: they
    /// count against the capacity, so back-pressure holds up to the callback.
    in_flight: usize,
    capacity: usize,
    overflow: Overflow,
    dropped: u64,
    /// The one send that waits for room ([`Overflow::Wait`]).
    pending: Option<V>,
    /// A send was claimed ([`Sender::claim`]) and not made yet.
    claimed: bool,
    /// The end the consumed sender chose, waiting for the pending send to resolve.
    closing: Option<End>,
    /// The end, seen once the queue is empty.
    end: Option<End>,
    cancel_requested: bool,
    receiver_gone: bool,
    reading: Reading,
    /// Wakes the pending send when there is room, or when it was dropped.
    send_waker: Option<Waker>,
    /// Wakes [`Sender::cancelled`].
    cancel_waker: Option<Waker>,
    /// Wakes the reader when there is a value, the end, or an acknowledgement.
    read_waker: Option<Waker>,
    on_cancel: Option<CancelCallback>,
    cancel_registered: bool,
    /// The thread running the cancel callback: consuming the sender elsewhere waits.
    cancelling_on: Option<ThreadId>,
}

impl<V> State<V> {
    fn has_room(&self) -> bool {
        self.queue.len() + self.in_flight < self.capacity
    }

    /// Whether the sender was consumed (the end is decided, maybe after a pending send).
    fn sender_consumed(&self) -> bool {
        self.end.is_some() || self.closing.is_some()
    }
}

/// What the two sides share.
struct Shared<V> {
    state: Mutex<State<V>>,
    /// Signalled when a cancel callback returns.
    callback_returned: Condvar,
}

/// Which thread runs which stream's cancel callback, and who waits for which, across
/// all streams (by address): a consuming call that would close a cycle does not wait.
static CANCEL_CALLS: std::sync::Mutex<WaitGraph<usize, ThreadId>> =
    std::sync::Mutex::new(WaitGraph::new());

fn cancel_calls() -> std::sync::MutexGuard<'static, WaitGraph<usize, ThreadId>> {
    CANCEL_CALLS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Wakers and values collected under the lock, woken and dropped after it: dropping a
/// value runs the user's free function, which may call back into the stream.
struct After<V> {
    wakers: Vec<Waker>,
    drop: Vec<V>,
}

impl<V> After<V> {
    fn new() -> After<V> {
        After {
            wakers: Vec::new(),
            drop: Vec::new(),
        }
    }

    fn wake(&mut self, waker: Option<Waker>) {
        self.wakers.extend(waker);
    }

    fn run(self) {
        for waker in self.wakers {
            waker.wake();
        }
        drop(self.drop);
    }
}

/// Makes a stream: the producer's side and the consumer's side.
///
/// A capacity of 0 counts as 1.
pub fn channel<V: Send + 'static>(options: Options) -> (Sender<V>, Receiver<V>) {
    let capacity = match options.overflow {
        Overflow::KeepLatest => 1,
        _ => options.capacity.max(1),
    };
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            in_flight: 0,
            capacity,
            overflow: options.overflow,
            dropped: 0,
            pending: None,
            claimed: false,
            closing: None,
            end: None,
            cancel_requested: false,
            receiver_gone: false,
            reading: Reading::Idle,
            send_waker: None,
            cancel_waker: None,
            read_waker: None,
            on_cancel: None,
            cancel_registered: false,
            cancelling_on: None,
        }),
        callback_returned: Condvar::new(),
    });
    (
        Sender {
            shared: shared.clone(),
            ends_on_drop: true,
            consumed: false,
        },
        Receiver { shared },
    )
}

/// A value a send could not deliver, given back.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<V> {
    /// The stream is full (or a send is waiting for room already).
    Full(V),
    /// The consumer cancelled the stream or is gone.
    Closed(V),
}

/// The value of a send the consumer refused (it cancelled the stream, or is gone).
#[derive(Debug, PartialEq, Eq)]
pub struct SendError<V>(pub V);

/// What starting a send did (see [`Sender::start_send`]).
pub enum StartSend<V> {
    /// The value is in the stream (or was dropped by the overflow policy).
    Sent,
    /// The value waits for room; poll the [`PendingSend`] to see it go in.
    Waiting(PendingSend<V>),
    /// A send is waiting already: the value is given back.
    Busy(V),
    /// The consumer cancelled the stream or is gone: the value is given back.
    Closed(V),
}

/// The producer's side of a stream; see the module documentation.
///
/// Dropping it without [`Sender::close`] or [`Sender::fail`] fails the stream with
/// `Error::Abandoned`'s code, or ends it [`End::Cancelled`] if cancellation had been
/// requested.
pub struct Sender<V> {
    shared: Arc<Shared<V>>,
    /// Whether dropping it decides the end (see [`Sender::detach_end`]).
    ends_on_drop: bool,
    consumed: bool,
}

impl<V> std::fmt::Debug for Sender<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl<V> Sender<V> {
    /// Sends `value`, waiting for room with [`Overflow::Wait`]; the other policies
    /// never wait. Gives the value back if the consumer cancelled the stream or is
    /// gone (before or while it waited). Dropping the returned future while it waits
    /// drops the value, unsent.
    pub async fn send(&mut self, value: V) -> Result<(), SendError<V>> {
        match self.start_send(value) {
            StartSend::Sent => Ok(()),
            StartSend::Closed(value) | StartSend::Busy(value) => Err(SendError(value)),
            StartSend::Waiting(mut pending) => {
                let sent = std::future::poll_fn(|cx| pending.poll_sent(cx, || true)).await;
                match sent {
                    Ok(()) => Ok(()),
                    Err(value) => Err(SendError(value)),
                }
            }
        }
    }

    /// Sends `value` if the stream has room now (or its policy drops); gives it back
    /// otherwise.
    pub fn try_send(&self, value: V) -> Result<(), TrySendError<V>> {
        match self.offer(value, false) {
            StartSend::Sent => Ok(()),
            StartSend::Closed(value) => Err(TrySendError::Closed(value)),
            StartSend::Busy(value) => Err(TrySendError::Full(value)),
            StartSend::Waiting(_) => Ok(()), // not made without waiting
        }
    }

    /// Starts a send: the value goes in at once, waits for room in the stream's one
    /// pending-send slot, or comes back. For callers that keep the wait elsewhere (a
    /// future of a bridge).
    pub fn start_send(&self, value: V) -> StartSend<V> {
        self.offer(value, true)
    }

    fn offer(&self, value: V, may_wait: bool) -> StartSend<V> {
        offer(&self.shared, value, may_wait, false)
    }

    /// Claims the stream's one send: `Error::Busy` while another send is claimed or
    /// waits for room. A claimed send goes in with [`SendClaim::send`], which never
    /// answers `Busy`; other sends are busy meanwhile.
    pub fn claim(&self) -> Result<SendClaim<V>, Error> {
        let mut state = lock(&self.shared.state);
        if state.claimed || state.pending.is_some() {
            return Err(Error::Busy);
        }
        state.claimed = true;
        Ok(SendClaim {
            shared: Some(self.shared.clone()),
        })
    }

    /// A handle for registering the cancel callback, which does not borrow the sender
    /// (the callback may consume the sender before the registration returns).
    pub fn cancel_registration(&self) -> CancelRegistration<V> {
        CancelRegistration(self.shared.clone())
    }
}

/// Puts `value` in, or keeps it waiting (`may_wait`), or gives it back.
fn offer<V>(shared: &Arc<Shared<V>>, value: V, may_wait: bool, claimed: bool) -> StartSend<V> {
    {
        let mut after = After::new();
        let answer = {
            let mut state = lock(&shared.state);
            if claimed {
                state.claimed = false;
            }
            let answer = if state.cancel_requested || state.receiver_gone {
                StartSend::Closed(value)
            } else if state.pending.is_some() || (state.claimed && !claimed) {
                StartSend::Busy(value)
            } else {
                match state.overflow {
                    Overflow::Wait if !state.has_room() => {
                        if may_wait {
                            state.pending = Some(value);
                            StartSend::Waiting(PendingSend {
                                shared: Some(shared.clone()),
                            })
                        } else {
                            StartSend::Busy(value)
                        }
                    }
                    Overflow::Wait => {
                        state.queue.push_back(value);
                        StartSend::Sent
                    }
                    Overflow::DropOldest | Overflow::KeepLatest => {
                        // In flight values are the consumer's already: only queued
                        // ones count here.
                        if state.queue.len() >= state.capacity {
                            if let Some(old) = state.queue.pop_front() {
                                state.dropped += 1;
                                after.drop.push(old);
                            }
                        }
                        state.queue.push_back(value);
                        StartSend::Sent
                    }
                }
            };
            if matches!(answer, StartSend::Sent) {
                after.wake(state.read_waker.take());
            }
            answer
        };
        after.run();
        answer
    }
}

/// The stream's one send, claimed (see [`Sender::claim`]); dropping it unused gives
/// the claim back.
pub struct SendClaim<V> {
    shared: Option<Arc<Shared<V>>>,
}

impl<V> SendClaim<V> {
    /// Whether the send would wait for room if made now. Only a consumer can change
    /// that meanwhile, towards room (or towards a refusal, which does not wait either).
    pub fn would_wait(&self) -> bool {
        self.shared.as_ref().is_some_and(|shared| {
            let state = lock(&shared.state);
            state.overflow == Overflow::Wait
                && !state.has_room()
                && !state.cancel_requested
                && !state.receiver_gone
        })
    }

    /// Makes the claimed send, as [`Sender::start_send`]; never `Busy`.
    pub fn send(mut self, value: V) -> StartSend<V> {
        match self.shared.take() {
            Some(shared) => offer(&shared, value, true, true),
            None => StartSend::Closed(value),
        }
    }
}

impl<V> Drop for SendClaim<V> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            lock(&shared.state).claimed = false;
        }
    }
}

/// Registers a stream's cancel callback (see [`Sender::cancel_registration`]).
pub struct CancelRegistration<V>(Arc<Shared<V>>);

impl<V> CancelRegistration<V> {
    /// As [`Sender::on_cancel`].
    pub fn on_cancel(&self, callback: CancelCallback) -> Result<(), Error> {
        register_cancel(&self.0, callback)
    }
}

impl<V> Sender<V> {
    /// Whether the consumer asked the producer to stop (or is gone). Sends fail from
    /// then on; the producer should stop and drop or close the sender.
    pub fn is_cancelled(&self) -> bool {
        let state = lock(&self.shared.state);
        state.cancel_requested || state.receiver_gone
    }

    /// Resolves once [`Sender::is_cancelled`] is true.
    pub fn cancelled(&self) -> Cancelled<'_, V> {
        Cancelled(&self.shared)
    }

    /// Registers the callback that a cancellation request runs, once, on the
    /// requesting thread; at once on this thread if it was requested already. A
    /// second registration is `Error::Invalid` (and drops `callback`). Once the
    /// sender is consumed the callback is not running and never runs.
    pub fn on_cancel(&self, callback: CancelCallback) -> Result<(), Error> {
        register_cancel(&self.shared, callback)
    }

    /// Ends the stream after every value sent (a send still waiting included).
    pub fn close(mut self) {
        self.consume(End::Closed);
    }

    /// Fails the stream with `code` (0 counts as 1) and `message`, after every value
    /// sent.
    pub fn fail(mut self, code: i32, message: impl Into<Vec<u8>>) {
        self.consume(End::failed(code, message));
    }

    /// Makes dropping this sender leave the end undecided: the returned [`Ender`]
    /// decides it instead, unless the sender is closed or failed first (the first
    /// decision stands). For a producer that runs as a block owning the sender
    /// while its runner decides how the stream ends.
    #[cfg_attr(not(feature = "c-api"), allow(dead_code))]
    pub(crate) fn detach_end(mut self) -> (Sender<V>, Ender<V>) {
        self.ends_on_drop = false;
        let ender = Ender(Sender {
            shared: self.shared.clone(),
            ends_on_drop: true,
            consumed: false,
        });
        (self, ender)
    }

    fn consume(&mut self, end: End) {
        self.consumed = true;
        decide_end(&self.shared, end);
    }
}

impl<V> Drop for Sender<V> {
    fn drop(&mut self) {
        if !self.consumed && self.ends_on_drop {
            self.consumed = true;
            decide_end(
                &self.shared,
                End::failed(Error::Abandoned.code(), ABANDONED),
            );
        }
    }
}

/// The sender is consumed: the end is `end`, unless cancellation was requested first
/// ([`End::Cancelled`] then); it comes after a send still waiting. Waits for a cancel
/// callback running on another thread to return, so that none runs once this returns
/// (unless that callback waits, through other streams, for this thread).
fn decide_end<V>(shared: &Shared<V>, end: End) {
    let me = current_thread();
    let key = shared as *const Shared<V> as usize;
    let mut state = lock(&shared.state);
    loop {
        match state.cancelling_on {
            Some(thread) if thread != me => {
                {
                    let mut calls = cancel_calls();
                    if calls.would_wait_for_itself(me, key) {
                        break;
                    }
                    calls.waiting(me, key);
                }
                state = match shared.callback_returned.wait(state) {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                };
                cancel_calls().waited(me, key);
            }
            _ => break,
        }
    }
    if state.sender_consumed() {
        // Decided already (a detached sender closed, then its ender): the first
        // decision stands, so the end is seen once and never changes.
        return;
    }
    let unused = state.on_cancel.take();
    let end = if state.cancel_requested {
        End::Cancelled
    } else {
        end
    };
    let mut waker = None;
    if state.pending.is_some() {
        state.closing = Some(end);
    } else {
        state.end = Some(end);
        waker = state.read_waker.take();
    }
    drop(state);
    drop(unused);
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// Decides the end of a stream whose [`Sender`] was detached (see
/// [`Sender::detach_end`]): [`Ender::close`], [`Ender::fail`], [`Ender::cancel`] or
/// dropping it (abandoned).
#[cfg_attr(not(feature = "c-api"), allow(dead_code))]
pub(crate) struct Ender<V>(Sender<V>);

#[cfg_attr(not(feature = "c-api"), allow(dead_code))]
impl<V> Ender<V> {
    pub(crate) fn close(self) {
        self.0.close();
    }

    pub(crate) fn fail(self, code: i32, message: impl Into<Vec<u8>>) {
        self.0.fail(code, message);
    }

    /// Ends the stream [`End::Cancelled`]: the producer was stopped from outside (its
    /// bridge shut down).
    pub(crate) fn cancel(mut self) {
        self.0.consume(End::Cancelled);
    }

    /// Resolves once the consumer asked the producer to stop.
    pub(crate) fn cancelled(&self) -> Cancelled<'_, V> {
        self.0.cancelled()
    }
}

fn register_cancel<V>(shared: &Shared<V>, callback: CancelCallback) -> Result<(), Error> {
    let mut state = lock(&shared.state);
    if state.cancel_registered {
        drop(state);
        drop(callback);
        return Err(Error::Invalid);
    }
    state.cancel_registered = true;
    if state.end.is_some() || state.closing.is_some() {
        // Consumed already (only a registration handle outlives the sender).
        drop(state);
        drop(callback);
    } else if state.cancel_requested || state.receiver_gone {
        run_cancel_callback(shared, state, callback);
    } else {
        state.on_cancel = Some(callback);
    }
    Ok(())
}

/// Runs a cancel callback on this thread, marked as running so that consuming the
/// sender on another thread waits for it to return.
fn run_cancel_callback<V>(
    shared: &Shared<V>,
    state: MutexGuard<'_, State<V>>,
    callback: CancelCallback,
) {
    run_cancel_callback_then(shared, state, callback, Vec::new());
}

/// [`run_cancel_callback`], waking `wakers` first. The callback is marked as running
/// before the lock is let go: a consuming call that takes the lock after that waits for
/// it, and one that took it before had taken the callback away.
fn run_cancel_callback_then<V>(
    shared: &Shared<V>,
    mut state: MutexGuard<'_, State<V>>,
    callback: CancelCallback,
    wakers: Vec<Waker>,
) {
    let me = current_thread();
    let key = shared as *const Shared<V> as usize;
    state.cancelling_on = Some(me);
    cancel_calls().running(key, me);
    drop(state);
    // The wakers first: the callback may take a while (it must not block).
    wakers.into_iter().for_each(Waker::wake);
    if catch_unwind(AssertUnwindSafe(callback)).is_err() {
        eprintln!("asyncbridge: a stream's cancel callback panicked");
    }
    cancel_calls().returned(key, me);
    lock(&shared.state).cancelling_on = None;
    shared.callback_returned.notify_all();
}

/// The future of [`Sender::cancelled`].
pub struct Cancelled<'a, V>(&'a Shared<V>);

impl<V> std::future::Future for Cancelled<'_, V> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = lock(&self.0.state);
        if state.cancel_requested || state.receiver_gone {
            Poll::Ready(())
        } else {
            state.cancel_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// A send waiting for room in the stream's one pending-send slot (see
/// [`Sender::start_send`]). Dropping it while the value still waits drops the value,
/// unsent.
pub struct PendingSend<V> {
    shared: Option<Arc<Shared<V>>>,
}

impl<V> PendingSend<V> {
    /// Moves the value in once there is room and `commit()` agrees then.
    ///
    /// `Ready(Ok(()))`: the value is in the stream. `Ready(Err(value))`: it is not and
    /// will not be, because `commit()` refused, or because the consumer cancelled the
    /// stream (before the sender was consumed) or went away; the value comes back.
    /// `commit` runs under the stream's lock: it must not call into the stream.
    pub fn poll_sent(
        &mut self,
        cx: &mut Context<'_>,
        commit: impl FnOnce() -> bool,
    ) -> Poll<Result<(), V>> {
        let Some(shared) = self.shared.as_ref() else {
            return Poll::Pending;
        };
        let mut state = lock(&shared.state);
        let refused = state.receiver_gone || (state.cancel_requested && !state.sender_consumed());
        let answer = if refused {
            state.pending.take().map(Err)
        } else if state.has_room() {
            if commit() {
                state.pending.take().map(|value| {
                    state.queue.push_back(value);
                    Ok(())
                })
            } else {
                state.pending.take().map(Err)
            }
        } else {
            state.send_waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let Some(answer) = answer else {
            // Taken already: nothing can do that but this handle.
            return Poll::Pending;
        };
        let mut wakers = Vec::new();
        if answer.is_ok() {
            wakers.extend(state.read_waker.take());
        }
        wakers.extend(resolve_closing(&mut state));
        drop(state);
        self.shared = None;
        for waker in wakers {
            waker.wake();
        }
        Poll::Ready(answer)
    }
}

/// The pending send resolved: the end a consumed sender chose comes now.
fn resolve_closing<V>(state: &mut State<V>) -> Option<Waker> {
    let end = state.closing.take()?;
    state.end = Some(end);
    state.read_waker.take()
}

impl<V> Drop for PendingSend<V> {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let (value, waker) = {
            let mut state = lock(&shared.state);
            let value = state.pending.take();
            (value, resolve_closing(&mut state))
        };
        drop(value);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Asks the producer to stop: sends fail from now on, a waiting one gives its value
/// back, and the cancel callback runs here. Nothing if the sender was consumed first.
fn request_cancel<V>(shared: &Shared<V>) {
    let mut state = lock(&shared.state);
    if state.cancel_requested || state.sender_consumed() {
        return;
    }
    state.cancel_requested = true;
    let wakers: Vec<Waker> = [state.send_waker.take(), state.cancel_waker.take()]
        .into_iter()
        .flatten()
        .collect();
    match state.on_cancel.take() {
        Some(callback) => run_cancel_callback_then(shared, state, callback, wakers),
        None => {
            drop(state);
            wakers.into_iter().for_each(Waker::wake);
        }
    }
}

/// The consumer's side of a stream; see the module documentation.
///
/// Dropping it cancels the stream if the sender was not consumed yet, drops the
/// values still queued, and refuses every later send.
pub struct Receiver<V> {
    shared: Arc<Shared<V>>,
}

impl<V> std::fmt::Debug for Receiver<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<V> {
    /// The next value, taken.
    Value(V),
    /// The end (not taken: every later read sees it again).
    End(End),
    /// A value is there but `commit()` refused it: it stays for the next read.
    Withheld,
    /// The receiver was dropped: nothing more will be read.
    Gone,
}

impl<V> Receiver<V> {
    /// The next value, or the end once every value was taken (and on every later
    /// call). Cancel-safe: dropping the future loses no value.
    pub async fn recv(&mut self) -> Result<V, End> {
        let shared = &self.shared;
        std::future::poll_fn(|cx| match poll_read(shared, cx, || true) {
            Poll::Ready(Item::Value(value)) => Poll::Ready(Ok(value)),
            Poll::Ready(Item::End(end)) => Poll::Ready(Err(end)),
            // This receiver is alive, and always commits.
            Poll::Ready(Item::Withheld | Item::Gone) | Poll::Pending => Poll::Pending,
        })
        .await
    }

    /// The next value or the end if there is one now.
    pub fn try_recv(&mut self) -> Option<Result<V, End>> {
        let waker = Waker::from(Arc::new(NoWake));
        match poll_read(&self.shared, &mut Context::from_waker(&waker), || true) {
            Poll::Ready(Item::Value(value)) => Some(Ok(value)),
            Poll::Ready(Item::End(end)) => Some(Err(end)),
            _ => None,
        }
    }

    /// Asks the producer to stop (see [`Sender::is_cancelled`]). The values sent
    /// before are still read, then the end: [`End::Cancelled`] once the producer has
    /// stopped (its sender consumed). If the sender was consumed first, nothing
    /// changes. Its cancel callback runs on this thread.
    pub fn cancel(&self) {
        request_cancel(&self.shared);
    }

    /// How many values the overflow policy dropped.
    pub fn dropped(&self) -> u64 {
        lock(&self.shared.state).dropped
    }

    /// The one reader of this receiver, for a read that waits elsewhere (a future of a
    /// bridge); `Error::Busy` while another exists, and for good once one went to
    /// push mode ([`Reader::into_push`]).
    pub fn reader(&self) -> Result<Reader<V>, Error> {
        let mut state = lock(&self.shared.state);
        if state.reading != Reading::Idle {
            return Err(Error::Busy);
        }
        state.reading = Reading::Busy;
        Ok(Reader {
            shared: self.shared.clone(),
        })
    }
}

impl<V> Drop for Receiver<V> {
    fn drop(&mut self) {
        request_cancel(&self.shared);
        let (queued, wakers) = {
            let mut state = lock(&self.shared.state);
            state.receiver_gone = true;
            let queued = std::mem::take(&mut state.queue);
            let wakers: Vec<Waker> = [
                state.send_waker.take(),
                state.cancel_waker.take(),
                state.read_waker.take(),
            ]
            .into_iter()
            .flatten()
            .collect();
            (queued, wakers)
        };
        drop(queued);
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// One read step: the front value (taken if `commit()` agrees), else the end, else
/// waits.
fn poll_read<V>(
    shared: &Shared<V>,
    cx: &mut Context<'_>,
    commit: impl FnOnce() -> bool,
) -> Poll<Item<V>> {
    let mut state = lock(&shared.state);
    if state.receiver_gone {
        return Poll::Ready(Item::Gone);
    }
    if !state.queue.is_empty() {
        if !commit() {
            return Poll::Ready(Item::Withheld);
        }
        let value = state.queue.pop_front();
        let mut wakers: Vec<Waker> = state.send_waker.take().into_iter().collect();
        // Room for a waiting send: it goes in when its poller runs.
        drop(state);
        wakers.drain(..).for_each(Waker::wake);
        return match value {
            Some(value) => Poll::Ready(Item::Value(value)),
            None => Poll::Pending,
        };
    }
    if state.in_flight == 0 && state.pending.is_none() {
        if let Some(end) = &state.end {
            return Poll::Ready(Item::End(end.clone()));
        }
    }
    state.read_waker = Some(cx.waker().clone());
    Poll::Pending
}

/// A waker for a read that does not wait.
struct NoWake;

impl std::task::Wake for NoWake {
    fn wake(self: Arc<Self>) {}
}

/// The one reader of a [`Receiver`] (see [`Receiver::reader`]); dropping it lets the
/// next one be made.
pub struct Reader<V> {
    shared: Arc<Shared<V>>,
}

impl<V> Reader<V> {
    /// Reads the next value if `commit()` agrees when one is there (a value it refuses
    /// stays for the next read), else the end, else waits. `commit` runs under the
    /// stream's lock: it must not call into the stream.
    pub fn poll_read(&self, cx: &mut Context<'_>, commit: impl FnOnce() -> bool) -> Poll<Item<V>> {
        poll_read(&self.shared, cx, commit)
    }

    /// Asks the producer to stop, as [`Receiver::cancel`].
    pub fn cancel(&self) {
        request_cancel(&self.shared);
    }

    /// Turns this reader into push mode for good: no other reader is ever made.
    pub fn into_push(self) -> Pusher<V> {
        lock(&self.shared.state).reading = Reading::Pushed;
        Pusher {
            shared: self.shared.clone(),
            stopped: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }
}

impl<V> Drop for Reader<V> {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        if state.reading == Reading::Busy {
            state.reading = Reading::Idle;
        }
    }
}

/// What push mode found (see [`Pusher::poll_batch`]).
pub enum Pushed<V> {
    /// Every value queued now, taken in order; they count against the capacity until
    /// each is delivered or dropped.
    Batch(Batch<V>),
    /// The end, after every batch was delivered.
    End(End),
    /// The receiver was dropped.
    Gone,
}

/// Push mode: values taken in batches, each handed to a callback elsewhere (a
/// completion queue's dispatch). Dropping it stops the delivery: values of batches
/// not delivered yet are dropped without being handed over.
pub struct Pusher<V> {
    shared: Arc<Shared<V>>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl<V> Pusher<V> {
    /// The next batch once the previous one was delivered; the end once every value
    /// was; else waits.
    pub fn poll_batch(&self, cx: &mut Context<'_>) -> Poll<Pushed<V>> {
        let mut state = lock(&self.shared.state);
        if state.receiver_gone {
            return Poll::Ready(Pushed::Gone);
        }
        if state.in_flight == 0 {
            if !state.queue.is_empty() {
                let values = std::mem::take(&mut state.queue);
                state.in_flight = values.len();
                return Poll::Ready(Pushed::Batch(Batch {
                    values,
                    shared: self.shared.clone(),
                    stopped: self.stopped.clone(),
                }));
            }
            if state.pending.is_none() {
                if let Some(end) = &state.end {
                    return Poll::Ready(Pushed::End(end.clone()));
                }
            }
        }
        state.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Waits until every batch taken was delivered (or dropped).
    pub fn poll_delivered(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = lock(&self.shared.state);
        if state.in_flight == 0 {
            Poll::Ready(())
        } else {
            state.read_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// Asks the producer to stop, as [`Receiver::cancel`].
    pub fn cancel(&self) {
        request_cancel(&self.shared);
    }
}

impl<V> Drop for Pusher<V> {
    fn drop(&mut self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Nobody reads any more: the producer should stop (nothing if it has).
        request_cancel(&self.shared);
    }
}

/// Values taken by push mode, to hand over one by one ([`Batch::deliver`]). Each
/// value counts against the stream's capacity until it was handed over and dropped;
/// dropping the batch drops what is left.
pub struct Batch<V> {
    values: VecDeque<V>,
    shared: Arc<Shared<V>>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl<V> Batch<V> {
    /// Calls `f` with each value in order, then drops it. Stops handing values over
    /// (dropping the rest) once the push mode stopped or the receiver went away.
    pub fn deliver(mut self, mut f: impl FnMut(&V)) {
        while let Some(value) = self.values.pop_front() {
            let live = !self.stopped.load(std::sync::atomic::Ordering::SeqCst)
                && !lock(&self.shared.state).receiver_gone;
            if live {
                f(&value);
            }
            drop(value);
            acknowledge(&self.shared, 1);
        }
    }

    /// How many values are left.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no value is left.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// `count` values of a batch are over: room for the producer, and maybe the end for
/// the pusher.
fn acknowledge<V>(shared: &Shared<V>, count: usize) {
    let wakers: Vec<Waker> = {
        let mut state = lock(&shared.state);
        state.in_flight = state.in_flight.saturating_sub(count);
        [state.send_waker.take(), state.read_waker.take()]
            .into_iter()
            .flatten()
            .collect()
    };
    wakers.into_iter().for_each(Waker::wake);
}

impl<V> Drop for Batch<V> {
    fn drop(&mut self) {
        let left = std::mem::take(&mut self.values);
        let count = left.len();
        drop(left);
        if count > 0 {
            acknowledge(&self.shared, count);
        }
    }
}

#[cfg(all(test, not(asyncbridge_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts its drops.
    #[derive(Debug)]
    struct Counted(Arc<AtomicUsize>, usize);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn async_send_waits_for_room_and_the_end_repeats() {
        let (mut tx, mut rx) = channel::<u32>(Options {
            capacity: 2,
            overflow: Overflow::Wait,
        });
        let producer = std::thread::spawn(move || {
            runtime().block_on(async {
                for i in 0..50 {
                    tx.send(i).await.unwrap();
                }
                tx.close();
            })
        });
        let got: Vec<u32> = runtime().block_on(async {
            let mut got = Vec::new();
            while let Ok(v) = rx.recv().await {
                got.push(v);
            }
            got
        });
        producer.join().unwrap();
        assert_eq!(got, (0..50).collect::<Vec<_>>());
        assert_eq!(rx.try_recv(), Some(Err(End::Closed)));
        assert_eq!(rx.try_recv(), Some(Err(End::Closed)));
    }

    #[test]
    fn try_send_is_full_at_capacity_and_a_pending_send_goes_in_after_a_read() {
        let (tx, mut rx) = channel::<u32>(Options {
            capacity: 1,
            overflow: Overflow::Wait,
        });
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx.try_send(2), Err(TrySendError::Full(2)));
        let StartSend::Waiting(mut pending) = tx.start_send(2) else {
            panic!("no room: the send waits");
        };
        assert!(matches!(tx.start_send(3), StartSend::Busy(3)));
        let waker = Waker::from(Arc::new(NoWake));
        let mut cx = Context::from_waker(&waker);
        assert!(pending.poll_sent(&mut cx, || true).is_pending());
        assert_eq!(rx.try_recv(), Some(Ok(1)));
        assert_eq!(pending.poll_sent(&mut cx, || true), Poll::Ready(Ok(())));
        assert_eq!(rx.try_recv(), Some(Ok(2)));
        drop(tx);
        assert!(
            matches!(rx.try_recv(), Some(Err(End::Failed { code, .. })) if code == Error::Abandoned.code())
        );
    }

    #[test]
    fn a_refused_commit_leaves_the_value_and_the_pending_send() {
        let (tx, rx) = channel::<u32>(Options {
            capacity: 1,
            overflow: Overflow::Wait,
        });
        tx.try_send(7).unwrap();
        let reader = rx.reader().unwrap();
        assert!(matches!(rx.reader(), Err(Error::Busy)));
        let waker = Waker::from(Arc::new(NoWake));
        let mut cx = Context::from_waker(&waker);
        assert_eq!(
            reader.poll_read(&mut cx, || false),
            Poll::Ready(Item::Withheld)
        );
        assert_eq!(
            reader.poll_read(&mut cx, || true),
            Poll::Ready(Item::Value(7))
        );
        drop(reader);
        tx.try_send(9).unwrap();
        let StartSend::Waiting(mut pending) = tx.start_send(8) else {
            unreachable!()
        };
        tx.try_send(0).unwrap_err();
        drop(rx);
        // The consumer went: the waiting value comes back.
        assert_eq!(pending.poll_sent(&mut cx, || true), Poll::Ready(Err(8)));
    }

    #[test]
    fn cancel_lets_queued_values_through_then_ends_cancelled_once_consumed() {
        let drops = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = channel::<Counted>(Options::default());
        tx.try_send(Counted(drops.clone(), 0)).unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        tx.on_cancel(Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }))
        .unwrap();
        rx.cancel();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(tx.is_cancelled());
        match tx.try_send(Counted(drops.clone(), 1)) {
            Err(TrySendError::Closed(v)) => drop(v),
            _ => panic!("refused after the request"),
        }
        assert!(matches!(rx.try_recv(), Some(Ok(Counted(_, 0)))));
        assert!(rx.try_recv().is_none(), "not ended while the producer runs");
        tx.close();
        assert!(matches!(rx.try_recv(), Some(Err(End::Cancelled))));
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn dropping_the_receiver_drops_what_is_queued() {
        let drops = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = channel::<Counted>(Options::default());
        for i in 0..5 {
            tx.try_send(Counted(drops.clone(), i)).unwrap();
        }
        drop(rx);
        assert_eq!(drops.load(Ordering::SeqCst), 5);
        assert!(tx.is_cancelled());
        runtime().block_on(tx.cancelled());
    }

    #[test]
    fn drop_oldest_and_keep_latest_count_what_they_drop() {
        let (tx, mut rx) = channel::<u32>(Options {
            capacity: 2,
            overflow: Overflow::DropOldest,
        });
        for i in 0..5 {
            tx.try_send(i).unwrap();
        }
        assert_eq!(rx.dropped(), 3);
        assert_eq!(rx.try_recv(), Some(Ok(3)));
        let (tx, mut rx) = channel::<u32>(Options {
            capacity: 9,
            overflow: Overflow::KeepLatest,
        });
        for i in 0..5 {
            tx.try_send(i).unwrap();
        }
        assert_eq!((rx.dropped(), rx.try_recv()), (4, Some(Ok(4))));
    }

    #[test]
    fn the_first_decision_of_the_end_stands() {
        let (tx, mut rx) = channel::<u32>(Options::default());
        let (tx, ender) = tx.detach_end();
        tx.close();
        ender.fail(5, "too late");
        assert_eq!(rx.try_recv(), Some(Err(End::Closed)));

        let (tx, mut rx) = channel::<u32>(Options::default());
        let (tx, ender) = tx.detach_end();
        drop(tx);
        assert!(
            rx.try_recv().is_none(),
            "a detached sender's drop decides nothing"
        );
        drop(ender);
        assert!(
            matches!(rx.try_recv(), Some(Err(End::Failed { code, .. })) if code == Error::Abandoned.code())
        );
    }

    #[test]
    fn push_batches_count_until_delivered() {
        let (tx, rx) = channel::<u32>(Options {
            capacity: 2,
            overflow: Overflow::Wait,
        });
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        let pusher = rx.reader().unwrap().into_push();
        assert!(
            matches!(rx.reader(), Err(Error::Busy)),
            "push mode is for good"
        );
        let waker = Waker::from(Arc::new(NoWake));
        let mut cx = Context::from_waker(&waker);
        let Poll::Ready(Pushed::Batch(batch)) = pusher.poll_batch(&mut cx) else {
            panic!("a batch");
        };
        assert_eq!(batch.len(), 2);
        assert!(
            matches!(tx.try_send(3), Err(TrySendError::Full(3))),
            "in flight counts"
        );
        tx.close();
        assert!(
            pusher.poll_batch(&mut cx).is_pending(),
            "the end waits for delivery"
        );
        let mut seen = Vec::new();
        batch.deliver(|v| seen.push(*v));
        assert_eq!(seen, vec![1, 2]);
        assert!(matches!(
            pusher.poll_batch(&mut cx),
            Poll::Ready(Pushed::End(End::Closed))
        ));
    }
}

/// loom models of the cancel protocol: every interleaving of a cancellation request
/// and the consuming call. Run with
/// `RUSTFLAGS="--cfg asyncbridge_loom" cargo test --release --lib stream::loom_models`.
#[cfg(all(test, asyncbridge_loom))]
mod loom_models {
    use super::*;
    use crate::sync::{AtomicBool, AtomicUsize, Ordering};
    use loom::thread;

    #[test]
    fn cancel_and_close_are_ordered() {
        loom::model(|| {
            let (tx, mut rx) = channel::<u32>(Options::default());
            let ran = Arc::new(AtomicUsize::new(0));
            let closed = Arc::new(AtomicBool::new(false));
            let (r, c) = (ran.clone(), closed.clone());
            tx.on_cancel(Box::new(move || {
                assert!(!c.load(Ordering::SeqCst), "ran after the close returned");
                r.fetch_add(1, Ordering::SeqCst);
            }))
            .unwrap();
            let c = closed.clone();
            let closer = thread::spawn(move || {
                tx.close();
                c.store(true, Ordering::SeqCst);
            });
            rx.cancel();
            closer.join().unwrap();
            let end = rx.try_recv();
            let cancelled = matches!(end, Some(Err(End::Cancelled)));
            assert!(cancelled || matches!(end, Some(Err(End::Closed))));
            assert_eq!(cancelled, ran.load(Ordering::SeqCst) == 1);
        });
    }

    #[test]
    fn a_waiting_send_and_a_cancel_free_the_value_once() {
        loom::model(|| {
            let (tx, mut rx) = channel::<u32>(Options {
                capacity: 1,
                overflow: Overflow::Wait,
            });
            tx.try_send(1).unwrap();
            let StartSend::Waiting(mut pending) = tx.start_send(2) else {
                panic!("full: the send waits");
            };
            let reader = thread::spawn(move || {
                let first = rx.try_recv();
                rx.cancel();
                (first, rx)
            });
            let waker = Waker::from(Arc::new(NoWake));
            let mut cx = Context::from_waker(&waker);
            let sent = pending.poll_sent(&mut cx, || true);
            let (first, mut rx) = reader.join().unwrap();
            assert_eq!(first, Some(Ok(1)));
            drop(pending);
            tx.close();
            // In, and read before the end; or refused and given back: never both.
            let second = rx.try_recv();
            match sent {
                Poll::Ready(Ok(())) => assert_eq!(second, Some(Ok(2))),
                Poll::Ready(Err(2)) | Poll::Pending => {
                    assert_eq!(second, Some(Err(End::Cancelled)))
                }
                Poll::Ready(Err(other)) => panic!("gave back {other}"),
            }
        });
    }
}
