//! Wrangler's build keys of a worker: how a JavaScript worker (`main`) is
//! bundled — `alias`, `define` and `rules` — and `compatibility_date` /
//! `compatibility_flags`, which are checked and otherwise change nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::warm_up::{self, WarmUpRequest};

/// How esbuild bundles a JavaScript worker: Wrangler's `alias`, `define`
/// and `rules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsBuild {
    /// Bare module name → an absolute file path, or another module name.
    pub alias: BTreeMap<String, String>,
    /// Global name (or member chain) → the JavaScript expression that
    /// replaces it at build time.
    pub define: BTreeMap<String, String>,
    /// Which imported files load as what, first match wins: the worker's own
    /// rules, then Wrangler's defaults, with `fallthrough` applied.
    pub rules: Vec<ModuleRule>,
    /// The directory rule globs are relative to: the config file's; empty
    /// for the current directory.
    pub root: PathBuf,
    /// `warm_up`: requests run through the worker's `fetch` inside the
    /// build's snapshot step, in order (see [`crate::warm_up`]).
    pub warm_up: Vec<WarmUpRequest>,
}

impl Default for JsBuild {
    fn default() -> Self {
        JsBuild {
            alias: BTreeMap::new(),
            define: BTreeMap::new(),
            rules: default_rules(),
            root: PathBuf::new(),
            warm_up: Vec::new(),
        }
    }
}

/// What an imported file becomes (Wrangler's module types, less
/// `CompiledWasm`: StarlingMonkey has no WebAssembly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModuleType {
    /// JavaScript, whatever the file's extension.
    ESModule,
    CommonJS,
    /// The file's text: a string default export.
    Text,
    /// The file's bytes: an `ArrayBuffer` default export.
    Data,
}

impl ModuleType {
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleType::ESModule => "ESModule",
            ModuleType::CommonJS => "CommonJS",
            ModuleType::Text => "Text",
            ModuleType::Data => "Data",
        }
    }
}

/// One effective `rules` entry: files matching any of `globs` load as
/// `module_type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleRule {
    pub module_type: ModuleType,
    /// `*`, `**`, `?` and `{a,b}`, matched against the file's path relative
    /// to [`JsBuild::root`].
    pub globs: Vec<String>,
}

