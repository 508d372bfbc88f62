//! Scale benchmark of the policy store (issue 13): a tenant of SCALE_USERS users (default
//! 1,000,000, each with their own switch and 3 of SCALE_GROUPS = 10,000 groups) on the
//! embedded SQLite store, and the old file store at FILE_USERS (default 100,000) in the
//! same run. Prints one line per figure. Bounded: fixed operation counts, no loops on
//! time alone. Run with `benches/policy-scale.sh` (or `cargo bench -p duet-policy --bench
//! scale --features postgres,admin-api`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duet_policy::model::GroupGrant;
use duet_policy::store::secret_sha256;
use duet_policy::{
    Actor, CallingE2ee, Change, Credential, GroupName, Issuer, NodeSet, PolicyName, PolicyState,
    PolicyStore, Role, SqliteStore, Store, UserRecord,
};
use duet_proto::{DeviceId, SessionId, SigningKey, UserId};
use hdrhistogram::Histogram;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn uid(i: usize) -> UserId {
    UserId::new(format!("user{i:07}")).expect("user id")
}
fn gname(i: usize) -> GroupName {
    GroupName::new(format!("group{i:05}")).expect("group")
}
fn pname(s: &str) -> PolicyName {
    PolicyName::new(s).expect("policy")
}

fn record(rng: &mut Rng, groups: usize) -> UserRecord {
    let mut gs = BTreeSet::new();
    while gs.len() < 3 {
        gs.insert(gname(rng.below(groups)));
    }
    UserRecord {
        policy: None,
        e2ee: rng.below(2) == 0,
        compliance_recording: false,
        groups: gs,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(name: &str, h: &Histogram<u64>) {
    println!(
        "{name}: n={} p50={:.1}us p99={:.1}us p99.9={:.1}us max={:.1}us",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

fn setup_policies(s: &dyn Store, groups: usize) -> Res<()> {
    let a = Actor::new("bench", "bench");
    s.apply(
        &a,
        &Change::SetPolicy {
            name: PolicyName::global(),
            calling_e2ee: CallingE2ee::DisabledUserOverride,
        },
    )?;
    for (p, c) in [
        ("Pilot", CallingE2ee::DisabledUserOverride),
        ("Closed", CallingE2ee::Disabled),
        ("Secure", CallingE2ee::Required),
    ] {
        s.apply(
            &a,
            &Change::SetPolicy {
                name: pname(p),
                calling_e2ee: c,
            },
        )?;
    }
    // One group in ten has a grant: 1,000 ranked grants at 10,000 groups.
    let grants: Vec<Change> = (0..groups)
        .step_by(10)
        .enumerate()
        .map(|(rank, g)| Change::GrantGroup {
            group: gname(g),
            policy: Some(pname(if rank % 2 == 0 { "Pilot" } else { "Closed" })),
            rank: Some(rank as u32 + 1),
        })
        .collect();
    s.apply_all(&a, &grants)?;
    Ok(())
}

fn mint_latency(store: &dyn Store, users: usize, n: usize) -> Res<Histogram<u64>> {
    let key = SigningKey::ed25519_from_seed("bench", &[1u8; 32])?;
    let nodes = NodeSet::from_static((0..16).map(|i| format!("relay-{i}")))?;
    let issuer = Issuer::new(store, &key, &nodes);
    let mut h = Histogram::<u64>::new(3)?;
    let mut rng = Rng(7);
    for i in 0..n {
        let u = uid(rng.below(users));
        let t = Instant::now();
        let m = issuer.mint(
            SessionId::new(format!("s{i}"))?,
            u,
            DeviceId::new("phone")?,
            Duration::from_secs(600),
        )?;
        h.record(t.elapsed().as_nanos() as u64)?;
        std::hint::black_box(m);
    }
    Ok(h)
}

fn switch_rate(store: Arc<dyn Store>, users: usize, threads: usize, per: usize) -> Res<f64> {
    let t = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|th| {
            let store = store.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let mut rng = Rng(99 + th as u64);
                let a = Actor::new(format!("bench-{th}"), "bench");
                for i in 0..per {
                    let c = Change::SetUserE2ee {
                        user: uid(rng.below(users)),
                        on: i % 2 == 0,
                    };
                    store.apply(&a, &c).map_err(|e| e.to_string())?;
                }
                Ok(())
            })
        })
        .collect();
    for h in hs {
        h.join().map_err(|_| "thread panicked")??;
    }
    Ok((threads * per) as f64 / t.elapsed().as_secs_f64())
}

/// One keep-alive HTTP/1.1 connection; answers the status and body.
struct Http {
    r: BufReader<TcpStream>,
    w: TcpStream,
}
impl Http {
    fn connect(addr: std::net::SocketAddr) -> Res<Self> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(Self {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }
    fn post(&mut self, path: &str, secret: &str, body: &str) -> Res<(u16, String)> {
        write!(
            self.w,
            "POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {secret}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let status: u16 = line.split(' ').nth(1).ok_or("status")?.parse()?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.r.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse()?;
            }
        }
        let mut buf = vec![0u8; len];
        self.r.read_exact(&mut buf)?;
        Ok((status, String::from_utf8(buf)?))
    }
}

fn http_mint_latency(store: Arc<dyn Store>, users: usize, n: usize) -> Res<Histogram<u64>> {
    let secret = "bench-issuer-secret-0123456789";
    store.put_credential(
        &Actor::new("bench", "bench"),
        &Credential {
            name: "backend".into(),
            role: Role::Issuer,
            created_ms: 0,
        },
        &secret_sha256(secret),
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let app = duet_policy::admin_api::router_with(duet_policy::ApiConfig {
        store,
        admin_token: None,
        signing_key: Some(Arc::new(SigningKey::ed25519_from_seed(
            "bench", &[1u8; 32],
        )?)),
        nodes: Arc::new(NodeSet::from_static((0..16).map(|i| format!("relay-{i}")))?),
        max_ttl: Duration::from_secs(3600),
    });
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let mut c = Http::connect(addr)?;
    let mut h = Histogram::<u64>::new(3)?;
    let mut rng = Rng(11);
    for i in 0..n {
        let body = format!(
            r#"{{"user":"user{:07}","device":"phone","session":"s{i}","peer":"user{:07}"}}"#,
            rng.below(users),
            rng.below(users)
        );
        let t = Instant::now();
        let (st, b) = c.post("/v1/tokens", secret, &body)?;
        h.record(t.elapsed().as_nanos() as u64)?;
        if st != 200 {
            return Err(format!("token endpoint answered {st}: {b}").into());
        }
    }
    drop(rt);
    Ok(h)
}

fn main() -> Res<()> {
    // `cargo bench` passes --bench; nothing else is taken from the command line.
    let users = env("SCALE_USERS", 1_000_000);
    let groups = env("SCALE_GROUPS", 10_000);
    let file_users = env("FILE_USERS", 100_000);
    let batch = env("SCALE_BATCH", 100_000).min(users);
    let mints = env("SCALE_MINTS", 20_000);
    let switches = env("SCALE_SWITCHES", 5_000);
    let dir = tempfile::tempdir()?;
    println!("== policy scale: {users} users, {groups} groups (SQLite, WAL, synchronous=FULL); file store at {file_users}");

    // ---- SQLite at scale ----
    let path = dir.path().join("policy.db");
    let sqlite = Arc::new(SqliteStore::open(&path)?);
    setup_policies(&*sqlite, groups)?;
    let t = Instant::now();
    let mut rng = Rng(42);
    const CHUNK: usize = 50_000;
    let mut i = 0;
    while i < users {
        let end = (i + CHUNK).min(users);
        let recs: Vec<(UserId, UserRecord)> = (i..end)
            .map(|j| (uid(j), record(&mut rng, groups)))
            .collect();
        sqlite.seed_users(&recs, CHUNK)?;
        i = end;
    }
    println!(
        "populate: {users} users x 3 groups in {:.1} s (batched transactions of {CHUNK}); db {} MB",
        t.elapsed().as_secs_f64(),
        std::fs::metadata(&path)?.len() / 1_000_000
    );

    let h = mint_latency(&*sqlite, users, mints)?;
    report("sqlite mint in-process (1 thread)", &h);

    let store: Arc<dyn Store> = sqlite.clone();
    let h = http_mint_latency(store.clone(), users, mints / 4)?;
    report("sqlite mint via POST /v1/tokens (keep-alive, 1 client)", &h);

    for threads in [1, 4] {
        let rate = switch_rate(store.clone(), users, threads, switches / threads)?;
        println!("sqlite user-switch changes: {threads} writer threads, {switches} changes: {rate:.0} changes/s (each its own fsynced transaction + audit record)");
    }

    let a = Actor::new("bench", "bench");
    let list: Vec<UserId> = (0..batch)
        .map(|i| uid(i * (users / batch).max(1)))
        .collect();
    let t = Instant::now();
    let r = sqlite.apply(
        &a,
        &Change::GrantUsers {
            users: list.clone(),
            policy: Some(pname("Secure")),
        },
    )?;
    println!(
        "sqlite batch assignment: {} users to a policy in {:.0} ms (one transaction, changed {})",
        batch,
        ms(t.elapsed()),
        r.after["changed"]
    );

    let members: Vec<UserId> = (0..batch).map(|i| uid((i * 7 + 3) % users)).collect();
    let t = Instant::now();
    sqlite.apply(
        &a,
        &Change::SetGroupMembers {
            group: gname(0),
            users: members.clone(),
        },
    )?;
    println!(
        "sqlite group sync: {}-member group from empty-ish in {:.0} ms",
        batch,
        ms(t.elapsed())
    );
    // A second sync with 10% turnover (what a nightly directory sync looks like).
    let mut next: Vec<UserId> = members[batch / 10..].to_vec();
    next.extend((0..batch / 10).map(|i| uid((i * 13 + 5) % users)));
    let t = Instant::now();
    let r = sqlite.apply(
        &a,
        &Change::SetGroupMembers {
            group: gname(0),
            users: next,
        },
    )?;
    println!(
        "sqlite group sync: {}-member group, 10% turnover in {:.0} ms (changed {})",
        batch,
        ms(t.elapsed()),
        r.after["changed"]
    );
    let h = mint_latency(&*sqlite, users, mints / 4)?;
    report("sqlite mint in-process after the batches", &h);
    drop(store);
    drop(sqlite);

    // ---- the old file store at a size it can handle ----
    let fdir = dir.path().join("file-store");
    let fstore = PolicyStore::open(&fdir)?;
    let mut rng = Rng(42);
    let mut policies = BTreeMap::new();
    policies.insert(PolicyName::global(), CallingE2ee::DisabledUserOverride);
    policies.insert(pname("Pilot"), CallingE2ee::DisabledUserOverride);
    policies.insert(pname("Closed"), CallingE2ee::Disabled);
    let mut grants = BTreeMap::new();
    for (rank, g) in (0..groups).step_by(10).enumerate() {
        grants.insert(
            gname(g),
            GroupGrant {
                policy: pname(if rank % 2 == 0 { "Pilot" } else { "Closed" }),
                rank: rank as u32 + 1,
            },
        );
    }
    let urecs: BTreeMap<UserId, UserRecord> = (0..file_users)
        .map(|i| (uid(i), record(&mut rng, groups)))
        .collect();
    fstore.save(&PolicyState::from_parts(0, policies, urecs, grants))?;
    println!(
        "file store: {file_users} users, policy.json {} MB",
        std::fs::metadata(fdir.join("policy.json"))?.len() / 1_000_000
    );
    let key = SigningKey::ed25519_from_seed("bench", &[1u8; 32])?;
    let mut h = Histogram::<u64>::new(3)?;
    let mut rng = Rng(7);
    for i in 0..env("FILE_MINTS", 50) {
        let t = Instant::now();
        let eff = fstore.load()?.effective(&uid(rng.below(file_users)));
        let (tok, _) = (
            duet_proto::JoinToken::mint(
                &key,
                &duet_proto::JoinClaims::builder(
                    SessionId::new(format!("s{i}"))?,
                    eff.user.clone(),
                    DeviceId::new("phone")?,
                )
                .ttl(Duration::from_secs(600))
                .e2ee(eff.claim)
                .build()?,
            ),
            (),
        );
        h.record(t.elapsed().as_nanos() as u64)?;
        std::hint::black_box(tok);
    }
    report("file store mint (load + evaluate + sign)", &h);
    let n = env("FILE_SWITCHES", 20);
    let t = Instant::now();
    for i in 0..n {
        fstore.apply(
            "bench",
            &Change::SetUserE2ee {
                user: uid(i),
                on: true,
            },
        )?;
    }
    println!(
        "file store user-switch changes: {n} changes: {:.1} changes/s",
        n as f64 / t.elapsed().as_secs_f64()
    );
    Ok(())
}
