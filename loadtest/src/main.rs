//! `duet-loadtest`: the command line around the library. Runs a load (default) or merges
//! reports (`merge`), writes the report, prints the summary and maps the outcome to the exit
//! codes in [`duet_loadtest::exit`].

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use duet_loadtest::cli::{Cli, Cmd, MergeArgs, RunArgs, Transport, UdpArgs};
use duet_loadtest::report::{Report, StopReason};
use duet_loadtest::runner::{run, RunOptions, RunTarget};
use duet_loadtest::target::{self, EmbeddedRelay};
use duet_loadtest::udpbench::UdpReport;
use duet_loadtest::{exit, merge, resources, rng, summary, udpbench};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.cmd {
        Some(Cmd::Merge(m)) => merge_cmd(m),
        Some(Cmd::Udp(u)) => udp_cmd(u),
        None => run_cmd(cli.run),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}

fn usage_error(msg: impl std::fmt::Display) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, msg)
        .exit()
}

/// Writes via a temporary file and a rename, so a reader never sees half a report.
fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn default_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "{:08x}",
        rng::mix64(nanos ^ (u64::from(std::process::id()) << 32)) as u32
    )
}

fn run_cmd(a: RunArgs) -> anyhow::Result<u8> {
    let external = !a.relays.is_empty();
    if external && !a.access.complete() {
        usage_error("with --relay, --cert and --token-key-file are required (to trust the relays and mint their tokens)");
    }
    if !external && a.access.any() {
        usage_error("--cert and --token-key-file apply to --relay targets only; without --relay an embedded relay is used");
    }
    if let Some(id) = &a.run_id {
        if duet_proto::SessionId::new(format!("lt-{id}-0-a")).is_err() {
            usage_error(format!(
                "--run-id {id:?}: use letters, digits and . _ - only"
            ));
        }
    }
    // Without shared endpoints every client holds one UDP socket: warn before the run
    // instead of failing mid-ramp.
    if let Some(limit) = resources::raise_fd_limit() {
        let need = a.calls.saturating_mul(2).saturating_add(64);
        if a.endpoints == 0 && need > limit {
            eprintln!(
                "warning: {} calls need about {need} open files; the limit is {limit} \
                 (raise it with ulimit -n), so some joins will fail with `io`/`connect`",
                a.calls
            );
        }
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let client_threads = a.client_threads.unwrap_or(cpus).max(1);

    // The embedded relay gets its own runtime before the client runtime exists.
    let embedded = if external {
        None
    } else {
        let max_sessions = u32::try_from(a.calls + 16).unwrap_or(u32::MAX);
        Some(
            EmbeddedRelay::start(a.relay_threads.unwrap_or(cpus), max_sessions)
                .context("starting the embedded relay")?,
        )
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_threads)
        .thread_name(resources::CLIENT_THREAD_PREFIX)
        .enable_all()
        .build()
        .context("starting the client runtime")?;

    let ops_token = match &a.ops_token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("--ops-token-file {}", f.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let opts = RunOptions {
        calls: a.calls,
        profile: a.profile,
        duration: a.duration,
        ramp_per_s: a.ramp,
        seed: a.seed,
        run_id: a.run_id.clone().unwrap_or_else(default_run_id),
        e2ee: !a.no_e2ee,
        grace: a.grace,
        drain: a.drain,
        join_timeout: a.join_timeout,
        idle_timeout: a.idle_timeout,
        keep_alive: a.keep_alive,
        idle_interval: a.idle_interval,
        dead_silence: a.dead_silence,
        dead_probe_after: a.dead_probe_after,
        progress: a.progress,
        client_threads,
        endpoints: usize::from(a.endpoints),
        tls_resumption: a.tls_resumption,
        transport: match a.transport {
            Transport::QuicDatagram => "quic-datagram".into(),
            Transport::FastPath => "fast-path".into(),
        },
        relay_pids: a.relay_pids.clone(),
        relay_metrics: a.relay_metrics.clone(),
        chaos: a.chaos.clone(),
        ops_token,
    };
    let outcome = rt.block_on(async {
        let target = match &embedded {
            Some(e) => {
                let h = e.handle();
                RunTarget {
                    nodes: vec![e.node()],
                    cert_pem: h.cert_pem(),
                    key: e.signing_key()?,
                    server_name: "localhost".into(),
                    embedded: Some(h),
                }
            }
            None => {
                let access = target::RelayAccess::load(&a.access)?;
                RunTarget {
                    nodes: target::resolve(&a.relays).await?,
                    cert_pem: access.cert_pem,
                    key: access.key,
                    server_name: access.server_name,
                    embedded: None,
                }
            }
        };
        anyhow::Ok(run(opts, target).await?)
    });
    // Stop the clients first so the relay sees orderly closes, then the relay.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    if let Some(e) = embedded {
        e.shutdown();
    }
    let mut report: Report = outcome?;
    finish(&mut report, a.slo.as_ref(), a.report.as_deref(), true)
}

/// Checks the SLO, writes the report, prints the summary, and picks the exit code.
fn finish(
    report: &mut Report,
    slo: Option<&duet_loadtest::slo::SloSpec>,
    path: Option<&Path>,
    from_run: bool,
) -> anyhow::Result<u8> {
    report.slo = slo.map(|s| s.evaluate(report));
    let json = report.to_json()?;
    match path {
        Some(p) => write_atomic(p, &json)?,
        None if !from_run => print!("{json}"),
        None => {}
    }
    let text = summary::render(report);
    if from_run || path.is_some() {
        print!("{text}");
        if let Some(p) = path {
            println!("report: {}", p.display());
        }
    } else {
        eprint!("{text}");
    }
    let slo_missed = report.slo.as_ref().is_some_and(|s| !s.passed);
    Ok(match report.stop_reason {
        StopReason::Interrupted if from_run => exit::INTERRUPTED,
        _ if from_run && report.calls.established == 0 => {
            eprintln!("error: no call was established (see calls.failed_by_reason)");
            exit::ERROR
        }
        _ if slo_missed => exit::SLO_MISSED,
        StopReason::Deadline if from_run => exit::DEADLINE,
        _ => exit::OK,
    })
}

fn udp_cmd(a: UdpArgs) -> anyhow::Result<u8> {
    if let Err(msg) = udpbench::validate(&a) {
        usage_error(msg);
    }
    let report = udpbench::run(&a)?;
    if let Some(p) = &a.report {
        write_atomic(p, &serde_json::to_string_pretty(&report)?)?;
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!("{}", report.result_line());
    Ok(if report.stop_reason == "interrupted" {
        exit::INTERRUPTED
    } else if report.setup.pairs_ready == 0 {
        eprintln!("error: no pair was set up (see setup.failures in the report)");
        exit::ERROR
    } else {
        exit::OK
    })
}

fn merge_cmd(m: MergeArgs) -> anyhow::Result<u8> {
    let texts = m
        .inputs
        .iter()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let udp = texts
        .iter()
        .map(|t| {
            serde_json::from_str::<serde_json::Value>(t).is_ok_and(|v| merge::is_udp_report(&v))
        })
        .collect::<Vec<_>>();
    if udp.iter().any(|&u| u) {
        return merge_udp_cmd(&m, &texts, &udp);
    }
    let reports = texts
        .iter()
        .zip(&m.inputs)
        .map(|(text, p)| Report::from_json(text).with_context(|| format!("{}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut merged = merge::merge(&reports)?;
    finish(&mut merged, m.slo.as_ref(), m.output.as_deref(), false)
}

/// `merge` of udp reports (several `duet-loadtest udp` generators run at once).
fn merge_udp_cmd(m: &MergeArgs, texts: &[String], udp: &[bool]) -> anyhow::Result<u8> {
    if !udp.iter().all(|&u| u) {
        usage_error("merge: udp reports and call reports cannot be merged together");
    }
    if m.slo.is_some() {
        usage_error("merge: --slo applies to call reports, not udp reports");
    }
    let reports = texts
        .iter()
        .zip(&m.inputs)
        .map(|(t, p)| {
            serde_json::from_str::<UdpReport>(t).with_context(|| format!("{}", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let merged = merge::merge_udp(&reports)?;
    let json = serde_json::to_string_pretty(&merged)?;
    match &m.output {
        Some(p) => {
            write_atomic(p, &json)?;
            println!("{}", merged.result_line());
        }
        None => println!("{json}"),
    }
    Ok(exit::OK)
}
