//! Exercises every binding kind over HTTP for the end-to-end tests.
//!
//! Bindings: KV `KV`, D1 `DB`, R2 `BUCKET`, Analytics Engine `EVENTS`, the
//! secret `API_KEY`, and the default cache. A binding error answers 400
//! (invalid), 429 (subrequest limit) or 502 (backend) with the body
//! `<kind>: <message>`; anything else that fails returns `Err` (a 500).
//!
//! Routes:
//! - `GET|PUT|DELETE /kv/<key>`, `GET /kv?prefix=&limit=&cursor=`
//! - `POST /sql/{query,first,all,run,raw,batch,exec}`, `POST /counter`
//! - `PUT|GET|HEAD|DELETE /r2/<key>`, `GET /r2?prefix=&delimiter=&cursor=&limit=`
//! - `GET|DELETE /cached/<anything>?cc=&vary=`
//! - `GET /cached-big/<anything>?mib=N`: a hit streams from the cache; a
//!   miss stores N MiB of a pattern (byte i is 33 + i % 89), made and
//!   stored chunk by chunk, and answers `x-stored` with an empty body
//! - `POST /analytics`
//! - `GET /secret`, `/secret/log`, `/secret/fail`
//! - `GET /budget?n=N`

use std::time::{SystemTime, UNIX_EPOCH};

use isola_sdk::{
    BindingError, Ctx, D1Meta, D1Row, D1Statement, D1Value, DataPoint, Env, HeaderMap, HeaderName,
    HeaderValue, KvListOptions, KvPutOptions, Method, R2ListOptions, R2Object, R2PutOptions,
    R2Range, Request, Response, Result, anyhow, bail, caches, percent_decode,
};
use serde_json::{Map, Value, json};

#[isola_sdk::fetch]
async fn fetch(req: Request, env: Env, _ctx: Ctx) -> Result<Response> {
    match route(req, env).await {
        Ok(response) => Ok(response),
        Err(error) => match error.downcast_ref::<BindingError>() {
            Some(binding) => Ok(binding_error_response(binding)),
            None => Err(error),
        },
    }
}

fn binding_error_response(error: &BindingError) -> Response {
    let status = match error {
        BindingError::Invalid(_) => 400,
        BindingError::SubrequestLimit(_) => 429,
        BindingError::Backend(_) => 502,
    };
    Response::text(error.to_string()).with_status(status)
}

async fn route(req: Request, env: Env) -> Result<Response> {
    let method = req.method().clone();
    let path = req.path().to_owned();
    if path == "/kv" {
        return kv_list(&req, &env).await;
    }
    if let Some(key) = path.strip_prefix("/kv/") {
        let key = percent_decode(key);
        return match method {
            Method::GET => kv_get(&req, &env, &key).await,
            Method::PUT => kv_put(req, &env, &key).await,
            Method::DELETE => {
                env.kv("KV")?.delete(&key).await?;
                Ok(Response::empty(204))
            }
            _ => Ok(Response::empty(405)),
        };
    }
    if let Some(what) = path.strip_prefix("/sql/") {
        if method != Method::POST {
            return Ok(Response::empty(405));
        }
        return sql(req, &env, what).await;
    }
    if path == "/counter" && method == Method::POST {
        return counter(&env).await;
    }
    if path == "/r2" {
        return r2_list(&req, &env).await;
    }
    if let Some(key) = path.strip_prefix("/r2/") {
        let key = percent_decode(key);
        return match method {
            Method::PUT => r2_put(req, &env, &key).await,
            Method::GET => r2_get(&req, &env, &key).await,
            Method::HEAD => r2_head(&env, &key).await,
            Method::DELETE => {
                env.bucket("BUCKET")?.delete(key.as_str()).await?;
                Ok(Response::empty(204))
            }
            _ => Ok(Response::empty(405)),
        };
    }
    if path.starts_with("/cached-big/") && method == Method::GET {
        return cached_big(&req).await;
    }
    if path.starts_with("/cached/") {
        return match method {
            Method::GET => cached(&req).await,
            Method::DELETE => {
                let removed = caches::default()?.delete(&req).await?;
                Ok(Response::text(removed.to_string()))
            }
            _ => Ok(Response::empty(405)),
        };
    }
    if path == "/analytics" && method == Method::POST {
        return analytics(req, &env).await;
    }
    if path == "/secret" || path.starts_with("/secret/") {
        return secret(&env, &path);
    }
    if path == "/budget" {
        return budget(&req, &env).await;
    }
    Ok(Response::text(format!("no route for {method} {path}\n")).with_status(404))
}

