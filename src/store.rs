//! The in-memory store: plain data, no locks, no I/O, no panics on any input.
//!
//! Each metric owns a series: sealed blocks of compressed points ([`codec`](crate::codec)),
//! sorted and not overlapping, then an uncompressed head of the newest points. Appends go to
//! the head; when it is full its oldest [`BLOCK_POINTS`] points are sealed into a block, and
//! the newest few stay so that points arriving slightly late (connections interleaving on one
//! series) are still cheap. A point older than the head goes into the one block whose span
//! covers it (found by binary search), which is decoded, changed and encoded again: O(log n)
//! plus one block, whatever the order or spacing of timestamps.
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
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::ops::{Bound, RangeInclusive};
use std::sync::Arc;

/// Points sealed into one block when the head fills: small, so that a busy series' head (kept
/// uncompressed for cheap appends) stays small too.
pub const BLOCK_POINTS: usize = 256;
/// Most points in a block made by merging late points into a sealed one.
const MERGED_POINTS: usize = 1024;
/// Newest points kept in the head after sealing, for points that arrive a little late.
const HEAD_SLACK: usize = 32;
/// The head is sealed when it grows past this.
const HEAD_MOST: usize = BLOCK_POINTS + HEAD_SLACK;
/// Points older than the head wait in a series' late list, and are merged into the blocks
/// they belong to once there are this many: one encode per block touched per merge, rather
/// than per point, whatever the order of writes.
const LATE_MOST: usize = 256;
/// Index shards: growing one rehashes at most 1/64 of the names.
const SHARDS: usize = 64;
/// What one series costs besides its points: the slab slot, the name's allocation header,
/// the B-tree and index entries (estimated from their layouts).
const SERIES_BYTES: usize = size_of::<Option<Series>>() + 16 + 32 + 24;
/// What one block costs besides [`Block::heap_bytes`]: its place in the series' list.
const BLOCK_BYTES: usize = size_of::<Sealed>();

/// A block, shared with snapshots (cloning it only counts a reference).
type Sealed = Block;

/// All metrics. See the module docs.
#[derive(Debug, Default)]
pub struct Store {
    /// Name hash to slot, in shards chosen by hash bits that the shard's own table does not
    /// use. A name whose hash collides with another's (astronomically rare with a keyed hash)
    /// lives in `collisions`.
    shards: Vec<HashMap<u64, u32, BuildHasherDefault<Identity>>>,
    collisions: HashMap<Arc<str>, u32>,
    hasher: RandomState,
    /// The series, by slot; freed slots are reused.
    slots: Vec<Option<Series>>,
    free: Vec<u32>,
    /// Every name, sorted, for `get *` and the background sweeps.
    names: BTreeMap<Arc<str>, u32>,
    points: usize,
    memory: usize,
    memory_limit: Option<usize>,
    /// Slots of series that have had late points since the last [`merge_late`](Store::merge_late).
    late_slots: Vec<u32>,
}

/// A put refused because the store holds its memory limit: it would add a point or a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryFull;

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
        self.hasher.hash_one(name)
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
        let hash = self.hash(metric);
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
            self.late_slots.push(slot);
        }
        self.memory = self.memory + series.bytes() - before;
        self.points = self.points + series.len - len;
        Ok(())
    }

    /// Merges every series' late points into their blocks, so that [`points`](Store::points)
    /// is exact: a late point that replaced one in a block is known only then.
    pub fn merge_late(&mut self) {
        while self.merge_late_some(usize::MAX) > 0 {}
    }

    /// Merges the late points of at most `most` series (the server does this in steps, every
    /// tick, so late lists never linger). Returns how many series it merged; 0 when none wait.
    pub fn merge_late_some(&mut self, most: usize) -> usize {
        let mut merged = 0;
        while merged < most {
            let Some(slot) = self.late_slots.pop() else {
                break;
            };
            let Some(series) = self.slots[slot as usize].as_mut() else {
                continue;
            };
            if series.late.is_empty() {
                continue;
            }
            let (before, len) = (series.bytes(), series.len);
            series.merge_late();
            // The list gives its allocation back: most series are never late again.
            series.late = Vec::new();
            self.memory = self.memory + series.bytes() - before;
            self.points = self.points + series.len - len;
            merged += 1;
        }
        merged
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
                .find(|(name, _)| self.hasher.hash_one(&***name) == hash)
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
    len: usize,
    /// Bytes of the blocks, with their per-block overhead.
    block_bytes: usize,
    /// Points at or before the newest sealed one, sorted, not yet merged into their blocks;
    /// they take precedence over a block's point at the same timestamp. Each counts in `len`
    /// until the merge finds it replaced one.
    late: Vec<(i64, f64)>,
}

