//! Redis, PostgreSQL and an S3 server (moto) on 127.0.0.1 for tests, each
//! on a free port, stopped by PID when dropped, or, for the shared ones,
//! when the test process is gone (a watchdog process waits for it). A
//! missing server program fails the test with a message saying what to
//! install; `.ci/run` installs them all.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn require(program: &str, install: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/lib/postgresql/15/bin")])
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{program}` is not installed, and the tests of the distributed backends need it: \
             {install} (.ci/run does this)"
        )
    })
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start-up ({status})");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} did not listen on port {port} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The process id the plain-TCP Redis server on `port` reports.
fn redis_process_id(port: u16) -> Option<u32> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(at) = text.find("process_id:") {
            let tail = &text[at + "process_id:".len()..];
            if let Some(end) = tail.find('\r') {
                return tail[..end].trim().parse().ok();
            }
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// Kill `pid` once this test process has exited (for servers shared by
/// every test of the process, which no destructor stops).
fn reap_when_gone(pid: u32, signal: &str) {
    let me = std::process::id();
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -{signal} {pid} 2>/dev/null"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A test CA and what it signed, as PEM files in a temp dir: `ca.pem`,
/// `server.pem` / `server.key` (for `localhost` and `127.0.0.1`),
/// `client.pem` / `client.key` (a client certificate for mutual TLS).
pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    /// A fresh CA, server and client certificate: a second `Certs` is a CA
    /// the first one's servers are not signed by.
    pub fn generate() -> Certs {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("writing a certificate");
            // PostgreSQL refuses a key others may read.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
            }
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own, so another test CA is an unknown issuer.
        ca.distinguished_name
            .push(DnType::CommonName, unique("Isola test CA"));
        let ca = ca.self_signed(&ca_key).expect("CA certificate");
        write("ca.pem", ca.pem());
        for (name, usage) in [
            ("server", ExtendedKeyUsagePurpose::ServerAuth),
            ("client", ExtendedKeyUsagePurpose::ClientAuth),
        ] {
            let key = KeyPair::generate().expect("key");
            let mut params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .expect("params");
            params
                .distinguished_name
                .push(DnType::CommonName, format!("isola-test-{name}"));
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca, &ca_key).expect("certificate");
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        Certs { dir }
    }

    /// `name` in the certificate dir (`ca.pem`, `server.key`, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A `redis-server` without persistence.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    /// Set for a TLS-only server (`rediss://`).
    tls: bool,
}

impl Redis {
    pub fn start() -> Redis {
        // `free_port` only found the port free a moment ago: another
        // test's server may take it first. Then try another.
        for _ in 0..5 {
            if let Some(redis) = Self::try_start_on(free_port()) {
                return redis;
            }
        }
        panic!("redis-server found its port taken five times");
    }

    fn start_on(port: u16) -> Redis {
        Self::try_start_on(port)
            .unwrap_or_else(|| panic!("port {port} is taken: redis-server cannot listen there"))
    }

