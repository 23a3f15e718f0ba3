//! Connections: resolving, connecting, TLS, the HTTP/1.1 and HTTP/2 handshakes, and
//! the pool that keeps them for reuse.
//!
//! An HTTP/1.1 connection is owned by one exchange at a time, which drives it (polls
//! its `Connection`) while it waits for the response and reads the body, and puts it
//! back into the pool once the body is read: no task per connection, and dropping the
//! exchange closes the socket at once. An HTTP/2 connection is shared: a task of its
//! own drives it and the pool keeps its sender.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::{http1, http2};
use hyper::{Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::error::from_hyper;
use super::{Invalid, Prepared};
use crate::future::Failure;
use crate::io::tls::handshake_failure;
use crate::io::tls::{Trust, TrustChoice, TrustError};
use crate::status::Error;
use crate::sync::lock;

/// Idle HTTP/1.1 connections kept per origin.
const MAX_IDLE_PER_ORIGIN: usize = 256;
/// An idle connection older than this is closed rather than reused: servers close
/// theirs after a while, and a stale one costs a failed attempt.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of a response head (status line and headers) and of hyper's read buffer.
const MAX_HEAD: usize = 256 << 10;
/// Bound of the number of response headers.
const MAX_HEADERS: usize = 256;
/// A redirect's body is read to keep its connection only up to this size.
const MAX_DISCARD: u64 = 64 << 10;

type Body = Full<Bytes>;

/// The HTTP client of one bridge: its connection pool and TLS configurations.
pub struct Client {
    idle: Mutex<HashMap<Origin, Vec<Idle>>>,
    shared: Mutex<HashMap<Origin, http2::SendRequest<Body>>>,
    /// The TLS configurations (HTTP/2 and HTTP/1.1 offered by ALPN).
    trust: Trust,
    /// One connection attempt at a time per TLS origin until its protocol is known:
    /// a burst of requests to a new HTTP/2 origin then shares the first connection
    /// instead of opening one each.
    gates: Mutex<HashMap<Origin, Arc<tokio::sync::Mutex<()>>>>,
    /// TLS origins that chose HTTP/1.1 by ALPN: their requests connect in parallel.
    http1: Mutex<std::collections::HashSet<Origin>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Default for Client {
    fn default() -> Client {
        Client::new()
    }
}

/// The trust a TLS connection was made with: connections are reused only by requests
/// that trust the same roots.
pub(super) type TlsChoice = TrustChoice;

/// Where a connection goes: scheme, host, port and, for TLS, the trust it was made
/// with.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Origin {
    tls: Option<u64>,
    host: String,
    port: u16,
}

impl Origin {
    pub(super) fn of(url: &Uri, tls: &TlsChoice) -> Origin {
        let https = url.scheme_str() == Some("https");
        Origin {
            tls: https.then_some(tls.id),
            host: url.host().unwrap_or_default().to_owned(),
            port: url.port_u16().unwrap_or(if https { 443 } else { 80 }),
        }
    }

    fn describe(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host.trim_matches(['[', ']']), self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// An idle HTTP/1.1 connection.
struct Idle {
    send: http1::SendRequest<Body>,
    conn: Pin<Box<http1::Connection<TokioIo<Stream>, Body>>>,
    since: Instant,
}

/// A connection in use by one exchange.
pub(super) enum Lease {
    /// HTTP/1.1: this exchange owns and drives it.
    One {
        send: http1::SendRequest<Body>,
        conn: Pin<Box<http1::Connection<TokioIo<Stream>, Body>>>,
        reused: bool,
        client: Weak<Client>,
    },
    /// HTTP/2: shared, driven by its own task.
    Two,
}

impl Client {
    /// An empty pool.
    pub fn new() -> Client {
        Client {
            idle: Mutex::new(HashMap::new()),
            shared: Mutex::new(HashMap::new()),
            trust: Trust::new(vec![b"h2".to_vec(), b"http/1.1".to_vec()]),
            gates: Mutex::new(HashMap::new()),
            http1: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Connections kept idle now (for tests and statistics).
    pub fn idle_connections(&self) -> usize {
        lock(&self.idle).values().map(Vec::len).sum()
    }

    pub(super) fn tls_choice(
        &self,
        system: bool,
        extra_pem: Option<&[u8]>,
    ) -> Result<TlsChoice, Invalid> {
        self.trust.choose(system, extra_pem).map_err(|e| match e {
            TrustError::NoSystemRoots => Invalid(format!("BRIDGE_HTTP_SYSTEM_ROOTS: {e}")),
            TrustError::ExtraPem(_) => Invalid(e.to_string()),
        })
    }

    /// Sends `request` on a pooled or new connection to `origin`; gives back the
    /// response head, its body and the connection that carries it.
    pub(super) async fn round_trip(
        self: &Arc<Client>,
        origin: &Origin,
        request: &Prepared,
    ) -> Result<(hyper::http::response::Parts, Incoming, Lease), Failure> {
        loop {
            if let Some(mut send) = self.shared_sender(origin) {
                let result = send.send_request(build(request, origin, true)).await;
                match result {
                    Ok(response) => {
                        let (head, body) = response.into_parts();
                        return Ok((head, body, Lease::Two));
                    }
                    Err(e) if e.is_canceled() || send.is_closed() => {
                        // The connection went away (GOAWAY): a new one.
                        self.forget_shared(origin, &send);
                        continue;
                    }
                    Err(e) => return Err(from_hyper(&e, &origin.describe())),
                }
            }
            let lease = match self.take_idle(origin).await {
                Some(lease) => lease,
                None => self.connect_gated(origin, request).await?,
            };
            match lease {
                Lease::Two => continue,
                Lease::One {
                    mut send,
                    mut conn,
                    reused,
                    client,
                } => {
                    let sent = send.try_send_request(build(request, origin, false));
                    match drive(conn.as_mut(), sent).await {
                        Ok(Ok(response)) => {
                            let (head, body) = response.into_parts();
                            return Ok((
                                head,
                                body,
                                Lease::One {
                                    send,
                                    conn,
                                    reused,
                                    client,
                                },
                            ));
                        }
                        Ok(Err(mut e)) => {
                            if reused && e.take_message().is_some() {
                                // A kept connection the server had closed: the
                                // request was not sent; try again on another.
                                continue;
                            }
                            return Err(from_hyper(e.error(), &origin.describe()));
                        }
                        Err(e) => return Err(e.into_failure(&origin.describe())),
                    }
                }
            }
        }
    }

    fn shared_sender(&self, origin: &Origin) -> Option<http2::SendRequest<Body>> {
        origin.tls?;
        let mut shared = lock(&self.shared);
        match shared.get(origin) {
            Some(send) if !send.is_closed() => Some(send.clone()),
            Some(_) => {
                shared.remove(origin);
                None
            }
            None => None,
        }
    }

    fn forget_shared(&self, origin: &Origin, closed: &http2::SendRequest<Body>) {
        let mut shared = lock(&self.shared);
        if shared
            .get(origin)
            .is_some_and(|s| s.is_closed() || closed.is_closed())
        {
            shared.remove(origin);
        }
    }

    /// An idle connection to `origin` that is still open, if one is kept.
    async fn take_idle(self: &Arc<Client>, origin: &Origin) -> Option<Lease> {
        loop {
            let idle = {
                let mut pool = lock(&self.idle);
                let list = pool.get_mut(origin)?;
                let idle = list.pop();
                if list.is_empty() {
                    pool.remove(origin);
                }
                idle?
            };
            let Idle {
                mut send,
                mut conn,
                since,
            } = idle;
            if since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            // One poll of the connection reads what the server sent while it was
            // idle: a close ends it here instead of failing the request later.
            let open = std::future::poll_fn(|cx| match conn.as_mut().poll(cx) {
                Poll::Ready(_) => Poll::Ready(false),
                Poll::Pending => Poll::Ready(true),
            })
            .await;
            if !open || send.is_closed() {
                continue;
            }
            let ready = drive(conn.as_mut(), send.ready()).await;
            if !matches!(ready, Ok(Ok(()))) {
                continue;
            }
            return Some(Lease::One {
                send,
                conn,
                reused: true,
                client: Arc::downgrade(self),
            });
        }
    }

    fn put_idle(&self, origin: &Origin, conn: Idle) {
        let mut pool = lock(&self.idle);
        let list = pool.entry(origin.clone()).or_default();
        if list.len() < MAX_IDLE_PER_ORIGIN {
            list.push(conn);
        }
    }

    /// A new connection to `origin`; to a TLS origin whose protocol is not known yet,
    /// one at a time: whoever waited finds the HTTP/2 connection the first one made
    /// (`Lease::Two`: take the shared sender), or connects on its own once the origin
    /// turned out to speak HTTP/1.1.
    async fn connect_gated(
        self: &Arc<Client>,
        origin: &Origin,
        request: &Prepared,
    ) -> Result<Lease, Failure> {
        if origin.tls.is_none() || lock(&self.http1).contains(origin) {
            return self.connect(origin, request).await;
        }
        let gate = lock(&self.gates).entry(origin.clone()).or_default().clone();
        let turn = gate.lock_owned().await;
        if self.shared_sender(origin).is_some() {
            return Ok(Lease::Two);
        }
        if lock(&self.http1).contains(origin) {
            drop(turn);
        }
        self.connect(origin, request).await
    }

    /// A new connection to `origin`.
    async fn connect(
        self: &Arc<Client>,
        origin: &Origin,
        request: &Prepared,
    ) -> Result<Lease, Failure> {
        let tcp = connect_tcp(origin).await?;
        let Some(_) = origin.tls else {
            return self.handshake_one(origin, Stream::Plain(tcp)).await;
        };
        let server_name =
            rustls_pki_types::ServerName::try_from(origin.host.trim_matches(['[', ']']).to_owned())
                .map_err(|e| {
                    Failure::new(
                        Error::Tls.code(),
                        format!("TLS with {}: invalid server name: {e}", origin.describe()),
                    )
                })?;
        let connector = tokio_rustls::TlsConnector::from(request.tls.config.clone());
        let tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| handshake_failure(&e, &origin.describe()))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let stream = Stream::Tls(Box::new(tls));
        if !h2 {
            lock(&self.http1).insert(origin.clone());
            return self.handshake_one(origin, stream).await;
        }
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .max_header_list_size(MAX_HEAD as u32)
            .handshake::<_, Body>(TokioIo::new(stream))
            .await
            .map_err(|e| from_hyper(&e, &origin.describe()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        lock(&self.shared).insert(origin.clone(), send);
        Ok(Lease::Two)
    }

    async fn handshake_one(
        self: &Arc<Client>,
        origin: &Origin,
        stream: Stream,
    ) -> Result<Lease, Failure> {
        let (send, conn) = http1::Builder::new()
            .max_buf_size(MAX_HEAD)
            .max_headers(MAX_HEADERS)
            .handshake::<_, Body>(TokioIo::new(stream))
            .await
            .map_err(|e| from_hyper(&e, &origin.describe()))?;
        Ok(Lease::One {
            send,
            conn: Box::pin(conn),
            reused: false,
            client: Arc::downgrade(self),
        })
    }
}

impl Lease {
    /// Reads `body` to its end, handing each chunk to `each`, driving the connection
    /// meanwhile; an HTTP/1.1 connection goes back to the pool after.
    pub(super) async fn read_body(
        self,
        mut body: Incoming,
        origin: &Origin,
        mut each: impl FnMut(&[u8]) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        match self {
            Lease::Two => {
                while let Some(chunk) = super::next_chunk(&mut body).await {
                    let chunk = chunk.map_err(|e| from_hyper(&e, &origin.describe()))?;
                    each(&chunk)?;
                }
                Ok(())
            }
            Lease::One {
                send,
                mut conn,
                client,
                ..
            } => {
                loop {
                    match drive(conn.as_mut(), super::next_chunk(&mut body)).await {
                        Ok(Some(Ok(chunk))) => each(&chunk)?,
                        Ok(Some(Err(e))) => return Err(from_hyper(&e, &origin.describe())),
                        Ok(None) => break,
                        Err(e) => return Err(e.into_failure(&origin.describe())),
                    }
                }
                drop(body);
                give_back(client, origin, send, conn).await;
                Ok(())
            }
        }
    }

    /// Reads and drops a redirect's body when it is short, so that its connection
    /// can serve the next request; otherwise drops the connection.
    pub(super) async fn discard(&mut self, body: Incoming, origin: &Origin) {
        let lease = std::mem::replace(self, Lease::Two);
        let mut seen = 0u64;
        let _ = lease
            .read_body(body, origin, |chunk| {
                seen += chunk.len() as u64;
                if seen > MAX_DISCARD {
                    Err(Failure::from_code(0))
                } else {
                    Ok(())
                }
            })
            .await;
    }
}

/// Puts an HTTP/1.1 connection whose exchange is complete back into the pool, once it
/// is ready for another request.
async fn give_back(
    client: Weak<Client>,
    origin: &Origin,
    mut send: http1::SendRequest<Body>,
    mut conn: Pin<Box<http1::Connection<TokioIo<Stream>, Body>>>,
) {
    let Some(client) = client.upgrade() else {
        return;
    };
    // Ready once the connection has taken the response's end (keep-alive); an error
    // or a close means it cannot serve again.
    if !matches!(drive(conn.as_mut(), send.ready()).await, Ok(Ok(()))) {
        return;
    }
    let idle = Idle {
        send,
        conn,
        since: Instant::now(),
    };
    client.put_idle(origin, idle);
}

/// How driving a connection alongside an exchange can end early.
pub(super) enum Driven {
    /// The connection failed.
    Failed(hyper::Error),
    /// The connection closed while the exchange was waiting.
    Closed,
}

impl Driven {
    fn into_failure(self, what: &str) -> Failure {
        match self {
            Driven::Failed(e) => from_hyper(&e, what),
            Driven::Closed => Failure::new(
                Error::Protocol.code(),
                format!("{what}: connection closed before the response was complete"),
            ),
        }
    }
}

/// Polls `exchange` and the connection it runs on until the exchange is done.
async fn drive<F: std::future::Future>(
    mut conn: Pin<&mut http1::Connection<TokioIo<Stream>, Body>>,
    exchange: F,
) -> Result<F::Output, Driven> {
    let mut exchange = std::pin::pin!(exchange);
    let mut conn_done = false;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = exchange.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if !conn_done {
            match conn.as_mut().poll(cx) {
                Poll::Pending => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Driven::Failed(e))),
                Poll::Ready(Ok(())) => {
                    // Closed: the exchange learns it through its channel; give it one
                    // more poll, then report the close.
                    conn_done = true;
                    if let Poll::Ready(out) = exchange.as_mut().poll(cx) {
                        return Poll::Ready(Ok(out));
                    }
                    return Poll::Ready(Err(Driven::Closed));
                }
            }
        }
        Poll::Pending
    })
    .await
}

/// The request hyper sends: origin-form with a Host header for HTTP/1.1, absolute for
/// HTTP/2.
fn build(request: &Prepared, origin: &Origin, absolute: bool) -> Request<Body> {
    let mut builder = Request::builder().method(request.method.clone());
    if absolute {
        builder = builder.uri(request.url.clone());
    } else {
        let target = request
            .url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        builder = builder.uri(target);
        let default_port = if origin.tls.is_some() { 443 } else { 80 };
        let host = match request.url.port_u16() {
            Some(port) if port != default_port => format!("{}:{port}", origin.host),
            _ => origin.host.clone(),
        };
        builder = builder.header(hyper::header::HOST, host);
    }
    let mut has_agent = false;
    for (name, value) in &request.headers {
        has_agent |= name == hyper::header::USER_AGENT;
        builder = builder.header(name, value);
    }
    if !has_agent {
        builder = builder.header(
            hyper::header::USER_AGENT,
            concat!("asyncbridge/", env!("CARGO_PKG_VERSION")),
        );
    }
    // Nothing above can be invalid: the method, URL and headers were checked by
    // `prepare`.
    builder
        .body(Full::new(request.body.clone()))
        .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
}

/// Resolves `origin`'s host and connects to the first address that answers.
async fn connect_tcp(origin: &Origin) -> Result<TcpStream, Failure> {
    let bare = origin.host.trim_matches(['[', ']']);
    let addresses: Vec<std::net::SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![(ip, origin.port).into()],
        Err(_) => tokio::net::lookup_host((bare, origin.port))
            .await
            .map_err(|e| {
                Failure::new(
                    Error::Dns.code(),
                    format!("resolve {bare}: {}", dns_reason(&e)),
                )
            })?
            .collect(),
    };
    let mut last = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Err(e) => last = Some(Failure::from_io(&e, format_args!("connect {address}"))),
        }
    }
    Err(last.unwrap_or_else(|| {
        Failure::new(
            Error::Dns.code(),
            format!("resolve {bare}: no address found"),
        )
    }))
}

fn dns_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    text.strip_prefix("failed to lookup address information: ")
        .unwrap_or(&text)
        .to_owned()
}

/// A connection's byte stream: plain TCP or TLS over it.
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}