/// Wrangler's default rules (less its `CompiledWasm` one).
pub fn default_rules() -> Vec<ModuleRule> {
    let rule = |module_type, globs: &[&str]| ModuleRule {
        module_type,
        globs: globs.iter().map(|g| (*g).to_owned()).collect(),
    };
    vec![
        rule(ModuleType::Text, &["**/*.txt", "**/*.html", "**/*.sql"]),
        rule(ModuleType::Data, &["**/*.bin"]),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    r#type: Spanned<String>,
    /// Required, as every other required key of `isola.toml` is a string
    /// (see `parse::document`); missing is as empty.
    globs: Option<Spanned<Vec<Spanned<String>>>>,
    fallthrough: Option<bool>,
}

/// The build keys as written in a `[[worker]]` table.
pub(crate) struct RawJsBuild {
    pub alias: Option<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    pub define: Option<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    pub rules: Option<Spanned<Vec<Spanned<RawRule>>>>,
    pub warm_up: Option<Spanned<Vec<Spanned<toml::Value>>>>,
}

/// A build-key error: where, which key (below `worker[i].`), what.
pub(crate) type KeyError = (Range<usize>, String, String);

impl RawJsBuild {
    /// The keys written, and where.
    fn written(&self) -> impl Iterator<Item = (Range<usize>, &'static str)> {
        [
            ("alias", self.alias.as_ref().map(Spanned::span)),
            ("define", self.define.as_ref().map(Spanned::span)),
            ("rules", self.rules.as_ref().map(Spanned::span)),
            ("warm_up", self.warm_up.as_ref().map(Spanned::span)),
        ]
        .into_iter()
        .filter_map(|(key, span)| span.map(|s| (s, key)))
    }

    /// Validate against the config's directory `base`; `javascript`: the
    /// worker has a `main` module (the keys mean nothing for a component).
    /// Every alias and define is checked apart; the rules stop at their
    /// first error, since each rule's meaning depends on those before it.
    pub(crate) fn parse(self, base: &Path, javascript: bool) -> (JsBuild, Vec<KeyError>) {
        let mut build = JsBuild {
            root: base.to_owned(),
            ..JsBuild::default()
        };
        if !javascript {
            let errors = self.written().map(|(span, key)| {
                let what = if key == "warm_up" {
                    "runs requests through a JavaScript worker's fetch when it is built"
                } else {
                    "changes how a JavaScript worker is bundled"
                };
                (
                    span,
                    key.into(),
                    format!("`{key}` {what}; this worker has a `component`, not a `main` module"),
                )
            });
            return (build, errors.collect());
        }
        let mut errors = Vec::new();
        for (name, value) in self.alias.map(Spanned::into_inner).unwrap_or_default() {
            let key = format!("alias.{}", toml_key(&name));
            let span = value.span();
            let Some(target) = value.get_ref().as_str() else {
                errors.push((
                    span,
                    key,
                    "must be a string: a file (\"./src/shim.js\") or a package name".into(),
                ));
                continue;
            };
            match alias_target(&name, target, base) {
                Ok(target) => {
                    build.alias.insert(name, target);
                }
                Err(m) => errors.push((span, key, m)),
            }
        }
        for (name, value) in self.define.map(Spanned::into_inner).unwrap_or_default() {
            let key = format!("define.{}", toml_key(&name));
            let span = value.span();
            let Some(expression) = value.get_ref().as_str() else {
                errors.push((
                    span,
                    key,
                    format!(
                        "must be a string holding a JavaScript expression, such as \"{}\" or \"\\\"text\\\"\"",
                        value.get_ref()
                    ),
                ));
                continue;
            };
            match check_define(&name, expression) {
                Ok(()) => {
                    build.define.insert(name, expression.to_owned());
                }
                Err(m) => errors.push((span, key, m)),
            }
        }
        let rules = self.rules.map(Spanned::into_inner).unwrap_or_default();
        match effective_rules(&rules) {
            Ok(rules) => build.rules = rules,
            Err(error) => errors.push(error),
        }
        let (requests, warm_up_errors) = warm_up::parse(self.warm_up);
        build.warm_up = requests;
        errors.extend(warm_up_errors);
        (build, errors)
    }
}

/// A key as it is written in TOML, quoted when it has to be.
fn toml_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

/// Check one `alias` entry and resolve its target: a path (starting with
/// `.` or `/`) becomes absolute, as esbuild would otherwise resolve it
/// against its working directory rather than the config file's; a package
/// name stays as written, as in Wrangler.
pub fn alias_target(name: &str, target: &str, base: &Path) -> Result<String, String> {
    let bare = !name.is_empty()
        && !name.starts_with(['.', '/'])
        && !name.contains('\\')
        && !name.chars().any(char::is_whitespace);
    if !bare {
        return Err(format!(
            "`{name}` is not a module name: only bare names such as `some-module` or `@scope/pkg` can be aliased"
        ));
    }
    if target.is_empty() || target.chars().any(char::is_whitespace) {
        return Err(format!(
            "`{target}` is neither a file (\"./src/shim.js\") nor a package name"
        ));
    }
    if !(target.starts_with('.') || target.starts_with('/')) {
        return Ok(target.to_owned());
    }
    // `base` is relative when the config file's path is.
    let path: PathBuf = std::path::absolute(base.join(target))
        .map_err(|e| format!("cannot resolve {target}: {e}"))?
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect();
    // esbuild resolves the path as an import: the file, a directory, or the
    // file with a module extension added.
    let found = path.exists()
        || ["js", "mjs", "cjs", "ts", "mts", "cts", "jsx", "tsx", "json"]
            .iter()
            .any(|ext| PathBuf::from(format!("{}.{ext}", path.display())).is_file());
    if !found {
        return Err(format!("alias target not found: {}", path.display()));
    }
    Ok(path.display().to_string())
}

/// Check one `define` entry. The key must be what esbuild can replace: a
/// global name or a member chain (`process.env.MODE`). Whether the value is
/// an expression esbuild accepts (a JSON value, a name, a string literal)
/// is left to esbuild, which the build reports under the key's name.
pub fn check_define(name: &str, expression: &str) -> Result<(), String> {
    let identifier = |part: &str| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    if !name.split('.').all(identifier) {
        return Err(format!(
            "`{name}` is not a name esbuild can replace (a global such as `DEBUG` or a member chain such as `process.env.MODE`)"
        ));
    }
    if expression.trim().is_empty() {
        return Err(
            "an empty expression; write \"undefined\" or \"\\\"\\\"\" for an empty string".into(),
        );
    }
    Ok(())
}

/// The worker's rules followed by Wrangler's defaults, as Wrangler orders
/// them: the first rule of a type without `fallthrough = true` is the last
/// of that type that applies. A default after it is dropped (a rule of your
/// own replaces the default of its type); one of the worker's own would
/// never apply, and is an error unless the rule that ends its type says
/// `fallthrough = false` (Wrangler's way of silencing its warning).
fn effective_rules(raw: &[Spanned<RawRule>]) -> Result<Vec<ModuleRule>, KeyError> {
    let mut rules = Vec::new();
    // Types ended so far, and by whether the rule ending them said
    // `fallthrough = false`.
    let mut ended: BTreeMap<ModuleType, (usize, bool)> = BTreeMap::new();
    for (i, rule) in raw.iter().enumerate() {
        let rule_span = rule.span();
        let rule = rule.get_ref();
        let key = format!("rules[{i}]");
        let module_type = match rule.r#type.get_ref().as_str() {
            "ESModule" => ModuleType::ESModule,
            "CommonJS" => ModuleType::CommonJS,
            "Text" => ModuleType::Text,
            "Data" => ModuleType::Data,
            "CompiledWasm" => {
                return Err((
                    rule.r#type.span(),
                    format!("{key}.type"),
                    "`CompiledWasm` modules are not supported: StarlingMonkey, the engine of JavaScript workers, has no WebAssembly".into(),
                ));
            }
            other => {
                return Err((
                    rule.r#type.span(),
                    format!("{key}.type"),
                    format!("`{other}` is not a module type (Text, Data, ESModule, CommonJS)"),
                ));
            }
        };
        let rule_globs = match &rule.globs {
            Some(globs) if !globs.get_ref().is_empty() => globs.get_ref(),
            globs => {
                return Err((
                    globs.as_ref().map_or(rule_span, Spanned::span),
                    format!("{key}.globs"),
                    "no globs: list the files this rule applies to, such as \"**/*.md\"".into(),
                ));
            }
        };
        let mut globs = Vec::new();
        for glob in rule_globs {
            check_glob(glob.get_ref()).map_err(|m| (glob.span(), format!("{key}.globs"), m))?;
            globs.push(glob.get_ref().clone());
        }
        if let Some(&(earlier, silenced)) = ended.get(&module_type) {
            if silenced {
                continue;
            }
            return Err((
                rule.r#type.span(),
                key,
                format!(
                    "this rule never applies: rules[{earlier}] is also `{}`; give rules[{earlier}] `fallthrough = true` to use both",
                    module_type.as_str()
                ),
            ));
        }
        if rule.fallthrough != Some(true) {
            ended.insert(module_type, (i, rule.fallthrough == Some(false)));
        }
        rules.push(ModuleRule { module_type, globs });
    }
    let own: BTreeSet<ModuleType> = ended.keys().copied().collect();
    rules.extend(
        default_rules()
            .into_iter()
            .filter(|rule| !own.contains(&rule.module_type)),
    );
    Ok(rules)
}

