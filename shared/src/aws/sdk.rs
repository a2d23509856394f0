//! How every AWS SDK client of the suite is configured: the default chain (region,
//! credentials) with one HTTPS client, rustls on ring.

use std::sync::OnceLock;

use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

/// The HTTPS client all SDK clients share (one connection pool per process).
pub fn http_client() -> SharedHttpClient {
    static CLIENT: OnceLock<SharedHttpClient> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
                .build_https()
        })
        .clone()
}

/// `aws_config::defaults` with the suite's HTTPS client; callers add region, profile or
/// credentials and `load()` it.
pub fn loader() -> aws_config::ConfigLoader {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http_client())
}

/// What a credential provider built on its own needs (a profile's, an assumed role's):
/// the same HTTPS client, or it has none to reach STS, SSO or the instance metadata with.
pub fn provider_config() -> aws_config::provider_config::ProviderConfig {
    aws_config::provider_config::ProviderConfig::default().with_http_client(http_client())
}

/// The default chain's configuration (Lambda functions and the worker).
pub async fn load() -> aws_config::SdkConfig {
    loader().load().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_loaded_configuration_carries_the_https_client() {
        let conf = loader()
            .region(aws_config::Region::new("eu-west-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "AKID", "SECRET", None, None, "test",
            ))
            .load()
            .await;
        assert!(conf.http_client().is_some());
        assert_eq!(conf.region().map(|r| r.as_ref()), Some("eu-west-1"));
    }
}
