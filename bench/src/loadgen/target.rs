//! The server under load: ours (the `instanceserver` binary) or the
//! webrtc-rs baseline, started as a child process pinned to a core, or an
//! already running node at any address; its control API and its metrics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use instanceserver::control::grpc::pb;
use net::client::http_request;
use tokio::process::{Child, Command};

/// Longest a started server may take to answer `/healthz`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one HTTP call to the server (health, metrics) may take.
pub const HTTP_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one control API call may take.
pub const GRPC_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Control API calls in flight at once while creating instances.
pub const CREATES_IN_FLIGHT: usize = 16;

/// Which server a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerKind {
    Ours,
    Baseline,
}

impl ServerKind {
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Ours => "instanceserver",
            ServerKind::Baseline => "webrtc-rs baseline",
        }
    }
}

/// How to start a server for a run.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub kind: ServerKind,
    pub binary: PathBuf,
    /// Pinned here with `taskset` (None: not pinned).
    pub core: Option<usize>,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub udp_port_base: u16,
    pub secret: String,
    pub tick_hz: u32,
    /// Most users of one instance (the baseline's `--members-max`; ours
    /// takes it per instance when they are created).
    pub members_max: usize,
    /// The scene the baseline serves (ours takes it per instance).
    pub scene: String,
    /// More `--set key=value` settings for our server.
    pub settings: Vec<String>,
}

/// A running server process.
#[derive(Debug)]
pub struct Server {
    pub kind: ServerKind,
    pub pid: u32,
    pub http: SocketAddr,
    pub grpc: Option<SocketAddr>,
    /// The bearer token of its control API (ours: the secret, written to a
    /// `grpc.token_file`).
    pub grpc_token: Option<String>,
    /// UDP ports its peers use (ours: one per shard; the baseline: none
    /// known, its peers get ephemeral ports).
    pub udp_ports: Vec<u16>,
    child: Child,
}

