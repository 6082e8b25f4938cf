//! The TLS configuration new handshakes use, and its hot swap.
//!
//! A reload replaces the `Arc<ServerConfig>` that the accept loop clones for each new
//! connection. Connections already established keep the session they negotiated: nothing
//! here ever touches them, which is why a reload cannot drop a connection.
//!
//! A renewal is held to what `ballast-certs` checks, and also to the certificate it replaces
//! (it must keep every name that one served). A key that does not match its certificate is
//! only believed on the second look: files written one at a time (outside the kubelet's
//! atomic swap) show a new key beside the old certificate for a moment.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use ballast_certs::{CertificateError, Expect, PemFiles, ServingCertificate};
use ballast_contract::clock;

use crate::metrics::Metrics;
use crate::secret_watch::SecretWatch;
use crate::tickets::{TicketKeyRing, Ticketer};

/// What the accept loop needs for one new connection.
#[derive(Clone)]
pub struct Served {
    /// The configuration new agent handshakes use.
    pub config: Arc<ServerConfig>,
    /// Increases with every successful reload; drains close lower generations first.
    pub generation: u64,
    pub certificate: ServingCertificate,
    /// Unix seconds.
    pub loaded_at: i64,
}

/// The last reload that failed, kept until a later reload succeeds.
#[derive(Clone, Debug)]
pub struct ReloadFailure {
    pub message: String,
    pub reason: &'static str,
    /// Unix seconds.
    pub at: i64,
}

/// The live TLS state shared by the accept loop, the reloader and the admin API.
pub struct TlsState {
    provider: Arc<CryptoProvider>,
    client_roots: Option<Arc<RootCertStore>>,
    cert_path: PathBuf,
    key_path: PathBuf,
    ca_path: Option<PathBuf>,
    current: RwLock<Arc<Served>>,
    last_files: RwLock<PemFiles>,
    last_failure: RwLock<Option<ReloadFailure>>,
    /// Files whose key did not match their certificate, seen once: refused if seen again.
    torn: Mutex<Option<PemFiles>>,
    /// The cluster's shared session-ticket keys (`--ticket-keys`); without them, only the
    /// process's own session cache resumes.
    tickets: Option<Arc<TicketKeyRing>>,
}

