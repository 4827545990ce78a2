//! A deterministic harness for the shard logic: one [`Shard`] and any number
//! of client [`Session`]s on a virtual clock, joined by an in-memory network
//! that drops, delays and reorders datagrams from a seeded generator. No
//! socket, no thread, no sleep: a minute of play runs in well under a second
//! of CPU, and a failing test prints the seed that replays it
//! (`HARNESS_SEED=<seed> cargo test ...`).
//!
//! ```
//! use std::time::Duration;
//! use instanceserver::harness::{Harness, Network};
//!
//! let mut h = Harness::new(instanceserver::config::Config::default(), Network::lossy(), 7);
//! h.create_instance("room", 4);
//! let ann = h.join("room", "ann").unwrap();
//! assert!(h.run_until(Duration::from_secs(10), |h| h.client(ann).latest_tick().is_some()));
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use state::commands::{Command, Event, InstanceSpec, JoinRefused, JoinRequest, SessionId, Topics};

use net::client::{ClientEvent, Session};

use crate::config::Config;
use crate::router::Shard;

/// How the in-memory network treats each datagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Network {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// One-way delay, drawn uniformly per datagram (so datagrams reorder
    /// when the spread exceeds their spacing).
    pub delay_min: Duration,
    pub delay_max: Duration,
}

impl Network {
    pub fn perfect() -> Network {
        Network {
            loss: 0.0,
            delay_min: Duration::from_millis(1),
            delay_max: Duration::from_millis(1),
        }
    }

    /// 5% loss, 5 to 40 ms delay (reordering).
    pub fn lossy() -> Network {
        Network {
            loss: 0.05,
            delay_min: Duration::from_millis(5),
            delay_max: Duration::from_millis(40),
        }
    }
}

/// A client in the harness.
#[derive(Debug)]
pub struct HarnessClient {
    pub session: Session,
    pub addr: SocketAddr,
    pub session_id: SessionId,
    /// Everything the client saw, in order.
    pub events: Vec<ClientEvent>,
    /// A stopped client neither sends nor receives (a vanished device).
    pub stopped: bool,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    order: u64,
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// Shard + clients + network on a virtual clock.
#[derive(Debug)]
pub struct Harness {
    pub seed: u64,
    pub shard: Shard,
    config: Config,
    pub clients: Vec<HarnessClient>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Every event the shard reported, in order.
    pub events: Vec<Event>,
    pub network: Network,
    rng: StdRng,
    now: Instant,
    start: Instant,
    server: SocketAddr,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    order: u64,
    next_session: SessionId,
    delivered: u64,
    dropped: u64,
    scenes: engine::SceneCache,
}

/// The most datagrams in flight; more is a runaway test.
pub const IN_FLIGHT_MAX: usize = 1_000_000;

impl Harness {
    /// A harness whose seed is `HARNESS_SEED` when set, else `seed`.
    pub fn new(config: Config, network: Network, seed: u64) -> Harness {
        let seed = std::env::var("HARNESS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(seed);
        let start = Instant::now();
        let server: SocketAddr = "10.0.0.1:40000".parse().expect("a literal address");
        Harness {
            seed,
            shard: Shard::new(0, config.router(server), seed, Instant::now, start),
            config,
            clients: Vec::new(),
            by_addr: HashMap::new(),
            events: Vec::new(),
            network,
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            now: start,
            start,
            server,
            in_flight: BinaryHeap::new(),
            order: 0,
            next_session: 1,
            delivered: 0,
            dropped: 0,
            scenes: engine::SceneCache::default(),
        }
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time since the harness started.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    pub fn client(&self, index: usize) -> &Session {
        &self.clients[index].session
    }

    pub fn client_mut(&mut self, index: usize) -> &mut Session {
        &mut self.clients[index].session
    }

    /// Datagrams delivered and dropped by the network so far.
    pub fn network_counts(&self) -> (u64, u64) {
        (self.delivered, self.dropped)
    }

    /// Creates an instance of the embedded demo scene.
    pub fn create_instance(&mut self, id: &str, max_users: u32) {
        self.create(id, max_users, state::commands::InstanceKind::World);
    }

    /// Creates a media instance (members and actions, no scene, no tick).
    pub fn create_media_instance(&mut self, id: &str, max_users: u32) {
        self.create(id, max_users, state::commands::InstanceKind::Media);
    }

    fn create(&mut self, id: &str, max_users: u32, kind: state::commands::InstanceKind) {
        let empty_timeout = Duration::from_millis(self.shard_config().instance.empty_timeout_ms);
        let scene = match kind {
            state::commands::InstanceKind::World => engine::Scene::demo(),
            state::commands::InstanceKind::Media => engine::Scene::media(),
        };
        let spec = InstanceSpec {
            id: id.into(),
            kind,
            location_id: id.into(),
            scene: self.scenes.prepare(scene).expect("the scene prepares"),
            max_users,
            snapshot_hz: self.shard_config().instance.default_snapshot_hz(),
            labels: BTreeMap::new(),
            empty_timeout: Some(empty_timeout),
        };
        self.command(Command::CreateInstance(spec));
    }

    fn shard_config(&self) -> &Config {
        &self.config
    }

    pub fn command(&mut self, command: Command) {
        self.shard.handle_command(command, self.now);
        self.collect();
    }

    /// Joins `user` to `instance`: the client's offer goes to the shard as
    /// the control thread would send it; returns the client's index.
    pub fn join(&mut self, instance: &str, user: &str) -> Result<usize, JoinRefused> {
        self.join_with(instance, user, Topics::All)
    }

    /// [`Harness::join`], subscribed to `topics`.
    pub fn join_with(
        &mut self,
        instance: &str,
        user: &str,
        topics: Topics,
    ) -> Result<usize, JoinRefused> {
        self.join_publishing(instance, user, topics, &[])
    }

    /// [`Harness::join_with`], publishing `tracks` from the join offer on
    /// (see [`Session::published`]).
    pub fn join_publishing(
        &mut self,
        instance: &str,
        user: &str,
        topics: Topics,
        tracks: &[net::messages::TrackKind],
    ) -> Result<usize, JoinRefused> {
        let index = self.clients.len();
        let addr: SocketAddr = format!("10.0.1.{}:{}", 1 + index / 50_000, 1024 + index % 50_000)
            .parse()
            .expect("a valid address");
        let (mut session, offer) =
            Session::with_tracks(addr, tracks, self.now).expect("a client offer");
        let session_id = self.next_session;
        self.next_session += 1;
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        self.command(Command::Join(JoinRequest {
            instance_id: instance.into(),
            session: session_id,
            user_id: user.into(),
            name: user.into(),
            topics,
            offer_sdp: offer,
            reply: tx,
        }));
        let answer = rx.try_recv().expect("the shard answers a join at once")?;
        session
            .accept_answer(&answer, self.now)
            .expect("the client accepts the server's answer");
        self.by_addr.insert(addr, index);
        self.clients.push(HarnessClient {
            session,
            addr,
            session_id,
            events: Vec::new(),
            stopped: false,
        });
        self.collect();
        Ok(index)
    }

    /// Runs the virtual clock for `d`.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step(end);
        }
    }

