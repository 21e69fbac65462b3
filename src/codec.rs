//! The block codec: pure encoders and decoders for a series' sealed blocks. No I/O, no locks.
//!
//! A [`Block`] holds points in timestamp order, compressed; [`Block::iter`] decodes them without
//! allocating. The store owns the policy (head size, when to seal, retention); this file owns the
//! bytes.
//!
//! # Format
//! The bytes are a LEB128 count of the block's points (nothing at all for an empty block), then
//! one or more segments ([`Block::append`] adds one). A segment is a LEB128 point count, for
//! every segment but the first a LEB128 zig-zag delta from the previous segment's last timestamp
//! to its first, then one big-endian bit stream padded to a whole byte. The first timestamp
//! lives in the [`Block`] itself. Segments share nothing else, so each is coded as if it were a
//! block of its own, as described next. Every integer stream below is
//! written with a [`Code`]: a prefix code of up to six symbols chosen per block, each a bucket of
//! `width` bits holding a zig-zag integer, or an escape. The encoder picks the bucket widths that
//! make the block smallest, so a stream that is always 0 costs 0 bits a point, and a stream that is
//! mostly 0 costs about 1.
//!
//! - Timestamps: delta-of-delta (Gorilla). The header holds the first delta, so a regular series
//!   costs nothing past its header. Arithmetic wraps in `i64`, which is exact modulo 2^64: any
//!   sequence of `i64`, even `i64::MIN` next to `i64::MAX`, round-trips.
//! - Values: a per-value hybrid at one decimal exponent `E` per block (VictoriaMetrics-style
//!   decimals). A value that is within [`MAX_FIX`] ulps of `M / 10^E` for an integer `M` is coded
//!   as the change of `M` (delta or delta-of-delta, chosen per block) plus the ulp difference,
//!   which is 0 for a clean decimal such as `51.846` and tiny for float noise such as
//!   `94.79799999999999`. Any other value is an escape, coded as a Gorilla XOR against the
//!   previous value or as its raw 64 bits, chosen per block. A block with no escape spends no bits
//!   on them; a block of escapes only is plain Gorilla (or raw bits, for random data).
//!
//! The encoder tries the exponents the block's values suggest and keeps the smallest encoding, so
//! the choice between XOR, decimal and hybrid is made per block by size. Decoding a decimal is
//! one division, `M as f64 / 10^E`, which is correctly rounded and so exact; the encoder checks
//! every value through that same function, so values always come back bit for bit.

use std::sync::Arc;

/// Largest decimal exponent: 10^22 is the largest power of ten an `f64` holds exactly.
const MAX_EXP: usize = 22;
/// Exact powers of ten as `f64`, for [`decimal_value`].
const POW10: [f64; MAX_EXP + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];
/// The most ulps a decimal value may differ from `M / 10^E`: float noise, not a different value.
const MAX_FIX: u64 = 1 << 8;
/// Symbols of a [`Code`]; its longest prefix is one bit shorter.
const MAX_SYMBOLS: usize = 6;
/// Bits a decoder peeks to find a symbol: the longest prefix.
const LUT_BITS: u32 = MAX_SYMBOLS as u32 - 1;
/// The width that marks a [`Code`]'s escape symbol.
const ESCAPE: u8 = 127;

/// A sealed block: points in timestamp order, compressed. Holds 32 bytes inline plus one shared
/// allocation ([`heap_bytes`](Block::heap_bytes)); cloning shares it, so a snapshot of many
/// blocks copies no points.
#[derive(Debug, Clone)]
pub struct Block {
    bytes: Arc<[u8]>,
    first: i64,
    last: i64,
}

impl Block {
    /// Encodes `points`, which should have strictly increasing timestamps (the codec is tuned for
    /// that, but any sequence round-trips, duplicates and descending stamps included). Values
    /// come back bit for bit, whatever their bits. An empty slice gives an empty block.
    ///
    /// # Panics
    /// If there are more than `u32::MAX` points.
    pub fn encode(points: &[(i64, f64)]) -> Block {
        Block::empty().append(points)
    }

    fn empty() -> Block {
        Block {
            bytes: Arc::default(),
            first: 0,
            last: 0,
        }
    }

    /// A block of this block's points followed by `points`, which should be newer. The old
    /// bytes are copied and the new points encoded after them as a segment of their own, so
    /// appending costs what encoding the new points alone does, and a store can seal small
    /// batches into one block without paying a block's overhead for each.
    ///
    /// # Panics
    /// If the block would hold more than `u32::MAX` points.
    pub fn append(&self, points: &[(i64, f64)]) -> Block {
        let (Some(&(first, _)), Some(&(last, _))) = (points.first(), points.last()) else {
            return self.clone();
        };
        let count = u32::try_from(points.len()).expect("a block holds at most u32::MAX points");
        let (old, old_start) = read_count(&self.bytes);
        let total = old
            .checked_add(count)
            .expect("a block holds at most u32::MAX points");
        let times = TimePlan::new(points);
        let values = ValuePlan::constant(points)
            .unwrap_or_else(|| ValuePlan::best(points, &Survey::new(points)));
        let mut bytes = Vec::with_capacity(
            self.bytes.len() + 20 + ((times.bits + values.bits) / 8) as usize + 8,
        );
        push_count(&mut bytes, total);
        bytes.extend_from_slice(&self.bytes[old_start..]);
        push_count(&mut bytes, count);
        if old > 0 {
            // A later segment starts from the one before: its first timestamp is a delta.
            push_varint(&mut bytes, zigzag(first.wrapping_sub(self.last)));
        }
        let mut out = BitWriter::after(bytes);
        times.write_header(&mut out);
        values.write_header(&mut out);
        let mut value_writer = ValueWriter::new(&values);
        let values_free = values.writes_nothing();
        if times.code == Code::single(0) {
            // Regular stamps: every delta-of-delta is 0 and costs no bits.
            if !values_free {
                for (i, &(_, value)) in points.iter().enumerate() {
                    value_writer.put(&mut out, i, value);
                }
            }
        } else {
            let time_writer = times.code.writer();
            let (mut prev, mut delta) = (first, times.first_delta);
            for (i, &(time, value)) in points.iter().enumerate() {
                if i > 0 {
                    let next = time.wrapping_sub(prev);
                    time_writer.put(&mut out, zigzag(next.wrapping_sub(delta)));
                    (prev, delta) = (time, next);
                }
                if !values_free {
                    value_writer.put(&mut out, i, value);
                }
            }
        }
        Block {
            bytes: Arc::from(out.finish()),
            first: if old > 0 { self.first } else { first },
            last,
        }
    }

    /// Splits the block before its first segment whose last point is not older than
    /// `timestamp` (for sorted points: the first holding a point at or after it): the
    /// segments before that one as a block, their bytes copied rather than coded again, and
    /// every point of the block, decoded (the kept ones first: `prefix.len()` of them). A
    /// change to a block's newest points then codes again only the segments that hold them,
    /// and a caller that must code the whole block again need not decode it twice.
    pub fn split_segments(&self, timestamp: i64) -> (Block, Vec<(i64, f64)>) {
        let mut iter = self.iter();
        // Where the kept segments end: the byte, the points before it, the last of them.
        let (_, mut end) = read_count(&self.bytes);
        let (mut kept, mut last) = (0u32, self.first);
        let mut points = Vec::with_capacity(iter.len());
        // A segment at a time: its first point (which starts it), then the rest of it.
        while let Some(first) = iter.next() {
            let start = points.len();
            points.push(first);
            let rest = iter.left as usize;
            points.extend((&mut iter).take(rest));
            if start == kept as usize && points[points.len() - 1].0 < timestamp {
                kept += iter.count;
                last = points[points.len() - 1].0;
                end = iter.reader.pos.div_ceil(8);
            }
        }
        let prefix = if kept == 0 {
            Block::empty()
        } else {
            let mut bytes = Vec::with_capacity(end);
            push_count(&mut bytes, kept);
            bytes.extend_from_slice(&self.bytes[read_count(&self.bytes).1..end]);
            Block {
                bytes: Arc::from(bytes),
                first: self.first,
                last,
            }
        };
        (prefix, points)
    }

    /// The number of points.
    pub fn len(&self) -> usize {
        read_count(&self.bytes).0 as usize
    }

    /// The first point's timestamp (0 for an empty block).
    pub fn first(&self) -> i64 {
        self.first
    }

    /// The last point's timestamp (0 for an empty block).
    pub fn last(&self) -> i64 {
        self.last
    }

    /// The bytes of heap the block holds (its encoding and the shared allocation's two
    /// counters), for memory accounting. The allocator's own overhead and the 32 bytes of the
    /// `Block` itself are not included.
    pub fn heap_bytes(&self) -> usize {
        self.bytes.len() + 2 * size_of::<usize>()
    }

    /// The points, decoded on the fly without allocating.
    pub fn iter(&self) -> BlockIter<'_> {
        BlockIter::new(self)
    }

    /// Appends every point to `out`.
    pub fn decode_into(&self, out: &mut Vec<(i64, f64)>) {
        let iter = self.iter();
        out.reserve(iter.len());
        out.extend(iter);
    }
}

/// The points of a [`Block`], oldest first. See [`Block::iter`].
#[derive(Debug, Clone)]
pub struct BlockIter<'a> {
    reader: BitReader<'a>,
    /// Points left in the block; points in the segment being read, and left of it.
    total_left: u32,
    count: u32,
    left: u32,
    time: i64,
    time_delta: i64,
    mantissa: i64,
    mantissa_delta: i64,
    /// All ones for a delta-of-delta mantissa, 0 for a plain delta.
    delta_mask: i64,
    scale: f64,
    raw: bool,
    xor: Xor,
    /// Whether every delta-of-delta, or every fix, is 0 (a code of one 0-bit symbol).
    time_fixed: bool,
    fix_fixed: bool,
    time_lut: Lut,
    mantissa_lut: Lut,
    fix_lut: Lut,
}

impl<'a> BlockIter<'a> {
    fn new(block: &'a Block) -> Self {
        let (total, start) = read_count(&block.bytes);
        let mut iter = BlockIter {
            reader: BitReader {
                bytes: &block.bytes,
                pos: start * 8,
            },
            total_left: total,
            count: 0,
            left: 0,
            time: block.first,
            time_delta: 0,
            mantissa: 0,
            mantissa_delta: 0,
            delta_mask: 0,
            scale: 1.0,
            raw: false,
            xor: Xor::default(),
            time_fixed: true,
            fix_fixed: true,
            time_lut: Code::single(0).lut(),
            mantissa_lut: Code::single(0).lut(),
            fix_lut: Code::single(0).lut(),
        };
        if total > 0 {
            iter.start_segment(Some(block.first));
        }
        iter
    }

    /// Reads the header of the segment at the reader's next whole byte: its first timestamp is
    /// `first`, or (for a later segment) a delta from the last point read.
    #[cold]
    fn start_segment(&mut self, first: Option<i64>) {
        let reader = &mut self.reader;
        let mut at = reader.pos.div_ceil(8);
        let rest = reader.bytes.get(at..).unwrap_or_default();
        let (count, used) = read_count(rest);
        at += used;
        let first = first.unwrap_or_else(|| {
            let rest = reader.bytes.get(at..).unwrap_or_default();
            let (delta, used) = read_varint(rest);
            at += used;
            self.time.wrapping_add(unzigzag(delta))
        });
        reader.pos = at * 8;
        // The header, in the order `Block::append` writes it. A segment of one point has no
        // timestamp part.
        let (mut time_delta, mut time_code) = (0, Code::single(0));
        if count >= 2 {
            time_delta = unzigzag(reader.read_long());
            time_code = Code::read(reader);
        }
        let raw = reader.read(1) == 1;
        let exp = (reader.read(5) as usize).min(MAX_EXP);
        let dod = reader.read(1) == 1;
        self.mantissa = unzigzag(reader.read_long());
        self.mantissa_delta = unzigzag(reader.read_long());
        let mantissa_code = Code::read(reader);
        let fix_code = Code::read(reader);
        // A truncated or damaged block ends early rather than reading past its counts.
        self.count = count.clamp(1, self.total_left);
        self.left = self.count;
        // One step before the first point, so that its delta-of-delta is 0 as well.
        self.time = first.wrapping_sub(time_delta);
        self.time_delta = time_delta;
        self.delta_mask = if dod { -1 } else { 0 };
        self.scale = POW10[exp];
        self.raw = raw;
        self.xor = Xor::default();
        self.time_fixed = time_code == Code::single(0);
        self.fix_fixed = fix_code == Code::single(0);
        self.time_lut = time_code.lut();
        self.mantissa_lut = mantissa_code.lut();
        self.fix_lut = fix_code.lut();
    }
}

