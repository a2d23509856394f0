//! Amazon ECR as a registry: recognise ECR hosts, get a registry login from
//! `GetAuthorizationToken` (default AWS credential chain), and create missing
//! destination repositories with scan-on-push and encryption.
//!
//! `TRANSFER_HUB_ECR_REGISTRY_ADDRESS=HOST:PORT` sends the registry traffic (bytes,
//! manifests) for ECR hosts to another address: the tests use it to point at a local
//! docker-registry while the ECR API comes from an emulator via `AWS_ENDPOINT_URL`.

use crate::images::authfile::Login;
use crate::images::reference::Digest;
use crate::images::registry::{ManifestInfo, Registry};
use crate::retry::{ErrorClass, ItemError};
use aws_sdk_ecr::types::{
    EncryptionConfiguration, EncryptionType, ImageScanningConfiguration, ImageTagMutability,
};
use base64::Engine as _;

/// Environment variable that reroutes ECR registry traffic (see module docs).
pub const ADDRESS_OVERRIDE_ENV: &str = "TRANSFER_HUB_ECR_REGISTRY_ADDRESS";

/// An ECR registry host, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcrHost {
    pub account: String,
    pub region: String,
    pub china: bool,
}

/// Recognises `<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]`.
pub fn parse_ecr_host(host: &str) -> Option<EcrHost> {
    let (rest, china) = match host.strip_suffix(".amazonaws.com.cn") {
        Some(r) => (r, true),
        None => (host.strip_suffix(".amazonaws.com")?, false),
    };
    let mut parts = rest.split('.');
    let account = parts.next()?;
    if parts.next()? != "dkr" {
        return None;
    }
    let ecr = parts.next()?;
    if ecr != "ecr" && ecr != "ecr-fips" {
        return None;
    }
    let region = parts.next()?;
    if parts.next().is_some()
        || account.len() != 12
        || !account.bytes().all(|b| b.is_ascii_digit())
        || region.is_empty()
    {
        return None;
    }
    Some(EcrHost {
        account: account.into(),
        region: region.into(),
        china,
    })
}

/// How new destination repositories are created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSettings {
    pub scan_on_push: bool,
    /// `None` → AES256; `Some(key)` → KMS with that key (empty string: the AWS-managed key).
    pub kms_key: Option<String>,
    /// `--ecr-tag-mutability IMMUTABLE`: new repositories refuse to move a tag (a push onto
    /// a tag that holds another image is then a `conflict`).
    pub immutable_tags: bool,
}

impl Default for RepoSettings {
    fn default() -> Self {
        Self {
            scan_on_push: true,
            kms_key: None,
            immutable_tags: false,
        }
    }
}

/// An ECR API client for one registry.
pub struct Ecr {
    client: aws_sdk_ecr::Client,
    host: EcrHost,
}

fn sdk_err<E>(what: &str, e: aws_sdk_ecr::error::SdkError<E>) -> ItemError
where
    E: std::error::Error + aws_sdk_ecr::error::ProvideErrorMetadata + 'static,
{
    crate::retry::aws_error(&format!("ECR {what}"), e)
}

impl Ecr {
    /// Builds a client from the default credential chain for the registry's region.
    pub async fn connect(host: EcrHost) -> Self {
        Self::connect_with(host, None).await
    }

    /// Builds a client for the registry's region with these keys (another account or
    /// partition), or the default credential chain when `None`.
    pub async fn connect_with(host: EcrHost, keys: Option<(String, String)>) -> Self {
        let mut loader =
            crate::aws::sdk::loader().region(aws_config::Region::new(host.region.clone()));
        if let Some((id, secret)) = keys {
            loader = loader.credentials_provider(aws_sdk_ecr::config::Credentials::new(
                id,
                secret,
                None,
                None,
                "secrets-manager",
            ));
        }
        let conf = loader.load().await;
        Self {
            client: aws_sdk_ecr::Client::new(&conf),
            host,
        }
    }

    /// Wraps an existing client (e.g. one configured for an emulator).
    pub fn from_client(client: aws_sdk_ecr::Client, host: EcrHost) -> Self {
        Self { client, host }
    }

    /// The registry this client talks to.
    pub fn host(&self) -> &EcrHost {
        &self.host
    }

