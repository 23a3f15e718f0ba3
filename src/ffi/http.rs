//! `bridge_http_send` and `bridge_http_response_t`: HTTP(S) requests on the bridge's
//! loop.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::time::Duration;

use crate::ffi::boundary::boundary;
use crate::ffi::bridge::{borrow, bridge_t};
use crate::ffi::embed::{spawn_on, CTask, CValue};
use crate::ffi::future::future_t;
use crate::ffi::handle::{box_borrow, box_into_c, box_take, Castable, OwnedByBox};
use crate::ffi::status::{bridge_status, BRIDGE_E_INVALID, BRIDGE_OK};
use crate::ffi::value::BRIDGE_VALUE_HTTP_RESPONSE;
use crate::io::http::{self, Client, RequestSpec, Response};

/// bridge_http_request_t.flags: a status of 400 or more fails the future with
/// BRIDGE_E_HTTP_STATUS ("HTTP 404 Not Found") instead of ending BRIDGE_OK.
pub const BRIDGE_HTTP_FAIL_ON_STATUS: u32 = 1;
/// bridge_http_request_t.flags: trust the system's CA store (loaded once per bridge)
/// instead of the built-in Mozilla roots.
pub const BRIDGE_HTTP_SYSTEM_ROOTS: u32 = 2;

const KNOWN_FLAGS: u32 = BRIDGE_HTTP_FAIL_ON_STATUS | BRIDGE_HTTP_SYSTEM_ROOTS;

/// An HTTP request: fill it with bridge_http_request_init(), then set what you need.
///
/// Every pointer is read during bridge_http_send() only: everything is copied there.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct bridge_http_request {
    /// Set by bridge_http_request_init(): sizeof(bridge_http_request_t).
    pub size: u32,
    /// A method token ("GET", "POST", "PUT", ...); NULL: "GET".
    pub method: *const c_char,
    /// An absolute http:// or https:// URL. Required.
    pub url: *const c_char,
    /// "Name: value" strings, NULL-terminated; NULL: none. Host, Content-Length,
    /// Transfer-Encoding and Connection are set by the library and refused here.
    /// A User-Agent is added unless one is given.
    pub headers: *const *const c_char,
    /// The request body, copied at send; NULL with body_len 0: none.
    pub body: *const c_void,
    /// Bytes in `body`.
    pub body_len: usize,
    /// The whole exchange, redirects included, in milliseconds; 0: no limit. When it
    /// runs out the future fails with BRIDGE_E_TIMED_OUT.
    pub timeout_ms: u64,
    /// 0: 64 MiB; a longer body fails with BRIDGE_E_TOO_LARGE (before it is read when
    /// Content-Length says so). Applies to output_path downloads too: set UINT64_MAX
    /// for no limit.
    pub max_body: u64,
    /// 0: redirects are not followed (a 3xx response is the result). Otherwise up
    /// to this many are followed; one more fails with BRIDGE_E_PROTOCOL.
    pub max_redirects: u32,
    /// BRIDGE_HTTP_* bits.
    pub flags: u32,
    /// PEM certificates trusted besides the roots; NULL: none.
    pub extra_ca_pem: *const c_char,
    /// Non-NULL: the body goes to this file (written beside it under a temporary
    /// name, created before the request is sent, renamed over it once complete;
    /// removed on cancel or failure), and the response's body is empty. A directory,
    /// or a file in a directory that does not exist, fails with BRIDGE_E_IO
    /// (EISDIR, ENOENT) before anything is sent.
    pub output_path: *const c_char,
}

/// An HTTP request (see struct bridge_http_request).
pub type bridge_http_request_t = bridge_http_request;

/// A response: the value of a future of bridge_http_send().
///
/// Owned by the future (freed with it) unless taken with future_take_value(), then
/// freed with bridge_http_response_free(). Strings it hands out live as long as it.
pub struct bridge_http_response {
    status: c_int,
    headers: Vec<(CString, CString)>,
    body: Vec<u8>,
    url: CString,
}

