//! The admission webhook over real HTTPS on loopback: reviews, malformed requests,
//! probes and metrics, and certificate rotation on disk while it serves.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_sidecar::webhook::server::{WebhookConfig, serve};
use agent_sidecar::webhook::settings::InjectionSettings;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use serde_json::Value;
use tokio::net::TcpListener;

const BARE_POD_REVIEW: &str = include_str!("../src/webhook/testdata/bare-pod.json");
const CRONJOB_POD_REVIEW: &str = include_str!("../src/webhook/testdata/cronjob-pod.json");

/// Interval at which the test servers check their certificate files.
const RELOAD_INTERVAL: Duration = Duration::from_millis(100);
/// Upper bound for any wait on the server in these tests.
const WAIT_LIMIT: Duration = Duration::from_secs(10);

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    CertifiedIssuer::self_signed(params, key).expect("CA certificate")
}

/// Issues a serving certificate for 127.0.0.1 signed by `ca`; returns (certificate PEM,
/// key PEM).
fn serving_pair(ca: &CertifiedIssuer<'static, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().expect("serving key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("serving parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, "agent-sidecar-webhook");
    let cert = params.signed_by(&key, ca).expect("serving certificate");
    (cert.pem(), key.serialize_pem())
}

/// Replaces a file in one rename, as the kubelet swaps a Secret volume's contents.
fn replace_file(path: &Path, contents: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, contents).expect("write temporary file");
    std::fs::rename(&temporary, path).expect("rename over the old file");
}

fn client(ca: &CertifiedIssuer<'static, KeyPair>) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA PEM");
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        // A new connection per request, so each one gets the certificate in use now.
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTPS client")
}

struct TestServer {
    https: String,
    admin: String,
    cert_path: PathBuf,
    key_path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a webhook whose certificate files are `pair`, or absent when `None`.
    async fn start(pair: Option<(String, String)>) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert_path = dir.path().join("tls.crt");
        let key_path = dir.path().join("tls.key");
        if let Some((cert, key)) = pair {
            std::fs::write(&cert_path, cert).expect("write certificate");
            std::fs::write(&key_path, key).expect("write key");
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind HTTPS");
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let https = format!("https://{}", listener.local_addr().expect("address"));
        let admin = format!("http://{}", admin_listener.local_addr().expect("address"));
        let config = WebhookConfig {
            cert_path: cert_path.clone(),
            key_path: key_path.clone(),
            reload_interval: RELOAD_INTERVAL,
            shutdown_delay: Duration::ZERO,
            settings: InjectionSettings::default(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            serve(listener, admin_listener, config, shutdown)
                .await
                .expect("webhook serves until stopped");
        });
        TestServer {
            https,
            admin,
            cert_path,
            key_path,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT_LIMIT, &mut self.task)
            .await
            .expect("webhook stops within the limit")
            .expect("webhook task ends cleanly");
    }