/// Globs are matched by the build script's small matcher: refuse what it
/// would read differently from a shell.
fn check_glob(glob: &str) -> Result<(), String> {
    if glob.trim().is_empty() {
        return Err("an empty glob".into());
    }
    if glob.starts_with('/') || glob.starts_with("./") || glob.contains('\\') {
        return Err(format!(
            "`{glob}` must be relative to the config file's directory, without `./`, such as \"**/*.md\" or \"src/pages/*.html\""
        ));
    }
    if glob.contains('[') {
        return Err(format!(
            "`{glob}`: character classes (`[...]`) are not supported; use `{{a,b}}`, `*`, `?` or `**`"
        ));
    }
    let depth = glob.chars().try_fold(0i32, |depth, c| {
        let depth = depth + i32::from(c == '{') - i32::from(c == '}');
        (depth >= 0).then_some(depth)
    });
    if depth != Some(0) {
        return Err(format!("`{glob}` has unbalanced braces"));
    }
    Ok(())
}

/// `compatibility_date = "2024-09-23"` (or the TOML date 2024-09-23): a
/// real calendar date, as Wrangler requires.
pub(crate) fn parse_date(value: &toml::Value) -> Result<String, String> {
    let text = match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Datetime(datetime) if datetime.time.is_none() && datetime.offset.is_none() => {
            datetime.to_string()
        }
        other => {
            return Err(format!(
                "`{other}` is not a date such as \"2024-09-23\" (YYYY-MM-DD)"
            ));
        }
    };
    let fields: Vec<&str> = text.split('-').collect();
    let number = |field: &str, digits: usize| {
        (field.len() == digits && field.bytes().all(|b| b.is_ascii_digit()))
            .then(|| field.parse::<u32>().ok())
            .flatten()
    };
    let parsed = match fields.as_slice() {
        [y, m, d] => number(y, 4).zip(number(m, 2)).zip(number(d, 2)),
        _ => None,
    };
    let valid = parsed.is_some_and(|((year, month), day)| {
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => 0,
        };
        (1..=days).contains(&day)
    });
    if !valid {
        return Err(format!(
            "`{text}` is not a date such as \"2024-09-23\" (YYYY-MM-DD)"
        ));
    }
    Ok(text)
}

