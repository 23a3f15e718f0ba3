//! Timeouts on futures.

use std::time::Duration;

use crate::future::{Future, Kind};
use crate::status::Error;

impl<K: Kind> Future<K> {
    /// Gives the future `limit`: still pending then, its work is cancelled and it
    /// ends `Failed` with `Error::TimedOut`'s code and a message naming the limit.
    /// Finished first (or cancelled first): no effect.
    ///
    /// The timer runs on the future's bridge; `Error::NotRunning` if that bridge is
    /// gone or shut down while the future is still pending.
    pub fn set_timeout(&self, limit: Duration) -> Result<(), Error> {
        if self.status().is_final() {
            return Ok(());
        }
        let sched = match self.owner().sched() {
            Some(sched) if sched.is_running() => sched,
            _ => return Err(Error::NotRunning),
        };
        let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let target = self.internal();
        let stop = sched.after(limit, Box::new(move || target.time_out(ms)))?;
        // Finishing first stops the timer, so it does not hold the future for long.
        self.on_done_internal(Box::new(move |_| stop()))
    }
}
