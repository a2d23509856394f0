//! The web console: one axum [`Router`] over a [`TaskStore`] and a [`Runner`], hosted by
//! `transfer-hub serve` on one machine (and, later, by `lambda_http` on AWS).
//!
//! Every page needs a session (else it redirects to `/login`); every POST carries the
//! session's CSRF token (else 403). Values are HTML-escaped by maud; secrets are never
//! part of a task, so no page can show one.

pub mod auth;
#[cfg(feature = "aws")]
pub mod cognito;
#[cfg(feature = "aws")]
pub mod lambda;
pub mod pages;
pub mod runner;

use crate::status::ItemRecord;
use crate::tasks::run::{Only, retry_keys, retry_list};
use crate::tasks::store::{ItemPage, TaskStore, TaskStoreError};
use crate::tasks::{Fields, Kind, Task, default_fields};
use auth::{Auth, LOGIN_COOKIE, SESSION_COOKIE, random_token, same};
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use runner::Runner;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Tasks and runs shown per page.
pub const PAGE: usize = 50;
/// Items shown per page of a run.
pub const ITEMS_PAGE: usize = 200;

/// What the router works with.
#[derive(Clone)]
pub struct Console {
    pub tasks: Arc<dyn TaskStore>,
    pub runner: Arc<dyn Runner>,
    pub auth: Arc<Auth>,
}

/// The console's routes.
pub fn router(c: Console) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/login", get(login_page).post(login_post))
        .route("/logout", post(logout))
        .route("/tasks", get(tasks_page))
        .route("/tasks/new", get(new_page).post(new_post))
        .route("/tasks/{name}", get(task_page))
        .route("/tasks/{name}/edit", get(edit_page).post(edit_post))
        .route("/tasks/{name}/run", post(run_now))
        .route("/tasks/{name}/enabled", post(set_enabled))
        .route("/tasks/{name}/delete", get(delete_page).post(delete_post))
        .route("/runs/{id}", get(run_page))
        .route("/runs/{id}/retry", post(retry_failed))
        .with_state(c)
}

fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn html(m: Markup) -> Response {
    let mut r = Html(m.into_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn session_cookie(id: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/"
    ))
    .expect("hex is a valid header")
}

/// A logged-in request: its session's CSRF token.
struct Session {
    csrf: String,
}

// A handler's early answer is a Response; they are few and short-lived.
#[allow(clippy::result_large_err)]
fn session(c: &Console, h: &HeaderMap) -> Result<Session, Response> {
    if c.auth.behind_authorizer() {
        return match (h.get(auth::USER_HEADER), h.get(auth::CSRF_SEED_HEADER)) {
            (Some(_), Some(seed)) => Ok(Session {
                csrf: auth::csrf_from_seed(seed.to_str().unwrap_or_default()),
            }),
            _ => Err((
                StatusCode::UNAUTHORIZED,
                html(pages::error(
                    "Not logged in",
                    "this console is behind a Cognito authorizer; the request named no caller",
                )),
            )
                .into_response()),
        };
    }
    cookie(h, SESSION_COOKIE)
        .and_then(|id| c.auth.csrf(id))
        .map(|csrf| Session { csrf })
        .ok_or_else(|| Redirect::to("/login").into_response())
}

/// A logged-in POST whose form carries the session's CSRF token.
#[allow(clippy::result_large_err)]
fn checked(c: &Console, h: &HeaderMap, form: &[(String, String)]) -> Result<Session, Response> {
    let s = session(c, h)?;
    let sent = form
        .iter()
        .rev()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str());
    if sent.is_some_and(|v| same(v, &s.csrf)) {
        Ok(s)
    } else {
        tracing::warn!("a POST without the session's CSRF token was refused");
        Err((
            StatusCode::FORBIDDEN,
            html(pages::error(
                "Refused",
                "this form did not carry the session's CSRF token; reload the page and try again",
            )),
        )
            .into_response())
    }
}

fn store_error(e: TaskStoreError) -> Response {
    tracing::error!(error = %e, "task store");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        html(pages::error("Store error", &e.to_string())),
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, html(pages::error("Not found", what))).into_response()
}

