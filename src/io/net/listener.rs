//! Listening sockets: bound and listening when made, one accept at a time, closed
//! with its pending accept ended; a connection a cancelled accept had taken goes to
//! the next accept.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::sync::Notify;

use super::tcp_stream;
use crate::future::Failure;
use crate::io::stream::Stream;
use crate::status::Error;
use crate::sync::{lock, Arc, Mutex};

/// The backlog when the caller names none.
pub const DEFAULT_BACKLOG: u32 = 1024;

/// A listening TCP or Unix socket (see [`Listener::tcp`], [`Listener::unix`]).
///
/// One accept may be pending at a time ([`Listener::begin_accept`] claims it at the
/// call). Closing the listener ([`Listener::close`], or dropping it) ends a pending
/// accept with `Error::Closed`, closes the socket once that accept has let go of it,
/// and removes the path of a Unix socket it bound.
pub struct Listener {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("port", &self.shared.port)
            .field("closed", &self.shared.closed.load(Ordering::Acquire))
            .finish()
    }
}

struct Shared {
    /// `None` once closed; an accept holds a clone while it waits.
    socket: Mutex<Option<Arc<Socket>>>,
    /// A connection an accept took and could not deliver (a cancellation came first):
    /// the next accept delivers it before taking another. Touched only by the holder
    /// of the accept claim, and by the close.
    given_back: Mutex<Option<Stream>>,
    accepting: AtomicBool,
    closed: AtomicBool,
    closing: Notify,
    port: u16,
    path: Option<BoundPath>,
}

