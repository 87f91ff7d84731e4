//! Durable Objects: `migrations` and `durable_objects.bindings`, as
//! Wrangler has them. A worker's migrations, applied in order (in each:
//! `new_classes`, `new_sqlite_classes`, `renamed_classes`,
//! `deleted_classes`), give the classes it defines. Each class is stored
//! under the name a migration created it with, so a rename keeps its
//! objects, and no later class may take that name. A binding names a class
//! of its own worker or of `script_name`'s, so bindings are resolved once
//! every worker's migrations are read.

use std::collections::{HashMap, HashSet};

use toml::Spanned;

use super::checks::is_class_name;
use crate::error::{Faults, WorkerKeys};
use crate::model::{DurableObjectBinding, DurableObjectClass};
use crate::raw::{RawMigration, RawRename};

/// A `durable_objects.bindings` entry before its class is looked up.
pub(super) struct DurableRef {
    /// `None` when the name is at fault (reported): the class is still
    /// checked, the binding left out.
    pub(super) binding: Option<String>,
    pub(super) class_name: Spanned<String>,
    pub(super) script_name: Option<Spanned<String>>,
}

/// A worker's Durable Object config, read but not resolved.
pub(super) struct Durable {
    pub(super) keys: WorkerKeys,
    pub(super) worker: String,
    pub(super) classes: Classes,
    pub(super) refs: Vec<DurableRef>,
}

/// What a worker's migrations leave.
#[derive(Default)]
pub(super) struct Classes {
    /// In creation order.
    live: Vec<Live>,
    /// What became of each name no live class has any more.
    gone: HashMap<String, Gone>,
    /// Each name a class was created with, and the migration that did
    /// (as messages name it): its objects are stored under it for good.
    created: HashMap<String, String>,
    tags: HashSet<String>,
    migrations: usize,
}

struct Live {
    name: String,
    created_as: String,
    sqlite: bool,
    /// The migration that gave the class its name, as messages name it.
    since: String,
}

/// `migration`: the migration that did it, as messages name it.
enum Gone {
    Renamed { to: String, migration: String },
    Deleted { migration: String },
}

impl Classes {
    fn live(&self, name: &str) -> Option<&Live> {
        self.live.iter().find(|class| class.name == name)
    }

    /// Why there is no class `name` to `verb`.
    fn missing(&self, name: &str, verb: &str) -> String {
        match self.gone.get(name) {
            Some(Gone::Renamed { to, migration }) => format!(
                "there is no class `{name}` to {verb}: migration {migration} renamed it to `{to}`"
            ),
            Some(Gone::Deleted { migration }) => {
                format!("there is no class `{name}` to {verb}: migration {migration} deleted it")
            }
            None => format!("there is no class `{name}` to {verb}"),
        }
    }

    /// What became of `name`, a rename's target, through later renames:
    /// the live class it is now, or the name it was deleted as and by
    /// which migration.
    fn now_named<'n>(&'n self, mut name: &'n str) -> Result<&'n str, (&'n str, &'n str)> {
        // Each rename leaves a name behind: at most one step per entry.
        for _ in 0..=self.gone.len() {
            match self.gone.get(name) {
                _ if self.live(name).is_some() => return Ok(name),
                Some(Gone::Renamed { to, .. }) => name = to,
                Some(Gone::Deleted { migration }) => return Err((name, migration)),
                None => break,
            }
        }
        unreachable!("a rename's target is live, renamed or deleted")
    }

    /// A tag no migration has yet.
    fn free_tag(&self) -> String {
        (1..)
            .map(|n| format!("v{n}"))
            .find(|tag| !self.tags.contains(tag))
            .expect("a free tag")
    }
}

