//! Tick-duration statistics over a window, without allocating per sample.

use std::time::Duration;

/// The durations of the ticks in the current window (one status period).
///
/// Holds at most `capacity` samples; beyond that, samples are counted but
/// not kept, and the percentiles describe the first `capacity` of them.
#[derive(Debug, Clone)]
pub struct TickTimes {
    samples_ns: Vec<u64>,
    scratch: Vec<u64>,
    capacity: usize,
    count: u64,
}

/// Summary of one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickSummary {
    pub ticks: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl TickTimes {
    pub fn new(capacity: usize) -> Self {
        TickTimes {
            samples_ns: Vec::with_capacity(capacity),
            scratch: Vec::with_capacity(capacity),
            capacity,
            count: 0,
        }
    }

    pub fn record(&mut self, d: Duration) {
        self.count += 1;
        if self.samples_ns.len() < self.capacity {
            self.samples_ns
                .push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        }
    }

    /// Gives back the memory not holding a sample (for an instance that
    /// stops ticking); the buffers grow again, to `capacity`, as it ticks.
    pub fn shrink(&mut self) {
        self.samples_ns.shrink_to_fit();
        self.scratch = Vec::new();
    }

    /// Summarises the window and starts a new one.
    pub fn take(&mut self) -> TickSummary {
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.samples_ns);
        self.scratch.sort_unstable();
        let pick = |q: f64| -> Duration {
            match self.scratch.len() {
                0 => Duration::ZERO,
                n => {
                    let i = ((n - 1) as f64 * q).round() as usize;
                    Duration::from_nanos(self.scratch[i.min(n - 1)])
                }
            }
        };
        let summary = TickSummary {
            ticks: self.count,
            p50: pick(0.50),
            p99: pick(0.99),
            max: Duration::from_nanos(self.scratch.last().copied().unwrap_or(0)),
        };
        self.samples_ns.clear();
        self.count = 0;
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_window() {
        let mut t = TickTimes::new(1000);
        for us in 1..=100 {
            t.record(Duration::from_micros(us));
        }
        let s = t.take();
        assert_eq!(s.ticks, 100);
        assert_eq!(s.p50, Duration::from_micros(51));
        assert_eq!(s.p99, Duration::from_micros(99));
        assert_eq!(s.max, Duration::from_micros(100));
        assert_eq!(t.take().ticks, 0, "take starts a new window");
    }
}
