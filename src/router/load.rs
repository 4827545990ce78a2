//! The shard's load and what it does when it runs short of CPU: it refuses
//! new joins above one share of its core, and lowers every peer's snapshot
//! rate a step at a time above another, before anything else gives way.
//!
//! The shell measures the share (the time the shard's thread ran, and by
//! default waited to run, over wall time) and reports it with
//! [`super::Shard::observe_load`]; nothing here reads a clock.

use std::time::{Duration, Instant};

/// Peers a measurement must have come from before admission scales it by
/// the peers to come.
pub const PROJECTION_PEERS_MIN: usize = 100;

/// How the shard sheds load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverloadConfig {
    /// Share of the core (0..=1, smoothed) at or above which joins are
    /// refused with `busy`; 1 or more never refuses.
    pub join_refuse_share: f32,
    /// Held at or above it for `degrade_after`, snapshots go one step
    /// slower (one every `n + 1` ticks instead of every `n`), then again
    /// each `adjust_interval` while it lasts. Joins are refused below it, so
    /// only load from the peers already in (not a wave of handshakes) gets
    /// here.
    pub degrade_share: f32,
    /// Below it, one step faster again each `adjust_interval`.
    pub recover_share: f32,
    /// How long the load must stay at the degrade share before the first step.
    pub degrade_after: Duration,
    /// The slowest step: one snapshot every this many ticks.
    pub snapshot_divisor_max: u32,
    /// Least time between two steps.
    pub adjust_interval: Duration,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        OverloadConfig {
            join_refuse_share: 0.85,
            degrade_share: 0.95,
            recover_share: 0.85,
            degrade_after: Duration::from_secs(2),
            snapshot_divisor_max: 4,
            adjust_interval: Duration::from_secs(1),
        }
    }
}

/// The smoothed load and the snapshot step it led to.
#[derive(Debug, Clone)]
pub struct Load {
    config: OverloadConfig,
    share: Option<f32>,
    /// Peers when the last sample was taken: the load they made.
    peers_sampled: usize,
    divisor: u32,
    next_adjust: Option<Instant>,
    /// Since when the load has been at the degrade share, if it is.
    over_since: Option<Instant>,
}

impl Load {
    pub fn new(config: OverloadConfig) -> Load {
        Load {
            config,
            share: None,
            peers_sampled: 0,
            divisor: 1,
            next_adjust: None,
            over_since: None,
        }
    }

    /// Takes one measurement (share of the core since the last one) and
    /// moves the snapshot step if it is time to.
    pub fn observe(&mut self, share: f32, peers: usize, now: Instant) {
        self.peers_sampled = peers;
        let share = if share.is_finite() {
            share.max(0.0)
        } else {
            0.0
        };
        // Half of each new sample: a burst must last a few samples to count.
        let smoothed = self.share.map_or(share, |s| 0.5 * s + 0.5 * share);
        self.share = Some(smoothed);
        let c = &self.config;
        if c.degrade_share < 1.0 && smoothed >= c.degrade_share {
            self.over_since.get_or_insert(now);
        } else {
            self.over_since = None;
        }
        if self.next_adjust.is_some_and(|t| now < t) {
            return;
        }
        let before = self.divisor;
        let sustained = self
            .over_since
            .is_some_and(|since| now.saturating_duration_since(since) >= c.degrade_after);
        if sustained && self.divisor < c.snapshot_divisor_max {
            self.divisor += 1;
        } else if smoothed < c.recover_share && self.divisor > 1 {
            self.divisor -= 1;
        }
        if self.divisor != before {
            tracing::info!(
                load = smoothed,
                every = self.divisor,
                "shard load: one snapshot every {} ticks",
                self.divisor
            );
            self.next_adjust = Some(now + c.adjust_interval);
        }
    }

    /// The smoothed share of the core (0 before any measurement).
    pub fn share(&self) -> f32 {
        self.share.unwrap_or(0.0)
    }

