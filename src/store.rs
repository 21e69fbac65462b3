//! The in-memory store: plain data, no locks, no I/O, no panics on any input.
//!
//! Each metric owns a series: sealed blocks of compressed points ([`codec`](crate::codec)),
//! sorted and not overlapping, then an uncompressed head of the newest points. Appends go to
//! the head; when it is full its oldest [`BLOCK_POINTS`] points are sealed, appended as a
//! segment to the newest block until that block holds [`SEALED_MOST`] points, so a block's own
//! overhead is paid once per a few thousand points while the head stays small. The newest few
//! points stay in the head (the slack), so that points arriving slightly late are cheap.
//!
//! Any other point (older than the newest; an overwrite of one in the head is made in place
//! when no late point is waiting) goes to the series' late list, unsorted, and is merged into
//! the head and the blocks it belongs in when the list is full, before a seal that needs it,
//! or by the server's maintenance within about a second: one pass over the head and one
//! decode and encode per block touched (of a block with room, only of its segments from the
//! earliest late point on), whatever the order of writes. A series whose late points land
//! just behind the head (connections interleaving their timestamps) earns a larger slack, up
//! to [`SLACK_MOST`], and gives it back when its writes are in order again.
//!
//! Blocks sit behind `Arc`s: a read takes [`SeriesSnapshot`]s that share them (reference
//! counts, no copies) plus a copy of at most one head, so the lock is held for microseconds and
//! formatting happens after it is released. A writer that changes a block replaces it; readers
//! keep the old one.
//!
//! Names are found by hash in a sharded index, so no single table ever grows by more than a
//! small step, and are kept sorted in a B-tree for `get *`, which reads in steps from a cursor.
//! Every byte held is counted ([`Store::memory_bytes`]) and can be capped
//! ([`Store::set_memory_limit`]).

use crate::codec::Block;
use std::collections::hash_map::{Entry, RandomState};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::ops::{Bound, RangeInclusive};
use std::sync::Arc;

/// Points sealed at a time when the head fills, as one segment of the newest block: few, so
/// that a busy series' head (kept uncompressed for cheap appends) stays small too.
pub const BLOCK_POINTS: usize = 128;
/// Most points in a block made by merging late points into a sealed one.
const MERGED_POINTS: usize = 1024;
/// Most points in a block that seals are appended to: larger, since appending costs only the
/// new points' encoding, and each block costs about 64 bytes of its own.
const SEALED_MOST: usize = 4096;
/// Newest points kept in the head after sealing, for points that arrive a little late: the
/// least, for series written in order.
const SLACK_LEAST: usize = 4;
/// The most: series written by connections that interleave their timestamps earn a larger
/// slack (twice the lag of a point that lands just behind the head), so that a lagging
/// connection's points still go to the head rather than into a sealed block.
const SLACK_MOST: usize = 2048;
/// Seals without a point just behind the head after which the slack halves again.
const SLACK_QUIET_SEALS: u8 = 8;
/// A head grows by doubling up to this many points, then to its most at once.
const SMALL_HEAD: usize = 64;
/// Points that are not a series' newest wait in its late list, and are merged into the head
/// and the blocks they belong to once there are this many (or sooner; see the module docs):
/// one pass over the head and one encode per block touched per merge, rather than per point,
/// whatever the order of writes.
const LATE_MOST: usize = 1024;
/// Points one merge of a late list may decode from blocks (at least one block): about 3 ms of
/// work, so a put that fills a list of scattered late points holds the lock no longer.
const MERGE_BUDGET: usize = 1 << 16;
/// Index shards: growing one rehashes at most 1/64 of the names.
const SHARDS: usize = 64;
/// What one series costs besides its points: the slab slot, the name's allocation header,
/// the B-tree and index entries (estimated from their layouts).
const SERIES_BYTES: usize = size_of::<Option<Series>>() + 16 + 32 + 24;
/// What one block costs besides [`Block::heap_bytes`]: its place in the series' list.
const BLOCK_BYTES: usize = size_of::<Sealed>();

/// A block, shared with snapshots (cloning it only counts a reference).
type Sealed = Block;

/// Merges sorted `new` into sorted `points` (both without repeated timestamps), in place; at a
/// timestamp both have, `new`'s point wins. Only the points from the earliest of `new` on are
/// moved, back to front. Returns how many of `new` replaced a point.
fn merge_in_place(points: &mut Vec<(i64, f64)>, new: &[(i64, f64)]) -> usize {
    let Some(&(first, _)) = new.first() else {
        return 0;
    };
    let start = points.partition_point(|&(t, _)| t < first);
    let (mut replaced, mut i, mut j) = (0, start, 0);
    while i < points.len() && j < new.len() {
        let (a, b) = (points[i].0, new[j].0);
        replaced += usize::from(a == b);
        i += usize::from(a <= b);
        j += usize::from(b <= a);
    }
    let old_len = points.len();
    points.resize(old_len + new.len() - replaced, (0, 0.0));
    let (mut i, mut j, mut w) = (old_len, new.len(), points.len());
    while j > 0 {
        w -= 1;
        if i > start && points[i - 1].0 > new[j - 1].0 {
            points[w] = points[i - 1];
            i -= 1;
        } else {
            i -= usize::from(i > start && points[i - 1].0 == new[j - 1].0);
            points[w] = new[j - 1];
            j -= 1;
        }
    }
    debug_assert_eq!(w, i);
    replaced
}

/// Sorts points by timestamp and keeps, of several at one timestamp, the one that came last
/// (the sort is stable); returns how many it dropped.
fn keep_latest(points: &mut Vec<(i64, f64)>) -> usize {
    points.sort_by_key(|&(t, _)| t);
    let before = points.len();
    points.reverse();
    points.dedup_by_key(|&mut (t, _)| t);
    points.reverse();
    before - points.len()
}

/// About how many of `len` points spread evenly from `first` to `last` are after `timestamp`.
fn points_after(first: i64, last: i64, len: usize, timestamp: i64) -> usize {
    let span = last.abs_diff(first).max(1) as f64;
    (last.abs_diff(timestamp) as f64 / span * len as f64) as usize
}

fn clamp_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Where `timestamp` is in sorted `points`, as [`slice::binary_search`] answers, searching back
/// from the end in growing steps: points arrive in order or a little late, so this touches the
/// few cache lines at the end of a list rather than the log2(n) spread over it.
fn search_from_end(points: &[(i64, f64)], timestamp: i64) -> Result<usize, usize> {
    let mut high = points.len();
    let mut step = 1;
    let low = loop {
        if high == 0 {
            break 0;
        }
        let probe = high.saturating_sub(step);
        if points[probe].0 <= timestamp {
            break probe;
        }
        high = probe;
        step *= 2;
    };
    let window = &points[low..high];
    match window.binary_search_by_key(&timestamp, |&(t, _)| t) {
        Ok(at) => Ok(low + at),
        Err(at) => Err(low + at),
    }
}

/// All metrics. See the module docs.
#[derive(Debug, Default)]
pub struct Store {
    /// Name hash to slot, in shards chosen by hash bits that the shard's own table does not
    /// use. A name whose hash collides with another's (astronomically rare with a keyed hash)
    /// lives in `collisions`.
    shards: Vec<HashMap<u64, u32, BuildHasherDefault<Identity>>>,
    collisions: HashMap<Arc<str>, u32>,
    hasher: NameHasher,
    /// The series, by slot; freed slots are reused.
    slots: Vec<Option<Series>>,
    free: Vec<u32>,
    /// Every name, sorted, for `get *` and the background sweeps.
    names: BTreeMap<Arc<str>, u32>,
    points: usize,
    memory: usize,
    memory_limit: Option<usize>,
    /// Slots of series that have had late points since the last [`merge_late`](Store::merge_late),
    /// oldest first.
    late_slots: VecDeque<u32>,
}

/// A put refused because the store holds its memory limit: it would add a point or a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryFull;

