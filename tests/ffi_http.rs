//! bridge_http_send through its C signature, against servers started here on
//! loopback: Python's http.server (plain, and with TLS from a CA made at test time)
//! for what a real server does, hostile servers written here for what it would not
//! (slow, malformed, huge, endless, silent), and an HTTP/2 server on hyper.

use std::ffi::{c_char, c_void, CStr, CString};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asyncbridge::ffi::bridge::*;
use asyncbridge::ffi::future::*;
use asyncbridge::ffi::http::*;
use asyncbridge::ffi::status::*;
use asyncbridge::ffi::value::*;

const WAIT_MS: i64 = 20_000;

/// The tests count this process's descriptors: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

// ---- the C API, wrapped for the tests ------------------------------------------------

fn start() -> *mut bridge_t {
    let mut b = null_mut();
    assert_eq!(unsafe { bridge_start(null(), &mut b) }, BRIDGE_OK);
    b
}

/// Owned copies of what a request points to.
#[derive(Default, Clone)]
struct Req {
    method: Option<String>,
    url: String,
    headers: Vec<String>,
    body: Vec<u8>,
    timeout_ms: u64,
    max_body: u64,
    max_redirects: u32,
    flags: u32,
    extra_ca_pem: Option<String>,
    output_path: Option<PathBuf>,
}

fn get(url: &str) -> Req {
    Req {
        url: url.to_owned(),
        ..Req::default()
    }
}

/// Sends `req`; every string is freed right after the call (inputs are copied).
fn send(b: *mut bridge_t, req: &Req) -> Result<*mut future_t, bridge_status> {
    let url = CString::new(req.url.clone()).unwrap();
    let method = req.method.clone().map(|m| CString::new(m).unwrap());
    let headers: Vec<CString> = req
        .headers
        .iter()
        .map(|h| CString::new(h.clone()).unwrap())
        .collect();
    let mut header_ptrs: Vec<*const c_char> = headers.iter().map(|h| h.as_ptr()).collect();
    header_ptrs.push(null());
    let body = req.body.clone();
    let pem = req.extra_ca_pem.clone().map(|p| CString::new(p).unwrap());
    let output = req.output_path.as_ref().map(|p| {
        use std::os::unix::ffi::OsStrExt;
        CString::new(p.as_os_str().as_bytes()).unwrap()
    });
    let mut r = std::mem::MaybeUninit::<bridge_http_request_t>::uninit();
    unsafe { bridge_http_request_init(r.as_mut_ptr()) };
    let mut r = unsafe { r.assume_init() };
    r.url = url.as_ptr();
    r.method = method.as_ref().map_or(null(), |m| m.as_ptr());
    r.headers = if req.headers.is_empty() {
        null()
    } else {
        header_ptrs.as_ptr()
    };
    r.body = if body.is_empty() {
        null()
    } else {
        body.as_ptr().cast()
    };
    r.body_len = body.len();
    r.timeout_ms = req.timeout_ms;
    r.max_body = req.max_body;
    r.max_redirects = req.max_redirects;
    r.flags = req.flags;
    r.extra_ca_pem = pem.as_ref().map_or(null(), |p| p.as_ptr());
    r.output_path = output.as_ref().map_or(null(), |p| p.as_ptr());
    let mut f = null_mut();
    let status = unsafe { bridge_http_send(b, &r, &mut f) };
    // Everything the request pointed to goes now, overwritten first.
    drop((url, method, headers, header_ptrs, pem, output));
    let mut body = body;
    body.fill(0xAA);
    drop(body);
    if status == BRIDGE_OK {
        assert!(!f.is_null());
        Ok(f)
    } else {
        assert!(f.is_null(), "out written on failure");
        Err(status)
    }
}

/// What a finished future holds.
#[derive(Debug)]
enum Got {
    Ok {
        status: i32,
        body: Vec<u8>,
        headers: Vec<(String, String)>,
        url: String,
    },
    Failed {
        code: i32,
        message: String,
        errno: i32,
    },
    Cancelled,
}

