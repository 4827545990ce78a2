//! The node's configuration: one struct, layered as
//! defaults ← TOML file ← `INSTANCESERVER_*` environment ← flags.
//!
//! Every setting has a dotted key (`http.listen`, `instance.max_users`). The
//! environment variable of a key is `INSTANCESERVER_` followed by the key in
//! capitals with the dot replaced by `__` (`INSTANCESERVER_HTTP__LISTEN`); a
//! flag sets any key with `--set key=value`. Values from the environment and
//! flags are parsed with the type of the key (lists are comma-separated), so
//! a typo is an error naming the key, never a silently ignored setting.
//! `docs/configuration.md` lists every key; a test keeps the two in step.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use state::auth::AuthConfig;

/// The prefix of every environment variable the node reads.
pub const ENV_PREFIX: &str = "INSTANCESERVER_";

/// The longest duration any `*_ms` setting (or a drain's grace) may have:
/// one week. Durations are added to `Instant`s, which must not overflow.
pub const DURATION_MS_MAX: u64 = 7 * 24 * 3600 * 1000;

/// Variables of the binary's own flags (after the prefix); not settings.
pub const BINARY_VARIABLES: [&str; 3] = ["CONFIG", "STATUS_INTERVAL_MS", "EXIT_AFTER_S"];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub http: HttpConfig,
    pub grpc: GrpcConfig,
    pub webrtc: WebRtcConfig,
    pub shard: ShardConfig,
    pub instance: InstanceConfig,
    pub auth: AuthConfig,
    pub agones: AgonesConfig,
}

/// Whether the node speaks to an Agones SDK sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgonesMode {
    /// Never: SDK calls are logged.
    Local,
    /// When `AGONES_SDK_GRPC_PORT` is set (in an Agones pod); local otherwise.
    Auto,
    /// Always: the node refuses to start when no sidecar answers.
    Required,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgonesConfig {
    /// `local`, `auto` or `required`.
    pub mode: AgonesMode,
    /// The sidecar's gRPC port; unset: `AGONES_SDK_GRPC_PORT`, else 9357.
    pub port: Option<u16>,
    /// How often the node pings `Health` (match the Fleet's `health.periodSeconds`).
    pub health_interval_ms: u64,
    /// Connection attempts to the sidecar at start, with backoff.
    pub connect_attempts: u32,
    /// The Counter of instances (rooms); its capacity is the node's instance capacity.
    pub rooms_counter: String,
    /// The Counter of joined users.
    pub players_counter: String,
    /// The List of joined user ids, kept while it has room (Agones lists hold 1,000).
    pub players_list: String,
}

impl Default for AgonesConfig {
    fn default() -> Self {
        AgonesConfig {
            mode: AgonesMode::Auto,
            port: None,
            health_interval_ms: 1_000,
            connect_attempts: 8,
            rooms_counter: "rooms".into(),
            players_counter: "players".into(),
            players_list: "players".into(),
        }
    }
}

