//! The S3-compatible object store the registry tests run against (SeaweedFS, scripts/s3.sh):
//! the shared one every test may use, and a test's own on another port for a test that stops it.

use std::path::Path;
use std::process::Command;
use std::sync::Once;

fn script(args: &[&str], env: &[(&str, String)]) -> (bool, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/s3.sh"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("scripts/s3.sh");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The client environment (AWS_*) for the store whose S3 API is on `port`.
pub fn client_env(port: u16) -> Vec<(String, String)> {
    let (ok, out) = script(&["env"], &[("S3_PORT", port.to_string())]);
    assert!(ok, "scripts/s3.sh env: {out}");
    out.lines()
        .filter_map(|l| l.trim_start_matches("export ").split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The shared store's S3 port (scripts/test.sh starts it; S3_PORT overrides).
pub fn shared_port() -> u16 {
    std::env::var("S3_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(18333)
}

/// Starts the shared store if it is not running (idempotent) and points this process's S3
/// clients at it (once). Subprocesses inherit the environment.
pub fn shared_store() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        let (ok, out) = script(&["start"], &[("S3_PORT", shared_port().to_string())]);
        assert!(ok, "scripts/s3.sh start: {out}");
        for (k, v) in client_env(shared_port()) {
            std::env::set_var(k, v);
        }
    });
}

/// A store of a test's own, on `port` (10 apart from any other: the store uses the ports
/// around it), with its data in `dir`; stopped when dropped.
pub struct OwnStore {
    pub port: u16,
    dir: String,
}

impl OwnStore {
    pub fn start(port: u16, dir: &Path) -> OwnStore {
        let s = OwnStore {
            port,
            dir: dir.display().to_string(),
        };
        s.resume();
        s
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("S3_PORT", self.port.to_string()),
            ("S3_DIR", self.dir.clone()),
        ]
    }

    /// Stops it (its data stays).
    pub fn stop(&self) {
        let (ok, out) = script(&["stop"], &self.env());
        assert!(ok, "scripts/s3.sh stop: {out}");
    }

    /// Starts it again on the same data.
    pub fn resume(&self) {
        let (ok, out) = script(&["start"], &self.env());
        assert!(ok, "scripts/s3.sh start (port {}): {out}", self.port);
    }

    pub fn client_env(&self) -> Vec<(String, String)> {
        client_env(self.port)
    }
}

impl Drop for OwnStore {
    fn drop(&mut self) {
        let _ = script(&["stop"], &self.env());
    }
}
