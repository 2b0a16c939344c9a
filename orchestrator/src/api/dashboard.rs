//! The read-only web dashboard every orchestrator serves at `/ui/`: one HTML page, its
//! script and its style sheet, compiled into the binary (no build step, nothing fetched from
//! elsewhere). The page polls the operator API's read-only routes (`/v1/status`,
//! `/v1/audit`, `/v1/capacity`, `/v1/forecast`) with the bearer token the operator gives it,
//! and draws regions, pools, forecasts, migration timelines and the audit log.
//!
//! Serving the page needs an operator certificate (403 otherwise), like every `/v1` route,
//! but no token: a browser cannot send one with a navigation, and the page holds no data of
//! its own. The token never reaches this module: the page keeps it in the tab's
//! `sessionStorage` and sends it only in `Authorization` headers of its API calls. This
//! module must not serve anything that writes, and must not load code or styles from
//! anywhere but itself (its Content-Security-Policy says so to the browser).

use axum::extract::{Extension, Request};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use umbra_proto::Role;

use super::ErrorBody;
use super::server::Caller;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const SCRIPT_JS: &str = include_str!("dashboard/dashboard.js");
const STYLE_CSS: &str = include_str!("dashboard/dashboard.css");

/// Only this origin's own files and API: no inline script, no framing by other pages, no
/// referrer (the page's address never carries the token, but other paths might be private).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The dashboard's routes: `GET /ui` (a redirect), `GET /ui/` and its two assets.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new()
        .route(
            "/ui/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT_JS) }),
        )
        .route(
            "/ui/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route_layer(middleware::from_fn(operator_only))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            // The assets change with the binary; a stale script after an upgrade would read
            // answers it does not know.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The page is for operators: a certificate of another role (an agent's, an
/// orchestrator's) or without an Umbra identity is refused, as on `/v1`.
async fn operator_only(
    Extension(Caller(caller)): Extension<Caller>,
    request: Request,
    next: Next,
) -> Response {
    match caller {
        Some(identity) if identity.role() == Role::Operator => next.run(request).await,
        other => {
            let who = other.map_or_else(
                || "a certificate without an umbra://operator/<name> identity".to_owned(),
                |identity| format!("certificate {identity}"),
            );
            tracing::warn!(%who, path = %request.uri().path(), "dashboard refused a non-operator certificate");
            (
                StatusCode::FORBIDDEN,
                axum::Json(ErrorBody {
                    error: format!(
                        "the dashboard is for operators and the browser presented {who}: import an operator certificate (`umbra certs add --role operator`, then operator-NAME.pem and .key as PKCS#12) into the browser"
                    ),
                }),
            )
                .into_response()
        }
    }
}