impl Iterator for BlockIter<'_> {
    type Item = (i64, f64);

    // Always, so that the loops of `decode_into` and of callers keep the decoder's state in
    // registers.
    #[inline(always)]
    fn next(&mut self) -> Option<(i64, f64)> {
        if self.left == 0 {
            if self.total_left == 0 {
                return None;
            }
            self.start_segment(None);
        }
        self.left -= 1;
        self.total_left -= 1;
        // The first point has no symbol; neither has any point of a regular block.
        if !self.time_fixed && self.left + 1 != self.count {
            let dod = unzigzag(self.reader.symbol(&self.time_lut).unwrap_or(0));
            self.time_delta = self.time_delta.wrapping_add(dod);
        }
        self.time = self.time.wrapping_add(self.time_delta);
        let bits = match self.reader.symbol(&self.mantissa_lut) {
            Some(zz) => {
                self.mantissa_delta =
                    (self.mantissa_delta & self.delta_mask).wrapping_add(unzigzag(zz));
                self.mantissa = self.mantissa.wrapping_add(self.mantissa_delta);
                let mut bits = decimal_value(self.mantissa, self.scale);
                if !self.fix_fixed {
                    let fix = unzigzag(self.reader.symbol(&self.fix_lut).unwrap_or(0));
                    bits = bits.wrapping_add(fix as u64);
                }
                self.xor.prev = bits;
                bits
            }
            None if self.raw => {
                let bits = self.reader.read(64);
                self.xor.prev = bits;
                bits
            }
            None => self.xor.get(&mut self.reader),
        };
        Some((self.time, f64::from_bits(bits)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.total_left as usize, Some(self.total_left as usize))
    }
}

impl ExactSizeIterator for BlockIter<'_> {}

/// The bits of `mantissa / 10^E`, correctly rounded: exact whenever `|mantissa| <= 2^53`, and
/// the one definition both sides use, so the encoder can check every value through it.
#[inline]
fn decimal_value(mantissa: i64, scale: f64) -> u64 {
    (mantissa as f64 / scale).to_bits()
}

/// `value`'s shortest usable decimal: the smallest `d` with an `m` such that `value` is `fix`
/// ulps from `m / 10^d`, at most [`MAX_FIX`], if any. The `d` that worked for the previous
/// value is tried first, since a series' values tend to share it: a value that works at some `d`
/// works at every larger one, so the search walks down from there, or up if it fails.
// One caller, in the encoder's survey loop: always inlined there, whatever else calls it.
#[inline(always)]
fn decimal_digits(value: f64, hint: u8) -> Option<(u8, i64, i16)> {
    let magnitude = value.abs();
    if magnitude.is_nan() || magnitude >= DECIMAL_LIMIT {
        return None;
    }
    // An integer that stays exact times 10^hint works exactly at every d up to the hint, so
    // the walk down would end at d = 0 with fix 0. -0.0 is no decimal at all.
    let int = magnitude as i64;
    if int as f64 == magnitude
        && EXACT_INT
            .get(usize::from(hint))
            .is_some_and(|&most| int <= most)
        && value.to_bits() != (-0.0f64).to_bits()
    {
        return Some((0, value as i64, 0));
    }
    // Below 1e-23 every scale rounds to m = 0, so d = 0 is the only one worth a try.
    if magnitude < 1e-23 {
        return decimal_at(value, 0).ok()?.map(|(m, fix)| (0, m, fix));
    }
    let hint = usize::from(hint).min(MAX_EXP);
    if let Ok(Some(found)) = decimal_at(value, hint) {
        let mut best = (hint as u8, found.0, found.1);
        for d in (0..hint).rev() {
            // A value that works at d works at d + 1 with ten times the mantissa, whenever
            // |m| < 2^43 keeps both roundings exact enough: so a last digit that is not 0
            // means d fails, without trying.
            let m = best.1.unsigned_abs();
            if m < 1 << 43 && m % 10 != 0 {
                break;
            }
            match decimal_at(value, d) {
                Ok(Some((m, fix))) => best = (d as u8, m, fix),
                _ => break,
            }
        }
        return Some(best);
    }
    for d in (0..=MAX_EXP).filter(|&d| d != hint) {
        match decimal_at(value, d) {
            Ok(Some((m, fix))) => return Some((d as u8, m, fix)),
            Ok(None) => {}
            Err(TooLarge) => return None,
        }
    }
    None
}

/// Mantissas stay below this, which is below `i64::MAX`.
const DECIMAL_LIMIT: f64 = 9.2e18;

/// 2^-42: four times the relative distance from an integer that [`decimal_at`] can still accept.
const NEAR: f64 = 1.0 / (1u64 << 42) as f64;

/// `value * 10^d` overflows the mantissa, as it does for every larger `d`.
struct TooLarge;

/// `value` as `m / 10^d`, `fix` ulps away, if that is at most [`MAX_FIX`].
#[inline]
fn decimal_at(value: f64, d: usize) -> Result<Option<(i64, i16)>, TooLarge> {
    let scale = POW10[d];
    let scaled = value * scale;
    if scaled.is_nan() || scaled.abs() >= DECIMAL_LIMIT {
        return Err(TooLarge);
    }
    // Round to nearest without a libm call: truncate, then look at the fraction.
    let m = scaled as i64;
    let fraction = scaled - m as f64;
    // A value within MAX_FIX ulps of m / 10^d has `scaled` within about 2^-44 * |scaled| of
    // m, so farther from every integer than `near`, it is no decimal here: skip the division.
    let near = (scaled.abs() * NEAR).max(1e-3);
    if fraction.abs() > near && fraction.abs() < 1.0 - near {
        return Ok(None);
    }
    // Without branches: the fraction of a decimal is about as often 0.99 as 0.01.
    let m = m + i64::from(fraction >= 0.5) - i64::from(fraction <= -0.5);
    let fix = value.to_bits().wrapping_sub(decimal_value(m, scale)) as i64;
    Ok((fix.unsigned_abs() <= MAX_FIX).then_some((m, fix as i16)))
}

