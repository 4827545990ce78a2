//! What the kernel says about the processes of a run: CPU time and resident
//! memory from `/proc/<pid>`, socket drops from `/proc/net/udp`, and the
//! socket buffer maxima from `/proc/sys/net/core`.

use std::time::{Duration, Instant};

/// CPU time of a process (all its threads), user plus system.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| Duration::from_secs_f64(ticks as f64 / clock_ticks()))
}

/// utime + stime from a `/proc/<pid>/stat` line (fields 14 and 15; the
/// command name in parentheses may hold spaces, so count after its `)`).
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Resident memory of a process, bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss_kib(&status).map(|kib| kib * 1024)
}

pub fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One row of `/proc/net/udp{,6}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSocketRow {
    pub port: u16,
    pub inode: u64,
    pub drops: u64,
}

/// Every UDP socket on the host (IPv4 and IPv6) with its drop counter.
pub fn udp_sockets() -> Vec<UdpSocketRow> {
    let mut rows = Vec::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            rows.extend(parse_udp_table(&text));
        }
    }
    rows
}

/// The socket inodes a process holds open (`/proc/<pid>/fd` links of the
/// form `socket:[N]`): how a server with a socket per peer (the baseline)
/// is told apart from the bots on the same host.
pub fn socket_inodes(pid: u32) -> std::collections::HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Default::default();
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Drops between two readings of [`udp_sockets`], per socket (a socket
/// that closed in between is left out, one that opened counts from zero),
/// summed as (the server's, everyone else's). The server's sockets are
/// those in `server_inodes` or bound to one of `server_ports`.
pub fn udp_drops_between(
    before: &[UdpSocketRow],
    after: &[UdpSocketRow],
    server_inodes: &std::collections::HashSet<u64>,
    server_ports: &[u16],
) -> (u64, u64) {
    let earlier: std::collections::HashMap<u64, u64> =
        before.iter().map(|r| (r.inode, r.drops)).collect();
    let (mut server, mut others) = (0, 0);
    for r in after {
        let delta = r
            .drops
            .saturating_sub(earlier.get(&r.inode).copied().unwrap_or(0));
        if server_inodes.contains(&r.inode) || server_ports.contains(&r.port) {
            server += delta;
        } else {
            others += delta;
        }
    }
    (server, others)
}

/// The rows of a `/proc/net/udp` table.
pub fn parse_udp_table(text: &str) -> Vec<UdpSocketRow> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            let inode = fields.get(9)?.parse().ok()?;
            let drops = fields.last()?.parse().ok()?;
            Some(UdpSocketRow { port, inode, drops })
        })
        .collect()
}

/// The host's socket buffer maxima (`net.core.rmem_max`, `wmem_max`), bytes.
pub fn socket_buffer_max() -> (Option<u64>, Option<u64>) {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    };
    (read("rmem_max"), read("wmem_max"))
}

/// CPU use of a set of processes over an interval: start with [`CpuMeter::start`],
/// read with [`CpuMeter::cores_used`].
#[derive(Debug, Clone)]
pub struct CpuMeter {
    pids: Vec<u32>,
    at: Instant,
    cpu: Duration,
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter {
            pids: pids.to_vec(),
            at: Instant::now(),
            cpu: pids.iter().filter_map(|&p| cpu_time(p)).sum(),
        }
    }

    /// CPU seconds used since the start, and the wall seconds that passed.
    pub fn read(&self) -> (f64, f64) {
        let cpu: Duration = self.pids.iter().filter_map(|&p| cpu_time(p)).sum();
        (
            cpu.saturating_sub(self.cpu).as_secs_f64(),
            self.at.elapsed().as_secs_f64(),
        )
    }

    /// Cores kept busy since the start (1.0 = one core fully).
    pub fn cores_used(&self) -> f64 {
        let (cpu, wall) = self.read();
        if wall > 0.0 { cpu / wall } else { 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_rss_kib("Name:\tx\nVmRSS:\t  2048 kB\n"), Some(2048));
        let udp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                   12: 0100007F:A028 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 17\n";
        let rows = parse_udp_table(udp);
        assert_eq!(
            rows,
            vec![UdpSocketRow {
                port: 0xA028,
                inode: 1,
                drops: 17
            }]
        );
        let later = [
            UdpSocketRow {
                drops: 20,
                ..rows[0]
            },
            UdpSocketRow {
                port: 9,
                inode: 5,
                drops: 4,
            },
        ];
        let server: std::collections::HashSet<u64> = [5].into();
        // Socket 1 (port 0xA028) dropped 3 more; socket 5 is new with 4.
        assert_eq!(udp_drops_between(&rows, &later, &server, &[]), (4, 3));
        assert_eq!(udp_drops_between(&rows, &later, &server, &[0xA028]), (7, 0));
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).is_some_and(|b| b > 0));
        assert!(cpu_time(me).is_some());
    }
}
