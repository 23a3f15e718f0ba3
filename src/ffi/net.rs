//! Network connections: bridge_connect() and bridge_tcp_connect(), listeners
//! (bridge_listener_t), name resolution (bridge_dns_resolve(), bridge_addresses_t).

use std::ffi::{c_char, c_void, CStr, CString, OsStr};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::ffi::boundary::boundary;
use crate::ffi::bridge::{bridge_t, retain_bridge};
use crate::ffi::embed::{spawn_on, CValue};
use crate::ffi::future::future_t;
use crate::ffi::handle::{box_borrow, box_into_c, box_take, sized_options, Castable, OwnedByBox};
use crate::ffi::status::{bridge_status, BRIDGE_E_INVALID, BRIDGE_OK};
use crate::ffi::stream::stream_value;
use crate::ffi::value::BRIDGE_VALUE_ADDRESSES;
use crate::io::net::{self, ConnectOptions, Connector, Listener, Target, TlsOptions};
use crate::runtime::Bridge;
use crate::status::Error;
use crate::sync::Arc;

/// bridge_connect_options_t.flags: a TLS handshake after connecting; the future ends
/// once it is done. Without the library's "tls" feature (on by default) this flag is
/// BRIDGE_E_INVALID.
pub const BRIDGE_CONNECT_TLS: u32 = 1;
/// bridge_connect_options_t.flags: with BRIDGE_CONNECT_TLS, trust the system's CA
/// store (loaded once per bridge) instead of the built-in Mozilla roots.
pub const BRIDGE_CONNECT_SYSTEM_ROOTS: u32 = 2;

const KNOWN_FLAGS: u32 = BRIDGE_CONNECT_TLS | BRIDGE_CONNECT_SYSTEM_ROOTS;

/// Where bridge_connect() connects, and how. Initialise it with
/// bridge_connect_options_init(), then set the fields you need; every string is copied
/// by bridge_connect(), so all of them may be freed once it returns.
#[repr(C)]
pub struct bridge_connect_options {
    /// sizeof(bridge_connect_options_t), set by bridge_connect_options_init(). A
    /// smaller size is BRIDGE_E_INVALID. A larger one (a program built against a later
    /// header) is accepted when every byte past this struct is 0, i.e. when it asks
    /// for nothing this version does not know; up to 4096.
    pub size: u32,
    /// TCP and TLS: a host name ("example.com", "localhost") or a numeric address
    /// ("127.0.0.1", "::1", "[::1]"). Required unless `unix_path` is set; unused then.
    pub host: *const c_char,
    /// TCP and TLS: the port, not 0. Unused with `unix_path`.
    pub port: u16,
    /// Non-NULL: connect to this Unix stream socket instead (`host` and `port`
    /// unused); not empty, at most 107 bytes.
    pub unix_path: *const c_char,
    /// BRIDGE_CONNECT_* bits; any other bit is BRIDGE_E_INVALID.
    pub flags: u32,
    /// With BRIDGE_CONNECT_TLS: the name the server's certificate must hold; NULL:
    /// `host` (a numeric host is checked against the certificate's IP addresses).
    /// Required for TLS over `unix_path`. Set without BRIDGE_CONNECT_TLS:
    /// BRIDGE_E_INVALID.
    pub server_name: *const c_char,
    /// With BRIDGE_CONNECT_TLS: PEM certificates trusted besides the roots (a private
    /// CA), as bridge_http_request_t's; NULL: none. Set without BRIDGE_CONNECT_TLS:
    /// BRIDGE_E_INVALID.
    pub extra_ca_pem: *const c_char,
    /// The name resolution, connection and TLS handshake together, in milliseconds;
    /// 0: no limit. When it runs out the future fails with BRIDGE_E_TIMED_OUT.
    pub timeout_ms: u64,
}

/// Where bridge_connect() connects (see struct bridge_connect_options).
pub type bridge_connect_options_t = bridge_connect_options;

/// A listening TCP or Unix socket, made by bridge_tcp_listen() or bridge_unix_listen()
/// and freed with bridge_listener_close().
///
/// It takes one pending accept at a time. Every function may be called from any
/// thread, the close excepted while another call on the same listener runs; accepts
/// run on the bridge's loop and their futures are futures of that bridge.
pub struct bridge_listener {
    bridge: Arc<Bridge>,
    listener: Listener,
}

/// A listening socket (see struct bridge_listener).
pub type bridge_listener_t = bridge_listener;