/// Fields of a form: later values win (a checkbox after its hidden "false").
fn fields_of(form: &[(String, String)]) -> Fields {
    let mut f = Fields::new();
    for (k, v) in form {
        if k != "csrf" && k != "name" && k != "kind" {
            f.insert(k.clone(), v.clone());
        }
    }
    f
}

#[derive(Deserialize)]
struct RootQuery {
    token: Option<String>,
}

async fn root(State(c): State<Console>, Query(q): Query<RootQuery>, h: HeaderMap) -> Response {
    if let Some(token) = q.token {
        return match c.auth.login_with_token(&token) {
            Some(id) => {
                let mut r = Redirect::to("/tasks").into_response();
                r.headers_mut().insert(header::SET_COOKIE, session_cookie(&id));
                r
            }
            None => (
                StatusCode::FORBIDDEN,
                html(pages::login("", c.auth.has_password(), Some("That login link was used already or is wrong; restart `transfer-hub serve` for a new one, or use the password."))),
            )
                .into_response(),
        };
    }
    match session(&c, &h) {
        Ok(_) => Redirect::to("/tasks").into_response(),
        Err(r) => r,
    }
}

async fn login_page(State(c): State<Console>) -> Response {
    if c.auth.behind_authorizer() {
        return Redirect::to("/tasks").into_response();
    }
    let nonce = random_token();
    let mut r = html(pages::login(&nonce, c.auth.has_password(), None));
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{LOGIN_COOKIE}={nonce}; HttpOnly; SameSite=Strict; Path=/login"
        ))
        .expect("hex"),
    );
    r
}

async fn login_post(
    State(c): State<Console>,
    h: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let nonce_ok =
        matches!((cookie(&h, LOGIN_COOKIE), get("csrf")), (Some(a), Some(b)) if same(a, b));
    if !nonce_ok {
        return (
            StatusCode::FORBIDDEN,
            html(pages::error(
                "Refused",
                "the login form's CSRF token is missing or wrong; reload the login page",
            )),
        )
            .into_response();
    }
    match c.auth.login_with_password(get("password").unwrap_or("")) {
        Some(id) => {
            let mut r = Redirect::to("/tasks").into_response();
            r.headers_mut()
                .insert(header::SET_COOKIE, session_cookie(&id));
            r
        }
        None => {
            tracing::warn!("a login with a wrong password was refused");
            // Every wrong guess costs its sender a second, so a console reached from beyond
            // this machine is slow to brute-force.
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            (
                StatusCode::FORBIDDEN,
                html(pages::login(
                    "",
                    c.auth.has_password(),
                    Some("Wrong password."),
                )),
            )
                .into_response()
        }
    }
}

async fn logout(
    State(c): State<Console>,
    h: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(r) = checked(&c, &h, &form) {
        return r;
    }
    if let Some(id) = cookie(&h, SESSION_COOKIE) {
        c.auth.logout(id);
    }
    Redirect::to("/login").into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    after: Option<String>,
    notice: Option<String>,
}

async fn tasks_page(
    State(c): State<Console>,
    h: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let s = match session(&c, &h) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let page = match c.tasks.list(q.after.as_deref(), PAGE + 1).await {
        Ok(p) => p,
        Err(e) => return store_error(e),
    };
    let more = page.len() > PAGE;
    let mut rows = Vec::new();
    for t in page.into_iter().take(PAGE) {
        let last = match c.tasks.runs(&t.name, None, 1).await {
            Ok(r) => r.into_iter().next(),
            Err(e) => return store_error(e),
        };
        let next = runner::next_run(&*c.tasks, &t).await.ok().flatten();
        let running = c.runner.running(&t.name);
        rows.push(pages::TaskRow {
            task: t,
            last,
            next,
            running,
        });
    }
    let next_page = more
        .then(|| rows.last().map(|r| r.task.name.clone()))
        .flatten();
    html(pages::tasks(
        &rows,
        next_page.as_deref(),
        &s.csrf,
        q.notice.as_deref(),
    ))
}

#[derive(Deserialize)]
struct KindQuery {
    kind: Option<String>,
}

