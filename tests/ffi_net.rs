//! Connections, listeners and name resolution through their C signatures, against
//! listeners started here on 127.0.0.1, ::1 and Unix sockets: the library's own, plain
//! std sockets, and a rustls server with a CA made at test time.

use std::ffi::{CStr, CString};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::ptr::{null, null_mut};
use std::sync::{Arc, RwLock};

use asyncbridge::ffi::bridge::*;
use asyncbridge::ffi::future::*;
use asyncbridge::ffi::net::*;
use asyncbridge::ffi::status::*;
use asyncbridge::ffi::stream::*;
use asyncbridge::ffi::value::*;

/// Tests that count this process's descriptors take it for writing; the others, for
/// reading.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

/// Far above anything here: a future that takes this long is hung.
const WATCHDOG_MS: i64 = 60_000;

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().unwrap_or_else(|p| p.into_inner())
}

fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    EXCLUSIVE.write().unwrap_or_else(|p| p.into_inner())
}

fn start() -> *mut bridge_t {
    let mut b = null_mut();
    assert_eq!(unsafe { bridge_start(null(), &mut b) }, BRIDGE_OK);
    b
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Waits until this process has `want` descriptors open again: a getaddrinfo() left
/// running by a cancel closes its own when it ends. Gives the count it settled at.
fn fds_settle_at(want: usize) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let now = open_fds();
        if now == want || std::time::Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Owned copies of what connect options point to.
#[derive(Default, Clone)]
struct Opts {
    host: Option<String>,
    port: u16,
    unix_path: Option<PathBuf>,
    flags: u32,
    server_name: Option<String>,
    extra_ca_pem: Option<String>,
    timeout_ms: u64,
}

fn tcp(host: &str, port: u16) -> Opts {
    Opts {
        host: Some(host.to_owned()),
        port,
        ..Opts::default()
    }
}

/// bridge_connect() with `o`; every string is freed right after the call.
fn connect(b: *mut bridge_t, o: &Opts) -> Result<*mut future_t, bridge_status> {
    use std::os::unix::ffi::OsStrExt;
    let host = o.host.as_ref().map(|h| CString::new(h.clone()).unwrap());
    let path = o
        .unix_path
        .as_ref()
        .map(|p| CString::new(p.as_os_str().as_bytes()).unwrap());
    let name = o
        .server_name
        .as_ref()
        .map(|n| CString::new(n.clone()).unwrap());
    let pem = o
        .extra_ca_pem
        .as_ref()
        .map(|p| CString::new(p.clone()).unwrap());
    let mut c = std::mem::MaybeUninit::<bridge_connect_options_t>::uninit();
    unsafe { bridge_connect_options_init(c.as_mut_ptr()) };
    let mut c = unsafe { c.assume_init() };
    c.host = host.as_ref().map_or(null(), |h| h.as_ptr());
    c.port = o.port;
    c.unix_path = path.as_ref().map_or(null(), |p| p.as_ptr());
    c.flags = o.flags;
    c.server_name = name.as_ref().map_or(null(), |n| n.as_ptr());
    c.extra_ca_pem = pem.as_ref().map_or(null(), |p| p.as_ptr());
    c.timeout_ms = o.timeout_ms;
    let mut f = null_mut();
    let status = unsafe { bridge_connect(b, &c, &mut f) };
    drop((host, path, name, pem));
    if status == BRIDGE_OK {
        assert!(!f.is_null());
        Ok(f)
    } else {
        assert!(f.is_null(), "out written on failure");
        Err(status)
    }
}

fn tcp_connect(b: *mut bridge_t, host: &str, port: u16) -> *mut future_t {
    let host = CString::new(host).unwrap();
    let mut f = null_mut();
    assert_eq!(
        unsafe { bridge_tcp_connect(b, host.as_ptr(), port, &mut f) },
        BRIDGE_OK
    );
    f
}

fn listen(b: *mut bridge_t, host: Option<&str>) -> Result<*mut bridge_listener_t, bridge_status> {
    let host = host.map(|h| CString::new(h).unwrap());
    let mut l = null_mut();
    let status = unsafe {
        bridge_tcp_listen(
            b,
            host.as_ref().map_or(null(), |h| h.as_ptr()),
            0,
            0,
            &mut l,
        )
    };
    if status == BRIDGE_OK {
        assert!(!l.is_null());
        assert_ne!(unsafe { bridge_listener_port(l) }, 0);
        Ok(l)
    } else {
        assert!(l.is_null());
        Err(status)
    }
}

fn accept(l: *mut bridge_listener_t) -> *mut future_t {
    let mut f = null_mut();
    assert_eq!(unsafe { bridge_listener_accept(l, &mut f) }, BRIDGE_OK);
    f
}

/// The stream a connect or accept future ended with; the future is released.
fn stream_of(f: *mut future_t) -> *mut bridge_stream_t {
    let status = unsafe { future_wait(f, WATCHDOG_MS) };
    assert_eq!(status, BRIDGE_OK, "{:?}", failure_of_unreleased(f));
    assert_eq!(unsafe { future_value_type(f) }, BRIDGE_VALUE_STREAM);
    let s = unsafe { future_take_value(f) }.cast::<bridge_stream_t>();
    assert!(!s.is_null());
    unsafe { future_release(f) };
    s
}

/// (code, message, errno) of a finished future, or its status if not FAILED.
fn failure_of_unreleased(f: *mut future_t) -> Result<(i32, String, i32), bridge_status> {
    unsafe {
        let status = future_wait(f, WATCHDOG_MS);
        if status != BRIDGE_FAILED {
            return Err(status);
        }
        let message = CStr::from_ptr(future_error_message(f))
            .to_string_lossy()
            .into_owned();
        Ok((future_error_code(f), message, future_os_error(f)))
    }
}

/// The failure a future ended with; panics if it did not fail. Releases it.
fn failure_of(f: *mut future_t) -> (i32, String, i32) {
    let got = failure_of_unreleased(f);
    unsafe { future_release(f) };
    got.unwrap_or_else(|status| panic!("ended {status}, not FAILED"))
}

fn write(s: *mut bridge_stream_t, data: &[u8]) {
    let mut f = null_mut();
    let status = unsafe { bridge_stream_write(s, data.as_ptr().cast(), data.len(), &mut f) };
    assert_eq!(status, BRIDGE_OK);
    assert_eq!(unsafe { future_wait(f, WATCHDOG_MS) }, BRIDGE_OK);
    unsafe { future_release(f) };
}

fn shutdown(s: *mut bridge_stream_t) {
    let mut f = null_mut();
    assert_eq!(unsafe { bridge_stream_shutdown(s, &mut f) }, BRIDGE_OK);
    assert_eq!(unsafe { future_wait(f, WATCHDOG_MS) }, BRIDGE_OK);
    unsafe { future_release(f) };
}

/// One read's bytes; empty at end of stream.
fn read_some(s: *mut bridge_stream_t) -> Vec<u8> {
    let mut f = null_mut();
    assert_eq!(unsafe { bridge_stream_read(s, 0, &mut f) }, BRIDGE_OK);
    assert_eq!(unsafe { future_wait(f, WATCHDOG_MS) }, BRIDGE_OK);
    let bytes = unsafe { &*future_value(f).cast::<bridge_bytes_t>() };
    let copy = if bytes.len == 0 {
        Vec::new()
    } else {
        unsafe { std::slice::from_raw_parts(bytes.data, bytes.len) }.to_vec()
    };
    unsafe { future_release(f) };
    copy
}

/// Reads until `want` bytes came or the stream ended.
fn read_n(s: *mut bridge_stream_t, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < want {
        let chunk = read_some(s);
        if chunk.is_empty() {
            break;
        }
        got.extend(chunk);
    }
    got
}

/// Both ways over a connected pair, then the end of stream each way.
fn exchange(client: *mut bridge_stream_t, server: *mut bridge_stream_t) {
    write(client, b"hello, server");
    assert_eq!(read_n(server, 13), b"hello, server");
    write(server, b"hello, client");
    assert_eq!(read_n(client, 13), b"hello, client");
    shutdown(client);
    assert!(read_some(server).is_empty(), "no end of stream");
    shutdown(server);
    assert!(read_some(client).is_empty(), "no end of stream");
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ab-net-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port nothing listens on: bound, then let go.
fn refused_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

// ---- TCP ------------------------------------------------------------------------------

#[test]
fn tcp_connect_to_a_loopback_listener_and_talk_both_ways() {
    let _shared = shared();
    let b = start();
    let l = listen(b, None).unwrap();
    let port = unsafe { bridge_listener_port(l) };
    let a = accept(l);
    let client = stream_of(tcp_connect(b, "127.0.0.1", port));
    let server = stream_of(a);
    exchange(client, server);
    unsafe {
        bridge_stream_close(client);
        bridge_stream_close(server);
        bridge_listener_close(l);
        bridge_free(b);
    }
}

#[test]
fn tcp_over_ipv6_loopback_when_there_is_one() {
    let _shared = shared();
    let b = start();
    let Ok(l) = listen(b, Some("::1")) else {
        println!("skipped: no ::1 here");
        unsafe { bridge_free(b) };
        return;
    };
    let port = unsafe { bridge_listener_port(l) };
    for host in ["::1", "[::1]"] {
        let a = accept(l);
        let client = stream_of(tcp_connect(b, host, port));
        let server = stream_of(a);
        exchange(client, server);
        unsafe {
            bridge_stream_close(client);
            bridge_stream_close(server);
        }
    }
    unsafe {
        bridge_listener_close(l);
        bridge_free(b);
    }
}

/// "localhost" may resolve to ::1 before 127.0.0.1: with only 127.0.0.1 listening,
/// the connection still succeeds by trying the next address.
#[test]
fn a_name_is_resolved_and_each_address_tried() {
    let _shared = shared();
    let b = start();
    let l = listen(b, Some("127.0.0.1")).unwrap();
    let port = unsafe { bridge_listener_port(l) };
    let a = accept(l);
    let client = stream_of(tcp_connect(b, "localhost", port));
    let server = stream_of(a);
    exchange(client, server);
    unsafe {
        bridge_stream_close(client);
        bridge_stream_close(server);
        bridge_listener_close(l);
        bridge_free(b);
    }
}

#[test]
fn a_refused_port_fails_io_econnrefused_naming_host_and_port() {
    let _shared = shared();
    let b = start();
    let port = refused_port();
    let (code, message, errno) = failure_of(tcp_connect(b, "127.0.0.1", port));
    assert_eq!(code, BRIDGE_E_IO);
    assert_eq!(errno, libc::ECONNREFUSED);
    assert_eq!(
        message,
        format!("connect to 127.0.0.1:{port}: Connection refused")
    );
    // By name, every address tried is named.
    let (code, message, errno) = failure_of(tcp_connect(b, "localhost", port));
    assert_eq!(code, BRIDGE_E_IO);
    assert_eq!(errno, libc::ECONNREFUSED);
    assert!(
        message.starts_with(&format!("connect to localhost:{port}: "))
            && message.contains(&format!("127.0.0.1:{port}: Connection refused")),
        "{message}"
    );
    unsafe { bridge_free(b) };
}

#[test]
fn an_unknown_name_fails_dns() {
    let _shared = shared();
    let b = start();
    let (code, message, _) = failure_of(tcp_connect(b, "nonexistent.invalid", 80));
    assert_eq!(code, BRIDGE_E_DNS, "{message}");
    assert!(
        message.starts_with("resolve nonexistent.invalid: "),
        "{message}"
    );
    let host = c"nonexistent.invalid";
    let mut f = null_mut();
    assert_eq!(
        unsafe { bridge_dns_resolve(b, host.as_ptr(), &mut f) },
        BRIDGE_OK
    );
    let (code, _, _) = failure_of(f);
    assert_eq!(code, BRIDGE_E_DNS);
    unsafe { bridge_free(b) };
}

#[test]
fn many_clients_are_accepted_one_after_the_other() {
    let _shared = shared();
    let b = start();
    let l = listen(b, None).unwrap();
    let port = unsafe { bridge_listener_port(l) };
    const CLIENTS: u32 = 64;
    // Queued by the system (backlog 1024) before any accept.
    let clients: Vec<std::net::TcpStream> = (0..CLIENTS)
        .map(|id| {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.write_all(&id.to_le_bytes()).unwrap();
            c
        })
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..CLIENTS {
        let s = stream_of(accept(l));
        let id = read_n(s, 4);
        seen.insert(u32::from_le_bytes(id.try_into().unwrap()));
        write(s, b"bye");
        unsafe { bridge_stream_close(s) };
    }
    assert_eq!(seen, (0..CLIENTS).collect());
    for mut c in clients {
        let mut answer = Vec::new();
        c.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"bye");
    }
    unsafe {
        bridge_listener_close(l);
        bridge_free(b);
    }
}

#[test]
fn a_second_pending_accept_is_busy_and_close_ends_the_first_closed() {
    let _shared = shared();
    let b = start();
    let l = listen(b, None).unwrap();
    let first = accept(l);
    let mut second = null_mut();
    assert_eq!(
        unsafe { bridge_listener_accept(l, &mut second) },
        BRIDGE_E_BUSY
    );
    assert!(second.is_null());
    // Cancelled, the accept gives its turn back.
    assert_eq!(unsafe { future_cancel(first) }, BRIDGE_OK);
    assert_eq!(unsafe { future_wait(first, WATCHDOG_MS) }, BRIDGE_CANCELLED);
    unsafe { future_release(first) };
    let pending = accept(l);
    assert_eq!(unsafe { future_wait(pending, 20) }, BRIDGE_TIMEOUT);
    unsafe { bridge_listener_close(l) };
    let (code, message, _) = failure_of(pending);
    assert_eq!(code, BRIDGE_E_CLOSED, "{message}");
    unsafe { bridge_free(b) };
}

/// A cancelled accept takes no connection: the next accept gets it.
#[test]
fn a_cancelled_accept_leaves_the_connection_for_the_next() {
    let _shared = shared();
    let b = start();
    let l = listen(b, None).unwrap();
    let port = unsafe { bridge_listener_port(l) };
    let first = accept(l);
    assert_eq!(unsafe { future_cancel(first) }, BRIDGE_OK);
    assert_eq!(unsafe { future_wait(first, WATCHDOG_MS) }, BRIDGE_CANCELLED);
    unsafe { future_release(first) };
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"still here").unwrap();
    let s = stream_of(accept(l));
    assert_eq!(read_n(s, 10), b"still here");
    unsafe {
        bridge_stream_close(s);
        bridge_listener_close(l);
        bridge_free(b);
    }
}