impl Castable for bridge_listener_t {
    type Rust = bridge_listener;
    type Ownership = OwnedByBox;
}

/// The addresses a name resolves to: the value of a bridge_dns_resolve() future (type
/// BRIDGE_VALUE_ADDRESSES).
///
/// Owned by the future (freed with it) unless taken with future_take_value(), then
/// freed with bridge_addresses_free(). Strings it hands out live as long as it.
pub struct bridge_addresses {
    numeric: Vec<CString>,
}

/// The addresses a name resolves to (see struct bridge_addresses).
pub type bridge_addresses_t = bridge_addresses;

impl Castable for bridge_addresses_t {
    type Rust = bridge_addresses;
    type Ownership = OwnedByBox;
}

/// Fills `o` with the defaults: size = sizeof(bridge_connect_options_t), every other
/// field 0 or NULL (no host yet, no TLS, no timeout).
///
/// @param o the options to fill; NULL does nothing.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_connect_options_init(o: *mut bridge_connect_options_t) {
    boundary(|| {
        if o.is_null() {
            return;
        }
        let defaults = bridge_connect_options {
            size: std::mem::size_of::<bridge_connect_options_t>() as u32,
            host: std::ptr::null(),
            port: 0,
            unix_path: std::ptr::null(),
            flags: 0,
            server_name: std::ptr::null(),
            extra_ca_pem: std::ptr::null(),
            timeout_ms: 0,
        };
        // SAFETY: `o` is non-NULL and, per the API, points to a writable
        // bridge_connect_options_t; `write` does not read the old value.
        unsafe { o.write(defaults) };
    })
}

/// Connects to a TCP server (by name or address) or a Unix socket, with TLS if asked;
/// the future ends with the connection as a bridge_stream_t* (BRIDGE_VALUE_STREAM).
///
/// Take the stream with future_take_value() and close it with bridge_stream_close(); a
/// stream left in the future is closed when the future is freed. TCP streams have
/// TCP_NODELAY set.
///
/// A host name is resolved as bridge_dns_resolve() does; its addresses are then tried
/// one after the other, in the resolver's order (no parallel attempts), until one
/// connects. The future fails with:
/// - BRIDGE_E_IO when no address accepts the connection; future_os_error() gives the
///   errno of the last attempt (ECONNREFUSED, ENETUNREACH, ENOENT for a Unix path that
///   does not exist...) and the message names the target and each address tried
///   ("connect to 127.0.0.1:1: Connection refused");
/// - BRIDGE_E_DNS when the name cannot be resolved;
/// - BRIDGE_E_TLS when the handshake fails: a certificate not trusted or not for
///   `server_name`, the server's alert, a peer that does not speak TLS;
/// - BRIDGE_E_TIMED_OUT when `timeout_ms` runs out.
///
/// future_cancel() asks the bridge's loop to stop the resolution, the attempt or the
/// handshake: the future ends BRIDGE_CANCELLED as soon as the loop has dropped it and
/// closed the socket, without waiting for a getaddrinfo() already running (it finishes
/// on its own, see bridge_dns_resolve()); it may still be pending when future_cancel()
/// returns.
///
/// @param b the bridge whose loop connects, and runs the stream's operations later.
/// @param o the options, read during the call only (everything is copied).
/// @param out receives the future (one reference, the caller's; release it with
///        future_release()); written only on BRIDGE_OK.
/// @return BRIDGE_OK; BRIDGE_E_INVALID, with nothing started, for NULL `b`, `o` or
///         `out`, a `size` that is not accepted, no `host` (or an empty one) without
///         `unix_path`, port 0, an empty or too long `unix_path`, strings that are not
///         UTF-8 (host, server_name), an unknown flag, server_name, extra_ca_pem or
///         BRIDGE_CONNECT_SYSTEM_ROOTS without BRIDGE_CONNECT_TLS, an invalid
///         server_name, extra_ca_pem without a certificate that parses, TLS over
///         `unix_path` without server_name, BRIDGE_CONNECT_SYSTEM_ROOTS when the system
///         store holds no certificate, BRIDGE_CONNECT_TLS in a library built without
///         TLS; BRIDGE_E_NOT_RUNNING once shut down; BRIDGE_E_BUSY (max_pending).
/// Any thread; never blocks (the first BRIDGE_CONNECT_SYSTEM_ROOTS connection reads
/// the system's CA store on the calling thread).
#[no_mangle]
pub unsafe extern "C" fn bridge_connect(
    b: *mut bridge_t,
    o: *const bridge_connect_options_t,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `o` is NULL or points to at least `size` readable bytes of options
        // whose pointers are NULL or valid, per the API.
        let Some(options) = (unsafe { options_from_c(o) }) else {
            return BRIDGE_E_INVALID;
        };
        // SAFETY: `b` is NULL or a live handle per the API; `out` NULL or writable.
        unsafe { connect_with(b, options, out) }
    })
}

