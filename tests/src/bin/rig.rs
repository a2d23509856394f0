//! `rig seed HOST:PORT`: pushes the demo's sample images (random layers, one multi-arch)
//! to a plain-HTTP registry and prints a selection list for them.

use hub_tests::OciImage;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(cmd), Some(registry)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: rig seed HOST:PORT");
        std::process::exit(2);
    };
    if cmd != "seed" {
        eprintln!("unknown command {cmd:?}; expected `seed`");
        std::process::exit(2);
    }
    let mut list = String::from("# transfer-hub demo selection list\n");
    for (repo, tag) in [
        ("demo/web", "1.0"),
        ("demo/web", "1.1"),
        ("demo/worker", "latest"),
    ] {
        OciImage::single(&[256 * 1024, 64 * 1024]).push(&format!("{registry}/{repo}:{tag}"), None);
        eprintln!("pushed {registry}/{repo}:{tag}");
    }
    OciImage::multi_arch(&[128 * 1024]).push(&format!("{registry}/demo/multi:latest"), None);
    eprintln!("pushed {registry}/demo/multi:latest (linux/amd64 + linux/arm64)");
    list.push_str("demo/web:ALL_TAGS\ndemo/worker, demo/multi:latest\n");
    print!("{list}");
}
