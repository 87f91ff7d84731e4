//! Durable Objects: `durable_objects.bindings`, `migrations` and
//! `[server] durable_object_idle_s`.

use std::time::Duration;

use super::*;

const WORKER: &str = "[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\n";

fn class(class_name: &str, namespace: &str, sqlite: bool) -> DurableObjectClass {
    DurableObjectClass {
        class_name: class_name.into(),
        namespace: namespace.into(),
        sqlite,
    }
}

fn binding(
    binding: &str,
    class_name: &str,
    worker: &str,
    namespace: &str,
    sqlite: bool,
) -> DurableObjectBinding {
    DurableObjectBinding {
        binding: binding.into(),
        class_name: class_name.into(),
        worker: worker.into(),
        namespace: namespace.into(),
        sqlite,
    }
}

#[test]
fn bindings_resolve_against_the_migrations_of_the_defining_worker() {
    let f = Fixture::new();
    let config = f
        .parse(
            "[server]\ndurable_object_idle_s = 90\n\
             [[worker]]\nname = \"app\"\ncomponent = \"app.wasm\"\nroutes = [\"/*\"]\n\
             durable_objects = { bindings = [\
               { name = \"COUNTER\", class_name = \"Tally\" }, \
               { name = \"ROOMS\", class_name = \"Room\", script_name = \"chat\" }, \
               { name = \"LIMITS\", class_name = \"Limiter\" }] }\n\
             migrations = [\
               { tag = \"v1\", new_sqlite_classes = [\"Counter\"], new_classes = [\"Old\", \"Limiter\"] }, \
               { tag = \"v2\", renamed_classes = [{ from = \"Counter\", to = \"Tally\" }], deleted_classes = [\"Old\"] }, \
               { tag = \"v3\", new_sqlite_classes = [\"Fresh\"] }]\n\
             [[worker]]\nname = \"chat\"\ncomponent = \"app.wasm\"\n\
             migrations = [{ tag = \"v1\", new_classes = [\"Room\"] }]\n",
        )
        .unwrap();
    let (app, chat) = (&config.workers[0].run, &config.workers[1].run);
    // The rename keeps the storage of the class as created; the deleted
    // class is gone, the others stay in creation order (in a migration,
    // `new_classes` before `new_sqlite_classes`).
    assert_eq!(
        app.durable_object_classes,
        [
            class("Limiter", "app/Limiter", false),
            class("Tally", "app/Counter", true),
            class("Fresh", "app/Fresh", true),
        ]
    );
    assert_eq!(
        app.durable_objects,
        [
            binding("COUNTER", "Tally", "app", "app/Counter", true),
            binding("ROOMS", "Room", "chat", "chat/Room", false),
            binding("LIMITS", "Limiter", "app", "app/Limiter", false),
        ]
    );
    assert_eq!(
        chat.durable_object_classes,
        [class("Room", "chat/Room", false)]
    );
    assert!(chat.durable_objects.is_empty());
    assert_eq!(config.server.durable_object_idle, Duration::from_secs(90));
    for w in &config.workers {
        assert_eq!(w.run.durable_object_idle, Duration::from_secs(90));
    }

    let plain = f.parse(WORKER).unwrap();
    let run = &plain.workers[0].run;
    assert!(run.durable_objects.is_empty() && run.durable_object_classes.is_empty());
    assert_eq!(run.durable_object_idle, Duration::from_secs(30));
    assert_eq!(plain.server.durable_object_idle, Duration::from_secs(30));
}

