//! How many database round trips a CreateSnapshot and a DescribeSnapshots page cost on
//! PostgreSQL, counted on the wire: a proxy between the server and PostgreSQL reads the frontend
//! protocol and records each message after which the client waits for the server (`Sync` ends an
//! extended-protocol exchange: `"Execute"` when it ran a statement, `"Sync"` when it did not, as
//! a ping or a statement's preparation; `Query` is a simple query such as `BEGIN` or `COMMIT`).
//! With `debug_print_plan` on, the proxy also reads the server's answers, and records each
//! planning PostgreSQL reports (`"plan"`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use snapshotd::pb;

use crate::helpers::{
    Backend, Options, TestApp, as_account, create_request, finish_copies, postgres_server_addr,
    spawn_app_with, world,
};

/// Records the round trips from clients to PostgreSQL through it: `"Execute"`, `"Sync"`, or a
/// simple query's text, each with the number of the connection it came on.
struct CountingProxy {
    addr: SocketAddr,
    round_trips: Arc<Mutex<Vec<(usize, String)>>>,
}

impl CountingProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let round_trips = Arc::new(Mutex::new(Vec::new()));
        let counter = Arc::clone(&round_trips);
        tokio::spawn(async move {
            let mut connections = 0;
            while let Ok((client, _)) = listener.accept().await {
                connections += 1;
                let connection = connections;
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let mut frontend = FrontendFrames::default();
                    let mut backend = BackendFrames::default();
                    let upstream = relay(client_read, server_write, |bytes| {
                        let waits = frontend.feed(bytes).into_iter();
                        counter
                            .lock()
                            .unwrap()
                            .extend(waits.map(|wait| (connection, wait)));
                    });
                    let downstream = relay(server_read, client_write, |bytes| {
                        let plans = backend.feed(bytes).into_iter();
                        counter
                            .lock()
                            .unwrap()
                            .extend(plans.map(|plan| (connection, plan)));
                    });
                    tokio::select! {
                        () = upstream => {}
                        () = downstream => {}
                    }
                });
            }
        });
        Self { addr, round_trips }
    }

    /// Everything recorded so far, emptying the record.
    fn take(&self) -> Vec<(usize, String)> {
        std::mem::take(&mut *self.round_trips.lock().unwrap())
    }

    /// The round trips of the connections that began a transaction since the last take,
    /// `settle` from now: long enough for anything sent after the answer (as sqlx's ping of a
    /// connection going back to the pool) to show. (The readiness check's, on another
    /// connection, are left out.)
    async fn transactions_after(&self, settle: Duration) -> Vec<String> {
        tokio::time::sleep(settle).await;
        let recorded = self.take();
        let transactions: Vec<usize> = recorded
            .iter()
            .filter(|(_, wait)| wait.starts_with("BEGIN"))
            .map(|(connection, _)| *connection)
            .collect();
        recorded
            .into_iter()
            .filter(|(connection, _)| transactions.contains(connection))
            .map(|(_, wait)| wait)
            .collect()
    }

    /// Like [`take`](Self::take), `settle` from now: long enough for anything sent after the
    /// answer (a ping of the connection going back to the pool) to show.
    async fn take_after(&self, settle: Duration) -> Vec<String> {
        tokio::time::sleep(settle).await;
        self.take().into_iter().map(|(_, wait)| wait).collect()
    }
}

