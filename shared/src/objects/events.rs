//! S3 event notifications (delivered through SQS) turned into work: `ObjectCreated:*`
//! copies the key, `ObjectRemoved:*` deletes it at the destination when the user turned
//! deletion on. Events arrive late, twice and out of order; per key the newest
//! `sequencer` wins (see [`sortable_sequencer`]).

use super::diff::Entry;
use aws_lambda_events::event::s3::S3Event;

/// What one event asks for. `key` is relative to the source prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventWork {
    Copy { entry: Entry, sequencer: String },
    Delete { key: String, sequencer: String },
}

/// Why an event record cannot become work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("S3 event record {index} has no {field}")]
    Missing { index: usize, field: &'static str },
    #[error("S3 event record {index}: key {key:?} is not valid URL-encoded UTF-8")]
    BadKey { index: usize, key: String },
}

/// Sequencers are hexadecimal strings; a longer one may be newer. Left-padded to a fixed
/// width (and upper-cased) they compare as numbers by plain string order, which is what
/// a DynamoDB condition can do.
pub fn sortable_sequencer(s: &str) -> String {
    format!("{:0>40}", s.trim().to_ascii_uppercase())
}

/// Keys in event notifications are form-encoded (`+` for space, `%XX`).
pub fn decode_key(k: &str) -> Option<String> {
    let bytes = k.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = k.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Whether an SQS body is an S3 notification (rather than one of our job messages).
pub fn is_s3_notification(body: &str) -> bool {
    body.contains("\"Records\"") && body.contains("aws:s3") || body.contains("\"s3:TestEvent\"")
}

/// The work in one notification body, for keys under `prefix`. A test event yields
/// nothing; records outside the prefix are ignored (they are not ours).
pub fn parse(
    body: &str,
    prefix: &str,
) -> Result<Vec<Result<EventWork, EventError>>, serde_json::Error> {
    if body.contains("\"s3:TestEvent\"") {
        return Ok(Vec::new());
    }
    let ev: S3Event = serde_json::from_str(body)?;
    let mut out = Vec::new();
    for (index, r) in ev.records.into_iter().enumerate() {
        let name = r.event_name.clone().unwrap_or_default();
        let work = (|| {
            let raw = r.s3.object.key.clone().ok_or(EventError::Missing {
                index,
                field: "s3.object.key",
            })?;
            let key = decode_key(&raw).ok_or(EventError::BadKey { index, key: raw })?;
            let sequencer = r.s3.object.sequencer.clone().ok_or(EventError::Missing {
                index,
                field: "s3.object.sequencer",
            })?;
            let Some(rel) = key.strip_prefix(prefix) else {
                return Ok(None);
            };
            if name.starts_with("ObjectRemoved") {
                Ok(Some(EventWork::Delete {
                    key: rel.to_string(),
                    sequencer,
                }))
            } else if name.starts_with("ObjectCreated") {
                let size = r.s3.object.size.ok_or(EventError::Missing {
                    index,
                    field: "s3.object.size",
                })?;
                Ok(Some(EventWork::Copy {
                    entry: Entry {
                        archived: false,
                        key: rel.to_string(),
                        size: size.max(0) as u64,
                        etag: r
                            .s3
                            .object
                            .e_tag
                            .clone()
                            .map(|e| e.trim_matches('"').to_string()),
                        checksum: None,
                        modified: None,
                    },
                    sequencer,
                }))
            } else {
                Ok(None)
            }
        })();
        match work {
            Ok(Some(w)) => out.push(Ok(w)),
            Ok(None) => {}
            Err(e) => out.push(Err(e)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longer_sequencers_are_newer_and_case_does_not_matter() {
        assert!(
            sortable_sequencer("0055AED6DCD90281E5") < sortable_sequencer("0055AED6DCD90281E6")
        );
        assert!(sortable_sequencer("FF") < sortable_sequencer("100"));
        assert_eq!(sortable_sequencer("ab"), sortable_sequencer("AB"));
    }

    #[test]
    fn keys_are_form_decoded() {
        assert_eq!(decode_key("a+b/%C3%BC.txt").unwrap(), "a b/ü.txt");
        assert_eq!(decode_key("%zz"), None);
    }

    #[test]
    fn the_sample_event_becomes_work() {
        let body = crate::objects::events::tests::sample();
        let w = parse(&body, "incoming/").unwrap();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            matches!(&w[0], Ok(EventWork::Copy { entry, .. }) if entry.key == "photos/cat 1.jpg" && entry.size == 1024)
        );
        assert!(matches!(&w[1], Ok(EventWork::Delete { key, .. }) if key == "old.txt"));
        assert!(
            parse(r#"{"Service":"Amazon S3","Event":"s3:TestEvent"}"#, "")
                .unwrap()
                .is_empty()
        );
    }

    pub(crate) fn sample() -> String {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../events/s3-notification.json"
        );
        std::fs::read_to_string(p).expect("events/s3-notification.json")
    }
}