/// Connects to a TCP server: bridge_connect() with `host` and `port` and every other
/// option at its default (no TLS, no timeout).
///
/// @param b the bridge.
/// @param host a host name or numeric address, copied; NULL or empty is
///        BRIDGE_E_INVALID.
/// @param port the port; 0 is BRIDGE_E_INVALID.
/// @param out receives the future (one reference, the caller's), written only on
///        BRIDGE_OK; its value is a bridge_stream_t* (BRIDGE_VALUE_STREAM).
/// @return as bridge_connect().
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_tcp_connect(
    b: *mut bridge_t,
    host: *const c_char,
    port: u16,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `host` is NULL or NUL-terminated, per the API.
        let Some(host) = (unsafe { utf8(host) }) else {
            return BRIDGE_E_INVALID;
        };
        let options = ConnectOptions {
            target: Target::Tcp { host, port },
            tls: None,
            timeout: None,
        };
        // SAFETY: `b` is NULL or a live handle per the API; `out` NULL or writable.
        unsafe { connect_with(b, options, out) }
    })
}

/// The body of both connects once the options are copied.
///
/// # Safety
/// `b` is NULL or a live bridge handle; `out` is NULL or writable.
unsafe fn connect_with(
    b: *mut bridge_t,
    options: ConnectOptions,
    out: *mut *mut future_t,
) -> bridge_status {
    // SAFETY: per this function's contract.
    let (Some(bridge), false) = (unsafe { retain_bridge(b) }, out.is_null()) else {
        return BRIDGE_E_INVALID;
    };
    let connector = match bridge.extension(Connector::new) {
        Ok(connector) => connector,
        Err(error) => return error.code(),
    };
    let Ok(prepared) = connector.prepare(options) else {
        return BRIDGE_E_INVALID;
    };
    let on = bridge.clone();
    spawn_on(&on, out, move |_task| async move {
        let stream = net::connect(prepared).await?;
        Ok(Some(stream_value(bridge, stream)))
    })
}

/// Copies C options; `None` if they are invalid.
///
/// # Safety
/// `o` is NULL or points to at least `(*o).size` readable bytes of a
/// bridge_connect_options_t whose pointers are NULL or NUL-terminated strings.
unsafe fn options_from_c(o: *const bridge_connect_options_t) -> Option<ConnectOptions> {
    // SAFETY: per this function's contract.
    let c = unsafe { sized_options(o) }?;
    let tls = c.flags & BRIDGE_CONNECT_TLS != 0;
    let tls_only = c.flags & BRIDGE_CONNECT_SYSTEM_ROOTS != 0
        || !c.server_name.is_null()
        || !c.extra_ca_pem.is_null();
    if c.flags & !KNOWN_FLAGS != 0 || (tls_only && !tls) {
        return None;
    }
    let target = if c.unix_path.is_null() {
        // SAFETY: a non-NULL `host` is NUL-terminated, per the API.
        let host = unsafe { utf8(c.host) }?;
        Target::Tcp { host, port: c.port }
    } else {
        // SAFETY: `unix_path` is non-NULL and NUL-terminated, per the API.
        let path = unsafe { CStr::from_ptr(c.unix_path) };
        Target::Unix(PathBuf::from(OsStr::from_bytes(path.to_bytes())))
    };
    let tls = if tls {
        let server_name = if c.server_name.is_null() {
            None
        } else {
            // SAFETY: `server_name` is non-NULL and NUL-terminated, per the API.
            Some(unsafe { utf8(c.server_name) }?)
        };
        let extra_ca_pem = (!c.extra_ca_pem.is_null()).then(|| {
            // SAFETY: `extra_ca_pem` is non-NULL and NUL-terminated, per the API.
            unsafe { CStr::from_ptr(c.extra_ca_pem) }
                .to_bytes()
                .to_vec()
        });
        Some(TlsOptions {
            server_name,
            system_roots: c.flags & BRIDGE_CONNECT_SYSTEM_ROOTS != 0,
            extra_ca_pem,
        })
    } else {
        None
    };
    Some(ConnectOptions {
        target,
        tls,
        timeout: (c.timeout_ms != 0).then(|| Duration::from_millis(c.timeout_ms)),
    })
}

