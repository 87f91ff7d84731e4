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

#[tokio::test(flavor = "multi_thread")]
async fn kv_counter_counts_views_per_path() {
    let project = Project::new(&format!(
        "{}vars = {{ PREFIX = \"/views\" }}\nkv_namespaces = [{{ binding = \"KV\", id = \"kv-counter\" }}]\n",
        worker(
            "kv-counter",
            guests::EXAMPLE_KV_COUNTER,
            &["/views", "/views/*"]
        ),
    ));
    let server = project.serve();
    let client = client();
    for expected in 1..=3 {
        let response = client.get(server.url("/views/about")).send().await.unwrap();
        assert_eq!(response.headers()["x-views"], expected.to_string().as_str());
    }
    client.get(server.url("/views/home")).send().await.unwrap();
    let (status, _, body) = get(&client, &server.url("/views")).await;
    assert_eq!(status, 200, "{body}");
    let counts: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(counts, serde_json::json!({"/about": 3, "/home": 1}));
}

#[tokio::test(flavor = "multi_thread")]
async fn posts_api_lists_posts_and_counts_views_after_responding() {
    let project = Project::new(&format!(
        "{}d1_databases = [{{ binding = \"DB\", database_name = \"posts\" }}]\n",
        worker(
            "posts-api",
            guests::EXAMPLE_POSTS_API,
            &["/posts", "/posts/*"]
        ),
    ));
    let server = project.serve();
    let client = client();
    let created = client
        .post(server.url("/posts"))
        .body(r#"{"title": "hello", "body": "first post"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.unwrap()["id"].clone();
    assert_eq!(id, 1);
    for _ in 0..2 {
        let (status, _, body) = get(&client, &server.url("/posts/1")).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("first post"), "{body}");
    }
    // Views are recorded in waitUntil, after each response: poll briefly.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, body) = get(&client, &server.url("/posts")).await;
        let posts: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(posts[0]["title"], "hello", "{posts}");
        if posts[0]["views"] == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "views never reached 2: {posts}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, _) = get(&client, &server.url("/posts/99")).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_stream_files_in_and_out() {
    let project = Project::new(&format!(
        "{}r2_buckets = [{{ binding = \"BUCKET\", bucket_name = \"uploads\" }}]\n",
        worker("uploads", guests::EXAMPLE_UPLOADS, &["/files", "/files/*"]),
    ));
    let server = project.serve();
    let client = client();
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let put = client
        .put(server.url("/files/docs/big.bin"))
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let back = client
        .get(server.url("/files/docs/big.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), 200);
    assert_eq!(back.headers()["content-type"], "application/octet-stream");
    assert!(back.bytes().await.unwrap() == body, "the file changed");
    let part = client
        .get(server.url("/files/docs/big.bin"))
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap(), &body[100..200]);
    let (_, _, listing) = get(&client, &server.url("/files")).await;
    let listing: serde_json::Value = serde_json::from_str(&listing).unwrap();
    assert_eq!(
        listing["folders"],
        serde_json::json!(["docs/"]),
        "{listing}"
    );
    let deleted = client
        .delete(server.url("/files/docs/big.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let (status, _, _) = get(&client, &server.url("/files/docs/big.bin")).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn fan_out_splits_a_job_into_queue_messages_and_reports_progress() {
    let project = Project::new(&format!(
        "{}d1_databases = [{{ binding = \"DB\", database_name = \"fan-out\" }}]\n\
         queues.producers = [{{ binding = \"DOCS\", queue = \"fan-out-docs\" }}]\n\
         queues.consumers = [{{ queue = \"fan-out-docs\", max_batch_size = 10, max_batch_timeout = 1, max_retries = 3, dead_letter_queue = \"fan-out-dlq\" }}]\n\
         triggers.crons = [\"*/1 * * * *\"]\n",
        worker("fan-out", guests::EXAMPLE_FAN_OUT, &["/jobs", "/jobs/*"]),
    ));
    let server = project.serve();
    let client = client();
    let created = client.post(server.url("/jobs")).send().await.unwrap();
    assert_eq!(created.status(), 202);
    let job: serde_json::Value = created.json().await.unwrap();
    assert_eq!(job["total"], 200, "{job}");
    let id = job["id"].clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, body) = get(&client, &server.url(&format!("/jobs/{id}"))).await;
        assert_eq!(status, 200, "{body}");
        let progress: serde_json::Value = serde_json::from_str(&body).unwrap();
        if progress["done"] == 200 {
            assert!(progress["finished_at"].is_string(), "{progress}");
            assert!(progress["words"].as_u64().unwrap() > 0, "{progress}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job did not finish: {progress}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The cron handler reports progress; fire it now instead of waiting a
    // minute.
    let output = project.trigger_cron("fan-out");
    assert!(
        output.status.success(),
        "{}",
        crate::support::stderr_of(&output)
    );
}
