//! An HTTP(S) client: HTTP/1.1 and HTTP/2 (by ALPN) over rustls, redirects, limits,
//! progress, bodies to memory or to a file. One [`Client`] per bridge pools the
//! connections.
//!
//! A request is checked and prepared on the caller's thread ([`Client::prepare`]:
//! everything a caller could get wrong is refused there, before anything starts), then
//! sent by [`send`] on the bridge's loop.
//!
//! Cancellation is a drop: dropping the future of [`send`] drops the exchange. An
//! HTTP/1.1 connection is driven by the exchange that holds it, so it is closed by then;
//! an HTTP/2 stream is reset and its connection stays for the other streams. A
//! partial `output_path` file is removed by the same drop.

mod error;
mod pool;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Uri};

use crate::future::Failure;
use crate::status::Error;

pub use pool::Client;

/// The body limit when none is given: 64 MiB.
pub const DEFAULT_MAX_BODY: u64 = 64 << 20;

/// A request as a caller describes it; [`Client::prepare`] checks it.
#[derive(Debug, Default, Clone)]
pub struct RequestSpec {
    /// `None`: GET.
    pub method: Option<String>,
    /// An `http://` or `https://` URL.
    pub url: String,
    /// "Name: value" lines.
    pub headers: Vec<String>,
    /// The request body (sent with a Content-Length).
    pub body: Vec<u8>,
    /// The whole exchange, redirects included; `None`: no limit.
    pub timeout: Option<Duration>,
    /// 0: [`DEFAULT_MAX_BODY`].
    pub max_body: u64,
    /// 0: redirects are not followed (the 3xx response is the result).
    pub max_redirects: u32,
    /// A status of 400 or more fails the request with `Error::HttpStatus`.
    pub fail_on_status: bool,
    /// Trust the system's CA store instead of the built-in roots.
    pub system_roots: bool,
    /// PEM certificates trusted besides the roots.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// The body goes to this file instead of memory.
    pub output_path: Option<PathBuf>,
}

/// Why a request was refused before it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A checked request, ready for [`send`].
#[derive(Debug)]
pub struct Prepared {
    method: Method,
    url: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    timeout: Option<Duration>,
    max_body: u64,
    max_redirects: u32,
    fail_on_status: bool,
    tls: pool::TlsChoice,
    output_path: Option<PathBuf>,
}

/// A response: status, headers in the order received, body (empty when it went to a
/// file), and the URL it came from after redirects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body, unless it went to `output_path`.
    pub body: Vec<u8>,
    /// The URL of the last request, after redirects.
    pub url: String,
}

impl Client {
    /// Checks `spec` and makes what sending it needs (the TLS configuration, loaded
    /// once per client for the system store). Runs on the caller's thread.
    pub fn prepare(&self, spec: RequestSpec) -> Result<Prepared, Invalid> {
        let method = match spec.method.as_deref() {
            None => Method::GET,
            Some("") => return Err(Invalid("empty method".into())),
            Some(m) => Method::from_bytes(m.as_bytes())
                .map_err(|_| Invalid(format!("invalid method {m:?}")))?,
        };
        let url = parse_url(&spec.url)?;
        let mut headers = Vec::with_capacity(spec.headers.len());
        for line in &spec.headers {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| Invalid(format!("header {line:?} is not \"Name: value\"")))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| Invalid(format!("invalid header name in {line:?}")))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| Invalid(format!("invalid header value in {line:?}")))?;
            if name == hyper::header::HOST
                || name == hyper::header::CONTENT_LENGTH
                || name == hyper::header::TRANSFER_ENCODING
                || name == hyper::header::CONNECTION
            {
                return Err(Invalid(format!(
                    "header {name} is set by the library, not the caller"
                )));
            }
            headers.push((name, value));
        }
        if let Some(path) = &spec.output_path {
            if path.as_os_str().is_empty() || path.file_name().is_none() {
                return Err(Invalid(format!("output_path {path:?} names no file")));
            }
        }
        let tls = self.tls_choice(spec.system_roots, spec.extra_ca_pem.as_deref())?;
        Ok(Prepared {
            method,
            url,
            headers,
            body: Bytes::from(spec.body),
            timeout: spec.timeout,
            max_body: if spec.max_body == 0 {
                DEFAULT_MAX_BODY
            } else {
                spec.max_body
            },
            max_redirects: spec.max_redirects,
            fail_on_status: spec.fail_on_status,
            tls,
            output_path: spec.output_path,
        })
    }
}

