//! # ballast-certs
//!
//! Deciding whether a certificate/key pair may be served, and the facts about it.
//!
//! A pair is only ever served after it passed every check here: it parses, the key matches the
//! leaf, and the leaf is valid now. Anything else is a [`CertificateError`] — the sidecar's
//! reloader reports it while the previous pair keeps serving, the operator reports it on the
//! `PresenceCluster`. Both call the same [`validate`] (the operator through [`inspect`]), so
//! they can never disagree about what is servable.
//!
//! What is *known* about a pair ([`CertificateFacts`]: fingerprint, validity, names) is plain
//! data and goes anywhere — status, logs, the operator. What is *served*
//! ([`ServingCertificate`]) also holds the signing key, and only the sidecar keeps one.
//! [`sha256_hex`] is the one fingerprint function of every crate.
//!
//! It must never read Secrets from the API (callers hand it bytes), never log, print or
//! format key bytes (no `Debug` here shows them), and never hold global state.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ballast_contract::clock;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate/key pair was refused.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} is not valid PEM: {detail}")]
    Pem { path: String, detail: String },
    #[error("{path} holds no PEM private key")]
    NoKey { path: String },
    #[error("the leaf certificate cannot be parsed: {0}")]
    Leaf(String),
    #[error("the private key is not usable: {0}")]
    Key(String),
    #[error("the private key does not match the leaf certificate")]
    KeyMismatch,
    #[error("the leaf certificate expired at {not_after}")]
    Expired { not_after: String },
    #[error("the leaf certificate is not valid before {not_before}")]
    NotYetValid { not_before: String },
}

impl CertificateError {
    /// Short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Read { .. } => "unreadable",
            Self::NoCertificate { .. } | Self::Pem { .. } | Self::Leaf(_) => "malformed",
            Self::NoKey { .. } | Self::Key(_) => "bad_key",
            Self::KeyMismatch => "key_mismatch",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
        }
    }
}

/// What is known about a validated pair's leaf: plain data, safe to show anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// SHA-256 of the leaf's DER, lowercase hex: what the operator compares across pods.
    pub sha256: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
    /// DNS names of the leaf's subjectAltName, in certificate order.
    pub dns_names: Vec<String>,
    /// IP addresses of the leaf's subjectAltName, in certificate order.
    pub ip_addresses: Vec<String>,
}

/// A validated pair, ready to serve: its facts and the key rustls signs handshakes with.
#[derive(Clone)]
pub struct ServingCertificate {
    pub facts: CertificateFacts,
    pub key: Arc<CertifiedKey>,
}

impl fmt::Debug for ServingCertificate {
    /// The facts only: the key is never formatted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCertificate")
            .field("facts", &self.facts)
            .finish_non_exhaustive()
    }
}

/// The raw file contents; compared between polls to notice a change.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PemFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl fmt::Debug for PemFiles {
    /// Lengths only: the key's bytes are never formatted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemFiles")
            .field("cert_bytes", &self.cert.len())
            .field("key_bytes", &self.key.len())
            .finish()
    }
}

impl PemFiles {
    /// Reads both files, following symlinks (a mounted Secret's `tls.crt` is a link through
    /// `..data`, which the kubelet swaps atomically, so both files change together).
    pub fn read(cert: &Path, key: &Path) -> Result<Self, CertificateError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| CertificateError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        Ok(Self {
            cert: read(cert)?,
            key: read(key)?,
        })
    }
}

/// Checks a pair and prepares it for rustls. The paths only name the files in errors.
pub fn validate(
    files: &PemFiles,
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<ServingCertificate, CertificateError> {
    let cert_name = cert_path.display().to_string();
    let key_name = key_path.display().to_string();
    let chain = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertificateError::Pem {
            path: cert_name.clone(),
            detail: e.to_string(),
        })?;
    let Some(leaf) = chain.first().cloned() else {
        return Err(CertificateError::NoCertificate { path: cert_name });
    };
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => CertificateError::NoKey {
            path: key_name.clone(),
        },
        other => CertificateError::Pem {
            path: key_name.clone(),
            detail: other.to_string(),
        },
    })?;

    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| CertificateError::Leaf(e.to_string()))?;
    let (dns_names, ip_addresses) = subject_alt_names(&parsed);
    let not_before = parsed.validity().not_before.timestamp();
    let not_after = parsed.validity().not_after.timestamp();
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if now > not_after {
        return Err(CertificateError::Expired {
            not_after: clock::rfc3339(not_after),
        });
    }
    if now < not_before {
        return Err(CertificateError::NotYetValid {
            not_before: clock::rfc3339(not_before),
        });
    }

    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertificateError::Key(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            // The provider cannot derive the public key; rustls then cannot check either.
        }
        Err(_) => return Err(CertificateError::KeyMismatch),
    }

    Ok(ServingCertificate {
        facts: CertificateFacts {
            sha256: sha256_hex(&leaf),
            not_before,
            not_after,
            dns_names,
            ip_addresses,
        },
        key: Arc::new(certified),
    })
}

