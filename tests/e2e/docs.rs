//! The docs, run: every full worker and config in README.md and docs/ is
//! built, served and asked what the docs say it answers, and every relative
//! link resolves. (`docs_reference.rs` compares the reference pages with
//! what the binary and the WIT accept.)
//!
//! The convention, in a fenced block's info string (see docs/README.md):
//!
//! - ```` ```js file=src/index.js project=hello-js ````: the whole file
//!   `src/index.js` of project `hello-js`. A project belongs to one
//!   Markdown file; its files may be spread over several blocks.
//! - `init=rust|js|ts` on one block of a project: the project starts as
//!   `isola init NAME --template …` writes it, then its blocks overwrite
//!   files (a Rust project gets its `Cargo.toml` that way).
//! - ```` ```console project=hello-js ````: a session against the project,
//!   served with `isola serve` (a Rust crate built first with cargo).
//!   `$ curl …` lines are requests to `http://127.0.0.1:8787` (the test
//!   server's real address is put in); the lines after one are its
//!   output: the body, or with `curl -i` the status line, the headers
//!   shown (others may be there too), a blank line and the body. A GET is
//!   asked again for up to 20 s until it answers as shown (answers that
//!   `waitUntil` or a queue consumer make after the fact); other methods
//!   once. `$ isola …` lines run that command in the project directory:
//!   it must succeed and print exactly the lines shown.
//! - A project without a session must pass `isola check`. A TypeScript
//!   project (`init=ts`) must also pass the pinned `tsc`, after its
//!   sessions (which may run `isola types`).
//! - `fragment`: a block that looks whole (a JS module with
//!   `export default`, Rust with `#[isola_sdk::…]`, TOML with
//!   `[[worker]]`) but is not meant to run. Such blocks without `project=`
//!   or `fragment` fail the test, so a full example cannot go untested.
//!
//! The test's only changes to a project: `[server] cache_dir` points at
//! the JS tests' shared compile cache, the template's admin port
//! `127.0.0.1:8788` becomes `127.0.0.1:0`, and the served address is the
//! one `--listen 127.0.0.1:0` gets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::dev::isola_in;
use crate::support::{Server, client, stderr_of};

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// README.md and every Markdown file under docs/, in a stable order.
fn doc_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut files = vec![root().join("README.md")];
    walk(&root().join("docs"), &mut files);
    files
}

/// `path` relative to the repository, for messages.
fn shown(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A fenced code block.
pub(crate) struct Block {
    doc: PathBuf,
    /// The line of its opening fence (1-based).
    line: usize,
    pub(crate) lang: String,
    attrs: BTreeMap<String, String>,
    flags: BTreeSet<String>,
    pub(crate) text: String,
}

impl Block {
    fn place(&self) -> String {
        format!("{}:{}", shown(&self.doc), self.line)
    }
}

const ATTRS: [&str; 3] = ["file", "project", "init"];
const FLAGS: [&str; 1] = ["fragment"];

/// The fenced blocks of a Markdown file (fences may be indented, as in a
/// list; their indentation is taken off the block's lines).
pub(crate) fn blocks(doc: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(doc).unwrap();
    let mut blocks = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let indent = line.len() - line.trim_start().len();
        let Some(info) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        let mut words = info.split_whitespace();
        let lang = words.next().unwrap_or("").to_owned();
        let (mut attrs, mut flags) = (BTreeMap::new(), BTreeSet::new());
        for word in words {
            match word.split_once('=') {
                Some((key, value)) => {
                    attrs.insert(key.to_owned(), value.to_owned());
                }
                None => {
                    flags.insert(word.to_owned());
                }
            }
        }
        let mut body = String::new();
        for (_, line) in lines.by_ref() {
            if line.trim_start().starts_with("```") {
                break;
            }
            body.push_str(line.get(indent..).unwrap_or(line.trim_start()));
            body.push('\n');
        }
        blocks.push(Block {
            doc: doc.to_owned(),
            line: index + 1,
            lang,
            attrs,
            flags,
            text: body,
        });
    }
    blocks
}

/// Whether a block holds a whole worker or config, which must then run.
fn looks_whole(block: &Block) -> bool {
    match block.lang.as_str() {
        "js" | "javascript" | "ts" | "typescript" => {
            block.text.contains("export default") || block.text.contains("addEventListener(")
        }
        "rust" => block.text.contains("#[isola_sdk::"),
        "toml" => block.text.contains("[[worker]]"),
        _ => false,
    }
}

