//! The C API of byte streams (bridge_stream_*), called from Rust through its C
//! signatures, on connected pairs made by bridge_stream_pair(). Connections and pipes
//! run through the same operations; their own tests are in ffi_net.rs and ffi_child.rs.

use std::ffi::c_void;
use std::ptr::{null, null_mut};
use std::sync::RwLock;

use asyncbridge::ffi::bridge::*;
use asyncbridge::ffi::future::*;
use asyncbridge::ffi::status::*;
use asyncbridge::ffi::stream::*;
use asyncbridge::ffi::value::*;

/// Tests that count this process's descriptors take it for writing; the others, for
/// reading.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

/// Far above anything here: a future that takes this long is hung.
const WATCHDOG_MS: i64 = 60_000;

fn start() -> *mut bridge_t {
    let mut b = null_mut();
    assert_eq!(unsafe { bridge_start(null(), &mut b) }, BRIDGE_OK);
    b
}

fn pair(b: *mut bridge_t) -> (*mut bridge_stream_t, *mut bridge_stream_t) {
    let (mut first, mut second) = (null_mut(), null_mut());
    assert_eq!(
        unsafe { bridge_stream_pair(b, &mut first, &mut second) },
        BRIDGE_OK
    );
    assert!(!first.is_null() && !second.is_null());
    (first, second)
}

fn read(s: *mut bridge_stream_t, max: usize) -> *mut future_t {
    let mut f = null_mut();
    assert_eq!(unsafe { bridge_stream_read(s, max, &mut f) }, BRIDGE_OK);
    f
}

fn write(s: *mut bridge_stream_t, data: &[u8]) -> *mut future_t {
    let mut f = null_mut();
    let status = unsafe { bridge_stream_write(s, data.as_ptr().cast(), data.len(), &mut f) };
    assert_eq!(status, BRIDGE_OK);
    f
}

/// Waits for `f`, releases it, and returns its status.
fn settle(f: *mut future_t) -> bridge_status {
    let status = unsafe { future_wait(f, WATCHDOG_MS) };
    assert_ne!(status, BRIDGE_TIMEOUT, "hung");
    unsafe { future_release(f) };
    status
}

/// The bytes of a read that ended OK; releases it.
fn bytes_of(f: *mut future_t) -> Vec<u8> {
    assert_eq!(unsafe { future_wait(f, WATCHDOG_MS) }, BRIDGE_OK);
    assert_eq!(unsafe { future_value_type(f) }, BRIDGE_VALUE_BYTES);
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
fn read_all(s: *mut bridge_stream_t, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < want {
        let chunk = bytes_of(read(s, 0));
        if chunk.is_empty() {
            break;
        }
        got.extend(chunk);
    }
    got
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn bytes_written_to_one_end_are_read_from_the_other() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let (x, y) = pair(b);
    assert_eq!(settle(write(x, b"hello, stream")), BRIDGE_OK);
    assert_eq!(read_all(y, 13), b"hello, stream");
    // And the other way.
    assert_eq!(settle(write(y, b"back")), BRIDGE_OK);
    assert_eq!(read_all(x, 4), b"back");
    unsafe {
        bridge_stream_close(x);
        bridge_stream_close(y);
        bridge_free(b);
    }
}

#[test]
fn a_read_delivers_at_most_max_and_the_rest_stays_for_the_next() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let (x, y) = pair(b);
    assert_eq!(settle(write(x, b"0123456789")), BRIDGE_OK);
    let first = bytes_of(read(y, 4));
    assert!(!first.is_empty() && first.len() <= 4, "{first:?}");
    let mut all = first;
    all.extend(read_all(y, 10 - all.len()));
    assert_eq!(all, b"0123456789");
    unsafe {
        bridge_stream_close(x);
        bridge_stream_close(y);
        bridge_free(b);
    }
}

#[test]
fn a_large_write_arrives_whole_and_in_order() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let (x, y) = pair(b);
    // Far more than a socket buffer: the write ends only as the reader drains it.
    let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let w = write(x, &data);
    assert_eq!(read_all(y, data.len()), data);
    assert_eq!(settle(w), BRIDGE_OK);
    unsafe {
        bridge_stream_close(x);
        bridge_stream_close(y);
        bridge_free(b);
    }
}

