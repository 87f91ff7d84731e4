//! `isola init DIR --template rust|js|ts [--handler fetch|scheduled|queue]`:
//! a new worker project that `isola dev` builds and serves at once.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Template {
    /// A Rust crate using isola-sdk, built with cargo for wasm32-wasip2.
    Rust,
    /// A JavaScript module (`export default { fetch }`), built on load.
    Js,
    /// A TypeScript module, built on load, its `env` typed by
    /// `worker-configuration.d.ts` (`isola types`).
    Ts,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Handler {
    /// fetch(request, env, ctx): answers HTTP requests.
    Fetch,
    /// fetch plus scheduled(event, env, ctx) on a cron.
    Scheduled,
    /// fetch sends to a queue; queue(batch, env, ctx) consumes it.
    Queue,
}

/// Where `isola-sdk` is: not on crates.io yet, so the template points at a
/// checkout. Defaults to the one this binary was built from.
fn default_sdk() -> Option<PathBuf> {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../sdk/rust"))
        .canonicalize()
        .ok()
        .filter(|p| p.join("Cargo.toml").is_file())
}

/// A package name from the directory name: lowercase letters, digits, `-`.
fn package_name(dir: &Path) -> Result<String> {
    let base = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches('-').to_owned();
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        bail!(
            "{}: the directory name must start with a letter (it names the worker)",
            dir.display()
        );
    }
    Ok(name)
}