impl AgonesConfig {
    /// The SDK client's configuration; `port_env` is `AGONES_SDK_GRPC_PORT`.
    pub fn sdk(&self, port_env: Option<&str>) -> agones::SdkConfig {
        let mode = match self.mode {
            AgonesMode::Local => agones::Mode::Local,
            AgonesMode::Auto => agones::Mode::Auto,
            AgonesMode::Required => agones::Mode::Required,
        };
        let port = self.port.map(|p| p.to_string());
        let mut c = agones::SdkConfig::new(mode, port.as_deref().or(port_env));
        c.connect_attempts = self.connect_attempts;
        c
    }

    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Development mode: a random HS256 secret (printed at start), the
    /// `POST /v1/dev/token` endpoint and an instance `demo` from the embedded
    /// demo scene. Refused on a non-loopback HTTP address.
    pub dev: bool,
    /// Shards (one pinned executor thread each); 0 = one per core.
    pub shards: usize,
    /// Pin each shard to its core.
    pub pin_cores: bool,
    /// How long instances keep running after a drain before they end.
    pub drain_grace_ms: u64,
    /// Directory scenes named in create requests are read from.
    pub scene_dir: PathBuf,
    /// Scene file of the dev instance `demo`; empty = the embedded demo scene.
    pub dev_scene: String,
    /// Attendance records (who was in which instance, when, why they left)
    /// the control thread keeps; the oldest go first.
    pub attendance_records_max: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            dev: true,
            shards: 0,
            pin_cores: true,
            drain_grace_ms: 10_000,
            scene_dir: PathBuf::from("scenes"),
            dev_scene: String::new(),
            attendance_records_max: 10_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the signaling / health / metrics server.
    pub listen: SocketAddr,
    /// Largest SDP offer accepted (413 beyond).
    pub offer_bytes_max: usize,
    /// Joins accepted per client IP address per minute (429 beyond).
    pub joins_per_ip_per_minute: u32,
    /// Client addresses whose join rate is tracked. When full, addresses
    /// idle long enough to have a full bucket are forgotten; if none are,
    /// joins from new addresses get 429.
    pub join_rate_ips_max: usize,
    /// How long a join waits for its shard to answer (503 beyond).
    pub join_timeout_ms: u64,
    /// Requests handled at once by the HTTP server (503 beyond).
    pub concurrent_requests_max: usize,
    /// Origins (`https://game.example:8443`) whose pages may call the
    /// signaling endpoints from a browser (CORS); `*`, any origin, in dev
    /// mode only.
    pub cors_origins: Vec<String>,
    /// Serve the demo page at `/` and the browser SDK under `/web/`
    /// (files built into the binary).
    pub web: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
            offer_bytes_max: 16 * 1024,
            joins_per_ip_per_minute: 120,
            join_rate_ips_max: 65_536,
            join_timeout_ms: 5_000,
            concurrent_requests_max: 1_024,
            cors_origins: Vec::new(),
            web: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// Serve the gRPC control API.
    pub enabled: bool,
    /// Address of the gRPC control API.
    pub listen: SocketAddr,
    /// A file holding the bearer token every gRPC call must carry
    /// (`authorization: Bearer <token>`). Required outside dev mode.
    pub token_file: Option<PathBuf>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            enabled: true,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7777),
            token_file: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebRtcConfig {
    /// Address the shards' UDP sockets bind to.
    pub udp_bind_ip: IpAddr,
    /// Shard k binds `udp_port_base + k`; 0 picks free ports (tests).
    pub udp_port_base: u16,
    /// Address advertised in SDP answers (the node's public IP behind NAT or
    /// in Kubernetes); unset = `udp_bind_ip`.
    pub public_ip: Option<IpAddr>,
    /// Port advertised for shard 0 (a host port mapping); unset = the bound port.
    pub public_port_base: Option<u16>,
    /// Ports advertised per shard (shard k: entry k), ahead of
    /// `public_port_base`: host ports that need not be contiguous, as Agones
    /// assigns them (filled in from the GameServer when Agones is in use).
    pub public_ports: Vec<u16>,
    /// A peer that has not completed ICE, DTLS and opened both channels in
    /// this time is removed.
    pub connect_timeout_ms: u64,
    /// A connected peer silent for this long is removed.
    pub idle_timeout_ms: u64,
    /// Members may publish audio and video tracks, which the node forwards
    /// to the other members of their instance; off: media sections of
    /// offers are answered inactive.
    pub media: bool,
    /// Video packets the node keeps per forwarded stream to answer its
    /// receiver's NACKs (also bounded to 3 s of packets).
    pub media_packet_cache: usize,
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        WebRtcConfig {
            udp_bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            udp_port_base: 40_000,
            public_ip: None,
            public_port_base: None,
            public_ports: Vec::new(),
            connect_timeout_ms: 10_000,
            idle_timeout_ms: 10_000,
            media: true,
            media_packet_cache: 1_024,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardConfig {
    /// Instances one shard hosts at most.
    pub instances_max: usize,
    /// Peers (connected or connecting) one shard hosts at most.
    pub peers_max: usize,
    /// Commands queued from the control thread to one shard.
    pub command_queue_len: usize,
    /// Events queued from all shards to the control thread.
    pub event_queue_len: usize,
    /// Largest datagram read from the socket; longer ones are dropped.
    pub datagram_bytes_max: usize,
    /// Datagrams queued for sending per shard before new ones are dropped.
    pub send_queue_len: usize,
    /// A shard whose ticks run behind schedule this long is reported stalled
    /// (a warning and `instanceserver_shard_stalls_total`; health stays).
    pub stall_report_ms: u64,
    /// A shard whose loop has not come round for this long is stuck: while
    /// any is, Agones health pings stop and `/healthz` answers 503.
    pub stuck_ms: u64,
    /// Memory for io_uring registered buffers per shard (must fit RLIMIT_MEMLOCK).
    pub io_memory_bytes: usize,
    /// Kernel receive buffer asked for each shard's UDP socket (SO_RCVBUF);
    /// the kernel caps it at net.core.rmem_max. 0 keeps the kernel's default.
    pub socket_recv_bytes: usize,
    /// Kernel send buffer asked for each shard's UDP socket (SO_SNDBUF);
    /// the kernel caps it at net.core.wmem_max. 0 keeps the kernel's default.
    pub socket_send_bytes: usize,
    /// Percent of its core (smoothed) at which a shard refuses new joins
    /// with 503 `busy` (and `Retry-After: 1`); 100 never refuses.
    pub overload_join_refuse_percent: u32,
    /// Percent of its core at which a shard lowers every peer's snapshot
    /// rate one step (a snapshot every 2, then 3... ticks) per second.
    pub overload_snapshot_degrade_percent: u32,
    /// Below this percent the snapshot rate goes back up a step per second.
    pub overload_snapshot_recover_percent: u32,
    /// The slowest step: a snapshot every this many ticks (1 disables the
    /// lowering).
    pub overload_snapshot_divisor_max: u32,
    /// Whether the time a shard's thread waits for its core (ready to run
    /// while something else runs there) counts as load, beside the time it
    /// runs. On: a core shared with the control thread or anything else
    /// shows full when it is. Off: the thread's own CPU time only.
    pub overload_counts_cpu_wait: bool,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            instances_max: 4_096,
            peers_max: 16_384,
            command_queue_len: 1_024,
            event_queue_len: 16_384,
            datagram_bytes_max: 2_048,
            send_queue_len: 65_536,
            stall_report_ms: 2_000,
            stuck_ms: 10_000,
            io_memory_bytes: 512 * 1024,
            socket_recv_bytes: 4 * 1024 * 1024,
            socket_send_bytes: 4 * 1024 * 1024,
            overload_join_refuse_percent: 85,
            overload_snapshot_degrade_percent: 95,
            overload_snapshot_recover_percent: 85,
            overload_snapshot_divisor_max: 4,
            overload_counts_cpu_wait: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceConfig {
    /// Simulation ticks per second.
    pub tick_hz: u32,
    /// Snapshots per second for instances whose create request names no
    /// rate: the tick rate or one of 60, 30, 20, 15, 10, dividing it. Unset:
    /// 30 when that divides the tick rate, else the tick rate.
    pub snapshot_hz: Option<u32>,
    /// Users admitted to one instance unless its create request says otherwise (409 beyond).
    pub max_users: u32,
    /// An instance with nobody in it ends after this long.
    pub empty_timeout_ms: u64,
    /// Entities alive in one instance at most.
    pub entities_max: u32,
    /// Cached actions kept for late joiners; the oldest are dropped.
    pub cached_actions_max: usize,
    /// Bytes of cached actions (topic, type and payload) kept for late
    /// joiners; the oldest are dropped.
    pub cached_action_bytes_max: usize,
    /// Invalid messages a peer may send before it is disconnected.
    pub invalid_messages_max: u32,
    /// Snapshot interest radius around a user's avatar.
    pub interest_radius_m: f32,
    /// Entities in one user's view at most.
    pub view_entities_max: usize,
    /// Fastest an owned entity (not an avatar) may move.
    pub owned_speed_max_mps: f32,
    /// Fastest an avatar may move.
    pub avatar_speed_max_mps: f32,
    /// Actions and ownership requests one peer may send per second; more
    /// are dropped and counted.
    pub actions_per_second_max: u32,
    /// Entities one user may own at once, its avatar aside.
    pub owned_entities_max: u32,
    /// Tracks one member may publish at once (`docs/media.md`).
    pub media_tracks_per_member_max: u32,
    /// Members of one instance publishing audio at once.
    pub media_audio_publishers_max: u32,
    /// Members of one instance publishing video at once.
    pub media_video_publishers_max: u32,
    /// Bits per second one audio track may bring in; beyond, its packets
    /// are dropped and its publisher told (and asked to slow, REMB).
    pub media_audio_bitrate_max: u32,
    /// The same for one video track, all its simulcast layers together.
    pub media_video_bitrate_max: u32,
    /// A joined peer that sends no message for this long is removed; 0:
    /// never (the transport's `webrtc.idle_timeout_ms` still applies).
    pub silence_timeout_ms: u64,
    /// Bytes queued on one peer's reliable channel before it counts as
    /// congested and is disconnected.
    pub reliable_buffer_bytes_max: usize,
}

/// Bounds of `webrtc.media_packet_cache`.
pub const MEDIA_PACKET_CACHE_MIN: usize = 16;
pub const MEDIA_PACKET_CACHE_MAX: usize = 8_192;
/// The lowest bitrate cap a track may have (bits per second): below, even
/// Opus at its lowest rate would be cut.
pub const MEDIA_BITRATE_MIN: u32 = 8_000;

/// Shortest `shard.stuck_ms`.
pub const STUCK_MS_MIN: u64 = 1_000;

/// Smallest non-zero socket buffer a shard asks for (`shard.socket_*_bytes`).
pub const SOCKET_BUFFER_MIN: usize = 64 * 1024;
/// Largest socket buffer a shard asks for (Linux grants at most
/// `INT_MAX / 2`, since it books twice what it grants).
pub const SOCKET_BUFFER_MAX: usize = 512 * 1024 * 1024;

/// Settings that were renamed or split, and the keys that replaced them:
/// naming one is an error that says so (rather than "unknown key").
const RENAMED_KEYS: [(&str, &[&str]); 1] = [(
    "shard.socket_buffer_bytes",
    &["shard.socket_recv_bytes", "shard.socket_send_bytes"],
)];

/// Where a setting was given, for [`renamed_key`]'s message.
enum KeyOrigin<'a> {
    File,
    Environment(&'a str),
    Flag,
}

/// What to say of renamed `key` given at `origin`, if it is one: the keys
/// that replaced it, spelt as that origin spells them.
fn renamed_key(key: &str, origin: KeyOrigin<'_>) -> Option<String> {
    let (old, new) = RENAMED_KEYS.iter().find(|(old, _)| *old == key)?;
    let spell = |k: &str| match origin {
        KeyOrigin::Environment(_) => {
            format!("{ENV_PREFIX}{}", k.replace('.', "__").to_ascii_uppercase())
        }
        KeyOrigin::File | KeyOrigin::Flag => k.to_string(),
    };
    let new = new
        .iter()
        .map(|k| spell(k))
        .collect::<Vec<_>>()
        .join(" and ");
    Some(match origin {
        KeyOrigin::File => format!("{old} was replaced by {new}"),
        KeyOrigin::Environment(name) => format!("environment {name}: replaced by {new}"),
        KeyOrigin::Flag => format!("--set {old}: replaced by {new}"),
    })
}

/// Most entries in `http.cors_origins`.
pub const CORS_ORIGINS_MAX: usize = 64;

/// Why `origin` is not a web origin as browsers send it in `Origin`
/// (`scheme://host` or `scheme://host:port`, lowercase, no path), if it
/// is not.
pub fn origin_error(origin: &str) -> Option<&'static str> {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Some("an origin is scheme://host[:port]");
    };
    if scheme != "http" && scheme != "https" {
        return Some("the scheme must be http or https");
    }
    if !origin.is_ascii() {
        return Some("browsers send hosts in ASCII (punycode, xn--...)");
    }
    if origin.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some("browsers send origins in lowercase");
    }
    if rest
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b"/?#@".contains(&b))
    {
        return Some("an origin has a host, an optional port and nothing else (no path, no user)");
    }
    // An IPv6 host is bracketed: its colons are not the port's.
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (rest, None),
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    if host.is_empty() {
        return Some("an origin needs a host");
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(0) | Err(_) => return Some("the port must be 1 to 65535"),
            Ok(443) if scheme == "https" => {
                return Some("browsers leave the default port (:443) out");
            }
            Ok(80) if scheme == "http" => return Some("browsers leave the default port (:80) out"),
            Ok(_) => {}
        }
    }
    None
}