/// The store's keyed hash of metric names (SipHash with keys of its own, for resistance to
/// hash flooding). A clone hashes as the store does, so that callers can hash names before
/// they take the store's lock ([`Store::put_hashed`]).
#[derive(Debug, Clone, Default)]
pub struct NameHasher(RandomState);

impl NameHasher {
    /// The hash the store files `name` under.
    pub fn hash(&self, name: &str) -> u64 {
        self.0.hash_one(name)
    }
}

/// A hasher for keys that are already hashes.
#[derive(Debug, Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else rather than panic.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Store {
            shards: (0..SHARDS).map(|_| HashMap::default()).collect(),
            ..Store::default()
        }
    }

    /// Caps [`memory_bytes`](Store::memory_bytes): at or over it, puts that would add a point
    /// or a metric are refused; overwrites, reads and expiry go on. `None` removes the cap.
    pub fn set_memory_limit(&mut self, limit: Option<usize>) {
        self.memory_limit = limit;
    }

    /// How many points are stored.
    pub fn points(&self) -> usize {
        self.points
    }

    /// How many metrics are stored.
    pub fn metrics(&self) -> usize {
        self.names.len()
    }

    /// Bytes the store holds for its data: compressed blocks, heads, names and indexes (not the
    /// allocator's own overhead).
    pub fn memory_bytes(&self) -> usize {
        self.memory + self.slots.capacity() * size_of::<Option<Series>>()
    }

    fn full(&self) -> bool {
        self.memory_limit
            .is_some_and(|limit| self.memory_bytes() >= limit)
    }

    fn hash(&self, name: &str) -> u64 {
        self.hasher.hash(name)
    }

    fn shard(hash: u64) -> usize {
        (hash >> 40) as usize % SHARDS
    }

    fn slot_of(&self, name: &str, hash: u64) -> Option<u32> {
        let slot = *self.shards[Self::shard(hash)].get(&hash)?;
        match &self.slots[slot as usize] {
            Some(series) if &*series.name == name => Some(slot),
            _ => self.collisions.get(name).copied(),
        }
    }

    /// Stores `value` for `metric` at `timestamp`, replacing any value already at that second.
    ///
    /// # Errors
    /// [`MemoryFull`] when the memory limit is reached and the put is not an overwrite.
    pub fn put(&mut self, metric: &str, value: f64, timestamp: i64) -> Result<(), MemoryFull> {
        self.put_hashed(metric, self.hash(metric), value, timestamp)
    }

    /// The hasher of metric names: a clone hashes as the store does.
    pub fn name_hasher(&self) -> NameHasher {
        self.hasher.clone()
    }

    /// [`put`](Store::put) with the name's hash from [`name_hasher`](Store::name_hasher),
    /// computed before the caller took the lock.
    ///
    /// # Errors
    /// As [`put`](Store::put).
    pub fn put_hashed(
        &mut self,
        metric: &str,
        hash: u64,
        value: f64,
        timestamp: i64,
    ) -> Result<(), MemoryFull> {
        debug_assert_eq!(hash, self.hash(metric), "a hash from another hasher");
        let full = self.full();
        let slot = match self.slot_of(metric, hash) {
            Some(slot) => slot,
            None if full => return Err(MemoryFull),
            None => self.add_series(metric, hash),
        };
        let Some(series) = self.slots[slot as usize].as_mut() else {
            return Err(MemoryFull);
        };
        if full && !series.contains(timestamp) {
            return Err(MemoryFull);
        }
        let (before, len) = (series.bytes(), series.len);
        let fresh = series.late.is_empty();
        series.insert(timestamp, value);
        if fresh && !series.late.is_empty() {
            self.late_slots.push_back(slot);
        }
        self.memory = self.memory + series.bytes() - before;
        self.points = self.points + series.len - len;
        Ok(())
    }

    /// Merges every series' late points into their heads and blocks, so that
    /// [`points`](Store::points) is exact: a late point that replaced another is known only
    /// then.
    pub fn merge_late(&mut self) {
        while self.merge_late_steps(usize::MAX, usize::MAX) > 0 {}
    }

    /// Merges the late points of at most `most` series, those listed longest first (the server
    /// does this in steps about once a second; puts merge full lists sooner). Returns how many
    /// series it merged; 0 when none wait.
    pub fn merge_late_some(&mut self, most: usize) -> usize {
        self.merge_late_steps(most, MERGE_BUDGET)
    }

    /// [`merge_late_some`](Store::merge_late_some) with a budget of decoded points per series;
    /// a series with points left over stays listed.
    fn merge_late_steps(&mut self, most: usize, budget: usize) -> usize {
        let (mut merged, mut again) = (0, Vec::new());
        while merged < most {
            let Some(slot) = self.late_slots.pop_front() else {
                break;
            };
            let Some(series) = self.slots[slot as usize].as_mut() else {
                continue;
            };
            if series.late.is_empty() {
                continue;
            }
            let (before, len) = (series.bytes(), series.len);
            series.merge_late_within(budget);
            if series.late.is_empty() {
                // The list gives its allocation back: most series are never late again.
                series.late = Vec::new();
            } else {
                again.push(slot);
            }
            self.memory = self.memory + series.bytes() - before;
            self.points = self.points + series.len - len;
            merged += 1;
        }
        self.late_slots.extend(again);
        merged
    }

    /// About how many series have late points waiting (a series may be listed twice).
    pub fn late_waiting(&self) -> usize {
        self.late_slots.len()
    }

    fn add_series(&mut self, metric: &str, hash: u64) -> u32 {
        let name: Arc<str> = Arc::from(metric);
        let series = Series::new(Arc::clone(&name));
        self.memory += series.bytes();
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(series);
                slot
            }
            None => {
                self.slots.push(Some(series));
                (self.slots.len() - 1) as u32
            }
        };
        match self.shards[Self::shard(hash)].entry(hash) {
            Entry::Occupied(_) => {
                self.collisions.insert(Arc::clone(&name), slot);
            }
            Entry::Vacant(place) => {
                place.insert(slot);
            }
        }
        self.names.insert(name, slot);
        slot
    }

    fn remove_series(&mut self, slot: u32) {
        let Some(series) = self.slots[slot as usize].take() else {
            return;
        };
        self.memory -= series.bytes();
        self.points -= series.len;
        self.names.remove(&series.name);
        if self.collisions.remove(&series.name).is_none() {
            let hash = self.hash(&series.name);
            let shard = &mut self.shards[Self::shard(hash)];
            shard.remove(&hash);
            // A name that collided with this one takes its place in the shard.
            let heir = self
                .collisions
                .iter()
                .find(|(name, _)| self.hasher.hash(name) == hash)
                .map(|(name, &slot)| (Arc::clone(name), slot));
            if let Some((name, heir)) = heir {
                self.collisions.remove(&name);
                shard.insert(hash, heir);
            }
        }
        self.free.push(slot);
    }

    /// The points of `metric` with timestamps in `range`, or `None` for an unknown metric.
    /// Costs a reference count per block in range and a copy of the head's points in range.
    pub fn read(&self, metric: &str, range: RangeInclusive<i64>) -> Option<SeriesSnapshot> {
        let slot = self.slot_of(metric, self.hash(metric))?;
        let series = self.slots[slot as usize].as_ref()?;
        Some(series.snapshot(range))
    }

    /// The next series after `after` in name order (from the first with `None`) that have
    /// points in `range`, until about `budget` points or series have been taken: one step of a
    /// `get *`, so the lock is held briefly however large the store. An empty result means the
    /// end.
    pub fn read_after(
        &self,
        after: Option<&str>,
        range: RangeInclusive<i64>,
        budget: usize,
    ) -> Vec<SeriesSnapshot> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut taken = Vec::new();
        let mut cost = 0;
        for (_, &slot) in self.names.range::<str, _>((start, Bound::Unbounded)) {
            let Some(series) = self.slots[slot as usize].as_ref() else {
                continue;
            };
            // Visiting a series costs something even when it has nothing in range.
            cost += 1 + series.len / BLOCK_POINTS.max(1);
            let snapshot = series.snapshot(range.clone());
            if snapshot.is_empty() {
                if cost >= budget {
                    // Nothing taken yet, but keep the step short: return the cursor's place
                    // as an empty snapshot of this series.
                    taken.push(snapshot);
                    break;
                }
                continue;
            }
            cost += snapshot.len_estimate();
            taken.push(snapshot);
            if cost >= budget {
                break;
            }
        }
        taken
    }

    /// Removes points with timestamps before `cutoff` from the series after `after` in name
    /// order, visiting at most `budget` series, and drops series left empty. Returns how many
    /// points went and where to go on from (`None`: the sweep is done).
    pub fn expire_after(
        &mut self,
        after: Option<&str>,
        cutoff: i64,
        budget: usize,
    ) -> (usize, Option<Arc<str>>) {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let visit: Vec<(Arc<str>, u32)> = self
            .names
            .range::<str, _>((start, Bound::Unbounded))
            .take(budget.max(1))
            .map(|(name, &slot)| (Arc::clone(name), slot))
            .collect();
        let next = (visit.len() == budget.max(1))
            .then(|| visit.last().map(|(name, _)| Arc::clone(name)))
            .flatten();
        let mut removed = 0;
        for (_, slot) in visit {
            let Some(series) = self.slots[slot as usize].as_mut() else {
                continue;
            };
            let (before, len) = (series.bytes(), series.len);
            series.expire_before(cutoff);
            let after = series.bytes();
            let empty = series.len == 0;
            self.memory = self.memory + after - before;
            // Late points merged on the way may have replaced others: count by what is left.
            let gone = len - series.len;
            self.points -= gone;
            removed += gone;
            if empty {
                self.remove_series(slot);
            }
        }
        (removed, next)
    }

    /// Removes every point before `cutoff` at once; for tests and start-up.
    #[cfg(test)]
    pub fn expire_before(&mut self, cutoff: i64) -> usize {
        let (mut removed, mut cursor) = (0, None);
        loop {
            let (gone, next) = self.expire_after(cursor.as_deref(), cutoff, 1000);
            removed += gone;
            match next {
                Some(next) => cursor = Some(next),
                None => return removed,
            }
        }
    }
}

