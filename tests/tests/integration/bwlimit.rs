//! `objects sync --bwlimit` against moto's S3 on 127.0.0.1: one rate for every body the run
//! streams. The limit is a floor under the time (the bytes cannot arrive faster), which is
//! what these tests check; how much faster an unlimited run is goes to the output, not to
//! an assertion.

use super::objects::{S3, counts, data};
use std::time::{Duration, Instant};

#[test]
fn a_bandwidth_limit_holds_streamed_bytes_to_its_rate() {
    let s3 = S3::start(&["src", "dst"]);
    let body = data(64 << 20, 7);
    s3.put("src", "big.bin", &body);
    let timed = |dst: &str, extra: &[&str]| {
        let mut args = vec!["--copy-mode", "stream"];
        args.extend_from_slice(extra);
        let t = Instant::now();
        let run = s3.sync("s3://src/", dst, None, &args);
        let took = t.elapsed();
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        assert_eq!(counts(&run.json()), (1, 0, 0));
        took
    };
    let free = timed("s3://dst/free/", &[]);
    let limited = timed("s3://dst/limited/", &["--bwlimit", "16M"]);
    eprintln!("64 MiB streamed: {free:.1?} without a limit, {limited:.1?} at --bwlimit 16M");
    // 64 MiB at 16 MiB/s: 4 s, less one burst.
    assert!(limited >= Duration::from_millis(3500), "{limited:?}");
    assert!(free < limited, "{free:?} vs {limited:?}");
    assert_eq!(s3.get("dst", "limited/big.bin").unwrap(), body);

    // Parts share the one bucket: the same object in 8 parts, 8 at once, is no faster.
    let parts = timed(
        "s3://dst/parts/",
        &[
            "--bwlimit",
            "16M",
            "--multipart-threshold",
            "8M",
            "--part-size",
            "8M",
        ],
    );
    assert!(parts >= Duration::from_millis(3500), "{parts:?}");
    eprintln!("in 8 parts at once: {parts:.1?}");
}

#[test]
fn a_bad_rate_stops_the_run_naming_the_flag_and_the_value() {
    let s3 = S3::start(&["src", "dst"]);
    s3.put("src", "a", b"a");
    for (rate, want) in [("0", "zero"), ("fast", "fast"), ("-1M", "-1M")] {
        let arg = format!("--bwlimit={rate}");
        let run = s3.sync("s3://src/", "s3://dst/", None, &[arg.as_str()]);
        assert_eq!(run.code, 2, "{rate}: {}\n{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("--bwlimit") && run.stderr.contains(want),
            "{rate}: {}",
            run.stderr
        );
    }
    assert!(s3.keys("dst").is_empty());
}
