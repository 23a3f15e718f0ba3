//! Recurring sources: periodic timers and Unix signal watches.
//!
//! Both turn events into calls of one callback with a count of the events since the
//! last call, made on the bridge's loop or through a completion queue. Events that
//! come while a call is queued are added to its count (never a burst of calls).
//! `stop` guarantees that no call starts after it returns, and waits for one running
//! on another thread; called from the callback itself it does not wait, nor when the
//! call it would wait for is itself waiting for the calling thread (two ticks that
//! stop each other's source), which would never end.

use std::cell::Cell;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::delivery::queue::CompletionQueue;
use crate::delivery::{Entry, Target};
use crate::runtime::Bridge;
use crate::status::Error;
use crate::sync::{lock, Arc, Mutex, Ordering, WaitGraph};
use crate::sys::wakeup::Wakeup;

/// Called with the number of events since the previous call.
pub type SourceCallback = Box<dyn Fn(&Source, u64) + Send + Sync>;

struct Counts {
    stopped: bool,
    /// A queued call has not run yet.
    queued: bool,
    /// Events not yet passed to a call.
    pending: u64,
}

/// A periodic timer or a signal watch. Made by [`Source::timer`] or
/// [`Source::signal`]; stopped by [`Source::stop`] (dropping the last reference of
/// a running source does not stop it: its task holds one).
pub struct Source {
    counts: Mutex<Counts>,
    /// Held while the callback runs, so `stop` can wait for a call to end.
    calling: Mutex<()>,
    /// Names the source in [`CALLS`].
    id: u64,
    /// Taken out (and dropped, once no call is running) by `stop`.
    callback: Mutex<Option<Arc<SourceCallback>>>,
    delivery: Option<Arc<CompletionQueue>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
    /// Undoes the registration of a signal action.
    unregister: Mutex<Option<signal_hook_registry::SigId>>,
}

