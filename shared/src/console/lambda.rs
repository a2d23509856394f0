//! The console on Lambda: the same [`super::router`] behind an HTTP API. [`handle`] admits a
//! request only with a user it can trust:
//! - the claims of a JWT authorizer, when the API has one (API Gateway v2
//!   `requestContext.authorizer.jwt.claims`, which a client cannot set);
//! - else an ID token of the console's Cognito user pool ([`super::cognito`]): from an
//!   `Authorization: Bearer` header (API clients) or from the session cookie that the
//!   hosted-UI login sets (browsers: `/login` → the pool's hosted UI → `/callback`).
//!
//! The user (`email`, else `sub`) and a CSRF seed (a hash of the caller's token) go to the
//! router as headers that the client cannot set: any it sent are dropped first. The CSRF
//! token of a form is derived from the seed, so every container answers the same.

use super::auth::{CSRF_SEED_HEADER, USER_HEADER, random_token, same};
use super::cognito::{Cognito, ID_COOKIE, STATE_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use sha2::Digest as _;
use std::sync::Arc;
use tower::ServiceExt as _;

/// Longest console page sent back (a page of 200 items is far below).
const RESPONSE_LIMIT: usize = 5 << 20;

/// What the console function serves: the router, and the Cognito login when configured.
#[derive(Clone)]
pub struct Host {
    pub router: axum::Router,
    pub login: Option<Arc<Cognito>>,
}

impl From<axum::Router> for Host {
    /// Behind a JWT authorizer only: no login of its own.
    fn from(router: axum::Router) -> Self {
        Host {
            router,
            login: None,
        }
    }
}

/// The caller the authorizer let through: `email`, else `sub` (none: not through one).
pub fn caller(req: &Request) -> Option<String> {
    match req.request_context_ref()? {
        RequestContext::ApiGatewayV2(ctx) => {
            let claims = &ctx.authorizer.as_ref()?.jwt.as_ref()?.claims;
            claims
                .get("email")
                .or_else(|| claims.get("sub"))
                .filter(|v| !v.is_empty())
                .cloned()
        }
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// The API's own host name (`requestContext.domainName`, else the Host header), when it is
/// one: where the login's callback goes.
fn domain(req: &Request) -> Option<String> {
    let from_ctx = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.domain_name.clone(),
        _ => None,
    };
    let d = from_ctx.or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    })?;
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    ok.then_some(d)
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn redirect(to: &str) -> Response<Body> {
    let mut r = Response::new(Body::Empty);
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn add_cookie(r: &mut Response<Body>, cookie: String) {
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// A cookie's value from the request's Cookie headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let t = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))?;
    Some(t.trim().to_string()).filter(|t| !t.is_empty())
}

fn query(parts: &axum::http::request::Parts, key: &str) -> Option<String> {
    let q = parts.uri.query()?;
    serde_urlencoded::from_str::<Vec<(String, String)>>(q)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// Not logged in: a browser's page request goes to the login, anything else gets 401.
fn refused(login: Option<&Cognito>, method: &axum::http::Method, why: &str) -> Response<Body> {
    tracing::warn!(why, "a request without a trusted user was refused");
    if method == axum::http::Method::GET && login.is_some_and(|l| l.hosted_ui.is_some()) {
        return redirect("/login");
    }
    text(
        StatusCode::UNAUTHORIZED,
        format!(
            "401: log in first ({why}); send an ID token of the console's user pool as `Authorization: Bearer …`, or open /login in a browser"
        ),
    )
}

/// `/login`: to the hosted UI, with a fresh `state` kept in a cookie for the callback.
fn start_login(login: &Cognito, domain: &str) -> Response<Body> {
    let state = random_token();
    let Some(url) = login.login_url(&format!("https://{domain}/callback"), &state) else {
        return text(
            StatusCode::NOT_FOUND,
            "404: this console has no hosted-UI login; send an ID token as `Authorization: Bearer …`".into(),
        );
    };
    let mut r = redirect(&url);
    // Lax: the hosted UI's redirect back is a cross-site navigation, which must carry it.
    add_cookie(
        &mut r,
        format!(
            "{STATE_COOKIE}={state}; Path=/callback; HttpOnly; Secure; SameSite=Lax; Max-Age=600"
        ),
    );
    r
}

/// `/callback?code=…&state=…`: the code for an ID token, kept in the session cookie.
async fn finish_login(
    login: &Cognito,
    domain: &str,
    parts: &axum::http::request::Parts,
) -> Response<Body> {
    let (Some(code), Some(state)) = (query(parts, "code"), query(parts, "state")) else {
        return text(
            StatusCode::BAD_REQUEST,
            "400: the login's answer has no code or state; start again at /login".into(),
        );
    };
    let kept = cookie(&parts.headers, STATE_COOKIE).unwrap_or_default();
    if kept.is_empty() || !same(&kept, &state) {
        tracing::warn!("a login callback whose state is not this browser's was refused");
        return text(
            StatusCode::BAD_REQUEST,
            "400: this login was not started from this browser (its state does not match); start again at /login".into(),
        );
    }
    match login
        .exchange(&code, &format!("https://{domain}/callback"))
        .await
    {
        Ok((token, lasts)) => {
            // A page, not a redirect: a cookie with SameSite=Strict set on a navigation
            // that began at the hosted UI is sent only from the next, same-site one.
            let mut r = Response::new(Body::from(
                "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=\"0;url=/\"><title>Logged in</title><p>Logged in. <a href=\"/\">Continue to the console</a></p>".to_string(),
            ));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            add_cookie(
                &mut r,
                format!(
                    "{ID_COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={lasts}"
                ),
            );
            add_cookie(
                &mut r,
                format!(
                    "{STATE_COOKIE}=; Path=/callback; HttpOnly; Secure; SameSite=Lax; Max-Age=0"
                ),
            );
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, "a login's code was not accepted");
            text(
                StatusCode::UNAUTHORIZED,
                format!("401: the login was not accepted: {e}; start again at /login"),
            )
        }
    }
}

/// `/logout`: the session cookie goes, and the hosted UI's session too.
fn logout(login: &Cognito, domain: &str) -> Response<Body> {
    let mut r = match login.logout_url(&format!("https://{domain}/")) {
        Some(url) => redirect(&url),
        None => redirect("/"),
    };
    add_cookie(
        &mut r,
        format!("{ID_COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0"),
    );
    r
}

/// Answers one request with the host's router (from [`super::router`] over an
/// [`super::auth::Auth::authorizer`]).
pub async fn handle(host: Host, req: Request) -> Result<Response<Body>, lambda_http::Error> {
    let from_authorizer = caller(&req);
    let domain = domain(&req);
    let (mut parts, body) = req.into_parts();
    parts.headers.remove(USER_HEADER);
    parts.headers.remove(CSRF_SEED_HEADER);
    let login = host.login.as_deref();
    if let (Some(l), Some(d)) = (login, domain.as_deref()) {
        match parts.uri.path() {
            "/login" => return Ok(start_login(l, d)),
            "/callback" => return Ok(finish_login(l, d, &parts).await),
            "/logout" => return Ok(logout(l, d)),
            _ => {}
        }
    }
    let (user, token) = match (from_authorizer, login) {
        (Some(user), _) => {
            // The token the authorizer checked.
            let token = parts
                .headers
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_else(|| user.as_bytes().to_vec());
            (user, token)
        }
        (None, Some(l)) => {
            let Some(token) = bearer(&parts.headers).or_else(|| cookie(&parts.headers, ID_COOKIE))
            else {
                return Ok(refused(login, &parts.method, "no token"));
            };
            match l.verify(&token).await {
                Ok(user) => (user, token.into_bytes()),
                Err(e) => return Ok(refused(login, &parts.method, &e.to_string())),
            }
        }
        (None, None) => return Ok(refused(None, &parts.method, "no authorizer claims")),
    };
    let seed = hex::encode(sha2::Sha256::digest(&token));
    let Ok(user_value) = HeaderValue::from_str(&user) else {
        return Ok(refused(
            login,
            &parts.method,
            "a user name that is not a header value",
        ));
    };
    parts.headers.insert(USER_HEADER, user_value);
    parts.headers.insert(
        CSRF_SEED_HEADER,
        HeaderValue::from_str(&seed).expect("hex is a valid header"),
    );
    let body = axum::body::Body::from(body.as_ref().to_vec());
    let resp = host
        .router
        .oneshot(axum::http::Request::from_parts(parts, body))
        .await
        .expect("the router never fails");
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, RESPONSE_LIMIT)
        .await
        .map_err(|e| format!("reading the console's answer: {e}"))?;
    let body = match String::from_utf8(bytes.to_vec()) {
        Ok(s) => Body::Text(s),
        Err(e) => Body::Binary(e.into_bytes()),
    };
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_bearer_tokens_are_read_from_their_headers_only() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; th_id=tok; b=2"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("th_oauth_state=s"));
        assert_eq!(cookie(&h, ID_COOKIE).as_deref(), Some("tok"));
        assert_eq!(cookie(&h, STATE_COOKIE).as_deref(), Some("s"));
        assert_eq!(cookie(&h, "th"), None);
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  x.y.z "),
        );
        assert_eq!(bearer(&h).as_deref(), Some("x.y.z"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }
}
