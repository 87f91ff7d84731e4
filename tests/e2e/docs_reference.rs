//! The reference pages against their sources, so they cannot rot:
//! docs/reference/cli.md against `isola --help`, configuration.md against
//! the keys `isola check` accepts, wit.md against wit/worker.wit.

use std::collections::BTreeSet;

use crate::docs::{blocks, root};
use crate::support::{run_isola, stderr_of};

/// The section of `doc` under the heading `## {heading}`.
fn section<'a>(doc: &'a str, heading: &str) -> Option<&'a str> {
    let start = doc.find(&format!("\n## {heading}\n"))? + 1;
    let rest = &doc[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    Some(&rest[..end])
}

/// A `--help` text's entries under `title:` (`Commands:`, `Options:`),
/// trimmed. Commands start at column 2; options at column 2 (`-o, --out`)
/// or 6 (`    --listen`, aligned past a short flag); descriptions and
/// possible values are further in, on the same line or the next ones
/// (with blank lines between entries in the long help). The next section
/// starts at column 0.
fn help_entries(help: &str, title: &str) -> Vec<String> {
    let Some(start) = help.find(&format!("\n{title}\n")) else {
        return Vec::new();
    };
    help[start + title.len() + 2..]
        .lines()
        .take_while(|line| line.is_empty() || line.starts_with(' '))
        .filter(|line| {
            let indent = line.len() - line.trim_start().len();
            indent == 2 || (indent <= 6 && line.trim_start().starts_with("--"))
        })
        .map(|line| line.trim().to_owned())
        .collect()
}

/// The long options of one `--help` text, but `--help`, `--version` and
/// the global `--log-format`.
fn long_options(help: &str) -> Vec<String> {
    help_entries(help, "Options:")
        .iter()
        .filter_map(|entry| {
            entry
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .map(|w| w.split('=').next().unwrap().to_owned())
        })
        .filter(|o| !["--help", "--version", "--log-format"].contains(&o.as_str()))
        .collect()
}

fn help(args: &[&str]) -> String {
    let output = run_isola(args);
    assert!(output.status.success(), "{}", stderr_of(&output));
    String::from_utf8(output.stdout).unwrap()
}

