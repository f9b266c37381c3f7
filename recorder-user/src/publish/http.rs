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

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};

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

    #[test]
    fn serves_metrics_over_tcp() {
        let m = Arc::new(
            Metrics::new(CaptureCounters::None, Arc::new(LiveStats::new(1)), None)
                .expect("registry"),
        );
        m.set_capture_info("xdp", "skb");
        let server = HttpServer::start("127.0.0.1:0", router(m)).expect("start");
        let mut s = std::net::TcpStream::connect(server.addr).expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("read");
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("calltap_capture_info{mode=\"skb\",source=\"xdp\"} 1"));
        drop(server);
    }
}
