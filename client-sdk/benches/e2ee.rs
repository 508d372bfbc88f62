//! Criterion benches of the E2EE hot paths: SFrame seal and open of 160 B (audio) and
//! 1200 B (video) frames, against the raw aws-lc-rs AES-128-GCM seal+open of the same size
//! (the target: SFrame seal+open within 2x of it), and one full handshake (both sides,
//! X25519 + ML-KEM-768 + Ed25519, four messages).
//!
//! Run: `cargo bench -p duet-sdk --bench e2ee`.

use std::sync::Arc;
use std::time::Instant;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use duet_proto::E2eeClaim;
use duet_sdk::e2ee::{
    CallOptions, Established, Handshake, HandshakeConfig, IdentityKey, RekeyPolicy, Role, Start,
    Step,
};

const SIZES: [usize; 2] = [160, 1200];

fn config(role: Role, id: &Arc<IdentityKey>) -> HandshakeConfig {
    HandshakeConfig {
        options: CallOptions {
            // No scheduled rekey inside the measurement.
            rekey: RekeyPolicy {
                max_frames: 1 << 32,
                max_age: std::time::Duration::from_secs(86_400),
                ..RekeyPolicy::default()
            },
            ..CallOptions::default()
        },
        ..duet_sdk::e2ee::test_support::config(role, id, "bench-session", E2eeClaim::Allowed)
    }
}

fn proceed(cfg: HandshakeConfig) -> (Handshake, Option<Vec<u8>>) {
    match Handshake::start(cfg).expect("start") {
        Start::Proceed { handshake, send } => (*handshake, send),
        Start::Declined { .. } => panic!("declined"),
    }
}

fn step_send(s: Step) -> Vec<u8> {
    match s {
        Step::Send(m) => m,
        _ => panic!("expected send"),
    }
}

fn step_done(s: Step) -> (Option<Vec<u8>>, Established) {
    match s {
        Step::Established { send, established } => (send, *established),
        _ => panic!("expected established"),
    }
}

fn handshake(ia: &Arc<IdentityKey>, ib: &Arc<IdentityKey>) -> (Established, Established) {
    let (mut a, commit) = proceed(config(Role::Initiator, ia));
    let (mut b, _) = proceed(config(Role::Responder, ib));
    let hello = step_send(b.on_signal(&commit.expect("commit")).expect("hello"));
    let reveal = step_send(a.on_signal(&hello).expect("reveal"));
    let (fin, eb) = step_done(b.on_signal(&reveal).expect("finished"));
    let (_, ea) = step_done(a.on_signal(&fin.expect("fin")).expect("done"));
    (ea, eb)
}

fn bench(c: &mut Criterion) {
    let ia = Arc::new(IdentityKey::generate().expect("id"));
    let ib = Arc::new(IdentityKey::generate().expect("id"));
    let (mut a, mut b) = handshake(&ia, &ib);
    let now = Instant::now();

    let mut g = c.benchmark_group("sframe");
    for size in SIZES {
        let frame = vec![0xA5u8; size];
        g.throughput(Throughput::Bytes(size as u64));

        let mut out = Vec::with_capacity(size + 64);
        g.bench_with_input(BenchmarkId::new("seal", size), &frame, |bch, f| {
            bch.iter(|| {
                out.clear();
                a.sealer
                    .seal_into(now, black_box(f), &mut out)
                    .expect("seal");
            })
        });

        // Open needs fresh counters (replay window): seal a batch per iteration group.
        let mut pt = Vec::with_capacity(size + 64);
        g.bench_with_input(BenchmarkId::new("seal+open", size), &frame, |bch, f| {
            let mut ct = Vec::with_capacity(size + 64);
            bch.iter(|| {
                ct.clear();
                b.sealer
                    .seal_into(now, black_box(f), &mut ct)
                    .expect("seal");
                pt.clear();
                a.opener.open_into(now, &ct, &mut pt).expect("open");
            })
        });

        // Reference: the raw AEAD, same size, in place, fixed nonce (a bench only).
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7u8; 16]).expect("key"));
        let mut buf = frame.clone();
        g.bench_with_input(
            BenchmarkId::new("raw_aes128gcm_seal+open", size),
            &size,
            |bch, _| {
                bch.iter(|| {
                    buf.truncate(size);
                    let tag = key
                        .seal_in_place_separate_tag(
                            Nonce::assume_unique_for_key([1; 12]),
                            Aad::from(&[0x10u8, 0x05][..]),
                            &mut buf,
                        )
                        .expect("seal");
                    buf.extend_from_slice(tag.as_ref());
                    let n = key
                        .open_in_place(
                            Nonce::assume_unique_for_key([1; 12]),
                            Aad::from(&[0x10u8, 0x05][..]),
                            &mut buf,
                        )
                        .expect("open")
                        .len();
                    black_box(n);
                })
            },
        );
    }
    g.finish();

    c.bench_function("handshake/full_both_sides", |bch| {
        bch.iter(|| black_box(handshake(&ia, &ib)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
