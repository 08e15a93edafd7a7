//! The metrics' HTTP/1.1 server: axum routes `GET /metrics` and `GET /` (HEAD too), with 404
//! for other paths and 405 for other methods; hyper serves one request per connection, gives a
//! client [`Limits::read_timeout`] to send its request head (408 after that) and refuses a head
//! over [`MAX_HEAD`] bytes; tower's concurrency limit holds at most
//! [`Limits::max_connections`] connections at once, the next ones waiting in the listen queue.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, HeaderValue, StatusCode, Version},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
};
use tower::{Service as _, ServiceBuilder, ServiceExt as _};
use tower_http::set_header::SetResponseHeaderLayer;

use super::{page::render_status, prometheus, MetricsError, Snapshot};

/// Where xlbd serves metrics unless told otherwise: loopback only, since the page shows the
/// whole configuration and there is no authentication.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9641";

/// The longest request head (request line and headers) read; a longer one is refused (431).
/// hyper's smallest read buffer.
pub const MAX_HEAD: usize = 8 * 1024;

/// What a connection may cost the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How long a client has to send its request head (then 408).
    pub read_timeout: Duration,
    /// How long a connection may last at all, answer included: bounds a client that stops
    /// reading.
    pub lifetime: Duration,
    /// Connections served at once; more wait in the listen queue, so that a flood of idle
    /// connections cannot pile up tasks.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            read_timeout: Duration::from_secs(5),
            lifetime: Duration::from_secs(15),
            max_connections: 64,
        }
    }
}

/// What the server answers a client whose head did not arrive in time; hyper only closes.
fn request_timeout() -> String {
    const BODY: &str = "request timed out\n";
    format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    )
}

/// Serves pages made from the snapshots `snapshot` takes (one per page request), within
/// `limits`, until the task is dropped. One connection failing never stops the server.
pub async fn serve_with<F, Fut>(listener: TcpListener, limits: Limits, snapshot: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Snapshot, MetricsError>> + Send + 'static,
{
    let app = router(Arc::new(snapshot));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .keep_alive(false)
        .max_buf_size(MAX_HEAD);
    let http = Arc::new(http);
    // A connection is a request to this service; its permit lives as long as the connection.
    let mut connections = ServiceBuilder::new()
        .concurrency_limit(limits.max_connections)
        .service_fn(move |stream: TcpStream| {
            let (http, app) = (http.clone(), app.clone());
            async move {
                connection(stream, &http, app, limits).await;
                Ok::<_, Infallible>(())
            }
        });
    loop {
        // A free slot before the next accept: beyond the limit, clients wait in the listen
        // queue rather than as tasks.
        let Ok(slot) = connections.ready().await;
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                // Out of file descriptors (the usual cause) would otherwise spin this loop.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(slot.call(stream));
    }
}

/// Serves one connection within its lifetime.
async fn connection(mut stream: TcpStream, http: &http1::Builder, app: Router, limits: Limits) {
    let peer = stream.peer_addr().ok();
    let served = tokio::time::timeout(limits.lifetime, async {
        let result = http
            .serve_connection(TokioIo::new(&mut stream), TowerToHyperService::new(app))
            .await;
        match result {
            Err(e) if e.is_timeout() => {
                let _ = stream.write_all(request_timeout().as_bytes()).await;
                let _ = stream.shutdown().await;
            }
            Err(e) => tracing::debug!(?peer, error = %e, "metrics connection ended"),
            Ok(()) => {}
        }
    })
    .await;
    if served.is_err() {
        tracing::debug!(?peer, "metrics connection outlived its time");
    }
}

/// The routes, with `Cache-Control: no-store` on every answer.
fn router<F, Fut>(snapshot: Arc<F>) -> Router
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Snapshot, MetricsError>> + Send + 'static,
{
    Router::new()
        .route("/metrics", get(metrics::<F, Fut>))
        .route("/", get(status::<F, Fut>))
        .fallback(not_found)
        .with_state(snapshot)
        .layer(middleware::from_fn(require_host))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
}

async fn metrics<F, Fut>(State(snapshot): State<Arc<F>>) -> Response
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Snapshot, MetricsError>>,
{
    match snapshot().await {
        Ok(s) => (
            [(header::CONTENT_TYPE, prometheus::METRICS_CONTENT_TYPE)],
            prometheus::render(&s.listing, &s.globals, s.health.as_ref(), s.conn_filter),
        )
            .into_response(),
        Err(e) => failed(&e),
    }
}

async fn status<F, Fut>(State(snapshot): State<Arc<F>>) -> Response
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Snapshot, MetricsError>>,
{
    match snapshot().await {
        Ok(s) => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            render_status(&s),
        )
            .into_response(),
        Err(e) => failed(&e),
    }
}

/// A 500 that says why, down to the kernel's error.
fn failed(e: &MetricsError) -> Response {
    let reason = crate::errors::error_chain(e);
    tracing::warn!(error = %reason, "metrics: no snapshot");
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{reason}\n")).into_response()
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found: try / or /metrics\n")
}

