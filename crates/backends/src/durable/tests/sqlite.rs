//! What only the embedded backend has.

use super::*;

#[test]
fn lists_seek_in_the_primary_key_and_never_sort() {
    for (bounded, plan) in crate::durable::sqlite::testing::list_plans() {
        if bounded {
            assert!(
                plan.contains("SEARCH _isola_kv USING PRIMARY KEY (key"),
                "{plan}"
            );
        } else {
            assert_eq!(plan, "SCAN _isola_kv");
        }
        assert!(!plan.contains("TEMP B-TREE"), "no sort: {plan}");
    }
}

#[test]
fn the_first_keyword_skips_blanks_and_comments() {
    use crate::durable::sqlite::testing::keyword;
    assert_eq!(keyword("VACUUM is not allowed"), "VACUUM");
    assert_eq!(keyword("  \n-- x\n /* y */ vacuum INTO 'f'"), "vacuum");
    assert_eq!(keyword("/* unterminated"), "");
    assert_eq!(keyword("SELECT 1"), "SELECT");
}

#[tokio::test]
async fn open_connections_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteDurableStore::with_max_open(dir.path(), 2);
    let kv = |n: u32| store.object(NS, &id(n), false).unwrap();
    // Object 1 keeps a transaction open across the others' use: it must
    // stay open, and its transaction intact.
    let first = kv(1);
    first.begin().await.unwrap();
    first.put(vec![entry("k", "1")]).await.unwrap();
    let handles: Vec<_> = (2..=6).map(kv).collect();
    for (n, o) in (2..).zip(&handles) {
        o.put(vec![entry("k", &n.to_string())]).await.unwrap();
        assert!(
            store.open_connections() <= 3,
            "{}",
            store.open_connections()
        );
    }
    first.commit().await.unwrap();
    // Closed ones reopen on use, with their data.
    for (n, o) in (2..).zip(&handles) {
        let got = o.get(vec!["k".into()]).await.unwrap();
        assert_eq!(got, [entry("k", &n.to_string())]);
        assert!(
            store.open_connections() <= 2,
            "{}",
            store.open_connections()
        );
    }
    assert_eq!(
        first.get(vec!["k".into()]).await.unwrap(),
        [entry("k", "1")]
    );
    assert!(store.open_connections() <= 2);
}
