//! The management HTTP server: `/metrics` now, the REST API routes merged into the same router.
//! It runs on its own thread with a single-threaded tokio runtime so a slow or stuck client can
//! never hold up capture; a scrape only reads atomics and the BPF counter map.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::header,
    middleware,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};

use super::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("[api] listen = {addr:?}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("starting the HTTP thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The routes the management server always offers; the caller may merge more (the REST API).
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics)
}

/// Counts every request of `app` by matched route template and status
/// (`calltap_api_requests_total`); unmatched paths are counted as `unmatched`, so a scanner
/// probing random URLs cannot grow the label set.
pub fn track_requests(app: Router, metrics: Arc<Metrics>) -> Router {
    app.layer(middleware::from_fn_with_state(metrics, count_request))
}

async fn count_request(
    State(m): State<Arc<Metrics>>,
    req: Request,
    next: middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let resp = next.run(req).await;
    m.observe_request(&route, resp.status().as_u16());
    resp
}

async fn scrape(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
}

/// A running server; dropping it stops it.
pub struct HttpServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `addr` now (so a wrong address fails the start) and serves `app` on its own thread.
    pub fn start(addr: &str, app: Router) -> Result<HttpServer, HttpError> {
        let bind = |source| HttpError::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = std::net::TcpListener::bind(addr).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let local = listener.local_addr().map_err(bind)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        log::error!("HTTP server: no runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            log::error!("HTTP server: {e}");
                            return;
                        }
                    };
                    let stopped = async move {
                        while !flag.load(Ordering::Acquire) {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    };
                    if let Err(e) = axum::serve(listener, app)
                        .with_graceful_shutdown(stopped)
                        .await
                    {
                        log::error!("HTTP server: {e}");
                    }
                });
            })
            .map_err(HttpError::Thread)?;
        Ok(HttpServer {
            addr: local,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::publish::metrics::{CaptureCounters, LiveStats};

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("read");
        body
    }

    #[test]
    fn serves_metrics_over_tcp_and_counts_requests_by_route() {
        let m = Arc::new(
            Metrics::new(CaptureCounters::None, Arc::new(LiveStats::new(1)), None)
                .expect("registry"),
        );
        m.set_capture_info("xdp", "skb");
        let server =
            HttpServer::start("127.0.0.1:0", track_requests(router(m.clone()), m)).expect("start");
        let body = get(server.addr, "/metrics");
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("calltap_capture_info{mode=\"skb\",source=\"xdp\"} 1"));
        for probe in ["/etc/passwd", "/call/+15551234"] {
            assert!(get(server.addr, probe).starts_with("HTTP/1.1 404"));
        }
        let body = get(server.addr, "/metrics");
        assert!(
            body.contains("calltap_api_requests_total{route=\"/metrics\",status=\"200\"} 1"),
            "{body}"
        );
        assert!(
            body.contains("calltap_api_requests_total{route=\"unmatched\",status=\"404\"} 2"),
            "{body}"
        );
        assert!(!body.contains("15551234"), "a raw path leaked into a label");
        drop(server);
    }
}
