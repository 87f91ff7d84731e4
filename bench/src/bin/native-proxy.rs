//! The proxying ceiling: a plain native hyper server that forwards every
//! request's path to one origin over a pooled keep-alive client and
//! streams the answer back, no wasm involved. Beside `native-hello` it
//! shows what proxying costs on a machine by itself (one more write to
//! and read from the origin per request). Run as
//! `native-proxy 127.0.0.1:PORT http://ORIGIN_HOST:PORT`.

use std::net::SocketAddr;

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| "127.0.0.1:8080".parse().unwrap());
    let origin: http::Uri = args
        .next()
        .and_then(|o| o.parse().ok())
        .expect("usage: native-proxy ADDR http://ORIGIN");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Body> =
        Client::builder(TokioExecutor::new()).build(connector);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let origin = origin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let client = client.clone();
                let origin = origin.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    let uri = format!("{origin}{}", path.trim_start_matches('/'));
                    let mut forward = http::Request::builder().method(parts.method).uri(uri);
                    for (name, value) in &parts.headers {
                        if name != http::header::HOST {
                            forward = forward.header(name, value);
                        }
                    }
                    let forward = forward.body(body.boxed()).expect("a valid request");
                    let response = client.request(forward).await;
                    Ok::<_, hyper_util::client::legacy::Error>(response?.map(|body| body.boxed()))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
