//! # ballast-certs
//!
//! Deciding whether a certificate/key pair may be served, and the facts about it.
//!
//! A pair is only ever served after it passed every check here: it parses, the key matches the
//! leaf, the leaf is valid now, the chain leads to the CA bundle when there is one (the
//! Secret's `ca.crt`), and a renewal keeps every name the certificate it replaces served.
//! Anything else is a [`CertificateError`] — the sidecar's reloader reports it while the
//! previous pair keeps serving, the operator reports it on the `PresenceCluster`. Both call the
//! same [`validate`] (the operator through [`inspect`]), so they can never disagree about what
//! is servable.
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
    #[error("the CA bundle (ca.crt) cannot be used: {0}")]
    CaBundle(String),
    #[error("the certificate does not chain to the CA bundle (ca.crt): {0}")]
    UntrustedChain(String),
    #[error("the certificate no longer covers {} that the one it replaces served: agents connecting by that name would fail", .dropped.join(", "))]
    NamesDropped { dropped: Vec<String> },
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
            Self::CaBundle(_) | Self::UntrustedChain(_) => "untrusted_chain",
            Self::NamesDropped { .. } => "names_dropped",
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
    /// The CA bundle the chain must lead to (a Secret's `ca.crt`); empty when there is none
    /// (cert-manager leaves `ca.crt` empty for issuers that do not know their root).
    pub ca: Vec<u8>,
}

impl fmt::Debug for PemFiles {
    /// Lengths only: the key's bytes are never formatted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemFiles")
            .field("cert_bytes", &self.cert.len())
            .field("key_bytes", &self.key.len())
            .field("ca_bytes", &self.ca.len())
            .finish()
    }
}

impl PemFiles {
    /// Reads the files, following symlinks. A mounted Secret's files are links through
    /// `..data`, which the kubelet swaps atomically; files written one by one (a hand-made
    /// update, another tool) can change between two reads, so the files are read until two
    /// rounds agree (at most three). A missing CA bundle is no bundle.
    pub fn read(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<Self, CertificateError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| CertificateError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        let once = || -> Result<Self, CertificateError> {
            Ok(Self {
                cert: read(cert)?,
                key: read(key)?,
                ca: match ca.map(std::fs::read) {
                    None => Vec::new(),
                    Some(Ok(bytes)) => bytes,
                    Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Some(Err(source)) => {
                        return Err(CertificateError::Read {
                            path: ca.unwrap_or(cert).display().to_string(),
                            source,
                        })
                    }
                },
            })
        };
        let mut files = once()?;
        for _ in 0..2 {
            let again = once()?;
            if again == files {
                break;
            }
            files = again;
        }
        Ok(files)
    }
}

/// What a new pair is held to besides itself: the names of the certificate it replaces.
/// Every DNS name and IP address that one served must still be covered (exactly, or by a
/// wildcard), or agents connecting by it would fail. Empty: nothing to keep (a first load).
#[derive(Debug, Clone, Copy, Default)]
pub struct Expect<'a> {
    pub keep_dns_names: &'a [String],
    pub keep_ip_addresses: &'a [String],
}

impl<'a> Expect<'a> {
    /// A renewal of the certificate `served`.
    pub fn replacing(served: &'a CertificateFacts) -> Self {
        Self {
            keep_dns_names: &served.dns_names,
            keep_ip_addresses: &served.ip_addresses,
        }
    }
}