impl Server {
    pub async fn start(spec: &ServerSpec) -> anyhow::Result<Server> {
        anyhow::ensure!(
            spec.binary.exists(),
            "{} not found: build it first with `cargo build --release --workspace --bins`",
            spec.binary.display()
        );
        let mut command = match spec.core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string()).arg(&spec.binary);
                c
            }
            None => Command::new(&spec.binary),
        };
        match spec.kind {
            ServerKind::Ours => {
                let mut sets = vec![
                    "node.dev=false".to_string(),
                    "node.shards=1".into(),
                    format!("auth.hs256_secret={}", spec.secret),
                    format!("http.listen={}", spec.http),
                    format!("grpc.listen={}", spec.grpc),
                    format!("webrtc.udp_bind_ip={}", spec.http.ip()),
                    format!("webrtc.udp_port_base={}", spec.udp_port_base),
                    format!("instance.tick_hz={}", spec.tick_hz),
                    // A snapshot every tick, as the baseline sends.
                    format!("instance.snapshot_hz={}", spec.tick_hz),
                    // Every bot joins from one address.
                    "http.joins_per_ip_per_minute=1000000".into(),
                    // Instances wait for their bots however slow the ramp.
                    "instance.empty_timeout_ms=3600000".into(),
                ];
                let token_file =
                    std::env::temp_dir().join(format!("loadgen-grpc-{}.token", spec.grpc.port()));
                std::fs::write(&token_file, &spec.secret)?;
                sets.push(format!("grpc.token_file={}", token_file.display()));
                if spec.core.is_some() {
                    // taskset already holds the whole process to its core.
                    sets.push("node.pin_cores=false".into());
                }
                sets.extend(spec.settings.iter().cloned());
                for s in sets {
                    command.arg("--set").arg(s);
                }
                command.arg("--status-interval-ms").arg("0");
                command.env("RUST_LOG", "warn");
            }
            ServerKind::Baseline => {
                command
                    .arg("--http-listen")
                    .arg(spec.http.to_string())
                    .arg("--secret")
                    .arg(&spec.secret)
                    .arg("--tick-hz")
                    .arg(spec.tick_hz.to_string())
                    .arg("--scene")
                    .arg(&spec.scene)
                    .arg("--udp-ip")
                    .arg(spec.http.ip().to_string())
                    .arg("--members-max")
                    .arg(spec.members_max.to_string());
                // webrtc-rs warns about every answerer-side ICE start.
                command.env("RUST_LOG", "error");
            }
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let child = command.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow::anyhow!("the server exited at once"))?;
        let mut server = Server {
            kind: spec.kind,
            pid,
            http: spec.http,
            grpc: (spec.kind == ServerKind::Ours).then_some(spec.grpc),
            grpc_token: (spec.kind == ServerKind::Ours).then(|| spec.secret.clone()),
            udp_ports: match spec.kind {
                ServerKind::Ours => vec![spec.udp_port_base],
                ServerKind::Baseline => Vec::new(),
            },
            child,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // Not a server left over on the port: this one must still run.
            if let Some(status) = server.child.try_wait()? {
                anyhow::bail!("{} exited at start: {status}", spec.binary.display());
            }
            if healthy(spec.http).await {
                return Ok(server);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the server at {} did not answer /healthz within {START_TIMEOUT:?}",
                spec.http
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What a step measures of it.
    pub fn observed(&self) -> super::step::Observed {
        super::step::Observed {
            name: self.kind.name().to_string(),
            http: self.http,
            pid: Some(self.pid),
            udp_ports: self.udp_ports.clone(),
            rss_before: None,
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Whether `/healthz` answers 200 (within [`HTTP_CALL_TIMEOUT`]).
pub async fn healthy(http: SocketAddr) -> bool {
    let call = http_request(http, "GET", "/healthz", &[], Vec::new());
    matches!(
        tokio::time::timeout(HTTP_CALL_TIMEOUT, call).await,
        Ok(Ok(r)) if r.status == 200
    )
}

/// The node's `/metrics`, summed by metric name (labels folded).
pub async fn scrape(http: SocketAddr) -> anyhow::Result<Metrics> {
    let r = tokio::time::timeout(
        HTTP_CALL_TIMEOUT,
        http_request(http, "GET", "/metrics", &[], Vec::new()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("/metrics did not answer within {HTTP_CALL_TIMEOUT:?}"))??;
    anyhow::ensure!(r.status == 200, "/metrics answered {}", r.status);
    Ok(Metrics::parse(&r.body))
}

/// Prometheus text, each metric summed over its labels.
#[derive(Debug, Clone, Default)]
pub struct Metrics(std::collections::HashMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut sums = std::collections::HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            if let Ok(v) = value.parse::<f64>() {
                *sums.entry(name.to_string()).or_insert(0.0) += v;
            }
        }
        Metrics(sums)
    }

    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }
}

type ControlClient = pb::control_client::ControlClient<tonic::transport::Channel>;

/// Connects to the node's gRPC control API.
pub async fn control(grpc: SocketAddr) -> anyhow::Result<ControlClient> {
    let connect = ControlClient::connect(format!("http://{grpc}"));
    tokio::time::timeout(GRPC_CALL_TIMEOUT, connect)
        .await
        .map_err(|_| anyhow::anyhow!("gRPC {grpc}: no connection within {GRPC_CALL_TIMEOUT:?}"))?
        .map_err(Into::into)
}

/// Creates `ids` on the node with `scene`, a few at a time, with the control
/// API's bearer `token` when it has one; returns how long it took.
pub async fn create_instances(
    grpc: SocketAddr,
    token: Option<&str>,
    ids: &[String],
    scene: &str,
    max_users: u32,
) -> anyhow::Result<Duration> {
    create_instances_of_kind(grpc, token, ids, scene, "", max_users).await
}

/// [`create_instances`] of `kind` (`world`, the default when empty, or
/// `media`: members and their voice and video only, no scene).
pub async fn create_instances_of_kind(
    grpc: SocketAddr,
    token: Option<&str>,
    ids: &[String],
    scene: &str,
    kind: &str,
    max_users: u32,
) -> anyhow::Result<Duration> {
    let client = control(grpc).await?;
    let started = Instant::now();
    for chunk in ids.chunks(CREATES_IN_FLIGHT) {
        let mut calls = Vec::with_capacity(chunk.len());
        for id in chunk {
            let mut c = client.clone();
            let mut request = tonic::Request::new(pb::CreateInstanceRequest {
                instance_id: id.clone(),
                location_id: id.clone(),
                scene: scene.to_string(),
                kind: kind.to_string(),
                max_users,
                ..Default::default()
            });
            if let Some(token) = token {
                let bearer = format!("Bearer {token}")
                    .parse()
                    .map_err(|_| anyhow::anyhow!("the gRPC token is not a valid header value"))?;
                request.metadata_mut().insert("authorization", bearer);
            }
            calls.push(tokio::spawn(async move {
                tokio::time::timeout(GRPC_CALL_TIMEOUT, c.create_instance(request)).await
            }));
        }
        for (id, call) in chunk.iter().zip(calls) {
            call.await?
                .map_err(|_| {
                    anyhow::anyhow!(
                        "creating instance {id}: no answer within {GRPC_CALL_TIMEOUT:?}"
                    )
                })?
                .map_err(|s| anyhow::anyhow!("creating instance {id}: {}", s.message()))?;
        }
    }
    Ok(started.elapsed())
}