/// Shortest `instance.silence_timeout_ms` other than 0 (off): three
/// heartbeats.
pub const SILENCE_TIMEOUT_MS_MIN: u64 = 3_000;
/// Largest `node.attendance_records_max` (a record is at most about 500
/// bytes).
pub const ATTENDANCE_RECORDS_MAX: usize = 1_000_000;

/// Largest `instance.cached_action_bytes_max`: with the framing of
/// [`net::messages::WELCOME_CACHED_ACTIONS_MAX`] actions (48 bytes each at
/// most) and [`net::messages::WELCOME_OWNERS_MAX`] owners (8 bytes each)
/// it fits one `Welcome` (256 KiB).
pub const CACHED_ACTION_BYTES_MAX: usize = 160 * 1024;

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig {
            tick_hz: 60,
            snapshot_hz: None,
            max_users: 64,
            empty_timeout_ms: 60_000,
            entities_max: 65_536,
            cached_actions_max: 1_024,
            cached_action_bytes_max: 128 * 1024,
            invalid_messages_max: 32,
            interest_radius_m: 50.0,
            view_entities_max: 1_024,
            owned_speed_max_mps: 20.0,
            avatar_speed_max_mps: 10.0,
            actions_per_second_max: 60,
            owned_entities_max: 16,
            media_tracks_per_member_max: 4,
            media_audio_publishers_max: 50,
            media_video_publishers_max: 16,
            media_audio_bitrate_max: 256_000,
            media_video_bitrate_max: 4_000_000,
            silence_timeout_ms: 10_000,
            reliable_buffer_bytes_max: 1024 * 1024,
        }
    }
}