#[test]
fn the_table_forms_read_as_the_inline_ones() {
    let f = Fixture::new();
    let inline = f
        .parse(&format!(
            "{WORKER}durable_objects = {{ bindings = [{{ name = \"A\", class_name = \"Room\" }}, \
             {{ name = \"B\", class_name = \"Hall\", script_name = \"a\" }}] }}\n\
             migrations = [{{ tag = \"v1\", new_classes = [\"Room\"] }}, \
             {{ tag = \"v2\", new_sqlite_classes = [\"Hall\"] }}]\n"
        ))
        .unwrap();
    let tables = f
        .parse(&format!(
            "{WORKER}[[worker.durable_objects.bindings]]\nname = \"A\"\nclass_name = \"Room\"\n\
             [[worker.durable_objects.bindings]]\nname = \"B\"\nclass_name = \"Hall\"\nscript_name = \"a\"\n\
             [[worker.migrations]]\ntag = \"v1\"\nnew_classes = [\"Room\"]\n\
             [[worker.migrations]]\ntag = \"v2\"\nnew_sqlite_classes = [\"Hall\"]\n"
        ))
        .unwrap();
    let table = f
        .parse(&format!(
            "{WORKER}[worker.durable_objects]\nbindings = [{{ name = \"A\", class_name = \"Room\" }}, \
             {{ name = \"B\", class_name = \"Hall\", script_name = \"a\" }}]\n\
             [[worker.migrations]]\ntag = \"v1\"\nnew_classes = [\"Room\"]\n\
             [[worker.migrations]]\ntag = \"v2\"\nnew_sqlite_classes = [\"Hall\"]\n"
        ))
        .unwrap();
    for other in [&tables, &table] {
        assert_eq!(
            other.workers[0].run.durable_objects,
            inline.workers[0].run.durable_objects
        );
        assert_eq!(
            other.workers[0].run.durable_object_classes,
            inline.workers[0].run.durable_object_classes
        );
    }
    assert_eq!(
        inline.workers[0].run.durable_objects,
        [
            binding("A", "Room", "a", "a/Room", false),
            binding("B", "Hall", "a", "a/Hall", true),
        ]
    );
}

/// The error of `WORKER` and `lines`, the lines after it.
fn error_after_worker(f: &Fixture, lines: &str) -> String {
    f.error(&format!("{WORKER}{lines}"))
}

