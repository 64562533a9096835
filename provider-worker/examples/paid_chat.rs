//! A scripted paid request against a running chain and worker: fund an escrow, send a chat with
//! a signed voucher, verify the receipt, close with an ack, and wait until the provider has
//! settled it on chain. Used by `make demo`.
//!
//! `cargo run -p provider-worker --example paid_chat -- ws://127.0.0.1:9944 http://127.0.0.1:8080`

use anyhow::{bail, Context};
use compute_client::{
    wire::{self, ReceiptJson},
    Chain, Signer,
};
use compute_primitives::Voucher;
use polkadot_sdk::sp_core::H256;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const UNIT: u128 = 1_000_000_000_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let node = args.next().unwrap_or_else(|| "ws://127.0.0.1:9944".into());
    let worker = args.next().unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let question = args.next().unwrap_or_else(|| "What is the capital of France?".into());
    let user = Signer::from_uri("//Charlie")?;
    let chain = Chain::connect(&node, Duration::from_secs(30)).await?;
    let http = reqwest::Client::new();

    let health: Value = http.get(format!("{worker}/health")).send().await?.json().await?;
    let provider: compute_primitives::AccountId = health["provider"]
        .as_str()
        .context("provider")?
        .parse()
        .map_err(|_| anyhow::anyhow!("bad provider"))?;
    let models: Value = http.get(format!("{worker}/v1/models")).send().await?.json().await?;
    let model = &models["data"][0];
    let (service_id, price_version) = (
        model["service_id"].as_u64().context("service")? as u32,
        model["price_version"].as_u64().unwrap_or(0) as u32,
    );
    let prices: (u128, u128) = (
        model["input_price"].as_str().context("price")?.parse()?,
        model["output_price"].as_str().context("price")?.parse()?,
    );
    println!("provider {provider}, service {service_id} `{}`", model["id"]);

    let escrow = chain.escrow(&user.account_id(), &provider, None).await?;
    let (nonce, spent) =
        escrow.as_ref().map_or((0, 0), |e| (e.settled_nonce, e.last_claimed_total));
    if escrow.as_ref().is_none_or(|e| e.spendable() < UNIT / 10) {
        println!("depositing 1 UNIT into the escrow with the provider (waiting for finality)…");
        chain.deposit(&user, &provider, UNIT).await?;
    }
    let genesis: H256 = chain.genesis_hash();

    let body = serde_json::to_vec(&json!({
        "model": model["id"], "max_tokens": 48, "temperature": 0,
        "messages": [{ "role": "user", "content": question }] }))?;
    let cap = UNIT / 100;
    let voucher = Voucher {
        user: user.account_id(),
        provider: provider.clone(),
        service_id,
        price_version,
        nonce: nonce + 1,
        request_hash: wire::request_hash(&body),
        spent,
        cap,
    };
    println!("> {question}");
    let resp = http
        .post(format!("{worker}/v1/chat/completions"))
        .header(
            wire::VOUCHER_HEADER,
            wire::to_hex(&wire::sign_voucher(&user, voucher.clone(), &genesis)),
        )
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = resp.status();
    let resp: Value = resp.json().await?;
    if !status.is_success() {
        bail!("worker refused the request ({status}): {resp}");
    }
    println!("< {}", resp["choices"][0]["message"]["content"].as_str().unwrap_or_default());
    let receipt: ReceiptJson = serde_json::from_value(resp["receipt"].clone())?;
    let signed = wire::from_hex("receipt", &receipt.signed)?;
    wire::check_receipt(&signed, &voucher, &genesis, prices, spent)?;
    println!(
        "receipt verified: {} prompt + {} completion tokens, fee {} (cap {cap}), total {}",
        receipt.input_tokens, receipt.output_tokens, receipt.fee, receipt.total
    );

    // Close the session so the provider can settle with no cap outstanding.
    let ack = Voucher {
        nonce: voucher.nonce + 1,
        request_hash: H256::zero(),
        spent: signed.receipt.total,
        cap: 0,
        ..voucher
    };
    let r = http
        .post(format!("{worker}/v1/ack"))
        .header(
            wire::VOUCHER_HEADER,
            wire::to_hex(&wire::sign_voucher(&user, ack.clone(), &genesis)),
        )
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("ack refused: {}", r.text().await?);
    }
    println!("ack sent; waiting for the provider to settle on chain…");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let e = chain.escrow(&user.account_id(), &provider, None).await?.context("escrow")?;
        if e.settled_nonce >= ack.nonce {
            println!(
                "settled on chain: provider paid {} in total; escrow balance now {}",
                e.settled_total, e.balance
            );
            break;
        }
        if Instant::now() > deadline {
            bail!("not settled within 120 s (settled nonce {})", e.settled_nonce);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}