impl Config {
    /// The router's share of the configuration, for a shard whose peers
    /// reach it at `local`.
    pub fn router(&self, local: SocketAddr) -> crate::router::RouterConfig {
        crate::router::RouterConfig {
            instances_max: self.shard.instances_max,
            stall_report: Duration::from_millis(self.shard.stall_report_ms),
            conn: net::conn::ConnConfig {
                local,
                connect_timeout: self.webrtc.connect_timeout(),
                idle_timeout: self.webrtc.idle_timeout(),
                send_queue_len: self.shard.send_queue_len,
                conns_max: self.shard.peers_max,
                media: self.webrtc.media,
                media_packet_cache: self.webrtc.media_packet_cache,
            },
            instance: self.instance.runtime(),
            overload: crate::router::load::OverloadConfig {
                join_refuse_share: self.shard.overload_join_refuse_percent as f32 / 100.0,
                degrade_share: self.shard.overload_snapshot_degrade_percent as f32 / 100.0,
                recover_share: self.shard.overload_snapshot_recover_percent as f32 / 100.0,
                snapshot_divisor_max: self.shard.overload_snapshot_divisor_max,
                ..crate::router::load::OverloadConfig::default()
            },
        }
    }
}

impl InstanceConfig {
    /// The snapshot rate of instances whose create request names none.
    pub fn default_snapshot_hz(&self) -> u32 {
        self.snapshot_hz
            .unwrap_or_else(|| state::instance::default_snapshot_hz(self.tick_hz))
    }

