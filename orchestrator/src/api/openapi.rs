//! The operator API's OpenAPI 3.1 description. The paths come from the handlers'
//! `#[utoipa::path]` annotations, gathered by the same `utoipa_axum` router that serves them
//! (`server::documented_routes`); this module adds what is the API's as a whole: its title,
//! the two credentials every `/v1` request needs (an operator certificate, mutual TLS, and
//! the bearer token) and the document as `GET /v1/openapi.json` serves it.
//!
//! This module must not describe a route by hand: a route is documented by its handler's
//! annotation or not at all (the test below checks that every route served is documented).

use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

/// The API as a whole: title, credentials, tags. The paths are added by the router.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Umbra operator API",
        description = "Every orchestrator serves this API over HTTPS. Every /v1 request needs a client certificate with the operator role from the cluster CA (`umbra certs add --role operator`) and the cluster's bearer token (the `api-token` file `umbra certs init` writes). Instants are RFC 3339 UTC strings with milliseconds; durations are numbers with their unit in the field name. Every error answer is {\"error\": \"...\"} saying what to do.",
    ),
    modifiers(&Credentials),
    security(("operator_certificate" = [], "bearer_token" = [])),
    tags(
        (name = "plan", description = "Regions, services and schedules"),
        (name = "migrations", description = "Moving a service's traffic to another region"),
        (name = "status", description = "What the cluster is doing, and the audit log"),
        (name = "capacity", description = "Capacity claims and the forecast behind the pools"),
        (name = "drills", description = "Verdicts of the drills run against the cluster"),
        (name = "meta", description = "Health and this description"),
    ),
)]
pub(super) struct ApiDoc;

/// Declares the two credentials the `security` requirement names.
struct Credentials;

impl utoipa::Modify for Credentials {
    fn modify(&self, document: &mut Document) {
        let components = document.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "operator_certificate",
            SecurityScheme::MutualTls {
                description: Some(
                    "A client certificate with the operator role from the cluster CA: `umbra certs add --role operator`".to_owned(),
                ),
                deprecated: None,
                extensions: None,
            },
        );
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.description = Some(
            "The cluster's API token: the `api-token` file `umbra certs init` writes (the CLI's --token-file)".to_owned(),
        );
        components.add_security_scheme("bearer_token", SecurityScheme::Http(bearer));
    }
}

/// The document as `GET /v1/openapi.json` serves it: encoded once, when the server starts.
#[derive(Debug, Clone)]
pub(super) struct OpenApiJson(Bytes);

impl OpenApiJson {
    /// Encodes `document`.
    pub(super) fn of(document: &Document) -> Self {
        Self(Bytes::from(
            document
                .to_pretty_json()
                .expect("an OpenAPI document always encodes as JSON"),
        ))
    }
}

impl IntoResponse for OpenApiJson {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, "application/json")], self.0).into_response()
    }
}
