//! Fixtures for unit tests: a PresenceCluster as the API would return it.

use crate::crd::PresenceCluster;

/// `agents/edge`, 3 replicas, one `gateway` container, Secret `agents-tls`, defaults elsewhere.
pub fn example() -> PresenceCluster {
    let mut prc: PresenceCluster = serde_yaml::from_str(
        r#"
apiVersion: ballast.dev/v1alpha1
kind: PresenceCluster
metadata:
  name: edge
  namespace: agents
  uid: uid-1
  generation: 4
spec:
  replicas: 3
  template:
    spec:
      containers:
      - name: gateway
        image: example.org/presence-gateway:1.2
  tls:
    secretName: agents-tls
"#,
    )
    .expect("fixture parses");
    prc.metadata.uid = Some("uid-1".into());
    prc
}
