#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The load generator against a real node on loopback: bots join over HTTP
//! and WebRTC (ICE, DTLS, SCTP), move, chat and measure; the numbers they
//! report are checked against what a healthy, lightly loaded node gives.

use std::rc::Rc;
use std::time::Duration;

use bench::loadgen::bot::{Phase, Workload};
use bench::loadgen::fleet::{self, FleetPlan, JoinProgress};
use bench::loadgen::step::StepReport;
use bench::loadgen::{density, target};
use instanceserver::config::Config;
use instanceserver::node::Node;

/// Snapshot and input rate of these tests.
const HZ: u32 = 30;
const USERS: usize = 4;

fn node() -> Node {
    let mut c = Config::default();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.grpc.listen = "127.0.0.1:0".parse().unwrap();
    c.webrtc.udp_port_base = 0;
    c.node.shards = 1;
    c.instance.tick_hz = HZ;
    // The bots share this machine's cores with the node: a shard waiting
    // for a CPU they hold is not the node's load (see tests/support).
    c.shard.overload_counts_cpu_wait = false;
    Node::start(c).expect("node starts")
}

#[tokio::test(flavor = "current_thread")]
async fn bots_join_move_and_send_one_input_per_tick() {
    let node = node();
    let secret = node.dev_secret.clone().expect("dev mode has a secret");
    let (instances, bots) = density::bots("lg", USERS, USERS);
    target::create_instances(node.grpc_addr.unwrap(), None, &instances, "social", 16)
        .await
        .unwrap();
    let plan = FleetPlan {
        workload: Workload {
            http: node.http_addr,
            input_hz: HZ,
            chat_interval_ms: 1_000,
            ..Workload::default()
        },
        bots,
        join_rate_per_s: 50,
        secret: Some(secret),
    };
    let (phase, phase_rx) = tokio::sync::watch::channel(Phase::Warmup);
    let progress = Rc::new(JoinProgress::default());
    let local = tokio::task::LocalSet::new();
    let fleet = local.spawn_local(fleet::run(plan, phase_rx, progress.clone()));
    let result = local
        .run_until(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while progress.joined.get() + progress.failed.get() < USERS {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "bots did not join in time"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(progress.failed.get(), 0, "every bot joins");
            tokio::time::sleep(Duration::from_secs(1)).await;
            phase.send_replace(Phase::Measure);
            tokio::time::sleep(Duration::from_secs(5)).await;
            phase.send_replace(Phase::Stop);
            tokio::time::timeout(Duration::from_secs(20), fleet)
                .await
                .expect("bots leave in time")
                .unwrap()
        })
        .await;
    assert_eq!(result.bots.len(), USERS);
    let mut latency_samples = 0;
    for b in &result.bots {
        assert!(b.joined, "{b:?}");
        assert_eq!(b.ended_early, None);
        assert_eq!(b.tick_hz, HZ);
        let delivery = b.delivery().unwrap();
        assert!(
            delivery >= 0.9,
            "{} received {:.0}% of its snapshots",
            b.user,
            delivery * 100.0
        );
        // One Input frame per input tick, and the acks ride on them: no
        // ack-only frames while the bot moves.
        let per_s = (b.window_inputs + b.window_acks) as f64 / b.window_s;
        assert!(
            (f64::from(HZ) * 0.85..=f64::from(HZ) * 1.1).contains(&per_s),
            "{}: {per_s:.1} inputs per second",
            b.user
        );
        // (A stall of the test machine longer than the ack delay may let
        // one slip out alone; a client that acks every snapshot sends 30/s.)
        assert!(
            b.window_acks * 50 <= b.window_inputs,
            "{}: {} acks sent alone, {} inputs",
            b.user,
            b.window_acks,
            b.window_inputs
        );
        assert!(b.window_io.bytes_in > 0 && b.window_io.bytes_out > 0);
        assert!(b.chats_sent >= 4, "{}: {} chats", b.user, b.chats_sent);
        assert!(b.chats_received > 0, "{} heard nobody", b.user);
        latency_samples += b.latency.count();
    }
    // Three observers see the probe start walking every other second.
    assert!(latency_samples >= 3, "{latency_samples} latency samples");
    node.stop();
}

