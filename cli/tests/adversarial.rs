//! A malicious provider against the real `compute` CLI and `compute proxy`.
//!
//! A fake worker (an HTTP server inside this test process) is registered on a real dev node
//! (instant seal) as provider Bob's chat service, with a real `register_service` extrinsic; the
//! user Charlie funds his escrow with `compute deposit`. The fake signs its receipts with Bob's
//! key and lies, one way per scenario; each scenario checks that the user is safe: nothing false
//! is recorded, no voucher promises money that was not verifiably owed, a provider caught lying
//! gets no further vouchers, slow answers end in a bounded time, the proxy serves no web page,
//! and hostile error bodies are reported without panics or megabytes of output.
//!
//! One node and one fake worker serve every scenario, one after the other, each with its own
//! state directory; a failing scenario does not stop the others, and the test lists every failure
//! at the end. `COMPUTE_TEST_CLI=/path/to/compute` runs them against another build of the CLI.

#![allow(clippy::unwrap_used)]

mod common;

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{header::CONTENT_TYPE, HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Json, Router,
};
use common::{cli, free_port, fresh_dir, start_node, wait_until, Proc, Ran, BOB};
use compute_client::{
    wire::{self, ReceiptJson},
    Chain, Signer,
};
use compute_primitives::{Balance, Receipt, ServiceKind, SignedVoucher, Voucher};
use futures::StreamExt;
use polkadot_sdk::sp_core::H256;
use serde_json::{json, Value};
use std::{
    io::{Read, Write},
    net::TcpStream,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

const MODEL: &str = "fake-model";
const INPUT_PRICE: Balance = 1_000_000;
const OUTPUT_PRICE: Balance = 4_000_000;
/// What the honest answer costs: 3 input and 5 output tokens.
const HONEST_FEE: Balance = 3 * INPUT_PRICE + 5 * OUTPUT_PRICE;
/// The answer's text, streamed in these pieces.
const PIECES: [&str; 4] = ["Hello", " from", " a fake", " worker."];
/// The outer bound on anything that should end; never a timing assertion.
const GUARD: Duration = Duration::from_secs(60);
/// Most a CLI may print about a hostile error body.
const MAX_OUTPUT: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// The fake worker.

/// How the fake worker answers paid requests.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Correct receipts at the on-chain prices.
    Honest,
    /// A Bob-signed receipt that lies in one way.
    Lie(Lie),
    /// Every paid request refused with an unsigned 409; `GET /v1/receipts` serves a forged
    /// Bob-signed receipt for the next nonce, for a request never served.
    Forged(Forge),
    /// Accept the request and never answer.
    Hang,
    /// Start an event stream, send one chunk, then stall.
    Stall,
    /// Refuse with a 1 MB error body (also on `GET /v1/receipts`).
    Huge { status: u16, json: bool, code: &'static str },
}

#[derive(Debug, Clone, Copy)]
enum Lie {
    /// One unit more than the formula at the on-chain prices.
    AboveFormula,
    /// The formula holds, but for a million input tokens: above the voucher's cap.
    AboveCap,
    /// For another user (Eve).
    OtherUser,
    /// For the next nonce.
    OtherNonce,
    /// For another request body.
    OtherRequest,
    /// For another answer than the text sent.
    OtherResponse,
}

#[derive(Debug, Clone, Copy)]
struct Forge {
    /// The refusal's code: `nonce_gap` or `stale_nonce`.
    code: &'static str,
    /// What comes with the forged receipt as its `voucher`.
    proof: Proof,
    fee: ForgedFee,
}

#[derive(Debug, Clone, Copy)]
enum Proof {
    /// No voucher.
    None,
    /// Charlie's voucher with a cap above the fee, signed by Eve.
    ForeignSigner,
    /// The voucher Charlie really sent with the refused request (its cap is below the fee).
    Real,
}

#[derive(Debug, Clone, Copy)]
enum ForgedFee {
    /// 10^24, for 10^18 input tokens: the formula holds, the cap does not.
    Huge,
    /// One more than the honest fee: within the cap, not the formula.
    AboveFormula,
}

/// One request the fake worker received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    voucher: Option<SignedVoucher>,
}