enum Socket {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// The file a Unix listener made, known by its inode so that closing never removes a
/// socket someone else bound at the same path since.
struct BoundPath {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl BoundPath {
    fn remove(&self) {
        let same = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| meta.dev() == self.dev && meta.ino() == self.ino);
        if same {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Listener {
    /// Binds `address` (port 0: any free port) with SO_REUSEADDR and listens with
    /// `backlog` (0: [`DEFAULT_BACKLOG`]; the system caps it at somaxconn). Must be
    /// called inside the runtime the accepts will run on (`Bridge::enter`).
    pub fn tcp(address: SocketAddr, backlog: u32) -> io::Result<Listener> {
        let socket = match address {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(address)?;
        let listener = socket.listen(backlog_or_default(backlog))?;
        let port = listener.local_addr()?.port();
        Ok(Listener::with(Socket::Tcp(listener), port, None))
    }

    /// Binds a Unix socket at `path` and listens with `backlog` (0:
    /// [`DEFAULT_BACKLOG`]). A file already at `path` (a socket left by a process that
    /// did not remove it) is not replaced: EADDRINUSE. Must be called inside the
    /// runtime the accepts will run on.
    pub fn unix(path: &Path, backlog: u32) -> io::Result<Listener> {
        let socket = tokio::net::UnixSocket::new_stream()?;
        socket.bind(path)?;
        let meta = std::fs::symlink_metadata(path);
        let bound = meta.map(|meta| BoundPath {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        });
        let listener = match socket.listen(backlog_or_default(backlog)) {
            Ok(listener) => listener,
            Err(e) => {
                if let Ok(bound) = &bound {
                    bound.remove();
                }
                return Err(e);
            }
        };
        Ok(Listener::with(Socket::Unix(listener), 0, bound.ok()))
    }

    fn with(socket: Socket, port: u16, path: Option<BoundPath>) -> Listener {
        Listener {
            shared: Arc::new(Shared {
                socket: Mutex::new(Some(Arc::new(socket))),
                given_back: Mutex::new(None),
                accepting: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                closing: Notify::new(),
                port,
                path,
            }),
        }
    }

    /// The TCP port it listens on (the one chosen for port 0); 0 for a Unix socket.
    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// Claims the accept: `Error::Busy` while another accept is pending,
    /// `Error::Closed` once closed. Run the claim with [`AcceptOp::run`]; it is given
    /// back when that ends or is dropped.
    pub fn begin_accept(&self) -> Result<AcceptOp, Error> {
        let socket = lock(&self.shared.socket).clone().ok_or(Error::Closed)?;
        if self.shared.accepting.swap(true, Ordering::AcqRel) {
            return Err(Error::Busy);
        }
        Ok(AcceptOp {
            socket,
            shared: self.shared.clone(),
        })
    }

    /// Closes the listener: a pending accept ends with `Error::Closed`, later claims
    /// are `Error::Closed`, the socket is closed (by the accept as it ends, if one is
    /// pending, else now) with a connection given back by a cancelled accept, and a
    /// Unix socket's path is removed now. Again: nothing.
    pub fn close(&self) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let socket = lock(&self.shared.socket).take();
        let given_back = lock(&self.shared.given_back).take();
        self.shared.closing.notify_waiters();
        drop(socket);
        drop(given_back);
        if let Some(path) = &self.shared.path {
            path.remove();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.close();
    }
}

fn backlog_or_default(backlog: u32) -> u32 {
    match backlog {
        0 => DEFAULT_BACKLOG,
        n => n,
    }
}

/// One accept, claimed by [`Listener::begin_accept`].
pub struct AcceptOp {
    socket: Arc<Socket>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AcceptOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcceptOp").finish_non_exhaustive()
    }
}

impl Drop for AcceptOp {
    fn drop(&mut self) {
        self.shared.accepting.store(false, Ordering::Release);
    }
}

impl AcceptOp {
    /// Waits for the next connection and gives it as a stream (TCP_NODELAY set on a
    /// TCP one). Connections that went away before they were taken (ECONNABORTED) are
    /// skipped. Fails with `Error::Closed` when the listener is closed meanwhile, and
    /// with `Error::Io` (EMFILE, ...) otherwise.
    ///
    /// No connection is lost to a cancellation: dropped while it waits, the accept has
    /// taken none; once it holds one it calls `commit` (the embedding API's
    /// `Task::commit`), and if that says a cancellation came first, the connection
    /// stays with the listener for the next accept and this one fails (its future
    /// ends as the cancellation asked). Callers without cancellation pass `|| true`.
    pub async fn run(self, commit: impl FnOnce() -> bool) -> Result<Stream, Failure> {
        let given_back = lock(&self.shared.given_back).take();
        let stream = match given_back {
            Some(stream) => stream,
            None => self.next().await?,
        };
        if commit() {
            return Ok(stream);
        }
        // Only this accept, the listener's one, touches the slot until it is dropped
        // (which lets the next claim in), so the slot is empty here.
        *lock(&self.shared.given_back) = Some(stream);
        Err(Failure::new(
            Error::Closed.code(),
            "accept: cancelled; its connection stays for the next accept",
        ))
    }

    /// The next connection off the socket's queue.
    async fn next(&self) -> Result<Stream, Failure> {
        let closing = self.shared.closing.notified();
        tokio::pin!(closing);
        let socket = &*self.socket;
        let shared = &*self.shared;
        poll_fn(|cx| {
            if closed_now(shared, closing.as_mut(), cx) {
                return Poll::Ready(Err(Failure::new(
                    Error::Closed.code(),
                    "accept: the listener was closed",
                )));
            }
            loop {
                let accepted = match socket {
                    Socket::Tcp(l) => l.poll_accept(cx).map_ok(|(s, _)| tcp_stream(s)),
                    Socket::Unix(l) => l.poll_accept(cx).map_ok(|(s, _)| unix_stream(s)),
                };
                match accepted {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(stream)) => return Poll::Ready(Ok(stream)),
                    Poll::Ready(Err(e)) if gone_before_taken(&e) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::from_io(&e, "accept"))),
                }
            }
        })
        .await
    }
}

/// Whether the listener is closed; otherwise registers for the wake-up of its closing.
fn closed_now(
    shared: &Shared,
    closing: Pin<&mut tokio::sync::futures::Notified<'_>>,
    cx: &mut Context<'_>,
) -> bool {
    // Registered before the flag is read, so a close between the two still wakes us.
    let woken = closing.poll(cx).is_ready();
    woken || shared.closed.load(Ordering::Acquire)
}

/// An accept error about that one connection, not the listener.
fn gone_before_taken(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO)
    )
}

pub(super) fn unix_stream(socket: tokio::net::UnixStream) -> Stream {
    let (reader, writer) = socket.into_split();
    Stream::new(Some(reader), Some(writer))
}
