//! The `compute` CLI against real parts: a dev node (instant seal) and a `compute-worker`
//! serving SmolLM2 and all-MiniLM-L6-v2 (both built by `cargo test --workspace --no-run`; the
//! models by `make model`).

#![allow(clippy::unwrap_used)]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

const CLI: &str = env!("CARGO_BIN_EXE_compute");
const BOB: &str = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn built(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug").join(name)
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(dir: &Path, rpc: u16, args: &[&str]) -> Output {
    Command::new(CLI)
        .args(args)
        .env("COMPUTE_NODE", format!("ws://127.0.0.1:{rpc}"))
        .env("COMPUTE_KEY", "//Charlie")
        .env("COMPUTE_STATE", dir.join("state.json"))
        .output()
        .unwrap()
}

fn run_with_stdin(dir: &Path, rpc: u16, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(CLI)
        .args(args)
        .env("COMPUTE_NODE", format!("ws://127.0.0.1:{rpc}"))
        .env("COMPUTE_KEY", "//Charlie")
        .env("COMPUTE_STATE", dir.join("state.json"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// `curl` a URL (POST with a JSON body when given) with an API key: status code and JSON answer.
fn curl(url: &str, token: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", url]);
    cmd.args(["-H", &format!("authorization: Bearer {token}")]);
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "--data-binary", b]);
    }
    let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
    let (json, code) = out.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), serde_json::from_str(json).unwrap_or(serde_json::Value::Null))
}

fn ok(out: &Output) -> String {
    let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "stdout: {o}\nstderr: {e}");
    o.into_owned()
}

fn fails(out: &Output) -> String {
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!e.contains("panicked"), "{e}");
    e
}

