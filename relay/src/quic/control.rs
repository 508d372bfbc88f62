//! One connection's life on the QUIC side: the handshake, the one control stream (bytes in,
//! decoded messages to the session core; the core's messages out through one writer, a future
//! of the same task), the media task beside it, and the cleanup when the connection goes.
//!
//! Owns framing and task plumbing only: what a message means, when a connection is refused
//! or times out, is the core's (`session`). The handshake itself is bounded by the join
//! timeout; after it, the core's join deadline closes a connection that never joins.

use std::sync::Arc;
use std::time::{Duration, Instant};

use duet_proto::{ClientMessage, CloseCode, FrameDecoder, MAX_CONTROL_FRAME};
use quinn::VarInt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout_at;

use super::admission::Permit;
use super::driver::{Driver, Link, Outgoing};
use super::media::media_loop;
use crate::session::ConnId;

const CONTROL_QUEUE: usize = 256;

/// `permit` holds the attempt's place among the handshakes in flight until the handshake
/// is over, whichever way.
pub(crate) async fn run_connection(driver: Arc<Driver>, incoming: quinn::Incoming, permit: Permit) {
    let accepted_at = Instant::now();
    let deadline = tokio::time::Instant::from_std(accepted_at + driver.cfg.limits.join_timeout());
    let m = driver.metrics.clone();
    let Ok(connecting) = incoming.accept() else {
        return;
    };
    let handshake = timeout_at(deadline, connecting).await;
    drop(permit);
    let Ok(Ok(conn)) = handshake else {
        return;
    };
    m.connections.increment(1.0);
    let id = driver.next_conn_id();
    tracing::debug!(conn = id.0, remote = %conn.remote_address(), "connected");

    // Media is read from the start, so datagrams sent before Join are seen and counted.
    let (joined_tx, joined_rx) = oneshot::channel();
    let link = Arc::new(Link::new(conn.clone(), joined_tx));
    driver.connect(id, link.clone(), conn.remote_address(), accepted_at);
    let media = tokio::spawn(media_loop(driver.clone(), id, conn.clone(), joined_rx));

    // A connection that never opens its stream is closed by the core's join deadline,
    // which ends this wait.
    match conn.accept_bi().await {
        Ok((send, recv)) => {
            let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
            link.attach(tx);
            // Reader and writer are two futures of this one task, not two tasks: a task
            // spawned per connection was an allocation and a scheduling round per join, and
            // its memory per idle session. They still run concurrently (a write waiting on
            // the peer's flow control does not stop the reading).
            let (read_done, read_over) = oneshot::channel::<()>();
            let read = async {
                read_control(&driver, id, &conn, recv).await;
                media.abort();
                driver.disconnect(id);
                let _ = read_done.send(());
            };
            let write = async {
                // Once reading is over, the writer gets 2 s more to flush what it was
                // asked to (a refusal, SessionEnded).
                let grace = async {
                    let _ = read_over.await;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                };
                tokio::select! {
                    () = writer(send, rx, conn.clone()) => {}
                    () = grace => {}
                }
            };
            tokio::join!(read, write);
        }
        Err(_) => {
            media.abort();
            driver.disconnect(id);
        }
    }
    // Whatever the writer did, the connection is closed now.
    conn.close(VarInt::from_u32(CloseCode::Gone.to_u32()), b"gone");
    m.connections.decrement(1.0);
}

/// Reads the control stream until it ends or breaks; every message goes to the core.
async fn read_control(
    driver: &Driver,
    id: ConnId,
    conn: &quinn::Connection,
    mut recv: quinn::RecvStream,
) {
    let mut dec = FrameDecoder::new(MAX_CONTROL_FRAME);
    let mut remote = conn.remote_address();
    loop {
        match recv.read_chunk(MAX_CONTROL_FRAME, true).await {
            Ok(Some(c)) => dec.extend(&c.bytes),
            Ok(None) | Err(_) => return,
        }
        if conn.remote_address() != remote {
            remote = conn.remote_address();
            driver.input(|core| core.handle_remote(id, remote));
        }
        loop {
            match dec.next_message::<ClientMessage>() {
                Ok(None) => break,
                Ok(Some(msg)) => {
                    let unix = duet_proto::clock::unix_now();
                    driver.input(|core| core.handle_control(id, msg, Instant::now(), unix));
                }
                Err(e) => {
                    tracing::debug!(conn = id.0, error = %e, "bad control frame");
                    driver.input(|core| core.handle_bad_frame(id, e.as_str()));
                    return;
                }
            }
        }
    }
}

/// The only writer of a connection's control stream.
async fn writer(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<Outgoing>,
    conn: quinn::Connection,
) {
    while let Some(out) = rx.recv().await {
        match out {
            Outgoing::Frame(frame) => {
                if send.write_all(&frame).await.is_err() {
                    return;
                }
            }
            Outgoing::Close(why) => {
                let _ = send.finish();
                // Wait (briefly) until the peer has the last messages before closing.
                let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
                let (code, text) = why.code();
                conn.close(VarInt::from_u32(code.to_u32()), text.as_bytes());
                return;
            }
        }
    }
    let _ = send.finish();
}
