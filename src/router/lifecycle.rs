//! The router's side of instance and session lifecycles: create, join,
//! ticks and their timers, drain, end, failure, stall detection, stats.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use net::conn::AcceptError;
use net::messages::KickReason;
use net::slab::Key;
use state::commands::{EndReason, Event, InstanceSpec, JoinRefused, JoinRequest, LeaveReason};
use state::instance::Instance;

use super::{Hosted, Link, Shard};

impl Shard {
    pub(super) fn create_instance(&mut self, spec: InstanceSpec, now: Instant) {
        let id = spec.id.clone();
        let refused = |reason: String| Event::InstanceEnded {
            shard: self.index,
            instance_id: id.clone(),
            reason: EndReason::LoadFailed(reason),
        };
        if self.instance_ids.contains_key(&id) {
            let e = refused("an instance with this id already runs on the shard".into());
            return self.events.push_back(e);
        }
        if self.instances.len() >= self.config.instances_max {
            let e = refused(format!(
                "the shard hosts its maximum of {} instances",
                self.config.instances_max
            ));
            return self.events.push_back(e);
        }
        let instance = match Instance::new(spec, self.config.instance.clone(), now) {
            Ok(i) => i,
            Err(e) => return self.events.push_back(refused(e.to_string())),
        };
        let entities = instance.sim().world().len() as u32;
        let key = self.instances.insert(Hosted {
            instance,
            scheduled: None,
            reported_asleep: false,
        });
        self.instance_ids.insert(id.clone(), key);
        self.events.push_back(Event::InstanceStarted {
            shard: self.index,
            instance_id: id,
            entities,
        });
        // The first tick starts the instance's clock.
        self.tick(key, now);
        self.schedule(key);
    }

    pub(super) fn join(
        &mut self,
        request: &JoinRequest,
        now: Instant,
    ) -> Result<String, JoinRefused> {
        if self.draining {
            return Err(JoinRefused::Draining);
        }
        if self.load.refuses_joins(self.conns.len()) {
            self.metrics.joins_refused_busy += 1;
            return Err(JoinRefused::Busy {
                load_percent: (self.load.share() * 100.0).round() as u32,
            });
        }
        let unknown = || JoinRefused::UnknownInstance(request.instance_id.clone());
        let &key = self
            .instance_ids
            .get(&request.instance_id)
            .ok_or_else(unknown)?;
        let hosted = self.instances.get_mut(key).ok_or_else(unknown)?;
        // A user joining again replaces its older session, whose seat it
        // takes: counted as free here, given up only once this join can no
        // longer fail for a reason of the shard's or the offer's.
        hosted.instance.can_join_as(&request.user_id)?;
        let replacing = hosted
            .instance
            .older_sessions(&request.user_id)
            .next()
            .is_some();
        // It wakes: its next figures go out even if it sleeps again soon.
        hosted.reported_asleep = false;
        if self.conns.len() >= self.config.conn.conns_max {
            return Err(JoinRefused::ShardFull(self.config.conn.conns_max));
        }
        let (conn, answer) = self
            .conns
            .accept(&request.offer_sdp, now)
            .map_err(|e| match e {
                AcceptError::Full(max) => JoinRefused::ShardFull(max),
                AcceptError::BadOffer(_) | AcceptError::NoDataChannel => {
                    JoinRefused::BadOffer(e.to_string())
                }
            })?;
        if replacing {
            if request.reply.is_closed() {
                // Nobody waits for this join any more (the HTTP handler
                // timed out or the client hung up): the older session stays.
                self.conns.close(conn);
                return Err(JoinRefused::Abandoned);
            }
            // The older session is told why and disconnected first (`call`
            // carries out the removals it asks for).
            let user_id = request.user_id.clone();
            self.call(key, now, |i, io| i.replace_user(&user_id, io));
        }
        let Some(hosted) = self.instances.get_mut(key) else {
            // Its instance failed while replacing (a bug, reported as such).
            self.conns.close(conn);
            return Err(unknown());
        };
        let joined = hosted.instance.join(
            request.session,
            request.user_id.clone(),
            request.name.clone(),
            request.topics.clone(),
            conn,
            now,
        );
        let user = match joined {
            Ok(user) => user,
            Err(e) => {
                self.conns.close(conn);
                return Err(e);
            }
        };
        self.links.insert(
            conn,
            Link {
                instance: key,
                user,
                session: request.session,
            },
        );
        self.by_session.insert(request.session, conn);
        // It is no longer empty: drop the empty deadline from its timer.
        self.schedule(key);
        Ok(answer)
    }

    pub(super) fn schedule(&mut self, key: Key) {
        if let Some(hosted) = self.instances.get_mut(key)
            && let Some(at) = hosted.instance.wake_at()
            && hosted.scheduled.is_none_or(|s| at < s)
        {
            hosted.scheduled = Some(at);
            self.timers.push(Reverse((at, key)));
        }
    }

