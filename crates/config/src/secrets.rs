//! Where secret values come from: `ISOLA_SECRET_<NAME>`, then `.dev.vars`
//! beside the config. Never from any other environment variable.

use std::collections::BTreeMap;
use std::path::Path;

/// Environment variable that supplies the secret `name`.
pub fn secret_env_var(name: &str) -> String {
    format!("ISOLA_SECRET_{name}")
}

/// `.dev.vars` as read so far: not yet, its entries, or not readable (and
/// said so once, with the first secret that needed it).
#[derive(Debug, Default)]
pub(crate) enum DevVars {
    #[default]
    Unread,
    Read(BTreeMap<String, String>),
    Unreadable,
}

/// A secret's value: the environment first, then `.dev.vars` beside the
/// config (Wrangler's file for local secrets). `Ok(None)`: only an
/// unreadable `.dev.vars`, already reported, could say. The message never
/// contains a value.
pub(crate) fn secret_value(
    name: &str,
    base: &Path,
    dev_vars: &mut DevVars,
) -> Result<Option<String>, String> {
    let variable = secret_env_var(name);
    if let Some(value) = std::env::var_os(&variable) {
        return value
            .into_string()
            .map(Some)
            .map_err(|_| format!("secret `{name}`: ${variable} is not valid UTF-8"));
    }
    let file = base.join(".dev.vars");
    if let DevVars::Unread = dev_vars {
        match read_dev_vars(&file) {
            Ok(values) => *dev_vars = DevVars::Read(values),
            Err(message) => {
                *dev_vars = DevVars::Unreadable;
                return Err(message);
            }
        }
    }
    match dev_vars {
        DevVars::Read(values) => match values.get(name) {
            Some(value) => Ok(Some(value.clone())),
            None => Err(format!(
                "secret `{name}` has no value: set ${variable} or add `{name}=...` to {}",
                file.display()
            )),
        },
        _ => Ok(None),
    }
}

/// `.dev.vars`' entries; none if there is no such file.
fn read_dev_vars(file: &Path) -> Result<BTreeMap<String, String>, String> {
    let mut values = BTreeMap::new();
    if !file.is_file() {
        return Ok(values);
    }
    let entries = dotenvy::from_path_iter(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    for (n, entry) in entries.enumerate() {
        // dotenvy's parse error quotes the whole line, which may hold a
        // secret: say where, never what.
        let (k, v) = entry.map_err(|e| match e {
            dotenvy::Error::LineParse(..) => format!(
                "{}: entry {} is not NAME=value (dotenv syntax)",
                file.display(),
                n + 1
            ),
            other => format!("cannot read {}: {other}", file.display()),
        })?;
        values.insert(k, v);
    }
    Ok(values)
}
