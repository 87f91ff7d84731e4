//! Where secret values come from: `ISOLA_SECRET_<NAME>`, then `.dev.vars`
//! beside the config. Never from any other environment variable.

use std::collections::BTreeMap;
use std::path::Path;

/// Environment variable that supplies the secret `name`.
pub fn secret_env_var(name: &str) -> String {
    format!("ISOLA_SECRET_{name}")
}

/// A secret's value: the environment first, then `.dev.vars` beside the
/// config (Wrangler's file for local secrets). The message never contains
/// a value.
pub(crate) fn secret_value(
    name: &str,
    base: &Path,
    dev_vars: &mut Option<BTreeMap<String, String>>,
) -> Result<String, String> {
    let variable = secret_env_var(name);
    if let Some(value) = std::env::var_os(&variable) {
        return value
            .into_string()
            .map_err(|_| format!("secret `{name}`: ${variable} is not valid UTF-8"));
    }
    let file = base.join(".dev.vars");
    if dev_vars.is_none() {
        let mut values = BTreeMap::new();
        if file.is_file() {
            let entries = dotenvy::from_path_iter(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            for (n, entry) in entries.enumerate() {
                // dotenvy's parse error quotes the whole line, which may hold
                // a secret: say where, never what.
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
        }
        *dev_vars = Some(values);
    }
    dev_vars
        .as_ref()
        .and_then(|values| values.get(name))
        .cloned()
        .ok_or_else(|| {
            format!(
                "secret `{name}` has no value: set ${variable} or add `{name}=...` to {}",
                file.display()
            )
        })
}