fn commands(help: &str) -> Vec<String> {
    help_entries(help, "Commands:")
        .iter()
        .map(|e| e.split_whitespace().next().unwrap().to_owned())
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn the_cli_reference_names_every_command_and_option() {
    let doc = std::fs::read_to_string(root().join("docs/reference/cli.md")).unwrap();
    let top = help(&["--help"]);
    let mut missing = Vec::new();
    if !doc.contains("--log-format") {
        missing.push("--log-format".to_owned());
    }
    let commands = commands(&top);
    assert!(commands.len() >= 10, "{top}");
    for command in commands {
        let heading = format!("isola {command}");
        let Some(text) = section(&doc, &heading) else {
            missing.push(format!("## {heading}"));
            continue;
        };
        let help_text = help(&[&command, "--help"]);
        let mut options = long_options(&help_text);
        for sub in self::commands(&help_text) {
            if !text.contains(&format!("`{sub}")) && !text.contains(&format!("{sub} ")) {
                missing.push(format!("{heading} {sub}"));
            }
            options.extend(long_options(&help(&[&command, &sub, "--help"])));
        }
        for option in options {
            if !text.contains(&option) {
                missing.push(format!("{heading} {option}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/reference/cli.md lacks what `isola --help` shows: {missing:?}"
    );
}

/// Configs with an unknown key in each table the parser reads.
const KEY_PROBES: [&str; 21] = [
    "zz_docs_probe = 1\n",
    "[server]\nzz_docs_probe = 1\n",
    "[backends]\nzz_docs_probe = 1\n",
    "[backends.kv]\ntype = \"sqlite\"\nzz_docs_probe = 1\n",
    "[cluster]\nzz_docs_probe = 1\n",
    "[[worker]]\nname = \"w\"\nzz_docs_probe = 1\n",
    "[[worker]]\nname = \"w\"\nbuild = { zz_docs_probe = 1 }\n",
    "[[worker]]\nname = \"w\"\nqueues = { zz_docs_probe = 1 }\n",
    "[[worker]]\nname = \"w\"\nqueues.producers = [{ binding = \"Q\", queue = \"q\", zz_docs_probe = 1 }]\n",
    "[[worker]]\nname = \"w\"\nqueues.consumers = [{ queue = \"q\", zz_docs_probe = 1 }]\n",
    "[[worker]]\nname = \"w\"\ntriggers = { zz_docs_probe = 1 }\n",
    "[[worker]]\nname = \"w\"\nservices = [{ binding = \"S\", service = \"s\", zz_docs_probe = 1 }]\n",
    "[[worker]]\nname = \"w\"\nkv_namespaces = [{ binding = \"K\", id = \"k\", zz_docs_probe = 1 }]\n",
    "[[worker]]\nname = \"w\"\nd1_databases = [{ binding = \"D\", database_name = \"d\", zz_docs_probe = 1 }]\n",
    "[[worker]]\nname = \"w\"\nr2_buckets = [{ binding = \"R\", bucket_name = \"r\", zz_docs_probe = 1 }]\n",
    "[[worker]]\nname = \"w\"\nanalytics_engine_datasets = [{ binding = \"A\", dataset = \"a\", zz_docs_probe = 1 }]\n",
    "[[worker]]\nname = \"w\"\nmain = \"w.js\"\nrules = [{ type = \"Text\", globs = [\"*.txt\"], zz_docs_probe = 1 }]\n",
    "[[worker]]\nname = \"w\"\ndurable_objects = { zz_docs_probe = 1 }\n",
    "[[worker]]\nname = \"w\"\ndurable_objects.bindings = [{ name = \"D\", class_name = \"C\", zz_docs_probe = 1 }]\n",
    "[[worker]]\nname = \"w\"\nmigrations = [{ tag = \"v1\", zz_docs_probe = 1 }]\n",
    "[[worker]]\nname = \"w\"\nmigrations = [{ tag = \"v1\", renamed_classes = [{ from = \"A\", to = \"B\", zz_docs_probe = 1 }] }]\n",
];

/// The keys the parser accepts, as `isola check` lists them when it meets
/// an unknown one (serde's `expected one of …`).
fn accepted_keys() -> BTreeSet<String> {
    let scratch = tempfile::tempdir().unwrap();
    let config = scratch.path().join("isola.toml");
    let mut keys = BTreeSet::new();
    for probe in KEY_PROBES {
        std::fs::write(&config, probe).unwrap();
        let output = run_isola(&["check", config.to_str().unwrap()]);
        let stderr = stderr_of(&output);
        let line = stderr
            .lines()
            .find_map(|l| {
                l.split_once("unknown field `zz_docs_probe`")
                    .map(|(_, r)| r)
            })
            .unwrap_or_else(|| panic!("no unknown-key error for {probe:?}:\n{stderr}"));
        let listed: Vec<&str> = line.split('`').skip(1).step_by(2).collect();
        assert!(!listed.is_empty(), "{line}");
        keys.extend(listed.into_iter().map(str::to_owned));
    }
    keys
}

/// `line` without its strings' contents and its comment.
fn code_of(line: &str) -> String {
    let mut code = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '#' => break,
            '"' => {
                code.push('"');
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                code.push('"');
            }
            c => code.push(c),
        }
    }
    code
}

fn is_key(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_alphabetic())
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// The config keys a TOML example uses: table names, keys (dotted ones
/// split) and the keys of inline tables, but not the names inside `vars`,
/// `alias` and `define`, which are the user's. Commented-out `key = …`
/// lines count.
fn keys_in_example(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        let mut line = line.trim();
        if let Some(commented) = line.strip_prefix('#') {
            let commented = commented.trim();
            match commented.split_once(" = ") {
                Some((key, _)) if is_key(key) => line = commented,
                _ => continue,
            }
        }
        let code = code_of(line);
        let code = code.trim();
        if let Some(table) = code.strip_prefix('[') {
            let table = table.trim_matches(|c| c == '[' || c == ']');
            keys.extend(table.split('.').map(str::to_owned));
            continue;
        }
        let mut rest = code;
        if let Some((key, value)) = code.split_once('=') {
            let key = key.trim();
            if is_key(key) {
                keys.extend(key.split('.').map(str::to_owned));
                if ["vars", "alias", "define"].contains(&key) {
                    continue;
                }
                rest = value;
            }
        }
        // Inline tables: `{ key = …, key = … }`.
        for piece in rest.split(['{', ',']).skip(1) {
            if let Some((key, _)) = piece.split_once('=') {
                let key = key.trim();
                if is_key(key) {
                    keys.insert(key.to_owned());
                }
            }
        }
    }
    keys
}

#[test]
fn the_configuration_reference_names_every_key_the_parser_accepts() {
    let path = root().join("docs/reference/configuration.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let accepted = accepted_keys();
    assert!(accepted.len() > 60, "{accepted:?}");
    let mentioned = |key: &str| {
        [
            format!("`{key}`"),
            format!("{key} ="),
            format!("[{key}]"),
            format!("[{key}."),
            format!(".{key}]"),
            // A dotted key at the start of a line: `queues.producers = …`.
            format!("\n{key}."),
        ]
        .iter()
        .any(|form| doc.contains(form.as_str()))
    };
    let unmentioned: Vec<&String> = accepted.iter().filter(|k| !mentioned(k)).collect();
    assert!(
        unmentioned.is_empty(),
        "keys isola.toml accepts that docs/reference/configuration.md does not name: {unmentioned:?}"
    );
    let mut shown = BTreeSet::new();
    for block in blocks(&path).iter().filter(|b| b.lang == "toml") {
        shown.extend(keys_in_example(&block.text));
    }
    assert!(shown.len() > 60, "{shown:?}");
    let unknown: Vec<&String> = shown.difference(&accepted).collect();
    assert!(
        unknown.is_empty(),
        "keys docs/reference/configuration.md shows that isola.toml refuses: {unknown:?}"
    );
}

#[test]
fn the_wit_reference_names_every_interface_and_world() {
    let wit = std::fs::read_to_string(root().join("wit/worker.wit")).unwrap();
    let doc = std::fs::read_to_string(root().join("docs/reference/wit.md")).unwrap();
    let mut missing = Vec::new();
    let mut seen = 0;
    for line in wit.lines() {
        let mut words = line.split_whitespace();
        if let (Some("interface" | "world"), Some(name), Some("{")) =
            (words.next(), words.next(), words.next())
        {
            seen += 1;
            if !doc.contains(&format!("`{name}`")) {
                missing.push(name.to_owned());
            }
        }
    }
    assert!(seen > 10, "read no interfaces from wit/worker.wit");
    assert!(
        missing.is_empty(),
        "docs/reference/wit.md does not name: {missing:?}"
    );
}

#[test]
fn the_example_key_reader_reads_what_the_configuration_page_writes() {
    let keys = keys_in_example(
        "[server]\n# admin = \"x\"  # a comment = not a key\nvars = { A = \"b\" }\n\
         queues.consumers = [{ queue = \"q\", max_retries = 3 }]\n[backends.kv]\n",
    );
    let expected = [
        "server",
        "admin",
        "vars",
        "queues",
        "consumers",
        "queue",
        "max_retries",
        "backends",
        "kv",
    ];
    assert_eq!(
        keys,
        expected
            .iter()
            .map(|k| k.to_string())
            .collect::<BTreeSet<_>>()
    );
}
