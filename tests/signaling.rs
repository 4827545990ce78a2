//! Every signaling error, produced for real against a running node over
//! HTTP: the status, the JSON body, and the auth-failure metric.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use instanceserver::control::lock;
use net::client::{HttpResponse, Session, http_request};
use state::auth::{AuthConfig, Scope, TokenRequest, Verifier};

const ISSUER: &str = "ir-engine";
const AUDIENCE: &str = "instanceserver";

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn auth(audience: &str) -> AuthConfig {
    AuthConfig {
        issuer: Some(ISSUER.into()),
        audience: Some(audience.into()),
        ..AuthConfig::default()
    }
}

fn token(secret: &str, audience: &str, sub: &str, instance: &str, issued_at: u64) -> String {
    let request = TokenRequest {
        sub: sub.into(),
        name: None,
        scope: Scope::Instance(instance.into()),
        ttl_s: 60,
    };
    Verifier::dev(&auth(audience), secret)
        .issue_hs256(&request, issued_at)
        .unwrap()
}

fn offer() -> String {
    Session::new("127.0.0.1:9".parse().unwrap(), Instant::now())
        .unwrap()
        .1
}

async fn join(
    http: SocketAddr,
    instance: &str,
    bearer: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
) -> HttpResponse {
    let authorization = bearer.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", content_type)];
    if let Some(a) = &authorization {
        headers.push(("authorization", a.as_str()));
    }
    http_request(
        http,
        "POST",
        &format!("/v1/instances/{instance}/join"),
        &headers,
        body,
    )
    .await
    .unwrap()
}

fn expect(r: &HttpResponse, status: u16, code: &str, message_part: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let body: serde_json::Value =
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body));
    assert_eq!(body["error"], code, "{}", r.body);
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(message_part),
        "{message:?} lacks {message_part:?}"
    );
}

