//! Stopping a run on request (Ctrl-C, SIGTERM): a [`StopHandle`] says why once; every
//! [`Stop`] sees it. Copies in flight kill their skopeo child and wait for it, copies not yet
//! started do not start, retries stop waiting, and each such image is recorded as
//! interrupted (a failure a re-run redoes, since the plan is made from the registries).

use crate::retry::{ErrorClass, ItemError};
use tokio::sync::watch;

/// Sets the reason a run stops.
pub struct StopHandle(watch::Sender<Option<&'static str>>);

/// Tells whether, and why, the run was asked to stop.
#[derive(Clone)]
pub struct Stop(watch::Receiver<Option<&'static str>>);

/// A connected handle and signal.
pub fn channel() -> (StopHandle, Stop) {
    let (tx, rx) = watch::channel(None);
    (StopHandle(tx), Stop(rx))
}

impl StopHandle {
    /// Asks the run to stop; `why` names the cause (e.g. `SIGTERM`). The first reason stays.
    pub fn stop(&self, why: &'static str) {
        self.0.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(why);
                true
            } else {
                false
            }
        });
    }
}

impl Stop {
    /// A signal that never fires.
    pub fn never() -> Self {
        channel().1
    }

    /// Why the run was asked to stop, if it was.
    pub fn reason(&self) -> Option<&'static str> {
        *self.0.borrow()
    }

    /// Waits until the run is asked to stop (forever for [`Stop::never`]).
    pub async fn stopped(&self) -> &'static str {
        let mut rx = self.0.clone();
        let seen = rx.wait_for(Option::is_some).await.map(|v| *v);
        match seen {
            Ok(why) => why.unwrap_or("a stop request"),
            Err(_) => std::future::pending().await,
        }
    }
}

/// Exits now with `code`, without unwinding (a second Ctrl-C), after removing every temp
/// auth file the process still holds: destructors do not run on this path, so without
/// this the file with the logins would stay behind.
pub fn exit_now(code: i32) -> ! {
    crate::images::authfile::remove_live_temp_files();
    std::process::exit(code)
}

/// The error of an image whose copy was interrupted or never started.
pub fn interrupted(why: &str) -> ItemError {
    ItemError::new(
        ErrorClass::Retryable,
        format!("interrupted by {why} before the copy finished; a re-run copies it"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_reason_reaches_every_signal() {
        let (h, s) = channel();
        let s2 = s.clone();
        assert_eq!(s.reason(), None);
        let waiter = tokio::spawn(async move { s2.stopped().await });
        h.stop("SIGTERM");
        h.stop("SIGINT");
        assert_eq!(waiter.await.unwrap(), "SIGTERM");
        assert_eq!(s.reason(), Some("SIGTERM"));
        assert_eq!(Stop::never().reason(), None);
        let never = tokio::time::timeout(std::time::Duration::from_millis(20), async {
            Stop::never().stopped().await
        })
        .await;
        assert!(never.is_err(), "never fires");
    }
}