    /// The instance runtime's share of the configuration.
    pub fn runtime(&self) -> state::instance::RuntimeConfig {
        state::instance::RuntimeConfig {
            tick_hz: self.tick_hz,
            entities_max: self.entities_max,
            avatar_speed_max_mps: self.avatar_speed_max_mps,
            cached_actions_max: self.cached_actions_max,
            cached_action_bytes_max: self.cached_action_bytes_max,
            invalid_messages_max: self.invalid_messages_max,
            actions_per_second_max: self.actions_per_second_max,
            owned_entities_max: self.owned_entities_max,
            media: state::instance::MediaLimits {
                tracks_per_member_max: self.media_tracks_per_member_max,
                audio_publishers_max: self.media_audio_publishers_max,
                video_publishers_max: self.media_video_publishers_max,
                audio_bitrate_max: self.media_audio_bitrate_max,
                video_bitrate_max: self.media_video_bitrate_max,
            },
            silence_timeout: (self.silence_timeout_ms > 0)
                .then(|| Duration::from_millis(self.silence_timeout_ms)),
            reliable_buffer_bytes_max: self.reliable_buffer_bytes_max,
            snapshot: net::snapshot::SnapshotConfig {
                interest_radius_m: self.interest_radius_m,
                view_entities_max: self.view_entities_max,
                ..net::snapshot::SnapshotConfig::default()
            },
            input: net::input::InputLimits {
                owned_speed_max_mps: self.owned_speed_max_mps,
                ..net::input::InputLimits::default()
            },
        }
    }
}

/// The shortest gRPC bearer token accepted.
pub const GRPC_TOKEN_BYTES_MIN: usize = 32;

impl GrpcConfig {
    /// The bearer token from `token_file` (surrounding whitespace trimmed),
    /// or `None` when no file is set, which only dev mode (or a node without
    /// the gRPC API) may do.
    pub fn token(&self, dev: bool) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.token_file else {
            if !dev && self.enabled {
                return Err(ConfigError::Invalid(
                    "outside dev mode the gRPC control API needs a bearer token: set \
                     grpc.token_file (a file of at least 32 bytes) or grpc.enabled = false"
                        .into(),
                ));
            }
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let token = text.trim();
        if token.len() < GRPC_TOKEN_BYTES_MIN {
            return Err(ConfigError::Invalid(format!(
                "grpc.token_file {}: the token must be at least {GRPC_TOKEN_BYTES_MIN} bytes",
                path.display()
            )));
        }
        Ok(Some(token.to_owned()))
    }
}

