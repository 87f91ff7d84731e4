//! Unit and property tests of the PostgreSQL backend's SQL translation
//! (no server needed; the D1 suite against a real PostgreSQL is `sql/tests.rs`).

use super::*;

#[test]
fn placeholders_map_outside_quotes_and_comments() {
    let s = scan("SELECT ?, ?3, ? FROM t WHERE a = '?' AND \"b?\" = ? -- ?\n/* ? /* ? */ ? */");
    assert_eq!(
        s.sql,
        "SELECT $1, $3, $4 FROM t WHERE a = '?' AND \"b?\" = $5 -- ?\n/* ? /* ? */ ? */"
    );
    assert_eq!(s.statements, [("SELECT".to_owned(), false)]);
    assert_eq!(s.params, 5);
    let s = scan("SELECT $$ ? $$, $x$ ? $x$, E'\\' ?', 'it''s ?', ?");
    assert_eq!(s.sql, "SELECT $$ ? $$, $x$ ? $x$, E'\\' ?', 'it''s ?', $1");
    assert_eq!(scan("SELECT $1").sql, "SELECT $1");
}

#[test]
fn statements_split_at_top_level_semicolons() {
    let s = scan("CREATE TABLE t (x);\n INSERT INTO t VALUES (';');; SELECT * FROM t; -- done\n");
    let words: Vec<_> = s.statements.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(words, ["CREATE", "INSERT", "SELECT"]);
    assert!(s.statements[1].1);
    let s = scan("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x");
    assert_eq!(s.statements, [("WITH".to_owned(), true)]);
    assert!(scan("  -- nothing\n").statements.is_empty());
}

#[test]
fn numerics_decode() {
    // 12345678 = digits [1234, 5678], weight 1.
    let raw = [0, 2, 0, 1, 0, 0, 0, 0, 0x04, 0xd2, 0x16, 0x2e];
    assert_eq!(numeric(&raw), Some(Value::Integer(12_345_678)));
    // -1.5 = digits [1, 5000], weight 0, dscale 1.
    let raw = [0, 2, 0, 0, 0x40, 0, 0, 1, 0, 1, 0x13, 0x88];
    assert_eq!(numeric(&raw), Some(Value::Real(-1.5)));
    // 0: no digits.
    assert_eq!(numeric(&[0, 0, 0, 0, 0, 0, 0, 0]), Some(Value::Integer(0)));
}

mod props {
    use proptest::prelude::*;

    use super::*;

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// One piece of SQL and what the scan makes of it.
    #[derive(Debug, Clone)]
    enum Piece {
        /// A keyword or identifier.
        Word(String),
        /// Punctuation and numbers: copied, a statement's `(`.
        Other(String),
        /// `?` or `?NNN`.
        Placeholder(Option<u32>),
        /// Copied, and opens a statement as its first char.
        Quoted(String),
        /// `E'...'`: the word `E`, then the string.
        EString(String),
        /// Copied, and never a statement's start.
        Comment(String),
        Semicolon,
    }

    fn word() -> impl Strategy<Value = Piece> {
        prop_oneof![
            proptest::sample::select(
                &[
                    "SELECT", "insert", "Update", "delete", "MERGE", "with", "x_1", "e"
                ][..]
            )
            .prop_map(str::to_owned),
            "[A-Za-z_][A-Za-z0-9_]{0,6}",
        ]
        .prop_map(Piece::Word)
    }

    /// Text inside quotes and comments: everything the scanner looks
    /// for, except what would end the quote.
    fn inner(exclude: &'static [char]) -> impl Strategy<Value = String> {
        proptest::collection::vec(
            proptest::sample::select(
                &[
                    "a", " ", "?", "?1", ";", "'", "\"", "$", "$$", "--", "/", "*", "\\", "\n", "é",
                ][..],
            ),
            0..6,
        )
        .prop_map(move |parts| {
            parts
                .concat()
                .chars()
                .filter(|c| !exclude.contains(c))
                .collect()
        })
    }

    fn block_comment() -> impl Strategy<Value = String> {
        let leaf = inner(&['*', '/']).prop_map(|t| format!("/*{t}*/"));
        leaf.prop_recursive(2, 4, 2, |nested| {
            (inner(&['*', '/']), nested, inner(&['*', '/']))
                .prop_map(|(a, n, b)| format!("/*{a}{n}{b}*/"))
        })
    }

