//! `compute chat`: one message, or an interactive conversation, each turn a paid request with a
//! verified receipt; streamed token by token unless asked not to.

use crate::{
    session::{show, AnswerError, Session, Signed},
    sse::SseReader,
};
use anyhow::{anyhow, Context};
use compute_client::{wire::ReceiptJson, ServiceInfo};
use compute_primitives::{Balance, SignedReceipt};
use futures::StreamExt;
use serde_json::{json, Value};
use std::io::{BufRead, Write};

/// How each turn is asked.
pub struct Options {
    pub max_tokens: u64,
    pub cap: Balance,
    pub stream: bool,
    pub temperature: Option<f64>,
}

/// A verified answer.
pub struct Turn {
    pub text: String,
    pub receipt_json: ReceiptJson,
    pub receipt: SignedReceipt,
}

/// One paid request: sign, send, read (streaming `on_text` as pieces arrive), verify, record.
/// A nonce the provider does not expect (an answer lost in transit, or another client of this
/// account) is resynchronised from the provider's signed receipts and the request retried once.
pub async fn turn(
    sess: &Session,
    svc: &ServiceInfo,
    messages: &[Value],
    opts: &Options,
    on_text: &mut dyn FnMut(&str),
) -> Result<Turn, AnswerError> {
    let mut body = json!({ "model": svc.model, "max_tokens": opts.max_tokens,
                           "messages": messages, "stream": opts.stream });
    if let Some(t) = opts.temperature {
        body["temperature"] = json!(t);
    }
    let asked = body;
    let body = serde_json::to_vec(&asked).map_err(anyhow::Error::from)?;
    match once(sess, svc, &body, &asked, opts, on_text).await {
        Err(AnswerError::Refused { code, .. }) if code == "stale_nonce" || code == "nonce_gap" => {
            let nonce = sess.resync().await?;
            eprintln!(
                "(continuing after nonce {nonce}, resynchronised from the provider's receipts)"
            );
            once(sess, svc, &body, &asked, opts, on_text).await
        }
        other => other,
    }
}

async fn once(
    sess: &Session,
    svc: &ServiceInfo,
    body: &[u8],
    asked: &Value,
    opts: &Options,
    on_text: &mut dyn FnMut(&str),
) -> Result<Turn, AnswerError> {
    let signed = sess.sign(svc, body, opts.cap).await?;
    let resp = sess.send(&signed, "/v1/chat/completions", body.to_vec()).await?;
    let status = resp.status();
    let is_sse = crate::sse::is_event_stream(&resp);
    if !status.is_success() {
        let value: Value = resp.json().await.context("the provider's answer is not JSON")?;
        return Err(sess.refused(&signed, status.as_u16(), value));
    }
    if is_sse {
        return read_stream(sess, &signed, asked, resp, on_text).await;
    }
    let value: Value = resp.json().await.context("the provider's answer is not JSON")?;
    let receipt_json: ReceiptJson = serde_json::from_value(value["receipt"].clone())
        .context("the answer carries no receipt")?;
    let text = value["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string();
    let receipt = sess.record(&signed, &receipt_json, Some(&text), Some(asked))?;
    on_text(&text);
    Ok(Turn { text, receipt_json, receipt })
}

async fn read_stream(
    sess: &Session,
    signed: &Signed,
    asked: &Value,
    resp: reqwest::Response,
    on_text: &mut dyn FnMut(&str),
) -> Result<Turn, AnswerError> {
    let mut reader = SseReader::default();
    let mut text = String::new();
    let mut receipt_json: Option<ReceiptJson> = None;
    let mut bytes = resp.bytes_stream();
    'read: while let Some(chunk) = bytes.next().await {
        let chunk = chunk.context("the stream from the provider broke")?;
        for ev in reader.push(&chunk) {
            if ev.is_done() {
                break 'read;
            }
            let v: Value = serde_json::from_str(&ev.data)
                .with_context(|| format!("the provider sent a malformed chunk: {}", ev.data))?;
            if let Some(e) = v.get("error") {
                return Err(AnswerError::Other(anyhow!("the provider failed mid-stream: {e}")));
            }
            if let Some(piece) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(piece);
                on_text(piece);
            }
            if let Some(r) = v.get("receipt").filter(|r| !r.is_null()) {
                receipt_json = Some(
                    serde_json::from_value(r.clone())
                        .context("the final chunk's receipt is malformed")?,
                );
            }
        }
    }
    let receipt_json = receipt_json.ok_or_else(|| anyhow!("the stream ended without a receipt"))?;
    let receipt = sess.record(signed, &receipt_json, Some(&text), Some(asked))?;
    Ok(Turn { text, receipt_json, receipt })
}

fn footer(r: &SignedReceipt) -> String {
    format!(
        "-- {} prompt + {} completion tokens, fee {}, total {}",
        r.receipt.input_tokens,
        r.receipt.output_tokens,
        show(r.receipt.fee),
        show(r.receipt.total)
    )
}

/// `compute chat PROVIDER MESSAGE`.
pub async fn one_shot(
    sess: &Session,
    svc: &ServiceInfo,
    message: &str,
    opts: &Options,
    json_out: bool,
) -> anyhow::Result<()> {
    let messages = [json!({ "role": "user", "content": message })];
    let live = opts.stream && !json_out;
    let mut print = |piece: &str| {
        if live {
            print!("{piece}");
            let _ = std::io::stdout().flush();
        }
    };
    let t = turn(sess, svc, &messages, opts, &mut print).await?;
    if json_out {
        println!("{}", json!({ "text": t.text, "receipt": t.receipt_json }));
    } else {
        if !live {
            print!("{}", t.text);
        }
        println!("\n{}", footer(&t.receipt));
    }
    Ok(())
}

/// `compute chat PROVIDER` with no message: a conversation read from stdin, one line per turn.
/// `/reset` forgets the history, `/quit` (or end of input) stops.
pub async fn interactive(sess: &Session, svc: &ServiceInfo, opts: &Options) -> anyhow::Result<()> {
    eprintln!(
        "chatting with {} ({} at {} in / {} out per token); /reset forgets, /quit ends",
        svc.model,
        sess.provider,
        show(svc.input_price),
        show(svc.output_price)
    );
    let stdin = std::io::stdin();
    let mut history: Vec<Value> = Vec::new();
    loop {
        eprint!("you> ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/quit" | "/exit" => return Ok(()),
            "/reset" => {
                history.clear();
                eprintln!("(history cleared)");
                continue;
            }
            _ => {}
        }
        history.push(json!({ "role": "user", "content": line }));
        let mut print = |piece: &str| {
            print!("{piece}");
            let _ = std::io::stdout().flush();
        };
        match turn(sess, svc, &history, opts, &mut print).await {
            Ok(t) => {
                println!();
                eprintln!("{}", footer(&t.receipt));
                history.push(json!({ "role": "assistant", "content": t.text }));
            }
            Err(e @ AnswerError::BadReceipt(_)) => return Err(e.into()),
            Err(e) => {
                history.pop();
                eprintln!("error: {e}");
            }
        }
    }
}
