//! The distributed backends over TLS, against real servers on loopback
//! with certificates made for the test: the right CA connects, a wrong one
//! stops start-up with an error naming the store and the certificate
//! problem.

use std::path::Path;

use isola_config::{Backend, BackendTls, BackendsConfig};
use isola_test_services::{Certs, Postgres, Redis, S3};

use crate::kv::KvNamespace;
use crate::sql::{Statement, Value};

fn tls(certs: &Certs, client: bool) -> BackendTls {
    BackendTls {
        ca_file: Some(certs.path("ca.pem")),
        client_cert: client.then(|| certs.path("client.pem")),
        client_key: client.then(|| certs.path("client.key")),
    }
}

fn kv_on(url: String, tls: BackendTls) -> BackendsConfig {
    BackendsConfig {
        kv: Backend::Redis { url, tls },
        ..BackendsConfig::default()
    }
}

async fn connect(config: &BackendsConfig, state: &Path) -> crate::Result<crate::Backends> {
    crate::Backends::connect(config, state).await
}

async fn kv_round_trip(backends: &crate::Backends) {
    let kv = KvNamespace::new(backends.kv.clone(), &isola_test_services::unique("tls"));
    kv.put("k", b"over tls".to_vec(), Default::default())
        .await
        .unwrap();
    assert_eq!(kv.get("k").await.unwrap().unwrap().data, b"over tls");
}

#[tokio::test]
async fn kv_over_rediss_with_the_right_ca() {
    let certs = Certs::generate();
    let redis = Redis::start_tls(&certs, false);
    assert!(redis.url().starts_with("rediss://"));
    let dir = tempfile::tempdir().unwrap();
    let backends = connect(&kv_on(redis.url(), tls(&certs, false)), dir.path())
        .await
        .unwrap();
    kv_round_trip(&backends).await;
}

#[tokio::test]
async fn rediss_with_a_client_certificate() {
    let certs = Certs::generate();
    let redis = Redis::start_tls(&certs, true);
    let dir = tempfile::tempdir().unwrap();
    let backends = connect(&kv_on(redis.url(), tls(&certs, true)), dir.path())
        .await
        .unwrap();
    kv_round_trip(&backends).await;

    // Without one, the server hangs up on the handshake.
    let err = connect(&kv_on(redis.url(), tls(&certs, false)), dir.path())
        .await
        .err()
        .expect("a server that wants a client certificate refuses none")
        .to_string();
    assert!(
        err.starts_with(&format!("backends.kv: cannot connect to {}", redis.url())),
        "{err}"
    );
}

#[tokio::test]
async fn rediss_with_a_wrong_ca_is_refused() {
    let certs = Certs::generate();
    let other = Certs::generate();
    let redis = Redis::start_tls(&certs, false);
    let dir = tempfile::tempdir().unwrap();
    let err = connect(&kv_on(redis.url(), tls(&other, false)), dir.path())
        .await
        .err()
        .expect("a server certificate another CA signed is refused")
        .to_string();
    assert!(
        err.starts_with(&format!("backends.kv: cannot connect to {}", redis.url())),
        "{err}"
    );
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    assert!(
        err.ends_with(&format!(
            "(Redis TLS: server certificate checked against CA file {})",
            other.path("ca.pem").display()
        )),
        "{err}"
    );
}

fn sql_on(url: String, tls: BackendTls) -> BackendsConfig {
    BackendsConfig {
        sql: Backend::Postgres { url, tls },
        ..BackendsConfig::default()
    }
}

#[tokio::test]
async fn postgres_verify_full_with_the_right_ca() {
    let certs = Certs::generate();
    let pg = Postgres::start_tls(&certs, false);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}?sslmode=verify-full", pg.url());
    let backends = connect(&sql_on(url, tls(&certs, false)), dir.path())
        .await
        .unwrap();
    let db = backends
        .sql
        .open(&isola_test_services::unique("tls").replace('-', "_"))
        .unwrap();
    let rows = db
        .query(Statement {
            sql: "SELECT ssl::int AS tls FROM pg_stat_ssl WHERE pid = pg_backend_pid()".into(),
            params: vec![],
        })
        .await
        .unwrap();
    assert_eq!(
        rows.rows,
        vec![vec![Value::Integer(1)]],
        "the session is TLS"
    );
}