    /// A registry login from `GetAuthorizationToken` (valid 12 hours).
    pub async fn login(&self) -> Result<Login, ItemError> {
        let out = self
            .client
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| sdk_err(&format!("GetAuthorizationToken in {}", self.host.region), e))?;
        let data = out
            .authorization_data()
            .first()
            .and_then(|d| d.authorization_token())
            .ok_or_else(|| {
                ItemError::new(
                    ErrorClass::AuthDenied,
                    "ECR GetAuthorizationToken returned no token",
                )
            })?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|_| {
                ItemError::new(
                    ErrorClass::AuthDenied,
                    "ECR authorization token is not base64",
                )
            })?;
        let text = String::from_utf8(raw).map_err(|_| {
            ItemError::new(
                ErrorClass::AuthDenied,
                "ECR authorization token is not UTF-8",
            )
        })?;
        let (u, p) = text.split_once(':').ok_or_else(|| {
            ItemError::new(
                ErrorClass::AuthDenied,
                "ECR authorization token is not user:password",
            )
        })?;
        Ok(Login {
            username: u.into(),
            password: p.into(),
        })
    }

    /// Creates each repository that does not exist yet; returns the names created.
    /// A repository that cannot be created is returned as an error for that name only.
    pub async fn ensure_repositories(
        &self,
        names: &[String],
        settings: &RepoSettings,
    ) -> Vec<(String, Result<bool, ItemError>)> {
        let mut out = Vec::new();
        for name in names {
            let exists = self
                .client
                .describe_repositories()
                .registry_id(&self.host.account)
                .repository_names(name)
                .send()
                .await;
            let r = match exists {
                Ok(_) => Ok(false),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_repository_not_found_exception()) =>
                {
                    let enc = match &settings.kms_key {
                        None => EncryptionConfiguration::builder()
                            .encryption_type(EncryptionType::Aes256)
                            .build(),
                        Some(k) => {
                            let b = EncryptionConfiguration::builder()
                                .encryption_type(EncryptionType::Kms);
                            if k.is_empty() {
                                b.build()
                            } else {
                                b.kms_key(k).build()
                            }
                        }
                    };
                    let enc = enc.map_err(|e| {
                        ItemError::new(
                            ErrorClass::BadInput,
                            format!("ECR encryption settings: {e}"),
                        )
                    });
                    match enc {
                        Err(e) => Err(e),
                        Ok(enc) => self
                            .client
                            .create_repository()
                            .registry_id(&self.host.account)
                            .repository_name(name)
                            .image_scanning_configuration(
                                ImageScanningConfiguration::builder()
                                    .scan_on_push(settings.scan_on_push)
                                    .build(),
                            )
                            .encryption_configuration(enc)
                            .image_tag_mutability(if settings.immutable_tags {
                                ImageTagMutability::Immutable
                            } else {
                                ImageTagMutability::Mutable
                            })
                            .send()
                            .await
                            .map(|_| true)
                            .or_else(|e| {
                                if e.as_service_error()
                                    .is_some_and(|s| s.is_repository_already_exists_exception())
                                {
                                    Ok(false)
                                } else {
                                    Err(sdk_err(&format!("CreateRepository {name}"), e))
                                }
                            }),
                    }
                }
                Err(e) => Err(sdk_err(&format!("DescribeRepositories {name}"), e)),
            };
            out.push((name.clone(), r));
        }
        out
    }
}

/// Manifest media types ECR is asked to return (all of them, so nothing is converted).
const ACCEPTED: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

fn image_id(reference: &str) -> aws_sdk_ecr::types::ImageIdentifier {
    let b = aws_sdk_ecr::types::ImageIdentifier::builder();
    if reference.contains(':') {
        b.image_digest(reference).build()
    } else {
        b.image_tag(reference).build()
    }
}

