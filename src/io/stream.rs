//! Byte streams: one connection (TCP, Unix, TLS) or one process pipe, read and written
//! by operations that each become a future.
//!
//! A [`Stream`] holds a read side and a write side. Each side takes one operation at a
//! time: [`Stream::begin_read`] (and `begin_write`, `begin_shutdown`) claims the side at
//! the call, synchronously, so that a second claim while the first is pending is
//! `Error::Busy` at once; the returned operation then runs as an async block on the
//! embedding API and gives the side back when it ends, whether it finished, failed or
//! was dropped by a cancellation. [`Stream::close`] ends the operations that wait with
//! `Error::Closed` and lets go of the I/O object.
//!
//! Reads allocate nothing while they wait: a pending read holds no buffer, and a ready
//! one copies what arrived out of a per-thread scratch buffer into a vector of exactly
//! that length. A thousand idle connections with a read pending cost a thousand small
//! futures, not a thousand 64 KiB buffers.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;

use crate::future::Failure;
use crate::status::Error;
use crate::sync::{lock, Arc, Mutex};

/// The read size when the caller names none.
pub const DEFAULT_READ: usize = 64 * 1024;

/// The most bytes one read returns, whatever the caller asks for: the size of the
/// per-thread scratch buffer reads land in.
pub const MAX_READ: usize = 1024 * 1024;

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// One side of a stream: what an operation may claim.
enum Side<T> {
    /// Free: the I/O object waits here for the next operation.
    Idle(T),
    /// An operation holds the I/O object.
    Busy,
    /// There is no such side (a read-only pipe has no write side), or it was shut down.
    Absent,
    /// The stream was closed.
    Closed,
}

struct Shared {
    read: Mutex<Side<Reader>>,
    /// Bytes a read took and could not deliver (its future was cancelled as the bytes
    /// came): the next read delivers them first. Touched only by the holder of the
    /// read side.
    unread: Mutex<Vec<u8>>,
    write: Mutex<Side<Writer>>,
    /// Wakes the operations in flight when the stream is closed.
    closing: Notify,
    closed: std::sync::atomic::AtomicBool,
}