struct Fake {
    mode: Mutex<Mode>,
    seen: Mutex<Vec<Seen>>,
    /// Hex of every forged receipt served.
    forged: Mutex<Vec<String>>,
    bob: Signer,
    eve: Signer,
    genesis: H256,
}

impl Fake {
    /// Switch mode and forget what was seen.
    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
        self.seen.lock().unwrap().clear();
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The vouchers of the paid requests received since the last `set`.
    fn vouchers(&self) -> Vec<Voucher> {
        self.seen().into_iter().filter_map(|s| s.voucher.map(|v| v.voucher)).collect()
    }

    fn forged(&self) -> Vec<String> {
        self.forged.lock().unwrap().clone()
    }

    /// The answers' receipts bill five output tokens.
    fn receipt(&self, v: &Voucher, text: &str, lie: Option<Lie>) -> wire::ReceiptJson {
        let mut r = Receipt {
            user: v.user.clone(),
            provider: v.provider.clone(),
            service_id: v.service_id,
            nonce: v.nonce,
            request_hash: v.request_hash,
            response_hash: wire::response_hash(text),
            proof_hash: wire::proof_hash(&proof()),
            model_hash: Default::default(),
            input_tokens: 3,
            output_tokens: 5,
            fee: HONEST_FEE,
            total: 0,
        };
        match lie {
            None => {}
            Some(Lie::AboveFormula) => r.fee += 1,
            Some(Lie::AboveCap) => {
                (r.input_tokens, r.output_tokens) = (1_000_000, 0);
                // 10^12: above the CLI's default cap of 0.01 unit.
                r.fee = 1_000_000 * INPUT_PRICE;
            }
            Some(Lie::OtherUser) => r.user = self.eve.account_id(),
            Some(Lie::OtherNonce) => r.nonce += 1,
            Some(Lie::OtherRequest) => r.request_hash = wire::request_hash(b"{\"another\":1}"),
            Some(Lie::OtherResponse) => r.response_hash = wire::response_hash("another answer"),
        }
        r.total = v.spent + r.fee;
        ReceiptJson::from(&wire::sign_receipt(&self.bob, r, &self.genesis)).with_proof(&proof())
    }

