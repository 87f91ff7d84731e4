//! Property tests: cron expressions and whole config texts.

use proptest::prelude::*;

use super::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A cron field: `*`, a value, a range, a list or a step, within
/// `lo..=hi`.
fn cron_field(lo: u32, hi: u32) -> impl Strategy<Value = String> {
    let n = lo..=hi;
    prop_oneof![
        Just("*".to_owned()),
        n.clone().prop_map(|v| v.to_string()),
        (n.clone(), n.clone()).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
        proptest::collection::vec(n.clone(), 1..4).prop_map(|v| v
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")),
        (1..=hi.max(1)).prop_map(|s| format!("*/{s}")),
        (n, 1..=hi.max(1)).prop_map(move |(a, s)| format!("{a}-{hi}/{s}")),
    ]
}

fn five_fields() -> impl Strategy<Value = String> {
    (
        cron_field(0, 59),
        cron_field(0, 23),
        cron_field(1, 28),
        cron_field(1, 12),
        cron_field(0, 6),
    )
        .prop_map(|(m, h, d, mo, w)| format!("{m} {h} {d} {mo} {w}"))
}

/// Cron-ish text: the tokens croner knows, out of place.
fn cron_noise() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("*".to_owned()),
        Just("?".to_owned()),
        Just("L".to_owned()),
        Just("W".to_owned()),
        Just("#".to_owned()),
        Just("/".to_owned()),
        Just(",".to_owned()),
        Just("-".to_owned()),
        Just("+".to_owned()),
        Just("MON".to_owned()),
        Just("jan".to_owned()),
        Just(" ".to_owned()),
        Just("\t".to_owned()),
        Just("\u{a0}".to_owned()),
        (0u64..100).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
    ];
    proptest::collection::vec(token, 0..24).prop_map(|t| t.concat())
}

fn check_cron(text: &str) -> Result<(), TestCaseError> {
    if let Ok(cron) = CronSchedule::parse(text) {
        prop_assert_eq!(&cron.expression, text);
        prop_assert!((5..=6).contains(&text.split_whitespace().count()));
    }
    Ok(())
}

/// What a key of the schema holds. The generator fills each key with a
/// value of its kind, picked from values near the rules (valid, just
/// valid, just invalid), and now and then with one of another type.
enum Kind {
    Str(&'static [&'static str]),
    Num,
    Bool,
    Strs(&'static [&'static str]),
    Table(&'static [(&'static str, Kind)]),
    Tables(&'static [(&'static str, Kind)]),
    Map(&'static [&'static str], &'static [&'static str]),
}

use Kind::*;

const BINDINGS: &[&str] = &["KV", "DB", "_x", "1bad", "a-b", ""];
const CLASSES: &[&str] = &["Counter", "Room", "$x", "1bad", ""];
const QUEUES: &[&str] = &["q", "jobs", "bad name", ""];
const HOSTS: &[&str] = &[
    "*",
    "https://*.example.com",
    "http://[::1]:8080",
    "http://127.0.0.1:*",
    "ftp://x",
    "https://a*b",
];
const URLS: &[&str] = &[
    "http://127.0.0.1:9",
    "https://x.com/",
    "http://",
    "redis://x",
    "postgres://x",
    "x",
];
const NAMES: &[&str] = &["a", "b", "a-b_c", "bad name", ""];
const ADDRESSES: &[&str] = &["127.0.0.1:0", "0.0.0.0:8788", "[::1]:0", "nope"];

