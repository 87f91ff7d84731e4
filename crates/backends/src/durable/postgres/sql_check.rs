//! The guest's SQL: split into statements, checked, placeholders numbered.

use crate::error::{BindingError, Result};

/// One statement of the guest's SQL, checked and ready for PostgreSQL.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct GuestStatement {
    /// The text, with `?` / `?NNN` turned into `$n`.
    pub(super) sql: String,
    /// The parameters it takes: its largest placeholder number.
    pub(super) params: usize,
    /// Whether it writes rows (INSERT, UPDATE, DELETE or MERGE first, or
    /// in a WITH), for `rows_written`.
    pub(super) writes: bool,
}

/// A token of the guest's SQL, as far as the checks care.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// An unquoted name or keyword, as written.
    Word(String),
    /// A quoted name's text (a `""` inside splits it in two tokens).
    Quoted(String),
    /// A string, a dollar-quoted string.
    Literal,
    /// Anything else, one byte at a time (digits included).
    Punct(u8),
}

/// A name's byte: PostgreSQL's identifiers take letters, digits, `_`, `$`
/// (not first) and every non-ASCII byte.
fn ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// Split `sql` into statements (at `;` outside strings, quoted names,
/// comments and dollar quotes), number the placeholders of each (a bare
/// `?` takes the number after the largest so far, as in SQLite; each
/// statement numbers its own), and check each. Tokens follow
/// PostgreSQL's lexer, so what the checks see is what PostgreSQL runs.
pub(super) fn parse_sql(sql: &str) -> Result<Vec<GuestStatement>> {
    // `U&"…"` and `U&'…'` spell names and strings with escapes, so a name
    // could be written without its letters.
    let bytes = sql.as_bytes();
    if bytes.windows(3).any(|w| {
        w[0].eq_ignore_ascii_case(&b'u') && w[1] == b'&' && (w[2] == b'\'' || w[2] == b'"')
    }) {
        return Err(BindingError::Invalid(
            "Unicode escapes (`U&'…'`, `U&\"…\"`) are not allowed in an object's SQL".into(),
        ));
    }
    let mut statements = Vec::new();
    let mut tokens = Vec::new();
    let mut out = String::with_capacity(sql.len() + 8);
    let mut largest = 0u32;
    let mut copy_from = 0;
    let mut i = 0;
    let mut finish = |tokens: &mut Vec<Token>, out: &mut String, largest: &mut u32| -> Result<()> {
        if !tokens.is_empty() {
            let writes = check_statement(tokens)?;
            statements.push(GuestStatement {
                sql: std::mem::take(out),
                params: *largest as usize,
                writes,
            });
        }
        tokens.clear();
        out.clear();
        *largest = 0;
        Ok(())
    };
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\'' => {
                // E'...' strings take backslash escapes.
                let escapes = i > 0
                    && matches!(bytes[i - 1], b'e' | b'E')
                    && (i < 2 || !ident_byte(bytes[i - 2]));
                i += 1;
                while i < bytes.len() {
                    if escapes && bytes[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if bytes[i] == b'\'' {
                        if bytes.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                tokens.push(Token::Literal);
            }
            b'"' => {
                let start = i + 1;
                i = start;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += 1;
                }
                tokens.push(Token::Quoted(
                    String::from_utf8_lossy(&bytes[start..i.min(bytes.len())]).into_owned(),
                ));
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < bytes.len() {
                    if bytes[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if bytes[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' => {
                // A dollar quote: $tag$ ... $tag$, the tag a name without
                // `$` (so not `$1`, a parameter). A `$` inside a name was
                // taken with the name.
                let tag_len = if bytes.get(i + 1).copied().is_some_and(ident_start) {
                    bytes[i + 1..]
                        .iter()
                        .position(|&c| !(ident_byte(c) && c != b'$'))
                        .unwrap_or(bytes.len() - i - 1)
                } else {
                    0
                };
                let end = i + 1 + tag_len;
                if bytes.get(end) == Some(&b'$') {
                    let tag = &bytes[i..=end];
                    let body = end + 1;
                    i = bytes[body..]
                        .windows(tag.len())
                        .position(|w| w == tag)
                        .map_or(bytes.len(), |p| body + p + tag.len());
                    tokens.push(Token::Literal);
                } else {
                    tokens.push(Token::Punct(b'$'));
                    i += 1;
                }
            }
            b'?' => {
                out.push_str(&sql[copy_from..i]);
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .count();
                let n = if digits > 0 {
                    sql[i + 1..i + 1 + digits].parse().unwrap_or(u32::MAX)
                } else {
                    largest.saturating_add(1)
                };
                largest = largest.max(n);
                out.push('$');
                out.push_str(&n.to_string());
                i += 1 + digits;
                copy_from = i;
                tokens.push(Token::Punct(b'?'));
            }
            b';' => {
                out.push_str(&sql[copy_from..i]);
                i += 1;
                copy_from = i;
                finish(&mut tokens, &mut out, &mut largest)?;
            }
            b if ident_start(b) => {
                let start = i;
                while i < bytes.len() && ident_byte(bytes[i]) {
                    i += 1;
                }
                tokens.push(Token::Word(
                    String::from_utf8_lossy(&bytes[start..i]).into_owned(),
                ));
            }
            b if b.is_ascii_whitespace() || b == 0x0b => i += 1,
            _ => {
                tokens.push(Token::Punct(b));
                i += 1;
            }
        }
    }
    out.push_str(&sql[copy_from.min(sql.len())..]);
    finish(&mut tokens, &mut out, &mut largest)?;
    if statements.is_empty() {
        return Err(BindingError::Invalid("the SQL holds no statement".into()));
    }
    Ok(statements)
}

/// The kinds of things an object's SQL may create, alter and drop.
const OBJECT_KINDS: [&str; 4] = ["TABLE", "INDEX", "VIEW", "SEQUENCE"];

/// Functions that run SQL given as text, or change settings or large
/// objects, out of the checks' sight (`…_to_xml…`, `dblink…` and `pg_…`
/// are refused by pattern).
const FORBIDDEN_FUNCTIONS: [&str; 20] = [
    "set_config",
    "ts_stat",
    "ts_rewrite",
    "lo_import",
    "lo_export",
    "lo_get",
    "lo_put",
    "lo_from_bytea",
    "lo_create",
    "lo_creat",
    "lo_unlink",
    "lo_open",
    "lo_close",
    "loread",
    "lowrite",
    "lo_lseek",
    "lo_lseek64",
    "lo_tell",
    "lo_truncate",
    "lo_truncate64",
];

/// Whether one statement's tokens may run on the object's schema; whether
/// it writes rows. The allowed statements are those of a SQLite object
/// that PostgreSQL also has: queries, writes, and tables, indexes, views
/// and sequences. Refused with the reason otherwise.
fn check_statement(tokens: &[Token]) -> Result<bool> {
    let invalid = |m: String| Err(BindingError::Invalid(m));
    let upper = |t: Option<&Token>| match t {
        Some(Token::Word(w)) => w.to_ascii_uppercase(),
        _ => String::new(),
    };
    let first = upper(tokens.first());
    let mut writes = matches!(first.as_str(), "INSERT" | "UPDATE" | "DELETE" | "MERGE");
    let mut ddl = false;
    match first.as_str() {
        "SELECT" | "VALUES" | "TABLE" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "TRUNCATE" => {}
        "WITH" => {
            writes = tokens.iter().any(|t| {
                matches!(t, Token::Word(w) if ["INSERT", "UPDATE", "DELETE", "MERGE"]
                    .iter()
                    .any(|k| w.eq_ignore_ascii_case(k)))
            });
        }
        "" if tokens.first() == Some(&Token::Punct(b'(')) => {}
        "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE" => {
            return invalid(
                "BEGIN, COMMIT, ROLLBACK, SAVEPOINT and RELEASE are not allowed in SQL: \
                 transactions go through the storage API (`transaction()`)"
                    .into(),
            );
        }
        "VACUUM" => {
            return invalid("VACUUM is not allowed: the storage manages the tables".into());
        }
        "ATTACH" | "DETACH" => {
            return invalid("ATTACH and DETACH are not allowed: an object has one database".into());
        }
        "PRAGMA" => {
            return invalid(format!(
                "PRAGMA {} is not allowed: this object's storage is PostgreSQL, which has no \
                 PRAGMAs",
                upper(tokens.get(1)).to_ascii_lowercase()
            ));
        }
        "CREATE" | "ALTER" | "DROP" => {
            ddl = true;
            let mut kind = 1;
            while first == "CREATE"
                && matches!(
                    upper(tokens.get(kind)).as_str(),
                    "OR" | "REPLACE" | "UNIQUE"
                )
            {
                kind += 1;
            }
            match upper(tokens.get(kind)).as_str() {
                k if OBJECT_KINDS.contains(&k) => {}
                "TEMP" | "TEMPORARY" | "GLOBAL" | "LOCAL" => {
                    return invalid(
                        "temporary tables, indexes, triggers and views are not supported".into(),
                    );
                }
                "UNLOGGED" => return invalid(unlogged()),
                other => {
                    return invalid(format!(
                        "{first} {other} is not allowed in an object's SQL: {ALLOWED}"
                    ));
                }
            }
        }
        other => {
            let shown = if other.is_empty() {
                "this statement".to_owned()
            } else {
                other.to_owned()
            };
            return invalid(format!(
                "{shown} is not allowed in an object's SQL: {ALLOWED}"
            ));
        }
    }
    for (i, token) in tokens.iter().enumerate() {
        let name = match token {
            Token::Word(w) => w.to_ascii_lowercase(),
            Token::Quoted(q) => q.to_ascii_lowercase(),
            _ => continue,
        };
        if name.starts_with("pg_") || name == "information_schema" {
            return invalid(format!(
                "`{name}` is not available to an object's SQL: PostgreSQL's catalogs and `pg_` \
                 functions reach beyond the object"
            ));
        }
        if FORBIDDEN_FUNCTIONS.contains(&name.as_str())
            || name.contains("_to_xml")
            || name.starts_with("dblink")
        {
            return invalid(format!(
                "`{name}` is not available to an object's SQL: it runs SQL text, changes \
                 settings or reads files out of the storage's sight"
            ));
        }
        let qualifies = tokens.get(i + 1) == Some(&Token::Punct(b'.'));
        if qualifies && (name == "public" || name.starts_with("d1_")) {
            return invalid(format!(
                "`{name}.…` names another schema: an object's SQL reaches its own tables only"
            ));
        }
        if let Token::Word(word) = token {
            let next = upper(tokens.get(i + 1));
            if word.eq_ignore_ascii_case("INTO")
                && matches!(next.as_str(), "TEMP" | "TEMPORARY" | "UNLOGGED")
            {
                return invalid(
                    "temporary and unlogged tables are not supported: an object's tables are \
                     durable"
                        .into(),
                );
            }
            if ddl {
                let pair = (word.to_ascii_uppercase(), next);
                match (pair.0.as_str(), pair.1.as_str()) {
                    ("UNLOGGED", _) => return invalid(unlogged()),
                    ("TABLESPACE", _) | ("SET", "SCHEMA") | ("OWNER", "TO") => {
                        return invalid(format!(
                            "{} {} is not allowed in an object's SQL: the storage places and \
                             owns the object's tables",
                            pair.0, pair.1
                        ));
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(writes)
}

const ALLOWED: &str = "on PostgreSQL it may run SELECT, VALUES, TABLE, WITH, INSERT, UPDATE, \
                       DELETE, MERGE and TRUNCATE, and CREATE, ALTER and DROP of tables, \
                       indexes, views and sequences";

fn unlogged() -> String {
    "unlogged tables are not allowed: an object's tables are durable".into()
}
