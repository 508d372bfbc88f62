//! [`RelayProcess`]: the real `duet-relay` binary as a child process, for what only a
//! process shows (signals, exit status, the banner, systemd notifications, a crash and a
//! restart). It runs `serve` on loopback with OS-chosen ports and its own data directory,
//! waits for the banner, reads its addresses from it, and is killed when dropped, so no
//! relay outlives its test.
//!
//! Finding the binary: `CARGO_BIN_EXE_duet-relay` exists only in the relay package's own
//! tests, so [`relay_binary`] looks for `target/<profile>/duet-relay` next to the running test
//! executable (`std::env::current_exe()`, in `target/<profile>/deps/`). `cargo test
//! --workspace` builds it before any test runs. When it is missing (e.g. `cargo test -p
//! duet-testkit` on a clean target) it is built once with `$CARGO build -p duet-relay --bin
//! duet-relay` (cargo sets `CARGO` for tests). An existing binary is used as it is: after
//! changing the relay, run the workspace's tests (or `cargo build -p duet-relay`) so it is
//! not stale.
//!
//! The in-process relay is [`crate::relay`]'s.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use duet_proto::SigningKey;

use crate::relay::RelayUnderTest;

/// How long a debug binary may take to start (or exit) on a loaded 2-core box.
pub const PROCESS_WAIT: Duration = Duration::from_secs(60);

/// The `duet-relay` binary of this build, built first if it is missing (see the module doc).
/// Panics when it can be neither found nor built.
pub fn relay_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| find_or_build().unwrap_or_else(|e| panic!("the duet-relay binary: {e:#}")))
        .clone()
}

/// A command running [`relay_binary`], for tests of its CLI.
pub fn relay_command() -> Command {
    Command::new(relay_binary())
}

fn find_or_build() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("the test executable has no directory")?;
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir = dir.parent().context("no profile directory")?;
    }
    let bin = dir.join(format!("duet-relay{}", std::env::consts::EXE_SUFFIX));
    if bin.is_file() {
        return Ok(bin);
    }
    let cargo = std::env::var_os("CARGO").with_context(|| {
        format!(
            "{} is missing and CARGO is not set (not run by cargo): \
             build it with `cargo build -p duet-relay`",
            bin.display()
        )
    })?;
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let target_dir = dir.parent().context("no target directory")?;
    let status = Command::new(cargo)
        .args([
            "build",
            "-p",
            "duet-relay",
            "--bin",
            "duet-relay",
            "--profile",
        ])
        .arg(&profile)
        .arg("--target-dir")
        .arg(target_dir)
        .status()?;
    ensure!(status.success(), "cargo build -p duet-relay: {status}");
    ensure!(
        bin.is_file(),
        "{} still missing after the build",
        bin.display()
    );
    Ok(bin)
}

/// Where a running relay process listens, as its banner says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BannerAddrs {
    pub quic: SocketAddr,
    pub fast_path: Option<SocketAddr>,
    pub ops: SocketAddr,
}

/// How to start a [`RelayProcess`]: extra `serve` flags and environment.
#[derive(Debug, Default)]
pub struct RelayProcessBuilder {
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    data_dir: Option<PathBuf>,
    nofile: Option<(u64, u64)>,
    place: Place,
}

/// Where the child runs: which network namespace (none: this one) and which address it
/// listens on (default loopback).
#[derive(Debug, Clone)]
struct Place {
    netns: Option<String>,
    ip: IpAddr,
}

impl Default for Place {
    fn default() -> Self {
        Self {
            netns: None,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }
}

impl RelayProcessBuilder {
    /// One more `serve` flag or value. `--listen`, `--ops-listen`, `--fast-path-listen` and
    /// `--data-dir` are the kit's (see [`RelayProcessBuilder::data_dir`]).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable of the child (`RUST_LOG` is `warn` unless set here).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The data directory (default: a temporary one, removed with the process).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// The child's file-descriptor limit (`RLIMIT_NOFILE`, soft and hard), as a tight
    /// `LimitNOFILE=` would set it.
    pub fn nofile(mut self, limit: u64) -> Self {
        self.nofile = Some((limit, limit));
        self
    }

    /// The child's file-descriptor limit with a soft limit below the hard one, as a shell's
    /// `ulimit -n` leaves it (the relay raises the soft one to the hard one at start).
    pub fn nofile_soft_hard(mut self, soft: u64, hard: u64) -> Self {
        self.nofile = Some((soft, hard));
        self
    }

    /// Runs the relay inside network namespace `name` (`ip netns exec`), listening on `ip`
    /// (an address of that namespace, e.g. [`crate::netns::NetnsLink::inner_ip`]).
    pub fn in_netns(mut self, name: &str, ip: IpAddr) -> Self {
        self.place = Place {
            netns: Some(name.to_owned()),
            ip,
        };
        self
    }

    /// Starts `duet-relay serve` and waits for its banner.
    pub fn start(self) -> Result<RelayProcess> {
        let (temp, data_dir) = match self.data_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir()?;
                let d = t.path().to_owned();
                (Some(t), d)
            }
        };
        let mut p = RelayProcess {
            child: None,
            _temp: temp,
            data_dir,
            args: self.args,
            envs: self.envs,
            nofile: self.nofile,
            place: self.place,
            listen: None,
            banner: String::new(),
            stdout: Arc::default(),
            stderr: Arc::default(),
        };
        p.spawn()?;
        Ok(p)
    }
}