/// A worker project assembled from the docs.
struct DocProject {
    doc: PathBuf,
    name: String,
    init: Option<String>,
    files: Vec<(String, String)>,
    /// Sessions: (where, text).
    sessions: Vec<(String, String)>,
}

/// Every project of the docs, or the ways the docs break the convention.
fn projects() -> Result<Vec<DocProject>, Vec<String>> {
    let mut problems = Vec::new();
    let mut projects: Vec<DocProject> = Vec::new();
    for doc in doc_files() {
        for block in blocks(&doc) {
            for key in block.attrs.keys() {
                if !ATTRS.contains(&key.as_str()) {
                    problems.push(format!("{}: unknown attribute `{key}=`", block.place()));
                }
            }
            for flag in &block.flags {
                if !FLAGS.contains(&flag.as_str()) {
                    problems.push(format!("{}: unknown flag `{flag}`", block.place()));
                }
            }
            let Some(name) = block.attrs.get("project") else {
                if block.attrs.contains_key("file") || block.attrs.contains_key("init") {
                    problems.push(format!(
                        "{}: `file=` or `init=` without `project=`",
                        block.place()
                    ));
                }
                if looks_whole(&block) && !block.flags.contains("fragment") {
                    problems.push(format!(
                        "{}: a whole {} example that no test runs: give it `project=` (and `file=`), or mark it `fragment`",
                        block.place(),
                        block.lang
                    ));
                }
                continue;
            };
            let index = match projects
                .iter()
                .position(|p| p.doc == doc && &p.name == name)
            {
                Some(index) => index,
                None => {
                    projects.push(DocProject {
                        doc: doc.clone(),
                        name: name.clone(),
                        init: None,
                        files: Vec::new(),
                        sessions: Vec::new(),
                    });
                    projects.len() - 1
                }
            };
            let project = &mut projects[index];
            if let Some(template) = block.attrs.get("init")
                && project.init.replace(template.clone()).is_some()
            {
                problems.push(format!("{}: a second `init=` for {name}", block.place()));
            }
            match (block.lang.as_str(), block.attrs.get("file")) {
                ("console", None) => project.sessions.push((block.place(), block.text.clone())),
                (_, Some(file)) => {
                    if project.files.iter().any(|(f, _)| f == file) {
                        problems.push(format!("{}: {file} of {name} given twice", block.place()));
                    }
                    project.files.push((file.clone(), block.text.clone()));
                }
                _ => problems.push(format!(
                    "{}: a block of project {name} is either a `file=` or a `console` session",
                    block.place()
                )),
            }
        }
    }
    for project in &projects {
        let has_config = project.files.iter().any(|(f, _)| f == "isola.toml");
        if !has_config && project.init.is_none() {
            problems.push(format!(
                "{}: project {} has no isola.toml",
                shown(&project.doc),
                project.name
            ));
        }
    }
    if problems.is_empty() {
        Ok(projects)
    } else {
        Err(problems)
    }
}

/// GitHub's anchor for a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(doc: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(doc).unwrap();
    let mut in_block = false;
    let mut anchors = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
        } else if !in_block && line.starts_with('#') {
            anchors.insert(slug(line.trim_start_matches('#')));
        }
    }
    anchors
}

/// Relative links `](target)` of a Markdown file whose file or anchor is
/// missing.
fn broken_links(doc: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(doc).unwrap();
    let mut broken = Vec::new();
    for (at, _) in text.match_indices("](") {
        let rest = &text[at + 2..];
        let Some(end) = rest.find(')') else { continue };
        let target = &rest[..end];
        if target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
            continue;
        }
        let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
        let path = if file.is_empty() {
            doc.to_owned()
        } else {
            doc.parent().unwrap().join(file)
        };
        if !path.exists() {
            broken.push(format!("{}: no file {target}", shown(doc)));
        } else if !anchor.is_empty()
            && path.extension().is_some_and(|e| e == "md")
            && !anchors(&path).contains(anchor)
        {
            broken.push(format!("{}: no heading for {target}", shown(doc)));
        }
    }
    broken
}

