//! Token format, keys and claims: round trips, tampering, rotation, legacy keys.
use super::*;
use crate::ids::{DeviceId, NodeId, SessionId, UserId};
use crate::refusal::E2eeClaim;
use proptest::prelude::*;
use std::time::Duration;

fn claims() -> JoinClaims {
    JoinClaims::builder(
        SessionId::new("s1").unwrap(),
        UserId::new("alice").unwrap(),
        DeviceId::new("phone").unwrap(),
    )
    .issued_at(1000)
    .ttl(Duration::from_secs(600))
    .e2ee(E2eeClaim::Allowed)
    .build()
    .unwrap()
}

fn opts(now: u64) -> VerifyOptions {
    VerifyOptions {
        now,
        skew_secs: 30,
        max_lifetime_secs: 3600,
    }
}

fn ring() -> (SigningKey, TokenKeyring) {
    let k = SigningKey::ed25519_from_seed("k1", &[7u8; 32]).unwrap();
    let ring = TokenKeyring::new(vec![k.verifying_key()]);
    (k, ring)
}

#[test]
fn mint_then_verify() {
    let (k, ring) = ring();
    let t = JoinToken::mint(&k, &claims());
    assert!(t.starts_with("duet2.k1."));
    assert_eq!(ring.verify(&t, &opts(1200)).unwrap(), claims());
    let peeked = JoinToken::peek(&t).unwrap();
    assert_eq!(peeked.claims, claims());
    assert_eq!(peeked.kid, "k1");
    assert_eq!(peeked.alg, TokenAlg::Ed25519);
}

#[test]
fn keys_roundtrip_through_their_hex_files() {
    let k = SigningKey::generate("k9").unwrap();
    let again = SigningKey::ed25519_from_hex("k9", &k.seed_hex().unwrap()).unwrap();
    let vk =
        VerifyingKey::ed25519_from_hex("k9", &k.verifying_key().public_hex().unwrap()).unwrap();
    let t = JoinToken::mint(&again, &claims());
    assert!(TokenKeyring::new(vec![vk]).verify(&t, &opts(1200)).is_ok());
    assert!(matches!(
        VerifyingKey::ed25519_from_hex("k", "zz"),
        Err(TokenError::BadKey(_))
    ));
    assert!(matches!(
        SigningKey::ed25519_from_seed("k", &[1; 31]),
        Err(TokenError::BadKey(_))
    ));
}

#[test]
fn each_failure_has_its_error() {
    let (k, ring) = ring();
    let t = JoinToken::mint(&k, &claims());
    assert_eq!(
        ring.verify(&t, &opts(1600)),
        Err(TokenError::Expired {
            exp: 1600,
            now: 1600
        })
    );
    assert_eq!(
        ring.verify(&t, &opts(900)),
        Err(TokenError::NotYetValid {
            iat: 1000,
            now: 900
        })
    );
    assert!(ring.verify(&t, &opts(980)).is_ok(), "within skew");
    let mut short = opts(1200);
    short.max_lifetime_secs = 300;
    assert_eq!(
        ring.verify(&t, &short),
        Err(TokenError::LifetimeTooLong {
            lifetime: 600,
            max: 300
        })
    );

    let other = SigningKey::ed25519_from_seed("k2", &[8u8; 32]).unwrap();
    let t2 = JoinToken::mint(&other, &claims());
    assert_eq!(
        ring.verify(&t2, &opts(1200)),
        Err(TokenError::UnknownKey("k2".into()))
    );

    // Same key id, different key: a forgery.
    let impostor = SigningKey::ed25519_from_seed("k1", &[9u8; 32]).unwrap();
    let t3 = JoinToken::mint(&impostor, &claims());
    assert_eq!(ring.verify(&t3, &opts(1200)), Err(TokenError::BadSignature));

    // Tampered claims.
    let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
    let mut c = claims();
    c.user = UserId::new("mallory").unwrap();
    parts[2] = B64.encode(serde_json::to_vec(&c).unwrap());
    assert_eq!(
        ring.verify(&parts.join("."), &opts(1200)),
        Err(TokenError::BadSignature)
    );

    for bad in ["garbage", "jwt.k1.e30.AAAA", &"a".repeat(5000)] {
        assert!(matches!(
            ring.verify(bad, &opts(1200)),
            Err(TokenError::Malformed(_))
        ));
    }
    assert_eq!(
        ring.verify(&t, &opts(1600)).unwrap_err().refusal(),
        RefusalReason::TokenExpired
    );
}