fn finish(f: *mut future_t) -> Got {
    let got = unsafe {
        match future_wait(f, WAIT_MS) {
            BRIDGE_OK => {
                assert_eq!(future_value_type(f), BRIDGE_VALUE_HTTP_RESPONSE);
                let r = future_value(f).cast::<bridge_http_response_t>();
                let mut len = 0;
                let data = bridge_http_response_body(r, &mut len);
                let body = if len == 0 {
                    assert!(data.is_null());
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(data, len).to_vec()
                };
                let mut headers = Vec::new();
                for i in 0..bridge_http_response_header_count(r) {
                    let (mut n, mut v) = (null(), null());
                    assert_eq!(
                        bridge_http_response_header_at(r, i, &mut n, &mut v),
                        BRIDGE_OK
                    );
                    headers.push((
                        CStr::from_ptr(n).to_str().unwrap().to_owned(),
                        CStr::from_ptr(v).to_str().unwrap().to_owned(),
                    ));
                }
                let count = bridge_http_response_header_count(r);
                assert_eq!(
                    bridge_http_response_header_at(r, count, null_mut(), null_mut()),
                    BRIDGE_E_INVALID
                );
                Got::Ok {
                    status: bridge_http_response_status(r),
                    body,
                    headers,
                    url: CStr::from_ptr(bridge_http_response_url(r))
                        .to_str()
                        .unwrap()
                        .to_owned(),
                }
            }
            BRIDGE_FAILED => Got::Failed {
                code: future_error_code(f),
                message: CStr::from_ptr(future_error_message(f))
                    .to_str()
                    .unwrap()
                    .to_owned(),
                errno: future_os_error(f),
            },
            BRIDGE_CANCELLED => Got::Cancelled,
            other => panic!("future_wait: {other}"),
        }
    };
    unsafe { future_release(f) };
    got
}

fn fetch(b: *mut bridge_t, req: &Req) -> Got {
    finish(send(b, req).expect("bridge_http_send refused"))
}

#[track_caller]
fn ok_body(got: Got) -> (i32, Vec<u8>) {
    match got {
        Got::Ok { status, body, .. } => (status, body),
        other => panic!("expected a response, got {other:?}"),
    }
}

#[track_caller]
fn failure(got: Got, code: i32, words: &[&str]) -> (String, i32) {
    match got {
        Got::Failed {
            code: c,
            message,
            errno,
        } => {
            assert_eq!(c, code, "code of {message:?}");
            for w in words {
                assert!(message.contains(w), "{message:?} lacks {w:?}");
            }
            (message, errno)
        }
        other => panic!("expected failure {code}, got {other:?}"),
    }
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("asyncbridge-http-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---- servers ---------------------------------------------------------------------------

/// A child process killed and reaped when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Python's http.server on 127.0.0.1 serving `dir`, plain or with TLS (`cert`, `key`).
/// Prints its port first.
fn python_server(dir: &Path, tls: Option<(&Path, &Path)>) -> (Process, u16) {
    const SCRIPT: &str = r#"
import functools, http.server, ssl, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
handler.func.log_message = lambda *a: None
httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
if len(sys.argv) > 2:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(SCRIPT).arg(dir);
    if let Some((cert, key)) = tls {
        cmd.arg(cert).arg(key);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("python server port");
    (Process(child), port)
}

/// A server written here: `handle` gets each accepted connection on a thread of its
/// own; the counter counts connections.
struct Raw {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

fn raw_server(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> Raw {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let handle = Arc::new(handle);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            count.fetch_add(1, Ordering::SeqCst);
            let handle = handle.clone();
            std::thread::spawn(move || handle(stream));
        }
    });
    Raw { port, accepted }
}

/// Reads one request head (and a Content-Length body); `None` at end of stream.
fn read_request(stream: &mut BufReader<TcpStream>) -> Option<(String, Vec<String>, Vec<u8>)> {
    let mut first = String::new();
    if stream.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).ok()?;
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        headers.push(line);
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).ok()?;
    Some((first.trim_end().to_owned(), headers, body))
}

/// A server answering each request with `respond(request line, headers, body)`,
/// keeping connections alive.
fn answering(respond: impl Fn(&str, &[String], &[u8]) -> Vec<u8> + Send + Sync + 'static) -> Raw {
    raw_server(move |stream| {
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        while let Some((line, headers, body)) = read_request(&mut reader) {
            if writer.write_all(&respond(&line, &headers, &body)).is_err() {
                break;
            }
        }
    })
}

