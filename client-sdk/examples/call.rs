//! Two endpoints call each other end to end encrypted through a local relay.
//!
//! ```text
//! terminal 1:  cargo run -p duet-relay -- serve
//! terminal 2:  cargo run -p duet-sdk --example call [-- some.wav]
//! ```
//!
//! Reads the relay's self-signed certificate and token key from `./duet-data` (override
//! with `DUET_DATA`; relay address `DUET_RELAY`, default 127.0.0.1:4433), mints a token for
//! alice and one for bob, and joins both. Both print the same security code. Alice streams
//! the WAV (by default `examples/media/hello.wav`, speech made with espeak-ng) as 20 ms audio
//! frames plus synthetic video and screen frames; bob writes the audio back out as a WAV.
//! The SHA-256 of the audio sent and received must match.

use std::path::{Path, PathBuf};

/// Spoken audio made with `espeak-ng -s 150 -w hello.wav "Hello from Duet. ..."`
/// (22.05 kHz mono 16-bit PCM); speech synthesizer output, free to ship.
const HELLO_WAV: &[u8] = include_bytes!("media/hello.wav");
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use aws_lc_rs::digest::{digest, SHA256};
use duet_proto::{
    DeviceId, E2eeClaim, JoinClaims, JoinToken, MediaKind, SessionId, SigningKey, TokenKeyring,
    UserId,
};
use duet_sdk::{Call, Client, ConnectOptions, E2eeConfig, IdentityKey};

/// The audio format of a WAV: (channels, sample rate, bits per sample).
type Format = (u16, u32, u16);

#[tokio::main]
async fn main() -> Result<()> {
    let data = PathBuf::from(std::env::var("DUET_DATA").unwrap_or_else(|_| "./duet-data".into()));
    let relay = std::env::var("DUET_RELAY")
        .unwrap_or_else(|_| "127.0.0.1:4433".into())
        .parse()?;
    let cert = std::fs::read(data.join("cert.pem")).with_context(|| {
        format!(
            "no {}/cert.pem: start the relay first (cargo run -p duet-relay -- serve)",
            data.display()
        )
    })?;
    // The relay generated this key pair and trusts its public half; an app backend keeps
    // its own signing key (see the duet-policy issuer).
    let hex = std::fs::read_to_string(data.join("token-signing-key"))
        .context("reading the token signing key")?;
    let key = SigningKey::ed25519_from_hex("default", &hex)?;

    let wav = match std::env::args().nth(1) {
        Some(p) => std::fs::read(&p).with_context(|| format!("reading {p}"))?,
        None => {
            println!("no WAV given: streaming examples/media/hello.wav (espeak-ng speech)");
            HELLO_WAV.to_vec()
        }
    };
    let (format, pcm) = parse_wav(&wav)?;
    let now = duet_proto::clock::unix_now();
    let session = SessionId::new(format!("example-{now}")).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mint = |user: &str| -> Result<String> {
        let claims = JoinClaims::builder(
            session.clone(),
            UserId::new(user)?,
            DeviceId::new(format!("{user}-laptop"))?,
        )
        .e2ee(E2eeClaim::Allowed) // what the app backend's policy says
        .build()?;
        Ok(JoinToken::mint(&key, &claims))
    };
    let join = |user: &'static str| {
        let (token, cert, session) = (mint(user), cert.clone(), session.clone());
        let issuer_keys = TokenKeyring::new(vec![key.verifying_key()]);
        async move {
            let token = token?;
            let identity =
                Arc::new(IdentityKey::generate().map_err(|_| anyhow::anyhow!("keygen"))?);
            let client = Client::connect(relay, token, ConnectOptions::trusting(cert)).await?;
            // The peer's signed token is checked with the issuer's public key; the code
            // is shown next to the peer's authenticated user id.
            let call = client
                .join_e2ee(session, E2eeConfig::new(identity, issuer_keys))
                .await?;
            println!(
                "{user:>5}: security code {} with {}",
                call.security_code().context("an E2EE call")?,
                call.peer_user().context("an authenticated peer")?
            );
            anyhow::Ok(call)
        }
    };
    let (alice, bob) = tokio::try_join!(join("alice"), join("bob"))?;
    ensure!(
        alice.security_code() == bob.security_code(),
        "security codes differ"
    );

    let frame_bytes = (format.1 as usize * format.0 as usize * format.2 as usize / 8) / 50;
    let out = std::env::temp_dir().join("duet-example-received.wav");
    let (sent, received) = tokio::try_join!(
        stream(&alice, &pcm, frame_bytes),
        receive(&bob, format, &out)
    )?;
    let (h_sent, h_recv) = (sha256_hex(&sent), sha256_hex(&received));
    println!("sent     audio: {} bytes, sha256 {h_sent}", sent.len());
    println!(
        "received audio: {} bytes, sha256 {h_recv} -> {}",
        received.len(),
        out.display()
    );
    let s = bob.e2ee_stats().unwrap();
    println!(
        "bob: {} frames opened, {} rejected",
        s.frames_opened,
        s.rejected()
    );
    ensure!(h_sent == h_recv, "the audio did not survive the call");
    println!("hashes match");
    alice.leave().await?;
    bob.leave().await?;
    Ok(())
}

