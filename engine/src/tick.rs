//! Simulation ticks, used as change stamps.

/// A simulation tick number. Every row of every column records the tick at
/// which it was last written, so "what changed since tick T" is a comparison.
///
/// Tick 0 is the state as loaded, before the first step. At 60 Hz a `u32`
/// lasts 2.2 years of continuous running; [`Tick::next`] saturates rather
/// than wrapping so change comparisons never invert.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(pub u32);

impl Tick {
    pub const ZERO: Tick = Tick(0);

    pub fn next(self) -> Tick {
        Tick(self.0.saturating_add(1))
    }

    /// True when a row stamped `self` changed after `since`.
    pub fn is_newer_than(self, since: Tick) -> bool {
        self.0 > since.0
    }
}
