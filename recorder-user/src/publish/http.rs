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

use super::{metrics::Metrics, tls::TlsListener};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("[api] listen = {addr:?}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("starting the HTTP thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
}

/// The client's address, as handlers see it (`ConnectInfo<PeerAddr>`; absent when the router is
/// driven without a socket, as in tests). A type of ours because axum only knows how to take
/// it from its own `TcpListener`, not from the TLS listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for PeerAddr
{
    fn connect_info(s: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        PeerAddr(*s.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerAddr
{
    fn connect_info(s: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        PeerAddr(*s.remote_addr())
    }
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
    /// The server's runtime: work that needs the API's database connections (which belong to
    /// this runtime) is spawned here from other threads (the console's token login).
    handle: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `addr` now (so a wrong address fails the start) and serves `app` on its own thread.
    pub fn start(addr: &str, app: Router) -> Result<HttpServer, HttpError> {
        Self::start_with(addr, app, None)
    }

    /// As [`HttpServer::start`], over TLS when `tls` is given (plain HTTP is then refused).
    pub fn start_with(
        addr: &str,
        app: Router,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<HttpServer, HttpError> {
        let bind = |source| HttpError::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = std::net::TcpListener::bind(addr).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let local = listener.local_addr().map_err(bind)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let rt = crate::runtime::current_thread().map_err(HttpError::Thread)?;
        let handle = rt.handle().clone();
        let thread = thread::Builder::new()
            .name("http".into())
            .spawn(move || {
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
                    let app = app.into_make_service_with_connect_info::<PeerAddr>();
                    let served = match tls {
                        Some(config) => match TlsListener::new(listener, config) {
                            Ok(l) => axum::serve(l, app).with_graceful_shutdown(stopped).await,
                            Err(e) => Err(e),
                        },
                        None => {
                            axum::serve(listener, app)
                                .with_graceful_shutdown(stopped)
                                .await
                        }
                    };
                    if let Err(e) = served {
                        log::error!("HTTP server: {e}");
                    }
                });
            })
            .map_err(HttpError::Thread)?;
        Ok(HttpServer {
            addr: local,
            handle,
            stop,
            thread: Some(thread),
        })
    }
}

impl HttpServer {
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
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

    use rustls_pki_types::pem::PemObject as _;

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
    fn serves_over_tls_with_the_configured_certificate_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = super::super::tls::self_signed_for_tests(dir.path());
        let m = Arc::new(
            Metrics::new(CaptureCounters::None, Arc::new(LiveStats::new(1)), None)
                .expect("registry"),
        );
        m.set_capture_info("xdp", "driver");
        let config = super::super::tls::server_config(&cert, &key).expect("tls config");
        let server = HttpServer::start_with("127.0.0.1:0", router(m), Some(config)).expect("start");

        // A client that trusts exactly this certificate gets the metrics.
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_file_iter(&cert).expect("pem") {
            roots.add(c.expect("cert")).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let conn = rustls::ClientConnection::new(Arc::new(client), name).expect("client");
        let tcp = std::net::TcpStream::connect(server.addr).expect("connect");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut body = String::new();
        // The server may close without close_notify after the response; what was read counts.
        let _ = tls.read_to_string(&mut body);
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("calltap_capture_info{mode=\"driver\",source=\"xdp\"} 1"));

        // Plain HTTP on the TLS port gets no HTTP answer.
        let plain = get(server.addr, "/metrics");
        assert!(!plain.contains("HTTP/1.1 200"), "{plain}");

        // A client that does not trust the certificate fails the handshake.
        let untrusted = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let conn = rustls::ClientConnection::new(Arc::new(untrusted), name).expect("client");
        let tcp = std::net::TcpStream::connect(server.addr).expect("connect");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        assert!(tls
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .and_then(|_| tls.flush())
            .is_err());
        drop(server);
    }

    #[test]
    fn unusable_tls_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = super::super::tls::self_signed_for_tests(dir.path());
        let missing = dir.path().join("nope.pem");
        let err = super::super::tls::server_config(&missing, &key)
            .expect_err("missing cert")
            .to_string();
        assert!(
            err.contains("tls_cert") && err.contains("nope.pem"),
            "{err}"
        );
        let err = super::super::tls::server_config(&cert, &cert)
            .expect_err("a certificate is not a key")
            .to_string();
        assert!(err.contains("tls_key"), "{err}");
        let (other, _) = {
            let d2 = dir.path().join("other");
            std::fs::create_dir_all(&d2).expect("dir");
            super::super::tls::self_signed_for_tests(&d2)
        };
        let err = super::super::tls::server_config(&other, &key)
            .expect_err("mismatched pair")
            .to_string();
        assert!(err.contains("does not fit"), "{err}");
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
