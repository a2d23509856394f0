//! The console on Lambda: the same [`super::router`] behind an HTTP API whose Cognito
//! JWT authorizer has checked the caller. [`handle`] admits a request only with the
//! authorizer's claims (API Gateway v2 `requestContext.authorizer.jwt.claims`): the user
//! (`email`, else `sub`) and a CSRF seed (a hash of the caller's token) go to the router as
//! headers that the client cannot set — any it sent are dropped first. There is no login
//! page and no session: the CSRF token of a form is derived from the seed, so every
//! container answers the same.

use super::auth::{CSRF_SEED_HEADER, USER_HEADER};
use axum::http::{HeaderValue, StatusCode, header};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use sha2::Digest as _;
use tower::ServiceExt as _;

/// Longest console page sent back (a page of 200 items is far below).
const RESPONSE_LIMIT: usize = 5 << 20;

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

fn refused() -> Response<Body> {
    tracing::warn!("a request without the authorizer's claims was refused");
    let mut r = Response::new(Body::from(
        "401: this console is behind a Cognito authorizer; the request carried no claims",
    ));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Answers one request with `router` (from [`super::router`] over an
/// [`super::auth::Auth::authorizer`]).
pub async fn handle(
    router: axum::Router,
    req: Request,
) -> Result<Response<Body>, lambda_http::Error> {
    let user = caller(&req);
    let (mut parts, body) = req.into_parts();
    parts.headers.remove(USER_HEADER);
    parts.headers.remove(CSRF_SEED_HEADER);
    let Some(user) = user else {
        return Ok(refused());
    };
    // The token the authorizer checked; its hash seeds the forms' CSRF token.
    let token = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_else(|| user.as_bytes().to_vec());
    let seed = hex::encode(sha2::Sha256::digest(&token));
    let Ok(user_value) = HeaderValue::from_str(&user) else {
        return Ok(refused());
    };
    parts.headers.insert(USER_HEADER, user_value);
    parts.headers.insert(
        CSRF_SEED_HEADER,
        HeaderValue::from_str(&seed).expect("hex is a valid header"),
    );
    let body = axum::body::Body::from(body.as_ref().to_vec());
    let resp = router
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
