//! File storage on R2 that streams both ways: uploads go to the bucket
//! chunk by chunk as they arrive, downloads leave it the same way, so a
//! file never has to fit in the worker's memory.
//!
//! - `PUT /files/<key>`: store the body (its `content-type` is kept)
//! - `GET /files/<key>`: the file, or the part a `Range` header asks for
//! - `HEAD /files/<key>`: its headers
//! - `GET /files?prefix=&cursor=`: list (with `/` as the delimiter)
//! - `DELETE /files/<key>`

use isola_sdk::{
    BindingError, Ctx, Env, Method, R2HttpMetadata, R2ListOptions, R2PutOptions, R2Range, Request,
    Response, Result, percent_decode,
};
use serde_json::json;

#[isola_sdk::fetch]
async fn fetch(mut req: Request, env: Env, _ctx: Ctx) -> Result<Response> {
    let bucket = env.bucket("BUCKET")?;
    let method = req.method().clone();
    let path = req.path().to_owned();

    if path == "/files" || path == "/files/" {
        if method != Method::GET {
            return Ok(Response::empty(405));
        }
        let mut options = R2ListOptions::new().delimiter("/").limit(100);
        options.prefix = req.query_param("prefix");
        options.cursor = req.query_param("cursor");
        let page = bucket.list(options).await?;
        let files: Vec<_> = page
            .objects
            .iter()
            .map(|o| {
                json!({
                    "key": o.key,
                    "size": o.size,
                    "etag": o.etag,
                    "uploaded": o.uploaded,
                    "content_type": o.http_metadata.content_type,
                })
            })
            .collect();
        return Response::json(&json!({
            "files": files,
            "folders": page.delimited_prefixes,
            "cursor": if page.truncated { page.cursor } else { None },
        }));
    }

    let Some(key) = path.strip_prefix("/files/") else {
        return Ok(Response::text("try /files\n").with_status(404));
    };
    let key = percent_decode(key);
    match method {
        Method::PUT => {
            // The content-type (and content-disposition etc.) of the upload
            // are stored with it and sent back on download.
            let options =
                R2PutOptions::new().http_metadata(R2HttpMetadata::from_headers(req.headers()));
            // `&mut req` streams the request body into the bucket.
            let object = bucket.put(&key, &mut req, options).await?;
            Ok(Response::json(&object)?.with_status(201))
        }
        Method::GET => {
            let range = req.header("range").and_then(R2Range::from_header);
            match bucket.get_range(&key, range).await {
                // Streams out: 200, or 206 with content-range for a range.
                Ok(Some(object)) => Ok(object.into_response()),
                Ok(None) => Ok(Response::text("no such file\n").with_status(404)),
                // The host rejects a range that starts past the end.
                Err(e) if range.is_some() && is_invalid(&e) => {
                    Ok(Response::text(format!("{e}\n")).with_status(416))
                }
                Err(e) => Err(e),
            }
        }
        Method::HEAD => match bucket.head(&key).await? {
            // etag, content-length and the stored content-type; no body.
            Some(object) => Ok(object.head_response()),
            None => Ok(Response::empty(404)),
        },
        Method::DELETE => {
            bucket.delete(key.as_str()).await?;
            Ok(Response::empty(204))
        }
        _ => Ok(Response::empty(405)),
    }
}

fn is_invalid(error: &isola_sdk::Error) -> bool {
    matches!(
        error.downcast_ref::<BindingError>(),
        Some(BindingError::Invalid(_))
    )
}