#[test]
fn binding_errors() {
    let f = Fixture::new();
    let cases = [
        (
            "durable_objects = { bindings = [{ name = \"1X\", class_name = \"C\" }] }\nmigrations = [{ tag = \"v1\", new_classes = [\"C\"] }]\n",
            "isola.toml:4:42: worker[0].durable_objects.bindings: `1X` is not a valid binding name (a letter or `_`, then letters, digits, `_`)",
        ),
        (
            "vars = { C = \"x\" }\ndurable_objects = { bindings = [{ name = \"C\", class_name = \"C\" }] }\nmigrations = [{ tag = \"v1\", new_classes = [\"C\"] }]\n",
            "isola.toml:5:42: worker[0].durable_objects.bindings: `C` is already bound as a var",
        ),
        (
            "kv_namespaces = [{ binding = \"C\", id = \"c\" }]\ndurable_objects = { bindings = [{ name = \"C\", class_name = \"C\" }] }\nmigrations = [{ tag = \"v1\", new_classes = [\"C\"] }]\n",
            "isola.toml:5:42: worker[0].durable_objects.bindings: `C` is already bound as a KV namespace",
        ),
        (
            "durable_objects = { bindings = [{ name = \"C\", class_name = \"C\" }, { name = \"C\", class_name = \"C\" }] }\nmigrations = [{ tag = \"v1\", new_classes = [\"C\"] }]\n",
            "isola.toml:4:76: worker[0].durable_objects.bindings: `C` is already bound as a Durable Object namespace",
        ),
        (
            "durable_objects = { bindings = [{ class_name = \"C\" }] }\nmigrations = [{ tag = \"v1\", new_classes = [\"C\"] }]\n",
            "isola.toml:4:33: missing field `name`",
        ),
        (
            "durable_objects = { bindings = [{ name = \"C\" }] }\n",
            "isola.toml:4:33: missing field `class_name`",
        ),
        (
            "durable_objects = { bindings = [{ name = \"C\", class_name = \"C\", script_name = \"nobody\" }] }\n",
            "isola.toml:4:79: worker[0].durable_objects.bindings: no worker is named `nobody`",
        ),
        (
            "durable_objects = { bindings = [{ name = \"C\", class_name = \"Counter\" }] }\n",
            "isola.toml:4:60: worker[0].durable_objects.bindings: worker `a` defines no Durable Object class `Counter`: add `migrations = [{ tag = \"v1\", new_sqlite_classes = [\"Counter\"] }]` to worker `a`",
        ),
        (
            "durable_objects = { bindings = [{ name = \"C\", class_name = \"Counter\" }] }\nmigrations = [{ tag = \"v1\", new_classes = [\"A\"] }, { tag = \"v2\", new_classes = [\"B\"] }]\n",
            "isola.toml:4:60: worker[0].durable_objects.bindings: worker `a` defines no Durable Object class `Counter`: add `{ tag = \"v3\", new_sqlite_classes = [\"Counter\"] }` to the `migrations` of worker `a`",
        ),
        (
            "durable_objects = { bindings = [{ name = \"C\", class_name = \"A\" }] }\nmigrations = [{ tag = \"v1\", new_classes = [\"A\"] }, { tag = \"v2\", deleted_classes = [\"A\"] }]\n",
            "isola.toml:4:60: worker[0].durable_objects.bindings: class `A` of worker `a` was deleted by migration `v2`",
        ),
        (
            "durable_objects = { bindings = [{ name = \"C\", class_name = \"A\" }] }\nmigrations = [{ tag = \"v1\", new_classes = [\"A\"] }, { tag = \"v2\", renamed_classes = [{ from = \"A\", to = \"B\" }] }]\n",
            "isola.toml:4:60: worker[0].durable_objects.bindings: class `A` of worker `a` was renamed to `B` by migration `v2`: bind `B`",
        ),
        (
            "durable_objects = { bindings = [{ name = \"C\", class_name = \"A\" }] }\nmigrations = [{ tag = \"v1\", new_classes = [\"A\"] }, { tag = \"v2\", renamed_classes = [{ from = \"A\", to = \"B\" }] }, { tag = \"v3\", deleted_classes = [\"B\"] }]\n",
            "isola.toml:4:60: worker[0].durable_objects.bindings: class `A` of worker `a` was renamed to `B` by migration `v2`; `B` was deleted by migration `v3`",
        ),
        (
            "durable_objects = { bindings = [{ name = \"C\", class_name = \"my-class\" }] }\n",
            "isola.toml:4:60: worker[0].durable_objects.bindings: `my-class` is not a valid class name (a letter, `_` or `$`, then letters, digits, `_`, `$`)",
        ),
        (
            // The class is looked up in `script_name`'s migrations, not in
            // the binding's worker.
            "durable_objects = { bindings = [{ name = \"C\", class_name = \"A\", script_name = \"b\" }] }\nmigrations = [{ tag = \"v1\", new_classes = [\"A\"] }]\n[[worker]]\nname = \"b\"\ncomponent = \"app.wasm\"\n",
            "isola.toml:4:60: worker[0].durable_objects.bindings: worker `b` defines no Durable Object class `A`: add `migrations = [{ tag = \"v1\", new_sqlite_classes = [\"A\"] }]` to worker `b`",
        ),
    ];
    for (lines, expected) in cases {
        assert_eq!(error_after_worker(&f, lines), expected, "{lines}");
    }
    let unknown = error_after_worker(
        &f,
        "durable_objects = { bindings = [{ name = \"C\", class_name = \"C\", environment = \"prod\" }] }\nmigrations = [{ tag = \"v1\", new_classes = [\"C\"] }]\n",
    );
    assert!(
        unknown.starts_with("isola.toml:4:65: unknown field `environment`, expected one of `name`, `class_name`, `script_name`"),
        "{unknown}"
    );
}

