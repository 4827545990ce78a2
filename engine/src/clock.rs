//! The fixed-step clock. It never reads the time: the caller passes `now`.

use std::time::{Duration, Instant};

/// Turns wall-clock time into a whole number of fixed steps.
///
/// The first call to [`FixedClock::advance`] runs one step at once and sets
/// the schedule; after that, one step is due every `step`. When the caller
/// falls behind (a stall, a debugger, an overloaded core) at most
/// `catch_up_steps_max` steps run in one call and the rest are skipped, so a
/// late instance degrades by slowing down instead of spiralling.
#[derive(Clone, Debug)]
pub struct FixedClock {
    step: Duration,
    catch_up_steps_max: u32,
    next_due: Option<Instant>,
}

/// The outcome of one [`FixedClock::advance`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockAdvance {
    /// Steps to run now.
    pub steps: u32,
    /// Steps that were due but are dropped because of the catch-up cap.
    pub skipped: u64,
}

impl FixedClock {
    pub fn new(step: Duration, catch_up_steps_max: u32) -> Self {
        assert!(!step.is_zero(), "the fixed step must be positive");
        FixedClock {
            step,
            catch_up_steps_max: catch_up_steps_max.max(1),
            next_due: None,
        }
    }

    pub fn step(&self) -> Duration {
        self.step
    }

    /// When the next step falls due (`None` before the first advance).
    pub fn next_due(&self) -> Option<Instant> {
        self.next_due
    }

    /// Stops the clock: nothing falls due until [`Self::resume`].
    pub fn pause(&mut self) {
        self.next_due = None;
    }

    /// Restarts a stopped clock with a step due at `now` (no catch-up for
    /// the time it stood still); a running clock is left as it is.
    pub fn resume(&mut self, now: Instant) {
        if self.next_due.is_none() {
            self.next_due = Some(now);
        }
    }

    pub fn advance(&mut self, now: Instant) -> ClockAdvance {
        let Some(due) = self.next_due else {
            self.next_due = Some(now + self.step);
            return ClockAdvance {
                steps: 1,
                skipped: 0,
            };
        };
        if now < due {
            return ClockAdvance::default();
        }
        let behind = now.duration_since(due).as_nanos() / self.step.as_nanos();
        let due_steps = u64::try_from(behind).unwrap_or(u64::MAX).saturating_add(1);
        let steps = due_steps.min(u64::from(self.catch_up_steps_max));
        // Whole steps are kept on the original grid, so tick times do not drift.
        let grid = self
            .step
            .saturating_mul(u32::try_from(due_steps).unwrap_or(u32::MAX));
        self.next_due = Some(due + grid);
        ClockAdvance {
            steps: steps as u32,
            skipped: due_steps - steps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_follow_the_grid_and_catch_up_is_capped() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = FixedClock::new(ms(10), 3);
        assert_eq!(c.advance(t0).steps, 1);
        assert_eq!(c.advance(t0 + ms(5)).steps, 0);
        assert_eq!(c.advance(t0 + ms(10)).steps, 1);
        assert_eq!(c.next_due(), Some(t0 + ms(20)));
        // 25 ms later than due: 3 steps were due; one more would be 30 ms late.
        let a = c.advance(t0 + ms(45));
        assert_eq!((a.steps, a.skipped), (3, 0));
        assert_eq!(c.next_due(), Some(t0 + ms(50)));
        // A one-second stall: 100 steps due, 3 run, 97 skipped.
        let a = c.advance(t0 + ms(1045));
        assert_eq!((a.steps, a.skipped), (3, 97));
        assert_eq!(c.next_due(), Some(t0 + ms(1050)));
    }

    #[test]
    fn a_paused_clock_resumes_without_catching_up() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = FixedClock::new(ms(10), 3);
        assert_eq!(c.advance(t0).steps, 1);
        c.pause();
        assert_eq!(c.next_due(), None);
        c.resume(t0 + ms(5000));
        assert_eq!(c.next_due(), Some(t0 + ms(5000)));
        let a = c.advance(t0 + ms(5000));
        assert_eq!((a.steps, a.skipped), (1, 0));
        assert_eq!(c.next_due(), Some(t0 + ms(5010)));
        // Resuming a running clock changes nothing.
        c.resume(t0 + ms(9000));
        assert_eq!(c.next_due(), Some(t0 + ms(5010)));
    }
}