const SERVER: &[(&str, Kind)] = &[
    ("listen", Str(ADDRESSES)),
    ("state_dir", Str(&["state", ""])),
    ("cache_dir", Str(&["cache"])),
    ("max_instances", Num),
    ("fuel_per_ms", Num),
    ("max_header_bytes", Num),
    ("max_body_mb", Num),
    ("header_timeout_ms", Num),
    ("server_timing", Bool),
    ("outbound_override", Str(URLS)),
    ("shutdown_grace_ms", Num),
    ("colo", Str(&["SFO"])),
    (
        "trusted_client_ip_header",
        Str(&["x-real-ip", "X_Ip", "bad header", ""]),
    ),
    ("admin", Str(ADDRESSES)),
    ("admin_token", Str(&["t"])),
    ("outbound_idle_timeout_ms", Num),
    ("outbound_max_connections_per_origin", Num),
    ("outbound_ca_file", Str(&["app.wasm", "missing.pem"])),
    ("queue_timeout_ms", Num),
    ("max_connections", Num),
    ("durable_object_idle_s", Num),
];
const CONSUMER: &[(&str, Kind)] = &[
    ("queue", Str(QUEUES)),
    ("max_batch_size", Num),
    ("max_batch_timeout", Num),
    ("max_retries", Num),
    ("dead_letter_queue", Str(QUEUES)),
    ("max_concurrency", Num),
    ("retry_delay", Num),
];
const RULE: &[(&str, Kind)] = &[
    (
        "type",
        Str(&[
            "Text",
            "Data",
            "ESModule",
            "CommonJS",
            "CompiledWasm",
            "Nope",
        ]),
    ),
    (
        "globs",
        Strs(&["**/*.md", "./x", "[ab]", "{a", "{a,b}/*", "/abs", ""]),
    ),
    ("fallthrough", Bool),
];
const WORKER: &[(&str, Kind)] = &[
    ("component", Str(&["app.wasm", "missing.wasm"])),
    ("main", Str(&["app.wasm", "src/worker.js"])),
    (
        "routes",
        Strs(&[
            "/*",
            "/api/*",
            "Example.com/*",
            "*.example.com/x",
            "/a b",
            "/x*y",
            "x",
        ]),
    ),
    ("vars", Map(&["A", "B"], &["1", ""])),
    ("cpu_ms", Num),
    ("wall_ms", Num),
    ("memory_mb", Num),
    ("subrequests", Num),
    ("instance_reuse", Num),
    ("pass_through_buffer_kb", Num),
    ("allowed_outbound_hosts", Strs(HOSTS)),
    ("outbound_override", Str(URLS)),
    ("origin", Str(URLS)),
    (
        "services",
        Tables(&[("binding", Str(BINDINGS)), ("service", Str(NAMES))]),
    ),
    ("secrets", Strs(BINDINGS)),
    (
        "kv_namespaces",
        Tables(&[("binding", Str(BINDINGS)), ("id", Str(&["ns", ""]))]),
    ),
    (
        "d1_databases",
        Tables(&[("binding", Str(BINDINGS)), ("database_name", Str(NAMES))]),
    ),
    (
        "r2_buckets",
        Tables(&[
            ("binding", Str(BINDINGS)),
            ("bucket_name", Str(&["bucket", "ab", "-bad", "Up"])),
        ]),
    ),
    (
        "analytics_engine_datasets",
        Tables(&[("binding", Str(BINDINGS)), ("dataset", Str(BINDINGS))]),
    ),
    (
        "queues",
        Table(&[
            (
                "producers",
                Tables(&[("binding", Str(BINDINGS)), ("queue", Str(QUEUES))]),
            ),
            ("consumers", Tables(CONSUMER)),
        ]),
    ),
    (
        "triggers",
        Table(&[
            (
                "crons",
                Strs(&[
                    "*/5 * * * *",
                    "0 0 * * * *",
                    "61 * * * *",
                    "* * *",
                    "0 0 30 2 *",
                ]),
            ),
            ("cpu_ms", Num),
        ]),
    ),
    (
        "build",
        Table(&[
            ("command", Str(&["make", " "])),
            ("watch", Strs(&["src/**", ""])),
            ("workdir", Str(&["."])),
        ]),
    ),
    (
        "alias",
        Map(
            &["some-module", "./rel", "a b"],
            &["./src/shim.js", "pkg", "/nowhere", ""],
        ),
    ),
    (
        "define",
        Map(&["DEBUG", "process.env.MODE", "1bad"], &["false", " "]),
    ),
    ("rules", Tables(RULE)),
    (
        "warm_up",
        Strs(&[
            "/",
            "/api/users/7",
            "https://x.com/a",
            "ftp://x",
            "x",
            "//h/x",
            "",
        ]),
    ),
    (
        "compatibility_date",
        Str(&["2024-02-29", "2023-02-29", "2024-13-01", "x"]),
    ),
    ("compatibility_flags", Strs(&["nodejs_compat", "Bad", ""])),
    (
        "durable_objects",
        Table(&[(
            "bindings",
            Tables(&[
                ("name", Str(BINDINGS)),
                ("class_name", Str(CLASSES)),
                ("script_name", Str(NAMES)),
            ]),
        )]),
    ),
    (
        "migrations",
        Tables(&[
            ("tag", Str(&["v1", "v2", ""])),
            ("new_classes", Strs(CLASSES)),
            ("new_sqlite_classes", Strs(CLASSES)),
            (
                "renamed_classes",
                Tables(&[
                    ("from", Str(CLASSES)),
                    ("to", Str(&["Room", "Counter", "b-c"])),
                ]),
            ),
            ("deleted_classes", Strs(CLASSES)),
        ]),
    ),
];
const BACKEND: &[(&str, Kind)] = &[
    (
        "type",
        Str(&["sqlite", "redis", "postgres", "fs", "s3", "memory", "none"]),
    ),
    ("max_mb", Num),
    ("url", Str(URLS)),
    ("endpoint", Str(URLS)),
    ("region", Str(&["eu-west-1"])),
    ("bucket", Str(&["b", ""])),
];

