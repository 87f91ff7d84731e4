//! A worker written against Spin's Rust SDK, the way Spin's `http-rust`
//! template and its router example write one. The test build compiles it
//! twice: for `wasm32-wasip2` (a component) and for `wasm32-wasip1`, the
//! core module `spin build` makes, which Isola has to adapt into a
//! component itself, as Spin does.

use spin_sdk::http::{IntoResponse, Params, Request, Response, Router};
use spin_sdk::http_component;

#[http_component]
fn handle_route(req: Request) -> Response {
    let mut router = Router::new();
    router.get("/", hello);
    router.get("/hello/:planet", hello_planet);
    router.post("/echo", echo);
    router.any("/*", not_found);
    router.handle(req)
}

/// The template's handler, printing to stdout as it does.
fn hello(req: Request, _params: Params) -> anyhow::Result<impl IntoResponse> {
    println!("Handling request to {}", req.uri());
    Ok(Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body("Hello, Fermyon")
        .build())
}

fn hello_planet(_req: Request, params: Params) -> anyhow::Result<impl IntoResponse> {
    let planet = params.get("planet").expect("the route has :planet");
    Ok(Response::new(200, format!("hello, {planet}")))
}

fn echo(req: Request, _params: Params) -> anyhow::Result<impl IntoResponse> {
    let note = req
        .header("x-note")
        .and_then(|value| value.as_str())
        .unwrap_or("none")
        .to_owned();
    Ok(Response::builder()
        .status(201)
        .header("x-note", note)
        .body(req.into_body())
        .build())
}

fn not_found(req: Request, _params: Params) -> anyhow::Result<impl IntoResponse> {
    Ok(Response::new(404, format!("no route for {}", req.path())))
}
