//! The `instanceserver` binary, run as a user would run it.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Lines = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// Starts `command` with its stdout piped; returns the child and its lines.
fn spawn(command: &mut Command) -> (std::process::Child, Lines) {
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_instanceserver"));
    // Keep the environment from changing what the flags say.
    for (k, _) in std::env::vars() {
        if k.starts_with("INSTANCESERVER_") {
            c.env_remove(k);
        }
    }
    // Free ports, so tests run side by side.
    c.args([
        "--http-listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
        "--udp-port-base",
        "0",
        "--shards",
        "1",
    ]);
    c
}

#[test]
fn help_documents_every_flag() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--config",
        "--set",
        "--scene",
        "--shards",
        "--http-listen",
        "--grpc-listen",
        "--udp-port-base",
        "--public-ip",
        "--print-config",
        "--status-interval-ms",
        "--exit-after-s",
        "INSTANCESERVER_CONFIG",
        "docs/configuration.md",
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
    let (mut child, mut lines) = spawn(bin().args(["--status-interval-ms", "200"]));
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("1 shard(s) on UDP 127.0.0.1:"), "{first}");
    let dev = lines.next().unwrap().unwrap();
    assert!(
        dev.contains("dev mode: HS256 secret") && dev.contains("instance \"demo\""),
        "{dev}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = Vec::new();
    while status.len() < 2 && Instant::now() < deadline {
        let line = lines.next().unwrap().unwrap();
        if line.contains("tick_p99_max=") {
            status.push(line);
        }
    }
    assert_eq!(status.len(), 2);
    assert!(
        status[1].contains("instances=1 sessions=0"),
        "{}",
        status[1]
    );
    // Ctrl-C: the process stops cleanly and says how far it got.
    signal(&child, "-INT");
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        rest.iter().any(|l| l.starts_with("draining: "))
            && rest.last().is_some_and(|l| l == "stopped"),
        "{rest:?}"
    );
}