impl Series {
    fn new(name: Arc<str>) -> Self {
        Series {
            name,
            blocks: Vec::new(),
            head: Vec::new(),
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
        match self.sealed_until() {
            Some(until) if timestamp <= until => {
                if self
                    .late
                    .binary_search_by_key(&timestamp, |&(t, _)| t)
                    .is_ok()
                {
                    return true;
                }
                let block = &self.blocks[self.block_for(timestamp)];
                block.first() <= timestamp && block.iter().any(|(t, _)| t == timestamp)
            }
            _ => self
                .head
                .binary_search_by_key(&timestamp, |&(t, _)| t)
                .is_ok(),
        }
    }

    fn insert(&mut self, timestamp: i64, value: f64) {
        let added = match self.sealed_until() {
            Some(until) if timestamp <= until => self.insert_late(timestamp, value),
            _ => self.insert_head(timestamp, value),
        };
        if added {
            self.len += 1;
        }
    }

    /// Keeps a point older than the head in the late list; merges the list into the blocks
    /// when it is full. Returns whether it is a new entry of the list.
    fn insert_late(&mut self, timestamp: i64, value: f64) -> bool {
        match self.late.binary_search_by_key(&timestamp, |&(t, _)| t) {
            Ok(at) => {
                self.late[at].1 = value;
                false
            }
            Err(at) => {
                self.late.insert(at, (timestamp, value));
                if self.late.len() >= LATE_MOST {
                    self.merge_late();
                }
                true
            }
        }
    }

    /// Merges the late list into the blocks it belongs in: each block touched is decoded and
    /// encoded once. Points that replaced a block's point are taken off `len` here.
    fn merge_late(&mut self) {
        let late = std::mem::take(&mut self.late);
        let mut replaced = 0;
        let mut rest = &late[..];
        while let Some(&(first, _)) = rest.first() {
            let at = self.block_for(first);
            // This block takes the late points up to the start of the next block.
            let end = match self.blocks.get(at + 1) {
                Some(next) => rest.partition_point(|&(t, _)| t < next.first()),
                None => rest.len(),
            };
            let (mine, others) = rest.split_at(end.max(1));
            replaced += self.merge_into(at, mine);
            rest = others;
        }
        self.len -= replaced;
    }

    /// Merges sorted `points` into block `at`; returns how many replaced a point there.
    fn merge_into(&mut self, at: usize, points: &[(i64, f64)]) -> usize {
        let mut old = Vec::with_capacity(self.blocks[at].len());
        self.blocks[at].decode_into(&mut old);
        let mut merged = Vec::with_capacity(old.len() + points.len());
        let mut replaced = 0;
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < points.len() {
            match (old.get(i), points.get(j)) {
                (Some(&a), Some(&b)) if a.0 == b.0 => {
                    merged.push(b);
                    replaced += 1;
                    i += 1;
                    j += 1;
                }
                (Some(&a), Some(&b)) if a.0 < b.0 => {
                    merged.push(a);
                    i += 1;
                }
                (_, Some(&b)) => {
                    merged.push(b);
                    j += 1;
                }
                (Some(&a), None) => {
                    merged.push(a);
                    i += 1;
                }
                (None, None) => break,
            }
        }
        let blocks = merged.chunks(MERGED_POINTS).map(Block::encode).collect();
        self.replace_block(at, blocks);
        replaced
    }

    /// Puts a point in the head; whether it is a new one (not a replaced value).
    fn insert_head(&mut self, timestamp: i64, value: f64) -> bool {
        // Appends, by far the most common case, skip the search.
        let at = match self.head.last() {
            Some(&(last, _)) if last < timestamp => self.head.len(),
            _ => match self.head.binary_search_by_key(&timestamp, |&(t, _)| t) {
                Ok(at) => {
                    self.head[at].1 = value;
                    return false;
                }
                Err(at) => at,
            },
        };
        if self.head.len() == self.head.capacity() {
            // Small series stay small; a busy one's head settles at its most.
            let grown = (self.head.len() * 2).clamp(4, HEAD_MOST + 1);
            self.head.reserve_exact(grown - self.head.len());
        }
        self.head.insert(at, (timestamp, value));
        if self.head.len() > HEAD_MOST {
            self.seal();
        }
        true
    }

    /// Moves the head's oldest points into a new block.
    fn seal(&mut self) {
        let block = Block::encode(&self.head[..BLOCK_POINTS]);
        self.block_bytes += block.heap_bytes() + BLOCK_BYTES;
        self.head.drain(..BLOCK_POINTS);
        self.blocks.push(block);
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
                in_range(&self.late),
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
            under: sealed.peekable(),
            over: self.late.iter().copied().peekable(),
        }
        .chain(self.head.iter().copied())
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
        let recount: usize = store.slots.iter().flatten().map(Series::bytes).sum();
        assert_eq!(store.memory, recount);
        store.expire_before(i64::MAX);
        assert_eq!((store.points(), store.metrics(), store.memory), (0, 0, 0));
    }

    /// `get *` as the server writes it.
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
            let mut expected = Vec::new();
            for ((m, t), v) in &model {
                crate::protocol::write_point(&mut expected, m, *v, *t);
            }
            assert_eq!(get_star_bytes(&store, ALL), expected, "seed {seed}");
            store.merge_late();
            assert_eq!(get_star_bytes(&store, ALL), expected, "seed {seed}");
            assert_eq!(store.points(), model.len());
            let recount: usize = store.slots.iter().flatten().map(Series::bytes).sum();
            assert_eq!(store.memory, recount);
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
}