/// A copy of a UTF-8 C string; `None` for NULL or other bytes.
///
/// # Safety
/// `s` is NULL or NUL-terminated.
unsafe fn utf8(s: *const c_char) -> Option<String> {
    if s.is_null() {
        return None;
    }
    // SAFETY: per the contract above.
    let s = unsafe { CStr::from_ptr(s) };
    s.to_str().ok().map(str::to_owned)
}

/// Makes a TCP listener: bound and listening when this returns.
///
/// SO_REUSEADDR is set, so a port left in TIME_WAIT by an earlier run can be bound
/// again. Connections are queued by the system from this moment on; take them with
/// bridge_listener_accept().
///
/// @param b the bridge whose loop accepts, and runs the accepted streams' operations.
/// @param host a numeric address to bind ("127.0.0.1", "::1", "[::1]"; "0.0.0.0" or
///        "::" for every interface); NULL: "127.0.0.1". A name is BRIDGE_E_INVALID
///        (binding must not wait for a resolver).
/// @param port the port; 0: one the system chooses (read it with
///        bridge_listener_port()).
/// @param backlog the queue of connections not accepted yet; 0: 1024. The system caps
///        it (net.core.somaxconn).
/// @param out receives the listener, written only on BRIDGE_OK; the caller frees it
///        with bridge_listener_close().
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `b` or `out` or a `host` that is not a
///         numeric address; BRIDGE_E_IO when the socket cannot be bound or listen, with
///         errno set (EADDRINUSE, EACCES, EADDRNOTAVAIL, EMFILE...);
///         BRIDGE_E_NOT_RUNNING once shut down.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_tcp_listen(
    b: *mut bridge_t,
    host: *const c_char,
    port: u16,
    backlog: u32,
    out: *mut *mut bridge_listener_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `b` is NULL or a live handle per the API.
        let (Some(bridge), false) = (unsafe { retain_bridge(b) }, out.is_null()) else {
            return BRIDGE_E_INVALID;
        };
        let ip = if host.is_null() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            // SAFETY: `host` is non-NULL and NUL-terminated, per the API.
            let Some(text) = (unsafe { utf8(host) }) else {
                return BRIDGE_E_INVALID;
            };
            let bare = text
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(&text);
            match bare.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => return BRIDGE_E_INVALID,
            }
        };
        let made = match bridge.enter() {
            Ok(_inside) => Listener::tcp(SocketAddr::new(ip, port), backlog),
            Err(error) => return error.code(),
        };
        // SAFETY: `out` is non-NULL and writable, per the API.
        unsafe { listener_out(bridge, made, out) }
    })
}

/// Makes a Unix stream socket listener at `path`: bound and listening when this
/// returns, backlog 1024.
///
/// The socket file is removed by bridge_listener_close() (unless another socket was
/// bound at the path since). A file already at `path` is not replaced: BRIDGE_E_IO
/// with EADDRINUSE (remove a stale socket first).
///
/// @param b the bridge whose loop accepts.
/// @param path the socket's path, copied; NULL, empty or longer than 107 bytes is
///        BRIDGE_E_INVALID.
/// @param out receives the listener, written only on BRIDGE_OK; the caller frees it
///        with bridge_listener_close().
/// @return BRIDGE_OK; BRIDGE_E_INVALID; BRIDGE_E_IO with errno set (EADDRINUSE,
///         ENOENT for a missing directory, EACCES...); BRIDGE_E_NOT_RUNNING once shut
///         down.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_unix_listen(
    b: *mut bridge_t,
    path: *const c_char,
    out: *mut *mut bridge_listener_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `b` is NULL or a live handle per the API.
        let (Some(bridge), false, false) =
            (unsafe { retain_bridge(b) }, path.is_null(), out.is_null())
        else {
            return BRIDGE_E_INVALID;
        };
        // SAFETY: `path` is non-NULL and NUL-terminated, per the API.
        let path = unsafe { CStr::from_ptr(path) }.to_bytes();
        if path.is_empty() || path.len() > net::MAX_UNIX_PATH {
            return BRIDGE_E_INVALID;
        }
        let path = PathBuf::from(OsStr::from_bytes(path));
        let made = match bridge.enter() {
            Ok(_inside) => Listener::unix(&path, 0),
            Err(error) => return error.code(),
        };
        // SAFETY: `out` is non-NULL and writable, per the API.
        unsafe { listener_out(bridge, made, out) }
    })
}