/// Copies `from` to `to` until either side closes, showing each read to `observe` first.
async fn relay(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut observe: impl FnMut(&[u8]),
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        observe(&buffer[..n]);
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// Splits the frontend byte stream into messages: first the untyped startup message (length
/// first), then `type, length, body` messages.
#[derive(Default)]
struct FrontendFrames {
    started: bool,
    pending: Vec<u8>,
    /// An `Execute` since the last `Sync`.
    executed: bool,
}

impl FrontendFrames {
    /// Takes more bytes; returns the round trips they completed: `"Execute"`, `"Sync"`, or a
    /// simple query's text.
    fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut waits = Vec::new();
        loop {
            let header = if self.started { 5 } else { 4 };
            if self.pending.len() < header {
                return waits;
            }
            let length_at = header - 4;
            let length =
                u32::from_be_bytes(self.pending[length_at..length_at + 4].try_into().unwrap())
                    as usize;
            let total = length_at + length;
            if self.pending.len() < total {
                return waits;
            }
            if self.started {
                match self.pending[0] {
                    b'E' => self.executed = true,
                    b'S' => {
                        let wait = if self.executed { "Execute" } else { "Sync" };
                        waits.push(wait.to_owned());
                        self.executed = false;
                    }
                    b'Q' => {
                        let text = &self.pending[5..total];
                        let text = String::from_utf8_lossy(text.strip_suffix(&[0]).unwrap_or(text));
                        // CreateSnapshot's BEGIN, its settings in the same query (the
                        // lane's slot of the accounts' counts last).
                        let batch_begin = format!(
                            "{}; SET LOCAL snapshotd.count_slot = ",
                            snapshotd::store::postgres::BEGIN_BATCH_SQL
                        );
                        if text.starts_with(&batch_begin) {
                            waits.push(BEGIN_BATCH.to_owned());
                        } else {
                            waits.push(text.into_owned());
                        }
                    }
                    _ => {}
                }
            }
            self.started = true;
            self.pending.drain(..total);
        }
    }
}

/// How the proxy records CreateSnapshot's BEGIN (`BEGIN_BATCH_SQL`: BEGIN, and generic plans
/// and the lane's count slot for the transaction, in one query).
const BEGIN_BATCH: &str = "BEGIN (generic plans)";

/// Splits the backend byte stream into messages (`type, length, body` from the first) and
/// finds the plannings `debug_print_plan` reports: a NoticeResponse whose message is `plan:`.
#[derive(Default)]
struct BackendFrames {
    pending: Vec<u8>,
}

impl BackendFrames {
    /// Takes more bytes; returns a `"plan"` for each planning they completed, followed by a
    /// [`SEQUENTIAL_SCAN`] when that plan reads a table from end to end.
    fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut plans = Vec::new();
        while self.pending.len() >= 5 {
            let length = u32::from_be_bytes(self.pending[1..5].try_into().unwrap()) as usize;
            let total = 1 + length;
            if self.pending.len() < total {
                break;
            }
            let body = &self.pending[5..total];
            if self.pending[0] == b'N' && notice_field(body, b'M') == Some("plan:") {
                plans.push("plan".to_owned());
                // The plan's node tree, as PostgreSQL prints it (`{SEQSCAN :startup_cost …`).
                if notice_field(body, b'D').is_some_and(|tree| tree.contains("{SEQSCAN")) {
                    plans.push(SEQUENTIAL_SCAN.to_owned());
                }
            }
            self.pending.drain(..total);
        }
        plans
    }
}

/// How the proxy records a plan with a sequential scan in it (after its `"plan"`).
const SEQUENTIAL_SCAN: &str = "sequential scan";

