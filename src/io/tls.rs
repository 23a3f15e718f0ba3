//! TLS client configurations: which certificates a connection trusts, decided the same
//! way for every user of TLS in the library (the HTTP client, `net::connect`).
//!
//! The rules:
//! - by default the Mozilla roots built into the library (webpki-roots): the same
//!   answer on every machine, offline included;
//! - on request the system's store instead (rustls-native-certs), loaded once per
//!   [`Trust`]; a store without any certificate is refused rather than trusting
//!   nothing;
//! - extra PEM certificates (a private CA) are trusted besides either; PEM holding no
//!   certificate, or one that does not parse, is refused.
//!
//! Configurations are built once and kept: one per root choice, and up to 16 with
//! extra certificates (the oldest goes first).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rustls::ClientConfig;

use crate::future::Failure;
use crate::status::Error;
use crate::sync::lock;

/// Configurations with extra certificates kept per [`Trust`].
const MAX_EXTRA: usize = 16;

/// The configurations of one user of TLS (one per bridge and user), all with the same
/// ALPN protocols.
pub struct Trust {
    alpn: Vec<Vec<u8>>,
    built_in: OnceLock<Arc<ClientConfig>>,
    system: OnceLock<Result<Arc<ClientConfig>, TrustError>>,
    /// By PEM and root choice.
    extra: Mutex<Vec<(Vec<u8>, bool, TrustChoice)>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust").finish_non_exhaustive()
    }
}

/// A configuration and a number naming the trust it was made with: two choices with
/// the same id trust the same certificates (connections may be shared between them).
#[derive(Clone)]
pub struct TrustChoice {
    /// 0: built-in roots, 1: the system's store, 2 and up: with extra certificates.
    pub id: u64,
    /// The configuration to connect with.
    pub config: Arc<ClientConfig>,
}

/// Why a trust cannot be chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustError {
    /// The system's store was asked for and holds no certificate.
    NoSystemRoots,
    /// The extra PEM holds no certificate, or one that does not parse (the reason).
    ExtraPem(String),
}

impl std::fmt::Display for TrustError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrustError::NoSystemRoots => f.write_str("no certificate found in the system's store"),
            TrustError::ExtraPem(why) => write!(f, "extra_ca_pem: {why}"),
        }
    }
}

impl std::fmt::Debug for TrustChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TrustChoice").field(&self.id).finish()
    }
}

impl Trust {
    /// No configuration built yet; those built will offer `alpn` (empty: none).
    pub fn new(alpn: Vec<Vec<u8>>) -> Trust {
        Trust {
            alpn,
            built_in: OnceLock::new(),
            system: OnceLock::new(),
            extra: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(2),
        }
    }

    /// The configuration trusting the built-in roots, or the system's store if
    /// `system`, and `extra_pem` besides. Reads the system's store the first time it
    /// is asked for, on the calling thread.
    pub fn choose(
        &self,
        system: bool,
        extra_pem: Option<&[u8]>,
    ) -> Result<TrustChoice, TrustError> {
        let Some(pem) = extra_pem else {
            return if system {
                self.system
                    .get_or_init(|| system_roots().map(|roots| self.config_with(roots)))
                    .clone()
                    .map(|config| TrustChoice { id: 1, config })
            } else {
                let config = self
                    .built_in
                    .get_or_init(|| self.config_with(built_in_roots()))
                    .clone();
                Ok(TrustChoice { id: 0, config })
            };
        };
        let mut extra = lock(&self.extra);
        if let Some((_, _, choice)) = extra.iter().find(|(p, s, _)| p == pem && *s == system) {
            return Ok(choice.clone());
        }
        let mut roots = if system {
            system_roots()?
        } else {
            built_in_roots()
        };
        use rustls_pki_types::pem::PemObject;
        let mut added = 0;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| TrustError::ExtraPem(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| TrustError::ExtraPem(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(TrustError::ExtraPem("no certificate in it".into()));
        }
        let choice = TrustChoice {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            config: self.config_with(roots),
        };
        if extra.len() == MAX_EXTRA {
            extra.remove(0);
        }
        extra.push((pem.to_vec(), system, choice.clone()));
        Ok(choice)
    }

    fn config_with(&self, roots: rustls::RootCertStore) -> Arc<ClientConfig> {
        // ring, not aws-lc-rs: no C toolchain beyond cc at build time, a smaller
        // library. (Deprecated in rustls for lacking post-quantum key exchange, which
        // ring has not.)
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = match ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
        {
            Ok(builder) => builder.with_root_certificates(roots).with_no_client_auth(),
            // ring supports the default versions; this cannot fail.
            Err(_) => ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.clone();
        Arc::new(config)
    }
}

fn built_in_roots() -> rustls::RootCertStore {
    rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

fn system_roots() -> Result<rustls::RootCertStore, TrustError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TrustError::NoSystemRoots);
    }
    Ok(roots)
}

/// The rustls error inside an I/O error of a TLS stream (a certificate refused, an
/// alert, a record that does not decrypt), if that is what it is.
pub(crate) fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// A failed handshake with `peer`: rustls's verdict is `Error::Tls`, an OS error
/// `Error::Io`, and a peer that closed or spoke something else than TLS `Error::Tls`
/// too.
pub(crate) fn handshake_failure(e: &std::io::Error, peer: &str) -> Failure {
    if let Some(tls) = rustls_error(e) {
        return Failure::new(Error::Tls.code(), format!("TLS with {peer}: {tls}"));
    }
    match e.raw_os_error() {
        Some(errno) => Failure::io(errno, format_args!("TLS handshake with {peer}")),
        None => Failure::new(Error::Tls.code(), format!("TLS handshake with {peer}: {e}")),
    }
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    #[test]
    fn choices_are_kept_and_named_by_their_trust() {
        let trust = Trust::new(vec![b"h2".to_vec()]);
        let built_in = trust.choose(false, None).unwrap();
        assert_eq!(built_in.id, 0);
        assert_eq!(built_in.config.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(Arc::ptr_eq(
            &built_in.config,
            &trust.choose(false, None).unwrap().config
        ));
        assert!(trust.choose(false, Some(b"not pem")).is_err());
        assert!(trust.choose(false, Some(b"")).is_err());
        assert!(Trust::new(Vec::new())
            .choose(false, None)
            .unwrap()
            .config
            .alpn_protocols
            .is_empty());
    }
}