/// Exact powers of ten as `i64`.
const POW10_INT: [i64; 19] = {
    let mut table = [1i64; 19];
    let mut i = 1;
    while i < 19 {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

/// The largest integers that stay at most 2^53 times `10^k`.
const EXACT_INT: [i64; 19] = {
    let mut table = [0i64; 19];
    let mut i = 0;
    while i < 19 {
        table[i] = (1 << 53) / POW10_INT[i];
        i += 1;
    }
    table
};

/// `m * 10^k`, if it fits.
#[inline]
fn scale_up(m: i64, k: usize) -> Option<i64> {
    match POW10_INT.get(k) {
        Some(&scale) => m.checked_mul(scale),
        None => (m == 0).then_some(0),
    }
}

fn zigzag(x: i64) -> u64 {
    ((x << 1) ^ (x >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// Bits needed for `u`: 0 for 0, 64 for the top bit set.
fn bit_len(u: u64) -> usize {
    64 - u.leading_zeros() as usize
}

/// Appends `count` as [`read_count`] reads it.
fn push_count(bytes: &mut Vec<u8>, count: u32) {
    push_varint(bytes, u64::from(count));
}

/// Appends `value` in LEB128.
fn push_varint(bytes: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        bytes.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
}

/// A LEB128 integer at the start of `bytes`, and the bytes it took (as many as there are, at
/// most ten, for a truncated or overlong one).
fn read_varint(bytes: &[u8]) -> (u64, usize) {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f)
            .checked_shl(7 * i as u32)
            .unwrap_or(0);
        if byte & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    (value, bytes.len().min(10))
}

/// Reads the LEB128 point count; returns it and the byte where the bit stream starts.
fn read_count(bytes: &[u8]) -> (u32, usize) {
    let (count, used) = read_varint(bytes);
    (u32::try_from(count).unwrap_or(u32::MAX), used)
}

/// Where bits go: a [`BitWriter`], or a [`BitCount`] when the encoder only weighs a choice. One
/// writing routine serves both, so the sizes compared are exactly the sizes written.
trait Sink {
    /// Appends `value` in `bits` bits (`bits <= 64`; `value` must fit), most significant first.
    fn put(&mut self, value: u64, bits: u32);

    /// An integer of any size: its bit length in 7 bits, then the bits.
    fn put_long(&mut self, value: u64) {
        let len = bit_len(value) as u32;
        self.put(u64::from(len), 7);
        self.put(value, len);
    }
}

/// Bits appended to a byte vector, big-endian, 64 at a time.
struct BitWriter {
    bytes: Vec<u8>,
    acc: u64,
    used: u32,
}

impl BitWriter {
    /// A writer whose bytes start with the LEB128 `count`.
    /// A writer whose bits follow `bytes`.
    fn after(bytes: Vec<u8>) -> Self {
        BitWriter {
            bytes,
            acc: 0,
            used: 0,
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.used > 0 {
            let acc = self.acc << (64 - self.used);
            let len = self.used.div_ceil(8) as usize;
            self.bytes.extend_from_slice(&acc.to_be_bytes()[..len]);
        }
        self.bytes
    }
}

impl Sink for BitWriter {
    #[inline(always)]
    fn put(&mut self, value: u64, bits: u32) {
        debug_assert!(bits <= 64 && (bits == 64 || value >> bits == 0));
        if bits < 64 - self.used {
            self.acc = (self.acc << bits) | value;
            self.used += bits;
        } else {
            let rest = bits - (64 - self.used);
            let full = if self.used == 0 {
                value
            } else {
                (self.acc << (64 - self.used)) | (value >> rest)
            };
            self.bytes.extend_from_slice(&full.to_be_bytes());
            self.acc = if rest == 0 {
                0
            } else {
                value & (u64::MAX >> (64 - rest))
            };
            self.used = rest;
        }
    }
}

/// Counts bits instead of writing them.
#[derive(Default)]
struct BitCount(u64);

impl Sink for BitCount {
    #[inline]
    fn put(&mut self, _value: u64, bits: u32) {
        self.0 += u64::from(bits);
    }
}

/// Reads a big-endian bit stream 8 bytes at a time. Past the end it reads zeros, so no input
/// makes it panic.
#[derive(Debug, Clone)]
struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    /// The next bits, left-aligned: at least the top 57 are the stream's.
    #[inline(always)]
    fn peek(&self) -> u64 {
        let at = self.pos >> 3;
        let word = match self
            .bytes
            .get(at..)
            .and_then(|rest| rest.first_chunk::<8>())
        {
            Some(chunk) => u64::from_be_bytes(*chunk),
            None => self.tail(at),
        };
        word << (self.pos & 7)
    }

    #[cold]
    fn tail(&self, at: usize) -> u64 {
        let mut word = [0u8; 8];
        if let Some(rest) = self.bytes.get(at..) {
            let len = rest.len().min(8);
            word[..len].copy_from_slice(&rest[..len]);
        }
        u64::from_be_bytes(word)
    }

    /// The next `bits` bits (at most 64) as an integer.
    #[inline]
    fn read(&mut self, bits: u32) -> u64 {
        if bits <= 56 {
            // Two shifts so that 0 bits reads 0 without a shift by 64.
            let value = (self.peek() >> 1) >> (63 - bits);
            self.pos += bits as usize;
            value
        } else {
            let bits = bits.min(64);
            let high = self.read(32);
            let low = self.read(bits - 32);
            (high << (bits - 32)) | low
        }
    }

    fn read_long(&mut self) -> u64 {
        let len = self.read(7) as u32;
        self.read(len)
    }

    /// One symbol of a [`Code`]: its bucket's integer, or `None` for the escape.
    #[inline(always)]
    fn symbol(&mut self, lut: &Lut) -> Option<u64> {
        let word = self.peek();
        let entry = lut[(word >> (64 - LUT_BITS)) as usize];
        let prefix = u32::from(entry & 0xff);
        let width = u32::from(entry >> 8);
        if width == u32::from(ESCAPE) {
            self.pos += prefix as usize;
            return None;
        }
        if prefix + width <= 57 {
            self.pos += (prefix + width) as usize;
            Some(((word << prefix) >> 1) >> (63 - width))
        } else {
            self.pos += prefix as usize;
            Some(self.read(width))
        }
    }
}

/// A decoding table: for each [`LUT_BITS`]-bit pattern, `prefix length | width << 8`.
type Lut = [u16; 1 << LUT_BITS];

/// A prefix code chosen per block for one integer stream. Symbol `r` (in rank order, most
/// frequent first) has the prefix `1^r 0`, the last one `1^r`; it stands for a zig-zag integer
/// of `widths[r]` bits, or for the escape when `widths[r] == ESCAPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Code {
    n: usize,
    widths: [u8; MAX_SYMBOLS],
}

impl Code {
    /// A code of one symbol: it costs no bits at all.
    fn single(width: u8) -> Code {
        let mut widths = [0; MAX_SYMBOLS];
        widths[0] = width;
        Code { n: 1, widths }
    }

    fn prefix(&self, rank: usize) -> (u64, u32) {
        if rank + 1 < self.n {
            (((1u64 << rank) - 1) << 1, rank as u32 + 1)
        } else {
            ((1u64 << rank) - 1, rank as u32)
        }
    }

    fn write(&self, sink: &mut impl Sink) {
        sink.put(self.n as u64 - 1, 3);
        for &width in &self.widths[..self.n] {
            sink.put(u64::from(width), 7);
        }
    }

    fn read(reader: &mut BitReader<'_>) -> Code {
        let n = (reader.read(3) as usize + 1).min(MAX_SYMBOLS);
        let mut widths = [0; MAX_SYMBOLS];
        for width in &mut widths[..n] {
            let w = reader.read(7) as u8;
            *width = if w == ESCAPE { w } else { w.min(64) };
        }
        Code { n, widths }
    }

    fn lut(&self) -> Lut {
        let mut lut = [0; 1 << LUT_BITS];
        for (pattern, entry) in lut.iter_mut().enumerate() {
            let ones = ((pattern as u64) << (64 - LUT_BITS)).leading_ones() as usize;
            let rank = ones.min(self.n - 1);
            let (_, len) = self.prefix(rank);
            *entry = len as u16 | u16::from(self.widths[rank]) << 8;
        }
        lut
    }

    /// The table that writes this code.
    fn writer(&self) -> CodeWriter {
        let entry = |rank: usize| {
            let (prefix, len) = self.prefix(rank);
            let width = self.widths[rank];
            let bits = len + u32::from(width);
            Prefixed {
                // A 64-bit bucket fits only with no prefix: shifting that by 64 is still 0.
                prefix: if bits <= 64 {
                    prefix.checked_shl(u32::from(width)).unwrap_or(0)
                } else {
                    prefix
                },
                bits,
                len: len as u8,
                width,
            }
        };
        let mut writer = CodeWriter {
            by_len: [Prefixed::default(); 65],
            escape: Prefixed::default(),
        };
        // Each length goes in the narrowest bucket that holds it.
        let mut ranks = [0usize; MAX_SYMBOLS];
        let mut buckets = 0;
        for rank in 0..self.n {
            if self.widths[rank] != ESCAPE {
                ranks[buckets] = rank;
                buckets += 1;
            }
        }
        let ranks = &mut ranks[..buckets];
        // Stable, as the first of equal widths is the one to use.
        ranks.sort_by_key(|&rank| self.widths[rank]);
        let mut len = 0;
        for &rank in ranks.iter() {
            let slot = entry(rank);
            while len <= usize::from(self.widths[rank]) {
                writer.by_len[len] = slot;
                len += 1;
            }
        }
        if let Some(rank) = self.widths[..self.n].iter().position(|&w| w == ESCAPE) {
            let (prefix, len) = self.prefix(rank);
            writer.escape = Prefixed {
                prefix,
                bits: len,
                len: len as u8,
                width: 0,
            };
        }
        writer
    }

    /// The code that writes integers of these bit lengths (`hist[len]` of them) and `escapes`
    /// escapes in the fewest bits, and that number of bits (escape payloads not included).
    ///
    /// The widest bucket is the longest length present; narrower buckets are added greedily,
    /// each time the one that saves the most, then each is moved where it saves more: tens of
    /// size evaluations, where an exhaustive search takes thousands.
    fn best(hist: &[u32; 65], escapes: u32) -> (Code, u64) {
        let mut candidates = [0u8; 65];
        let mut n_candidates = 0;
        let mut cumulative = [0u64; 65];
        let mut total = 0;
        for (len, &count) in hist.iter().enumerate() {
            if count > 0 {
                candidates[n_candidates] = len as u8;
                n_candidates += 1;
            }
            total += u64::from(count);
            cumulative[len] = total;
        }
        if n_candidates == 0 {
            return (Code::single(if escapes > 0 { ESCAPE } else { 0 }), 0);
        }
        n_candidates -= 1;
        let top = candidates[n_candidates];
        let candidates = &candidates[..n_candidates];
        let max_narrow = MAX_SYMBOLS - 1 - usize::from(escapes > 0);
        let sizes = Sizes {
            cumulative: &cumulative,
            top,
            escapes,
        };
        // The narrow widths, kept sorted.
        let mut narrow = [0u8; MAX_SYMBOLS];
        let mut n = 0;
        let mut best = sizes.bits(&narrow[..0]);
        while n < max_narrow {
            let mut pick = None;
            for &width in candidates {
                // The same code again, which cannot be smaller.
                if narrow[..n].contains(&width) {
                    continue;
                }
                let (trial, len) = with(&narrow[..n], None, width);
                let bits = sizes.bits(&trial[..len]);
                if bits < best {
                    best = bits;
                    pick = Some(trial);
                }
            }
            let Some(trial) = pick else { break };
            n += 1;
            narrow = trial;
        }
        for i in 0..n {
            for &width in candidates {
                let (trial, len) = with(&narrow[..n], Some(i), width);
                if len == n {
                    let bits = sizes.bits(&trial[..n]);
                    if bits < best {
                        best = bits;
                        narrow = trial;
                    }
                }
            }
        }
        (sizes.code(&narrow[..n]), best)
    }
}

/// `narrow` (sorted) without its element at `remove` and with `add`, still sorted, and its
/// length. An `add` already there is not added twice, which the length shows.
fn with(narrow: &[u8], remove: Option<usize>, add: u8) -> ([u8; MAX_SYMBOLS], usize) {
    let mut out = [0u8; MAX_SYMBOLS];
    let mut len = 0;
    let mut added = false;
    for (i, &width) in narrow.iter().enumerate() {
        if Some(i) == remove {
            continue;
        }
        if width == add {
            added = true;
        } else if !added && add < width {
            out[len] = add;
            len += 1;
            added = true;
        }
        out[len] = width;
        len += 1;
    }
    if !added {
        out[len] = add;
        len += 1;
    }
    (out, len)
}

/// A [`Code`] as the encoder uses it: for each bit length, how to write an integer of that
/// length, and how to write the escape.
struct CodeWriter {
    by_len: [Prefixed; 65],
    escape: Prefixed,
}

/// How to write one symbol: the prefix already shifted above the bucket's `width` bits, and the
/// total length, unless that is over 64 bits (then `prefix` is unshifted, `len` bits long).
#[derive(Debug, Clone, Copy, Default)]
struct Prefixed {
    prefix: u64,
    bits: u32,
    len: u8,
    width: u8,
}

impl CodeWriter {
    /// How `zz` is written: `prefix | zz` in `bits` bits when `bits <= 64`.
    #[inline(always)]
    fn entry(&self, zz: u64) -> &Prefixed {
        &self.by_len[bit_len(zz)]
    }

    /// Writes `zz`, which must fit one of the code's buckets.
    #[inline(always)]
    fn put(&self, sink: &mut impl Sink, zz: u64) {
        let entry = self.entry(zz);
        if entry.bits <= 64 {
            sink.put(entry.prefix | zz, entry.bits);
        } else {
            sink.put(entry.prefix, u32::from(entry.len));
            sink.put(zz, u32::from(entry.width));
        }
    }

    #[inline]
    fn put_escape(&self, sink: &mut impl Sink) {
        sink.put(self.escape.prefix, self.escape.bits);
    }
}

/// What [`Code::best`] weighs: the values' bit lengths as a cumulative histogram, the widest
/// length and the escapes.
struct Sizes<'a> {
    cumulative: &'a [u64; 65],
    top: u8,
    escapes: u32,
}

impl Sizes<'_> {
    /// The size in bits of the code with these `narrow` widths.
    #[inline]
    fn bits(&self, narrow: &[u8]) -> u64 {
        let mut counts = [0u64; MAX_SYMBOLS];
        let mut below = 0;
        let mut bits = 0;
        let mut n = 0;
        for &width in narrow {
            let up_to = self.cumulative[usize::from(width)];
            counts[n] = up_to - below;
            bits += (up_to - below) * u64::from(width);
            below = up_to;
            n += 1;
        }
        counts[n] = self.cumulative[64] - below;
        bits += counts[n] * u64::from(self.top);
        n += 1;
        if self.escapes > 0 {
            counts[n] = u64::from(self.escapes);
            n += 1;
        }
        // Most frequent first, symbol r has a prefix of min(r + 1, n - 1) bits. Without sorting:
        // each symbol's prefix is a bit longer for every more frequent one, so each pair adds
        // its smaller count, and the last (least frequent) symbol saves one bit.
        let mut least = u64::MAX;
        for i in 0..n {
            bits += counts[i];
            least = least.min(counts[i]);
            for j in i + 1..n {
                bits += counts[i].min(counts[j]);
            }
        }
        bits - least
    }

    /// The code with buckets of the `narrow` widths (sorted, distinct, below `top`) and `top`,
    /// and the escape, most frequent first.
    fn code(&self, narrow: &[u8]) -> Code {
        let mut symbols = [(0u64, 0u8); MAX_SYMBOLS];
        let mut below = 0;
        let mut n = 0;
        for &width in narrow.iter().chain([&self.top]) {
            let up_to = self.cumulative[usize::from(width)];
            symbols[n] = (up_to - below, width);
            below = up_to;
            n += 1;
        }
        if self.escapes > 0 {
            symbols[n] = (u64::from(self.escapes), ESCAPE);
            n += 1;
        }
        symbols[..n].sort_by_key(|&(count, _)| std::cmp::Reverse(count));
        let mut code = Code {
            n,
            widths: [0; MAX_SYMBOLS],
        };
        for (slot, &(_, width)) in code.widths.iter_mut().zip(&symbols[..n]) {
            *slot = width;
        }
        code
    }
}

/// Gorilla's XOR coding of a value against the previous one (as Prometheus writes it): `0` for
/// the same bits; `10` and the changed bits inside the previous window; `11`, 5 bits of leading
/// zeros, 6 of length and the changed bits otherwise.
#[derive(Debug, Clone, Copy, Default)]
struct Xor {
    prev: u64,
    lead: u32,
    trail: u32,
    window: bool,
}

impl Xor {
    fn put(&mut self, sink: &mut impl Sink, bits: u64) {
        let xor = bits ^ self.prev;
        self.prev = bits;
        if xor == 0 {
            sink.put(0, 1);
            return;
        }
        let lead = xor.leading_zeros().min(31);
        let trail = xor.trailing_zeros();
        if self.window && lead >= self.lead && trail >= self.trail {
            sink.put(0b10, 2);
            sink.put(xor >> self.trail, 64 - self.lead - self.trail);
        } else {
            let len = 64 - lead - trail;
            sink.put(0b11, 2);
            sink.put(u64::from(lead), 5);
            sink.put(u64::from(len & 63), 6);
            sink.put(xor >> trail, len);
            *self = Xor {
                prev: bits,
                lead,
                trail,
                window: true,
            };
        }
    }

    #[inline]
    fn get(&mut self, reader: &mut BitReader<'_>) -> u64 {
        let control = reader.peek() >> 62;
        if control < 2 {
            reader.pos += 1;
            return self.prev;
        }
        reader.pos += 2;
        if control == 3 {
            self.lead = reader.read(5) as u32;
            let len = match reader.read(6) as u32 {
                0 => 64,
                len => len,
            };
            self.trail = 64u32.saturating_sub(self.lead + len);
        }
        let len = 64u32.saturating_sub(self.lead + self.trail);
        self.prev ^= reader.read(len).wrapping_shl(self.trail);
        self.prev
    }
}

/// The timestamps of a block: the first delta, and the code of the delta-of-deltas after it.
struct TimePlan {
    first_delta: i64,
    /// Whether there are delta-of-deltas at all, that is, two points or more.
    any: bool,
    code: Code,
    bits: u64,
}

impl TimePlan {
    fn new(points: &[(i64, f64)]) -> Self {
        let mut hist = [0u32; 65];
        let first_delta = match points {
            [(a, _), (b, _), ..] => b.wrapping_sub(*a),
            _ => 0,
        };
        let mut delta = first_delta;
        for pair in points.windows(2) {
            let next = pair[1].0.wrapping_sub(pair[0].0);
            hist[bit_len(zigzag(next.wrapping_sub(delta)))] += 1;
            delta = next;
        }
        let (code, bits) = Code::best(&hist, 0);
        TimePlan {
            first_delta,
            any: points.len() >= 2,
            code,
            bits: bits + 64,
        }
    }

    fn write_header(&self, out: &mut BitWriter) {
        if self.any {
            out.put_long(zigzag(self.first_delta));
            self.code.write(out);
        }
    }
}

/// A value's shortest usable decimal, from [`decimal_digits`]: `m / 10^d`, `fix` ulps away.
#[derive(Debug, Clone, Copy)]
struct Digits {
    m: i64,
    fix: i16,
    /// [`NO_DIGITS`] when the value has no usable decimal.
    d: u8,
}

const NO_DIGITS: u8 = u8::MAX;

impl Digits {
    fn of(value: f64, hint: u8) -> Digits {
        match decimal_digits(value, hint) {
            Some((d, m, fix)) => Digits { m, fix, d },
            None => Digits {
                m: 0,
                fix: 0,
                d: NO_DIGITS,
            },
        }
    }

    /// The mantissa at exponent `exp >= d`, if it fits.
    #[inline]
    fn mantissa(&self, exp: usize) -> Option<i64> {
        if exp == usize::from(self.d) {
            return Some(self.m);
        }
        scale_up(self.m, exp.checked_sub(usize::from(self.d))?)
    }
}

/// What one pass over a block's values learns for [`ValuePlan::best`].
struct Survey {
    /// Every value's digits, each search starting at the digits of the value before.
    digits: Vec<Digits>,
    /// How many values have each number of digits.
    covered: [usize; MAX_EXP + 1],
    /// Rough bits of the values all as Gorilla XOR escapes.
    xor_bits: u64,
}

impl Survey {
    fn new(points: &[(i64, f64)]) -> Self {
        let mut digits = Vec::with_capacity(points.len());
        let mut covered = [0usize; MAX_EXP + 1];
        let mut xor_bits = 0;
        let (mut hint, mut prev) = (0, 0u64);
        for (i, &(_, value)) in points.iter().enumerate() {
            // A repeated value gets the same digits: its own are the hint now, and a search
            // that starts from a value's digits finds them again.
            let digit = match digits.last() {
                Some(&last) if i > 0 && value.to_bits() == prev => last,
                _ => Digits::of(value, hint),
            };
            if let Some(slot) = covered.get_mut(usize::from(digit.d)) {
                *slot += 1;
                hint = digit.d;
            }
            digits.push(digit);
            let xor = value.to_bits() ^ prev;
            prev = value.to_bits();
            xor_bits += if xor == 0 {
                1
            } else {
                u64::from(70 - xor.leading_zeros() - xor.trailing_zeros())
            };
        }
        Survey {
            digits,
            covered,
            xor_bits,
        }
    }
}

/// A block's values at one exponent, in order, as mantissa changes and fixes.
struct Mantissas<'a> {
    /// Empty for a plan of escapes only.
    digits: &'a [Digits],
    exp: usize,
    scale: f64,
    /// The last decimal's mantissa and its change from the one before.
    mantissa: i64,
    delta: i64,
    /// Decimals seen, up to 2: the first has no change, the second no delta-of-delta.
    seen: u8,
}

