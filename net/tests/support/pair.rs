//! One [`Connections`] and one client [`Session`] joined by a perfect
//! in-memory network on a virtual clock (no socket, no sleep).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use net::client::{ClientEvent, Session};
use net::conn::{ConnConfig, ConnEvent, ConnKey, Connections};

pub const SERVER: &str = "10.0.0.1:40000";
pub const CLIENT: &str = "10.0.1.1:50000";

pub fn config() -> ConnConfig {
    ConnConfig {
        local: SERVER.parse().unwrap(),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(10),
        send_queue_len: 4096,
        conns_max: 16,
        media: true,
        media_packet_cache: 1_024,
    }
}

pub struct Pair {
    pub conns: Connections,
    pub client: Session,
    pub key: ConnKey,
    pub now: Instant,
    pub server_events: Vec<ConnEvent>,
    pub client_events: Vec<ClientEvent>,
    /// The client neither sends nor receives (a vanished device).
    pub client_gone: bool,
}

impl Pair {
    /// A client that offered, and a layer that answered.
    pub fn new(config: ConnConfig) -> Pair {
        let now = Instant::now();
        let mut conns = Connections::new(config, 7);
        let (mut client, offer) = Session::new(CLIENT.parse().unwrap(), now).unwrap();
        let (key, answer) = conns.accept(&offer, now).unwrap();
        client.accept_answer(&answer, now).unwrap();
        Pair {
            conns,
            client,
            key,
            now,
            server_events: Vec::new(),
            client_events: Vec::new(),
            client_gone: false,
        }
    }

    /// Delivers everything in flight both ways, at `now`.
    pub fn deliver(&mut self) {
        let server: SocketAddr = SERVER.parse().unwrap();
        let client: SocketAddr = CLIENT.parse().unwrap();
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(t) = self.conns.poll_transmit() {
                moved = true;
                if !self.client_gone {
                    self.client.handle_datagram(server, &t.contents, self.now);
                }
            }
            while let Some(t) = self.client.poll_transmit() {
                moved = true;
                if !self.client_gone {
                    self.conns.handle_datagram(client, &t.contents, self.now);
                }
            }
            while let Some(e) = self.conns.poll_event() {
                self.server_events.push(e);
            }
            while let Some(e) = self.client.poll_event() {
                self.client_events.push(e);
            }
            if !moved {
                return;
            }
        }
        panic!("datagrams kept flowing for 1000 rounds");
    }

    /// Runs the clock for `d` in steps of at most 10 ms, delivering as it goes.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            let next = [self.conns.poll_timeout(), Some(self.client.poll_timeout())]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(end)
                .clamp(self.now, self.now + Duration::from_millis(10))
                .min(end);
            self.now = next.max(self.now + Duration::from_micros(100)).min(end);
            self.conns.handle_timeout(self.now);
            if !self.client_gone {
                self.client.handle_timeout(self.now);
            }
            self.deliver();
        }
    }

    /// Runs until the layer says the connection opened (false after 5 s).
    pub fn open(&mut self) -> bool {
        for _ in 0..500 {
            if self.server_events.contains(&ConnEvent::Opened(self.key)) {
                return true;
            }
            self.run_for(Duration::from_millis(10));
        }
        false
    }
}
