//! The command lines tell the truth about themselves: every binary answers `--version`; a flag
//! that would be silently ignored is refused; `train publish` refuses an announcement it could
//! not sign before it publishes or activates anything.

mod common;

use std::process::Command;

fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_binary_answers_version_with_the_crate_version() {
    for bin in [
        env!("CARGO_BIN_EXE_emostream"),
        env!("CARGO_BIN_EXE_train"),
        env!("CARGO_BIN_EXE_emostream-loadgen"),
    ] {
        let (ok, out) = run(bin, &["--version"], &[]);
        assert!(ok, "{bin} --version: {out}");
        assert!(
            out.trim().ends_with(env!("CARGO_PKG_VERSION")),
            "{bin}: {out}"
        );
    }
}

#[test]
fn model_flag_where_a_registry_decides_the_model_is_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("registry");
    let model = common::shipped_model_dir();
    let root_s = root.to_str().unwrap();
    for cmd in ["serve", "classify"] {
        let (ok, out) = run(
            env!("CARGO_BIN_EXE_emostream"),
            &[cmd, "--model", model.to_str().unwrap()],
            &[("EMOSTREAM__REGISTRY__ROOT", root_s)],
        );
        assert!(!ok, "{cmd}: {out}");
        assert!(
            out.contains("conflicts with config key registry.root"),
            "{cmd}: {out}"
        );
    }
}

#[test]
fn publish_with_an_unsignable_announcement_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("registry");
    let model = common::shipped_model_dir();
    let (ok, out) = run(
        env!("CARGO_BIN_EXE_train"),
        &[
            "publish",
            "--model",
            model.to_str().unwrap(),
            "--registry",
            root.to_str().unwrap(),
            "--activate",
            "--control-topic",
            "emostream-control",
        ],
        &[],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("registry.control_key_file"), "{out}");
    assert!(!root.join("ACTIVE").exists(), "activated: {out}");
    let published = std::fs::read_dir(root.join("versions"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(published, 0, "published: {out}");
}