/// An HTTP response (see struct bridge_http_response).
pub type bridge_http_response_t = bridge_http_response;

impl Castable for bridge_http_response_t {
    type Rust = bridge_http_response;
    type Ownership = OwnedByBox;
}

/// Sets `size` and every other field to its default (NULL, 0).
///
/// @param req the request to initialise; NULL does nothing.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_http_request_init(req: *mut bridge_http_request_t) {
    boundary(|| {
        if req.is_null() {
            return;
        }
        // SAFETY: `req` is non-NULL and writable per the API.
        unsafe {
            req.write(bridge_http_request {
                size: std::mem::size_of::<bridge_http_request_t>() as u32,
                method: std::ptr::null(),
                url: std::ptr::null(),
                headers: std::ptr::null(),
                body: std::ptr::null(),
                body_len: 0,
                timeout_ms: 0,
                max_body: 0,
                max_redirects: 0,
                flags: 0,
                extra_ca_pem: std::ptr::null(),
                output_path: std::ptr::null(),
            })
        }
    })
}

/// Sends an HTTP(S) request on the bridge's loop; the future ends with a
/// bridge_http_response_t* (BRIDGE_VALUE_HTTP_RESPONSE).
///
/// HTTP/1.1, or HTTP/2 when a TLS server offers it; connections are pooled per
/// bridge. Progress: bytes of the body received, of Content-Length (0 when unknown);
/// the first report, (0, total), comes when the response head has arrived.
/// The future ends BRIDGE_OK whatever the status (unless BRIDGE_HTTP_FAIL_ON_STATUS);
/// it fails with BRIDGE_E_IO (connect or socket error; future_os_error() gives the
/// errno), BRIDGE_E_DNS, BRIDGE_E_TLS, BRIDGE_E_PROTOCOL (malformed response, too
/// many redirects), BRIDGE_E_TOO_LARGE (max_body, or a response head over 256 KiB),
/// BRIDGE_E_HTTP_STATUS, BRIDGE_E_TIMED_OUT (timeout_ms). future_cancel() drops the
/// exchange: an HTTP/1.1 connection is closed, an HTTP/2 stream reset, a partial
/// output file removed, all before the future ends BRIDGE_CANCELLED.
///
/// @param req the request; it and everything it points to may be freed as soon as
///        this returns.
/// @param out receives the future (one reference, the caller's); written only on
///        BRIDGE_OK.
/// @return BRIDGE_OK; BRIDGE_E_INVALID, with nothing started, for NULL `b`, `req` or
///         `out`, a `size` other than sizeof(bridge_http_request_t), a NULL or
///         malformed URL (not http(s), no host), an invalid method, header line or
///         extra_ca_pem, a NULL body with body_len > 0, unknown flags, an output_path
///         naming no file, strings that are not UTF-8 (url, method, headers);
///         BRIDGE_E_NOT_RUNNING once shut down; BRIDGE_E_BUSY (max_pending).
/// Any thread; never blocks (the first request with BRIDGE_HTTP_SYSTEM_ROOTS reads
/// the system's CA store on the calling thread).
#[no_mangle]
pub unsafe extern "C" fn bridge_http_send(
    b: *mut bridge_t,
    req: *const bridge_http_request_t,
    out: *mut *mut future_t,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `b` is NULL or a live handle per the API.
        let (Some(bridge), false) = (unsafe { borrow(b) }, out.is_null()) else {
            return BRIDGE_E_INVALID;
        };
        // SAFETY: `req` is NULL or a readable request per the API.
        let Some(spec) = (unsafe { spec_of(req) }) else {
            return BRIDGE_E_INVALID;
        };
        let client = match bridge.extension(Client::new) {
            Ok(client) => client,
            Err(error) => return error.code(),
        };
        let Ok(prepared) = client.prepare(spec) else {
            return BRIDGE_E_INVALID;
        };
        spawn_on(bridge, out, move |task| async move {
            let response = http::send(client, prepared, TaskHooks(task)).await?;
            Ok(Some(response_value(response)))
        })
    })
}

