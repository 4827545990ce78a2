//! The demo page and the browser SDK, built into the binary (`web/`):
//! `GET /` is the demo page, `GET /web/{path}` the SDK's modules and the
//! demo's scripts, so `cargo run --release` and a browser are all a person
//! needs. Served when `http.web` is on (the default).

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Every file served under `/web/`: its path there and its contents.
pub const FILES: &[(&str, &str)] = &[
    (
        "instanceserver.js",
        include_str!("../../web/instanceserver.js"),
    ),
    (
        "instanceserver.d.ts",
        include_str!("../../web/instanceserver.d.ts"),
    ),
    ("lib/client.js", include_str!("../../web/lib/client.js")),
    ("lib/interp.js", include_str!("../../web/lib/interp.js")),
    ("lib/protocol.js", include_str!("../../web/lib/protocol.js")),
    ("lib/snapshot.js", include_str!("../../web/lib/snapshot.js")),
    ("demo/demo.js", include_str!("../../web/demo/demo.js")),
    ("demo/render.js", include_str!("../../web/demo/render.js")),
    ("demo/index.html", include_str!("../../web/demo/index.html")),
];

/// The routes of the page and the SDK.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { file("demo/index.html") }))
        .route(
            "/web/{*path}",
            get(|Path(path): Path<String>| async move { file(&path) }),
        )
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("ts") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn file(path: &str) -> Response {
    let Some((_, body)) = FILES.iter().find(|(p, _)| *p == path) else {
        return super::http::error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no file {:?} under /web/",
                path.chars().take(64).collect::<String>()
            ),
        );
    };
    let mut r = (StatusCode::OK, *body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    // Revalidated every time: a new binary serves new files at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file added to the SDK or the demo but not to [`FILES`] would be a
    /// 404 in every browser: every served directory is listed whole.
    #[test]
    fn every_file_of_the_sdk_and_the_demo_is_served() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let mut on_disk = Vec::new();
        for dir in ["", "lib", "demo"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let entry = entry.unwrap();
                let name = entry.file_name().into_string().unwrap();
                let served =
                    name.ends_with(".js") || name.ends_with(".html") || name.ends_with(".d.ts");
                if entry.file_type().unwrap().is_file() && served {
                    on_disk.push(if dir.is_empty() {
                        name
                    } else {
                        format!("{dir}/{name}")
                    });
                }
            }
        }
        on_disk.sort();
        let mut listed: Vec<String> = FILES.iter().map(|(p, _)| (*p).to_owned()).collect();
        listed.sort();
        assert_eq!(listed, on_disk);
    }
}