thread_local! {
    static THREAD_TOKEN: Cell<u64> = const { Cell::new(0) };
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
static NEXT_SOURCE: AtomicU64 = AtomicU64::new(1);

/// Who is calling which source, and which source each stopping thread waits for,
/// across all sources (sources by id, threads by token): a stop that would close a
/// cycle of waits does not wait.
static CALLS: Mutex<WaitGraph<u64, u64>> = Mutex::new(WaitGraph::new());

/// A number naming the calling thread, never 0.
fn thread_token() -> u64 {
    THREAD_TOKEN.with(|t| {
        if t.get() == 0 {
            t.set(NEXT_TOKEN.fetch_add(1, Ordering::Relaxed));
        }
        t.get()
    })
}

impl Source {
    fn new(callback: SourceCallback, delivery: Option<Arc<CompletionQueue>>) -> Arc<Source> {
        Arc::new(Source {
            counts: Mutex::new(Counts {
                stopped: false,
                queued: false,
                pending: 0,
            }),
            calling: Mutex::new(()),
            id: NEXT_SOURCE.fetch_add(1, Ordering::Relaxed),
            callback: Mutex::new(Some(Arc::new(callback))),
            delivery,
            task: Mutex::new(None),
            unregister: Mutex::new(None),
        })
    }

    /// A timer whose first tick comes after `first`, then every `period` (zero: it
    /// ticks once). A tick that comes late counts the periods that passed meanwhile,
    /// and the next is due on the original schedule: late ticks never come in a burst.
    /// Calls run on the loop (`delivery` `None`) or through `delivery`.
    pub fn timer(
        bridge: &Bridge,
        first: Duration,
        period: Duration,
        callback: SourceCallback,
        delivery: Option<Arc<CompletionQueue>>,
    ) -> Result<Arc<Source>, Error> {
        let shared = bridge.shared_for_sources()?;
        let source = Source::new(callback, delivery);
        let ticking = source.clone();
        let task = shared.handle().spawn(async move {
            let mut due = tokio::time::Instant::now() + first;
            loop {
                tokio::time::sleep_until(due).await;
                if period.is_zero() {
                    ticking.fire(1);
                    return;
                }
                let late = tokio::time::Instant::now().saturating_duration_since(due);
                let missed = (late.as_nanos() / period.as_nanos()) as u64;
                let ticks = missed.saturating_add(1);
                due += period * u32::try_from(ticks).unwrap_or(u32::MAX);
                ticking.fire(ticks);
            }
        });
        *lock(&source.task) = Some(task.abort_handle());
        Ok(source)
    }

    /// A watch of Unix signal `signum`: every arrival is counted, in the signal handler
    /// (which does nothing else), and the counts are passed to calls on the loop or
    /// through `delivery`. Several watches of one signal all see every arrival.
    ///
    /// `Error::Invalid` for a signal that cannot be caught or that the process needs
    /// to crash on (SIGKILL, SIGSTOP, SIGSEGV, SIGBUS, SIGILL, SIGFPE) or an unknown
    /// number. Once a signal has been watched, a handler for it stays installed: while
    /// no watch exists its arrivals are dropped (a handler installed before the first
    /// watch is still called), and its default action no longer happens.
    pub fn signal(
        bridge: &Bridge,
        signum: i32,
        callback: SourceCallback,
        delivery: Option<Arc<CompletionQueue>>,
    ) -> Result<Arc<Source>, Error> {
        if [
            libc::SIGKILL,
            libc::SIGSTOP,
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
        ]
        .contains(&signum)
            || !(1..=libc::SIGRTMAX()).contains(&signum)
        {
            return Err(Error::Invalid);
        }
        let shared = bridge.shared_for_sources()?;
        let wakeup = Wakeup::new().map_err(|_| Error::NotRunning)?;
        let arrivals = Arc::new(SignalArrivals {
            count: std::sync::atomic::AtomicU64::new(0),
            wakeup,
        });
        // The readiness of the descriptor must be registered with the runtime's I/O
        // driver, which only its context can do.
        let readable = {
            let _context = shared.handle().enter();
            // SAFETY: the descriptor belongs to `arrivals`, which the AsyncFd holds, so
            // it stays open and the same for the AsyncFd's whole life.
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    arrivals.clone(),
                    tokio::io::Interest::READABLE,
                )
            }
            .map_err(|_| Error::NotRunning)?
        };
        let in_handler = arrivals.clone();
        // SAFETY: the action only adds to an atomic and writes 8 bytes to an eventfd
        // (a pipe elsewhere), both async-signal-safe; it allocates nothing and takes
        // no lock.
        let id = unsafe {
            signal_hook_registry::register(signum, move || {
                in_handler
                    .count
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                in_handler.wakeup.raise();
            })
        }
        .map_err(|_| Error::Invalid)?;
        let source = Source::new(callback, delivery);
        *lock(&source.unregister) = Some(id);
        let watching = source.clone();
        let task = shared.handle().spawn(async move {
            loop {
                let Ok(mut ready) = readable.readable().await else {
                    return;
                };
                let arrivals = ready.get_inner();
                arrivals.wakeup.clear();
                let count = arrivals.count.swap(0, std::sync::atomic::Ordering::SeqCst);
                ready.clear_ready();
                if count > 0 {
                    watching.fire(count);
                }
            }
        });
        *lock(&source.task) = Some(task.abort_handle());
        Ok(source)
    }

    /// Passes `events` on: a call now (on the loop), or one queued call that adds up
    /// everything that comes before it runs.
    fn fire(self: &Arc<Self>, events: u64) {
        let Some(delivery) = &self.delivery else {
            self.call(events);
            return;
        };
        let queue_one = {
            let mut counts = lock(&self.counts);
            if counts.stopped {
                return;
            }
            counts.pending = counts.pending.saturating_add(events);
            !std::mem::replace(&mut counts.queued, true)
        };
        if !queue_one {
            return;
        }
        let target: Arc<dyn Target> = self.clone();
        match delivery.push(Entry::to(target, 0)) {
            Ok(edge) => {
                if edge {
                    delivery.call_notify();
                }
            }
            Err(refused) => {
                drop(refused);
                // The queue is gone: nothing can deliver these events any more.
                self.stop();
            }
        }
    }

    /// Calls the callback unless stopped; returns whether it did.
    fn call(&self, events: u64) -> bool {
        let _calling = lock(&self.calling);
        if lock(&self.counts).stopped {
            return false;
        }
        let me = (self.id, thread_token());
        lock(&CALLS).running(me.0, me.1);
        /// Unregisters the call even if a Rust callback panics.
        struct Called((u64, u64));
        impl Drop for Called {
            fn drop(&mut self) {
                lock(&CALLS).returned(self.0 .0, self.0 .1);
            }
        }
        let _called = Called(me);
        let Some(callback) = lock(&self.callback).clone() else {
            return false;
        };
        callback(self, events);
        true
    }

    /// Stops the source: no call starts after this returns. A call running on another
    /// thread is waited for, unless waiting would never end: called from the callback
    /// itself, or when that call is waiting (through other stops) for a call the
    /// calling thread is making, it returns at once and the running call is the last.
    /// The callback is dropped once no call of it runs: here, or when the running call
    /// returns.
    pub fn stop(&self) {
        lock(&self.counts).stopped = true;
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
        if let Some(id) = lock(&self.unregister).take() {
            signal_hook_registry::unregister(id);
        }
        let wait = (thread_token(), self.id);
        {
            let mut calls = lock(&CALLS);
            if calls.would_wait_for_itself(wait.0, wait.1) {
                drop(calls);
                self.drop_callback();
                return;
            }
            // Under the same lock as the check: of two stops that would wait for
            // each other, the second sees the first and does not wait.
            calls.waiting(wait.0, wait.1);
        }
        drop(lock(&self.calling));
        lock(&CALLS).waited(wait.0, wait.1);
        self.drop_callback();
    }

    /// Drops the callback, and with it what it owns: here if no call is running, else
    /// when the running call (which stopped the source, or which this stop did not
    /// wait for) returns.
    fn drop_callback(&self) {
        let callback = lock(&self.callback).take();
        drop(callback);
    }

    /// Whether [`Source::stop`] was called (or the queue it delivered to was freed).
    pub fn is_stopped(&self) -> bool {
        lock(&self.counts).stopped
    }
}

