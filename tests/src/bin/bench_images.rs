//! Image benchmarks (not tests): prints a table of scenario, us, peer, ratio, target.
//! 1. No-op sync of N tags already in sync: `transfer-hub images sync` vs `skopeo sync` of
//!    the same tags, and vs the bound of one manifest HEAD per tag on each registry.
//! 2. Cold copy of an image with 4×256 MiB layers: `transfer-hub` vs a bare `skopeo copy`.
//!
//! Run it through `scripts/bench-images` (release build). `BENCH_TAGS` (default 1000) and
//! `BENCH_LAYER_MIB` (default 256) scale it down for a quick look.

use futures::stream::{self, StreamExt};
use hub_tests::{OciImage, RegistryServer, require, transfer_hub_bin};
use std::process::Command;
use std::time::{Duration, Instant};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn timed(mut c: Command) -> Duration {
    let t = Instant::now();
    let out = c.output().expect("command runs");
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "{:?} failed:\n{}\n{}",
        c,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn sync_cmd(src: &str, dst: &str, list: &std::path::Path, state: &std::path::Path) -> Command {
    let mut c = Command::new(transfer_hub_bin());
    c.args([
        "images",
        "sync",
        "--source",
        src,
        "--dest",
        dst,
        "--list",
        list.to_str().unwrap(),
        "--output",
        "json",
        "--state",
        state.to_str().unwrap(),
    ]);
    c
}

/// The HEAD bound: every tag's manifest HEADed once on each registry, 32 at once.
fn head_bound(src: &RegistryServer, dst: &RegistryServer, tags: usize) -> Duration {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap();
        let urls: Vec<String> = [&src.addr, &dst.addr]
            .iter()
            .flat_map(|a| (0..tags).map(move |i| format!("http://{a}/v2/app/manifests/t{i}")))
            .collect();
        let t = Instant::now();
        let ok = stream::iter(urls)
            .map(|u| {
                let c = client.clone();
                async move {
                    c.head(u)
                        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
                        .send()
                        .await
                        .map(|r| r.status().is_success())
                        .unwrap_or(false)
                }
            })
            .buffer_unordered(32)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        assert_eq!(ok, 2 * tags);
        t.elapsed()
    })
}

struct Row {
    scenario: String,
    us: Duration,
    peer_name: &'static str,
    peer: Duration,
    target: &'static str,
}

fn main() {
    let tags = env_num("BENCH_TAGS", 1000);
    let layer_mib = env_num("BENCH_LAYER_MIB", 256);
    let work = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();

    // 1. No-op sync of `tags` tags.
    eprintln!("seeding {tags} tags on two registries…");
    let (src, dst) = (RegistryServer::start(), RegistryServer::start());
    let img = OciImage::single(&[64 * 1024, 16 * 1024]);
    img.push(&format!("{}/app:t0", src.addr), None);
    img.push(&format!("{}/app:t0", dst.addr), None);
    for i in 1..tags {
        src.retag("app", "t0", &format!("t{i}"));
        dst.retag("app", "t0", &format!("t{i}"));
    }
    let list = work.path().join("list.txt");
    std::fs::write(&list, "app:ALL_TAGS\n").unwrap();
    let state = work.path().join("state.db");
    let writes_before = dst.write_requests("/v2/").len();
    let ours = median(
        (0..3)
            .map(|_| timed(sync_cmd(&src.addr, &dst.addr, &list, &state)))
            .collect(),
    );
    assert_eq!(
        dst.write_requests("/v2/").len(),
        writes_before,
        "a no-op run wrote to the destination"
    );
    let mut sk = Command::new(require("skopeo"));
    sk.args([
        "sync",
        "--src",
        "docker",
        "--dest",
        "docker",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--retry-times",
        "0",
    ])
    .arg(format!("{}/app", src.addr))
    .arg(&dst.addr);
    let skopeo_sync = timed(sk);
    let bound = median((0..3).map(|_| head_bound(&src, &dst, tags)).collect());
    rows.push(Row {
        scenario: format!("no-op sync, {tags} tags"),
        us: ours,
        peer_name: "skopeo sync",
        peer: skopeo_sync,
        target: "≥ 4× faster",
    });
    rows.push(Row {
        scenario: format!("no-op sync, {tags} tags"),
        us: ours,
        peer_name: "2 HEADs/tag bound",
        peer: bound,
        target: "≤ 1.5× bound",
    });
    drop((src, dst));

    // 2. Cold copy of 4 × layer_mib MiB.
    eprintln!("building and pushing a 4×{layer_mib} MiB image…");
    let src = RegistryServer::start();
    let big = OciImage::single(&[layer_mib << 20; 4]);
    big.push(&format!("{}/big:1", src.addr), None);
    drop(big);
    let list = work.path().join("big.txt");
    std::fs::write(&list, "big:1\n").unwrap();
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for trial in 0..2 {
        eprintln!("cold copy trial {}…", trial + 1);
        let d1 = RegistryServer::start();
        let mut c = Command::new(require("skopeo"));
        c.args([
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg(format!("docker://{}/big:1", src.addr))
        .arg(format!("docker://{}/big:1", d1.addr));
        bare.push(timed(c));
        drop(d1);
        let d2 = RegistryServer::start();
        let st = work.path().join(format!("cold-{trial}.db"));
        ours.push(timed(sync_cmd(&src.addr, &d2.addr, &list, &st)));
        drop(d2);
    }
    rows.push(Row {
        scenario: format!("cold copy, 4×{layer_mib} MiB"),
        us: median(ours),
        peer_name: "bare skopeo copy",
        peer: median(bare),
        target: "≤ 1.05× (overhead ≤ 5%)",
    });

    println!("| scenario | us | peer | peer time | us/peer | target |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.3} s | {} | {:.3} s | {:.2}× ({:.1}× faster) | {} |",
            r.scenario,
            r.us.as_secs_f64(),
            r.peer_name,
            r.peer.as_secs_f64(),
            r.us.as_secs_f64() / r.peer.as_secs_f64(),
            r.peer.as_secs_f64() / r.us.as_secs_f64(),
            r.target
        );
    }
}