#[test]
fn settings_layer_defaults_file_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(
        &path,
        "[instance]\nmax_users = 10\ntick_hz = 30\n[http]\njoin_timeout_ms = 1234\n",
    )
    .unwrap();
    let out = bin()
        .arg("--config")
        .arg(&path)
        .env("INSTANCESERVER_INSTANCE__MAX_USERS", "20")
        .env("INSTANCESERVER_INSTANCE__TICK_HZ", "40")
        .args(["--set", "instance.max_users=30", "--print-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Table = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let instance = printed["instance"].as_table().unwrap();
    assert_eq!(instance["max_users"].as_integer(), Some(30), "flags win");
    assert_eq!(
        instance["tick_hz"].as_integer(),
        Some(40),
        "environment beats the file"
    );
    assert_eq!(
        printed["http"]["join_timeout_ms"].as_integer(),
        Some(1234),
        "the file beats defaults"
    );
    assert_eq!(
        instance["empty_timeout_ms"].as_integer(),
        Some(60_000),
        "defaults fill the rest"
    );
}

#[test]
fn bad_settings_are_refused_with_the_key_named() {
    let out = bin()
        .args(["--set", "instance.max_userz=3", "--print-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("unknown setting `instance.max_userz`"),
        "{err}"
    );

    let out = bin()
        .env("INSTANCESERVER_INSTANCE__TICK_HZ", "fast")
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("INSTANCESERVER_INSTANCE__TICK_HZ") && err.contains("expected an integer"),
        "{err}"
    );
}

#[test]
fn without_dev_mode_a_node_needs_keys() {
    let out = bin().args(["--set", "node.dev=false"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("no JWT keys configured"), "{err}");

    let out = bin()
        .args(["--set", "http.listen=0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("node.dev") && err.contains("loopback"),
        "{err}"
    );
}

#[test]
fn sigterm_drains_then_stops() {
    let (mut child, mut lines) = spawn(bin().args(["--status-interval-ms", "100"]));
    // Wait for the first status line: the node is up.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if lines.next().unwrap().unwrap().starts_with("t=") {
            break;
        }
    }
    signal(&child, "-TERM");
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(child.wait().unwrap().success());
    assert!(rest.iter().any(|l| l.starts_with("draining: ")), "{rest:?}");
    assert_eq!(rest.last().map(String::as_str), Some("stopped"), "{rest:?}");
}

/// The binary with a fake Agones sidecar: returns the child, its stdout
/// lines and its HTTP address (from the start line).
fn with_agones(
    fake: &agones::fake::FakeSdk,
    grace_ms: u64,
) -> (std::process::Child, Lines, std::net::SocketAddr) {
    let (child, mut lines) = spawn(
        bin()
            .args(["--agones", "required", "--status-interval-ms", "100"])
            .args(["--set", &format!("node.drain_grace_ms={grace_ms}")])
            .args(["--set", "agones.health_interval_ms=100"])
            // Its client shares this machine's cores with the node (see
            // tests/support): waiting for them is not the node's load.
            .args(["--set", "shard.overload_counts_cpu_wait=false"])
            .env(agones::GRPC_PORT_ENV, fake.addr.port().to_string()),
    );
    let first = lines.next().unwrap().unwrap();
    let http = first
        .split("HTTP http://")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no HTTP address in {first:?}"))
        .parse()
        .unwrap();
    (child, lines, http)
}

fn term(child: &std::process::Child) {
    signal(child, "-TERM");
}

/// Sends `child` a signal (`-TERM`, `-INT`) with kill(1).
fn signal(child: &std::process::Child, which: &str) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args([which, &pid])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn sigterm_under_agones_tells_clients_zeroes_the_counters_and_shuts_down() {
    use agones::fake::{Call, counters};
    use net::client::{Client, ClientEvent, dev_token};
    let fake = support::fake_sdk(&[("players", 10)]);
    let (mut child, lines, http) = with_agones(&fake, 1_500);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = rt.block_on(async {
        let token = dev_token(http, "ann", "demo").await.unwrap();
        let mut clients = vec![Client::join(http, "demo", &token).await.unwrap()];
        support::until_welcomed(&mut clients, Duration::from_secs(10)).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while counters(&fake.game_server())["players"].0 != 1 {
            assert!(Instant::now() < deadline, "players never reached 1");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        term(&child);
        let started = Instant::now();
        let draining = clients[0]
            .run_until(Duration::from_secs(5), |_, e| {
                matches!(e, ClientEvent::Draining { grace_ms: 1_500 })
            })
            .await
            .unwrap();
        assert!(draining, "the client was not told the node is draining");
        started
    });
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_millis(1_500 + 3_000));
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert_eq!(rest.last().map(String::as_str), Some("stopped"), "{rest:?}");
    let c = counters(&fake.game_server());
    assert_eq!((c["rooms"].0, c["players"].0), (0, 0), "{c:?}");
    assert_eq!(fake.calls().last(), Some(&Call::Shutdown));
}

#[test]
fn a_second_sigterm_stops_at_once() {
    let fake = support::fake_sdk(&[("players", 10)]);
    let (mut child, mut lines, _) = with_agones(&fake, 30_000);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if lines.next().unwrap().unwrap().starts_with("t=") {
            break;
        }
    }
    term(&child);
    // Wait for the drain to begin, then interrupt it.
    while Instant::now() < deadline {
        if lines.next().unwrap().unwrap().starts_with("draining: ") {
            break;
        }
    }
    let signalled = Instant::now();
    term(&child);
    assert!(child.wait().unwrap().success());
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "took {:?} with a 30 s grace",
        signalled.elapsed()
    );
}

#[test]
fn a_grpc_drain_ends_the_process_after_its_grace() {
    use instanceserver::control::grpc::pb;
    let (mut child, mut lines) = spawn(bin().args(["--status-interval-ms", "100"]));
    let first = lines.next().unwrap().unwrap();
    let grpc = first
        .split("gRPC ")
        .nth(1)
        .unwrap_or_else(|| panic!("no gRPC address in {first:?}"))
        .trim()
        .to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let asked = rt.block_on(async {
        let mut client = pb::control_client::ControlClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let asked = Instant::now();
        let r = client
            .drain(pb::DrainRequest { grace_ms: 700 })
            .await
            .unwrap();
        assert_eq!(r.into_inner().instances, 1, "the demo instance");
        asked
    });
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(child.wait().unwrap().success());
    assert!(asked.elapsed() >= Duration::from_millis(700));
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert!(
        rest.iter()
            .any(|l| l.starts_with("draining: instances end within 700ms")),
        "{rest:?}"
    );
    assert_eq!(rest.last().map(String::as_str), Some("stopped"), "{rest:?}");
}
