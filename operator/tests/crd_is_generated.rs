//! The committed CRDs must be exactly what the Rust types generate: regenerate with
//! `cargo run -p ballast-operator --bin crdgen > crds/presencecluster.yaml` (and copy it into
//! `charts/ballast/crds/`).

use ballast_operator::crd::PresenceCluster;
use kube::CustomResourceExt;

fn generated() -> String {
    serde_yaml::to_string(&PresenceCluster::crd()).unwrap()
}

fn committed(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[test]
fn crds_directory_matches_the_types() {
    assert!(
        committed("crds/presencecluster.yaml") == generated(),
        "crds/presencecluster.yaml is stale: run `cargo run -p ballast-operator --bin crdgen > crds/presencecluster.yaml`"
    );
}

#[test]
fn the_helm_chart_ships_the_same_crd() {
    assert!(
        committed("charts/ballast/crds/presencecluster.yaml") == generated(),
        "charts/ballast/crds/presencecluster.yaml is stale: copy crds/presencecluster.yaml there"
    );
}

#[test]
fn the_crd_says_what_kubectl_shows() {
    let crd = generated();
    for needle in [
        "shortNames:\n    - prc",
        "- ballast",
        "name: Cert-Expiry",
        "x-kubernetes-validations",
        "Name of the `kubernetes.io/tls` Secret",
        "default: HotReload",
    ] {
        assert!(crd.contains(needle), "CRD lacks {needle:?}");
    }
}
