//! An instance's clock: ticks, snapshots, timers, figures.

use std::time::{Duration, Instant};

use net::messages::{Kick, KickReason};
use net::snapshot::WorldFrame;
use net::{Channel, MessageKind};

use super::{Instance, Io, TickReport};
use crate::commands::{EndReason, InstanceKind, InstanceStats, LeaveReason};

/// How often an instance looks for silent members.
const SILENCE_CHECK_PERIOD: Duration = Duration::from_secs(1);

impl Instance {
    /// When the instance ends by itself at `now`, if it does.
    pub fn expired(&self, now: Instant) -> Option<EndReason> {
        if self.drain_until.is_some_and(|t| now >= t) {
            return Some(EndReason::Drained);
        }
        if self.empty_deadline().is_some_and(|t| now >= t) {
            return Some(EndReason::Empty);
        }
        None
    }

    /// When the instance ends if nobody joins.
    pub fn empty_deadline(&self) -> Option<Instant> {
        Some(self.empty_since? + self.empty_timeout?)
    }

    /// When this instance next needs the shard's attention (a sleeping
    /// instance has no tick due: only its empty deadline or drain).
    pub fn wake_at(&self) -> Option<Instant> {
        let tick = self.sim.next_tick_due();
        let empty = self.empty_deadline();
        // A media instance never ticks: its members' silence is checked on
        // a timer of its own.
        let silence = (self.kind == InstanceKind::Media
            && !self.members.is_empty()
            && self.config.silence_timeout.is_some())
        .then_some(self.next_silence_check);
        [tick, empty, self.drain_until, silence]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs the ticks due at `io.now`, then sends every joined member its
    /// snapshot.
    pub fn tick(&mut self, io: &mut Io<'_>) -> TickReport {
        #[cfg(feature = "fault-injection")]
        if self.fault == Some(super::Fault::Tick) {
            panic!("fault injected into {}'s tick", self.id);
        }
        if self.asleep {
            // A timer queued before it fell asleep: nothing to run; or a
            // media instance, whose only timer is the silence check.
            self.check_silence(io);
            return TickReport::default();
        }
        let period = self.sim.config().tick_duration();
        let lateness = self
            .sim
            .next_tick_due()
            .map_or(Duration::ZERO, |due| io.now.saturating_duration_since(due));
        let due = self.sim.due_ticks(io.now);
        for _ in 0..due.steps {
            let started = (io.clock)();
            self.sim.step();
            let took = (io.clock)().saturating_duration_since(started);
            self.tick_times.record(took);
            io.metrics.observe_tick(took.as_micros() as u64);
        }
        io.metrics.skipped_ticks += due.skipped;
        let report = TickReport {
            steps: due.steps,
            late: lateness > period,
        };
        if due.steps == 0 {
            return report;
        }
        if self.members.is_empty() && self.sim.at_rest() {
            // Nothing would change and nobody would see it: stop ticking
            // until someone joins, and give back what only a ticking
            // instance uses (the physics world, the snapshot frame, room
            // for members and tick times); a join builds them again.
            self.sim.pause();
            self.frame = WorldFrame::default();
            self.members.shrink_to_fit();
            self.tick_times.shrink();
            self.asleep = true;
            return report;
        }
        self.check_silence(io);
        // Snapshots go out on ticks that are multiples of the interval; a
        // late call that ran several ticks sends one if it passed such a tick.
        let every = (self.config.tick_hz / self.snapshot_hz.max(1)).max(1);
        let tick = self.sim.world().tick().0;
        if tick / every == tick.saturating_sub(due.steps) / every {
            return report;
        }
        self.frame.capture(self.sim.world(), &self.quantizer);
        // Rounds, not ticks: a late shard runs several ticks per call, and
        // pacing by tick would then skip the same members every time.
        let round = self.snapshot_rounds;
        self.snapshot_rounds = round.wrapping_add(1);
        let divisor = io.snapshot_divisor.max(1);
        for member in &mut self.members {
            if !member.is_listening() {
                continue;
            }
            // Shedding load: a snapshot every `divisor` rounds, members
            // spread over the rounds between.
            if divisor > 1 && round.wrapping_add(member.user.0) % divisor != 0 {
                continue;
            }
            let viewer = member
                .avatar()
                .and_then(|a| self.sim.world().transform(a).ok())
                .map(|t| t.position)
                .unwrap_or_default();
            match member.send_snapshot(io, &self.frame, viewer) {
                Ok(len) => {
                    io.metrics.snapshots_sent += 1;
                    io.metrics.snapshot_bytes += len as u64;
                }
                Err(reason) => *io.metrics.dropped.entry(reason).or_default() += 1,
            }
        }
        report
    }

    /// Looks for silent members once a [`SILENCE_CHECK_PERIOD`].
    fn check_silence(&mut self, io: &mut Io<'_>) {
        if io.now >= self.next_silence_check {
            self.next_silence_check = io.now + SILENCE_CHECK_PERIOD;
            self.remove_silent(io);
        }
    }

    /// Removes the joined members the instance has heard no message from
    /// for its silence timeout (an application heartbeat: clients send a
    /// `Ping` a second when they have nothing else to say). They are told
    /// why, in case they still listen.
    fn remove_silent(&mut self, io: &mut Io<'_>) {
        let Some(timeout) = self.config.silence_timeout else {
            return;
        };
        let tick = self.tick_now();
        for i in 0..self.members.len() {
            let member = &mut self.members[i];
            if !member.is_listening()
                || io.now.saturating_duration_since(member.last_heard) <= timeout
            {
                continue;
            }
            let kick = Kick {
                reason: KickReason::Silent,
                message: format!("no message for {} ms", timeout.as_millis()),
            };
            let _ = member.send(io, Channel::Actions, MessageKind::Kick, tick, &kick);
            self.remove_later(i, LeaveReason::Silent, io);
        }
    }

    /// This instance's figures for the last second.
    pub fn stats(&mut self) -> InstanceStats {
        let summary = self.tick_times.take();
        if summary.ticks > 0 {
            self.last_tick_p50_us = summary.p50.as_micros() as u32;
            self.last_tick_p99_us = summary.p99.as_micros() as u32;
        }
        InstanceStats {
            instance_id: self.id.clone(),
            users: self.members.iter().filter(|m| m.is_joined()).count() as u32,
            entities: self.sim.world().len() as u32,
            tick_p50_us: self.last_tick_p50_us,
            tick_p99_us: self.last_tick_p99_us,
        }
    }
}