/// A byte stream. Clones are handles to the same stream.
#[derive(Clone)]
pub struct Stream {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Stream {
    /// A stream of a separate reader and writer (a socket split in halves, two pipes);
    /// either may be missing. Reading a stream without a reader ends at once with
    /// end of stream; writing one without a writer fails with `Error::Closed`.
    pub fn new<R, W>(reader: Option<R>, writer: Option<W>) -> Stream
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let read = match reader {
            Some(r) => Side::Idle(Box::new(r) as Reader),
            None => Side::Absent,
        };
        let write = match writer {
            Some(w) => Side::Idle(Box::new(w) as Writer),
            None => Side::Absent,
        };
        Stream {
            shared: Arc::new(Shared {
                read: Mutex::new(read),
                unread: Mutex::new(Vec::new()),
                write: Mutex::new(write),
                closing: Notify::new(),
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// A stream of one object that reads and writes (a TLS connection), split so that
    /// a read and a write can be pending at once.
    pub fn duplex<T>(io: T) -> Stream
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (reader, writer) = tokio::io::split(io);
        Stream::new(Some(reader), Some(writer))
    }

    /// Two streams connected to each other (a Unix socket pair): what one writes, the
    /// other reads. Must be called inside a runtime (`Bridge::enter`).
    pub fn pair() -> io::Result<(Stream, Stream)> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        Ok((Stream::unix(a)?, Stream::unix(b)?))
    }

    /// A stream of a connected Unix socket. Must be called inside a runtime.
    pub fn unix(socket: std::os::unix::net::UnixStream) -> io::Result<Stream> {
        socket.set_nonblocking(true)?;
        let (reader, writer) = tokio::net::UnixStream::from_std(socket)?.into_split();
        Ok(Stream::new(Some(reader), Some(writer)))
    }

    /// Whether [`Stream::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared
            .closed
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Claims the read side for one read of at most `max` bytes (0: [`DEFAULT_READ`];
    /// capped at [`MAX_READ`]). `Error::Busy` while another read is pending,
    /// `Error::Closed` once closed.
    pub fn begin_read(&self, max: usize) -> Result<ReadOp, Error> {
        let max = match max {
            0 => DEFAULT_READ,
            n => n.min(MAX_READ),
        };
        let lease = claim::<Reader>(&self.shared)?;
        Ok(ReadOp { lease, max })
    }

    /// Claims the write side to write all of `data`. `Error::Busy` while another write
    /// or a shutdown is pending, `Error::Closed` once closed.
    pub fn begin_write(&self, data: Vec<u8>) -> Result<WriteOp, Error> {
        let lease = claim::<Writer>(&self.shared)?;
        Ok(WriteOp {
            lease,
            data,
            end: false,
        })
    }

    /// Claims the write side to end it: flushes, then shuts it down (a TCP FIN, a TLS
    /// close_notify, a pipe closed). Later writes fail with `Error::Closed`. Shutting
    /// down a side already shut down succeeds again. `Error::Busy` while a write is
    /// pending, `Error::Closed` once closed.
    pub fn begin_shutdown(&self) -> Result<WriteOp, Error> {
        let lease = claim::<Writer>(&self.shared)?;
        Ok(WriteOp {
            lease,
            data: Vec::new(),
            end: true,
        })
    }

    /// Closes the stream: the operations in flight end with `Error::Closed` (their
    /// I/O objects are dropped where they run, as they end), the idle ones are dropped
    /// now, and every later claim is `Error::Closed`. Closing again does nothing.
    pub fn close(&self) {
        if self
            .shared
            .closed
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let reader = std::mem::replace(&mut *lock(&self.shared.read), Side::Closed);
        let writer = std::mem::replace(&mut *lock(&self.shared.write), Side::Closed);
        self.shared.closing.notify_waiters();
        drop(reader);
        drop(writer);
    }
}

/// An I/O object taken from its side; put back (or dropped, if the stream was closed
/// meanwhile) when the lease ends, however it ends.
struct Lease<T: Slot> {
    shared: Arc<Shared>,
    io: Option<T>,
}

/// The two kinds of I/O object, each with its side of the stream.
trait Slot: Sized {
    fn side(shared: &Shared) -> &Mutex<Side<Self>>;
}

impl Slot for Reader {
    fn side(shared: &Shared) -> &Mutex<Side<Reader>> {
        &shared.read
    }
}

impl Slot for Writer {
    fn side(shared: &Shared) -> &Mutex<Side<Writer>> {
        &shared.write
    }
}

/// Takes a side's I/O object for one operation. A side without one (absent, shut
/// down) is claimed too: its operation answers without I/O.
fn claim<T: Slot>(shared: &Arc<Shared>) -> Result<Lease<T>, Error> {
    let mut side = lock(T::side(shared));
    let io = match std::mem::replace(&mut *side, Side::Busy) {
        Side::Idle(io) => Some(io),
        Side::Absent => {
            *side = Side::Absent;
            None
        }
        Side::Busy => return Err(Error::Busy),
        Side::Closed => {
            *side = Side::Closed;
            return Err(Error::Closed);
        }
    };
    Ok(Lease {
        shared: shared.clone(),
        io,
    })
}

impl<T: Slot> Lease<T> {
    /// Lets go of the I/O object for good: the side is shut down.
    fn retire(&mut self) {
        drop(self.io.take());
    }
}

impl<T: Slot> Drop for Lease<T> {
    fn drop(&mut self) {
        let io = self.io.take();
        let mut side = lock(T::side(&self.shared));
        // An absent side was never marked busy; a closed one keeps nothing, and `io`
        // drops here, on the thread where the operation ran.
        if let Side::Busy = *side {
            *side = match io {
                Some(io) => Side::Idle(io),
                None => Side::Absent,
            };
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One read, claimed by [`Stream::begin_read`]: run it with [`ReadOp::run`].
pub struct ReadOp {
    lease: Lease<Reader>,
    max: usize,
}

impl std::fmt::Debug for ReadOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOp").field("max", &self.max).finish()
    }
}

impl ReadOp {
    /// Reads what is there, 1 to `max` bytes, waiting for at least one; an empty
    /// vector at end of stream. Fails with `Error::Closed` when the stream is closed
    /// meanwhile, and with `Error::Io` (errno) or `Error::Tls` for an error.
    ///
    /// No byte is lost to a cancellation: dropped while it waits, the read has taken
    /// nothing; once bytes are in hand it calls `commit` (the embedding API's
    /// `Task::commit`), and if that says a cancellation came first, the bytes go back
    /// to the stream for the next read and the read fails (its future ends as the
    /// cancellation asked). Callers without cancellation pass `|| true`.
    pub async fn run(mut self, commit: impl FnOnce() -> bool) -> Result<Vec<u8>, Failure> {
        let shared = self.lease.shared.clone();
        let max = self.max;
        let bytes = match take_unread(&shared, max) {
            Some(bytes) => bytes,
            None => {
                let Some(reader) = self.lease.io.as_mut() else {
                    return Ok(Vec::new());
                };
                let closing = shared.closing.notified();
                tokio::pin!(closing);
                poll_fn(|cx| {
                    if closed_now(&shared, closing.as_mut(), cx) {
                        return Poll::Ready(Err(closed_failure("read")));
                    }
                    read_some(reader, cx, max).map_err(|e| io_failure(&e, "read"))
                })
                .await?
            }
        };
        if bytes.is_empty() || commit() {
            return Ok(bytes);
        }
        give_back_unread(&shared, bytes);
        Err(Failure::new(
            Error::Closed.code(),
            "read: cancelled; its bytes stay for the next read",
        ))
    }
}

/// Up to `max` of the bytes a cancelled read gave back, if there are any.
fn take_unread(shared: &Shared, max: usize) -> Option<Vec<u8>> {
    let mut unread = lock(&shared.unread);
    if unread.is_empty() {
        return None;
    }
    let at = max.min(unread.len());
    let rest = unread.split_off(at);
    Some(std::mem::replace(&mut *unread, rest))
}

/// Puts bytes a read could not deliver back in front of the stream.
fn give_back_unread(shared: &Shared, mut bytes: Vec<u8>) {
    let mut unread = lock(&shared.unread);
    bytes.extend_from_slice(&unread);
    *unread = bytes;
}

/// Whether the stream is closed; otherwise registers for the wake-up of its closing.
fn closed_now(
    shared: &Shared,
    closing: Pin<&mut tokio::sync::futures::Notified<'_>>,
    cx: &mut Context<'_>,
) -> bool {
    // Registered before the flag is read, so a close between the two still wakes us.
    let registered = closing.poll(cx).is_ready();
    registered || shared.closed.load(std::sync::atomic::Ordering::Acquire)
}

/// One poll of a read into the thread's scratch buffer, copied out when ready.
fn read_some(reader: &mut Reader, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Vec<u8>>> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        if scratch.len() < max {
            scratch.resize(max, 0);
        }
        let mut buf = ReadBuf::new(&mut scratch[..max]);
        ready!(Pin::new(reader).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(buf.filled().to_vec()))
    })
}

/// One write or shutdown, claimed by [`Stream::begin_write`] or
/// [`Stream::begin_shutdown`]: run it with [`WriteOp::run`].
pub struct WriteOp {
    lease: Lease<Writer>,
    data: Vec<u8>,
    end: bool,
}

impl std::fmt::Debug for WriteOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteOp")
            .field("len", &self.data.len())
            .field("shutdown", &self.end)
            .finish()
    }
}