/// ECR through its own API (no registry protocol needed): the same [`Registry`] the
/// pipeline uses for any registry. `host` arguments are ignored: one client, one registry.
#[async_trait::async_trait]
impl Registry for Ecr {
    async fn list_repositories(&self, _host: &str) -> Result<Vec<String>, ItemError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .describe_repositories()
            .registry_id(&self.host.account)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err("DescribeRepositories", e))?;
            out.extend(
                page.repositories()
                    .iter()
                    .filter_map(|r| r.repository_name().map(str::to_string)),
            );
        }
        Ok(out)
    }

    async fn list_tags(&self, _host: &str, repo: &str) -> Result<Vec<String>, ItemError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_images()
            .registry_id(&self.host.account)
            .repository_name(repo)
            .filter(
                aws_sdk_ecr::types::ListImagesFilter::builder()
                    .tag_status(aws_sdk_ecr::types::TagStatus::Tagged)
                    .build(),
            )
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err(&format!("ListImages {repo}"), e))?;
            out.extend(
                page.image_ids()
                    .iter()
                    .filter_map(|i| i.image_tag().map(str::to_string)),
            );
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn list_untagged(&self, _host: &str, repo: &str) -> Result<Vec<Digest>, ItemError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_images()
            .registry_id(&self.host.account)
            .repository_name(repo)
            .filter(
                aws_sdk_ecr::types::ListImagesFilter::builder()
                    .tag_status(aws_sdk_ecr::types::TagStatus::Untagged)
                    .build(),
            )
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err(&format!("ListImages {repo}"), e))?;
            for id in page.image_ids() {
                if id.image_tag().is_some() {
                    continue;
                }
                if let Some(d) = id.image_digest() {
                    let digest = d.parse::<Digest>().map_err(|_| {
                        ItemError::new(
                            ErrorClass::BadInput,
                            format!("ECR answered a bad digest {d:?} for {repo}"),
                        )
                    })?;
                    out.push(digest);
                }
            }
        }
        out.sort_by(|a, b| a.to_string().cmp(&b.to_string()));
        out.dedup();
        Ok(out)
    }

    async fn head_manifest(
        &self,
        _host: &str,
        repo: &str,
        reference: &str,
    ) -> Result<Option<ManifestInfo>, ItemError> {
        let out = self
            .client
            .batch_get_image()
            .registry_id(&self.host.account)
            .repository_name(repo)
            .image_ids(image_id(reference))
            .set_accepted_media_types(Some(ACCEPTED.iter().map(|s| s.to_string()).collect()))
            .send()
            .await;
        let out = match out {
            Ok(o) => o,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_repository_not_found_exception()) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(sdk_err(&format!("BatchGetImage {repo}:{reference}"), e)),
        };
        let Some(img) = out.images().first() else {
            return Ok(None);
        };
        let digest = img
            .image_id()
            .and_then(|i| i.image_digest())
            .and_then(|d| d.parse::<Digest>().ok())
            .or_else(|| {
                img.image_manifest()
                    .map(|m| Digest::sha256_of(m.as_bytes()))
            })
            .ok_or_else(|| {
                ItemError::new(
                    ErrorClass::Retryable,
                    format!("ECR returned {repo}:{reference} without a digest"),
                )
            })?;
        Ok(Some(ManifestInfo {
            digest,
            media_type: img
                .image_manifest_media_type()
                .unwrap_or_default()
                .to_string(),
        }))
    }

    async fn image_size(&self, _host: &str, repo: &str, digest: &Digest) -> Result<u64, ItemError> {
        let out = self
            .client
            .describe_images()
            .registry_id(&self.host.account)
            .repository_name(repo)
            .image_ids(image_id(&digest.to_string()))
            .send()
            .await
            .map_err(|e| sdk_err(&format!("DescribeImages {repo}@{digest}"), e))?;
        Ok(out
            .image_details()
            .first()
            .and_then(|d| d.image_size_in_bytes())
            .unwrap_or(0)
            .max(0) as u64)
    }
}

/// Routes each registry host to its client: ECR hosts to their ECR API client, every other
/// host to the HTTP registry client. What ECR's API client cannot do (an image's parts,
/// blob HEADs, manifest bytes: the progress of a copy) goes to ECR's registry protocol
/// through the HTTP client, which holds the ECR login token, so a copy to or from ECR
/// that makes progress is forgiven as for any registry.
pub struct Registries {
    pub ecr: std::collections::HashMap<String, Ecr>,
    pub http: crate::images::registry::HttpRegistry,
}