    /// A chat answer with its receipt, streamed when asked.
    fn answer(&self, v: &Voucher, stream: bool, lie: Option<Lie>) -> Response {
        let text = PIECES.concat();
        let receipt = self.receipt(v, &text, lie);
        let usage = json!({ "prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8 });
        if !stream {
            return Json(json!({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": MODEL,
                "choices": [{ "index": 0, "finish_reason": "stop",
                              "message": { "role": "assistant", "content": text } }],
                "usage": usage, "receipt": receipt,
            }))
            .into_response();
        }
        let mut out: String = PIECES.iter().map(|p| event(&chunk(p))).collect();
        let mut last = json!({ "id": "chatcmpl-fake", "object": "chat.completion.chunk",
            "created": 0, "model": MODEL,
            "choices": [{ "index": 0, "delta": {}, "finish_reason": "stop" }] });
        last["usage"] = usage;
        last["receipt"] = serde_json::to_value(&receipt).unwrap();
        out.push_str(&event(&last));
        out.push_str("data: [DONE]\n\n");
        ([(CONTENT_TYPE, "text/event-stream")], out).into_response()
    }

    /// `GET /v1/receipts` in `Forged` mode: a Bob-signed receipt for the nonce after `after`,
    /// fee far above anything asked, continuing the running total (so that only the voucher
    /// behind it can show it false).
    fn forged_history(&self, after: u64, forge: Forge) -> Value {
        let nonce = after + 1;
        let real = self
            .seen()
            .into_iter()
            .filter_map(|s| s.voucher)
            .rev()
            .find(|sv| sv.voucher.nonce == nonce);
        let base = real.as_ref().map(|sv| sv.voucher.clone()).unwrap_or_else(|| Voucher {
            user: charlie(),
            provider: self.bob.account_id(),
            service_id: 0,
            price_version: 0,
            nonce,
            request_hash: H256::zero(),
            spent: 0,
            cap: 0,
        });
        let (input_tokens, output_tokens, fee) = match forge.fee {
            ForgedFee::Huge => (10u64.pow(18), 0, 10u128.pow(24)),
            ForgedFee::AboveFormula => (3, 5, HONEST_FEE + 1),
        };
        let receipt = Receipt {
            user: base.user.clone(),
            provider: base.provider.clone(),
            service_id: base.service_id,
            nonce,
            request_hash: base.request_hash,
            response_hash: wire::response_hash("an answer never given"),
            proof_hash: Default::default(),
            model_hash: Default::default(),
            input_tokens,
            output_tokens,
            fee,
            total: base.spent + fee,
        };
        let json = ReceiptJson::from(&wire::sign_receipt(&self.bob, receipt, &self.genesis));
        self.forged.lock().unwrap().push(json.signed.clone());
        let mut item = serde_json::to_value(&json).unwrap();
        match forge.proof {
            Proof::None => {}
            Proof::ForeignSigner => {
                let mut v = base;
                v.cap = fee * 2;
                item["voucher"] =
                    json!(wire::to_hex(&wire::sign_voucher(&self.eve, v, &self.genesis)));
            }
            Proof::Real => {
                if let Some(sv) = real {
                    item["voucher"] = json!(wire::to_hex(&sv));
                }
            }
        }
        json!({ "object": "list", "data": [item] })
    }
}

fn charlie() -> compute_primitives::AccountId {
    Signer::from_uri("//Charlie").unwrap().account_id()
}

fn chunk(piece: &str) -> Value {
    json!({ "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
            "model": MODEL,
            "choices": [{ "index": 0, "delta": { "content": piece }, "finish_reason": null }] })
}

fn event(v: &Value) -> String {
    format!("data: {v}\n\n")
}

fn openai_error(status: u16, code: &str, message: String, expected: Option<Value>) -> Response {
    let mut body = json!({ "error": {
        "message": message, "type": "invalid_request_error", "code": code } });
    if let Some(e) = expected {
        body["error"]["expected"] = e;
    }
    (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
}

/// A 1 MB error body: OpenAI's shape with a huge message, or not JSON at all.
fn huge(status: u16, json: bool, code: &str) -> Response {
    if json {
        openai_error(status, code, "x".repeat(1 << 20), None)
    } else {
        let body = format!("<html><body>{}</body></html>", "y".repeat(1 << 20));
        (StatusCode::from_u16(status).unwrap(), [(CONTENT_TYPE, "text/html")], body).into_response()
    }
}

async fn handle(
    State(f): State<Arc<Fake>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let voucher = headers
        .get(wire::VOUCHER_HEADER)
        .and_then(|h| h.to_str().ok())
        .and_then(|s| wire::from_hex::<SignedVoucher>("voucher", s).ok());
    f.seen.lock().unwrap().push(Seen { path: uri.path().to_string(), voucher: voucher.clone() });
    let mode = *f.mode.lock().unwrap();
    if uri.path() == "/v1/receipts" {
        let after = uri
            .query()
            .unwrap_or_default()
            .split('&')
            .find_map(|kv| kv.strip_prefix("after="))
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        return match mode {
            Mode::Forged(forge) => Json(f.forged_history(after, forge)).into_response(),
            Mode::Huge { status, json, code } => huge(status, json, code),
            _ => Json(json!({ "object": "list", "data": [] })).into_response(),
        };
    }
    if method != Method::POST || uri.path() != "/v1/chat/completions" {
        return openai_error(404, "not_found", "no such endpoint".into(), None);
    }
    let Some(sv) = voucher else {
        return openai_error(400, "missing_voucher", "no voucher".into(), None);
    };
    let v = sv.voucher;
    let stream = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b["stream"].as_bool())
        .unwrap_or(false);
    match mode {
        Mode::Honest => f.answer(&v, stream, None),
        Mode::Lie(lie) => f.answer(&v, stream, Some(lie)),
        // Unsigned: no receipt, and an `expected` that claims a later nonce.
        Mode::Forged(forge) => openai_error(
            409,
            forge.code,
            format!("voucher nonce {} is not the next one, {}", v.nonce, v.nonce + 1),
            Some(json!({ "nonce": v.nonce + 1 })),
        ),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            openai_error(500, "late", "too late".into(), None)
        }
        Mode::Stall => {
            let first = Bytes::from(event(&chunk("Hel")));
            let body = futures::stream::once(async move { Ok::<_, std::io::Error>(first) })
                .chain(futures::stream::pending());
            ([(CONTENT_TYPE, "text/event-stream")], Body::from_stream(body)).into_response()
        }
        Mode::Huge { status, json, code } => huge(status, json, code),
    }
}

// ---------------------------------------------------------------------------------------------
// The user's side: the CLI's state file, the CLI, the proxy, raw HTTP.

struct Env {
    rpc: u16,
    fake: Arc<Fake>,
    root: PathBuf,
}

impl Env {
    /// A scenario's own state directory.
    fn dir(&self, name: &str) -> PathBuf {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// `compute chat BOB Hi --max-tokens 8 ARGS…`.
    fn chat(&self, dir: &Path, args: &[&str]) -> Ran {
        let mut all = vec!["chat", BOB, "Hi", "--max-tokens", "8"];
        all.extend_from_slice(args);
        cli(dir, self.rpc, &all, GUARD)
    }

    /// A paid turn with the honest fake: the total grows by the honest fee.
    fn honest_turn(&self, dir: &Path) -> Balance {
        let before = total(dir);
        self.fake.set(Mode::Honest);
        self.chat(dir, &[]).ok();
        let after = total(dir);
        assert_eq!(after, before + HONEST_FEE, "{}", entry(dir));
        after
    }

    /// Bob is distrusted in the state file, and the next chat signs nothing: the fake worker
    /// (honest now) receives no request at all, and the CLI says why.
    fn refuses_from_now_on(&self, dir: &Path) {
        let st = entry(dir);
        assert!(st["distrusted"].is_string(), "not distrusted: {st}");
        self.fake.set(Mode::Honest);
        let ran = self.chat(dir, &[]);
        let e = ran.fails().to_lowercase();
        assert!(e.contains("refus") || e.contains("distrust"), "{e}");
        assert!(self.fake.seen().is_empty(), "a request reached Bob: {:?}", self.fake.seen());
    }

    /// `compute proxy BOB` with `args`, once it listens; its stderr goes to `dir/proxy.err`.
    fn proxy(&self, dir: &Path, args: &[&str]) -> (Proc, u16) {
        let port = free_port();
        let mut proc = Proc(
            Command::new(common::cli_bin())
                .args(["proxy", BOB, "--listen", &format!("127.0.0.1:{port}")])
                .args(args)
                .env("COMPUTE_NODE", format!("ws://127.0.0.1:{}", self.rpc))
                .env("COMPUTE_KEY", "//Charlie")
                .env("COMPUTE_STATE", dir.join("state.json"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("proxy.err")).unwrap())
                .spawn()
                .unwrap(),
        );
        wait_until("the proxy never listened", GUARD, || {
            if let Some(status) = proc.0.try_wait().unwrap() {
                panic!(
                    "the proxy exited ({status}): {}",
                    std::fs::read_to_string(dir.join("proxy.err")).unwrap_or_default()
                );
            }
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        (proc, port)
    }
}

/// This user's entry for Bob in the state file (null when none).
fn entry(dir: &Path) -> Value {
    let Ok(text) = std::fs::read_to_string(dir.join("state.json")) else { return Value::Null };
    let state: Value = serde_json::from_str(&text).unwrap();
    state["providers"][format!("{}/{BOB}", charlie())].clone()
}

fn total(dir: &Path) -> Balance {
    entry(dir)["total"].as_str().map_or(0, |t| t.parse().unwrap())
}

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

/// A raw HTTP/1.1 request (so that any Host, Origin or Content-Type can be sent), read to the
/// end of the answer; fails past `GUARD`.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let deadline = Instant::now() + GUARD;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // A reset after a complete answer (the server closing early) ends it too.
            Err(_) => break,
        }
        assert!(
            Instant::now() < deadline,
            "no complete answer to {method} {path} within {GUARD:?}; got {:?}",
            String::from_utf8_lossy(&raw)
        );
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let rest = raw.get(split + 4..).unwrap_or_default();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body =
        if head.contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.into() };
    Answer { status, body: String::from_utf8_lossy(&body).into_owned() }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let line = String::from_utf8_lossy(&b[..eol]);
        let Ok(size) = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        if size == 0 {
            break;
        }
        let start = eol + 2;
        let end = (start + size).min(b.len());
        out.extend_from_slice(&b[start..end]);
        b = &b[(end + 2).min(b.len())..];
    }
    out
}

