//! The in-memory store: plain data, no locks, no I/O, no panics on any input.
//!
//! Each metric owns a series of points sorted by timestamp, kept in chunks of at most
//! [`CHUNK_POINTS`] points. A chunk stores its timestamps as `u32` offsets from a base, packed
//! beside the value's bits in one array, so a point costs 12 bytes (4 + 8) instead of 16, and
//! appending in time order never copies more than one chunk. Chunks sit behind `Arc`s: a
//! [`Snapshot`] for a `get` only bumps reference counts, so the server can hold the lock for
//! microseconds and format the reply after releasing it. A writer that later changes a chunk a
//! snapshot still shares copies that one chunk first.
//!
//! Timestamps more than 2^32 seconds (136 years) apart cannot share a chunk, so points spread
//! that widely cost a chunk each: correct, just not compact.

use crate::protocol::Selector;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

/// The most points one chunk holds; a full chunk is about 12 KiB.
pub const CHUNK_POINTS: usize = 1024;

/// All metrics, by name. A hash map makes a put's lookup one hash (std's keyed SipHash, so
/// clients cannot flood one bucket with chosen names); `get *` sorts the names of its snapshot
/// after the lock is released.
#[derive(Debug, Default)]
pub struct Store {
    series: HashMap<Arc<str>, Series>,
    points: usize,
}

/// What a put did to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// A new point.
    Added,
    /// The metric already had a point at that timestamp; its value was replaced.
    Replaced,
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `value` for `metric` at `timestamp`, replacing any value already at that second.
    /// Allocates only for a new metric or when a chunk grows.
    pub fn put(&mut self, metric: &str, value: f64, timestamp: i64) -> Put {
        let outcome = match self.series.get_mut(metric) {
            Some(series) => series.insert(timestamp, value),
            None => {
                let mut series = Series::default();
                series.insert(timestamp, value);
                self.series.insert(Arc::from(metric), series);
                Put::Added
            }
        };
        if outcome == Put::Added {
            self.points += 1;
        }
        outcome
    }

    /// The points of the selected metrics with timestamps at or after `since`, as a snapshot
    /// that owns its data. Costs one reference count per metric and chunk, not a copy of the
    /// points. An unknown metric gives an empty snapshot and creates nothing.
    pub fn snapshot(&self, selector: Selector<'_>, since: i64) -> Snapshot {
        let mut snapshot = Snapshot {
            since,
            ..Snapshot::default()
        };
        match selector {
            Selector::All => {
                for (name, series) in &self.series {
                    snapshot.add(name, series);
                }
            }
            Selector::Metric(name) => {
                if let Some((name, series)) = self.series.get_key_value(name) {
                    snapshot.add(name, series);
                }
            }
        }
        snapshot
    }

    /// Removes every point with a timestamp before `cutoff`, and metrics left with no points.
    /// Returns how many points were removed.
    pub fn expire_before(&mut self, cutoff: i64) -> usize {
        let mut removed = 0;
        self.series.retain(|_, series| {
            removed += series.expire_before(cutoff);
            series.len > 0
        });
        self.points -= removed;
        removed
    }

    /// How many points are stored.
    pub fn points(&self) -> usize {
        self.points
    }

    /// How many metrics are stored.
    pub fn metrics(&self) -> usize {
        self.series.len()
    }

    /// Heap bytes held for points: chunk arrays, chunk headers and each series' chunk list
    /// (not the allocator's own overhead, names or the hash table).
    pub fn point_bytes(&self) -> usize {
        self.series
            .values()
            .map(|series| {
                series.chunks.capacity() * size_of::<Arc<Chunk>>()
                    + series
                        .chunks
                        .iter()
                        .map(|c| {
                            // The Arc's two counters, the chunk itself, and its arrays.
                            2 * size_of::<usize>()
                                + size_of::<Chunk>()
                                + c.points.capacity() * size_of::<Packed>()
                        })
                        .sum::<usize>()
            })
            .sum()
    }
}

/// One metric's points, in chunks sorted by time that do not overlap.
#[derive(Debug, Default)]
struct Series {
    chunks: Vec<Arc<Chunk>>,
    len: usize,
}

