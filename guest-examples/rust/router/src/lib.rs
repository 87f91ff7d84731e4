use isola_sdk::{Ctx, Env, Method, Request, Response, Result};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct SumInput {
    numbers: Vec<f64>,
}

#[isola_sdk::fetch]
async fn fetch(mut req: Request, env: Env, ctx: Ctx) -> Result<Response> {
    let method = req.method().clone();
    let path = req.path().to_owned();
    match (&method, path.as_str()) {
        (&Method::GET, "/api/health") => Response::json(&json!({ "ok": true })),
        (&Method::GET, "/api/greet") => {
            let name = query_param(&req, "name").unwrap_or_else(|| "world".into());
            let greeting = env.var("GREETING").unwrap_or_else(|| "Hi".into());
            Response::json(&json!({ "greeting": format!("{greeting}, {name}!") }))
        }
        (&Method::POST, "/api/sum") => match req.json::<SumInput>().await {
            Ok(input) => Response::json(&json!({
                "sum": input.numbers.iter().sum::<f64>(),
                "count": input.numbers.len(),
            })),
            Err(e) => Ok(
                Response::json(&json!({ "error": format!("bad input: {e}") }))?.with_status(400),
            ),
        },
        (&Method::GET, "/api/request") => Response::json(&json!({
            "method": method.as_str(),
            "url": req.url(),
            "request_id": ctx.request_id(),
            "greeting_from_std_env": std::env::var("GREETING").ok(),
        })),
        _ => Ok(
            Response::json(&json!({ "error": format!("no route for {method} {path}") }))?
                .with_status(404),
        ),
    }
}

fn query_param(req: &Request, name: &str) -> Option<String> {
    req.query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| value.replace('+', " "))
    })
}
