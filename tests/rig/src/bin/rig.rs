//! The demo's seeder.
//! - `rig seed HOST:PORT`: pushes sample images (random layers, one multi-arch) to a
//!   plain-HTTP registry and prints a selection list for them.
//! - `rig seed-objects ENDPOINT BUCKET DEST_BUCKET`: makes both buckets on an S3 endpoint and
//!   puts sample objects in the first: 300 small ones, one of 12 MiB (multipart at the demo's
//!   8 MiB threshold) and one with a content type and user metadata.
//! - `rig change-object ENDPOINT BUCKET KEY`: writes new bytes to one object.
//! - `rig head ENDPOINT BUCKET KEY`: prints an object's size, ETag, content type and metadata.

use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt as _;
use hub_rig::OciImage;

const USAGE: &str = "usage: rig seed HOST:PORT | rig seed-objects ENDPOINT BUCKET DEST_BUCKET | \
                     rig change-object ENDPOINT BUCKET KEY | rig head ENDPOINT BUCKET KEY";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["seed", registry] => seed_images(registry),
        ["seed-objects", endpoint, bucket, dest] => block_on(seed_objects(endpoint, bucket, dest)),
        ["change-object", endpoint, bucket, key] => block_on(change_object(endpoint, bucket, key)),
        ["head", endpoint, bucket, key] => block_on(head(endpoint, bucket, key)),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

fn seed_images(registry: &str) {
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

fn block_on(f: impl std::future::Future<Output = Result<(), String>>) {
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    if let Err(e) = rt.block_on(f) {
        eprintln!("rig: {e}");
        std::process::exit(1);
    }
}

async fn client(endpoint: &str) -> aws_sdk_s3::Client {
    let conf = hub_core::aws::sdk::loader()
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "testing", "testing", None, None, "rig",
        ))
        .load()
        .await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    )
}

async fn seed_objects(endpoint: &str, bucket: &str, dest: &str) -> Result<(), String> {
    let s3 = client(endpoint).await;
    for b in [bucket, dest] {
        s3.create_bucket()
            .bucket(b)
            .send()
            .await
            .map_err(|e| format!("creating bucket {b}: {}", aws_sdk_s3::Error::from(e)))?;
    }
    let mut puts = futures::stream::iter((0..300).map(|i| {
        let s3 = s3.clone();
        async move {
            let key = format!("data/{:02}/part-{i:04}.json", i % 10);
            let body = format!("{{\"record\": {i}, \"pad\": \"{}\"}}\n", "x".repeat(i % 97));
            s3.put_object()
                .bucket(bucket)
                .key(&key)
                .body(ByteStream::from(body.into_bytes()))
                .send()
                .await
                .map_err(|e| format!("putting {key}: {}", aws_sdk_s3::Error::from(e)))
        }
    }))
    .buffer_unordered(16);
    while let Some(r) = puts.next().await {
        r?;
    }
    let big: Vec<u8> = (0..12 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    s3.put_object()
        .bucket(bucket)
        .key("videos/big.bin")
        .body(ByteStream::from(big))
        .send()
        .await
        .map_err(|e| format!("putting videos/big.bin: {}", aws_sdk_s3::Error::from(e)))?;
    s3.put_object()
        .bucket(bucket)
        .key("reports/summary.html")
        .content_type("text/html; charset=utf-8")
        .cache_control("max-age=300")
        .metadata("owner", "data-team")
        .metadata("source-system", "demo")
        .body(ByteStream::from_static(b"<h1>summary</h1>\n"))
        .send()
        .await
        .map_err(|e| {
            format!(
                "putting reports/summary.html: {}",
                aws_sdk_s3::Error::from(e)
            )
        })?;
    eprintln!(
        "put 302 objects in s3://{bucket}: 300 small under data/, videos/big.bin (12 MiB), \
         reports/summary.html (with metadata)"
    );
    Ok(())
}

async fn change_object(endpoint: &str, bucket: &str, key: &str) -> Result<(), String> {
    let s3 = client(endpoint).await;
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(
            format!(
                "{{\"record\": \"changed\", \"at\": \"{}\"}}\n",
                chrono::Utc::now()
            )
            .into_bytes(),
        ))
        .send()
        .await
        .map_err(|e| format!("changing the object: {}", aws_sdk_s3::Error::from(e)))?;
    eprintln!("changed s3://{bucket}/{key}");
    Ok(())
}

async fn head(endpoint: &str, bucket: &str, key: &str) -> Result<(), String> {
    let s3 = client(endpoint).await;
    let h = s3
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| format!("s3://{bucket}/{key}: {}", aws_sdk_s3::Error::from(e)))?;
    println!("s3://{bucket}/{key}");
    println!("  size          {}", h.content_length().unwrap_or_default());
    println!("  etag          {}", h.e_tag().unwrap_or_default());
    println!("  content-type  {}", h.content_type().unwrap_or_default());
    println!("  cache-control {}", h.cache_control().unwrap_or_default());
    let mut meta: Vec<_> = h.metadata().into_iter().flatten().collect();
    meta.sort();
    for (k, v) in meta {
        println!("  x-amz-meta-{k} {v}");
    }
    Ok(())
}
