//! The tokio driver of a [`Session`]: joins over HTTP, then moves its
//! datagrams over a tokio UDP socket and its timers over the tokio clock.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::Vec3;
use http_body_util::{BodyExt, Full};

use super::{ClientError, ClientEvent, Session};
use crate::messages::{Action, Cache, OwnedUpdate, Target};

/// A response from the node's HTTP server.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub location: Option<String>,
    /// Every header, names lowercase.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Longest HTTP response body the client reads.
pub const HTTP_BODY_BYTES_MAX: usize = 1024 * 1024;

/// One HTTP/1.1 request to the node (a fresh connection each time).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpResponse, ClientError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let headers = response
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let body = http_body_util::Limited::new(response.into_body(), HTTP_BODY_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?
        .to_bytes();
    Ok(HttpResponse {
        status,
        location,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Asks a dev-mode node for a token for `sub` scoped to `instance`.
pub async fn dev_token(http: SocketAddr, sub: &str, instance: &str) -> Result<String, ClientError> {
    let body = serde_json::json!({ "sub": sub, "name": sub, "instance": instance }).to_string();
    let r = http_request(
        http,
        "POST",
        "/v1/dev/token",
        &[("content-type", "application/json")],
        body.into_bytes(),
    )
    .await?;
    if r.status != 200 {
        return Err(ClientError::Refused {
            status: r.status,
            body: r.body,
        });
    }
    let v: serde_json::Value =
        serde_json::from_str(&r.body).map_err(|e| ClientError::Http(e.to_string()))?;
    v["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ClientError::Http("no token in the response".into()))
}

/// A [`Session`] on a tokio UDP socket.
#[derive(Debug)]
pub struct Client {
    session: Session,
    socket: tokio::net::UdpSocket,
    http: SocketAddr,
    location: Option<String>,
    buf: Vec<u8>,
    io: ClientIo,
}

/// Datagrams and bytes a [`Client`] moved through its socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientIo {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
}

impl Client {
    /// Joins `instance_id` on the node at `http` (signaling over HTTP, then
    /// ICE and DTLS over a new loopback UDP socket). Returns once the answer
    /// is applied; drive it with [`Client::run_until`].
    pub async fn join(
        http: SocketAddr,
        instance_id: &str,
        token: &str,
    ) -> Result<Client, ClientError> {
        Client::join_with(http, instance_id, token, None).await
    }

    /// [`Client::join`], subscribed to the comma-separated action `topics`
    /// (`None`: every topic).
    pub async fn join_with(
        http: SocketAddr,
        instance_id: &str,
        token: &str,
        topics: Option<&str>,
    ) -> Result<Client, ClientError> {
        // Topic names and commas need no escaping in a query.
        let path = match topics {
            Some(t) => format!("/v1/instances/{instance_id}/join?topics={t}"),
            None => format!("/v1/instances/{instance_id}/join"),
        };
        Client::join_at(http, &path, token).await
    }

    /// [`Client::join`] publishing `tracks` from the join offer on (write
    /// their packets with [`Session::write_rtp`] through
    /// [`Client::session`]).
    pub async fn join_publishing(
        http: SocketAddr,
        instance_id: &str,
        token: &str,
        tracks: &[crate::messages::TrackKind],
    ) -> Result<Client, ClientError> {
        let path = format!("/v1/instances/{instance_id}/join");
        Client::join_offering(http, &path, token, tracks).await
    }

    /// Joins the instance a 6-digit room code names
    /// (`POST /v1/rooms/{code}/join`).
    pub async fn join_room(
        http: SocketAddr,
        room_code: &str,
        token: &str,
    ) -> Result<Client, ClientError> {
        Client::join_at(http, &format!("/v1/rooms/{room_code}/join"), token).await
    }

    /// Posts an offer to the join endpoint `path`.
    async fn join_at(http: SocketAddr, path: &str, token: &str) -> Result<Client, ClientError> {
        Client::join_offering(http, path, token, &[]).await
    }

    /// Posts an offer publishing `tracks` to the join endpoint `path`.
    async fn join_offering(
        http: SocketAddr,
        path: &str,
        token: &str,
        tracks: &[crate::messages::TrackKind],
    ) -> Result<Client, ClientError> {
        let bind_ip = if http.ip().is_loopback() {
            http.ip()
        } else {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        };
        let socket = tokio::net::UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await?;
        let local = socket.local_addr()?;
        let (mut session, offer) = Session::with_tracks(local, tracks, Instant::now())?;
        let auth = format!("Bearer {token}");
        let headers = [
            ("content-type", "application/sdp"),
            ("authorization", auth.as_str()),
        ];
        let r = http_request(http, "POST", path, &headers, offer.into_bytes()).await?;
        if r.status != 201 {
            return Err(ClientError::Refused {
                status: r.status,
                body: r.body,
            });
        }
        session.accept_answer(&r.body, Instant::now())?;
        Ok(Client {
            session,
            socket,
            http,
            location: r.location,
            buf: vec![0; 2048],
            io: ClientIo::default(),
        })
    }

    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    /// The session's resource path (`Location` of the join).
    pub fn location(&self) -> Option<&str> {
        self.location.as_deref()
    }

    /// What went through the socket so far.
    pub fn io(&self) -> ClientIo {
        self.io
    }

    /// Sends what the session queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        while let Some(t) = self.session.poll_transmit() {
            self.socket.send_to(&t.contents, t.destination).await?;
            self.io.datagrams_out += 1;
            self.io.bytes_out += t.contents.len() as u64;
        }
        Ok(())
    }

    /// Drives the session until `done` returns true for an event (true) or
    /// `limit` passes (false).
    pub async fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&mut Session, &ClientEvent) -> bool,
    ) -> Result<bool, ClientError> {
        let deadline = Instant::now()
            .checked_add(limit)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600));
        loop {
            if self.session.poll_timeout() <= Instant::now() {
                // Timers are due even while datagrams keep arriving.
                self.session.handle_timeout(Instant::now());
            }
            self.flush().await?;
            while let Some(e) = self.session.poll_event() {
                if done(&mut self.session, &e) {
                    self.flush().await?;
                    return Ok(true);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let wait = self
                .session
                .poll_timeout()
                .min(deadline)
                .saturating_duration_since(now);
            match tokio::time::timeout(
                wait.max(Duration::from_micros(200)),
                self.socket.recv_from(&mut self.buf),
            )
            .await
            {
                Ok(Ok((n, source))) => {
                    self.io.datagrams_in += 1;
                    self.io.bytes_in += n as u64;
                    self.session
                        .handle_datagram(source, &self.buf[..n], Instant::now())
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => self.session.handle_timeout(Instant::now()),
            }
        }
    }

    /// Leaves with `DELETE` on the session's location.
    pub async fn leave(&mut self) -> Result<u16, ClientError> {
        let Some(location) = self.location.clone() else {
            return Err(ClientError::Http("no session location".into()));
        };
        let r = http_request(self.http, "DELETE", &location, &[], Vec::new()).await?;
        Ok(r.status)
    }
}

/// An owned update moving `network_id` to `position`.
pub fn owned_update(network_id: u32, position: Vec3) -> OwnedUpdate {
    OwnedUpdate {
        network_id,
        position: [position.x, position.y, position.z],
        rotation: [0.0, 0.0, 0.0, 1.0],
    }
}

/// An action on `topic` for everyone, kept for late joiners as `cache` says.
pub fn action(topic: &str, action_type: &str, payload: &[u8], cache: Cache) -> Action {
    Action {
        topic: topic.to_string(),
        action_type: action_type.to_string(),
        target: Target::Everyone,
        cache,
        payload: payload.to_vec(),
    }
}
