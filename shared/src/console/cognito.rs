//! The console's browser login on AWS: Cognito's hosted UI and the tokens it hands out.
//!
//! An HTTP API's JWT authorizer reads only a header, which a browser following links never
//! sends. So the console function checks the token itself: an ID token from the
//! `Authorization: Bearer` header (API clients) or from the session cookie set at the end of
//! the hosted-UI login (browsers). A token is admitted only when its RS256 signature checks
//! against the user pool's published keys (JWKS, fetched once and again only for an unknown
//! key id), it was issued by the pool, for the console's app client, as an ID token, and has
//! not expired. The checks of the claims are pure ([`check_claims`]).
//!
//! The login is OAuth 2.0's authorization-code flow against the pool's hosted UI: `/login`
//! sends the browser there with a random `state` (also in a short-lived cookie), and
//! `/callback` takes the code back, with that state, to the pool's token endpoint.

use base64::Engine as _;
use std::collections::HashMap;
use std::time::Duration;

/// The session cookie of the console on Lambda: the ID token itself (HttpOnly).
pub const ID_COOKIE: &str = "th_id";
/// The OAuth `state` of a login under way (HttpOnly, ten minutes).
pub const STATE_COOKIE: &str = "th_oauth_state";
/// The largest JWKS or token answer read (Cognito's are a few KiB).
const ANSWER_LIMIT: usize = 256 << 10;
/// A token's `exp` may be this far in the past (clocks drift).
const LEEWAY_SECS: i64 = 60;
/// An unknown key id makes a new JWKS fetch at most this often.
const REFETCH_AFTER: Duration = Duration::from_secs(60);

/// Why a token was not admitted. The token itself is never part of the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a JWT: {0}")]
    Malformed(&'static str),
    #[error("signed with {0:?}; expected RS256")]
    Algorithm(String),
    #[error("signed with key {0:?}, which the user pool does not publish")]
    UnknownKey(String),
    #[error("the signature does not check against the user pool's key")]
    Signature,
    #[error("issued by {got:?}; expected {want:?}")]
    Issuer { got: String, want: String },
    #[error("for app client {got:?}; expected {want:?}")]
    Audience { got: String, want: String },
    #[error("a {0:?} token; expected an ID token")]
    Use(String),
    #[error("expired at {0} (unix time)")]
    Expired(i64),
    #[error("the user pool's keys: {0}")]
    Keys(String),
    #[error("the token endpoint: {0}")]
    Exchange(String),
}

/// Checks a token's claims: issuer, app client, ID token, not expired. Returns the user
/// (`email`, else `sub`).
pub fn check_claims(
    claims: &serde_json::Value,
    issuer: &str,
    client_id: &str,
    now: i64,
) -> Result<String, TokenError> {
    let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).unwrap_or("");
    if text("iss") != issuer {
        return Err(TokenError::Issuer {
            got: text("iss").into(),
            want: issuer.into(),
        });
    }
    if text("token_use") != "id" {
        return Err(TokenError::Use(text("token_use").into()));
    }
    if text("aud") != client_id {
        return Err(TokenError::Audience {
            got: text("aud").into(),
            want: client_id.into(),
        });
    }
    let exp = claims
        .get("exp")
        .and_then(|v| v.as_i64())
        .ok_or(TokenError::Malformed("no exp claim"))?;
    if exp + LEEWAY_SECS < now {
        return Err(TokenError::Expired(exp));
    }
    let user = [text("email"), text("sub")]
        .into_iter()
        .find(|u| !u.is_empty())
        .ok_or(TokenError::Malformed("neither email nor sub"))?;
    Ok(user.to_string())
}

/// A JWT in its parts: header, claims, the signed text and the signature.
struct Parts<'a> {
    header: serde_json::Value,
    claims: serde_json::Value,
    signed: &'a str,
    signature: Vec<u8>,
}

fn b64(s: &str) -> Result<Vec<u8>, TokenError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TokenError::Malformed("a part is not base64url"))
}

