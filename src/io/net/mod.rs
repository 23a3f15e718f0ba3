//! Network connections: TCP (by name or address), Unix sockets, TLS over either;
//! listeners; name resolution. Each connection is a [`Stream`].
//!
//! A connection is described by [`ConnectOptions`], checked and prepared on the
//! caller's thread by [`Connector::prepare`] (everything a caller can get wrong is
//! refused there, before anything starts), then made by [`connect`] on the loop.
//!
//! - **Names.** A host that is not a numeric address is resolved by [`resolve`]
//!   (getaddrinfo on a blocking thread); its addresses are tried one after the other,
//!   in the resolver's order, each until it connects or fails (no parallel attempts:
//!   an address that drops packets holds the next back until the system gives up on
//!   it, which `timeout` bounds). When all fail, the failure is the last one's errno,
//!   with every address's reason in the message.
//! - **TCP_NODELAY** is set on every TCP stream, made or accepted: a stream carries
//!   whole messages written at once, and Nagle's delay would hold each reply back.
//! - **TLS** (feature `tls`) uses rustls with the library's one trust rule
//!   ([`crate::io::tls`]): the built-in roots, the system's store on request, extra
//!   PEM certificates besides. No ALPN protocol is offered.
//! - **Cancellation** is a drop: a resolution, connection attempt or handshake in
//!   progress is dropped with its socket; nothing of it stays open. An accept loses
//!   no connection to it: one taken as the cancellation came stays with the listener
//!   for the next accept ([`AcceptOp::run`]).
//! - **Errors**: a refused or failed connection `Error::Io` with its errno, an
//!   unknown name `Error::Dns`, certificate or handshake `Error::Tls`, the timeout
//!   `Error::TimedOut`; messages name what failed ("connect to 127.0.0.1:1:
//!   Connection refused").

mod dns;
mod listener;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};

use crate::future::Failure;
use crate::io::stream::Stream;
use crate::status::Error;

pub use dns::resolve;
pub use listener::{AcceptOp, Listener, DEFAULT_BACKLOG};

/// The longest Unix socket path (sockaddr_un's `sun_path`, its NUL excluded).
pub const MAX_UNIX_PATH: usize = 107;

/// Where a connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A host name or numeric address (an IPv6 one with or without brackets) and a
    /// port.
    Tcp {
        /// Name or address.
        host: String,
        /// Not 0.
        port: u16,
    },
    /// A Unix stream socket's path.
    Unix(PathBuf),
}

/// TLS over a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// The name the server's certificate must hold; `None`: the target's host (a
    /// numeric host is checked against the certificate's IP addresses). Required for
    /// a Unix target.
    pub server_name: Option<String>,
    /// Trust the system's CA store instead of the built-in roots.
    pub system_roots: bool,
    /// PEM certificates trusted besides the roots.
    pub extra_ca_pem: Option<Vec<u8>>,
}

/// What [`Connector::prepare`] checks and [`connect`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Where to.
    pub target: Target,
    /// `Some`: a TLS handshake after connecting.
    pub tls: Option<TlsOptions>,
    /// Resolution, connection and handshake together; `None`: no limit. Running out
    /// fails with `Error::TimedOut`.
    pub timeout: Option<Duration>,
}

/// Why options were refused before anything started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The state connections share, one per bridge: the TLS configurations.
#[derive(Debug)]
pub struct Connector {
    #[cfg(feature = "tls")]
    trust: crate::io::tls::Trust,
}

impl Default for Connector {
    fn default() -> Connector {
        Connector::new()
    }
}

/// Checked options, ready for [`connect`].
pub struct Prepared {
    target: Target,
    #[cfg(feature = "tls")]
    tls: Option<(
        rustls_pki_types::ServerName<'static>,
        std::sync::Arc<rustls::ClientConfig>,
    )>,
    timeout: Option<Duration>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// No TLS configuration made yet.
    pub fn new() -> Connector {
        Connector {
            #[cfg(feature = "tls")]
            trust: crate::io::tls::Trust::new(Vec::new()),
        }
    }