/// An absolute http(s) URL with a host.
fn parse_url(text: &str) -> Result<Uri, Invalid> {
    let url: Uri = text
        .parse()
        .map_err(|e| Invalid(format!("invalid URL {text:?}: {e}")))?;
    match url.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(Invalid(format!("URL {text:?} is not http:// or https://"))),
    }
    match url.host() {
        Some(host) if !host.is_empty() => Ok(url),
        _ => Err(Invalid(format!("URL {text:?} has no host"))),
    }
}

/// What [`send`] reports to, and asks of, whoever runs it.
pub trait Hooks: Send + Sync {
    /// The body bytes received, and the Content-Length (0 when unknown).
    fn progress(&self, done: u64, total: u64);
    /// Called before the one step that cannot be undone (renaming a complete
    /// `output_path` file into place): false if the request was cancelled meanwhile,
    /// and the file is then removed instead.
    fn commit(&self) -> bool;
}

/// Sends `request` through `client`'s pool, following redirects.
pub async fn send(
    client: std::sync::Arc<Client>,
    request: Prepared,
    hooks: impl Hooks,
) -> Result<Response, Failure> {
    match request.timeout {
        Some(limit) => {
            match tokio::time::timeout(limit, exchange(&client, request, &hooks)).await {
                Ok(result) => result,
                Err(_) => Err(Failure::new(
                    Error::TimedOut.code(),
                    format!("HTTP request timed out after {} ms", limit.as_millis()),
                )),
            }
        }
        None => exchange(&client, request, &hooks).await,
    }
}