fn split(token: &str) -> Result<Parts<'_>, TokenError> {
    if token.len() > 16 << 10 {
        return Err(TokenError::Malformed("longer than 16 KiB"));
    }
    let mut it = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(TokenError::Malformed("expected three dot-separated parts"));
    };
    let json = |part: &str| -> Result<serde_json::Value, TokenError> {
        serde_json::from_slice(&b64(part)?).map_err(|_| TokenError::Malformed("a part is not JSON"))
    };
    Ok(Parts {
        header: json(h)?,
        claims: json(c)?,
        signed: &token[..h.len() + 1 + c.len()],
        signature: b64(s)?,
    })
}

/// One RSA public key of the pool: modulus and exponent, big-endian.
#[derive(Clone)]
struct RsaKey {
    n: Vec<u8>,
    e: Vec<u8>,
}

/// The RSA keys of a JWKS document, by key id.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, RsaKey>, TokenError> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| TokenError::Keys(format!("not JSON: {e}")))?;
    let keys = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| TokenError::Keys("no \"keys\" list".into()))?;
    let mut out = HashMap::new();
    for k in keys {
        let s = |f: &str| k.get(f).and_then(|v| v.as_str());
        if s("kty") != Some("RSA") {
            continue;
        }
        let (Some(kid), Some(n), Some(e)) = (s("kid"), s("n"), s("e")) else {
            continue;
        };
        out.insert(
            kid.to_string(),
            RsaKey {
                n: b64(n).map_err(|_| TokenError::Keys(format!("key {kid:?}: bad n")))?,
                e: b64(e).map_err(|_| TokenError::Keys(format!("key {kid:?}: bad e")))?,
            },
        );
    }
    Ok(out)
}

/// The console's user pool and app client, and its hosted UI.
pub struct Cognito {
    /// `https://cognito-idp.REGION.amazonaws.com/POOL`.
    pub issuer: String,
    pub client_id: String,
    /// The hosted UI's base URL (`https://PREFIX.auth.REGION.amazoncognito.com`); without
    /// one, only bearer tokens are admitted (no browser login).
    pub hosted_ui: Option<String>,
    /// Where the pool publishes its keys (the issuer's `/.well-known/jwks.json`).
    pub jwks_url: String,
    http: reqwest::Client,
    keys: tokio::sync::Mutex<(HashMap<String, RsaKey>, Option<std::time::Instant>)>,
}

impl Cognito {
    pub fn new(
        issuer: String,
        client_id: String,
        hosted_ui: Option<String>,
        jwks_url: Option<String>,
    ) -> Self {
        let jwks_url = jwks_url.unwrap_or_else(|| format!("{issuer}/.well-known/jwks.json"));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a reqwest client with rustls");
        Self {
            issuer,
            client_id,
            hosted_ui: hosted_ui.map(|u| u.trim_end_matches('/').to_string()),
            jwks_url,
            http,
            keys: tokio::sync::Mutex::new((HashMap::new(), None)),
        }
    }