#[test]
fn fund_chat_ack_and_refund_through_the_cli() {
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.exists(), "model missing: run `make model`");
    let embedding = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2");
    assert!(embedding.join("model.safetensors").exists(), "embedding model missing: `make model`");
    let dir = std::env::temp_dir().join(format!("compute-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // The node is not there yet: a clear error, no panic.
    let rpc = free_port();
    let e = fails(&run(&dir, rpc, &["services"]));
    assert!(e.contains("is a node running"), "{e}");

    let _node = Proc(
        Command::new(built("compute-node"))
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
    let http = free_port();
    std::fs::write(
        dir.join("worker.toml"),
        format!(
            "node_url = \"ws://127.0.0.1:{rpc}\"\nlisten = \"127.0.0.1:{http}\"\nprovider_key = \"//Bob\"\n\
             [store]\ndata_dir = \"{}\"\n[chat]\nmodel = \"{}\"\n[embeddings]\nmodel = \"{}\"\n\
             [[services]]\nid = 0\nmodel_name = \"SmolLM2-135M-Instruct\"\n\
             input_price = \"1000000\"\noutput_price = \"4000000\"\n\
             [[services]]\nid = 1\nkind = \"embedding\"\ninput_price = \"250000\"\noutput_price = \"0\"\n\
             [settlement]\nmax_age_secs = 1\ntick_ms = 500\n",
            dir.join("worker").display(),
            model.display(),
            embedding.display()
        ),
    )
    .unwrap();
    let _worker = Proc(
        Command::new(built("compute-worker"))
            .arg("--config")
            .arg(dir.join("worker.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    while !ok_services(&dir, rpc) {
        assert!(Instant::now() < deadline, "worker never registered its service");
        std::thread::sleep(Duration::from_millis(500));
    }
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(Instant::now() < deadline, "worker never listened");
        std::thread::sleep(Duration::from_millis(250));
    }

    // No escrow yet: the error says what to deposit.
    let e = fails(&run(&dir, rpc, &["chat", BOB, "Hi"]));
    assert!(e.contains("no escrow") && e.contains("compute deposit"), "{e}");
    let e = fails(&run(&dir, rpc, &["deposit", "5Nope", "1unit"]));
    assert!(e.contains("not an SS58 address"), "{e}");

    ok(&run(&dir, rpc, &["deposit", BOB, "0.5unit"]));
    let out = ok(&run(&dir, rpc, &["--json", "chat", BOB, "Say hello.", "--max-tokens", "8"]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let total1: u128 = v["receipt"]["total"].as_str().unwrap().parse().unwrap();
    assert!(total1 > 0 && !v["text"].as_str().unwrap().is_empty());
    // A second chat continues from the stored nonce and total (a new process each time).
    let out = ok(&run(&dir, rpc, &["--json", "chat", BOB, "Name a colour.", "--max-tokens", "6"]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["receipt"]["nonce"], 2);
    let total2: u128 = v["receipt"]["total"].as_str().unwrap().parse().unwrap();
    assert!(total2 > total1);
    // Streamed to the terminal, and not streamed: the text, then the receipt's figures.
    // Recounted with the model's own tokenizer: the worker's receipt holds up.
    let out = ok(&run(
        &dir,
        rpc,
        &[
            "chat",
            BOB,
            "Count to three.",
            "--max-tokens",
            "6",
            "--recount-model",
            model.to_str().unwrap(),
        ],
    ));
    assert!(out.contains("completion tokens, fee"), "{out}");
    let out = ok(&run(&dir, rpc, &["chat", BOB, "Hi", "--max-tokens", "4", "--no-stream"]));
    assert!(out.contains("completion tokens, fee"), "{out}");
    // An interactive session: two paid turns, history kept, /reset and /quit understood.
    let out = run_with_stdin(
        &dir,
        rpc,
        &["chat", BOB, "--max-tokens", "5"],
        "Hello there.\n/reset\n\nName a fruit.\n/quit\nnever sent\n",
    );
    let (o, e) = (ok(&out), String::from_utf8_lossy(&out.stderr).into_owned());
    assert_eq!(e.matches("completion tokens, fee").count(), 2, "stdout {o}\nstderr {e}");
    assert!(e.contains("history cleared"), "{e}");
    // A cap too small for the prompt: refused with a fee-0 receipt, the state moves on.
    let e = fails(&run(&dir, rpc, &["chat", BOB, "Hi", "--cap", "1"]));
    assert!(e.contains("cap_too_low"), "{e}");
    // A cap above what the escrow can cover: refused, with how much more to deposit.
    let e = fails(&run(&dir, rpc, &["chat", BOB, "Hi", "--cap", "1unit"]));
    assert!(e.contains("insufficient_escrow") && e.contains("deposit at least 0.5"), "{e}");

    // Embeddings of two texts, input tokens recounted with the model's own tokenizer:
    // [CLS] hello , world ! [SEP] and [CLS] hi [SEP] cost 9 × 250 000.
    let out = ok(&run(
        &dir,
        rpc,
        &[
            "--json",
            "embed",
            BOB,
            "Hello, World!",
            "hi",
            "--recount-embedding-model",
            embedding.to_str().unwrap(),
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["data"][0]["embedding"].as_array().map(Vec::len), Some(384));
    assert_eq!(
        (v["receipt"]["input_tokens"].as_u64(), v["receipt"]["fee"].as_str()),
        (Some(9), Some("2250000"))
    );
    let out = ok(&run(&dir, rpc, &["embed", BOB, "One more."]));
    assert!(out.contains("384 dimensions") && out.contains("input tokens, fee"), "{out}");

    // The local OpenAI proxy: its own errors in OpenAI's shape, then a paid request. Its API key
    // is generated at start into `proxy-token` beside the state file.
    let _ = std::fs::remove_file(dir.join("proxy-token"));
    let proxy_port = free_port();
    let _proxy = Proc(
        Command::new(CLI)
            .args(["proxy", BOB, "--listen", &format!("127.0.0.1:{proxy_port}")])
            .env("COMPUTE_NODE", format!("ws://127.0.0.1:{rpc}"))
            .env("COMPUTE_KEY", "//Charlie")
            .env("COMPUTE_STATE", dir.join("state.json"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{proxy_port}/v1");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", proxy_port)).is_err() {
        assert!(Instant::now() < deadline, "proxy never listened");
        std::thread::sleep(Duration::from_millis(100));
    }
    let token_file = dir.join("proxy-token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the token is private");
    }
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    // Without the key, or with another, nothing is signed.
    let (code, body) = curl(&format!("{base}/models"), "wrong", None);
    assert_eq!((code, body["error"]["code"].as_str()), (401, Some("invalid_api_key")), "{body}");
    let (code, body) = curl(&format!("{base}/chat/completions"), &token, Some("{not json"));
    assert_eq!((code, body["error"]["code"].as_str()), (400, Some("invalid_json")), "{body}");
    let (code, body) = curl(
        &format!("{base}/chat/completions"),
        &token,
        Some(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#),
    );
    assert_eq!((code, body["error"]["code"].as_str()), (404, Some("model_not_found")), "{body}");
    let (code, body) = curl(&format!("{base}/models"), &token, None);
    assert_eq!((code, body["data"][0]["id"].as_str()), (200, Some("SmolLM2-135M-Instruct")));
    let (code, body) = curl(
        &format!("{base}/chat/completions"),
        &token,
        Some(
            r#"{"model":"SmolLM2-135M-Instruct","max_tokens":5,"messages":[{"role":"user","content":"Hi"}]}"#,
        ),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["receipt"]["nonce"], 11, "the proxy continues the CLI's sequence: {body}");

    ok(&run(&dir, rpc, &["ack", BOB]));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let entry = state["providers"].as_object().unwrap().values().next().unwrap().clone();
    assert_eq!(entry["nonce"], 12);
    let total: u128 = entry["total"].as_str().unwrap().parse().unwrap();
    assert!(total > total2);
    // Every receipt the worker holds for Charlie, fetched with a signed challenge and verified.
    let out = ok(&run(&dir, rpc, &["--json", "receipts", BOB]));
    let list: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(list.len(), 12);
    assert_eq!(list[11]["total"], total.to_string());

    // The worker settles the ack (max age 1 s): the chain shows the exact total.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = ok(&run(&dir, rpc, &["--json", "escrow", BOB]));
        let e: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        if e["settled_nonce"] == 12 {
            assert_eq!(e["settled_total"], total.to_string());
            assert_eq!(e["balance"], (500_000_000_000u128 - total).to_string());
            break;
        }
        assert!(Instant::now() < deadline, "not settled: {e}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Nothing was over-claimed: a dispute is refused before it reaches the chain.
    let e = fails(&run(&dir, rpc, &["dispute", BOB]));
    assert!(e.contains("nothing to dispute"), "{e}");

    // Every served chat answer was kept with its activation proof. The audit downloads the
    // weights the service committed to (checked against the hash on chain), recomputes each
    // proof with one prefill, and every answer holds up: the four single chats, the two
    // interactive turns and the proxy's answer.
    let out = ok(&run(&dir, rpc, &["--json", "audit", BOB]));
    let findings: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap();
    let nonces: Vec<u64> = findings.iter().map(|f| f["nonce"].as_u64().unwrap()).collect();
    assert_eq!(nonces, [1, 2, 3, 4, 5, 6, 11], "{out}");
    assert!(findings.iter().all(|f| f["passed"] == true), "{out}");
    let cached = std::fs::read_dir(dir.join("weights")).unwrap().count();
    assert_eq!(cached, 1, "the downloaded weights are cached");
    // A local copy that is not the committed file is refused: nothing is checked against it.
    let wrong = embedding.join("model.safetensors");
    let out = run(&dir, rpc, &["audit", BOB, "--weights", wrong.to_str().unwrap()]);
    let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && e.contains("7 of 7 answers"), "{o}\n{e}");
    assert!(o.contains("is not the weights the service committed to"), "{o}");
    // An answer whose text is not what its proof's tokens say fails, and the audit says so.
    let kept = std::fs::read_dir(dir.join("kept")).unwrap().next().unwrap().unwrap().path();
    let kept = std::fs::read_dir(kept).unwrap().next().unwrap().unwrap().path();
    let first = kept.join(format!("{:020}.json", 1));
    let mut answer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&first).unwrap()).unwrap();
    answer["text"] = "Something else entirely.".into();
    std::fs::write(&first, answer.to_string()).unwrap();
    let out = run(&dir, rpc, &["audit", BOB, "--sample", "1"]);
    let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && e.contains("1 of 7 answers"), "{o}\n{e}");
    assert!(o.contains("FAIL nonce      1") && o.contains("not what the proven tokens say"), "{o}");

    // Refund: withdrawing before the unlock names the block.
    ok(&run(&dir, rpc, &["refund", "request", BOB, "0.1unit"]));
    let e = fails(&run(&dir, rpc, &["refund", "withdraw", BOB]));
    assert!(e.contains("unlocks at block"), "{e}");
    let e = fails(&run(&dir, rpc, &["refund", "request", BOB, "10unit"]));
    assert!(e.contains("escrow balance is"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn ok_services(dir: &Path, rpc: u16) -> bool {
    let out = run(dir, rpc, &["--json", "services"]);
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("SmolLM2")
}
