//! `duet-relay`: the relay node's command line.
//!
//! `serve` runs a node (SIGTERM / ctrl-c drains, then exits; SIGHUP reloads the TLS
//! certificate and the token keys; systemd `Type=notify` hears READY=1 and STOPPING=1),
//! `token mint` prints a join token signed with the configured (or embedded default) key,
//! `healthcheck` asks a
//! local relay's `/healthz`, `drain`/`undrain`/`status` (library `ops_cli`) and `probe`
//! (library `probe`) talk to a running relay. Everything else lives in the library.
//!
//! Exit status: 0 ok, 78 (`EX_CONFIG`) for a bad configuration or command line, so a
//! supervisor does not restart in a loop, 1 for any other failure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use duet_proto::{DeviceId, E2eeClaim, JoinClaims, JoinToken, NodeId, SessionId, UserId};
use duet_relay::config::parse_duration;
use duet_relay::{exit_status, notify};
use duet_relay::{Config, Relay};

#[derive(Parser)]
#[command(
    name = "duet-relay",
    version,
    about = "Duet relay: pairs two end-to-end encrypted endpoints per session and forwards their opaque frames"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a relay node (with no config: self-signed cert and token key in ./duet-data, loopback)
    Serve(Box<ServeArgs>),
    /// Join tokens
    #[command(subcommand)]
    Token(TokenCmd),
    /// Administrator E2EE policy: policies, grants, effective policy (store: ./duet-data/policy)
    Policy {
        #[command(subcommand)]
        cmd: duet_policy::cli::PolicyCommand,
    },
    /// Per-user E2EE settings: own switch, compliance recording, groups
    User {
        #[command(subcommand)]
        cmd: duet_policy::cli::UserCommand,
    },
    /// Exit 0 if a relay's /healthz answers 2xx in time, 1 otherwise (for a container HEALTHCHECK)
    Healthcheck(HealthcheckArgs),
    #[command(flatten)]
    Ops(duet_relay::ops_cli::OpsCommand),
    /// Synthetic check of a relay's data plane: two endpoints, media both ways over QUIC
    /// and the fast path; exit 0 with the round-trip times, 1 on failure (not a liveness probe)
    Probe(duet_relay::probe::ProbeArgs),
}

#[derive(Args)]
struct HealthcheckArgs {
    /// The relay's ops HTTP address (its `ops_listen`; use a loopback address for 0.0.0.0)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    ops: SocketAddr,
    /// Give up after this long in all, e.g. 2s, 500ms
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
#[allow(dead_code)] // declares the flags; `serve` reads them through `Config::load`
struct ServeArgs {
    /// TOML config file; flags given here override its values
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    cfg: Config,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Print a join token signed with the relay's first token key (created if missing)
    Mint(MintArgs),
}

#[derive(Args)]
struct MintArgs {
    #[arg(long)]
    session: SessionId,
    #[arg(long)]
    user: UserId,
    #[arg(long)]
    device: DeviceId,
    /// Lifetime, e.g. 30s, 10m, 2h
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    ttl: Duration,
    /// Place the session on this relay node; repeat for fallbacks, primary first
    #[arg(long = "node")]
    nodes: Vec<NodeId>,
    /// Write this E2EE claim as-is instead of evaluating the policy store (testing aid:
    /// allowed, required, policy_disabled, user_not_enabled, compliance_recording)
    #[arg(long)]
    e2ee: Option<E2eeClaim>,
    /// Signing key file (hex Ed25519 seed) [default: <data dir>/token-signing-key]
    #[arg(long, value_name = "FILE")]
    signing_key: Option<PathBuf>,
    /// Key id written into the token [default: default]
    #[arg(long, value_name = "ID")]
    key_id: Option<String>,
    /// Policy store to evaluate: a directory, a .db file or a postgres:// DSN
    /// (default: <data dir>/policy)
    #[arg(long, value_name = "LOCATOR")]
    store: Option<String>,
    /// Place the session by rendezvous hashing over this node set (static:<a,b,c>,
    /// dns-srv:<name>[@ip:port], dns-a:<name>[@ip:port], k8s:<namespace>/<service>[:<port>]
    /// with the `kubernetes` build feature) when no --node is given
    #[arg(long, value_name = "SOURCE")]
    nodes_from: Option<String>,
    /// TOML config file (for its data_dir and token_keys)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory holding the default token key (overrides the config file)
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not failures; a bad flag value is a bad configuration.
            return if e.exit_code() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(exit_status::CONFIG)
            };
        }
    };
    match run(&matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::from(exit_status::for_chain(e.chain()))
        }
    }
}

