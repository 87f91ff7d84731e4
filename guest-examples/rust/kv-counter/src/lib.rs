//! A page-view counter in Workers KV: `GET /<anything>` counts a view of
//! that path and answers the count; `GET /` lists every path's count.
//!
//! Each count is stored twice over under `views:<path>`: as the value, and
//! in the key's metadata so that `list` (which returns keys, not values)
//! can show the counts without reading every key.
//!
//! `PREFIX` (a var) is the route the worker is mounted on, e.g. `/views`;
//! it is stripped from paths, so `GET /views/about` counts `/about`.

use isola_sdk::{Ctx, Env, KvListOptions, KvPutOptions, Method, Request, Response, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

const KEY_PREFIX: &str = "views:";

#[derive(Serialize, Deserialize)]
struct Views {
    count: u64,
}

#[isola_sdk::fetch]
async fn fetch(req: Request, env: Env, _ctx: Ctx) -> Result<Response> {
    if req.method() != Method::GET {
        return Ok(Response::text("only GET\n").with_status(405));
    }
    let prefix = env.var("PREFIX").unwrap_or_default();
    let path = req.path();
    let path = path.strip_prefix(prefix.as_str()).unwrap_or(path);
    let kv = env.kv("KV")?;

    if path.is_empty() || path == "/" {
        // Every counted path, a page of (up to) 1000 keys at a time.
        let mut counts = serde_json::Map::new();
        let mut options = KvListOptions::new().prefix(KEY_PREFIX);
        loop {
            let page = kv.list(options.clone()).await?;
            for key in &page.keys {
                let views: Option<Views> = key.metadata_json()?;
                let path = &key.name[KEY_PREFIX.len()..];
                counts.insert(path.to_owned(), json!(views.map_or(0, |v| v.count)));
            }
            match page.cursor {
                Some(cursor) if !page.list_complete => options = options.cursor(cursor),
                _ => break,
            }
        }
        return Response::json(&counts);
    }

    // Read, add one, write back. KV is eventually consistent and has no
    // increment: two requests at the same moment can both write the same
    // count. Use D1 (see posts-api) when every view must count.
    let key = format!("{KEY_PREFIX}{path}");
    let count = kv
        .get_text(&key)
        .await?
        .and_then(|text| text.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    let options = KvPutOptions::new().metadata_json(&Views { count })?;
    kv.put_with(&key, count.to_string(), options).await?;
    Ok(
        Response::text(format!("{path} has been viewed {count} times\n"))
            .with_header("x-views", &count.to_string()),
    )
}