#[async_trait::async_trait]
impl Registry for Registries {
    async fn check_login_realm(&self, host: &str) -> Result<(), ItemError> {
        // Every login skopeo gets (ECR tokens too) is held by the HTTP client.
        self.http.check_login_realm(host).await
    }
    async fn list_repositories(&self, host: &str) -> Result<Vec<String>, ItemError> {
        match self.ecr.get(host) {
            Some(e) => e.list_repositories(host).await,
            None => self.http.list_repositories(host).await,
        }
    }
    async fn list_tags(&self, host: &str, repo: &str) -> Result<Vec<String>, ItemError> {
        match self.ecr.get(host) {
            Some(e) => e.list_tags(host, repo).await,
            None => self.http.list_tags(host, repo).await,
        }
    }
    async fn head_manifest(
        &self,
        host: &str,
        repo: &str,
        reference: &str,
    ) -> Result<Option<ManifestInfo>, ItemError> {
        match self.ecr.get(host) {
            Some(e) => e.head_manifest(host, repo, reference).await,
            None => self.http.head_manifest(host, repo, reference).await,
        }
    }
    async fn image_size(&self, host: &str, repo: &str, digest: &Digest) -> Result<u64, ItemError> {
        match self.ecr.get(host) {
            Some(e) => e.image_size(host, repo, digest).await,
            None => self.http.image_size(host, repo, digest).await,
        }
    }
    async fn list_untagged(&self, host: &str, repo: &str) -> Result<Vec<Digest>, ItemError> {
        match self.ecr.get(host) {
            Some(e) => e.list_untagged(host, repo).await,
            None => self.http.list_untagged(host, repo).await,
        }
    }
    async fn image_parts(
        &self,
        host: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<Vec<crate::images::registry::Part>>, ItemError> {
        // ECR's API cannot list an image's parts: its registry protocol can, with the token.
        if let Some(e) = self.ecr.get(host)
            && let Some(parts) = e.image_parts(host, repo, digest).await?
        {
            return Ok(Some(parts));
        }
        self.http.image_parts(host, repo, digest).await
    }
    async fn get_manifest(
        &self,
        host: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<(Vec<u8>, String)>, ItemError> {
        if let Some(e) = self.ecr.get(host)
            && let Some(m) = e.get_manifest(host, repo, digest).await?
        {
            return Ok(Some(m));
        }
        self.http.get_manifest(host, repo, digest).await
    }
    async fn put_manifest(
        &self,
        host: &str,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Option<()>, ItemError> {
        if let Some(e) = self.ecr.get(host)
            && let Some(done) = e
                .put_manifest(host, repo, reference, media_type, bytes)
                .await?
        {
            return Ok(Some(done));
        }
        self.http
            .put_manifest(host, repo, reference, media_type, bytes)
            .await
    }
    async fn has_blob(
        &self,
        host: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<bool>, ItemError> {
        // ECR's API has BatchCheckLayerAvailability (moto does not implement it); a HEAD
        // through its registry protocol, with the ECR token, answers the same.
        if let Some(e) = self.ecr.get(host)
            && let Some(here) = e.has_blob(host, repo, digest).await?
        {
            return Ok(Some(here));
        }
        self.http.has_blob(host, repo, digest).await
    }
    async fn copy_blob(
        &self,
        source: (&str, &str),
        dest: (&str, &str),
        digest: &Digest,
    ) -> Result<Option<()>, ItemError> {
        // Bytes move through the registry protocol, ECR's too (with its login token).
        self.http.copy_blob(source, dest, digest).await
    }
}

/// Creates missing destination repositories before copies start.
pub struct EcrRepos {
    pub ecr: Ecr,
    pub settings: RepoSettings,
}

#[async_trait::async_trait]
impl crate::images::sync::Prepare for EcrRepos {
    async fn prepare(
        &self,
        repos: &[String],
    ) -> std::collections::HashMap<String, Result<(), ItemError>> {
        self.ecr
            .ensure_repositories(repos, &self.settings)
            .await
            .into_iter()
            .map(|(name, r)| {
                if let Ok(true) = r {
                    tracing::info!(repository = %name, "created ECR repository");
                }
                (name, r.map(|_| ()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_ecr_hosts() {
        assert_eq!(
            parse_ecr_host("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            Some(EcrHost {
                account: "123456789012".into(),
                region: "eu-west-1".into(),
                china: false
            })
        );
        assert!(
            parse_ecr_host("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn")
                .unwrap()
                .china
        );
        assert_eq!(
            parse_ecr_host("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com")
                .unwrap()
                .region,
            "us-east-1"
        );
        for no in [
            "quay.io",
            "12345.dkr.ecr.us-east-1.amazonaws.com",
            "123456789012.dkr.ecr.amazonaws.com",
            "123456789012.s3.us-east-1.amazonaws.com",
            "public.ecr.aws",
        ] {
            assert_eq!(parse_ecr_host(no), None, "{no}");
        }
    }
}
