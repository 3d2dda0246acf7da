//! The model registry in object storage, against a real S3-compatible server (SeaweedFS, started
//! by scripts/s3.sh): immutable versions, the ACTIVE pointer changed only by conditional writes
//! (two racing publishers: exactly one wins, the other names the conflict), versions downloaded
//! and verified before use (a tampered model.onnx is refused).

mod common;

use emostream::model::object_registry::{Expect, ObjectRegistry};
use std::path::Path;
use std::process::Command;

/// Starts the shared test store (once; scripts/s3.sh start is idempotent) and points this
/// process's S3 client at it.
fn s3() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/s3.sh"))
        .arg("start")
        .output()
        .expect("scripts/s3.sh");
    assert!(
        out.status.success(),
        "scripts/s3.sh start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = Command::new(root.join("scripts/s3.sh"))
        .arg("env")
        .output()
        .unwrap();
    for line in String::from_utf8(env.stdout).unwrap().lines() {
        if let Some((k, v)) = line.trim_start_matches("export ").split_once('=') {
            std::env::set_var(k, v);
        }
    }
}

fn put_raw(reg_url: &str, key: &str, body: &[u8]) {
    // A plain overwrite, as someone with write access to the bucket could do.
    use object_store::{aws::AmazonS3Builder, ObjectStoreExt};
    let bucket = reg_url
        .trim_start_matches("s3://")
        .split('/')
        .next()
        .unwrap();
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .unwrap();
    let prefix = reg_url
        .trim_start_matches("s3://")
        .split_once('/')
        .unwrap()
        .1;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(store.put(
        &object_store::path::Path::from(format!("{prefix}/{key}")),
        body.to_vec().into(),
    ))
    .unwrap();
}

#[test]
fn versions_are_immutable_activation_is_conditional_and_a_tampered_model_is_refused() {
    s3();
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let url = format!("s3://models/{}", common::kafka::unique("registry"));
    let reg = ObjectRegistry::open(&url, &tmp.path().join("cache")).unwrap();
    assert_eq!(reg.active().unwrap(), None);

    // Publish three versions; a version is never written twice.
    for v in ["1.0.0", "1.1.0", "1.2.0"] {
        let (name, at) = reg.publish(&model, Some(v)).unwrap();
        assert_eq!(name, v);
        assert!(at.ends_with(&format!("versions/{v}")), "{at}");
    }
    let again = format!("{:#}", reg.publish(&model, Some("1.0.0")).unwrap_err());
    assert!(again.contains("already exists"), "{again}");

    // Activate the first, then two publishers race to replace it, each having judged its
    // candidate against 1.0.0: exactly one wins, the other names the conflict.
    reg.set_active("1.0.0", Expect::Names(None)).unwrap();
    assert_eq!(reg.active().unwrap().as_deref(), Some("1.0.0"));
    let results: Vec<anyhow::Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = ["1.1.0", "1.2.0"]
            .into_iter()
            .map(|v| {
                let url = url.clone();
                let cache = tmp.path().join(format!("cache-{v}"));
                s.spawn(move || {
                    let r = ObjectRegistry::open(&url, &cache).unwrap();
                    r.set_active(v, Expect::Names(Some("1.0.0")))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(won.len(), 1, "exactly one publisher wins: {results:?}");
    let lost = format!(
        "{:#}",
        results.iter().find_map(|r| r.as_ref().err()).unwrap()
    );
    assert!(
        lost.contains("another publisher") && lost.contains("nothing changed"),
        "{lost}"
    );
    let active = reg.active().unwrap().unwrap();
    assert!(["1.1.0", "1.2.0"].contains(&active.as_str()), "{active}");
    eprintln!("race: {active} won; the loser: {lost}");

    // Downloaded once, verified, served from the cache.
    let dir = reg.resolve("1.1.0").unwrap();
    assert!(dir.join("model.onnx").is_file() && dir.join("model.json").is_file());
    emostream::model::dir::ModelDir::load(&dir, true).unwrap();

    // A model.onnx changed in the bucket is refused by a replica that has not cached it.
    put_raw(
        &url,
        "versions/1.2.0/model.onnx",
        b"not the published model",
    );
    let fresh = ObjectRegistry::open(&url, &tmp.path().join("cache-fresh")).unwrap();
    let e = format!("{:#}", fresh.resolve("1.2.0").unwrap_err());
    assert!(e.contains("sha256"), "{e}");
    assert!(
        !tmp.path().join("cache-fresh/1.2.0").exists(),
        "a version that fails verification is not cached"
    );
    let missing = format!("{:#}", fresh.resolve("9.9.9").unwrap_err());
    assert!(missing.contains("not in the registry"), "{missing}");
}