fn toml_string(pool: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![
        14 => Just(pool[0].to_owned()),
        5 => proptest::sample::select(pool).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
    .prop_map(|s| toml::Value::String(s).to_string())
    .boxed()
}

/// A value of any type: what a key of another kind receives.
fn wrong_value() -> BoxedStrategy<String> {
    prop_oneof![
        toml_string(&["x"]),
        Just("-1".to_owned()),
        Just("1.5".to_owned()),
        Just("true".to_owned()),
        Just("1979-05-27T07:32:00Z".to_owned()),
        Just("[1, \"a\"]".to_owned()),
        Just("{ unknown = 1 }".to_owned()),
    ]
    .boxed()
}

fn value(kind: &'static Kind) -> BoxedStrategy<String> {
    let right = match kind {
        Str(pool) => toml_string(pool),
        Num => prop_oneof![
            3 => (1u32..=60).prop_map(|n| n.to_string()),
            1 => proptest::sample::select(
                &[
                    "0",
                    "1",
                    "2",
                    "60",
                    "100",
                    "101",
                    "1024",
                    "16384",
                    "16385",
                    "43200",
                    "1000000",
                    "1000001",
                    "4294967296",
                    "9223372036854775807",
                ][..]
            )
            .prop_map(str::to_owned),
            1 => any::<u32>().prop_map(|n| n.to_string()),
        ]
        .boxed(),
        Bool => any::<bool>().prop_map(|b| b.to_string()).boxed(),
        Strs(pool) => proptest::collection::vec(toml_string(pool), 0..3)
            .prop_map(|v| format!("[{}]", v.join(", ")))
            .boxed(),
        Table(fields) => table(fields),
        Tables(fields) => proptest::collection::vec(table(fields), 0..3)
            .prop_map(|v| format!("[{}]", v.join(", ")))
            .boxed(),
        Map(keys, values) => {
            proptest::collection::btree_map(toml_string(keys), toml_string(values), 0..3)
                .prop_map(|m| {
                    let entries: Vec<_> =
                        m.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    format!("{{ {} }}", entries.join(", "))
                })
                .boxed()
        }
    };
    prop_oneof![49 => right, 1 => wrong_value()].boxed()
}

/// `key = value` lines for some of `fields`, each at most once; the
/// required ones (named in `REQUIRED`) nearly always.
fn entries(fields: &'static [(&'static str, Kind)]) -> BoxedStrategy<Vec<String>> {
    let (required, optional): (Vec<usize>, Vec<usize>) =
        (0..fields.len()).partition(|&i| REQUIRED.contains(&fields[i].0));
    let size = optional.len().min(6);
    (
        proptest::sample::subsequence(optional, 0..=size),
        proptest::bool::weighted(0.95),
    )
        .prop_flat_map(move |(picked, complete)| {
            let mut picked = picked;
            if complete {
                picked.extend(&required);
            }
            picked
                .into_iter()
                .map(|i| {
                    let (key, kind) = &fields[i];
                    value(kind).prop_map(move |v| format!("{key} = {v}"))
                })
                .collect::<Vec<_>>()
        })
        .boxed()
}

/// Keys without which a table is refused.
const REQUIRED: &[&str] = &[
    "type",
    "binding",
    "queue",
    "id",
    "database_name",
    "bucket_name",
    "dataset",
    "service",
    "globs",
    "name",
    "class_name",
    "tag",
    "from",
    "to",
];

fn table(fields: &'static [(&'static str, Kind)]) -> BoxedStrategy<String> {
    entries(fields)
        .prop_map(|e| format!("{{ {} }}", e.join(", ")))
        .boxed()
}