fn bad_request(message: impl Into<String>) -> Response {
    Response::text(message.into()).with_status(400)
}

/// A query parameter parsed as a number; `Err` carries a 400.
fn number_param<T: std::str::FromStr>(
    req: &Request,
    name: &str,
) -> std::result::Result<Option<T>, Response> {
    match req.query_param(name) {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| bad_request(format!("bad request: {name} must be a number"))),
    }
}

fn set_header(headers: &mut HeaderMap, name: &str, value: &[u8]) {
    if let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_bytes(value),
    ) {
        headers.insert(name, value);
    }
}

// ---- KV ----

async fn kv_get(req: &Request, env: &Env, key: &str) -> Result<Response> {
    let kv = env.kv("KV")?;
    if req.query_param("type").as_deref() == Some("json") {
        return match kv.get_json::<Value>(key).await? {
            Some(value) => Response::json(&value),
            None => Ok(Response::empty(404)),
        };
    }
    let Some(value) = kv.get_with_metadata(key).await? else {
        return Ok(Response::empty(404));
    };
    let mut response = Response::new(value.value);
    if let Some(metadata) = &value.metadata {
        set_header(response.headers_mut(), "x-metadata", metadata.as_bytes());
    }
    Ok(response)
}

async fn kv_put(mut req: Request, env: &Env, key: &str) -> Result<Response> {
    let mut options = KvPutOptions::new();
    match number_param(&req, "ttl") {
        Ok(ttl) => options.expiration_ttl = ttl,
        Err(response) => return Ok(response),
    }
    match number_param(&req, "expiration") {
        Ok(expiration) => options.expiration = expiration,
        Err(response) => return Ok(response),
    }
    options.metadata = req.query_param("metadata");
    let value = req.bytes().await?;
    env.kv("KV")?.put_with(key, value, options).await?;
    Ok(Response::empty(204))
}

async fn kv_list(req: &Request, env: &Env) -> Result<Response> {
    let mut options = KvListOptions::new();
    options.prefix = req.query_param("prefix");
    options.cursor = req.query_param("cursor");
    match number_param(req, "limit") {
        Ok(limit) => options.limit = limit,
        Err(response) => return Ok(response),
    }
    let list = env.kv("KV")?.list(options).await?;
    let keys: Vec<Value> = list
        .keys
        .iter()
        .map(|key| {
            Ok(json!({
                "name": key.name,
                "expiration": key.expiration,
                "metadata": key.metadata_json::<Value>()?,
            }))
        })
        .collect::<Result<_>>()?;
    Response::json(&json!({
        "keys": keys,
        "list_complete": list.list_complete,
        "cursor": list.cursor,
    }))
}

// ---- D1 ----

/// A D1 value as JSON: blobs are `{"blob":[bytes]}`.
fn value_json(value: &D1Value) -> Value {
    match value {
        D1Value::Null => Value::Null,
        D1Value::Integer(n) => json!(n),
        D1Value::Real(x) => json!(x),
        D1Value::Text(text) => json!(text),
        D1Value::Blob(bytes) => json!({ "blob": bytes }),
    }
}