#[tokio::test]
async fn postgres_with_a_wrong_ca_is_refused() {
    let certs = Certs::generate();
    let other = Certs::generate();
    let pg = Postgres::start_tls(&certs, false);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}?sslmode=verify-full", pg.url());
    let err = connect(&sql_on(url.clone(), tls(&other, false)), dir.path())
        .await
        .err()
        .expect("a server certificate another CA signed is refused")
        .to_string();
    assert!(
        err.starts_with(&format!(
            "backends.sql: cannot connect to {}: error performing TLS handshake: ",
            crate::remote::redact(&url)
        )),
        "{err}"
    );
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    assert!(
        err.ends_with(&format!(
            "(PostgreSQL TLS: server certificate checked against CA file {})",
            other.path("ca.pem").display()
        )),
        "{err}"
    );
}

/// moto over HTTPS with the test CA's certificate; credentials from the
/// test rather than the environment.
async fn s3_store(s3: &S3, ca_file: &Path) -> crate::Result<crate::blob::s3::S3BlobStore> {
    crate::blob::s3::S3BlobStore::connect_tls(
        Some(&s3.endpoint()),
        "us-east-1",
        &s3.bucket,
        Some((
            isola_test_services::S3_KEY_ID,
            isola_test_services::S3_SECRET,
        )),
        Some(ca_file),
    )
    .await
}

#[tokio::test]
async fn s3_over_https_with_a_custom_ca() {
    let certs = Certs::generate();
    let s3 = S3::start_tls(&certs);
    assert!(s3.endpoint().starts_with("https://"));
    let store = s3_store(&s3, &certs.path("ca.pem")).await.unwrap();
    let store: std::sync::Arc<dyn crate::blob::BlobStore> = std::sync::Arc::new(store);
    assert_eq!(store.head("b", "k").await.unwrap(), None);

    let other = Certs::generate();
    let err = s3_store(&s3, &other.path("ca.pem"))
        .await
        .err()
        .expect("a server certificate another CA signed is refused")
        .to_string();
    assert!(
        err.starts_with(&format!("cannot reach {}/{}: ", s3.endpoint(), s3.bucket)),
        "{err}"
    );
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    assert!(
        err.ends_with(&format!(
            "(S3 TLS: server certificate checked against CA file {})",
            other.path("ca.pem").display()
        )),
        "{err}"
    );
}

#[tokio::test]
async fn postgres_with_a_client_certificate() {
    let certs = Certs::generate();
    let pg = Postgres::start_tls(&certs, true);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}?sslmode=verify-full", pg.url());
    let backends = connect(&sql_on(url.clone(), tls(&certs, true)), dir.path())
        .await
        .unwrap();
    let db = backends.sql.open("mtls").unwrap();
    let rows = db
        .query(Statement {
            sql: "SELECT client_serial IS NOT NULL AS cert FROM pg_stat_ssl \
                  WHERE pid = pg_backend_pid()"
                .into(),
            params: vec![],
        })
        .await
        .unwrap();
    assert_eq!(
        rows.rows,
        vec![vec![Value::Integer(1)]],
        "a client certificate"
    );

    // Without one, the server refuses the session.
    let err = connect(&sql_on(url.clone(), tls(&certs, false)), dir.path())
        .await
        .err()
        .expect("a server that wants a client certificate refuses none")
        .to_string();
    assert!(
        err.starts_with(&format!(
            "backends.sql: cannot connect to {}",
            crate::remote::redact(&url)
        )),
        "{err}"
    );
}
