//! How an instance's members are sent away: kicks, drain, the end.

use std::time::Duration;

use engine::UserIndex;
use net::messages::{Draining, Kick, KickReason};
use net::{Channel, MessageKind};

use super::{Instance, Io};
use crate::commands::LeaveReason;

impl Instance {
    /// Tells a member why it is being removed (when it can hear it), and
    /// asks the router to remove it.
    pub fn kick(&mut self, user: UserIndex, kick: &Kick, reason: LeaveReason, io: &mut Io<'_>) {
        let tick = self.tick_now();
        let Some(i) = self.members.binary_search_by_key(&user, |m| m.user).ok() else {
            return;
        };
        let member = &mut self.members[i];
        if member.is_listening() {
            let _ = member.send(io, Channel::Actions, MessageKind::Kick, tick, kick);
        }
        self.remove_later(i, reason, io);
    }

    /// Kicks every session of `user_id` (the control API).
    pub fn kick_user(&mut self, user_id: &str, banned: bool, message: &str, io: &mut Io<'_>) {
        let kick = Kick {
            reason: if banned {
                KickReason::Banned
            } else {
                KickReason::Operator
            },
            message: message
                .chars()
                .take(net::messages::TEXT_BYTES_MAX / 4)
                .collect(),
        };
        let users: Vec<UserIndex> = self
            .members
            .iter()
            .filter(|m| m.user_id == user_id)
            .map(|m| m.user)
            .collect();
        for user in users {
            self.kick(user, &kick, LeaveReason::Kicked, io);
        }
    }

    /// Kicks everyone: the instance is ending.
    pub fn kick_all(&mut self, reason: KickReason, message: &str, io: &mut Io<'_>) {
        let kick = Kick {
            reason,
            message: message.into(),
        };
        for i in 0..self.members.len() {
            let user = self.members[i].user;
            self.kick(user, &kick, LeaveReason::InstanceEnded, io);
        }
    }

    /// Warns everyone that the instance ends in `grace`; admits nobody more.
    pub fn drain(&mut self, grace: Duration, io: &mut Io<'_>) {
        self.drain_until = Some(io.now + grace);
        let grace_ms = grace.as_millis().min(u128::from(u32::MAX)) as u32;
        let tick = self.tick_now();
        self.tell_everyone(io, MessageKind::Draining, tick, &Draining { grace_ms });
    }
}