#[test]
fn no_algorithm_confusion() {
    // An HMAC token whose secret is the Ed25519 public key (public knowledge) must not
    // verify under the Ed25519 key of the same id, nor the other way round.
    let (k, ring) = ring();
    let public = k.verifying_key().public_key().copied().unwrap();
    let forger = SigningKey::legacy_hmac("k1", &public).unwrap();
    let forged = JoinToken::mint(&forger, &claims());
    assert!(forged.starts_with("duet1.k1."));
    assert_eq!(
        ring.verify(&forged, &opts(1200)),
        Err(TokenError::WrongKeyKind("k1".into()))
    );
    let legacy = SigningKey::legacy_hmac("old", &[3u8; 32]).unwrap();
    let ring = TokenKeyring::new(vec![legacy.verifying_key()]);
    let t = JoinToken::mint(&legacy, &claims());
    assert!(
        ring.verify(&t, &opts(1200)).is_ok(),
        "legacy keys still work"
    );
    // Rename the prefix of a legacy token: the Ed25519 path must refuse it.
    let renamed = t.replacen("duet1", "duet2", 1);
    assert_eq!(
        ring.verify(&renamed, &opts(1200)),
        Err(TokenError::WrongKeyKind("old".into()))
    );
}

#[test]
fn claims_fail_closed_and_are_checked() {
    let (k, ring) = ring();
    // A token minted without an e2ee claim allows nothing.
    let mut c = claims();
    c.e2ee = E2eeClaim::Unknown;
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["e2ee"], "unknown");
    let mut obj = json.as_object().unwrap().clone();
    obj.remove("e2ee");
    let signed = format!("duet2.k1.{}", B64.encode(serde_json::to_vec(&obj).unwrap()));
    let t = format!("{signed}.{}", B64.encode(k.sign(signed.as_bytes())));
    assert_eq!(
        ring.verify(&t, &opts(1200)).unwrap().e2ee,
        E2eeClaim::Unknown
    );

    let b = || {
        JoinClaims::builder(
            SessionId::new("s").unwrap(),
            UserId::new("u").unwrap(),
            DeviceId::new("d").unwrap(),
        )
        .issued_at(10)
    };
    assert!(matches!(
        b().ttl(Duration::ZERO).build(),
        Err(TokenError::BadClaims(_))
    ));
    assert!(matches!(
        b().issued_at(u64::MAX).build(),
        Err(TokenError::BadClaims(_))
    ));
    let n = |s: &str| NodeId::new(s).unwrap();
    assert!(matches!(
        b().nodes(vec![n("a"), n("a")]).build(),
        Err(TokenError::BadClaims(_))
    ));
    let c = b().nodes(vec![n("a"), n("b")]).build().unwrap();
    assert!(c.places_on(&n("b")) && !c.places_on(&n("c")));
    assert!(b().build().unwrap().places_on(&n("anything")));
    let c = b().identity_key(Some([5; 32])).build().unwrap();
    let back: JoinClaims = serde_json::from_slice(&serde_json::to_vec(&c).unwrap()).unwrap();
    assert_eq!(back.identity_key, Some([5; 32]));
}

#[test]
fn signed_garbage_claims_are_bad_claims() {
    let (k, ring) = ring();
    let signed = format!("duet2.k1.{}", B64.encode(b"{\"session\":\"a b\"}"));
    let t = format!("{signed}.{}", B64.encode(k.sign(signed.as_bytes())));
    let e = ring.verify(&t, &opts(1200)).unwrap_err();
    assert!(matches!(e, TokenError::BadClaims(_)));
    assert_eq!(e.refusal(), RefusalReason::BadToken);
}

#[test]
fn keys_are_checked() {
    assert_eq!(
        SigningKey::legacy_hmac("k1", &[0; 16]).unwrap_err(),
        TokenError::KeyTooShort(16)
    );
    assert!(matches!(
        SigningKey::legacy_hmac("k.1", &[0; 32]),
        Err(TokenError::BadKeyId(_))
    ));
    assert!(matches!(
        SigningKey::generate("k 1"),
        Err(TokenError::BadKeyId(_))
    ));
}

proptest! {
    #[test]
    fn verify_and_peek_never_panic(s in ".{0,300}") {
        let (_, ring) = ring();
        let _ = ring.verify(&s, &opts(1200));
        let _ = JoinToken::peek(&s);
    }

    #[test]
    fn any_single_byte_flip_is_rejected(pos in 0usize..600, bit in 0u8..8) {
        let (k, ring) = ring();
        let t = JoinToken::mint(&k, &claims());
        let mut b = t.into_bytes();
        let i = pos % b.len();
        b[i] ^= 1 << bit;
        if let Ok(s) = String::from_utf8(b) {
            prop_assert!(ring.verify(&s, &opts(1200)).is_err());
        }
    }
}