fn response(status: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A CA and a certificate for 127.0.0.1 and localhost signed by it, as PEM files in
/// `dir`: (ca.pem contents, cert path, key path).
fn test_pki(dir: &Path) -> (String, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "asyncbridge test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca.pem(), cert_path, key_path)
}

// ---- against Python's http.server ------------------------------------------------------

#[test]
fn files_from_python_http_server() {
    let _serial = serial();
    let dir = temp_dir("files");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.join("data.bin"), &content).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/index.html"), b"in sub").unwrap();
    let (_server, port) = python_server(&dir, None);
    let b = start();
    let url = format!("http://127.0.0.1:{port}/data.bin");

    let f = send(b, &get(&url)).unwrap();
    unsafe { assert_eq!(future_wait(f, WAIT_MS), BRIDGE_OK) };
    let (mut done, mut total) = (0, 0);
    unsafe { assert_eq!(future_progress(f, &mut done, &mut total), BRIDGE_OK) };
    assert_eq!((done, total), (content.len() as u64, content.len() as u64));
    match finish(f) {
        Got::Ok {
            status,
            body,
            headers,
            url: final_url,
        } => {
            assert_eq!(status, 200);
            assert_eq!(body, content);
            assert!(headers
                .iter()
                .any(|(n, v)| n == "content-length" && v == &content.len().to_string()));
            assert_eq!(final_url, url);
        }
        other => panic!("{other:?}"),
    }

    // Case-insensitive header lookup.
    let f = send(b, &get(&url)).unwrap();
    unsafe {
        assert_eq!(future_wait(f, WAIT_MS), BRIDGE_OK);
        let r = future_value(f).cast::<bridge_http_response_t>();
        let v = bridge_http_response_header(r, c"CONTENT-length".as_ptr());
        assert_eq!(
            CStr::from_ptr(v).to_str().unwrap(),
            content.len().to_string()
        );
        assert!(bridge_http_response_header(r, c"x-none".as_ptr()).is_null());
        assert!(bridge_http_response_header(r, null()).is_null());
        future_release(f);
    }

    // 404: a result, or a failure with FAIL_ON_STATUS.
    let missing = format!("http://127.0.0.1:{port}/missing");
    assert_eq!(ok_body(fetch(b, &get(&missing))).0, 404);
    let mut req = get(&missing);
    req.flags = BRIDGE_HTTP_FAIL_ON_STATUS;
    failure(
        fetch(b, &req),
        BRIDGE_E_HTTP_STATUS,
        &["HTTP 404 Not Found"],
    );

    // http.server redirects a directory without its slash: followed only when asked.
    let sub = format!("http://127.0.0.1:{port}/sub");
    assert_eq!(ok_body(fetch(b, &get(&sub))).0, 301);
    let mut req = get(&sub);
    req.max_redirects = 3;
    match fetch(b, &req) {
        Got::Ok {
            status, body, url, ..
        } => {
            assert_eq!((status, body.as_slice()), (200, &b"in sub"[..]));
            assert_eq!(url, format!("{sub}/"));
        }
        other => panic!("{other:?}"),
    }

    // The body to a file: complete, renamed into place, nothing else left.
    let out = dir.join("out").join("copy.bin");
    std::fs::create_dir(dir.join("out")).unwrap();
    let mut req = get(&url);
    req.output_path = Some(out.clone());
    let (status, body) = ok_body(fetch(b, &req));
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(std::fs::read(&out).unwrap(), content);
    assert_eq!(std::fs::read_dir(dir.join("out")).unwrap().count(), 1);
    // A directory, or a file in a missing directory: refused before anything is sent.
    let mut req = get(&url);
    req.output_path = Some(dir.join("out"));
    let (_, errno) = failure(
        fetch(b, &req),
        BRIDGE_E_IO,
        &["output_path", "Is a directory"],
    );
    assert_eq!(errno, libc::EISDIR);
    let missing_dir = dir.join("no-such-dir").join("x.bin");
    req.output_path = Some(missing_dir.clone());
    let (_, errno) = failure(
        fetch(b, &req),
        BRIDGE_E_IO,
        &[&format!("create {}", missing_dir.display())],
    );
    assert_eq!(errno, libc::ENOENT);

    unsafe { bridge_free(b) };
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn https_with_a_ca_made_here() {
    let _serial = serial();
    let dir = temp_dir("tls");
    std::fs::write(dir.join("hello.txt"), b"hello over TLS").unwrap();
    let (ca, cert, key) = test_pki(&dir);
    let (_server, port) = python_server(&dir, Some((&cert, &key)));
    let b = start();
    let url = format!("https://127.0.0.1:{port}/hello.txt");
    // The built-in roots do not know the test CA.
    failure(
        fetch(b, &get(&url)),
        BRIDGE_E_TLS,
        &["TLS", &format!("127.0.0.1:{port}"), "certificate"],
    );
    let mut req = get(&url);
    req.extra_ca_pem = Some(ca.clone());
    let (status, body) = ok_body(fetch(b, &req));
    assert_eq!((status, body.as_slice()), (200, &b"hello over TLS"[..]));
    // A burst at once: the first connection finds the server speaks HTTP/1.1, the
    // others then connect on their own.
    let burst: Vec<_> = (0..10)
        .map(|_| {
            let mut req = get(&url);
            req.extra_ca_pem = Some(ca.clone());
            send(b, &req).unwrap()
        })
        .collect();
    for f in burst {
        let (status, body) = ok_body(finish(f));
        assert_eq!((status, body.as_slice()), (200, &b"hello over TLS"[..]));
    }
    // By name too (the certificate names localhost).
    let mut req = get(&format!("https://localhost:{port}/hello.txt"));
    req.extra_ca_pem = Some(ca.clone());
    assert_eq!(ok_body(fetch(b, &req)).0, 200);
    // The system's store does not know the test CA either; with it added, it works.
    let mut req = get(&url);
    req.flags = BRIDGE_HTTP_SYSTEM_ROOTS;
    match send(b, &req) {
        Ok(f) => {
            failure(finish(f), BRIDGE_E_TLS, &["certificate"]);
            req.extra_ca_pem = Some(ca);
            assert_eq!(ok_body(fetch(b, &req)).0, 200);
        }
        // Refused at send only when this machine has no CA store at all.
        Err(status) => {
            assert_eq!(status, BRIDGE_E_INVALID);
            assert!(!Path::new("/etc/ssl/certs/ca-certificates.crt").exists());
        }
    }
    unsafe { bridge_free(b) };
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- HTTP/2 ----------------------------------------------------------------------------

/// An HTTP/2-only TLS server on hyper answering "h2 <path>", counting connections.
fn h2_server(cert: &Path, key: &Path) -> (u16, Arc<AtomicUsize>) {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                        let text = format!("h2 {}", req.uri().path());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(hyper::body::Bytes::from(text)),
                        ))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
    });
    (port, connections)
}