/// Checks a pair and prepares it for rustls. The paths only name the files in errors.
pub fn validate(
    files: &PemFiles,
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
    now: SystemTime,
    expect: Expect<'_>,
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
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let now = since_epoch.as_secs() as i64;
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
    check_chain(&certified.cert, &files.ca, provider, since_epoch)?;
    let dropped = dropped_names(&expect, &dns_names, &ip_addresses);
    if !dropped.is_empty() {
        return Err(CertificateError::NamesDropped { dropped });
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
    expect: Expect<'_>,
) -> Result<CertificateFacts, CertificateError> {
    validate(files, cert_path, key_path, provider, now, expect).map(|served| served.facts)
}

/// The chain (leaf first, then the intermediates as served) must lead to a certificate of
/// the CA bundle, every link valid now. No bundle (or one of whitespace only) is no check:
/// issuers that do not know their root leave `ca.crt` empty.
fn check_chain(
    chain: &[CertificateDer<'static>],
    ca_pem: &[u8],
    provider: &CryptoProvider,
    since_epoch: std::time::Duration,
) -> Result<(), CertificateError> {
    if ca_pem.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        let ca = ca.map_err(|e| CertificateError::CaBundle(e.to_string()))?;
        roots
            .add(ca)
            .map_err(|e| CertificateError::CaBundle(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(CertificateError::CaBundle(
            "holds no PEM certificate".into(),
        ));
    }
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(CertificateError::UntrustedChain("no certificate".into()));
    };
    let leaf = rustls::server::ParsedCertificate::try_from(leaf)
        .map_err(|e| CertificateError::UntrustedChain(e.to_string()))?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &leaf,
        &roots,
        intermediates,
        rustls_pki_types::UnixTime::since_unix_epoch(since_epoch),
        provider.signature_verification_algorithms.all,
    )
    .map_err(|e| CertificateError::UntrustedChain(e.to_string()))
}

/// The names to keep that a certificate with `dns` and `ips` no longer covers.
fn dropped_names(keep: &Expect<'_>, dns: &[String], ips: &[String]) -> Vec<String> {
    let covered = |name: &String| {
        dns.iter()
            .any(|n| n.eq_ignore_ascii_case(name) || wildcard_covers(n, name))
    };
    keep.keep_dns_names
        .iter()
        .filter(|n| !covered(n))
        .chain(keep.keep_ip_addresses.iter().filter(|ip| !ips.contains(ip)))
        .cloned()
        .collect()
}

/// `*.example.com` covers `a.example.com`, never `example.com` nor `a.b.example.com`.
fn wildcard_covers(pattern: &str, name: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    name.split_once('.').is_some_and(|(label, rest)| {
        !label.is_empty() && label != "*" && rest.eq_ignore_ascii_case(suffix)
    })
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
                GeneralName::IPAddress(bytes) => ips.extend(san_ip(bytes)),
                _ => {}
            }
        }
    }
    (dns, ips)
}

/// A subjectAltName IP address (4 or 16 bytes), as text.
fn san_ip(bytes: &[u8]) -> Option<String> {
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(ip.to_string())
}

