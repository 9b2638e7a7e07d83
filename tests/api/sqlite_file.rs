//! The embedded store's database file, whatever it is called: one server per file, even through
//! a hard link or a symbolic link (hostile-client findings, issue 16 #2).

use crate::process::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_through_a_link_to_the_same_sqlite_file_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("snapshotd.db");
    let mut first = Server::start(
        dir.path(),
        &[],
        &[("DATABASE_URL", &format!("sqlite://{}", database.display()))],
    );
    first.ready().await;

    let hard_link = dir.path().join("hard.db");
    std::fs::hard_link(&database, &hard_link).unwrap();
    let symbolic_link = dir.path().join("symbolic.db");
    std::os::unix::fs::symlink(&database, &symbolic_link).unwrap();
    for link in [&hard_link, &symbolic_link] {
        let url = format!("sqlite://{}", link.display());
        let mut second = Server::start(dir.path(), &[], &[("DATABASE_URL", &url)]);
        let status = second.exit_status();
        let stderr = second.stderr();
        assert!(!status.success(), "a second server on {url} must not start");
        assert!(
            stderr.contains("one server process per database file")
                && stderr.contains(&link.display().to_string()),
            "a clear startup error naming {}: {stderr}",
            link.display()
        );
    }
    assert!(first.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_database_is_refused_at_startup_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 20_000]).unwrap();
    let url = format!("sqlite://{}", garbage.display());
    let mut server = Server::start(dir.path(), &[], &[("DATABASE_URL", &url)]);
    let status = server.exit_status();
    let stderr = server.stderr();
    assert!(!status.success(), "snapshotd must not start on {url}");
    assert!(
        stderr.contains(&url) && stderr.contains("file is not a database"),
        "a startup error naming {url}: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_applications_sqlite_database_is_refused_and_left_alone() {
    use sqlx::Connection;

    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("notes.db").display()
    );
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine')")
        .execute(&mut other)
        .await
        .unwrap();
    other.close().await.unwrap();

    let mut server = Server::start(dir.path(), &[], &[("DATABASE_URL", &url)]);
    let status = server.exit_status();
    let stderr = server.stderr();
    assert!(!status.success(), "snapshotd must not start on {url}");
    assert!(
        stderr.contains("tables of another application (notes)"),
        "a startup error naming the tables: {stderr}"
    );
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let tables: Vec<(String,)> =
        sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut other)
            .await
            .unwrap();
    assert_eq!(tables, [("notes".to_owned(),)], "nothing added to it");
}
