//! Names the shared library by its ABI's major version: libwordcount.so.0.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_default();
        // `rustc-link-arg`, not `rustc-cdylib-link-arg`: Cargo would pass the latter
        // on to the cdylib of a crate that depends on this one (rust-lang/cargo#9562)
        // and name it libwordcount too.
        println!("cargo:rustc-link-arg=-Wl,-soname,libwordcount.so.{major}");
    }
}
