//! The object's SQL API: the guest's SQL, confined by the authorizer and
//! interrupted when it runs too long.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fallible_iterator::FallibleIterator;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, StatementStatus};

use super::MAX_CURSOR_BYTES;
use crate::durable::Cursor;
use crate::error::{BindingError, Result, backend_err};
use crate::sql::Value;
use crate::sql::sqlite::from_sqlite;
use crate::util::lock;

/// What an object connection's hooks consult: whether the guest's SQL is
/// being prepared or run (our own statements are trusted), why the
/// authorizer refused it, and when to interrupt it.
pub(super) struct Guard {
    pub(super) user: AtomicBool,
    pub(super) denied: Mutex<Option<String>>,
    pub(super) deadline: Mutex<Option<Instant>>,
    pub(super) time_limit: Duration,
}

impl Guard {
    pub(super) fn authorize(&self, ctx: AuthContext<'_>) -> Authorization {
        if !self.user.load(Ordering::Relaxed) {
            return Authorization::Allow;
        }
        match check_action(&ctx) {
            Ok(()) => Authorization::Allow,
            Err(reason) => {
                lock(&self.denied).get_or_insert(reason);
                Authorization::Deny
            }
        }
    }

    pub(super) fn overdue(&self) -> bool {
        lock(&self.deadline).is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// `e` from the guest's SQL as the guest sees it: an authorizer refusal
    /// or the time limit with our reason; SQLite's message otherwise,
    /// [`BindingError::Invalid`] when the SQL is at fault (syntax, names,
    /// constraints, types) and [`BindingError::Backend`] when the store is
    /// (I/O, a full disk, corruption, a lock held elsewhere).
    pub(super) fn error(&self, e: rusqlite::Error) -> BindingError {
        let (code, message) = match e {
            rusqlite::Error::SqliteFailure(error, message) => (error.code, message),
            rusqlite::Error::SqlInputError { error, msg, .. } => (error.code, Some(msg)),
            other => return backend_err(other),
        };
        let message = message.unwrap_or_else(|| format!("{code:?}"));
        match code {
            ErrorCode::AuthorizationForStatementDenied => BindingError::Invalid(
                lock(&self.denied)
                    .take()
                    .unwrap_or_else(|| format!("the SQL is not allowed: {message}")),
            ),
            ErrorCode::OperationInterrupted => BindingError::Invalid(format!(
                "the SQL ran longer than {:?} and was stopped",
                self.time_limit
            )),
            ErrorCode::Unknown
            | ErrorCode::ConstraintViolation
            | ErrorCode::TypeMismatch
            | ErrorCode::TooBig
            | ErrorCode::ParameterOutOfRange => BindingError::Invalid(message),
            _ => BindingError::Backend(message),
        }
    }
}

/// The guest's SQL is running while this lives.
pub(super) struct UserSql<'g>(&'g Guard);

impl<'g> UserSql<'g> {
    pub(super) fn enter(guard: &'g Guard) -> Self {
        *lock(&guard.denied) = None;
        *lock(&guard.deadline) = Some(Instant::now() + guard.time_limit);
        guard.user.store(true, Ordering::Relaxed);
        UserSql(guard)
    }
}

impl Drop for UserSql<'_> {
    fn drop(&mut self) {
        self.0.user.store(false, Ordering::Relaxed);
        *lock(&self.0.deadline) = None;
    }
}