/// One metric's points. See the module docs.
#[derive(Debug)]
struct Series {
    name: Arc<str>,
    /// Sealed blocks, sorted, not overlapping, all older than the head.
    blocks: Vec<Sealed>,
    /// The newest points, sorted by timestamp.
    head: Vec<(i64, f64)>,
    /// The newest timestamp of the head and blocks, when either holds a point, and the head's
    /// oldest, when it holds one: kept here, in the struct a put reads anyway, rather than
    /// read from the head, whose ends another core last wrote when connections share a series
    /// (and whose first line has long left the cache when many series are busy).
    newest: i64,
    head_first: i64,
    /// Points kept in the head after a seal (see [`SLACK_MOST`]), the seals since a point
    /// landed just behind the head, and the farthest from the head's end a point was put since
    /// the slack last changed.
    slack: u16,
    quiet_seals: u8,
    reach: u16,
    len: usize,
    /// Bytes of the blocks, with their per-block overhead.
    block_bytes: usize,
    /// Points older than the newest, in the order they came (a timestamp may repeat: the
    /// later wins), not yet merged into the head or their blocks; they take precedence over a
    /// head's or block's point at the same timestamp. Each counts in `len` until the merge
    /// finds it replaced one.
    late: Vec<(i64, f64)>,
}

impl Series {
    fn new(name: Arc<str>) -> Self {
        Series {
            name,
            blocks: Vec::new(),
            head: Vec::new(),
            newest: 0,
            head_first: 0,
            slack: SLACK_LEAST as u16,
            quiet_seals: 0,
            reach: 0,
            len: 0,
            block_bytes: 0,
            late: Vec::new(),
        }
    }

    fn bytes(&self) -> usize {
        SERIES_BYTES
            + self.name.len()
            + self.head.capacity() * size_of::<(i64, f64)>()
            + self.blocks.capacity() * size_of::<Sealed>()
            + self.late.capacity() * size_of::<(i64, f64)>()
            + self.block_bytes
    }

    /// The most points the head holds before its oldest are sealed.
    fn head_most(&self) -> usize {
        BLOCK_POINTS + usize::from(self.slack)
    }

    /// The newest timestamp of the head and blocks: late points are all older.
    fn newest(&self) -> Option<i64> {
        let newest = (!self.head.is_empty() || !self.blocks.is_empty()).then_some(self.newest);
        debug_assert_eq!(
            newest,
            self.head.last().map(|&(t, _)| t).or(self.sealed_until())
        );
        newest
    }

    /// The head's oldest timestamp.
    fn head_first(&self) -> Option<i64> {
        let first = (!self.head.is_empty()).then_some(self.head_first);
        debug_assert_eq!(first, self.head.first().map(|&(t, _)| t));
        first
    }

    /// Notes the head's oldest timestamp after a change that may have moved it.
    fn head_changed(&mut self) {
        if let Some(&(first, _)) = self.head.first() {
            self.head_first = first;
        }
    }

    /// The newest sealed timestamp: points after it belong in the head.
    fn sealed_until(&self) -> Option<i64> {
        self.blocks.last().map(|b| b.last())
    }

    /// The block a timestamp at or before [`sealed_until`](Series::sealed_until) belongs in:
    /// the one covering it, or a neighbour of the gap it falls in.
    fn block_for(&self, timestamp: i64) -> usize {
        let at = self.blocks.partition_point(|b| b.last() < timestamp);
        let at = at.min(self.blocks.len() - 1);
        if at > 0
            && self.blocks[at].first() > timestamp
            && self.blocks[at - 1].len() < self.blocks[at].len()
        {
            at - 1
        } else {
            at
        }
    }

    fn contains(&self, timestamp: i64) -> bool {
        if self.late.iter().any(|&(t, _)| t == timestamp) {
            return true;
        }
        match self.sealed_until() {
            Some(until) if timestamp <= until => {
                let block = &self.blocks[self.block_for(timestamp)];
                block.first() <= timestamp && block.iter().any(|(t, _)| t == timestamp)
            }
            _ => search_from_end(&self.head, timestamp).is_ok(),
        }
    }

    /// Stores a point. Appends go to the head, and a new value for the newest point replaces
    /// it; any other point waits in the late list (counted as new until a merge finds it
    /// replaced one), so a write never shifts the head or decodes a block.
    fn insert(&mut self, timestamp: i64, value: f64) {
        let newest = self.newest();
        match newest {
            Some(newest) if timestamp == newest && !self.head.is_empty() => {
                // Late points are all older than the head's newest: none can override this.
                if let Some(last) = self.head.last_mut() {
                    last.1 = value;
                }
            }
            Some(newest) if timestamp < newest || (timestamp == newest && self.head.is_empty()) => {
                if let Some(first) = self.head_first().filter(|&first| first <= timestamp) {
                    // In the head: note how far back it reached (the slack must cover that).
                    // With no late point waiting (none could override it), a value there is
                    // replaced in place; otherwise the reach is estimated from the head's span
                    // rather than searched for, as interleaving writers do this for most points.
                    let lag = if self.late.is_empty() {
                        let found = search_from_end(&self.head, timestamp);
                        if let Ok(at) = found {
                            self.head[at].1 = value;
                            self.reach = self.reach.max(clamp_u16(self.head.len() - at));
                            return;
                        }
                        self.head.len() - found.unwrap_or_else(|at| at)
                    } else {
                        points_after(first, newest, self.head.len(), timestamp)
                    };
                    self.reach = self.reach.max(clamp_u16(lag));
                } else {
                    self.grow_slack_for(timestamp);
                }
                self.late.push((timestamp, value));
                self.len += 1;
                if self.late.len() >= LATE_MOST {
                    self.merge_late_within(MERGE_BUDGET);
                }
            }
            _ => {
                self.append(timestamp, value);
                self.len += 1;
            }
        }
    }