impl WebRtcConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// A configuration that cannot be used, with what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{origin}: unknown setting `{key}` (see docs/configuration.md)")]
    UnknownKey { origin: String, key: String },
    #[error("{origin}: setting `{key}`: {message}")]
    Value {
        origin: String,
        key: String,
        message: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Builds the configuration from its layers. `env` is the process
/// environment (passed in so tests do not depend on it); `sets` are
/// `key=value` pairs from flags, applied last in order.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    sets: &[(String, String)],
) -> Result<Config, ConfigError> {
    let mut tree = to_table(&Config::default());
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file_tree: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        for (section, value) in &file_tree {
            if let toml::Value::Table(t) = value {
                for key in t.keys() {
                    let dotted = format!("{section}.{key}");
                    if let Some(message) = renamed_key(&dotted, KeyOrigin::File) {
                        return Err(ConfigError::File {
                            path: path.to_path_buf(),
                            message,
                        });
                    }
                }
            }
        }
        merge(&mut tree, file_tree);
        // Fail on unknown keys in the file with its own error before layering.
        from_table(&tree).map_err(|message| ConfigError::File {
            path: path.to_path_buf(),
            message,
        })?;
    }
    let known = keys();
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    env.sort();
    for (name, value) in env {
        let key = name[ENV_PREFIX.len()..]
            .to_ascii_lowercase()
            .replace("__", ".");
        if let Some(m) = renamed_key(&key, KeyOrigin::Environment(&name)) {
            return Err(ConfigError::Invalid(m));
        }
        if !known.contains_key(&key) {
            // The binary's own variables (not settings) share the prefix.
            if BINARY_VARIABLES.contains(&&name[ENV_PREFIX.len()..]) {
                continue;
            }
            return Err(ConfigError::UnknownKey {
                origin: format!(
                    "environment {name} (settings are INSTANCESERVER_<SECTION>__<KEY>, two underscores)"
                ),
                key,
            });
        }
        set(
            &mut tree,
            &known,
            &key,
            &value,
            &format!("environment {name}"),
        )?;
    }
    for (key, value) in sets {
        if let Some(m) = renamed_key(key, KeyOrigin::Flag) {
            return Err(ConfigError::Invalid(m));
        }
        if !known.contains_key(key) {
            return Err(ConfigError::UnknownKey {
                origin: "--set".into(),
                key: key.clone(),
            });
        }
        set(&mut tree, &known, key, value, "--set")?;
    }
    let config = from_table(&tree).map_err(ConfigError::Invalid)?;
    config.validate()?;
    Ok(config)
}

/// Every setting's dotted key and its default value (for docs and env).
pub fn keys() -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    for (section, value) in to_table(&Config::default()) {
        if let toml::Value::Table(t) = value {
            for (k, v) in t {
                out.insert(format!("{section}.{k}"), v);
            }
        }
    }
    // Optional settings are absent from the serialized defaults; these
    // placeholders give them their type (an empty string unsets a string).
    for (key, placeholder) in [
        ("webrtc.public_ip", toml::Value::String(String::new())),
        ("webrtc.public_port_base", toml::Value::Integer(0)),
        ("instance.snapshot_hz", toml::Value::Integer(0)),
        ("auth.hs256_secret", toml::Value::String(String::new())),
        ("auth.issuer", toml::Value::String(String::new())),
        ("auth.audience", toml::Value::String(String::new())),
        ("agones.port", toml::Value::Integer(0)),
        ("grpc.token_file", toml::Value::String(String::new())),
    ] {
        out.entry(key.to_string()).or_insert(placeholder);
    }
    out
}

fn to_table(config: &Config) -> toml::Table {
    // Serializing plain structs of numbers, strings and lists cannot fail.
    toml::Table::try_from(config).expect("config serializes to a TOML table")
}

fn from_table(tree: &toml::Table) -> Result<Config, String> {
    Config::deserialize(toml::Value::Table(tree.clone())).map_err(|e| e.to_string())
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn set(
    tree: &mut toml::Table,
    known: &BTreeMap<String, toml::Value>,
    key: &str,
    raw: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Value {
        origin: origin.to_string(),
        key: key.to_string(),
        message,
    };
    let value = match &known[key] {
        toml::Value::Integer(_) => raw
            .trim()
            .replace('_', "")
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| err(format!("expected an integer, found `{raw}`")))?,
        toml::Value::Float(_) => raw
            .trim()
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| err(format!("expected a number, found `{raw}`")))?,
        toml::Value::Boolean(_) => match raw.trim() {
            "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
            _ => return Err(err(format!("expected true or false, found `{raw}`"))),
        },
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => toml::Value::String(raw.to_string()),
    };
    let (section, name) = key.split_once('.').ok_or_else(|| err("not a key".into()))?;
    let table = tree
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = table {
        if raw.is_empty() && matches!(&known[key], toml::Value::String(s) if s.is_empty()) {
            t.remove(name);
        } else {
            t.insert(name.to_string(), value);
        }
    }
    Ok(())
}

