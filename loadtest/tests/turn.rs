//! The `turn` target against a real coturn `turnserver` on 127.0.0.1: TURN allocations,
//! permissions and channels set up by `turnctl`, then ChannelData both ways through the
//! server byte-exact, and `duet-loadtest udp --target turn` delivering everything with the
//! documented report. Skipped with a message when `turnserver` is not installed, and a
//! failure under CI (`.ci/run` installs coturn). Bounded in time, no timing asserts.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use duet_loadtest::cli::TurnUser;
use duet_loadtest::turnctl::{self, CHANNEL_HEADER_LEN};
use duet_loadtest::udpbench::UdpReport;
use duet_loadtest::udpgen;
use duet_loadtest::udpnet::{Addressing, Net};

const USER: &str = "bench";
const PASSWORD: &str = "bench-secret";

/// A `turnserver` process: loopback only, UDP only, one static user, no CLI, logs to a
/// file in its own directory. Killed on drop.
struct Coturn {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

fn turnserver_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("turnserver"))
        .find(|p| p.is_file())
}

/// A free UDP port on 127.0.0.1 (coturn takes no port 0; the port is released just before
/// coturn binds it).
fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// Whether a UDP socket is bound to 127.0.0.1:`port` (from /proc/net/udp).
fn udp_bound(port: u16) -> bool {
    let needle = format!("0100007F:{port:04X} ");
    std::fs::read_to_string("/proc/net/udp").is_ok_and(|t| t.contains(&needle))
}

