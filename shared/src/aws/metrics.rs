//! The functions' metrics as CloudWatch embedded metric format (EMF) log lines: one JSON
//! object per line on stdout, which Lambda sends to the function's log group and
//! CloudWatch Logs turns into metrics. No `PutMetricData` call, no extra permission.
//!
//! Every metric is in [`NAMESPACE`] with the one dimension [`STACK_DIMENSION`] (the
//! stack's name, `METRICS_STACK`, set in template.yaml's Globals), so two stacks in one
//! account keep their metrics apart. [`ALL`] lists what the code emits; the dashboard in
//! template.yaml shows only those (a test holds it to that).
//!
//! The line follows the EMF specification: `_aws.Timestamp` in milliseconds since the
//! epoch, `_aws.CloudWatchMetrics` with one directive (`Namespace`, `Dimensions` as a list
//! of dimension-name sets, `Metrics` with `Name` and `Unit`), and each dimension and
//! metric value as a member of the root object. [`check_line`] checks a line against the
//! specification's rules.

use std::io::Write as _;

/// The namespace of every metric the functions emit.
pub const NAMESPACE: &str = "TransferHub";
/// The dimension every metric carries: the stack's name.
pub const STACK_DIMENSION: &str = "Stack";
/// The environment variable holding the stack's name (default `transfer-hub`).
pub const STACK_VAR: &str = "METRICS_STACK";

/// The CloudWatch units we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Bytes,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Bytes => "Bytes",
        }
    }
}

/// One metric the functions emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub unit: Unit,
}

/// record-status, once per image run: images copied.
pub const IMAGES_COPIED: Metric = Metric {
    name: "ImagesCopied",
    unit: Unit::Count,
};
/// record-status, once per image run: images failed.
pub const IMAGES_FAILED: Metric = Metric {
    name: "ImagesFailed",
    unit: Unit::Count,
};
/// record-status, once per image run: images already in place.
pub const IMAGES_SKIPPED: Metric = Metric {
    name: "ImagesSkipped",
    unit: Unit::Count,
};
/// transfer-object (single copies) and check-multipart (completed uploads): objects copied.
pub const OBJECTS_COPIED: Metric = Metric {
    name: "ObjectsCopied",
    unit: Unit::Count,
};
/// transfer-object and check-multipart: objects whose copy failed its checks.
pub const OBJECTS_FAILED: Metric = Metric {
    name: "ObjectsFailed",
    unit: Unit::Count,
};
/// transfer-object: bytes written (single copies, and each part as it is uploaded).
pub const BYTES_COPIED: Metric = Metric {
    name: "BytesCopied",
    unit: Unit::Bytes,
};
/// check-multipart, each pass: multipart uploads open in the ledger.
pub const OPEN_UPLOADS: Metric = Metric {
    name: "OpenUploads",
    unit: Unit::Count,
};

/// Every metric the code emits, each with the one dimension [`STACK_DIMENSION`].
pub const ALL: &[Metric] = &[
    IMAGES_COPIED,
    IMAGES_FAILED,
    IMAGES_SKIPPED,
    OBJECTS_COPIED,
    OBJECTS_FAILED,
    BYTES_COPIED,
    OPEN_UPLOADS,
];

/// One EMF line (no newline): `values` in [`NAMESPACE`], dimension `Stack` = `stack`, at
/// `timestamp_ms`.
pub fn line(stack: &str, values: &[(Metric, u64)], timestamp_ms: i64) -> String {
    let mut root = serde_json::Map::new();
    root.insert(
        "_aws".into(),
        serde_json::json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [[STACK_DIMENSION]],
                "Metrics": values
                    .iter()
                    .map(|(m, _)| serde_json::json!({"Name": m.name, "Unit": m.unit.as_str()}))
                    .collect::<Vec<_>>(),
            }],
        }),
    );
    root.insert(STACK_DIMENSION.into(), stack.into());
    for (m, v) in values {
        root.insert(m.name.into(), (*v).into());
    }
    serde_json::Value::Object(root).to_string()
}

thread_local! {
    static CAPTURED: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
}