/// The exchanges of one request: the first and each redirect.
async fn exchange(
    client: &std::sync::Arc<Client>,
    mut request: Prepared,
    hooks: &impl Hooks,
) -> Result<Response, Failure> {
    // The output file first: a path that cannot be written fails before any request.
    let mut file = match &request.output_path {
        Some(path) => Some(PartialFile::create(path)?),
        None => None,
    };
    let mut redirects = 0;
    loop {
        let origin = pool::Origin::of(&request.url, &request.tls);
        let (head, body, mut conn) = client.round_trip(&origin, &request).await?;
        let status = head.status;
        let location = head
            .headers
            .get(hyper::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if request.max_redirects > 0 && is_redirect(status.as_u16()) {
            if let Some(location) = location {
                // The body of a redirect is of no use: read (bounded) so the
                // connection can serve again, or drop it.
                conn.discard(body, &origin).await;
                if redirects == request.max_redirects {
                    return Err(Failure::new(
                        Error::Protocol.code(),
                        format!(
                            "too many redirects (more than {}) from {}",
                            request.max_redirects, request.url
                        ),
                    ));
                }
                redirects += 1;
                redirect(&mut request, status.as_u16(), &location)?;
                continue;
            }
        }
        if request.fail_on_status && status.as_u16() >= 400 {
            drop(body);
            drop(conn);
            return Err(Failure::new(
                Error::HttpStatus.code(),
                format!(
                    "HTTP {} {}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                )
                .trim_end()
                .to_owned(),
            ));
        }
        let total = head
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if total > request.max_body {
            return Err(too_large(request.max_body));
        }
        let mut sink = match file.take() {
            Some(file) => Sink::File(file),
            None => Sink::Memory(Vec::with_capacity(total.min(1 << 20) as usize)),
        };
        let mut received = 0u64;
        hooks.progress(0, total);
        conn.read_body(body, &origin, |chunk: &[u8]| {
            let so_far = received + chunk.len() as u64;
            if so_far > request.max_body {
                return Err(too_large(request.max_body));
            }
            received = so_far;
            sink.write(chunk)?;
            hooks.progress(so_far, total);
            Ok(())
        })
        .await?;
        let body = sink.finish(hooks)?;
        let headers = head
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        return Ok(Response {
            status: status.as_u16(),
            headers,
            body,
            url: request.url.to_string(),
        });
    }
}

fn too_large(max: u64) -> Failure {
    Failure::new(
        Error::TooLarge.code(),
        format!("response body larger than max_body ({max} bytes)"),
    )
}

fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// Turns `request` into the request a redirect asks for.
fn redirect(request: &mut Prepared, status: u16, location: &str) -> Result<(), Failure> {
    let next = resolve(&request.url, location).ok_or_else(|| {
        Failure::new(
            Error::Protocol.code(),
            format!(
                "redirect from {} to an invalid location {location:?}",
                request.url
            ),
        )
    })?;
    let to_get = status == 303 && request.method != Method::HEAD
        || matches!(status, 301 | 302) && request.method == Method::POST;
    if to_get {
        request.method = Method::GET;
        request.body = Bytes::new();
        request.headers.retain(|(name, _)| {
            name != hyper::header::CONTENT_TYPE && name != hyper::header::CONTENT_ENCODING
        });
    }
    if next.scheme() != request.url.scheme()
        || next.host() != request.url.host()
        || next.port_u16() != request.url.port_u16()
    {
        // Credentials meant for one origin are not handed to another.
        request.headers.retain(|(name, _)| {
            name != hyper::header::AUTHORIZATION
                && name != hyper::header::COOKIE
                && name != hyper::header::PROXY_AUTHORIZATION
        });
    }
    request.url = next;
    Ok(())
}

/// `location` resolved against `base` (RFC 3986 reference resolution, without dot
/// segment removal, which servers do not need from a client).
fn resolve(base: &Uri, location: &str) -> Option<Uri> {
    if location.contains("://") {
        return parse_url(location).ok();
    }
    let scheme = base.scheme_str()?;
    let authority = base.authority()?.as_str();
    let target = if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else if location.starts_with('?') {
        format!("{scheme}://{authority}{}{location}", base.path())
    } else {
        let path = base.path();
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        let dir = if dir.is_empty() { "/" } else { dir };
        format!("{scheme}://{authority}{dir}{location}")
    };
    parse_url(&target).ok()
}

/// Where a body goes.
enum Sink {
    Memory(Vec<u8>),
    File(PartialFile),
}

impl Sink {
    fn write(&mut self, chunk: &[u8]) -> Result<(), Failure> {
        match self {
            Sink::Memory(body) => {
                body.extend_from_slice(chunk);
                Ok(())
            }
            Sink::File(file) => file.write(chunk),
        }
    }

    fn finish(self, hooks: &impl Hooks) -> Result<Vec<u8>, Failure> {
        match self {
            Sink::Memory(body) => Ok(body),
            Sink::File(file) => {
                if !hooks.commit() {
                    // Cancelled: the future ends as requested; the drop removes the file.
                    return Err(Failure::new(Error::Closed.code(), "cancelled"));
                }
                file.commit().map(|()| Vec::new())
            }
        }
    }
}

/// A body being written to a temporary file beside `output_path`, renamed over it once
/// complete and removed if dropped before: a cancelled or failed download leaves no
/// partial file, and an existing file is replaced only by a complete one.
///
/// The writes are plain blocking writes on the loop thread: each is one chunk of a
/// body (tens of KiB) into the page cache.
struct PartialFile {
    file: Option<std::fs::File>,
    temporary: PathBuf,
    path: PathBuf,
}

static PARTIAL_SERIAL: AtomicU64 = AtomicU64::new(0);

impl PartialFile {
    fn create(path: &std::path::Path) -> Result<PartialFile, Failure> {
        if path.is_dir() {
            return Err(Failure::io(
                libc::EISDIR,
                format_args!("output_path {}", path.display()),
            ));
        }
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let serial = PARTIAL_SERIAL.fetch_add(1, Ordering::Relaxed);
        let temporary =
            path.with_file_name(format!(".{name}.part-{}-{serial}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)
            .map_err(|e| io_failure(&e, format_args!("create {}", path.display())))?;
        Ok(PartialFile {
            file: Some(file),
            temporary,
            path: path.to_owned(),
        })
    }

    fn write(&mut self, chunk: &[u8]) -> Result<(), Failure> {
        use std::io::Write;
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.write_all(chunk)
            .map_err(|e| io_failure(&e, format_args!("write {}", self.temporary.display())))
    }

    fn commit(mut self) -> Result<(), Failure> {
        drop(self.file.take());
        std::fs::rename(&self.temporary, &self.path)
            .map_err(|e| io_failure(&e, format_args!("rename to {}", self.path.display())))?;
        self.temporary = PathBuf::new();
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        drop(self.file.take());
        if !self.temporary.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// A `BRIDGE_E_IO` failure from an OS error (or `EIO` when it carries no errno).
fn io_failure(error: &std::io::Error, what: std::fmt::Arguments<'_>) -> Failure {
    Failure::io(error.raw_os_error().unwrap_or(libc::EIO), what)
}

/// The next data chunk of `body` (trailers skipped); `None` at its end. The pool's
/// leases call it while they drive the connection.
async fn next_chunk(body: &mut hyper::body::Incoming) -> Option<Result<Bytes, hyper::Error>> {
    loop {
        match body.frame().await? {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    return Some(Ok(data));
                }
                // Trailers are not part of the body.
            }
            Err(e) => return Some(Err(e)),
        }
    }
}

// TLS (ring) and sockets: Miri cannot run them (ASan, TSan and valgrind do).
#[cfg(all(test, not(miri)))]
mod tests;
