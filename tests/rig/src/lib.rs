//! The demo's seeder and the pieces of the test rig it shares with the tests: test images
//! written as OCI layouts and pushed with skopeo ([`OciImage`]), and the lookup of an
//! installed tool ([`require`]). A crate of its own so `scripts/demo` builds it without the
//! SDKs the integration tests need.

use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Finds a program or explains how to install it.
pub fn require(program: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin", "/usr/sbin"])
    {
        let p = Path::new(dir).join(program);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{program} is not installed: run scripts/install-deps (it installs docker-registry, skopeo, apache2-utils and moto)"
    );
}

/// A test image written as an OCI layout.
pub struct OciImage {
    pub dir: tempfile::TempDir,
    /// Digest of the top manifest (image manifest or index).
    pub digest: String,
    /// For an index: the digests of the platform manifests.
    pub platforms: Vec<String>,
    /// Bytes of all blobs.
    pub size: u64,
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn put_blob(dir: &Path, bytes: &[u8]) -> String {
    let hex = sha256_hex(bytes);
    std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

/// Writes a random layer of `size` bytes in chunks; returns its digest.
fn put_random_blob(dir: &Path, size: usize) -> String {
    let tmp = dir.join("blobs/sha256/.partial");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
    let mut h = Sha256::new();
    let mut left = size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len());
        fastrand::fill(&mut buf[..n]);
        h.update(&buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
    let hex = hex::encode(h.finalize());
    std::fs::rename(&tmp, dir.join("blobs/sha256").join(&hex)).unwrap();
    format!("sha256:{hex}")
}

fn layout_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("blobs/sha256")).unwrap();
    std::fs::write(
        d.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    d
}

/// Writes an image manifest for `arch` with random layers; returns (digest, manifest size, blob bytes).
fn write_manifest(dir: &Path, arch: &str, layers: &[usize]) -> (String, usize, u64) {
    let mut descs = Vec::new();
    let mut total = 0u64;
    for &size in layers {
        let d = put_random_blob(dir, size);
        total += size as u64;
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size}));
    }
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Labels": {"org.opencontainers.image.source": "transfer-hub tests"}},
        "rootfs": {"type": "layers", "diff_ids": descs.iter().map(|d| d["digest"].clone()).collect::<Vec<_>>()}
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = put_blob(dir, &config_bytes);
    total += config_bytes.len() as u64;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
        "layers": descs,
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    (put_blob(dir, &bytes), bytes.len(), total)
}

fn write_index_json(dir: &Path, media_type: &str, digest: &str, size: usize) {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": media_type, "digest": digest, "size": size,
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}]
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

impl OciImage {
    /// A single-platform image with random layers of these sizes.
    pub fn single(layers: &[usize]) -> Self {
        let dir = layout_dir();
        let (digest, size, total) = write_manifest(dir.path(), "amd64", layers);
        write_index_json(
            dir.path(),
            "application/vnd.oci.image.manifest.v1+json",
            &digest,
            size,
        );
        Self {
            dir,
            digest,
            platforms: Vec::new(),
            size: total,
        }
    }

    /// A two-platform image (linux/amd64 and linux/arm64) under an OCI index.
    pub fn multi_arch(layers: &[usize]) -> Self {
        let dir = layout_dir();
        let mut manifests = Vec::new();
        let mut platforms = Vec::new();
        let mut total = 0;
        for arch in ["amd64", "arm64"] {
            let (d, size, t) = write_manifest(dir.path(), arch, layers);
            total += t;
            platforms.push(d.clone());
            manifests.push(serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": size,
                "platform": {"architecture": arch, "os": "linux"}}));
        }
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
        let bytes = serde_json::to_vec(&index).unwrap();
        let digest = put_blob(dir.path(), &bytes);
        write_index_json(
            dir.path(),
            "application/vnd.oci.image.index.v1+json",
            &digest,
            bytes.len(),
        );
        Self {
            dir,
            digest,
            platforms,
            size: total,
        }
    }

    /// Pushes the image with skopeo to `target` (`HOST:PORT/repo:tag`, plain HTTP).
    pub fn push(&self, target: &str, authfile: Option<&Path>) {
        let mut c = Command::new(require("skopeo"));
        c.args([
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ]);
        if let Some(a) = authfile {
            c.arg("--dest-authfile").arg(a);
        }
        c.arg(format!("oci:{}:latest", self.dir.path().display()))
            .arg(format!("docker://{target}"));
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "skopeo push to {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
