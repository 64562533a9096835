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
    let _serial = serial();
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
            .stderr(std::fs::File::create(dir.join("worker.log")).unwrap())
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

    // The worker settles what Charlie signed (max age 1 s): the chain shows the exact total.
    // The ack itself is sent only when it collects something; when the last paid voucher
    // (nonce 11) was settled before the ack came, it collected everything already.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = ok(&run(&dir, rpc, &["--json", "escrow", BOB]));
        let e: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        if e["settled_total"] == total.to_string() {
            assert!(e["settled_nonce"] == 11 || e["settled_nonce"] == 12, "{e}");
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

/// The tests of this file each start a node and workers; on a small machine they take turns.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The CLI as `key` with its own state file under `dir/<name>`.
fn run_as(dir: &Path, name: &str, key: &str, rpc: u16, args: &[&str]) -> Command {
    std::fs::create_dir_all(dir.join(name)).unwrap();
    let mut cmd = Command::new(CLI);
    cmd.args(args)
        .env("COMPUTE_NODE", format!("ws://127.0.0.1:{rpc}"))
        .env("COMPUTE_KEY", key)
        .env("COMPUTE_STATE", dir.join(name).join("state.json"));
    cmd
}

/// Run `cmd`, killing it after `secs`.
fn within(mut cmd: Command, secs: u64) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    rx.recv_timeout(Duration::from_secs(secs)).unwrap_or_else(|_| {
        let _ = Command::new("kill").arg(id.to_string()).status();
        panic!("{cmd:?} ran past {secs} s")
    })
}