    async fn admin_get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("{}{path}", self.admin))
            .await
            .expect("admin server answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("admin body"))
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT_LIMIT;
        while self.admin_get("/readyz").await.0 != 200 {
            assert!(Instant::now() < deadline, "webhook not ready in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn post_review(
    client: &reqwest::Client,
    url: &str,
    body: &str,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
}

async fn json_body(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.expect("response body");
    serde_json::from_slice(&bytes).expect("JSON body")
}

async fn metric_value(server: &TestServer, line_prefix: &str) -> f64 {
    let (_, text) = server.admin_get("/metrics").await;
    text.lines()
        .find(|line| line.starts_with(line_prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_over_https_returns_patch() {
    let ca = new_ca("test CA");
    let server = TestServer::start(Some(serving_pair(&ca))).await;
    server.wait_ready().await;
    let client = client(&ca);

    let response = post_review(
        &client,
        &format!("{}/mutate", server.https),
        BARE_POD_REVIEW,
    )
    .await
    .expect("HTTPS request succeeds");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("ASCII");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let review = json_body(response).await;
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(
        review["response"]["uid"],
        "9a7e1c44-1f3b-4b2a-8f6d-2c9e0b7a5d12"
    );
    assert_eq!(review["response"]["allowed"], true);
    assert_eq!(review["response"]["patchType"], "JSONPatch");
    let encoded = review["response"]["patch"]
        .as_str()
        .expect("the patch is a base64 string, as the v1 API defines it");
    let patch = BASE64.decode(encoded).expect("valid base64");
    let patch: Value = serde_json::from_slice(&patch).expect("the patch is JSON");
    assert_eq!(patch[0]["op"], "add");

    // The CronJob pod carries no annotation: only the namespace-enabled endpoint injects.
    let pod_only = post_review(
        &client,
        &format!("{}/mutate", server.https),
        CRONJOB_POD_REVIEW,
    )
    .await
    .expect("HTTPS request succeeds");
    let review = json_body(pod_only).await;
    assert!(review["response"].get("patch").is_none());
    let namespace = post_review(
        &client,
        &format!("{}/mutate/namespace-enabled", server.https),
        CRONJOB_POD_REVIEW,
    )
    .await
    .expect("HTTPS request succeeds");
    let review = json_body(namespace).await;
    assert_eq!(review["response"]["patchType"], "JSONPatch");

    let injected = metric_value(
        &server,
        "agent_sidecar_webhook_admissions_total{outcome=\"injected\",reason=\"injected\"}",
    )
    .await;
    assert_eq!(injected, 2.0);
    let skipped = metric_value(
        &server,
        "agent_sidecar_webhook_admissions_total{outcome=\"skipped\",reason=\"not_requested\"}",
    )
    .await;
    assert_eq!(skipped, 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_review_gets_clear_400() {
    let ca = new_ca("test CA");
    let server = TestServer::start(Some(serving_pair(&ca))).await;
    server.wait_ready().await;
    let client = client(&ca);
    let url = format!("{}/mutate", server.https);

    let response = post_review(&client, &url, "{\"apiVersion\": \"admission.k8s.io/v1\", ")
        .await
        .expect("HTTPS request succeeds");
    assert_eq!(response.status(), 400);
    let message = response.text().await.expect("text body");
    assert!(
        message.starts_with("invalid AdmissionReview: "),
        "{message}"
    );
    assert!(
        message.contains("line 1"),
        "the message locates the error: {message}"
    );

    let response = post_review(
        &client,
        &url,
        r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#,
    )
    .await
    .expect("HTTPS request succeeds");
    assert_eq!(response.status(), 400);
    let message = response.text().await.expect("text body");
    assert!(
        message.contains("admissionReviewVersions: [v1]"),
        "{message}"
    );

    let oversized = "x".repeat(5 * 1024 * 1024);
    let response = post_review(&client, &url, &oversized)
        .await
        .expect("HTTPS request succeeds");
    assert_eq!(response.status(), 400);

    let response = client
        .get(&url)
        .send()
        .await
        .expect("HTTPS request succeeds");
    assert_eq!(response.status(), 405);

    let invalid = metric_value(
        &server,
        "agent_sidecar_webhook_admissions_total{outcome=\"invalid\",reason=\"invalid_json\"}",
    )
    .await;
    assert_eq!(invalid, 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_while_serving() {
    let old_ca = new_ca("old CA");
    let new_ca = new_ca("new CA");
    let server = TestServer::start(Some(serving_pair(&old_ca))).await;
    server.wait_ready().await;
    let old_client = client(&old_ca);
    let new_client = client(&new_ca);
    let url = format!("{}/mutate", server.https);

    let response = post_review(&old_client, &url, BARE_POD_REVIEW)
        .await
        .expect("the old certificate is served");
    assert_eq!(response.status(), 200);
    assert!(
        post_review(&new_client, &url, BARE_POD_REVIEW)
            .await
            .is_err()
    );

    // A half-written rotation (new key, old certificate) keeps the old pair in use.
    let (new_cert, new_key) = serving_pair(&new_ca);
    replace_file(&server.key_path, &new_key);
    tokio::time::sleep(RELOAD_INTERVAL * 3).await;
    let response = post_review(&old_client, &url, BARE_POD_REVIEW)
        .await
        .expect("the old certificate is still served");
    assert_eq!(response.status(), 200);
    assert_eq!(server.admin_get("/readyz").await.0, 200);
    let failures = metric_value(
        &server,
        "agent_sidecar_webhook_certificate_reloads_total{outcome=\"failure\"}",
    )
    .await;
    assert_eq!(failures, 1.0, "the mismatched pair is reported once");

    replace_file(&server.cert_path, &new_cert);
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        match post_review(&new_client, &url, BARE_POD_REVIEW).await {
            Ok(response) => {
                assert_eq!(response.status(), 200);
                break;
            }
            Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "new certificate not served in time"
                );
                tokio::time::sleep(RELOAD_INTERVAL).await;
            }
        }
    }
    // A fresh client, because a client that already connected may resume its TLS session
    // without being sent a certificate again.
    assert!(
        post_review(&client(&old_ca), &url, BARE_POD_REVIEW)
            .await
            .is_err(),
        "the old certificate is no longer served"
    );
    let loads = metric_value(
        &server,
        "agent_sidecar_webhook_certificate_reloads_total{outcome=\"success\"}",
    )
    .await;
    assert_eq!(loads, 2.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_certificate_exists() {
    let ca = new_ca("test CA");
    let server = TestServer::start(None).await;
    let (status, body) = server.admin_get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("not_loaded"), "{body}");
    assert_eq!(server.admin_get("/livez").await.0, 200);

    let (cert, key) = serving_pair(&ca);
    replace_file(&server.key_path, &key);
    replace_file(&server.cert_path, &cert);
    server.wait_ready().await;
    let response = post_review(
        &client(&ca),
        &format!("{}/mutate", server.https),
        BARE_POD_REVIEW,
    )
    .await
    .expect("HTTPS request succeeds once the certificate exists");
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_closed() {
    use tokio::io::AsyncReadExt;

    let ca = new_ca("test CA");
    let server = TestServer::start(Some(serving_pair(&ca))).await;
    server.wait_ready().await;
    let address = server.https.trim_start_matches("https://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("TCP connect");

    // A client that never starts the TLS handshake is dropped after the handshake
    // timeout, so stalled connections cannot pile up.
    let started = Instant::now();
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(WAIT_LIMIT, stream.read(&mut buffer))
        .await
        .expect("the server closes the connection within the limit");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2),
        "closed after {elapsed:?}, before the handshake timeout"
    );
    server.stop().await;
}

/// Ends the child on drop, so a failed assertion does not leave it running.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_command_serves_and_stops_on_sigterm() {
    let ca = new_ca("test CA");
    let (cert, key) = serving_pair(&ca);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("tls.crt"), cert).expect("write certificate");
    std::fs::write(dir.path().join("tls.key"), key).expect("write key");
    let https_port = free_port();
    let admin_port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .arg("webhook")
        .arg("--listen")
        .arg(format!("127.0.0.1:{https_port}"))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin_port}"))
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .args(["--sidecar-image", "registry.example.com/agent-sidecar:e2e"])
        .args(["--default-policy", "team-policy"])
        .args(["--shutdown-delay-ms", "1500"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("webhook.log")).expect("log file"))
        .spawn()
        .expect("webhook starts");
    let mut child = ChildGuard(child);

    let deadline = Instant::now() + WAIT_LIMIT;
    let ready_url = format!("http://127.0.0.1:{admin_port}/readyz");
    loop {
        if let Ok(response) = reqwest::get(&ready_url).await
            && response.status() == 200
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "webhook command not ready in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mutate_url = format!("https://127.0.0.1:{https_port}/mutate");
    let response = post_review(&client(&ca), &mutate_url, BARE_POD_REVIEW)
        .await
        .expect("HTTPS request succeeds");
    let review = json_body(response).await;
    let encoded = review["response"]["patch"].as_str().expect("base64 patch");
    let patch = BASE64.decode(encoded).expect("valid base64");
    let patch = String::from_utf8(patch).expect("UTF-8 patch");
    assert!(
        patch.contains("registry.example.com/agent-sidecar:e2e"),
        "{patch}"
    );
    assert!(patch.contains("team-policy"), "{patch}");

    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());

    // During the shutdown delay the webhook reports not ready but still serves reviews.
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let response = reqwest::get(&ready_url).await.expect("admin still answers");
        if response.status() == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readiness did not drop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = post_review(&client(&ca), &mutate_url, BARE_POD_REVIEW)
        .await
        .expect("reviews are answered during the shutdown delay");
    assert_eq!(response.status(), 200);

    let deadline = Instant::now() + WAIT_LIMIT;
    let exit = loop {
        if let Some(exit) = child.0.try_wait().expect("child status") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "webhook did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = std::fs::read_to_string(dir.path().join("webhook.log")).unwrap_or_default();
    assert!(
        exit.success(),
        "webhook exits 0 after SIGTERM: {exit:?}\n{log}"
    );
    assert!(log.contains("webhook stopped"), "{log}");
}

fn wait_ready(url: &str, timeout_secs: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"));
    command
        .args(["wait-ready", "--url", url, "--timeout-secs", timeout_secs])
        .args(["--interval-ms", "50"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_ready_returns_once_ready() {
    let ca = new_ca("test CA");
    let server = TestServer::start(None).await;
    let url = format!("{}/readyz", server.admin);
    let waiter = wait_ready(&url, "10").spawn().expect("wait-ready starts");
    let mut waiter = ChildGuard(waiter);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        waiter.0.try_wait().expect("child status").is_none(),
        "wait-ready returned before the server was ready"
    );

    let (cert, key) = serving_pair(&ca);
    replace_file(&server.key_path, &key);
    replace_file(&server.cert_path, &cert);
    let deadline = Instant::now() + WAIT_LIMIT;
    let exit = loop {
        if let Some(exit) = waiter.0.try_wait().expect("child status") {
            break exit;
        }
        assert!(Instant::now() < deadline, "wait-ready did not return");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_ready_times_out_with_last_status() {
    let server = TestServer::start(None).await;
    let url = format!("{}/readyz", server.admin);
    let output = tokio::task::spawn_blocking(move || wait_ready(&url, "1").output())
        .await
        .expect("blocking task")
        .expect("wait-ready runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not ready after 1 seconds"), "{stderr}");
    assert!(stderr.contains("status 503"), "{stderr}");
    server.stop().await;
}
