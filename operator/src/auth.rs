//! Who is reporting: a bearer token checked by the API server (TokenReview), reduced to the
//! pod it is bound to.
//!
//! A sidecar presents its pod's projected ServiceAccount token minted for
//! [`ballast_contract::TOKEN_AUDIENCE`]. The API server checks signature, expiry, audience and
//! that the pod still exists; its answer names the pod (`authentication.kubernetes.io/pod-name`
//! and `pod-uid`), and only that binding is believed — never what a report says about itself.
//! Answers are cached until the token's own expiry (at most [`MAX_CACHE`]), refusals for
//! [`REFUSAL_CACHE`], so a fleet reporting every second costs one TokenReview per pod per
//! token rotation, and a misconfigured pod cannot flood the API server.
//!
//! It must never log a token; the cache is keyed by the token's SHA-256.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

/// Longest a positive answer is trusted without asking again.
const MAX_CACHE: Duration = Duration::from_secs(600);
/// How long a refused token stays refused without asking again.
const REFUSAL_CACHE: Duration = Duration::from_secs(10);
/// Entries beyond this trigger a sweep of expired ones.
const SWEEP_ABOVE: usize = 20_000;

/// The pod a token is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub service_account: String,
}

/// Why a caller was refused; the label of `ballast_report_refusals_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header.
    NoToken,
    /// The API server does not accept the token: forged, expired, another audience.
    InvalidToken,
    /// A valid token that names no pod (not a projected, pod-bound token).
    NotPodBound,
    /// The token's pod is unknown to the operator, or its uid does not match (a pod since
    /// replaced).
    UnknownPod,
    /// The token's pod is real but the report comes from another address: a token carried
    /// off to another pod.
    WrongSource,
    /// The pod is not a gateway of any PresenceCluster.
    NotAGateway,
    /// The body is not a report.
    BadReport,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoToken => "no_token",
            Self::InvalidToken => "invalid_token",
            Self::NotPodBound => "not_pod_bound",
            Self::UnknownPod => "unknown_pod",
            Self::WrongSource => "wrong_source",
            Self::NotAGateway => "not_a_gateway",
            Self::BadReport => "bad_report",
        }
    }

    pub const ALL: [Refusal; 7] = [
        Self::NoToken,
        Self::InvalidToken,
        Self::NotPodBound,
        Self::UnknownPod,
        Self::WrongSource,
        Self::NotAGateway,
        Self::BadReport,
    ];
}

#[derive(Clone)]
struct Cached {
    answer: Result<PodIdentity, Refusal>,
    until: Instant,
}