async fn new_page(State(c): State<Console>, h: HeaderMap, Query(q): Query<KindQuery>) -> Response {
    let s = match session(&c, &h) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let kind = match Kind::parse(q.kind.as_deref().unwrap_or("images")) {
        Ok(k) => k,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                html(pages::error("Bad request", &e)),
            )
                .into_response();
        }
    };
    html(pages::task_form(
        kind,
        None,
        "",
        &default_fields(kind),
        None,
        &s.csrf,
    ))
}

async fn new_post(
    State(c): State<Console>,
    h: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let s = match checked(&c, &h, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let get = |k: &str| {
        form.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim().to_string())
    };
    let kind = match Kind::parse(&get("kind").unwrap_or_default()) {
        Ok(k) => k,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                html(pages::error("Bad request", &e)),
            )
                .into_response();
        }
    };
    let name = get("name").unwrap_or_default();
    let fields = fields_of(&form);
    match Task::from_fields(&name, kind, &fields, chrono::Utc::now()) {
        Err(invalid) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            html(pages::task_form(
                kind,
                None,
                &name,
                &fields,
                Some(&invalid),
                &s.csrf,
            )),
        )
            .into_response(),
        Ok(task) => match c.tasks.create(&task).await {
            Ok(()) => {
                tracing::info!(task = %task.name, "task created");
                Redirect::to(&format!("/tasks/{}", task.name)).into_response()
            }
            Err(TaskStoreError::Exists(n)) => {
                let invalid = crate::tasks::Invalid {
                    errors: vec![crate::tasks::FieldError {
                        field: "name".into(),
                        message: format!("a task named {n:?} exists already; expected a new name"),
                        lines: vec![],
                    }],
                };
                (
                    StatusCode::CONFLICT,
                    html(pages::task_form(
                        kind,
                        None,
                        &name,
                        &fields,
                        Some(&invalid),
                        &s.csrf,
                    )),
                )
                    .into_response()
            }
            Err(e) => store_error(e),
        },
    }
}

async fn load(c: &Console, name: &str) -> Result<Task, Response> {
    match c.tasks.get(name).await {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(not_found(&format!("no task named {name:?}"))),
        Err(e) => Err(store_error(e)),
    }
}

#[derive(Deserialize)]
struct PageQuery {
    /// The last run of the page before (keyset paging).
    before: Option<String>,
    notice: Option<String>,
}

async fn task_page(
    State(c): State<Console>,
    h: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let s = match session(&c, &h) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let t = match load(&c, &name).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut runs = match c.tasks.runs(&name, q.before.as_deref(), PAGE + 1).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let more = runs.len() > PAGE;
    runs.truncate(PAGE);
    let older = more
        .then(|| runs.last().map(|r| r.run_id.as_str()))
        .flatten();
    let next = runner::next_run(&*c.tasks, &t).await.ok().flatten();
    let running = c.runner.running(&name);
    let view = pages::TaskView {
        task: &t,
        runs: &runs,
        deep: q.before.is_some(),
        older,
        running: running.as_deref(),
        next,
        notice: q.notice.as_deref(),
    };
    html(pages::task(&view, &s.csrf))
}

async fn edit_page(State(c): State<Console>, h: HeaderMap, Path(name): Path<String>) -> Response {
    let s = match session(&c, &h) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let t = match load(&c, &name).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    html(pages::task_form(
        t.kind(),
        Some(&t.name),
        &t.name,
        &t.fields(),
        None,
        &s.csrf,
    ))
}

async fn edit_post(
    State(c): State<Console>,
    h: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let s = match checked(&c, &h, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let old = match load(&c, &name).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let fields = fields_of(&form);
    match Task::from_fields(&name, old.kind(), &fields, chrono::Utc::now()) {
        Err(invalid) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            html(pages::task_form(
                old.kind(),
                Some(&name),
                &name,
                &fields,
                Some(&invalid),
                &s.csrf,
            )),
        )
            .into_response(),
        Ok(mut t) => {
            t.created_at = old.created_at;
            match c.tasks.update(&t).await {
                Ok(()) => Redirect::to(&format!("/tasks/{name}")).into_response(),
                Err(e) => store_error(e),
            }
        }
    }
}

async fn run_now(
    State(c): State<Console>,
    h: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(r) = checked(&c, &h, &form) {
        return r;
    }
    let t = match load(&c, &name).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    match c.runner.start(&t, None).await {
        Ok(id) => Redirect::to(&format!("/runs/{id}")).into_response(),
        Err(e) => (
            StatusCode::CONFLICT,
            html(pages::error("Not started", &e.to_string())),
        )
            .into_response(),
    }
}

