//! Postgres access against real servers: verify-full TLS and the quoting helper.

use std::collections::BTreeSet;
use std::time::Duration;

use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::{CellCa, Install, PgServer, PgServerSpec, RunAs, ServerTls};
use switchyard_postgres::{connect, quote, ConnectOptions, Tls};
use switchyard_telemetry::Secret;

async fn standalone(
    name: &str,
    major: u32,
    tls: Option<ServerTls>,
    password: &Secret,
) -> (PgServer, tempdir::Dir) {
    let install = Install::from_env();
    let dir = tempdir::Dir::new(&install, name);
    let server = PgServer::start(
        &PgServerSpec {
            name,
            major,
            ip: "127.0.0.1",
            superuser: "switchyard",
            superuser_password: password,
            tls,
            plain_tcp_too: false,
        },
        &install,
        dir.path(),
        RunAs::detect().expect("run as"),
    )
    .await
    .expect("server starts");
    (server, dir)
}

/// A run directory under target/, removed at the end of the test.
mod tempdir {
    use std::path::{Path, PathBuf};

    use switchyard_local_cell::{Install, RunAs};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(install: &Install, name: &str) -> Self {
            let path =
                install
                    .work_dir()
                    .join(format!("{name}-{}-{}", std::process::id(), rand_suffix()));
            std::fs::create_dir_all(path.join("logs")).expect("run dir");
            let run_as = RunAs::detect().expect("run as");
            RunAs::own(run_as, &path.join("logs")).expect("own logs");
            Self(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    }
}

fn options(server: &PgServer, host: &str, password: &Secret, tls: Tls) -> ConnectOptions {
    ConnectOptions {
        host: host.to_owned(),
        port: server.port,
        dbname: "postgres".to_owned(),
        user: "switchyard".to_owned(),
        password: password.clone(),
        tls,
        application_name: "switchyard-test".to_owned(),
        connect_timeout: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_accepts_the_right_ca_and_host_and_rejects_everything_else() {
    let install = Install::from_env();
    let cas = tempdir::Dir::new(&install, "tls-cas");
    let trusted = CellCa::generate("trusted", &cas.path().join("ca.pem")).expect("CA");
    let other = CellCa::generate("other", &cas.path().join("other-ca.pem")).expect("CA");
    let password = Secret::new("tls-test-password");
    let cert: ServerTls = trusted.issue(&["localhost"]).expect("certificate");
    let (server, dir) = standalone("tls", 17, Some(cert), &password).await;
    let bundle = trusted.bundle().to_owned();
    let other_bundle = other.bundle().to_owned();

    let good = connect(&options(
        &server,
        "localhost",
        &password,
        Tls::VerifyFull {
            ca_bundle: bundle.clone(),
        },
    ))
    .await
    .expect("verify-full with the right CA and host");
    let rows = good
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("query");
    assert!(rows.get::<_, bool>(0), "the connection is encrypted");

    let wrong_ca = connect(&options(
        &server,
        "localhost",
        &password,
        Tls::VerifyFull {
            ca_bundle: other_bundle,
        },
    ))
    .await
    .expect_err("untrusted CA");
    assert_eq!(wrong_ca.error_name(), ErrorName::TlsRefused, "{wrong_ca}");
    // The certificate names localhost, not the address: hostname verification must fail.
    let wrong_host = connect(&options(
        &server,
        "127.0.0.1",
        &password,
        Tls::VerifyFull {
            ca_bundle: bundle.clone(),
        },
    ))
    .await
    .expect_err("wrong host");
    assert_eq!(
        wrong_host.error_name(),
        ErrorName::TlsRefused,
        "{wrong_host}"
    );
    // hostssl only (what rds.force_ssl = 1 does): plain TCP is refused by the server.
    let plain = connect(&options(&server, "localhost", &password, Tls::Disabled))
        .await
        .expect_err("the server requires TLS");
    assert_eq!(plain.error_name(), ErrorName::DatabaseError, "{plain}");
    assert!(plain.to_string().contains("no encryption"), "{plain}");

    let missing = connect(&options(
        &server,
        "localhost",
        &password,
        Tls::VerifyFull {
            ca_bundle: dir.path().join("absent.pem"),
        },
    ))
    .await
    .expect_err("no bundle");
    assert_eq!(missing.error_name(), ErrorName::ConfigurationError);
    assert!(missing.to_string().contains("absent.pem"), "{missing}");
    for e in [wrong_ca, wrong_host, plain, missing] {
        assert!(!e.to_string().contains(password.expose()), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoting_agrees_with_the_server_and_round_trips() {
    let password = Secret::new("quote-test-password");
    let (server, _dir) = standalone("quote", 17, None, &password).await;
    let client = connect(&options(&server, "127.0.0.1", &password, Tls::Disabled))
        .await
        .expect("connect");
    let tricky = [
        "plain",
        "invoice lines",
        "it's",
        "say \"hi\"",
        "back\\slash",
        "Ünïcødé",
        "",
        "semi;colon -- x",
        "a'b\\c\"d",
        "$$dollar$$",
        "line\nbreak",
    ];
    for s in tricky {
        let row = client
            .query_one(
                &format!(
                    "SELECT {}::text, quote_ident($1), quote_literal($1)",
                    quote::literal(s)
                ),
                &[&s],
            )
            .await
            .unwrap_or_else(|e| panic!("literal of {s:?}: {e}"));
        assert_eq!(row.get::<_, String>(0), s, "literal round trip");
        let server_literal: String = row.get(2);
        let back = client
            .query_one(&format!("SELECT {server_literal}::text"), &[])
            .await
            .expect("server literal");
        assert_eq!(back.get::<_, String>(0), s);
        if !s.is_empty() {
            let table = quote::qualified("public", s);
            client
                .batch_execute(&format!("CREATE TABLE {table} (x int); DROP TABLE {table}"))
                .await
                .unwrap_or_else(|e| panic!("ident of {s:?}: {e}"));
        }
    }
}

/// `quote::name` renders names as every installed major's `quote_ident` does, and its
/// keyword list is exactly the union of what those majors quote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn display_names_quote_where_every_major_does() {
    let install = Install::from_env();
    let majors = install.pg_majors();
    assert!(
        (14..=18).all(|m| majors.contains(&m)),
        "QUOTED_KEYWORDS covers majors 14 to 18, but only {majors:?} are installed: run `make setup`"
    );
    let ours: BTreeSet<&str> = quote::QUOTED_KEYWORDS.iter().copied().collect();
    let password = Secret::new("names-test-password");
    let mut quoted_somewhere = BTreeSet::new();
    for major in majors {
        // One server at a time; dropping it (also on a panic) stops it.
        let (mut server, _dir) =
            standalone(&format!("names-{major}"), major, None, &password).await;
        let client = connect(&options(&server, "127.0.0.1", &password, Tls::Disabled))
            .await
            .expect("connect");
        let keywords: Vec<(String, String)> = client
            .query("SELECT word, catcode::text FROM pg_get_keywords()", &[])
            .await
            .expect("keywords")
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let quoted_here: BTreeSet<&str> = keywords
            .iter()
            .filter(|(_, category)| category != "U")
            .map(|(word, _)| word.as_str())
            .collect();
        let missing: Vec<_> = quoted_here.difference(&ours).collect();
        assert!(
            missing.is_empty(),
            "PostgreSQL {major} quotes keywords missing from QUOTED_KEYWORDS: {missing:?}"
        );
        quoted_somewhere.extend(quoted_here.iter().map(|w| w.to_string()));

        let mut names: Vec<&str> = keywords.iter().map(|(word, _)| word.as_str()).collect();
        names.extend([
            "plain",
            "Weird \"Schema\"",
            "a.b",
            "plain heap",
            "_x1$",
            "_x1",
            "x$",
            "1abc",
            "abc1",
            "ÄÖ",
            "café",
            "",
            "\"",
            "UPPER",
            "Mixed",
            "_",
            "a-b",
            "user",
            "lateral",
        ]);
        let rows = client
            .query(
                "SELECT n, quote_ident(n) FROM unnest($1::text[]) n",
                &[&names],
            )
            .await
            .expect("quote_ident");
        assert_eq!(rows.len(), names.len());
        for row in rows {
            let (n, theirs): (String, String) = (row.get(0), row.get(1));
            let mine = quote::name(&n);
            // Quoted for another major that reserves it; this one leaves it bare.
            let reserved_elsewhere =
                theirs == n && mine == quote::ident(&n) && ours.contains(n.as_str());
            assert!(
                mine == theirs || reserved_elsewhere,
                "PostgreSQL {major}: quote_ident({n:?}) = {theirs}, quote::name = {mine}"
            );
        }
        server.stop();
    }
    let stale: Vec<_> = ours
        .iter()
        .filter(|w| !quoted_somewhere.contains(**w))
        .collect();
    assert!(
        stale.is_empty(),
        "QUOTED_KEYWORDS lists words no installed major quotes: {stale:?}"
    );
}
