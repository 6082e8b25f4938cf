//! Optional behaviours (mutual TLS, the PROXY protocol header) and the cipher suite the sidecar picks.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

fn client_config(ca_pem: &str, client: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    Arc::new(config)
}

/// Connects, says HELLO and returns the first line the gateway answers (or the error).
async fn hello(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = BufReader::new(tls);
    tls.get_mut()
        .write_all(b"HELLO agent-1\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    match tokio::time::timeout(Duration::from_secs(5), tls.read_line(&mut line)).await {
        Err(_) => Err("no answer".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(0)) => Err("closed".into()),
        Ok(Ok(_)) => Ok(line.trim().to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let _serial = serial().await;
    let pki = Pki::new();
    let server = pki.issue();
    let volume = SecretVolume::new(&server.cert_pem, &server.key_pem);
    let client_pki = Pki::new();
    let agent = client_pki.ca.issue_client("agent-1").unwrap();
    let stranger = Pki::new().ca.issue_client("agent-2").unwrap();
    let dir = TempDir::new("client-ca");
    let client_ca = dir.0.join("client-ca.crt");
    std::fs::write(&client_ca, client_pki.ca.cert_pem()).unwrap();
    let gateway = Gateway::start("pod-0").await;
    let sidecar = Sidecar::start(
        &volume,
        gateway.addr,
        &[
            "--client-ca",
            path_str(&client_ca),
            "--events-buffer",
            "100",
        ],
    );
    let ca = pki.ca.cert_pem();
    let mut events = EventConsumer::open(sidecar.admin, None, "", None)
        .await
        .unwrap();

    let with_cert = hello(
        sidecar.listen,
        client_config(&ca, Some((&agent.cert_pem, &agent.key_pem))),
    )
    .await;
    assert_eq!(with_cert, Ok("WELCOME pod-0".to_owned()));
    assert!(hello(sidecar.listen, client_config(&ca, None))
        .await
        .is_err());
    let wrong_ca = hello(
        sidecar.listen,
        client_config(&ca, Some((&stranger.cert_pem, &stranger.key_pem))),
    )
    .await;
    assert!(wrong_ca.is_err(), "{wrong_ca:?}");
    // The agent hears the alert before the sidecar has counted the failure.
    let failed = "ballast_sidecar_connections_closed_total{cause=\"error\"}";
    sidecar.wait_for(Duration::from_secs(10), |s| s.metric(failed) >= 2.0);
    assert_eq!(sidecar.metric(failed), 2.0);
    assert_eq!(
        sidecar.metric("ballast_sidecar_connections_accepted_total"),
        1.0
    );
    // Under mutual TLS the events name the agent by its certificate.
    let mut read = Vec::new();
    events
        .read_until(&mut read, Duration::from_secs(10), |e| {
            events_of(e, "refused").count() == 2 && events_of(e, "connected").count() == 1
        })
        .await
        .unwrap();
    let connected = events_of(&read, "connected").next().unwrap();
    let subject = connected["agent"]["subject"].as_str().unwrap();
    assert!(subject.contains("CN=agent-1"), "{connected}");
    assert_eq!(connected["agent"]["sni"], "localhost");
    assert_eq!(
        connected["agent"]["sans"],
        serde_json::json!(["DNS:agent-1"])
    );
    for refused in events_of(&read, "refused") {
        assert_eq!(refused["reason"], "handshake_failed", "{refused}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_tells_the_gateway_the_agents_address() {
    let _serial = serial().await;
    let pki = Pki::new();
    let cert = pki.issue();
    let volume = SecretVolume::new(&cert.cert_pem, &cert.key_pem);
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sidecar = Sidecar::start(
        &volume,
        upstream.local_addr().unwrap(),
        &["--proxy-protocol"],
    );
    // The readiness probe's own connections carry no header; skip them.
    let agent_source: std::net::SocketAddr = "127.0.0.7:0".parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(agent_source).unwrap();
    let tcp = socket.connect(sidecar.listen).await.unwrap();
    let agent_addr = tcp.local_addr().unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client_config(&pki.ca.cert_pem(), None))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"HELLO agent-7\n").await.unwrap();

    let header = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let (mut conn, _) = upstream.accept().await.unwrap();
            let mut header = [0u8; 28];
            if tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut header))
                .await
                .map(|r| r.is_ok())
                .unwrap_or(false)
            {
                let mut rest = [0u8; 14];
                conn.read_exact(&mut rest).await.unwrap();
                assert_eq!(&rest, b"HELLO agent-7\n");
                break header;
            }
        }
    })
    .await
    .expect("no upstream connection carried a PROXY header and the agent's bytes");
    assert_eq!(&header[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(header[12], 0x21, "version 2, PROXY");
    assert_eq!(header[13], 0x11, "TCP over IPv4");
    assert_eq!(&header[16..20], &[127, 0, 0, 7]);
    assert_eq!(
        u16::from_be_bytes([header[24], header[25]]),
        agent_addr.port()
    );
    assert_eq!(
        u16::from_be_bytes([header[26], header[27]]),
        sidecar.listen.port()
    );
}

/// The sidecar picks TLS 1.3's AES-128-GCM/SHA-256 over the agent's preference (rustls and
/// OpenSSL clients list AES-256/SHA-384 first), and still serves an agent that offers only
/// AES-256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_prefers_aes128_sha256_and_serves_other_suites_too() {
    let _serial = serial().await;
    let pod = TestPod::start(&[]).await;
    let ca = pod.pki.ca.cert_pem();
    let negotiated = |suites: Option<Vec<rustls::SupportedCipherSuite>>| {
        let ca = ca.clone();
        let listen = pod.sidecar.listen;
        async move {
            let mut provider = rustls::crypto::ring::default_provider();
            if let Some(suites) = suites {
                provider.cipher_suites = suites;
            }
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let tcp = TcpStream::connect(listen).await.unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap();
            tls.get_ref().1.negotiated_cipher_suite().unwrap().suite()
        }
    };
    let first = rustls::crypto::ring::default_provider().cipher_suites[0].suite();
    assert_eq!(first, rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
    assert_eq!(
        negotiated(None).await,
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
    );
    let only_aes256 = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384];
    assert_eq!(
        negotiated(Some(only_aes256)).await,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
    );
}
