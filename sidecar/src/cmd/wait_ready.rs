//! `agent-sidecar wait-ready`: poll the sidecar's readiness endpoint until it returns 200.
//! Classic-mode injection runs it as the sidecar's `postStart` hook, which the kubelet
//! waits for before starting the next container, so the agent starts only once the
//! sidecar can guard its traffic.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

/// Flags of `wait-ready`.
#[derive(Debug, Args)]
pub struct WaitReadyArgs {
    /// Readiness URL to poll.
    #[arg(long, default_value = "http://127.0.0.1:14190/readyz")]
    pub url: String,
    /// Seconds to wait before giving up with exit status 1.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Milliseconds between attempts.
    #[arg(long, default_value_t = 250)]
    pub interval_ms: u64,
}

/// Time one readiness request may take; the admin server responds from memory.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

pub fn run(args: WaitReadyArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(wait(args))
}

async fn wait(args: WaitReadyArgs) -> ExitCode {
    let client = match reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .no_proxy()
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            eprintln!("error: cannot build the HTTP client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let interval = Duration::from_millis(args.interval_ms.max(1));
    let mut last = String::from("no attempt made");
    while Instant::now() < deadline {
        match client.get(&args.url).send().await {
            Ok(response) if response.status().is_success() => return ExitCode::SUCCESS,
            Ok(response) => last = format!("status {}", response.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(interval).await;
    }
    eprintln!(
        "error: {} not ready after {} seconds; last attempt: {last}",
        args.url, args.timeout_secs
    );
    ExitCode::FAILURE
}
