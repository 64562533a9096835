//! Helpers shared by the CLI's integration tests: free ports, the workspace's built binaries, a
//! dev node with instant seal, child processes that die with the test, and the `compute` CLI
//! run with a bounded wait.

#![allow(clippy::unwrap_used, dead_code)]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// The `compute` binary under test: this build's, or the one named by `COMPUTE_TEST_CLI` (to
/// run the same tests against another build, e.g. an older commit's).
pub fn cli_bin() -> PathBuf {
    std::env::var_os("COMPUTE_TEST_CLI")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_compute")), PathBuf::from)
}
pub const BOB: &str = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A binary of the workspace's debug build (`cargo test --workspace --no-run` builds them).
pub fn built(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug").join(name)
}

/// A child process killed when dropped.
pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh empty directory under the system temp dir.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A dev node (instant seal) with its chain in `dir/chain`; returns it and its RPC port.
pub fn start_node(dir: &Path) -> (Proc, u16) {
    let node = built("compute-node");
    assert!(node.exists(), "{} missing: run `cargo test --workspace --no-run`", node.display());
    let rpc = free_port();
    let proc = Proc(
        Command::new(node)
            .args(["--dev", "--sealing", "instant", "--no-telemetry", "--no-mdns", "--base-path"])
            .arg(dir.join("chain"))
            .args([
                "--rpc-port",
                &rpc.to_string(),
                "--port",
                &free_port().to_string(),
                "--no-prometheus",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    (proc, rpc)
}

/// What a CLI run left: exit status and everything it printed.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Ran {
    /// Succeeded: its stdout.
    pub fn ok(&self) -> &str {
        assert!(self.status.success(), "stdout: {}\nstderr: {}", self.stdout, self.stderr);
        &self.stdout
    }

    /// Failed with an error, not a panic: its stderr.
    pub fn fails(&self) -> &str {
        assert!(!self.status.success(), "expected a failure; stdout: {}", self.stdout);
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        &self.stderr
    }
}

/// The `compute` CLI as Charlie, with its state in `dir/state.json`; killed (and the test
/// failed) when it runs past `guard`. Output goes through files so that a CLI printing a lot
/// never blocks on a pipe.
pub fn cli(dir: &Path, rpc: u16, args: &[&str], guard: Duration) -> Ran {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (out, err) = (dir.join(format!("run{n}.out")), dir.join(format!("run{n}.err")));
    let start = Instant::now();
    let mut child = Command::new(cli_bin())
        .args(args)
        .env("COMPUTE_NODE", format!("ws://127.0.0.1:{rpc}"))
        .env("COMPUTE_KEY", "//Charlie")
        .env("COMPUTE_STATE", dir.join("state.json"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > guard {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`compute {}` still running after {guard:?}; stderr: {}",
                args.join(" "),
                String::from_utf8_lossy(&std::fs::read(&err).unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
    Ran { status, stdout: read(&out), stderr: read(&err), took: start.elapsed() }
}

/// Poll `cond` every 100 ms until it holds; fail with `what` after `wait`.
pub fn wait_until(what: &str, wait: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + wait;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
