//! The one table that maps container images to local binaries.
//!
//! There is no container runtime here: a container "runs" when the kubelet starts the binary
//! this workspace builds for its image. The image's repository (tag and digest ignored, a
//! leading `docker.io/` or `docker.io/library/` dropped) is looked up in [`DEFAULT_IMAGES`],
//! extended or overridden by an optional YAML file (`--images FILE`, a map
//! `repository: binary-name`). An image with no entry is never faked: the container waits with
//! reason `ErrImagePull` and the message `image X has no local binary (see table)`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{io, Error, Result};

/// Built-in table: image repository → binary name in the bin dir (`target/<profile>/`).
/// The container's `command`/`args` are passed to the binary as its arguments, so
/// `ballast/fleet` with `args: [gateway, …]` runs `ballast-fleet gateway …`.
pub const DEFAULT_IMAGES: &[(&str, &str)] = &[
    ("ballast/sidecar", "ballast-sidecar"),
    ("ballast/fleet", "ballast-fleet"),
    ("ballast/operator", "ballast-operator"),
    ("ballast/e2e", "ballast-e2e"),
];

/// Image repository → binary, plus the directory the binaries live in.
#[derive(Clone, Debug)]
pub struct ImageTable {
    entries: BTreeMap<String, String>,
    bin_dir: PathBuf,
}

/// Why an image cannot run; the text goes into the container's Waiting message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageError {
    /// Kubernetes-style reason (`ErrImagePull`).
    pub reason: &'static str,
    pub message: String,
}

impl ImageTable {
    /// The built-in table, binaries in `bin_dir`.
    pub fn new(bin_dir: impl Into<PathBuf>) -> ImageTable {
        ImageTable {
            entries: DEFAULT_IMAGES
                .iter()
                .map(|(i, b)| ((*i).to_owned(), (*b).to_owned()))
                .collect(),
            bin_dir: bin_dir.into(),
        }
    }

    /// Adds (or overrides) entries from a YAML map `repository: binary`.
    pub fn extend_from_yaml_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(io(format!("reading {path:?}")))?;
        let extra: BTreeMap<String, String> = serde_yaml::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{path:?}: not a map image→binary: {e}")))?;
        self.entries.extend(extra);
        Ok(())
    }

    /// The table's entries, for documentation and logs.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(i, b)| (i.as_str(), b.as_str()))
    }

    /// The binary that runs `image`, which must exist in the bin dir.
    pub fn resolve(&self, image: &str) -> Result<PathBuf, ImageError> {
        let repo = repository(image);
        let Some(binary) = self.entries.get(repo) else {
            return Err(ImageError {
                reason: "ErrImagePull",
                message: format!("image {image} has no local binary (see table)"),
            });
        };
        let path = self.bin_dir.join(binary);
        if !path.is_file() {
            return Err(ImageError {
                reason: "ErrImagePull",
                message: format!(
                    "image {image} maps to {binary}, but {} does not exist (build it: cargo build --bins)",
                    path.display()
                ),
            });
        }
        Ok(path)
    }
}

/// `registry/ns/name:tag@sha256:…` → `registry/ns/name`, with Docker Hub's implicit prefixes
/// removed.
pub fn repository(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last_slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    let no_tag = match no_digest[last_slash..].find(':') {
        Some(colon) => &no_digest[..last_slash + colon],
        None => no_digest,
    };
    no_tag
        .strip_prefix("docker.io/library/")
        .or_else(|| no_tag.strip_prefix("docker.io/"))
        .unwrap_or(no_tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_drops_tag_digest_and_docker_hub_prefix() {
        assert_eq!(repository("ballast/sidecar"), "ballast/sidecar");
        assert_eq!(repository("ballast/sidecar:v1"), "ballast/sidecar");
        assert_eq!(repository("ballast/fleet@sha256:abcd"), "ballast/fleet");
        assert_eq!(
            repository("docker.io/ballast/fleet:1@sha256:ab"),
            "ballast/fleet"
        );
        assert_eq!(
            repository("localhost:5000/ballast/x:2"),
            "localhost:5000/ballast/x"
        );
    }

    #[test]
    fn unknown_image_is_refused_with_the_table_message() {
        let table = ImageTable::new("/nonexistent");
        let err = table.resolve("nginx:1.27").unwrap_err();
        assert_eq!(err.reason, "ErrImagePull");
        assert_eq!(
            err.message,
            "image nginx:1.27 has no local binary (see table)"
        );
        let err = table.resolve("ballast/sidecar:dev").unwrap_err();
        assert!(err.message.contains("does not exist"), "{}", err.message);
    }
}