#[test]
fn every_whole_example_in_the_docs_is_a_project_and_every_link_resolves() {
    let mut problems = match projects() {
        Ok(projects) => {
            assert!(projects.len() >= 5, "the docs have few projects");
            Vec::new()
        }
        Err(problems) => problems,
    };
    for doc in doc_files() {
        problems.extend(broken_links(&doc));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `line` split as a POSIX shell would: words, single quotes, double quotes
/// with `\"` and `\\`.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    w.push(c);
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        c => w.push(c),
                    }
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// One `$ …` line of a session and the output shown after it.
struct Step {
    command: String,
    output: String,
}

fn steps(session: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for line in session.lines() {
        if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step {
                command: command.trim().to_owned(),
                output: String::new(),
            });
        } else if let Some(step) = steps.last_mut() {
            step.output.push_str(line);
            step.output.push('\n');
        }
    }
    steps
}

fn trimmed(text: &str) -> &str {
    text.trim_end_matches(['\n', ' '])
}

/// A `curl` command line, as far as the docs use curl.
struct Curl {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
    include: bool,
}

fn parse_curl(words: &[String]) -> Result<Curl, String> {
    let mut curl = Curl {
        method: String::new(),
        url: String::new(),
        headers: Vec::new(),
        body: None,
        include: false,
    };
    let mut words = words.iter();
    while let Some(word) = words.next() {
        let mut value = || {
            words
                .next()
                .cloned()
                .ok_or_else(|| format!("{word} needs a value"))
        };
        match word.as_str() {
            "-s" | "--silent" => {}
            "-i" | "--include" => curl.include = true,
            "-X" | "--request" => curl.method = value()?,
            "-d" | "--data" | "--data-binary" => curl.body = Some(value()?),
            "-H" | "--header" => {
                let header = value()?;
                let (name, value) = header
                    .split_once(':')
                    .ok_or_else(|| format!("a header without a colon: {header}"))?;
                curl.headers
                    .push((name.trim().to_owned(), value.trim().to_owned()));
            }
            option if option.starts_with('-') => {
                return Err(format!(
                    "curl option {option} is not one the doc test knows"
                ));
            }
            url => curl.url = url.to_owned(),
        }
    }
    if curl.method.is_empty() {
        curl.method = if curl.body.is_some() { "POST" } else { "GET" }.to_owned();
    }
    if !curl.url.starts_with("http://127.0.0.1:8787") {
        return Err(format!(
            "curl's URL must be on http://127.0.0.1:8787: {}",
            curl.url
        ));
    }
    Ok(curl)
}

/// Send `curl` to `server`; compare with `expected` (as curl prints it).
/// `Err` says how the answer differs.
async fn answer_matches(server: &Server, curl: &Curl, expected: &str) -> Result<(), String> {
    let url = curl.url.replace("http://127.0.0.1:8787", &server.url(""));
    let method: reqwest::Method = curl.method.parse().map_err(|e| format!("{e}"))?;
    let mut request = client().request(method, &url);
    for (name, value) in &curl.headers {
        request = request.header(name, value);
    }
    if let Some(body) = &curl.body {
        request = request.body(body.clone());
    }
    let response = request.send().await.map_err(|e| format!("{e}"))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.map_err(|e| format!("{e}"))?;
    let got = format!("{status} {headers:?}\n{body}");
    let expected_body = if curl.include {
        let (head, body) = expected.split_once("\n\n").unwrap_or((expected, ""));
        let mut lines = head.lines();
        let status_line = lines.next().unwrap_or("");
        let want: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {status_line:?}"))?;
        if want != status {
            return Err(format!("status {status}, the docs say {want}; got {got}"));
        }
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("not a header line: {line:?}"))?;
            let actual = headers.get(name.trim()).and_then(|v| v.to_str().ok());
            if actual != Some(value.trim()) {
                return Err(format!("header {line:?}: got {actual:?}; got {got}"));
            }
        }
        body
    } else {
        if status >= 400 {
            return Err(format!(
                "status {status} (show it with `curl -i` if it is meant); got {got}"
            ));
        }
        expected
    };
    if trimmed(&body) != trimmed(expected_body) {
        return Err(format!("body {body:?}, the docs say {expected_body:?}"));
    }
    Ok(())
}

const ISOLA_IN_SESSIONS: [&str; 7] = [
    "analytics",
    "check",
    "compile",
    "kv",
    "sql",
    "trigger",
    "types",
];