#[test]
fn http2_by_alpn_shares_one_connection() {
    let _serial = serial();
    let dir = temp_dir("h2");
    let (ca, cert, key) = test_pki(&dir);
    let (port, connections) = h2_server(&cert, &key);
    let b = start();
    let futures: Vec<_> = (0..20)
        .map(|i| {
            let mut req = get(&format!("https://127.0.0.1:{port}/n{i}"));
            req.extra_ca_pem = Some(ca.clone());
            // All at once: the first sets the connection up, the others wait for it
            // and share it.
            send(b, &req).unwrap()
        })
        .collect();
    for (i, f) in futures.into_iter().enumerate() {
        let (status, body) = ok_body(finish(f));
        assert_eq!((status, body), (200, format!("h2 /n{i}").into_bytes()));
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    unsafe { bridge_free(b) };
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- a well-behaved server of our own ---------------------------------------------------

#[test]
fn post_with_headers_and_body_on_one_kept_connection() {
    let _serial = serial();
    let server = answering(|line, headers, body| {
        let agent = headers
            .iter()
            .find(|h| h.to_ascii_lowercase().starts_with("user-agent:"))
            .cloned()
            .unwrap_or_default();
        let custom = headers
            .iter()
            .find(|h| h.to_ascii_lowercase().starts_with("x-test:"))
            .cloned()
            .unwrap_or_default();
        let mut text = format!("{line}|{custom}|{agent}|").into_bytes();
        text.extend_from_slice(body);
        response("200 OK", &["X-Multi: a", "X-Multi: b"], &text)
    });
    let b = start();
    let url = format!("http://127.0.0.1:{}/echo?x=1", server.port);
    for i in 0..20 {
        let mut req = get(&url);
        req.method = Some("POST".into());
        req.headers = vec![format!("X-Test: round {i}")];
        req.body = format!("payload {i}").into_bytes();
        match fetch(b, &req) {
            Got::Ok {
                status,
                body,
                headers,
                ..
            } => {
                assert_eq!(status, 200);
                assert_eq!(
                    String::from_utf8(body).unwrap(),
                    format!(
                        "POST /echo?x=1 HTTP/1.1|x-test: round {i}|user-agent: asyncbridge/{}|payload {i}",
                        env!("CARGO_PKG_VERSION")
                    )
                );
                let multi: Vec<_> = headers.iter().filter(|(n, _)| n == "x-multi").collect();
                assert_eq!(multi.len(), 2);
            }
            other => panic!("{other:?}"),
        }
    }
    // Keep-alive: twenty requests, one connection.
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    unsafe { bridge_free(b) };
}

// ---- failures --------------------------------------------------------------------------

#[test]
fn connect_refused_and_unknown_host() {
    let _serial = serial();
    let b = start();
    // A port nobody listens on: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_, errno) = failure(
        fetch(b, &get(&format!("http://127.0.0.1:{port}/"))),
        BRIDGE_E_IO,
        &[&format!("connect 127.0.0.1:{port}"), "refused"],
    );
    assert_eq!(errno, libc::ECONNREFUSED);
    failure(
        fetch(b, &get("http://nonexistent.invalid/")),
        BRIDGE_E_DNS,
        &["resolve nonexistent.invalid"],
    );
    unsafe { bridge_free(b) };
}

#[test]
fn hostile_servers_fail_with_the_right_code() {
    let _serial = serial();
    let b = start();
    let huge_head = answering(|_, _, _| {
        let mut r = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..20_000 {
            r.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "v".repeat(20)).as_bytes());
        }
        r.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        r
    });
    failure(
        fetch(b, &get(&format!("http://127.0.0.1:{}/", huge_head.port))),
        BRIDGE_E_TOO_LARGE,
        &["too large"],
    );

    let garbage = answering(|_, _, _| b"SMTP ready\r\n\r\n".to_vec());
    failure(
        fetch(b, &get(&format!("http://127.0.0.1:{}/", garbage.port))),
        BRIDGE_E_PROTOCOL,
        &[&format!("127.0.0.1:{}", garbage.port)],
    );

    let broken_chunks = answering(|_, _, _| {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZZ\r\n".to_vec()
    });
    failure(
        fetch(
            b,
            &get(&format!("http://127.0.0.1:{}/", broken_chunks.port)),
        ),
        BRIDGE_E_PROTOCOL,
        &[],
    );

    let short = raw_server(|stream| {
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        if read_request(&mut reader).is_some() {
            let _ = writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly this");
        }
    });
    failure(
        fetch(b, &get(&format!("http://127.0.0.1:{}/", short.port))),
        BRIDGE_E_PROTOCOL,
        &["closed before the response was complete"],
    );

    // An endless body: the limit ends it, memory stays bounded by it.
    let endless = raw_server(|stream| {
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        if read_request(&mut reader).is_some() {
            let _ = writer.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
            let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
            while writer.write_all(chunk.as_bytes()).is_ok() {}
        }
    });
    let mut req = get(&format!("http://127.0.0.1:{}/", endless.port));
    req.max_body = 1 << 20;
    failure(fetch(b, &req), BRIDGE_E_TOO_LARGE, &["max_body", "1048576"]);
    // A declared length over the limit fails before the body is read.
    let declared =
        answering(|_, _, _| b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n".to_vec());
    let mut req = get(&format!("http://127.0.0.1:{}/", declared.port));
    req.max_body = 1000;
    failure(fetch(b, &req), BRIDGE_E_TOO_LARGE, &["max_body"]);

    // Redirects forever.
    let looping = answering(|line, _, _| {
        let n: u32 = line
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.trim_start_matches('/').parse().ok())
            .unwrap_or(0);
        response("302 Found", &[&format!("Location: /{}", n + 1)], b"")
    });
    let mut req = get(&format!("http://127.0.0.1:{}/0", looping.port));
    req.max_redirects = 5;
    failure(
        fetch(b, &req),
        BRIDGE_E_PROTOCOL,
        &["too many redirects", "5"],
    );

    // Never answers: the timeout ends it.
    let silent = raw_server(|stream| {
        let mut buf = [0; 1024];
        let mut stream = stream;
        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
    });
    let mut req = get(&format!("http://127.0.0.1:{}/", silent.port));
    req.timeout_ms = 200;
    failure(
        fetch(b, &req),
        BRIDGE_E_TIMED_OUT,
        &["timed out after 200 ms"],
    );
    unsafe { bridge_free(b) };
}

