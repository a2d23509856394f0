//! Configuration from environment variables: typed parsing, and one error that lists every
//! missing or invalid variable at once.

use std::collections::HashMap;
use std::str::FromStr;

/// Every problem found in the environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: {}", .problems.join("; "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// Reads variables and collects problems; call [`Env::finish`] at the end.
pub struct Env {
    vars: HashMap<String, String>,
    problems: Vec<String>,
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        Self::from_map(std::env::vars().collect())
    }

    /// Reads a given map (tests).
    pub fn from_map(vars: HashMap<String, String>) -> Self {
        Self {
            vars,
            problems: Vec::new(),
        }
    }

    /// A required variable.
    pub fn required(&mut self, name: &str) -> String {
        match self.vars.get(name).filter(|v| !v.trim().is_empty()) {
            Some(v) => v.trim().to_string(),
            None => {
                self.problems.push(format!("{name} is not set"));
                String::new()
            }
        }
    }

    /// An optional variable (empty counts as unset).
    pub fn optional(&mut self, name: &str) -> Option<String> {
        self.vars
            .get(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// A typed variable with a default; a bad value is reported with what is expected.
    pub fn parsed<T: FromStr>(&mut self, name: &str, default: T, expected: &str) -> T {
        match self.optional(name) {
            None => default,
            Some(v) => match v.parse() {
                Ok(t) => t,
                Err(_) => {
                    self.problems
                        .push(format!("{name}={v:?} is not {expected}"));
                    default
                }
            },
        }
    }

    /// A variable that must be one of `choices`.
    pub fn choice(&mut self, name: &str, choices: &[&str], default: &str) -> String {
        let v = self.optional(name).unwrap_or_else(|| default.to_string());
        match choices.iter().find(|c| c.eq_ignore_ascii_case(&v)) {
            // Spelled as the choices are (any case accepted), so callers match one form.
            Some(c) => c.to_string(),
            None => {
                self.problems
                    .push(format!("{name}={v:?} is not one of {}", choices.join(", ")));
                default.to_string()
            }
        }
    }

    /// Records a problem found while checking a value.
    pub fn problem(&mut self, p: String) {
        self.problems.push(p);
    }

    /// Ok when nothing was missing or invalid.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_problem_at_once() {
        let mut env = Env::from_map(
            [
                ("PORT".to_string(), "eighty".to_string()),
                ("MODE".to_string(), "x".to_string()),
            ]
            .into(),
        );
        let _ = env.required("TABLE");
        let _ = env.required("BUCKET");
        let port: u16 = env.parsed("PORT", 1, "a port number");
        let _ = env.choice("MODE", &["ALL", "SELECTED"], "ALL");
        assert_eq!(port, 1);
        let e = env.finish().unwrap_err();
        assert_eq!(e.problems.len(), 4);
        let text = e.to_string();
        for needle in [
            "TABLE is not set",
            "BUCKET is not set",
            "PORT=\"eighty\" is not a port number",
            "MODE=\"x\" is not one of ALL, SELECTED",
        ] {
            assert!(text.contains(needle), "{text}");
        }
    }
}
