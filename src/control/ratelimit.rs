//! Joins per client address: a token bucket per IP, refilled continuously
//! at `per_minute` a minute with a burst of the same size. The table of
//! addresses is bounded; when full, idle addresses are forgotten, and if
//! none are idle new addresses are refused (so a flood of spoofed sources
//! cannot grow it).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

#[derive(Debug)]
pub struct JoinRateLimiter {
    per_minute: u32,
    ips_max: usize,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl JoinRateLimiter {
    pub fn new(per_minute: u32, ips_max: usize) -> Self {
        JoinRateLimiter {
            per_minute,
            ips_max,
            buckets: HashMap::new(),
        }
    }

    fn refill(&self, tokens: f64, last: Instant, now: Instant) -> f64 {
        let per_s = f64::from(self.per_minute) / 60.0;
        (tokens + now.saturating_duration_since(last).as_secs_f64() * per_s)
            .min(f64::from(self.per_minute))
    }

    /// Takes one join for `ip`; false when it is over its rate.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.ips_max {
            let full = f64::from(self.per_minute);
            let buckets = std::mem::take(&mut self.buckets);
            self.buckets = buckets
                .into_iter()
                .filter(|&(_, (t, last))| self.refill(t, last, now) < full)
                .collect();
            if self.buckets.len() >= self.ips_max {
                return false;
            }
        }
        let (tokens, last) = self
            .buckets
            .get(&ip)
            .copied()
            .unwrap_or((f64::from(self.per_minute), now));
        let tokens = self.refill(tokens, last, now);
        if tokens >= 1.0 {
            self.buckets.insert(ip, (tokens - 1.0, now));
            true
        } else {
            self.buckets.insert(ip, (tokens, now));
            false
        }
    }

    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refuses_beyond_the_rate_and_refills() {
        let mut l = JoinRateLimiter::new(3, 16);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t = Instant::now();
        assert!(l.allow(ip, t) && l.allow(ip, t) && l.allow(ip, t));
        assert!(!l.allow(ip, t));
        assert!(l.allow(ip, t + Duration::from_secs(20)));
    }

    #[test]
    fn the_address_table_is_bounded() {
        let mut l = JoinRateLimiter::new(2, 2);
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        assert!(l.allow(a, t) && l.allow(b, t));
        assert!(!l.allow(c, t), "no idle address to forget");
        assert!(
            l.allow(c, t + Duration::from_secs(60)),
            "idle ones are forgotten"
        );
        assert!(l.tracked() <= 2);
    }
}