async fn run_step(server: &Server, dir: &Path, step: &Step) -> Result<(), String> {
    let words = shell_words(&step.command);
    match words.first().map(String::as_str) {
        Some("curl") => {
            let curl = parse_curl(&words[1..])?;
            let polled = curl.method == "GET";
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match answer_matches(server, &curl, &step.output).await {
                    Ok(()) => return Ok(()),
                    Err(e) if !polled || Instant::now() >= deadline => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        Some("isola") => {
            let sub = words.get(1).map(String::as_str).unwrap_or("");
            if !ISOLA_IN_SESSIONS.contains(&sub) {
                return Err(format!(
                    "`isola {sub}` is not one the doc test runs ({ISOLA_IN_SESSIONS:?})"
                ));
            }
            let output = isola_in(dir).args(&words[1..]).output().unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            if !output.status.success() {
                return Err(format!("failed: {}", stderr_of(&output)));
            }
            if trimmed(&stdout) != trimmed(&step.output) {
                return Err(format!(
                    "printed {stdout:?}, the docs say {:?}",
                    step.output
                ));
            }
            Ok(())
        }
        _ => Err("a session runs only `curl` and `isola` commands".to_owned()),
    }
}

/// The project's config as the test serves it (see the module's doc).
fn adapt_config(text: &str) -> String {
    let cache = format!(
        "cache_dir = {:?}\n",
        crate::js::shared_cache().display().to_string()
    );
    let text = text.replace("admin = \"127.0.0.1:8788\"", "admin = \"127.0.0.1:0\"");
    match text.find("[server]\n") {
        Some(at) => {
            let end = at + "[server]\n".len();
            format!("{}{cache}{}", &text[..end], &text[end..])
        }
        None => format!("[server]\n{cache}\n{text}"),
    }
}

/// Assemble, build and run one project; `Err` says what differs from the
/// docs.
async fn run_project(project: &DocProject) -> Result<(), String> {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join(&project.name);
    if let Some(template) = &project.init {
        let output = isola_in(scratch.path())
            .args(["init", &project.name, "--template", template])
            .output()
            .unwrap();
        if !output.status.success() {
            return Err(format!("isola init: {}", stderr_of(&output)));
        }
    }
    for (file, text) in &project.files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let config = dir.join("isola.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, adapt_config(&text)).unwrap();
    if dir.join("Cargo.toml").is_file() {
        crate::dev::share_builds(&dir);
        crate::dev::cargo_build_release(&dir);
    }
    if project.sessions.is_empty() {
        let output = isola_in(&dir).arg("check").output().unwrap();
        return if output.status.success() {
            Ok(())
        } else {
            Err(format!("isola check: {}", stderr_of(&output)))
        };
    }
    let server = Server::start_in(&dir, &["serve", "--listen", "127.0.0.1:0"], &[]);
    for (place, session) in &project.sessions {
        for step in steps(session) {
            if let Err(e) = run_step(&server, &dir, &step).await {
                return Err(format!(
                    "{place}: `{}`: {e}\nserver logs:\n{}",
                    step.command,
                    server.logs()
                ));
            }
        }
    }
    if project.init.as_deref() == Some("ts") {
        let (passed, output) = crate::dev::type_check(&crate::dev::toolchain_tsc(), &dir);
        if !passed {
            return Err(format!("tsc: {output}"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docs_projects_build_serve_and_answer_as_shown() {
    let projects = projects().unwrap_or_else(|problems| panic!("{}", problems.join("\n")));
    let mut failures = Vec::new();
    for project in &projects {
        if let Err(e) = run_project(project).await {
            failures.push(format!(
                "{} (project {}): {e}",
                shown(&project.doc),
                project.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_doc_tests_parsers_read_what_the_docs_write() {
    assert_eq!(
        shell_words(r#"curl -H 'authorization: Bearer ada' -d "{\"a\": 1}" http://x/"#),
        [
            "curl",
            "-H",
            "authorization: Bearer ada",
            "-d",
            "{\"a\": 1}",
            "http://x/"
        ]
    );
    assert_eq!(
        slug("The request lifecycle (`ctx`)"),
        "the-request-lifecycle-ctx"
    );
    assert_eq!(slug("Wrangler's build keys"), "wranglers-build-keys");
}
