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