impl<'a> Mantissas<'a> {
    /// The walk, and the first decimal's mantissa and the second's change from it.
    fn new(points: &[(i64, f64)], digits: &'a [Digits], exp: usize) -> (Self, i64, i64) {
        let mut walk = Mantissas {
            digits,
            exp,
            scale: POW10[exp],
            mantissa: 0,
            delta: 0,
            seen: 0,
        };
        let mut decimals = points
            .iter()
            .enumerate()
            .filter_map(|(i, &(_, v))| walk.decimal(i, v));
        let first = decimals.next().map_or(0, |(m, _)| m);
        let first_delta = decimals.next().map_or(0, |(m, _)| m.wrapping_sub(first));
        // Whatever the predictor, after each decimal the state is its mantissa and the change
        // from the one before, and the first one is predicted exactly.
        (walk.mantissa, walk.delta) = (first, first_delta);
        (walk, first, first_delta)
    }

    /// The mantissa and zig-zag fix of value `i` at `exp`, if it is a decimal there.
    #[inline]
    fn decimal(&self, i: usize, value: f64) -> Option<(i64, u64)> {
        let digit = self.digits.get(i)?;
        let mantissa = digit.mantissa(self.exp)?;
        // Exact operands give the same correctly rounded quotient at any exponent.
        if mantissa.unsigned_abs() <= 1 << 53 {
            return Some((mantissa, zigzag(i64::from(digit.fix))));
        }
        let fix = value
            .to_bits()
            .wrapping_sub(decimal_value(mantissa, self.scale)) as i64;
        (fix.unsigned_abs() <= MAX_FIX).then_some((mantissa, zigzag(fix)))
    }

    /// Value `i`'s zig-zag mantissa change against a delta and a delta-of-delta prediction, and
    /// its zig-zag fix; `None` for an escape.
    #[inline]
    fn next(&mut self, i: usize, value: f64) -> Option<([u64; 2], u64)> {
        let (target, fix) = self.decimal(i, value)?;
        let step = target.wrapping_sub(self.mantissa);
        let change = match self.seen {
            0 => [0, 0],
            1 => [zigzag(step), 0],
            _ => [zigzag(step), zigzag(step.wrapping_sub(self.delta))],
        };
        if self.seen > 0 {
            self.delta = step;
        }
        self.seen = (self.seen + 1).min(2);
        self.mantissa = target;
        Some((change, fix))
    }
}

/// One value's symbols in a [`ValuePlan`].
#[derive(Debug, Clone, Copy)]
enum Sym {
    /// The zig-zag change of the mantissa against a delta and a delta-of-delta prediction, and
    /// the zig-zag ulp fix.
    Decimal {
        change: [u64; 2],
        fix: u64,
    },
    Escape,
}

/// How a block's values are written: the exponent, the predictor, each value's symbols.
struct ValuePlan {
    exp: usize,
    dod: bool,
    raw: bool,
    start: i64,
    start_delta: i64,
    syms: Vec<Sym>,
    mantissa_code: Code,
    fix_code: Code,
    /// The size of the values' bits, header included.
    bits: u64,
}

/// Fewest points for [`ValuePlan::constant`]: below it, escapes may cost less than the header.
const CONSTANT_LEAST: usize = 64;

impl ValuePlan {
    /// The plan [`best`](ValuePlan::best) picks for one short decimal repeated (idle counters,
    /// flags, set points: constant stretches are common), found without its survey and walks.
    /// Every change and fix is 0, so the values cost their header only.
    fn constant(points: &[(i64, f64)]) -> Option<ValuePlan> {
        let &(_, value) = points.first()?;
        let bits = value.to_bits();
        if points.len() < CONSTANT_LEAST || points.iter().any(|&(_, v)| v.to_bits() != bits) {
            return None;
        }
        let digits = Digits::of(value, 0);
        if digits.d == NO_DIGITS || digits.fix != 0 || digits.m.unsigned_abs() > 1 << 53 {
            return None;
        }
        let mut plan = ValuePlan {
            exp: usize::from(digits.d),
            dod: false,
            raw: false,
            start: digits.m,
            start_delta: 0,
            syms: Vec::new(),
            mantissa_code: Code::single(0),
            fix_code: Code::single(0),
            bits: 0,
        };
        let mut header = BitCount::default();
        plan.write_header(&mut header);
        plan.bits = header.0;
        Some(plan)
    }

    /// Whether the values cost no bits past the header: every mantissa change (from the
    /// plan's predictor) and every fix is 0, since a code of one 0-bit symbol has no escape.
    fn writes_nothing(&self) -> bool {
        self.mantissa_code == Code::single(0) && self.fix_code == Code::single(0)
    }

    /// The smallest plan among all-escape (Gorilla or raw bits) and the exponents the values
    /// suggest. Rough sizes pick the exponents worth building exactly.
    fn best(points: &[(i64, f64)], survey: &Survey) -> ValuePlan {
        let digits = &survey.digits[..];
        // Exponents that cover at least half as many values as the largest one.
        let mut covered = survey.covered;
        let present = covered.map(|count| count > 0);
        for exp in 1..=MAX_EXP {
            covered[exp] += covered[exp - 1];
        }
        let most = covered[MAX_EXP];
        // Each with its rough size once there are more than two.
        let mut exps = [(0u64, 0usize); MAX_EXP + 1];
        let mut n_exps = 0;
        for exp in (0..=MAX_EXP).filter(|&e| present[e] && covered[e] * 2 >= most) {
            exps[n_exps] = (0, exp);
            n_exps += 1;
        }
        // All escapes cost the smaller of Gorilla's bits and raw ones.
        let xor_bits = survey.xor_bits.min(64 * points.len() as u64);
        if n_exps > 2 {
            let escape = xor_bits / points.len() as u64;
            // Values without digits are escapes at every exponent and move no predictor.
            let usable: Vec<Digits> = digits
                .iter()
                .filter(|d| d.d != NO_DIGITS)
                .copied()
                .collect();
            let none = (digits.len() - usable.len()) as u64 * escape;
            for entry in &mut exps[..n_exps] {
                entry.0 = guess(&usable, entry.1, escape) + none;
            }
            // Ties keep the smaller exponent first, as a stable sort of ascending ones would.
            exps[..n_exps].sort_unstable();
            n_exps = 2;
        }
        let mut best: Option<ValuePlan> = None;
        for &(_, exp) in &exps[..n_exps] {
            let plan = ValuePlan::new(points, digits, exp);
            if best.as_ref().is_none_or(|b| plan.bits < b.bits) {
                best = Some(plan);
            }
        }
        match best {
            // Rough sizes are within about 10% of exact ones.
            Some(plan) if xor_bits > plan.bits + plan.bits / 8 => plan,
            Some(plan) => {
                let escapes = ValuePlan::new(points, &[], 0);
                if escapes.bits < plan.bits {
                    escapes
                } else {
                    plan
                }
            }
            None => ValuePlan::new(points, &[], 0),
        }
    }

