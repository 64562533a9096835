//! Faults and abuse against real parts (a dev node, the `compute-worker` binary serving SmolLM2
//! and all-MiniLM-L6-v2): clients that disconnect at each stage of a paid request, clients that
//! give up while queued, slow clients, a swarm of unfunded keys, an ack racing a stream with
//! window 2, a worker restart, and a node that stops answering. Each ends in exact settlement on
//! chain. Needs the node built (`cargo test --workspace --no-run`) and the models (`make model`).

#![allow(clippy::unwrap_used)]

use common::*;
use compute_client::{
    wire::{self, ReceiptJson},
    Chain, Signer,
};
use compute_primitives::{AccountId, Balance, Voucher};
use futures::StreamExt;
use provider_worker::store::SqliteStore;
use serde_json::{json, Value};
use std::{
    path::Path,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

mod common;

fn model() -> std::path::PathBuf {
    provider_worker::model::default_model_path().expect("model missing: run `make model`")
}

/// A raw HTTP/1.1 request with a voucher.
fn raw_request(path: &str, body: &[u8], voucher: &str) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{}: {voucher}\r\nConnection: close\r\n\r\n",
        body.len(),
        wire::VOUCHER_HEADER
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// Send `bytes` and close the connection at once.
async fn send_and_vanish(port: u16, bytes: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(bytes).await.unwrap();
    drop(s);
}

/// Retry a voucher until its request is no longer in progress; the answer.
async fn answer_of(http: &reqwest::Client, url: &str, body: &[u8], header: String) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, resp) = post(http, url, body.to_vec(), Some(header.clone())).await;
        if !(status == 409 && resp["error"]["code"] == "in_progress") || Instant::now() > deadline {
            return (status, resp);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn metric(http: &reqwest::Client, base: &str, name: &str) -> u64 {
    let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
}

/// Wait until nothing is queued or running.
async fn idle(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(http, base, "compute_queue_depth ").await
        + metric(http, base, "compute_in_progress ").await
        > 0
    {
        assert!(Instant::now() < deadline, "the worker never went idle");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the server closes a connection on which `bytes` were sent within `within`.
async fn closed_within(port: u16, bytes: &[u8], within: Duration) -> bool {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    read.await.is_ok()
}

/// Wait until the chain has settled exactly `total` for `user`.
async fn settled_exactly(chain: &Chain, user: &AccountId, provider: &AccountId, total: Balance) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let e = chain.escrow(user, provider, None).await.unwrap().unwrap_or_default();
        if e.settled_total == total {
            return;
        }
        assert!(e.settled_total < total, "settled {} above the receipts' {total}", e.settled_total);
        assert!(Instant::now() < deadline, "settled {} of {total}", e.settled_total);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A paid chat that must succeed; its receipt accepted by `user`.
async fn chat_ok(http: &reqwest::Client, base: &str, user: &mut User, text: &str) {
    let body = chat_body(text, 8, false);
    let v = user.voucher(&body, CAP);
    let url = format!("{base}/v1/chat/completions");
    let (status, resp) = answer_of(http, &url, &body, user.header(v.clone())).await;
    assert_eq!(status, 200, "{resp}");
    user.accept(&serde_json::from_value(resp["receipt"].clone()).unwrap(), &v);
}

fn worker_config(
    dir: &Path,
    rpc: u16,
    port: u16,
    top: &str,
    chat: &str,
    limits: &str,
) -> std::path::PathBuf {
    let config = write_config(dir, rpc, port, &model(), 1);
    let text = std::fs::read_to_string(&config).unwrap();
    let text = format!("{top}{text}")
        .replace("parallel = 2\n", chat)
        .replace("[limits]\n", &format!("[limits]\n{limits}"))
        .replace("tick_ms = 500\n", "tick_ms = 500\ntx_timeout_secs = 10\n");
    std::fs::write(&config, text).unwrap();
    config
}

/// A dev node and a worker on it (`top`, `chat`, `limits`: lines added to the config's top
/// level, `[chat]` and `[limits]`), healthy.
struct Setup {
    dir: std::path::PathBuf,
    node: Proc,
    chain: Chain,
    port: u16,
    base: String,
    config: std::path::PathBuf,
    worker: Proc,
    http: reqwest::Client,
}

async fn setup(tag: &str, top: &str, chat: &str, limits: &str) -> Setup {
    let dir = temp_dir(tag);
    let (node, rpc, chain) = dev_chain(&dir).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = worker_config(&dir, rpc, port, top, chat, limits);
    let worker = start_worker(&dir, &config, "1");
    let http = reqwest::Client::new();
    wait_healthy(&http, &base, &dir, "1").await;
    Setup { dir, node, chain, port, base, config, worker, http }
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_vanish_give_up_or_stall_lock_nobody_out() {
    let Setup { dir, chain, port, base, http, node: _node, worker: _worker, .. } =
        setup("faults-clients", "", "parallel = 1\nqueue = 2\n", "header_timeout_secs = 2\n").await;
    let bob = Signer::from_uri("//Bob").unwrap();
    let chat_url = format!("{base}/v1/chat/completions");

    // Slow clients: headers that never end, and a connection that never sends, are cut.
    let partial = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    assert!(closed_within(port, partial, Duration::from_secs(8)).await, "slow headers kept open");
    assert!(closed_within(port, b"", Duration::from_secs(8)).await, "idle connection kept open");

    let charlie = Signer::from_uri("//Charlie").unwrap();
    chain.deposit(&charlie, &bob.account_id(), UNIT).await.expect("deposit");
    let mut user = User::new(&charlie, &bob, &chain);

    // Strangers that send headers and then no body (more of them than the queue holds) take no
    // queue place: a paying user is served meanwhile.
    let mut stalled = vec![];
    for _ in 0..4 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n",
        )
        .await
        .unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    chat_ok(&http, &base, &mut user, "Are you free?").await;
    drop(stalled);

    // Gone while sending the body: nothing is taken; the same voucher then works.
    let body = chat_body("Say hi.", 8, false);
    let v = user.voucher(&body, CAP);
    let header = user.header(v.clone());
    let full = raw_request("/v1/chat/completions", &body, &header);
    send_and_vanish(port, &full[..full.len() - 10]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, resp) = answer_of(&http, &chat_url, &body, header).await;
    assert_eq!(status, 200, "{resp}");
    user.accept(&serde_json::from_value(resp["receipt"].clone()).unwrap(), &v);

    // Gone right after sending a whole request: the job runs and is sealed; a retry of the
    // voucher gets the answer, and the next request is not refused as too many in flight.
    let body = chat_body("Name a color.", 16, false);
    let v = user.voucher(&body, CAP);
    let header = user.header(v.clone());
    send_and_vanish(port, &raw_request("/v1/chat/completions", &body, &header)).await;
    let (status, resp) = answer_of(&http, &chat_url, &body, header).await;
    assert_eq!(status, 200, "{resp}");
    user.accept(&serde_json::from_value(resp["receipt"].clone()).unwrap(), &v);
    chat_ok(&http, &base, &mut user, "Name a fruit.").await;

    // Gone after the first chunk of a stream: generation stops, what was generated is billed
    // and sealed; a retry gets the receipt.
    let body = chat_body("Count from one to fifty in words.", 48, true);
    let v = user.voucher(&body, CAP);
    let header = user.header(v.clone());
    {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(&raw_request("/v1/chat/completions", &body, &header)).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("data: ") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended before its first chunk");
            seen.extend_from_slice(&buf[..n]);
        }
    }
    let (status, resp) = answer_of(&http, &chat_url, &body, header).await;
    assert_eq!(status, 200, "{resp}");
    let r = user.accept(&serde_json::from_value(resp["receipt"].clone()).unwrap(), &v);
    assert!(r.receipt.output_tokens <= 48);

    // Embeddings, gone right after sending.
    let body = serde_json::to_vec(&json!({ "model": "all-MiniLM-L6-v2", "input": "Hi" })).unwrap();
    let v = user.voucher_for(8, &body, CAP);
    let header = user.header(v.clone());
    send_and_vanish(port, &raw_request("/v1/embeddings", &body, &header)).await;
    let url = format!("{base}/v1/embeddings");
    let (status, resp) = answer_of(&http, &url, &body, header).await;
    assert_eq!(status, 200, "{resp}");
    user.accept_priced(
        &serde_json::from_value(resp["receipt"].clone()).unwrap(),
        &v,
        (EMBED_PRICE, 0),
    );

    // Clients that give up while queued (one slot, a queue of two): their requests are the
    // worker's, queue places come back, and every user is served afterwards.
    let mut crowd = vec![];
    for uri in ["//Alice", "//Dave", "//Eve", "//Ferdie"] {
        let key = Signer::from_uri(uri).unwrap();
        chain.deposit(&key, &bob.account_id(), UNIT).await.expect("deposit");
        crowd.push(User::new(&key, &bob, &chain));
    }
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let mut pending = vec![];
    for (i, u) in crowd.iter().enumerate() {
        let body = chat_body(&format!("Tell me about the number {i}."), 48, false);
        let v = u.voucher(&body, CAP);
        let header = u.header(v.clone());
        let sent = impatient
            .post(&chat_url)
            .header("content-type", "application/json")
            .header(wire::VOUCHER_HEADER, header.clone())
            .body(body.clone())
            .send();
        pending.push((sent, body, v, header));
    }
    let mut retries = vec![];
    for (sent, body, v, header) in pending {
        let outcome = sent.await.map(|r| r.status().as_u16());
        assert!(matches!(outcome, Err(_) | Ok(503) | Ok(200)), "{outcome:?}");
        retries.push((body, v, header));
    }
    idle(&http, &base).await;
    for (u, (body, v, header)) in crowd.iter_mut().zip(retries) {
        let (status, resp) = answer_of(&http, &chat_url, &body, header).await;
        assert_eq!(status, 200, "{resp}");
        u.accept(&serde_json::from_value::<ReceiptJson>(resp["receipt"].clone()).unwrap(), &v);
        chat_ok(&http, &base, u, "Thanks.").await;
    }
    assert_eq!(metric(&http, &base, "compute_queue_depth ").await, 0);

    // A swarm of throwaway keys without escrows: refused before anything is stored.
    let mut swarm = vec![];
    for i in 0..40 {
        let key = Signer::from_uri(&format!("//swarm/{i}")).unwrap();
        let v = Voucher {
            user: key.account_id(),
            provider: bob.account_id(),
            service_id: 7,
            price_version: 0,
            nonce: 1,
            request_hash: wire::request_hash(b"garbage"),
            spent: 0,
            cap: 1,
        };
        let header = wire::to_hex(&wire::sign_voucher(&key, v, &chain.genesis_hash()));
        let (status, resp) = post(&http, &chat_url, b"garbage".to_vec(), Some(header)).await;
        assert_eq!((status, resp["error"]["code"].as_str()), (402, Some("no_escrow")), "{resp}");
        assert!(resp["error"]["receipt"].is_null(), "no receipt, nothing stored: {resp}");
        swarm.push(key.account_id());
    }
    // Acks too: a key without an escrow stores nothing.
    let key = Signer::from_uri("//swarm/ack").unwrap();
    let ack = Voucher {
        user: key.account_id(),
        provider: bob.account_id(),
        service_id: 7,
        price_version: 0,
        nonce: 1,
        request_hash: Default::default(),
        spent: 0,
        cap: 0,
    };
    let header = wire::to_hex(&wire::sign_voucher(&key, ack, &chain.genesis_hash()));
    let (status, resp) = post(&http, &format!("{base}/v1/ack"), vec![], Some(header)).await;
    assert_eq!((status, resp["error"]["code"].as_str()), (402, Some("no_escrow")), "{resp}");
    swarm.push(key.account_id());
    let store = SqliteStore::open(&dir.join("data/traces.sqlite"), Default::default()).unwrap();
    for key in &swarm {
        assert_eq!(store.trace_count(Some(key)).unwrap(), 0);
    }

    // Everything served settles exactly, and no claim was refused by the chain.
    settled_exactly(&chain, &charlie.account_id(), &bob.account_id(), user.total).await;
    for u in &crowd {
        settled_exactly(&chain, &u.key.account_id(), &bob.account_id(), u.total).await;
    }
    assert_eq!(metric(&http, &base, "compute_claims_rejected_total ").await, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ack_waits_for_a_stream_and_a_stalled_node_delays_but_never_breaks_settlement() {
    let Setup { dir, node, chain, base, config, mut worker, http, .. } =
        setup("faults-window", "window = 2\n", "parallel = 2\n", "").await;
    let bob = Signer::from_uri("//Bob").unwrap();
    let charlie = Signer::from_uri("//Charlie").unwrap();
    chain.deposit(&charlie, &bob.account_id(), UNIT).await.expect("deposit");
    let mut user = User::new(&charlie, &bob, &chain);
    let chat_url = format!("{base}/v1/chat/completions");

    // Window 2: an ack while a stream is in flight is refused (it would seal ahead of it).
    let body = chat_body("Count from one to thirty in words.", 48, true);
    let v = user.voucher(&body, CAP);
    let resp = http
        .post(&chat_url)
        .header("content-type", "application/json")
        .header(wire::VOUCHER_HEADER, user.header(v.clone()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut text = String::from_utf8_lossy(&stream.next().await.unwrap().unwrap()).into_owned();
    let ack = Voucher { nonce: v.nonce + 1, request_hash: Default::default(), cap: 0, ..v.clone() };
    let (status, refused) =
        post(&http, &format!("{base}/v1/ack"), vec![], Some(user.header(ack))).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (409, Some("request_in_flight")));
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let last: Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .next_back()
        .unwrap();
    user.accept(&serde_json::from_value(last["receipt"].clone()).unwrap(), &v);
    let ack = Voucher {
        nonce: v.nonce + 1,
        request_hash: Default::default(),
        cap: 0,
        spent: user.total,
        ..v.clone()
    };
    let (status, acked) =
        post(&http, &format!("{base}/v1/ack"), vec![], Some(user.header(ack.clone()))).await;
    assert_eq!(status, 200, "{acked}");
    user.accept(&serde_json::from_value(acked["receipt"].clone()).unwrap(), &ack);

    // The worker restarts cleanly on that history.
    drop(worker);
    worker = start_worker(&dir, &config, "2");
    wait_healthy(&http, &base, &dir, "2").await;
    chat_ok(&http, &base, &mut user, "Hello again.").await;

    // The node stops answering: admission answers 503 in bounded time once its escrow cache is
    // stale, settlement fails and retries; when the node is back, everything settles exactly.
    let pid = node.0.id().to_string();
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success())
    };
    signal("-STOP");
    tokio::time::sleep(Duration::from_secs(7)).await;
    let body = chat_body("Are you there?", 4, false);
    let v = user.voucher(&body, CAP);
    let asked = Instant::now();
    let (status, resp) = post(&http, &chat_url, body.clone(), Some(user.header(v.clone()))).await;
    assert_eq!(
        (status, resp["error"]["code"].as_str()),
        (503, Some("chain_unavailable")),
        "{resp}"
    );
    assert!(asked.elapsed() < Duration::from_secs(20), "admission waited {:?}", asked.elapsed());
    tokio::time::sleep(Duration::from_secs(5)).await;
    signal("-CONT");
    let (status, resp) = answer_of(&http, &chat_url, &body, user.header(v.clone())).await;
    assert_eq!(status, 200, "{resp}");
    user.accept(&serde_json::from_value(resp["receipt"].clone()).unwrap(), &v);
    settled_exactly(&chain, &charlie.account_id(), &bob.account_id(), user.total).await;
    drop(worker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small deterministic generator (no randomness crate needed; a run is reproducible).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The load test: `LOAD_USERS` users (default 12) each send `LOAD_REQUESTS` chats (default 4)
/// at once, bounded and on loopback; `LOAD_DROP_PERCENT` (default 30) of the first attempts
/// give up after a random 50–500 ms and retry the same voucher later. Every request must end
/// answered and receipted, and the chain must settle exactly each user's total. Prints the
/// figures `docs/benchmarks.md` quotes (`-- --nocapture`).
#[tokio::test(flavor = "multi_thread")]
async fn many_users_at_once_with_random_drops_settle_exactly() {
    let users = env_or("LOAD_USERS", 12);
    let per_user = env_or("LOAD_REQUESTS", 4);
    let drop_percent = env_or("LOAD_DROP_PERCENT", 30) as u64;
    let Setup { dir, chain, base, http, node: _node, worker: _worker, .. } =
        setup("faults-load", "", "parallel = 4\nqueue = 256\n", "max_connections = 256\n").await;
    let alice = Signer::from_uri("//Alice").unwrap();
    let bob = Signer::from_uri("//Bob").unwrap();
    let mut people = vec![];
    for i in 0..users {
        let key = Signer::from_uri(&format!("//load/{i}")).unwrap();
        chain.transfer(&alice, &key.account_id(), 10 * UNIT).await.expect("transfer");
        chain.deposit(&key, &bob.account_id(), UNIT).await.expect("deposit");
        people.push(User::new(&key, &bob, &chain));
    }

    let started = Instant::now();
    let mut tasks = vec![];
    for (i, mut user) in people.into_iter().enumerate() {
        let (http, base) = (http.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Lcg(i as u64 + 1);
            let url = format!("{base}/v1/chat/completions");
            let (mut dropped, mut latencies) = (0usize, vec![]);
            for r in 0..per_user {
                let body = chat_body(&format!("User {i}, question {r}: name a number."), 8, false);
                let v = user.voucher(&body, CAP);
                let header = user.header(v.clone());
                let t = Instant::now();
                let (status, resp) = if rng.next() % 100 < drop_percent {
                    dropped += 1;
                    let patience = Duration::from_millis(50 + rng.next() % 450);
                    let client = reqwest::Client::builder().timeout(patience).build().unwrap();
                    let _ = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header(wire::VOUCHER_HEADER, header.clone())
                        .body(body.clone())
                        .send()
                        .await;
                    answer_of(&http, &url, &body, header).await
                } else {
                    answer_of(&http, &url, &body, header).await
                };
                assert_eq!(status, 200, "user {i} request {r}: {resp}");
                latencies.push(t.elapsed());
                user.accept(&serde_json::from_value(resp["receipt"].clone()).unwrap(), &v);
            }
            (user, dropped, latencies)
        }));
    }
    let mut done = vec![];
    let (mut dropped, mut latencies) = (0, vec![]);
    for t in tasks {
        let (user, d, l) = t.await.unwrap();
        dropped += d;
        latencies.extend(l);
        done.push(user);
    }
    let served = started.elapsed();
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() - 1) * p / 100].as_secs_f64();
    for u in &done {
        settled_exactly(&chain, &u.key.account_id(), &bob.account_id(), u.total).await;
    }
    let settled = started.elapsed();
    let requests = users * per_user;
    println!(
        "load: {users} users x {per_user} chats (8 tokens) = {requests} requests, {dropped} first \
         attempts dropped: served in {:.1} s ({:.2} req/s), latency p50 {:.2} s p95 {:.2} s \
         max {:.2} s; all settled exactly after {:.1} s",
        served.as_secs_f64(),
        requests as f64 / served.as_secs_f64(),
        pct(50),
        pct(95),
        pct(100),
        settled.as_secs_f64()
    );
    assert_eq!(metric(&http, &base, "compute_claims_rejected_total ").await, 0);
    assert_eq!(metric(&http, &base, "compute_queue_depth ").await, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