/// Writes a new listener's handle, or sets errno and says BRIDGE_E_IO.
///
/// # Safety
/// `out` is non-NULL and writable.
unsafe fn listener_out(
    bridge: Arc<Bridge>,
    made: std::io::Result<Listener>,
    out: *mut *mut bridge_listener_t,
) -> bridge_status {
    match made {
        Ok(listener) => {
            let handle =
                box_into_c::<bridge_listener_t>(Box::new(bridge_listener { bridge, listener }));
            // SAFETY: per this function's contract.
            unsafe { out.write(handle) };
            BRIDGE_OK
        }
        Err(e) => {
            set_errno(e.raw_os_error().unwrap_or(libc::EIO));
            Error::Io.code()
        }
    }
}

/// Sets the calling thread's errno, which C reads after a BRIDGE_E_IO return.
fn set_errno(errno: i32) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    // SAFETY: the location of the calling thread's errno, always valid.
    unsafe {
        *libc::__errno_location() = errno
    };
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    // SAFETY: as above.
    unsafe {
        *libc::__error() = errno
    };
}

/// The TCP port a listener listens on: the one the system chose for port 0.
///
/// @param l the listener; NULL gives 0.
/// @return the port; 0 for a Unix socket listener and for NULL.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_listener_port(l: *const bridge_listener_t) -> u16 {
    let port = boundary(|| {
        // SAFETY: `l` is NULL or a live listener, per the API.
        unsafe { box_borrow::<bridge_listener_t>(l) }.map_or(0, |h| u32::from(h.listener.port()))
    });
    port as u16
}

/// Accepts the next connection: the future ends with it as a bridge_stream_t*
/// (BRIDGE_VALUE_STREAM; take it with future_take_value(), close it with
/// bridge_stream_close()). TCP streams have TCP_NODELAY set.
///
/// One accept may be pending at a time: call again once the future has ended (from
/// its done callback, for an accept loop). Connections the peer gave up before they
/// were taken are skipped. The future fails with BRIDGE_E_CLOSED when
/// bridge_listener_close() is called while it waits, and with BRIDGE_E_IO and the
/// errno for an OS error (EMFILE when out of descriptors: the connection stays queued,
/// try again later).
///
/// A cancelled accept takes no connection: future_cancel() ends it BRIDGE_CANCELLED
/// (on the bridge's loop, soon after), and a connection it had already taken off the
/// queue when the cancel came is kept by the listener and returned by the next
/// accept, before any other. An accept whose future ends BRIDGE_OK was past that
/// point: the cancel came too late and changed nothing.
///
/// @param l the listener; NULL is BRIDGE_E_INVALID.
/// @param out receives the future (one reference, the caller's), written only on
///        BRIDGE_OK; NULL is BRIDGE_E_INVALID.
/// @return BRIDGE_OK; BRIDGE_E_INVALID; BRIDGE_E_BUSY while another accept of this
///         listener is pending (its future not ended yet); BRIDGE_E_NOT_RUNNING once
///         the bridge shut down (and BRIDGE_E_BUSY at its max_pending).
/// Any thread. Using `l` after bridge_listener_close() is undefined.
#[no_mangle]
pub unsafe extern "C" fn bridge_listener_accept(
    l: *mut bridge_listener_t,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `l` is NULL or a live listener, per the API.
        let (Some(handle), false) = (unsafe { box_borrow::<bridge_listener_t>(l) }, out.is_null())
        else {
            return BRIDGE_E_INVALID;
        };
        let accept = match handle.listener.begin_accept() {
            Ok(accept) => accept,
            Err(error) => return error.code(),
        };
        let bridge = handle.bridge.clone();
        spawn_on(&handle.bridge, out, move |task| async move {
            let stream = accept.run(|| task.commit()).await?;
            Ok(Some(stream_value(bridge, stream)))
        })
    })
}

/// Closes a listener and frees its handle.
///
/// A pending accept ends FAILED with BRIDGE_E_CLOSED; the socket is closed now, or on
/// the bridge's loop as that accept ends (at once). Connections queued and not
/// accepted are reset. The socket file of a bridge_unix_listen() listener is removed
/// before this returns. Streams accepted earlier are not affected.
///
/// @param l the listener; NULL does nothing.
/// Any thread, including a callback of one of its accepts' futures; not while another
/// call on `l` runs. Using `l` afterwards is undefined.
#[no_mangle]
pub unsafe extern "C" fn bridge_listener_close(l: *mut bridge_listener_t) {
    boundary(|| {
        // SAFETY: `l` is NULL or a live listener that the caller gives up.
        if let Some(handle) = unsafe { box_take::<bridge_listener_t>(l) } {
            handle.listener.close();
        }
    })
}

