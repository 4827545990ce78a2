//! Fixed-size histograms the bots fill and the orchestrator merges: no
//! allocation per sample, mergeable across processes as JSON.

use serde::{Deserialize, Serialize};

/// Buckets of a [`Histogram`]: one per millisecond, the last one holds
/// everything at or above `HISTOGRAM_BUCKETS - 1` ms.
pub const HISTOGRAM_BUCKETS: usize = 2_001;

/// Millisecond-resolution histogram of durations from 0 to 2 s (longer ones
/// share the last bucket, and `max_us` keeps the true maximum).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// Non-zero buckets as (milliseconds, count), sorted by milliseconds.
    buckets: Vec<(u32, u64)>,
    count: u64,
    sum_us: u64,
    max_us: u64,
}

/// The recording side of a histogram: a dense array, turned into the sparse
/// [`Histogram`] once at the end.
#[derive(Debug, Clone)]
pub struct Recorder {
    counts: Box<[u64; HISTOGRAM_BUCKETS]>,
    count: u64,
    sum_us: u64,
    max_us: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            counts: Box::new([0; HISTOGRAM_BUCKETS]),
            count: 0,
            sum_us: 0,
            max_us: 0,
        }
    }
}

impl Recorder {
    pub fn record(&mut self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let ms = usize::try_from(us / 1_000).unwrap_or(usize::MAX);
        self.counts[ms.min(HISTOGRAM_BUCKETS - 1)] += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }

    pub fn finish(&self) -> Histogram {
        Histogram {
            buckets: sparse(&self.counts[..]),
            count: self.count,
            sum_us: self.sum_us,
            max_us: self.max_us,
        }
    }
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn merge(&mut self, other: &Histogram) {
        let mut dense = vec![0u64; HISTOGRAM_BUCKETS];
        for &(ms, n) in self.buckets.iter().chain(&other.buckets) {
            dense[(ms as usize).min(HISTOGRAM_BUCKETS - 1)] += n;
        }
        self.buckets = sparse(&dense);
        self.count += other.count;
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The `q` quantile (0..=1) in milliseconds, at bucket resolution; the
    /// true maximum for `q = 1`. None when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        if q >= 1.0 {
            return Some(self.max_us as f64 / 1_000.0);
        }
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for &(ms, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return Some(f64::from(ms));
            }
        }
        Some(self.max_us as f64 / 1_000.0)
    }

    pub fn mean_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_us as f64 / self.count as f64 / 1_000.0)
    }
}

fn sparse(dense: &[u64]) -> Vec<(u32, u64)> {
    dense
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(ms, n)| (ms as u32, *n))
        .collect()
}

/// Quantile of a list of plain values (join times), nearest rank.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn quantiles_and_merge() {
        let mut a = Recorder::default();
        for ms in 1..=100 {
            a.record(Duration::from_millis(ms));
        }
        let mut b = Recorder::default();
        b.record(Duration::from_secs(5));
        let mut h = a.finish();
        h.merge(&b.finish());
        assert_eq!(h.count(), 101);
        assert_eq!(h.quantile_ms(0.5), Some(51.0));
        assert_eq!(h.quantile_ms(0.99), Some(100.0));
        assert_eq!(h.quantile_ms(1.0), Some(5_000.0));
        assert_eq!(Histogram::default().quantile_ms(0.5), None);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), Some(2.0));
    }
}