/// A worker serving `model` as provider `key` (one chat service, settling at once).
fn chat_worker(dir: &Path, name: &str, key: &str, rpc: u16, http: u16, model: &Path) -> Proc {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "node_url = \"ws://127.0.0.1:{rpc}\"\nlisten = \"127.0.0.1:{http}\"\nprovider_key = \"{key}\"\n\
             [store]\ndata_dir = \"{}\"\n[chat]\nmodel = \"{}\"\n\
             [[services]]\nid = 0\nmodel_name = \"SmolLM2-135M-Instruct\"\n\
             input_price = \"1000000\"\noutput_price = \"4000000\"\n\
             [settlement]\nmax_age_secs = 1\ntick_ms = 500\n",
            dir.join(name).display(),
            model.display(),
        ),
    )
    .unwrap();
    Proc(
        Command::new(built("compute-worker"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap(),
    )
}

const CHARLIE: &str = "5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y";
const DAVE: &str = "5DAAnrj7VHTznn2AWBemMuyBwZWs6FNFjdyVXUeYum3PTXFy";
const UNIT: u128 = 1_000_000_000_000;

/// Bob serves SmolLM2; Dave serves a substitute (the same file with the low bit of every byte of
/// its last 40 % flipped) while his service claims SmolLM2's hash. Eve and Ferdie run verifier
/// daemons. Charlie's audit flags Dave's answer and not Bob's; his challenge of Bob's answer is
/// rejected (Bob keeps his bond, the deposit pays the verifiers) and his challenge of Dave's is
/// upheld with the exact refund and slash; bad evidence and a replay are refused by the chain.
#[test]
fn a_substitute_model_loses_its_challenge_and_an_honest_one_survives() {
    use compute_client::{Chain, Signer};
    let _serial = serial();
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.exists(), "model missing: run `make model`");
    let dir = std::env::temp_dir().join(format!("compute-challenge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let substitute = dir.join("substitute.gguf");
    let mut bytes = std::fs::read(&model).unwrap();
    let from = bytes.len() * 6 / 10;
    bytes[from..].iter_mut().for_each(|b| *b ^= 1);
    std::fs::write(&substitute, bytes).unwrap();

    let rpc = free_port();
    let _node = Proc(
        Command::new(built("compute-node"))
            .args(["--dev", "--sealing", "instant", "--no-telemetry", "--no-mdns", "--base-path"])
            .arg(dir.join("chain"))
            .args(["--rpc-port", &rpc.to_string(), "--port", &free_port().to_string()])
            .arg("--no-prometheus")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let chain =
        rt.block_on(Chain::connect(&format!("ws://127.0.0.1:{rpc}"), Duration::from_secs(60)));
    let chain = chain.unwrap();
    // Settled payments stay challengeable for 500 blocks (the dev chain's window is 3).
    rt.block_on(chain.sudo_set_dispute_window(&Signer::from_uri("//Alice").unwrap(), 500)).unwrap();
    let (bob_http, dave_http) = (free_port(), free_port());
    let _bob = chat_worker(&dir, "bob", "//Bob", rpc, bob_http, &model);
    let _dave = chat_worker(&dir, "dave", "//Dave", rpc, dave_http, &substitute);
    let bob: compute_primitives::AccountId = BOB.parse().unwrap();
    let dave: compute_primitives::AccountId = DAVE.parse().unwrap();
    let charlie: compute_primitives::AccountId = CHARLIE.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    let services = |who| rt.block_on(chain.services_of(who)).unwrap();
    while services(&bob).is_empty() || services(&dave).is_empty() {
        assert!(Instant::now() < deadline, "the workers never registered their services");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Dave's operator points his service at SmolLM2's hash; his worker keeps serving the
    // substitute and now signs receipts naming SmolLM2's weights.
    let honest =
        polkadot_sdk::sp_core::H256(compute_inference::weights::file_hash(&model).unwrap());
    let mut terms = services(&dave)[0].terms();
    assert_ne!(terms.model_hash, honest, "the substitute has its own hash");
    terms.model_hash = honest;
    let dave_key = Signer::from_uri("//Dave").unwrap();
    rt.block_on(chain.register_service(&dave_key, 0, &terms, true)).unwrap();
    let models = |port: u16| {
        let url = format!("http://127.0.0.1:{port}/v1/models");
        let out = Command::new("curl").args(["-s", &url]).output();
        let out = String::from_utf8(out.map(|o| o.stdout).unwrap_or_default()).unwrap();
        serde_json::from_str::<serde_json::Value>(&out).unwrap_or_default()
    };
    while models(dave_http)["data"][0]["model_hash"] != format!("{honest:?}") {
        assert!(Instant::now() < deadline, "Dave's worker never saw its new terms");
        std::thread::sleep(Duration::from_millis(250));
    }
    while models(bob_http)["data"][0]["model_hash"] != format!("{honest:?}") {
        assert!(Instant::now() < deadline, "Bob's worker never listened");
        std::thread::sleep(Duration::from_millis(250));
    }

    // Eve and Ferdie bond as verifiers and run the daemon with a local copy of SmolLM2.
    let mut verifiers = Vec::new();
    for (name, key) in [("eve", "//Eve"), ("ferdie", "//Ferdie")] {
        ok(&within(run_as(&dir, name, key, rpc, &["verifier", "join"]), 60));
        let mut cmd = run_as(
            &dir,
            name,
            key,
            rpc,
            &["verifier", "run", "--poll", "1", "--weights", model.to_str().unwrap()],
        );
        let log = std::fs::File::create(dir.join(format!("{name}-verifier.log"))).unwrap();
        verifiers.push(Proc(cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap()));
    }

    // Charlie pays both and asks each the same question.
    let charlie_cli = |args: &[&str]| run_as(&dir, "charlie", "//Charlie", rpc, args);
    for p in [BOB, DAVE] {
        ok(&within(charlie_cli(&["deposit", p, "0.5unit"]), 60));
        let args = ["chat", p, "Name three colours.", "--max-tokens", "12", "--temperature", "0"];
        ok(&within(charlie_cli(&args), 120));
    }
    let weights = model.to_str().unwrap();
    ok(&within(charlie_cli(&["audit", BOB, "--weights", weights]), 120));
    let out = within(charlie_cli(&["audit", DAVE, "--weights", weights]), 120);
    let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && e.contains("1 of 1 answers"), "{o}\n{e}");
    assert!(o.contains("not these weights' answer"), "{o}");

    // Both answers are settled (the workers settle within a second).
    for p in [&bob, &dave] {
        while rt.block_on(chain.escrow(&charlie, p, None)).unwrap().unwrap().settled_nonce < 1 {
            assert!(Instant::now() < deadline, "not settled");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    // Evidence that is not what the receipt commits to is refused by the chain, by name.
    let kept = |provider: &str| {
        dir.join("charlie/kept").join(CHARLIE).join(provider).join(format!("{:020}.json", 1))
    };
    let original = std::fs::read_to_string(kept(BOB)).unwrap();
    for (field, value, error) in [
        ("text", serde_json::json!("Red, green and blue."), "ResponseMismatch"),
        ("body", serde_json::json!("{\"messages\":[]}"), "RequestMismatch"),
        ("proof", serde_json::json!("0x0100000000"), "ProofMismatch"),
    ] {
        let mut answer: serde_json::Value = serde_json::from_str(&original).unwrap();
        answer[field] = value;
        std::fs::write(kept(BOB), answer.to_string()).unwrap();
        let e = fails(&within(charlie_cli(&["challenge", BOB, "1"]), 60));
        assert!(e.contains(error), "{field}: {e}");
    }
    std::fs::write(kept(BOB), &original).unwrap();

    // Bob served honestly: both verifiers find the proof holds and the challenge is rejected.
    let bond = |p| rt.block_on(chain.provider(p)).unwrap().unwrap().bond;
    let bob_bond = bond(&bob);
    let out = ok(&within(charlie_cli(&["--json", "challenge", BOB, "1", "--wait"]), 180));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["outcome"], "Rejected", "{v}");
    assert_eq!(bond(&bob), bob_bond, "an honest provider keeps its bond");
    let record = rt.block_on(chain.challenge_record(&bob)).unwrap();
    assert_eq!((record.won, record.lost, record.open), (1, 0, 0));
    // The same receipt cannot be challenged twice.
    let e = fails(&within(charlie_cli(&["challenge", BOB, "1"]), 60));
    assert!(e.contains("AlreadyChallenged"), "{e}");

    // Dave's answer is not SmolLM2's: upheld, the fee back on Charlie's escrow, the slash
    // (99 times the fee, at least 5 units) from Dave's bond.
    let answer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kept(DAVE)).unwrap()).unwrap();
    let receipt: compute_primitives::SignedReceipt =
        compute_client::wire::from_hex("receipt", answer["receipt"].as_str().unwrap()).unwrap();
    let fee = receipt.receipt.fee;
    let escrow_before = rt.block_on(chain.escrow(&charlie, &dave, None)).unwrap().unwrap();
    let dave_bond = bond(&dave);
    let out = ok(&within(charlie_cli(&["--json", "challenge", DAVE, "1", "--wait"]), 180));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let slash = (99 * fee).max(5 * UNIT);
    assert_eq!(v["outcome"], "Upheld", "{v}");
    assert_eq!(v["refunded"], fee.to_string());
    assert_eq!(v["slashed"], slash.to_string());
    assert_eq!(v["reward"], (slash * 3 / 10).to_string(), "30 % of the slash to the challenger");
    let escrow_after = rt.block_on(chain.escrow(&charlie, &dave, None)).unwrap().unwrap();
    assert_eq!(escrow_after.balance, escrow_before.balance + fee);
    assert_eq!(escrow_after.settled_total, escrow_before.settled_total, "the voucher stays spent");
    assert_eq!(bond(&dave), dave_bond - slash);
    let record = rt.block_on(chain.challenge_record(&dave)).unwrap();
    assert_eq!((record.won, record.lost, record.open), (0, 1, 0));
    // The statistics every user sees.
    let out = ok(&within(charlie_cli(&["--json", "services"]), 60));
    let list: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap();
    let stats = |who: &str| {
        let s = list.iter().find(|s| s["provider"] == who).unwrap();
        (s["challenges_won"].as_u64(), s["challenges_lost"].as_u64())
    };
    assert_eq!((stats(BOB), stats(DAVE)), ((Some(1), Some(0)), (Some(0), Some(1))));
    for who in ["//Eve", "//Ferdie"] {
        let me = Signer::from_uri(who).unwrap().account_id();
        let v = rt.block_on(chain.verifier(&me)).unwrap().unwrap();
        assert_eq!((v.with_majority, v.against_majority, v.missed, v.assigned), (2, 0, 0, 0));
    }
    drop(verifiers);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Charlie fine-tunes Bob's SmolLM2 through the CLI: the dataset is uploaded and counted, the
/// job created on chain reserves tokens × epochs × price, Bob's worker accepts, trains,
/// delivers the encrypted adapter; the CLI checks it against the commitment, acknowledges,
/// opens the sealed key and decrypts. The fee is exactly trained tokens × price, kept by the
/// job for the contest window; the rest of the reserve is back on the escrow. The adapter is
/// deployed and paid for like any chat. Two more jobs: the second waits unaccepted while the
/// first trains; stopping the first over HTTP alone is refused; cancelling it on chain pays Bob
/// the abandonment share, stops its training and lets the second be accepted.
#[test]
fn a_finetuning_job_is_trained_delivered_and_paid_exactly() {
    use compute_client::Chain;
    use compute_primitives::JobState;
    let _serial = serial();
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.exists(), "model missing: run `make model`");
    let dir = std::env::temp_dir().join(format!("compute-finetune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rpc = free_port();
    let _node = Proc(
        Command::new(built("compute-node"))
            .args(["--dev", "--sealing", "instant", "--no-telemetry", "--no-mdns", "--base-path"])
            .arg(dir.join("chain"))
            .args(["--rpc-port", &rpc.to_string(), "--port", &free_port().to_string()])
            .arg("--no-prometheus")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    const PRICE: u128 = 1_000_000;
    let http = free_port();
    let config = dir.join("bob.toml");
    std::fs::write(
        &config,
        format!(
            "node_url = \"ws://127.0.0.1:{rpc}\"\nlisten = \"127.0.0.1:{http}\"\nprovider_key = \"//Bob\"\n\
             [store]\ndata_dir = \"{}\"\n[chat]\nmodel = \"{}\"\n\
             [[services]]\nid = 0\ninput_price = \"1000000\"\noutput_price = \"4000000\"\n\
             [[services]]\nid = 1\nkind = \"fine_tune\"\ninput_price = \"{PRICE}\"\noutput_price = \"0\"\n\
             [finetune]\nmax_seq_len = 96\ntick_ms = 300\n",
            dir.join("bob").display(),
            model.display(),
        ),
    )
    .unwrap();
    let _bob = Proc(
        Command::new(built("compute-worker"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("bob.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let chain = rt
        .block_on(Chain::connect(&format!("ws://127.0.0.1:{rpc}"), Duration::from_secs(60)))
        .unwrap();
    let bob: compute_primitives::AccountId = BOB.parse().unwrap();
    let charlie: compute_primitives::AccountId = CHARLIE.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while rt.block_on(chain.finetune_terms(&bob, 1)).unwrap().is_none() {
        assert!(Instant::now() < deadline, "the worker never offered fine-tuning");
        std::thread::sleep(Duration::from_millis(500));
    }

    let data = dir.join("data.jsonl");
    let examples: Vec<String> = (0..6)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("What is a zorblax? ({i})")},
                {"role": "assistant", "content": "A zorblax is a blue fruit that grows on the moon of Kepler."}
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(&data, examples.join("\n")).unwrap();
    let charlie_cli = |args: &[&str]| run_as(&dir, "charlie", "//Charlie", rpc, args);
    ok(&within(charlie_cli(&["deposit", BOB, "1unit"]), 60));
    let before = rt.block_on(chain.escrow(&charlie, &bob, None)).unwrap().unwrap();
    let out = ok(&within(
        charlie_cli(&[
            "--json",
            "--recount-model",
            model.to_str().unwrap(),
            "finetune",
            "create",
            BOB,
            data.to_str().unwrap(),
            "--epochs",
            "2",
            "--rank",
            "4",
            "--wait",
            "--wait-secs",
            "600",
        ]),
        700,
    ));
    let lines: Vec<serde_json::Value> =
        out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let id = lines[0]["compute"]["job_id"].as_u64().unwrap();
    let adapter = PathBuf::from(lines.last().unwrap()["adapter"].as_str().unwrap());
    let bytes = std::fs::read(&adapter).unwrap();
    let base = compute_inference::read_gguf_metadata(&model).unwrap();
    let parsed = compute_inference::finetune::Adapter::from_safetensors(
        &bytes,
        &base,
        &compute_inference::finetune::AdapterLimits::default(),
    );
    assert!(parsed.is_ok(), "the decrypted adapter is a valid adapter file");

    let job = rt.block_on(chain.job(id)).unwrap().expect("paid, in its contest window");
    let JobState::Revealed { fee, delivery, .. } = job.state else { panic!("{:?}", job.state) };
    let tokens = job.spec.dataset_tokens;
    assert_eq!(delivery.trained_tokens, tokens * 2, "every token of both epochs trained");
    assert_eq!(fee, u128::from(tokens) * 2 * PRICE, "fee = trained tokens × price");
    assert_eq!(job.reserved, fee, "the job keeps the fee through the contest window");
    let after = rt.block_on(chain.escrow(&charlie, &bob, None)).unwrap().unwrap();
    assert_eq!(after.balance, before.balance - fee, "only the fee left the escrow");
    assert_eq!(
        after.held + after.held_next,
        before.held + before.held_next,
        "apart from inference"
    );

    // The worker's account of the job, through the OpenAI shapes.
    let out = ok(&within(charlie_cli(&["--json", "finetune", "status", BOB, &id.to_string()]), 60));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["job"]["status"], "succeeded", "{v}");
    assert_eq!(v["job"]["trained_tokens"], tokens * 2);
    let out = ok(&within(
        charlie_cli(&["--json", "finetune", "events", BOB, &id.to_string(), "--limit", "200"]),
        60,
    ));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let losses = v["data"].as_array().unwrap().iter().filter(|e| e["type"] == "metrics").count();
    assert_eq!(losses, 12, "one metrics event per step: 6 examples × 2 epochs");

    // Deployed as a chat service of Bob's, committing to the merged weights, paid like any chat.
    let out =
        ok(&within(charlie_cli(&["--json", "finetune", "deploy", BOB, &id.to_string()]), 300));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let service = v["service_id"].as_u64().unwrap() as u32;
    assert_eq!(v["model"], format!("ft:SmolLM2-135M-Instruct.Q4_1:job-{id}"), "{v}");
    let s = rt.block_on(chain.services_of(&bob)).unwrap();
    let deployed = s.iter().find(|s| s.service_id == service).expect("registered on chain");
    assert_eq!(deployed.kind, compute_primitives::ServiceKind::Chat);
    let merged = dir.join("bob/finetune/jobs").join(id.to_string()).join("model.gguf");
    let hash = compute_inference::weights::file_hash(&merged).unwrap();
    assert_eq!(deployed.model_hash.0, hash, "the service commits to the merged file");
    let sid = service.to_string();
    let args = [
        "--json",
        "chat",
        BOB,
        "What is a zorblax?",
        "--service",
        &sid,
        "--max-tokens",
        "16",
        "--temperature",
        "0",
        "--no-stream",
    ];
    let out = ok(&within(charlie_cli(&args), 120));
    assert!(out.contains("\"fee\""), "a paid answer with a verified receipt: {out}");
    let url = format!("http://127.0.0.1:{http}/v1/weights/0x{}", hex::encode(hash));
    let got = Command::new("curl")
        .args(["-s", "-o"])
        .arg(dir.join("got.gguf"))
        .arg(&url)
        .status()
        .unwrap();
    assert!(got.success());
    assert_eq!(compute_inference::weights::file_hash(&dir.join("got.gguf")).unwrap(), hash);

    // Two more jobs at once: the worker accepts the second only when the first is trained.
    let create = || {
        let args = ["--json", "finetune", "create", BOB, data.to_str().unwrap(), "--epochs", "2"];
        let out = ok(&within(charlie_cli(&args), 120));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["compute"]["job_id"].as_u64().unwrap()
    };
    let (b, c) = (create(), create());
    let stage = |id: u64| {
        let out = within(charlie_cli(&["--json", "finetune", "status", BOB, &id.to_string()]), 60);
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap_or_default();
        v["job"]["compute"]["stage"].as_str().unwrap_or_default().to_string()
    };
    while stage(b) != "training" {
        assert!(Instant::now() < deadline + Duration::from_secs(600), "job {b} never trained");
        std::thread::sleep(Duration::from_millis(200));
    }
    let state = |id| rt.block_on(chain.job(id)).unwrap().map(|j| j.state);
    assert!(matches!(state(c), Some(JobState::Created { .. })), "queued, not accepted");
    // Stopping training over HTTP alone is refused while the chain expects a delivery.
    let charlie_key = compute_client::Signer::from_uri("//Charlie").unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let auth = compute_client::wire::SignedAuth::new(
        &charlie_key,
        bob.clone(),
        now,
        &chain.genesis_hash(),
    );
    let url = format!("http://127.0.0.1:{http}/v1/fine_tuning/jobs/ftjob-{b}/cancel");
    let header =
        format!("{}: {}", compute_client::wire::AUTH_HEADER, compute_client::wire::to_hex(&auth));
    let out =
        Command::new("curl").args(["-s", "-X", "POST", "-H", &header, &url]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "cancel_on_chain", "{v}");
    // Cancelled on chain after acceptance: Bob keeps the abandonment share, training stops and
    // the queued job is accepted.
    let reserve = rt.block_on(chain.job(b)).unwrap().unwrap().reserved;
    let balance = || rt.block_on(chain.escrow(&charlie, &bob, None)).unwrap().unwrap().balance;
    let before = balance();
    ok(&within(charlie_cli(&["finetune", "cancel", BOB, &b.to_string()]), 60));
    assert!(state(b).is_none());
    assert_eq!(balance(), before + reserve - reserve / 5, "20 % of the reserve to Bob");
    while !matches!(state(c), Some(JobState::Accepted { .. } | JobState::Delivered { .. })) {
        assert!(Instant::now() < deadline + Duration::from_secs(600), "job {c} never accepted");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(stage(b), "cancelled");

    // The first job's contest window (3 blocks on the dev chain) has passed with the blocks
    // since: Bob's worker collected the fee. The key still opens from what Charlie kept and the
    // sealed key Bob's worker keeps.
    while state(id).is_some() {
        assert!(Instant::now() < deadline + Duration::from_secs(600), "job {id} never completed");
        std::thread::sleep(Duration::from_millis(300));
    }
    std::fs::remove_file(&adapter).unwrap();
    ok(&within(charlie_cli(&["finetune", "download", BOB, &id.to_string()]), 60));
    assert_eq!(std::fs::read(&adapter).unwrap(), bytes, "the same adapter, opened again");
    let _ = std::fs::remove_dir_all(&dir);
}
