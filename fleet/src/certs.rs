//! Test and demo PKI: one CA that issues ECDSA P-256 server certificates.
//!
//! Rotations are the product's whole subject, so tests need to mint certificates on the fly:
//! a fresh one for hot reload, an expired one to prove a bad certificate is refused. This module
//! owns that and nothing else; it is never meant to protect real traffic.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// A self-signed certificate authority kept in memory.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// When an issued certificate is valid, relative to now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// From one day ago to 90 days ahead (cert-manager's default lifetime).
    Current,
    /// From two days ago to one day ago: what a sidecar must refuse to load.
    Expired,
}

/// A server certificate and its key, as a Kubernetes TLS Secret would hold them.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// Leaf followed by the CA: the full chain, like `tls.crt`.
    pub cert_pem: String,
    /// PKCS#8 private key, like `tls.key`.
    pub key_pem: String,
    /// DER of the leaf alone, to compare fingerprints with what agents saw.
    pub leaf_der: Vec<u8>,
}

impl Ca {
    /// Creates a CA with a fresh P-256 key, valid from one day ago for ten years.
    pub fn new(common_name: &str) -> Result<Ca> {
        Self::with_key(
            common_name,
            KeyPair::generate().context("generating CA key")?,
        )
    }

    /// Re-creates a CA from its key (PEM, as written by [`Ca::key_pem`]). Its certificate is
    /// re-signed, but with the same name and key, so what it issues chains to the original
    /// CA certificate: a demo can renew a leaf without agents changing their trust anchor.
    pub fn from_key_pem(common_name: &str, key_pem: &str) -> Result<Ca> {
        Self::with_key(
            common_name,
            KeyPair::from_pem(key_pem).context("parsing CA key")?,
        )
    }

    fn with_key(common_name: &str, key: KeyPair) -> Result<Ca> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_window(&mut params, Validity::Current);
        // A CA outlives every certificate it issues in a test run.
        params.not_after += DAY * 3650;
        let cert = params.self_signed(&key).context("self-signing CA")?;
        Ok(Ca { cert, key })
    }

    /// The CA certificate in PEM, the trust anchor agents load.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's private key in PEM (PKCS#8), to issue more certificates later.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    /// Issues a server certificate for `sans` (DNS names or IP addresses).
    pub fn issue_server(&self, sans: &[String], validity: Validity) -> Result<IssuedCert> {
        self.issue(sans, validity, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Issues a client certificate (for agents of a mutual-TLS gateway) named `name`.
    pub fn issue_client(&self, name: &str) -> Result<IssuedCert> {
        self.issue(
            &[name.to_owned()],
            Validity::Current,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn issue(
        &self,
        sans: &[String],
        validity: Validity,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<IssuedCert> {
        let key = KeyPair::generate().context("generating key")?;
        let mut params = CertificateParams::new(sans.to_vec()).context("parsing SANs")?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            sans.first().map(String::as_str).unwrap_or("ballast"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        set_window(&mut params, validity);
        let leaf = params
            .signed_by(&key, &self.cert, &self.key)
            .context("signing certificate")?;
        Ok(IssuedCert {
            cert_pem: format!("{}{}", leaf.pem(), self.cert.pem()),
            key_pem: key.serialize_pem(),
            leaf_der: leaf.der().to_vec(),
        })
    }
}

impl IssuedCert {
    /// SHA-256 of the leaf, in the same form agents report it.
    pub fn fingerprint(&self) -> String {
        sha256_hex(&self.leaf_der)
    }

    /// A ready rustls server configuration (ring provider, no client auth) serving this
    /// certificate: handy for tests that need a TLS terminator of their own.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("parsing certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).context("parsing key")?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("building server config")?;
        Ok(Arc::new(config))
    }
}

/// Lowercase hex SHA-256 of `der`: the certificate fingerprint used across Ballast (one
/// function, `ballast-certs`', so the fleet's and the sidecar's fingerprints always compare).
pub use ballast_certs::sha256_hex;

/// Sets the validity window relative to now. rcgen's `OffsetDateTime` does arithmetic with
/// std durations, so counting from the Unix epoch avoids a direct dependency on `time`.
fn set_window(params: &mut CertificateParams, validity: Validity) {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    let (not_before, not_after) = match validity {
        Validity::Current => (now - DAY, now + DAY * 90),
        Validity::Expired => (now - DAY * 2, now - DAY),
    };
    params.not_before = not_before;
    params.not_after = not_after;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_is_leaf_then_ca_and_fingerprint_matches_leaf() {
        let ca = Ca::new("test ca").unwrap();
        let issued = ca
            .issue_server(&["localhost".into(), "127.0.0.1".into()], Validity::Current)
            .unwrap();
        let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0].as_ref(), issued.leaf_der.as_slice());
        assert_eq!(chain[1].as_ref(), ca.cert_der().as_slice());
        let fp = issued.fingerprint();
        assert_eq!(fp.len(), 64);
        assert!(fp
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        issued.server_config().unwrap();
    }

    #[test]
    fn sha256_hex_of_empty_input() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
