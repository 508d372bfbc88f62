//! [`NetnsLink`]: a network namespace joined to this one by a veth pair, so a relay process
//! can run on its own "host" and every packet between it and the test's clients crosses a
//! real link whose MTU the test can lower. Built with `ip` (Debian's iproute2); removed when
//! dropped, so no namespace or link outlives its test. Loss, jitter, reordering,
//! duplication and outages are [`crate::impair`]'s (this kernel has no `tc netem`).
//!
//! Needs root (CAP_NET_ADMIN). [`NetnsLink::create`] says plainly when that is missing; tests
//! skip with a notice locally and fail under `CI=1`, where `.ci/run` runs as root.
//!
//! It does not start the relay ([`crate::process::RelayProcessBuilder::in_netns`] does).

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

/// Distinct links per process and per test process (names and subnets must not collide
/// when tests run in parallel).
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A namespace `duet<pid>n<k>` with the second address of a /30 inside and the first here.
pub struct NetnsLink {
    ns: String,
    outer_dev: String,
    inner_dev: String,
    outer_ip: Ipv4Addr,
    inner_ip: Ipv4Addr,
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (is iproute2 installed?)"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

impl NetnsLink {
    /// Creates the namespace and the link, both ends up.
    pub fn create() -> Result<NetnsLink> {
        // SAFETY: geteuid(2) reads a process attribute; it cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            bail!("network namespaces need root (CAP_NET_ADMIN)");
        }
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let ns = format!("duet{pid}n{k}");
        // Interface names are at most 15 bytes: the pid modulo 10^6 and k keep them short.
        let tag = format!("{}{k}", pid % 1_000_000);
        let (outer_dev, inner_dev) = (format!("dx{tag}"), format!("dy{tag}"));
        // A /30 per link in 198.18.0.0/15 (RFC 2544's range for benchmark networks, so
        // never a real one), from the pid and k.
        let n = (pid.wrapping_mul(64).wrapping_add(k * 4)) & 0x0001_fffc;
        let base = Ipv4Addr::from(0xc612_0000 | n);
        let outer_ip = Ipv4Addr::from(u32::from(base) + 1);
        let inner_ip = Ipv4Addr::from(u32::from(base) + 2);
        ip(&["netns", "add", &ns])?;
        let link = NetnsLink {
            ns,
            outer_dev,
            inner_dev,
            outer_ip,
            inner_ip,
        };
        link.setup().inspect_err(|_| drop_quietly(&link))?;
        Ok(link)
    }

    fn setup(&self) -> Result<()> {
        let (ns, o, i) = (&self.ns, &self.outer_dev, &self.inner_dev);
        ip(&["link", "add", o, "type", "veth", "peer", "name", i])?;
        ip(&["link", "set", i, "netns", ns])?;
        ip(&["addr", "add", &format!("{}/30", self.outer_ip), "dev", o])?;
        ip(&["link", "set", o, "up"])?;
        self.ip_in(&["addr", "add", &format!("{}/30", self.inner_ip), "dev", i])?;
        self.ip_in(&["link", "set", i, "up"])?;
        self.ip_in(&["link", "set", "lo", "up"])
    }

    fn ip_in(&self, args: &[&str]) -> Result<()> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.ns, "ip"])
            .args(args))
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.ns
    }

    /// The address inside the namespace (where a relay there listens).
    pub fn inner_ip(&self) -> IpAddr {
        IpAddr::V4(self.inner_ip)
    }

    /// The address on this side (where the clients' packets come from).
    pub fn outer_ip(&self) -> IpAddr {
        IpAddr::V4(self.outer_ip)
    }

    /// Sets the MTU of both ends of the link.
    pub fn set_mtu(&self, mtu: u32) -> Result<()> {
        let m = mtu.to_string();
        ip(&["link", "set", &self.outer_dev, "mtu", &m])?;
        self.ip_in(&["link", "set", &self.inner_dev, "mtu", &m])
    }
}

fn drop_quietly(link: &NetnsLink) {
    // Deleting the namespace deletes the veth end inside it, and with it the pair.
    let _ = ip(&["link", "del", &link.outer_dev]);
    let _ = ip(&["netns", "del", &link.ns]);
}

impl Drop for NetnsLink {
    fn drop(&mut self) {
        drop_quietly(self);
    }
}

/// [`NetnsLink::create`], or `None` with a notice when this machine cannot (not root, no
/// iproute2) and the run is not CI's; under `CI=1` that is a failure.
pub fn link_or_skip(test: &str) -> Option<NetnsLink> {
    match NetnsLink::create() {
        Ok(l) => Some(l),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED {test}: {e:#} (CI=1 makes this a failure)");
            None
        }
        Err(e) => panic!("{test}: cannot create a network namespace under CI: {e:#}"),
    }
}