/// A cancel that lands as the accept takes a connection off the queue (after the
/// socket's accept, before the future ends) loses nothing either: the future ends
/// CANCELLED and the connection goes to the next accept, or it ends OK with it.
///
/// Clients queue with their number written, then a last one with `SENTINEL`; the
/// system hands connections over in the order they came, so every client must have
/// been accepted by the time the sentinel is. Accepts are cancelled after a spin
/// that varies, to land in that window some of the time.
#[test]
fn an_accept_cancelled_as_it_takes_a_connection_leaves_it_for_the_next() {
    const SENTINEL: u32 = u32::MAX;
    const CLIENTS: u32 = 200;
    const ROUNDS: u32 = 5;
    let _shared = shared();
    let b = start();
    let l = listen(b, None).unwrap();
    let port = unsafe { bridge_listener_port(l) };
    let mut attempt = 0u64;
    let mut cancelled = 0u32;
    for round in 0..ROUNDS {
        let first = round * CLIENTS;
        let mut clients: Vec<std::net::TcpStream> = (first..first + CLIENTS)
            .chain([SENTINEL])
            .map(|id| {
                let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                c.write_all(&id.to_le_bytes()).unwrap();
                c
            })
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        loop {
            let f = accept(l);
            attempt += 1;
            for _ in 0..(attempt * 7919 % 3000) {
                std::hint::spin_loop();
            }
            unsafe { future_cancel(f) };
            let status = unsafe { future_wait(f, WATCHDOG_MS) };
            if status == BRIDGE_CANCELLED {
                cancelled += 1;
                unsafe { future_release(f) };
                continue;
            }
            let s = stream_of(f);
            let id = u32::from_le_bytes(read_n(s, 4).try_into().unwrap());
            unsafe { bridge_stream_close(s) };
            if id == SENTINEL {
                break;
            }
            seen.insert(id);
        }
        let lost: Vec<u32> = (first..first + CLIENTS)
            .filter(|id| !seen.contains(id))
            .collect();
        assert!(lost.is_empty(), "cancelled accepts lost clients {lost:?}");
        clients.clear();
    }
    // Most accepts end OK (the connection is queued before they start); some must
    // have been cancelled, or the test tried nothing.
    assert!(
        cancelled > 0,
        "no accept was cancelled in {attempt} attempts"
    );
    unsafe {
        bridge_listener_close(l);
        bridge_free(b);
    }
}