/// Always answers with the one certificate it was built with (SNI is not used to choose).
#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl ResolvesServerCert for SingleCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Errors that stop the sidecar from starting at all.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("the initial certificate is not usable: {0}")]
    Certificate(#[from] CertificateError),
    #[error("CA bundle {path}: {detail}")]
    CaBundle { path: String, detail: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsState {
    /// Loads the initial pair; unlike a reload, a bad pair here is fatal (there is no old
    /// pair to fall back on).
    pub fn load(
        provider: Arc<CryptoProvider>,
        cert_path: PathBuf,
        key_path: PathBuf,
        ca_path: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Result<Self, StartupError> {
        let provider = Arc::new(prefer_aes128_sha256(&provider));
        let client_roots = match client_ca {
            None => None,
            Some(path) => Some(Arc::new(load_roots(&path)?)),
        };
        let files = PemFiles::read(&cert_path, &key_path, ca_path.as_deref())?;
        let certificate = ballast_certs::validate(
            &files,
            &cert_path,
            &key_path,
            &provider,
            SystemTime::now(),
            Expect::default(),
        )?;
        let served = build(&provider, client_roots.as_ref(), None, certificate, 1)?;
        Ok(Self {
            provider,
            client_roots,
            cert_path,
            key_path,
            ca_path,
            current: RwLock::new(Arc::new(served)),
            last_files: RwLock::new(files),
            last_failure: RwLock::new(None),
            torn: Mutex::new(None),
            tickets: None,
        })
    }

    /// Issues and accepts session tickets sealed with the keys in `path` (shared by every
    /// pod of the cluster). A bad or missing file is not fatal: full handshakes until a good
    /// one appears.
    pub fn with_ticket_keys(mut self, path: PathBuf) -> Result<Self, StartupError> {
        let ring = Arc::new(TicketKeyRing::load(path));
        let current = self.current();
        let served = build(
            &self.provider,
            self.client_roots.as_ref(),
            Some(&ring),
            current.certificate.clone(),
            current.generation,
        )?;
        self.current = RwLock::new(Arc::new(served));
        self.tickets = Some(ring);
        Ok(self)
    }

    pub(crate) fn tickets(&self) -> Option<&Arc<TicketKeyRing>> {
        self.tickets.as_ref()
    }

    /// What new handshakes use right now.
    pub(crate) fn current(&self) -> Arc<Served> {
        self.current.read().expect("tls state lock").clone()
    }

    pub(crate) fn last_failure(&self) -> Option<ReloadFailure> {
        self.last_failure.read().expect("tls state lock").clone()
    }

    /// Reads the files and, if they changed, validates and swaps them in. Returns whether a new
    /// pair is now served. A refused pair is remembered so it is reported once, not every poll.
    pub(crate) fn reload_if_changed(&self, metrics: &Metrics) -> bool {
        let files = match PemFiles::read(&self.cert_path, &self.key_path, self.ca_path.as_deref()) {
            Ok(files) => files,
            Err(err) => {
                // The kubelet swaps a symlink, so a read never sees a half-written Secret;
                // a missing file is a real problem worth saying, but only once.
                self.record_failure(&err, metrics);
                return false;
            }
        };
        if *self.last_files.read().expect("tls state lock") == files {
            return false;
        }
        *self.last_files.write().expect("tls state lock") = files.clone();
        let current = self.current();
        let generation = current.generation + 1;
        let result = ballast_certs::validate(
            &files,
            &self.cert_path,
            &self.key_path,
            &self.provider,
            SystemTime::now(),
            Expect::replacing(&current.certificate.facts),
        )
        .map_err(StartupError::from)
        .and_then(|c| {
            build(
                &self.provider,
                self.client_roots.as_ref(),
                self.tickets.as_ref(),
                c,
                generation,
            )
        });
        if matches!(
            result,
            Err(StartupError::Certificate(CertificateError::KeyMismatch))
        ) {
            let mut torn = self.torn.lock().expect("tls state lock");
            if torn.as_ref() != Some(&files) {
                // First sight: perhaps the key was written and the certificate is next. Look
                // again at the next poll before calling it a mismatch.
                tracing::info!(
                    "key and certificate do not match yet (written one at a time?); looking again at the next poll"
                );
                *torn = Some(files);
                *self.last_files.write().expect("tls state lock") = PemFiles::default();
                return false;
            }
        }
        *self.torn.lock().expect("tls state lock") = None;
        match result {
            Ok(served) => {
                tracing::info!(
                    sha256 = %served.certificate.facts.sha256,
                    not_after = %clock::rfc3339(served.certificate.facts.not_after),
                    generation,
                    "serving the new certificate to new handshakes; existing connections are untouched"
                );
                metrics
                    .certificate_not_after_seconds
                    .set(served.certificate.facts.not_after);
                metrics.reload("success").inc();
                *self.current.write().expect("tls state lock") = Arc::new(served);
                *self.last_failure.write().expect("tls state lock") = None;
                true
            }
            Err(StartupError::Certificate(err)) => {
                if matches!(err, CertificateError::NotYetValid { .. }) {
                    // Same files may become valid later (clock skew): look at them again.
                    *self.last_files.write().expect("tls state lock") = PemFiles::default();
                }
                self.record_failure(&err, metrics);
                false
            }
            Err(other) => {
                tracing::error!(error = %other, "new certificate refused; still serving the previous one");
                metrics.reload("malformed").inc();
                *self.last_failure.write().expect("tls state lock") = Some(ReloadFailure {
                    message: other.to_string(),
                    reason: "malformed",
                    at: clock::unix_now(),
                });
                false
            }
        }
    }

    fn record_failure(&self, err: &CertificateError, metrics: &Metrics) {
        let mut slot = self.last_failure.write().expect("tls state lock");
        let message = err.to_string();
        if slot.as_ref().map(|f| &f.message) == Some(&message) {
            return;
        }
        tracing::error!(error = %message, "new certificate refused; still serving the previous one");
        metrics.reload(err.metric_label()).inc();
        *slot = Some(ReloadFailure {
            message,
            reason: err.metric_label(),
            at: clock::unix_now(),
        });
    }

    /// Looks at the files when their directories change (inotify) and every `interval`
    /// regardless, until the task is dropped.
    pub(crate) async fn watch(self: Arc<Self>, metrics: Arc<Metrics>, interval: Duration) {
        let tickets = self.tickets.as_ref().map(|t| t.path().to_path_buf());
        let files = [
            Some(&self.cert_path),
            Some(&self.key_path),
            self.ca_path.as_ref(),
            tickets.as_ref(),
        ];
        let secret = match SecretWatch::new(files.into_iter().flatten().map(PathBuf::as_path)) {
            Ok(watch) => Some(watch),
            Err(why) => {
                tracing::warn!(%why, interval_seconds = interval.as_secs_f64(),
                    "not watching the certificate's directory; polling only");
                None
            }
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match &secret {
                Some(secret) => tokio::select! {
                    _ = tick.tick() => {}
                    _ = secret.changed() => {}
                },
                None => {
                    tick.tick().await;
                }
            }
            let state = self.clone();
            let metrics = metrics.clone();
            // File reads and signature checks are blocking work; keep them off the proxy threads.
            let _ = tokio::task::spawn_blocking(move || {
                state.reload_if_changed(&metrics);
                if let Some(tickets) = &state.tickets {
                    tickets.reload_if_changed(&metrics);
                }
            })
            .await;
        }
    }
}

/// The provider with TLS 1.3's AES-128-GCM/SHA-256 first, for the server to choose whatever the
/// agent's order ([`ServerConfig::ignore_client_order`]). The certificate (P-256) and the key
/// exchange (X25519) give 128-bit security, so AES-256 with SHA-384 costs more without being
/// stronger; and every handshake hashes its transcript and derives its keys with the suite's
/// hash, which x86 computes in hardware for SHA-256 (SHA-NI) but not for SHA-384. Agents that
/// offer only other suites still get them.
fn prefer_aes128_sha256(provider: &CryptoProvider) -> CryptoProvider {
    let mut provider = provider.clone();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    provider
}

fn build(
    provider: &Arc<CryptoProvider>,
    client_roots: Option<&Arc<RootCertStore>>,
    tickets: Option<&Arc<TicketKeyRing>>,
    certificate: ServingCertificate,
    generation: u64,
) -> Result<Served, StartupError> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .map_err(|e| StartupError::CaBundle {
                        path: "(client CA)".into(),
                        detail: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCert(certificate.key.clone())));
    config.ignore_client_order = true;
    if let Some(ring) = tickets {
        // Bound to this certificate: a renewal ends resumption, so every agent sees it.
        config.ticketer = Arc::new(Ticketer::new(ring.clone(), &certificate.facts.sha256));
        // One ticket per handshake: an agent holds one connection and resumes once.
        config.send_tls13_tickets = 1;
    }
    Ok(Served {
        config: Arc::new(config),
        generation,
        certificate,
        loaded_at: clock::unix_now(),
    })
}

/// The CAs of a PEM bundle (clients' CA for mutual TLS, the operator's CA for reports).
pub(crate) fn load_roots(path: &std::path::Path) -> Result<RootCertStore, StartupError> {
    let err = |detail: String| StartupError::CaBundle {
        path: path.display().to_string(),
        detail,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| err(e.to_string()))?;
        roots.add(cert).map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("holds no certificate".into()));
    }
    Ok(roots)
}
