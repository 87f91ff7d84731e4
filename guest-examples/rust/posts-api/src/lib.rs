//! A small posts API on D1, with the page-view pattern: reading a post
//! answers at once and records the view afterwards, in `ctx.wait_until`.
//!
//! - `GET /posts`: every post (without bodies) with its view count
//! - `POST /posts` `{"title": "...", "body": "..."}`: add a post, 201
//! - `GET /posts/<id>`: one post; its view is counted after the response
//!
//! The tables are created on first use: when a query fails because a table
//! is missing, the schema is applied (`CREATE TABLE IF NOT EXISTS`, through
//! `exec`) and the query runs again.

use std::future::Future;

use isola_sdk::{BindingError, Ctx, D1, Env, Method, Request, Response, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS posts(
        id INTEGER PRIMARY KEY,
        title TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT (datetime('now'))
    );
    CREATE TABLE IF NOT EXISTS views(
        post_id INTEGER PRIMARY KEY REFERENCES posts(id),
        n INTEGER NOT NULL
    );
";

#[derive(Serialize, Deserialize)]
struct Summary {
    id: i64,
    title: String,
    created_at: String,
    views: i64,
}

#[derive(Serialize, Deserialize)]
struct Post {
    id: i64,
    title: String,
    body: String,
    created_at: String,
    views: i64,
}

#[derive(Deserialize)]
struct NewPost {
    title: String,
    body: String,
}

#[isola_sdk::fetch]
async fn fetch(mut req: Request, env: Env, ctx: Ctx) -> Result<Response> {
    let db = env.d1("DB")?;
    let method = req.method().clone();
    let path = req.path().trim_end_matches('/').to_owned();
    match (method, path.as_str()) {
        (Method::GET, "/posts") => {
            let posts = with_schema(&db, || async {
                db.prepare(
                    "SELECT p.id, p.title, p.created_at, coalesce(v.n, 0) AS views
                     FROM posts p LEFT JOIN views v ON v.post_id = p.id
                     ORDER BY p.id DESC LIMIT 100",
                )
                .all()
                .await?
                .results::<Summary>()
            })
            .await?;
            Response::json(&posts)
        }
        (Method::POST, "/posts") => {
            let post: NewPost = match req.json().await {
                Ok(post) => post,
                Err(e) => return error(400, format!("expected {{title, body}}: {e}")),
            };
            if post.title.trim().is_empty() {
                return error(400, "the title is empty");
            }
            let meta = with_schema(&db, || async {
                db.prepare("INSERT INTO posts(title, body) VALUES (?1, ?2)")
                    .bind((post.title.as_str(), post.body.as_str()))
                    .run()
                    .await
            })
            .await?;
            Ok(Response::json(&json!({ "id": meta.last_row_id }))?
                .with_status(201)
                .with_header("location", &format!("/posts/{}", meta.last_row_id)))
        }
        (Method::GET, other) => {
            let Some(id) = other
                .strip_prefix("/posts/")
                .and_then(|id| id.parse::<i64>().ok())
            else {
                return error(404, "not found");
            };
            let post: Option<Post> = with_schema(&db, || async {
                db.prepare(
                    "SELECT p.id, p.title, p.body, p.created_at, coalesce(v.n, 0) AS views
                     FROM posts p LEFT JOIN views v ON v.post_id = p.id
                     WHERE p.id = ?1",
                )
                .bind([id])
                .first()
                .await
            })
            .await?;
            let Some(post) = post else {
                return error(404, "no such post");
            };
            // Count the view after the response has gone out: the client
            // does not wait for this write.
            let views = db.clone();
            ctx.wait_until(async move {
                views
                    .prepare(
                        "INSERT INTO views(post_id, n) VALUES (?1, 1)
                         ON CONFLICT(post_id) DO UPDATE SET n = n + 1",
                    )
                    .bind([id])
                    .run()
                    .await?;
                Ok(())
            });
            Response::json(&post)
        }
        _ => error(405, "try GET /posts, POST /posts or GET /posts/<id>"),
    }
}

/// Run `query`; if it fails because the schema is not there yet, create it
/// and run `query` again.
async fn with_schema<T, F, Fut>(db: &D1, query: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    match query().await {
        Err(e) if is_missing_table(&e) => {
            db.exec(SCHEMA).await?;
            query().await
        }
        other => other,
    }
}

fn is_missing_table(error: &isola_sdk::Error) -> bool {
    matches!(
        error.downcast_ref::<BindingError>(),
        Some(BindingError::Backend(message)) if message.contains("no such table")
    )
}

fn error(status: u16, message: impl Into<String>) -> Result<Response> {
    Ok(Response::json(&json!({ "error": message.into() }))?.with_status(status))
}