#[test]
fn cancelled_connects_accepts_and_resolutions_leave_no_descriptor() {
    let _exclusive = exclusive();
    let b = start();
    // Accepts but never speaks: the kernel completes the connection, the TLS
    // handshake then waits for ever.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let l = listen(b, None).unwrap();
    let before = open_fds();

    let handshake = connect(
        b,
        &Opts {
            flags: BRIDGE_CONNECT_TLS,
            ..tcp("127.0.0.1", port)
        },
    )
    .unwrap();
    let a = accept(l);
    assert_eq!(unsafe { future_wait(handshake, 50) }, BRIDGE_TIMEOUT);
    for f in [handshake, a] {
        assert_eq!(unsafe { future_cancel(f) }, BRIDGE_OK);
        assert_eq!(unsafe { future_wait(f, WATCHDOG_MS) }, BRIDGE_CANCELLED);
        unsafe { future_release(f) };
    }
    assert_eq!(open_fds(), before, "a socket was left open");

    // A resolution cancelled at once ends CANCELLED (unless it had ended already)
    // without waiting for its getaddrinfo(), which closes its descriptors when it ends.
    for _ in 0..10 {
        let mut f = null_mut();
        assert_eq!(
            unsafe { bridge_dns_resolve(b, c"localhost".as_ptr(), &mut f) },
            BRIDGE_OK
        );
        if unsafe { future_cancel(f) } == BRIDGE_OK {
            assert_eq!(unsafe { future_wait(f, WATCHDOG_MS) }, BRIDGE_CANCELLED);
        }
        unsafe { future_release(f) };
    }
    assert_eq!(fds_settle_at(before), before, "a descriptor was left open");

    // A connection made and left in its future is closed with the future.
    let a = accept(l);
    let f = tcp_connect(b, "127.0.0.1", unsafe { bridge_listener_port(l) });
    assert_eq!(unsafe { future_wait(f, WATCHDOG_MS) }, BRIDGE_OK);
    assert_eq!(unsafe { future_wait(a, WATCHDOG_MS) }, BRIDGE_OK);
    unsafe {
        future_release(f);
        future_release(a);
    }
    assert_eq!(fds_settle_at(before), before, "a connection was left open");
    unsafe {
        bridge_listener_close(l);
        bridge_free(b);
    }
    drop(silent);
}