/// A config text: `[server]`, workers (most with a name and the
/// component that exists), `[backends.*]`.
fn config_text() -> impl Strategy<Value = String> {
    let worker = (
        proptest::option::weighted(
            0.95,
            prop_oneof![4 => "[a-c]{1,2}".prop_map(|n| format!("\"{n}\"")), 1 => toml_string(NAMES)],
        ),
        proptest::bool::weighted(0.9),
        entries(WORKER),
    )
        .prop_map(|(name, component, rest)| {
            let mut lines: Vec<String> = name.map(|n| format!("name = {n}")).into_iter().collect();
            if component && !rest.iter().any(|l| l.starts_with("component =")) {
                lines.push("component = \"app.wasm\"".to_owned());
            }
            lines.extend(rest);
            format!("[[worker]]\n{}\n", lines.join("\n"))
        });
    let backend = (
        prop_oneof![
            9 => proptest::sample::select(&["kv", "sql", "blob", "cache", "queue"][..]),
            1 => Just("other"),
        ],
        entries(BACKEND),
    )
        .prop_map(|(kind, e)| format!("[backends.{kind}]\n{}\n", e.join("\n")));
    (
        proptest::option::of(entries(SERVER)),
        prop_oneof![1 => Just(0..1), 9 => Just(1..4)]
            .prop_flat_map(move |n| proptest::collection::vec(worker.clone(), n)),
        proptest::option::weighted(0.3, backend),
    )
        .prop_map(|(server, workers, backends)| {
            let server = server
                .map(|s| format!("[server]\n{}\n", s.join("\n")))
                .unwrap_or_default();
            format!(
                "{server}{}{}",
                workers.concat(),
                backends.unwrap_or_default()
            )
        })
}

/// Two workers whose migrations create, rename and delete classes of a
/// small pool, and that bind names of the pool, in their own worker or
/// the other: valid often enough, at fault often too.
fn durable_text() -> impl Strategy<Value = String> {
    let class = || proptest::sample::select(&["A", "B", "C"][..]);
    let step = prop_oneof![
        1 => class().prop_map(|c| format!("new_classes = [\"{c}\"]")),
        1 => class().prop_map(|c| format!("new_sqlite_classes = [\"{c}\"]")),
        2 => (class(), class()).prop_map(|(from, to)| format!(
            "renamed_classes = [{{ from = \"{from}\", to = \"{to}\" }}]"
        )),
        1 => class().prop_map(|c| format!("deleted_classes = [\"{c}\"]")),
    ];
    // Mostly a first migration that makes two classes, for the later
    // steps and the bindings to find.
    let first = proptest::option::weighted(
        0.8,
        Just("new_classes = [\"A\"], new_sqlite_classes = [\"B\"]".to_owned()),
    );
    let migrations = (first, proptest::collection::vec(step, 0..4)).prop_map(|(first, steps)| {
        let steps: Vec<_> = first
            .iter()
            .chain(&steps)
            .enumerate()
            .map(|(i, step)| format!("{{ tag = \"v{i}\", {step} }}"))
            .collect();
        format!("migrations = [{}]\n", steps.join(", "))
    });
    let binding = (
        class(),
        proptest::option::of(proptest::sample::select(&["a", "b"][..])),
    );
    let bindings = proptest::collection::vec(binding, 0..3).prop_map(|bindings| {
        let bindings: Vec<_> = bindings
            .iter()
            .enumerate()
            .map(|(i, (class, script))| {
                let script = script
                    .map(|s| format!(", script_name = \"{s}\""))
                    .unwrap_or_default();
                format!("{{ name = \"D{i}\", class_name = \"{class}\"{script} }}")
            })
            .collect();
        format!(
            "durable_objects = {{ bindings = [{}] }}\n",
            bindings.join(", ")
        )
    });
    let worker = (migrations, bindings);
    (worker.clone(), worker).prop_map(|((m1, b1), (m2, b2))| {
        format!(
            "[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\nroutes = [\"/a\"]\n{m1}{b1}\
             [[worker]]\nname = \"b\"\ncomponent = \"app.wasm\"\nroutes = [\"/b\"]\n{m2}{b2}"
        )
    })
}

/// `text` with `edit` spliced in at a char boundary near `at`, and
/// `cut` chars removed there: broken TOML of every kind.
fn mangle(text: &str, at: usize, cut: usize, edit: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = at % (chars.len() + 1);
    let end = (at + cut).min(chars.len());
    let mut out: String = chars[..at].iter().collect();
    out.push_str(edit);
    out.extend(&chars[end..]);
    out
}

thread_local! {
    /// One project directory per test thread (each test runs on its
    /// own), removed when the thread ends.
    static FIXTURE: Fixture = Fixture::new();
}

