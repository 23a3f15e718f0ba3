//! Name resolution: a host name or numeric address to the addresses to try.

use std::net::IpAddr;

use crate::future::Failure;
use crate::status::Error;

/// `host` without the brackets of an IPv6 literal ("[::1]" is "::1").
pub(super) fn bare(host: &str) -> &str {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inside) => inside,
        None => host,
    }
}

/// The addresses of `host`, in the order the system's resolver gives them
/// (getaddrinfo sorts them by RFC 6724: on most systems IPv6 first where there is IPv6
/// connectivity), each once. A numeric address is its own answer at once, with no
/// lookup.
///
/// The lookup is getaddrinfo on a blocking thread of the runtime. Dropping the future
/// abandons the answer at once; a getaddrinfo already running cannot be interrupted
/// and goes on to its end on that thread (bounded by the resolver's own timeouts,
/// resolv.conf), its answer then dropped.
///
/// Fails with `Error::Dns` when the name is unknown, the resolver cannot be reached,
/// or the name has no address.
pub async fn resolve(host: &str) -> Result<Vec<IpAddr>, Failure> {
    let name = bare(host);
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let found = tokio::net::lookup_host((name, 0))
        .await
        .map_err(|e| dns_failure(name, &reason(&e)))?;
    let mut addresses: Vec<IpAddr> = Vec::new();
    for address in found {
        if !addresses.contains(&address.ip()) {
            addresses.push(address.ip());
        }
    }
    if addresses.is_empty() {
        return Err(dns_failure(name, "no address found"));
    }
    Ok(addresses)
}

fn dns_failure(name: &str, why: &str) -> Failure {
    Failure::new(Error::Dns.code(), format!("resolve {name}: {why}"))
}

/// The resolver's words, without std's prefix.
fn reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.strip_prefix("failed to lookup address information: ") {
        Some(rest) => rest.to_owned(),
        None => text,
    }
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn numeric_addresses_need_no_lookup() {
        assert_eq!(
            block_on(resolve("127.0.0.1")).unwrap(),
            vec![IpAddr::from([127, 0, 0, 1])]
        );
        assert_eq!(
            block_on(resolve("[::1]")).unwrap(),
            vec!["::1".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn unknown_names_fail_with_dns() {
        let failure = block_on(resolve("nonexistent.invalid")).unwrap_err();
        assert_eq!(failure.code(), Error::Dns.code());
        assert!(
            failure
                .message()
                .to_string_lossy()
                .contains("resolve nonexistent.invalid: "),
            "{failure:?}"
        );
    }

    #[test]
    fn localhost_is_loopback_each_once() {
        let found = block_on(resolve("localhost")).unwrap();
        assert!(!found.is_empty());
        assert!(found.iter().all(IpAddr::is_loopback), "{found:?}");
        let mut unique = found.clone();
        unique.dedup();
        assert_eq!(unique.len(), found.len());
    }
}
