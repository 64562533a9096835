//! What the worker's end-to-end tests share: a dev node, the worker binary with a config, and a
//! user who signs vouchers and checks receipts.

#![allow(dead_code, clippy::unwrap_used)]

pub mod pg;

use compute_client::{
    wire::{self, ReceiptJson},
    Chain, Signer,
};
use compute_primitives::{Balance, SignedReceipt, Voucher};
use polkadot_sdk::sp_core::H256;
use serde_json::{json, Value};
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub const WORKER: &str = env!("CARGO_BIN_EXE_compute-worker");
pub const UNIT: Balance = 1_000_000_000_000;
pub const INPUT_PRICE: Balance = 1_000_000;
pub const OUTPUT_PRICE: Balance = 4_000_000;
pub const CAP: Balance = UNIT / 100;
pub const EMBED_PRICE: Balance = 300_000;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

pub fn node_binary() -> PathBuf {
    std::env::var_os("COMPUTE_NODE").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/compute-node")
    })
}

pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("compute-worker-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

pub fn start_node(dir: &Path, rpc: u16) -> Proc {
    let log = std::fs::File::create(dir.join("node.log")).expect("log");
    Proc(
        Command::new(node_binary())
            .args(["--dev", "--sealing", "instant", "--no-telemetry", "--no-mdns", "--base-path"])
            .arg(dir.join("chain"))
            .args(["--rpc-port", &rpc.to_string(), "--port", &free_port().to_string()])
            .args(["--prometheus-port", &free_port().to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("node starts (build it with `cargo test --workspace --no-run`)"),
    )
}

/// A dev node (instant seal) in `dir`, its RPC port, and a client connected to it.
pub async fn dev_chain(dir: &Path) -> (Proc, u16, Chain) {
    let rpc = free_port();
    let node = start_node(dir, rpc);
    let chain = Chain::connect(&format!("ws://127.0.0.1:{rpc}"), Duration::from_secs(120))
        .await
        .expect("node up");
    (node, rpc, chain)
}

/// The worker's config: where it talks, then `rest` (models, services, limits), then where it
/// keeps its data (the `[store]` table, last so that `rest` may hold top-level keys).
pub fn config_with(dir: &Path, rpc: u16, http: u16, rest: &str) -> PathBuf {
    let path = dir.join("worker.toml");
    let head = format!(
        "node_url = \"ws://127.0.0.1:{rpc}\"\nlisten = \"127.0.0.1:{http}\"\n\
         provider_key = \"//Bob\"\n"
    );
    let store = format!("\n[store]\ndata_dir = \"{}\"\n", dir.join("data").display());
    std::fs::write(&path, head + rest + &store).expect("config");
    path
}

pub fn embedding_model() -> PathBuf {
    provider_worker::model::default_embedding_model_path()
        .expect("embedding model missing: run `make model`")
}

pub fn write_config(dir: &Path, rpc: u16, http: u16, model: &Path, max_age: u64) -> PathBuf {
    let rest = format!(
        r#"[chat]
model = "{model}"
parallel = 2
max_tokens = 64
[embeddings]
model = "{embedding}"
[limits]
max_body_bytes = 65536
[[services]]
id = 7
model_name = "SmolLM2-135M-Instruct"
input_price = "{INPUT_PRICE}"
output_price = "{OUTPUT_PRICE}"
verifiability = "none"
[[services]]
id = 8
kind = "embedding"
model_name = "all-MiniLM-L6-v2"
input_price = "{EMBED_PRICE}"
output_price = "0"
verifiability = "none"
[settlement]
threshold_share = 1.0
max_age_secs = {max_age}
tick_ms = 500
"#,
        model = model.display(),
        embedding = embedding_model().display(),
    );
    config_with(dir, rpc, http, &rest)
}

pub fn start_worker(dir: &Path, config: &Path, tag: &str) -> Proc {
    let log = std::fs::File::create(dir.join(format!("worker-{tag}.log"))).expect("log");
    Proc(
        Command::new(WORKER)
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("worker starts"),
    )
}

pub async fn wait_healthy(http: &reqwest::Client, base: &str, dir: &Path, tag: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = std::fs::read_to_string(dir.join(format!("worker-{tag}.log"))).unwrap_or_default();
    panic!("worker never became healthy:\n{log}");
}

/// A user's side of the protocol: nonce and verified total.
pub struct User {
    pub key: Signer,
    pub provider: compute_primitives::AccountId,
    pub genesis: H256,
    pub nonce: u64,
    pub total: Balance,
    pub receipts: Vec<SignedReceipt>,
}

impl User {
    pub fn new(key: &Signer, provider: &Signer, chain: &Chain) -> Self {
        User {
            key: key.clone(),
            provider: provider.account_id(),
            genesis: chain.genesis_hash(),
            nonce: 0,
            total: 0,
            receipts: vec![],
        }
    }

    pub fn voucher(&self, body: &[u8], cap: Balance) -> Voucher {
        self.voucher_for(7, body, cap)
    }

    pub fn voucher_for(&self, service_id: u32, body: &[u8], cap: Balance) -> Voucher {
        Voucher {
            user: self.key.account_id(),
            provider: self.provider.clone(),
            service_id,
            price_version: 0,
            nonce: self.nonce + 1,
            request_hash: wire::request_hash(body),
            spent: self.total,
            cap,
        }
    }

    pub fn header(&self, v: Voucher) -> String {
        wire::to_hex(&wire::sign_voucher(&self.key, v, &self.genesis))
    }

    /// Verify and take a receipt for `v`.
    pub fn accept(&mut self, r: &ReceiptJson, v: &Voucher) -> SignedReceipt {
        self.accept_priced(r, v, (INPUT_PRICE, OUTPUT_PRICE))
    }

    /// Verify and take a receipt for `v` at these (input, output) prices.
    pub fn accept_priced(
        &mut self,
        r: &ReceiptJson,
        v: &Voucher,
        prices: (Balance, Balance),
    ) -> SignedReceipt {
        let signed: SignedReceipt = wire::from_hex("receipt", &r.signed).expect("receipt decodes");
        wire::check_receipt(&signed, v, &self.genesis, prices, self.total)
            .expect("receipt verifies");
        self.nonce = v.nonce;
        self.total = signed.receipt.total;
        self.receipts.push(signed.clone());
        signed
    }
}

pub fn chat_body(text: &str, max_tokens: u64, stream: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": "SmolLM2-135M-Instruct",
        "messages": [{ "role": "user", "content": text }],
        "max_tokens": max_tokens, "temperature": 0, "stream": stream,
    }))
    .expect("json")
}

pub async fn post(
    http: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    voucher: Option<String>,
) -> (u16, Value) {
    let mut req = http.post(url).header("content-type", "application/json").body(body);
    if let Some(v) = voucher {
        req = req.header(wire::VOUCHER_HEADER, v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}