#[test]
fn timeout_ms_bounds_a_handshake_that_never_ends() {
    let _shared = shared();
    let b = start();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let f = connect(
        b,
        &Opts {
            flags: BRIDGE_CONNECT_TLS,
            timeout_ms: 100,
            ..tcp("127.0.0.1", port)
        },
    )
    .unwrap();
    let (code, message, _) = failure_of(f);
    assert_eq!(code, BRIDGE_E_TIMED_OUT, "{message}");
    assert_eq!(
        message,
        format!("connect to 127.0.0.1:{port}: timed out after 100 ms")
    );
    unsafe { bridge_free(b) };
}

// ---- Unix sockets ---------------------------------------------------------------------

#[test]
fn unix_sockets_connect_listen_and_the_path_goes_with_the_listener() {
    let _shared = shared();
    let dir = temp_dir("unix");
    let path = dir.join("s.sock");
    let c_path = CString::new(path.to_str().unwrap()).unwrap();
    let b = start();
    let mut l = null_mut();
    assert_eq!(
        unsafe { bridge_unix_listen(b, c_path.as_ptr(), &mut l) },
        BRIDGE_OK
    );
    assert_eq!(unsafe { bridge_listener_port(l) }, 0);
    assert!(path.exists());
    // The path is taken: a second listener is refused with EADDRINUSE.
    let mut again = null_mut();
    assert_eq!(
        unsafe { bridge_unix_listen(b, c_path.as_ptr(), &mut again) },
        BRIDGE_E_IO
    );
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EADDRINUSE)
    );
    assert!(again.is_null());

    let a = accept(l);
    let opts = Opts {
        unix_path: Some(path.clone()),
        ..Opts::default()
    };
    let client = stream_of(connect(b, &opts).unwrap());
    let server = stream_of(a);
    exchange(client, server);
    unsafe {
        bridge_stream_close(client);
        bridge_stream_close(server);
        bridge_listener_close(l);
    }
    assert!(!path.exists(), "the socket file is left behind");
    // Nothing listens any more: ENOENT, naming the path.
    let (code, message, errno) = failure_of(connect(b, &opts).unwrap());
    assert_eq!((code, errno), (BRIDGE_E_IO, libc::ENOENT), "{message}");
    assert!(message.contains(path.to_str().unwrap()), "{message}");
    unsafe { bridge_free(b) };
    let _ = std::fs::remove_dir_all(dir);
}