/// TokenReview with a cache.
pub struct Authenticator {
    client: Client,
    audience: String,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Authenticator {
    pub fn new(client: Client, audience: String) -> Self {
        Self {
            client,
            audience,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The pod `token` is bound to. `Err(Ok(refusal))` refuses the caller; `Err(Err(e))`
    /// means the API server could not be asked (the caller should retry, not be refused).
    pub async fn identify(&self, token: &str) -> Result<PodIdentity, Result<Refusal, kube::Error>> {
        let key = ballast_certs::sha256_hex(token.as_bytes());
        let now = Instant::now();
        if let Some(hit) = self
            .cache
            .lock()
            .expect("auth cache")
            .get(&key)
            .filter(|c| c.until > now)
        {
            return hit.answer.clone().map_err(Ok);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let answered = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(Err)?;
        let answer = judge(&answered, &self.audience);
        let until = match &answer {
            Ok(_) => now + token_lifetime(token).unwrap_or(MAX_CACHE).min(MAX_CACHE),
            Err(_) => now + REFUSAL_CACHE,
        };
        let mut cache = self.cache.lock().expect("auth cache");
        if cache.len() > SWEEP_ABOVE {
            cache.retain(|_, c| c.until > now);
        }
        cache.insert(
            key,
            Cached {
                answer: answer.clone(),
                until,
            },
        );
        answer.map_err(Ok)
    }
}

/// Reads the API server's verdict.
fn judge(review: &TokenReview, audience: &str) -> Result<PodIdentity, Refusal> {
    let status = review.status.as_ref().ok_or(Refusal::InvalidToken)?;
    if status.authenticated != Some(true) {
        return Err(Refusal::InvalidToken);
    }
    // An API server that ignores audiences answers without them; that is not good enough.
    if !status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|x| x == audience))
    {
        return Err(Refusal::InvalidToken);
    }
    let user = status.user.as_ref().ok_or(Refusal::InvalidToken)?;
    let extra = |k: &str| {
        user.extra
            .as_ref()
            .and_then(|e| e.get(k))
            .and_then(|v| v.first())
            .cloned()
    };
    let username = user.username.clone().unwrap_or_default();
    let mut parts = username
        .strip_prefix("system:serviceaccount:")
        .map(|s| s.splitn(2, ':'));
    let namespace = parts.as_mut().and_then(|p| p.next()).map(str::to_owned);
    let service_account = parts.as_mut().and_then(|p| p.next()).map(str::to_owned);
    match (
        namespace,
        service_account,
        extra("authentication.kubernetes.io/pod-name"),
        extra("authentication.kubernetes.io/pod-uid"),
    ) {
        (Some(namespace), Some(service_account), Some(pod), Some(uid)) => Ok(PodIdentity {
            namespace,
            pod,
            uid,
            service_account,
        }),
        _ => Err(Refusal::NotPodBound),
    }
}

/// Time left before a JWT's `exp`, read without verifying (the API server verified it).
fn token_lifetime(token: &str) -> Option<Duration> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(exp.saturating_sub(now)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
    use std::collections::BTreeMap;

    fn review(authenticated: bool, audiences: &[&str], pod: Option<&str>) -> TokenReview {
        let mut extra = BTreeMap::new();
        if let Some(p) = pod {
            extra.insert(
                "authentication.kubernetes.io/pod-name".to_owned(),
                vec![p.to_owned()],
            );
            extra.insert(
                "authentication.kubernetes.io/pod-uid".to_owned(),
                vec!["uid-1".to_owned()],
            );
        }
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                audiences: Some(audiences.iter().map(|s| s.to_string()).collect()),
                user: Some(UserInfo {
                    username: Some("system:serviceaccount:edge:default".into()),
                    extra: Some(extra),
                    ..UserInfo::default()
                }),
                ..TokenReviewStatus::default()
            }),
            ..TokenReview::default()
        }
    }

    #[test]
    fn only_a_pod_bound_token_for_our_audience_identifies_a_pod() {
        let aud = ballast_contract::TOKEN_AUDIENCE;
        assert_eq!(
            judge(&review(true, &[aud], Some("edge-0")), aud),
            Ok(PodIdentity {
                namespace: "edge".into(),
                pod: "edge-0".into(),
                uid: "uid-1".into(),
                service_account: "default".into(),
            })
        );
        assert_eq!(
            judge(&review(false, &[aud], Some("edge-0")), aud),
            Err(Refusal::InvalidToken)
        );
        assert_eq!(
            judge(
                &review(true, &["https://kubernetes.default.svc"], Some("edge-0")),
                aud
            ),
            Err(Refusal::InvalidToken)
        );
        assert_eq!(
            judge(&review(true, &[aud], None), aud),
            Err(Refusal::NotPodBound)
        );
        assert_eq!(
            judge(&TokenReview::default(), aud),
            Err(Refusal::InvalidToken)
        );
    }

    #[test]
    fn a_tokens_lifetime_comes_from_its_exp_claim() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!(r#"{{"exp":{},"sub":"x"}}"#, now + 300));
        let left = token_lifetime(&format!("e30.{payload}.sig")).unwrap();
        assert!(left <= Duration::from_secs(300) && left >= Duration::from_secs(298));
        assert_eq!(token_lifetime("garbage"), None);
    }
}