    /// The plan at exponent `exp` with the better predictor; `digits` empty means all escapes.
    fn new(points: &[(i64, f64)], digits: &[Digits], exp: usize) -> Self {
        let (mut walk, first, first_delta) = Mantissas::new(points, digits, exp);
        let mut change_hist = [[0u32; 65]; 2];
        let mut fix_hist = [0u32; 65];
        let mut escapes = 0;
        let mut xor = Xor::default();
        let mut xor_bits = BitCount::default();
        let mut syms = Vec::with_capacity(points.len());
        for (i, &(_, value)) in points.iter().enumerate() {
            match walk.next(i, value) {
                Some((change, fix)) => {
                    change_hist[0][bit_len(change[0])] += 1;
                    change_hist[1][bit_len(change[1])] += 1;
                    fix_hist[bit_len(fix)] += 1;
                    xor.prev = value.to_bits();
                    syms.push(Sym::Decimal { change, fix });
                }
                None => {
                    escapes += 1;
                    xor.put(&mut xor_bits, value.to_bits());
                    syms.push(Sym::Escape);
                }
            }
        }
        let by_delta = Code::best(&change_hist[0], escapes);
        let by_dod = Code::best(&change_hist[1], escapes);
        let dod = by_dod.1 < by_delta.1;
        let (mantissa_code, mantissa_bits) = if dod { by_dod } else { by_delta };
        let (fix_code, fix_bits) = Code::best(&fix_hist, 0);
        let raw_bits = 64 * u64::from(escapes);
        let raw = raw_bits < xor_bits.0;
        let mut plan = ValuePlan {
            exp,
            dod,
            raw,
            start: if dod {
                first.wrapping_sub(first_delta)
            } else {
                first
            },
            start_delta: if dod { first_delta } else { 0 },
            syms,
            mantissa_code,
            fix_code,
            bits: 0,
        };
        let mut header = BitCount::default();
        plan.write_header(&mut header);
        plan.bits = header.0 + mantissa_bits + fix_bits + raw_bits.min(xor_bits.0);
        plan
    }

    fn write_header(&self, out: &mut impl Sink) {
        out.put(u64::from(self.raw), 1);
        out.put(self.exp as u64, 5);
        out.put(u64::from(self.dod), 1);
        out.put_long(zigzag(self.start));
        out.put_long(zigzag(self.start_delta));
        self.mantissa_code.write(out);
        self.fix_code.write(out);
    }
}

/// Writes the values of a block by its [`ValuePlan`].
struct ValueWriter<'a> {
    syms: &'a [Sym],
    dod: usize,
    raw: bool,
    mantissa: CodeWriter,
    fix: CodeWriter,
    xor: Xor,
}

impl<'a> ValueWriter<'a> {
    fn new(plan: &'a ValuePlan) -> Self {
        ValueWriter {
            syms: &plan.syms,
            dod: usize::from(plan.dod),
            raw: plan.raw,
            mantissa: plan.mantissa_code.writer(),
            fix: plan.fix_code.writer(),
            xor: Xor::default(),
        }
    }

    /// Writes value `i`.
    #[inline(always)]
    fn put(&mut self, out: &mut impl Sink, i: usize, value: f64) {
        match self.syms[i] {
            Sym::Decimal { change, fix } => {
                let change = change[self.dod];
                let (m, f) = (self.mantissa.entry(change), self.fix.entry(fix));
                // One write for both symbols when they fit, as they mostly do.
                if m.bits + f.bits < 64 {
                    let both = ((m.prefix | change) << f.bits) | f.prefix | fix;
                    out.put(both, m.bits + f.bits);
                } else {
                    self.mantissa.put(out, change);
                    self.fix.put(out, fix);
                }
                self.xor.prev = value.to_bits();
            }
            Sym::Escape => self.put_escape(out, value),
        }
    }

    /// Kept out of line: most blocks have few escapes or none.
    #[inline(never)]
    fn put_escape(&mut self, out: &mut impl Sink, value: f64) {
        self.mantissa.put_escape(out);
        if self.raw {
            out.put(value.to_bits(), 64);
            self.xor.prev = value.to_bits();
        } else {
            self.xor.put(out, value.to_bits());
        }
    }
}