/// The files of a project, relative to its directory.
fn files(
    name: &str,
    template: Template,
    handler: Handler,
    sdk: Option<&Path>,
) -> Result<Vec<(&'static str, String)>> {
    let crate_name = name.replace('-', "_");
    let mut toml = String::from(
        "# Serve with `isola dev` (builds, serves on http://127.0.0.1:8787, rebuilds on change)\n\
         # or build, then `isola serve`.\n\
         [server]\n\
         listen = \"127.0.0.1:8787\"\n\
         admin = \"127.0.0.1:8788\"   # /metrics, /readyz, /tail, /reload\n\n\
         [[worker]]\n",
    );
    toml.push_str(&format!("name = \"{name}\"\n"));
    match template {
        Template::Rust => toml.push_str(&format!(
            "component = \"target/wasm32-wasip2/release/{crate_name}.wasm\"\n\
             build = {{ command = \"cargo build --release --target wasm32-wasip2\", watch = [\"src/**/*.rs\", \"Cargo.toml\"] }}\n"
        )),
        Template::Js => toml.push_str(
            "main = \"src/index.js\"\nbuild = { watch = [\"src/**/*.js\"] }\n",
        ),
        Template::Ts => toml.push_str(
            "main = \"src/index.ts\"\nbuild = { watch = [\"src/**/*.ts\"] }\n",
        ),
    }
    toml.push_str("routes = [\"/*\"]\ncpu_ms = 50\n");
    match handler {
        Handler::Fetch => {}
        Handler::Scheduled => toml.push_str(
            "kv_namespaces = [{ binding = \"KV\", id = \"app\" }]\n\
             triggers.crons = [\"*/5 * * * *\"]   # UTC; fire now: isola trigger cron NAME\n",
        ),
        Handler::Queue => toml.push_str(
            "kv_namespaces = [{ binding = \"KV\", id = \"app\" }]\n\
             queues.producers = [{ binding = \"JOBS\", queue = \"jobs\" }]\n\
             queues.consumers = [{ queue = \"jobs\", max_batch_size = 10, max_retries = 3 }]\n",
        ),
    }
    let mut files = vec![
        ("isola.toml", toml),
        (".gitignore", "target/\n.isola/\nnode_modules/\n".to_owned()),
    ];
    match template {
        Template::Rust => {
            let sdk = sdk.context(
                "isola-sdk is not on crates.io yet: give --sdk PATH (a checkout's sdk/rust)",
            )?;
            files.push((
                "Cargo.toml",
                format!(
                    "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
                     [lib]\ncrate-type = [\"cdylib\"]\n\n\
                     [dependencies]\nisola-sdk = {{ path = {sdk:?} }}\n\n\
                     [profile.release]\nopt-level = \"s\"\n\
                     # Line tables stay in the component: a trap's log line names the\n\
                     # file and line of each frame. They cost size, not speed.\n\
                     debug = \"line-tables-only\"\n\n\
                     # A workspace of its own, wherever it is created.\n[workspace]\n",
                    sdk = sdk.display().to_string()
                ),
            ));
            files.push(("src/lib.rs", rust_source(handler)));
        }
        Template::Js => files.push(("src/index.js", js_source(handler))),
        Template::Ts => {
            files.push(("tsconfig.json", TSCONFIG.to_owned()));
            files.push((
                "package.json",
                format!(
                    "{{\n  \"name\": \"{name}\",\n  \"private\": true,\n  \"type\": \"module\",\n  \"scripts\": {{\n    \"types\": \"isola types\",\n    \"check\": \"tsc\"\n  }},\n  \"devDependencies\": {{\n    \"typescript\": \"7.0.2\"\n  }}\n}}\n"
                ),
            ));
            files.push(("src/index.ts", ts_source(handler)));
            // Written last, from the config written before it.
            files.push((TYPES_FILE, String::new()));
        }
    }
    Ok(files)
}

fn rust_source(handler: Handler) -> String {
    let mut source = String::from(
        "//! An Isola worker. Every request runs in a fresh instance: statics\n\
         //! start over each time.\n\n",
    );
    match handler {
        Handler::Fetch => source.push_str(
            "use isola_sdk::{Ctx, Env, Request, Response, Result};\n\n\
             #[isola_sdk::fetch]\n\
             async fn fetch(_req: Request, _env: Env, _ctx: Ctx) -> Result<Response> {\n\
             \x20   Ok(Response::text(\"Hello from Isola\"))\n\
             }\n",
        ),
        Handler::Scheduled => source.push_str(
            "use isola_sdk::{Ctx, Env, Request, Response, Result, ScheduledEvent};\n\n\
             #[isola_sdk::fetch]\n\
             async fn fetch(_req: Request, env: Env, _ctx: Ctx) -> Result<Response> {\n\
             \x20   let last = env.kv(\"KV\")?.get_text(\"last-run\").await?;\n\
             \x20   Ok(Response::text(format!(\"Hello from Isola; last scheduled run: {}\", last.as_deref().unwrap_or(\"never\"))))\n\
             }\n\n\
             #[isola_sdk::scheduled]\n\
             async fn scheduled(event: ScheduledEvent, env: Env, _ctx: Ctx) -> Result<()> {\n\
             \x20   println!(\"cron {} fired\", event.cron);\n\
             \x20   env.kv(\"KV\")?.put(\"last-run\", event.scheduled_time.to_string()).await?;\n\
             \x20   Ok(())\n\
             }\n",
        ),
        Handler::Queue => source.push_str(
            "use isola_sdk::{Ctx, Env, MessageBatch, Request, Response, Result};\n\n\
             /// Any request sends its path to the `jobs` queue.\n\
             #[isola_sdk::fetch]\n\
             async fn fetch(req: Request, env: Env, _ctx: Ctx) -> Result<Response> {\n\
             \x20   env.queue(\"JOBS\")?.send_text(req.path()).await?;\n\
             \x20   Ok(Response::text(\"Hello from Isola; queued\"))\n\
             }\n\n\
             /// Consumes `jobs` in batches; an error retries the batch.\n\
             #[isola_sdk::queue]\n\
             async fn queue(batch: MessageBatch, env: Env, _ctx: Ctx) -> Result<()> {\n\
             \x20   let kv = env.kv(\"KV\")?;\n\
             \x20   for message in &batch.messages {\n\
             \x20       let body = String::from_utf8_lossy(&message.body).into_owned();\n\
             \x20       println!(\"job {}: {body}\", message.id);\n\
             \x20       kv.put(&format!(\"job:{}\", message.id), body).await?;\n\
             \x20   }\n\
             \x20   batch.ack_all();\n\
             \x20   Ok(())\n\
             }\n",
        ),
    }
    source
}

fn js_source(handler: Handler) -> String {
    let fetch = "  async fetch(request, env, ctx) {\n    return new Response(\"Hello from Isola\");\n  },\n";
    let body = match handler {
        Handler::Fetch => fetch.to_owned(),
        Handler::Scheduled => format!(
            "{fetch}  async scheduled(event, env, ctx) {{\n    console.log(`cron ${{event.cron}} fired`);\n    await env.KV.put(\"last-run\", String(event.scheduledTime));\n  }},\n"
        ),
        Handler::Queue => "  async fetch(request, env, ctx) {\n    await env.JOBS.send(new URL(request.url).pathname);\n    return new Response(\"Hello from Isola; queued\");\n  },\n  async queue(batch, env, ctx) {\n    for (const message of batch.messages) {\n      console.log(`job ${message.id}: ${message.body}`);\n      await env.KV.put(`job:${message.id}`, String(message.body));\n      message.ack();\n    }\n  },\n".to_owned(),
    };
    format!(
        "// An Isola worker (Cloudflare Workers module syntax). Every request runs\n// in a fresh instance: module state starts over each time.\nexport default {{\n{body}}};\n"
    )
}

/// What `isola types` writes, and the TypeScript template includes.
const TYPES_FILE: &str = "worker-configuration.d.ts";

/// TypeScript's settings for a worker: the web platform of a worker
/// (`webworker`) and nothing from Node.js or the DOM; `Env` and the
/// Workers API from `worker-configuration.d.ts`. esbuild strips the types
/// when it bundles; `tsc` only checks (`noEmit`).
const TSCONFIG: &str = r#"{
  "compilerOptions": {
    "target": "es2022",
    "module": "esnext",
    "moduleResolution": "bundler",
    "lib": ["es2022", "webworker"],
    "types": [],
    "strict": true,
    "noEmit": true,
    "isolatedModules": true
  },
  "include": ["worker-configuration.d.ts", "src/**/*.ts"]
}
"#;

