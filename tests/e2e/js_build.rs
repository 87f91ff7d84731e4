//! Wrangler's build keys of a JavaScript worker (`alias`, `define`,
//! `rules`, `compatibility_date`, `compatibility_flags`), from isola.toml
//! through `isola serve` to the responses of the built worker.

use std::path::Path;

use crate::js::shared_cache;
use crate::support::{Project, client, get};

/// Copy `tests/js/build-keys` into `to`: the config's relative paths
/// (`main`, an `alias` file) are then resolved against the config file's
/// directory, as in a real project.
fn copy_worker(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/js/build-keys");
    std::fs::create_dir_all(to.join("src")).unwrap();
    for entry in std::fs::read_dir(from.join("src")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join("src").join(entry.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn alias_define_and_module_rules_shape_the_bundle() {
    let project = Project::new(&format!(
        r#"[server]
cache_dir = {:?}

[[worker]]
name = "build-keys"
main = "src/worker.js"
compatibility_date = "2024-09-23"
compatibility_flags = ["nodejs_compat"]
alias = {{ "some-module" = "./src/shim-for-module.js" }}
define = {{ DEBUG = "false", "process.env.MODE" = "\"prod\"" }}
rules = [
  {{ type = "Text", globs = ["**/*.html", "**/*.txt", "**/*.tmpl"] }},
  {{ type = "Data", globs = ["**/*.bin"] }},
]
"#,
        shared_cache().display().to_string()
    ));
    copy_worker(project.dir.path());
    let server = project.serve();
    let client = client();

    let (status, _, body) = get(&client, &server.url("/alias")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "hello isola from the aliased module"),
        "{}",
        server.logs()
    );

    let (status, _, body) = get(&client, &server.url("/define")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"debug":false,"mode":"prod"}"#)
    );

    // A Text module is the file's text, UTF-8 decoded; `.tmpl` is Text only
    // through the worker's own rule.
    let (status, _, body) = get(&client, &server.url("/page")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "string:<h1>Café — build keys</h1>\n-- a banner\n")
    );

    // A Data module is an ArrayBuffer of the file's exact bytes.
    let response = client.get(server.url("/logo")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-kind"], "[object ArrayBuffer]");
    let bytes = response.bytes().await.unwrap();
    assert_eq!(
        bytes.as_ref(),
        std::fs::read(project.path("src/logo.bin"))
            .unwrap()
            .as_slice()
    );
    assert_eq!(
        bytes.as_ref(),
        [
            0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0xff, 0xfe, 0x80, 0x7f
        ]
    );
}