/// From now on on this thread, lines go to [`captured`] instead of stdout (tests: a
/// handler awaited by `block_on` emits on the calling thread).
pub fn capture() {
    CAPTURED.with(|c| {
        c.borrow_mut().get_or_insert_with(Vec::new);
    });
}

/// The lines this thread emitted since [`capture`].
pub fn captured() -> Vec<String> {
    CAPTURED.with(|c| c.borrow().clone().unwrap_or_default())
}

/// Writes one EMF line of `values` (the stack's name from `METRICS_STACK`). Nothing is
/// written for no values. A failed write of stdout is ignored: metrics never fail a copy.
pub fn emit(values: &[(Metric, u64)]) {
    if values.is_empty() {
        return;
    }
    let stack = std::env::var(STACK_VAR)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "transfer-hub".into());
    let text = line(&stack, values, chrono::Utc::now().timestamp_millis());
    let text = match CAPTURED.with(|c| match c.borrow_mut().as_mut() {
        Some(lines) => {
            lines.push(text);
            None
        }
        None => Some(text),
    }) {
        Some(t) => t,
        None => return,
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// What one EMF line declares: (namespace, metric name, dimension names) per metric, or
/// what breaks the specification. The rules: a root object with `_aws`; `Timestamp` a
/// non-negative integer; `CloudWatchMetrics` a non-empty list of directives, each with a
/// `Namespace` of 1–255 characters, `Dimensions` a list of sets of at most 30 names, each
/// name a string member of the root, and 1–100 `Metrics`, each with a `Name` of 1–255
/// characters that is a number (or a list of at most 100 numbers) in the root and, if
/// given, a `Unit` CloudWatch knows.
pub fn check_line(text: &str) -> Result<Vec<(String, String, Vec<String>)>, String> {
    const UNITS: &[&str] = &[
        "Seconds",
        "Microseconds",
        "Milliseconds",
        "Bytes",
        "Kilobytes",
        "Megabytes",
        "Gigabytes",
        "Terabytes",
        "Bits",
        "Kilobits",
        "Megabits",
        "Gigabits",
        "Terabits",
        "Percent",
        "Count",
        "Bytes/Second",
        "Kilobytes/Second",
        "Megabytes/Second",
        "Gigabytes/Second",
        "Terabytes/Second",
        "Bits/Second",
        "Kilobits/Second",
        "Megabits/Second",
        "Gigabits/Second",
        "Terabits/Second",
        "Count/Second",
        "None",
    ];
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let root = v.as_object().ok_or("not a JSON object")?;
    let aws = root
        .get("_aws")
        .and_then(|a| a.as_object())
        .ok_or("no _aws object")?;
    aws.get("Timestamp")
        .and_then(|t| t.as_u64())
        .ok_or("_aws.Timestamp is not a non-negative integer (milliseconds)")?;
    let directives = aws
        .get("CloudWatchMetrics")
        .and_then(|d| d.as_array())
        .filter(|d| !d.is_empty())
        .ok_or("_aws.CloudWatchMetrics is not a non-empty list")?;
    let name_ok = |s: &str| !s.is_empty() && s.chars().count() <= 255;
    let mut out = Vec::new();
    for d in directives {
        let ns = d
            .get("Namespace")
            .and_then(|n| n.as_str())
            .filter(|n| name_ok(n))
            .ok_or("a directive's Namespace is not 1-255 characters")?;
        let sets = d
            .get("Dimensions")
            .and_then(|x| x.as_array())
            .ok_or("a directive has no Dimensions list")?;
        let mut dims = Vec::new();
        for set in sets {
            let set = set.as_array().ok_or("a dimension set is not a list")?;
            if set.len() > 30 {
                return Err("a dimension set has more than 30 dimensions".into());
            }
            for name in set {
                let name = name.as_str().ok_or("a dimension name is not a string")?;
                if !root.get(name).is_some_and(|x| x.is_string()) {
                    return Err(format!(
                        "dimension {name:?} has no string value in the root"
                    ));
                }
                dims.push(name.to_string());
            }
        }
        let metrics = d
            .get("Metrics")
            .and_then(|x| x.as_array())
            .filter(|m| (1..=100).contains(&m.len()))
            .ok_or("a directive's Metrics is not a list of 1-100")?;
        for m in metrics {
            let name = m
                .get("Name")
                .and_then(|n| n.as_str())
                .filter(|n| name_ok(n))
                .ok_or("a metric's Name is not 1-255 characters")?;
            if let Some(u) = m.get("Unit") {
                let u = u.as_str().unwrap_or_default();
                if !UNITS.contains(&u) {
                    return Err(format!(
                        "metric {name:?} has unit {u:?}, not a CloudWatch unit"
                    ));
                }
            }
            let value_ok = match root.get(name) {
                Some(serde_json::Value::Number(_)) => true,
                Some(serde_json::Value::Array(a)) => {
                    a.len() <= 100 && a.iter().all(|x| x.is_number())
                }
                _ => false,
            };
            if !value_ok {
                return Err(format!("metric {name:?} has no number in the root"));
            }
            out.push((ns.to_string(), name.to_string(), dims.clone()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_emf_object_with_namespace_dimension_units_and_values() {
        let text = line(
            "prod-hub",
            &[(OBJECTS_COPIED, 3), (BYTES_COPIED, 5 * 1024 * 1024)],
            1_764_662_400_000,
        );
        assert!(!text.contains('\n'), "one line");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "_aws": {
                    "Timestamp": 1_764_662_400_000i64,
                    "CloudWatchMetrics": [{
                        "Namespace": "TransferHub",
                        "Dimensions": [["Stack"]],
                        "Metrics": [
                            {"Name": "ObjectsCopied", "Unit": "Count"},
                            {"Name": "BytesCopied", "Unit": "Bytes"}
                        ]
                    }]
                },
                "Stack": "prod-hub",
                "ObjectsCopied": 3,
                "BytesCopied": 5242880
            })
        );
        assert_eq!(
            check_line(&text).unwrap(),
            vec![
                (
                    "TransferHub".into(),
                    "ObjectsCopied".into(),
                    vec!["Stack".into()]
                ),
                (
                    "TransferHub".into(),
                    "BytesCopied".into(),
                    vec!["Stack".into()]
                ),
            ]
        );
        // Every metric the code emits makes a line the specification accepts.
        let all: Vec<(Metric, u64)> = ALL.iter().map(|m| (*m, 1)).collect();
        assert_eq!(check_line(&line("s", &all, 0)).unwrap().len(), ALL.len());
        let mut names: Vec<&str> = ALL.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "no metric twice");
        assert!(!names.contains(&STACK_DIMENSION));
    }

    #[test]
    fn lines_that_break_the_specification_are_named() {
        let ok = line("s", &[(OPEN_UPLOADS, 2)], 5);
        let mut v: serde_json::Value = serde_json::from_str(&ok).unwrap();
        let broken = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut x = v.clone();
            f(&mut x);
            check_line(&x.to_string()).unwrap_err()
        };
        assert!(broken(&|x| x["_aws"]["Timestamp"] = "now".into()).contains("Timestamp"));
        assert!(broken(&|x| x["_aws"]["Timestamp"] = 1.5.into()).contains("Timestamp"));
        assert!(
            broken(&|x| x["_aws"]["CloudWatchMetrics"][0]["Namespace"] = "".into())
                .contains("Namespace")
        );
        assert!(
            broken(&|x| {
                x.as_object_mut().unwrap().remove("Stack");
            })
            .contains("\"Stack\"")
        );
        assert!(broken(&|x| x["OpenUploads"] = "2".into()).contains("OpenUploads"));
        assert!(
            broken(&|x| x["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"] = "Files".into())
                .contains("Files")
        );
        assert!(
            broken(&|x| x["_aws"]["CloudWatchMetrics"][0]["Dimensions"] =
                serde_json::json!([(0..31).map(|i| format!("d{i}")).collect::<Vec<_>>()]))
            .contains("30")
        );
        assert!(check_line("not json").is_err());
        v["_aws"]["CloudWatchMetrics"][0]["Metrics"] = serde_json::json!([]);
        assert!(check_line(&v.to_string()).unwrap_err().contains("1-100"));
    }
}
