//! `compute embed`: vectors for one or more texts as one paid request to an embedding service,
//! its receipt verified against the exact vectors received.

use crate::session::{show, AnswerError, Session};
use anyhow::Context;
use compute_client::{wire::ReceiptJson, ServiceInfo};
use compute_primitives::{Balance, SignedReceipt};
use polkadot_sdk::sp_core::H256;
use serde_json::{json, Value};

/// The hash a receipt must carry for an embeddings answer: the vectors' little-endian f32 bytes
/// in index order, whether they came as JSON numbers or base64.
pub fn vectors_hash(answer: &Value) -> Result<H256, String> {
    let data = answer["data"].as_array().ok_or("the answer has no `data` list")?;
    let mut vectors: Vec<(u64, Vec<f32>)> = Vec::with_capacity(data.len());
    for item in data {
        let index = item["index"].as_u64().ok_or("an embedding has no index")?;
        let vector = match &item["embedding"] {
            Value::Array(xs) => xs
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32).ok_or("a vector holds a non-number"))
                .collect::<Result<Vec<f32>, _>>()?,
            Value::String(b64) => {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| format!("a base64 vector does not decode: {e}"))?;
                if bytes.len() % 4 != 0 {
                    return Err("a base64 vector is not a whole number of f32".into());
                }
                bytes.as_chunks::<4>().0.iter().map(|c| f32::from_le_bytes(*c)).collect()
            }
            _ => return Err("an embedding is neither numbers nor base64".into()),
        };
        vectors.push((index, vector));
    }
    vectors.sort_by_key(|(i, _)| *i);
    if vectors.iter().enumerate().any(|(n, (i, _))| *i != n as u64) {
        return Err("the embeddings' indexes are not 0, 1, 2, …".into());
    }
    let vectors: Vec<Vec<f32>> = vectors.into_iter().map(|(_, v)| v).collect();
    Ok(compute_client::wire::embedding_hash(&vectors))
}

/// Sign, send, verify and record one embeddings request; on a nonce the provider does not
/// expect, resynchronise from its signed receipts and retry once.
pub async fn request(
    sess: &Session,
    svc: &ServiceInfo,
    texts: &[String],
    cap: Balance,
) -> Result<(Value, SignedReceipt), AnswerError> {
    let asked = json!({ "model": svc.model, "input": texts });
    let body = serde_json::to_vec(&asked).map_err(anyhow::Error::from)?;
    match once(sess, svc, &body, &asked["input"], cap).await {
        Err(AnswerError::Refused { code, .. }) if code == "stale_nonce" || code == "nonce_gap" => {
            sess.resync().await?;
            once(sess, svc, &body, &asked["input"], cap).await
        }
        other => other,
    }
}

async fn once(
    sess: &Session,
    svc: &ServiceInfo,
    body: &[u8],
    input: &Value,
    cap: Balance,
) -> Result<(Value, SignedReceipt), AnswerError> {
    let signed = sess.sign(svc, body, cap).await?;
    let resp = sess.send(&signed, "/v1/embeddings", body.to_vec()).await?;
    let status = resp.status();
    let value: Value = resp.json().await.context("the provider's answer is not JSON")?;
    if !status.is_success() {
        return Err(sess.refused(&signed, status.as_u16(), value));
    }
    let receipt_json: ReceiptJson = serde_json::from_value(value["receipt"].clone())
        .context("the answer carries no receipt")?;
    let hash = vectors_hash(&value).map_err(AnswerError::BadReceipt)?;
    let receipt = sess.record_embeddings(&signed, &receipt_json, hash, Some(input))?;
    Ok((value, receipt))
}

/// `compute embed PROVIDER TEXT...`: print each vector's length and first values (or, with
/// `--json`, the whole answer), then what the receipt billed.
pub async fn run(
    sess: &Session,
    svc: &ServiceInfo,
    texts: &[String],
    cap: Balance,
    json_out: bool,
) -> anyhow::Result<()> {
    let (value, receipt) = request(sess, svc, texts, cap).await?;
    if json_out {
        println!("{value}");
        return Ok(());
    }
    for item in value["data"].as_array().into_iter().flatten() {
        let v = item["embedding"].as_array().cloned().unwrap_or_default();
        let head: Vec<String> =
            v.iter().take(6).filter_map(Value::as_f64).map(|x| format!("{x:+.4}")).collect();
        println!("[{}] {} dimensions: {} …", item["index"], v.len(), head.join(" "));
    }
    println!(
        "-- {} input tokens, fee {}, total {}",
        receipt.receipt.input_tokens,
        show(receipt.receipt.fee),
        show(receipt.receipt.total)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn vectors_hash_reads_numbers_and_base64_alike() {
        let vectors = vec![vec![0.1f32, -2.5, 3.0e-7], vec![1.0f32, 0.0, -0.0]];
        let expected = compute_client::wire::embedding_hash(&vectors);
        // Numbers as the worker writes them (shortest exact f32 form), listed out of order.
        let floats = json!({ "data": [
            { "index": 1, "embedding": vectors[1] },
            { "index": 0, "embedding": vectors[0] },
        ] });
        assert_eq!(vectors_hash(&floats), Ok(expected));
        let b64 = |v: &[f32]| {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            base64::engine::general_purpose::STANDARD.encode(bytes)
        };
        let encoded = json!({ "data": [
            { "index": 0, "embedding": b64(&vectors[0]) },
            { "index": 1, "embedding": b64(&vectors[1]) },
        ] });
        assert_eq!(vectors_hash(&encoded), Ok(expected));
        // A changed value, a missing vector or a broken encoding does not pass.
        let changed = json!({ "data": [
            { "index": 0, "embedding": [0.1, -2.5, 3.1e-7] },
            { "index": 1, "embedding": vectors[1] },
        ] });
        assert_ne!(vectors_hash(&changed), Ok(expected));
        let gap = json!({ "data": [{ "index": 1, "embedding": vectors[1] }] });
        assert!(vectors_hash(&gap).is_err());
        let broken = json!({ "data": [{ "index": 0, "embedding": "AAAA!" }] });
        assert!(vectors_hash(&broken).is_err());
    }
}