// ---- TLS ------------------------------------------------------------------------------

/// A CA, and a server configuration whose certificate (for localhost and 127.0.0.1)
/// it signed.
fn test_pki() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "asyncbridge net test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .unwrap();
    (ca.pem(), Arc::new(config))
}

/// A TLS echo server on 127.0.0.1: each connection echoes until the client's end,
/// then sends close_notify. Its port.
fn tls_echo_server(config: Arc<rustls::ServerConfig>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut buf = [0u8; 4096];
                loop {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    port
}

#[test]
fn tls_to_a_loopback_server_with_a_private_ca() {
    let _shared = shared();
    let (ca, config) = test_pki();
    let port = tls_echo_server(config);
    let b = start();
    for (host, server_name) in [("127.0.0.1", None), ("127.0.0.1", Some("localhost"))] {
        let opts = Opts {
            flags: BRIDGE_CONNECT_TLS,
            extra_ca_pem: Some(ca.clone()),
            server_name: server_name.map(str::to_owned),
            ..tcp(host, port)
        };
        let s = stream_of(connect(b, &opts).unwrap());
        write(s, b"over TLS");
        assert_eq!(read_n(s, 8), b"over TLS");
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        write(s, &big);
        assert_eq!(read_n(s, big.len()), big);
        // close_notify out, the server's close_notify back: the end of stream.
        shutdown(s);
        assert!(read_some(s).is_empty(), "no end of stream");
        unsafe { bridge_stream_close(s) };
    }
    unsafe { bridge_free(b) };
}

#[test]
fn tls_refuses_a_wrong_name_and_an_untrusted_certificate() {
    let _shared = shared();
    let (ca, config) = test_pki();
    let port = tls_echo_server(config);
    let b = start();
    let wrong_name = Opts {
        flags: BRIDGE_CONNECT_TLS,
        extra_ca_pem: Some(ca.clone()),
        server_name: Some("example.com".into()),
        ..tcp("127.0.0.1", port)
    };
    let (code, message, _) = failure_of(connect(b, &wrong_name).unwrap());
    assert_eq!(code, BRIDGE_E_TLS, "{message}");
    assert!(
        message.starts_with(&format!("TLS with 127.0.0.1:{port}: ")),
        "{message}"
    );
    let untrusted = Opts {
        flags: BRIDGE_CONNECT_TLS,
        ..tcp("127.0.0.1", port)
    };
    let (code, message, _) = failure_of(connect(b, &untrusted).unwrap());
    assert_eq!(code, BRIDGE_E_TLS, "{message}");
    // A CA of its own is not the server's either.
    let (other_ca, _) = test_pki();
    let other = Opts {
        extra_ca_pem: Some(other_ca),
        ..untrusted
    };
    let (code, message, _) = failure_of(connect(b, &other).unwrap());
    assert_eq!(code, BRIDGE_E_TLS, "{message}");
    unsafe { bridge_free(b) };
}

// ---- name resolution ------------------------------------------------------------------

/// The addresses of a resolve future that ended OK; the value is taken and freed
/// with bridge_addresses_free().
fn resolved(b: *mut bridge_t, host: &str) -> Vec<String> {
    let host = CString::new(host).unwrap();
    let mut f = null_mut();
    assert_eq!(
        unsafe { bridge_dns_resolve(b, host.as_ptr(), &mut f) },
        BRIDGE_OK
    );
    assert_eq!(unsafe { future_wait(f, WATCHDOG_MS) }, BRIDGE_OK);
    assert_eq!(unsafe { future_value_type(f) }, BRIDGE_VALUE_ADDRESSES);
    let a = unsafe { future_take_value(f) }.cast::<bridge_addresses_t>();
    unsafe { future_release(f) };
    let count = unsafe { bridge_addresses_count(a) };
    let list: Vec<String> = (0..count)
        .map(|i| {
            let s = unsafe { bridge_addresses_at(a, i) };
            assert!(!s.is_null());
            unsafe { CStr::from_ptr(s) }.to_str().unwrap().to_owned()
        })
        .collect();
    assert!(unsafe { bridge_addresses_at(a, count) }.is_null());
    unsafe { bridge_addresses_free(a.cast()) };
    list
}

#[test]
fn localhost_resolves_to_loopback_addresses() {
    let _shared = shared();
    let b = start();
    let found = resolved(b, "localhost");
    assert!(!found.is_empty());
    for address in &found {
        let ip: std::net::IpAddr = address.parse().unwrap();
        assert!(ip.is_loopback(), "{found:?}");
    }
    let mut unique = found.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), found.len(), "{found:?}");
    // Numeric addresses answer themselves.
    assert_eq!(resolved(b, "127.0.0.1"), ["127.0.0.1"]);
    assert_eq!(resolved(b, "[::1]"), ["::1"]);
    // A value left in its future is freed with it.
    let mut f = null_mut();
    assert_eq!(
        unsafe { bridge_dns_resolve(b, c"localhost".as_ptr(), &mut f) },
        BRIDGE_OK
    );
    assert_eq!(unsafe { future_wait(f, WATCHDOG_MS) }, BRIDGE_OK);
    unsafe {
        future_release(f);
        bridge_free(b);
    }
}