impl Config {
    /// Checks ranges and combinations a TOML type cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.node.dev && !self.http.listen.ip().is_loopback() {
            return bad(
                "node.dev serves a token endpoint and must stay on loopback: set node.dev = false \
                 and configure auth keys to listen on a public address",
            );
        }
        if self.http.cors_origins.len() > CORS_ORIGINS_MAX {
            return Err(ConfigError::Invalid(format!(
                "http.cors_origins lists at most {CORS_ORIGINS_MAX} origins"
            )));
        }
        for origin in &self.http.cors_origins {
            if origin == "*" {
                if !self.node.dev {
                    return bad(
                        "http.cors_origins \"*\" (any origin) is for dev mode only: list the \
                         origins of the pages that join",
                    );
                }
            } else if let Some(e) = origin_error(origin) {
                return Err(ConfigError::Invalid(format!(
                    "http.cors_origins {origin:?}: {e}"
                )));
            }
        }
        if !(100..=60_000).contains(&self.agones.health_interval_ms) {
            return bad("agones.health_interval_ms must be within 100..=60000");
        }
        if self.agones.connect_attempts == 0 {
            return bad("agones.connect_attempts must be at least 1");
        }
        if !(1..=240).contains(&self.instance.tick_hz) {
            return bad("instance.tick_hz must be within 1..=240");
        }
        if let Some(hz) = self.instance.snapshot_hz
            && let Some(e) = state::instance::snapshot_hz_error(hz, self.instance.tick_hz)
        {
            return Err(ConfigError::Invalid(format!("instance.{e}")));
        }
        if self.instance.cached_actions_max > net::messages::WELCOME_CACHED_ACTIONS_MAX {
            return Err(ConfigError::Invalid(format!(
                "instance.cached_actions_max must be at most {} (what a Welcome carries)",
                net::messages::WELCOME_CACHED_ACTIONS_MAX
            )));
        }
        if self.instance.cached_action_bytes_max > CACHED_ACTION_BYTES_MAX {
            return Err(ConfigError::Invalid(format!(
                "instance.cached_action_bytes_max must be at most {CACHED_ACTION_BYTES_MAX} \
                 (with the framing of 1,024 actions and 4,096 owners, what fits one Welcome)"
            )));
        }
        if self.instance.silence_timeout_ms != 0
            && self.instance.silence_timeout_ms < SILENCE_TIMEOUT_MS_MIN
        {
            return Err(ConfigError::Invalid(format!(
                "instance.silence_timeout_ms must be 0 (off) or at least {SILENCE_TIMEOUT_MS_MIN} \
                 (clients send a heartbeat a second)"
            )));
        }
        if self.node.attendance_records_max > ATTENDANCE_RECORDS_MAX {
            return Err(ConfigError::Invalid(format!(
                "node.attendance_records_max must be at most {ATTENDANCE_RECORDS_MAX}"
            )));
        }
        if self.instance.max_users == 0 {
            return bad("instance.max_users must be at least 1");
        }
        if !(MEDIA_PACKET_CACHE_MIN..=MEDIA_PACKET_CACHE_MAX)
            .contains(&self.webrtc.media_packet_cache)
        {
            return Err(ConfigError::Invalid(format!(
                "webrtc.media_packet_cache must be within \
                 {MEDIA_PACKET_CACHE_MIN}..={MEDIA_PACKET_CACHE_MAX} (packets per forwarded video \
                 stream)"
            )));
        }
        for (key, v) in [
            (
                "instance.media_audio_bitrate_max",
                self.instance.media_audio_bitrate_max,
            ),
            (
                "instance.media_video_bitrate_max",
                self.instance.media_video_bitrate_max,
            ),
        ] {
            if v < MEDIA_BITRATE_MIN {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be at least {MEDIA_BITRATE_MIN} (bits per second)"
                )));
            }
        }
        let s = &self.shard;
        if !(1..=100).contains(&s.overload_join_refuse_percent) {
            return bad("shard.overload_join_refuse_percent must be within 1..=100");
        }
        if !(1..=100).contains(&s.overload_snapshot_degrade_percent)
            || s.overload_snapshot_recover_percent == 0
            || s.overload_snapshot_recover_percent >= s.overload_snapshot_degrade_percent
        {
            return bad(
                "shard.overload_snapshot_degrade_percent must be within 1..=100 and above \
                 shard.overload_snapshot_recover_percent (at least 1)",
            );
        }
        // Half the views a client's baseline may be behind (32 ticks):
        // slower, one lost snapshot would force full ones, adding load.
        if !(1..=16).contains(&s.overload_snapshot_divisor_max) {
            return bad("shard.overload_snapshot_divisor_max must be within 1..=16");
        }
        for (key, v) in [
            ("shard.socket_recv_bytes", s.socket_recv_bytes),
            ("shard.socket_send_bytes", s.socket_send_bytes),
        ] {
            if v != 0 && !(SOCKET_BUFFER_MIN..=SOCKET_BUFFER_MAX).contains(&v) {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be 0 (the kernel's default) or within \
                     {SOCKET_BUFFER_MIN}..={SOCKET_BUFFER_MAX} bytes"
                )));
            }
        }
        // Under a second, a burst of work (instances created together, a
        // tick catching up) would pass for a stuck shard and fail health.
        if s.stuck_ms < STUCK_MS_MIN {
            return Err(ConfigError::Invalid(format!(
                "shard.stuck_ms must be at least {STUCK_MS_MIN}"
            )));
        }
        if self.shard.datagram_bytes_max < 1_500 || self.shard.datagram_bytes_max > 65_535 {
            return bad("shard.datagram_bytes_max must be within 1500..=65535");
        }
        for (key, v) in [
            ("shard.instances_max", self.shard.instances_max),
            ("shard.peers_max", self.shard.peers_max),
            ("shard.command_queue_len", self.shard.command_queue_len),
            ("shard.event_queue_len", self.shard.event_queue_len),
            ("shard.send_queue_len", self.shard.send_queue_len),
            ("http.join_rate_ips_max", self.http.join_rate_ips_max),
            (
                "http.concurrent_requests_max",
                self.http.concurrent_requests_max,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
            }
        }
        if self.node.dev && self.grpc.enabled && !self.grpc.listen.ip().is_loopback() {
            return bad(
                "node.dev must stay on loopback: the gRPC control API has no authentication; \
                 set node.dev = false and keep grpc.listen on a private network",
            );
        }
        // With Agones, the address may come from the GameServer at start
        // (`Node::start` checks again once it is known).
        if self.webrtc.udp_bind_ip.is_unspecified()
            && self.webrtc.public_ip.is_none()
            && self.agones.mode == AgonesMode::Local
        {
            return bad(
                "webrtc.udp_bind_ip is a wildcard address: set webrtc.public_ip to the address \
                 clients reach this node at (it goes into SDP answers), or use Agones",
            );
        }
        for (key, v) in [
            ("webrtc.connect_timeout_ms", self.webrtc.connect_timeout_ms),
            ("webrtc.idle_timeout_ms", self.webrtc.idle_timeout_ms),
            ("http.join_timeout_ms", self.http.join_timeout_ms),
            ("instance.empty_timeout_ms", self.instance.empty_timeout_ms),
            (
                "instance.silence_timeout_ms",
                self.instance.silence_timeout_ms,
            ),
            ("node.drain_grace_ms", self.node.drain_grace_ms),
            ("shard.stall_report_ms", self.shard.stall_report_ms),
            ("shard.stuck_ms", self.shard.stuck_ms),
        ] {
            if v > DURATION_MS_MAX {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be at most {DURATION_MS_MAX} (one week)"
                )));
            }
        }
        for (key, v) in [
            ("webrtc.connect_timeout_ms", self.webrtc.connect_timeout_ms),
            ("webrtc.idle_timeout_ms", self.webrtc.idle_timeout_ms),
            ("http.join_timeout_ms", self.http.join_timeout_ms),
            ("instance.empty_timeout_ms", self.instance.empty_timeout_ms),
            (
                "http.joins_per_ip_per_minute",
                u64::from(self.http.joins_per_ip_per_minute),
            ),
            (
                "instance.actions_per_second_max",
                u64::from(self.instance.actions_per_second_max),
            ),
            (
                "instance.entities_max",
                u64::from(self.instance.entities_max),
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
            }
        }
        for (key, v) in [
            (
                "instance.avatar_speed_max_mps",
                self.instance.avatar_speed_max_mps,
            ),
            (
                "instance.owned_speed_max_mps",
                self.instance.owned_speed_max_mps,
            ),
            (
                "instance.interest_radius_m",
                self.instance.interest_radius_m,
            ),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be a positive number"
                )));
            }
        }
        Ok(())
    }

    /// Shards to start: the configured count, or one per core.
    pub fn shard_count(&self) -> usize {
        if self.node.shards > 0 {
            self.node.shards
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}
