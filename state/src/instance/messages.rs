//! What a member's message does to its instance.

use engine::UserIndex;
use net::input::Outcome;
use net::messages::{
    Cache, Kick, KickReason, OwnershipRefusal, OwnershipRefused, OwnershipRequested, Target,
    VersionMismatch,
};
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
        member.last_heard = io.now;
        // Actions, ownership requests and media offers share one budget:
        // each may make the server write to other members. An answer is
        // not budgeted: it answers the node's own offer, and one dropped
        // would stall the member's media changes.
        let budgeted = match &msg {
            ClientMessage::Action(..) | ClientMessage::OwnershipRequest(..) => true,
            ClientMessage::Sdp(_, s) => s.kind == net::messages::ArchivedSdpKind::Offer,
            _ => false,
        };
        if budgeted
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
                for (reason, count) in [
                    ("update_unknown_entity", n.unknown_entity),
                    ("update_not_owner", n.not_owner),
                ] {
                    if count > 0 {
                        *refused.entry(reason).or_default() += u64::from(count);
                    }
                }
            }
            Outcome::StaleInput => *refused.entry("stale_input").or_default() += 1,
            Outcome::ServerAction(action) if action.topic == super::media::MEDIA_TOPIC => {
                self.media_request(user, &action.action_type, &action.payload, io);
            }
            Outcome::ServerAction(_) => *refused.entry("server_action").or_default() += 1,
            Outcome::Pong(pong) => {
                let _ = member.send(io, Channel::State, MessageKind::Pong, tick, &pong);
            }
            Outcome::Broadcast(action) if action.topic == super::media::MEDIA_TOPIC => {
                // The server's own topic: a member may not speak on it
                // (others would take its words for the node's).
                *refused.entry("media_topic_reserved").or_default() += 1;
            }
            Outcome::Broadcast(action) => {
                let target = action.target;
                if let Target::User(u) = target
                    && !super::is_listening_member(&self.members, u)
                {
                    *refused.entry("action_unknown_user").or_default() += 1;
                    return;
                }
                // Only actions for everyone are replayed to late joiners.
                if action.cache != Cache::No && target == Target::Everyone {
                    self.cache(action.clone());
                }
                self.broadcast(
                    io,
                    Some(user),
                    target,
                    Some(&action.topic),
                    MessageKind::ActionBroadcast,
                    tick,
                    &action,
                );
            }
            Outcome::Sdp(sdp) => self.member_sdp(i, sdp, io),
            Outcome::Ownership { network_id, op } => {
                let members = &self.members;
                let is_member = |u: u32| super::is_listening_member(members, u);
                let owned_max = self.config.owned_entities_max;
                let result = net::input::change_ownership(
                    &mut self.sim,
                    user,
                    network_id,
                    op,
                    owned_max,
                    is_member,
                );
                match result {
                    Ok(Some(changed)) => {
                        self.tell_everyone(io, MessageKind::OwnershipChanged, tick, &changed);
                    }
                    Ok(None) => {}
                    Err(reason) => {
                        *io.metrics
                            .refused_messages
                            .entry(refusal_label(reason))
                            .or_default() += 1;
                        let refusal = OwnershipRefused {
                            network_id,
                            op,
                            reason,
                        };
                        self.tell(io, user, MessageKind::OwnershipRefused, tick, &refusal);
                        if let OwnershipRefusal::OwnedBy(owner) = reason {
                            let asked = OwnershipRequested {
                                network_id,
                                by: user.0,
                            };
                            self.tell(
                                io,
                                UserIndex(owner),
                                MessageKind::OwnershipRequested,
                                tick,
                                &asked,
                            );
                        }
                    }
                }
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

/// The metrics label of a refused ownership request.
fn refusal_label(reason: OwnershipRefusal) -> &'static str {
    match reason {
        OwnershipRefusal::UnknownEntity => "ownership_unknown_entity",
        OwnershipRefusal::Avatar => "ownership_avatar",
        OwnershipRefusal::OwnedBy(_) => "ownership_owned_by_other",
        OwnershipRefusal::NotOwner => "ownership_not_owner",
        OwnershipRefusal::UnknownUser(_) => "ownership_unknown_user",
        OwnershipRefusal::SceneBody => "ownership_scene_body",
        OwnershipRefusal::TooMany(_) => "ownership_too_many",
    }
}
