//! A middleware chain over service bindings: auth → tenant → app. Each step
//! is this component with a different `ROLE` var; they hand each other typed
//! context through `ctx` locals instead of headers, so there is no size cap
//! and nothing a client could forge.

use isola_sdk::{Ctx, Env, Request, Response, Result};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct User {
    id: String,
    roles: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Tenant {
    id: String,
    plan: String,
}

#[isola_sdk::fetch]
async fn handle(req: Request, env: Env, ctx: Ctx) -> Result<Response> {
    match env.var("ROLE").as_deref() {
        Some("auth") => {
            let Some(token) = req
                .header("authorization")
                .and_then(|h| h.strip_prefix("Bearer "))
            else {
                return Ok(Response::text("missing bearer token\n").with_status(401));
            };
            let user = User {
                id: token.to_owned(),
                roles: vec!["reader".into()],
            };
            ctx.set_local_json("user", &user)?;
            relay(env.service("TENANT").fetch(req.path()).await?)
        }
        Some("tenant") => {
            let Some(user) = ctx.get_local_json::<User>("user")? else {
                return Ok(Response::text("missing context: user\n").with_status(400));
            };
            let tenant = Tenant {
                id: format!("tenant-{}", user.id),
                plan: "free".into(),
            };
            ctx.set_local_json("tenant", &tenant)?;
            relay(env.service("APP").fetch(req.path()).await?)
        }
        Some("app") => {
            let (Some(user), Some(tenant)) = (
                ctx.get_local_json::<User>("user")?,
                ctx.get_local_json::<Tenant>("tenant")?,
            ) else {
                return Ok(Response::text("missing context: user and tenant\n").with_status(400));
            };
            Response::json(&serde_json::json!({
                "path": req.path(),
                "user": user.id,
                "roles": user.roles,
                "tenant": tenant.id,
                "plan": tenant.plan,
            }))
        }
        other => Ok(Response::text(format!("unknown ROLE {other:?}\n")).with_status(500)),
    }
}

fn relay(response: isola_sdk::FetchResponse) -> Result<Response> {
    let mut relayed =
        Response::new(response.bytes().to_vec()).with_status(response.status().as_u16());
    if let Some(content_type) = response.headers().get("content-type") {
        relayed = relayed.with_header("content-type", content_type.to_str()?);
    }
    Ok(relayed)
}