impl Series {
    fn insert(&mut self, timestamp: i64, value: f64) -> Put {
        // The common case first: a new latest point that fits the last chunk.
        if let Some(last) = self.chunks.last_mut() {
            if last.last() < timestamp && last.can_append(timestamp) {
                Arc::make_mut(last).push(timestamp, value);
                self.len += 1;
                return Put::Added;
            }
        }
        let count = self.chunks.len();
        // The index of the first chunk that ends at or after `timestamp`; appends skip the search.
        let at = match self.chunks.last() {
            None => 0,
            Some(last) if last.last() < timestamp => count,
            Some(_) => self.chunks.partition_point(|c| c.last() < timestamp),
        };
        if at < count && self.chunks[at].first() <= timestamp {
            return self.insert_within(at, timestamp, value);
        }
        // `timestamp` falls in the gap before chunk `at`: extend a neighbour, or start a chunk.
        self.len += 1;
        if at > 0 && self.chunks[at - 1].can_append(timestamp) {
            Arc::make_mut(&mut self.chunks[at - 1]).insert(timestamp, value);
        } else if at < count && self.chunks[at].can_prepend(timestamp) {
            Arc::make_mut(&mut self.chunks[at]).insert(timestamp, value);
        } else {
            // A series that already filled a chunk is long-lived: give the next one full size.
            let capacity = if at == count && self.len > CHUNK_POINTS {
                CHUNK_POINTS
            } else {
                1
            };
            let mut chunk = Chunk::new(timestamp, capacity);
            chunk.insert(timestamp, value);
            self.chunks.insert(at, Arc::new(chunk));
        }
        Put::Added
    }

    /// Inserts into chunk `at`, whose span covers `timestamp`.
    fn insert_within(&mut self, at: usize, timestamp: i64, value: f64) -> Put {
        let position = self.chunks[at].position(timestamp);
        if let Ok(index) = position {
            let point = &mut Arc::make_mut(&mut self.chunks[at]).points[index];
            *point = Packed::new(point.offset, value);
            return Put::Replaced;
        }
        if self.chunks[at].len() == CHUNK_POINTS {
            let right = Arc::make_mut(&mut self.chunks[at]).split_off(CHUNK_POINTS / 2);
            let target = if timestamp < right.first() {
                at
            } else {
                at + 1
            };
            self.chunks.insert(at + 1, Arc::new(right));
            Arc::make_mut(&mut self.chunks[target]).insert(timestamp, value);
        } else {
            Arc::make_mut(&mut self.chunks[at]).insert(timestamp, value);
        }
        self.len += 1;
        Put::Added
    }

    fn expire_before(&mut self, cutoff: i64) -> usize {
        let whole = self.chunks.partition_point(|c| c.last() < cutoff);
        let mut removed: usize = self.chunks.drain(..whole).map(|c| c.len()).sum();
        if let Some(first) = self.chunks.first_mut() {
            if first.first() < cutoff {
                removed += Arc::make_mut(first).remove_before(cutoff);
            }
        }
        self.len -= removed;
        removed
    }
}

/// One point in 12 bytes: the offset of its timestamp from the chunk's base, and the value's
/// bits as two halves, so that the array needs only 4-byte alignment.
#[derive(Debug, Clone, Copy)]
struct Packed {
    offset: u32,
    bits: [u32; 2],
}

impl Packed {
    fn new(offset: u32, value: f64) -> Self {
        let bits = value.to_bits();
        Packed {
            offset,
            bits: [bits as u32, (bits >> 32) as u32],
        }
    }

    fn with_offset(self, offset: u32) -> Self {
        Packed { offset, ..self }
    }

    fn value(&self) -> f64 {
        f64::from_bits(u64::from(self.bits[0]) | u64::from(self.bits[1]) << 32)
    }
}

/// Up to [`CHUNK_POINTS`] points sorted by time, timestamps stored as offsets from `base`.
#[derive(Debug, Clone)]
pub struct Chunk {
    base: i64,
    points: Vec<Packed>,
}

impl Chunk {
    fn new(base: i64, capacity: usize) -> Self {
        Chunk {
            base,
            points: Vec::with_capacity(capacity),
        }
    }

    fn len(&self) -> usize {
        self.points.len()
    }

    fn timestamp(&self, index: usize) -> i64 {
        self.base + i64::from(self.points[index].offset)
    }

    // Chunks in a series are never empty.
    fn first(&self) -> i64 {
        self.timestamp(0)
    }

    fn last(&self) -> i64 {
        self.timestamp(self.len() - 1)
    }

    fn offset(&self, timestamp: i64) -> Option<u32> {
        u32::try_from(i128::from(timestamp) - i128::from(self.base)).ok()
    }

    fn can_append(&self, timestamp: i64) -> bool {
        self.len() < CHUNK_POINTS && self.offset(timestamp).is_some()
    }