#[test]
fn shutdown_is_the_peers_end_of_stream_and_later_writes_fail_closed() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let (x, y) = pair(b);
    assert_eq!(settle(write(x, b"last words")), BRIDGE_OK);
    let mut f = null_mut();
    assert_eq!(unsafe { bridge_stream_shutdown(x, &mut f) }, BRIDGE_OK);
    assert_eq!(settle(f), BRIDGE_OK);
    assert_eq!(read_all(y, usize::MAX), b"last words");
    // End of stream, and again for every later read.
    assert!(bytes_of(read(y, 0)).is_empty());
    assert!(bytes_of(read(y, 0)).is_empty());
    // The write side is gone; shutting it down again asks for nothing new.
    let w = write(x, b"more");
    assert_eq!(unsafe { future_wait(w, WATCHDOG_MS) }, BRIDGE_FAILED);
    assert_eq!(unsafe { future_error_code(w) }, BRIDGE_E_CLOSED);
    unsafe { future_release(w) };
    assert_eq!(unsafe { bridge_stream_shutdown(x, &mut f) }, BRIDGE_OK);
    assert_eq!(settle(f), BRIDGE_OK);
    // The read side of the end that shut down still works.
    assert_eq!(settle(write(y, b"reply")), BRIDGE_OK);
    assert_eq!(read_all(x, 5), b"reply");
    unsafe {
        bridge_stream_close(x);
        bridge_stream_close(y);
        bridge_free(b);
    }
}

#[test]
fn a_second_pending_read_or_write_is_busy_and_the_side_frees_when_it_ends() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let (x, y) = pair(b);
    let pending = read(y, 0);
    let mut second = null_mut();
    assert_eq!(
        unsafe { bridge_stream_read(y, 0, &mut second) },
        BRIDGE_E_BUSY
    );
    assert!(second.is_null(), "out written on a refusal");
    // A write of the same stream is the other side: not busy.
    assert_eq!(settle(write(y, b"x")), BRIDGE_OK);
    assert_eq!(read_all(x, 1), b"x");
    // Fill the socket so that a write stays pending, then try a second one.
    let big = vec![7u8; 8 * 1024 * 1024];
    let w = write(x, &big);
    assert_eq!(unsafe { future_wait(w, 50) }, BRIDGE_TIMEOUT);
    let mut w2 = null_mut();
    assert_eq!(
        unsafe { bridge_stream_write(x, b"y".as_ptr().cast(), 1, &mut w2) },
        BRIDGE_E_BUSY
    );
    assert_eq!(unsafe { bridge_stream_shutdown(x, &mut w2) }, BRIDGE_E_BUSY);
    assert!(w2.is_null());
    // The pending read takes the first bytes of the big write; after it, reads work.
    let first = bytes_of(pending);
    assert!(!first.is_empty());
    let rest = read_all(y, big.len() - first.len());
    assert_eq!(first.len() + rest.len(), big.len());
    assert_eq!(settle(w), BRIDGE_OK);
    unsafe {
        bridge_stream_close(x);
        bridge_stream_close(y);
        bridge_free(b);
    }
}

#[test]
fn a_cancelled_read_loses_no_byte() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let (x, y) = pair(b);
    for round in 0..200u32 {
        let r = read(y, 0);
        // Cancel it before, while, or after the bytes arrive.
        let message = format!("message {round};");
        let w = write(x, message.as_bytes());
        if round % 3 != 0 {
            unsafe { future_cancel(r) };
        }
        let status = unsafe { future_wait(r, WATCHDOG_MS) };
        let mut got = Vec::new();
        if status == BRIDGE_OK {
            got = bytes_of(r);
        } else {
            assert_eq!(status, BRIDGE_CANCELLED);
            unsafe { future_release(r) };
        }
        got.extend(read_all(y, message.len() - got.len()));
        assert_eq!(got, message.as_bytes(), "round {round}");
        assert_eq!(settle(w), BRIDGE_OK);
    }
    unsafe {
        bridge_stream_close(x);
        bridge_stream_close(y);
        bridge_free(b);
    }
}

