//! The one place where C handles turn into Rust objects and back.
//!
//! Each C handle type declares, through [`Castable`], the one Rust type behind it and
//! how that object is owned (the guarantee of rustls-ffi's `Castable`): a
//! `bridge_queue_t *` is always an `Arc<CompletionQueue>` made by [`arc_into_c`], a
//! `bridge_promise_t *` always a `Box` made by [`box_into_c`], a `bridge_job_t *`
//! always a borrowed job. The helpers accept only the ownership the type declares, so
//! a handle can never be freed as the wrong kind of object, and no other file casts.

use std::mem::ManuallyDrop;

use crate::sync::Arc;

/// A C handle type: the Rust type behind it and how it is owned.
pub(crate) trait Castable {
    /// The object a handle points to.
    type Rust;
    /// [`OwnedByArc`], [`OwnedByBox`] or [`Borrowed`].
    type Ownership;
}

/// The handle is `Arc::into_raw` of the object: one handle, one reference count.
pub(crate) struct OwnedByArc;
/// The handle is `Box::into_raw` of the object: consumed exactly once.
pub(crate) struct OwnedByBox;
/// The handle is a borrowed pointer, valid only for a call.
pub(crate) struct Borrowed;

/// Hands one reference to C as its handle.
pub(crate) fn arc_into_c<C: Castable<Ownership = OwnedByArc>>(object: Arc<C::Rust>) -> *mut C {
    Arc::into_raw(object).cast_mut().cast()
}

/// The handle of an object C holds references to, for passing it to a callback.
pub(crate) fn arc_as_c<C: Castable<Ownership = OwnedByArc>>(object: &Arc<C::Rust>) -> *mut C {
    Arc::as_ptr(object).cast_mut().cast()
}

/// The handle of an object that lives in an `Arc` C holds, seen by reference.
pub(crate) fn arc_ref_as_c<C: Castable<Ownership = OwnedByArc>>(object: &C::Rust) -> *mut C {
    (object as *const C::Rust).cast_mut().cast()
}

/// Borrows the object behind a handle.
///
/// # Safety
/// `handle` is NULL or a live handle of type `C` (its reference not yet given back),
/// for as long as the borrow is used.
pub(crate) unsafe fn arc_borrow<'a, C: Castable<Ownership = OwnedByArc>>(
    handle: *const C,
) -> Option<&'a C::Rust> {
    // SAFETY: per the contract above, a non-NULL handle points to a live object.
    unsafe { handle.cast::<C::Rust>().as_ref() }
}

/// The handle's reference as an `Arc`, left untouched when the borrow ends.
///
/// # Safety
/// As [`arc_borrow`].
pub(crate) unsafe fn arc_borrow_arc<C: Castable<Ownership = OwnedByArc>>(
    handle: *const C,
) -> Option<ManuallyDrop<Arc<C::Rust>>> {
    if handle.is_null() {
        return None;
    }
    // SAFETY: a live handle came from `Arc::into_raw` (see `arc_into_c`);
    // `ManuallyDrop` keeps its count as it is.
    Some(ManuallyDrop::new(unsafe {
        Arc::from_raw(handle.cast::<C::Rust>())
    }))
}

/// One more reference to the object behind a handle, given back when it drops.
///
/// # Safety
/// As [`arc_borrow`].
pub(crate) unsafe fn arc_clone<C: Castable<Ownership = OwnedByArc>>(
    handle: *const C,
) -> Option<Arc<C::Rust>> {
    // SAFETY: as `arc_borrow_arc`; the clone has a count of its own.
    unsafe { arc_borrow_arc(handle) }.map(|arc| Arc::clone(&arc))
}

/// Takes back the reference a handle stands for (the handle is spent).
///
/// # Safety
/// `handle` is NULL or a live handle of type `C` that the caller gives up.
pub(crate) unsafe fn arc_take<C: Castable<Ownership = OwnedByArc>>(
    handle: *const C,
) -> Option<Arc<C::Rust>> {
    // SAFETY: a live handle came from `Arc::into_raw`; its count passes to the result.
    unsafe { arc_borrow_arc(handle) }.map(ManuallyDrop::into_inner)
}

/// Hands a boxed object to C as its handle.
pub(crate) fn box_into_c<C: Castable<Ownership = OwnedByBox>>(object: Box<C::Rust>) -> *mut C {
    Box::into_raw(object).cast()
}

/// Borrows the object behind a boxed handle.
///
/// # Safety
/// `handle` is NULL or a live handle of type `C`, not consumed while the borrow lasts.
pub(crate) unsafe fn box_borrow<'a, C: Castable<Ownership = OwnedByBox>>(
    handle: *const C,
) -> Option<&'a C::Rust> {
    // SAFETY: per the contract above.
    unsafe { handle.cast::<C::Rust>().as_ref() }
}

/// Takes back a boxed handle's object (the handle is spent).
///
/// # Safety
/// `handle` is NULL or a live handle of type `C` that the caller gives up.
pub(crate) unsafe fn box_take<C: Castable<Ownership = OwnedByBox>>(
    handle: *mut C,
) -> Option<Box<C::Rust>> {
    if handle.is_null() {
        return None;
    }
    // SAFETY: a live handle came from `Box::into_raw` (see `box_into_c`).
    Some(unsafe { Box::from_raw(handle.cast::<C::Rust>()) })
}

/// The handle of a borrowed object, valid while the borrow is.
pub(crate) fn ref_as_c<C: Castable<Ownership = Borrowed>>(object: &C::Rust) -> *mut C {
    (object as *const C::Rust).cast_mut().cast()
}

/// Borrows the object behind a borrowed handle.
///
/// # Safety
/// `handle` is NULL or a handle passed to a call that is still running.
pub(crate) unsafe fn ref_borrow<'a, C: Castable<Ownership = Borrowed>>(
    handle: *const C,
) -> Option<&'a C::Rust> {
    // SAFETY: per the contract above.
    unsafe { handle.cast::<C::Rust>().as_ref() }
}

/// The largest `size` an options struct may declare: anything above is taken for an
/// uninitialised struct.
const MAX_OPTIONS_SIZE: usize = 4096;

/// A sized C options struct whose first field is its `uint32_t size` (set by its
/// `_init` function), borrowed when it can be read as this version's: `size` at least
/// this version's struct and at most 4096, and every byte past this version's fields
/// 0 (a program built against a later header asking for nothing this version does not
/// know). `None` for NULL and anything else.
///
/// # Safety
/// `opts` is NULL or points to at least `(*opts).size` readable bytes whose first field
/// is a `u32`.
pub(crate) unsafe fn sized_options<'a, T>(opts: *const T) -> Option<&'a T> {
    if opts.is_null() {
        return None;
    }
    // SAFETY: `size` is the first field, always present.
    let size = unsafe { opts.cast::<u32>().read() } as usize;
    let known = std::mem::size_of::<T>();
    if !(known..=MAX_OPTIONS_SIZE).contains(&size) {
        return None;
    }
    // SAFETY: the caller's struct is `size` bytes long, at least `known`.
    let later = unsafe { std::slice::from_raw_parts(opts.cast::<u8>().add(known), size - known) };
    if later.iter().any(|&byte| byte != 0) {
        return None;
    }
    // SAFETY: all of this version's fields are there (checked above).
    Some(unsafe { &*opts })
}