    /// Whether `timestamp`, earlier than every point here, fits once the base moves down to it.
    fn can_prepend(&self, timestamp: i64) -> bool {
        self.len() < CHUNK_POINTS
            && u32::try_from(i128::from(self.last()) - i128::from(timestamp)).is_ok()
    }

    fn position(&self, timestamp: i64) -> Result<usize, usize> {
        match self.offset(timestamp) {
            Some(offset) => self.points.binary_search_by_key(&offset, |p| p.offset),
            None if timestamp < self.base => Err(0),
            None => Err(self.len()),
        }
    }

    /// Appends a point later than all here; the caller has checked that it fits.
    fn push(&mut self, timestamp: i64, value: f64) {
        self.reserve_one();
        self.points
            .push(Packed::new((timestamp - self.base) as u32, value));
    }

    /// Room for one more point: doubling up to a full chunk, and never past it.
    fn reserve_one(&mut self) {
        if self.points.len() == self.points.capacity() {
            let extra = self.len().max(4).min(CHUNK_POINTS - self.len());
            self.points.reserve_exact(extra);
        }
    }

    /// Inserts a point not yet present; the caller has checked that it fits.
    fn insert(&mut self, timestamp: i64, value: f64) {
        if timestamp < self.base {
            let shift = (self.base - timestamp) as u32;
            for point in &mut self.points {
                point.offset += shift;
            }
            self.base = timestamp;
        }
        let offset = (timestamp - self.base) as u32;
        // Appends, by far the most common case, skip the search.
        let index = match self.points.last() {
            Some(last) if last.offset < offset => self.len(),
            _ => self
                .points
                .binary_search_by_key(&offset, |p| p.offset)
                .unwrap_or_else(|i| i),
        };
        self.reserve_one();
        self.points.insert(index, Packed::new(offset, value));
    }

    /// Moves points `at..` into a new chunk based at its first timestamp.
    fn split_off(&mut self, at: usize) -> Chunk {
        let base = self.timestamp(at);
        let shift = (base - self.base) as u32;
        let mut right = Chunk::new(base, CHUNK_POINTS);
        right.points.extend(
            self.points
                .drain(at..)
                .map(|p| p.with_offset(p.offset - shift)),
        );
        right
    }

    fn remove_before(&mut self, cutoff: i64) -> usize {
        let count = self.position(cutoff).unwrap_or_else(|i| i);
        self.points.drain(..count);
        count
    }
}

/// Points selected from the store, owned: a reply's data, taken under the lock and read after.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    // Each name with its run of `chunks`.
    names: Vec<(Arc<str>, Range<usize>)>,
    chunks: Vec<Arc<Chunk>>,
    since: i64,
    sorted: bool,
}

impl Snapshot {
    fn add(&mut self, name: &Arc<str>, series: &Series) {
        let start = self.chunks.len();
        self.chunks.extend(series.chunks.iter().cloned());
        self.names
            .push((Arc::clone(name), start..self.chunks.len()));
    }

