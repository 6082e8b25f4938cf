//! The operator's end of the report channel: an HTTPS listener that takes each sidecar's
//! report, checks who sent it, and answers with that pod's directives.
//!
//! A report is believed only when all of these hold: its token passes TokenReview for our
//! audience ([`crate::auth`]); the pod the token is bound to is one the operator knows, with
//! the same uid; the connection comes from that pod's IP (so a token carried off to another
//! pod is refused; `--report-verify-source=false` turns this off for networks that rewrite
//! source addresses); and the pod is a gateway of a PresenceCluster (its StatefulSet is the
//! cluster's). Anything else is refused with a reason, counted in
//! `ballast_report_refusals_total{reason}`.
//!
//! Every replica listens (the Service spreads sidecars over them); a replica that does not
//! hold the Lease answers `not_leader` without looking further, and the sidecar reconnects.
//! It must never block on the API server for a known caller: identities are cached, pods and
//! clusters come from watch caches.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;
use serde::Serialize;
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;

use ballast_contract::{Answer, Report, REPORT_PATH};

use crate::auth::{Authenticator, Refusal};
use crate::crd::PresenceCluster;
use crate::hub::{Hub, Received};
use crate::metrics::Metrics;
use crate::workload::CLUSTER_LABEL;

/// A report is ~1 KiB.
const MAX_REPORT: usize = 64 * 1024;
/// A caller that has not finished its TLS handshake by then is cut.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything a report needs checked against.
pub struct ReportServer {
    pub hub: Arc<Hub>,
    pub auth: Authenticator,
    pub pods: Store<Pod>,
    pub clusters: Store<PresenceCluster>,
    pub metrics: Arc<Metrics>,
    pub verify_source: bool,
}

type Reply = Response<Full<Bytes>>;