#[test]
fn close_ends_pending_operations_closed_and_frees_the_socket() {
    let _exclusive = EXCLUSIVE.write().unwrap();
    let b = start();
    let before = open_fds();
    let (x, y) = pair(b);
    let r = read(y, 0);
    let big = vec![1u8; 8 * 1024 * 1024];
    let w = write(y, &big);
    assert_eq!(unsafe { future_wait(w, 50) }, BRIDGE_TIMEOUT);
    unsafe { bridge_stream_close(y) };
    for f in [r, w] {
        assert_eq!(unsafe { future_wait(f, WATCHDOG_MS) }, BRIDGE_FAILED);
        assert_eq!(unsafe { future_error_code(f) }, BRIDGE_E_CLOSED);
        unsafe { future_release(f) };
    }
    // The peer sees the end of the connection (part of the big write may come first).
    loop {
        if bytes_of(read(x, 0)).is_empty() {
            break;
        }
    }
    unsafe { bridge_stream_close(x) };
    assert_eq!(open_fds(), before, "a socket was left open");
    unsafe { bridge_free(b) };
}

#[test]
fn a_stream_closed_inside_its_own_callback_is_fine() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let (x, y) = pair(b);
    let r = read(y, 0);
    unsafe extern "C" fn close_it(_f: *mut future_t, user_data: *mut c_void) {
        unsafe { bridge_stream_close(user_data.cast()) };
    }
    assert_eq!(
        unsafe { future_on_done(r, Some(close_it), y.cast()) },
        BRIDGE_OK
    );
    assert_eq!(settle(write(x, b"bye")), BRIDGE_OK);
    assert_eq!(bytes_of(r), b"bye");
    unsafe {
        bridge_stream_close(x);
        bridge_free(b);
    }
}

#[test]
fn operations_after_shutdown_of_the_bridge_are_refused() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let (x, y) = pair(b);
    let r = read(y, 0);
    assert_eq!(unsafe { bridge_shutdown(b, 0) }, BRIDGE_OK);
    // The pending read was resolved by the shutdown.
    let status = settle(r);
    assert!(status == BRIDGE_CANCELLED, "{status}");
    let mut f = null_mut();
    assert_eq!(
        unsafe { bridge_stream_read(y, 0, &mut f) },
        BRIDGE_E_NOT_RUNNING
    );
    assert!(f.is_null());
    let (mut p, mut q) = (null_mut(), null_mut());
    assert_eq!(
        unsafe { bridge_stream_pair(b, &mut p, &mut q) },
        BRIDGE_E_NOT_RUNNING
    );
    unsafe {
        bridge_stream_close(x);
        bridge_stream_close(y);
        bridge_free(b);
    }
}

#[test]
fn null_and_bad_arguments_are_invalid() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let (x, y) = pair(b);
    let mut f = null_mut();
    let mut s = null_mut();
    unsafe {
        assert_eq!(bridge_stream_read(null_mut(), 0, &mut f), BRIDGE_E_INVALID);
        assert_eq!(bridge_stream_read(x, 0, null_mut()), BRIDGE_E_INVALID);
        assert_eq!(
            bridge_stream_write(null_mut(), b"a".as_ptr().cast(), 1, &mut f),
            BRIDGE_E_INVALID
        );
        assert_eq!(bridge_stream_write(x, null(), 1, &mut f), BRIDGE_E_INVALID);
        assert_eq!(
            bridge_stream_write(x, b"a".as_ptr().cast(), 1, null_mut()),
            BRIDGE_E_INVALID
        );
        assert_eq!(bridge_stream_shutdown(null_mut(), &mut f), BRIDGE_E_INVALID);
        assert_eq!(bridge_stream_shutdown(x, null_mut()), BRIDGE_E_INVALID);
        assert_eq!(
            bridge_stream_pair(null_mut(), &mut s, &mut s),
            BRIDGE_E_INVALID
        );
        assert_eq!(bridge_stream_pair(b, null_mut(), &mut s), BRIDGE_E_INVALID);
        assert_eq!(bridge_stream_pair(b, &mut s, null_mut()), BRIDGE_E_INVALID);
        assert!(f.is_null() && s.is_null());
        // An empty write with a NULL pointer writes nothing and ends OK.
        assert_eq!(bridge_stream_write(x, null(), 0, &mut f), BRIDGE_OK);
        assert_eq!(settle(f), BRIDGE_OK);
        bridge_stream_close(null_mut());
        bridge_stream_close(x);
        bridge_stream_close(y);
        bridge_free(b);
    }
}

