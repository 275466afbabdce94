//! The metrics endpoint (axum): `GET /metrics` renders the latest snapshot; it only reads the
//! `watch` channel, so it never blocks the engine.

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::sync::watch;

use crate::api::Snapshot;

use super::metrics::{self, OwnUsage};

/// OpenMetrics text, as Prometheus asks for it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Latest = watch::Receiver<Option<Arc<Snapshot>>>;

async fn get_metrics(State(latest): State<Latest>) -> Response {
    let snapshot = latest.borrow().clone();
    match snapshot {
        None => (StatusCode::SERVICE_UNAVAILABLE, "no interval measured yet\n").into_response(),
        Some(s) => {
            ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics::render(&s, OwnUsage::read())).into_response()
        }
    }
}

async fn index() -> &'static str {
    "carbon-agent: metrics on /metrics\n"
}

/// The router (separate from [`serve`] for tests).
pub fn router(latest: Latest) -> Router {
    Router::new().route("/metrics", get(get_metrics)).route("/", get(index)).with_state(latest)
}

/// Serves until `stop` fires (or its sender is dropped).
pub async fn serve(
    listener: tokio::net::TcpListener,
    latest: Latest,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    axum::serve(listener, router(latest))
        .with_graceful_shutdown(async {
            let _ = stop.await;
        })
        .await?;
    Ok(())
}
