//! Loading and validating a certificate/key pair from PEM files.
//!
//! A pair is only ever served after it passed every check here: it parses, the key matches the
//! leaf, and the leaf is valid now. Anything else is a [`CertificateError`] that the reloader
//! reports while the previous pair keeps serving.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

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

/// A validated pair, ready to serve.
#[derive(Debug, Clone)]
pub struct ServingCertificate {
    pub key: Arc<CertifiedKey>,
    /// SHA-256 of the leaf's DER, lowercase hex: what the operator compares across pods.
    pub sha256: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

/// The raw file contents; compared between polls to notice a change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PemFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
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

/// Checks a pair and prepares it for rustls.
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
    let not_before = parsed.validity().not_before.timestamp();
    let not_after = parsed.validity().not_after.timestamp();
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if now > not_after {
        return Err(CertificateError::Expired {
            not_after: crate::clock::rfc3339(not_after),
        });
    }
    if now < not_before {
        return Err(CertificateError::NotYetValid {
            not_before: crate::clock::rfc3339(not_before),
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
        key: Arc::new(certified),
        sha256: sha256_hex(&leaf),
        not_before,
        not_after,
    })
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
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let now = rcgen::date_time_ymd(2026, 11, 24);
        params.not_before = now + Duration::from_secs(86_400) * not_before_days as u32;
        params.not_after = now + Duration::from_secs(86_400) * not_after_days as u32;
        let cert = params.self_signed(&key).unwrap();
        PemFiles {
            cert: cert.pem().into_bytes(),
            key: key.serialize_pem().into_bytes(),
        }
    }

    fn check(files: &PemFiles, now_days: u64) -> Result<ServingCertificate, CertificateError> {
        // 2026-11-24T00:00:00Z plus whole days.
        let now = UNIX_EPOCH + Duration::from_secs(1_795_478_400 + now_days * 86_400);
        let provider = rustls::crypto::ring::default_provider();
        validate(
            files,
            Path::new("tls.crt"),
            Path::new("tls.key"),
            &provider,
            now,
        )
    }

    #[test]
    fn a_current_pair_is_served_with_its_fingerprint_and_dates() {
        let files = pair(0, 30);
        let served = check(&files, 1).unwrap();
        assert_eq!(served.sha256.len(), 64);
        assert_eq!(served.not_after - served.not_before, 30 * 86_400);
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