/// The future's side of a request: progress goes to it, the commit asks it.
struct TaskHooks(CTask);

impl http::Hooks for TaskHooks {
    fn progress(&self, done: u64, total: u64) {
        self.0.set_progress(done, total);
    }

    fn commit(&self) -> bool {
        self.0.commit()
    }
}

/// Copies a C request into a Rust one; `None` when something in it is invalid.
///
/// # Safety
/// `req` is NULL or a readable request whose pointers are NULL or valid as documented.
unsafe fn spec_of(req: *const bridge_http_request_t) -> Option<RequestSpec> {
    // SAFETY: per the contract above.
    let req = unsafe { req.as_ref() }?;
    if req.size as usize != std::mem::size_of::<bridge_http_request_t>()
        || req.flags & !KNOWN_FLAGS != 0
        || (req.body.is_null() && req.body_len > 0)
    {
        return None;
    }
    // SAFETY: each string is NULL or NUL-terminated per the API.
    let text = |p: *const c_char| (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) });
    let url = text(req.url)?.to_str().ok()?.to_owned();
    let method = match text(req.method) {
        Some(m) => Some(m.to_str().ok()?.to_owned()),
        None => None,
    };
    let mut headers = Vec::new();
    if !req.headers.is_null() {
        for i in 0.. {
            // SAFETY: a NULL-terminated array of strings per the API.
            let line = unsafe { *req.headers.add(i) };
            if line.is_null() {
                break;
            }
            headers.push(text(line)?.to_str().ok()?.to_owned());
        }
    }
    let body = if req.body_len == 0 {
        Vec::new()
    } else {
        // SAFETY: `body` holds `body_len` readable bytes per the API (non-NULL, checked).
        unsafe { std::slice::from_raw_parts(req.body.cast::<u8>(), req.body_len) }.to_vec()
    };
    let extra_ca_pem = text(req.extra_ca_pem).map(|p| p.to_bytes().to_vec());
    let output_path = text(req.output_path).map(|p| {
        use std::os::unix::ffi::OsStrExt;
        std::path::PathBuf::from(std::ffi::OsStr::from_bytes(p.to_bytes()))
    });
    Some(RequestSpec {
        method,
        url,
        headers,
        body,
        timeout: (req.timeout_ms > 0).then(|| Duration::from_millis(req.timeout_ms)),
        max_body: req.max_body,
        max_redirects: req.max_redirects,
        fail_on_status: req.flags & BRIDGE_HTTP_FAIL_ON_STATUS != 0,
        system_roots: req.flags & BRIDGE_HTTP_SYSTEM_ROOTS != 0,
        extra_ca_pem,
        output_path,
    })
}

/// A response as the value of a C future.
fn response_value(response: Response) -> CValue {
    let c_string = |s: String| {
        CString::new(s).unwrap_or_else(|e| {
            let mut bytes = e.into_vec();
            bytes.retain(|&b| b != 0);
            CString::new(bytes).unwrap_or_default()
        })
    };
    let value = bridge_http_response {
        status: c_int::from(response.status),
        headers: response
            .headers
            .into_iter()
            .map(|(name, value)| (c_string(name), c_string(value)))
            .collect(),
        body: response.body,
        url: c_string(response.url),
    };
    let ptr = box_into_c::<bridge_http_response_t>(Box::new(value));
    CValue::with_type(
        ptr.cast(),
        Some(bridge_http_response_free),
        BRIDGE_VALUE_HTTP_RESPONSE,
    )
}

/// Borrows a response.
///
/// # Safety
/// `r` is NULL or a live response.
unsafe fn response<'a>(r: *const bridge_http_response_t) -> Option<&'a bridge_http_response> {
    // SAFETY: per the contract above.
    unsafe { box_borrow::<bridge_http_response_t>(r) }
}

/// The response's status code (200, 404, ...).
///
/// @return the status; -1 for NULL.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_http_response_status(r: *const bridge_http_response_t) -> c_int {
    // SAFETY: `r` is NULL or live per the API.
    boundary(|| unsafe { response(r) }.map_or(-1, |r| r.status))
}

