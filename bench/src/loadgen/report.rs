//! Tables for people and JSON for tools.

use std::fmt::Write as _;

use super::step::StepReport;

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

/// The density table: one row per step.
pub fn steps_table(rows: &[StepReport]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| server | scene | clients | joined | join p50/p99 ms | delivery mean/min | gap p50/p99 ms | latency p50/p99 ms | server CPU | µs per client-s | KiB per client (no instances) | down/up B/s per client | up datagrams/s | inputs/s (ack-only) | inputs lost | bot cores | drops srv/other | limit |"
    );
    let _ = writeln!(s, "|{}", "---|".repeat(18));
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {}/{} | {:.1}%/{:.1}% | {}/{} | {}/{} | {:.0}% | {:.0} | {:.0} ({:.0}) | {:.0}/{:.0} | {:.1} | {:.1} ({:.1}) | {:.2}% | {:.0}% | {}/{} | {} |",
            r.server,
            r.scene,
            r.clients,
            r.joined,
            opt(r.join_ms_p50),
            opt(r.join_ms_p99),
            r.delivery_mean * 100.0,
            r.delivery_min * 100.0,
            opt(r.interarrival_ms_p50),
            opt(r.interarrival_ms_p99),
            opt(r.latency_ms_p50),
            opt(r.latency_ms_p99),
            r.server_cores * 100.0,
            r.server_cpu_us_per_client_s,
            r.server_kib_per_client,
            r.server_kib_per_connection,
            r.bytes_down_per_client_s,
            r.bytes_up_per_client_s,
            r.datagrams_up_per_client_s,
            r.inputs_per_client_s,
            r.acks_only_per_client_s,
            r.inputs_lost_ratio * 100.0,
            r.bot_cores_share * 100.0,
            r.server_socket_drops,
            r.other_socket_drops,
            r.limit.as_deref().unwrap_or("healthy"),
        );
    }
    s
}