    /// For a point older than the head: if it is among the newest sealed ones (writers
    /// interleaving with a lag), grows the slack to cover that lag, at most once per seal so
    /// that a burst counts once, and moves the newest blocks back into the head if they fit in
    /// it: one decode now, rather than the same block decoded and encoded again for each batch
    /// of late points until the larger head catches up.
    fn grow_slack_for(&mut self, timestamp: i64) {
        if self.quiet_seals == 0 {
            return;
        }
        let Some(behind) = self.sealed_behind(timestamp) else {
            return;
        };
        self.quiet_seals = 0;
        self.reach = 0;
        // The points newer than this one: the slack must be larger.
        let lag = self.head.len() + behind + 1;
        if lag > SLACK_MOST {
            return;
        }
        // Twice the lag: lags wander, and each time one outgrows the slack costs a merge.
        let grown = (2 * lag).next_power_of_two().min(SLACK_MOST) as u16;
        if grown <= self.slack {
            return;
        }
        self.slack = grown;
        let mut points = Vec::new();
        while let Some(block) = self.blocks.last() {
            if timestamp > block.last() || points.len() + block.len() > usize::from(self.slack) {
                break;
            }
            let mut older = Vec::with_capacity(block.len() + points.len());
            block.decode_into(&mut older);
            older.extend_from_slice(&points);
            points = older;
            self.block_bytes -= block.heap_bytes() + BLOCK_BYTES;
            self.blocks.pop();
        }
        if !points.is_empty() {
            let room = self.head_most() + 1;
            points.reserve(room.saturating_sub(points.len()).max(self.head.len()));
            points.extend_from_slice(&self.head);
            self.head = points;
            self.head_changed();
        }
    }

    /// About how many sealed points are newer than `timestamp`, if it is sealed and among the
    /// newest [`SLACK_MOST`] sealed ones (interpolated within its block by timestamp).
    fn sealed_behind(&self, timestamp: i64) -> Option<usize> {
        let mut behind = 0;
        for block in self.blocks.iter().rev() {
            if timestamp > block.last() {
                return (behind > 0).then_some(behind);
            }
            if timestamp >= block.first() {
                let within = points_after(block.first(), block.last(), block.len(), timestamp);
                return Some(behind + within).filter(|&n| n <= SLACK_MOST);
            }
            behind += block.len();
            if behind > SLACK_MOST {
                return None;
            }
        }
        None
    }

    /// Merges the whole late list; see [`merge_late_within`](Series::merge_late_within).
    fn merge_late(&mut self) {
        self.merge_late_within(usize::MAX);
    }

    /// Merges the late list into the head and the blocks it belongs in: one pass over the head
    /// and one decode and encode per block touched, blocks only until about `budget` points
    /// have been decoded (at least one block), so that no put holds the lock for long however
    /// scattered the late points; the rest stay in the list. Points that replaced another (in
    /// the list itself, the head or a block) are taken off `len` here.
    fn merge_late_within(&mut self, budget: usize) {
        let mut points = std::mem::take(&mut self.late);
        let mut replaced = keep_latest(&mut points);
        let in_blocks = match self.sealed_until() {
            Some(until) => points.partition_point(|&(t, _)| t <= until),
            None => 0,
        };
        let (mut rest, recent) = points.split_at(in_blocks);
        let mut decoded = 0;
        while let Some(&(first, _)) = rest.first() {
            let at = self.block_for(first);
            if decoded > 0 && decoded + self.blocks[at].len() > budget {
                break;
            }
            decoded += self.blocks[at].len();
            // This block takes the late points up to the start of the next block.
            let end = match self.blocks.get(at + 1) {
                Some(next) => rest.partition_point(|&(t, _)| t < next.first()),
                None => rest.len(),
            };
            let (mine, others) = rest.split_at(end.max(1));
            replaced += self.merge_into(at, mine);
            rest = others;
        }
        if !recent.is_empty() {
            let room = self.head_most() + 1;
            let needed = self.head.len() + recent.len();
            self.head.reserve_exact(room.max(needed) - self.head.len());
            replaced += merge_in_place(&mut self.head, recent);
            self.head_changed();
        }
        self.len -= replaced;
        // What the budget left waits for the next merge; `late` is empty here (taken above).
        self.late.extend_from_slice(rest);
        while self.head.len() > self.head_most() {
            self.seal();
        }
    }

    /// Merges sorted `points` into block `at`; returns how many replaced a point there.
    fn merge_into(&mut self, at: usize, points: &[(i64, f64)]) -> usize {
        // Only the block's segments from the earliest late point on are coded again: writers
        // that lag land in its newest ones. The merge moves only points from there on.
        let first = points.first().map_or(i64::MAX, |&(t, _)| t);
        let (kept, mut all) = self.blocks[at].split_segments(first);
        all.reserve(points.len());
        let replaced = merge_in_place(&mut all, points);
        let blocks = if kept.len() > 0 && all.len() <= SEALED_MOST {
            vec![kept.append(&all[kept.len()..])]
        } else {
            // A full block is coded again whole, in even parts, so that one point past it
            // does not make a block of its own.
            let parts = all.len().div_ceil(MERGED_POINTS).max(1);
            let size = all.len().div_ceil(parts).max(1);
            all.chunks(size).map(Block::encode).collect()
        };
        self.replace_block(at, blocks);
        replaced
    }

    /// Appends a point newer than every other.
    fn append(&mut self, timestamp: i64, value: f64) {
        if self.head.len() == self.head.capacity() {
            // Small series stay small (doubling from 4); a busy one's head takes its most at
            // once and keeps it, so heads of one size are freed and reused as slacks change.
            let len = self.head.len();
            let grown = if len < SMALL_HEAD {
                (len * 2).max(4)
            } else {
                let room = self.head_most() + 1;
                // Past its room only while a head drains after an unseal: a block at a time.
                if len < room {
                    room
                } else {
                    len + BLOCK_POINTS
                }
            };
            self.head.reserve_exact(grown - len);
        }
        self.head.push((timestamp, value));
        self.newest = timestamp;
        if self.head.len() == 1 {
            self.head_first = timestamp;
        }
        if self.head.len() > self.head_most() {
            let sealing = self.head[0].0..=self.head[BLOCK_POINTS - 1].0;
            if self.late.iter().any(|(t, _)| sealing.contains(t)) {
                // Late points belong among those about to be sealed.
                self.merge_late_within(MERGE_BUDGET);
            } else {
                self.seal();
            }
        }
    }

    /// Moves the head's oldest [`BLOCK_POINTS`] into the newest block, as a segment, or into a
    /// new block when that one is full.
    fn seal(&mut self) {
        let points = &self.head[..BLOCK_POINTS];
        match self.blocks.last_mut() {
            // Sealed points join the newest block until it is full: one block's overhead per
            // SEALED_MOST points, not per seal.
            Some(last) if last.len() + BLOCK_POINTS <= SEALED_MOST => {
                let grown = last.append(points);
                self.block_bytes = self.block_bytes + grown.heap_bytes() - last.heap_bytes();
                *last = grown;
            }
            _ => {
                let block = Block::encode(points);
                self.block_bytes += block.heap_bytes() + BLOCK_BYTES;
                self.blocks.push(block);
            }
        }
        self.head.drain(..BLOCK_POINTS);
        self.head_changed();
        self.quiet_seals = self.quiet_seals.saturating_add(1);
        if self.quiet_seals >= SLACK_QUIET_SEALS {
            // Halves only if points reached back a quarter of that at most lately: lags
            // wander, and a slack that halves too soon costs merges until it grows again.
            let half = (self.slack / 2).max(SLACK_LEAST as u16);
            if half >= self.reach.saturating_mul(4) {
                self.slack = half;
            }
            self.quiet_seals = 0;
            self.reach = 0;
        }
        // A head that has outgrown its slack gives the room back.
        let most = self.head_most() + 1;
        if self.head.capacity() > 2 * most {
            self.head.shrink_to(most);
        }
    }

