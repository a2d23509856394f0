//! Credentials kept in AWS Secrets Manager, as the original stores them: JSON with
//! `access_key_id`/`secret_access_key` (another account or partition) or
//! `username`/`password` (a registry login). Errors name the secret and the missing keys,
//! never a value.

use crate::images::authfile::Login;
use crate::retry::{ErrorClass, ItemError};
use std::fmt;

/// What a secret holds.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretCredentials {
    /// Keys for another AWS account or partition.
    Aws {
        access_key_id: String,
        secret_access_key: String,
    },
    /// A registry login.
    Registry(Login),
}

impl fmt::Debug for SecretCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Aws { access_key_id, .. } => write!(
                f,
                "Aws {{ access_key_id: {access_key_id:?}, secret_access_key: *** }}"
            ),
            Self::Registry(l) => write!(f, "Registry({l:?})"),
        }
    }
}

/// Reads the secret's JSON. `name` is only used in error texts.
pub fn parse_secret(name: &str, json: &str) -> Result<SecretCredentials, ItemError> {
    let bad = |why: String| ItemError::new(ErrorClass::BadInput, format!("secret {name:?}: {why}"));
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|_| bad("is not a JSON object".into()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("is not a JSON object".into()))?;
    let get = |k: &str| {
        obj.get(k)
            .and_then(|x| x.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    match (
        get("access_key_id"),
        get("secret_access_key"),
        get("username"),
        get("password"),
    ) {
        (Some(a), Some(s), _, _) => Ok(SecretCredentials::Aws {
            access_key_id: a,
            secret_access_key: s,
        }),
        (_, _, Some(u), Some(p)) => Ok(SecretCredentials::Registry(Login {
            username: u,
            password: p,
        })),
        _ => {
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            Err(bad(format!(
                "needs either \"access_key_id\" and \"secret_access_key\", or \"username\" and \"password\"; it has keys [{}]",
                keys.join(", ")
            )))
        }
    }
}

/// Fetches and parses a secret by name or ARN.
pub async fn fetch(
    client: &aws_sdk_secretsmanager::Client,
    name: &str,
) -> Result<SecretCredentials, ItemError> {
    let out = client
        .get_secret_value()
        .secret_id(name)
        .send()
        .await
        .map_err(|e| crate::retry::aws_error(&format!("secret {name:?}"), e))?;
    let text = out.secret_string().ok_or_else(|| {
        ItemError::new(
            ErrorClass::BadInput,
            format!("secret {name:?} has no string value"),
        )
    })?;
    parse_secret(name, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_shapes() {
        let a = parse_secret(
            "s",
            r#"{"access_key_id": "AKIA1", "secret_access_key": "sk-canary"}"#,
        )
        .unwrap();
        assert!(matches!(a, SecretCredentials::Aws { .. }));
        assert!(!format!("{a:?}").contains("sk-canary"));
        let r = parse_secret("s", r#"{"username": "u", "password": "pw-canary"}"#).unwrap();
        assert!(matches!(r, SecretCredentials::Registry(ref l) if l.username == "u"));
        assert!(!format!("{r:?}").contains("pw-canary"));
    }

    #[test]
    fn a_secret_without_keys_is_a_clear_error_without_values() {
        let e = parse_secret(
            "team/registry",
            r#"{"user": "u", "pass": "hunter2-canary"}"#,
        )
        .unwrap_err();
        assert_eq!(e.class, ErrorClass::BadInput);
        assert!(
            e.message.contains("team/registry") && e.message.contains("[pass, user]"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("hunter2-canary"));
        assert!(
            parse_secret("x", "not json hunter2")
                .unwrap_err()
                .message
                .contains("not a JSON object")
        );
    }
}