#[test]
fn migration_errors() {
    let f = Fixture::new();
    let cases = [
        (
            "migrations = [{ tag = \"v1\", new_classes = [\"A\"] }, { tag = \"v1\", new_classes = [\"B\"] }]\n",
            "isola.toml:4:60: worker[0].migrations: migration `v1` is defined twice",
        ),
        (
            "migrations = [{ tag = \"\", new_classes = [\"A\"] }]\n",
            "isola.toml:4:23: worker[0].migrations: a migration's `tag` is empty",
        ),
        (
            "migrations = [{ new_classes = [\"A\"] }]\n",
            "isola.toml:4:15: missing field `tag`",
        ),
        (
            "migrations = [{ tag = \"v1\", new_classes = [\"A\"] }, { tag = \"v2\", new_sqlite_classes = [\"A\"] }]\n",
            "isola.toml:4:88: worker[0].migrations.new_sqlite_classes: class `A` already exists (since migration `v1`)",
        ),
        (
            "migrations = [{ tag = \"v1\", new_classes = [\"A\", \"A\"] }]\n",
            "isola.toml:4:49: worker[0].migrations.new_classes: class `A` already exists (since migration `v1`)",
        ),
        (
            // A tagless migration is named by its place.
            "migrations = [{ tag = \"v1\", new_classes = [\"A\"] }, { tag = \"\", renamed_classes = [{ from = \"A\", to = \"B\" }] }, { tag = \"v3\", new_classes = [\"B\"] }]\n",
            "isola.toml:4:60: worker[0].migrations: a migration's `tag` is empty\n\
             isola.toml:4:141: worker[0].migrations.new_classes: class `B` already exists (since migration #2)",
        ),
        (
            "migrations = [{ tag = \"v1\", new_classes = [\"A\"] }, { tag = \"v2\", deleted_classes = [\"A\"] }, { tag = \"v3\", new_classes = [\"A\"] }]\n",
            "isola.toml:4:122: worker[0].migrations.new_classes: class `A` was deleted by migration `v2`, and its objects are kept under that name: give the new class another name",
        ),
        (
            "migrations = [{ tag = \"v1\", new_classes = [\"A\"] }, { tag = \"v2\", renamed_classes = [{ from = \"A\", to = \"B\" }] }, { tag = \"v3\", new_sqlite_classes = [\"A\"] }]\n",
            "isola.toml:4:150: worker[0].migrations.new_sqlite_classes: a class was created as `A` by migration `v1`, and its objects are stored under that name: give the new class another name",
        ),
        (
            "migrations = [{ tag = \"v1\", new_classes = [\"1A\", \"$ok\", \"_ok2\"] }]\n",
            "isola.toml:4:44: worker[0].migrations.new_classes: `1A` is not a valid class name (a letter, `_` or `$`, then letters, digits, `_`, `$`)",
        ),
        (
            "migrations = [{ tag = \"v1\", renamed_classes = [{ from = \"X\", to = \"Y\" }] }]\n",
            "isola.toml:4:57: worker[0].migrations.renamed_classes: there is no class `X` to rename",
        ),
        (
            "migrations = [{ tag = \"v1\", new_classes = [\"A\"] }, { tag = \"v2\", renamed_classes = [{ from = \"A\", to = \"B\" }, { from = \"A\", to = \"C\" }] }]\n",
            "isola.toml:4:120: worker[0].migrations.renamed_classes: there is no class `A` to rename: migration `v2` renamed it to `B`",
        ),
        (
            "migrations = [{ tag = \"v1\", new_classes = [\"A\", \"B\"] }, { tag = \"v2\", renamed_classes = [{ from = \"A\", to = \"B\" }] }]\n",
            "isola.toml:4:109: worker[0].migrations.renamed_classes: class `B` already exists (since migration `v1`)",
        ),
        (
            "migrations = [{ tag = \"v1\", new_classes = [\"A\"] }, { tag = \"v2\", renamed_classes = [{ from = \"A\", to = \"b-c\" }] }]\n",
            "isola.toml:4:104: worker[0].migrations.renamed_classes: `b-c` is not a valid class name (a letter, `_` or `$`, then letters, digits, `_`, `$`)",
        ),
        (
            // The rename is not made: the binding of `A` is not at fault.
            "migrations = [{ tag = \"v1\", new_classes = [\"A\"] }, { tag = \"v2\", renamed_classes = [{ from = \"A\" }] }]\n\
             durable_objects = { bindings = [{ name = \"C\", class_name = \"A\" }] }\n",
            "isola.toml:4:85: missing field `to`",
        ),
        (
            "migrations = [{ tag = \"v1\", deleted_classes = [\"Ghost\"] }]\n",
            "isola.toml:4:48: worker[0].migrations.deleted_classes: there is no class `Ghost` to delete",
        ),
        (
            "migrations = [{ tag = \"v1\", new_classes = [\"A\"] }, { tag = \"v2\", deleted_classes = [\"A\", \"A\"] }]\n",
            "isola.toml:4:90: worker[0].migrations.deleted_classes: there is no class `A` to delete: migration `v2` deleted it",
        ),
        (
            "[server]\ndurable_object_idle_s = 0\n",
            "isola.toml:5:25: server.durable_object_idle_s: must be at least 1",
        ),
        (
            "[server]\ndurable_object_idle_s = 3601\n",
            "isola.toml:5:25: server.durable_object_idle_s: must be at most 3600",
        ),
    ];
    for (lines, expected) in cases {
        assert_eq!(error_after_worker(&f, lines), expected, "{lines}");
    }
    let unknown = error_after_worker(
        &f,
        "migrations = [{ tag = \"v1\", transferred_classes = [{ from = \"A\", from_script = \"b\", to = \"A\" }] }]\n",
    );
    assert!(
        unknown.starts_with("isola.toml:4:29: unknown field `transferred_classes`, expected one of `tag`, `new_classes`, `new_sqlite_classes`, `renamed_classes`, `deleted_classes`"),
        "{unknown}"
    );
}

