//! What a member's message does to its instance.

use engine::UserIndex;
use net::input::Outcome;
use net::messages::{Kick, KickReason, Target, VersionMismatch};
use net::{Channel, ClientMessage, MessageKind, ProtocolError};

use super::{Instance, Io, MemberState};
use crate::commands::LeaveReason;

impl Instance {
    /// Handles one message from a member on `channel`: validates it, applies
    /// it, answers or relays it.
    pub fn handle_message(
        &mut self,
        user: UserIndex,
        channel: Channel,
        data: &[u8],
        io: &mut Io<'_>,
    ) {
        #[cfg(feature = "fault-injection")]
        if self.fault == Some(super::Fault::Message) {
            panic!("fault injected into {}'s message handling", self.id);
        }
        let Some(i) = self.members.binary_search_by_key(&user, |m| m.user).ok() else {
            debug_assert!(false, "message from {user:?}, not a member");
            return;
        };
        let tick = self.tick_now();
        let member = &mut self.members[i];
        if member.leaving.is_some() {
            // Already told to go; what it says now changes nothing.
            return;
        }
        let MemberState::Joined(joined) = &mut member.state else {
            *io.metrics.dropped.entry("message_before_join").or_default() += 1;
            return;
        };
        let msg = match io.decoder.decode_client(data, channel) {
            Ok(msg) => msg,
            Err(e) => return self.invalid_message(i, e, io),
        };
        if matches!(msg, ClientMessage::Action(..))
            && !joined
                .actions
                .take(io.now, self.config.actions_per_second_max)
        {
            *io.metrics
                .refused_messages
                .entry("action_rate")
                .or_default() += 1;
            return;
        }
        let outcome = joined
            .input
            .handle(&mut self.sim, &mut joined.snapshots, &msg);
        let refused = &mut io.metrics.refused_messages;
        match outcome {
            Outcome::Input { refused: n, .. } => {
                io.metrics.inputs += 1;
                if n > 0 {
                    *refused.entry("owned_update").or_default() += u64::from(n);
                }
            }
            Outcome::StaleInput => *refused.entry("stale_input").or_default() += 1,
            Outcome::Refused(_) => *refused.entry("ownership").or_default() += 1,
            Outcome::ServerAction(_) => *refused.entry("server_action").or_default() += 1,
            Outcome::Pong(pong) => {
                let _ = member.send(io, Channel::State, MessageKind::Pong, tick, &pong);
            }
            Outcome::Broadcast(action) => {
                let target = action.target;
                // Only actions for everyone are replayed to late joiners.
                if action.cached && target == Target::Everyone {
                    self.cache(action.clone());
                }
                self.broadcast(
                    io,
                    Some(user),
                    target,
                    MessageKind::ActionBroadcast,
                    tick,
                    &action,
                );
            }
            Outcome::Ownership(changed) => {
                self.tell_everyone(io, MessageKind::OwnershipChanged, tick, &changed);
            }
        }
    }

    /// Counts an invalid message of member `i`; a member on another protocol
    /// version, or past the limit of invalid messages, is removed.
    fn invalid_message(&mut self, i: usize, error: ProtocolError, io: &mut Io<'_>) {
        *io.metrics
            .invalid_messages
            .entry(error.reason())
            .or_default() += 1;
        let max = self.config.invalid_messages_max;
        let member = &mut self.members[i];
        if let ProtocolError::VersionMismatch { .. } = error {
            let msg = VersionMismatch {
                server_version: net::PROTOCOL_VERSION,
            };
            let _ = member.send(io, Channel::Actions, MessageKind::VersionMismatch, 0, &msg);
            return self.remove_later(i, LeaveReason::ProtocolViolation, io);
        }
        if member.count_invalid(max) {
            let kick = Kick {
                reason: KickReason::ProtocolViolation,
                message: format!("more than {max} invalid messages"),
            };
            let _ = member.send(io, Channel::Actions, MessageKind::Kick, 0, &kick);
            self.remove_later(i, LeaveReason::ProtocolViolation, io);
        }
    }
}