/// What [`validate`] decides, without keeping the key: for callers that judge a pair but never
/// serve it (the operator).
pub fn inspect(
    files: &PemFiles,
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<CertificateFacts, CertificateError> {
    validate(files, cert_path, key_path, provider, now).map(|served| served.facts)
}

/// DNS names and IP addresses of the leaf's subjectAltName. The names are facts for display,
/// not a check (a server does not verify its own names), so an unreadable extension yields
/// none rather than refusing a pair that rustls would serve.
fn subject_alt_names(
    leaf: &x509_parser::certificate::X509Certificate<'_>,
) -> (Vec<String>, Vec<String>) {
    use x509_parser::extensions::GeneralName;
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns_name) => dns.push((*dns_name).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        ips.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    (dns, ips)
}

/// Lowercase hex SHA-256 of a DER certificate: the fingerprint `openssl x509 -fingerprint
/// -sha256` prints, without colons.
pub fn sha256_hex(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pair(not_before_days: i64, not_after_days: i64) -> PemFiles {
        pair_for(&["localhost"], not_before_days, not_after_days)
    }

    fn pair_for(sans: &[&str], not_before_days: i64, not_after_days: i64) -> PemFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let sans = sans.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        let now = rcgen::date_time_ymd(2026, 11, 24);
        params.not_before = now + Duration::from_secs(86_400) * not_before_days as u32;
        params.not_after = now + Duration::from_secs(86_400) * not_after_days as u32;
        let cert = params.self_signed(&key).unwrap();
        PemFiles {
            cert: cert.pem().into_bytes(),
            key: key.serialize_pem().into_bytes(),
        }
    }

    /// 2026-11-24T00:00:00Z plus whole days.
    fn day(now_days: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_478_400 + now_days * 86_400)
    }

    fn check(files: &PemFiles, now_days: u64) -> Result<ServingCertificate, CertificateError> {
        let provider = rustls::crypto::ring::default_provider();
        validate(
            files,
            Path::new("tls.crt"),
            Path::new("tls.key"),
            &provider,
            day(now_days),
        )
    }

    #[test]
    fn a_current_pair_is_served_with_its_fingerprint_and_dates() {
        let files = pair(0, 30);
        let served = check(&files, 1).unwrap();
        assert_eq!(served.facts.sha256.len(), 64);
        assert_eq!(
            served.facts.not_after - served.facts.not_before,
            30 * 86_400
        );
        assert_eq!(served.facts.not_before, 1_795_478_400);
    }

    #[test]
    fn the_leafs_names_are_facts() {
        let files = pair_for(
            &["edge.example.com", "127.0.0.1", "*.edge.example.com", "::1"],
            0,
            30,
        );
        let facts = check(&files, 1).unwrap().facts;
        assert_eq!(facts.dns_names, ["edge.example.com", "*.edge.example.com"]);
        assert_eq!(facts.ip_addresses, ["127.0.0.1", "::1"]);
    }

    #[test]
    fn inspect_decides_like_validate_and_keeps_no_key() {
        let provider = rustls::crypto::ring::default_provider();
        let files = pair(0, 30);
        let (cert, key) = (Path::new("tls.crt"), Path::new("tls.key"));
        let facts: CertificateFacts = inspect(&files, cert, key, &provider, day(1)).unwrap();
        assert_eq!(facts, check(&files, 1).unwrap().facts);
        let err = inspect(&files, cert, key, &provider, day(31)).unwrap_err();
        assert_eq!(err.metric_label(), "expired");
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let files = pair(0, 30);
        assert!(String::from_utf8_lossy(&files.key).contains("PRIVATE KEY"));
        let shown = format!("{files:?} {files:#?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(shown.contains(&files.key.len().to_string()), "{shown}");

        let served = check(&files, 1).unwrap();
        let shown = format!("{served:?} {served:#?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(!shown.contains("key:"), "{shown}");
        assert!(shown.contains(&served.facts.sha256), "{shown}");
    }

    #[test]
    fn fingerprint_of_empty_input() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn each_kind_of_bad_pair_has_its_own_reason() {
        let good = pair(0, 30);
        assert_eq!(check(&good, 31).unwrap_err().metric_label(), "expired");
        let future = pair(2, 30);
        assert_eq!(
            check(&future, 1).unwrap_err().metric_label(),
            "not_yet_valid"
        );
        let mismatch = PemFiles {
            cert: good.cert.clone(),
            key: pair(0, 30).key,
        };
        assert_eq!(
            check(&mismatch, 1).unwrap_err().metric_label(),
            "key_mismatch"
        );
        let no_key = PemFiles {
            cert: good.cert.clone(),
            key: b"nothing here".to_vec(),
        };
        assert_eq!(check(&no_key, 1).unwrap_err().metric_label(), "bad_key");
        let garbage = PemFiles {
            cert: b"garbage".to_vec(),
            key: good.key.clone(),
        };
        assert_eq!(check(&garbage, 1).unwrap_err().metric_label(), "malformed");
    }
}