#[tokio::test(flavor = "current_thread")]
async fn the_loadgen_binary_runs_a_step_in_worker_processes_and_writes_json() {
    let node = node();
    let secret = node.dev_secret.clone().unwrap();
    let grpc = node.grpc_addr.unwrap().to_string();
    let (stdout, r) = run_loadgen(
        &["--create", "--grpc", &grpc, "--processes", "2"],
        node.http_addr,
        std::process::id(),
        &secret,
    )
    .await;
    assert!(stdout.contains("| node | social | 6 | 6 |"), "{stdout}");
    assert_eq!(
        (r.clients, r.instances, r.joined, r.join_failed),
        (6, 2, 6, 0)
    );
    assert!(r.delivery_mean >= 0.9, "{r:?}");
    assert!(r.join_ms_p99.unwrap() < 10_000.0, "{r:?}");
    // The node counted the bots' inputs (the whole run's, with acks).
    assert!(r.inputs_received > 0 && r.inputs_lost_ratio < 0.05, "{r:?}");
    // This process is the server here: its CPU and memory were read.
    assert!(r.server_rss_mib > 0.0 && r.server_cores > 0.0, "{r:?}");
    node.stop();
}

/// The webrtc-rs baseline serves the same bots: the same join endpoint and
/// tokens, rooms made by the first join, welcomes, snapshots at the tick
/// rate and the bots' inputs counted.
#[tokio::test(flavor = "current_thread")]
async fn the_baseline_serves_the_same_bots() {
    const SECRET: &str = "baseline-test-secret";
    let mut baseline = tokio::process::Command::new(env!("CARGO_BIN_EXE_baseline"))
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--secret",
            SECRET,
            "--scene",
            "social",
        ])
        .args([
            "--tick-hz",
            "30",
            "--members-max",
            "3",
            "--exit-after-s",
            "120",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = baseline.id().unwrap();
    // It prints where it listens.
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        baseline.stdout.take().unwrap(),
    ));
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the baseline starts in time")
        .unwrap()
        .expect("a first line");
    let http: std::net::SocketAddr = line
        .strip_prefix("baseline listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    let (_, r) = run_loadgen(&["--chat-interval-s", "1"], http, pid, SECRET).await;
    assert_eq!(
        (r.clients, r.instances, r.joined, r.join_failed),
        (6, 2, 6, 0),
        "{r:?}"
    );
    assert!(r.delivery_mean >= 0.9, "{r:?}");
    assert!(r.inputs_received > 0 && r.inputs_lost_ratio < 0.05, "{r:?}");
    assert!(r.chats_received > 0, "{r:?}");
    assert!(r.latency_samples > 0, "{r:?}");
    // A room holds --members-max users: a fourth join is refused with 409.
    let tokens = bench::loadgen::tokens::TokenSource::new(Some(SECRET));
    let mut members = Vec::new();
    for user in ["a", "b", "c", "d"] {
        let token = tokens.token(http, user, "full").await.unwrap();
        members.push(net::client::Client::join(http, "full", &token).await);
    }
    assert!(members[..3].iter().all(Result::is_ok), "{members:?}");
    assert!(
        matches!(
            members[3],
            Err(net::client::ClientError::Refused { status: 409, .. })
        ),
        "{:?}",
        members[3]
    );
    let _ = baseline.start_kill();
}

/// Runs `loadgen run` for one short step of 2 `social` instances of 3 users
/// (bots unpinned) against the server at `http` whose process is `pid`, with
/// `extra` arguments; asserts it succeeded and returns its stdout and report.
async fn run_loadgen(
    extra: &[&str],
    http: std::net::SocketAddr,
    pid: u32,
    secret: &str,
) -> (String, StepReport) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("step.json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["run", "--scene", "social", "--instances", "2"])
        .args(["--users-per-instance", "3", "--bot-cores", "none"])
        .args([
            "--settle-s",
            "1",
            "--window-s",
            "3",
            "--join-budget-s",
            "30",
        ])
        .args(extra)
        .arg("--http")
        .arg(http.to_string())
        .arg("--server-pid")
        .arg(pid.to_string())
        .arg("--json")
        .arg(&json)
        .env("LOADGEN_SECRET", secret)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), output)
        .await
        .expect("loadgen finishes in time")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let r = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (stdout, r)
}