impl Target for Source {
    fn deliver(self: Arc<Self>, _: u64) -> bool {
        let events = {
            let mut counts = lock(&self.counts);
            counts.queued = false;
            if counts.stopped {
                return false;
            }
            std::mem::take(&mut counts.pending)
        };
        events > 0 && self.call(events)
    }

    fn discard(self: Arc<Self>, _: u64) {
        lock(&self.counts).queued = false;
    }
}

/// What a signal handler shares with its watch's task.
struct SignalArrivals {
    count: std::sync::atomic::AtomicU64,
    wakeup: Wakeup,
}

impl std::os::fd::AsRawFd for SignalArrivals {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.wakeup.fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Config;
    use std::sync::atomic::AtomicU64 as StdAtomicU64;
    use std::time::Instant;

    fn counting(total: &Arc<StdAtomicU64>) -> SourceCallback {
        let total = total.clone();
        Box::new(move |_, n| {
            total.fetch_add(n, Ordering::SeqCst);
        })
    }

    fn wait_for(what: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !what() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        what()
    }

    #[test]
    fn timer_ticks_then_stops_for_good() {
        let bridge = Bridge::start(Config::default()).unwrap();
        let ticks = Arc::new(StdAtomicU64::new(0));
        let timer = Source::timer(
            &bridge,
            Duration::from_millis(5),
            Duration::from_millis(5),
            counting(&ticks),
            None,
        )
        .unwrap();
        assert!(wait_for(|| ticks.load(Ordering::SeqCst) >= 3));
        timer.stop();
        let at_stop = ticks.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(ticks.load(Ordering::SeqCst), at_stop);
    }

