//! The baseline's HTTP API, the node's join contract: `POST
//! /v1/instances/{id}/join` with a bearer token and an SDP offer answers 201
//! with the SDP answer and a `Location` to `DELETE` on leaving; `/healthz`;
//! `/metrics` in Prometheus text, with the node's names where they mean the
//! same thing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

use crate::room::{Hub, JoinError};

pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/v1/instances/{id}/join", post(join))
        .route("/v1/sessions/{token}", delete(leave))
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .with_state(hub)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": code, "message": message.into() }).to_string();
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn join(
    State(hub): State<Arc<Hub>>,
    Path(instance_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = join_inner(&hub, instance_id, &headers, &body).await;
    if response.status() == StatusCode::CREATED {
        hub.metrics.joins_ok.fetch_add(1, Ordering::Relaxed);
    } else {
        hub.metrics.joins_refused.fetch_add(1, Ordering::Relaxed);
    }
    response
}

async fn join_inner(
    hub: &Arc<Hub>,
    instance_id: String,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = match hub.verifier.verify(token, now) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::UNAUTHORIZED, e.reason(), e.to_string()),
    };
    if !claims.scope.allows(&instance_id, &instance_id) {
        return error(
            StatusCode::FORBIDDEN,
            "scope",
            format!("the token is not for instance {instance_id}"),
        );
    }
    if body.len() > hub.args.offer_bytes_max {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "offer_too_large",
            format!("the SDP offer is over {} bytes", hub.args.offer_bytes_max),
        );
    }
    let Ok(offer) = std::str::from_utf8(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_offer",
            "the SDP offer is not UTF-8",
        );
    };
    let name = claims.name.clone().unwrap_or_else(|| claims.sub.clone());
    // On its own task: a client that hangs up mid-join must not cancel the
    // join half way (the peer connection would never be closed).
    let joining = {
        let hub = hub.clone();
        let offer = offer.to_string();
        let id = instance_id.clone();
        tokio::spawn(async move { hub.join(&id, claims.sub, name, offer).await })
    };
    let joined = match joining.await {
        Ok(r) => r,
        Err(e) => Err(JoinError::Rtc(format!("the join task failed: {e}"))),
    };
    match joined {
        Ok((token, answer)) => {
            let mut r = (StatusCode::CREATED, answer).into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/sdp"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("/v1/sessions/{token}")) {
                h.insert(header::LOCATION, v);
            }
            r
        }
        Err(JoinError::Full) => error(
            StatusCode::CONFLICT,
            "instance_full",
            format!("room {instance_id} has {} members", hub.args.members_max),
        ),
        Err(JoinError::TooManyRooms) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "rooms_max",
            format!("{} rooms are open", hub.args.rooms_max),
        ),
        Err(JoinError::Offer(e)) => error(StatusCode::BAD_REQUEST, "bad_offer", e),
        Err(JoinError::Rtc(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "webrtc", e),
    }
}

async fn leave(State(hub): State<Arc<Hub>>, Path(token): Path<String>) -> Response {
    if hub.leave(&token).await {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "unknown_session", "no such session")
    }
}

async fn health() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    let m = &hub.metrics;
    let mut text = String::new();
    let mut put = |name: &str, kind: &str, help: &str, value: u64| {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    put(
        "instanceserver_sessions",
        "gauge",
        "Members with both channels open.",
        get(&m.sessions),
    );
    put(
        "instanceserver_instances",
        "gauge",
        "Open rooms.",
        hub.rooms_open() as u64,
    );
    put(
        "instanceserver_joins_total",
        "counter",
        "Joins answered 201.",
        get(&m.joins_ok),
    );
    put(
        "instanceserver_joins_refused_total",
        "counter",
        "Joins refused.",
        get(&m.joins_refused),
    );
    put(
        "instanceserver_inputs_total",
        "counter",
        "Input frames applied.",
        get(&m.inputs),
    );
    put(
        "instanceserver_invalid_messages_total",
        "counter",
        "Client frames that failed validation.",
        get(&m.invalid),
    );
    put(
        "instanceserver_snapshots_sent_total",
        "counter",
        "Snapshots handed to webrtc-rs.",
        get(&m.snapshots),
    );
    put(
        "instanceserver_snapshot_bytes_total",
        "counter",
        "Bytes of those snapshots.",
        get(&m.snapshot_bytes),
    );
    put(
        "instanceserver_actions_relayed_total",
        "counter",
        "Action frames sent to members.",
        get(&m.actions),
    );
    put(
        "instanceserver_send_errors_total",
        "counter",
        "Sends webrtc-rs refused.",
        get(&m.send_errors),
    );
    put(
        "instanceserver_ticks_total",
        "counter",
        "Room ticks run.",
        get(&m.ticks),
    );
    put(
        "instanceserver_skipped_ticks_total",
        "counter",
        "Ticks missed by late rooms.",
        get(&m.skipped_ticks),
    );
    put(
        "instanceserver_snapshots_skipped_total",
        "counter",
        "Snapshots not sent while a member's state channel was backed up.",
        get(&m.snapshots_skipped),
    );
    let mut r = (StatusCode::OK, text).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}
