//! The Rust SDK's Durable Object API end to end: namespaces and ids, stubs,
//! every storage call, transactions, SQL, alarms, and the dispatch of
//! events to registered classes.
//!
//! Bindings: `STORE` (class `Store`, registered on its `impl` block),
//! `ECHO` (class `Echo`, registered on its struct) and `GHOST` (class
//! `Ghost`, configured but registered by no code).
//!
//! Worker routes:
//! - `GET /ids`: the namespace's id calls, as JSON.
//! - `GET /outside`: a storage call outside any object (an error).
//! - `ANY /store/<name>/<path>`: relayed to the `Store` object `<name>`.
//! - `ANY /unique/<path>`: relayed to a new unique `Store` object.
//! - `ANY /echo/<name>/<path>`: relayed to the `Echo` object `<name>`.
//! - `ANY /ghost/<path>`: relayed to a `Ghost` object.

use isola_sdk::durable::{ListOptions, Storage, now_ms};
use isola_sdk::{
    BindingError, Ctx, DurableObject, Env, ObjectState, OutboundRequest, Request, Response, Result,
    anyhow, bail, percent_decode,
};
use serde::Deserialize;
use serde_json::{Value, json};

#[isola_sdk::fetch]
async fn fetch(mut req: Request, env: Env, _ctx: Ctx) -> Result<Response> {
    let path = req.path().to_owned();
    let query = req.query().map(|q| format!("?{q}")).unwrap_or_default();
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .splitn(3, '/')
        .map(percent_decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    // The request as the object gets it: same method, body and query.
    let body = req.bytes().await?;
    let method = req.method().clone();
    let forward = |rest: &[&str]| {
        OutboundRequest::new(method.clone(), format!("/{}{query}", rest.join("/")))
            .with_body(body.clone())
    };
    let (stub, request) = match segments.as_slice() {
        ["ids"] => return ids(&env),
        ["outside"] => {
            return match Storage::default().get("k").await {
                Ok(value) => bail!("a storage call outside an object returned {value:?}"),
                Err(error) => Ok(Response::text(format!("{error:#}")).with_status(400)),
            };
        }
        ["store", name, rest @ ..] => (
            env.durable_object("STORE").get_by_name(name)?,
            forward(rest),
        ),
        ["unique", rest @ ..] => {
            let store = env.durable_object("STORE");
            (store.get(&store.new_unique_id()?), forward(rest))
        }
        ["echo", name, rest @ ..] => (
            env.durable_object("ECHO").get_by_name(name)?,
            forward(rest).with_header("x-test", "through the stub"),
        ),
        ["ghost", rest @ ..] => (
            env.durable_object("GHOST").get_by_name("boo")?,
            forward(rest),
        ),
        _ => return Ok(Response::empty(404)),
    };
    Ok(stub.fetch(request).await?.into())
}

/// The namespace's id calls.
fn ids(env: &Env) -> Result<Response> {
    let store = env.durable_object("STORE");
    let a = store.id_from_name("a")?;
    let again = store.id_from_name("a")?;
    let b = store.id_from_name("b")?;
    let unique = store.new_unique_id()?;
    let parsed = store.id_from_string(&a.to_string().to_uppercase())?;
    let invalid = |result: Result<isola_sdk::ObjectId>| match result {
        Ok(id) => json!(format!("accepted {id}")),
        Err(error) => json!(BindingError::find(&error).map(|e| e.kind())),
    };
    Response::json(&json!({
        "a": a.to_string(),
        "a_name": a.name(),
        "same": a == again,
        "b_differs": a != b,
        "unique": unique.to_string(),
        "unique_name": unique.name(),
        "parsed_equals": parsed == a,
        "parsed": parsed.to_string(),
        "bad_hex": invalid(store.id_from_string("xyz")),
        "unknown_binding": invalid(env.durable_object("NOPE").id_from_name("a")),
    }))
}

/// Keeps a note of the events its instance served; runs the storage
/// script on `POST /script`.
struct Store {
    state: ObjectState,
    events: u64,
}

#[isola_sdk::durable_object(class_name = "Store")]
impl DurableObject for Store {
    fn new(state: ObjectState, _env: Env) -> Self {
        Store { state, events: 0 }
    }

    async fn fetch(&mut self, mut req: Request) -> Result<Response> {
        self.events += 1;
        let response = match req.path() {
            "/whoami" => {
                let id = self.state.id();
                Response::json(&json!({
                    "class": self.state.class_name(),
                    "id": id.to_string(),
                    "name": id.name(),
                    "events": self.events,
                    "host": req.url().split('/').nth(2),
                    "leaked_headers": req.headers().keys().filter(|k| k.as_str().starts_with("isola-object")).map(|k| k.as_str()).collect::<Vec<_>>(),
                }))?
            }
            "/script" => Response::json(&script(self.state.storage()).await?)?,
            "/put" => {
                let body = req.text().await?;
                let (key, value) = body.split_once('=').ok_or_else(|| anyhow!("key=value"))?;
                self.state.storage().put(key, value).await?;
                Response::empty(204)
            }
            "/get" => {
                let key = req.query_param("key").unwrap_or_default();
                match self.state.storage().get_text(&key).await? {
                    Some(value) => Response::text(value),
                    None => Response::empty(404),
                }
            }
            "/fail" => bail!("failing on purpose"),
            _ => Response::empty(404),
        };
        Ok(response)
    }
}

#[derive(Deserialize, PartialEq, Debug)]
struct Item {
    id: i64,
    label: String,
    weight: f64,
}

/// Every storage call, with what each returned.
async fn script(storage: Storage) -> Result<Value> {
    let keys = |entries: Vec<(String, Vec<u8>)>| -> Vec<String> {
        entries.into_iter().map(|(k, _)| k).collect()
    };
    let mut out = serde_json::Map::new();
    storage.delete_all().await?;
    storage
        .put_many([
            ("a", "1"),
            ("b", "2"),
            ("c", "3"),
            ("p:x", "x"),
            ("p:y", "y"),
        ])
        .await?;
    storage
        .put_json("json", &json!({"n": 1, "s": "two"}))
        .await?;
    out.insert("get".into(), json!(storage.get_text("a").await?));
    out.insert("get_missing".into(), json!(storage.get("zzz").await?));
    out.insert(
        "get_json".into(),
        storage.get_json::<Value>("json").await?.unwrap(),
    );
    out.insert(
        "get_many".into(),
        json!(keys(storage.get_many(["c", "missing", "a"]).await?)),
    );
    out.insert(
        "list".into(),
        json!(keys(storage.list(ListOptions::new()).await?)),
    );
    out.insert(
        "list_json".into(),
        json!(
            storage
                .list_json::<Value>(ListOptions::new().prefix("js"))
                .await?
        ),
    );
    out.insert(
        "list_prefix_keys".into(),
        json!(keys(storage.list(ListOptions::new().prefix("p:")).await?)),
    );
    out.insert(
        "list_range".into(),
        json!(keys(
            storage
                .list(ListOptions::new().start("b").end("p:"))
                .await?
        )),
    );
    out.insert(
        "list_after".into(),
        json!(keys(
            storage
                .list(ListOptions::new().start_after("a").limit(2))
                .await?
        )),
    );
    out.insert(
        "list_reverse".into(),
        json!(keys(
            storage
                .list(ListOptions::new().reverse(true).limit(2))
                .await?
        )),
    );
    out.insert("delete".into(), json!(storage.delete("b").await?));
    out.insert("delete_again".into(), json!(storage.delete("b").await?));
    out.insert(
        "delete_many".into(),
        json!(storage.delete_many(["a", "c", "zzz"]).await?),
    );

    // Transactions: Err rolls back, Ok commits, rollback() undoes an Ok,
    // and a failed inner transaction leaves the outer one's writes.
    let failed = storage
        .transaction(async |txn| -> Result<()> {
            txn.put("t", "err").await?;
            bail!("no")
        })
        .await;
    out.insert("txn_err".into(), json!(failed.err().map(|e| e.to_string())));
    out.insert("after_err".into(), json!(storage.get_text("t").await?));
    let committed = storage
        .transaction(async |txn| {
            txn.put("t", "ok").await?;
            Ok(7)
        })
        .await?;
    out.insert("txn_ok".into(), json!(committed));
    out.insert("after_ok".into(), json!(storage.get_text("t").await?));
    storage
        .transaction(async |txn| {
            txn.put("t", "undone").await?;
            txn.rollback();
            Ok(())
        })
        .await?;
    out.insert("after_rollback".into(), json!(storage.get_text("t").await?));
    storage
        .transaction(async |outer| {
            outer.put("outer", "kept").await?;
            let inner = outer
                .transaction(async |inner| -> Result<()> {
                    inner.put("inner", "dropped").await?;
                    bail!("inner fails")
                })
                .await;
            assert!(inner.is_err());
            Ok(())
        })
        .await?;
    out.insert(
        "nested".into(),
        json!([
            storage.get_text("outer").await?,
            storage.get_text("inner").await?
        ]),
    );

    // SQL.
    let sql = storage.sql();
    sql.exec(
        "CREATE TABLE items(id INTEGER PRIMARY KEY, label TEXT NOT NULL, weight REAL NOT NULL)",
        (),
    )
    .await?;
    let inserted = sql
        .exec(
            "INSERT INTO items(label, weight) VALUES (?, ?), (?, ?)",
            ("one", 1.5, "two", 2.0),
        )
        .await?;
    out.insert("sql_written".into(), json!(inserted.rows_written()));
    let all = sql
        .exec("SELECT id, label, weight FROM items ORDER BY id", ())
        .await?;
    out.insert("sql_columns".into(), json!(all.columns()));
    let items: Vec<Item> = all.results()?;
    out.insert(
        "sql_items".into(),
        json!(
            items
                .iter()
                .map(|i| (i.id, i.label.clone(), i.weight))
                .collect::<Vec<_>>()
        ),
    );
    let one: Item = sql
        .exec("SELECT * FROM items WHERE label = ?", ["two"])
        .await?
        .one()?;
    out.insert("sql_one".into(), json!(one.id));
    let not_one = sql.exec("SELECT * FROM items", ()).await?.one::<Item>();
    out.insert(
        "sql_not_one".into(),
        json!(not_one.err().map(|e| e.to_string())),
    );
    let raw = sql
        .exec("SELECT count(*), sum(weight) FROM items", ())
        .await?;
    out.insert(
        "sql_raw".into(),
        json!([raw.raw()[0][0].as_i64(), raw.raw()[0][1].as_f64()]),
    );
    let bad = sql.exec("SELECT * FROM nowhere", ()).await;
    out.insert("sql_error".into(), json!(bad.err().map(|e| e.to_string())));
    out.insert(
        "size_positive".into(),
        json!(storage.database_size().await? > 0),
    );

    // Alarms.
    let at = now_ms() + 3_600_000;
    storage.set_alarm(at).await?;
    out.insert(
        "alarm_set".into(),
        json!(storage.get_alarm().await? == Some(at)),
    );
    storage.delete_alarm().await?;
    out.insert("alarm_deleted".into(), json!(storage.get_alarm().await?));

    // delete_all: keys and SQL data.
    storage.delete_all().await?;
    out.insert(
        "after_delete_all".into(),
        json!(keys(storage.list(ListOptions::new()).await?)),
    );
    let gone = sql.exec("SELECT * FROM items", ()).await;
    out.insert("table_after_delete_all".into(), json!(gone.is_err()));
    Ok(Value::Object(out))
}

/// Echoes what reached it: method, path, body, a header, and the object.
#[isola_sdk::durable_object]
struct Echo {
    state: ObjectState,
}

impl DurableObject for Echo {
    fn new(state: ObjectState, _env: Env) -> Self {
        Echo { state }
    }

    async fn fetch(&mut self, mut req: Request) -> Result<Response> {
        let id = self.state.id();
        Response::json(&json!({
            "class": self.state.class_name(),
            "name": id.name(),
            "method": req.method().as_str(),
            "path": req.path(),
            "query": req.query(),
            "x-test": req.header("x-test"),
            "body": req.text().await?,
        }))
    }
}