/// The classes `migrations` leave, applied in order; a step at fault is
/// skipped (a class with a name at fault is still made, so that its
/// bindings are not at fault too).
pub(super) fn parse_migrations(
    keys: WorkerKeys,
    migrations: &[RawMigration],
    faults: &mut Faults,
) -> Classes {
    let mut apply = Apply {
        keys,
        classes: Classes::default(),
        faults,
    };
    apply.classes.migrations = migrations.len();
    for (i, m) in migrations.iter().enumerate() {
        let tag = m.tag.get_ref();
        // How messages name the migration: by its tag, else its place.
        let label = if tag.is_empty() {
            format!("#{}", i + 1)
        } else {
            format!("`{tag}`")
        };
        if tag.is_empty() {
            apply.fault(&m.tag, "migrations", "a migration's `tag` is empty".into());
        } else if !apply.classes.tags.insert(tag.clone()) {
            apply.fault(
                &m.tag,
                "migrations",
                format!("migration {label} is defined twice"),
            );
        }
        for name in &m.new_classes {
            apply.create(name, false, &label, "migrations.new_classes");
        }
        for name in &m.new_sqlite_classes {
            apply.create(name, true, &label, "migrations.new_sqlite_classes");
        }
        for rename in &m.renamed_classes {
            apply.rename(rename, &label);
        }
        for name in &m.deleted_classes {
            apply.delete(name, &label);
        }
    }
    apply.classes
}

/// Migrations being applied.
struct Apply<'a> {
    keys: WorkerKeys,
    classes: Classes,
    faults: &'a mut Faults,
}

impl Apply<'_> {
    fn fault(&mut self, at: &Spanned<String>, field: &str, message: String) {
        self.faults.push(self.keys.fault(at.span(), field, message));
    }

    /// A valid class name, else a fault.
    fn check_name(&mut self, name: &Spanned<String>, field: &str) {
        if !is_class_name(name.get_ref()) {
            self.fault(name, field, invalid_class_name(name.get_ref()));
        }
    }

    fn create(&mut self, name: &Spanned<String>, sqlite: bool, migration: &str, field: &str) {
        self.check_name(name, field);
        let text = name.get_ref();
        if let Some(class) = self.classes.live(text) {
            let message = format!(
                "class `{text}` already exists (since migration {})",
                class.since
            );
            return self.fault(name, field, message);
        }
        if let Some(created) = self.classes.created.get(text) {
            let message = match self.classes.gone.get(text) {
                Some(Gone::Deleted { migration }) => format!(
                    "class `{text}` was deleted by migration {migration}, and its objects are kept under that name: give the new class another name"
                ),
                _ => format!(
                    "a class was created as `{text}` by migration {created}, and its objects are stored under that name: give the new class another name"
                ),
            };
            return self.fault(name, field, message);
        }
        self.classes
            .created
            .insert(text.clone(), migration.to_owned());
        self.classes.gone.remove(text);
        self.classes.live.push(Live {
            name: text.clone(),
            created_as: text.clone(),
            sqlite,
            since: migration.to_owned(),
        });
    }

    fn rename(&mut self, rename: &RawRename, migration: &str) {
        let field = "migrations.renamed_classes";
        let (from, to) = (rename.from.get_ref(), rename.to.get_ref());
        let Some(i) = self.classes.live.iter().position(|c| c.name == *from) else {
            let message = self.classes.missing(from, "rename");
            return self.fault(&rename.from, field, message);
        };
        self.check_name(&rename.to, field);
        if to.is_empty() {
            // Reported, or standing in for a missing `to`.
            return;
        }
        if let Some(class) = self.classes.live(to) {
            let message = format!(
                "class `{to}` already exists (since migration {})",
                class.since
            );
            return self.fault(&rename.to, field, message);
        }
        let class = &mut self.classes.live[i];
        class.name = to.clone();
        class.since = migration.to_owned();
        self.classes.gone.remove(to);
        self.classes.gone.insert(
            from.clone(),
            Gone::Renamed {
                to: to.clone(),
                migration: migration.to_owned(),
            },
        );
    }

    fn delete(&mut self, name: &Spanned<String>, migration: &str) {
        let text = name.get_ref();
        let Some(i) = self.classes.live.iter().position(|c| c.name == *text) else {
            let message = self.classes.missing(text, "delete");
            return self.fault(name, "migrations.deleted_classes", message);
        };
        self.classes.live.remove(i);
        self.classes.gone.insert(
            text.clone(),
            Gone::Deleted {
                migration: migration.to_owned(),
            },
        );
    }
}

