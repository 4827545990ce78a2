//! HTTP on the control thread: WHIP-style signaling (RFC 9725)
//! `POST /v1/instances/{id}/join` (or `/v1/rooms/{code}/join`) → `201` +
//! SDP answer + `Location`, `DELETE /v1/sessions/{token}`; `GET /healthz`,
//! `GET /v1/instances`, `GET /metrics`; for operators (the gRPC token)
//! `GET /v1/instances/{id}` and `/v1/instances/{id}/attendance`; and in dev
//! mode `POST /v1/dev/token`.
//!
//! Every error is JSON `{"error": code, "message": text}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use rand::Rng;
use serde_json::json;
use state::auth::{AuthError, Scope, TokenRequest};
use state::commands::{Command, JoinRefused, JoinRequest, Topics};
use state::registry::RegistryError;
use tokio::sync::{Semaphore, oneshot};

use super::{Shared, lock};

/// Largest JSON body of `POST /v1/dev/token`.
pub const DEV_TOKEN_BODY_BYTES_MAX: usize = 4096;

pub fn router(shared: Shared) -> Router {
    let (offer_max, dev, concurrent_max, web) = {
        let c = lock(&shared);
        (
            c.config.http.offer_bytes_max,
            c.config.node.dev,
            c.config.http.concurrent_requests_max,
            c.config.http.web,
        )
    };
    let permits = Arc::new(Semaphore::new(concurrent_max));
    let cors = Arc::new(lock(&shared).config.http.cors_origins.clone());
    let mut router = Router::new()
        .route("/v1/instances/{id}/join", post(join))
        .route("/v1/rooms/{code}/join", post(join_room))
        .route("/v1/sessions/{token}", delete(leave))
        .route("/v1/instances", get(list))
        .route("/v1/instances/{id}", get(instance))
        .route("/v1/instances/{id}/attendance", get(attendance))
        .route("/v1/instances/{id}/scene", get(scene))
        .route("/healthz", get(health))
        .route("/metrics", get(metrics));
    if dev {
        router = router.route("/v1/dev/token", post(dev_token));
    }
    if web {
        router = router.merge(super::web::routes());
    }
    // The handlers check sizes themselves (413 with a JSON body); this only
    // stops a body far beyond any limit from being buffered.
    // The last layer is the outermost: CORS sees every answer (a `busy`
    // one too) and answers preflights without taking a permit.
    router
        .layer(DefaultBodyLimit::max(offer_max.max(DEV_TOKEN_BODY_BYTES_MAX) + 1))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let permits = permits.clone();
            async move {
                match permits.try_acquire_owned() {
                    Ok(_permit) => next.run(request).await,
                    Err(_) => busy(format!(
                        "more than {concurrent_max} requests in progress (http.concurrent_requests_max)"
                    )),
                }
            }
        }))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let cors = cors.clone();
            async move { with_cors(&cors, dev, request, next).await }
        }))
        .with_state(shared)
}

/// Whether a path is a signaling endpoint a page on another origin may
/// call (join, room join, leave; in dev mode the token endpoint too).
fn is_signaling(path: &str, dev: bool) -> bool {
    let p: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match p.as_slice() {
        ["v1", "instances", _, "join"]
        | ["v1", "instances", _, "scene"]
        | ["v1", "rooms", _, "join"]
        | ["v1", "sessions", _] => true,
        ["v1", "dev", "token"] => dev,
        _ => false,
    }
}

/// CORS on the signaling endpoints for the origins `http.cors_origins`
/// allows (`*`: any, dev mode only): preflights answered here, responses
/// given `Access-Control-Allow-Origin`, `Location` and `Retry-After` exposed. Requests
/// without an `Origin`, or to other routes, pass untouched.
async fn with_cors(allowed: &[String], dev: bool, request: Request, next: Next) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(origin) = origin.filter(|_| is_signaling(request.uri().path(), dev)) else {
        return next.run(request).await;
    };
    let ok = allowed.iter().any(|a| a == "*" || *a == origin);
    if request.method() == axum::http::Method::OPTIONS {
        if !ok {
            let mut r = error(
                StatusCode::FORBIDDEN,
                "cors_origin",
                format!("origin {origin:?} is not in http.cors_origins"),
            );
            r.headers_mut()
                .append(header::VARY, HeaderValue::from_static("origin"));
            return r;
        }
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        allow_origin(h, &origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        return r;
    }
    let mut r = next.run(request).await;
    if ok {
        allow_origin(r.headers_mut(), &origin);
        r.headers_mut().insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("location, retry-after"),
        );
    } else {
        r.headers_mut()
            .append(header::VARY, HeaderValue::from_static("origin"));
    }
    r
}

