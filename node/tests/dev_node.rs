//! End to end: a real `compute-node --dev --sealing instant` on free ports, driven by subxt.

use std::{
    io::Read,
    net::TcpListener,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};
use subxt::{
    dynamic::{self, Value},
    ext::scale_value::At,
    rpcs::{rpc_params, RpcClient},
    OnlineClient, PolkadotConfig,
};
use subxt_signer::sr25519::dev;

const NODE: &str = env!("CARGO_BIN_EXE_compute-node");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A node process that is interrupted (SIGINT) when dropped.
struct DevNode {
    child: Option<Child>,
    rpc_port: u16,
    _dir: tempdir::TempDir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct TempDir(pub std::path::PathBuf);
    impl TempDir {
        pub fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("compute-node-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl DevNode {
    fn start(tag: &str, extra: &[&str]) -> DevNode {
        let dir = tempdir::TempDir::new(tag);
        let rpc_port = free_port();
        let log = std::fs::File::create(dir.0.join("node.log")).expect("log file");
        let child = Command::new(NODE)
            .args(["--dev", "--base-path"])
            .arg(&dir.0)
            .args(["--rpc-port", &rpc_port.to_string()])
            .args(["--port", &free_port().to_string()])
            .args(["--prometheus-port", &free_port().to_string()])
            .args(["--no-telemetry", "--no-mdns"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("compute-node starts");
        DevNode { child: Some(child), rpc_port, _dir: dir }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.rpc_port)
    }

    fn log(&self) -> String {
        let mut s = String::new();
        let _ =
            std::fs::File::open(self._dir.0.join("node.log")).map(|mut f| f.read_to_string(&mut s));
        s
    }

    async fn client(&self) -> OnlineClient<PolkadotConfig> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match OnlineClient::<PolkadotConfig>::from_insecure_url(self.url()).await {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                Err(e) => panic!("node RPC never came up: {e}\n{}", self.log()),
            }
        }
    }

    /// SIGINT, then wait up to 60 s for a clean exit.
    fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("node did not stop within 60 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for DevNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn free_balance(api: &OnlineClient<PolkadotConfig>, who: [u8; 32]) -> u128 {
    let at = api.at_current_block().await.expect("best block");
    let addr = dynamic::storage::<([u8; 32],), Value>("System", "Account");
    let info =
        at.storage().fetch(addr, (who,)).await.expect("account read").decode().expect("decodes");
    info.at("data").and_then(|d| d.at("free")).and_then(|f| f.as_u128()).expect("data.free")
}

#[tokio::test(flavor = "multi_thread")]
async fn instant_seal_includes_a_signed_transfer_and_stops_cleanly() {
    let mut node = DevNode::start("transfer", &["--sealing", "instant"]);
    let api = node.client().await;
    let (alice, bob) = (dev::alice(), dev::bob());
    let bob_id: [u8; 32] = bob.public_key().0;
    let before = free_balance(&api, bob_id).await;

    let amount = 1_234_000_000_000u128;
    let tx = dynamic::transaction(
        "Balances",
        "transfer_keep_alive",
        (bob.public_key().to_address::<()>(), amount),
    );
    let at = api.at_current_block().await.expect("best block");
    let events = at
        .transactions()
        .sign_and_submit_then_watch_default(&tx, &alice)
        .await
        .expect("submitted")
        .wait_for_finalized_success()
        .await
        .expect("included, finalized and successful");
    let names: Vec<String> = events
        .iter()
        .map(|e| {
            e.map(|e| format!("{}.{}", e.pallet_name(), e.event_name())).expect("event decodes")
        })
        .collect();
    assert!(names.contains(&"Balances.Transfer".to_string()), "events: {names:?}");
    assert!(
        names.contains(&"TransactionPayment.TransactionFeePaid".to_string()),
        "events: {names:?}"
    );

    assert_eq!(free_balance(&api, bob_id).await, before + amount);

    // The same state over the node's own RPC: the block is finalized and compute_* answers.
    let rpc = RpcClient::from_insecure_url(node.url()).await.expect("rpc client");
    let finalized: String =
        rpc.request("chain_getFinalizedHead", rpc_params![]).await.expect("finalized head");
    let header: serde_json::Value =
        rpc.request("chain_getHeader", rpc_params![finalized]).await.expect("header");
    let number =
        u64::from_str_radix(header["number"].as_str().unwrap().trim_start_matches("0x"), 16)
            .unwrap();
    assert!(number >= 1, "a block was sealed and finalized");
    let params: serde_json::Value =
        rpc.request("compute_params", rpc_params![]).await.expect("compute_params");
    assert_eq!(params["refundLock"], 3);
    assert_eq!(params["maxBatch"], 1024);
    let services: serde_json::Value =
        rpc.request("compute_services", rpc_params![]).await.expect("compute_services");
    assert_eq!(services, serde_json::json!([]));

    drop(api);
    let status = node.stop();
    assert!(status.success(), "node exited with {status}\n{}", node.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_seal_authors_only_on_request() {
    let node = DevNode::start("manual", &["--sealing", "manual"]);
    let _ = node.client().await;
    let rpc = RpcClient::from_insecure_url(node.url()).await.expect("rpc client");
    let created: serde_json::Value = rpc
        .request("engine_createBlock", rpc_params![true, true])
        .await
        .expect("engine_createBlock");
    assert!(created["hash"].is_string(), "{created}");
    let header: serde_json::Value =
        rpc.request("chain_getHeader", rpc_params![]).await.expect("header");
    assert_eq!(header["number"], "0x1");
}

fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let out = Command::new(NODE).args(args).output().expect("runs");
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_command_lines_fail_with_a_clear_message() {
    let (status, err) = run_to_exit(&["--no-such-flag"]);
    assert!(!status.success());
    assert!(err.contains("--no-such-flag"), "{err}");

    let (status, err) = run_to_exit(&["--dev", "--sealing", "sometimes"]);
    assert!(!status.success());
    assert!(err.contains("expected `instant`, `manual` or a number"), "{err}");

    let dir = tempdir::TempDir::new("badspec");
    let spec = dir.0.join("spec.json");
    std::fs::write(&spec, b"{ not json").unwrap();
    let (status, err) =
        run_to_exit(&["--chain", spec.to_str().unwrap(), "--base-path", dir.0.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("cannot load chain spec"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_port_in_use_is_reported() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempdir::TempDir::new("port");
    let (status, err) = run_to_exit(&[
        "--dev",
        "--base-path",
        dir.0.to_str().unwrap(),
        "--rpc-port",
        &port,
        "--port",
        &free_port().to_string(),
        "--no-prometheus",
    ]);
    assert!(!status.success());
    assert!(err.contains(&format!("--rpc-port {port} cannot be used")), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
