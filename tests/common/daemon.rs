//! Test support for the daemon process (`emostream run`): its environment for a test's topics,
//! one builder to start it, the guard that kills it when dropped, SIGTERM, waiting for its exit
//! and the CPU time it used.
#![allow(dead_code)]

use super::kafka::{brokers, Topics};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment for a daemon in `topics.group` reading `topics.input` and writing
/// `topics.output`/`topics.dlq` with `model`.
pub fn daemon_env(topics: &Topics, model: &Path) -> Vec<(String, String)> {
    vec![
        ("EMOSTREAM__KAFKA__BROKERS".into(), brokers()),
        ("EMOSTREAM__KAFKA__GROUP_ID".into(), topics.group.clone()),
        (
            "EMOSTREAM__KAFKA__INPUT_TOPICS".into(),
            topics.input.clone(),
        ),
        (
            "EMOSTREAM__KAFKA__OUTPUT_TOPIC".into(),
            topics.output.clone(),
        ),
        (
            "EMOSTREAM__KAFKA__DEAD_LETTER_TOPIC".into(),
            topics.dlq.clone(),
        ),
        ("EMOSTREAM__KAFKA__COMMIT_INTERVAL_MS".into(), "200".into()),
        ("EMOSTREAM__MODEL__DIR".into(), model.display().to_string()),
        ("EMOSTREAM__ADMIN__BIND".into(), "127.0.0.1:0".into()),
        (
            "EMOSTREAM__LOG__LEVEL".into(),
            "info,ort=warn,librdkafka=warn".into(),
        ),
    ]
}

/// A daemon child process that is killed when dropped, so a failing test leaves no daemon
/// behind (it would go on consuming, and log errors once the broker stops).
pub struct Daemon(pub Child);

impl std::ops::Deref for Daemon {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `emostream [--config FILE] run` with an environment, its log (stderr and stdout) inherited
/// or written to a file: `DaemonBuilder::new(&env).config(&file).log(&log).spawn()`.
pub struct DaemonBuilder<'a> {
    env: &'a [(String, String)],
    config: Option<&'a Path>,
    log: Option<&'a Path>,
}

impl<'a> DaemonBuilder<'a> {
    pub fn new(env: &'a [(String, String)]) -> DaemonBuilder<'a> {
        DaemonBuilder {
            env,
            config: None,
            log: None,
        }
    }

    /// `--config FILE`.
    pub fn config(mut self, file: &'a Path) -> DaemonBuilder<'a> {
        self.config = Some(file);
        self
    }

    /// Writes the daemon's stderr and stdout to `file` (created afresh).
    pub fn log(mut self, file: &'a Path) -> DaemonBuilder<'a> {
        self.log = Some(file);
        self
    }

    pub fn spawn(self) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_emostream"));
        if let Some(c) = self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.arg("run")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        if let Some(log) = self.log {
            let file = std::fs::File::create(log).unwrap();
            cmd.stdout(file.try_clone().unwrap()).stderr(file);
        }
        Daemon(cmd.spawn().expect("starting emostream run"))
    }
}

pub fn sigterm(child: &Child) {
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
}

/// Waits for a child to exit, killing it after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    None
}

/// CPU time (user + system, seconds) a process has used so far, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // Linux reports in USER_HZ, 100 on every x86-64 kernel.
    ticks / 100.0
}