fn ts_source(handler: Handler) -> String {
    let fetch = "  async fetch(request, env, ctx): Promise<Response> {\n    return new Response(\"Hello from Isola\");\n  },\n";
    let body = match handler {
        Handler::Fetch => fetch.to_owned(),
        Handler::Scheduled => format!(
            "{fetch}  async scheduled(controller, env, ctx) {{\n    console.log(`cron ${{controller.cron}} fired`);\n    await env.KV.put(\"last-run\", String(controller.scheduledTime));\n  }},\n"
        ),
        Handler::Queue => "  async fetch(request, env, ctx): Promise<Response> {\n    await env.JOBS.send(new URL(request.url).pathname);\n    return new Response(\"Hello from Isola; queued\");\n  },\n  async queue(batch, env, ctx) {\n    for (const message of batch.messages) {\n      console.log(`job ${message.id}: ${message.body}`);\n      await env.KV.put(`job:${message.id}`, String(message.body));\n      message.ack();\n    }\n  },\n".to_owned(),
    };
    format!(
        "// An Isola worker in TypeScript (Cloudflare Workers module syntax). Every\n\
         // request runs in a fresh instance: module state starts over each time.\n\
         // `Env` is declared in worker-configuration.d.ts: run `isola types` after\n\
         // changing the bindings in isola.toml, and `tsc` to check.\n\
         export default {{\n{body}}} satisfies ExportedHandler<Env>;\n"
    )
}