    /// A server on `port`, or `None` when another process listens there
    /// (asked with `INFO server`, as a connection alone would reach the
    /// other server and pass for this one's).
    fn try_start_on(port: u16) -> Option<Redis> {
        let mut redis = Self::spawn(port, &["--port", &port.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if redis_process_id(port) == redis.pid() {
                return Some(redis);
            }
            let exited = redis
                .child
                .as_mut()
                .is_some_and(|child| matches!(child.try_wait(), Ok(Some(_))));
            if exited || Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A server speaking only TLS, with `certs`' server certificate; with
    /// `client_certs`, a client must present a certificate `certs`' CA
    /// signed.
    pub fn start_tls(certs: &Certs, client_certs: bool) -> Redis {
        let port = free_port();
        let file = |name: &str| certs.path(name).display().to_string();
        let auth = if client_certs { "yes" } else { "no" };
        let mut redis = Self::spawn(
            port,
            &[
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                &file("server.pem"),
                "--tls-key-file",
                &file("server.key"),
                "--tls-ca-cert-file",
                &file("ca.pem"),
                "--tls-auth-clients",
                auth,
            ],
        );
        redis.tls = true;
        redis
    }

    fn spawn(port: u16, listen: &[&str]) -> Redis {
        let program = require("redis-server", "apt-get install redis-server");
        let mut child = Command::new(program)
            .args(listen)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        wait_for_port(port, "redis-server", &mut child);
        Redis {
            child: Some(child),
            port,
            tls: false,
        }
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://127.0.0.1:<port>` for a
    /// TLS server.
    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://127.0.0.1:{}", self.port)
        } else {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kill the server (its data is gone: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port (without TLS).
    pub fn restart(&mut self) {
        self.stop();
        self.tls = false;
        self.child = Redis::start_on(self.port).child.take();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One Redis for every test of this process (tests keep apart by using
/// distinct namespace, queue and cache names).
pub fn shared_redis() -> &'static Redis {
    static REDIS: OnceLock<Redis> = OnceLock::new();
    REDIS.get_or_init(|| {
        let redis = Redis::start();
        reap_when_gone(redis.pid().expect("running"), "KILL");
        redis
    })
}

/// A throwaway PostgreSQL cluster (`initdb` in a temp dir, run as the
/// `postgres` user when the tests run as root, since PostgreSQL refuses
/// root), with user `isola` trusted on loopback.
pub struct Postgres {
    child: Option<Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Postgres {
    pub fn start() -> Postgres {
        Self::start_with(None, false)
    }

    /// A cluster that also speaks TLS (`ssl=on`) with `certs`' server
    /// certificate (plain connections are still allowed); with
    /// `client_certs`, connections over TCP must be TLS with a client
    /// certificate `certs`' CA signed (`hostssl ... clientcert=verify-ca`).
    pub fn start_tls(certs: &Certs, client_certs: bool) -> Postgres {
        Self::start_with(Some(certs), client_certs)
    }

    fn start_with(certs: Option<&Certs>, client_certs: bool) -> Postgres {
        let initdb = require("initdb", "apt-get install postgresql");
        let postgres = require("postgres", "apt-get install postgresql");
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let root = is_root();
        // The server's certificate and key, readable by the server alone.
        let mut ssl = Vec::new();
        if let Some(certs) = certs {
            let tls = dir.path().join("tls");
            std::fs::create_dir(&tls).expect("tls dir");
            for (name, setting) in [
                ("server.pem", "ssl_cert_file"),
                ("server.key", "ssl_key_file"),
            ] {
                std::fs::copy(certs.path(name), tls.join(name)).expect("copying a certificate");
                ssl.push("-c".to_owned());
                ssl.push(format!("{setting}={}", tls.join(name).display()));
            }
            ssl.extend(["-c".to_owned(), "ssl=on".to_owned()]);
            if client_certs {
                std::fs::copy(certs.path("ca.pem"), tls.join("ca.pem")).expect("copying the CA");
                std::fs::write(
                    tls.join("pg_hba.conf"),
                    "local all all trust\n\
                     hostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n",
                )
                .expect("writing pg_hba.conf");
                for (file, setting) in [("ca.pem", "ssl_ca_file"), ("pg_hba.conf", "hba_file")] {
                    ssl.push("-c".to_owned());
                    ssl.push(format!("{setting}={}", tls.join(file).display()));
                }
            }
        }
        let as_postgres = |program: &Path| {
            let mut command;
            if root {
                command = Command::new("setpriv");
                command
                    .args([
                        "--reuid=postgres",
                        "--regid=postgres",
                        "--clear-groups",
                        "--",
                    ])
                    .arg(program);
            } else {
                command = Command::new(program);
            }
            command
        };
        if root {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(
                status.success(),
                "cannot hand {} to the postgres user (is there one? `apt-get install postgresql` makes it)",
                dir.path().display()
            );
        }
        let out = as_postgres(&initdb)
            .arg("-D")
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                "isola",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // free_port's port can be taken by another test's server before
        // postgres binds it; postgres then exits, and what answers on the
        // port is that other server. So: another port, a few times.
        let psql = require("psql", "apt-get install postgresql-client");
        let mut attempts = 0;
        let (child, port) = loop {
            attempts += 1;
            let port = free_port();
            let mut child = as_postgres(&postgres)
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(dir.path())
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ])
                .args(&ssl)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting postgres");
            wait_for_port(port, "postgres", &mut child);
            // Listening comes before accepting queries: wait for a real one.
            let start = Instant::now();
            let answered = loop {
                let ok = Command::new(&psql)
                    // Over the socket when TCP wants a client certificate.
                    .arg("-h")
                    .arg(if client_certs {
                        dir.path()
                    } else {
                        Path::new("127.0.0.1")
                    })
                    .args(["-p", &port.to_string(), "-U", "isola"])
                    .args(["-d", "postgres", "-c", "SELECT 1", "-q"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    break true;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break false;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "postgres did not answer within 60 s"
                );
                std::thread::sleep(Duration::from_millis(100));
            };
            if answered {
                break (child, port);
            }
            assert!(attempts < 5, "postgres exited at start-up {attempts} times");
        };
        Postgres {
            child: Some(child),
            port,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://isola@127.0.0.1:{}/postgres", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fast shutdown: the postmaster stops its children and exits.
            signal(child.id(), "INT");
            let _ = child.wait();
        }
    }
}

pub fn shared_postgres() -> &'static Postgres {
    static POSTGRES: OnceLock<Postgres> = OnceLock::new();
    POSTGRES.get_or_init(|| {
        let pg = Postgres::start();
        reap_when_gone(pg.pid().expect("running"), "INT");
        pg
    })
}

/// moto's S3 server with one bucket.
pub struct S3 {
    child: Option<Child>,
    pub port: u16,
    pub bucket: String,
    /// The CA file of an HTTPS server.
    ca_file: Option<PathBuf>,
}

/// Credentials moto accepts (any).
pub const S3_KEY_ID: &str = "isola-test";
pub const S3_SECRET: &str = "isola-test-secret";

impl S3 {
    pub fn start() -> S3 {
        Self::start_with(None)
    }

    /// An HTTPS server with `certs`' server certificate.
    pub fn start_tls(certs: &Certs) -> S3 {
        Self::start_with(Some(certs))
    }

    fn start_with(certs: Option<&Certs>) -> S3 {
        let program = require("moto_server", "pip install 'moto[server]==5.2.1'");
        let port = free_port();
        let mut command = Command::new(program);
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        if let Some(certs) = certs {
            command
                .arg("-s")
                .arg("-c")
                .arg(certs.path("server.pem"))
                .arg("-k")
                .arg(certs.path("server.key"));
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        wait_for_port(port, "moto_server", &mut child);
        let s3 = S3 {
            child: Some(child),
            port,
            bucket: "isola-test".to_owned(),
            ca_file: certs.map(|c| c.path("ca.pem")),
        };
        s3.create_bucket(&s3.bucket);
        s3
    }

    /// CreateBucket (moto does not check signatures).
    pub fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        if let Some(ca) = &self.ca_file {
            let curl = require("curl", "apt-get install curl");
            let out = Command::new(curl)
                .args(["-sS", "-f", "-X", "PUT", "--cacert"])
                .arg(ca)
                .arg(format!("{}/{bucket}", self.endpoint()))
                .output()
                .expect("running curl");
            assert!(
                out.status.success(),
                "moto did not create bucket {bucket}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let port = self.port;
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("moto");
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("create bucket");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "moto did not create bucket {bucket}: {response}"
        );
    }

    /// `http://127.0.0.1:<port>`, or `https://` for a TLS server.
    pub fn endpoint(&self) -> String {
        let scheme = if self.ca_file.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn shared_s3() -> &'static S3 {
    static S3_SERVER: OnceLock<S3> = OnceLock::new();
    S3_SERVER.get_or_init(|| {
        let s3 = S3::start();
        reap_when_gone(s3.pid().expect("running"), "KILL");
        s3
    })
}

/// A name no other test of this run uses.
pub fn unique(prefix: &str) -> String {
    let mut bytes = [0u8; 6];
    let _ = getrandom::getrandom(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}