/// Rough bits for the values at exponent `exp` with the better predictor, with `escape` bits
/// for each escape.
fn guess(digits: &[Digits], exp: usize, escape: u64) -> u64 {
    let (mut delta_bits, mut dod_bits) = (0u64, 0u64);
    let (mut prev, mut prev_delta) = (None, None);
    let mut escaped = 0;
    for digit in digits {
        match digit.mantissa(exp) {
            Some(m) => {
                let delta = prev.map_or(0, |p: i64| m.wrapping_sub(p));
                let dod = prev_delta.map_or(0, |p: i64| delta.wrapping_sub(p));
                delta_bits += bit_len(zigzag(delta)) as u64;
                dod_bits += bit_len(zigzag(dod)) as u64;
                if prev.is_some() {
                    prev_delta = Some(delta);
                }
                prev = Some(m);
            }
            None => escaped += 1,
        }
    }
    delta_bits.min(dod_bits) + escaped * escape
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: a tiny seeded generator, so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn finite(&mut self) -> f64 {
            loop {
                let v = f64::from_bits(self.next());
                if v.is_finite() {
                    return v;
                }
            }
        }
    }

    /// Encodes, decodes both ways and compares bit for bit; returns the block.
    fn round_trip(points: &[(i64, f64)]) -> Block {
        let block = Block::encode(points);
        assert_eq!(block.len(), points.len());
        assert_eq!(block.len() == 0, points.is_empty());
        if let (Some(first), Some(last)) = (points.first(), points.last()) {
            assert_eq!((block.first(), block.last()), (first.0, last.0));
        }
        let bits = |p: &[(i64, f64)]| -> Vec<(i64, u64)> {
            p.iter().map(|&(t, v)| (t, v.to_bits())).collect()
        };
        let iter = block.iter();
        assert_eq!(iter.len(), points.len());
        let decoded: Vec<(i64, f64)> = iter.collect();
        assert_eq!(bits(&decoded), bits(points), "{points:?}");
        let mut into = vec![(7, 7.0)];
        block.decode_into(&mut into);
        assert_eq!(bits(&into[1..]), bits(points));
        // The same points appended in segments of varied sizes read back the same.
        for sizes in [&[1usize][..], &[2, 1, 5], &[3, 64, 7, 256]] {
            let (mut segmented, mut rest, mut i) = (Block::encode(&[]), points, 0);
            let mut ends = Vec::new();
            while !rest.is_empty() {
                let (now, later) = rest.split_at(sizes[i % sizes.len()].min(rest.len()));
                segmented = segmented.append(now);
                rest = later;
                i += 1;
                ends.push(points.len() - rest.len());
            }
            if sizes.len() == 4 {
                check_splits(&segmented, points, &ends);
            }
            assert_eq!(segmented.len(), points.len());
            assert_eq!(
                (segmented.first(), segmented.last()),
                (block.first(), block.last())
            );
            let iter = segmented.iter();
            assert_eq!(iter.len(), points.len());
            assert_eq!(bits(&iter.collect::<Vec<_>>()), bits(points), "{sizes:?}");
        }
        block
    }

    /// The points a split at `t` keeps, of `points` in segments ending at `ends`: the leading
    /// segments whose last point is older than `t`.
    fn kept_before(points: &[(i64, f64)], ends: &[usize], t: i64) -> usize {
        ends.iter()
            .take_while(|&&end| points[end - 1].0 < t)
            .last()
            .copied()
            .unwrap_or(0)
    }

    /// Splits `block` (of `points`, in segments ending at `ends`) at several timestamps: the
    /// prefix keeps exactly the leading segments whose last point is older, and the prefix's
    /// points and the rest, or the prefix with the rest appended, are `points` again.
    fn check_splits(block: &Block, points: &[(i64, f64)], ends: &[usize]) {
        let bits = |p: &mut dyn Iterator<Item = (i64, f64)>| -> Vec<(i64, u64)> {
            p.map(|(t, v)| (t, v.to_bits())).collect()
        };
        let mut stamps = vec![i64::MIN, i64::MAX];
        stamps.extend(points.iter().step_by(points.len() / 3 + 1).map(|&(t, _)| t));
        stamps.extend(points.get(70).map(|&(t, _)| t.saturating_add(1)));
        for t in stamps {
            let (prefix, all) = block.split_segments(t);
            assert_eq!(
                bits(&mut all.iter().copied()),
                bits(&mut points.iter().copied())
            );
            let rest = &all[prefix.len()..];
            let kept = kept_before(points, ends, t);
            assert_eq!(
                prefix.len(),
                kept,
                "split at {t}, segments ending at {ends:?}"
            );
            if kept > 0 {
                assert_eq!(
                    (prefix.first(), prefix.last()),
                    (points[0].0, points[kept - 1].0)
                );
            }
            // The kept segments are the block's own bytes, not coded again.
            let segments = |b: &Block| b.bytes[read_count(&b.bytes).1..].to_vec();
            assert!(
                segments(block).starts_with(&segments(&prefix)),
                "split at {t}"
            );
            let whole = bits(&mut prefix.iter().chain(rest.iter().copied()));
            assert_eq!(whole, bits(&mut points.iter().copied()), "split at {t}");
            let appended = prefix.append(rest);
            assert_eq!(bits(&mut appended.iter()), whole, "split at {t}, appended");
        }
    }

    const SPECIAL: [f64; 14] = [
        0.0,
        -0.0,
        f64::MIN_POSITIVE,
        -f64::MIN_POSITIVE,
        5e-324,
        -5e-324,
        2.225_073_858_507_201e-308,
        f64::MAX,
        f64::MIN,
        f64::EPSILON,
        9_007_199_254_740_993.0,
        1.8446744073709552e19,
        9.2e18,
        i64::MIN as f64,
    ];

    /// One value of a randomly chosen class: the special values, random bits, short and long
    /// decimals, float noise, integers up to 2^53 and beyond.
    fn value(rng: &mut Rng, class: u64, prev: f64) -> f64 {
        match class {
            0 => SPECIAL[rng.below(SPECIAL.len() as u64) as usize],
            1 => rng.finite(),
            2 => (rng.below(2_000_001) as f64 - 1e6) / 1000.0,
            3 => rng.below(10_000_000_000) as f64 / 1e8 + 20.0,
            4 => 0.1 * (rng.below(1000) as f64) + 0.2 * (rng.below(1000) as f64),
            5 => rng.below(1 << 53) as f64,
            6 => (rng.next() >> rng.below(64)) as f64 * if rng.below(2) == 0 { 1.0 } else { -1.0 },
            7 => prev,
            8 => prev + 1.0,
            9 => f64::from_bits(prev.to_bits() ^ 1),
            10 => (rng.below(1000) as f64) * 10f64.powi(rng.below(40) as i32 - 20),
            _ => rng.below(100) as f64 / 7.0,
        }
    }

    fn stamps(rng: &mut Rng, pattern: u64, n: usize) -> Vec<i64> {
        let mut t = match pattern {
            0 => i64::MIN,
            1 => i64::MAX - n as i64 * 10,
            _ => rng.next() as i64 / 2,
        };
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(t);
            let step = match pattern {
                0 | 1 => 1 + rng.below(10) as i64,
                2 => 60,
                3 => 10 + rng.below(3) as i64 - 1,
                4 => 1_000_000_000 + rng.below(1_000_000) as i64,
                5 => 1 + (rng.next() >> (rng.below(62) + 2)) as i64,
                6 => 1 << 32,
                _ => 1 + rng.below(3) as i64,
            };
            t = t.saturating_add(step);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// `split_segments` against a model on random blocks made of random appends: segments of
    /// 1, 63, 64 and random sizes, constant runs, every value class, sorted, duplicate and
    /// descending stamps and both ends of `i64`; split at every segment's ends, one either
    /// side of them, and the extremes.
    #[test]
    fn split_segments_matches_a_model_on_random_blocks() {
        let mut rng = Rng(0x5eed_1234_abcd_ef01);
        let bits = |p: &mut dyn Iterator<Item = (i64, f64)>| -> Vec<(i64, u64)> {
            p.map(|(t, v)| (t, v.to_bits())).collect()
        };
        for round in 0..400 {
            let segments = 1 + rng.below(10) as usize;
            let mut sizes = Vec::new();
            for _ in 0..segments {
                sizes.push(match rng.below(6) {
                    0 => 1,
                    1 => 63,
                    2 => 64,
                    3 => 2,
                    _ => 1 + rng.below(300) as usize,
                });
            }
            let n: usize = sizes.iter().sum();
            let pattern = rng.below(8);
            let mut times = if round % 5 == 4 {
                // Unsorted: any order, duplicates, extremes.
                (0..n)
                    .map(|_| match rng.below(5) {
                        0 => i64::MIN,
                        1 => i64::MAX,
                        2 => rng.below(20) as i64,
                        _ => rng.next() as i64,
                    })
                    .collect()
            } else {
                let mut s = stamps(&mut rng, pattern, n);
                while s.len() < n {
                    // Saturated at i64::MAX: pad from below.
                    let low = s.first().copied().unwrap_or(0).wrapping_sub(1);
                    s.insert(0, low);
                }
                s
            };
            if round % 7 == 6 {
                times.reverse();
            }
            let class = rng.below(13);
            let mut prev = 0.0;
            let mut points = Vec::with_capacity(n);
            for (i, &t) in times.iter().enumerate() {
                // Runs of one value (constant segments) now and then.
                let v = if class == 12 || (i > 0 && rng.below(4) == 0) {
                    if i == 0 {
                        let c = rng.below(12);
                        value(&mut rng, c, 0.0)
                    } else {
                        prev
                    }
                } else {
                    value(&mut rng, class.min(11), prev)
                };
                prev = v;
                points.push((t, v));
            }
            let mut block = Block::encode(&[]);
            let mut ends = Vec::new();
            let mut at = 0;
            for &size in &sizes {
                block = block.append(&points[at..at + size]);
                at += size;
                ends.push(at);
            }
            assert_eq!(bits(&mut block.iter()), bits(&mut points.iter().copied()));
            let mut cuts = vec![i64::MIN, i64::MAX, 0, rng.next() as i64];
            for &end in &ends {
                for t in [
                    points[end - 1].0,
                    points[end.min(n - 1)].0,
                    points[end - 1 - (end - 1).min(1)].0,
                ] {
                    cuts.extend([t, t.wrapping_add(1), t.wrapping_sub(1)]);
                }
            }
            for t in cuts {
                let (prefix, all) = block.split_segments(t);
                assert_eq!(
                    bits(&mut all.iter().copied()),
                    bits(&mut points.iter().copied())
                );
                let rest = &all[prefix.len()..];
                let kept = kept_before(&points, &ends, t);
                assert_eq!(
                    prefix.len(),
                    kept,
                    "round {round} split at {t}, ends {ends:?}"
                );
                assert_eq!(rest.len(), n - kept, "round {round} split at {t}");
                if kept > 0 {
                    assert_eq!(
                        (prefix.first(), prefix.last()),
                        (points[0].0, points[kept - 1].0)
                    );
                    // Its bytes are the block's own, its count rewritten.
                    let seg = |b: &Block| b.bytes[read_count(&b.bytes).1..].to_vec();
                    assert!(seg(&block).starts_with(&seg(&prefix)));
                    assert_eq!(prefix.heap_bytes(), {
                        let mut c = Vec::new();
                        push_count(&mut c, kept as u32);
                        c.len() + seg(&prefix).len() + 2 * size_of::<usize>()
                    });
                } else {
                    assert!(prefix.bytes.is_empty());
                }
                assert_eq!(
                    bits(&mut prefix.iter()),
                    bits(&mut points[..kept].iter().copied())
                );
                assert_eq!(
                    bits(&mut rest.iter().copied()),
                    bits(&mut points[kept..].iter().copied())
                );
                // Appending back (whole, or in two) gives the points again; so does splitting the
                // result once more.
                let again = prefix.append(rest);
                assert_eq!(bits(&mut again.iter()), bits(&mut points.iter().copied()));
                assert_eq!((again.len(), again.last()), (n, points[n - 1].0));
                let half = rest.len() / 2;
                let twice = prefix.append(&rest[..half]).append(&rest[half..]);
                assert_eq!(bits(&mut twice.iter()), bits(&mut points.iter().copied()));
                let (p2, all2) = again.split_segments(t);
                let mut all: Vec<(i64, f64)> = p2.iter().collect();
                all.extend_from_slice(&all2[p2.len()..]);
                assert_eq!(
                    bits(&mut all.into_iter()),
                    bits(&mut points.iter().copied())
                );
            }
        }
        // An empty block splits into nothing.
        let (prefix, all) = Block::encode(&[]).split_segments(0);
        assert_eq!((prefix.len(), all.len()), (0, 0));
    }

    /// The constant plan, where it applies, is the full search's plan, on random short
    /// decimals of every exponent and mantissas up to and past 2^53; and such blocks round-trip
    /// alone and appended after other segments.
    #[test]
    fn constant_plan_agrees_with_the_search_on_random_decimals() {
        let mut rng = Rng(0xc0ff_ee00_1234_5678);
        let mut checked = 0;
        for round in 0..3000 {
            let value = match round % 6 {
                0 => (rng.next() as i64 >> rng.below(64)) as f64 / 10f64.powi(rng.below(23) as i32),
                1 => {
                    let m = (1i64 << 53) - rng.below(4) as i64 + 2;
                    let m = if rng.below(2) == 0 { m } else { -m };
                    m as f64 / 10f64.powi(rng.below(23) as i32)
                }
                2 => f64::from_bits(rng.next()),
                3 => {
                    let c = rng.below(12);
                    value(&mut rng, c, 1.5)
                }
                4 => -(rng.below(1000) as f64) / 10f64.powi(rng.below(10) as i32),
                _ => (rng.below(1 << 20) as f64) * 10f64.powi(rng.below(30) as i32),
            };
            if value.is_nan() {
                continue;
            }
            for n in [CONSTANT_LEAST - 1, CONSTANT_LEAST, CONSTANT_LEAST + 1, 300] {
                let regular = rng.below(2) == 0;
                let points: Vec<(i64, f64)> = (0..n as i64)
                    .map(|i| {
                        (
                            if regular {
                                i * 15
                            } else {
                                i * 15 + (i * i) % 5
                            },
                            value,
                        )
                    })
                    .collect();
                let quick = ValuePlan::constant(&points);
                if let Some(quick) = &quick {
                    let best = ValuePlan::best(&points, &Survey::new(&points));
                    let fields = |p: &ValuePlan| {
                        let codes = (p.mantissa_code, p.fix_code);
                        (p.exp, p.dod, p.raw, p.start, p.start_delta, codes, p.bits)
                    };
                    assert_eq!(
                        fields(quick),
                        fields(&best),
                        "{value:e} ({:x}) x {n}",
                        value.to_bits()
                    );
                    checked += 1;
                }
                let block = Block::encode(&points[..1]).append(&points[1..]);
                let got: Vec<(i64, u64)> = block.iter().map(|(t, v)| (t, v.to_bits())).collect();
                let want: Vec<(i64, u64)> = points.iter().map(|&(t, v)| (t, v.to_bits())).collect();
                assert_eq!(got, want, "{value:e}");
                round_trip(&points);
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    #[test]
    fn a_repeated_decimal_takes_the_plan_the_full_search_would() {
        let values = [
            0.0,
            1.0,
            -7.5,
            12.25,
            0.001,
            123_456.789,
            1e22,
            9e15,
            4e-7,
            -0.0,
            0.3,
        ];
        for value in values.into_iter().chain(SPECIAL) {
            for n in [CONSTANT_LEAST - 1, CONSTANT_LEAST, 100, 128, 1000] {
                for step in [10, 3] {
                    let points: Vec<(i64, f64)> = (0..n as i64)
                        .map(|i| (1_700_000_000 + i * step + i * i % 7 * (step % 2), value))
                        .collect();
                    let best = ValuePlan::best(&points, &Survey::new(&points));
                    let Some(quick) = ValuePlan::constant(&points) else {
                        continue;
                    };
                    assert!(n >= CONSTANT_LEAST);
                    let fields = |p: &ValuePlan| {
                        let codes = (p.mantissa_code, p.fix_code);
                        (p.exp, p.dod, p.raw, p.start, p.start_delta, codes, p.bits)
                    };
                    assert_eq!(fields(&quick), fields(&best), "{value} x {n}");
                    assert!(quick.writes_nothing());
                    round_trip(&points);
                }
            }
            // Not constant: the search decides.
            let mut points: Vec<(i64, f64)> = (0..100).map(|i| (i, value)).collect();
            points[50].1 = 2.5;
            assert!(ValuePlan::constant(&points).is_none());
        }
        // Values that are no short decimal, or only close to one, are left to the search.
        for value in [0.1 + 0.2, 1.0 / 3.0, 5e-324, f64::MAX] {
            let points: Vec<(i64, f64)> = (0..100).map(|i| (i, value)).collect();
            assert!(ValuePlan::constant(&points).is_none(), "{value}");
            round_trip(&points);
        }
    }

    #[test]
    fn random_series_round_trip_bit_for_bit() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..3000 {
            let n = match round % 5 {
                0 => 1 + rng.below(3) as usize,
                1 => 4096,
                _ => 1 + rng.below(1500) as usize,
            };
            let pattern = rng.below(8);
            let times = stamps(&mut rng, pattern, n);
            // A block mixes one to three classes, as series change character.
            let classes = [rng.below(12), rng.below(12), rng.below(12)];
            let mixed = rng.below(3) as usize + 1;
            let mut prev = 1.5;
            let points: Vec<(i64, f64)> = times
                .iter()
                .map(|&t| {
                    let class = classes[rng.below(mixed as u64) as usize];
                    prev = value(&mut rng, class, prev);
                    (t, prev)
                })
                .collect();
            round_trip(&points);
        }
    }

    #[test]
    fn every_special_value_round_trips_alone_and_together() {
        for &v in &SPECIAL {
            round_trip(&[(0, v)]);
            round_trip(&[(0, v), (1, v), (2, v)]);
            round_trip(&[(0, 1.5), (1, v), (2, 0.25)]);
        }
        let all: Vec<(i64, f64)> = SPECIAL
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as i64, v))
            .collect();
        round_trip(&all);
        let mut rng = Rng(7);
        let bits: Vec<(i64, f64)> = (0..4096).map(|i| (i, rng.finite())).collect();
        round_trip(&bits);
    }

    #[test]
    fn any_bits_round_trip_even_not_finite_ones() {
        let odd = [
            f64::NAN,
            -f64::NAN,
            f64::from_bits(0x7ff0_0000_0000_0001),
            f64::from_bits(0xfff8_dead_beef_0001),
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for &v in &odd {
            round_trip(&[(0, 1.5), (10, v), (20, 2.5), (30, v), (40, 0.1 + 0.2)]);
        }
        let mut rng = Rng(19);
        for n in [1, 2, 100, 1024] {
            let points: Vec<(i64, f64)> = (0..n).map(|i| (i, f64::from_bits(rng.next()))).collect();
            round_trip(&points);
        }
    }

    #[test]
    fn extreme_timestamps_round_trip() {
        let cases: [&[i64]; 7] = [
            &[i64::MIN, i64::MAX],
            &[i64::MIN, -1, 0, i64::MAX],
            &[i64::MIN, i64::MIN + 1, i64::MAX - 1, i64::MAX],
            &[i64::MAX],
            &[i64::MIN],
            &[-5, i64::MAX, i64::MIN, 0, 0, 3],
            &[0, 1 << 32, 2 << 32, 1 << 62, i64::MAX],
        ];
        for times in cases {
            let points: Vec<(i64, f64)> = times.iter().map(|&t| (t, 1.0)).collect();
            round_trip(&points);
        }
        // Nanosecond stamps with jitter.
        let mut rng = Rng(3);
        let nanos: Vec<(i64, f64)> = (0..1000)
            .map(|i| {
                (
                    1_700_000_000_000_000_000 + i * 10_000_000_000 + rng.below(999) as i64,
                    0.5,
                )
            })
            .collect();
        round_trip(&nanos);
    }

    #[test]
    fn empty_block_has_no_points() {
        let block = round_trip(&[]);
        // Just the shared allocation's counters.
        assert_eq!(
            (block.first(), block.last(), block.heap_bytes()),
            (0, 0, 2 * size_of::<usize>())
        );
        assert_eq!(block.iter().next(), None);
    }

    #[test]
    fn block_struct_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Block>(), 32);
    }

    #[test]
    fn bit_stream_round_trips_every_width() {
        let mut rng = Rng(11);
        let items: Vec<(u64, u32)> = (0..5000)
            .map(|_| {
                let bits = rng.below(65) as u32;
                let mask = if bits == 0 {
                    0
                } else {
                    u64::MAX >> (64 - bits)
                };
                (rng.next() & mask, bits)
            })
            .collect();
        let mut bytes = Vec::new();
        push_count(&mut bytes, 300);
        let mut out = BitWriter::after(bytes);
        for &(v, bits) in &items {
            out.put(v, bits);
        }
        let bytes = out.finish();
        let (count, start) = read_count(&bytes);
        assert_eq!(count, 300);
        let mut reader = BitReader {
            bytes: &bytes,
            pos: start * 8,
        };
        for &(v, bits) in &items {
            assert_eq!(reader.read(bits), v);
        }
    }

    fn bytes_per_point(points: &[(i64, f64)]) -> f64 {
        let block = round_trip(points);
        (block.heap_bytes() + std::mem::size_of::<Block>()) as f64 / points.len() as f64
    }

    #[test]
    fn regular_counter_costs_under_one_byte_per_point() {
        let mut rng = Rng(5);
        let mut total = 1_234_567.0;
        let points: Vec<(i64, f64)> = (0..1000)
            .map(|i| {
                total += rng.below(40) as f64;
                (1_700_000_000 + 60 * i, total)
            })
            .collect();
        let size = bytes_per_point(&points);
        assert!(size < 1.0, "{size}");
    }

    #[test]
    fn constant_series_costs_under_a_third_of_a_byte_per_point() {
        let points: Vec<(i64, f64)> = (0..1000)
            .map(|i| (1_700_000_000 + 10 * i, 51.846))
            .collect();
        let size = bytes_per_point(&points);
        assert!(size < 0.3, "{size}");
        // A value that changes once, on stamps of which one in twenty is a second late.
        let mut rng = Rng(9);
        let points: Vec<(i64, f64)> = (0..1000)
            .map(|i| {
                let jitter = if rng.below(20) == 0 { 1 } else { 0 };
                (
                    1_700_000_000 + 10 * i + jitter,
                    if i < 500 { 1.0 } else { 0.0 },
                )
            })
            .collect();
        // Each jittered stamp costs a few bits: still well under 2 bits a point in all.
        let size = bytes_per_point(&points);
        assert!(size < 0.4, "{size}");
    }

    #[test]
    fn three_decimal_gauge_costs_far_less_than_raw() {
        let mut rng = Rng(13);
        let mut x = 40_000i64;
        let points: Vec<(i64, f64)> = (0..1000)
            .map(|i| {
                x = (x + rng.below(4001) as i64 - 2000).clamp(0, 100_000);
                (1_700_000_000 + 300 * i, x as f64 / 1000.0)
            })
            .collect();
        let size = bytes_per_point(&points);
        assert!(size < 2.5, "{size}");
        // The same values with float noise on a third of them cost only a little more.
        let noisy: Vec<(i64, f64)> = points
            .iter()
            .enumerate()
            .map(|(i, &(t, v))| (t, if i % 3 == 0 { v + 0.1 - 0.1 } else { v }))
            .collect();
        let size = bytes_per_point(&noisy);
        assert!(size < 3.0, "{size}");
    }

    #[test]
    fn random_doubles_cost_at_most_raw_bits() {
        let mut rng = Rng(17);
        let points: Vec<(i64, f64)> = (0..1024).map(|i| (60 * i, rng.finite())).collect();
        let size = bytes_per_point(&points);
        assert!(size < 8.2, "{size}");
    }

    /// [`decimal_digits`] as first written, without its shortcuts (the integer test, the last
    /// digit, the wider division skip): the reference the fast one must match exactly, since
    /// the digits decide the encoding.
    fn decimal_digits_plain(value: f64, hint: u8) -> Option<(u8, i64, i16)> {
        let at = |d: usize| -> Result<Option<(i64, i16)>, ()> {
            let scale = POW10[d];
            let scaled = value * scale;
            if scaled.is_nan() || scaled.abs() >= DECIMAL_LIMIT {
                return Err(());
            }
            let mut m = scaled as i64;
            let fraction = scaled - m as f64;
            if fraction.abs() > 1e-3 && fraction.abs() < 1.0 - 1e-3 && scaled.abs() < 1e9 {
                return Ok(None);
            }
            if fraction >= 0.5 {
                m += 1;
            } else if fraction <= -0.5 {
                m -= 1;
            }
            let fix = value.to_bits().wrapping_sub(decimal_value(m, scale)) as i64;
            Ok((fix.unsigned_abs() <= MAX_FIX).then_some((m, fix as i16)))
        };
        let magnitude = value.abs();
        if magnitude.is_nan() || magnitude >= DECIMAL_LIMIT {
            return None;
        }
        if magnitude < 1e-23 {
            return at(0).ok()?.map(|(m, fix)| (0, m, fix));
        }
        let hint = usize::from(hint).min(MAX_EXP);
        if let Ok(Some(found)) = at(hint) {
            let mut best = (hint as u8, found.0, found.1);
            for d in (0..hint).rev() {
                match at(d) {
                    Ok(Some((m, fix))) => best = (d as u8, m, fix),
                    _ => break,
                }
            }
            return Some(best);
        }
        for d in (0..=MAX_EXP).filter(|&d| d != hint) {
            match at(d) {
                Ok(Some((m, fix))) => return Some((d as u8, m, fix)),
                Ok(None) => {}
                Err(()) => return None,
            }
        }
        None
    }

    /// Values where a shortcut could go wrong: integers around 2^53 and around 2^53 / 10^k
    /// (the integer test's limit), mantissas around 2^43 (the last-digit test's limit), values
    /// whose last digit is 0, float noise, long decimals, tiny and huge values, every special.
    fn tricky_values(rng: &mut Rng) -> Vec<f64> {
        let mut values = SPECIAL.to_vec();
        for scale in POW10_INT {
            let edge = (1i64 << 53) / scale;
            for delta in -2..=2 {
                values.push((edge + delta) as f64);
                values.push(-(edge + delta) as f64);
            }
        }
        for scale in POW10 {
            for base in [1i64 << 43, 1 << 53, 9_999_999_999_999, 1_000_000] {
                for delta in [-11, -10, -1, 0, 1, 10] {
                    values.push((base + delta) as f64 / scale);
                }
            }
        }
        for _ in 0..3000 {
            let k = rng.below(23) as usize;
            let m = (rng.next() >> rng.below(64)) as i64 * if rng.below(2) == 0 { 1 } else { -1 };
            let v = m as f64 / POW10[k];
            values.push(v);
            values.push(v * 10.0);
            values.push(f64::from_bits(
                v.to_bits().wrapping_add(rng.below(600)).wrapping_sub(300),
            ));
            values.push(0.1 * (rng.below(1000) as f64) + 0.2 * (rng.below(1000) as f64));
            values.push(rng.finite());
            values.push(f64::from_bits(rng.next()));
        }
        values
    }

    #[test]
    fn decimal_digits_match_the_plain_search_at_every_hint() {
        let mut rng = Rng(23);
        for value in tricky_values(&mut rng) {
            for hint in 0..=MAX_EXP as u8 + 2 {
                assert_eq!(
                    decimal_digits(value, hint),
                    decimal_digits_plain(value, hint),
                    "{value:e} (bits {:#x}) at hint {hint}",
                    value.to_bits()
                );
            }
        }
    }

    #[test]
    fn survey_digits_match_a_value_by_value_search() {
        // Repeats take the previous value's digits without a search: that must be what the
        // search, hinted by those digits, finds.
        let mut rng = Rng(29);
        let pool = tricky_values(&mut rng);
        for _ in 0..400 {
            let n = 1 + rng.below(300) as usize;
            let mut points = Vec::with_capacity(n);
            let mut v = 1.5;
            for i in 0..n {
                if rng.below(3) != 0 {
                    v = pool[rng.below(pool.len() as u64) as usize];
                }
                points.push((i as i64, v));
            }
            let survey = Survey::new(&points);
            let mut hint = 0;
            for (digit, &(_, value)) in survey.digits.iter().zip(&points) {
                let expected = decimal_digits_plain(value, hint);
                let got = (digit.d != NO_DIGITS).then_some((digit.d, digit.m, digit.fix));
                assert_eq!(got, expected, "{value:e} at hint {hint}");
                if let Some((d, _, _)) = expected {
                    hint = d;
                }
            }
            round_trip(&points);
        }
    }

    #[test]
    fn blocks_whose_digits_change_between_values_round_trip() {
        // The hint from one value is wrong for the next: fewer digits, more, none, an integer
        // at the edge of exactness, then decimals again.
        let values = [
            51.846,
            51.8,
            51.85,
            7.0,
            9_007_199_254_740_992.0,
            -9_007_199_254_740_993.0,
            900_719_925_474.099_2,
            0.1 + 0.2,
            1e-30,
            -0.0,
            73.967_322_07,
            73.967_322_07,
            1e300,
            f64::NAN,
            12.345_678_901_234_567,
            94.797_999_999_999_99,
            0.132,
        ];
        let points: Vec<(i64, f64)> = values
            .iter()
            .cycle()
            .take(600)
            .enumerate()
            .map(|(i, &v)| (60 * i as i64, v))
            .collect();
        round_trip(&points);
        for window in points.windows(5) {
            round_trip(window);
        }
    }

    #[test]
    fn integers_at_the_edges_of_exactness_round_trip() {
        let mut points = Vec::new();
        for scale in POW10_INT {
            let edge = (1i64 << 53) / scale;
            for delta in -3..=3 {
                points.push((points.len() as i64, (edge + delta) as f64));
                points.push((points.len() as i64, -((edge + delta) as f64)));
            }
        }
        for shift in 50..64 {
            let edge = 1i64 << shift.min(62);
            points.push((points.len() as i64, edge as f64));
            points.push((points.len() as i64, -(edge as f64)));
        }
        round_trip(&points);
        // A counter climbing past 2^53, where integers stop being exact.
        let counter: Vec<(i64, f64)> = (0..2000)
            .map(|i| (i, ((1i64 << 53) - 1000 + i) as f64))
            .collect();
        round_trip(&counter);
    }

    #[test]
    fn code_sizes_match_sorting_the_symbols() {
        let mut rng = Rng(31);
        for _ in 0..2000 {
            let mut cumulative = [0u64; 65];
            let mut total = 0;
            for slot in cumulative.iter_mut() {
                if rng.below(4) == 0 {
                    total += rng.below(300);
                }
                *slot = total;
            }
            let escapes = rng.below(3) as u32 * rng.below(200) as u32;
            let sizes = Sizes {
                cumulative: &cumulative,
                top: 64,
                escapes,
            };
            let mut narrow: Vec<u8> = (0..rng.below(5)).map(|_| rng.below(64) as u8).collect();
            narrow.sort_unstable();
            narrow.dedup();
            // The size written out: bucket widths, then prefixes by rank, most frequent first.
            let mut symbols: Vec<(u64, u64)> = Vec::new();
            let mut below = 0;
            for &width in narrow.iter().chain([&64]) {
                let up_to = cumulative[usize::from(width)];
                symbols.push((up_to - below, u64::from(width)));
                below = up_to;
            }
            if escapes > 0 {
                symbols.push((u64::from(escapes), 0));
            }
            symbols.sort_by_key(|&(count, _)| std::cmp::Reverse(count));
            let n = symbols.len();
            let expected: u64 = symbols
                .iter()
                .enumerate()
                .map(|(rank, &(count, width))| count * (width + (rank + 1).min(n - 1) as u64))
                .sum();
            assert_eq!(sizes.bits(&narrow), expected, "{narrow:?}");
        }
    }

    #[test]
    fn code_writer_puts_each_length_in_the_narrowest_bucket() {
        let mut rng = Rng(37);
        for _ in 0..2000 {
            let n = 1 + rng.below(MAX_SYMBOLS as u64) as usize;
            let mut code = Code {
                n,
                widths: [0; MAX_SYMBOLS],
            };
            for width in &mut code.widths[..n] {
                *width = if rng.below(6) == 0 {
                    ESCAPE
                } else {
                    rng.below(65) as u8
                };
            }
            let writer = code.writer();
            for len in 0..=64usize {
                let narrowest = (0..n)
                    .filter(|&r| code.widths[r] != ESCAPE && usize::from(code.widths[r]) >= len)
                    .min_by_key(|&r| (code.widths[r], r));
                let entry = writer.by_len[len];
                match narrowest {
                    Some(rank) => {
                        let (prefix, plen) = code.prefix(rank);
                        assert_eq!(
                            (entry.len, entry.width),
                            (plen as u8, code.widths[rank]),
                            "{code:?} {len}"
                        );
                        let bits = plen + u32::from(code.widths[rank]);
                        assert_eq!(entry.bits, bits);
                        let shifted = if bits <= 64 {
                            prefix
                                .checked_shl(u32::from(code.widths[rank]))
                                .unwrap_or(0)
                        } else {
                            prefix
                        };
                        assert_eq!(entry.prefix, shifted);
                    }
                    None => assert_eq!(entry.bits, 0, "{code:?} {len}"),
                }
            }
        }
    }

    /// Runs `scripts/gen_data.py` and groups its lines per series.
    fn generated(kind: &str, points: usize) -> Vec<(String, Vec<(i64, f64)>)> {
        let output = std::process::Command::new("python3")
            .args(["scripts/gen_data.py", "--kind", kind, "--series", "1000"])
            .args(["--points", &points.to_string()])
            .output()
            .expect("python3 runs scripts/gen_data.py");
        assert!(output.status.success());
        let text = String::from_utf8(output.stdout).expect("utf-8");
        let mut series: std::collections::HashMap<&str, Vec<(i64, f64)>> = Default::default();
        for line in text.lines() {
            let mut parts = line.split(' ');
            let (Some(name), Some(value), Some(time)) = (parts.next(), parts.next(), parts.next())
            else {
                panic!("bad line {line:?}");
            };
            series
                .entry(name)
                .or_default()
                .push((time.parse().expect("time"), value.parse().expect("value")));
        }
        let mut out: Vec<(String, Vec<(i64, f64)>)> = series
            .into_iter()
            .map(|(name, points)| (name.to_string(), points))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// A count from the environment variable `name`, or `default`: the reports' knobs.
    pub(super) fn env_number(name: &str, default: usize) -> usize {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    }

    /// Prints bytes per point (block bytes and the `Block` struct) on the generated data sets,
    /// in blocks of 1024 points, and the encode and decode rates. Points: `GEN_POINTS`
    /// (default 1000000). Run with
    /// `cargo test --release --lib codec::tests::report_bytes_per_point -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn report_bytes_per_point() {
        let points = env_number("GEN_POINTS", 1_000_000);
        for kind in ["realistic", "counters", "random"] {
            let named = generated(kind, points);
            let series: Vec<&[(i64, f64)]> = named.iter().map(|(_, p)| &p[..]).collect();
            let started = std::time::Instant::now();
            let blocks: Vec<Block> = series
                .iter()
                .flat_map(|s| s.chunks(1024).map(Block::encode))
                .collect();
            let encode = started.elapsed();
            let n: usize = blocks.iter().map(Block::len).sum();
            let bytes: usize = blocks
                .iter()
                .map(|b| b.heap_bytes() + std::mem::size_of::<Block>())
                .sum();
            let started = std::time::Instant::now();
            let mut checksum = 0u64;
            for _ in 0..5 {
                for block in &blocks {
                    for (t, v) in block.iter() {
                        checksum = checksum.wrapping_add(t as u64 ^ v.to_bits());
                    }
                }
            }
            let decode = started.elapsed();
            let expected: u64 = series
                .iter()
                .flat_map(|s| s.iter())
                .fold(0u64, |acc, &(t, v)| {
                    acc.wrapping_add(t as u64 ^ v.to_bits())
                });
            assert_eq!(checksum, expected.wrapping_mul(5));
            println!(
                "{kind:>10}: {n} points, {:.3} bytes/point, encode {:.1} M points/s, decode {:.1} M points/s",
                bytes as f64 / n as f64,
                n as f64 / encode.as_secs_f64() / 1e6,
                5.0 * n as f64 / decode.as_secs_f64() / 1e6,
            );
            // Per shape of series: the name without its index.
            let mut shapes: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
            for (name, points) in &named {
                let shape = name.rsplit_once('.').map_or(&name[..], |(shape, _)| shape);
                let entry = shapes.entry(shape).or_default();
                for chunk in points.chunks(1024) {
                    entry.0 += chunk.len();
                    entry.1 += Block::encode(chunk).heap_bytes() + std::mem::size_of::<Block>();
                }
            }
            for (shape, (n, bytes)) in shapes {
                println!(
                    "{:>24}: {n:>8} points, {:.3} bytes/point",
                    shape,
                    bytes as f64 / n as f64
                );
            }
        }
    }
}