    fn piece() -> impl Strategy<Value = Piece> {
        prop_oneof![
            4 => word(),
            2 => proptest::sample::select(&["(", ")", ",", "=", "*", "+", ".", "<>", "12", "3.5"][..])
                .prop_map(|s| Piece::Other(s.to_owned())),
            3 => proptest::option::of(1u32..40).prop_map(Piece::Placeholder),
            1 => inner(&['\'']).prop_map(|t| Piece::Quoted(format!("'{t}'"))),
            1 => proptest::collection::vec(
                    prop_oneof![inner(&['\'', '\\']), Just("''".to_owned()), Just("\\'".to_owned()), Just("\\\\".to_owned())],
                    0..4,
                )
                .prop_map(|t| Piece::EString(format!("'{}'", t.concat()))),
            1 => inner(&['"']).prop_map(|t| Piece::Quoted(format!("\"{t}\""))),
            1 => (proptest::option::of("[a-z_][a-z0-9_]{0,3}"), inner(&['$'])).prop_map(
                    |(tag, t)| {
                        let tag = format!("${}$", tag.unwrap_or_default());
                        Piece::Quoted(format!("{tag}{t}{tag}"))
                    }
                ),
            1 => inner(&['\n']).prop_map(|t| Piece::Comment(format!("--{t}\n"))),
            1 => block_comment().prop_map(Piece::Comment),
            1 => Just(Piece::Semicolon),
        ]
    }

    /// The SQL, and the scan expected of it.
    fn sql() -> impl Strategy<Value = (String, Scanned)> {
        proptest::collection::vec(
            (piece(), proptest::sample::select(&[" ", "\n", "\t  "][..])),
            0..16,
        )
        .prop_map(|pieces| {
            let (mut sql, mut out) = (String::new(), String::new());
            let mut statements = Vec::new();
            let (mut first, mut writes) = (None::<String>, false);
            let mut largest = 0u32;
            for (piece, space) in pieces {
                let (text, rewritten) = match piece {
                    Piece::Word(w) => {
                        let upper = w.to_ascii_uppercase();
                        writes |=
                            matches!(upper.as_str(), "INSERT" | "UPDATE" | "DELETE" | "MERGE");
                        first.get_or_insert(upper);
                        (w.clone(), w)
                    }
                    Piece::Other(t) => {
                        first.get_or_insert_with(|| "(".into());
                        (t.clone(), t)
                    }
                    Piece::Placeholder(n) => {
                        first.get_or_insert_with(|| "?".into());
                        let number = n.unwrap_or(largest + 1);
                        largest = largest.max(number);
                        let text = n.map_or_else(|| "?".to_owned(), |n| format!("?{n}"));
                        (text, format!("${number}"))
                    }
                    Piece::Quoted(t) => {
                        first.get_or_insert_with(|| t[..1].to_owned());
                        (t.clone(), t)
                    }
                    Piece::EString(t) => {
                        first.get_or_insert_with(|| "E".into());
                        (format!("E{t}"), format!("E{t}"))
                    }
                    Piece::Comment(t) => (t.clone(), t),
                    Piece::Semicolon => {
                        if let Some(word) = first.take() {
                            statements.push((word, writes));
                        }
                        writes = false;
                        (";".to_owned(), ";".to_owned())
                    }
                };
                sql.push_str(&text);
                sql.push_str(space);
                out.push_str(&rewritten);
                out.push_str(space);
            }
            if let Some(word) = first {
                statements.push((word, writes));
            }
            let expected = Scanned {
                sql: out,
                statements,
                params: largest,
            };
            (sql, expected)
        })
    }

    /// Tokens the scanner cares about, in any order: unclosed quotes
    /// and comments, `?` with huge numbers, `$` at the end.
    fn noise() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                proptest::sample::select(
                    &[
                        "?", "'", "E'", "e'", "\"", "$", "$a$", "$$", "--", "/*", "*/", "\\", ";",
                        "x", " ", "\n", "é", "0"
                    ][..]
                )
                .prop_map(str::to_owned),
                any::<u32>().prop_map(|n| format!("?{n}")),
                any::<u64>().prop_map(|n| format!("?{n}")),
            ],
            0..20,
        )
        .prop_map(|t| t.concat())
    }

    fn check_any(sql: &str) -> Result<(), TestCaseError> {
        let scanned = scan(sql);
        if !sql.contains('?') {
            prop_assert_eq!(&scanned.sql, sql);
            prop_assert_eq!(scanned.params, 0);
        }
        for (word, _) in &scanned.statements {
            prop_assert!(!word.is_empty());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn placeholders_number_in_order_outside_quotes_and_comments((sql, expected) in sql()) {
            prop_assert_eq!(scan(&sql), expected);
        }

        #[test]
        fn any_text_scans(sql in any::<String>()) {
            check_any(&sql)?;
        }

        #[test]
        fn noise_scans(sql in noise()) {
            check_any(&sql)?;
        }
    }

    #[test]
    fn a_bare_placeholder_after_the_largest_number_does_not_overflow() {
        // Found by `noise_scans`: `largest + 1` overflowed (a panic in
        // debug builds) after a number at or beyond u32::MAX.
        for sql in ["?4294967295 ?", "?99999999999 ?"] {
            assert_eq!(scan(sql).params, u32::MAX);
        }
    }
}
