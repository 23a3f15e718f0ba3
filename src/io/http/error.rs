//! What went wrong, in the library's codes and in words a user can act on.

use crate::future::Failure;
use crate::io::tls::rustls_error;
use crate::status::Error;

/// A failure from hyper: an OS error inside it is `Error::Io` with its errno; a TLS
/// error `Error::Tls`; anything else the peer did wrong is `Error::Protocol`.
pub(super) fn from_hyper(e: &hyper::Error, what: &str) -> Failure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if let Some(tls) = rustls_error(io) {
                return Failure::new(Error::Tls.code(), format!("TLS with {what}: {tls}"));
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
