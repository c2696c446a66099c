//! Test support: `redis-server` processes on free loopback ports, each in its own data
//! directory and killed by PID when its guard drops, also when a test fails.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// Arguments after `redis-server`, the port included.
    args: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port with AOF on (fsync on every write), in `dir`.
    pub fn start(dir: &Path, extra: &[&str]) -> RedisServer {
        let port = free_port();
        let port_text = port.to_string();
        let dir_text = dir.display().to_string();
        let mut args: Vec<String> = [
            "--port",
            port_text.as_str(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            dir_text.as_str(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = RedisServer {
            child: None,
            port,
            args,
        };
        server.spawn();
        server
    }

    /// Starts a sentinel that monitors the master at `master_port` as `mymaster`.
    pub fn sentinel(dir: &Path, master_port: u16) -> RedisServer {
        let port = free_port();
        let config = dir.join("sentinel.conf");
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {master_port} 1\n",
            dir.display()
        );
        std::fs::write(&config, text).expect("write sentinel.conf");
        let mut server = RedisServer {
            child: None,
            port,
            args: vec![config.display().to_string(), "--sentinel".to_owned()],
        };
        server.spawn();
        server
    }

    pub fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed and starts");
        self.child = Some(child);
        wait_for_pong(self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory, so it reloads its AOF.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("server running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // A stopped process does not act on SIGKILL until it is continued.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Waits until the server replies PONG to PING, or NOAUTH when it requires a password,
/// rather than LOADING, for at most 10 seconds.
pub fn wait_for_pong(port: u16) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let mut reply = [0u8; 64];
            let answered = stream.write_all(b"PING\r\n").is_ok()
                && stream.read(&mut reply).is_ok_and(|n| {
                    reply[..n].starts_with(b"+PONG") || reply[..n].starts_with(b"-NOAUTH")
                });
            if answered {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on port {port} did not answer PING within 10 seconds");
}

/// Three masters on loopback ports, joined with `redis-cli --cluster create`.
pub struct Cluster {
    pub servers: Vec<RedisServer>,
}

impl Cluster {
    pub fn start(root: &Path) -> Cluster {
        let servers: Vec<RedisServer> = (0..3)
            .map(|i| {
                let dir = root.join(format!("node-{i}"));
                std::fs::create_dir_all(&dir).expect("node dir");
                RedisServer::start(
                    &dir,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect();
        let addresses: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Cluster { servers };
        cluster.wait_until_ok();
        cluster
    }

    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let all_ok = self.servers.iter().all(|s| {
                Command::new("redis-cli")
                    .args(["-p", &s.port.to_string(), "cluster", "info"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
                    .unwrap_or(false)
            });
            if all_ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("cluster did not reach cluster_state:ok within 15 seconds");
    }
}
