//! End to end with real parts: a `compute-node --dev --sealing instant`, the `compute-worker`
//! binary serving SmolLM2 (chat) and all-MiniLM-L6-v2 (embeddings), and a client that signs
//! vouchers and checks receipts (reqwest). Needs the node built (`cargo test --workspace
//! --no-run`) and the models (`make model`).

#![allow(clippy::unwrap_used, clippy::type_complexity)]

use common::*;
use compute_client::{
    wire::{self, ReceiptJson},
    Signer,
};
use compute_primitives::{Balance, Voucher};
use provider_worker::model;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

mod common;

#[tokio::test(flavor = "multi_thread")]
async fn paid_chats_settle_exactly_once_across_a_worker_crash() {
    let Some(model) = provider_worker::model::default_model_path() else {
        panic!("model missing: run `make model`");
    };
    let dir = temp_dir("e2e");
    let (_node, rpc, chain) = dev_chain(&dir).await;
    let http_port = free_port();
    let base = format!("http://127.0.0.1:{http_port}");
    let config = write_config(&dir, rpc, http_port, &model, 100_000);
    let mut worker = start_worker(&dir, &config, "1");
    let http = reqwest::Client::new();
    wait_healthy(&http, &base, &dir, "1").await;

    let bob = Signer::from_uri("//Bob").unwrap();
    let charlie = Signer::from_uri("//Charlie").unwrap();
    let services = chain.services_of(&bob.account_id()).await.expect("services");
    assert_eq!(services.len(), 2, "the worker registered its services");
    let chat_service = services.iter().find(|s| s.service_id == 7).expect("chat service");
    assert_eq!((chat_service.input_price, chat_service.output_price), (INPUT_PRICE, OUTPUT_PRICE));
    let models: Value =
        http.get(format!("{base}/v1/models")).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["data"][0]["id"], "SmolLM2-135M-Instruct");

    let deposit = UNIT;
    chain.deposit(&charlie, &bob.account_id(), deposit).await.expect("deposit");
    let mut user = User::new(&charlie, &bob, &chain);
    let url = format!("{base}/v1/chat/completions");

    // 1. Non-streaming chat.
    let body = chat_body("What is the capital of France?", 24, false);
    let v = user.voucher(&body, CAP);
    let (status, resp) = post(&http, &url, body.clone(), Some(user.header(v.clone()))).await;
    assert_eq!(status, 200, "{resp}");
    let receipt: ReceiptJson = serde_json::from_value(resp["receipt"].clone()).unwrap();
    let signed = user.accept(&receipt, &v);
    let text = resp["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.is_empty());
    assert_eq!(signed.receipt.response_hash, wire::response_hash(text));
    assert_eq!(resp["usage"]["prompt_tokens"], signed.receipt.input_tokens);
    assert_eq!(resp["usage"]["completion_tokens"], signed.receipt.output_tokens);
    assert!(signed.receipt.output_tokens > 0 && signed.receipt.output_tokens <= 24);
    // The receipt commits to the response's activation proof, sent with it; recomputed here
    // from the weights the service commits to, it passes.
    assert_eq!(chat_service.model_hash.0, model::weights::file_hash(&model).unwrap());
    assert_eq!(models["data"][0]["model_hash"], format!("{:?}", chat_service.model_hash));
    let proof = receipt.proof_bytes(&signed.receipt).unwrap().expect("a proof with the receipt");
    let proof = model::proof::ActivationProof::from_bytes(&proof).unwrap();
    assert_eq!(proof.len() as u64, signed.receipt.output_tokens);
    let validator = Validator::load(&model);
    let verdict = validator.check("What is the capital of France?", &proof);
    assert!(verdict.passed(), "{verdict:?}");
    assert!(model::proof::covers_text(&validator.tokenizer, &proof, text, &[]));
    assert!(!model::proof::covers_text(&validator.tokenizer, &proof, "Berlin, I think.", &[]));
    // The same proof does not pass for another question.
    assert!(!validator.check("What is the capital of Spain?", &proof).passed());

    // A retry of the same request gets the same answer and receipt, charged once.
    let (status2, resp2) = post(&http, &url, body, Some(user.header(v.clone()))).await;
    assert_eq!(status2, 200);
    assert_eq!(resp2, resp);

    // 2. Streaming chat: deltas, then usage and the receipt in the last chunk.
    let body = chat_body("Name three colours.", 16, true);
    let v = user.voucher(&body, CAP);
    let resp = http
        .post(&url)
        .header(wire::VOUCHER_HEADER, user.header(v.clone()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sse = resp.text().await.unwrap();
    let chunks: Vec<Value> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("chunk json"))
        .collect();
    assert!(sse.trim_end().ends_with("data: [DONE]"));
    let streamed: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    let last = chunks.last().unwrap();
    let receipt: ReceiptJson = serde_json::from_value(last["receipt"].clone()).unwrap();
    let signed = user.accept(&receipt, &v);
    assert_eq!(signed.receipt.response_hash, wire::response_hash(&streamed));
    assert_eq!(last["usage"]["completion_tokens"], signed.receipt.output_tokens);
    let proof = receipt.proof_bytes(&signed.receipt).unwrap().expect("a proof in the last chunk");
    let proof = model::proof::ActivationProof::from_bytes(&proof).unwrap();
    assert!(validator.check("Name three colours.", &proof).passed());
    assert!(model::proof::covers_text(&validator.tokenizer, &proof, &streamed, &[]));

    // 3. A cap that only fits a few output tokens lowers max_tokens instead of overcharging.
    let body = chat_body("Tell me a long story about a dragon.", 64, false);
    let prompt_cap = 60 * INPUT_PRICE + 3 * OUTPUT_PRICE;
    let v = user.voucher(&body, prompt_cap);
    let (status, resp) = post(&http, &url, body, Some(user.header(v.clone()))).await;
    assert_eq!(status, 200, "{resp}");
    let receipt: ReceiptJson = serde_json::from_value(resp["receipt"].clone()).unwrap();
    let signed = user.accept(&receipt, &v);
    assert!(signed.receipt.fee <= prompt_cap);

    // 4. Embeddings, in the same receipt chain: a fee per input token, a receipt over the
    // vectors' bytes.
    let emb_url = format!("{base}/v1/embeddings");
    let texts = ["The quick brown fox jumps over the lazy dog.", "A second text."];
    let body = serde_json::to_vec(&json!({ "model": "all-MiniLM-L6-v2", "input": texts })).unwrap();
    let v = user.voucher_for(8, &body, CAP);
    let (status, resp) = post(&http, &emb_url, body, Some(user.header(v.clone()))).await;
    assert_eq!(status, 200, "{resp}");
    let vectors: Vec<Vec<f32>> = resp["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let xs = d["embedding"].as_array().unwrap();
            xs.iter().map(|x| x.as_f64().unwrap() as f32).collect()
        })
        .collect();
    assert_eq!(vectors.iter().map(Vec::len).collect::<Vec<_>>(), [384, 384]);
    assert!((vectors[0][0] - 0.043934).abs() < 1e-4, "the numpy reference's first value");
    let receipt: ReceiptJson = serde_json::from_value(resp["receipt"].clone()).unwrap();
    let signed = user.accept_priced(&receipt, &v, (EMBED_PRICE, 0));
    assert_eq!(signed.receipt.response_hash, wire::embedding_hash(&vectors));
    assert_eq!(signed.receipt.input_tokens, 12 + 6, "WordPiece tokens with [CLS] and [SEP]");
    assert_eq!(resp["usage"]["prompt_tokens"], signed.receipt.input_tokens);
    assert_eq!((signed.receipt.output_tokens, signed.receipt.fee), (0, 18 * EMBED_PRICE));
    assert_eq!((signed.receipt.proof_hash, receipt.proof), (Default::default(), None));
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("\ncompute_embedding_inputs_total 2\n"), "{metrics}");
    assert!(metrics.contains("\ncompute_embedding_passes_total 1\n"), "{metrics}");
    // Refusals specific to embeddings: each uses the nonce with a fee-0 receipt.
    let emb = |input: Value| {
        serde_json::to_vec(&json!({ "model": "all-MiniLM-L6-v2", "input": input })).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, u32, Balance, u16, &str)> = vec![
        ("chat voucher", emb(json!("x")), 7, CAP, 400, "wrong_service_kind"),
        ("too long", emb(json!("word ".repeat(300))), 8, CAP, 400, "context_length_exceeded"),
        ("token ids", emb(json!([[1, 2, 3]])), 8, CAP, 400, "token_input_unsupported"),
        // `[CLS] hello [SEP]` costs three tokens; a cap of two falls short.
        ("cap below the input fee", emb(json!("hello")), 8, 2 * EMBED_PRICE, 402, "cap_too_low"),
    ];
    for (what, body, service, cap, want_status, want_code) in cases {
        let v = user.voucher_for(service, &body, cap);
        let (status, resp) = post(&http, &emb_url, body, Some(user.header(v.clone()))).await;
        assert_eq!(
            (status, resp["error"]["code"].as_str()),
            (want_status, Some(want_code)),
            "{what}"
        );
        let receipt: ReceiptJson = serde_json::from_value(resp["error"]["receipt"].clone())
            .unwrap_or_else(|_| panic!("{what}: a fee-0 receipt: {resp}"));
        let prices = if service == 8 { (EMBED_PRICE, 0) } else { (INPUT_PRICE, OUTPUT_PRICE) };
        assert_eq!(user.accept_priced(&receipt, &v, prices).receipt.fee, 0, "{what}");
    }

    // Bad input: each refused with its code; none charges anything.
    let good = chat_body("Hi", 4, false);
    type Header = Box<dyn Fn(&User, &[u8]) -> Option<String>>;
    let signed = |f: fn(&User, &mut Voucher)| -> Header {
        Box::new(move |u: &User, body: &[u8]| {
            let mut v = u.voucher(body, CAP);
            f(u, &mut v);
            Some(u.header(v))
        })
    };
    let bob2 = bob.clone();
    let forged: Header = Box::new(move |u: &User, body: &[u8]| {
        Some(wire::to_hex(&wire::sign_voucher(&bob2, u.voucher(body, CAP), &u.genesis)))
    });
    let unknown_model = br#"{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}"#.to_vec();
    let cases: Vec<(&str, Vec<u8>, Header, u16, &str, bool)> = vec![
        (
            "no voucher",
            good.clone(),
            Box::new(|_: &User, _: &[u8]| None),
            401,
            "missing_voucher",
            false,
        ),
        (
            "garbled voucher",
            good.clone(),
            Box::new(|_: &User, _: &[u8]| Some("0xdeadbeef".into())),
            400,
            "malformed_voucher",
            false,
        ),
        ("forged signature", good.clone(), forged, 401, "bad_signature", false),
        (
            "wrong provider",
            good.clone(),
            signed(|u, v| v.provider = u.key.account_id()),
            401,
            "wrong_provider",
            false,
        ),
        ("replayed nonce", good.clone(), signed(|_, v| v.nonce = 1), 409, "stale_nonce", false),
        ("nonce gap", good.clone(), signed(|_, v| v.nonce += 5), 409, "nonce_gap", false),
        ("oversized body", vec![b' '; 70_000], signed(|_, _| ()), 413, "body_too_large", false),
        ("malformed json", b"{nope".to_vec(), signed(|_, _| ()), 400, "invalid_json", true),
        (
            "spent too low",
            good.clone(),
            signed(|u, v| v.spent = u.total - 1),
            409,
            "spent_mismatch",
            true,
        ),
        ("cap too low", good.clone(), signed(|_, v| v.cap = INPUT_PRICE), 402, "cap_too_low", true),
        ("unknown model", unknown_model, signed(|_, _| ()), 404, "model_not_found", true),
    ];
    for (what, body, make_header, want_status, want_code, uses_nonce) in cases {
        let header = make_header(&user, &body);
        let v: Option<Voucher> = header
            .as_deref()
            .and_then(|h| wire::from_hex::<compute_primitives::SignedVoucher>("v", h).ok())
            .map(|s| s.voucher);
        let (status, resp) = post(&http, &url, body, header).await;
        assert_eq!(status, want_status, "{what}: {resp}");
        assert_eq!(resp["error"]["code"], want_code, "{what}: {resp}");
        if uses_nonce {
            let receipt: ReceiptJson = serde_json::from_value(resp["error"]["receipt"].clone())
                .unwrap_or_else(|_| panic!("{what}: a fee-0 receipt: {resp}"));
            let signed = user.accept(&receipt, &v.unwrap());
            assert_eq!(signed.receipt.fee, 0, "{what}");
        } else {
            assert!(resp["error"].get("receipt").is_none(), "{what}");
        }
    }
    // The worker still serves.
    let body = chat_body("Say hello.", 8, false);
    let v = user.voucher(&body, CAP);
    let (status, resp) = post(&http, &url, body, Some(user.header(v.clone()))).await;
    assert_eq!(status, 200, "{resp}");
    let receipt: ReceiptJson = serde_json::from_value(resp["receipt"].clone()).unwrap();
    user.accept(&receipt, &v);

    // Receipts can be fetched back with a signed challenge.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let auth = wire::SignedAuth::new(&charlie, bob.account_id(), now, &user.genesis);
    let listed: Value = http
        .get(format!("{base}/v1/receipts?after=0"))
        .header(wire::AUTH_HEADER, wire::to_hex(&auth))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), user.receipts.len());
    // Each comes with the voucher it answers, signed by Charlie for the same nonce.
    for item in listed["data"].as_array().unwrap() {
        let r: ReceiptJson = serde_json::from_value(item.clone()).unwrap();
        let sv: compute_primitives::SignedVoucher =
            wire::from_hex("voucher", r.voucher.as_deref().expect("voucher attached")).unwrap();
        assert!(sv.verify(&user.genesis) && sv.voucher.user == charlie.account_id());
        assert_eq!(sv.voucher.nonce, r.nonce);
        // Served chats come back with their proofs.
        let signed: compute_primitives::SignedReceipt = wire::from_hex("r", &r.signed).unwrap();
        let proof = r.proof_bytes(&signed.receipt).unwrap();
        let chat = sv.voucher.service_id == 7 && signed.receipt.output_tokens > 0;
        assert_eq!(proof.is_some(), chat, "nonce {}", r.nonce);
    }
    let forged = wire::SignedAuth::new(&bob, bob.account_id(), now, &user.genesis);
    let mut forged = forged;
    forged.challenge.user = charlie.account_id();
    let status = http
        .get(format!("{base}/v1/receipts"))
        .header(wire::AUTH_HEADER, wire::to_hex(&forged))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);

    // Nothing settled yet (policy: an old-enough receipt only). Crash the worker.
    let escrow =
        chain.escrow(&charlie.account_id(), &bob.account_id(), None).await.unwrap().unwrap();
    assert_eq!(escrow.settled_total, 0);
    worker.0.kill().expect("kill -9");
    let _ = worker.0.wait();

    // Restart with a policy that settles at once: the chain pays exactly the verified total.
    let config = write_config(&dir, rpc, http_port, &model, 0);
    worker = start_worker(&dir, &config, "2");
    wait_healthy(&http, &base, &dir, "2").await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let escrow = loop {
        let e =
            chain.escrow(&charlie.account_id(), &bob.account_id(), None).await.unwrap().unwrap();
        if e.settled_nonce == user.nonce || Instant::now() > deadline {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(escrow.settled_nonce, user.nonce, "settled through the last voucher");
    assert_eq!(escrow.settled_total, user.total);
    assert_eq!(escrow.balance, deposit - user.total);
    let stats = chain.provider(&bob.account_id()).await.unwrap().unwrap();
    assert_eq!(stats.earned, user.total);
    assert_eq!(stats.claims_settled, 1);

    // Later ticks and another restart never pay again.
    drop(worker);
    let worker = start_worker(&dir, &config, "3");
    wait_healthy(&http, &base, &dir, "3").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again =
        chain.escrow(&charlie.account_id(), &bob.account_id(), None).await.unwrap().unwrap();
    assert_eq!(again, escrow);
    assert_eq!(chain.provider(&bob.account_id()).await.unwrap().unwrap().claims_settled, 1);
    drop(worker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two worker processes of one provider share a PostgreSQL trace store: one user's requests
/// alternate between them and form one receipt chain; the same voucher sent to both at once is
/// served once; one settlement pays the exact total; a restart of one never seals what the
/// other is serving, and the survivor seals what a gone one left.
#[tokio::test(flavor = "multi_thread")]
async fn two_workers_share_one_postgres_sequencer() {
    let Some(model) = provider_worker::model::default_model_path() else {
        panic!("model missing: run `make model`");
    };
    let pg = common::pg::Server::start();
    let dir = temp_dir("pg-e2e");
    let (_node, rpc, chain) = dev_chain(&dir).await;
    let http = reqwest::Client::new();
    let mut workers = Vec::new();
    let mut bases = Vec::new();
    for tag in ["a", "b"] {
        let port = free_port();
        let wdir = dir.join(tag);
        std::fs::create_dir_all(&wdir).unwrap();
        let config = write_config(&wdir, rpc, port, &model, 0);
        let mut text = std::fs::read_to_string(&config).unwrap();
        // Behind one load balancer: the same public URL, so neither updates the service.
        text = format!("public_url = \"http://compute.example\"\n{text}")
            .replace("[store]\n", &format!("[store]\ndatabase_url = \"{}\"\n", pg.url()));
        std::fs::write(&config, text).unwrap();
        workers.push(start_worker(&wdir, &config, tag));
        let base = format!("http://127.0.0.1:{port}");
        wait_healthy(&http, &base, &wdir, tag).await;
        bases.push(base);
    }

    let bob = Signer::from_uri("//Bob").unwrap();
    let charlie = Signer::from_uri("//Charlie").unwrap();
    let deposit = UNIT;
    chain.deposit(&charlie, &bob.account_id(), deposit).await.expect("deposit");
    let mut user = User::new(&charlie, &bob, &chain);
    for i in 0..4 {
        let url = format!("{}/v1/chat/completions", bases[i % 2]);
        let body = chat_body(&format!("Count to {}.", i + 2), 6, false);
        let v = user.voucher(&body, CAP);
        let (status, resp) = post(&http, &url, body, Some(user.header(v.clone()))).await;
        assert_eq!(status, 200, "worker {}: {resp}", i % 2);
        let receipt: ReceiptJson = serde_json::from_value(resp["receipt"].clone()).unwrap();
        user.accept(&receipt, &v);
    }
    // The same voucher to both workers at once: one admission, one receipt.
    let body = chat_body("Say yes.", 4, false);
    let v = user.voucher(&body, CAP);
    let h = user.header(v.clone());
    let (url_a, url_b) =
        (format!("{}/v1/chat/completions", bases[0]), format!("{}/v1/chat/completions", bases[1]));
    let (ra, rb) = tokio::join!(
        post(&http, &url_a, body.clone(), Some(h.clone())),
        post(&http, &url_b, body, Some(h)),
    );
    let served: Vec<&Value> =
        [&ra, &rb].iter().filter(|(s, _)| *s == 200).map(|(_, r)| r).collect();
    assert!(!served.is_empty(), "{ra:?} {rb:?}");
    for (s, r) in [&ra, &rb] {
        assert!(*s == 200 || (*s == 409 && r["error"]["code"] == "in_progress"), "{s}: {r}");
    }
    let receipt: ReceiptJson = serde_json::from_value(served[0]["receipt"].clone()).unwrap();
    if served.len() == 2 {
        assert_eq!(served[0]["receipt"], served[1]["receipt"], "the retry gets the same receipt");
    }
    user.accept(&receipt, &v);

    // max_age 0: one of the two settles, once, for the exact total.
    let deadline = Instant::now() + Duration::from_secs(120);
    let escrow = loop {
        let e =
            chain.escrow(&charlie.account_id(), &bob.account_id(), None).await.unwrap().unwrap();
        if e.settled_nonce == user.nonce || Instant::now() > deadline {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(escrow.settled_nonce, user.nonce);
    assert_eq!(escrow.settled_total, user.total);
    assert_eq!(escrow.balance, deposit - user.total);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = chain.provider(&bob.account_id()).await.unwrap().unwrap();
    assert_eq!(stats.earned, user.total);
    // max_age 0 settles after each request; what matters is that every nonce was settled
    // exactly once and the chain paid exactly the verified total.
    assert_eq!(stats.requests_settled, user.nonce);

    // A request in flight at worker b (admitted in the shared store as b's) survives worker a's
    // restart: a's recovery seals only requests of processes that are gone. Once b is gone, a
    // seals it at fee 0 and the user's retry gets that answer.
    let (db, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let b_id: i64 = db.query_one("SELECT MAX(id) FROM workers", &[]).await.unwrap().get(0);
    let store = provider_worker::store::Store::postgres(&pg.url()).await.unwrap();
    let body = chat_body("Still there?", 4, false);
    let v = user.voucher(&body, CAP);
    let sv = wire::sign_voucher(&user.key, v.clone(), &user.genesis);
    store.admit(&sv, 1, b_id, |_| Ok::<(), ()>(())).await.unwrap().unwrap();
    let a_config = dir.join("a").join("worker.toml");
    drop(workers.remove(0));
    workers.insert(0, start_worker(&dir.join("a"), &a_config, "a2"));
    wait_healthy(&http, &bases[0], &dir.join("a"), "a2").await;
    tokio::time::sleep(provider_worker::store::HEARTBEAT + Duration::from_secs(2)).await;
    let trace = store.trace(&user.key.account_id(), v.nonce).await.unwrap().unwrap();
    assert!(trace.receipt.is_none(), "a's restart sealed a request of live worker b");
    drop(workers.remove(1));
    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, resp) = loop {
        let (status, resp) = post(&http, &url_a, body.clone(), Some(user.header(v.clone()))).await;
        if status != 409 || Instant::now() > deadline {
            break (status, resp);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!((status, resp["error"]["code"].as_str()), (500, Some("interrupted")), "{resp}");
    let receipt: ReceiptJson = serde_json::from_value(resp["error"]["receipt"].clone()).unwrap();
    assert_eq!(user.accept(&receipt, &v).receipt.fee, 0);
    drop(workers);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A provider may offer embeddings only: the worker starts without a chat model, registers just
/// its embedding service, answers chat with 404, and serves paid embeddings within its limits
/// (tokens per request; the request timeout).
#[tokio::test(flavor = "multi_thread")]
async fn an_embeddings_only_worker_needs_no_chat_model() {
    let dir = temp_dir("e2e-embed-only");
    let (_node, rpc, chain) = dev_chain(&dir).await;
    let http_port = free_port();
    let base = format!("http://127.0.0.1:{http_port}");
    let rest = format!(
        "[embeddings]\nmodel = \"{}\"\nmax_tokens = 8\n[[services]]\nid = 3\n\
         kind = \"embedding\"\ninput_price = \"{EMBED_PRICE}\"\noutput_price = \"0\"\n",
        embedding_model().display()
    );
    let config = config_with(&dir, rpc, http_port, &rest);
    let _worker = start_worker(&dir, &config, "1");
    let http = reqwest::Client::new();
    wait_healthy(&http, &base, &dir, "1").await;

    let bob = Signer::from_uri("//Bob").unwrap();
    let charlie = Signer::from_uri("//Charlie").unwrap();
    let services = chain.services_of(&bob.account_id()).await.expect("services");
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].kind, compute_primitives::ServiceKind::Embedding);
    assert_eq!(services[0].model, "all-MiniLM-L6-v2", "named after the model's directory");

    // The service commits to the safetensors served, which anyone can download by that hash,
    // whole or in ranges; nothing else is served.
    let file = model::weights::embedding_weights_file(&embedding_model());
    let bytes = std::fs::read(&file).unwrap();
    let hash = services[0].model_hash;
    assert_eq!(hash.0, model::weights::file_hash(&file).unwrap());
    let weights = format!("{base}/v1/weights/{hash:?}");
    let whole = http.get(&weights).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["x-model-hash"].to_str().unwrap(), format!("{hash:?}"));
    assert!(whole.bytes().await.unwrap() == bytes, "the whole file, byte for byte");
    let part = http.get(&weights).header("range", "bytes=100-199").send().await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap(), bytes[100..200]);
    let other = format!("{base}/v1/weights/{:?}", polkadot_sdk::sp_core::H256::repeat_byte(1));
    assert_eq!(http.get(&other).send().await.unwrap().status(), 404);
    for bad in ["0x12", "..%2F..%2Fetc%2Fpasswd", "config.json"] {
        let status = http.get(format!("{base}/v1/weights/{bad}")).send().await.unwrap().status();
        assert_eq!(status, 400, "{bad}");
    }

    // A worker told to commit to other weights than it loads refuses to start.
    let wrong_dir = dir.join("wrong");
    std::fs::create_dir_all(&wrong_dir).unwrap();
    let wrong = config_with(
        &wrong_dir,
        rpc,
        free_port(),
        &format!("{rest}model_hash = \"{:?}\"\n", polkadot_sdk::sp_core::H256::repeat_byte(9)),
    );
    let mut refused = start_worker(&wrong_dir, &wrong, "wrong");
    let status = refused.0.wait().unwrap();
    let log = std::fs::read_to_string(wrong_dir.join("worker-wrong.log")).unwrap();
    assert!(!status.success() && log.contains("refusing to register"), "{log}");
    assert_eq!(chain.services_of(&bob.account_id()).await.unwrap()[0].model_hash, hash);
    let health: Value =
        http.get(format!("{base}/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (health["model"].clone(), health["embedding_model"].clone()),
        (Value::Null, json!("all-MiniLM-L6-v2"))
    );

    chain.deposit(&charlie, &bob.account_id(), UNIT).await.expect("deposit");
    let mut user = User::new(&charlie, &bob, &chain);
    let (status, resp) =
        post(&http, &format!("{base}/v1/chat/completions"), chat_body("Hi", 4, false), None).await;
    assert_eq!((status, resp["error"]["code"].as_str()), (404, Some("not_found")));

    // Over the worker's tokens per request (6 + 3 > 8): refused before any work, fee 0.
    let body = serde_json::to_vec(
        &json!({ "model": "all-MiniLM-L6-v2", "input": ["Hello, World!", "Hi"] }),
    )
    .unwrap();
    let v = user.voucher_for(3, &body, CAP);
    let (status, resp) =
        post(&http, &format!("{base}/v1/embeddings"), body, Some(user.header(v.clone()))).await;
    assert_eq!((status, resp["error"]["code"].as_str()), (400, Some("too_many_tokens")), "{resp}");
    let receipt: ReceiptJson = serde_json::from_value(resp["error"]["receipt"].clone()).unwrap();
    assert_eq!(user.accept_priced(&receipt, &v, (EMBED_PRICE, 0)).receipt.fee, 0);

    let body =
        serde_json::to_vec(&json!({ "model": "all-MiniLM-L6-v2", "input": "Hello, World!" }))
            .unwrap();
    let v = user.voucher_for(3, &body, CAP);
    let (status, resp) =
        post(&http, &format!("{base}/v1/embeddings"), body, Some(user.header(v.clone()))).await;
    assert_eq!(status, 200, "{resp}");
    let receipt: ReceiptJson = serde_json::from_value(resp["receipt"].clone()).unwrap();
    let signed = user.accept_priced(&receipt, &v, (EMBED_PRICE, 0));
    assert_eq!(signed.receipt.input_tokens, 6, "[CLS] hello , world ! [SEP]");

    // A second worker of the same provider (behind the same public address, so the service's
    // terms stay as they are) whose requests have no time at all: an admitted embeddings
    // request is answered 504 `timeout` with a fee-0 receipt, and a retry of the same voucher
    // gets that stored answer back rather than a second try.
    let slow_dir = dir.join("slow");
    std::fs::create_dir_all(&slow_dir).unwrap();
    let slow_port = free_port();
    let slow_base = format!("http://127.0.0.1:{slow_port}");
    let slow_config = config_with(
        &slow_dir,
        rpc,
        slow_port,
        &format!("public_url = \"{base}\"\n[limits]\nrequest_timeout_secs = 0\n{rest}"),
    );
    let _slow = start_worker(&slow_dir, &slow_config, "slow");
    wait_healthy(&http, &slow_base, &slow_dir, "slow").await;
    let dave = Signer::from_uri("//Dave").unwrap();
    chain.deposit(&dave, &bob.account_id(), UNIT).await.expect("deposit");
    let mut user = User::new(&dave, &bob, &chain);
    let body =
        serde_json::to_vec(&json!({ "model": "all-MiniLM-L6-v2", "input": "Hello" })).unwrap();
    let v = user.voucher_for(3, &body, CAP);
    let url = format!("{slow_base}/v1/embeddings");
    let (status, resp) = post(&http, &url, body.clone(), Some(user.header(v.clone()))).await;
    assert_eq!((status, resp["error"]["code"].as_str()), (504, Some("timeout")), "{resp}");
    let receipt: ReceiptJson = serde_json::from_value(resp["error"]["receipt"].clone()).unwrap();
    assert_eq!(user.accept_priced(&receipt, &v, (EMBED_PRICE, 0)).receipt.fee, 0);
    let (status, again) = post(&http, &url, body, Some(user.header(v))).await;
    assert_eq!((status, &again), (504, &resp), "a retry gets the stored answer");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What an auditor runs: the committed weights, and one prefill per proof.
struct Validator {
    llama: model::llama::Llama,
    tokenizer: model::ModelTokenizer,
}

impl Validator {
    fn load(path: &std::path::Path) -> Self {
        let loaded = model::read_gguf(path, model::WeightFormat::AsStored).unwrap();
        let llama = model::llama::Llama::from_gguf(
            &loaded.content,
            &loaded.bytes,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let tokenizer = model::ModelTokenizer::from_gguf(&loaded.content).unwrap();
        Validator { llama, tokenizer }
    }

    /// Check `proof` as the answer to the one-message chat `question` (as `chat_body` sends).
    fn check(
        &self,
        question: &str,
        proof: &model::proof::ActivationProof,
    ) -> model::proof::Verdict {
        let messages = [model::ChatMessage { role: "user".into(), content: question.into() }];
        let prompt =
            self.tokenizer.encode(&model::ChatTemplate::default().render(&messages)).unwrap();
        model::proof::validate(&self.llama, &prompt, proof, model::proof::THRESHOLDS)
    }
}
