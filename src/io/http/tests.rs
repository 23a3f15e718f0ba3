use super::*;

#[test]
fn redirect_locations_resolve_against_the_request() {
    let base: Uri = "http://h:8080/a/b?q=1".parse().unwrap();
    let cases = [
        ("http://other/x", "http://other/x"),
        ("//other:81/y", "http://other:81/y"),
        ("/root", "http://h:8080/root"),
        ("?z=2", "http://h:8080/a/b?z=2"),
        ("c", "http://h:8080/a/c"),
    ];
    for (location, expected) in cases {
        assert_eq!(
            resolve(&base, location).unwrap().to_string(),
            expected,
            "{location}"
        );
    }
    assert!(resolve(&base, "ftp://x/").is_none());
}

#[test]
fn prepare_refuses_what_cannot_be_sent() {
    let client = Client::new();
    let spec = |f: &dyn Fn(&mut RequestSpec)| {
        let mut s = RequestSpec {
            url: "http://127.0.0.1:1/".into(),
            ..RequestSpec::default()
        };
        f(&mut s);
        client.prepare(s)
    };
    assert!(spec(&|_| {}).is_ok());
    for bad in [
        "",
        "ftp://x/",
        "http://",
        "/relative",
        "http://a b/",
        "mailto:x@y",
    ] {
        assert!(spec(&|s| s.url = bad.into()).is_err(), "{bad:?}");
    }
    assert!(spec(&|s| s.method = Some("G T".into())).is_err());
    assert!(spec(&|s| s.method = Some(String::new())).is_err());
    assert!(spec(&|s| s.headers = vec!["NoColon".into()]).is_err());
    assert!(spec(&|s| s.headers = vec!["Bad Name: v".into()]).is_err());
    assert!(spec(&|s| s.headers = vec!["X: a\rb".into()]).is_err());
    assert!(spec(&|s| s.headers = vec!["Host: x".into()]).is_err());
    assert!(spec(&|s| s.extra_ca_pem = Some(b"not pem".to_vec())).is_err());
    assert!(spec(&|s| s.output_path = Some(PathBuf::from("/"))).is_err());
    assert!(spec(&|s| s.headers = vec!["X-Ok: fine".into()]).is_ok());
}

/// The state of a request in flight is part of its memory cost (with hyper's read
/// buffer and the socket): kept from growing unnoticed.
#[test]
fn a_request_in_flight_stays_small() {
    let client = std::sync::Arc::new(Client::new());
    let prepared = client
        .prepare(RequestSpec {
            url: "http://127.0.0.1:1/".into(),
            ..RequestSpec::default()
        })
        .unwrap();
    struct NoHooks;
    impl Hooks for NoHooks {
        fn progress(&self, _: u64, _: u64) {}
        fn commit(&self) -> bool {
            true
        }
    }
    let fut = send(client, prepared, NoHooks);
    let size = std::mem::size_of_val(&fut);
    assert!(size <= 4096, "the send future grew to {size} bytes");
}