    /// Checks `options`: a non-empty host and a port other than 0, a Unix path that
    /// is not empty and fits a socket address, a valid TLS server name, extra
    /// certificates that parse, TLS built in (feature `tls`). Loads the system's
    /// store on first use, on the calling thread.
    pub fn prepare(&self, options: ConnectOptions) -> Result<Prepared, Invalid> {
        use std::os::unix::ffi::OsStrExt;
        match &options.target {
            Target::Tcp { host, .. } if dns::bare(host).is_empty() => {
                return Err(Invalid("empty host".into()))
            }
            Target::Tcp { port: 0, .. } => return Err(Invalid("port 0".into())),
            Target::Tcp { host, .. } if host.contains('\0') => {
                return Err(Invalid("a NUL byte in the host".into()))
            }
            Target::Unix(path) if path.as_os_str().is_empty() => {
                return Err(Invalid("empty Unix socket path".into()))
            }
            Target::Unix(path) if path.as_os_str().len() > MAX_UNIX_PATH => {
                return Err(Invalid(format!(
                    "Unix socket path longer than {MAX_UNIX_PATH} bytes"
                )))
            }
            Target::Unix(path) if path.as_os_str().as_bytes().contains(&0) => {
                return Err(Invalid("a NUL byte in the Unix socket path".into()))
            }
            _ => {}
        }
        #[cfg(feature = "tls")]
        let tls = match &options.tls {
            None => None,
            Some(tls) => Some(self.prepare_tls(&options.target, tls)?),
        };
        #[cfg(not(feature = "tls"))]
        if options.tls.is_some() {
            return Err(Invalid("TLS is not built in (feature \"tls\")".into()));
        }
        Ok(Prepared {
            target: options.target,
            #[cfg(feature = "tls")]
            tls,
            timeout: options.timeout,
        })
    }

    #[cfg(feature = "tls")]
    fn prepare_tls(
        &self,
        target: &Target,
        tls: &TlsOptions,
    ) -> Result<
        (
            rustls_pki_types::ServerName<'static>,
            std::sync::Arc<rustls::ClientConfig>,
        ),
        Invalid,
    > {
        let name = match (&tls.server_name, target) {
            (Some(name), _) => dns::bare(name).to_owned(),
            (None, Target::Tcp { host, .. }) => dns::bare(host).to_owned(),
            (None, Target::Unix(_)) => {
                return Err(Invalid("TLS over a Unix socket needs a server name".into()))
            }
        };
        let server_name = rustls_pki_types::ServerName::try_from(name.clone())
            .map_err(|e| Invalid(format!("invalid TLS server name {name:?}: {e}")))?;
        let choice = self
            .trust
            .choose(tls.system_roots, tls.extra_ca_pem.as_deref())
            .map_err(|e| Invalid(e.to_string()))?;
        Ok((server_name, choice.config))
    }
}

impl Prepared {
    /// The target in words, as messages name it: "host:port", "[v6]:port", a path.
    fn describe(&self) -> String {
        match &self.target {
            Target::Tcp { host, port } => host_port(dns::bare(host), *port),
            Target::Unix(path) => path.display().to_string(),
        }
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Makes the connection `prepared` describes: resolution, connection, TLS
/// handshake, all within its timeout (see the module's documentation).
pub async fn connect(prepared: Prepared) -> Result<Stream, Failure> {
    let what = prepared.describe();
    let timeout = prepared.timeout;
    let work = connect_now(prepared, &what);
    match timeout {
        None => work.await,
        Some(limit) => match tokio::time::timeout(limit, work).await {
            Ok(done) => done,
            Err(_) => Err(Failure::new(
                Error::TimedOut.code(),
                format!(
                    "connect to {what}: timed out after {} ms",
                    limit.as_millis()
                ),
            )),
        },
    }
}

async fn connect_now(prepared: Prepared, what: &str) -> Result<Stream, Failure> {
    match &prepared.target {
        Target::Tcp { host, port } => {
            let addresses = resolve(host).await?;
            let tcp = connect_each(&addresses, *port, what).await?;
            #[cfg(feature = "tls")]
            if let Some((name, config)) = prepared.tls {
                return handshake(tcp, name, config, what).await;
            }
            Ok(tcp_stream(tcp))
        }
        Target::Unix(path) => {
            let unix = UnixStream::connect(path)
                .await
                .map_err(|e| Failure::from_io(&e, format_args!("connect to {what}")))?;
            #[cfg(feature = "tls")]
            if let Some((name, config)) = prepared.tls {
                return handshake(unix, name, config, what).await;
            }
            Ok(listener::unix_stream(unix))
        }
    }
}

/// Connects to each address in turn until one answers.
async fn connect_each(addresses: &[IpAddr], port: u16, what: &str) -> Result<TcpStream, Failure> {
    let mut reasons = String::new();
    let mut last = None;
    for (at, &ip) in addresses.iter().enumerate() {
        let address = SocketAddr::new(ip, port);
        match TcpStream::connect(address).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) if at + 1 < addresses.len() => {
                reasons.push_str(&format!("{address}: {}; ", os_words(&e)));
            }
            Err(e) => last = Some((address, e)),
        }
    }
    // `resolve` never answers with no address.
    let Some((address, e)) = last else {
        return Err(Failure::new(
            Error::Dns.code(),
            format!("connect to {what}: no address"),
        ));
    };
    let context = if addresses.len() == 1 && address.to_string() == what {
        format!("connect to {what}")
    } else {
        format!("connect to {what}: {reasons}{address}")
    };
    Err(Failure::from_io(&e, context))
}

