//! Operator HTTP endpoints: Prometheus `/metrics`, liveness `/healthz`,
//! readiness `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use crate::error::RuntimeError;
use crate::node::Core;

async fn metrics(
    State(core): State<Arc<Core>>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        core.metrics_text(),
    )
}

/// Liveness: the process answers. Deliberately no dependency checks, so a
/// node waiting for a quorum is not restarted in a loop.
/// Liveness: false once consensus has stopped for good (a fatal storage
/// error or a panic in raft-rs), so that a supervisor restarts the node;
/// a restart repairs damaged log records from peers before raft-rs starts.
async fn healthz(State(core): State<Arc<Core>>) -> (StatusCode, &'static str) {
    if core.raft_status().running {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "consensus stopped; restart this node\n",
        )
    }
}

async fn readyz(State(core): State<Arc<Core>>) -> (StatusCode, String) {
    let s = core.raft_status();
    match core.not_ready_reason() {
        None => (
            StatusCode::OK,
            format!(
                "ready: role={} leader={} applied={}\n",
                s.role.as_str(),
                s.leader_id,
                s.applied_index
            ),
        ),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

pub(crate) async fn serve(
    core: Arc<Core>,
    addr: SocketAddr,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), RuntimeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| RuntimeError::Internal(format!("cannot bind HTTP on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| RuntimeError::Internal(e.to_string()))?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(core);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok((bound, task))
}
