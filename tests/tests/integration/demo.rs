//! `scripts/demo`, as a newcomer runs it: both halves with their no-op re-runs, and nothing
//! it started is left running afterwards.

use std::path::Path;
use std::process::Command;

/// PIDs of live processes whose environment carries `marker` (children inherit it).
fn processes_with(marker: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    found
}

#[test]
fn the_demo_syncs_both_halves_and_leaves_nothing_running() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let bin_dir = hub_tests::transfer_hub_bin()
        .parent()
        .unwrap()
        .to_path_buf();
    let marker = format!("TRANSFER_HUB_DEMO_TEST={}", std::process::id());
    let (k, v) = marker.split_once('=').unwrap();
    let out = Command::new(root.join("scripts/demo"))
        .current_dir(root)
        .env("TRANSFER_HUB_BIN_DIR", &bin_dir)
        .env(k, v)
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the demo failed:\n{text}");
    // The summaries, in order: images copied 4 then 0; objects 302, 0, then the changed one.
    let copied: Vec<u64> = text
        .lines()
        .zip(text.lines().skip(1))
        .filter(|(head, _)| head.trim_start().starts_with("copied  skipped"))
        .map(|(_, counts)| counts.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        copied[..5],
        [4, 0, 302, 0, 1],
        "copied per run (images ×2, objects ×3), then the two status reports:\n{text}"
    );
    assert!(text.contains("x-amz-meta-owner data-team"), "{text}");
    assert!(
        !text.contains("\u{1b}["),
        "colour codes in output to a pipe:\n{text}"
    );
    let left = processes_with(&marker);
    assert!(left.is_empty(), "left running after the demo: {left:?}");
}
