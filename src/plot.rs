//! `metrics plot`: a series drawn as a line chart of Unicode braille characters. Pure: points
//! in, text out; the CLI fetches the points and picks the size.
//!
//! Each character cell holds 2x4 braille dots, so a chart `w` columns wide has `2w` dot
//! columns in time. Every dot column draws the whole span from the lowest to the highest value
//! that falls into it, and consecutive columns are joined, so a one-second spike in a month of
//! points still reaches its row: a reduction by mean or by sampling would lose it.
//!
//! [`Reducer`] bounds what a plot holds however long the series is: it keeps, for each of at
//! most [`Reducer::BUCKETS`] time buckets, the first, last, lowest and highest point (the M4
//! reduction), which is all the chart draws.

use crate::log::utc;
use crate::protocol::write_float;

/// The chart of `points` (`(timestamp, value)`, sorted by timestamp as the server sends them),
/// at most `width` characters wide and `height` lines high, each line ending in `\n`:
///
/// ```text
///  12.5 ┤    ⢀⠔⠊⠉⠢⡀
///       │  ⡠⠊     ⠈⠢⡀
///   0.5 ┤⠔⠁          ⠑
///       └─────────────
///        2006-06-15T12:30:47Z  2006-06-15T12:31:47Z
/// ```
///
/// The y axis is labelled with the highest value at the top and the lowest at the bottom,
/// written as the protocol writes values; a series of one value has one label, at its line.
/// The x axis runs from the first timestamp to the last, written in UTC under the chart (on two
/// lines if one is too narrow). Non-finite values are skipped; with no points left the chart
/// is empty (`""`). A size too small for any chart gives a one-line note instead, cut to `width`.
pub fn render(points: &[(i64, f64)], width: usize, height: usize) -> String {
    let mut sorted;
    let mut points = points;
    if !points.is_sorted_by_key(|&(t, _)| t) {
        sorted = points.to_vec();
        sorted.sort_by_key(|&(t, _)| t);
        points = &sorted;
    }
    let finite = || points.iter().filter(|(_, v)| v.is_finite());
    let (Some(&(first, _)), Some(&(last, _))) = (finite().next(), finite().next_back()) else {
        return String::new();
    };
    let low = finite().map(|&(_, v)| v).fold(f64::INFINITY, f64::min);
    let high = finite().map(|&(_, v)| v).fold(f64::NEG_INFINITY, f64::max);
    let (low_label, high_label) = (float_text(low), float_text(high));
    let label_width = low_label.chars().count().max(high_label.chars().count());

    let (start, end) = (utc(first), utc(last));
    // Columns left of the plot: the labels, a space, the axis.
    let left = label_width + 2;
    let plot_width = width.saturating_sub(left);
    let times = time_lines(&start, &end, first == last, left, width);
    let rows = height.saturating_sub(1 + times.len());
    if plot_width < 2 || rows < 2 {
        if height == 0 {
            return String::new();
        }
        let mut note: String = "(too small for a chart)".chars().take(width).collect();
        note.push('\n');
        return note;
    }

    let mut grid = Grid::new(plot_width, rows);
    let (dot_columns, dot_rows) = (2 * plot_width, 4 * rows);
    let column = |t: i64| -> usize {
        if first == last {
            return 0;
        }
        let span = i128::from(last) - i128::from(first);
        let offset = i128::from(t) - i128::from(first);
        // At most dot_columns - 1, and i128 holds any product of an i64 span and a width.
        (offset * (dot_columns as i128 - 1) / span) as usize
    };
    let row = |v: f64| -> usize {
        // Halves, so that `high - low` cannot overflow for values near f64::MAX.
        let span = high / 2.0 - low / 2.0;
        let fraction = if span > 0.0 {
            (v / 2.0 - low / 2.0) / span
        } else {
            0.5
        };
        let from_top = (1.0 - fraction) * (dot_rows - 1) as f64;
        (from_top.round() as usize).min(dot_rows - 1)
    };

    // Each dot column's first, last, lowest and highest dot row; rows grow downwards, so the
    // highest value has the smallest row.
    let mut columns: Vec<Option<Span>> = vec![None; dot_columns];
    for &(t, v) in finite() {
        let y = row(v);
        let slot = &mut columns[column(t)];
        match slot {
            Some(span) => {
                span.last = y;
                span.top = span.top.min(y);
                span.bottom = span.bottom.max(y);
            }
            None => {
                *slot = Some(Span {
                    first: y,
                    last: y,
                    top: y,
                    bottom: y,
                })
            }
        }
    }
    let mut previous: Option<(usize, usize)> = None;
    for (x, span) in columns.iter().enumerate() {
        let Some(span) = span else { continue };
        if let Some((px, py)) = previous {
            // The line from the last value of the previous column to this one's first, through
            // the empty columns between, each column drawn from where the line left the one
            // before so that steep lines stay unbroken.
            let (dx, dy) = ((x - px) as f64, span.first as f64 - py as f64);
            let mut from = py;
            for step in 1..=(x - px) {
                let to = (py as f64 + dy * step as f64 / dx).round() as usize;
                grid.vertical(px + step, from, to);
                from = to;
            }
        }
        grid.vertical(x, span.top, span.bottom);
        previous = Some((x, span.last));
    }

    let mut out = String::new();
    let flat_row = (low == high).then(|| row(low) / 4);
    for (r, line) in grid.lines().enumerate() {
        let label = match flat_row {
            Some(at) if r == at => Some(&high_label),
            Some(_) => None,
            None if r == 0 => Some(&high_label),
            None if r == rows - 1 => Some(&low_label),
            None => None,
        };
        match label {
            Some(text) => out.push_str(&format!("{text:>label_width$} ┤")),
            None => out.push_str(&format!("{:label_width$} │", "")),
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&" ".repeat(left - 1));
    out.push('└');
    out.push_str(&"─".repeat(plot_width));
    out.push('\n');
    for line in times {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The time line(s) under the chart: the start under the plot's first column and the end
/// ending at its last, on one line if both fit, else on two. Cut to `width` if even one
/// does not fit.
fn time_lines(start: &str, end: &str, one_time: bool, left: usize, width: usize) -> Vec<String> {
    let pad = " ".repeat(left);
    let (start_len, end_len) = (start.chars().count(), end.chars().count());
    let cut = |line: String| line.chars().take(width).collect::<String>();
    if one_time {
        return vec![cut(format!("{pad}{start}"))];
    }
    if left + start_len + 2 + end_len <= width {
        let gap = width - left - start_len - end_len;
        return vec![format!("{pad}{start}{}{end}", " ".repeat(gap))];
    }
    let end_pad = width.saturating_sub(end_len).max(left);
    vec![
        cut(format!("{pad}{start}")),
        cut(format!("{}{end}", " ".repeat(end_pad))),
    ]
}

fn float_text(value: f64) -> String {
    let mut text = Vec::with_capacity(24);
    write_float(&mut text, value);
    String::from_utf8_lossy(&text).into_owned()
}

/// One dot column's rows: of its first and last point, and the highest and lowest it reaches.
#[derive(Debug, Clone, Copy)]
struct Span {
    first: usize,
    last: usize,
    top: usize,
    bottom: usize,
}

/// Braille cells, each 2 dots wide and 4 high.
struct Grid {
    width: usize,
    cells: Vec<u8>,
}

impl Grid {
    fn new(width: usize, rows: usize) -> Self {
        Grid {
            width,
            cells: vec![0; width * rows],
        }
    }

    /// Sets the dots of dot column `x` from dot row `a` to `b`, either way round.
    fn vertical(&mut self, x: usize, a: usize, b: usize) {
        // Bit of each dot in a braille cell, by dot row within the cell, for its left and
        // right dot column (Unicode's dot numbering 1-2-3-7 and 4-5-6-8).
        const BITS: [[u8; 2]; 4] = [[0x01, 0x08], [0x02, 0x10], [0x04, 0x20], [0x40, 0x80]];
        for y in a.min(b)..=a.max(b) {
            self.cells[(y / 4) * self.width + x / 2] |= BITS[y % 4][x % 2];
        }
    }

    /// Each row of cells as text: a space for an empty cell, else its braille character.
    fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.cells.chunks(self.width).map(|row| {
            row.iter()
                .map(|&bits| match bits {
                    0 => ' ',
                    bits => char::from_u32(0x2800 + u32::from(bits)).unwrap_or(' '),
                })
                .collect()
        })
    }
}

/// Reduces a series of any length, fed in timestamp order, to the points a chart of up to
/// [`Reducer::BUCKETS`] dot columns draws: for each time bucket its first, last, lowest and
/// highest point. Buckets double in width as the series outgrows them, so memory stays
/// bounded; points arriving out of order are still kept within their bucket's extremes.
#[derive(Debug, Default)]
pub struct Reducer {
    start: Option<i64>,
    /// Buckets are `2^shift` seconds wide, the first starting at `start`.
    shift: u32,
    buckets: Vec<Option<Bucket>>,
    seen: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    first: (i64, f64),
    last: (i64, f64),
    low: (i64, f64),
    high: (i64, f64),
}

impl Bucket {
    fn merge(self, other: Bucket) -> Bucket {
        let pick = |a: (i64, f64), b: (i64, f64), a_wins: bool| if a_wins { a } else { b };
        Bucket {
            first: pick(self.first, other.first, self.first.0 <= other.first.0),
            last: pick(self.last, other.last, self.last.0 >= other.last.0),
            low: pick(self.low, other.low, self.low.1 <= other.low.1),
            high: pick(self.high, other.high, self.high.1 >= other.high.1),
        }
    }
}

impl Reducer {
    /// The most buckets kept; a chart wider than this many dot columns shows the series at
    /// this resolution.
    pub const BUCKETS: usize = 8192;

    /// An empty reducer.
    pub fn new() -> Self {
        Reducer::default()
    }

    /// How many points were pushed.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Adds one point. A non-finite value is ignored.
    pub fn push(&mut self, timestamp: i64, value: f64) {
        if !value.is_finite() {
            return;
        }
        self.seen += 1;
        let start = *self.start.get_or_insert(timestamp);
        // A point before the first one goes into the first bucket.
        let offset = (i128::from(timestamp) - i128::from(start)).max(0);
        let mut index = (offset >> self.shift) as usize;
        while index >= Self::BUCKETS {
            self.halve();
            index = (offset >> self.shift) as usize;
        }
        if self.buckets.len() <= index {
            self.buckets.resize(index + 1, None);
        }
        let point = (timestamp, value);
        let new = Bucket {
            first: point,
            last: point,
            low: point,
            high: point,
        };
        let slot = &mut self.buckets[index];
        *slot = Some(match *slot {
            Some(bucket) => bucket.merge(new),
            None => new,
        });
    }

    /// Doubles the bucket width, merging neighbours.
    fn halve(&mut self) {
        self.shift += 1;
        let merged = self
            .buckets
            .chunks(2)
            .map(|pair| match pair {
                [Some(a), Some(b)] => Some(a.merge(*b)),
                [Some(a), None] | [None, Some(a)] | [Some(a)] => Some(*a),
                _ => None,
            })
            .collect();
        self.buckets = merged;
    }

    /// The kept points, sorted by timestamp, each once: at most `4 * BUCKETS`.
    pub fn points(&self) -> Vec<(i64, f64)> {
        let mut points = Vec::new();
        for bucket in self.buckets.iter().flatten() {
            let mut four = [bucket.first, bucket.low, bucket.high, bucket.last];
            four.sort_by_key(|&(t, _)| t);
            for point in four {
                if points.last().map(|&(t, _)| t) != Some(point.0) {
                    points.push(point);
                }
            }
        }
        points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chart: &str) -> Vec<&str> {
        chart.lines().collect()
    }

    /// The braille rows of a chart (those before the `└` axis line), without the labels.
    fn plot_rows(chart: &str) -> Vec<String> {
        let label = chart.lines().next().unwrap().find(['┤', '│']).unwrap();
        chart
            .lines()
            .take_while(|l| !l.contains('└'))
            .map(|l| l[label..].chars().skip(1).collect())
            .collect()
    }

    #[test]
    fn a_ramp_draws_a_diagonal_with_min_and_max_labels() {
        let points: Vec<(i64, f64)> = (0..40).map(|i| (1_150_864_247 + i, i as f64)).collect();
        let chart = render(&points, 40, 10);
        let rows = lines(&chart);
        assert!(rows.len() <= 10, "{chart}");
        assert!(rows[0].starts_with("39.0 ┤"), "{chart}");
        let axis = rows.iter().position(|l| l.contains('└')).unwrap();
        assert!(rows[axis - 1].starts_with(" 0.0 ┤"), "{chart}");
        // Top right and bottom left are drawn; the opposite corners are not.
        let plot = plot_rows(&chart);
        assert!(plot[0].ends_with(|c: char| c != ' '), "{chart}");
        assert!(
            plot[plot.len() - 1].starts_with(|c: char| c != ' '),
            "{chart}"
        );
        assert!(plot[0].starts_with(' '), "{chart}");
    }

    #[test]
    fn the_time_range_is_written_in_utc_under_the_axis() {
        let chart = render(&[(1_150_864_247, 0.5), (1_150_864_307, 2.0)], 60, 8);
        let last = lines(&chart).pop().unwrap().to_string();
        assert!(
            last.trim_start().starts_with("2006-06-21T04:30:47Z"),
            "{chart}"
        );
        assert!(last.ends_with("2006-06-21T04:31:47Z"), "{chart}");
        assert_eq!(last.chars().count(), 60);
        // Too narrow for both on one line: two lines, still within the width.
        let chart = render(&[(1_150_864_247, 0.5), (1_150_864_307, 2.0)], 30, 8);
        let rows = lines(&chart);
        assert!(
            rows[rows.len() - 2].contains("2006-06-21T04:30:47Z"),
            "{chart}"
        );
        assert!(
            rows[rows.len() - 1].contains("2006-06-21T04:31:47Z"),
            "{chart}"
        );
    }

    #[test]
    fn no_size_is_exceeded() {
        let points: Vec<(i64, f64)> = (0..500)
            .map(|i| (i * 37, ((i * 7919) % 101) as f64 - 50.5))
            .collect();
        for width in 0..100 {
            for height in 0..30 {
                let chart = render(&points, width, height);
                assert!(chart.lines().count() <= height, "{width}x{height}\n{chart}");
                for line in chart.lines() {
                    assert!(line.chars().count() <= width, "{width}x{height}\n{chart}");
                }
            }
        }
    }

    #[test]
    fn a_spike_survives_the_reduction_to_columns() {
        let mut points: Vec<(i64, f64)> = (0..10_000).map(|i| (i, (i % 5) as f64)).collect();
        points[6_789].1 = 1000.0;
        let chart = render(&points, 80, 24);
        let plot = plot_rows(&chart);
        let top: Vec<char> = plot[0].chars().collect();
        let drawn: Vec<usize> = (0..top.len()).filter(|&i| top[i] != ' ').collect();
        assert_eq!(drawn.len(), 1, "{chart}");
        let expected = 6_789 * (2 * plot_width(&chart) - 1) / 9_999 / 2;
        assert_eq!(drawn[0], expected, "{chart}");
    }

    fn plot_width(chart: &str) -> usize {
        chart
            .lines()
            .find(|l| l.contains('└'))
            .unwrap()
            .split('└')
            .nth(1)
            .unwrap()
            .chars()
            .count()
    }

    #[test]
    fn a_flat_series_has_one_label_at_its_line() {
        let chart = render(&[(0, 3.0), (10, 3.0), (20, 3.0)], 30, 9);
        let labelled: Vec<&str> = chart.lines().filter(|l| l.contains('┤')).collect();
        assert_eq!(labelled.len(), 1, "{chart}");
        assert!(labelled[0].starts_with("3.0 ┤⠉⠉⠉"), "{chart}");
    }

    #[test]
    fn one_point_and_extreme_values_and_times() {
        let chart = render(&[(7, 1.5)], 30, 6);
        assert!(chart.contains("1.5 ┤"), "{chart}");
        assert!(chart.ends_with("1970-01-01T00:00:07Z\n"), "{chart}");
        let chart = render(
            &[(i64::MIN, -f64::MAX), (0, 0.0), (i64::MAX, f64::MAX)],
            120,
            12,
        );
        assert!(chart.contains("1.7976931348623157e+308 ┤"), "{chart}");
        assert!(chart.contains("-1.7976931348623157e+308 ┤"), "{chart}");
    }

    #[test]
    fn nothing_to_draw_is_empty_and_too_small_is_a_note() {
        assert_eq!(render(&[], 80, 24), "");
        assert_eq!(render(&[(1, f64::NAN)], 80, 24), "");
        assert_eq!(
            render(&[(1, 1.0), (2, 2.0)], 80, 3),
            "(too small for a chart)\n"
        );
        assert_eq!(render(&[(1, 1.0), (2, 2.0)], 6, 24), "(too s\n");
    }

    #[test]
    fn unsorted_points_draw_as_sorted() {
        let sorted = [(1, 1.0), (2, 5.0), (3, 2.0)];
        let shuffled = [(3, 2.0), (1, 1.0), (2, 5.0)];
        assert_eq!(render(&sorted, 40, 8), render(&shuffled, 40, 8));
    }

    #[test]
    fn the_reducer_keeps_extremes_ends_and_a_bounded_number_of_points() {
        let mut reducer = Reducer::new();
        for t in 0..1_000_000_i64 {
            let value = if t == 765_432 { -1e9 } else { (t % 17) as f64 };
            reducer.push(t * 3, value);
        }
        reducer.push(5, f64::NAN);
        assert_eq!(reducer.seen(), 1_000_000);
        let points = reducer.points();
        assert!(points.len() <= 4 * Reducer::BUCKETS, "{}", points.len());
        assert!(points.len() > Reducer::BUCKETS, "{}", points.len());
        assert!(points.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(points[0], (0, 0.0));
        assert_eq!(
            *points.last().unwrap(),
            (999_999 * 3, (999_999 % 17) as f64)
        );
        assert!(points.contains(&(765_432 * 3, -1e9)));
        assert!(points.iter().any(|&(_, v)| v == 16.0));
    }

    #[test]
    fn a_reduced_series_draws_like_the_whole_one() {
        let points: Vec<(i64, f64)> = (0..50_000)
            .map(|i| {
                (
                    i * 60,
                    ((i * 7919) % 1000) as f64 + if i == 31_337 { 1e4 } else { 0.0 },
                )
            })
            .collect();
        let mut reducer = Reducer::new();
        for &(t, v) in &points {
            reducer.push(t, v);
        }
        let (whole, reduced) = (render(&points, 80, 20), render(&reducer.points(), 80, 20));
        assert_eq!(plot_rows(&whole)[0], plot_rows(&reduced)[0]);
        assert_eq!(lines(&whole).last(), lines(&reduced).last());
    }

    #[test]
    fn extreme_timestamps_do_not_overflow_the_reducer() {
        let mut reducer = Reducer::new();
        reducer.push(i64::MIN, 1.0);
        reducer.push(0, 2.0);
        reducer.push(i64::MAX, 3.0);
        assert_eq!(
            reducer.points(),
            vec![(i64::MIN, 1.0), (0, 2.0), (i64::MAX, 3.0)]
        );
    }
}