fn chat_body(stream: bool) -> String {
    json!({ "model": MODEL, "max_tokens": 8, "stream": stream,
            "messages": [{ "role": "user", "content": "Hi" }] })
    .to_string()
}

// ---------------------------------------------------------------------------------------------
// The scenarios.

/// a, and b through a resync: after an unsigned `409`, the provider's history holds a forged
/// Bob-signed receipt for the next nonce. It is not adopted: the state's total for Bob stays,
/// every later voucher carries the same `spent` (or none is signed, with the reason said).
fn forged_history(env: &Env, name: &str, forge: Forge, distrusts: bool) {
    let dir = env.dir(name);
    let t1 = env.honest_turn(&dir);
    env.fake.set(Mode::Forged(forge));
    let ran = env.chat(&dir, &[]);
    let e = ran.fails().to_string();
    let asked = env.fake.seen().iter().any(|s| s.path == "/v1/receipts");
    eprintln!("  {name}: history asked for: {asked}; the CLI said: {}", e.trim());
    let st = entry(&dir);
    assert_eq!(total(&dir), t1, "the forged receipt was adopted: {st}");
    let last = st["last_receipt"].as_str().unwrap_or_default().to_string();
    assert!(!env.fake.forged().contains(&last), "the forged receipt was kept: {st}");
    for v in env.fake.vouchers() {
        assert_eq!(v.spent, t1, "a voucher promised the forged total: {v:?}");
    }
    if distrusts {
        env.refuses_from_now_on(&dir);
        return;
    }
    // The next request (the worker honest again) starts from the verified total, or none is
    // signed and the CLI says why.
    env.fake.set(Mode::Honest);
    let ran = env.chat(&dir, &[]);
    let vouchers = env.fake.vouchers();
    if ran.status.success() {
        assert_eq!(vouchers.len(), 1, "{vouchers:?}");
        assert_eq!(vouchers[0].spent, t1, "{:?}", vouchers[0]);
        assert_eq!(total(&dir), t1 + HONEST_FEE, "{}", entry(&dir));
    } else {
        let e = ran.fails();
        assert!(vouchers.is_empty(), "a voucher was signed and the request failed: {e}");
        assert!(e.contains("error"), "no reason given: {e}");
        assert_eq!(total(&dir), t1);
    }
}