/// A running `duet-relay serve` child process; killed (SIGKILL) when dropped.
pub struct RelayProcess {
    child: Option<Child>,
    _temp: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    nofile: Option<(u64, u64)>,
    place: Place,
    /// Set once started: restarts listen here again.
    listen: Option<BannerAddrs>,
    banner: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl RelayProcess {
    /// `duet-relay serve` on loopback, OS-chosen ports, a temporary data directory.
    pub fn start() -> Result<RelayProcess> {
        Self::builder().start()
    }

    pub fn builder() -> RelayProcessBuilder {
        RelayProcessBuilder::default()
    }

    fn spawn(&mut self) -> Result<()> {
        let any = SocketAddr::new(self.place.ip, 0);
        let (quic, ops, fast_path) = match self.listen {
            Some(a) => (a.quic, a.ops, a.fast_path),
            None => (any, any, None),
        };
        let mut cmd = match &self.place.netns {
            // `ip netns exec` execs the relay, so the child's pid is the relay's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(relay_binary());
                c
            }
            None => relay_command(),
        };
        cmd.arg("serve")
            .arg("--listen")
            .arg(quic.to_string())
            .arg("--ops-listen")
            .arg(ops.to_string());
        if let Some(fp) = fast_path {
            cmd.arg("--fast-path-listen").arg(fp.to_string());
        }
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((soft, hard)) = self.nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd.spawn().context("spawning duet-relay serve")?;
        let (lines_tx, lines) = mpsc::channel();
        let out = child.stdout.take().context("no stdout pipe")?;
        let stdout = self.stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                push_line(&stdout, &line);
                let _ = lines_tx.send(line);
            }
        });
        let mut err = child.stderr.take().context("no stderr pipe")?;
        let stderr = self.stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                if let Ok(mut s) = stderr.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        self.child = Some(child);
        let (banner, addrs) = self.read_banner(&lines)?;
        self.banner = banner;
        self.listen = Some(addrs);
        Ok(())
    }

    /// Reads stdout up to the banner's `ops http` line.
    fn read_banner(&self, lines: &mpsc::Receiver<String>) -> Result<(String, BannerAddrs)> {
        let deadline = Instant::now() + PROCESS_WAIT;
        let mut banner = String::new();
        let (mut quic, mut fast_path) = (None, None);
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(wait) {
                Ok(l) => l,
                Err(e) => bail!(
                    "no banner from duet-relay serve ({e}); stdout:\n{banner}\nstderr:\n{}",
                    self.stderr()
                ),
            };
            banner.push_str(&line);
            banner.push('\n');
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["quic", addr, ..] => quic = Some(addr.parse()?),
                ["fast", "path", addr, ..] => fast_path = addr.parse().ok(),
                ["ops", "http", url, ..] => {
                    let ops = url
                        .trim_start_matches("http://")
                        .trim_end_matches("/metrics")
                        .parse()?;
                    let quic = quic.context("the banner named no QUIC address")?;
                    return Ok((
                        banner,
                        BannerAddrs {
                            quic,
                            fast_path,
                            ops,
                        },
                    ));
                }
                _ => {}
            }
        }
    }

    /// The addresses the banner printed.
    pub fn addrs(&self) -> BannerAddrs {
        self.listen
            .unwrap_or_else(|| unreachable!("a RelayProcess exists only once started"))
    }

    pub fn fast_path_addr(&self) -> Option<SocketAddr> {
        self.addrs().fast_path
    }

    /// The banner's text, up to and including its `ops http` line.
    pub fn banner(&self) -> &str {
        &self.banner
    }

    /// Everything the process wrote to stdout so far (this run and earlier ones).
    pub fn stdout(&self) -> String {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Everything the process wrote to stderr so far (this run and earlier ones).
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn signal(&self, sig: libc::c_int) -> Result<()> {
        let pid = libc::pid_t::try_from(self.pid())?;
        ensure!(pid > 0, "no child process");
        // SAFETY: kill(2) on our own child's pid; no memory is shared.
        let rc = unsafe { libc::kill(pid, sig) };
        ensure!(rc == 0, "kill: {}", std::io::Error::last_os_error());
        Ok(())
    }

    /// Sends SIGTERM (the relay drains, then exits); does not wait.
    pub fn sigterm(&self) -> Result<()> {
        self.signal(libc::SIGTERM)
    }

    /// Sends SIGHUP (the relay reloads its TLS certificate); does not wait.
    pub fn sighup(&self) -> Result<()> {
        self.signal(libc::SIGHUP)
    }

    /// SIGKILL (a crash) and reaps the child; its ports are free when this returns.
    pub fn sigkill(&mut self) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("no child process")?;
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        child.kill()?;
        Ok(child.wait()?)
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let child = self.child.as_mut().context("no child process")?;
        Ok(child.try_wait()?)
    }

    /// Waits up to `within` for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            ensure!(t0.elapsed() < within, "did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the relay again (killing it first if it still runs) on the same QUIC, ops and
    /// fast-path ports, data directory, flags and environment; waits for the new banner.
    pub fn restart(&mut self) -> Result<()> {
        self.sigkill()?;
        self.spawn()
    }
}

fn push_line(buf: &Mutex<String>, line: &str) {
    if let Ok(mut s) = buf.lock() {
        s.push_str(line);
        s.push('\n');
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl RelayUnderTest for RelayProcess {
    fn quic_addr(&self) -> SocketAddr {
        self.addrs().quic
    }
    fn ops_addr(&self) -> SocketAddr {
        self.addrs().ops
    }
    /// The self-signed certificate `serve` generated in its data directory.
    fn cert_pem(&self) -> Vec<u8> {
        std::fs::read(self.data_dir.join("cert.pem")).expect("cert.pem in the data directory")
    }
    /// The default token key `serve` generated in its data directory (id `default`).
    fn signer(&self) -> SigningKey {
        let seed = std::fs::read_to_string(self.data_dir.join("token-signing-key"))
            .expect("token-signing-key in the data directory");
        SigningKey::ed25519_from_hex("default", seed.trim()).expect("a hex Ed25519 seed")
    }
}