#[cfg(test)]
mod speed {
    use super::tests::env_number;
    use super::*;

    /// splitmix64: a seeded generator for the timing data.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Roughly normal: the sum of four uniforms, centred.
        fn noise(&mut self) -> f64 {
            (0..4).map(|_| self.unit()).sum::<f64>() - 2.0
        }
    }

    /// Rounds to `d` decimals the way Python's `round` prints: through the shortest decimal.
    fn round(x: f64, d: i32) -> f64 {
        format!("{x:.0$}", d as usize).parse().expect("a float")
    }

    pub(super) const KINDS: [&str; 8] = [
        "gauge3", "noisy", "temp8", "counter", "events", "constant", "latency", "random",
    ];

    /// `n` points of one kind of series, shaped like `scripts/gen_data.py`'s: 60 s apart, one
    /// stamp in twenty a second off, each series 2048 points long.
    pub(super) fn series(kind: &str, n: usize, seed: u64) -> Vec<(i64, f64)> {
        let mut g = Gen(seed ^ (kind.len() as u64 * 0x1234_5678));
        let mut out = Vec::with_capacity(n);
        let mut x = 0.0;
        let mut level = 0.0;
        for i in 0..n {
            if i % 2048 == 0 {
                level = 1.0 + 60.0 * g.unit();
                x = match kind {
                    "temp8" => 30.0 + 60.0 * g.unit(),
                    "counter" => (g.next() % 10_000_000) as f64,
                    _ => level,
                };
            }
            let v = match kind {
                "gauge3" => {
                    x = (x + 0.3 * (level - x) + 3.0 * g.noise()).clamp(0.0, 100.0);
                    round(x, 3)
                }
                "noisy" => {
                    x = (x + 0.3 * (level - x) + 3.0 * g.noise()).clamp(0.0, 100.0);
                    let x = round(x, 3);
                    let user = round(x * (0.5 + 0.3 * g.unit()), 3);
                    let system = round((x - user) * (0.6 + 0.3 * g.unit()), 3);
                    user + system + round((x - user - system).max(0.0), 3)
                }
                "temp8" => {
                    x += 0.05 * (level + 30.0 - x) + 0.02 * g.noise();
                    round(x, 8)
                }
                "counter" => {
                    x += (g.next() % (1 + (level * level) as u64)) as f64;
                    x
                }
                "events" => (g.next() % (1 + 2 * level as u64)) as f64,
                "constant" => {
                    if g.next().is_multiple_of(500) {
                        x = [0.0, 1.0, 16384.0, 99.5, 3.3][(g.next() % 5) as usize];
                    }
                    x
                }
                "latency" => {
                    let count = 1 + g.next() % 200;
                    round(level * count as f64 * (1.0 + g.noise()).abs(), 3) / count as f64
                }
                _ => loop {
                    let v = f64::from_bits(g.next());
                    if v.is_finite() {
                        break v;
                    }
                },
            };
            let jitter = i64::from(g.next().is_multiple_of(20));
            out.push((1_700_000_000 + 60 * i as i64 + jitter, v));
        }
        out
    }

    /// The median and the fastest run: the machine may be shared, and the fastest run is the
    /// one least disturbed.
    fn median_min(mut xs: Vec<f64>) -> (f64, f64) {
        xs.sort_by(f64::total_cmp);
        (xs[xs.len() / 2], xs[0])
    }

    /// Prints, per kind of series in 256-point blocks (as the store seals them): bytes per
    /// point, the median encode and decode ns per point over several runs, and a hash of the
    /// encoded bytes, to show a faster encoder writes the same bytes. Run with
    /// `cargo test --release --lib codec::speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn report_codec_speed() {
        let n = env_number("CODEC_POINTS", 300_000);
        let (encode_runs, decode_runs) = (
            env_number("CODEC_ENCODE_RUNS", 11),
            env_number("CODEC_DECODE_RUNS", 11),
        );
        let only = std::env::var("CODEC_KINDS").unwrap_or_default();
        for kind in KINDS
            .into_iter()
            .filter(|k| only.is_empty() || only.contains(k))
        {
            let points = series(kind, n, 42);
            let chunks: Vec<&[(i64, f64)]> = points.chunks(256).collect();
            let mut encode = Vec::new();
            let mut blocks = Vec::new();
            for _ in 0..encode_runs.max(1) {
                let started = std::time::Instant::now();
                blocks = chunks.iter().map(|c| Block::encode(c)).collect::<Vec<_>>();
                encode.push(started.elapsed().as_nanos() as f64 / n as f64);
            }
            let mut decode = Vec::new();
            let mut out = Vec::with_capacity(n);
            for _ in 0..decode_runs.max(1) {
                out.clear();
                let started = std::time::Instant::now();
                for block in &blocks {
                    block.decode_into(&mut out);
                }
                decode.push(started.elapsed().as_nanos() as f64 / n as f64);
                assert_eq!(out.len(), n);
            }
            assert!(out
                .iter()
                .zip(&points)
                .all(|(a, b)| a.0 == b.0 && a.1.to_bits() == b.1.to_bits()));
            let bytes: usize = blocks
                .iter()
                .map(|b| b.heap_bytes() + size_of::<Block>())
                .sum();
            let hash = blocks
                .iter()
                .flat_map(|b| b.bytes.iter())
                .fold(0xcbf2_9ce4_8422_2325u64, |h, &byte| {
                    (h ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
                });
            let (encode, decode) = (median_min(encode), median_min(decode));
            println!(
                "{kind:>9}: {:.3} bytes/point, ns/point encode {:5.1} (min {:5.1}), decode {:5.2} (min {:5.2}), bytes {hash:016x}",
                bytes as f64 / n as f64,
                encode.0,
                encode.1,
                decode.0,
                decode.1,
            );
        }
    }
}