#[test]
fn every_durable_object_error_is_reported_in_one_load() {
    let f = Fixture::new();
    let text = "\
[server]
durable_object_idle_s = 7200
[[worker]]
name = \"a\"
component = \"app.wasm\"
routes = [\"/a/*\"]
vars = { COUNTER = \"1\" }
durable_objects = { bindings = [{ name = \"COUNTER\", class_name = \"Counter\" }, { name = \"ROOMS\", class_name = \"Room\", script_name = \"chat\" }, { name = \"GONE\", class_name = \"Old\" }] }
migrations = [
  { tag = \"v1\", new_sqlite_classes = [\"Counter\", \"Old\", \"2nd\"] },
  { tag = \"v2\", deleted_classes = [\"Old\", \"Nope\"] },
  { tag = \"v2\", new_classes = [\"Counter\"] },
]
[[worker]]
name = \"b\"
component = \"app.wasm\"
routes = [\"/b/*\"]
[[worker.durable_objects.bindings]]
name = \"X\"
class_name = \"Ghost\"
script_name = \"a\"
[[worker.migrations]]
new_classes = [\"B\"]
[[worker.migrations]]
tag = \"v2\"
new_classes = [\"B\"]
";
    let path = f.dir.path().join("isola.toml");
    std::fs::write(&path, text).unwrap();
    let errors = Config::load(&path)
        .unwrap_err()
        .to_string()
        .replace(&path.display().to_string(), "isola.toml");
    let expected = [
        "isola.toml:2:25: server.durable_object_idle_s: must be at most 3600",
        "isola.toml:8:42: worker[0].durable_objects.bindings: `COUNTER` is already bound as a var",
        "isola.toml:8:132: worker[0].durable_objects.bindings: no worker is named `chat`",
        "isola.toml:8:172: worker[0].durable_objects.bindings: class `Old` of worker `a` was deleted by migration `v2`",
        "isola.toml:10:57: worker[0].migrations.new_sqlite_classes: `2nd` is not a valid class name (a letter, `_` or `$`, then letters, digits, `_`, `$`)",
        "isola.toml:11:43: worker[0].migrations.deleted_classes: there is no class `Nope` to delete",
        "isola.toml:12:11: worker[0].migrations: migration `v2` is defined twice",
        "isola.toml:12:32: worker[0].migrations.new_classes: class `Counter` already exists (since migration `v1`)",
        "isola.toml:20:14: worker[1].durable_objects.bindings: worker `a` defines no Durable Object class `Ghost`: add `{ tag = \"v3\", new_sqlite_classes = [\"Ghost\"] }` to the `migrations` of worker `a`",
        // A missing key in a `[[...]]` table stops nothing after it.
        "isola.toml:22:1: missing field `tag`",
        "isola.toml:26:16: worker[1].migrations.new_classes: class `B` already exists (since migration #1)",
    ];
    assert_eq!(errors.lines().collect::<Vec<_>>(), expected, "{errors}");
}
