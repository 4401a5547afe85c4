//! The operator's one HTTP listener: `/healthz` (liveness: the process serves), `/readyz`
//! (readiness: every watch cache has listed once, on followers too) and `/metrics`.

use crate::metrics::Metrics;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tracing::{debug, info};

/// What the endpoints report.
pub struct Health {
    /// Set once every reflector has completed its first list.
    pub caches_synced: AtomicBool,
    pub metrics: Arc<Metrics>,
}

/// Answers one request (pure, so it is tested without a socket).
pub fn respond(health: &Health, method: &Method, path: &str) -> (StatusCode, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into());
    }
    match path {
        "/healthz" | "/livez" => (StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" if health.caches_synced.load(Ordering::Acquire) => {
            (StatusCode::OK, TEXT, "ok\n".into())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "watch caches are not synced yet\n".into(),
        ),
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            health.metrics.encode(),
        ),
        _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

/// Serves until the task is aborted.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving /healthz, /readyz and /metrics");
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "accept failed");
                continue;
            }
        };
        let health = health.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (status, content_type, body) = respond(&health, req.method(), req.uri().path());
                let response = Response::builder()
                    .status(status)
                    .header(hyper::header::CONTENT_TYPE, content_type)
                    .body(Full::new(Bytes::from(body)));
                async move { response }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_caches_and_liveness_does_not() {
        let health = Health {
            caches_synced: AtomicBool::new(false),
            metrics: Arc::new(Metrics::new()),
        };
        let get = |path| respond(&health, &Method::GET, path).0;
        assert_eq!(get("/healthz"), StatusCode::OK);
        assert_eq!(get("/readyz"), StatusCode::SERVICE_UNAVAILABLE);
        health.caches_synced.store(true, Ordering::Release);
        assert_eq!(get("/readyz"), StatusCode::OK);
        assert_eq!(get("/nope"), StatusCode::NOT_FOUND);
        let (status, kind, body) = respond(&health, &Method::GET, "/metrics");
        assert_eq!(status, StatusCode::OK);
        assert!(kind.starts_with("application/openmetrics-text"));
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert_eq!(
            respond(&health, &Method::POST, "/healthz").0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