// ---- cancellation and shutdown ----------------------------------------------------------

/// A server that answers nothing and reports, per connection, when the client closed.
fn silent_server() -> (Raw, std::sync::mpsc::Receiver<()>) {
    let (closed_tx, closed) = std::sync::mpsc::channel();
    let closed_tx = std::sync::Mutex::new(closed_tx);
    let raw = raw_server(move |mut stream| {
        let mut buf = [0; 1024];
        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        let _ = closed_tx.lock().unwrap().send(());
    });
    (raw, closed)
}

/// A server in another process (so that its sockets are not counted here) that
/// answers nothing and prints "closed" when a client closes; prints its port first.
fn silent_process() -> (Process, u16, BufReader<std::process::ChildStdout>) {
    const SCRIPT: &str = r#"
import socket, sys, threading
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
def serve(c):
    while c.recv(1024):
        pass
    print("closed", flush=True)
while True:
    c, _ = s.accept()
    print("accepted", flush=True)
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = line.trim().parse().unwrap();
    (Process(child), port, out)
}

fn expect_line(out: &mut BufReader<std::process::ChildStdout>, what: &str) {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), what);
}

#[test]
fn cancel_closes_the_connection_before_cancelled() {
    let _serial = serial();
    let (_server, port, mut events) = silent_process();
    let b = start();
    // Warm up the bridge's threads so that only the exchange's own fds count.
    let _ = fetch(b, &get("http://nonexistent.invalid/"));
    let before = fd_count();
    let f = send(b, &get(&format!("http://127.0.0.1:{port}/"))).unwrap();
    expect_line(&mut events, "accepted");
    assert_eq!(fd_count(), before + 1, "the exchange's socket");
    unsafe { assert_eq!(future_cancel(f), BRIDGE_OK) };
    assert!(matches!(finish(f), Got::Cancelled));
    // Closed by the time the future ended: no socket left here, EOF at the server.
    assert_eq!(fd_count(), before);
    expect_line(&mut events, "closed");
    unsafe { bridge_free(b) };
}