impl Coturn {
    /// Starts coturn, or returns `None` (test skipped) when it is not installed; under CI a
    /// missing binary fails the test.
    fn start() -> Option<Coturn> {
        let Some(bin) = turnserver_binary() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "turnserver (Debian package coturn) is not installed; .ci/run installs it"
            );
            eprintln!("SKIP: turnserver not found in PATH (apt-get install -y coturn)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // Relay ports below the kernel's ephemeral range, a block per test process.
        let min = 20_000 + (std::process::id() % 90) as u16 * 100;
        let d = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
        let child = Command::new(bin)
            .args(["-n", "-L", "127.0.0.1", "-E", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args([
                "--no-tcp",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--no-rfc5780",
            ])
            .args(["--allow-loopback-peers", "-m", "1", "--fingerprint"])
            .args(["--min-port", &min.to_string(), "--max-port"])
            .arg((min + 99).to_string())
            .args(["--lt-cred-mech", "--realm", "duet-test", "--user"])
            .arg(format!("{USER}:{PASSWORD}"))
            .args([
                "--simple-log",
                "--no-stdout-log",
                "--log-file",
                &d("turn.log"),
            ])
            .args(["--pidfile", &d("turn.pid"), "--userdb", &d("turndb")])
            .args([
                "--no-auth-pings",
                "--no-dynamic-ip-list",
                "--no-dynamic-realms",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let c = Coturn {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        let until = Instant::now() + Duration::from_secs(20);
        while !udp_bound(port) {
            assert!(Instant::now() < until, "turnserver never bound {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(c)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("turn.log")).unwrap_or_default()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cred() -> TurnUser {
    format!("{USER}:{PASSWORD}").parse().unwrap()
}

/// A payload unique to (pair, direction, index), so any mix-up or corruption shows.
fn payload(pair: usize, dir: usize, i: usize, len: usize) -> Vec<u8> {
    let mut x =
        (pair as u64 * 31 + dir as u64 * 7 + i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Two pairs set up by `turnctl`, then bursts of distinct payloads both ways through the
/// server, each compared byte for byte, in the given endpoint layout.
fn channels_byte_exact(addressing: Addressing) {
    let Some(turn) = Coturn::start() else { return };
    const PAIRS: usize = 2;
    const LEN: usize = 300;
    const PACKETS: usize = 200;
    let net = Net::bind(2 * PAIRS, &udpgen::split(2 * PAIRS, 1), addressing).unwrap();
    let (setup, bound) = turnctl::setup_pairs(&net, turn.addr, &cred(), LEN);
    let bound: Vec<_> = bound
        .into_iter()
        .map(|b| b.unwrap_or_else(|e| panic!("{e}\n{}", turn.log())))
        .collect();
    for p in 0..PAIRS {
        let (a, b) = (&bound[2 * p], &bound[2 * p + 1]);
        assert_eq!((a.peer, b.peer), (b.relayed, a.relayed));
        assert_ne!(a.relayed, b.relayed);
    }
    let mut buf = [0u8; 2048];
    for p in 0..PAIRS {
        for dir in 0..2 {
            let (from, to) = (2 * p + dir, 2 * p + (1 - dir));
            // Bursts of 20 then read them, so no socket buffer on the way can overflow.
            for burst in (0..PACKETS).step_by(20) {
                for i in burst..burst + 20 {
                    let mut pkt = bound[from].header.to_vec();
                    pkt.extend(payload(p, dir, i, LEN));
                    net.send_to(from, &pkt, turn.addr).unwrap();
                }
                for i in burst..burst + 20 {
                    let until = Instant::now() + Duration::from_secs(10);
                    let r = loop {
                        if let Some(r) = net.recv_from(net.owner(to), &mut buf).unwrap() {
                            break r;
                        }
                        assert!(
                            Instant::now() < until,
                            "pair {p} dir {dir} packet {i} never came\n{}",
                            turn.log()
                        );
                        std::thread::sleep(Duration::from_millis(1));
                    };
                    assert_eq!((r.endpoint, r.from), (Some(to), turn.addr));
                    // The receiver's own channel for its peer, the same length, and the
                    // payload byte for byte (ChannelData over UDP needs no padding).
                    assert_eq!(&buf[..CHANNEL_HEADER_LEN], &bound[to].header[..]);
                    assert_eq!(r.len, CHANNEL_HEADER_LEN + LEN);
                    assert_eq!(
                        &buf[CHANNEL_HEADER_LEN..r.len],
                        &payload(p, dir, i, LEN)[..]
                    );
                }
            }
        }
    }
    setup.release(&net);
}

#[test]
fn channels_carry_packets_both_ways_byte_exact() {
    channels_byte_exact(Addressing::Ports);
}

#[test]
fn channels_carry_packets_both_ways_byte_exact_from_shared_sockets() {
    channels_byte_exact(Addressing::Ips);
}

#[test]
fn udp_turn_target_delivers_everything_and_reports() {
    let Some(turn) = Coturn::start() else { return };
    let pid = turn.child.id().to_string();
    let (_dir, path) = common::tmp("turn.json");
    let out = common::bin()
        .args(["udp", "--pairs", "20", "--pps", "2000", "--duration", "1s"])
        .args([
            "--size",
            "160",
            "--threads",
            "2",
            "--addressing",
            "ips",
            "--turn-user",
        ])
        .arg(format!("{USER}:{PASSWORD}"))
        .arg("--target")
        .arg(format!("turn={}", turn.addr))
        .args(["--relay-pid", &pid, "--report"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{stderr}\n{}",
        turn.log()
    );
    let r: UdpReport = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(r.target, "turn");
    assert_eq!(r.setup.channels_bound, Some(40), "{:?}", r.setup);
    assert_eq!(r.setup.pairs_ready, 20);
    assert_eq!(r.threads, 2);
    assert!(r.sent > 0);
    assert_eq!(r.received, r.sent, "{stdout}");
    assert_eq!(r.bad, 0);
    assert_eq!(r.received_bytes, 160 * r.received);
    assert!(r.generator_kept_up, "{stdout}");
    let relay = r.relay.as_ref().unwrap();
    assert!(relay.cpu_s.is_some_and(|c| c > 0.0), "{relay:?}");
    assert!(r.generator_window_cpu_s.is_some());
}

/// A wrong password never yields a channel: the server's 401 carries no integrity the
/// client can trust, so the client keeps its request open and set-up ends at its bound.
#[test]
fn wrong_credentials_fail_setup_with_a_reason() {
    use turnctl::TurnSetupError::{Allocate, Closed, Timeout};
    let Some(turn) = Coturn::start() else { return };
    let net = Net::bind(2, &udpgen::split(2, 1), Addressing::Ports).unwrap();
    let bad: TurnUser = format!("{USER}:not-{PASSWORD}").parse().unwrap();
    let (_, bound) = turnctl::setup_pairs(&net, turn.addr, &bad, 100);
    for b in bound {
        let e = b.unwrap_err();
        assert!(matches!(e, Allocate | Closed | Timeout), "{e:?}");
    }
}