/// Resolves a host name: the future ends with its addresses as a bridge_addresses_t*
/// (BRIDGE_VALUE_ADDRESSES), in the order to try them.
///
/// The order is the system resolver's (getaddrinfo(), which sorts by RFC 6724: IPv6
/// first where it is usable), each address once; a numeric address is its own answer,
/// with no lookup. The future fails with BRIDGE_E_DNS (the message gives the
/// resolver's reason) when the name is unknown or the resolver cannot be reached.
///
/// The lookup runs on a blocking thread of the bridge. future_cancel() asks the
/// bridge's loop to drop the lookup, and the future ends BRIDGE_CANCELLED as soon as
/// the loop has done so, without waiting for getaddrinfo(); it may still be pending
/// when future_cancel() returns (wait for it, or use its done callback). A
/// getaddrinfo() already running cannot be interrupted: it goes on to its end on that
/// thread (bounded by the resolver's timeouts, resolv.conf) and its answer is dropped.
///
/// @param b the bridge.
/// @param host the name or numeric address, copied; NULL, empty or not UTF-8 is
///        BRIDGE_E_INVALID.
/// @param out receives the future (one reference, the caller's), written only on
///        BRIDGE_OK; NULL is BRIDGE_E_INVALID.
/// @return BRIDGE_OK; BRIDGE_E_INVALID; BRIDGE_E_NOT_RUNNING once shut down;
///         BRIDGE_E_BUSY (max_pending).
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_dns_resolve(
    b: *mut bridge_t,
    host: *const c_char,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `b` is NULL or a live handle per the API.
        let (Some(bridge), false) = (unsafe { retain_bridge(b) }, out.is_null()) else {
            return BRIDGE_E_INVALID;
        };
        // SAFETY: `host` is NULL or NUL-terminated, per the API.
        let Some(host) = (unsafe { utf8(host) }) else {
            return BRIDGE_E_INVALID;
        };
        if host.is_empty() || host.contains('\0') {
            return BRIDGE_E_INVALID;
        }
        spawn_on(&bridge, out, move |_task| async move {
            let found = net::resolve(&host).await?;
            Ok(Some(addresses_value(found)))
        })
    })
}

/// Addresses as a future value of type BRIDGE_VALUE_ADDRESSES.
fn addresses_value(found: Vec<IpAddr>) -> CValue {
    let numeric = found
        .iter()
        .filter_map(|ip| CString::new(ip.to_string()).ok())
        .collect();
    let addresses = box_into_c::<bridge_addresses_t>(Box::new(bridge_addresses { numeric }));
    CValue::with_type(
        addresses.cast(),
        Some(bridge_addresses_free),
        BRIDGE_VALUE_ADDRESSES,
    )
}

/// How many addresses a bridge_dns_resolve() answer holds.
///
/// @param a the addresses; NULL gives 0.
/// @return the count (at least 1 for an answer of the library).
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_addresses_count(a: *const bridge_addresses_t) -> usize {
    boundary(|| {
        // SAFETY: `a` is NULL or live addresses, per the API.
        unsafe { box_borrow::<bridge_addresses_t>(a) }.map_or(0, |a| a.numeric.len())
    })
}

/// One address of a bridge_dns_resolve() answer, numeric ("127.0.0.1", "::1", without
/// brackets or port).
///
/// @param a the addresses; NULL gives NULL.
/// @param i its index, from 0.
/// @return the address, a string owned by `a` that lives as long as it; NULL when `i`
///         is past the end.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_addresses_at(
    a: *const bridge_addresses_t,
    i: usize,
) -> *const c_char {
    boundary(|| {
        // SAFETY: `a` is NULL or live addresses, per the API.
        unsafe { box_borrow::<bridge_addresses_t>(a) }
            .and_then(|a| a.numeric.get(i))
            .map_or(std::ptr::null(), |s| s.as_ptr())
    })
}

/// Frees a bridge_addresses_t taken from a future (a bridge_free_fn).
///
/// @param a the addresses; NULL does nothing. Using them, or strings they handed
///        out, afterwards is undefined.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_addresses_free(a: *mut c_void) {
    boundary(|| {
        // SAFETY: `a` is NULL or addresses made by `addresses_value` and given up.
        drop(unsafe { box_take::<bridge_addresses_t>(a.cast()) });
    })
}