    /// Every point as `(metric, value, timestamp)`, sorted by metric name (bytes) and then by
    /// timestamp. The first call sorts the names, so make it after releasing the store's lock.
    pub fn iter(&mut self) -> impl Iterator<Item = (&str, f64, i64)> + '_ {
        if !self.sorted {
            self.names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            self.sorted = true;
        }
        let (names, chunks, since) = (&self.names, &self.chunks, self.since);
        names.iter().flat_map(move |(name, range)| {
            chunks[range.clone()].iter().flat_map(move |chunk| {
                chunk
                    .points
                    .iter()
                    .map(move |p| (&**name, p.value(), chunk.base + i64::from(p.offset)))
                    .filter(move |&(_, _, timestamp)| timestamp >= since)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn all(store: &Store) -> Vec<(String, f64, i64)> {
        store
            .snapshot(Selector::All, i64::MIN)
            .iter()
            .map(|(m, v, t)| (m.to_string(), v, t))
            .collect()
    }

    fn timestamps(store: &Store, metric: &str) -> Vec<i64> {
        store
            .snapshot(Selector::Metric(metric), i64::MIN)
            .iter()
            .map(|(_, _, t)| t)
            .collect()
    }

    #[test]
    fn put_then_get_returns_points_sorted() {
        let mut store = Store::new();
        assert_eq!(store.put("b", 2.0, 20), Put::Added);
        assert_eq!(store.put("a", 1.0, 10), Put::Added);
        assert_eq!(store.put("b", 1.5, 10), Put::Added);
        assert_eq!(
            all(&store),
            vec![
                ("a".into(), 1.0, 10),
                ("b".into(), 1.5, 10),
                ("b".into(), 2.0, 20)
            ]
        );
        assert_eq!((store.points(), store.metrics()), (3, 2));
    }

    #[test]
    fn same_timestamp_replaces_the_value() {
        let mut store = Store::new();
        store.put("m", 1.0, 5);
        assert_eq!(store.put("m", 2.0, 5), Put::Replaced);
        assert_eq!(all(&store), vec![("m".into(), 2.0, 5)]);
        assert_eq!(store.points(), 1);
    }

    #[test]
    fn unknown_metric_is_empty_and_not_created() {
        let store = Store::new();
        assert_eq!(
            store
                .snapshot(Selector::Metric("x"), i64::MIN)
                .iter()
                .count(),
            0
        );
        assert_eq!(store.metrics(), 0);
    }

    /// Checks the series against a plain sorted map after every kind of insert.
    fn check_against_model(timestamps: impl IntoIterator<Item = i64>) {
        let mut store = Store::new();
        let mut model = BTreeMap::new();
        for (i, ts) in timestamps.into_iter().enumerate() {
            let value = i as f64;
            let expected = if model.insert(ts, value).is_some() {
                Put::Replaced
            } else {
                Put::Added
            };
            assert_eq!(store.put("m", value, ts), expected);
        }
        let got: Vec<(i64, f64)> = store
            .snapshot(Selector::Metric("m"), i64::MIN)
            .iter()
            .map(|(_, v, t)| (t, v))
            .collect();
        assert_eq!(got, model.into_iter().collect::<Vec<_>>());
        assert_eq!(store.points(), got.len());
    }

    #[test]
    fn appends_in_order_fill_chunks() {
        check_against_model(0..5000);
        check_against_model((0..3000).map(|t| t * 1_000_000));
    }

    #[test]
    fn out_of_order_and_overwrites_stay_sorted() {
        check_against_model((0..5000).rev());
        let mut seed = 12345u64;
        check_against_model((0..20_000).map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as i64 % 7000
        }));
    }

    #[test]
    fn extreme_timestamps_get_chunks_of_their_own() {
        check_against_model([i64::MAX, i64::MIN, 0, -1, 1, i64::MAX - 1, i64::MIN + 1, 0]);
        let mut seed = 99u64;
        check_against_model((0..3000).map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed as i64
        }));
    }

    #[test]
    fn snapshot_is_unchanged_by_later_writes() {
        let mut store = Store::new();
        for t in 0..2000 {
            store.put("m", 1.0, t);
        }
        let mut snapshot = store.snapshot(Selector::All, i64::MIN);
        store.put("m", 9.0, 5);
        store.put("m", 9.0, 5000);
        store.put("n", 9.0, 1);
        assert_eq!(snapshot.iter().count(), 2000);
        assert!(snapshot.iter().all(|(m, v, _)| m == "m" && v == 1.0));
        assert_eq!(timestamps(&store, "m").len(), 2001);
    }

    #[test]
    fn expire_removes_old_points_and_empty_metrics() {
        let mut store = Store::new();
        for t in 0..3000 {
            store.put("m", 1.0, t);
        }
        store.put("old", 1.0, 5);
        assert_eq!(store.expire_before(2500), 2500 + 1);
        assert_eq!(timestamps(&store, "m"), (2500..3000).collect::<Vec<_>>());
        assert_eq!((store.points(), store.metrics()), (500, 1));
        store.put("m", 2.0, 10);
        assert_eq!(timestamps(&store, "m")[0], 10);
    }

    #[test]
    fn points_in_time_order_cost_at_most_13_bytes_each() {
        let mut store = Store::new();
        for t in 0..10_000 {
            for m in 0..100 {
                store.put(&format!("metric.{m}"), 0.5, 1_700_000_000 + t);
            }
        }
        let per_point = store.point_bytes() as f64 / store.points() as f64;
        assert!(per_point <= 13.0, "{per_point:.2} bytes per point");
        // A metric with a single point does not pay for a whole chunk.
        let mut small = Store::new();
        small.put("one", 1.0, 1);
        assert!(small.point_bytes() < 200, "{}", small.point_bytes());
    }

    #[test]
    fn snapshot_since_hides_older_points() {
        let mut store = Store::new();
        for t in 0..100 {
            store.put("m", 1.0, t);
        }
        assert_eq!(store.snapshot(Selector::All, 90).iter().count(), 10);
    }
}