fn a_forged_history(env: &Env) {
    let huge = ForgedFee::Huge;
    let none = Forge { code: "nonce_gap", proof: Proof::None, fee: huge };
    forged_history(env, "a1", none, false);
    let foreign = Forge { code: "stale_nonce", proof: Proof::ForeignSigner, fee: huge };
    forged_history(env, "a2", foreign, false);
    let real = Forge { code: "nonce_gap", proof: Proof::Real, fee: huge };
    forged_history(env, "a3", real, false);
}

/// b. A receipt above the formula at the on-chain prices, or above the voucher's cap: the CLI
/// fails, keeps the verified total, distrusts Bob and signs nothing more for him.
fn b_inflated(env: &Env) {
    for (name, lie, args) in
        [("b1", Lie::AboveFormula, &[][..]), ("b2", Lie::AboveCap, &["--no-stream"][..])]
    {
        let dir = env.dir(name);
        let t1 = env.honest_turn(&dir);
        env.fake.set(Mode::Lie(lie));
        let e = env.chat(&dir, args).fails().to_string();
        assert!(e.contains("does not verify"), "{name}: {e}");
        assert_eq!(total(&dir), t1, "{name}: {}", entry(&dir));
        env.refuses_from_now_on(&dir);
    }
    // Through a resync: the receipt above the formula comes with Charlie's real voucher, a
    // provable lie.
    let forge = Forge { code: "stale_nonce", proof: Proof::Real, fee: ForgedFee::AboveFormula };
    forged_history(env, "b3", forge, true);
}