impl WriteOp {
    /// Writes all the data and flushes it (or, for a shutdown, flushes and ends the
    /// write side). Dropped before it ends, part of the data may have been written.
    /// Fails with `Error::Closed` when the stream is closed meanwhile or has no write
    /// side (any more), and with `Error::Io` (errno) for an OS error.
    pub async fn run(mut self) -> Result<(), Failure> {
        let what = if self.end { "shutdown" } else { "write" };
        let shared = self.lease.shared.clone();
        let Some(writer) = self.lease.io.as_mut() else {
            // Shutting down what is already shut down asks for nothing new.
            return if self.end {
                Ok(())
            } else {
                Err(closed_failure("write"))
            };
        };
        let closing = shared.closing.notified();
        tokio::pin!(closing);
        let data = std::mem::take(&mut self.data);
        let end = self.end;
        let result = {
            let work = async {
                if end {
                    writer.shutdown().await
                } else {
                    writer.write_all(&data).await?;
                    writer.flush().await
                }
            };
            tokio::pin!(work);
            poll_fn(|cx| {
                if closed_now(&shared, closing.as_mut(), cx) {
                    return Poll::Ready(Err(closed_failure(what)));
                }
                work.as_mut().poll(cx).map_err(|e| io_failure(&e, what))
            })
            .await
        };
        if end && result.is_ok() {
            self.lease.retire();
        }
        result
    }
}

fn closed_failure(what: &str) -> Failure {
    Failure::new(
        Error::Closed.code(),
        format!("{what}: the stream was closed"),
    )
}

fn io_failure(e: &io::Error, what: &str) -> Failure {
    // A TLS stream reports a record that does not decrypt, or a protocol violation,
    // as an I/O error wrapping rustls's.
    #[cfg(feature = "tls")]
    if let Some(tls) = crate::io::tls::rustls_error(e) {
        return Failure::new(Error::Tls.code(), format!("{what}: TLS: {tls}"));
    }
    Failure::from_io(e, what)
}