    /// Puts `blocks` where block `at` was (none: it is removed).
    fn replace_block(&mut self, at: usize, blocks: Vec<Block>) {
        let old = self.blocks[at].heap_bytes() + BLOCK_BYTES;
        self.block_bytes -= old;
        for block in &blocks {
            self.block_bytes += block.heap_bytes() + BLOCK_BYTES;
        }
        self.blocks.splice(at..=at, blocks);
    }

    fn expire_before(&mut self, cutoff: i64) -> usize {
        if !self.late.is_empty() {
            self.merge_late();
        }
        let whole = self.blocks.partition_point(|b| b.last() < cutoff);
        let mut removed = 0;
        for block in self.blocks.drain(..whole) {
            removed += block.len();
            self.block_bytes -= block.heap_bytes() + BLOCK_BYTES;
        }
        if self.blocks.first().is_some_and(|b| b.first() < cutoff) {
            let mut points = Vec::with_capacity(self.blocks[0].len());
            self.blocks[0].decode_into(&mut points);
            let keep = points.partition_point(|&(t, _)| t < cutoff);
            removed += keep;
            let rest = &points[keep..];
            let replaced = if rest.is_empty() {
                Vec::new()
            } else {
                vec![Block::encode(rest)]
            };
            self.replace_block(0, replaced);
        }
        let head_gone = self.head.partition_point(|&(t, _)| t < cutoff);
        self.head.drain(..head_gone);
        self.head_changed();
        removed += head_gone;
        if self.head.is_empty() {
            self.head = Vec::new();
        }
        if self.blocks.is_empty() {
            self.blocks = Vec::new();
        }
        self.len -= removed;
        removed
    }

    fn snapshot(&self, range: RangeInclusive<i64>) -> SeriesSnapshot {
        let (from, to) = (*range.start(), *range.end());
        let in_range = |points: &[(i64, f64)]| {
            let start = points.partition_point(|&(t, _)| t < from);
            let end = points.partition_point(|&(t, _)| t <= to);
            points[start..end.max(start)].to_vec()
        };
        let (blocks, late, head) = if from > to {
            (Vec::new(), Vec::new(), Vec::new())
        } else {
            let start = self.blocks.partition_point(|b| b.last() < from);
            let end = self.blocks.partition_point(|b| b.first() <= to);
            (
                self.blocks[start..end.max(start)].to_vec(),
                {
                    let mut late: Vec<_> = self
                        .late
                        .iter()
                        .copied()
                        .filter(|&(t, _)| from <= t && t <= to)
                        .collect();
                    keep_latest(&mut late);
                    late
                },
                in_range(&self.head),
            )
        };
        SeriesSnapshot {
            name: Arc::clone(&self.name),
            blocks,
            late,
            head,
            from,
            to,
        }
    }
}

/// One metric's points in a time range, owned: taken under the lock, read after it.
#[derive(Debug, Clone)]
pub struct SeriesSnapshot {
    name: Arc<str>,
    blocks: Vec<Sealed>,
    late: Vec<(i64, f64)>,
    head: Vec<(i64, f64)>,
    from: i64,
    to: i64,
}

impl SeriesSnapshot {
    /// The metric's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether no point is in range.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.late.is_empty() && self.head.is_empty()
    }

    /// Points held, counting whole blocks (some of their points may be out of range).
    pub fn len_estimate(&self) -> usize {
        self.blocks.iter().map(|b| b.len()).sum::<usize>() + self.late.len() + self.head.len()
    }

    /// The points in range as `(timestamp, value)`, oldest first.
    pub fn points(&self) -> impl Iterator<Item = (i64, f64)> + '_ {
        let (from, to) = (self.from, self.to);
        let sealed = self
            .blocks
            .iter()
            .flat_map(|block| block.iter())
            .filter(move |&(t, _)| from <= t && t <= to);
        Overlaid {
            under: sealed.chain(self.head.iter().copied()).peekable(),
            over: self.late.iter().copied().peekable(),
        }
    }
}

/// Two sorted point streams as one; at a timestamp both have, `over`'s point wins.
struct Overlaid<A: Iterator<Item = (i64, f64)>, B: Iterator<Item = (i64, f64)>> {
    under: std::iter::Peekable<A>,
    over: std::iter::Peekable<B>,
}

