//! The churn soak: bots join and leave continuously for a bounded time,
//! some vanishing without a leave (a closed laptop). Afterwards the soak
//! waits (up to `settle_max`) for the server's sessions, peers, seats and
//! instances to come back to where they were before, then reads its timers
//! and memory too; the report shows both readings side by side.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use net::client::{self, Client, ClientEvent};
use serde::{Deserialize, Serialize};

use super::host;
use super::target::{self, Metrics};
use super::tokens::TokenSource;

/// How often the server's gauges are polled while waiting for them to settle.
pub const SETTLE_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct ChurnOptions {
    pub http: std::net::SocketAddr,
    /// The server's process, for its memory (None: not measured).
    pub server_pid: Option<u32>,
    pub instances: Vec<String>,
    /// Bots alive at once.
    pub concurrent: usize,
    pub duration: Duration,
    /// A session lives a random time between these.
    pub lifetime_min: Duration,
    pub lifetime_max: Duration,
    /// Share of sessions that vanish (no DELETE, no close) instead of leaving.
    pub vanish_ratio: f64,
    /// Longest to wait afterwards for the server to notice the vanished
    /// (its idle timeout) and settle.
    pub settle_max: Duration,
    pub input_hz: u32,
}

/// The server's gauges that must return to their baseline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Gauges {
    pub sessions: f64,
    pub peers: f64,
    pub instances: f64,
    /// Users seated in instances (sum over instances).
    pub seats: f64,
    pub timers: f64,
    pub rss_mib: f64,
}

