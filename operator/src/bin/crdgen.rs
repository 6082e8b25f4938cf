//! Prints the PresenceCluster CRD as YAML: `cargo run -p ballast-operator --bin crdgen > crds/presencecluster.yaml`.
use ballast_operator::crd::PresenceCluster;
use kube::CustomResourceExt;

fn main() {
    print!(
        "{}",
        serde_yaml::to_string(&PresenceCluster::crd()).expect("the CRD serializes")
    );
}