impl<A, B> Iterator for Overlaid<A, B>
where
    A: Iterator<Item = (i64, f64)>,
    B: Iterator<Item = (i64, f64)>,
{
    type Item = (i64, f64);

    fn next(&mut self) -> Option<(i64, f64)> {
        let Some(&(late, _)) = self.over.peek() else {
            return self.under.next();
        };
        match self.under.peek() {
            Some(&(t, _)) if t < late => self.under.next(),
            Some(&(t, _)) if t == late => {
                self.under.next();
                self.over.next()
            }
            _ => self.over.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const ALL: RangeInclusive<i64> = i64::MIN..=i64::MAX;

    fn put(store: &mut Store, metric: &str, value: f64, timestamp: i64) {
        store.put(metric, value, timestamp).unwrap();
    }

    fn all(store: &Store) -> Vec<(String, f64, i64)> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let step = store.read_after(cursor.as_deref(), ALL, 100);
            let Some(last) = step.last() else {
                return out;
            };
            cursor = Some(last.name().to_string());
            for series in &step {
                for (t, v) in series.points() {
                    out.push((series.name().to_string(), v, t));
                }
            }
        }
    }

    fn series(store: &Store, metric: &str) -> Vec<(i64, f64)> {
        store
            .read(metric, ALL)
            .map(|s| s.points().collect())
            .unwrap_or_default()
    }

    fn timestamps(store: &Store, metric: &str) -> Vec<i64> {
        series(store, metric).into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn put_then_get_returns_points_sorted() {
        let mut store = Store::new();
        put(&mut store, "b", 2.0, 20);
        put(&mut store, "a", 1.0, 10);
        put(&mut store, "b", 1.5, 10);
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
        put(&mut store, "m", 1.0, 5);
        put(&mut store, "m", 2.0, 5);
        assert_eq!(all(&store), vec![("m".into(), 2.0, 5)]);
        assert_eq!(store.points(), 1);
    }

    #[test]
    fn unknown_metric_is_empty_and_not_created() {
        let store = Store::new();
        assert!(store.read("x", ALL).is_none());
        assert_eq!(store.metrics(), 0);
    }

    /// Checks the series against a plain sorted map after every kind of insert.
    fn check_against_model(timestamps: impl IntoIterator<Item = i64>) {
        let mut store = Store::new();
        let mut model = BTreeMap::new();
        for (i, ts) in timestamps.into_iter().enumerate() {
            let value = i as f64;
            model.insert(ts, value);
            put(&mut store, "m", value, ts);
        }
        let got = series(&store, "m");
        assert_eq!(got, model.into_iter().collect::<Vec<_>>());
        store.merge_late();
        assert_eq!(store.points(), got.len());
    }

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed
    }

    #[test]
    fn appends_in_order_fill_blocks() {
        check_against_model(0..5000);
        check_against_model((0..3000).map(|t| t * 1_000_000_000));
    }

    #[test]
    fn out_of_order_and_overwrites_stay_sorted() {
        check_against_model((0..5000).rev());
        let mut seed = 12345u64;
        check_against_model((0..20_000).map(|_| (lcg(&mut seed) >> 33) as i64 % 7000));
    }

    #[test]
    fn extreme_timestamps_stay_exact() {
        check_against_model([i64::MAX, i64::MIN, 0, -1, 1, i64::MAX - 1, i64::MIN + 1, 0]);
        let mut seed = 99u64;
        check_against_model((0..3000).map(|_| lcg(&mut seed) as i64));
    }

    #[test]
    fn snapshot_is_unchanged_by_later_writes() {
        let mut store = Store::new();
        for t in 0..2000 {
            put(&mut store, "m", 1.0, t);
        }
        let snapshot = store.read("m", ALL).unwrap();
        put(&mut store, "m", 9.0, 5);
        put(&mut store, "m", 9.0, 5000);
        put(&mut store, "n", 9.0, 1);
        assert_eq!(snapshot.points().count(), 2000);
        assert!(snapshot.points().all(|(_, v)| v == 1.0));
        assert_eq!(timestamps(&store, "m").len(), 2001);
    }

    #[test]
    fn expire_removes_old_points_and_empty_metrics() {
        let mut store = Store::new();
        for t in 0..3000 {
            put(&mut store, "m", 1.0, t);
        }
        put(&mut store, "old", 1.0, 5);
        assert_eq!(store.expire_before(2500), 2500 + 1);
        assert_eq!(timestamps(&store, "m"), (2500..3000).collect::<Vec<_>>());
        assert_eq!((store.points(), store.metrics()), (500, 1));
        put(&mut store, "m", 2.0, 10);
        assert_eq!(timestamps(&store, "m")[0], 10);
        assert!(store.read("old", ALL).is_none());
    }

    #[test]
    fn ranges_select_exactly_their_points() {
        let mut store = Store::new();
        for t in 0..2000 {
            put(&mut store, "m", t as f64, t * 10);
        }
        let range = |from, to| -> Vec<i64> {
            store
                .read("m", from..=to)
                .unwrap()
                .points()
                .map(|(t, _)| t)
                .collect()
        };
        assert_eq!(range(995, 1030), vec![1000, 1010, 1020, 1030]);
        assert_eq!(range(19_985, i64::MAX), vec![19_990]);
        assert_eq!(range(i64::MIN, 5), vec![0]);
        assert!(range(5, 9).is_empty());
        assert!(range(30, 20).is_empty());
        assert_eq!(range(i64::MIN, i64::MAX).len(), 2000);
    }

    #[test]
    fn read_after_walks_every_series_once_in_name_order() {
        let mut store = Store::new();
        for m in 0..500 {
            for t in 0..(m % 7) * 100 {
                put(&mut store, &format!("m{m:03}"), 1.0, t);
            }
        }
        let got = all(&store);
        let names: Vec<&str> = got.iter().map(|(m, _, _)| m.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(got.len(), store.points());
    }

    #[test]
    fn the_memory_limit_refuses_new_points_but_not_overwrites() {
        let mut store = Store::new();
        put(&mut store, "m", 1.0, 1);
        store.set_memory_limit(Some(store.memory_bytes()));
        assert_eq!(store.put("m", 2.0, 2), Err(MemoryFull));
        assert_eq!(store.put("n", 2.0, 2), Err(MemoryFull));
        assert_eq!(store.put("m", 3.0, 1), Ok(()));
        assert_eq!(series(&store, "m"), vec![(1, 3.0)]);
        store.set_memory_limit(None);
        assert_eq!(store.put("n", 2.0, 2), Ok(()));
    }

    #[test]
    fn accounting_matches_a_recount_and_returns_to_zero() {
        let mut store = Store::new();
        let mut seed = 7u64;
        for _ in 0..50_000 {
            let m = lcg(&mut seed) % 50;
            let t = (lcg(&mut seed) % 20_000) as i64;
            put(&mut store, &format!("m{m}"), 0.5, t);
        }
        assert_accounted(&store);
        store.expire_before(i64::MAX);
        assert_eq!((store.points(), store.metrics(), store.memory), (0, 0, 0));
    }

    /// `get *` as the server writes it.
    /// What `get *` prints for a model of the store.
    fn model_bytes(model: &BTreeMap<(String, i64), f64>) -> Vec<u8> {
        let mut out = Vec::new();
        for ((m, t), v) in model {
            crate::protocol::write_point(&mut out, m, *v, *t);
        }
        out
    }

    /// The store's memory count is what its series hold.
    /// `get *` reads as `model` does, before and after the late lists are merged; points and
    /// memory are counted exactly.
    fn assert_like_model(store: &mut Store, model: &BTreeMap<(String, i64), f64>, what: &str) {
        assert_eq!(get_star_bytes(store, ALL), model_bytes(model), "{what}");
        store.merge_late();
        assert_eq!(get_star_bytes(store, ALL), model_bytes(model), "{what}");
        assert_eq!(store.points(), model.len());
        assert_accounted(store);
    }

    fn assert_accounted(store: &Store) {
        let recount: usize = store.slots.iter().flatten().map(Series::bytes).sum();
        assert_eq!(store.memory, recount);
    }

    fn get_star_bytes(store: &Store, range: RangeInclusive<i64>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let step = store.read_after(cursor.as_deref(), range.clone(), 500);
            let Some(last) = step.last() else {
                return out;
            };
            cursor = Some(last.name().to_string());
            for series in &step {
                for (t, v) in series.points() {
                    crate::protocol::write_point(&mut out, series.name(), v, t);
                }
            }
        }
    }

    #[test]
    fn random_puts_overwrites_and_retention_match_a_plain_map() {
        let values = [
            0.0,
            -0.0,
            0.5,
            94.79799999999999,
            0.1 + 0.2,
            1e300,
            -2.5e-310,
            f64::MAX,
            f64::MIN_POSITIVE,
            12345678.0,
        ];
        for seed in 1..=6u64 {
            let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut store = Store::new();
            let mut model: BTreeMap<(String, i64), f64> = BTreeMap::new();
            let mut clock = 1_000_000i64;
            for step in 0..30_000 {
                let roll = lcg(&mut rng) >> 33;
                let metric = format!("s{}", roll % 40);
                match roll % 100 {
                    // Mostly appends near "now", some late and some far back, some overwrites.
                    0..=69 => {
                        clock += (roll % 3) as i64;
                        let t = clock - (lcg(&mut rng) % 40) as i64;
                        let v = values[(lcg(&mut rng) % 10) as usize] + step as f64;
                        put(&mut store, &metric, v, t);
                        model.insert((metric, t), v);
                    }
                    70..=84 => {
                        let t = (lcg(&mut rng) >> 1) as i64 % (clock + 1);
                        let v = values[(lcg(&mut rng) % 10) as usize];
                        put(&mut store, &metric, v, t);
                        model.insert((metric, t), v);
                    }
                    85..=94 => {
                        if let Some((&(ref m, t), _)) = model.range((metric.clone(), 0)..).next() {
                            let key = (m.clone(), t);
                            put(&mut store, &key.0, -1.0, key.1);
                            model.insert(key, -1.0);
                        }
                    }
                    95..=97 => store.merge_late(),
                    _ => {
                        let cutoff = (lcg(&mut rng) % clock as u64) as i64 / 2;
                        store.expire_before(cutoff);
                        model.retain(|&(_, t), _| t >= cutoff);
                    }
                }
            }
            assert_like_model(&mut store, &model, &format!("seed {seed}"));
        }
    }

    #[test]
    fn interleaving_writers_with_lags_match_a_plain_map() {
        // Writers own every k-th timestamp of a few series and run ahead of each other by up to
        // thousands of points, so heads grow and shrink their slack, blocks are unsealed,
        // segments are appended and late points land in the head and in blocks.
        for seed in 1..=4u64 {
            let mut rng = seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
            let mut store = Store::new();
            let mut model: BTreeMap<(String, i64), f64> = BTreeMap::new();
            let writers = 2 + (seed % 4) as i64;
            let mut next: Vec<i64> = (0..writers).collect();
            for step in 0..120_000u64 {
                let roll = lcg(&mut rng) >> 20;
                // A writer that is often chosen runs ahead; the lag drifts over time.
                let w = if roll % 8 < 5 {
                    (step / 7_000) as usize % next.len()
                } else {
                    (roll % writers as u64) as usize
                };
                let metric = format!("s{}", (roll >> 8) % 3);
                let t = next[w];
                next[w] += writers;
                let v = (roll % 1000) as f64 * 0.25;
                put(&mut store, &metric, v, t);
                model.insert((metric.clone(), t), v);
                if roll.is_multiple_of(97) {
                    // An overwrite somewhere in the last few thousand points.
                    let back = t - (lcg(&mut rng) % 4000) as i64;
                    put(&mut store, &metric, -1.0, back);
                    model.insert((metric, back), -1.0);
                }
                if step % 40_000 == 39_999 {
                    assert_eq!(
                        get_star_bytes(&store, ALL),
                        model_bytes(&model),
                        "seed {seed}"
                    );
                }
            }
            let cutoff = 50_000;
            store.expire_before(cutoff);
            model.retain(|&(_, t), _| t >= cutoff);
            assert_eq!(
                get_star_bytes(&store, ALL),
                model_bytes(&model),
                "seed {seed}"
            );
            store.merge_late();
            assert_eq!(store.points(), model.len());
            assert_accounted(&store);
        }
    }

    #[test]
    fn nanosecond_and_far_apart_timestamps_cost_little() {
        let mut store = Store::new();
        for i in 0..100_000i64 {
            put(
                &mut store,
                "ns",
                0.5,
                1_700_000_000_000_000_000 + i * 10_000_000_000,
            );
            put(&mut store, "far", 0.5, i64::MIN + i * (1 << 40));
        }
        let per_point = store.memory_bytes() as f64 / store.points() as f64;
        assert!(per_point < 8.0, "{per_point:.2} bytes per point");
    }

    #[test]
    fn searching_from_the_end_agrees_with_a_binary_search() {
        let mut seed = 7;
        for len in 0..70 {
            let mut points: Vec<(i64, f64)> = (0..len)
                .map(|_| ((lcg(&mut seed) % 200) as i64, 0.0))
                .collect();
            points.sort_by_key(|p| p.0);
            points.dedup_by_key(|p| p.0);
            for t in -1..=201 {
                let want = points.binary_search_by_key(&t, |p| p.0);
                assert_eq!(search_from_end(&points, t), want, "{t} in {points:?}");
            }
        }
    }

    #[test]
    fn interleaved_writers_earn_a_head_that_takes_their_points() {
        // Two writers, one 300 points behind the other, on one series: after the first late
        // points the slack grows until the lagging writer's points all land after the blocks.
        let mut store = Store::new();
        let interleave = |store: &mut Store, times: std::ops::Range<i64>| {
            for t in times {
                put(store, "m", 1.0, t + 300);
                put(store, "m", 2.0, t);
            }
        };
        interleave(&mut store, 0..10_000);
        store.merge_late();
        interleave(&mut store, 10_000..20_000);

        let one = store.slots[0].as_ref().unwrap();
        assert!(usize::from(one.slack) >= 300, "slack {}", one.slack);
        let sealed = one.sealed_until().unwrap();
        let behind = one.late.iter().filter(|&&(t, _)| t <= sealed).count();
        assert_eq!(behind, 0, "points behind the head");
        let want: Vec<(i64, f64)> = (0..20_300)
            .map(|t| (t, if t < 20_000 { 2.0 } else { 1.0 }))
            .collect();
        assert_eq!(series(&store, "m"), want);
        // Written in order again, the series gives the room back.
        for t in 20_300..40_000 {
            put(&mut store, "m", 3.0, t);
        }
        let one = store.slots[0].as_ref().unwrap();
        assert_eq!(usize::from(one.slack), SLACK_LEAST);
        assert!(one.head.capacity() <= 2 * (BLOCK_POINTS + SLACK_LEAST + 1));
    }

    #[test]
    fn merging_in_place_agrees_with_a_map() {
        let mut seed = 3;
        for round in 0..2000 {
            let mut set = |n: u64| {
                let mut v: Vec<(i64, f64)> = (0..lcg(&mut seed) % n)
                    .map(|_| ((lcg(&mut seed) % 60) as i64, lcg(&mut seed) as f64))
                    .collect();
                v.sort_by_key(|p| p.0);
                v.dedup_by_key(|p| p.0);
                v
            };
            let (mut points, new) = (set(40), set(1 + round % 30));
            let mut model: BTreeMap<i64, f64> = points.iter().copied().collect();
            let replaced = new
                .iter()
                .filter(|p| model.insert(p.0, p.1).is_some())
                .count();
            assert_eq!(merge_in_place(&mut points, &new), replaced);
            assert_eq!(points, model.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_late_point_in_a_blocks_newest_segment_codes_only_that_segment_again() {
        // Twelve seals' worth in one block, then a point just behind the head: the block keeps
        // its older segments and takes the merged newest one back, whole (a full decode and
        // encode would split 1537 points in two).
        let mut store = Store::new();
        let mut model = BTreeMap::new();
        let sealed = 12 * BLOCK_POINTS;
        for t in 0..(sealed + BLOCK_POINTS + SLACK_LEAST) as i64 {
            put(&mut store, "m", t as f64 / 4.0, t * 10);
            model.insert(t * 10, t as f64 / 4.0);
        }
        let late = (sealed as i64 - 3) * 10 + 5;
        put(&mut store, "m", -1.0, late);
        model.insert(late, -1.0);
        store.merge_late();
        let one = store.slots[0].as_ref().unwrap();
        let lens: Vec<usize> = one.blocks.iter().map(Block::len).collect();
        assert_eq!(lens, [sealed + 1]);
        assert_eq!(series(&store, "m"), model.into_iter().collect::<Vec<_>>());
        assert_accounted(&store);
    }

    #[test]
    fn a_small_steady_lag_keeps_a_small_slack() {
        let mut store = Store::new();
        // Two writers 20 points apart, and one in order that rewrites its previous point now
        // and then: neither needs more than a few dozen points of slack.
        for t in 0..40_000i64 {
            put(&mut store, "lag", 1.0, t + 20);
            put(&mut store, "lag", 2.0, t);
            put(&mut store, "rewrite", t as f64, t);
            if t % 300 == 299 {
                put(&mut store, "rewrite", -1.0, t - 1);
            }
        }
        store.merge_late();
        let slack = |name: &str| {
            let slot = store.slot_of(name, store.hash(name)).unwrap();
            store.slots[slot as usize].as_ref().unwrap().slack
        };
        assert!(slack("lag") <= 64, "slack {}", slack("lag"));
        assert_eq!(usize::from(slack("rewrite")), SLACK_LEAST);
        assert_eq!(series(&store, "rewrite")[298], (298, -1.0));
    }

    #[test]
    fn scattered_late_points_are_merged_within_a_budget() {
        // One late point in each of many full blocks: the put that fills the late list merges
        // only the budget's worth of blocks, the rest waits, and nothing is lost.
        let mut store = Store::new();
        let mut model = BTreeMap::new();
        let blocks = (3 * MERGE_BUDGET / SEALED_MOST) as i64;
        for t in 0..(blocks + 1) * SEALED_MOST as i64 {
            put(&mut store, "m", 1.0, t * 10);
            model.insert(t * 10, 1.0);
        }
        let stride = blocks * SEALED_MOST as i64 / LATE_MOST as i64;
        for i in 0..LATE_MOST as i64 {
            let t = (i * stride + 7) * 10 + 5;
            put(&mut store, "m", 2.0, t);
            model.insert(t, 2.0);
        }
        let one = store.slots[0].as_ref().unwrap();
        assert!(!one.late.is_empty(), "the whole list was merged at once");
        assert!(one.late.len() < LATE_MOST);
        let want: Vec<(i64, f64)> = model.into_iter().collect();
        assert_eq!(series(&store, "m"), want);
        store.merge_late();
        assert_eq!(series(&store, "m"), want);
        assert_eq!(store.points(), want.len());
        // A merged block split in even parts: no block of a point or two.
        let one = store.slots[0].as_ref().unwrap();
        assert!(one.blocks.iter().all(|b| b.len() >= MERGED_POINTS / 2));
    }

    /// Every series' blocks are sorted, within their bounds, older than the head and counted
    /// in `block_bytes`; the head is sorted; `len` counts the points (late lists merged).
    fn check_structure(store: &Store) {
        for series in store.slots.iter().flatten() {
            assert!(series.late.is_empty());
            let mut prev: Option<i64> = None;
            let mut total = 0;
            let mut bytes = 0;
            for block in &series.blocks {
                assert!(
                    block.len() > 0 && block.len() <= SEALED_MOST,
                    "{}",
                    block.len()
                );
                let points: Vec<(i64, f64)> = block.iter().collect();
                assert_eq!(points.len(), block.len());
                assert_eq!(
                    (points[0].0, points[points.len() - 1].0),
                    (block.first(), block.last())
                );
                for &(t, _) in &points {
                    assert!(prev.is_none_or(|p| p < t), "{prev:?} then {t}");
                    prev = Some(t);
                }
                total += block.len();
                bytes += block.heap_bytes() + BLOCK_BYTES;
            }
            for &(t, _) in &series.head {
                assert!(prev.is_none_or(|p| p < t), "{prev:?} then {t} in the head");
                prev = Some(t);
            }
            total += series.head.len();
            assert_eq!(series.len, total);
            assert_eq!(series.block_bytes, bytes);
            // The cached ends (their debug assertions check them too).
            assert_eq!(series.newest(), prev);
            assert_eq!(series.head_first(), series.head.first().map(|&(t, _)| t));
        }
    }

    /// Random puts over many series: appends, late points aimed at blocks' segment ends (every
    /// 128th point), just past a block, in the gap between blocks, before the first block,
    /// overwrites of sealed and head points, retention and budgeted merges, against a map.
    /// Debug builds check the cached newest and head-first stamps on every put.
    #[test]
    fn late_points_at_segment_ends_gaps_and_edges_match_a_map() {
        let values = [
            0.0,
            -0.0,
            1.5,
            5e-324,
            9007199254740992.0,
            1e300,
            0.1 + 0.2,
            7.0,
        ];
        for seed in 1..=5u64 {
            let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut store = Store::new();
            let mut model: BTreeMap<(String, i64), f64> = BTreeMap::new();
            let mut clock = [0i64; 6];
            for step in 0..150_000u64 {
                let roll = lcg(&mut rng) >> 20;
                let k = (roll % 6) as usize;
                let metric = format!("s{k}");
                let v = if roll.is_multiple_of(5) {
                    values[(roll >> 4) as usize % values.len()]
                } else {
                    (step % 1000) as f64 / 8.0
                };
                let pick = (lcg(&mut rng) >> 33) % 100;
                let t = match pick {
                    0..=69 => {
                        // Appends with stamps far apart, so that gaps are wide.
                        clock[k] += 10 + if roll.is_multiple_of(97) { 100_000 } else { 0 };
                        clock[k]
                    }
                    _ => {
                        let slot = store.slot_of(&metric, store.hash(&metric));
                        let Some(series) = slot.and_then(|s| store.slots[s as usize].as_ref())
                        else {
                            continue;
                        };
                        if series.blocks.is_empty() {
                            continue;
                        }
                        let b = (lcg(&mut rng) >> 33) as usize % series.blocks.len();
                        let block = &series.blocks[b];
                        let pts: Vec<(i64, f64)> = block.iter().collect();
                        let seg = (lcg(&mut rng) >> 33) as usize % pts.len().div_ceil(BLOCK_POINTS);
                        let edge = (seg * BLOCK_POINTS).min(pts.len() - 1);
                        let prev_edge = edge.saturating_sub(1);
                        match pick {
                            70..=74 => pts[edge].0,
                            75..=79 => pts[prev_edge].0,
                            80..=83 => pts[edge].0 - 1,
                            84..=86 => pts[prev_edge].0 + 1,
                            87..=89 => block.last() + 1 + (lcg(&mut rng) % 50) as i64,
                            90..=92 => block.first() - 1 - (lcg(&mut rng) % 50) as i64,
                            93..=94 => series.blocks[0].first() - 1,
                            95 => {
                                store.merge_late_some(2);
                                continue;
                            }
                            96 => {
                                store.merge_late();
                                assert_accounted(&store);
                                continue;
                            }
                            _ if !roll.is_multiple_of(16) => continue,
                            _ => {
                                let cutoff =
                                    series.blocks[0].first() + (lcg(&mut rng) % 300) as i64;
                                store.expire_before(cutoff);
                                model.retain(|&(_, t), _| t >= cutoff);
                                assert_accounted(&store);
                                continue;
                            }
                        }
                    }
                };
                put(&mut store, &metric, v, t);
                model.insert((metric, t), v);
                if step % 30_000 == 29_999 {
                    assert_eq!(
                        get_star_bytes(&store, ALL),
                        model_bytes(&model),
                        "seed {seed}"
                    );
                }
            }
            assert_like_model(&mut store, &model, &format!("seed {seed}"));
            check_structure(&store);
            let blocks: usize = store.slots.iter().flatten().map(|s| s.blocks.len()).sum();
            assert!(
                blocks > 20,
                "seed {seed}: only {blocks} blocks: the test lost its reach"
            );
        }
    }

    /// Full and nearly full blocks take late points at each segment end, in the gap after them
    /// and before them; blocks stay within SEALED_MOST, in order, and accounted.
    #[test]
    fn late_points_into_full_and_partial_blocks() {
        for total in [
            SEALED_MOST,
            SEALED_MOST - BLOCK_POINTS,
            2 * SEALED_MOST + 300,
        ] {
            for late in [
                0usize,
                1,
                BLOCK_POINTS - 1,
                BLOCK_POINTS,
                2 * BLOCK_POINTS + 1,
                3000,
                4095,
            ] {
                for shift in [-1i64, 0, 1, 5] {
                    let mut store = Store::new();
                    let mut model: BTreeMap<i64, f64> = BTreeMap::new();
                    let n = total + BLOCK_POINTS + SLACK_LEAST;
                    for t in 0..n as i64 {
                        put(&mut store, "m", 1.0, t * 10);
                        model.insert(t * 10, 1.0);
                    }
                    let at = (late.min(total - 1) as i64) * 10 + shift;
                    put(&mut store, "m", -0.0, at);
                    model.insert(at, -0.0);
                    // and several in one merge, across segments
                    for extra in [at + 3, at + 1283, at - 1277] {
                        put(&mut store, "m", 2.5, extra);
                        model.insert(extra, 2.5);
                    }
                    store.merge_late();
                    let want: Vec<(i64, u64)> =
                        model.iter().map(|(&t, &v)| (t, v.to_bits())).collect();
                    let got: Vec<(i64, u64)> = series(&store, "m")
                        .into_iter()
                        .map(|(t, v)| (t, v.to_bits()))
                        .collect();
                    assert_eq!(got, want, "total {total} late {late} shift {shift}");
                    assert_eq!(store.points(), model.len());
                    assert_accounted(&store);
                    check_structure(&store);
                    // Then more appends seal onto whatever the merge left.
                    for t in n as i64..n as i64 + 3000 {
                        put(&mut store, "m", 3.0, t * 10);
                        model.insert(t * 10, 3.0);
                    }
                    store.merge_late();
                    assert_eq!(series(&store, "m").len(), model.len());
                    check_structure(&store);
                    assert_accounted(&store);
                }
            }
        }
    }

    /// Blocks at both ends of `i64`, then late points at the extremes and at segment ends of
    /// every block: merges that split segments next to i64::MIN and i64::MAX stay exact.
    #[test]
    fn segment_splits_at_the_ends_of_i64() {
        let n = 3 * SEALED_MOST as i64;
        let mut stamps: Vec<i64> = (0..n).map(|i| i64::MIN + i * 3).collect();
        stamps.extend((0..n).map(|i| i64::MAX - (n - i) * 3 + 3));
        let mut late = vec![i64::MIN, i64::MIN + 1, i64::MAX - 1, 0, -1, 1];
        for k in (0..2 * n as usize).step_by(BLOCK_POINTS) {
            late.extend([
                stamps[k],
                stamps[k].wrapping_sub(1),
                stamps[k].wrapping_add(1),
            ]);
        }
        late.push(i64::MAX);
        check_against_model(stamps.iter().copied().chain(late.iter().copied()));
        // And interleaved: the late ones put between appends.
        let mut mixed = Vec::new();
        for (i, &t) in stamps.iter().enumerate() {
            mixed.push(t);
            if i % 1000 == 999 {
                mixed.extend(late.iter().copied().filter(|&l| l < t).take(20));
            }
        }
        check_against_model(mixed);
    }
}
