//! `/` and `/ui/{file}`: the web page, embedded in the binary (`services/gateway/ui/`), so a
//! gateway serves it offline and its version always matches the API's.
//!
//! Every answer carries a Content-Security-Policy that allows this origin only (no CDN, no
//! external font, no inline script), and `Cache-Control: no-cache` with a strong `ETag`: a
//! browser revalidates and gets 304 until the gateway is upgraded.

use std::sync::LazyLock;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::openapi::ErrorBody;
use crate::ApiError;

/// The page's files: name under `/ui/`, content type, bytes.
const FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../ui/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/api.js"),
    ),
    (
        "player.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/player.js"),
    ),
    (
        "waveform.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/waveform.js"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_str!("../../ui/icon.svg"),
    ),
];

/// This origin only: scripts, styles, fetches, event streams and decoded audio. `blob:` and
/// `data:` for images only (a canvas export, the icon); nothing may frame the page.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; \
    font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// Each file's strong ETag: a digest of its bytes, computed once.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|(_, _, body)| format!("\"{}\"", &blake3::hash(body.as_bytes()).to_hex()[..32]))
        .collect()
});

/// `GET /`: the page.
#[utoipa::path(
    get,
    path = "/",
    tag = "system",
    operation_id = "page",
    params(("If-None-Match" = Option<String>, Header, description = "`ETag`s the client holds")),
    responses(
        (status = 200, description = "The web page: upload, progress, stems, mixer",
            content_type = "text/html", body = String),
        (status = 304, description = "The client's copy is current"),
    ),
)]
pub async fn index(req: HttpRequest) -> HttpResponse {
    serve(&req, 0)
}

/// `GET /ui/{file}`: one of the page's files.
///
/// # Errors
/// 404 for a name that is not one of them.
#[utoipa::path(
    get,
    path = "/ui/{file}",
    tag = "system",
    operation_id = "pageFile",
    params(
        ("file" = String, Path, description = "The file's name", example = "app.js"),
        ("If-None-Match" = Option<String>, Header, description = "`ETag`s the client holds"),
    ),
    responses(
        (status = 200, description = "The file (script, style sheet, icon)",
            content(
                (String = "text/javascript"),
                (String = "text/css"),
                (String = "image/svg+xml"),
                (String = "text/html"),
            )),
        (status = 304, description = "The client's copy is current"),
        (status = 404, description = "Not one of the page's files", body = ErrorBody),
    ),
)]
pub async fn asset(req: HttpRequest, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let i = FILES
        .iter()
        .position(|(n, _, _)| *n == name.as_str())
        .ok_or_else(|| ApiError::NotFound(format!("no page file {name}")))?;
    Ok(serve(&req, i))
}

fn serve(req: &HttpRequest, i: usize) -> HttpResponse {
    let (_, content_type, body) = FILES[i];
    let etag = &ETAGS[i];
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut answer = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    answer
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::ETAG, etag.as_str()))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    if fresh {
        return answer.finish();
    }
    answer.content_type(content_type).body(body)
}

#[cfg(test)]
mod tests {
    use actix_web::{test, web, App};

    use super::*;

    #[actix_web::test]
    async fn the_page_and_its_files_are_served_with_their_types_and_policy() {
        let app = test::init_service(
            App::new()
                .route("/", web::get().to(index))
                .route("/ui/{file}", web::get().to(asset)),
        )
        .await;
        let page = test::call_service(&app, test::TestRequest::get().uri("/").to_request()).await;
        assert_eq!(page.status(), 200);
        let h = page.headers();
        assert_eq!(
            h.get(header::CONTENT_TYPE).unwrap(),
            "text/html; charset=utf-8"
        );
        assert_eq!(h.get(header::CACHE_CONTROL).unwrap(), "no-cache");
        let csp = h
            .get(header::CONTENT_SECURITY_POLICY)
            .unwrap()
            .to_str()
            .unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(!csp.contains("http"), "no external origin: {csp}");
        let etag = h.get(header::ETAG).unwrap().clone();
        let body = test::read_body(page).await;
        let html = std::str::from_utf8(&body).unwrap();
        // Every file the page names is served, and nothing it names is elsewhere.
        for (name, content_type, _) in FILES.iter().skip(1) {
            let uri = format!("/ui/{name}");
            let r = test::call_service(&app, test::TestRequest::get().uri(&uri).to_request()).await;
            assert_eq!(r.status(), 200, "{uri}");
            assert_eq!(
                r.headers().get(header::CONTENT_TYPE).unwrap(),
                *content_type,
                "{uri}"
            );
        }
        // Nothing the page loads names another origin (the SVG's XML namespace is a name).
        for (name, _, body) in FILES.iter().filter(|(n, _, _)| !n.ends_with(".svg")) {
            assert!(!body.contains("://"), "{name} names another origin");
        }
        assert!(html.contains("/ui/app.js"));
        let again = test::call_service(
            &app,
            test::TestRequest::get()
                .uri("/")
                .insert_header((header::IF_NONE_MATCH, etag))
                .to_request(),
        )
        .await;
        assert_eq!(again.status(), 304);
    }

    #[actix_web::test]
    async fn an_unknown_page_file_is_a_404() {
        let app = test::init_service(App::new().route("/ui/{file}", web::get().to(asset))).await;
        for uri in ["/ui/nope.js", "/ui/..%2Fmod.rs", "/ui/"] {
            let r = test::call_service(&app, test::TestRequest::get().uri(uri).to_request()).await;
            assert_eq!(r.status(), 404, "{uri}");
        }
    }
}
