//! The PostgreSQL the catalog's second adapter is tested against (issue 17):
//! a real PostgreSQL 15, started by the test set-up as an unprivileged user on
//! 127.0.0.1, answers, keeps what it is given, and is gone with its value.

use imagestore_tests::postgres::Postgres;

#[test]
fn a_real_postgresql_starts_for_the_tests_and_answers() {
    let pg = Postgres::start();
    assert!(
        pg.psql("SHOW server_version").starts_with("15."),
        "PostgreSQL 15"
    );
    pg.psql("CREATE TABLE t (k text PRIMARY KEY, v text NOT NULL)");
    pg.psql("INSERT INTO t VALUES ('a', 'b')");
    assert_eq!(pg.psql("SELECT v FROM t WHERE k = 'a'"), "b");
    let port = pg.port;
    drop(pg);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server stops with its value"
    );
}
