//! Validate: what the schema cannot check, reported as a reason a person can act on.
//!
//! A problem found here never deletes anything: the reconcile stops before applying, sets
//! `Ready=False` with the reason and message, emits an Event, and tries again. The Secret is
//! judged by the very code the sidecar uses to accept a certificate (`ballast-certs`), so the
//! operator and the data plane can never disagree about what is servable; the operator keeps
//! only the facts of the certificate, never its key.

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;

use ballast_certs::{CertificateError, CertificateFacts, Expect, PemFiles};
use ballast_contract::report::ServedCertificate;
use ballast_contract::Report;

use crate::crd::PresenceCluster;
use crate::workload::{SIDECAR_CONTAINER, TLS_VOLUME};

/// Why the cluster cannot be made Ready, in the words of a condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase, stable: `InvalidTemplate`, `SecretNotFound`, `SecretIncomplete`,
    /// `CertificateExpired`, `CertificateNotYetValid`, `CertificateInvalid`,
    /// `CertificateUntrusted`, `CertificateNamesDropped`.
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
    keep: Expect<'_>,
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
    let files = PemFiles {
        cert,
        key: private,
        ca: key("ca.crt").unwrap_or_default(),
    };
    let provider = rustls_provider();
    ballast_certs::inspect(
        &files,
        Path::new("tls.crt"),
        Path::new("tls.key"),
        &provider,
        now,
        keep,
    )
    .map_err(|e| {
        let (reason, advice) = match e {
            CertificateError::Expired { .. } => ("CertificateExpired", ""),
            CertificateError::NotYetValid { .. } => ("CertificateNotYetValid", ""),
            CertificateError::CaBundle(_) | CertificateError::UntrustedChain(_) => (
                "CertificateUntrusted",
                "; the pods keep serving the previous certificate",
            ),
            CertificateError::NamesDropped { .. } => (
                "CertificateNamesDropped",
                "; the pods keep serving the previous certificate (if the names are dropped on purpose, restart the pods: a sidecar that starts takes any valid pair, and this check follows what the pods serve)",
            ),
            _ => ("CertificateInvalid", ""),
        };
        Problem::new(reason, format!("Secret {name:?}: {e}{advice}"))
    })
}

/// [`secret`], held to the names the pods serve now (see [`served_names`]): how the reconcile
/// and the observer judge a renewal alike.
pub fn renewal<'a>(
    secret_object: Option<&Secret>,
    name: &str,
    now: SystemTime,
    served: impl Iterator<Item = &'a Report>,
) -> Result<CertificateFacts, Problem> {
    let (dns, ips) = served_names(served);
    secret(
        secret_object,
        name,
        now,
        Expect {
            keep_dns_names: &dns,
            keep_ip_addresses: &ips,
        },
    )
}

/// The names a Secret's next certificate must keep: those of the certificate most reporting
/// pods serve (the one it replaces). None when no pod reports: then nothing is served that
/// could be broken, and a sidecar that starts takes any valid pair as well.
fn served_names<'a>(reports: impl Iterator<Item = &'a Report>) -> (Vec<String>, Vec<String>) {
    let mut by_sha: HashMap<&str, (usize, &ServedCertificate)> = HashMap::new();
    for r in reports {
        by_sha
            .entry(r.certificate.sha256.as_str())
            .or_insert((0, &r.certificate))
            .0 += 1;
    }
    by_sha
        .into_values()
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.sha256.cmp(&a.1.sha256)))
        .map(|(_, c)| (c.dns_names.clone(), c.ip_addresses.clone()))
        .unwrap_or_default()
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
            secret(None, "agents-tls", now, Expect::default())
                .unwrap_err()
                .reason,
            "SecretNotFound"
        );

        let ca = Ca::new("test").unwrap();
        let good = ca
            .issue_server(&["localhost".into()], Validity::Current)
            .unwrap();
        let mut partial = tls_secret(&good.cert_pem, &good.key_pem);
        partial.data.as_mut().unwrap().remove("tls.key");
        let err = secret(Some(&partial), "agents-tls", now, Expect::default()).unwrap_err();
        assert_eq!(err.reason, "SecretIncomplete");
        assert!(err.message.contains("tls.key"), "{err:?}");

        let expired = ca
            .issue_server(&["localhost".into()], Validity::Expired)
            .unwrap();
        let err = secret(
            Some(&tls_secret(&expired.cert_pem, &expired.key_pem)),
            "agents-tls",
            now,
            Expect::default(),
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
            Expect::default(),
        )
        .unwrap_err();
        assert_eq!(err.reason, "CertificateInvalid");
        assert!(err.message.contains("does not match"), "{err:?}");

        let ok = secret(
            Some(&tls_secret(&good.cert_pem, &good.key_pem)),
            "agents-tls",
            now,
            Expect::default(),
        )
        .unwrap();
        assert_eq!(ok.sha256, good.fingerprint());
    }

    fn with_ca(mut secret: Secret, ca_pem: &str) -> Secret {
        secret
            .data
            .as_mut()
            .unwrap()
            .insert("ca.crt".into(), ByteString(ca_pem.as_bytes().to_vec()));
        secret
    }

    #[test]
    fn a_renewal_must_chain_to_the_secrets_ca_and_keep_the_served_names() {
        let now = SystemTime::now();
        let ca = Ca::new("agents CA").unwrap();
        let names = ["edge.presence.svc".to_owned(), "127.0.0.1".to_owned()];
        let good = ca.issue_server(&names, Validity::Current).unwrap();
        let judge = |s: &Secret, keep: Expect<'_>| secret(Some(s), "agents-tls", now, keep);
        let served = judge(
            &with_ca(tls_secret(&good.cert_pem, &good.key_pem), &ca.cert_pem()),
            Expect::default(),
        )
        .unwrap();

        let foreign = Ca::new("someone else").unwrap();
        let theirs = foreign.issue_server(&names, Validity::Current).unwrap();
        let err = judge(
            &with_ca(
                tls_secret(&theirs.cert_pem, &theirs.key_pem),
                &ca.cert_pem(),
            ),
            Expect::replacing(&served),
        )
        .unwrap_err();
        assert_eq!(err.reason, "CertificateUntrusted", "{err:?}");
        assert!(err.message.contains("previous certificate"), "{err:?}");

        let narrower = ca.issue_server(&names[..1], Validity::Current).unwrap();
        let err = judge(
            &with_ca(
                tls_secret(&narrower.cert_pem, &narrower.key_pem),
                &ca.cert_pem(),
            ),
            Expect::replacing(&served),
        )
        .unwrap_err();
        assert_eq!(err.reason, "CertificateNamesDropped", "{err:?}");
        assert!(err.message.contains("127.0.0.1"), "{err:?}");
        // With nothing served yet, there is nothing to keep.
        judge(
            &with_ca(
                tls_secret(&narrower.cert_pem, &narrower.key_pem),
                &ca.cert_pem(),
            ),
            Expect::default(),
        )
        .unwrap();
    }

    #[test]
    fn the_names_to_keep_are_those_most_pods_serve() {
        let report = |sha: &str, dns: &[&str]| Report {
            certificate: ServedCertificate {
                sha256: sha.into(),
                dns_names: dns.iter().map(|d| d.to_string()).collect(),
                ..ServedCertificate::default()
            },
            ..Report::default()
        };
        let reports = [
            report("new", &["a"]),
            report("old", &["a", "b"]),
            report("old", &["a", "b"]),
        ];
        assert_eq!(served_names(reports.iter()).0, ["a", "b"]);
        assert_eq!(served_names([].iter()), (vec![], vec![]));
    }
}