/// Whether `name` is one of the storage's own (`_isola_…`, any case).
fn reserved(name: &str) -> bool {
    let prefix = crate::durable::RESERVED_SQL_PREFIX.as_bytes();
    name.as_bytes()
        .get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

/// Pragmas the guest may run: reading the schema and toggling checks, as
/// Workers allows; none that changes durability, the journal or the file.
fn pragma_allowed(name: &str, value: Option<&str>) -> bool {
    let unquoted = value.map(|v| v.trim_matches(|c| c == '\'' || c == '"'));
    match name.to_ascii_lowercase().as_str() {
        "data_version" | "page_size" | "page_count" | "freelist_count" => value.is_none(),
        "table_list" => true,
        "table_info" | "table_xinfo" | "index_list" | "index_info" | "index_xinfo"
        | "foreign_key_list" => unquoted.is_some_and(|v| !reserved(v)),
        "foreign_key_check" | "quick_check" | "integrity_check" => {
            unquoted.is_none_or(|v| !reserved(v))
        }
        "case_sensitive_like"
        | "foreign_keys"
        | "defer_foreign_keys"
        | "ignore_check_constraints"
        | "legacy_alter_table"
        | "recursive_triggers"
        | "reverse_unordered_selects" => unquoted.is_none_or(|v| {
            ["true", "false", "yes", "no", "on", "off", "1", "0"]
                .iter()
                .any(|b| v.eq_ignore_ascii_case(b))
        }),
        "optimize" => unquoted.is_none_or(|v| v.parse::<i64>().is_ok()),
        _ => false,
    }
}

/// Whether the guest's SQL may do `ctx`; the reason when not.
fn check_action(ctx: &AuthContext<'_>) -> std::result::Result<(), String> {
    if let Some(database) = ctx.database_name
        && database != "main"
    {
        return Err(format!(
            "the SQL uses the database `{database}`; an object has only its own (`main`): no \
             temporary or attached databases"
        ));
    }
    let names: &[&str] = match ctx.action {
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
            return Err(
                "BEGIN, COMMIT, ROLLBACK, SAVEPOINT and RELEASE are not allowed in \
                        SQL: transactions go through the storage API (`transaction()`)"
                    .into(),
            );
        }
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
            return Err("ATTACH and DETACH are not allowed: an object has one database".into());
        }
        AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. }
        | AuthAction::DropTempTable { .. }
        | AuthAction::DropTempIndex { .. }
        | AuthAction::DropTempTrigger { .. }
        | AuthAction::DropTempView { .. } => {
            return Err("temporary tables, indexes, triggers and views are not supported".into());
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            return if pragma_allowed(pragma_name, pragma_value) {
                Ok(())
            } else {
                Err(format!("PRAGMA {pragma_name} is not allowed"))
            };
        }
        AuthAction::CreateVtable {
            table_name,
            module_name,
        }
        | AuthAction::DropVtable {
            table_name,
            module_name,
        } => {
            let known = ["fts5", "fts5vocab", "rtree", "rtree_i32"]
                .iter()
                .any(|m| module_name.eq_ignore_ascii_case(m));
            if !known {
                return Err(format!(
                    "virtual tables of module `{module_name}` are not allowed (fts5 and rtree are)"
                ));
            }
            &[table_name]
        }
        AuthAction::Function { function_name } => {
            let unsafe_fn = ["load_extension", "fts3_tokenizer"]
                .iter()
                .any(|f| function_name.eq_ignore_ascii_case(f));
            if unsafe_fn {
                return Err(format!("the function {function_name}() is not allowed"));
            }
            &[]
        }
        AuthAction::CreateIndex {
            index_name: a,
            table_name: b,
        }
        | AuthAction::DropIndex {
            index_name: a,
            table_name: b,
        }
        | AuthAction::CreateTrigger {
            trigger_name: a,
            table_name: b,
        }
        | AuthAction::DropTrigger {
            trigger_name: a,
            table_name: b,
        } => &[a, b],
        AuthAction::CreateTable { table_name: a }
        | AuthAction::DropTable { table_name: a }
        | AuthAction::Insert { table_name: a }
        | AuthAction::Delete { table_name: a }
        | AuthAction::Read { table_name: a, .. }
        | AuthAction::Update { table_name: a, .. }
        | AuthAction::AlterTable { table_name: a, .. }
        | AuthAction::CreateView { view_name: a }
        | AuthAction::DropView { view_name: a }
        | AuthAction::Reindex { index_name: a } => &[a],
        // ANALYZE without a name analyzes every table, ours too: it only
        // records index statistics, no data.
        AuthAction::Analyze { .. } | AuthAction::Select | AuthAction::Recursive => &[],
        _ => return Err("the SQL does something the storage does not allow".into()),
    };
    match names.iter().find(|name| reserved(name)) {
        Some(name) => Err(format!(
            "`{name}` belongs to the storage itself: names starting with `{}` are reserved",
            crate::durable::RESERVED_SQL_PREFIX
        )),
        None => Ok(()),
    }
}

