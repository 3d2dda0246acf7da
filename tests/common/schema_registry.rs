//! The Schema Registry the wire-format tests run against (Apicurio Registry's Confluent-compatible
//! API, scripts/schema-registry.sh): the shared one, a test's own (kept on disk, so it can be
//! stopped and started again knowing every schema), its REST API, and the independent client —
//! confluent-kafka's own serdes (tests/schema_registry_client.py).
#![allow(dead_code)]

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

fn script(args: &[&str], env: &[(&str, String)]) -> (bool, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/schema-registry.sh"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("scripts/schema-registry.sh");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The shared registry's Confluent-compatible base URL (scripts/test.sh starts it; started
/// here when it is not running).
pub fn shared_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(u) = std::env::var("EMOSTREAM_TEST_SCHEMA_REGISTRY") {
            return u;
        }
        let (ok, out) = script(&["start"], &[]);
        assert!(ok, "scripts/schema-registry.sh start: {out}");
        script(&["url"], &[]).1.trim().to_string()
    })
    .clone()
}

/// The Python with confluent-kafka's serdes.
fn python() -> String {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        if let Ok(p) = std::env::var("EMOSTREAM_SR_PYTHON") {
            return p;
        }
        let (ok, out) = script(&["client"], &[]);
        assert!(ok, "scripts/schema-registry.sh client: {out}");
        out.lines().last().unwrap_or_default().trim().to_string()
    })
    .clone()
}

/// Runs tests/schema_registry_client.py with `args`: success, stdout, stderr. Killed (and
/// failed, saying so) after `limit`: a client stuck on a request must fail its test, not
/// hold CI for as long as the socket lasts.
pub fn client_within(args: &[&str], limit: Duration) -> (bool, String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schema_registry_client.py");
    let mut child = Command::new(python())
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the confluent-kafka client");
    fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    }
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let status = super::daemon::wait_exit(&mut child, limit);
    let _ = child.wait();
    let (out, mut err) = (out.join().unwrap(), err.join().unwrap());
    if status.is_none() {
        err.push_str(&format!(
            "\nthe client ({}) was killed after {} s",
            args[0],
            limit.as_secs()
        ));
    }
    (status.is_some_and(|s| s.success()), out, err)
}

/// [`client_within`] three minutes.
pub fn client(args: &[&str]) -> (bool, String, String) {
    client_within(args, Duration::from_secs(180))
}

/// The last lines of the log of the registry on `port` (scripts/schema-registry.sh keeps it),
/// for a failure message: what the registry was doing when a client waited on it.
pub fn registry_log_tail(port: u16) -> String {
    let log = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!(".cache/apicurio/run-{port}/registry.log"));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "{} (last lines):\n{}",
        log.display(),
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

/// A call to the registry's REST API: the HTTP status and the body.
pub fn rest(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-w", "\n%{http_code}", "-X", method, url]);
    if let Some(b) = body {
        c.args([
            "-H",
            "Content-Type: application/vnd.schemaregistry.v1+json",
            "-d",
            b,
        ]);
    }
    let out = c.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The id of the latest schema under `subject`.
pub fn latest_id(url: &str, subject: &str) -> i64 {
    let (code, body) = rest(
        "GET",
        &format!("{url}/subjects/{subject}/versions/latest"),
        None,
    );
    assert_eq!(code, 200, "{subject}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["id"].as_i64().unwrap()
}

/// A registry of a test's own on `port`, its schemas kept in `dir` (a restart keeps them);
/// stopped when dropped.
pub struct OwnRegistry {
    pub port: u16,
    dir: String,
}

impl OwnRegistry {
    pub fn start(port: u16, dir: &Path) -> OwnRegistry {
        let r = OwnRegistry {
            port,
            dir: dir.display().to_string(),
        };
        r.resume();
        r
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SR_PORT", self.port.to_string()),
            ("SR_DATA", self.dir.clone()),
        ]
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/apis/ccompat/v7", self.port)
    }

    /// Stops it (its schemas stay on disk).
    pub fn stop(&self) {
        let (ok, out) = script(&["stop"], &self.env());
        assert!(ok, "scripts/schema-registry.sh stop: {out}");
    }

    /// Starts it again on the same schemas.
    pub fn resume(&self) {
        let (ok, out) = script(&["start"], &self.env());
        assert!(
            ok,
            "scripts/schema-registry.sh start (port {}): {out}",
            self.port
        );
    }
}

impl Drop for OwnRegistry {
    fn drop(&mut self) {
        let _ = script(&["stop"], &self.env());
    }
}