#[test]
fn a_cancelled_download_leaves_no_file() {
    let _serial = serial();
    // Sends a long body slowly.
    let slow = raw_server(|stream| {
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        if read_request(&mut reader).is_some() {
            let _ = writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n");
            while writer.write_all(&[b'x'; 1000]).is_ok() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    let dir = temp_dir("cancel-download");
    let b = start();
    let mut req = get(&format!("http://127.0.0.1:{}/", slow.port));
    req.output_path = Some(dir.join("big.bin"));
    req.max_body = 200_000_000;
    let f = send(b, &req).unwrap();
    // Wait until some of the body has arrived.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (mut done, mut total) = (0, 0);
        unsafe { future_progress(f, &mut done, &mut total) };
        if done > 0 {
            assert_eq!(total, 100_000_000);
            break;
        }
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "the partial file"
    );
    unsafe { future_cancel(f) };
    assert!(matches!(finish(f), Got::Cancelled));
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "partial file left"
    );
    unsafe { bridge_free(b) };
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shutdown_resolves_requests_in_flight() {
    let _serial = serial();
    let (server, closed) = silent_server();
    let b = start();
    let futures: Vec<_> = (0..5)
        .map(|_| send(b, &get(&format!("http://127.0.0.1:{}/", server.port))).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.accepted.load(Ordering::SeqCst) < 5 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    unsafe { assert_eq!(bridge_shutdown(b, 50), BRIDGE_OK) };
    for f in futures {
        assert!(matches!(finish(f), Got::Cancelled));
    }
    for _ in 0..5 {
        closed.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    // Refused from now on.
    assert_eq!(
        send(b, &get("http://127.0.0.1:1/")).unwrap_err(),
        BRIDGE_E_NOT_RUNNING
    );
    unsafe { bridge_free(b) };
}

// ---- bad input ---------------------------------------------------------------------------

#[test]
fn bad_input_is_refused_and_starts_nothing() {
    let _serial = serial();
    let server = answering(|_, _, _| response("200 OK", &[], b"ok"));
    let b = start();
    let url = format!("http://127.0.0.1:{}/", server.port);
    let bad: Vec<fn(&mut Req)> = vec![
        |r| r.url = String::new(),
        |r| r.url = "ftp://127.0.0.1/".into(),
        |r| r.url = "127.0.0.1/x".into(),
        |r| r.url = "http:///path".into(),
        |r| r.url = "http://a b/".into(),
        |r| r.method = Some(String::new()),
        |r| r.method = Some("GE T".into()),
        |r| r.headers = vec!["no colon".into()],
        |r| r.headers = vec!["Bad Name: x".into()],
        |r| r.headers = vec!["X: bad\nvalue".into()],
        |r| r.headers = vec!["Content-Length: 5".into()],
        |r| r.flags = 1 << 7,
        |r| r.extra_ca_pem = Some("no certificate here".into()),
        |r| r.output_path = Some(PathBuf::from("/")),
    ];
    for (i, change) in bad.iter().enumerate() {
        let mut req = get(&url);
        change(&mut req);
        assert_eq!(send(b, &req).unwrap_err(), BRIDGE_E_INVALID, "case {i}");
    }
    // Pointers the Req helper cannot express.
    unsafe {
        let url_c = CString::new(url.clone()).unwrap();
        let mut r = std::mem::zeroed::<bridge_http_request_t>();
        bridge_http_request_init(&mut r);
        r.url = url_c.as_ptr();
        let mut f = null_mut();
        assert_eq!(bridge_http_send(null_mut(), &r, &mut f), BRIDGE_E_INVALID);
        assert_eq!(bridge_http_send(b, null(), &mut f), BRIDGE_E_INVALID);
        assert_eq!(bridge_http_send(b, &r, null_mut()), BRIDGE_E_INVALID);
        let mut bad = r;
        bad.size = 8;
        assert_eq!(bridge_http_send(b, &bad, &mut f), BRIDGE_E_INVALID);
        let mut bad = r;
        bad.url = null();
        assert_eq!(bridge_http_send(b, &bad, &mut f), BRIDGE_E_INVALID);
        let mut bad = r;
        bad.body_len = 10;
        assert_eq!(bridge_http_send(b, &bad, &mut f), BRIDGE_E_INVALID);
        let invalid_utf8 = [b'h', 0xff, 0];
        let mut bad = r;
        bad.url = invalid_utf8.as_ptr().cast();
        assert_eq!(bridge_http_send(b, &bad, &mut f), BRIDGE_E_INVALID);
        assert!(f.is_null());
        let mut stats = std::mem::zeroed::<bridge_stats_t>();
        assert_eq!(bridge_stats(b, &mut stats), BRIDGE_OK);
        assert_eq!(stats.submitted, 0, "a refused request counted as submitted");
        // The NULL accessors.
        assert_eq!(bridge_http_response_status(null()), -1);
        assert_eq!(bridge_http_response_header_count(null()), 0);
        let mut len = 7;
        assert!(bridge_http_response_body(null(), &mut len).is_null());
        assert_eq!(len, 0);
        assert!(bridge_http_response_url(null()).is_null());
        bridge_http_response_free(null_mut());
        bridge_http_request_init(null_mut());
    }
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        0,
        "a refused request connected"
    );
    unsafe { bridge_free(b) };
}

#[test]
fn a_taken_response_is_freed_by_its_free_function() {
    let _serial = serial();
    let server = answering(|_, _, _| response("200 OK", &[], b"taken"));
    let b = start();
    let f = send(b, &get(&format!("http://127.0.0.1:{}/", server.port))).unwrap();
    unsafe {
        assert_eq!(future_wait(f, WAIT_MS), BRIDGE_OK);
        let r = future_take_value(f).cast::<bridge_http_response_t>();
        assert!(!r.is_null());
        assert!(future_value(f).is_null());
        future_release(f);
        let mut len = 0;
        let body = bridge_http_response_body(r, &mut len);
        assert_eq!(std::slice::from_raw_parts(body, len), b"taken");
        bridge_http_response_free(r.cast::<c_void>());
        bridge_free(b);
    }
}

#[test]
fn many_requests_in_flight_complete() {
    let _serial = serial();
    let server = answering(|line, _, _| response("200 OK", &[], line.as_bytes()));
    let b = start();
    let futures: Vec<_> = (0..300)
        .map(|i| send(b, &get(&format!("http://127.0.0.1:{}/{i}", server.port))).unwrap())
        .collect();
    for (i, f) in futures.into_iter().enumerate() {
        let (status, body) = ok_body(finish(f));
        assert_eq!(status, 200);
        assert_eq!(body, format!("GET /{i} HTTP/1.1").into_bytes());
    }
    unsafe { bridge_free(b) };
}