fn run(matches: &ArgMatches) -> anyhow::Result<()> {
    init_tracing();
    // `serve` applies only the flags actually given over the file (its flags have no clap
    // defaults), so its `Config` is built by `Config::load`, not by `from_arg_matches`.
    if let Some(sub) = matches.subcommand_matches("serve") {
        return serve(sub);
    }
    let cli = Cli::from_arg_matches(matches)?;
    match cli.cmd {
        Cmd::Serve(_) => unreachable!("handled above"),
        Cmd::Token(TokenCmd::Mint(args)) => mint(args),
        // The policy API server runs within the relay's HTTP bounds (connection cap,
        // header and request timeouts), like the relay's own listeners.
        Cmd::Policy {
            cmd: duet_policy::cli::PolicyCommand::Serve(a),
        } => Ok(duet_policy::cli::serve_with(
            a,
            &Config::default().data_dir,
            |listener, router| async move {
                let (_keep, stop) = tokio::sync::watch::channel(false);
                duet_relay::http::serve("policy", listener, router, Config::default().http, stop)
                    .await;
                Ok(())
            },
        )?),
        Cmd::Policy { cmd } => Ok(duet_policy::cli::run_policy(
            cmd,
            &Config::default().data_dir,
        )?),
        Cmd::User { cmd } => Ok(duet_policy::cli::run_user(
            cmd,
            &Config::default().data_dir,
        )?),
        Cmd::Healthcheck(a) => Ok(duet_relay::healthcheck::check(
            a.ops, "/healthz", a.timeout,
        )?),
        Cmd::Ops(cmd) => Ok(duet_relay::ops_cli::run(cmd)?),
        Cmd::Probe(args) => Ok(duet_relay::probe::run(args)?),
    }
}

fn serve(matches: &ArgMatches) -> anyhow::Result<()> {
    let file = matches.get_one::<PathBuf>("config");
    let cfg = Config::load(file.map(|p| p.as_path()), Some(matches))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.runtime_worker_count())
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        // Handlers go in before anything is printed: a supervisor (or a test) that sends
        // SIGTERM as soon as it sees the banner must get a drain, not the default kill.
        #[cfg(unix)]
        let (mut term, mut int, mut hup) = {
            use tokio::signal::unix::{signal, SignalKind};
            (
                signal(SignalKind::terminate()).context("SIGTERM handler")?,
                signal(SignalKind::interrupt()).context("SIGINT handler")?,
                signal(SignalKind::hangup()).context("SIGHUP handler")?,
            )
        };
        duet_relay::fd_limit::raise(&cfg);
        let relay = Relay::start(cfg).await?;
        let c = relay.config();
        print!("{}", relay.describe());
        notify::ready(&format!("serving on {}", relay.quic_addr()));

        #[cfg(unix)]
        {
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = hup.recv() => {
                        match relay.reload_tls() {
                            Ok(()) => {
                                tracing::info!("TLS certificate reloaded");
                                notify::status(&format!("serving on {}; certificate reloaded", relay.quic_addr()));
                            }
                            Err(e) => tracing::error!(error = %e, "TLS reload failed; keeping the old certificate"),
                        }
                        match relay.reload_token_keys_from(file.map(|p| p.as_path()), Some(matches)) {
                            Ok(n) => {
                                let ids: Vec<String> =
                                    relay.token_keys().iter().map(|k| k.id().to_owned()).collect();
                                tracing::info!(keys = n, ?ids, "token keys reloaded");
                            }
                            Err(e) => tracing::error!(error = %e, "token key reload failed; keeping the old keys"),
                        }
                    }
                }
            }
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c().await.context("ctrl-c handler")?;

        tracing::info!("draining");
        relay.drain();
        // After the drain took effect: a manager that hears STOPPING=1 sees readiness false.
        notify::stopping(&format!(
            "draining: new joins refused, {} sessions, deadline {} ms",
            relay.session_count(),
            c.drain_deadline_ms
        ));
        #[cfg(unix)]
        tokio::select! {
            _ = relay.drained() => {}
            _ = int.recv() => tracing::warn!("second interrupt: stopping now"),
            _ = term.recv() => tracing::warn!("second SIGTERM: stopping now"),
        }
        #[cfg(not(unix))]
        tokio::select! {
            _ = relay.drained() => {}
            _ = tokio::signal::ctrl_c() => tracing::warn!("second interrupt: stopping now"),
        }
        relay.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

fn mint(args: MintArgs) -> anyhow::Result<()> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(Some(p), None)?,
        None => Config::default(),
    };
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    cfg.validate()?;
    if args.ttl.is_zero() {
        bail!("--ttl must be greater than 0");
    }
    let key = cfg.load_signing_key(args.signing_key.as_deref(), args.key_id.as_deref())?;
    let Some(claim) = args.e2ee else {
        // The normal path: the claim is what the administrator's policy, the user's own
        // switch and compliance recording say right now.
        let store_loc = args.store.unwrap_or_else(|| {
            duet_policy::cli::default_store_path(&cfg.data_dir)
                .display()
                .to_string()
        });
        let store = duet_policy::store::open(&store_loc)?;
        let nodes = match (&args.nodes_from, args.nodes.is_empty()) {
            (Some(src), true) => duet_policy::cli::resolve_nodes(src, &args.session)?,
            _ => args.nodes,
        };
        let (token, eff) = duet_policy::issue::mint_token(
            &*store,
            &key,
            args.session,
            args.user,
            args.device,
            args.ttl,
            nodes,
        )?;
        eprintln!(
            "e2ee claim {}: policy {} ({})",
            eff.claim, eff.policy, eff.source
        );
        println!("{token}");
        return Ok(());
    };
    eprintln!("e2ee claim {claim} given with --e2ee: policy store not consulted");
    let claims = JoinClaims::builder(args.session, args.user, args.device)
        .ttl(args.ttl)
        .nodes(args.nodes)
        .e2ee(claim)
        .build()?;
    println!("{}", JoinToken::mint(&key, &claims));
    Ok(())
}