    #[test]
    fn signals_are_counted_exactly() {
        let bridge = Bridge::start(Config::default()).unwrap();
        let (a, b) = (
            Arc::new(StdAtomicU64::new(0)),
            Arc::new(StdAtomicU64::new(0)),
        );
        let first = Source::signal(&bridge, libc::SIGUSR2, counting(&a), None).unwrap();
        let second = Source::signal(&bridge, libc::SIGUSR2, counting(&b), None).unwrap();
        for _ in 0..100 {
            // SAFETY: raise delivers SIGUSR2 to this thread, whose handler only counts.
            unsafe { libc::raise(libc::SIGUSR2) };
        }
        assert!(wait_for(
            || a.load(Ordering::SeqCst) == 100 && b.load(Ordering::SeqCst) == 100
        ));
        first.stop();
        // SAFETY: as above.
        unsafe { libc::raise(libc::SIGUSR2) };
        assert!(wait_for(|| b.load(Ordering::SeqCst) == 101));
        assert_eq!(a.load(Ordering::SeqCst), 100, "stopped");
        second.stop();
        assert!(matches!(
            Source::signal(&bridge, libc::SIGKILL, counting(&a), None),
            Err(Error::Invalid)
        ));
    }

    /// Two ticks running at once, each stopping the other's timer, used to wait for
    /// each other in `stop` for ever, and the loop with them.
    #[test]
    fn ticks_that_stop_each_other_do_not_deadlock() {
        use crate::delivery::queue::CompletionQueue;
        use crate::future::Boxed;
        use std::sync::atomic::AtomicBool;
        use std::sync::{OnceLock, Weak};
        // Weak, so the two sources (each callback holding the other) do not keep each
        // other alive after the test.
        type Slot = Arc<OnceLock<Weak<Source>>>;
        let bridge = Bridge::start(Config::default()).unwrap();
        let queue = Arc::new(CompletionQueue::new());
        let returned = Arc::new(StdAtomicU64::new(0));
        // Each tick says it runs, waits (bounded) until the other one runs too, then
        // stops the other's timer.
        let tick = |me: Arc<AtomicBool>, other: Arc<AtomicBool>, target: Slot| {
            let returned = returned.clone();
            Box::new(move |_: &Source, _| {
                me.store(true, Ordering::SeqCst);
                let deadline = Instant::now() + Duration::from_millis(500);
                while !other.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_micros(200));
                }
                std::thread::sleep(Duration::from_millis(3));
                if let Some(timer) = target.get().and_then(Weak::upgrade) {
                    timer.stop();
                }
                returned.fetch_add(1, Ordering::SeqCst);
            }) as SourceCallback
        };
        let (a_runs, b_runs) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (a_slot, b_slot): (Slot, Slot) = Default::default();
        // B ticks first, through the queue; A a little later, on the loop (where its
        // wait holds the loop, so B must already be running by then).
        let b = Source::timer(
            &bridge,
            Duration::from_millis(5),
            Duration::from_millis(1),
            tick(b_runs.clone(), a_runs.clone(), a_slot.clone()),
            Some(queue.clone()),
        )
        .unwrap();
        let a = Source::timer(
            &bridge,
            Duration::from_millis(60),
            Duration::from_millis(1),
            tick(a_runs.clone(), b_runs.clone(), b_slot.clone()),
            None,
        )
        .unwrap();
        let _ = (
            a_slot.set(Arc::downgrade(&a)),
            b_slot.set(Arc::downgrade(&b)),
        );
        let (q, (a2, b2)) = (queue.clone(), (a.clone(), b.clone()));
        let dispatcher = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !(a2.is_stopped() && b2.is_stopped()) && Instant::now() < deadline {
                if q.wait(Some(Duration::from_millis(5))) == Ok(crate::Status::Ok) {
                    q.dispatch(0);
                }
            }
        });
        dispatcher.join().unwrap();
        assert!(a.is_stopped() && b.is_stopped());
        assert!(
            wait_for(|| returned.load(Ordering::SeqCst) >= 2),
            "both ticks returned"
        );
        // The loop still runs.
        let f = bridge.sleep::<Boxed<u8>>(Duration::from_millis(1)).unwrap();
        assert_eq!(f.wait(Some(Duration::from_secs(20))), Ok(crate::Status::Ok));
        // A tick may still be queued (it holds B, which holds the queue): the queue is
        // closed like a C program's bridge_queue_free would, so nothing is kept.
        queue.close();
    }
}