/// A field of a NoticeResponse's body (`M` its message, `D` its detail): fields of a type byte
/// and a C string, ended by a zero byte.
fn notice_field(mut body: &[u8], wanted: u8) -> Option<&str> {
    while let [field, rest @ ..] = body {
        if *field == 0 {
            return None;
        }
        let end = rest.iter().position(|&byte| byte == 0)?;
        if *field == wanted {
            return std::str::from_utf8(&rest[..end]).ok();
        }
        body = &rest[end + 1..];
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_successful_create_snapshot_is_four_round_trips_on_its_path() {
    // Two connections: the creates keep theirs between transactions (its statement cache is
    // warm after the first create), the readiness check takes the other.
    let (app, proxy) = app_behind_a_counting_proxy(2).await;
    app.seed(&world("acct-a", 8)).await;
    app.create_on("acct-a", "d-acct-a-0")
        .await
        .expect("a first create prepares the statements");

    // The readiness check asks the database every 500 ms on a connection of the pool: its
    // round trips are left out of the windows.
    let mut windows = Vec::new();
    for disk in 1..8 {
        proxy.take();
        app.create_on("acct-a", &format!("d-acct-a-{disk}"))
            .await
            .expect("a snapshot");
        windows.push(proxy.transactions_after(Duration::from_millis(100)).await);
    }
    // No ping after COMMIT either: the connection is kept for the next transaction instead of
    // going back to the pool, which would ping it (`store::kept`).
    let expected = [BEGIN_BATCH, "Execute", "Execute", "COMMIT"];
    let exact = windows
        .iter()
        .filter(|window| window.as_slice() == expected)
        .count();
    assert!(
        exact >= 5,
        "a create is BEGIN, the locking read, the one-statement write and COMMIT (no ping in \
         front of BEGIN nor after COMMIT): {windows:?}"
    );
    for window in &windows {
        let begin = window
            .iter()
            .position(|w| w == BEGIN_BATCH)
            .expect("a BEGIN");
        let commit = window.iter().position(|w| w == "COMMIT").expect("a COMMIT");
        assert_eq!(commit - begin, 3, "two statements inside: {window:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_is_planned_once_per_connection_not_at_every_call() {
    // The statements take their rows from arrays; under PostgreSQL's default plan cache mode
    // they would be planned anew at every call (`BEGIN_BATCH_SQL`).
    let (app, proxy) = app_behind_a_counting_proxy_with(2, PRINT_PLANS).await;
    app.seed(&world("acct-a", 12)).await;
    proxy.take();
    create_on_each_disk(&app, 12).await;

    // Per connection: its create transactions, and how many plannings in each.
    let creates: HashMap<usize, Vec<usize>> = plannings_in_creates(proxy.take())
        .into_iter()
        .map(|(connection, creates)| (connection, creates.iter().map(Vec::len).collect()))
        .collect();
    let total: usize = creates.values().map(Vec::len).sum();
    assert_eq!(total, 12, "one transaction per create: {creates:?}");
    for (connection, plannings) in &creates {
        assert!(
            plannings[0] >= 2,
            "a connection's first create plans its statements (and the proxy sees it): \
             connection {connection}: {plannings:?}"
        );
        assert!(
            plannings[1..].iter().all(|&count| count == 0),
            "a connection's later creates reuse the plans: connection {connection}: {plannings:?}"
        );
    }
}

/// One create on each of acct-a's first `disks` disks, one after another; then a moment for the
/// proxy to see the last answers from PostgreSQL.
async fn create_on_each_disk(app: &TestApp, disks: usize) {
    for disk in 0..disks {
        app.create_on("acct-a", &format!("d-acct-a-{disk}"))
            .await
            .expect("a snapshot");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Per connection, its create transactions in order, and in each the plannings PostgreSQL
/// reported, in order, each `true` when the plan scans a table from end to end.
fn plannings_in_creates(events: Vec<(usize, String)>) -> HashMap<usize, Vec<Vec<bool>>> {
    let mut creates: HashMap<usize, Vec<Vec<bool>>> = HashMap::new();
    let mut inside: HashMap<usize, bool> = HashMap::new();
    for (connection, event) in events {
        let in_create = inside.get(&connection) == Some(&true);
        match event.as_str() {
            BEGIN_BATCH => {
                creates.entry(connection).or_default().push(Vec::new());
                inside.insert(connection, true);
            }
            "COMMIT" | "ROLLBACK" => {
                inside.insert(connection, false);
            }
            "plan" if in_create => {
                let create = creates.get_mut(&connection).and_then(|c| c.last_mut());
                create.expect("a create begun").push(false);
            }
            SEQUENTIAL_SCAN if in_create => {
                let create = creates.get_mut(&connection).and_then(|c| c.last_mut());
                let plan = create.and_then(|plans| plans.last_mut());
                *plan.expect("a plan before its scan") = true;
            }
            _ => {}
        }
    }
    creates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_plans_no_sequential_scan_even_where_the_tables_were_analyzed_empty() {
    // A new database whose tables were analyzed before the first snapshot (autovacuum's first
    // pass, an operator's ANALYZE): planned as they are, a scan of the empty `snapshots` costs
    // nothing, and the plan kept for the connection would read every row at every create as
    // the table fills (bench/README.md, "Statistics").
    let (app, proxy) = app_behind_a_counting_proxy_with(2, PRINT_PLANS).await;
    app.seed(&world("acct-a", 6)).await;
    app.execute("ANALYZE").await;
    proxy.take();
    create_on_each_disk(&app, 6).await;

    // The plannings inside the creates' transactions, each with whether it scans a table.
    let plans: Vec<bool> = plannings_in_creates(proxy.take())
        .into_values()
        .flatten()
        .flatten()
        .collect();
    assert!(
        plans.len() >= 2,
        "the creates plan their locking read and their write (and the proxy sees it): {plans:?}"
    );
    assert!(
        plans.iter().all(|&scans| !scans),
        "every statement of a create reads by key: an index, never a whole table, whatever the \
         statistics say (plans with a sequential scan marked true): {plans:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_describe_page_is_planned_once_per_connection_on_current_statistics() {
    // One account holding 2,001 tagged snapshots, its statistics current: PostgreSQL keeps the
    // plan it made for every page size only while it costs no more than a page's own plan, else
    // it plans the statement again at every page (`PAGE_ROWS_BOUND` in `src/store/shared.rs`).
    let (app, proxy) = app_behind_a_counting_proxy_with(2, PRINT_PLANS).await;
    app.seed(&world("acct-a", 1)).await;
    let mut request = create_request("d-acct-a-0");
    request.tags = vec![pb::Tag {
        key: "team".to_owned(),
        value: "a".to_owned(),
    }];
    let first = app.create("acct-a", request).await.expect("a snapshot");
    finish_copies(&app).await;
    let columns = "account_id, source_disk_id, snapshot_name, description, \
                   source_disk_size_gib, source_disk_type, status, started_at, copy_due_at, \
                   last_modified_at";
    app.execute(&format!(
        "INSERT INTO snapshots (snapshot_id, created_at, {columns}) \
         SELECT 's-bulk' || lpad(n::text, 16, '0'), created_at - n * interval '1 second', {columns} \
         FROM snapshots, generate_series(1, 2000) AS n WHERE snapshot_id = '{}'; \
         INSERT INTO snapshot_tags (snapshot_id, key, value) \
         SELECT 's-bulk' || lpad(n::text, 16, '0'), 'team', 'a' FROM generate_series(1, 2000) AS n; \
         ANALYZE",
        first.snapshot_id
    ))
    .await;

    // 24 pages of 20, each followed by what the proxy saw: the page's statement and its
    // plannings, if any (the readiness check's `SHOW` is not planned).
    let mut token = String::new();
    let mut plannings = Vec::new();
    proxy.take();
    for _ in 0..24 {
        let page = app
            .snapshots()
            .describe_snapshots(as_account(
                "acct-a",
                pb::DescribeSnapshotsRequest {
                    max_results: 20,
                    next_token: token,
                    ..Default::default()
                },
            ))
            .await
            .expect("a page")
            .into_inner();
        assert_eq!(page.snapshots.len(), 20);
        token = page.next_token;
        let events = proxy.take();
        plannings.push(events.iter().filter(|(_, event)| event == "plan").count());
    }
    // Each of the two connections plans the walk's statement for its first five pages and the
    // sixth (the plan for every page size); the first page's statement is another.
    assert!(
        plannings[..6].iter().sum::<usize>() >= 5,
        "the first pages are planned (and the proxy sees it): {plannings:?}"
    );
    assert!(
        plannings[18..].iter().all(|&count| count == 0),
        "the walk's last pages reuse a plan: {plannings:?}"
    );
}

/// A server on PostgreSQL through a counting proxy, with `connections` connections at most.
async fn app_behind_a_counting_proxy(connections: u32) -> (TestApp, CountingProxy) {
    app_behind_a_counting_proxy_with(connections, "").await
}

/// PostgreSQL sends each planning to the client as a LOG notice (URL query parameters).
const PRINT_PLANS: &str = "&options=-c%20debug_print_plan%3Don%20-c%20client_min_messages%3Dlog";

/// [`app_behind_a_counting_proxy`], with `settings` added to the database URL's query.
async fn app_behind_a_counting_proxy_with(
    connections: u32,
    settings: &'static str,
) -> (TestApp, CountingProxy) {
    let proxy = CountingProxy::start(postgres_server_addr().await).await;
    let proxy_addr = proxy.addr;
    let app = spawn_app_with(
        Backend::Postgres,
        Options {
            configure: Box::new(move |config| {
                // Plain TCP, so the proxy can read the protocol.
                let url = crate::helpers::replace_host(&config.database_url, proxy_addr);
                config.database_url = format!("{url}?sslmode=disable{settings}");
                config.db_max_connections = connections;
            }),
            ..Options::default()
        },
    )
    .await;
    (app, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_describe_page_is_one_statement_whatever_its_filters_length() {
    // Two connections: one call after another, a page's is kept for the next (`store::kept`,
    // which never keeps a pool's last one), so its statement cache is warm after the first call
    // of each shape.
    let (app, proxy) = app_behind_a_counting_proxy(2).await;
    app.seed(&world("acct-a", 8)).await;
    let mut ids = Vec::new();
    for disk in 0..8 {
        let mut request = create_request(&format!("d-acct-a-{disk}"));
        if disk % 2 == 0 {
            request.tags = vec![pb::Tag {
                key: "team".to_owned(),
                value: format!("t{disk}"),
            }];
        }
        ids.push(
            app.create("acct-a", request)
                .await
                .expect("a snapshot")
                .snapshot_id,
        );
    }
    let describe = |request: pb::DescribeSnapshotsRequest| {
        let app = &app;
        async move {
            app.snapshots()
                .describe_snapshots(as_account("acct-a", request))
                .await
                .expect("a page")
                .into_inner()
        }
    };
    let first_page = |max_results| pb::DescribeSnapshotsRequest {
        max_results,
        ..Default::default()
    };
    let of_ids = |ids: &[String]| pb::DescribeSnapshotsRequest {
        snapshot_ids: ids.to_vec(),
        max_results: 2,
        ..Default::default()
    };
    let tagged = || pb::DescribeSnapshotsRequest {
        tags: vec![pb::Tag {
            key: "team".to_owned(),
            value: String::new(),
        }],
        max_results: 2,
        ..Default::default()
    };
    // Each shape once, so that its statement is prepared.
    let token = describe(first_page(3)).await.next_token;
    describe(pb::DescribeSnapshotsRequest {
        next_token: token.clone(),
        ..first_page(3)
    })
    .await;
    describe(of_ids(&ids[..2])).await;
    describe(tagged()).await;

    // Other page sizes and other numbers of ids: the same statements, prepared already.
    let token_page = pb::DescribeSnapshotsRequest {
        next_token: token,
        ..first_page(3)
    };
    let tagged_token = describe(tagged()).await.next_token;
    let pages = [
        ("a first page", first_page(5)),
        ("a first page of another size", first_page(7)),
        ("a token page", token_page),
        ("five ids", of_ids(&ids[..5])),
        (
            "a token page of tagged snapshots",
            pb::DescribeSnapshotsRequest {
                next_token: tagged_token,
                ..tagged()
            },
        ),
    ];
    for (what, request) in pages {
        // The readiness check pings the database every 500 ms on the same connection and may
        // land in a window: a page is tried until a window shows none of it.
        let mut windows = Vec::new();
        for _ in 0..10 {
            proxy.take();
            let page = describe(request.clone()).await;
            assert!(page.total_count > 0, "{what}: {page:?}");
            let window = proxy.take_after(Duration::from_millis(100)).await;
            let exact = window == ["Execute"];
            windows.push(window);
            if exact {
                break;
            }
        }
        // No ping after it either: the read's connection is kept for the next session instead
        // of going back to the pool, which would ping it (`store::kept`).
        assert_eq!(
            windows.last().map(Vec::as_slice),
            Some(["Execute"].map(str::to_owned).as_slice()),
            "{what}: one statement, already prepared, and no ping: {windows:?}"
        );
    }
}

#[test]
fn frames_are_counted_across_reads() {
    let mut frames = FrontendFrames::default();
    // A startup message of 8 bytes, then Sync ('S', length 4) split over two reads, then a
    // Query "BEGIN".
    let mut stream = vec![0, 0, 0, 8, 0, 3, 0, 0];
    stream.extend_from_slice(&[b'S', 0, 0, 0, 4]);
    stream.extend_from_slice(&[b'Q', 0, 0, 0, 10]);
    stream.extend_from_slice(b"BEGIN\0");
    assert!(frames.feed(&stream[..10]).is_empty());
    assert_eq!(frames.feed(&stream[10..]), ["Sync", "BEGIN"]);
}

#[test]
fn a_sync_after_an_execute_is_a_statement() {
    let mut frames = FrontendFrames::default();
    let mut stream = vec![0, 0, 0, 8, 0, 3, 0, 0];
    // Bind, Execute, Sync; then Sync alone (a ping).
    stream.extend_from_slice(&[b'B', 0, 0, 0, 4, b'E', 0, 0, 0, 4, b'S', 0, 0, 0, 4]);
    stream.extend_from_slice(&[b'S', 0, 0, 0, 4]);
    assert_eq!(frames.feed(&stream), ["Execute", "Sync"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tag_calls_are_a_few_statements_however_many_snapshots_and_tags() {
    use crate::tag_resources::tags_client;

    let (app, proxy) = app_behind_a_counting_proxy(2).await;
    app.seed(&world("acct-a", 50)).await;
    let mut ids = Vec::new();
    for disk in 0..50 {
        ids.push(
            app.create_on("acct-a", &format!("d-acct-a-{disk}"))
                .await
                .expect("a snapshot")
                .snapshot_id,
        );
    }
    let tags = |count: usize| -> Vec<pb::Tag> {
        (0..count)
            .map(|n| pb::Tag {
                key: format!("k{n:02}"),
                value: format!("v{n}"),
            })
            .collect()
    };
    let tag = |ids: &[String], tags: Vec<pb::Tag>| {
        let request = pb::TagResourcesRequest {
            resource_type: "snapshot".into(),
            resource_ids: ids.to_vec(),
            tags,
        };
        let mut client = tags_client(&app);
        async move {
            client
                .tag_resources(as_account("acct-a", request))
                .await
                .expect("tagged");
        }
    };
    let untag = |ids: &[String], keys: Vec<String>| {
        let request = pb::UntagResourcesRequest {
            resource_type: "snapshot".into(),
            resource_ids: ids.to_vec(),
            tag_keys: keys,
            all: false,
        };
        let mut client = tags_client(&app);
        async move {
            client
                .untag_resources(as_account("acct-a", request))
                .await
                .expect("untagged");
        }
    };
    // Each statement once, so that it is prepared.
    tag(&ids[..1], tags(1)).await;
    untag(&ids[..1], vec!["k00".to_owned()]).await;

    // The locking read, the tags' read, the write, the snapshots' LastModifiedTime.
    let expected = [
        "BEGIN", "Execute", "Execute", "Execute", "Execute", "COMMIT",
    ];
    for (what, count, tag_count) in [
        ("one snapshot, one tag", 1, 1),
        ("50 snapshots, 20 tags", 50, 20),
    ] {
        let all_tags = || tags(20).into_iter().map(|tag| tag.key).collect();
        let keys = || tags(tag_count).into_iter().map(|tag| tag.key).collect();
        let tagging = windows_until(&proxy, &expected, || async {
            untag(&ids, all_tags()).await;
            proxy.take();
            tag(&ids[..count], tags(tag_count)).await;
        })
        .await;
        assert_eq!(
            tagging.last().map(Vec::as_slice),
            Some(expected.map(str::to_owned).as_slice()),
            "TagResources, {what}: {tagging:?}"
        );
        let untagging = windows_until(&proxy, &expected, || async {
            tag(&ids[..count], tags(tag_count)).await;
            proxy.take();
            untag(&ids[..count], keys()).await;
        })
        .await;
        assert_eq!(
            untagging.last().map(Vec::as_slice),
            Some(expected.map(str::to_owned).as_slice()),
            "UntagResources, {what}: {untagging:?}"
        );
    }
}

/// The transactions' round trips after each run of `call` (which takes the proxy's record
/// before its own call), until one shows exactly `expected` or five were seen: the readiness
/// check's round trips come on another connection, but it may take the kept one.
async fn windows_until<F, Fut>(
    proxy: &CountingProxy,
    expected: &[&str],
    mut call: F,
) -> Vec<Vec<String>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut windows = Vec::new();
    for _ in 0..5 {
        call().await;
        let window = proxy.transactions_after(Duration::from_millis(100)).await;
        let exact = window == expected;
        windows.push(window);
        if exact {
            break;
        }
    }
    windows
}