fn row_object(row: &D1Row) -> Value {
    let object: Map<String, Value> = row
        .iter()
        .map(|(column, value)| (column.to_owned(), value_json(value)))
        .collect();
    Value::Object(object)
}

fn meta_json(meta: &D1Meta) -> Result<Value> {
    Ok(serde_json::to_value(meta)?)
}

/// A JSON parameter as a D1 value; `{"blob":[bytes]}` is a blob.
fn param(value: &Value) -> std::result::Result<D1Value, String> {
    Ok(match value {
        Value::Null => D1Value::Null,
        Value::Bool(b) => D1Value::from(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => D1Value::Integer(i),
            None => D1Value::Real(n.as_f64().ok_or("a number out of range")?),
        },
        Value::String(text) => D1Value::Text(text.clone()),
        Value::Object(object) => match object.get("blob") {
            Some(Value::Array(bytes)) => D1Value::Blob(
                bytes
                    .iter()
                    .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect::<Option<Vec<u8>>>()
                    .ok_or("blob bytes must be 0..=255")?,
            ),
            _ => return Err(format!("unsupported parameter {value}")),
        },
        Value::Array(_) => return Err(format!("unsupported parameter {value}")),
    })
}

/// `{"sql": "...", "params": [...]}` as a prepared statement.
fn statement(db: &isola_sdk::D1, body: &Value) -> std::result::Result<D1Statement, String> {
    let sql = body
        .get("sql")
        .and_then(Value::as_str)
        .ok_or("`sql` must be a string")?;
    let params = match body.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(params)) => params.iter().map(param).collect::<Result<_, _>>()?,
        Some(_) => return Err("`params` must be an array".into()),
    };
    Ok(db.prepare(sql).bind(params))
}

async fn sql(mut req: Request, env: &Env, what: &str) -> Result<Response> {
    let db = env.d1("DB")?;
    if what == "exec" {
        let sql = req.text().await?;
        let result = db.exec(&sql).await?;
        return Response::json(&json!({ "count": result.count }));
    }
    let body: Value = match req.json().await {
        Ok(body) => body,
        Err(error) => return Ok(bad_request(format!("bad request: {error}"))),
    };
    if what == "batch" {
        let Some(items) = body.as_array() else {
            return Ok(bad_request("bad request: expected an array of statements"));
        };
        let statements = match items
            .iter()
            .map(|item| statement(&db, item))
            .collect::<std::result::Result<Vec<_>, _>>()
        {
            Ok(statements) => statements,
            Err(error) => return Ok(bad_request(format!("bad request: {error}"))),
        };
        let results = db.batch(statements).await?;
        let results: Vec<Value> = results
            .iter()
            .map(|result| {
                Ok(json!({
                    "results": result.rows().iter().map(row_object).collect::<Vec<_>>(),
                    "meta": meta_json(result.meta())?,
                }))
            })
            .collect::<Result<_>>()?;
        return Response::json(&results);
    }
    let statement = match statement(&db, &body) {
        Ok(statement) => statement,
        Err(error) => return Ok(bad_request(format!("bad request: {error}"))),
    };
    let raw_rows = |rows: &[Vec<D1Value>]| -> Vec<Vec<Value>> {
        rows.iter()
            .map(|row| row.iter().map(value_json).collect())
            .collect()
    };
    match what {
        "query" => {
            let result = statement.all().await?;
            Response::json(&json!({
                "columns": result.columns(),
                "rows": raw_rows(result.raw()),
                "meta": meta_json(result.meta())?,
            }))
        }
        "first" => {
            let row = statement.first_row().await?;
            Response::json(&row.as_ref().map_or(Value::Null, row_object))
        }
        "all" => {
            let result = statement.all().await?;
            Response::json(&json!({
                "results": result.rows().iter().map(row_object).collect::<Vec<_>>(),
                "meta": meta_json(result.meta())?,
            }))
        }
        "run" => {
            let meta = statement.run().await?;
            Response::json(&json!({ "meta": meta_json(&meta)? }))
        }
        "raw" => {
            let rows = statement.raw().await?;
            Response::json(&raw_rows(&rows))
        }
        _ => Ok(Response::empty(404)),
    }
}