/// Write the project; refuses to overwrite anything.
pub fn init(dir: &Path, template: Template, handler: Handler, sdk: Option<PathBuf>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = package_name(dir)?;
    let sdk = match sdk {
        Some(path) => Some(
            path.canonicalize()
                .with_context(|| format!("--sdk {}", path.display()))?,
        ),
        None => default_sdk(),
    };
    let files = files(&name, template, handler, sdk.as_deref())?;
    for (path, _) in &files {
        let path = dir.join(path);
        if path.exists() {
            bail!(
                "{} exists already; init writes only new files",
                path.display()
            );
        }
    }
    let progress = if std::io::stdout().is_terminal() {
        indicatif::ProgressBar::new(files.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    for (name, contents) in &files {
        let path = dir.join(name);
        let generated;
        let contents = if *name == TYPES_FILE {
            // `Env` from the config just written, as `isola types` has it.
            let config = isola_config::Config::load_without_secrets(&dir.join("isola.toml"))?;
            generated = crate::types::declarations(&config, "isola.toml", None)?;
            &generated
        } else {
            contents
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
        progress.inc(1);
        progress.suspend(|| println!("created {}", path.display()));
    }
    progress.finish_and_clear();
    println!(
        "\nnext: cd {} && isola dev   (then curl http://127.0.0.1:8787/)",
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rust_template_is_a_valid_config_and_names_its_build_output() {
        for handler in [Handler::Fetch, Handler::Scheduled, Handler::Queue] {
            let dir = tempfile::tempdir().unwrap();
            let project = dir.path().join("my-app");
            init(&project, Template::Rust, handler, default_sdk()).unwrap();
            let config = isola_config::Config::load(&project.join("isola.toml")).unwrap();
            let worker = &config.workers[0];
            assert_eq!(worker.name, "my-app");
            assert!(
                worker
                    .component
                    .ends_with("target/wasm32-wasip2/release/my_app.wasm")
            );
            let build = worker.build.as_ref().unwrap();
            assert_eq!(
                build.command.as_deref(),
                Some("cargo build --release --target wasm32-wasip2")
            );
            assert_eq!(worker.crons.is_empty(), handler != Handler::Scheduled);
            assert_eq!(worker.queue_consumers.is_empty(), handler != Handler::Queue);
            // A second init into the same directory changes nothing.
            assert!(init(&project, Template::Rust, handler, default_sdk()).is_err());
        }
    }

    #[test]
    fn every_ts_template_declares_the_env_of_its_config() {
        for (handler, env) in [
            (Handler::Fetch, "interface Env {\n}"),
            (Handler::Scheduled, "interface Env {\n  KV: KVNamespace;\n}"),
            (
                Handler::Queue,
                "interface Env {\n  KV: KVNamespace;\n  JOBS: Queue;\n}",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let project = dir.path().join("my-app");
            init(&project, Template::Ts, handler, None).unwrap();
            let config = isola_config::Config::load(&project.join("isola.toml")).unwrap();
            assert!(
                config.workers[0]
                    .main
                    .as_ref()
                    .unwrap()
                    .ends_with("src/index.ts")
            );
            let declared = std::fs::read_to_string(project.join(TYPES_FILE)).unwrap();
            assert!(declared.contains(env), "{handler:?}: {declared}");
            let source = std::fs::read_to_string(project.join("src/index.ts")).unwrap();
            assert!(
                source.contains("satisfies ExportedHandler<Env>"),
                "{source}"
            );
            for file in ["tsconfig.json", "package.json"] {
                let text = std::fs::read_to_string(project.join(file)).unwrap();
                serde_json::from_str::<serde_json::Value>(&text).unwrap();
            }
        }
    }

    #[test]
    fn names_come_from_the_directory() {
        assert_eq!(package_name(Path::new("/tmp/My_App")).unwrap(), "my-app");
        assert!(package_name(Path::new("/tmp/1app")).is_err());
    }
}
