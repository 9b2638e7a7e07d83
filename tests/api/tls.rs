//! TLS and mTLS end to end: a PKI made with rcgen in a temp dir (a client CA that also signs the
//! server certificate, client certificates with and without a `spiffe://…/account/<id>` URI SAN,
//! and a certificate from a CA the server does not trust), the real server configured with
//! `tls_cert`/`tls_key`/`tls_client_ca`, and tonic clients over rustls.
//!
//! TLS is a transport concern, the same whatever the store: every test runs on SQLite only.
//! Every call a test expects to fail is bounded by a timeout, so a refusal that turns into a
//! hang fails the test instead of stalling it.

use std::error::Error as _;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use snapshotd::app::AppError;
use snapshotd::pb;
use snapshotd::pb::inventory_service_client::InventoryServiceClient;
use snapshotd::pb::snapshot_service_client::SnapshotServiceClient;
use snapshotd::{App, Config};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

use crate::assertions::{Detail, assert_error};
use crate::helpers::{
    Backend, Options, TestApp, TestDatabase, World, as_account, as_admin, create_request,
    put_account_request, put_disk_request, put_instance_request, spawn_app_with, world,
};

const ACCOUNT_A: &str = "acct-a";
const ACCOUNT_B: &str = "acct-b";
const DISK_A: &str = "d-acct-a-0";
const DISK_B: &str = "d-acct-b-0";

/// Longest any single attempt may take, success or refusal.
const BOUND: Duration = Duration::from_secs(10);

/// A certificate and its private key, PEM.
#[derive(Clone)]
struct Pem {
    cert: String,
    key: String,
}

/// Everything the tests need, generated fresh; the server's files live in `dir`.
struct Pki {
    dir: tempfile::TempDir,
    /// The CA that signs the server's certificate and the clients' (the client CA under mTLS).
    ca_pem: String,
    /// A certificate of a CA nobody here trusts.
    other_ca_pem: String,
    /// Client certificate with URI SAN `spiffe://example.org/account/acct-a`.
    client_a: Pem,
    /// Client certificate with no account (a gateway's): a DNS SAN only.
    gateway: Pem,
    /// Signed by the other CA, and naming acct-a: it must not matter what it names.
    stranger: Pem,
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    subject_alt_names: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
) -> Pem {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = subject_alt_names;
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &**issuer).unwrap();
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

fn uri(uri: &str) -> SanType {
    SanType::URI(uri.try_into().unwrap())
}