async fn counter(env: &Env) -> Result<Response> {
    let db = env.d1("DB")?;
    db.exec(
        "CREATE TABLE IF NOT EXISTS counter(id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
         INSERT OR IGNORE INTO counter(id, n) VALUES (1, 0)",
    )
    .await?;
    let row = db
        .prepare("UPDATE counter SET n = n + 1 WHERE id = 1 RETURNING n")
        .first_row()
        .await?
        .ok_or_else(|| anyhow!("the counter row is missing"))?;
    let n = row
        .get("n")
        .and_then(D1Value::as_i64)
        .ok_or_else(|| anyhow!("n is not an integer: {row:?}"))?;
    Ok(Response::text(n.to_string()))
}

// ---- R2 ----

fn custom_headers(object: &R2Object, headers: &mut HeaderMap) {
    for (name, value) in &object.custom_metadata {
        set_header(headers, &format!("x-meta-{name}"), value.as_bytes());
    }
}

async fn r2_put(mut req: Request, env: &Env, key: &str) -> Result<Response> {
    let mut options = R2PutOptions::new();
    if let Some(content_type) = req.header("content-type") {
        options = options.content_type(content_type);
    }
    for (name, value) in req.headers() {
        if let (Some(meta), Ok(value)) = (name.as_str().strip_prefix("x-meta-"), value.to_str()) {
            options = options.custom(meta, value);
        }
    }
    // `&mut req` streams the body into the upload chunk by chunk.
    let object = env.bucket("BUCKET")?.put(key, &mut req, options).await?;
    Response::json(&json!({
        "key": object.key,
        "size": object.size,
        "etag": object.etag,
        "uploaded": object.uploaded,
        "content_type": object.http_metadata.content_type,
        "custom_metadata": object.custom_metadata,
    }))
}

async fn r2_get(req: &Request, env: &Env, key: &str) -> Result<Response> {
    let range = req.header("range").and_then(R2Range::from_header);
    let Some(object) = env.bucket("BUCKET")?.get_range(key, range).await? else {
        return Ok(Response::empty(404));
    };
    let mut headers = HeaderMap::new();
    custom_headers(&object, &mut headers);
    // Streams the body: the object is never held whole.
    let mut response = object.into_response();
    response.headers_mut().extend(headers);
    Ok(response)
}

async fn r2_head(env: &Env, key: &str) -> Result<Response> {
    let Some(object) = env.bucket("BUCKET")?.head(key).await? else {
        return Ok(Response::empty(404));
    };
    // etag, content-length, content-type...; the SDK sends no body for HEAD.
    let mut response = object.head_response();
    custom_headers(&object, response.headers_mut());
    Ok(response)
}

async fn r2_list(req: &Request, env: &Env) -> Result<Response> {
    let mut options = R2ListOptions::new();
    options.prefix = req.query_param("prefix");
    options.delimiter = req.query_param("delimiter");
    options.cursor = req.query_param("cursor");
    match number_param(req, "limit") {
        Ok(limit) => options.limit = limit,
        Err(response) => return Ok(response),
    }
    let list = env.bucket("BUCKET")?.list(options).await?;
    let objects: Vec<Value> = list
        .objects
        .iter()
        .map(|o| json!({ "key": o.key, "size": o.size, "etag": o.etag }))
        .collect();
    Response::json(&json!({
        "objects": objects,
        "delimited_prefixes": list.delimited_prefixes,
        "truncated": list.truncated,
        "cursor": list.cursor,
    }))
}

// ---- Cache API ----