/// c. A receipt for another user, another nonce, another request or another answer: refused,
/// Bob distrusted.
fn c_mismatched(env: &Env) {
    for (name, lie, args) in [
        ("c1", Lie::OtherUser, &[][..]),
        ("c2", Lie::OtherNonce, &["--no-stream"][..]),
        ("c3", Lie::OtherRequest, &[][..]),
        ("c4", Lie::OtherResponse, &["--no-stream"][..]),
        ("c5", Lie::OtherResponse, &[][..]),
    ] {
        let dir = env.dir(name);
        env.fake.set(Mode::Lie(lie));
        let e = env.chat(&dir, args).fails().to_string();
        assert!(e.contains("does not verify"), "{name}: {e}");
        assert_eq!(total(&dir), 0, "{name}: {}", entry(&dir));
        env.refuses_from_now_on(&dir);
    }
}

/// d. A worker that never answers, or stalls mid-stream: `--timeout 3` ends the CLI with a
/// timeout error; the proxy answers 504 (or ends the stream with an error) and serves the next
/// request.
fn d_slow(env: &Env) {
    let dir = env.dir("d");
    for mode in [Mode::Hang, Mode::Stall] {
        env.fake.set(mode);
        let ran = env.chat(&dir, &["--timeout", "3"]);
        let e = ran.fails().to_lowercase();
        assert_ne!(ran.status.code(), Some(2), "a usage error: {e}");
        assert!(e.contains("timed out") || e.contains("timeout"), "{mode:?}: {e}");
        eprintln!("  d: {mode:?}: the CLI gave up after {:.1?}", ran.took);
    }
    let token = "d-scenario-token-0123456789";
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // A token others could read is refused, like an ssh key.
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let (_proxy, port) =
        env.proxy(&dir, &["--timeout", "3", "--token-file", token_file.to_str().unwrap()]);
    let auth = format!("Bearer {token}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let post = |stream| http(port, "POST", "/v1/chat/completions", &headers, &chat_body(stream));

    env.fake.set(Mode::Hang);
    let a = post(false);
    assert_eq!(a.status, 504, "{a:?}");
    env.fake.set(Mode::Stall);
    let a = post(true);
    assert!(a.status == 504 || a.body.contains("error"), "a stalled stream: {a:?}");
    env.fake.set(Mode::Honest);
    let a = post(false);
    assert_eq!(a.status, 200, "the proxy stopped serving: {a:?}");
    assert!(a.body.contains("receipt"), "{a:?}");
}

/// e. The proxy serves no web page: no token, a wrong token, a foreign Origin, a non-JSON
/// content type or a foreign Host is refused before anything reaches the provider; the right
/// token from `proxy-token` beside the state file is forwarded.
fn e_web_pages(env: &Env) {
    let dir = env.dir("e");
    let (_proxy, port) = env.proxy(&dir, &[]);
    let token_path = dir.join("proxy-token");
    wait_until("no proxy-token beside the state file", Duration::from_secs(10), || {
        token_path.exists()
    });
    let token = std::fs::read_to_string(&token_path).unwrap().trim().to_string();
    assert!(token.len() >= 16, "a short token: {token:?}");
    let auth = format!("Bearer {token}");
    let host = format!("evil.example:{port}");
    let json_type = ("Content-Type", "application/json");
    // What is sent, and the statuses that refuse it.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [u16]);
    let refused: [Case; 5] = [
        ("no token", vec![json_type], &[401]),
        ("a wrong token", vec![("Authorization", "Bearer not-the-token"), json_type], &[401]),
        (
            "a foreign Origin",
            vec![("Authorization", auth.as_str()), json_type, ("Origin", "http://evil.example")],
            &[403],
        ),
        (
            "text/plain",
            vec![("Authorization", auth.as_str()), ("Content-Type", "text/plain")],
            &[415],
        ),
        (
            "a foreign Host",
            vec![("Authorization", auth.as_str()), json_type, ("Host", host.as_str())],
            &[421, 403],
        ),
    ];
    for (what, headers, codes) in refused {
        env.fake.set(Mode::Honest);
        let a = http(port, "POST", "/v1/chat/completions", &headers, &chat_body(false));
        assert!(codes.contains(&a.status), "{what}: expected {codes:?}, got {a:?}");
        assert!(env.fake.seen().is_empty(), "{what}: Bob saw {:?}", env.fake.seen());
    }
    env.fake.set(Mode::Honest);
    let headers = [("Authorization", auth.as_str()), json_type];
    let a = http(port, "POST", "/v1/chat/completions", &headers, &chat_body(false));
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(env.fake.vouchers().len(), 1);
    assert_eq!(total(&dir), HONEST_FEE, "{}", entry(&dir));
}

/// f. A 1 MB error body, JSON or not: an error, no panic, no megabytes printed, nothing
/// recorded.
fn f_hostile_errors(env: &Env) {
    let mut too_much = Vec::new();
    for (name, status, json, code) in [
        ("f1", 402, true, "insufficient_escrow"),
        ("f2", 409, false, "nonce_gap"),
        ("f3", 409, true, "nonce_gap"),
        ("f4", 500, false, "internal"),
    ] {
        let dir = env.dir(name);
        env.fake.set(Mode::Huge { status, json, code });
        let ran = env.chat(&dir, &[]);
        ran.fails();
        assert_eq!(total(&dir), 0, "{name}: {}", entry(&dir));
        let printed = ran.stdout.len() + ran.stderr.len();
        let start: String = ran.stderr.chars().take(160).collect();
        eprintln!("  {name} ({status}, json {json}): {printed} bytes printed: {start}…");
        if printed >= MAX_OUTPUT {
            too_much.push(format!("{name}: {printed} bytes"));
        }
    }
    assert!(too_much.is_empty(), "megabytes printed: {too_much:?}");
}

#[test]
fn a_lying_provider_cannot_take_the_users_money() {
    let started = Instant::now();
    let dir = fresh_dir("compute-adversarial");
    let (_node, rpc) = start_node(&dir);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let chain = rt
        .block_on(Chain::connect(&format!("ws://127.0.0.1:{rpc}"), GUARD))
        .expect("the dev node never answered");
    let fake = Arc::new(Fake {
        mode: Mutex::new(Mode::Honest),
        seen: Mutex::default(),
        forged: Mutex::default(),
        bob: Signer::from_uri("//Bob").unwrap(),
        eve: Signer::from_uri("//Eve").unwrap(),
        genesis: chain.genesis_hash(),
    });
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().fallback(handle).with_state(Arc::clone(&fake));
    rt.spawn(async move { axum::serve(listener, app).await });

    // Bob registers the fake worker as his chat service; Charlie funds his escrow with the CLI.
    let bob = Signer::from_uri("//Bob").unwrap();
    let terms = compute_client::ServiceTerms {
        kind: ServiceKind::Chat,
        model: MODEL.into(),
        model_hash: Default::default(),
        url: url.clone(),
        input_price: INPUT_PRICE,
        output_price: OUTPUT_PRICE,
        verifiability: "none".into(),
    };
    rt.block_on(chain.register_service(&bob, 0, &terms, false)).expect("register_service");
    cli(&dir, rpc, &["deposit", BOB, "0.5unit"], GUARD).ok();
    eprintln!("node up, service registered, escrow funded in {:.1?}", started.elapsed());

    let env = Env { rpc, fake, root: dir.clone() };
    type Scenario = (&'static str, fn(&Env));
    let scenarios: [Scenario; 6] = [
        ("a: unsigned refusal + forged history", a_forged_history),
        ("b: inflated receipts", b_inflated),
        ("c: receipts for something else", c_mismatched),
        ("d: slow answers", d_slow),
        ("e: the proxy against web pages", e_web_pages),
        ("f: hostile error bodies", f_hostile_errors),
    ];
    let mut failed = Vec::new();
    for (name, scenario) in scenarios {
        let t = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| scenario(&env)));
        eprintln!(
            "{name}: {} in {:.1?}",
            if result.is_ok() { "ok" } else { "FAILED" },
            t.elapsed()
        );
        if result.is_err() {
            failed.push(name);
        }
    }
    eprintln!("all scenarios in {:.1?}", started.elapsed());
    assert!(failed.is_empty(), "failed scenarios: {failed:#?} (see the panics above)");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A well-formed activation proof of the five tokens every answer bills (the CLI checks its
/// form and hash, not the activations: that is `compute audit`'s work).
fn proof() -> Vec<u8> {
    use compute_inference::proof::{ActivationProof, ENTRIES};
    ActivationProof { tokens: vec![1; 5], values: vec![0; 5 * ENTRIES] }.to_bytes()
}