/// An OS error in the OS's words, without std's " (os error N)".
fn os_words(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

#[cfg(feature = "tls")]
async fn handshake<S>(
    io: S,
    name: rustls_pki_types::ServerName<'static>,
    config: std::sync::Arc<rustls::ClientConfig>,
    what: &str,
) -> Result<Stream, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, io)
        .await
        .map_err(|e| crate::io::tls::handshake_failure(&e, what))?;
    Ok(Stream::duplex(tls))
}

/// A connected TCP socket as a stream, TCP_NODELAY set.
pub(crate) fn tcp_stream(tcp: TcpStream) -> Stream {
    let _ = tcp.set_nodelay(true);
    let (reader, writer) = tcp.into_split();
    Stream::new(Some(reader), Some(writer))
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> ConnectOptions {
        ConnectOptions {
            target: Target::Tcp {
                host: host.into(),
                port,
            },
            tls: None,
            timeout: None,
        }
    }

    #[test]
    fn prepare_refuses_what_cannot_connect() {
        let connector = Connector::new();
        assert!(connector.prepare(tcp("127.0.0.1", 1)).is_ok());
        assert!(connector.prepare(tcp("[::1]", 1)).is_ok());
        for bad in [
            tcp("", 1),
            tcp("[]", 1),
            tcp("127.0.0.1", 0),
            tcp("a\0b", 1),
        ] {
            assert!(connector.prepare(bad).is_err());
        }
        let unix = |path: &str| ConnectOptions {
            target: Target::Unix(path.into()),
            ..tcp("x", 1)
        };
        assert!(connector.prepare(unix("/tmp/s")).is_ok());
        assert!(connector.prepare(unix("")).is_err());
        assert!(connector
            .prepare(unix(&"x".repeat(MAX_UNIX_PATH + 1)))
            .is_err());
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_needs_a_name_and_certificates_that_parse() {
        let connector = Connector::new();
        let with = |target: ConnectOptions, tls: TlsOptions| ConnectOptions {
            tls: Some(tls),
            ..target
        };
        assert!(connector
            .prepare(with(tcp("localhost", 1), TlsOptions::default()))
            .is_ok());
        let unix = ConnectOptions {
            target: Target::Unix("/tmp/s".into()),
            ..tcp("x", 1)
        };
        assert!(connector
            .prepare(with(unix.clone(), TlsOptions::default()))
            .is_err());
        let named = TlsOptions {
            server_name: Some("localhost".into()),
            ..TlsOptions::default()
        };
        assert!(connector.prepare(with(unix, named)).is_ok());
        let garbage = TlsOptions {
            extra_ca_pem: Some(b"garbage".to_vec()),
            ..TlsOptions::default()
        };
        assert!(connector
            .prepare(with(tcp("localhost", 1), garbage))
            .is_err());
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_is_refused_without_the_feature() {
        let options = ConnectOptions {
            tls: Some(TlsOptions::default()),
            ..tcp("localhost", 1)
        };
        assert!(Connector::new().prepare(options).is_err());
    }
}