// ---- invalid input --------------------------------------------------------------------

#[test]
fn null_and_invalid_input_is_invalid() {
    let _shared = shared();
    let b = start();
    let mut f = null_mut();
    let mut l = null_mut();
    let port = refused_port();
    unsafe {
        // NULL handles and out-parameters.
        bridge_connect_options_init(null_mut());
        let mut o = std::mem::MaybeUninit::<bridge_connect_options_t>::uninit();
        bridge_connect_options_init(o.as_mut_ptr());
        let mut o = o.assume_init();
        o.host = c"127.0.0.1".as_ptr();
        o.port = port;
        assert_eq!(bridge_connect(null_mut(), &o, &mut f), BRIDGE_E_INVALID);
        assert_eq!(bridge_connect(b, null(), &mut f), BRIDGE_E_INVALID);
        assert_eq!(bridge_connect(b, &o, null_mut()), BRIDGE_E_INVALID);
        assert_eq!(
            bridge_tcp_connect(b, null(), port, &mut f),
            BRIDGE_E_INVALID
        );
        assert_eq!(
            bridge_tcp_connect(null_mut(), c"127.0.0.1".as_ptr(), port, &mut f),
            BRIDGE_E_INVALID
        );
        assert_eq!(
            bridge_tcp_listen(null_mut(), null(), 0, 0, &mut l),
            BRIDGE_E_INVALID
        );
        assert_eq!(
            bridge_tcp_listen(b, null(), 0, 0, null_mut()),
            BRIDGE_E_INVALID
        );
        assert_eq!(bridge_unix_listen(b, null(), &mut l), BRIDGE_E_INVALID);
        assert_eq!(
            bridge_unix_listen(b, c"".as_ptr(), &mut l),
            BRIDGE_E_INVALID
        );
        assert_eq!(bridge_listener_accept(null_mut(), &mut f), BRIDGE_E_INVALID);
        assert_eq!(bridge_listener_port(null()), 0);
        bridge_listener_close(null_mut());
        assert_eq!(bridge_dns_resolve(b, null(), &mut f), BRIDGE_E_INVALID);
        assert_eq!(
            bridge_dns_resolve(b, c"".as_ptr(), &mut f),
            BRIDGE_E_INVALID
        );
        assert_eq!(
            bridge_dns_resolve(null_mut(), c"localhost".as_ptr(), &mut f),
            BRIDGE_E_INVALID
        );
        assert_eq!(
            bridge_dns_resolve(b, c"localhost".as_ptr(), null_mut()),
            BRIDGE_E_INVALID
        );
        assert_eq!(bridge_addresses_count(null()), 0);
        assert!(bridge_addresses_at(null(), 0).is_null());
        bridge_addresses_free(null_mut());
        // A name is not bound: listening must not wait for a resolver.
        assert_eq!(
            bridge_tcp_listen(b, c"localhost".as_ptr(), 0, 0, &mut l),
            BRIDGE_E_INVALID
        );
        let listener = bridge_listener_accept(null_mut(), null_mut());
        assert_eq!(listener, BRIDGE_E_INVALID);
        let mut real = null_mut();
        assert_eq!(bridge_tcp_listen(b, null(), 0, 0, &mut real), BRIDGE_OK);
        assert_eq!(bridge_listener_accept(real, null_mut()), BRIDGE_E_INVALID);
        bridge_listener_close(real);
    }
    assert!(f.is_null() && l.is_null(), "out written on failure");

    let long_path = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
    let bad: Vec<(&str, Opts)> = vec![
        (
            "no host",
            Opts {
                port,
                ..Opts::default()
            },
        ),
        ("empty host", tcp("", port)),
        ("port 0", tcp("127.0.0.1", 0)),
        (
            "unknown flag",
            Opts {
                flags: 4,
                ..tcp("127.0.0.1", port)
            },
        ),
        (
            "system roots without TLS",
            Opts {
                flags: BRIDGE_CONNECT_SYSTEM_ROOTS,
                ..tcp("127.0.0.1", port)
            },
        ),
        (
            "server name without TLS",
            Opts {
                server_name: Some("localhost".into()),
                ..tcp("127.0.0.1", port)
            },
        ),
        (
            "extra CAs without TLS",
            Opts {
                extra_ca_pem: Some("x".into()),
                ..tcp("127.0.0.1", port)
            },
        ),
        (
            "PEM without a certificate",
            Opts {
                flags: BRIDGE_CONNECT_TLS,
                extra_ca_pem: Some("no certificate here".into()),
                ..tcp("127.0.0.1", port)
            },
        ),
        (
            "invalid server name",
            Opts {
                flags: BRIDGE_CONNECT_TLS,
                server_name: Some("not a name!".into()),
                ..tcp("127.0.0.1", port)
            },
        ),
        (
            "empty Unix path",
            Opts {
                unix_path: Some(PathBuf::new()),
                ..Opts::default()
            },
        ),
        (
            "long Unix path",
            Opts {
                unix_path: Some(long_path),
                ..Opts::default()
            },
        ),
        (
            "TLS over Unix without a server name",
            Opts {
                flags: BRIDGE_CONNECT_TLS,
                unix_path: Some("/tmp/x.sock".into()),
                ..Opts::default()
            },
        ),
    ];
    for (what, opts) in bad {
        assert_eq!(connect(b, &opts).err(), Some(BRIDGE_E_INVALID), "{what}");
    }

    // The size rule: smaller is refused; larger only with zeros past the struct.
    #[repr(C)]
    struct Later {
        options: bridge_connect_options_t,
        more: u64,
    }
    unsafe {
        let mut later = std::mem::MaybeUninit::<Later>::zeroed().assume_init();
        bridge_connect_options_init(&mut later.options);
        later.options.host = c"127.0.0.1".as_ptr();
        later.options.port = port;
        later.options.size -= 1;
        assert_eq!(bridge_connect(b, &later.options, &mut f), BRIDGE_E_INVALID);
        later.options.size = std::mem::size_of::<Later>() as u32;
        later.more = 1;
        assert_eq!(bridge_connect(b, &later.options, &mut f), BRIDGE_E_INVALID);
        later.more = 0;
        assert_eq!(bridge_connect(b, &later.options, &mut f), BRIDGE_OK);
        let (code, _, errno) = failure_of(f);
        assert_eq!((code, errno), (BRIDGE_E_IO, libc::ECONNREFUSED));
    }

    // A stopped bridge starts nothing.
    unsafe {
        assert_eq!(bridge_shutdown(b, 0), BRIDGE_OK);
        let mut f = null_mut();
        assert_eq!(
            bridge_tcp_connect(b, c"127.0.0.1".as_ptr(), port, &mut f),
            BRIDGE_E_NOT_RUNNING
        );
        let mut l = null_mut();
        assert_eq!(
            bridge_tcp_listen(b, null(), 0, 0, &mut l),
            BRIDGE_E_NOT_RUNNING
        );
        assert_eq!(
            bridge_dns_resolve(b, c"localhost".as_ptr(), &mut f),
            BRIDGE_E_NOT_RUNNING
        );
        bridge_free(b);
    }
}