impl Pki {
    fn generate() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("snapshotd test CA");
        let other_ca = new_ca("some other CA");
        let server = leaf(
            &ca,
            "localhost",
            vec![
                dns("localhost"),
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let spiffe_a = format!("spiffe://example.org/account/{ACCOUNT_A}");
        let pki = Self {
            ca_pem: ca.pem(),
            other_ca_pem: other_ca.pem(),
            client_a: leaf(
                &ca,
                "client a",
                vec![uri(&spiffe_a)],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            gateway: leaf(
                &ca,
                "gateway",
                vec![dns("gateway.example.org")],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            stranger: leaf(
                &other_ca,
                "stranger",
                vec![uri(&spiffe_a)],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            dir,
        };
        std::fs::write(pki.server_cert(), server.cert).unwrap();
        std::fs::write(pki.server_key(), server.key).unwrap();
        std::fs::write(pki.client_ca(), &pki.ca_pem).unwrap();
        pki
    }

    fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    fn client_ca(&self) -> PathBuf {
        self.dir.path().join("client-ca.pem")
    }
}

/// A server speaking TLS only, or mTLS when `mutual`.
async fn spawn_tls_app(pki: &Pki, mutual: bool) -> TestApp {
    let (cert, key, ca) = (pki.server_cert(), pki.server_key(), pki.client_ca());
    spawn_app_with(
        Backend::Sqlite,
        Options {
            configure: Box::new(move |config| {
                config.tls_cert = Some(cert);
                config.tls_key = Some(key);
                config.tls_client_ca = mutual.then_some(ca);
            }),
            ..Options::default()
        },
    )
    .await
}

/// `future`, or a panic naming `what` if it takes longer than [`BOUND`].
async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {BOUND:?} (a hang, not a refusal)"))
}

/// A TLS channel to `addr` for the name `localhost`, trusting `ca_pem`, presenting `identity`.
async fn tls_channel(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&Pem>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(Identity::from_pem(&identity.cert, &identity.key));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// A request with `x-account-id` when `account` is given, without it otherwise.
fn request<T>(account: Option<&str>, message: T) -> Request<T> {
    match account {
        Some(account) => as_account(account, message),
        None => Request::new(message),
    }
}

/// Why an attempt failed: at connect time (the handshake) or on the call.
#[derive(Debug)]
enum Refusal {
    Connect(tonic::transport::Error),
    Call(Status),
}

impl Refusal {
    fn describe(&self) -> String {
        match self {
            Refusal::Connect(err) => format!("connect: {err}: {:?}", err.source()),
            Refusal::Call(status) => format!("call: {status:?}"),
        }
    }
}

/// `attempt` failed below gRPC: at the handshake, or on a call the server never answered (every
/// answer of the server carries the `x-request-id` its layer assigns), and not by a timeout.
#[track_caller]
fn assert_refused_by_transport<T: std::fmt::Debug>(what: &str, attempt: &Result<T, Refusal>) {
    match attempt {
        Ok(served) => panic!("{what} was served: {served:?}"),
        Err(refusal @ Refusal::Call(status)) => {
            assert!(
                status.metadata().get("x-request-id").is_none(),
                "{what}: the call reached the service: {}",
                refusal.describe()
            );
            assert_ne!(
                status.code(),
                Code::DeadlineExceeded,
                "{what}: refused, not timed out: {}",
                refusal.describe()
            );
        }
        Err(Refusal::Connect(_)) => {}
    }
}

/// CreateSnapshot of `disk_id` over a fresh TLS connection, bounded.
async fn create_over_tls(
    app: &TestApp,
    ca_pem: &str,
    identity: Option<&Pem>,
    account: Option<&str>,
    disk_id: &str,
) -> Result<pb::CreateSnapshotResponse, Refusal> {
    bounded("CreateSnapshot over TLS", async {
        let channel = tls_channel(app.addr, ca_pem, identity)
            .await
            .map_err(Refusal::Connect)?;
        SnapshotServiceClient::new(channel)
            .create_snapshot(request(account, create_request(disk_id)))
            .await
            .map(tonic::Response::into_inner)
            .map_err(Refusal::Call)
    })
    .await
}

/// The ids of `disk_id`'s snapshots, described over `channel`.
async fn describe_ids(channel: &Channel, account: Option<&str>, disk_id: &str) -> Vec<String> {
    let response = bounded(
        "DescribeSnapshots over TLS",
        SnapshotServiceClient::new(channel.clone()).describe_snapshots(request(
            account,
            pb::DescribeSnapshotsRequest {
                disk_id: disk_id.to_owned(),
                max_results: 100,
                ..Default::default()
            },
        )),
    )
    .await
    .expect("DescribeSnapshots over TLS");
    response
        .into_inner()
        .snapshots
        .into_iter()
        .map(|s| s.snapshot_id)
        .collect()
}

/// Puts `world` through the inventory API over `channel` (the test app's own channel is
/// plaintext, which a TLS server does not speak).
async fn seed_over(channel: &Channel, world: &World) {
    let mut inventory = InventoryServiceClient::new(channel.clone());
    bounded("seeding over TLS", async {
        inventory
            .put_account(as_admin(put_account_request(world.account.clone())))
            .await
            .expect("PutAccount over TLS");
        inventory
            .put_instance(as_admin(put_instance_request(world.instance.clone())))
            .await
            .expect("PutInstance over TLS");
        for disk in &world.disks {
            inventory
                .put_disk(as_admin(put_disk_request(disk.clone())))
                .await
                .expect("PutDisk over TLS");
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// TLS only

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_server_serves_clients_that_trust_its_ca_and_refuses_plaintext() {
    let pki = Pki::generate();
    let app = spawn_tls_app(&pki, false).await;
    let channel = bounded(
        "connecting over TLS",
        tls_channel(app.addr, &pki.ca_pem, None),
    )
    .await
    .expect("a TLS client trusting the CA connects");
    seed_over(&channel, &world(ACCOUNT_A, 1)).await;

    assert!(
        describe_ids(&channel, Some(ACCOUNT_A), DISK_A)
            .await
            .is_empty()
    );
    let created = bounded(
        "CreateSnapshot over TLS",
        SnapshotServiceClient::new(channel.clone())
            .create_snapshot(as_account(ACCOUNT_A, create_request(DISK_A))),
    )
    .await
    .expect("CreateSnapshot over TLS")
    .into_inner();
    assert_eq!(
        describe_ids(&channel, Some(ACCOUNT_A), DISK_A).await,
        vec![created.snapshot_id]
    );
    // Without mTLS, the identity is the header's, as in plaintext.
    let status = bounded(
        "CreateSnapshot without x-account-id",
        SnapshotServiceClient::new(channel.clone()).create_snapshot(create_request(DISK_A)),
    )
    .await
    .expect_err("no identity");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A plaintext HTTP/2 client gets an error, not a hang.
    let plaintext = bounded("a plaintext call to a TLS server", async {
        let channel = Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(Refusal::Connect)?;
        SnapshotServiceClient::new(channel)
            .create_snapshot(as_account(ACCOUNT_A, create_request(DISK_A)))
            .await
            .map_err(Refusal::Call)
    })
    .await;
    assert_refused_by_transport("a plaintext client", &plaintext);

    // A TLS client that does not trust the server's CA refuses the server.
    let distrustful = create_over_tls(&app, &pki.other_ca_pem, None, Some(ACCOUNT_A), DISK_A).await;
    assert!(
        matches!(distrustful, Err(Refusal::Connect(_))),
        "the client refuses the handshake: {distrustful:?}"
    );

    assert_eq!(
        app.count_rows("snapshots").await,
        1,
        "only the TLS client's create was written"
    );
}

// ---------------------------------------------------------------------------------------------
// mTLS

/// An mTLS server with acct-a and acct-b seeded (through the gateway certificate).
async fn mtls_app(pki: &Pki) -> TestApp {
    let app = spawn_tls_app(pki, true).await;
    let gateway = bounded(
        "connecting with the gateway certificate",
        tls_channel(app.addr, &pki.ca_pem, Some(&pki.gateway)),
    )
    .await
    .expect("the gateway certificate connects");
    seed_over(&gateway, &world(ACCOUNT_A, 1)).await;
    seed_over(&gateway, &world(ACCOUNT_B, 1)).await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mtls_refuses_clients_without_a_certificate_from_the_client_ca() {
    let pki = Pki::generate();
    let app = mtls_app(&pki).await;

    let anonymous = create_over_tls(&app, &pki.ca_pem, None, Some(ACCOUNT_A), DISK_A).await;
    assert_refused_by_transport("a client without a certificate", &anonymous);

    // Its certificate even names acct-a; it is not signed by the client CA.
    let stranger = create_over_tls(
        &app,
        &pki.ca_pem,
        Some(&pki.stranger),
        Some(ACCOUNT_A),
        DISK_A,
    )
    .await;
    assert_refused_by_transport("a client with another CA's certificate", &stranger);
    assert_eq!(app.count_rows("snapshots").await, 0, "nothing was written");

    // The same server serves a client with a good certificate.
    create_over_tls(&app, &pki.ca_pem, Some(&pki.client_a), None, DISK_A)
        .await
        .expect("a client certificate from the client CA");
    assert_eq!(app.count_rows("snapshots").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mtls_a_certificate_naming_an_account_is_that_account_without_a_header() {
    let pki = Pki::generate();
    let app = mtls_app(&pki).await;
    let channel = bounded(
        "connecting as acct-a",
        tls_channel(app.addr, &pki.ca_pem, Some(&pki.client_a)),
    )
    .await
    .expect("client a connects");
    let mut client = SnapshotServiceClient::new(channel.clone());

    let created = bounded(
        "CreateSnapshot with no x-account-id",
        client.create_snapshot(create_request(DISK_A)),
    )
    .await
    .expect("the certificate's account, with no x-account-id")
    .into_inner();
    assert_eq!(
        describe_ids(&channel, None, DISK_A).await,
        vec![created.snapshot_id.clone()],
        "the snapshot is on acct-a's disk, described as acct-a"
    );
    // The gateway, naming acct-a in the header, sees the same snapshot: it is acct-a's.
    let gateway = bounded(
        "connecting as the gateway",
        tls_channel(app.addr, &pki.ca_pem, Some(&pki.gateway)),
    )
    .await
    .unwrap();
    assert_eq!(
        describe_ids(&gateway, Some(ACCOUNT_A), DISK_A).await,
        vec![created.snapshot_id]
    );
    assert!(
        describe_ids(&gateway, Some(ACCOUNT_B), DISK_A)
            .await
            .is_empty()
    );

    // Being acct-a, the client does not see acct-b's disk.
    let status = bounded(
        "CreateSnapshot on acct-b's disk",
        client.create_snapshot(create_request(DISK_B)),
    )
    .await
    .expect_err("acct-b's disk is not acct-a's");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(app.count_rows("snapshots").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mtls_an_account_header_must_name_the_certificates_account() {
    let pki = Pki::generate();
    let app = mtls_app(&pki).await;
    let channel = bounded(
        "connecting as acct-a",
        tls_channel(app.addr, &pki.ca_pem, Some(&pki.client_a)),
    )
    .await
    .expect("client a connects");
    let mut client = SnapshotServiceClient::new(channel.clone());

    for disk_id in [DISK_B, DISK_A] {
        let status = bounded(
            "CreateSnapshot with x-account-id: acct-b",
            client.create_snapshot(as_account(ACCOUNT_B, create_request(disk_id))),
        )
        .await
        .expect_err("the header names another account than the certificate");
        let metadata = assert_error(
            &status,
            Code::PermissionDenied,
            "InvalidIdentity.Mismatch",
            "403",
            Detail::None,
        );
        assert_eq!(
            metadata.get("certificateAccountId").map(String::as_str),
            Some(ACCOUNT_A)
        );
        assert_eq!(
            metadata.get("headerAccountId").map(String::as_str),
            Some(ACCOUNT_B)
        );
    }
    // Describe is checked the same way.
    let status = bounded(
        "DescribeSnapshots with x-account-id: acct-b",
        client.describe_snapshots(as_account(
            ACCOUNT_B,
            pb::DescribeSnapshotsRequest::default(),
        )),
    )
    .await
    .expect_err("mismatch on describe");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(app.count_rows("snapshots").await, 0, "nothing was written");

    // A header naming the certificate's own account is fine.
    let created = bounded(
        "CreateSnapshot with x-account-id: acct-a",
        client.create_snapshot(as_account(ACCOUNT_A, create_request(DISK_A))),
    )
    .await
    .expect("the header agrees with the certificate")
    .into_inner();
    assert_eq!(
        describe_ids(&channel, Some(ACCOUNT_A), DISK_A).await,
        vec![created.snapshot_id]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mtls_a_certificate_without_an_account_leaves_identity_to_the_header() {
    let pki = Pki::generate();
    let app = mtls_app(&pki).await;
    let gateway = bounded(
        "connecting as the gateway",
        tls_channel(app.addr, &pki.ca_pem, Some(&pki.gateway)),
    )
    .await
    .expect("the gateway connects");
    let mut client = SnapshotServiceClient::new(gateway.clone());

    let on_b = bounded(
        "CreateSnapshot as acct-b through the gateway",
        client.create_snapshot(as_account(ACCOUNT_B, create_request(DISK_B))),
    )
    .await
    .expect("the header's account")
    .into_inner();
    let on_a = bounded(
        "CreateSnapshot as acct-a through the gateway",
        client.create_snapshot(as_account(ACCOUNT_A, create_request(DISK_A))),
    )
    .await
    .expect("another header, another account, same certificate")
    .into_inner();
    assert_eq!(
        describe_ids(&gateway, Some(ACCOUNT_B), DISK_B).await,
        vec![on_b.snapshot_id]
    );
    assert_eq!(
        describe_ids(&gateway, Some(ACCOUNT_A), DISK_A).await,
        vec![on_a.snapshot_id]
    );

    let status = bounded(
        "CreateSnapshot through the gateway without x-account-id",
        client.create_snapshot(create_request(DISK_A)),
    )
    .await
    .expect_err("no account in the certificate nor in a header");
    assert_error(
        &status,
        Code::Unauthenticated,
        "InvalidIdentity.Missing",
        "401",
        Detail::None,
    );
    assert_eq!(app.count_rows("snapshots").await, 2);
}

// ---------------------------------------------------------------------------------------------
// Startup

/// The text of `err` and every error in its source chain.
fn chain_text(err: &AppError) -> String {
    snapshotd::telemetry::error_chain(err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_tls_file_fails_the_build_with_an_error_naming_it() {
    let pki = Pki::generate();
    let missing = pki.dir.path().join("no-such-dir").join("missing.pem");
    for what in ["the certificate", "the key", "the client CA"] {
        let db = TestDatabase::create(Backend::Sqlite).await;
        let mut config = Config::for_database(db.url.clone());
        config.tls_cert = Some(pki.server_cert());
        config.tls_key = Some(pki.server_key());
        config.tls_client_ca = Some(pki.client_ca());
        let broken = match what {
            "the certificate" => &mut config.tls_cert,
            "the key" => &mut config.tls_key,
            _ => &mut config.tls_client_ca,
        };
        *broken = Some(missing.clone());

        let err = match bounded("building the app", App::build(config)).await {
            Ok(app) => panic!(
                "with {what} missing, the server built and would listen on {}",
                app.local_addr()
            ),
            Err(err) => err,
        };

        let text = chain_text(&err);
        assert!(
            text.contains(&missing.display().to_string()),
            "with {what} missing, the error names the path: {text}"
        );
        assert!(
            matches!(&err, AppError::TlsFile { path, source }
                if *path == missing && source.kind() == std::io::ErrorKind::NotFound),
            "{what}: {err:?}"
        );
    }

    // The same configuration with every file present builds.
    let db = TestDatabase::create(Backend::Sqlite).await;
    let mut config = Config::for_database(db.url.clone());
    config.tls_cert = Some(pki.server_cert());
    config.tls_key = Some(pki.server_key());
    config.tls_client_ca = Some(pki.client_ca());
    bounded("building the app", App::build(config))
        .await
        .unwrap_or_else(|err| panic!("with every file present: {}", chain_text(&err)));
}

/// One HTTPS GET of `path_and_query` to the ECS edge at `addr` over rustls, trusting `ca_pem`
/// and presenting `identity`: the status line, or why the connection failed.
async fn ecs_get_over_tls(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&Pem>,
    path_and_query: &str,
) -> Result<String, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(crypto::ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(pem) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(pem.cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let request =
        format!("GET {path_and_query} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let response = String::from_utf8_lossy(&response);
    Ok(response.lines().next().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ecs_edge_speaks_tls_with_the_grpc_edges_certificates() {
    let pki = Pki::generate();
    for mutual in [false, true] {
        let (cert, key, ca) = (pki.server_cert(), pki.server_key(), pki.client_ca());
        let app = spawn_app_with(
            Backend::Sqlite,
            Options {
                configure: Box::new(move |config| {
                    config.tls_cert = Some(cert);
                    config.tls_key = Some(key);
                    config.tls_client_ca = mutual.then_some(ca);
                    config.ecs_listen =
                        snapshotd::config::ListenOrOff::At(SocketAddr::from(([127, 0, 0, 1], 0)));
                }),
                ..Options::default()
            },
        )
        .await;
        let now = snapshotd::clock::Clock::now(app.clock.as_ref().unwrap().as_ref());
        snapshotd::demo::seed_demo(&app.service, now).await.unwrap();
        let addr = app.ecs_addr.expect("the ECS edge is on");
        let client = crate::ecs_client::EcsClient::new(
            addr,
            snapshotd::demo::DEMO_ACCESS_KEY_ID,
            snapshotd::demo::DEMO_ACCESS_KEY_SECRET,
        );
        let path = format!("/?{}", client.signed_query("DescribeSnapshots", &[], now));

        let identity = mutual.then_some(&pki.client_a);
        let answered = bounded(
            "HTTPS",
            ecs_get_over_tls(addr, &pki.ca_pem, identity, &path),
        )
        .await;
        assert_eq!(
            answered.as_deref(),
            Ok("HTTP/1.1 200 OK"),
            "mutual: {mutual}"
        );

        let plain = bounded("plain HTTP", async {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut tcp, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut response = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut response).await;
            response
        })
        .await;
        assert!(
            !plain.starts_with(b"HTTP/1.1"),
            "plain HTTP is not answered on a TLS port"
        );

        let untrusted = bounded(
            "a server CA nobody trusts",
            ecs_get_over_tls(addr, &pki.other_ca_pem, identity, &path),
        )
        .await;
        assert!(untrusted.is_err(), "mutual: {mutual}: {untrusted:?}");
        if mutual {
            let anonymous = bounded(
                "no client certificate",
                ecs_get_over_tls(addr, &pki.ca_pem, None, &path),
            )
            .await;
            assert!(
                anonymous.is_err(),
                "mTLS refuses a client without a certificate: {anonymous:?}"
            );
            let stranger = bounded(
                "a stranger's certificate",
                ecs_get_over_tls(addr, &pki.ca_pem, Some(&pki.stranger), &path),
            )
            .await;
            assert!(stranger.is_err(), "{stranger:?}");
        }
        app.stop().await;
    }
}
