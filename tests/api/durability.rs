//! What an acknowledged snapshot survives rests on settings in the database: they are read back
//! from the server's own connections at startup (issue 20).

use snapshotd::store::SqliteSynchronous;

use crate::helpers::{Backend, Options, spawn_app, spawn_app_with};

fn settings(app: &crate::helpers::TestApp) -> Vec<(&'static str, String)> {
    app.store
        .settings()
        .iter()
        .map(|setting| (setting.name, setting.value.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_waits_for_each_commit_to_reach_the_disk_by_default() {
    let app = spawn_app(Backend::Sqlite).await;
    assert_eq!(
        settings(&app),
        [
            ("journal_mode", "wal".to_owned()),
            ("synchronous", "full".to_owned())
        ]
    );
    assert!(app.store.durability_warnings().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_synchronous_normal_reaches_the_database_and_is_warned_about() {
    let app = spawn_app_with(
        Backend::Sqlite,
        Options {
            configure: Box::new(|config| config.sqlite_synchronous = SqliteSynchronous::Normal),
            ..Options::default()
        },
    )
    .await;
    assert_eq!(
        settings(&app),
        [
            ("journal_mode", "wal".to_owned()),
            ("synchronous", "normal".to_owned())
        ]
    );
    let warnings = app.store.durability_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("not an OS crash or a power loss"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_reports_the_settings_its_commits_rest_on() {
    let app = spawn_app(Backend::Postgres).await;
    let names: Vec<&str> = settings(&app).into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["synchronous_commit", "fsync", "full_page_writes"]);
    // The test server runs with the defaults, all on: nothing to warn about.
    assert!(
        app.store.durability_warnings().is_empty(),
        "{:?}",
        settings(&app)
    );
}