    /// Whether one more peer, with `peers` there now, should be refused
    /// (never with a refuse share of 1 or more: a saturated thread
    /// measures about 1). The measured share lags the joins admitted since
    /// (and their handshakes come later still), so it is scaled by the
    /// peers there will be over the peers that made it: a wave of joins
    /// stops near the limit instead of overshooting it.
    pub fn refuses_joins(&self, peers: usize) -> bool {
        if self.config.join_refuse_share >= 1.0 {
            return false;
        }
        self.projected_share(peers + 1) >= self.config.join_refuse_share
    }

    /// The share the shard would use with `peers`, from the last measurement.
    fn projected_share(&self, peers: usize) -> f32 {
        let share = self.share();
        // With few peers most of the load is not theirs (instances ticking,
        // handshakes): scaling it by peers would refuse a nearly idle shard.
        if self.peers_sampled < PROJECTION_PEERS_MIN {
            return share;
        }
        share * (peers.max(self.peers_sampled) as f32 / self.peers_sampled as f32)
    }

    /// Peers get a snapshot every this many ticks (1: every tick).
    pub fn snapshot_divisor(&self) -> u32 {
        self.divisor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_refuses_joins_and_steps_snapshots_down_then_back_up() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut load = Load::new(OverloadConfig::default());
        assert!(!load.refuses_joins(100));
        load.observe(0.5, 100, t0);
        assert_eq!(
            (load.refuses_joins(100), load.snapshot_divisor()),
            (false, 1)
        );
        // One hot sample is smoothed away; a few are not.
        load.observe(1.0, 100, t0 + ms(250));
        assert_eq!(load.share(), 0.75);
        assert!(!load.refuses_joins(100));
        load.observe(1.0, 100, t0 + ms(500));
        assert!(load.refuses_joins(100));
        // The smoothed share reaches the degrade share (95%) at 1 s:
        // snapshots slow down once it has lasted 2 s, then a step a second,
        // to the maximum.
        let mut at = ms(750);
        let mut steps = Vec::new();
        while at <= ms(6_000) {
            load.observe(1.0, 100, t0 + at);
            steps.push((at.as_millis(), load.snapshot_divisor()));
            at += ms(250);
        }
        let first = steps.iter().find(|(_, d)| *d == 2).map(|(t, _)| *t);
        assert_eq!(first, Some(3_000), "{steps:?}");
        assert_eq!(load.snapshot_divisor(), 4);
        // Between recover (85%) and degrade nothing moves; below, it steps back.
        for k in 0..40 {
            load.observe(0.9, 100, t0 + ms(6_250 + 250 * k));
        }
        assert_eq!(load.snapshot_divisor(), 4);
        assert!(load.refuses_joins(100));
        for k in 0..40 {
            load.observe(0.5, 100, t0 + ms(20_000 + 250 * k));
        }
        assert_eq!(load.snapshot_divisor(), 1);
        assert!(!load.refuses_joins(100));
        // A short burst over the degrade share does not slow anything.
        for k in 0..6 {
            load.observe(1.0, 100, t0 + ms(40_000 + 250 * k));
        }
        assert_eq!(load.snapshot_divisor(), 1);
        // A wave of joins stops where the peers would reach the limit: 50%
        // with 100 peers admits up to 169 (170 would make 85%).
        load.observe(0.5, 100, t0 + ms(60_000));
        for _ in 0..20 {
            load.observe(0.5, 100, t0 + ms(60_000));
        }
        assert!(!load.refuses_joins(168));
        assert!(load.refuses_joins(169));
        // Measured with a handful of peers, the load is not theirs: a burst
        // of joins to a nearly idle shard is admitted.
        for _ in 0..20 {
            load.observe(0.35, 1, t0 + ms(61_000));
        }
        assert!(!load.refuses_joins(50));
        // Garbage measurements count as idle, not as a panic.
        load.observe(f32::NAN, 100, t0 + ms(50_000));
        assert!(load.share().is_finite());
    }
}
