//! Names the git commit the CLI is built from, for `transfer-hub --version`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    // Outside a git checkout (a source tarball) the version says so.
    let commit = git(&["rev-parse", "--short=12", "HEAD"])
        .map(|c| format!("commit {c}"))
        .unwrap_or_else(|| "commit unknown".to_string());
    println!("cargo:rustc-env=TRANSFER_HUB_COMMIT={commit}");
    // Built again when HEAD moves: a checkout changes HEAD, a commit changes the branch's
    // ref (loose, or in packed-refs).
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(branch);
    }
    for f in watch {
        // A path that does not exist would make cargo run this script on every build.
        if let Some(p) = git(&["rev-parse", "--git-path", &f])
            && std::path::Path::new(&p).exists()
        {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}
