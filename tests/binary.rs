//! The `instanceserver` binary, run as a user would run it.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_instanceserver"));
    // Keep the environment from changing what the flags say.
    for (k, _) in std::env::vars() {
        if k.starts_with("INSTANCESERVER_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn help_documents_every_flag() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--scene",
        "--tick-hz",
        "--substeps",
        "--catch-up-steps-max",
        "--entities-max",
        "--scene-entities-max",
        "--scene-file-bytes-max",
        "--status-interval-ms",
        "--exit-after-s",
        "INSTANCESERVER_SCENE",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn a_missing_scene_file_exits_non_zero_with_the_reason() {
    let out = bin()
        .args(["--scene", "/nonexistent/scene.json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("cannot load scene /nonexistent/scene.json") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn a_bad_scene_file_exits_non_zero_naming_the_json_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(
        &path,
        r#"{"version": 1, "bounds": {"min": [-9, -9, -9], "max": [9, 9, 9]}, "entities": [
            {"transform": {"position": [0, 0, 0]}, "collider": {"shape": "cuboid", "half_extents": [1, 2]}}]}"#,
    )
    .unwrap();
    let out = bin().arg("--scene").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("entities[0].collider.half_extents: expected 3 numbers, found 2"),
        "{err}"
    );
}

#[test]
fn the_demo_runs_and_reports_status_until_interrupted() {
    let mut child = bin()
        .args(["--status-interval-ms", "200"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("scene \"demo\""), "{first}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = Vec::new();
    while status.len() < 2 && Instant::now() < deadline {
        let line = lines.next().unwrap().unwrap();
        if line.contains("tick_p99=") {
            status.push(line);
        }
    }
    assert_eq!(status.len(), 2);
    assert!(
        status[1].contains("instances=1 entities=236"),
        "{}",
        status[1]
    );
    // Ctrl-C: the process stops cleanly and says how far it got.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        rest.last().is_some_and(|l| l.starts_with("stopped after ")),
        "{rest:?}"
    );
}