/// Binds with SO_REUSEPORT, so replicas sharing one network namespace (the e2e process
/// kubelet) can all listen on one address and the kernel spreads connections over them, as
/// a Service would.
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("cannot listen for reports on {addr}"))?;
    Ok(socket.listen(1024)?)
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, tls: rustls::ServerConfig, server: Arc<ReportServer>) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(err) => {
                tracing::warn!(error = %err, "report accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let Ok(Ok(stream)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                server.metrics.report_result("tls_failed");
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, std::convert::Infallible>(server.route(req, peer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl ReportServer {
    async fn route(&self, req: Request<Incoming>, peer: SocketAddr) -> Reply {
        if req.uri().path() != REPORT_PATH {
            return error(
                StatusCode::NOT_FOUND,
                &format!("not found; POST {REPORT_PATH}"),
            );
        }
        if req.method() != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "POST only");
        }
        let started = Instant::now();
        if !self.hub.is_leader() {
            self.metrics.report_result("not_leader");
            return json(StatusCode::OK, &Answer::NotLeader { leader: None });
        }
        let reply = match self.handle(req, peer.ip()).await {
            Ok(answer) => {
                self.metrics.report_result("answered");
                json(StatusCode::OK, &answer)
            }
            Err(Rejected::Refused(refusal, detail)) => {
                self.metrics.report_refused(refusal);
                tracing::debug!(%peer, reason = refusal.as_str(), %detail, "report refused");
                let code = match refusal {
                    Refusal::NoToken | Refusal::InvalidToken => StatusCode::UNAUTHORIZED,
                    Refusal::BadReport => StatusCode::BAD_REQUEST,
                    _ => StatusCode::FORBIDDEN,
                };
                error(code, &format!("{}: {detail}", refusal.as_str()))
            }
            Err(Rejected::Unavailable(detail)) => {
                self.metrics.report_result("unavailable");
                tracing::warn!(%peer, %detail, "cannot check a report's token now");
                error(StatusCode::SERVICE_UNAVAILABLE, &detail)
            }
        };
        self.metrics
            .report_seconds
            .observe(started.elapsed().as_secs_f64());
        reply
    }

    async fn handle(&self, req: Request<Incoming>, peer: IpAddr) -> Result<Answer, Rejected> {
        let token = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or(Rejected::Refused(
                Refusal::NoToken,
                "no bearer token".into(),
            ))?;
        let identity = self.auth.identify(&token).await.map_err(|e| match e {
            Ok(refusal) => Rejected::Refused(
                refusal,
                "the API server did not vouch for this token".into(),
            ),
            Err(api) => Rejected::Unavailable(format!("TokenReview failed: {api}")),
        })?;
        let pod = self
            .pods
            .get(&ObjectRef::new(&identity.pod).within(&identity.namespace))
            .filter(|p| p.metadata.uid.as_deref() == Some(identity.uid.as_str()))
            .ok_or_else(|| {
                Rejected::Refused(
                    Refusal::UnknownPod,
                    format!(
                        "pod {}/{} is not a pod this operator manages",
                        identity.namespace, identity.pod
                    ),
                )
            })?;
        let pod_ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        if self.verify_source && pod_ip != Some(peer) {
            return Err(Rejected::Refused(
                Refusal::WrongSource,
                format!(
                    "the token is pod {}'s, the report comes from {peer}",
                    identity.pod
                ),
            ));
        }
        let cluster = gateway_of(&pod).ok_or_else(|| {
            Rejected::Refused(
                Refusal::NotAGateway,
                format!("pod {} is no PresenceCluster's gateway", identity.pod),
            )
        })?;
        if self
            .clusters
            .get(&ObjectRef::new(&cluster).within(&identity.namespace))
            .is_none()
        {
            return Err(Rejected::Refused(
                Refusal::NotAGateway,
                format!(
                    "PresenceCluster {}/{cluster} does not exist",
                    identity.namespace
                ),
            ));
        }
        let body = Limited::new(req.into_body(), MAX_REPORT)
            .collect()
            .await
            .map_err(|_| {
                Rejected::Refused(Refusal::BadReport, "body too large or unreadable".into())
            })?
            .to_bytes();
        let report: Report = serde_json::from_slice(&body)
            .map_err(|e| Rejected::Refused(Refusal::BadReport, e.to_string()))?;
        let directives = self.hub.receive(
            (identity.namespace, identity.pod),
            Received {
                report,
                at: Instant::now(),
                cluster,
                uid: identity.uid,
            },
        );
        Ok(Answer::Directives(directives))
    }
}

/// The PresenceCluster whose gateway `pod` is: its controller is the StatefulSet the operator
/// names after the cluster, and it carries the cluster's label with the same name.
pub fn gateway_of(pod: &Pod) -> Option<String> {
    let label = pod.labels().get(CLUSTER_LABEL)?;
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))?;
    (owner.kind == "StatefulSet" && &owner.name == label).then(|| label.clone())
}

enum Rejected {
    Refused(Refusal, String),
    Unavailable(String),
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(value).expect("serializes"),
        )))
        .expect("static response")
}

fn error(status: StatusCode, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn pod(label: Option<&str>, owner: (&str, &str)) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("edge-0".into()),
                labels: label.map(|l| [(CLUSTER_LABEL.to_owned(), l.to_owned())].into()),
                owner_references: Some(vec![OwnerReference {
                    kind: owner.0.into(),
                    name: owner.1.into(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[test]
    fn a_gateway_is_owned_by_its_clusters_statefulset() {
        assert_eq!(
            gateway_of(&pod(Some("edge"), ("StatefulSet", "edge"))).as_deref(),
            Some("edge")
        );
        assert_eq!(gateway_of(&pod(None, ("StatefulSet", "edge"))), None);
        assert_eq!(
            gateway_of(&pod(Some("edge"), ("StatefulSet", "other"))),
            None,
            "a borrowed label"
        );
        assert_eq!(gateway_of(&pod(Some("edge"), ("ReplicaSet", "edge"))), None);
    }
}