/// Alice: 20 ms audio frames (a 4-byte sequence number, then PCM) in real time, video at
/// 25 fps and screen at 5 fps. Returns the PCM sent.
async fn stream(call: &Call, pcm: &[u8], frame_bytes: usize) -> Result<Vec<u8>> {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for (seq, chunk) in pcm.chunks(frame_bytes).enumerate() {
        tick.tick().await;
        let mut f = (seq as u32).to_be_bytes().to_vec();
        f.extend_from_slice(chunk);
        call.send_media(MediaKind::Audio, &f).await?;
        if seq % 2 == 0 {
            let size = if seq % 50 == 0 { 40_000 } else { 6_000 }; // keyframe each 2 s
            call.send_media(MediaKind::Video, &vec![(seq % 256) as u8; size])
                .await?;
        }
        if seq % 10 == 0 {
            call.send_media(MediaKind::Screen, &vec![0xAB; 20_000])
                .await?;
        }
    }
    Ok(pcm.to_vec())
}

/// Bob: collects frames until a second of silence, writes the audio out as a WAV.
async fn receive(call: &Call, format: Format, out: &Path) -> Result<Vec<u8>> {
    let (mut audio, mut video, mut screen) = (Vec::new(), 0, 0);
    while let Ok(frame) = tokio::time::timeout(Duration::from_secs(1), call.recv_media()).await {
        let frame = frame?;
        match frame.kind {
            MediaKind::Audio => {
                let (seq, pcm) = frame.data.split_at(4);
                audio.push((u32::from_be_bytes(seq.try_into()?), pcm.to_vec()));
            }
            MediaKind::Video => video += 1,
            _ => screen += 1,
        }
    }
    println!(
        "  bob: received {} audio, {video} video, {screen} screen frames",
        audio.len()
    );
    if audio.is_empty() {
        bail!("no audio arrived");
    }
    audio.sort_by_key(|(seq, _)| *seq);
    let pcm: Vec<u8> = audio.into_iter().flat_map(|(_, p)| p).collect();
    std::fs::write(out, wav_bytes(format, &pcm))?;
    Ok(pcm)
}

fn wav_bytes((channels, rate, bits): Format, pcm: &[u8]) -> Vec<u8> {
    let block = channels * bits / 8;
    let mut w = Vec::with_capacity(44 + pcm.len());
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + pcm.len() as u32).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes()); // PCM
    w.extend_from_slice(&channels.to_le_bytes());
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&(rate * block as u32).to_le_bytes());
    w.extend_from_slice(&block.to_le_bytes());
    w.extend_from_slice(&bits.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&(pcm.len() as u32).to_le_bytes());
    w.extend_from_slice(pcm);
    w
}

/// The format and the `data` chunk of a PCM WAV.
fn parse_wav(w: &[u8]) -> Result<(Format, Vec<u8>)> {
    ensure!(
        w.len() >= 12 && &w[..4] == b"RIFF" && &w[8..12] == b"WAVE",
        "not a WAV file"
    );
    let (mut at, mut format) = (12, None);
    while at + 8 <= w.len() {
        let id = &w[at..at + 4];
        let len = u32::from_le_bytes(w[at + 4..at + 8].try_into()?) as usize;
        let body = &w[at + 8..(at + 8 + len).min(w.len())];
        match id {
            b"fmt " if body.len() >= 16 => {
                let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
                let rate = u32::from_le_bytes(body[4..8].try_into()?);
                format = Some((u16_at(2), rate, u16_at(14)));
            }
            b"data" => return Ok((format.context("no fmt chunk before data")?, body.to_vec())),
            _ => {}
        }
        at += 8 + len + (len & 1);
    }
    bail!("no data chunk")
}

fn sha256_hex(b: &[u8]) -> String {
    digest(&SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}