fn check_config(f: &Fixture, text: &str) -> Result<(), TestCaseError> {
    match f.parse(text) {
        Ok(config) => {
            prop_assert!(!config.workers.is_empty());
            let mut names = std::collections::HashSet::new();
            let mut routes = std::collections::HashSet::new();
            for w in &config.workers {
                prop_assert!(names.insert(w.name.clone()), "{} twice", w.name);
                prop_assert!(!w.name.is_empty());
                for r in &w.routes {
                    prop_assert_eq!(&RoutePattern::parse(r.as_str()).unwrap(), r);
                    prop_assert!(routes.insert(r.as_str().to_owned()), "{} twice", r);
                }
                for c in &w.crons {
                    prop_assert!(CronSchedule::parse(&c.expression).is_ok());
                }
                let limits = &w.run.limits;
                prop_assert!(limits.cpu_ms > 0 && limits.wall_ms > 0 && limits.memory_mb > 0);
            }
            prop_assert!(config.server.max_instances >= 1);
            // Each Durable Object binding is a class its worker defines,
            // and no two classes share their storage.
            let mut namespaces = std::collections::HashSet::new();
            for w in &config.workers {
                for class in &w.run.durable_object_classes {
                    prop_assert!(namespaces.insert(class.namespace.clone()), "{:?}", class);
                    let prefix = format!("{}/", w.name);
                    prop_assert!(class.namespace.starts_with(&prefix), "{:?}", class);
                }
                for b in &w.run.durable_objects {
                    let definer = config.workers.iter().find(|d| d.name == b.worker);
                    prop_assert!(
                        definer.is_some_and(|d| d.run.durable_object_classes.contains(
                            &DurableObjectClass {
                                class_name: b.class_name.clone(),
                                namespace: b.namespace.clone(),
                                sqlite: b.sqlite,
                            }
                        )),
                        "{:?}",
                        b
                    );
                }
            }
        }
        Err(errors) => {
            prop_assert!(!errors.is_empty());
            let lines = text.split('\n').count();
            for e in errors.iter() {
                prop_assert!(e.line <= lines, "line {} of {}: {}", e.line, lines, e);
                if e.line > 0 {
                    let line = text.split('\n').nth(e.line - 1).unwrap();
                    prop_assert!(
                        e.column >= 1 && e.column <= line.chars().count() + 1,
                        "{}",
                        e
                    );
                }
                prop_assert!(!e.message.is_empty());
            }
            // In file order, errors without a position first.
            let places: Vec<_> = errors.iter().map(|e| (e.line, e.column)).collect();
            prop_assert!(places.is_sorted(), "{}", errors);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_cron_text_parses_or_is_refused(text in any::<String>()) {
        check_cron(&text)?;
    }

    #[test]
    fn cron_noise_parses_or_is_refused(text in cron_noise()) {
        check_cron(&text)?;
    }

    #[test]
    fn well_formed_crons_parse_with_or_without_seconds(
        five in five_fields(),
        seconds in cron_field(0, 59),
        extra in cron_field(0, 59),
    ) {
        let cron = CronSchedule::parse(&five).unwrap();
        prop_assert_eq!(&cron.expression, &five);
        let six = format!("{seconds} {five}");
        prop_assert!(CronSchedule::parse(&six).is_ok(), "{:?}", six);
        let seven = format!("{extra} {six}");
        prop_assert!(CronSchedule::parse(&seven).is_err());
        let four: Vec<_> = five.split(' ').skip(1).collect();
        prop_assert!(CronSchedule::parse(&four.join(" ")).is_err());
    }

    #[test]
    fn out_of_range_cron_values_are_refused(
        five in five_fields(),
        field in 0usize..5,
        over in 0u32..1000,
    ) {
        let limit = [60, 24, 32, 13, 8][field];
        let mut fields: Vec<String> = five.split(' ').map(str::to_owned).collect();
        fields[field] = (limit + over).to_string();
        let text = fields.join(" ");
        prop_assert!(CronSchedule::parse(&text).is_err(), "{:?}", text);
    }

    #[test]
    fn any_text_is_a_config_or_an_error(text in any::<String>()) {
        FIXTURE.with(|f| check_config(f, &text))?;
    }

    #[test]
    fn config_shaped_text_is_a_config_or_a_located_error(text in config_text()) {
        FIXTURE.with(|f| check_config(f, &text))?;
    }

    #[test]
    fn durable_object_configs_resolve_or_are_located_errors(text in durable_text()) {
        FIXTURE.with(|f| check_config(f, &text))?;
    }

    #[test]
    fn mangled_config_text_is_a_config_or_a_located_error(
        text in config_text(),
        at in any::<usize>(),
        cut in 0usize..4,
        edit in prop_oneof![
            Just(String::new()),
            "[\\[\\]{}=\"'.,#\n\\\\]",
            any::<char>().prop_map(String::from),
            Just("\u{e9}\u{1F600}".to_owned()),
        ],
    ) {
        FIXTURE.with(|f| check_config(f, &mangle(&text, at, cut, &edit)))?;
    }
}
