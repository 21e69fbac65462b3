//! `metrics plot` against the real server: the chart's size, labels, time line, that a spike
//! survives the reduction to columns, and the failures.

mod common;

use common::{metrics, TestServer};
use predicates::prelude::*;

/// A server holding `series`, each point stored under `metric`.
fn server_with(metric: &str, series: &[(i64, f64)]) -> TestServer {
    let server = TestServer::start();
    let mut request = String::new();
    for (t, v) in series {
        request.push_str(&format!("put {metric} {v} {t}\n"));
    }
    let mut s = server.connect();
    common::exchange(&mut s, request.as_bytes(), &b"ok\n\n".repeat(series.len()));
    server
}

/// `metrics plot ARGS` with the terminal size `COLUMNS` x `LINES` (`None`: unset); its stdout.
fn plot(server: &TestServer, size: (Option<&str>, Option<&str>), args: &[&str]) -> String {
    let mut cmd = server.cli();
    cmd.env_remove("COLUMNS").env_remove("LINES");
    if let Some(columns) = size.0 {
        cmd.env("COLUMNS", columns);
    }
    if let Some(lines) = size.1 {
        cmd.env("LINES", lines);
    }
    let out = cmd
        .arg("plot")
        .args(args)
        .assert()
        .success()
        .stderr("")
        .get_output()
        .stdout
        .clone();
    String::from_utf8(out).unwrap()
}

fn assert_fits(chart: &str, columns: usize, lines: usize) {
    assert!(
        chart.lines().count() <= lines,
        "over {lines} lines:\n{chart}"
    );
    for line in chart.lines() {
        assert!(
            line.chars().count() <= columns,
            "over {columns} columns: {line:?}\n{chart}"
        );
    }
}

/// The chart's braille rows, from the top, without the y axis and its labels.
fn plot_rows(chart: &str) -> Vec<Vec<char>> {
    chart
        .lines()
        .take_while(|l| !l.contains('└'))
        .map(|l| {
            l.chars()
                .skip_while(|&c| c != '┤' && c != '│')
                .skip(1)
                .collect()
        })
        .collect()
}

fn ramp() -> Vec<(i64, f64)> {
    (0..200)
        .map(|i| (1_150_864_247 + 60 * i, 0.5 + (i % 50) as f64 / 4.0))
        .collect()
}

#[test]
fn the_chart_fits_columns_and_lines() {
    let server = server_with("palm.cpu", &ramp());
    for (columns, lines) in [(80, 24), (50, 12), (132, 43), (40, 8), (300, 100)] {
        let (c, l) = (columns.to_string(), lines.to_string());
        let chart = plot(&server, (Some(&c), Some(&l)), &["palm.cpu"]);
        assert_fits(&chart, columns, lines);
        // It uses the space: all the columns, and one line less than the terminal (the prompt's).
        assert_eq!(chart.lines().count(), lines - 1, "{chart}");
        assert!(
            chart.lines().any(|l| l.chars().count() == columns),
            "{chart}"
        );
    }
}

#[test]
fn without_a_sane_size_the_chart_is_80_by_24() {
    let server = server_with("palm.cpu", &ramp());
    for size in [
        (None, None),
        (Some("wide"), Some("0")),
        (Some("-1"), Some("1e9")),
    ] {
        let chart = plot(&server, size, &["palm.cpu"]);
        assert_fits(&chart, 80, 24);
        assert_eq!(chart.lines().count(), 23, "{chart}");
        assert!(chart.lines().any(|l| l.chars().count() == 80), "{chart}");
    }
}

#[test]
fn the_y_axis_shows_min_and_max_and_the_x_axis_the_utc_range() {
    let server = server_with("palm.cpu", &ramp());
    let chart = plot(&server, (Some("80"), Some("20")), &["palm.cpu"]);
    let lines: Vec<&str> = chart.lines().collect();
    assert!(lines[0].starts_with("12.75 ┤"), "{chart}");
    let axis = lines.iter().position(|l| l.contains('└')).unwrap();
    assert!(lines[axis - 1].starts_with("  0.5 ┤"), "{chart}");
    assert_eq!(lines[axis], format!("      └{}", "─".repeat(73)));
    // 1150864247 is 2006-06-21T04:30:47Z; the last point is 199 minutes later.
    assert_eq!(
        lines[axis + 1],
        format!(
            "       2006-06-21T04:30:47Z{}2006-06-21T07:49:47Z",
            " ".repeat(33)
        )
    );
    assert_eq!(lines.len(), axis + 2);
    // Not a terminal, and still no escape sequences.
    assert!(!chart.contains('\x1b'));
}

#[test]
fn a_spike_in_10000_points_reaches_the_top_row() {
    let mut series: Vec<(i64, f64)> = (0..10_000)
        .map(|i| (1_700_000_000 + i, (i % 10) as f64))
        .collect();
    series[7_321].1 = 500.0;
    let server = server_with("spiky", &series);
    let chart = plot(&server, (Some("80"), Some("24")), &["spiky"]);
    assert_fits(&chart, 80, 24);
    assert!(chart.starts_with("500.0 ┤"), "{chart}");
    let rows = plot_rows(&chart);
    let drawn =
        |row: &[char]| -> Vec<usize> { (0..row.len()).filter(|&i| row[i] != ' ').collect() };
    // Only the spike's column reaches the top row, and it is drawn all the way down.
    let top = drawn(&rows[0]);
    assert_eq!(top.len(), 1, "{chart}");
    let width = chart
        .lines()
        .find(|l| l.contains('└'))
        .unwrap()
        .chars()
        .filter(|&c| c == '─')
        .count();
    assert_eq!(top[0], 7_321 * (2 * width - 1) / 9_999 / 2, "{chart}");
    for row in &rows {
        assert!(drawn(row).contains(&top[0]), "{chart}");
    }
}

#[test]
fn from_to_and_since_choose_the_points_drawn() {
    let now = metrics::defaults::now();
    let series: Vec<(i64, f64)> = (0..100)
        .map(|i| (now - 99 * 60 + i * 60, i as f64))
        .collect();
    let server = server_with("recent", &series);
    let size = (Some("80"), Some("12"));
    let chart = plot(&server, size, &["recent", "--since", "630"]);
    assert!(chart.starts_with("99.0 ┤"), "{chart}");
    assert!(chart.contains("\n89.0 ┤"), "{chart}");
    let from = (now - 89 * 60).to_string();
    let to = (now - 80 * 60).to_string();
    let chart = plot(&server, size, &["recent", "--from", &from, "--to", &to]);
    assert!(chart.starts_with("19.0 ┤"), "{chart}");
    assert!(chart.contains("\n10.0 ┤"), "{chart}");
}

#[test]
fn no_points_exits_1_with_a_message() {
    let server = server_with("palm.cpu", &ramp());
    server
        .cli()
        .args(["plot", "nobody"])
        .assert()
        .code(1)
        .stdout("")
        .stderr("metrics: no points for nobody\n");
    for range in [
        &["--from", "2000000000"][..],
        &["--to", "0"],
        &["--since", "1h"],
    ] {
        server
            .cli()
            .args(["plot", "palm.cpu"])
            .args(range)
            .assert()
            .code(1)
            .stdout("")
            .stderr("metrics: no points for palm.cpu in that range\n");
    }
    metrics()
        .args(["plot", "--addr", &common::dead_addr().to_string(), "m"])
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with("metrics: cannot connect to "));
}
