//! Login, sessions and CSRF tokens of the console.
//!
//! A login is the one-time token printed at start (`/?token=…`, used once) or the password
//! from an environment variable. A session is a random id in a cookie (HttpOnly,
//! SameSite=Strict) with its own CSRF token, which every form carries and every POST must
//! send back. Tokens and passwords are compared in constant time and never logged.

use std::collections::HashMap;
use std::sync::Mutex;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "th_session";
/// The cookie of a login form (double-submit CSRF before there is a session).
pub const LOGIN_COOKIE: &str = "th_login";
/// Behind an authorizer (the console on Lambda): the caller, set by the host only.
pub const USER_HEADER: &str = "x-transfer-hub-user";
/// Behind an authorizer: the seed of the caller's CSRF token, set by the host only.
pub const CSRF_SEED_HEADER: &str = "x-transfer-hub-csrf-seed";

/// The CSRF token of a caller behind an authorizer (the same in every container).
pub fn csrf_from_seed(seed: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(
        format!("transfer-hub csrf\n{seed}").as_bytes(),
    ))
}

/// A random token: 32 bytes, hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    fastrand_fill(&mut b);
    hex::encode(b)
}

fn fastrand_fill(b: &mut [u8]) {
    // getrandom through the OS: /dev/urandom.
    use std::io::Read;
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(b))
        .is_err()
    {
        panic!("cannot read /dev/urandom for a session token");
    }
}

/// Equal in constant time (for the same length).
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Who may log in, and the sessions.
pub struct Auth {
    one_time: Mutex<Option<String>>,
    password: Option<String>,
    /// session id → CSRF token.
    sessions: Mutex<HashMap<String, String>>,
    /// Behind an authorizer: the host's headers are the login (see `console::lambda`).
    authorizer: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth { .. }")
    }
}

impl Auth {
    /// `one_time`: the token printed at start; `password`: from the environment.
    pub fn new(one_time: Option<String>, password: Option<String>) -> Self {
        Self {
            one_time: Mutex::new(one_time),
            password: password.filter(|p| !p.is_empty()),
            sessions: Mutex::default(),
            authorizer: false,
        }
    }

    /// Behind an authorizer (Lambda): no token, no password, no sessions; the caller is
    /// the one the host names ([`USER_HEADER`], [`CSRF_SEED_HEADER`]).
    pub fn authorizer() -> Self {
        Self {
            authorizer: true,
            ..Self::new(None, None)
        }
    }

    pub fn behind_authorizer(&self) -> bool {
        self.authorizer
    }

    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// Uses the one-time token: a new session id, once.
    pub fn login_with_token(&self, token: &str) -> Option<String> {
        let mut t = self.one_time.lock().unwrap();
        if t.as_deref().is_some_and(|want| same(want, token)) {
            *t = None;
            Some(self.new_session())
        } else {
            None
        }
    }

    /// Checks the password: a new session id.
    pub fn login_with_password(&self, password: &str) -> Option<String> {
        self.password
            .as_deref()
            .filter(|want| same(want, password))
            .map(|_| self.new_session())
    }

    fn new_session(&self) -> String {
        let id = random_token();
        self.sessions
            .lock()
            .unwrap()
            .insert(id.clone(), random_token());
        id
    }

    /// The CSRF token of a session, if the session exists.
    pub fn csrf(&self, session: &str) -> Option<String> {
        self.sessions.lock().unwrap().get(session).cloned()
    }

    pub fn logout(&self, session: &str) {
        self.sessions.lock().unwrap().remove(session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_logs_in_once_and_sessions_have_their_own_csrf_token() {
        let a = Auth::new(Some("t0k".into()), None);
        assert!(a.login_with_token("wrong").is_none());
        let s = a.login_with_token("t0k").unwrap();
        assert!(a.login_with_token("t0k").is_none(), "one time");
        assert!(a.login_with_password("").is_none(), "no password set");
        let c = a.csrf(&s).unwrap();
        assert_eq!(c.len(), 64);
        let b = Auth::new(None, Some("pw".into()));
        let s2 = b.login_with_password("pw").unwrap();
        assert_ne!(b.csrf(&s2).unwrap(), c);
        b.logout(&s2);
        assert!(b.csrf(&s2).is_none());
    }
}
