//! Criterion benches of the E2EE hot paths: SFrame seal and open of 160 B (audio) and
//! 1200 B (video) frames, against the raw aws-lc-rs AES-128-GCM seal+open of the same size
//! (the target: SFrame seal+open within 2x of it), one full handshake (both sides,
//! X25519 + ML-KEM-768 + Ed25519, four messages, both signed join tokens verified), padding
//! (its byte cost over a synthetic call, printed; pad+seal time) and an on-demand rekey
//! (sender's new epoch plus the receiver following it).
//!
//! Run: `cargo bench -p duet-sdk --bench e2ee`.

use std::sync::Arc;
use std::time::Instant;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use duet_proto::E2eeClaim;
use duet_proto::MediaKind;
use duet_sdk::e2ee::{
    CallOptions, Established, Handshake, HandshakeConfig, IdentityKey, RekeyPolicy, Role, Start,
    Step,
};
use duet_sdk::engine::padding::{self, Padding};
use duet_sdk::Engine;

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

    // The handshake now carries and verifies both signed join tokens (Ed25519).
    c.bench_function("handshake/full_both_sides", |bch| {
        bch.iter(|| black_box(handshake(&ia, &ib)))
    });

    // Padding: the bytes it costs (printed once, deterministic) and the time to pad+seal.
    padding_overhead();
    let mut g = c.benchmark_group("padding");
    let audio = vec![0x5au8; 80];
    for (name, mode) in [
        ("off", Padding::Off),
        ("buckets", Padding::Buckets),
        ("constant_audio_160", Padding::ConstantAudio(160)),
    ] {
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        g.bench_function(BenchmarkId::new("pad+seal_audio_80B", name), |bch| {
            bch.iter(|| {
                plain.clear();
                padding::pad(mode, MediaKind::Audio, black_box(&audio), &mut plain);
                out.clear();
                a.sealer.seal_into(now, &plain, &mut out).expect("seal");
            })
        });
    }
    g.finish();

    // Rekey: the sender's new epoch plus the receiver following it (one ratchet step
    // each, on the first frame of the epoch), against the same seal+open without a rekey.
    let mut g = c.benchmark_group("rekey");
    let f = vec![0x11u8; 160];
    let (mut ct, mut pt) = (Vec::new(), Vec::new());
    g.bench_function("seal+open_160B_no_rekey", |bch| {
        bch.iter(|| {
            ct.clear();
            b.sealer.seal_into(now, &f, &mut ct).expect("seal");
            pt.clear();
            a.opener.open_into(now, &ct, &mut pt).expect("open");
        })
    });
    g.bench_function("rekey+seal+open_160B", |bch| {
        bch.iter(|| {
            b.sealer.rekey(now).expect("rekey");
            ct.clear();
            b.sealer.seal_into(now, &f, &mut ct).expect("seal");
            pt.clear();
            a.opener.open_into(now, &ct, &mut pt).expect("open");
        })
    });
    g.finish();

    // The in-call hybrid rekey (post-compromise): offer (X25519 + ML-KEM-768 key
    // generation), answer (encapsulation), finish (decapsulation), both derivations and
    // switches, sealed and opened as signals, plus one frame back that completes it.
    let (ea, eb) = handshake(&ia, &ib);
    let sid = duet_proto::SessionId::new("bench-session").expect("sid");
    let mut ga = Engine::new(sid.clone(), std::time::Duration::from_millis(500), true);
    let mut gb = Engine::new(sid, std::time::Duration::from_millis(500), true);
    ga.install(now, ea).expect("keys");
    gb.install(now, eb).expect("keys");
    let mut t = now;
    let hop = |from: &mut Engine, to: &mut Engine, t: Instant| {
        while let Some(m) = from.poll_transmit() {
            to.handle_signal(t, &m);
        }
    };
    c.bench_function("rekey/hybrid_exchange_both_sides", |bch| {
        bch.iter(|| {
            t += std::time::Duration::from_secs(3);
            ga.rekey_hybrid(t).expect("rekey");
            hop(&mut ga, &mut gb, t);
            hop(&mut gb, &mut ga, t);
            hop(&mut ga, &mut gb, t);
            for p in gb
                .seal_and_split(t, MediaKind::Audio, &[1u8; 80], 1200, None)
                .expect("seal")
            {
                ga.handle_datagram(t, p);
            }
            while ga.poll_frame().is_some() {}
            while ga.poll_event().is_some() {}
            while gb.poll_event().is_some() {}
        })
    });
}

/// Sealed-plaintext bytes per frame by padding mode over a synthetic call: 20 ms Opus-like
/// audio frames of 40..=160 bytes and video frames of 1,000..12,000 bytes (uniform, fixed
/// seed), against the unpadded frame.
fn padding_overhead() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = |lo: usize, hi: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        lo + (x as usize) % (hi - lo + 1)
    };
    let audio: Vec<usize> = (0..10_000).map(|_| next(40, 160)).collect();
    let video: Vec<usize> = (0..1_000).map(|_| next(1_000, 12_000)).collect();
    for (name, mode) in [
        ("off", Padding::Off),
        ("buckets", Padding::Buckets),
        ("constant_audio_162", Padding::ConstantAudio(162)),
    ] {
        let cost = |kind, sizes: &[usize]| {
            let raw: usize = sizes.iter().sum();
            let padded: usize = sizes
                .iter()
                .map(|&n| padding::padded_len(mode, kind, n))
                .sum();
            100.0 * (padded as f64 - raw as f64) / raw as f64
        };
        eprintln!(
            "padding overhead {name:>20}: audio +{:.1}%, video +{:.1}%",
            cost(MediaKind::Audio, &audio),
            cost(MediaKind::Video, &video)
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