/// `Access-Control-Allow-Origin: <origin>`, varying by origin.
fn allow_origin(h: &mut HeaderMap, origin: &str) {
    h.append(header::VARY, HeaderValue::from_static("origin"));
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
}

/// A JSON error response.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({ "error": code, "message": message.into() });
    (status, axum::Json(body)).into_response()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?;
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed("Authorization is not ASCII".into()))?;
    value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AuthError::Malformed("expected `Authorization: Bearer <JWT>`".into()))
}

/// The query of a join: `?topics=chat,world` subscribes the session to
/// those action topics only (every topic when absent).
#[derive(Debug, serde::Deserialize)]
struct JoinQuery {
    topics: Option<String>,
}

/// What a join names: an instance, or a room code.
#[derive(Debug, Clone)]
enum JoinTo {
    Instance(String),
    RoomCode(String),
}

async fn join(
    State(shared): State<Shared>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path(instance_id): Path<String>,
    query: Result<Query<JoinQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let to = JoinTo::Instance(instance_id);
    join_to(shared, remote, to, query, headers, body).await
}

/// `POST /v1/rooms/{code}/join`: the instance with that room code, for a
/// token scoped to its location (or to it); a private instance adds the
/// user to its allowlist.
async fn join_room(
    State(shared): State<Shared>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path(code): Path<String>,
    query: Result<Query<JoinQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let to = JoinTo::RoomCode(code);
    join_to(shared, remote, to, query, headers, body).await
}

async fn join_to(
    shared: Shared,
    remote: SocketAddr,
    to: JoinTo,
    query: Result<Query<JoinQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let topics = match query {
        Ok(Query(JoinQuery { topics: None })) => Ok(Topics::All),
        Ok(Query(JoinQuery { topics: Some(t) })) => Topics::parse(&t),
        Err(e) => Err(e.body_text()),
    };
    let response = match topics {
        Ok(topics) => join_inner(&shared, remote, to, topics, headers, body).await,
        Err(message) => error(StatusCode::BAD_REQUEST, "bad_query", message),
    };
    let mut c = lock(&shared);
    *c.metrics
        .joins
        .entry(response.status().as_u16())
        .or_default() += 1;
    response
}

async fn join_inner(
    shared: &Shared,
    remote: SocketAddr,
    to: JoinTo,
    topics: Topics,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (offer_max, timeout) = {
        let c = lock(shared);
        (
            c.config.http.offer_bytes_max,
            Duration::from_millis(c.config.http.join_timeout_ms),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > offer_max) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "offer_too_large",
            format!("the SDP offer is over {offer_max} bytes"),
        );
    }
    let offer: Bytes = match axum::body::to_bytes(body, offer_max).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "offer_too_large",
                format!("the SDP offer is over {offer_max} bytes"),
            );
        }
    };
    let (session, token, shard, rx, grant) = {
        let mut c = lock(shared);
        match admit(&mut c, remote, &to, topics, &headers, &offer) {
            Ok(v) => v,
            Err(r) => return *r,
        }
    };
    // From here on the session holds a seat: every way out but success
    // (refusal, timeout, the client hanging up and the handler being
    // dropped) gives it back.
    let mut pending = PendingJoin {
        shared: shared.clone(),
        session,
        shard,
        armed: true,
    };
    let answer = match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(Ok(answer))) => answer,
        Ok(Ok(Err(refused))) => return refusal(refused),
        Ok(Err(_)) | Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!("shard {shard} did not answer in {timeout:?}"),
            );
        }
    };
    pending.armed = false;
    if let Some((instance_id, user_id)) = grant {
        // The room code let the user in: it may come back by id.
        let mut c = lock(shared);
        if let Some(allowed) = c
            .registry
            .get_mut(&instance_id)
            .and_then(|r| r.allowed_users.as_mut())
            && allowed.len() < super::ALLOWED_USERS_MAX
        {
            allowed.insert(user_id);
        }
    }
    let mut response = (StatusCode::CREATED, answer).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/sessions/{token}")) {
        h.insert(header::LOCATION, v);
    }
    response
}

