//! The shared trace store against a real PostgreSQL server this test starts (initdb + pg_ctl
//! from the `postgresql` package, which `make setup` installs): two connections stand for two
//! worker processes of one provider.

#![allow(clippy::unwrap_used)]

use compute_client::{wire, Signer};
use compute_primitives::{Receipt, SignedVoucher, Voucher};
use polkadot_sdk::sp_core::H256;
use provider_worker::store::Store;
use std::sync::Arc;

mod common;
use common::pg::Server;

fn voucher(user: &Signer, provider: &Signer, nonce: u64, spent: u128) -> SignedVoucher {
    let v = Voucher {
        user: user.account_id(),
        provider: provider.account_id(),
        service_id: 0,
        price_version: 0,
        nonce,
        request_hash: H256::repeat_byte(1),
        spent,
        cap: 100,
    };
    wire::sign_voucher(user, v, &H256::zero())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_share_one_sequencer() {
    let server = Server::start();
    let a = Arc::new(Store::postgres(&server.url()).await.expect("connects"));
    let b = Arc::new(Store::postgres(&server.url()).await.expect("connects"));
    let user = Signer::from_uri("//Alice").unwrap();
    let provider = Signer::from_uri("//Bob").unwrap();
    let (a_id, b_id) = (a.register_instance().await.unwrap(), b.register_instance().await.unwrap());
    assert_ne!(a_id, b_id);

    // Both "processes" race for every nonce: exactly one takes each.
    for nonce in 1..=20u64 {
        let sv = voucher(&user, &provider, nonce, 0);
        let take = |store: Arc<Store>, owner: i64, sv: SignedVoucher| async move {
            store
                .admit(&sv, 100, owner, |view| {
                    if sv.voucher.nonce == view.seq.last_nonce + 1 {
                        Ok(())
                    } else {
                        Err(())
                    }
                })
                .await
                .unwrap()
                .is_ok()
        };
        let (x, y) =
            tokio::join!(take(a.clone(), a_id, sv.clone()), take(b.clone(), b_id, sv.clone()));
        assert!(x ^ y, "nonce {nonce}: exactly one process admits it ({x}, {y})");
    }
    let seq = b.sequence(&user.account_id()).await.unwrap();
    assert_eq!(seq.last_nonce, 20);
    // Both processes are alive: neither takes the other's requests for interrupted ones.
    assert!(a.orphans(a_id, 0).await.unwrap().is_empty());
    assert!(b.orphans(b_id, 0).await.unwrap().is_empty());
    // A process's own requests count once older than the staleness it asks for.
    let later =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
            + 3600;
    assert_eq!(
        a.orphans(a_id, later).await.unwrap().len() + b.orphans(b_id, later).await.unwrap().len(),
        20
    );
    // A request of a process that is gone (never seen alive here) is an orphan to both.
    let gone = voucher(&provider, &provider, 1, 0);
    a.admit(&gone, 1, 987_654, |_| Ok::<(), ()>(())).await.unwrap().unwrap();
    assert_eq!(b.orphans(b_id, 0).await.unwrap(), vec![gone.clone()]);
    assert_eq!(a.orphans(a_id, 0).await.unwrap(), vec![gone]);

    // Sealing in order from either process continues one running total.
    let mut total = 0u128;
    for nonce in 1..=20u64 {
        let sv = a.trace(&user.account_id(), nonce).await.unwrap().unwrap().voucher;
        total += 5;
        let r = Receipt {
            user: user.account_id(),
            provider: provider.account_id(),
            service_id: 0,
            nonce,
            request_hash: sv.voucher.request_hash,
            response_hash: H256::zero(),
            proof_hash: Default::default(),
            model_hash: Default::default(),
            input_tokens: 1,
            output_tokens: 1,
            fee: 5,
            total,
        };
        let store = if nonce % 2 == 0 { &a } else { &b };
        // Odd nonces carry a proof (the bytes are opaque to the store).
        let proof = (nonce % 2 == 1).then(|| vec![nonce as u8; 9]);
        let signed = wire::sign_receipt(&provider, r, &H256::zero());
        store.seal(&signed, proof.as_deref(), 200, "{}").await.unwrap();
    }
    // A receipt that does not continue the total is refused.
    let bad = Receipt {
        user: user.account_id(),
        provider: provider.account_id(),
        service_id: 0,
        nonce: 21,
        request_hash: H256::zero(),
        response_hash: H256::zero(),
        proof_hash: Default::default(),
        model_hash: Default::default(),
        input_tokens: 0,
        output_tokens: 0,
        fee: 5,
        total: 1,
    };
    assert!(a
        .seal(&wire::sign_receipt(&provider, bad, &H256::zero()), None, 200, "{}")
        .await
        .is_err());

    let seq = a.sequence(&user.account_id()).await.unwrap();
    assert_eq!((seq.sealed_nonce, seq.last_total), (20, 100));
    assert_eq!(a.orphans(a_id, 0).await.unwrap().len(), 1, "only the gone process's request");
    let listed = b.receipts(&user.account_id(), 15, 100).await.unwrap();
    assert_eq!(listed.len(), 5);
    for s in &listed {
        let n = s.receipt.receipt.nonce;
        assert_eq!(s.proof, (n % 2 == 1).then(|| vec![n as u8; 9]), "nonce {n}");
    }
    let alice = |users: Vec<(compute_primitives::AccountId, u64, u32)>| {
        users.into_iter().find(|u| u.0 == user.account_id()).map(|u| u.2)
    };
    assert_eq!(alice(a.unsettled_users().await.unwrap()), Some(20));
    a.mark_settled(&user.account_id(), 12).await.unwrap();
    assert_eq!(alice(b.unsettled_users().await.unwrap()), Some(8));
    assert_eq!(b.sealed_after(&user.account_id(), 12).await.unwrap().len(), 8);

    // One process settles at a time; when it goes away, another takes over.
    assert!(a.settlement_turn().await.unwrap());
    assert!(!b.settlement_turn().await.unwrap());
    drop(a);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(b.settlement_turn().await.unwrap());

    // The database restarts: the connection is opened again on the next calls.
    server.restart();
    let mut answered = None;
    for _ in 0..5 {
        match b.sequence(&user.account_id()).await {
            Ok(seq) => {
                answered = Some(seq);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
    assert_eq!(answered.map(|s| s.sealed_nonce), Some(20), "reconnected after a restart");
    b.heartbeat(b_id).await.expect("writes after a restart");
    drop(server);
}