async fn cached(req: &Request) -> Result<Response> {
    let cache = caches::default()?;
    if let Some(mut hit) = cache.match_(req).await? {
        set_header(hit.headers_mut(), "x-cache", b"hit");
        return Ok(hit);
    }
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let mut response = Response::text(format!("generated {nanos}"));
    for (param, header) in [("cc", "cache-control"), ("vary", "vary")] {
        if let Some(value) = req.query_param(param) {
            match HeaderValue::from_str(&value) {
                Ok(value) => {
                    response.headers_mut().insert(header, value);
                }
                Err(_) => return Ok(bad_request(format!("bad request: bad {param}"))),
            }
        }
    }
    let stored = cache.put(req, &response).await?;
    let headers = response.headers_mut();
    set_header(headers, "x-cache", b"miss");
    set_header(headers, "x-stored", stored.to_string().as_bytes());
    Ok(response)
}

/// A body far larger than the guest's memory, through the cache both ways.
async fn cached_big(req: &Request) -> Result<Response> {
    let cache = caches::default()?;
    if let Some(mut hit) = cache.match_(req).await? {
        set_header(hit.headers_mut(), "x-cache", b"hit");
        return Ok(hit);
    }
    let total: usize = req
        .query_param("mib")
        .unwrap_or_default()
        .parse::<usize>()?
        << 20;
    const PIECE: usize = 64 * 1024;
    let chunks = (0..total.div_ceil(PIECE)).map(move |i| {
        let start = i * PIECE;
        (start..total.min(start + PIECE))
            .map(|at| 33 + (at % 89) as u8)
            .collect::<Vec<u8>>()
    });
    let body = Response::stream(chunks).with_header("cache-control", "max-age=60");
    let stored = cache.put_stream(req, body).await?;
    let mut response = Response::empty(200);
    set_header(response.headers_mut(), "x-cache", b"miss");
    set_header(
        response.headers_mut(),
        "x-stored",
        stored.to_string().as_bytes(),
    );
    Ok(response)
}

// ---- Analytics Engine ----

async fn analytics(mut req: Request, env: &Env) -> Result<Response> {
    let body: Value = match req.json().await {
        Ok(body) => body,
        Err(error) => return Ok(bad_request(format!("bad request: {error}"))),
    };
    let strings = |name: &str| -> Vec<Vec<u8>> {
        body.get(name)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|item| match item {
                        Value::String(text) => text.clone().into_bytes(),
                        other => other.to_string().into_bytes(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let point = DataPoint {
        blobs: strings("blobs"),
        doubles: body
            .get("doubles")
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default(),
        indexes: strings("indexes"),
    };
    env.analytics("EVENTS")?.write_data_point(point)?;
    Ok(Response::empty(204))
}

// ---- Secrets ----

fn secret(env: &Env, path: &str) -> Result<Response> {
    let Some(secret) = env.var("API_KEY") else {
        return Ok(Response::text("API_KEY is not set").with_status(404));
    };
    match path {
        "/secret" => Ok(Response::text(secret.len().to_string())),
        "/secret/log" => {
            println!("the key is {secret}");
            eprintln!("the key is {secret}");
            Ok(Response::text("logged"))
        }
        "/secret/fail" => bail!("failed with key {secret}"),
        _ => Ok(Response::empty(404)),
    }
}

// ---- Subrequest budget ----

async fn budget(req: &Request, env: &Env) -> Result<Response> {
    let n: u32 = match number_param(req, "n") {
        Ok(n) => n.unwrap_or(1),
        Err(response) => return Ok(response),
    };
    let mut ok = 0;
    let mut error = None;
    match env.kv("KV") {
        Ok(kv) => {
            for _ in 0..n {
                match kv.get_bytes("budget").await {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
        }
        Err(e) => error = Some(e),
    }
    let error = error.map(|e| match e.downcast_ref::<BindingError>() {
        Some(binding) => binding.to_string(),
        None => format!("{e:#}"),
    });
    Response::json(&json!({ "ok": ok, "error": error }))
}