fn base64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "current_thread")]
async fn every_join_error_is_a_json_error_with_its_status() {
    let mut config = support::config(1);
    config.auth = auth(AUDIENCE);
    config.http.offer_bytes_max = 8 * 1024;
    let node = support::start(config);
    support::wait_running(&node, "demo").await;
    support::create(&node, "tiny", Some(1)).await;
    let http = node.http_addr;
    let secret = node.dev_secret.clone().unwrap();
    let good = |sub: &str, instance: &str| token(&secret, AUDIENCE, sub, instance, now_s());
    let sdp = "application/sdp";

    // 401: no token, a malformed header, expired, wrong audience, `alg: none`, wrong key.
    let r = join(http, "demo", None, sdp, offer().into_bytes()).await;
    expect(&r, 401, "unauthorized", "no token");
    let r = http_request(
        http,
        "POST",
        "/v1/instances/demo/join",
        &[("content-type", sdp), ("authorization", "Basic abc")],
        offer().into_bytes(),
    )
    .await
    .unwrap();
    expect(&r, 401, "unauthorized", "Bearer");
    let expired = token(&secret, AUDIENCE, "ann", "demo", now_s() - 3600);
    let r = join(http, "demo", Some(&expired), sdp, offer().into_bytes()).await;
    expect(&r, 401, "unauthorized", "expired");
    let elsewhere = token(&secret, "another-service", "ann", "demo", now_s());
    let r = join(http, "demo", Some(&elsewhere), sdp, offer().into_bytes()).await;
    expect(&r, 401, "unauthorized", "aud");
    let claims = format!(
        r#"{{"sub":"ann","instance":"demo","iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{}}}"#,
        now_s() + 600
    );
    let unsigned = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(claims.as_bytes())
    );
    let r = join(http, "demo", Some(&unsigned), sdp, offer().into_bytes()).await;
    expect(&r, 401, "unauthorized", "algorithm");
    let forged = token(
        "0123456789abcdef0123456789abcdef-wrong",
        AUDIENCE,
        "ann",
        "demo",
        now_s(),
    );
    let r = join(http, "demo", Some(&forged), sdp, offer().into_bytes()).await;
    expect(&r, 401, "unauthorized", "signature");

    // 403: a token for another instance; a banned user.
    let r = join(
        http,
        "demo",
        Some(&good("ann", "tiny")),
        sdp,
        offer().into_bytes(),
    )
    .await;
    expect(&r, 403, "forbidden", "tiny");
    lock(node.control())
        .kick(
            "demo",
            "eve",
            Some(Duration::from_secs(60)),
            "spam".into(),
            Instant::now(),
        )
        .unwrap();
    let r = join(
        http,
        "demo",
        Some(&good("eve", "demo")),
        sdp,
        offer().into_bytes(),
    )
    .await;
    expect(&r, 403, "banned", "eve");

    // 404: no such instance.
    let r = join(
        http,
        "nope",
        Some(&good("ann", "nope")),
        sdp,
        offer().into_bytes(),
    )
    .await;
    expect(&r, 404, "not_found", "nope");

    // 400: not SDP at all, the wrong content type, SDP the shard cannot accept.
    let r = join(
        http,
        "demo",
        Some(&good("ann", "demo")),
        sdp,
        b"hello".to_vec(),
    )
    .await;
    expect(&r, 400, "bad_offer", "SDP offer");
    let r = join(
        http,
        "demo",
        Some(&good("ann", "demo")),
        "text/plain",
        offer().into_bytes(),
    )
    .await;
    expect(&r, 400, "bad_offer", "Content-Type");
    let r = join(
        http,
        "demo",
        Some(&good("ann", "demo")),
        sdp,
        b"v=0\r\no=- x\r\nm=nonsense\r\n".to_vec(),
    )
    .await;
    expect(&r, 400, "bad_offer", "malformed SDP offer");
    // A refused join gives its seat back.
    let deadline = Instant::now() + Duration::from_secs(5);
    while lock(node.control()).registry.get("demo").unwrap().seats > 0 {
        assert!(Instant::now() < deadline, "a refused join kept its seat");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // 413: an offer over http.offer_bytes_max.
    let mut big = offer().into_bytes();
    big.resize(8 * 1024 + 1, b'a');
    let r = join(http, "demo", Some(&good("ann", "demo")), sdp, big).await;
    expect(&r, 413, "offer_too_large", "8192");

    // 409: `tiny` admits one user; the first join holds the seat.
    let r = join(
        http,
        "tiny",
        Some(&good("ann", "tiny")),
        sdp,
        offer().into_bytes(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        r.body.starts_with("v=0") && r.body.contains("a=ice-lite"),
        "{}",
        r.body
    );
    let location = r.location.clone().unwrap();
    assert!(location.starts_with("/v1/sessions/"), "{location}");
    let r = join(
        http,
        "tiny",
        Some(&good("bob", "tiny")),
        sdp,
        offer().into_bytes(),
    )
    .await;
    expect(&r, 409, "instance_full", "tiny");
    // Leaving frees the seat (the shard confirms the session's end).
    let r = http_request(http, "DELETE", &location, &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(5);
    while lock(node.control()).registry.get("tiny").unwrap().seats > 0 {
        assert!(Instant::now() < deadline, "the seat was never freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = http_request(http, "DELETE", &location, &[], Vec::new())
        .await
        .unwrap();
    expect(&r, 404, "not_found", "session");

    // The refusals are counted by reason.
    let metrics = http_request(http, "GET", "/metrics", &[], Vec::new())
        .await
        .unwrap();
    for line in [
        "instanceserver_auth_failures_total{reason=\"missing\"} 1",
        "instanceserver_auth_failures_total{reason=\"expired\"} 1",
        "instanceserver_auth_failures_total{reason=\"audience\"} 1",
        "instanceserver_auth_failures_total{reason=\"algorithm\"} 1",
        "instanceserver_auth_failures_total{reason=\"signature\"} 1",
        "instanceserver_auth_failures_total{reason=\"scope\"} 1",
        "instanceserver_auth_failures_total{reason=\"banned\"} 1",
        "instanceserver_joins_total{status=\"409\"} 1",
    ] {
        assert!(
            metrics.body.contains(line),
            "/metrics lacks {line}:\n{}",
            metrics.body
        );
    }

    // 503: a draining node admits nobody.
    node.drain(Duration::from_secs(5));
    let r = join(
        http,
        "demo",
        Some(&good("ann", "demo")),
        sdp,
        offer().into_bytes(),
    )
    .await;
    expect(&r, 503, "draining", "draining");
    let health = http_request(http, "GET", "/healthz", &[], Vec::new())
        .await
        .unwrap();
    assert!(health.body.contains("\"draining\""), "{}", health.body);
}

#[tokio::test(flavor = "current_thread")]
async fn joins_beyond_the_per_address_rate_get_429() {
    let mut config = support::config(1);
    config.http.joins_per_ip_per_minute = 3;
    let node = support::start(config);
    support::wait_running(&node, "demo").await;
    let secret = node.dev_secret.clone().unwrap();
    let verifier = Verifier::dev(&AuthConfig::default(), &secret);
    let mut statuses = Vec::new();
    for n in 0..4 {
        let request = TokenRequest {
            sub: format!("user{n}"),
            name: None,
            scope: Scope::Instance("demo".into()),
            ttl_s: 60,
        };
        let t = verifier.issue_hs256(&request, now_s()).unwrap();
        let r = join(
            node.http_addr,
            "demo",
            Some(&t),
            "application/sdp",
            offer().into_bytes(),
        )
        .await;
        statuses.push(r.status);
        if n == 3 {
            expect(&r, 429, "rate_limited", "3 joins a minute");
        }
    }
    assert_eq!(statuses, [201, 201, 201, 429]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_page_on_an_allowed_origin_can_join_across_origins_and_others_cannot() {
    let game = "http://game.test:3000";
    let mut config = support::config(1);
    config.http.cors_origins = vec![game.into()];
    let node = support::start(config);
    support::wait_running(&node, "demo").await;
    let http = node.http_addr;
    let preflight = |origin: &'static str| async move {
        http_request(
            http,
            "OPTIONS",
            "/v1/instances/demo/join",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization, content-type",
                ),
            ],
            Vec::new(),
        )
        .await
        .unwrap()
    };
    let ok = preflight("http://game.test:3000").await;
    assert_eq!(ok.status, 204, "{}", ok.body);
    assert_eq!(ok.header("access-control-allow-origin"), Some(game));
    assert!(
        ok.header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    assert!(
        ok.header("access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );
    let other = preflight("http://evil.test").await;
    expect(&other, 403, "cors_origin", "not in http.cors_origins");
    // A leave's preflight, and a room join's with a query.
    for (path, method) in [
        ("/v1/sessions/abc", "DELETE"),
        ("/v1/rooms/123456/join?topics=chat", "POST"),
    ] {
        let r = http_request(
            http,
            "OPTIONS",
            path,
            &[("origin", game), ("access-control-request-method", method)],
            Vec::new(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 204, "{path}: {}", r.body);
        assert!(
            r.header("access-control-allow-methods")
                .unwrap()
                .contains(method)
        );
    }
    // An error is readable by the page too.
    let r = http_request(
        http,
        "POST",
        "/v1/instances/demo/join",
        &[("origin", game), ("content-type", "application/sdp")],
        b"v=0".to_vec(),
    )
    .await
    .unwrap();
    expect(&r, 401, "unauthorized", "");
    assert_eq!(r.header("access-control-allow-origin"), Some(game));
    assert_eq!(r.header("vary"), Some("origin"));

    // The join itself: the answer carries the origin and exposes Location.
    let token = net::client::dev_token(http, "ann", "demo").await.unwrap();
    let auth = format!("Bearer {token}");
    let offer = offer();
    let r = http_request(
        http,
        "POST",
        "/v1/instances/demo/join",
        &[
            ("origin", game),
            ("content-type", "application/sdp"),
            ("authorization", &auth),
        ],
        offer.into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), Some(game));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("location, retry-after")
    );
    let location = r.location.clone().unwrap();
    let r = http_request(http, "DELETE", &location, &[("origin", game)], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), Some(game));
    // Other routes and other origins get no CORS headers.
    let r = http_request(http, "GET", "/healthz", &[("origin", game)], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[test]
fn cors_origins_are_checked_and_any_origin_is_for_dev_mode_only() {
    let mut c = instanceserver::config::Config::default();
    for (origins, dev, ok) in [
        (vec!["https://game.example"], false, true),
        (vec!["http://localhost:3000"], false, true),
        (vec!["*"], true, true),
        (vec!["*"], false, false),
        (vec!["https://game.example/"], false, false),
        (vec!["game.example"], false, false),
        (vec!["HTTPS://Game.example"], false, false),
        (vec!["ftp://game.example"], false, false),
        (vec!["https://game.example:8443"], false, true),
        (vec!["http://[::1]:3000"], false, true),
        (vec!["https://game.example:443"], false, false),
        (vec!["http://game.example:80"], false, false),
        (vec!["http://game.example:"], false, false),
        (vec!["http://game.example:99999"], false, false),
        (vec!["https://user@game.example"], false, false),
        (vec!["https://bücher.example"], false, false),
        (vec!["https://game.example\t"], false, false),
    ] {
        c.node.dev = dev;
        c.http.cors_origins = origins.iter().map(|s| s.to_string()).collect();
        assert_eq!(c.validate().is_ok(), ok, "{origins:?} dev={dev}");
    }
}

/// The demo page and the SDK come from the binary; the scene a page draws
/// is described at `/v1/instances/{id}/scene`, readable across origins.
#[tokio::test(flavor = "current_thread")]
async fn the_demo_page_the_sdk_and_the_scene_description_are_served() {
    let game = "http://game.test:3000";
    let mut config = support::config(1);
    config.http.cors_origins = vec![game.into()];
    let node = support::start(config);
    support::wait_running(&node, "demo").await;
    let http = node.http_addr;
    let get = |path: &'static str, headers: Vec<(&'static str, &'static str)>| async move {
        http_request(http, "GET", path, &headers, Vec::new())
            .await
            .unwrap()
    };
    let page = get("/", vec![]).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.body.contains("/web/demo/demo.js"), "{}", page.body);
    let sdk = get("/web/instanceserver.js", vec![]).await;
    assert_eq!(sdk.status, 200);
    assert_eq!(
        sdk.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(sdk.body.contains("export { Client"));
    assert_eq!(sdk.header("x-content-type-options"), Some("nosniff"));
    for missing in ["/web/nope.js", "/web/../Cargo.toml", "/web/lib/"] {
        assert_eq!(get(missing, vec![]).await.status, 404, "{missing}");
    }

    let scene = get("/v1/instances/demo/scene", vec![("origin", game)]).await;
    assert_eq!(scene.status, 200, "{}", scene.body);
    assert_eq!(scene.header("access-control-allow-origin"), Some(game));
    let d: serde_json::Value = serde_json::from_str(&scene.body).unwrap();
    assert_eq!(d["name"], "demo");
    assert_eq!(d["avatar"]["shape"], "capsule");
    let entities = d["entities"].as_array().unwrap();
    let networked = entities.iter().filter(|e| e["network_id"].is_u64()).count();
    assert_eq!(networked, 220, "the demo's 220 boxes and balls");
    assert!(
        entities
            .iter()
            .any(|e| e["name"] == "floor" && e["network_id"].is_null())
    );
    let missing = get("/v1/instances/nope/scene", vec![]).await;
    expect(&missing, 404, "not_found", "nope");

    // Off with http.web: no page, no SDK; the API is unchanged.
    let mut config = support::config(1);
    config.http.web = false;
    let quiet = support::start(config);
    support::wait_running(&quiet, "demo").await;
    for path in ["/", "/web/instanceserver.js"] {
        let r = http_request(quiet.http_addr, "GET", path, &[], Vec::new())
            .await
            .unwrap();
        assert_eq!(r.status, 404, "{path}");
    }
}

/// A `busy` answer reaches a page on an allowed origin readable: CORS is
/// the outermost layer.
#[tokio::test(flavor = "current_thread")]
async fn a_busy_answer_carries_the_cors_headers() {
    use tokio::io::AsyncWriteExt;
    let game = "http://game.test:3000";
    let mut config = support::config(1);
    config.http.cors_origins = vec![game.into()];
    config.http.concurrent_requests_max = 1;
    let node = support::start(config);
    support::wait_running(&node, "demo").await;
    let http = node.http_addr;
    // A join whose body is still on its way holds the only permit.
    let mut slow = tokio::net::TcpStream::connect(http).await.unwrap();
    slow.write_all(
        b"POST /v1/instances/demo/join HTTP/1.1\r\nhost: x\r\ncontent-type: application/sdp\r\n\
          content-length: 1000\r\n\r\nv=0\r\n",
    )
    .await
    .unwrap();
    slow.flush().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http_request(
            http,
            "POST",
            "/v1/instances/demo/join",
            &[("origin", game), ("content-type", "application/sdp")],
            b"v=0".to_vec(),
        )
        .await
        .unwrap();
        if r.status == 503 {
            expect(&r, 503, "busy", "http.concurrent_requests_max");
            assert_eq!(r.header("access-control-allow-origin"), Some(game));
            // A page can read when to try again.
            assert_eq!(r.header("retry-after"), Some("1"));
            assert_eq!(
                r.header("access-control-expose-headers"),
                Some("location, retry-after")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never busy: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(slow);
}