#[test]
fn a_tls_record_that_does_not_decrypt_fails_the_read_with_tls() {
    let _shared = shared();
    let (ca, config) = test_pki();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(b"hello").unwrap();
        tls.flush().unwrap();
        // Once the client has read the greeting (it answers "ok"), an application
        // data record whose contents do not decrypt.
        let mut ack = [0u8; 2];
        tls.read_exact(&mut ack).unwrap();
        tls.sock.write_all(&[0x17, 0x03, 0x03, 0x00, 0x20]).unwrap();
        tls.sock.write_all(&[0x5a; 0x20]).unwrap();
        // Until the client hangs up.
        let mut rest = Vec::new();
        let _ = tls.sock.read_to_end(&mut rest);
    });
    let b = start();
    let opts = Opts {
        flags: BRIDGE_CONNECT_TLS,
        extra_ca_pem: Some(ca),
        ..tcp("127.0.0.1", port)
    };
    let s = stream_of(connect(b, &opts).unwrap());
    assert_eq!(read_n(s, 5), b"hello");
    let mut f = null_mut();
    assert_eq!(
        unsafe { bridge_stream_write(s, b"ok".as_ptr().cast(), 2, &mut f) },
        BRIDGE_OK
    );
    assert_eq!(unsafe { future_wait(f, 60_000) }, BRIDGE_OK);
    unsafe { future_release(f) };
    assert_eq!(unsafe { bridge_stream_read(s, 0, &mut f) }, BRIDGE_OK);
    let (code, message, _) = failure_of(f);
    unsafe {
        bridge_stream_close(s);
        bridge_free(b);
    }
    server.join().unwrap();
    assert_eq!(code, BRIDGE_E_TLS, "{message}");
    assert!(message.starts_with("read: TLS: "), "{message}");
}