fn invalid_class_name(name: &str) -> String {
    format!(
        "`{name}` is not a valid class name (a letter, `_` or `$`, then letters, digits, `_`, `$`)"
    )
}

/// Each worker's bindings and classes, in the order of `workers`: each
/// binding's class looked up in the migrations of the worker that defines
/// it (`script_name`, a key of `names`, else its own). A binding at fault
/// is left out.
pub(super) fn resolve(
    workers: &[Durable],
    names: &HashMap<String, usize>,
    faults: &mut Faults,
) -> Vec<(Vec<DurableObjectBinding>, Vec<DurableObjectClass>)> {
    let field = "durable_objects.bindings";
    workers
        .iter()
        .map(|w| {
            let mut bindings = Vec::new();
            for r in &w.refs {
                let definer = match &r.script_name {
                    Some(script) => match names.get(script.get_ref()) {
                        Some(&i) => &workers[i],
                        None => {
                            faults.push(w.keys.fault(
                                script.span(),
                                field,
                                format!("no worker is named `{}`", script.get_ref()),
                            ));
                            continue;
                        }
                    },
                    None => w,
                };
                let class_name = r.class_name.get_ref();
                let Some(class) = definer.classes.live(class_name) else {
                    let message = unbound_class(definer, class_name);
                    faults.push(w.keys.fault(r.class_name.span(), field, message));
                    continue;
                };
                if let Some(binding) = &r.binding {
                    bindings.push(DurableObjectBinding {
                        binding: binding.clone(),
                        class_name: class_name.clone(),
                        worker: definer.worker.clone(),
                        namespace: namespace(&definer.worker, class),
                        sqlite: class.sqlite,
                    });
                }
            }
            let classes = w
                .classes
                .live
                .iter()
                .map(|class| DurableObjectClass {
                    class_name: class.name.clone(),
                    namespace: namespace(&w.worker, class),
                    sqlite: class.sqlite,
                })
                .collect();
            (bindings, classes)
        })
        .collect()
}

fn namespace(worker: &str, class: &Live) -> String {
    format!("{worker}/{}", class.created_as)
}

/// Why `definer` has no class `name` to bind, and what to write.
fn unbound_class(definer: &Durable, name: &str) -> String {
    let worker = &definer.worker;
    match definer.classes.gone.get(name) {
        Some(Gone::Renamed { to, migration }) => {
            let renamed = format!(
                "class `{name}` of worker `{worker}` was renamed to `{to}` by migration {migration}"
            );
            match definer.classes.now_named(to) {
                Ok(now) => format!("{renamed}: bind `{now}`"),
                Err((deleted, by)) => {
                    format!("{renamed}; `{deleted}` was deleted by migration {by}")
                }
            }
        }
        Some(Gone::Deleted { migration }) => {
            format!("class `{name}` of worker `{worker}` was deleted by migration {migration}")
        }
        None if !is_class_name(name) => invalid_class_name(name),
        None => {
            let step = format!(
                "{{ tag = \"{}\", new_sqlite_classes = [\"{name}\"] }}",
                definer.classes.free_tag()
            );
            let add = if definer.classes.migrations == 0 {
                format!("add `migrations = [{step}]` to worker `{worker}`")
            } else {
                format!("add `{step}` to the `migrations` of worker `{worker}`")
            };
            format!("worker `{worker}` defines no Durable Object class `{name}`: {add}")
        }
    }
}
