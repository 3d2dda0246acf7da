//! The model registry in object storage, against a real S3-compatible server (SeaweedFS, started
//! by scripts/s3.sh), real broker and real ONNX Runtime: immutable versions, the ACTIVE pointer
//! changed only by conditional writes (two racing publishers: exactly one wins, the other names
//! the conflict), versions downloaded and verified before use (a tampered model.onnx is refused
//! on swap and on start); daemons started from the bucket swap when `train publish --activate`
//! moves the pointer, losing nothing of a live stream, and keep labelling while the store is down.

mod common;

use common::daemon::{daemon_env, sigterm, wait_exit, DaemonBuilder};
use common::http::{free_port, http_get, metric, wait_http};
use common::kafka::{producer, read_until, send_all, versions_only_move_forward, Record, Topics};
use common::s3::{shared_port, shared_store, OwnStore};
use emostream::model::object_registry::ObjectRegistry;
use emostream::model::registry::Expect;
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// `train publish` (the binary) of `model` into `url` as `version`, with the store's client
/// environment: whether it succeeded, and what it printed.
fn train_publish(
    env: &[(String, String)],
    model: &Path,
    url: &str,
    version: &str,
    activate: bool,
) -> (bool, String) {
    let mut args = vec![
        "publish",
        "--model",
        model.to_str().unwrap(),
        "--registry",
        url,
        "--version",
        version,
    ];
    if activate {
        args.push("--activate");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_train"))
        .args(&args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("train publish");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A daemon on `topics` serving from the registry at `url` (versions cached in `cache`, the
/// pointer polled every 300 ms), its admin API open on loopback `port`, the store's client
/// environment `store`.
fn registry_daemon_env(
    topics: &Topics,
    fallback: &Path,
    url: &str,
    cache: &Path,
    port: u16,
    store: &[(String, String)],
) -> Vec<(String, String)> {
    let mut env = daemon_env(topics, fallback);
    env.retain(|(k, _)| k != "EMOSTREAM__ADMIN__BIND");
    for (k, v) in [
        ("EMOSTREAM__ADMIN__BIND", format!("127.0.0.1:{port}")),
        (
            "EMOSTREAM__ADMIN__ALLOW_UNAUTHENTICATED_LOOPBACK",
            "true".into(),
        ),
        ("EMOSTREAM__REGISTRY__ROOT", url.to_string()),
        (
            "EMOSTREAM__REGISTRY__CACHE_DIR",
            cache.display().to_string(),
        ),
        ("EMOSTREAM__REGISTRY__POLL_INTERVAL_MS", "300".into()),
    ] {
        env.push((k.to_string(), v));
    }
    env.extend(store.iter().cloned());
    env
}

fn active_version(port: u16) -> String {
    let (_, body) = http_get(port, "/admin/model").expect("GET /admin/model");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["active"]["version"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn scrape(port: u16, name: &str) -> Option<f64> {
    let page = http_get(port, "/metrics").map(|r| r.1).unwrap_or_default();
    metric(&page, name)
}

/// Produces comments `c0` … `c{n-1}` to `topic` at about `rate` a second, on a thread.
fn stream(topic: &str, n: usize, rate: usize) -> std::thread::JoinHandle<()> {
    let topic = topic.to_string();
    let texts = common::texts("test", 500);
    std::thread::spawn(move || {
        let p = producer();
        let per_tick = (rate / 10).max(1);
        for chunk in (0..n).collect::<Vec<_>>().chunks(per_tick) {
            let recs: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    let body =
                        serde_json::json!({"id": format!("c{i}"), "text": texts[i % texts.len()]});
                    (
                        Some(format!("user{}", i % 31)),
                        body.to_string().into_bytes(),
                        None,
                    )
                })
                .collect();
            send_all(&p, &topic, &recs);
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

fn event(r: &Record) -> Value {
    serde_json::from_slice(&r.payload).unwrap()
}

/// Reads the output until every id `c0` … `c{n-1}` arrived, and checks nothing is missing or
/// dead-lettered and that per source partition the model version only moves forward through
/// `order`. Returns the versions seen.
fn every_comment_once_and_versions_only_forward(
    topics: &Topics,
    n: usize,
    order: &[&str],
) -> HashSet<String> {
    let id = |r: &Record| event(r)["id"].as_str().unwrap().to_string();
    let got = read_until(&topics.output, Duration::from_secs(180), |r| {
        r.iter().map(id).collect::<HashSet<_>>().len() >= n
    });
    let ids: HashSet<String> = got.iter().map(id).collect();
    let missing: Vec<usize> = (0..n).filter(|i| !ids.contains(&format!("c{i}"))).collect();
    assert!(
        missing.is_empty(),
        "{} ids missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    let dead = read_until(&topics.dlq, Duration::from_secs(2), |_| false);
    assert!(dead.is_empty(), "{} dead-lettered", dead.len());
    versions_only_move_forward(&got, order)
}

/// Every path under `dir` (directories and files), depth first.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
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
    common::s3::shared_store();
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
    // candidate against the active version: exactly one wins, the other names the conflict.
    // Several rounds, both writers released at once: in some the loser read the pointer before
    // the winner wrote it, so only the store's conditional write (If-Match → 412) stops it.
    reg.set_active("1.0.0", Expect::Names(None)).unwrap();
    assert_eq!(reg.active().unwrap().as_deref(), Some("1.0.0"));
    let racers: Vec<ObjectRegistry> = (0..2)
        .map(|i| ObjectRegistry::open(&url, &tmp.path().join(format!("cache-{i}"))).unwrap())
        .collect();
    let mut current = "1.0.0".to_string();
    let mut stopped_by_the_store = 0;
    for round in 0..6 {
        let candidates = [format!("2.{round}.0"), format!("2.{round}.1")];
        for v in &candidates {
            reg.publish(&model, Some(v)).unwrap();
        }
        let gate = std::sync::Barrier::new(2);
        let results: Vec<anyhow::Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = racers
                .iter()
                .zip(&candidates)
                .map(|(r, v)| {
                    let (gate, judged) = (&gate, current.as_str());
                    s.spawn(move || {
                        gate.wait();
                        r.set_active(v, Expect::Names(Some(judged)))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: exactly one wins: {results:?}");
        let lost = format!(
            "{:#}",
            results.iter().find_map(|r| r.as_ref().err()).unwrap()
        );
        assert!(
            lost.contains("another publisher") && lost.contains("nothing changed"),
            "{lost}"
        );
        if lost.contains("changed while activating") {
            stopped_by_the_store += 1;
        }
        let active = reg.active().unwrap().unwrap();
        assert!(candidates.contains(&active), "round {round}: {active}");
        eprintln!("race round {round}: {active} won; the loser: {lost}");
        current = active;
    }
    assert!(
        stopped_by_the_store > 0,
        "no round reached the conditional write: the test did not race"
    );

    // Downloaded once, verified, served from the cache.
    let dir = reg.resolve("1.1.0").unwrap();
    assert!(dir.join("model.onnx").is_file() && dir.join("model.json").is_file());
    emostream::model::dir::ModelDir::load(&dir, true).unwrap();
    // A cached copy cut short (a kill during eviction) is fetched again, not refused for ever.
    std::fs::remove_file(dir.join("model.onnx")).unwrap();
    assert_eq!(reg.resolve("1.1.0").unwrap(), dir);
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
    let cached: Vec<_> = walk(&tmp.path().join("cache-fresh"))
        .into_iter()
        .filter(|p| p.ends_with("1.2.0"))
        .collect();
    assert!(
        cached.is_empty(),
        "a version that fails verification is not cached: {cached:?}"
    );
    let missing = format!("{:#}", fresh.resolve("9.9.9").unwrap_err());
    assert!(missing.contains("not in the registry"), "{missing}");
}

#[test]
fn a_version_published_with_activate_is_polled_and_swapped_in_losing_nothing_of_a_200_per_second_stream(
) {
    shared_store();
    let store = common::s3::client_env(shared_port());
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let url = format!("s3://models/{}", common::kafka::unique("fleet"));
    let (ok, out) = train_publish(&store, &model, &url, "1.0.0", true);
    assert!(ok && out.contains("now names 1.0.0"), "{out}");

    let topics = Topics::new(3);
    let port = free_port();
    let env = registry_daemon_env(
        &topics,
        &model,
        &url,
        &tmp.path().join("cache"),
        port,
        &store,
    );
    let mut daemon = DaemonBuilder::new(&env).spawn();
    wait_http(port, "/readyz", Duration::from_secs(60), |c, _| c == 200);
    assert_eq!(active_version(port), "1.0.0", "served from the bucket");

    const N: usize = 3000;
    let loader = stream(&topics.input, N, 200);
    read_until(&topics.output, Duration::from_secs(60), |r| r.len() >= 600);
    let (ok, out) = train_publish(&store, &model, &url, "2.0.0", true);
    assert!(ok && out.contains("now names 2.0.0"), "{out}");
    let published = Instant::now();
    while active_version(port) != "2.0.0" {
        assert!(
            published.elapsed() < Duration::from_secs(30),
            "the daemon never swapped to 2.0.0"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = published.elapsed();
    loader.join().unwrap();
    let seen = every_comment_once_and_versions_only_forward(&topics, N, &["1.0.0", "2.0.0"]);
    assert_eq!(seen.len(), 2, "both versions labelled: {seen:?}");
    println!(
        "object-store registry: 2.0.0 served {:.2} s after `train publish --activate` returned (poll interval 0.3 s)",
        took.as_secs_f64()
    );
    sigterm(&daemon);
    assert!(wait_exit(&mut daemon, Duration::from_secs(60))
        .expect("daemon exit")
        .success());
}

#[test]
fn a_tampered_model_in_the_bucket_is_refused_on_swap_and_on_start() {
    shared_store();
    let store = common::s3::client_env(shared_port());
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let url = format!("s3://models/{}", common::kafka::unique("tampered"));
    assert!(train_publish(&store, &model, &url, "1.0.0", true).0);
    assert!(train_publish(&store, &model, &url, "2.0.0", false).0);
    // Someone with write access to the bucket replaces 2.0.0's model after it was published.
    put_raw(
        &url,
        "versions/2.0.0/model.onnx",
        b"not the published model",
    );

    let topics = Topics::new(2);
    let port = free_port();
    let env = registry_daemon_env(
        &topics,
        &model,
        &url,
        &tmp.path().join("cache-a"),
        port,
        &store,
    );
    let mut daemon = DaemonBuilder::new(&env).spawn();
    wait_http(port, "/readyz", Duration::from_secs(60), |c, _| c == 200);
    ObjectRegistry::open(&url, &tmp.path().join("cache-test"))
        .unwrap()
        .set_active("2.0.0", Expect::Unchanged)
        .unwrap();
    let asked = Instant::now();
    let rejected = |port| {
        let page = http_get(port, "/metrics").map(|r| r.1).unwrap_or_default();
        page.lines().any(|l| {
            l.starts_with("emostream_model_swaps_total")
                && l.contains("result=\"rejected\"")
                && l.contains("trigger=\"pointer\"")
        })
    };
    while !rejected(port) {
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "the tampered version was never refused"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(active_version(port), "1.0.0", "the old model keeps serving");
    let loader = stream(&topics.input, 200, 400);
    loader.join().unwrap();
    let seen = every_comment_once_and_versions_only_forward(&topics, 200, &["1.0.0"]);
    assert_eq!(seen.len(), 1);
    sigterm(&daemon);
    assert!(wait_exit(&mut daemon, Duration::from_secs(60))
        .expect("daemon exit")
        .success());

    // A replica starting now (nothing cached) refuses to serve it, naming the reason.
    let log = tmp.path().join("start.log");
    let env = registry_daemon_env(
        &topics,
        &model,
        &url,
        &tmp.path().join("cache-b"),
        free_port(),
        &store,
    );
    let mut refused = DaemonBuilder::new(&env).log(&log).spawn();
    let status = wait_exit(&mut refused, Duration::from_secs(60)).expect("exits");
    assert!(!status.success());
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("2.0.0") && said.contains("sha256"),
        "the start-up error names the version and the check: {said}"
    );
}

#[test]
fn with_the_store_stopped_mid_stream_labelling_goes_on_and_a_swap_after_it_returns_works() {
    let tmp = tempfile::tempdir().unwrap();
    // Its own store: this test stops it. (Ports 10 away from the shared one's.)
    let own = OwnStore::start(shared_port() + 10, &tmp.path().join("s3"));
    let store = own.client_env();
    let model = common::tiny_model_dir(tmp.path());
    let url = "s3://models/outage";
    assert!(train_publish(&store, &model, url, "1.0.0", true).0);

    let topics = Topics::new(3);
    let port = free_port();
    let env = registry_daemon_env(
        &topics,
        &model,
        url,
        &tmp.path().join("cache"),
        port,
        &store,
    );
    let mut daemon = DaemonBuilder::new(&env).spawn();
    wait_http(port, "/readyz", Duration::from_secs(60), |c, _| c == 200);
    const N: usize = 4000;
    let loader = stream(&topics.input, N, 200);
    read_until(&topics.output, Duration::from_secs(60), |r| r.len() >= 400);

    own.stop();
    let stopped = Instant::now();
    while scrape(port, "emostream_registry_reachable") != Some(0.0) {
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "the unreachable store never showed in /metrics"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let labelled = scrape(port, "emostream_labelled_total").unwrap_or(0.0);
    // Serving does not depend on the store: labels keep flowing and the daemon stays ready.
    while scrape(port, "emostream_labelled_total").unwrap_or(0.0) < labelled + 600.0 {
        assert!(
            stopped.elapsed() < Duration::from_secs(60),
            "labelling stopped with the store"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ready, body) = http_get(port, "/readyz").unwrap();
    assert_eq!(ready, 200, "{body}");
    let down_for = stopped.elapsed();

    own.resume();
    let (ok, out) = train_publish(&store, &model, url, "2.0.0", true);
    assert!(ok, "{out}");
    let published = Instant::now();
    while active_version(port) != "2.0.0" {
        assert!(
            published.elapsed() < Duration::from_secs(30),
            "no swap after the store came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let swapped_after = published.elapsed();
    assert_eq!(scrape(port, "emostream_registry_reachable"), Some(1.0));
    loader.join().unwrap();
    let seen = every_comment_once_and_versions_only_forward(&topics, N, &["1.0.0", "2.0.0"]);
    assert_eq!(seen.len(), 2, "{seen:?}");
    println!(
        "store down {:.1} s while the stream went on; after it returned, 2.0.0 served {:.2} s after `train publish --activate` returned",
        down_for.as_secs_f64(),
        swapped_after.as_secs_f64()
    );
    sigterm(&daemon);
    assert!(wait_exit(&mut daemon, Duration::from_secs(60))
        .expect("daemon exit")
        .success());
}