/// A join between admission and the shard's answer. Dropped armed, it
/// releases the session's seat and tells the shard (which may have created
/// the peer after all) that the session is gone.
struct PendingJoin {
    shared: Shared,
    session: u64,
    shard: usize,
    armed: bool,
}

impl Drop for PendingJoin {
    fn drop(&mut self) {
        if self.armed {
            let mut c = lock(&self.shared);
            let _ = c.send(
                self.shard,
                Command::Leave {
                    session: self.session,
                },
            );
            c.abandon_session(self.session);
        }
    }
}

/// An admitted join: its session, resource token, shard, the shard's
/// answer to come, and the (instance, user) a room code admits to a
/// private instance's list once the join succeeds.
type Admitted = (
    u64,
    String,
    usize,
    oneshot::Receiver<Result<String, JoinRefused>>,
    Option<(String, String)>,
);

/// The answer to a room code that names nothing this token may join.
fn no_room(code: &str) -> Response {
    let shown: String = code.chars().take(16).collect();
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no instance on this node that this token may join has room code {shown:?}"),
    )
}

/// The checks of a join, in order: draining, rate, token, instance (or
/// room code), scope, ban, allowlist, seat; then the join goes to the
/// instance's shard.
fn admit(
    c: &mut super::Control,
    remote: SocketAddr,
    to: &JoinTo,
    topics: Topics,
    headers: &HeaderMap,
    offer: &[u8],
) -> Result<Admitted, Box<Response>> {
    if c.draining {
        return Err(Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the node is draining and admits nobody",
        )));
    }
    let now = Instant::now();
    if !c.join_rates.allow(remote.ip(), now) {
        return Err(Box::new(error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "more than {} joins a minute from {}",
                c.config.http.joins_per_ip_per_minute,
                remote.ip()
            ),
        )));
    }
    let claims = match bearer(headers).and_then(|t| c.verifier.verify(t, unix_now())) {
        Ok(claims) => claims,
        Err(e) => {
            *c.metrics.auth_failures.entry(e.reason()).or_default() += 1;
            return Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                e.to_string(),
            )));
        }
    };
    let record = match to {
        JoinTo::Instance(id) => c.registry.get(id).ok_or_else(|| {
            Box::new(error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("instance {id} does not exist on this node"),
            ))
        })?,
        JoinTo::RoomCode(code) => c
            .registry
            .by_room_code(code)
            .ok_or_else(|| Box::new(no_room(code)))?,
    };
    let instance_id = record.id.clone();
    let instance_id = instance_id.as_str();
    let (shard, location) = (record.shard, record.location_id.clone());
    if !claims.scope.allows(instance_id, &location) {
        *c.metrics.auth_failures.entry("scope").or_default() += 1;
        if let JoinTo::RoomCode(code) = to {
            // Which instance, or location, a code belongs to is not told
            // to a token that may not join it: it reads as no such code.
            return Err(Box::new(no_room(code)));
        }
        let message = match &claims.scope {
            Scope::Instance(i) => format!("the token is for instance {i}, not {instance_id}"),
            Scope::Location(l) => {
                format!("the token is for location {l}, not this instance's location")
            }
        };
        return Err(Box::new(error(StatusCode::FORBIDDEN, "forbidden", message)));
    }
    if c.registry.is_banned(instance_id, &claims.sub, now) {
        *c.metrics.auth_failures.entry("banned").or_default() += 1;
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "banned",
            format!("user {} is banned from this instance", claims.sub),
        )));
    }
    let by_code = matches!(to, JoinTo::RoomCode(_));
    let mut grant = None;
    if let Some(allowed) = c
        .registry
        .get(instance_id)
        .and_then(|r| r.allowed_users.as_ref())
        && !allowed.contains(&claims.sub)
    {
        if !by_code {
            *c.metrics.auth_failures.entry("not_allowed").or_default() += 1;
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "not_allowed",
                format!(
                    "instance {instance_id} is private and user {} is not on its list",
                    claims.sub
                ),
            )));
        }
        if allowed.len() >= super::ALLOWED_USERS_MAX {
            *c.metrics.auth_failures.entry("not_allowed").or_default() += 1;
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "not_allowed",
                format!(
                    "instance {instance_id} is private and its list is full ({} users)",
                    super::ALLOWED_USERS_MAX
                ),
            )));
        }
        // The room code lets the user in; once the join succeeds, also
        // when it comes back by id.
        grant = Some((instance_id.to_owned(), claims.sub.clone()));
    }
    let offer_sdp = match std::str::from_utf8(offer) {
        Ok(s) if s.starts_with("v=0") => s.to_string(),
        _ => {
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                "bad_offer",
                "the body must be an SDP offer (application/sdp, starting with v=0)",
            )));
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/sdp") {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "bad_offer",
            "Content-Type must be application/sdp",
        )));
    }
    // A user joining again replaces its older session (the shard removes
    // that one first): a full instance admits it all the same.
    let replacing = c.registry.sessions_of(instance_id, &claims.sub) > 0;
    match c.registry.reserve_seat_for(instance_id, replacing) {
        Ok(_) => {}
        Err(RegistryError::InstanceFull(_)) => {
            return Err(Box::new(error(
                StatusCode::CONFLICT,
                "instance_full",
                format!("instance {instance_id} is full"),
            )));
        }
        Err(RegistryError::Draining(_)) => {
            return Err(Box::new(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "the instance is draining",
            )));
        }
        Err(e) => {
            return Err(Box::new(error(
                StatusCode::NOT_FOUND,
                "not_found",
                e.to_string(),
            )));
        }
    }
    // The session holds the seat from here on (released when it closes).
    let session = c.registry.open_session(instance_id, &claims.sub);
    let token = random_hex(16);
    c.name_session(session, token.clone());
    let (tx, rx) = oneshot::channel();
    let request = JoinRequest {
        instance_id: instance_id.to_string(),
        session,
        user_id: claims.sub.clone(),
        name: claims.name.clone().unwrap_or_default(),
        topics,
        offer_sdp,
        reply: tx,
    };
    if let Err(e) = c.send(shard, Command::Join(request)) {
        c.abandon_session(session);
        return Err(Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )));
    }
    Ok((session, token, shard, rx, grant))
}

