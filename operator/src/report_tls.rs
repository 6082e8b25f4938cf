//! The report channel's TLS: the operator's own CA, kept in a Secret of its namespace, and the
//! serving certificate each replica issues itself from it at start.
//!
//! Sidecars verify the operator against this CA (published, public part only, as a ConfigMap
//! beside each PresenceCluster and mounted into its pods), so a report and its token never go
//! to an impostor. Two replicas starting at once both try to create the Secret; the loser
//! reads the winner's. Alternatively `--report-tls-dir` takes `tls.crt`/`tls.key`/`ca.crt`
//! from a mounted Secret (for example one cert-manager issues), and this module only reads.
//!
//! It must never log or print key material: [`Material`]'s Debug shows lengths only.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const CA_NAME: &str = "Ballast operator report CA";
/// The CA outlives any deployment; the serving certificate is re-issued at every start.
const CA_DAYS: u64 = 3650;
const SERVING_DAYS: u64 = 365;
const DAY: Duration = Duration::from_secs(86_400);

/// PEM material for the report listener.
pub struct Material {
    /// The CA bundle sidecars trust.
    pub ca_pem: String,
    /// Serving chain, leaf first.
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("cert_pem_bytes", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Reads `tls.crt`, `tls.key` and `ca.crt` from a directory (a mounted Secret).
pub fn from_dir(dir: &Path) -> anyhow::Result<Material> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("{}", dir.join(name).display()))
    };
    Ok(Material {
        ca_pem: read("ca.crt")?,
        cert_pem: read("tls.crt")?,
        key_pem: read("tls.key")?,
    })
}

/// Gets (or creates) the CA Secret `namespace/name` and issues a serving certificate for
/// `names` (DNS names and IP addresses) from it.
pub async fn ensure(
    client: &Client,
    namespace: &str,
    name: &str,
    names: &[String],
) -> anyhow::Result<Material> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match api.get_opt(name).await? {
        Some(s) => s,
        None => {
            let key = KeyPair::generate().context("generating the CA key")?;
            let cert = ca_params()?.self_signed(&key)?;
            let fresh = crate::secrets::managed(
                namespace,
                name,
                None,
                Some("kubernetes.io/tls"),
                [
                    ("tls.crt".to_owned(), cert.pem().into_bytes()),
                    ("tls.key".to_owned(), key.serialize_pem().into_bytes()),
                ]
                .into(),
            );
            // Another replica may create it first: then theirs is used.
            let secret = crate::secrets::create_or_existing(&api, &fresh).await?;
            tracing::info!(%namespace, %name, "report CA ready");
            secret
        }
    };
    let field = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .with_context(|| format!("Secret {namespace}/{name} has no {k}"))
    };
    let (ca_pem, ca_key_pem) = (field("tls.crt")?, field("tls.key")?);
    issue(&ca_pem, &ca_key_pem, names)
}

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = std::time::SystemTime::now();
    params.not_before = (now - DAY).into();
    params.not_after = (now + DAY * CA_DAYS as u32).into();
    Ok(params)
}

/// Issues a serving certificate for `names` signed by the CA's key. The issuer is rebuilt from
/// the same name and key, so the chain verifies against the stored CA certificate.
fn issue(ca_pem: &str, ca_key_pem: &str, names: &[String]) -> anyhow::Result<Material> {
    let ca_key = KeyPair::from_pem(ca_key_pem).context("the report CA's key")?;
    let issuer = ca_params()?.self_signed(&ca_key)?;
    let mut params = CertificateParams::new(names.to_vec()).context("serving names")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "ballast-operator");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = std::time::SystemTime::now();
    params.not_before = (now - DAY).into();
    params.not_after = (now + DAY * SERVING_DAYS as u32).into();
    let key = KeyPair::generate().context("generating the serving key")?;
    let cert = params.signed_by(&key, &issuer, &ca_key)?;
    Ok(Material {
        ca_pem: ca_pem.to_owned(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A rustls server configuration for the material.
pub fn server_config(material: &Material) -> anyhow::Result<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(material.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("serving certificate")?;
    let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes()).context("serving key")?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn a_serving_certificate_verifies_against_the_stored_ca_and_names_its_addresses() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = KeyPair::generate().unwrap();
        let ca = ca_params().unwrap().self_signed(&key).unwrap();
        let names = vec![
            "ballast-operator.ballast-system.svc".to_owned(),
            "127.0.77.1".to_owned(),
        ];
        // Issued later from the stored PEM alone, as a restarted replica would.
        let material = issue(&ca.pem(), &key.serialize_pem(), &names).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from(ca.der().to_vec()))
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder(roots.into())
            .build()
            .unwrap();
        let leaf = rustls_pki_types::CertificateDer::from(
            rustls_pki_types::pem::PemObject::from_pem_slice(material.cert_pem.as_bytes())
                .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
                .unwrap(),
        );
        let verify = |name: &str| {
            let name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
            verifier.verify_server_cert(&leaf, &[], &name, &[], rustls_pki_types::UnixTime::now())
        };
        for name in &names {
            verify(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verify("evil.example.com").is_err());
        assert!(format!("{material:?}").contains("redacted"));
        assert!(!format!("{material:?}").contains("PRIVATE"));
        assert!(server_config(&material).is_ok());
    }
}
