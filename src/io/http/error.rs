//! What went wrong, in the library's codes and in words a user can act on.

use crate::future::Failure;
use crate::status::Error;

/// A failure from hyper: an OS error inside it is `Error::Io` with its errno; a TLS
/// error `Error::Tls`; anything else the peer did wrong is `Error::Protocol`.
pub(super) fn from_hyper(e: &hyper::Error, what: &str) -> Failure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if let Some(failure) = tls_inside(io, what) {
                return failure;
            }
            if let Some(errno) = io.raw_os_error() {
                return Failure::io(errno, what);
            }
            if io.kind() == std::io::ErrorKind::UnexpectedEof {
                return Failure::new(
                    Error::Protocol.code(),
                    format!("{what}: connection closed before the response was complete"),
                );
            }
        }
        source = error.source();
    }
    // (hyper's `is_parse_too_large` exists only with its server feature.)
    if e.is_parse() && e.to_string().contains("too large") {
        return Failure::new(
            Error::TooLarge.code(),
            format!("{what}: response head too large ({e})"),
        );
    }
    let reason = if e.is_incomplete_message() || e.is_canceled() {
        "connection closed before the response was complete".to_owned()
    } else {
        describe(e)
    };
    Failure::new(Error::Protocol.code(), format!("{what}: {reason}"))
}

/// hyper's message and those of its sources, joined.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let more = inner.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = inner.source();
    }
    text
}

/// A failure of the TCP connection or another OS call.
pub(super) fn io_error(e: &std::io::Error, what: &str) -> Failure {
    match e.raw_os_error() {
        Some(errno) => Failure::io(errno, what),
        None => Failure::new(Error::Io.code(), format!("{what}: {e}")),
    }
}

/// A failure of the TLS handshake: certificate verification, or the peer's alert.
pub(super) fn tls_error(e: &std::io::Error, peer: &str) -> Failure {
    tls_inside(e, peer).unwrap_or_else(|| match e.raw_os_error() {
        Some(errno) => Failure::io(errno, format_args!("TLS handshake with {peer}")),
        None => Failure::new(Error::Tls.code(), format!("TLS handshake with {peer}: {e}")),
    })
}

fn tls_inside(e: &std::io::Error, peer: &str) -> Option<Failure> {
    let inner = e.get_ref()?;
    let tls = inner.downcast_ref::<rustls::Error>()?;
    Some(Failure::new(
        Error::Tls.code(),
        format!("TLS with {peer}: {tls}"),
    ))
}