/// 503 `busy` with `Retry-After: 1`: try again in a second.
fn busy(message: String) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "busy", message);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn refusal(refused: JoinRefused) -> Response {
    let message = refused.to_string();
    match refused {
        JoinRefused::BadOffer(_) => error(StatusCode::BAD_REQUEST, "bad_offer", message),
        JoinRefused::UnknownInstance(_) => error(StatusCode::NOT_FOUND, "not_found", message),
        JoinRefused::InstanceFull(_) => error(StatusCode::CONFLICT, "instance_full", message),
        JoinRefused::Draining => error(StatusCode::SERVICE_UNAVAILABLE, "draining", message),
        JoinRefused::Busy { .. } => busy(message),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
    }
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

async fn leave(State(shared): State<Shared>, Path(token): Path<String>) -> Response {
    let c = lock(&shared);
    let Some(&session) = c.session_tokens.get(&token) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such session");
    };
    let Some(record) = c.registry.session(session) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such session");
    };
    let Some(shard) = c.registry.get(&record.instance_id).map(|r| r.shard) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "the session's instance ended",
        );
    };
    match c.send(shard, Command::Leave { session }) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    }
}

/// An instance's figures as JSON.
fn instance_json(r: &state::registry::InstanceRecord) -> serde_json::Value {
    json!({
        "instance_id": r.id,
        "kind": r.kind,
        "location_id": r.location_id,
        "shard": r.shard,
        "lifecycle": r.lifecycle.label(),
        "users": r.users,
        "max_users": r.max_users,
        "snapshot_hz": r.snapshot_hz,
        "empty_timeout_ms": r.empty_timeout_ms,
        "entities": r.entities,
        "tick_p99_us": r.tick_p99_us,
        "labels": r.labels,
    })
}

async fn list(State(shared): State<Shared>) -> Response {
    let c = lock(&shared);
    let instances: Vec<_> = c.registry.instances().map(instance_json).collect();
    axum::Json(json!({ "instances": instances })).into_response()
}

/// Routes that name users answer an operator only: in dev mode anyone,
/// else a caller with `Authorization: Bearer <grpc token>`. Returns the
/// refusal, if it is one.
fn not_operator(c: &super::Control, headers: &HeaderMap) -> Option<Response> {
    if c.config.node.dev {
        return None;
    }
    let Some(token) = &c.operator_token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route names users: it needs grpc.token_file set, and that token",
        ));
    };
    let given = bearer(headers).unwrap_or("");
    if super::grpc::constant_time_eq(given.as_bytes(), token.as_bytes()) {
        None
    } else {
        Some(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this route names users: `Authorization: Bearer <the gRPC token>`",
        ))
    }
}