/// Who a client certificate names: its subject (RFC 4514) and subject alternative names
/// (`DNS:…`, `IP:…`, `URI:…`, `email:…`), for lifecycle events. The sidecar's verifier already
/// accepted the certificate; this only reads it, and a certificate it cannot parse names no one.
pub fn client_identity(der: &[u8]) -> Option<(String, Vec<String>)> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => sans.push(format!("DNS:{dns}")),
                GeneralName::URI(uri) => sans.push(format!("URI:{uri}")),
                GeneralName::RFC822Name(mail) => sans.push(format!("email:{mail}")),
                GeneralName::IPAddress(bytes) => {
                    sans.extend(san_ip(bytes).map(|ip| format!("IP:{ip}")));
                }
                _ => {}
            }
        }
    }
    Some((cert.subject().to_string(), sans))
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
            ca: Vec::new(),
        }
    }

    #[test]
    fn client_identity_names_subject_and_every_san_kind() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![
            "agent-17.fleet.example".to_string(),
            "10.1.2.3".to_string(),
        ])
        .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "agent-17");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Fleet");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://fleet/agent-17".try_into().unwrap(),
        ));
        let cert = params.self_signed(&key).unwrap();
        let (subject, sans) = client_identity(cert.der()).unwrap();
        assert!(subject.contains("CN=agent-17"), "{subject}");
        assert!(subject.contains("O=Fleet"), "{subject}");
        assert_eq!(
            sans,
            [
                "DNS:agent-17.fleet.example",
                "IP:10.1.2.3",
                "URI:spiffe://fleet/agent-17"
            ]
        );
        assert_eq!(client_identity(b"not a certificate"), None);
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
            Expect::default(),
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
        let facts: CertificateFacts =
            inspect(&files, cert, key, &provider, day(1), Expect::default()).unwrap();
        assert_eq!(facts, check(&files, 1).unwrap().facts);
        let err = inspect(&files, cert, key, &provider, day(31), Expect::default()).unwrap_err();
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
            ca: Vec::new(),
        };
        assert_eq!(
            check(&mismatch, 1).unwrap_err().metric_label(),
            "key_mismatch"
        );
        let no_key = PemFiles {
            cert: good.cert.clone(),
            key: b"nothing here".to_vec(),
            ca: Vec::new(),
        };
        assert_eq!(check(&no_key, 1).unwrap_err().metric_label(), "bad_key");
        let garbage = PemFiles {
            cert: b"garbage".to_vec(),
            key: good.key.clone(),
            ca: Vec::new(),
        };
        assert_eq!(check(&garbage, 1).unwrap_err().metric_label(), "malformed");
    }

    /// A CA (or intermediate, when `parent` is given) valid from day 0 to day 365.
    fn authority(
        name: &str,
        parent: Option<&(rcgen::Certificate, rcgen::KeyPair)>,
    ) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let start = rcgen::date_time_ymd(2026, 11, 24);
        params.not_before = start;
        params.not_after = start + Duration::from_secs(365 * 86_400);
        let cert = match parent {
            None => params.self_signed(&key).unwrap(),
            Some((pc, pk)) => params.signed_by(&key, pc, pk).unwrap(),
        };
        (cert, key)
    }

    /// A leaf for `sans` signed by `issuer`, served with `extra` after it (the intermediates).
    fn leaf(
        sans: &[&str],
        issuer: &(rcgen::Certificate, rcgen::KeyPair),
        extra: &[&rcgen::Certificate],
        ca: &rcgen::Certificate,
    ) -> PemFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let sans = sans.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        let start = rcgen::date_time_ymd(2026, 11, 24);
        params.not_before = start;
        params.not_after = start + Duration::from_secs(30 * 86_400);
        let cert = params.signed_by(&key, &issuer.0, &issuer.1).unwrap();
        let mut pem = cert.pem();
        for c in extra {
            pem.push_str(&c.pem());
        }
        PemFiles {
            cert: pem.into_bytes(),
            key: key.serialize_pem().into_bytes(),
            ca: ca.pem().into_bytes(),
        }
    }

    #[test]
    fn a_pair_must_chain_to_the_ca_bundle_through_the_intermediates_it_serves() {
        let root = authority("root", None);
        let right = authority("intermediate", Some(&root));
        let wrong = authority("intermediate", Some(&root));
        let good = leaf(&["edge.example.com"], &right, &[&right.0], &root.0);
        check(&good, 1).unwrap();

        // Renewed with the wrong intermediate (same name, another key).
        let bad = leaf(&["edge.example.com"], &right, &[&wrong.0], &root.0);
        let err = check(&bad, 1).unwrap_err();
        assert_eq!(err.metric_label(), "untrusted_chain", "{err}");
        assert!(err.to_string().contains("ca.crt"), "{err}");

        // Without its intermediate.
        let missing = leaf(&["edge.example.com"], &right, &[], &root.0);
        assert_eq!(
            check(&missing, 1).unwrap_err().metric_label(),
            "untrusted_chain"
        );

        // Signed by another CA altogether.
        let other = authority("other", None);
        let foreign = leaf(&["edge.example.com"], &other, &[], &root.0);
        assert_eq!(
            check(&foreign, 1).unwrap_err().metric_label(),
            "untrusted_chain"
        );

        // The issuing CA itself may be the bundle (cert-manager's CA Issuer writes it).
        let direct = leaf(&["edge.example.com"], &right, &[], &right.0);
        check(&direct, 1).unwrap();
    }

    #[test]
    fn no_bundle_is_no_chain_check_and_a_broken_bundle_is_refused() {
        let mut files = pair(0, 30);
        files.ca = b"\n  \n".to_vec();
        check(&files, 1).unwrap();
        files.ca = b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".to_vec();
        let err = check(&files, 1).unwrap_err();
        assert_eq!(err.metric_label(), "untrusted_chain", "{err}");
        files.ca = b"no PEM at all".to_vec();
        assert_eq!(
            check(&files, 1).unwrap_err().metric_label(),
            "untrusted_chain"
        );
    }

    #[test]
    fn a_renewal_keeps_every_name_the_previous_certificate_served() {
        let provider = rustls::crypto::ring::default_provider();
        let judge = |files: &PemFiles, previous: &CertificateFacts| {
            validate(
                files,
                Path::new("tls.crt"),
                Path::new("tls.key"),
                &provider,
                day(1),
                Expect::replacing(previous),
            )
        };
        let before = check(
            &pair_for(
                &["edge.example.com", "Edge-1.example.com", "127.0.0.1"],
                0,
                30,
            ),
            1,
        )
        .unwrap()
        .facts;
        // The same names, a wildcard for one of them, more names: all fine.
        judge(
            &pair_for(
                &["edge.example.com", "edge-1.example.com", "127.0.0.1"],
                0,
                30,
            ),
            &before,
        )
        .unwrap();
        judge(
            &pair_for(
                &["edge.example.com", "*.example.com", "127.0.0.1", "::1"],
                0,
                30,
            ),
            &before,
        )
        .unwrap();
        // An IP address and a name dropped: refused, naming both.
        let err = judge(&pair_for(&["edge.example.com"], 0, 30), &before).unwrap_err();
        assert_eq!(err.metric_label(), "names_dropped");
        let text = err.to_string();
        assert!(
            text.contains("Edge-1.example.com") && text.contains("127.0.0.1"),
            "{text}"
        );
        // A wildcard covers one label only.
        let err = judge(
            &pair_for(&["*.edge.example.com", "127.0.0.1"], 0, 30),
            &before,
        )
        .unwrap_err();
        assert_eq!(err.metric_label(), "names_dropped");
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(wildcard_covers("*.example.com", "a.example.com"));
        assert!(wildcard_covers("*.example.com", "A.EXAMPLE.com"));
        assert!(!wildcard_covers("*.example.com", "example.com"));
        assert!(!wildcard_covers("*.example.com", "a.b.example.com"));
        assert!(!wildcard_covers("*.example.com", "*.example.com"));
        assert!(!wildcard_covers("a.example.com", "a.example.com"));
    }

    #[test]
    fn files_read_together_and_a_missing_bundle_is_none() {
        let dir = std::env::temp_dir().join(format!("ballast-certs-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = pair(0, 30);
        std::fs::write(dir.join("tls.crt"), &files.cert).unwrap();
        std::fs::write(dir.join("tls.key"), &files.key).unwrap();
        let read = PemFiles::read(
            &dir.join("tls.crt"),
            &dir.join("tls.key"),
            Some(&dir.join("ca.crt")),
        )
        .unwrap();
        assert_eq!(read, files);
        std::fs::write(dir.join("ca.crt"), b"bundle").unwrap();
        let read = PemFiles::read(
            &dir.join("tls.crt"),
            &dir.join("tls.key"),
            Some(&dir.join("ca.crt")),
        )
        .unwrap();
        assert_eq!(read.ca, b"bundle");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Whatever bytes the Secret holds, loading answers with an error, never a panic, and
        /// never serves them.
        #[test]
        fn garbage_is_refused_with_a_reason(
            cert in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            ca in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let files = PemFiles { cert, key, ca };
            let err = check(&files, 1).unwrap_err();
            proptest::prop_assert!(!err.metric_label().is_empty());
        }

        /// A good pair beside a mangled CA bundle: refused as untrusted, or served when what is
        /// left still names the same CA (anchors are a subject and a key, so a flipped bit in
        /// the root's own signature changes nothing) or nothing at all (no bundle, no check).
        #[test]
        fn a_mangled_bundle_is_refused_as_untrusted(cut in 0usize..400, flip in 0usize..400) {
            let root = authority("root", None);
            let mut files = leaf(&["edge.example.com"], &root, &[], &root.0);
            let mut ca = files.ca.clone();
            ca.truncate(cut.min(ca.len()));
            if let Some(b) = ca.get_mut(flip) {
                *b ^= 0x20;
            }
            files.ca = ca;
            match check(&files, 1) {
                Ok(_) => proptest::prop_assert!(
                    files.ca.iter().all(u8::is_ascii_whitespace)
                        || CertificateDer::pem_slice_iter(&files.ca).flatten().count() > 0,
                    "served beside a bundle with no certificate"
                ),
                Err(e) => proptest::prop_assert_eq!(e.metric_label(), "untrusted_chain"),
            }
        }
    }
}