/// The value of the first header called `name` (compared case-insensitively).
///
/// @return the value, owned by the response; NULL if there is none, or for NULL
///         arguments.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_http_response_header(
    r: *const bridge_http_response_t,
    name: *const c_char,
) -> *const c_char {
    boundary(|| {
        // SAFETY: `r` is NULL or live per the API.
        let (Some(r), false) = (unsafe { response(r) }, name.is_null()) else {
            return std::ptr::null();
        };
        // SAFETY: `name` is a NUL-terminated string per the API.
        let name = unsafe { CStr::from_ptr(name) }.to_bytes();
        r.headers
            .iter()
            .find(|(n, _)| n.to_bytes().eq_ignore_ascii_case(name))
            .map_or(std::ptr::null(), |(_, v)| v.as_ptr())
    })
}

/// How many headers the response has (repeated names count once each).
///
/// @return the count; 0 for NULL.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_http_response_header_count(
    r: *const bridge_http_response_t,
) -> usize {
    // SAFETY: `r` is NULL or live per the API.
    boundary(|| unsafe { response(r) }.map_or(0, |r| r.headers.len()))
}

/// The `i`th header, in the order received; names are lower case.
///
/// @param name_out receives the name (owned by the response); may be NULL.
/// @param value_out receives the value (owned by the response); may be NULL.
/// @return BRIDGE_OK; BRIDGE_E_INVALID for NULL `r` or `i` out of range (nothing
///         written).
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_http_response_header_at(
    r: *const bridge_http_response_t,
    i: usize,
    name_out: *mut *const c_char,
    value_out: *mut *const c_char,
) -> bridge_status {
    boundary(|| {
        // SAFETY: `r` is NULL or live per the API.
        let Some((name, value)) = (unsafe { response(r) }).and_then(|r| r.headers.get(i)) else {
            return BRIDGE_E_INVALID;
        };
        // SAFETY: each out-parameter is NULL or writable per the API.
        unsafe {
            if let Some(out) = name_out.as_mut() {
                *out = name.as_ptr();
            }
            if let Some(out) = value_out.as_mut() {
                *out = value.as_ptr();
            }
        }
        BRIDGE_OK
    })
}

/// The response body (empty when it went to output_path).
///
/// @param len_out receives the length; may be NULL.
/// @return the bytes, owned by the response, not NUL-terminated; NULL when the body
///         is empty, and for NULL `r` (then *len_out is 0).
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_http_response_body(
    r: *const bridge_http_response_t,
    len_out: *mut usize,
) -> *const u8 {
    boundary(|| {
        // SAFETY: `r` is NULL or live per the API.
        let body = unsafe { response(r) }.map_or(&[][..], |r| &r.body[..]);
        // SAFETY: `len_out` is NULL or writable per the API.
        if let Some(out) = unsafe { len_out.as_mut() } {
            *out = body.len();
        }
        if body.is_empty() {
            std::ptr::null()
        } else {
            body.as_ptr()
        }
    })
}

/// The URL the response came from, after redirects.
///
/// @return the URL, owned by the response; NULL for NULL.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_http_response_url(
    r: *const bridge_http_response_t,
) -> *const c_char {
    // SAFETY: `r` is NULL or live per the API.
    boundary(|| unsafe { response(r) }.map_or(std::ptr::null(), |r| r.url.as_ptr()))
}

/// Frees a response taken with future_take_value() (a bridge_free_fn).
///
/// @param r a bridge_http_response_t*; NULL does nothing. Using it, or a string it
///        handed out, afterwards is undefined.
/// Any thread.
#[no_mangle]
pub unsafe extern "C" fn bridge_http_response_free(r: *mut c_void) {
    boundary(|| {
        // SAFETY: `r` is NULL or a response given up by the caller.
        drop(unsafe { box_take::<bridge_http_response_t>(r.cast()) });
    })
}
