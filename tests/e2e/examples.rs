//! The guest examples that need more than one request to show what they do.

use std::time::Duration;

use isola_test_programs as guests;

use crate::support::{Project, Upstream, client, get, worker};

#[tokio::test(flavor = "multi_thread")]
async fn proxy_cache_proxies_adds_a_header_and_reports_in_the_background() {
    let upstream = Upstream::start(Duration::ZERO).await;
    let origin = upstream.url("");
    let project = Project::new(&format!(
        "{}vars = {{ ORIGIN_URL = {origin:?}, HITS_URL = {:?} }}\nallowed_outbound_hosts = [{origin:?}]\n",
        worker("proxy", guests::EXAMPLE_PROXY_CACHE, &["/proxy/*"]),
        upstream.url("/hits"),
    ));
    let server = project.serve();
    let response = client()
        .get(server.url("/proxy/page?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-foo"], "bar");
    assert_eq!(response.text().await.unwrap(), "upstream says hi");
    let page = upstream.wait_for("/page?x=1").await;
    let hit = upstream.wait_for("/hits").await;
    assert!(hit >= page);
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_open_falls_back_to_the_origin_only_when_it_breaks() {
    let origin = Upstream::echo().await;
    let project = Project::new(&format!(
        "{}origin = \"http://127.0.0.1:{}\"\n",
        worker("fail-open", guests::EXAMPLE_FAIL_OPEN, &["/*"]),
        origin.addr.port()
    ));
    let server = project.serve();
    let client = client();
    let (status, _, body) = get(&client, &server.url("/a")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "enriched by the worker: GET /a (0 bytes)\n")
    );
    let (_, _, body) = get(&client, &server.url("/a?crash")).await;
    assert_eq!(body, "origin got GET /a?crash\nx-test=\nbody=");
    let response = client
        .post(server.url("/b"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.text().await.unwrap(),
        "origin got POST /b\nx-test=\nbody=not json"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn middleware_chain_passes_typed_context_and_guards_the_app() {
    let chain = guests::EXAMPLE_MIDDLEWARE_CHAIN;
    let project = Project::new(&[
        worker("auth", chain, &["/chain/*"]),
        "vars = { ROLE = \"auth\" }\nservices = [{ binding = \"TENANT\", service = \"tenant\" }]\n".into(),
        worker("tenant", chain, &[]),
        "vars = { ROLE = \"tenant\" }\nservices = [{ binding = \"APP\", service = \"app\" }]\n".into(),
        worker("app", chain, &["/chain-app/*"]),
        "vars = { ROLE = \"app\" }\n".into(),
    ]
    .concat());
    let server = project.serve();
    let client = client();
    let response = client
        .get(server.url("/chain/orders"))
        .header("authorization", "Bearer ada")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({ "path": "/chain/orders", "user": "ada", "roles": ["reader"], "tenant": "tenant-ada", "plan": "free" })
    );
    assert_eq!(get(&client, &server.url("/chain/orders")).await.0, 401);
    let (status, _, body) = get(&client, &server.url("/chain-app/orders")).await;
    assert_eq!(
        (status, body.as_str()),
        (400, "missing context: user and tenant\n")
    );
}
