//! Attendance: who was in which instance, from when to when, and why they
//! left. Kept by the control thread from the shards' `SessionJoined` and
//! `SessionLeft` events, newest last, bounded: the oldest record goes when
//! a new one would exceed the limit.

use std::collections::VecDeque;

use crate::commands::{LeaveReason, SessionId};

/// One session that joined an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttendanceRecord {
    pub instance_id: String,
    pub user_id: String,
    pub session: SessionId,
    /// Unix time in milliseconds.
    pub joined_at_ms: u64,
    /// `None` while the session is in the instance.
    pub left_at_ms: Option<u64>,
    /// Why it left ([`LeaveReason::label`]), once it has.
    pub leave_reason: Option<&'static str>,
}

/// The node's attendance records.
#[derive(Debug, Clone)]
pub struct Attendance {
    records: VecDeque<AttendanceRecord>,
    max: usize,
    /// Records dropped to stay within `max`.
    dropped: u64,
}

impl Attendance {
    /// Keeps at most `max` records (0 keeps none).
    pub fn new(max: usize) -> Attendance {
        Attendance {
            records: VecDeque::new(),
            max,
            dropped: 0,
        }
    }

    /// A session joined an instance at `now_ms`.
    pub fn joined(&mut self, instance_id: &str, user_id: &str, session: SessionId, now_ms: u64) {
        if self.max == 0 {
            self.dropped += 1;
            return;
        }
        if self.records.len() >= self.max {
            // The oldest record of a session that left, so that those still
            // in keep theirs; if everyone is still in, the oldest.
            let i = self
                .records
                .iter()
                .position(|r| r.left_at_ms.is_some())
                .unwrap_or(0);
            self.records.remove(i);
            self.dropped += 1;
        }
        self.records.push_back(AttendanceRecord {
            instance_id: instance_id.to_owned(),
            user_id: user_id.to_owned(),
            session,
            joined_at_ms: now_ms,
            left_at_ms: None,
            leave_reason: None,
        });
    }

    /// A session left at `now_ms`; nothing when it never joined (or its
    /// record was dropped already).
    pub fn left(&mut self, session: SessionId, reason: LeaveReason, now_ms: u64) {
        // Recent sessions are at the back; session ids are never reused.
        if let Some(r) = self
            .records
            .iter_mut()
            .rev()
            .find(|r| r.session == session && r.left_at_ms.is_none())
        {
            r.left_at_ms = Some(now_ms);
            r.leave_reason = Some(reason.label());
        }
    }

    /// Records oldest first, of `instance_id` and `user_id` when given.
    pub fn query<'a>(
        &'a self,
        instance_id: Option<&'a str>,
        user_id: Option<&'a str>,
    ) -> impl Iterator<Item = &'a AttendanceRecord> + 'a {
        self.records.iter().filter(move |r| {
            instance_id.is_none_or(|i| r.instance_id == i) && user_id.is_none_or(|u| r.user_id == u)
        })
    }

    /// The newest `limit` records [`Attendance::query`] picks, oldest first.
    pub fn newest<'a>(
        &'a self,
        instance_id: Option<&'a str>,
        user_id: Option<&'a str>,
        limit: usize,
    ) -> impl Iterator<Item = &'a AttendanceRecord> + 'a {
        let matching = self.query(instance_id, user_id).count();
        self.query(instance_id, user_id)
            .skip(matching.saturating_sub(limit))
    }

    /// Records dropped to stay within the limit.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn records_open_at_join_close_at_leave_and_the_oldest_go_at_the_limit() {
        let mut a = Attendance::new(2);
        a.joined("room", "ann", 1, 1_000);
        a.joined("room", "bob", 2, 2_000);
        a.left(1, LeaveReason::Kicked, 3_000);
        let ann: Vec<_> = a.query(Some("room"), Some("ann")).collect();
        assert_eq!(ann.len(), 1);
        assert_eq!(
            (ann[0].joined_at_ms, ann[0].left_at_ms, ann[0].leave_reason),
            (1_000, Some(3_000), Some("kicked"))
        );
        // A session that never joined leaves no trace.
        a.left(9, LeaveReason::ConnectFailed, 3_500);
        a.joined("hall", "cy", 3, 4_000);
        assert_eq!(a.len(), 2);
        assert_eq!(a.dropped(), 1);
        assert_eq!(
            a.query(Some("room"), None)
                .map(|r| r.session)
                .collect::<Vec<_>>(),
            [2],
            "ann's closed record went, bob (still in) keeps his"
        );
        assert_eq!(a.query(None, Some("cy")).count(), 1);
        assert!(a.query(None, None).all(|r| r.session != 1));
        let newest: Vec<_> = a.newest(None, None, 1).map(|r| r.session).collect();
        assert_eq!(newest, [3]);
    }
}