/// RFC 9112 3.2: an HTTP/1.1 request without Host gets a 400.
async fn require_host(request: Request<Body>, next: Next) -> Response {
    if request.version() == Version::HTTP_11 && !request.headers().contains_key(header::HOST) {
        return (StatusCode::BAD_REQUEST, "no Host header\n").into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use std::{
        net::SocketAddr,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use tokio::io::AsyncReadExt as _;

    use super::*;
    use crate::metrics::fixtures::{globals, listing, stats};

    fn snapshot() -> Snapshot {
        Snapshot {
            listing: listing(),
            globals: globals(),
            health: Some(stats()),
            ..Snapshot::default()
        }
    }

    /// A server on an ephemeral port of the loopback, within `limits`; it counts the snapshots
    /// it takes.
    async fn start(limits: Limits) -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let taken = Arc::new(AtomicUsize::new(0));
        let counter = taken.clone();
        let server = tokio::spawn(serve_with(listener, limits, move || {
            counter.fetch_add(1, Ordering::Relaxed);
            async { Ok(snapshot()) }
        }));
        (addr, taken, server)
    }

    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("send");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("answered in time")
            .expect("read");
        String::from_utf8(answer).expect("UTF-8")
    }

    /// The answer's status code (hyper answers an HTTP/1.0 request in HTTP/1.0).
    fn code(answer: &str) -> u16 {
        answer
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {answer}"))
    }

    /// The head's lines, lower-cased, each with its CRLF; and the body.
    fn split(answer: &str) -> (String, &str) {
        let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
        (format!("{}\r\n", head.to_ascii_lowercase()), body)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pages_are_served_with_their_types_and_lengths() {
        let (addr, taken, server) = start(Limits::default()).await;
        let expected = prometheus::render(&listing(), &globals(), Some(&stats()), None);

        let metrics = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
        let (head, body) = split(&metrics);
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(head.contains(&format!(
            "content-type: {}\r\n",
            prometheus::METRICS_CONTENT_TYPE
        )));
        assert!(head.contains("connection: close\r\n"), "{head}");
        assert!(head.contains("cache-control: no-store\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())));
        assert_eq!(body, expected);

        let page = exchange(addr, b"GET /?x=1 HTTP/1.0\r\n\r\n").await;
        let (head, body) = split(&page);
        assert_eq!(code(&page), 200, "{head}");
        assert!(head.contains("content-type: text/html; charset=utf-8\r\n"));
        assert!(body.contains("10.0.0.1:80"));

        let head_only = exchange(addr, b"HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
        let (head, body) = split(&head_only);
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}\r\n", expected.len())),
            "{head}"
        );
        assert_eq!(body, "");
        assert_eq!(taken.load(Ordering::Relaxed), 3);
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_requests_get_404_405_400_and_431_without_a_snapshot() {
        let (addr, taken, server) = start(Limits::default()).await;

        let missing = exchange(addr, b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );

        let post = exchange(addr, b"POST /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
        let (head, _) = split(&post);
        assert!(
            head.starts_with("http/1.1 405 method not allowed\r\n"),
            "{head}"
        );
        assert!(head.contains("allow: get,head\r\n"), "{head}");

        for garbage in [
            &b"hello\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nBad Name: x\r\nHost: t\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            let answer = exchange(addr, garbage).await;
            assert!(
                answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{:?}: {answer}",
                String::from_utf8_lossy(garbage)
            );
        }

        let long = format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX-Long: {}\r\n\r\n",
            "a".repeat(MAX_HEAD + 100)
        );
        let long = exchange(addr, long.as_bytes()).await;
        assert!(
            long.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{long}"
        );

        // A client that connects and says nothing, then one that leaves half-way, do not stop
        // the server.
        let idle = TcpStream::connect(addr).await.expect("connect");
        drop(TcpStream::connect(addr).await.expect("connect"));
        let mut half = TcpStream::connect(addr).await.expect("connect");
        half.write_all(b"GET / HT").await.expect("send");
        drop(half);
        let again = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert!(again.starts_with("HTTP/1.1 200 OK\r\n"), "{again}");
        drop(idle);

        assert_eq!(taken.load(Ordering::Relaxed), 1, "only the page took one");
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_beyond_the_limit_wait_for_a_free_slot() {
        let limits = Limits {
            read_timeout: Duration::from_secs(30),
            max_connections: 3,
            ..Limits::default()
        };
        let (addr, _, server) = start(limits).await;
        let mut idle = Vec::new();
        for _ in 0..limits.max_connections {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        // Every slot is held by a silent client: the next request waits in the listen queue.
        let waiting = tokio::spawn(exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "served beyond the limit");
        // One idle client leaves: its slot serves the waiting request.
        drop(idle.pop());
        let answer = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("served once a slot was free")
            .expect("the request task");
        assert_eq!(code(&answer), 200, "{answer}");
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_sends_no_whole_head_in_time_gets_408_and_frees_its_slot() {
        let limits = Limits {
            read_timeout: Duration::from_millis(200),
            max_connections: 1,
            ..Limits::default()
        };
        let (addr, _, server) = start(limits).await;
        let started = std::time::Instant::now();
        let slow = exchange(addr, b"GET / HTTP/1.1\r\n").await;
        assert!(
            slow.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{slow}"
        );
        let (head, body) = split(&slow);
        assert!(
            head.contains(&format!("content-length: {}\r\n", body.len())),
            "{slow}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        // The only slot is free again.
        let next = exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert_eq!(code(&next), 200, "{next}");
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_snapshot_is_a_500_with_the_reason() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(serve_with(listener, Limits::default(), || async {
            Err(MetricsError::Dataplane(
                crate::dataplane::DataplaneError::NoObject,
            ))
        }));
        let answer = exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert_eq!(code(&answer), 500, "{answer}");
        assert!(
            answer.ends_with(
                "reading the data path's counters: this binary was built with AYA_BUILD_SKIP=1 \
                 and holds no XDP object\n"
            ),
            "{answer}"
        );
        server.abort();
    }
}