    pub(super) fn instance_timer(&mut self, key: Key, at: Instant, now: Instant) {
        let Some(hosted) = self.instances.get_mut(key) else {
            return; // A timer of an instance already ended.
        };
        if hosted.scheduled == Some(at) {
            hosted.scheduled = None;
        }
        if let Some(reason) = hosted.instance.expired(now) {
            return self.end_instance(key, reason, now);
        }
        self.tick(key, now);
        self.schedule(key);
    }

    /// Runs the instance's due ticks and snapshots; tracks stalls.
    fn tick(&mut self, key: Key, now: Instant) {
        if let Some(report) = self.call(key, now, |i, io| i.tick(io))
            && report.steps > 0
        {
            self.track_stall(report.late, now);
        }
    }

    fn track_stall(&mut self, behind: bool, now: Instant) {
        if !behind {
            self.stall = super::Stall::default();
            return;
        }
        let since = *self.stall.behind_since.get_or_insert(now);
        let behind = now.saturating_duration_since(since);
        if !self.stall.reported && behind >= self.config.stall_report {
            self.stall.reported = true;
            self.metrics.stalls += 1;
            let behind_ms = behind.as_millis() as u64;
            tracing::warn!(
                shard = self.index,
                behind_ms,
                "shard stalled: ticks behind schedule"
            );
            self.events.push_back(Event::Stalled {
                shard: self.index,
                behind_ms,
            });
        }
    }

    /// Kicks every member (the kick leaves before each connection closes),
    /// then ends the instance.
    pub(super) fn end_instance(&mut self, key: Key, reason: EndReason, now: Instant) {
        if self.instances.get(key).is_none() {
            return;
        }
        self.call(key, now, |i, io| {
            i.kick_all(KickReason::InstanceEnded, "the instance ended", io)
        });
        self.remove_instance(key, reason);
    }

    /// A call into the instance panicked: tell its members (if the instance
    /// can still say it), close their connections, give their seats back,
    /// and end it.
    pub(super) fn fail_instance(&mut self, key: Key, message: String, now: Instant) {
        tracing::error!(shard = self.index, "{message}");
        self.removals.clear();
        // Its state is suspect: one more call, to kick, and no `leave`.
        let kicked = self.call_once(key, now, |i, io| {
            i.kick_all(KickReason::ServerError, "the instance failed", io)
        });
        if let Some(Err(again)) = kicked {
            tracing::error!(
                shard = self.index,
                "kicking its members failed too: {again}"
            );
        }
        self.removals.clear();
        let Some(instance_id) = self.instances.get(key).map(|h| h.instance.id().to_owned()) else {
            return;
        };
        let mut members: Vec<(net::conn::ConnKey, Link)> = self
            .links
            .iter()
            .filter(|(_, l)| l.instance == key)
            .map(|(&c, &l)| (c, l))
            .collect();
        members.sort_by_key(|(_, l)| l.user);
        for (conn, link) in members {
            let member = self
                .instances
                .get(key)
                .and_then(|h| h.instance.member(link.user));
            let user_id = member.map(|m| m.user_id.clone()).unwrap_or_default();
            let joined = member.is_some_and(|m| m.is_joined());
            self.links.remove(&conn);
            self.by_session.remove(&link.session);
            self.conns.close(conn);
            self.events.push_back(Event::SessionLeft {
                shard: self.index,
                instance_id: instance_id.clone(),
                session: link.session,
                user_id,
                reason: LeaveReason::InstanceEnded,
                joined,
            });
        }
        self.remove_instance(key, EndReason::Failed(message));
    }

    fn remove_instance(&mut self, key: Key, reason: EndReason) {
        if let Some(hosted) = self.instances.remove(key) {
            let instance_id = hosted.instance.id().to_owned();
            self.instance_ids.remove(&instance_id);
            self.events.push_back(Event::InstanceEnded {
                shard: self.index,
                instance_id,
                reason,
            });
        }
    }

    pub(super) fn drain(&mut self, grace: Duration, now: Instant) {
        self.draining = true;
        for key in self.instances.keys() {
            let empty = self
                .instances
                .get(key)
                .is_some_and(|h| h.instance.members().is_empty());
            if empty {
                // Nobody to warn: an empty instance ends at once.
                self.end_instance(key, EndReason::Drained, now);
                continue;
            }
            self.call(key, now, |i, io| i.drain(grace, io));
            self.schedule(key);
        }
    }

    pub(super) fn report_stats(&mut self) {
        let mut instances = Vec::with_capacity(self.instances.len());
        for key in self.instances.keys() {
            if let Some(hosted) = self.instances.get_mut(key) {
                // A sleeping instance's figures do not change: sent once.
                let asleep = hosted.instance.is_asleep();
                if asleep && hosted.reported_asleep {
                    continue;
                }
                hosted.reported_asleep = asleep;
                instances.push(hosted.instance.stats());
            }
        }
        self.events.push_back(Event::Stats {
            shard: self.index,
            metrics: Box::new(self.metrics()),
            instances,
        });
    }
}