/// One instance and the users in it now (joined sessions).
async fn instance(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let c = lock(&shared);
    if let Some(r) = not_operator(&c, &headers) {
        return r;
    }
    let Some(record) = c.registry.get(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("instance {id} does not exist on this node"),
        );
    };
    let mut body = instance_json(record);
    let users: Vec<_> = c
        .registry
        .sessions()
        .filter(|s| s.instance_id == id && s.joined)
        .map(|s| json!({ "user_id": s.user_id, "joined_at_ms": s.joined_at_ms }))
        .collect();
    body["users_present"] = json!(users);
    axum::Json(body).into_response()
}

/// `GET /v1/instances/{id}/scene`: what a client draws the instance's
/// scene from (`PreparedScene::client_description`). Public, like the
/// instance list: scenes are content, not user data.
async fn scene(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    let (scene, avatar) = {
        let c = lock(&shared);
        let Some(record) = c.registry.get(&id) else {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("instance {id} does not exist on this node"),
            );
        };
        let Some(scene) = record.scene.clone() else {
            return error(
                StatusCode::NOT_FOUND,
                "no_scene",
                format!("instance {id} is a media instance: it has no scene"),
            );
        };
        (scene, c.config.instance.runtime().sim_config().avatar)
    };
    // Outside the lock: the first request for a scene with large meshes
    // builds its JSON, which takes a while; later ones share it.
    let json = scene.client_description_json(&avatar);
    let mut response = axum::body::Body::from(axum::body::Bytes::from_owner(json)).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The query of `GET /v1/instances/{id}/attendance`.
#[derive(Debug, serde::Deserialize)]
struct AttendanceQuery {
    /// The newest this many records; absent or 0: 1,000.
    limit: Option<u32>,
}

/// The newest attendance records of one instance, oldest first.
async fn attendance(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    query: Result<Query<AttendanceQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let max = super::grpc::ATTENDANCE_LIMIT_MAX;
    let limit = match query {
        Ok(Query(AttendanceQuery {
            limit: None | Some(0),
        })) => super::grpc::ATTENDANCE_LIMIT_DEFAULT,
        Ok(Query(AttendanceQuery { limit: Some(n) })) if n <= max => n,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_query",
                format!("limit is at most {max}"),
            );
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_query", e.body_text()),
    } as usize;
    // Copied under the lock, serialized after it.
    let (records, dropped) = {
        let c = lock(&shared);
        if let Some(r) = not_operator(&c, &headers) {
            return r;
        }
        let records: Vec<_> = c
            .attendance
            .newest(Some(&id), None, limit)
            .cloned()
            .collect();
        (records, c.attendance.dropped())
    };
    let records: Vec<_> = records
        .iter()
        .map(|a| {
            json!({
                "user_id": a.user_id,
                "session": a.session,
                "joined_at_ms": a.joined_at_ms,
                "left_at_ms": a.left_at_ms,
                "leave_reason": a.leave_reason,
            })
        })
        .collect();
    axum::Json(json!({ "instance_id": id, "records": records, "dropped_on_node": dropped }))
        .into_response()
}

/// 200 while every shard's loop comes round (`ok`, or `draining`); 503
/// `stuck`, naming the shards, while one has not for `shard.stuck_ms`.
async fn health(State(shared): State<Shared>) -> Response {
    let c = lock(&shared);
    let stuck = c.stuck_shards();
    let (code, status) = match (stuck.is_empty(), c.draining) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "stuck"),
        (true, true) => (StatusCode::OK, "draining"),
        (true, false) => (StatusCode::OK, "ok"),
    };
    let mut body =
        json!({ "status": status, "instances": c.registry.len(), "shards": c.shards.len() });
    if !stuck.is_empty() {
        body["stuck_shards"] = json!(stuck);
    }
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(shared): State<Shared>) -> Response {
    let text = super::metrics::render(&lock(&shared));
    let mut r = text.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

async fn dev_token(State(shared): State<Shared>, body: Bytes) -> Response {
    if body.len() > DEV_TOKEN_BODY_BYTES_MAX {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body over {DEV_TOKEN_BODY_BYTES_MAX} bytes"),
        );
    }
    let request: TokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "expected {{\"sub\": user id, \"name\"?, \"instance\" or \"location\", \"ttl_s\"?}}: {e}"
                ),
            );
        }
    };
    let c = lock(&shared);
    match c.verifier.issue_hs256(&request, unix_now()) {
        Ok(token) => axum::Json(json!({ "token": token })).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    }
}