    /// Runs until `done` holds (true) or `limit` of virtual time passes (false).
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Harness) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.step(end);
        }
        done(self)
    }

    /// Runs the virtual clock in steps of `period` (a shard that only gets
    /// the CPU that often), for `d`.
    pub fn run_coarsely(&mut self, d: Duration, period: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += period;
            self.deliver();
            self.shard.handle_timeout(self.now);
            self.client_timeouts();
            self.collect();
        }
    }

    /// Advances to the next thing that happens (not beyond `end`) and does it.
    fn step(&mut self, end: Instant) {
        // What a test had a client send since the last step leaves now,
        // not after the clock jumps to the next timer.
        self.collect();
        let mut next = self.shard.poll_timeout().min(end);
        for c in self.clients.iter().filter(|c| !c.stopped) {
            next = next.min(c.session.poll_timeout());
        }
        if let Some(Reverse(p)) = self.in_flight.peek() {
            next = next.min(p.at);
        }
        // Never stand still: something that is due now still moves time on.
        self.now = next
            .max(self.now + Duration::from_micros(50))
            .min(end.max(self.now));
        self.deliver();
        self.shard.handle_timeout(self.now);
        self.client_timeouts();
        self.collect();
    }

    fn client_timeouts(&mut self) {
        let now = self.now;
        for c in self.clients.iter_mut().filter(|c| !c.stopped) {
            if c.session.poll_timeout() <= now {
                c.session.handle_timeout(now);
            }
        }
    }

    fn deliver(&mut self) {
        while self
            .in_flight
            .peek()
            .is_some_and(|Reverse(p)| p.at <= self.now)
        {
            let Some(Reverse(p)) = self.in_flight.pop() else {
                break;
            };
            if p.to == self.server {
                self.shard.handle_datagram(p.from, &p.bytes, self.now);
            } else if let Some(&i) = self.by_addr.get(&p.to)
                && !self.clients[i].stopped
            {
                self.clients[i]
                    .session
                    .handle_datagram(p.from, &p.bytes, self.now);
            }
            self.delivered += 1;
        }
    }

    /// Moves what everyone sent onto the network, and what happened into the logs.
    fn collect(&mut self) {
        while let Some(t) = self.shard.poll_transmit() {
            self.send(self.server, t.destination, t.contents.to_vec());
        }
        for i in 0..self.clients.len() {
            if self.clients[i].stopped {
                while self.clients[i].session.poll_transmit().is_some() {}
                continue;
            }
            while let Some(t) = self.clients[i].session.poll_transmit() {
                let from = self.clients[i].addr;
                self.send(from, t.destination, t.contents.to_vec());
            }
            while let Some(e) = self.clients[i].session.poll_event() {
                self.clients[i].events.push(e);
            }
        }
        while let Some(e) = self.shard.poll_event() {
            self.events.push(e);
        }
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        if self.rng.random_bool(self.network.loss.clamp(0.0, 1.0)) {
            self.dropped += 1;
            return;
        }
        assert!(
            self.in_flight.len() < IN_FLIGHT_MAX,
            "runaway traffic (seed {})",
            self.seed
        );
        let (lo, hi) = (
            self.network.delay_min,
            self.network.delay_max.max(self.network.delay_min),
        );
        let delay = lo + (hi - lo).mul_f64(self.rng.random::<f64>());
        self.order += 1;
        self.in_flight.push(Reverse(InFlight {
            at: self.now + delay,
            order: self.order,
            from,
            to,
            bytes,
        }));
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "harness failed with seed {} at {:?} of virtual time; replay with HARNESS_SEED={}",
                self.seed,
                self.elapsed(),
                self.seed
            );
        }
    }
}
