//! `/metrics` in the Prometheus text format (0.0.4). Shard figures come from
//! each shard's last `Stats` event (at most a second old).

use std::fmt::Write as _;

use state::commands::TICK_BUCKETS_US;

use super::Control;

/// Reads one counter of a shard.
type Counter = fn(&state::commands::ShardMetrics) -> u64;

/// Every auth failure label (`AuthError::reason`, then the join checks).
const AUTH_FAILURE_REASONS: [&str; 14] = [
    "missing",
    "too_large",
    "malformed",
    "algorithm",
    "unknown_key",
    "signature",
    "expired",
    "not_yet_valid",
    "issuer",
    "audience",
    "claims",
    "scope",
    "banned",
    "not_allowed",
];

/// Renders every metric of the node.
pub fn render(c: &Control) -> String {
    let mut out = String::with_capacity(8 * 1024);
    gauge(
        &mut out,
        "instanceserver_instances",
        "Instances on the node.",
        c.registry.len() as f64,
    );
    gauge(
        &mut out,
        "instanceserver_sessions",
        "Sessions (joined or connecting) on the node.",
        c.registry.sessions_len() as f64,
    );
    gauge(
        &mut out,
        "instanceserver_draining",
        "1 while the node drains.",
        f64::from(u8::from(c.draining)),
    );
    gauge(
        &mut out,
        "instanceserver_shards_stuck",
        "Shards whose loop has not come round for shard.stuck_ms (health fails while above 0).",
        c.stuck_shards().len() as f64,
    );
    let now = crate::io::monotonic_ms();
    per_slot(
        &mut out,
        &c.shards,
        "instanceserver_shard_heartbeat_age_seconds",
        "gauge",
        "Seconds since each shard's loop last came round (stuck at shard.stuck_ms).",
        |s| s.silent_ms(now) as f64 / 1000.0,
    );
    per_shard(
        &mut out,
        &c.shards,
        "instanceserver_shard_instances",
        "gauge",
        "Instances per shard.",
        |m| m.instances,
    );
    per_shard(
        &mut out,
        &c.shards,
        "instanceserver_shard_instances_asleep",
        "gauge",
        "Instances per shard that are asleep: empty, their world at rest, not ticking until someone joins.",
        |m| m.instances_asleep,
    );
    per_shard(
        &mut out,
        &c.shards,
        "instanceserver_media_tracks",
        "gauge",
        "Tracks published and forwarded (announced, within the limits), per shard.",
        |m| m.media_tracks,
    );
    per_shard(
        &mut out,
        &c.shards,
        "instanceserver_media_subscriptions",
        "gauge",
        "Receivers subscribed to those tracks (publisher x receiver pairs), per shard.",
        |m| m.media_subscriptions,
    );
    per_shard(
        &mut out,
        &c.shards,
        "instanceserver_shard_load_percent",
        "gauge",
        "Smoothed share of its core each shard's thread uses or waits for (joins are refused from shard.overload_join_refuse_percent).",
        |m| m.load_percent,
    );
    per_shard(
        &mut out,
        &c.shards,
        "instanceserver_shard_snapshot_divisor",
        "gauge",
        "Peers get a snapshot every this many ticks (1 unless the shard sheds load).",
        |m| m.snapshot_divisor.max(1),
    );
    per_shard(
        &mut out,
        &c.shards,
        "instanceserver_shard_joins_refused_busy_total",
        "counter",
        "Joins a shard refused (503 busy) because it was over its load limit.",
        |m| m.joins_refused_busy,
    );
    per_shard(
        &mut out,
        &c.shards,
        "instanceserver_shard_peers",
        "gauge",
        "WebRTC peers per shard.",
        |m| m.peers,
    );
    per_shard(
        &mut out,
        &c.shards,
        "instanceserver_shard_timers",
        "gauge",
        "Entries in each shard's timer heap.",
        |m| m.timers,
    );
    let counters: [(&str, &str, Counter); 17] = [
        (
            "instanceserver_inputs_total",
            "Input frames accepted (acknowledgements and owned-entity updates).",
            |m| m.inputs,
        ),
        (
            "instanceserver_packets_in_total",
            "Datagrams received.",
            |m| m.packets_in,
        ),
        ("instanceserver_bytes_in_total", "Bytes received.", |m| {
            m.bytes_in
        }),
        ("instanceserver_packets_out_total", "Datagrams sent.", |m| {
            m.packets_out
        }),
        ("instanceserver_bytes_out_total", "Bytes sent.", |m| {
            m.bytes_out
        }),
        (
            "instanceserver_snapshots_sent_total",
            "Snapshot frames sent.",
            |m| m.snapshots_sent,
        ),
        (
            "instanceserver_snapshot_bytes_total",
            "Snapshot frame bytes sent.",
            |m| m.snapshot_bytes,
        ),
        (
            "instanceserver_skipped_ticks_total",
            "Ticks dropped by the catch-up cap.",
            |m| m.skipped_ticks,
        ),
        (
            "instanceserver_shard_stalls_total",
            "Times a shard ran behind schedule for stall_report_ms (overload; health stays).",
            |m| m.stalls,
        ),
        (
            "instanceserver_media_tracks_published_total",
            "Audio and video tracks members published.",
            |m| m.media_tracks_published,
        ),
        (
            "instanceserver_media_packets_in_total",
            "RTP packets received on published tracks.",
            |m| m.media_packets_in,
        ),
        (
            "instanceserver_media_packets_forwarded_total",
            "RTP packets forwarded to receivers.",
            |m| m.media_packets_forwarded,
        ),
        (
            "instanceserver_media_bytes_forwarded_total",
            "RTP payload bytes forwarded to receivers.",
            |m| m.media_bytes_forwarded,
        ),
        (
            "instanceserver_media_keyframe_requests_total",
            "Receivers' keyframe requests relayed to publishers.",
            |m| m.media_keyframe_requests,
        ),
        (
            "instanceserver_media_keyframe_requests_coalesced_total",
            "Keyframe requests not relayed: one went to the publisher less than 500 ms before.",
            |m| m.media_keyframe_requests_coalesced,
        ),
        (
            "instanceserver_media_layer_switches_total",
            "Receivers moved from one simulcast layer to another (at a keyframe).",
            |m| m.media_layer_switches,
        ),
        (
            "instanceserver_media_speaker_changes_total",
            "Active speaker changes announced.",
            |m| m.media_speaker_changes,
        ),
    ];
    for (name, help, get) in counters {
        per_shard(&mut out, &c.shards, name, "counter", help, get);
    }
    labelled(
        &mut out,
        "instanceserver_dropped_datagrams_total",
        "Datagrams dropped, by reason.",
        c,
        |m| &m.dropped,
    );
    header(
        &mut out,
        "instanceserver_invalid_messages_total",
        "counter",
        "Invalid client messages, by reason.",
    );
    for (i, s) in c.shards.iter().enumerate() {
        for reason in net::ProtocolError::REASONS {
            let n = s.metrics.invalid_messages.get(reason).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "instanceserver_invalid_messages_total{{shard=\"{i}\",reason=\"{reason}\"}} {n}"
            );
        }
    }
    labelled(
        &mut out,
        "instanceserver_refused_messages_total",
        "Client messages refused (ownership, speed, rate), by reason.",
        c,
        |m| &m.refused_messages,
    );
    header(
        &mut out,
        "instanceserver_tick_duration_seconds",
        "histogram",
        "Duration of one instance tick, per shard.",
    );
    for (i, s) in c.shards.iter().enumerate() {
        let m = &s.metrics;
        let mut cumulative = 0u64;
        for (b, bound) in TICK_BUCKETS_US.iter().enumerate() {
            cumulative += m.tick_buckets[b];
            let le = *bound as f64 / 1e6;
            let _ = writeln!(
                out,
                "instanceserver_tick_duration_seconds_bucket{{shard=\"{i}\",le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += m.tick_buckets[TICK_BUCKETS_US.len()];
        let _ = writeln!(
            out,
            "instanceserver_tick_duration_seconds_bucket{{shard=\"{i}\",le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "instanceserver_tick_duration_seconds_sum{{shard=\"{i}\"}} {}",
            m.tick_sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "instanceserver_tick_duration_seconds_count{{shard=\"{i}\"}} {}",
            m.ticks
        );
    }
    header(
        &mut out,
        "instanceserver_auth_failures_total",
        "counter",
        "Refused join tokens, by reason.",
    );
    for reason in AUTH_FAILURE_REASONS {
        let n = c.metrics.auth_failures.get(reason).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "instanceserver_auth_failures_total{{reason=\"{reason}\"}} {n}"
        );
    }
    header(
        &mut out,
        "instanceserver_joins_total",
        "counter",
        "Join requests answered, by HTTP status.",
    );
    for (status, n) in &c.metrics.joins {
        let _ = writeln!(out, "instanceserver_joins_total{{status=\"{status}\"}} {n}");
    }
    header(
        &mut out,
        "instanceserver_sessions_ended_total",
        "counter",
        "Sessions ended, by reason.",
    );
    for (reason, n) in &c.metrics.sessions_left {
        let _ = writeln!(
            out,
            "instanceserver_sessions_ended_total{{reason=\"{reason}\"}} {n}"
        );
    }
    header(
        &mut out,
        "instanceserver_instances_ended_total",
        "counter",
        "Instances ended, by reason.",
    );
    for (reason, n) in &c.metrics.instances_ended {
        let _ = writeln!(
            out,
            "instanceserver_instances_ended_total{{reason=\"{reason}\"}} {n}"
        );
    }
    header(
        &mut out,
        "instanceserver_instance_users",
        "gauge",
        "Joined users per instance.",
    );
    for r in c.registry.instances() {
        let _ = writeln!(
            out,
            "instanceserver_instance_users{{instance=\"{}\",shard=\"{}\"}} {}",
            escape(&r.id),
            r.shard,
            r.users
        );
    }
    out
}

/// One series per shard: `name{shard="i"} value`.
fn per_shard<T: std::fmt::Display>(
    out: &mut String,
    shards: &[super::ShardSlot],
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&state::commands::ShardMetrics) -> T,
) {
    per_slot(out, shards, name, kind, help, |s| value(&s.metrics));
}

/// One sample per shard, from what the control thread holds of it.
fn per_slot<T: std::fmt::Display>(
    out: &mut String,
    shards: &[super::ShardSlot],
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&super::ShardSlot) -> T,
) {
    header(out, name, kind, help);
    for (i, s) in shards.iter().enumerate() {
        let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", value(s));
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

fn labelled(
    out: &mut String,
    name: &str,
    help: &str,
    c: &Control,
    get: fn(&state::commands::ShardMetrics) -> &std::collections::BTreeMap<&'static str, u64>,
) {
    header(out, name, "counter", help);
    for (i, s) in c.shards.iter().enumerate() {
        for (reason, n) in get(&s.metrics) {
            let _ = writeln!(out, "{name}{{shard=\"{i}\",reason=\"{reason}\"}} {n}");
        }
    }
}

/// Escapes a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