/// The first keyword of a statement's text, after blanks and comments.
pub(super) fn first_keyword(sql: &str) -> &str {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(comment) = rest.strip_prefix("--") {
            rest = comment.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(comment) = rest.strip_prefix("/*") {
            rest = comment.split_once("*/").map_or("", |(_, after)| after);
        } else {
            break;
        }
    }
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Prepare and run each statement of `query` in turn (a statement is
/// prepared after the previous one ran, so it may use the tables that one
/// made), binding the next `?`s of `params` to it. The cursor holds the
/// last statement's rows; `rows_read` is approximate, as in D1's backend:
/// the rows the statements returned plus SQLite's full-scan steps (one per
/// row passed over in a table scan), not rows reached through an index and
/// skipped; `rows_written` counts every row inserted, updated or deleted,
/// triggers included.
pub(super) fn run_sql(
    conn: &Connection,
    guard: &Guard,
    query: &str,
    params: &[Value],
) -> Result<Cursor> {
    let changes_before = conn.total_changes();
    let mut statements = rusqlite::Batch::new(conn, query);
    let mut cursor = Cursor::default();
    let mut bound = 0usize;
    let mut count = 0usize;
    while let Some(mut stmt) = statements.next().map_err(|e| guard.error(e))? {
        count += 1;
        // VACUUM asks the authorizer nothing, and `VACUUM INTO 'file'`
        // writes wherever the host may.
        let text = stmt.expanded_sql().ok_or_else(|| {
            BindingError::Backend("SQLite could not show the statement's text".into())
        })?;
        if first_keyword(&text).eq_ignore_ascii_case("VACUUM") {
            return Err(BindingError::Invalid(
                "VACUUM is not allowed: the storage manages the file".into(),
            ));
        }
        let wanted = stmt.parameter_count();
        let Some(mine) = params.get(bound..bound + wanted) else {
            return Err(BindingError::Invalid(format!(
                "statement {count} of the SQL takes {wanted} parameters, but only {} of the {} \
                 given are left for it",
                params.len() - bound,
                params.len()
            )));
        };
        for (i, value) in mine.iter().enumerate() {
            stmt.raw_bind_parameter(i + 1, to_sqlite(value))
                .map_err(|e| guard.error(e))?;
        }
        bound += wanted;
        cursor.columns = stmt.column_names().map(String::from).collect();
        cursor.rows.clear();
        let mut size = 0usize;
        {
            let mut rows = stmt.raw_query();
            while let Some(row) = rows.next().map_err(|e| guard.error(e))? {
                let values = (0..cursor.columns.len())
                    .map(|i| row.get_ref(i).map(from_sqlite))
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(|e| guard.error(e))?;
                size += values.iter().map(value_size).sum::<usize>();
                if size > MAX_CURSOR_BYTES {
                    return Err(BindingError::Invalid(format!(
                        "statement {count} of the SQL returns more than {} MiB; select fewer \
                         rows or columns",
                        MAX_CURSOR_BYTES / (1024 * 1024)
                    )));
                }
                cursor.rows.push(values);
            }
        }
        let scanned = stmt.get_status(StatementStatus::FullscanStep).max(0) as u64;
        cursor.rows_read += cursor.rows.len() as u64 + scanned;
    }
    if count == 0 {
        return Err(BindingError::Invalid("the SQL holds no statement".into()));
    }
    if bound != params.len() {
        return Err(BindingError::Invalid(format!(
            "the SQL takes {bound} parameters, but {} were given",
            params.len()
        )));
    }
    cursor.rows_written = conn.total_changes() - changes_before;
    Ok(cursor)
}

fn to_sqlite(value: &Value) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(match value {
        Value::Null => ValueRef::Null,
        Value::Integer(i) => ValueRef::Integer(*i),
        Value::Real(f) => ValueRef::Real(*f),
        Value::Text(s) => ValueRef::Text(s.as_bytes()),
        Value::Blob(b) => ValueRef::Blob(b),
    })
}

/// Roughly what `value` costs in memory.
fn value_size(value: &Value) -> usize {
    match value {
        Value::Text(s) => s.len() + 8,
        Value::Blob(b) => b.len() + 8,
        _ => 8,
    }
}
