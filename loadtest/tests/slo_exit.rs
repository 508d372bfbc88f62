//! SLO syntax errors are usage errors (exit 2); a real tiny run exits 0 when its SLO is met
//! and 3 when it is missed, listing the missed clauses.

mod common;

use duet_loadtest::report::Report;
use duet_loadtest::slo::SloSpec;

#[test]
fn slo_verdicts_against_a_report() {
    let r = common::report_with(
        &common::samples(3, 1000, 10_000),
        &[2000, 40_000],
        1000,
        "s",
    );
    let ok: SloSpec = "loss<0.5%,p99<20ms,join_p99<=50ms,established>=9,mem_per_session<2MiB"
        .parse()
        .unwrap();
    let v = ok.evaluate(&r);
    assert!(v.passed, "{v:?}");
    let bad: SloSpec = "p99<1ms, join_max<10ms, fail_rate<1%, video.p99<20ms"
        .parse()
        .unwrap();
    let v = bad.evaluate(&r);
    assert!(!v.passed);
    let clauses: Vec<_> = v.violations.iter().map(|x| x.clause.as_str()).collect();
    assert_eq!(
        clauses,
        ["p99<1ms", "join_max<10ms", "fail_rate<1%", "video.p99<20ms"]
    );
    // No video was sent: the clause fails for lack of evidence, with a clear message.
    assert_eq!(v.violations[3].actual, None);
    assert!(v.violations[3].message.contains("no data"));
    assert!(
        v.violations[0].message.contains("wanted < 1.000ms"),
        "{}",
        v.violations[0].message
    );
}

#[test]
fn bad_slo_syntax_is_a_usage_error() {
    for bad in [
        "p99=20ms",
        "p99<20",
        "loss<0.5",
        "latency<20ms",
        "voice.p99<1ms",
        "",
    ] {
        let out = common::bin()
            .args(["--slo", bad, "--calls", "1", "--duration", "1s"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--slo {bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--slo"), "{err}");
    }
    let out = common::bin().args(["--slo", "loss<0.5"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("percentage"));
}

fn tiny_run(slo: &str) -> (Option<i32>, Report, String) {
    let (_dir, path) = common::tmp("r.json");
    let out = common::bin()
        .args([
            "--calls",
            "2",
            "--duration",
            "1s",
            "--profile",
            "audio",
            "--progress",
            "off",
        ])
        .args(["--slo", slo, "--report"])
        .arg(&path)
        .output()
        .unwrap();
    let report = Report::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap();
    (
        out.status.code(),
        report,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_met_slo_exits_0_and_a_missed_one_exits_3() {
    let (code, report, _) = tiny_run("loss<50%,p99<2s,join_p99<5s,established>=2");
    assert_eq!(code, Some(0), "{report:?}");
    assert!(report.slo.unwrap().passed);

    let (code, report, stdout) = tiny_run("p50<1us,established>=1000,loss<50%");
    assert_eq!(code, Some(3));
    let slo = report.slo.unwrap();
    assert!(!slo.passed);
    let missed: Vec<_> = slo.violations.iter().map(|v| v.clause.as_str()).collect();
    assert_eq!(missed, ["p50<1us", "established>=1000"]);
    assert!(stdout.contains("SLO MISSED"), "{stdout}");
    assert!(stdout.contains("established is 2"), "{stdout}");
}