/// `compatibility_flags`: names such as `nodejs_compat`.
pub(crate) fn check_flag(flag: &str) -> Result<(), String> {
    let valid = !flag.is_empty()
        && flag
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{flag}` is not a compatibility flag (lowercase letters, digits, `_`, such as `nodejs_compat`)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    /// A project with `src/worker.js` and `src/shim.js`; parses a config
    /// whose one worker is `[[worker]] name = "js" main = "src/worker.js"`
    /// followed by `keys`.
    struct Project(tempfile::TempDir);

    impl Project {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("src")).unwrap();
            for file in ["src/worker.js", "src/shim.js", "app.wasm"] {
                std::fs::write(dir.path().join(file), "").unwrap();
            }
            Project(dir)
        }
        fn parse(&self, keys: &str) -> Result<Config, String> {
            let file = self.0.path().join("isola.toml");
            let text = format!("[[worker]]\nname = \"js\"\nmain = \"src/worker.js\"\n{keys}");
            Config::parse(&file, &text).map_err(|e| {
                e.to_string()
                    .replace(&self.0.path().display().to_string(), "DIR")
            })
        }
        fn error(&self, keys: &str) -> String {
            self.parse(keys).expect_err(keys)
        }
    }

    #[test]
    fn wrangler_build_keys_parse() {
        let project = Project::new();
        let config = project
            .parse(concat!(
                "alias = { \"some-module\" = \"./src/shim.js\", \"old-pkg\" = \"new-pkg\", \"@scope/x\" = \"../outside\" }\n",
                "define = { DEBUG = \"false\", \"process.env.MODE\" = \"\\\"prod\\\"\" }\n",
                "rules = [{ type = \"Text\", globs = [\"**/*.md\"], fallthrough = true }, { type = \"Data\", globs = [\"**/*.dat\"] }]\n",
                "compatibility_date = \"2024-09-23\"\n",
                "compatibility_flags = [\"nodejs_compat\"]\n",
            ))
            .map(|_| ())
            .expect_err("`../outside` does not exist");
        assert!(config.contains("alias target not found: "), "{config}");

        std::fs::create_dir(project.0.path().join("lib")).unwrap();
        let config = project
            .parse(concat!(
                "alias = { \"some-module\" = \"./src/shim\", \"old-pkg\" = \"new-pkg\", \"@scope/x\" = \"./lib\" }\n",
                "define = { DEBUG = \"false\", \"process.env.MODE\" = \"\\\"prod\\\"\" }\n",
                "rules = [{ type = \"Text\", globs = [\"**/*.md\"], fallthrough = true }, { type = \"Data\", globs = [\"**/*.dat\"] }]\n",
                "compatibility_date = 2024-09-23\n",
                "compatibility_flags = [\"nodejs_compat\", \"streams_enable_constructors\"]\n",
            ))
            .unwrap();
        let w = &config.workers[0];
        let root = project.0.path();
        // Paths become absolute (esbuild would resolve them against its
        // working directory); package names stay.
        assert_eq!(
            w.js_build.alias,
            BTreeMap::from([
                (
                    "@scope/x".to_owned(),
                    root.join("lib").display().to_string()
                ),
                ("old-pkg".to_owned(), "new-pkg".to_owned()),
                (
                    "some-module".to_owned(),
                    root.join("src/shim").display().to_string()
                ),
            ])
        );
        assert_eq!(w.js_build.define["DEBUG"], "false");
        assert_eq!(w.js_build.define["process.env.MODE"], "\"prod\"");
        assert_eq!(w.js_build.root, root);
        // The Text rule falls through to the default Text rule; the Data
        // rule replaces the default Data rule.
        let rules: Vec<(ModuleType, Vec<&str>)> = w
            .js_build
            .rules
            .iter()
            .map(|r| (r.module_type, r.globs.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            rules,
            [
                (ModuleType::Text, vec!["**/*.md"]),
                (ModuleType::Data, vec!["**/*.dat"]),
                (ModuleType::Text, vec!["**/*.txt", "**/*.html", "**/*.sql"]),
            ]
        );
        assert_eq!(w.compatibility_date.as_deref(), Some("2024-09-23"));
        assert_eq!(
            w.compatibility_flags,
            ["nodejs_compat", "streams_enable_constructors"]
        );

        // Without the keys: Wrangler's default rules.
        let w = &project.parse("").unwrap().workers[0];
        assert_eq!(w.js_build.rules, default_rules());
        assert!(w.js_build.alias.is_empty() && w.js_build.define.is_empty());
    }

    #[test]
    fn bad_build_keys_name_file_line_and_key() {
        let project = Project::new();
        for (keys, expected) in [
            // define
            (
                "define = { DEBUG = false }\n",
                "DIR/isola.toml:4:20: worker[0].define.DEBUG: must be a string holding a JavaScript expression, such as \"false\" or \"\\\"text\\\"\"",
            ),
            (
                "define = { \"process-env\" = \"1\" }\n",
                "DIR/isola.toml:4:28: worker[0].define.process-env: `process-env` is not a name esbuild can replace (a global such as `DEBUG` or a member chain such as `process.env.MODE`)",
            ),
            (
                "define = [\"DEBUG\"]\n",
                "DIR/isola.toml:4:10: invalid type: sequence, expected a map",
            ),
            // alias
            (
                "alias = { \"./x\" = \"./src/shim.js\" }\n",
                "DIR/isola.toml:4:19: worker[0].alias.\"./x\": `./x` is not a module name: only bare names such as `some-module` or `@scope/pkg` can be aliased",
            ),
            (
                "alias = { x = 1 }\n",
                "DIR/isola.toml:4:15: worker[0].alias.x: must be a string: a file (\"./src/shim.js\") or a package name",
            ),
            (
                "alias = { x = \"./src/missing.js\" }\n",
                "DIR/isola.toml:4:15: worker[0].alias.x: alias target not found: DIR/src/missing.js",
            ),
            // rules
            (
                "rules = [{ type = \"Html\", globs = [\"**/*.html\"] }]\n",
                "DIR/isola.toml:4:19: worker[0].rules[0].type: `Html` is not a module type (Text, Data, ESModule, CommonJS)",
            ),
            (
                "rules = [{ type = \"CompiledWasm\", globs = [\"**/*.wasm\"] }]\n",
                "DIR/isola.toml:4:19: worker[0].rules[0].type: `CompiledWasm` modules are not supported: StarlingMonkey, the engine of JavaScript workers, has no WebAssembly",
            ),
            (
                "rules = [{ type = \"Text\", glob = [\"**/*.md\"] }]\n",
                "DIR/isola.toml:4:10: worker[0].rules[0].globs: no globs: list the files this rule applies to, such as \"**/*.md\"\n\
                 DIR/isola.toml:4:27: unknown field `glob`, expected one of `type`, `globs`, `fallthrough`",
            ),
            (
                "rules = { type = \"Text\", globs = [\"**/*.md\"] }\n",
                "DIR/isola.toml:4:9: invalid type: map, expected a sequence",
            ),
            (
                "rules = [{ type = \"Text\", globs = [] }]\n",
                "DIR/isola.toml:4:35: worker[0].rules[0].globs: no globs: list the files this rule applies to, such as \"**/*.md\"",
            ),
            (
                "rules = [{ type = \"Text\", globs = [\"./a/*.md\"] }]\n",
                "DIR/isola.toml:4:36: worker[0].rules[0].globs: `./a/*.md` must be relative to the config file's directory, without `./`, such as \"**/*.md\" or \"src/pages/*.html\"",
            ),
            (
                "rules = [{ type = \"Text\", globs = [\"*.md\"] }, { type = \"Text\", globs = [\"*.rst\"] }]\n",
                "DIR/isola.toml:4:56: worker[0].rules[1]: this rule never applies: rules[0] is also `Text`; give rules[0] `fallthrough = true` to use both",
            ),
            // compatibility_date / compatibility_flags
            (
                "compatibility_date = \"2024-9-23\"\n",
                "DIR/isola.toml:4:22: worker[0].compatibility_date: `2024-9-23` is not a date such as \"2024-09-23\" (YYYY-MM-DD)",
            ),
            (
                "compatibility_date = \"2023-02-29\"\n",
                "DIR/isola.toml:4:22: worker[0].compatibility_date: `2023-02-29` is not a date such as \"2024-09-23\" (YYYY-MM-DD)",
            ),
            (
                "compatibility_date = 20240923\n",
                "DIR/isola.toml:4:22: worker[0].compatibility_date: `20240923` is not a date such as \"2024-09-23\" (YYYY-MM-DD)",
            ),
            (
                "compatibility_flags = \"nodejs_compat\"\n",
                "DIR/isola.toml:4:23: invalid type: string \"nodejs_compat\", expected a sequence",
            ),
            (
                "compatibility_flags = [\"nodejs compat\"]\n",
                "DIR/isola.toml:4:24: worker[0].compatibility_flags: `nodejs compat` is not a compatibility flag (lowercase letters, digits, `_`, such as `nodejs_compat`)",
            ),
            // Unknown keys stay errors.
            (
                "defines = { DEBUG = \"1\" }\n",
                "DIR/isola.toml:4:1: unknown field `defines`",
            ),
        ] {
            let error = project.error(keys);
            assert!(
                error.starts_with(expected),
                "{keys}\n  got      {error}\n  expected {expected}"
            );
        }
        // The bundling keys mean nothing for a component.
        let file = project.0.path().join("isola.toml");
        let errors = Config::parse(
            &file,
            "[[worker]]\nname = \"rs\"\ncomponent = \"app.wasm\"\ndefine = { DEBUG = \"1\" }\n",
        )
        .unwrap_err();
        let [error] = &*errors else {
            panic!("one error expected: {errors}")
        };
        assert_eq!(
            (error.line, error.key.as_deref()),
            (4, Some("worker[0].define"))
        );
        assert!(error.message.contains("not a `main` module"), "{error}");
    }

    #[test]
    fn dates() {
        let date = |text: &str| parse_date(&toml::Value::String(text.into()));
        assert_eq!(date("2024-09-23").unwrap(), "2024-09-23");
        assert_eq!(date("2024-02-29").unwrap(), "2024-02-29");
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-9-23",
            "24-09-23",
            "2024-09-23T00:00",
            "",
        ] {
            assert!(date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn define_keys() {
        assert!(check_define("process.env.MODE", "\"prod\"").is_ok());
        assert!(check_define("$x", "1").is_ok());
        assert!(check_define("a-b", "1").is_err());
        assert!(check_define("x..y", "1").is_err());
        assert!(check_define("X", " ").is_err());
    }
}