#[test]
fn close_racing_reads_and_writes_on_other_threads_ends_each_exactly_once() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    for round in 0..300usize {
        let (x, y) = pair(b);
        let r = read(y, 0);
        let w = write(x, b"ping");
        let y_addr = y as usize;
        // Close from another thread while the bytes may be arriving.
        let closer = std::thread::spawn(move || {
            if round % 2 == 0 {
                std::thread::yield_now();
            }
            unsafe { bridge_stream_close(y_addr as *mut bridge_stream_t) };
        });
        let status = unsafe { future_wait(r, WATCHDOG_MS) };
        match status {
            BRIDGE_OK => assert_eq!(bytes_of(r), b"ping"),
            BRIDGE_FAILED => {
                assert_eq!(unsafe { future_error_code(r) }, BRIDGE_E_CLOSED);
                unsafe { future_release(r) };
            }
            other => panic!("read ended {other}"),
        }
        closer.join().unwrap();
        // The write to the peer ends either way (OK, or an error once the peer is gone).
        let ended = settle(w);
        assert!(ended == BRIDGE_OK || ended == BRIDGE_FAILED, "{ended}");
        unsafe { bridge_stream_close(x) };
    }
    unsafe { bridge_free(b) };
}

/// A raw pointer that a test hands to another thread.
struct Handle<T>(*mut T);
// SAFETY: the C API's handles may be used from any thread.
unsafe impl<T> Send for Handle<T> {}

#[test]
fn reads_cancelled_as_their_bytes_arrive_lose_none() {
    let _shared = EXCLUSIVE.read().unwrap();
    let b = start();
    let (x, y) = pair(b);
    let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let w = write(x, &data);
    // Once all is written, the writer ends its side: the reader stops at the end.
    let (w_handle, x_handle) = (Handle(w), Handle(x));
    let ender = std::thread::spawn(move || {
        let (w, x) = (w_handle, x_handle);
        assert_eq!(settle(w.0), BRIDGE_OK);
        let mut f = null_mut();
        assert_eq!(unsafe { bridge_stream_shutdown(x.0, &mut f) }, BRIDGE_OK);
        assert_eq!(settle(f), BRIDGE_OK);
    });
    let mut got = Vec::with_capacity(data.len());
    let mut cancelled = 0usize;
    for round in 0u64.. {
        let r = read(y, 512);
        // Cancel at a different moment each time: before, while or after bytes come.
        for _ in 0..(round * 7919 % 3000) {
            std::hint::spin_loop();
        }
        unsafe { future_cancel(r) };
        match unsafe { future_wait(r, WATCHDOG_MS) } {
            BRIDGE_OK => {
                let chunk = bytes_of(r);
                if chunk.is_empty() {
                    break;
                }
                got.extend(chunk);
            }
            BRIDGE_CANCELLED => {
                cancelled += 1;
                unsafe { future_release(r) };
            }
            other => panic!("read ended {other}"),
        }
    }
    ender.join().unwrap();
    assert!(
        cancelled > 0,
        "no read was cancelled: the test tested nothing"
    );
    assert_eq!(got.len(), data.len(), "bytes lost to cancelled reads");
    assert!(got == data, "bytes out of order");
    unsafe {
        bridge_stream_close(x);
        bridge_stream_close(y);
        bridge_free(b);
    }
}