impl Gauges {
    fn read(m: &Metrics, pid: Option<u32>) -> Gauges {
        Gauges {
            sessions: m.get("instanceserver_sessions"),
            peers: m.get("instanceserver_shard_peers"),
            instances: m.get("instanceserver_instances"),
            seats: m.get("instanceserver_instance_users"),
            timers: m.get("instanceserver_shard_timers"),
            rss_mib: pid
                .and_then(host::rss_bytes)
                .map_or(0.0, |b| b as f64 / (1024.0 * 1024.0)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnReport {
    pub duration_s: f64,
    pub joins: u64,
    pub join_failures: u64,
    pub leaves: u64,
    pub vanished: u64,
    pub before: Gauges,
    /// The highest resident memory seen during the soak.
    pub peak_rss_mib: f64,
    pub after: Gauges,
    /// Seconds after the soak until sessions, peers and seats were back.
    pub settled_after_s: Option<f64>,
}

impl ChurnReport {
    /// Sessions, peers, seats and instances back where they were.
    pub fn settled(&self) -> bool {
        self.settled_after_s.is_some()
    }
}

#[derive(Debug, Default)]
struct Counts {
    joins: Cell<u64>,
    failures: Cell<u64>,
    leaves: Cell<u64>,
    vanished: Cell<u64>,
}

/// Runs the soak against a running node. Call inside a tokio `LocalSet`.
pub async fn run(options: &ChurnOptions, tokens: TokenSource) -> anyhow::Result<ChurnReport> {
    // The node's gauges come from its shards' once-a-second reports: let
    // them include the instances just created before reading the baseline.
    tokio::time::sleep(super::step::COUNTERS_SETTLE).await;
    let before = Gauges::read(&target::scrape(options.http).await?, options.server_pid);
    let counts = Rc::new(Counts::default());
    let started = Instant::now();
    let end = started + options.duration;
    let mut slots = Vec::with_capacity(options.concurrent);
    for slot in 0..options.concurrent {
        let (options, tokens, counts) = (options.clone(), tokens.clone(), counts.clone());
        slots.push(tokio::task::spawn_local(async move {
            let mut generation = 0u64;
            while Instant::now() < end {
                let instance = &options.instances[slot % options.instances.len().max(1)];
                let user = format!("churn-{slot}-{generation}");
                generation += 1;
                session(&options, &tokens, &counts, instance, &user, end, slot).await;
            }
        }));
    }
    let mut peak_rss_mib = before.rss_mib;
    while slots.iter().any(|s| !s.is_finished()) {
        tokio::time::sleep(SETTLE_POLL).await;
        if let Some(b) = options.server_pid.and_then(host::rss_bytes) {
            peak_rss_mib = peak_rss_mib.max(b as f64 / (1024.0 * 1024.0));
        }
    }
    let soaked = Instant::now();
    let mut after;
    let mut settled_after_s = None;
    loop {
        after = Gauges::read(&target::scrape(options.http).await?, options.server_pid);
        if after.sessions == before.sessions
            && after.peers == before.peers
            && after.seats == before.seats
            && after.instances == before.instances
        {
            settled_after_s = Some(soaked.elapsed().as_secs_f64());
            break;
        }
        if soaked.elapsed() >= options.settle_max {
            break;
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
    // The timer heap drops stale entries as they fall due: give it a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    after = Gauges::read(&target::scrape(options.http).await?, options.server_pid);
    Ok(ChurnReport {
        duration_s: started.elapsed().as_secs_f64() - soaked.elapsed().as_secs_f64(),
        joins: counts.joins.get(),
        join_failures: counts.failures.get(),
        leaves: counts.leaves.get(),
        vanished: counts.vanished.get(),
        before,
        peak_rss_mib,
        after,
        settled_after_s,
    })
}

/// One session: join, play for its lifetime (bounded by `end`), then leave
/// or vanish.
async fn session(
    options: &ChurnOptions,
    tokens: &TokenSource,
    counts: &Counts,
    instance: &str,
    user: &str,
    end: Instant,
    slot: usize,
) {
    let joined = async {
        let token = tokens.token(options.http, user, instance).await?;
        let mut c = Client::join(options.http, instance, &token)
            .await
            .map_err(|e| e.to_string())?;
        let welcomed = c
            .run_until(Duration::from_secs(10), |_, e| {
                matches!(e, ClientEvent::Welcome(_))
            })
            .await
            .map_err(|e| e.to_string())?;
        if welcomed {
            Ok(c)
        } else {
            Err("no welcome".to_string())
        }
    };
    let mut c = match tokio::time::timeout(Duration::from_secs(15), joined).await {
        Ok(Ok(c)) => c,
        Ok(Err(_)) | Err(_) => {
            counts.failures.set(counts.failures.get() + 1);
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        }
    };
    counts.joins.set(counts.joins.get() + 1);
    let seed = (slot as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ counts.joins.get();
    let spread = options.lifetime_max.saturating_sub(options.lifetime_min);
    let lifetime = options.lifetime_min + spread.mul_f64(unit(seed));
    let leave_at = (Instant::now() + lifetime).min(end);
    let period = Duration::from_secs_f64(1.0 / f64::from(options.input_hz.max(1)));
    let avatar = c.session().welcome().map(|w| w.avatar);
    while Instant::now() < leave_at {
        if let Some(a) = avatar
            && let Some(p) = c.session().position_of(a)
        {
            let _ = c
                .session()
                .send_input(vec![client::owned_update(a, p)], Instant::now());
        }
        match c
            .run_until(period, |_, e| {
                matches!(e, ClientEvent::Closed | ClientEvent::Kicked { .. })
            })
            .await
        {
            Ok(false) => {}
            Ok(true) | Err(_) => break,
        }
    }
    if unit(seed.rotate_left(17)) < options.vanish_ratio {
        // Gone without a word: the server finds out by its idle timeout.
        drop(c);
        counts.vanished.set(counts.vanished.get() + 1);
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.leave()).await;
        c.session().close(Instant::now());
        let _ = c.flush().await;
        counts.leaves.set(counts.leaves.get() + 1);
    }
}

/// A number in [0, 1) from a seed (SplitMix64's finaliser).
fn unit(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0)
}
