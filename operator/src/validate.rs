//! Validate: what the schema cannot check, reported as a reason a person can act on.
//!
//! A problem found here never deletes anything: the reconcile stops before applying, sets
//! `Ready=False` with the reason and message, emits an Event, and tries again. The Secret is
//! judged by the very code the sidecar uses to accept a certificate (`ballast-certs`), so the
//! operator and the data plane can never disagree about what is servable; the operator keeps
//! only the facts of the certificate, never its key.

use std::path::Path;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;

use ballast_certs::{CertificateError, CertificateFacts, PemFiles};

use crate::crd::PresenceCluster;
use crate::workload::{SIDECAR_CONTAINER, TLS_VOLUME};

/// Why the cluster cannot be made Ready, in the words of a condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase, stable: `InvalidTemplate`, `SecretNotFound`, `SecretIncomplete`,
    /// `CertificateExpired`, `CertificateNotYetValid`, `CertificateInvalid`.
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Checks the pod template: a gateway container to sit beside, and no name Ballast injects.
pub fn template(prc: &PresenceCluster) -> Result<(), Problem> {
    let pod = prc.spec.template.spec.as_ref().ok_or_else(|| {
        Problem::new(
            "InvalidTemplate",
            "spec.template.spec is missing: give the pod spec of your gateway",
        )
    })?;
    if pod.containers.is_empty() {
        return Err(Problem::new(
            "InvalidTemplate",
            "spec.template.spec.containers is empty: the template needs the gateway container",
        ));
    }
    if let Some(wanted) = &prc.spec.gateway.container {
        if !pod.containers.iter().any(|c| &c.name == wanted) {
            let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
            return Err(Problem::new(
                "InvalidTemplate",
                format!(
                    "spec.gateway.container is {wanted:?} but the template's containers are {names:?}"
                ),
            ));
        }
    }
    if pod.containers.iter().any(|c| c.name == SIDECAR_CONTAINER) {
        return Err(Problem::new(
            "InvalidTemplate",
            format!("the template already has a container named {SIDECAR_CONTAINER:?}, which Ballast injects"),
        ));
    }
    if pod.volumes.iter().flatten().any(|v| v.name == TLS_VOLUME) {
        return Err(Problem::new(
            "InvalidTemplate",
            format!(
                "the template already has a volume named {TLS_VOLUME:?}, which Ballast injects"
            ),
        ));
    }
    Ok(())
}

/// Checks the TLS Secret as the sidecar will: both keys present, certificate and key parse
/// and match, the certificate valid now.
pub fn secret(
    secret: Option<&Secret>,
    name: &str,
    now: SystemTime,
) -> Result<CertificateFacts, Problem> {
    let secret = secret.ok_or_else(|| {
        Problem::new(
            "SecretNotFound",
            format!("Secret {name:?} (spec.tls.secretName) does not exist in this namespace; create it or point spec.tls.secretName at the Secret cert-manager writes"),
        )
    })?;
    let data = secret.data.as_ref();
    let key = |k: &str| data.and_then(|d| d.get(k)).map(|b| b.0.clone());
    let (Some(cert), Some(private)) = (key("tls.crt"), key("tls.key")) else {
        let mut missing = Vec::new();
        for k in ["tls.crt", "tls.key"] {
            if key(k).is_none() {
                missing.push(k);
            }
        }
        return Err(Problem::new(
            "SecretIncomplete",
            format!(
                "Secret {name:?} has no {} key: a TLS Secret needs tls.crt and tls.key",
                missing.join(" or ")
            ),
        ));
    };
    let files = PemFiles { cert, key: private };
    let provider = rustls_provider();
    ballast_certs::inspect(
        &files,
        Path::new("tls.crt"),
        Path::new("tls.key"),
        &provider,
        now,
    )
    .map_err(|e| {
        let reason = match e {
            CertificateError::Expired { .. } => "CertificateExpired",
            CertificateError::NotYetValid { .. } => "CertificateNotYetValid",
            _ => "CertificateInvalid",
        };
        Problem::new(reason, format!("Secret {name:?}: {e}"))
    })
}

fn rustls_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::example;
    use ballast_fleet::certs::{Ca, Validity};
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn tls_secret(cert: &str, key: &str) -> Secret {
        Secret {
            data: Some(BTreeMap::from([
                ("tls.crt".into(), ByteString(cert.as_bytes().to_vec())),
                ("tls.key".into(), ByteString(key.as_bytes().to_vec())),
            ])),
            ..Secret::default()
        }
    }

    #[test]
    fn a_template_without_containers_or_with_a_clash_is_explained() {
        let mut prc = example();
        prc.spec.template.spec.as_mut().unwrap().containers.clear();
        assert_eq!(template(&prc).unwrap_err().reason, "InvalidTemplate");

        let mut prc = example();
        prc.spec.gateway.container = Some("presence".into());
        let err = template(&prc).unwrap_err();
        assert!(
            err.message.contains("\"presence\"") && err.message.contains("gateway"),
            "{err:?}"
        );

        let mut prc = example();
        prc.spec.template.spec.as_mut().unwrap().containers[0].name = SIDECAR_CONTAINER.into();
        assert!(template(&prc).unwrap_err().message.contains("injects"));
        assert!(template(&example()).is_ok());
    }

    #[test]
    fn each_secret_problem_has_its_reason() {
        let now = SystemTime::now();
        assert_eq!(
            secret(None, "agents-tls", now).unwrap_err().reason,
            "SecretNotFound"
        );

        let ca = Ca::new("test").unwrap();
        let good = ca
            .issue_server(&["localhost".into()], Validity::Current)
            .unwrap();
        let mut partial = tls_secret(&good.cert_pem, &good.key_pem);
        partial.data.as_mut().unwrap().remove("tls.key");
        let err = secret(Some(&partial), "agents-tls", now).unwrap_err();
        assert_eq!(err.reason, "SecretIncomplete");
        assert!(err.message.contains("tls.key"), "{err:?}");

        let expired = ca
            .issue_server(&["localhost".into()], Validity::Expired)
            .unwrap();
        let err = secret(
            Some(&tls_secret(&expired.cert_pem, &expired.key_pem)),
            "agents-tls",
            now,
        )
        .unwrap_err();
        assert_eq!(err.reason, "CertificateExpired");

        let other = ca
            .issue_server(&["localhost".into()], Validity::Current)
            .unwrap();
        let err = secret(
            Some(&tls_secret(&good.cert_pem, &other.key_pem)),
            "agents-tls",
            now,
        )
        .unwrap_err();
        assert_eq!(err.reason, "CertificateInvalid");
        assert!(err.message.contains("does not match"), "{err:?}");

        let ok = secret(
            Some(&tls_secret(&good.cert_pem, &good.key_pem)),
            "agents-tls",
            now,
        )
        .unwrap();
        assert_eq!(ok.sha256, good.fingerprint());
    }
}