    async fn read(resp: reqwest::Response, what: &str) -> Result<Vec<u8>, String> {
        let status = resp.status();
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{what}: {e}"))? {
            body.extend_from_slice(&chunk);
            if body.len() > ANSWER_LIMIT {
                return Err(format!("{what}: answer longer than {ANSWER_LIMIT} bytes"));
            }
        }
        if !status.is_success() {
            return Err(format!("{what}: HTTP {status}"));
        }
        Ok(body)
    }

    /// The key `kid`, fetching the pool's keys when it is not known yet.
    async fn key(&self, kid: &str) -> Result<RsaKey, TokenError> {
        let mut keys = self.keys.lock().await;
        if let Some(k) = keys.0.get(kid) {
            return Ok(k.clone());
        }
        if keys.1.is_some_and(|t| t.elapsed() < REFETCH_AFTER) {
            return Err(TokenError::UnknownKey(kid.into()));
        }
        keys.1 = Some(std::time::Instant::now());
        let resp = self
            .http
            .get(&self.jwks_url)
            .send()
            .await
            .map_err(|e| TokenError::Keys(format!("GET {}: {e}", self.jwks_url)))?;
        let body = Self::read(resp, &format!("GET {}", self.jwks_url))
            .await
            .map_err(TokenError::Keys)?;
        keys.0 = parse_jwks(&body)?;
        keys.0
            .get(kid)
            .cloned()
            .ok_or_else(|| TokenError::UnknownKey(kid.into()))
    }

    /// The user an ID token stands for, once its signature and claims check.
    pub async fn verify(&self, token: &str) -> Result<String, TokenError> {
        let p = split(token)?;
        let alg = p.header.get("alg").and_then(|v| v.as_str()).unwrap_or("");
        if alg != "RS256" {
            return Err(TokenError::Algorithm(alg.into()));
        }
        let kid = p.header.get("kid").and_then(|v| v.as_str()).unwrap_or("");
        let key = self.key(kid).await?;
        ring::signature::RsaPublicKeyComponents {
            n: &key.n,
            e: &key.e,
        }
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            p.signed.as_bytes(),
            &p.signature,
        )
        .map_err(|_| TokenError::Signature)?;
        check_claims(
            &p.claims,
            &self.issuer,
            &self.client_id,
            chrono::Utc::now().timestamp(),
        )
    }

    /// Where `/login` sends the browser: the hosted UI's authorize endpoint.
    pub fn login_url(&self, redirect_uri: &str, state: &str) -> Option<String> {
        let base = self.hosted_ui.as_ref()?;
        let q = serde_urlencoded::to_string([
            ("response_type", "code"),
            ("client_id", self.client_id.as_str()),
            ("redirect_uri", redirect_uri),
            ("scope", "openid email"),
            ("state", state),
        ])
        .expect("form-encoding strings");
        Some(format!("{base}/oauth2/authorize?{q}"))
    }

    /// Where `/logout` sends the browser: the hosted UI's logout, back to `back`.
    pub fn logout_url(&self, back: &str) -> Option<String> {
        let base = self.hosted_ui.as_ref()?;
        let q = serde_urlencoded::to_string([
            ("client_id", self.client_id.as_str()),
            ("logout_uri", back),
        ])
        .expect("form-encoding strings");
        Some(format!("{base}/logout?{q}"))
    }

    /// Trades a login's code for its ID token at the pool's token endpoint; returns the
    /// token (checked) and how long it lasts, in seconds.
    pub async fn exchange(
        &self,
        code: &str,
        redirect_uri: &str,
    ) -> Result<(String, u64), TokenError> {
        let base = self
            .hosted_ui
            .as_ref()
            .ok_or_else(|| TokenError::Exchange("no hosted UI is configured".into()))?;
        let url = format!("{base}/oauth2/token");
        let resp = self
            .http
            .post(&url)
            .form(&[
                ("grant_type", "authorization_code"),
                ("client_id", self.client_id.as_str()),
                ("code", code),
                ("redirect_uri", redirect_uri),
            ])
            .send()
            .await
            .map_err(|e| TokenError::Exchange(format!("POST {url}: {e}")))?;
        let body = Self::read(resp, &format!("POST {url}"))
            .await
            .map_err(TokenError::Exchange)?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| TokenError::Exchange(format!("POST {url}: the answer is not JSON")))?;
        let token = v
            .get("id_token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| TokenError::Exchange(format!("POST {url}: no id_token in the answer")))?
            .to_string();
        self.verify(&token).await?;
        let lasts = v.get("expires_in").and_then(|t| t.as_u64()).unwrap_or(3600);
        Ok((token, lasts.clamp(60, 24 * 3600)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc";

    fn claims(over: serde_json::Value) -> serde_json::Value {
        let mut c = serde_json::json!({
            "iss": ISS, "aud": "client-1", "token_use": "id", "exp": 2_000,
            "sub": "u-1", "email": "ops@example.com",
        });
        for (k, v) in over.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    #[test]
    fn an_id_token_of_the_pool_for_the_client_and_not_expired_is_its_user() {
        assert_eq!(
            check_claims(&claims(serde_json::json!({})), ISS, "client-1", 1_000),
            Ok("ops@example.com".into())
        );
        assert_eq!(
            check_claims(
                &claims(serde_json::json!({"email": ""})),
                ISS,
                "client-1",
                1_000
            ),
            Ok("u-1".into()),
            "sub when there is no email"
        );
        // Within the leeway.
        assert!(check_claims(&claims(serde_json::json!({})), ISS, "client-1", 2_030).is_ok());
    }

    #[test]
    fn another_pool_client_use_or_an_old_token_is_refused_by_name() {
        let refuse = |over: serde_json::Value, now: i64| {
            check_claims(&claims(over), ISS, "client-1", now).unwrap_err()
        };
        assert!(matches!(
            refuse(
                serde_json::json!({"iss": "https://cognito-idp.eu-west-1.amazonaws.com/other"}),
                0
            ),
            TokenError::Issuer { .. }
        ));
        assert!(matches!(
            refuse(serde_json::json!({"aud": "client-2"}), 0),
            TokenError::Audience { .. }
        ));
        assert_eq!(
            refuse(serde_json::json!({"token_use": "access"}), 0),
            TokenError::Use("access".into()),
            "an access token has no audience: only ID tokens are taken"
        );
        assert_eq!(
            refuse(serde_json::json!({}), 2_100),
            TokenError::Expired(2_000)
        );
        assert!(matches!(
            refuse(serde_json::json!({"exp": "soon"}), 0),
            TokenError::Malformed(_)
        ));
    }

    #[test]
    fn what_is_not_a_jwt_says_so_without_the_token() {
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.x",
            "e30.!!.x",
            "bm90IGpzb24.e30.eA",
        ] {
            let e = split(bad).err().unwrap_or_else(|| panic!("{bad:?} split"));
            assert!(matches!(e, TokenError::Malformed(_)), "{bad:?}: {e}");
        }
        let long = format!("{}.e30.eA", "e".repeat(17 << 10));
        assert!(split(&long).is_err());
        let p = split("eyJhbGciOiJSUzI1NiJ9.e30.eA").unwrap();
        assert_eq!(p.header["alg"], "RS256");
        assert_eq!(p.signed, "eyJhbGciOiJSUzI1NiJ9.e30");
    }

    #[test]
    fn the_pools_rsa_keys_are_read_by_key_id_and_others_left_out() {
        let keys = parse_jwks(
            br#"{"keys":[{"kty":"RSA","kid":"k1","n":"AQAB","e":"AQAB"},{"kty":"EC","kid":"k2"}]}"#,
        )
        .unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys["k1"].e, [1, 0, 1]);
        assert!(parse_jwks(b"[]").is_err());
        assert!(parse_jwks(b"{").is_err());
    }

    #[test]
    fn the_login_url_carries_the_client_the_callback_and_the_state_encoded() {
        let c = Cognito::new(
            ISS.into(),
            "client-1".into(),
            Some("https://th.auth.eu-west-1.amazoncognito.com/".into()),
            None,
        );
        let u = c
            .login_url(
                "https://abc.execute-api.eu-west-1.amazonaws.com/callback",
                "s&1",
            )
            .unwrap();
        assert!(u.starts_with("https://th.auth.eu-west-1.amazoncognito.com/oauth2/authorize?response_type=code&client_id=client-1&redirect_uri=https%3A%2F%2Fabc.execute-api"), "{u}");
        assert!(u.ends_with("&scope=openid+email&state=s%261"), "{u}");
        assert_eq!(c.jwks_url, format!("{ISS}/.well-known/jwks.json"));
        assert!(
            Cognito::new(ISS.into(), "c".into(), None, None)
                .login_url("x", "y")
                .is_none()
        );
    }
}