async fn set_enabled(
    State(c): State<Console>,
    h: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(r) = checked(&c, &h, &form) {
        return r;
    }
    let mut t = match load(&c, &name).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    t.enabled = form.iter().any(|(k, v)| k == "enabled" && v == "true");
    t.updated_at = chrono::Utc::now();
    match c.tasks.update(&t).await {
        Ok(()) => Redirect::to("/tasks").into_response(),
        Err(e) => store_error(e),
    }
}

async fn delete_page(State(c): State<Console>, h: HeaderMap, Path(name): Path<String>) -> Response {
    let s = match session(&c, &h) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(r) = load(&c, &name).await {
        return r;
    }
    html(pages::confirm_delete(&name, &s.csrf))
}

async fn delete_post(
    State(c): State<Console>,
    h: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(r) = checked(&c, &h, &form) {
        return r;
    }
    match c.tasks.delete(&name).await {
        Ok(true) => Redirect::to("/tasks").into_response(),
        Ok(false) => not_found(&format!("no task named {name:?}")),
        Err(e) => store_error(e),
    }
}

async fn run_page(
    State(c): State<Console>,
    h: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = match session(&c, &h) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let failed_only = q.get("failed").is_some_and(|v| v == "1");
    let after = q.get("after").map(|s| {
        let d = q.get("after_dest").cloned().unwrap_or_default();
        (s.clone(), d)
    });
    let run = match c.tasks.run(&id).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let live = c.runner.live(&id);
    if run.is_none() && live.is_none() {
        return not_found(&format!("no run {id:?}"));
    }
    let task = c.tasks.task_of(&id).await.ok().flatten();
    let page = ItemPage {
        failed_only,
        after,
        limit: ITEMS_PAGE + 1,
    };
    let mut items = match c.tasks.items(&id, &page).await {
        Ok(x) => x,
        Err(e) => return store_error(e),
    };
    let more = items.len() > ITEMS_PAGE;
    items.truncate(ITEMS_PAGE);
    let next = more
        .then(|| items.last().map(|i| (i.source.as_str(), i.dest.as_str())))
        .flatten();
    let view = pages::RunView {
        run_id: &id,
        task: task.as_deref(),
        run: run.as_ref(),
        live: live.as_ref(),
        items: &items,
        failed_only,
        deep: page.after.is_some(),
        next,
        can_retry: task.is_some(),
    };
    html(pages::run(&view, &s.csrf))
}

async fn retry_failed(
    State(c): State<Console>,
    h: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(r) = checked(&c, &h, &form) {
        return r;
    }
    let Some(name) = c.tasks.task_of(&id).await.ok().flatten() else {
        return not_found(&format!("run {id:?} belongs to no task"));
    };
    let t = match load(&c, &name).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    // Every failed item, page by page from the store.
    let mut failed: Vec<ItemRecord> = Vec::new();
    loop {
        let page = ItemPage {
            failed_only: true,
            after: failed.last().map(|i| (i.source.clone(), i.dest.clone())),
            limit: 1000,
        };
        match c.tasks.items(&id, &page).await {
            Ok(page) if page.is_empty() => break,
            Ok(page) => failed.extend(page),
            Err(e) => return store_error(e),
        }
    }
    // Just the failed items: an images task's failed images as a selection list, an
    // objects task's failed keys.
    let only = match t.kind() {
        Kind::Images => Only::List(retry_list(t.source(), &failed)),
        Kind::Objects => Only::Keys(retry_keys(t.source(), &failed)),
    };
    match c.runner.start(&t, Some(only)).await {
        Ok(new) => Redirect::to(&format!("/runs/{new}")).into_response(),
        Err(e) => (
            StatusCode::CONFLICT,
            html(pages::error("Not started", &e.to_string())),
        )
            .into_response(),
    }
}

/// Serves the console on `listener` until `shutdown` resolves (then lets requests in
/// flight finish).
pub async fn serve(
    listener: tokio::net::TcpListener,
    c: Console,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(c))
        .with_graceful_shutdown(shutdown)
        .await
}
