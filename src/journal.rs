//! The data file: an append-only journal of puts, replayed at start-up and compacted when it
//! holds more than twice the live points.
//!
//! The file is plain text, one point per line, `metric value timestamp\n`: the lines
//! `metrics get` prints, so it can be read, grepped and fed to `metrics put -`.
//!
//! Ordering: the one rule that makes replay rebuild the same store. A batch's lines are
//! appended to the pending buffer (through an [`Appender`]) while the store lock that applied
//! them is held, so the file's order is the store's order; `Db::apply` keeps it. [`Journal::commit`] then writes (and for `--fsync always`, syncs) the
//! pending bytes under the writer lock, outside the store lock; whoever gets the writer lock
//! first writes everyone's pending lines at once (group commit). A put is acknowledged only
//! after its line is written.
//!
//! Positions: every byte ever appended has a sequence number. The current file holds the
//! bytes from `base` on at offset `seq - base`; compaction writes a snapshot plus the lines
//! appended after it to a new file and moves `base` accordingly.

use crate::protocol::{self, NameError, PointError, PointLine};
use crate::store::Store;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Compaction waits until the file holds at least this many lines, so small files are not
/// rewritten over and over.
pub const COMPACT_MIN_LINES: u64 = 1000;

/// When the data file is synced to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before every acknowledgement (one sync per group of requests written together).
    Always,
    /// Once a second, in the background.
    EverySec,
    /// Never explicitly; the OS writes the file back when it likes.
    No,
}

impl Fsync {
    /// Reads `always`, `everysec` or `no`.
    pub fn parse(text: &str) -> Option<Fsync> {
        match text {
            "always" => Some(Fsync::Always),
            "everysec" => Some(Fsync::EverySec),
            "no" => Some(Fsync::No),
            _ => None,
        }
    }
}

impl fmt::Display for Fsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fsync::Always => "always",
            Fsync::EverySec => "everysec",
            Fsync::No => "no",
        })
    }
}

/// Why the data file cannot be used.
#[derive(Debug)]
pub enum JournalError {
    /// An operating-system error while `action` (e.g. "open", "read", "rewrite").
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    /// A line that is not a point (or, last and without `\n`, not the start of one), or is
    /// longer than [`LINE_MOST`]; the file is left as it is.
    Corrupt {
        path: PathBuf,
        line: u64,
        problem: String,
    },
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The OS error is the `source()`: print the chain (`log::chain`) to see it.
            JournalError::Io { path, action, .. } => {
                write!(f, "cannot {action} {}", path.display())
            }
            JournalError::Corrupt {
                path,
                line,
                problem,
            } => write!(f, "{}:{line}: {problem}", path.display()),
        }
    }
}

impl std::error::Error for JournalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JournalError::Io { source, .. } => Some(source),
            JournalError::Corrupt { .. } => None,
        }
    }
}

/// Why the data file could not be written. Puts are refused with its text until a write
/// succeeds; it is cheap to clone into every refused reply.
#[derive(Debug, Clone)]
pub struct WriteError(Arc<io::Error>);

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot write data file: {}", self.0)
    }
}

// The OS error is part of the text sent to clients, so it is not also a `source()`.
impl std::error::Error for WriteError {}

/// What start-up found in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Complete lines read.
    pub lines: u64,
    /// Points older than the retention window, not loaded.
    pub expired: u64,
    /// Bytes of a torn last line (no `\n`) cut from the end of the file.
    pub torn_bytes: u64,
    /// Points whose names hold whitespace or control characters, which the name rule now
    /// refuses: not loaded.
    pub invalid_names: u64,
    /// The first of those lines, described for the log.
    pub first_invalid: Option<String>,
    /// Compaction files a crashed server left beside the data file, now removed.
    pub leftovers: Vec<PathBuf>,
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    pub lines_before: u64,
    pub lines_after: u64,
    pub millis: u128,
}

/// A place in the journal: bytes and lines appended so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    seq: u64,
    lines: u64,
}

#[derive(Debug)]
struct Pending {
    buf: Vec<u8>,
    /// Sequence number just past the last byte appended.
    seq: u64,
    /// Lines in the file plus lines pending.
    lines: u64,
    /// Of those, lines in `buf`: taken with it when it is written.
    buf_lines: u64,
}

#[derive(Debug)]
struct Writer {
    file: File,
    /// Sequence number just past the last byte written to `file`.
    written: u64,
    /// The file holds sequence number `seq` at offset `seq - base`.
    base: i64,
    /// Bytes of complete lines in the file; a failed write is cut back to this.
    len: u64,
    /// The other half of the pending buffer, swapped in so neither allocates.
    spare: Vec<u8>,
}

/// The open data file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    fsync: Fsync,
    pending: Mutex<Pending>,
    writer: Mutex<Writer>,
    /// The file as readers see it: a second handle, for background syncs (which so never wait
    /// for the writer lock) and for forwarders' reads, with the sequence number at its offset
    /// 0. It also holds the file's advisory lock. Replaced along with the file by compaction.
    current: Mutex<Current>,
    /// Sequence number just past the last byte written to the file.
    written: AtomicU64,
    /// Lines written to the file since it was opened, plus those it held then.
    written_lines: AtomicU64,
    /// Lines kept before the compaction point by the last compaction, for forwarders behind it.
    kept_lines: AtomicU64,
    failing: AtomicBool,
    failure: Mutex<Option<WriteError>>,
    /// The file's length, readable without waiting for the writer.
    file_bytes: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Journal state is updated in single steps that do not panic; see the server's lock policy.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The longest line the data file is read back with: a longer one stops start-up as corrupt,
/// so that a file that is not a data file cannot fill memory. The server's `--max-line-bytes`
/// is at most this, so every line it writes is shorter.
pub const LINE_MOST: usize = 64 << 20;

impl Journal {
    /// Opens (or creates) the data file at `path` and replays it into a new store, leaving out
    /// points with timestamps before `since`. A torn last line is cut off; any other line that
    /// is not a point stops everything and leaves the file untouched.
    ///
    /// # Errors
    /// [`JournalError::Corrupt`] naming the line, or [`JournalError::Io`].
    pub fn open(
        path: &Path,
        fsync: Fsync,
        since: i64,
    ) -> Result<(Store, Journal, LoadReport), JournalError> {
        let resolved = resolve_link(path);
        let path = resolved.as_path();
        let io_error = |action| io_error(path, action);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        check_made_name(
            path,
            &format!(".{name}"),
            "its compaction file (.NAME.PID.compact)",
        )?;
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_error("open"))?;
        // A device such as /dev/zero reads without end, and one such as /dev/null keeps nothing.
        if !file.metadata().map_err(io_error("open"))?.is_file() {
            return Err(io_error("use")(io::Error::other(
                "it is not a regular file",
            )));
        }
        // Two servers appending to one file would interleave their lines: the second refuses.
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(io_error("lock")(io::Error::other(
                    "another metrics server is using it",
                )))
            }
            Err(TryLockError::Error(e)) => return Err(io_error("lock")(e)),
        }
        if !existed {
            sync_parent(path).map_err(io_error("sync the directory of"))?;
        }
        let leftovers = remove_leftovers(path);
        let (store, mut report, good_len) = replay(&file, path, since, LINE_MOST)?;
        if report.torn_bytes > 0 {
            file.set_len(good_len)
                .map_err(io_error("cut the torn line from"))?;
            file.sync_all().map_err(io_error("sync"))?;
        }
        let read_handle = Arc::new(file.try_clone().map_err(io_error("open"))?);
        let journal = Journal {
            path: path.to_path_buf(),
            fsync,
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                seq: good_len,
                lines: report.lines,
                buf_lines: 0,
            }),
            writer: Mutex::new(Writer {
                file,
                written: good_len,
                base: 0,
                len: good_len,
                spare: Vec::new(),
            }),
            current: Mutex::new(Current {
                file: read_handle,
                base: 0,
            }),
            written: AtomicU64::new(good_len),
            written_lines: AtomicU64::new(report.lines),
            kept_lines: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            failure: Mutex::new(None),
            file_bytes: AtomicU64::new(good_len),
        };
        report.leftovers = leftovers;
        Ok((store, journal, report))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the data file.
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes.load(Ordering::Relaxed)
    }

    /// The sync policy.
    pub fn fsync(&self) -> Fsync {
        self.fsync
    }

    /// The message puts are refused with while the file cannot be written, if it cannot.
    pub fn failure(&self) -> Option<WriteError> {
        if self.failing.load(Ordering::Acquire) {
            lock(&self.failure).clone()
        } else {
            None
        }
    }

    fn fail(&self, e: io::Error) -> WriteError {
        let error = WriteError(Arc::new(e));
        *lock(&self.failure) = Some(error.clone());
        self.failing.store(true, Ordering::Release);
        error
    }

    /// Starts appending point lines to the pending buffer. Hold the store lock that applies
    /// the same points until the [`Appender`] is finished: that keeps the file in the store's
    /// order.
    pub fn appender(&self) -> Appender<'_> {
        Appender {
            pending: lock(&self.pending),
            added: 0,
        }
    }

    /// Appends `count` ready-made point lines; returns the sequence number to
    /// [`commit`](Journal::commit) them up to.
    #[cfg(test)]
    fn append(&self, lines: &[u8], count: u64) -> u64 {
        let mut appender = self.appender();
        appender.pending.buf.extend_from_slice(lines);
        appender.added = lines.len() as u64;
        appender.pending.lines += count;
        appender.pending.buf_lines += count;
        appender.finish()
    }

    /// Where the journal stands. Call it while holding the store lock to pair it with a
    /// snapshot.
    pub fn position(&self) -> Position {
        let pending = lock(&self.pending);
        Position {
            seq: pending.seq,
            lines: pending.lines,
        }
    }

    /// Lines in the file and pending, live or not.
    pub fn lines(&self) -> u64 {
        lock(&self.pending).lines
    }

    /// Makes sure every byte up to `seq` is written (and synced, for `--fsync always`).
    ///
    /// # Errors
    /// The reason, when the file cannot be written: the bytes stay pending for a later retry,
    /// and the journal refuses puts until a write succeeds.
    pub fn commit(&self, seq: u64) -> Result<(), WriteError> {
        let mut writer = lock(&self.writer);
        if writer.written < seq {
            self.write_pending(&mut writer)?;
        }
        Ok(())
    }

    /// Writes everything pending: a retry after a failure, or before a compaction.
    ///
    /// # Errors
    /// As [`commit`](Journal::commit).
    pub fn flush(&self) -> Result<(), WriteError> {
        let mut writer = lock(&self.writer);
        self.write_pending(&mut writer)
    }

    fn write_pending(&self, writer: &mut Writer) -> Result<(), WriteError> {
        let (mut buf, end, lines) = {
            let mut pending = lock(&self.pending);
            let spare = std::mem::take(&mut writer.spare);
            let lines = std::mem::take(&mut pending.buf_lines);
            (
                std::mem::replace(&mut pending.buf, spare),
                pending.seq,
                lines,
            )
        };
        let mut result = writer.file.write_all(&buf);
        if result.is_ok() && self.fsync == Fsync::Always {
            result = writer.file.sync_data();
        }
        if let Err(e) = result {
            // Cut off any part of a line that made it, so later appends start on a line of
            // their own; keep the bytes, in order, for the next try.
            let _ = writer.file.set_len(writer.len);
            let mut pending = lock(&self.pending);
            buf.extend_from_slice(&pending.buf);
            pending.buf = buf;
            pending.buf_lines += lines;
            return Err(self.fail(e));
        }
        writer.written = end;
        writer.len += buf.len() as u64;
        self.file_bytes.store(writer.len, Ordering::Relaxed);
        self.written_lines.fetch_add(lines, Ordering::Relaxed);
        self.written.store(end, Ordering::Release);
        buf.clear();
        writer.spare = buf;
        if self.failing.swap(false, Ordering::AcqRel) {
            *lock(&self.failure) = None;
            crate::info!("data file {} is writable again", self.path.display());
        }
        Ok(())
    }

    /// Syncs what has been written: the `everysec` policy's once-a-second step. It uses its
    /// own handle, so writers are not held up while the disk works.
    ///
    /// # Errors
    /// The OS error.
    pub fn sync(&self) -> io::Result<()> {
        let file = Arc::clone(&lock(&self.current).file);
        file.sync_data()
    }

    /// Whether the file holds more than twice `live_points` lines (and at least
    /// [`COMPACT_MIN_LINES`]).
    pub fn needs_compaction(&self, live_points: usize) -> bool {
        let lines = self.lines();
        // Lines a compaction kept for forwarders are not counted against it again.
        let kept = self.kept_lines.load(Ordering::Relaxed);
        lines >= COMPACT_MIN_LINES && lines > 2 * live_points as u64 + kept
    }

    /// Rewrites the file as a snapshot plus the lines appended after it (and those after
    /// `keep_from`, when that is earlier: what forwarders have not yet sent). `at` is the
    /// [`position`](Journal::position) read under the store lock before the snapshot's first
    /// step; `fill` then appends the live points' lines in steps (each under the store lock
    /// briefly) and returns how many it added, 0 at the end. Points put after `at` may be in
    /// both the snapshot and the tail: replay applies them twice, in order, to the same result.
    /// Writers wait only while the tail is copied and the new file moved into place.
    ///
    /// The new file is created exclusively under a name that is this data file's and this
    /// process's ([`temp_path`](Journal::temp_path)); on failure it is removed, and the old file
    /// is still in use and complete.
    ///
    /// # Errors
    /// [`JournalError::Io`].
    pub fn compact(
        &self,
        at: Position,
        keep_from: u64,
        fill: impl FnMut(&mut Vec<u8>) -> u64,
    ) -> Result<CompactReport, JournalError> {
        let temp = self.temp_path();
        let mut created = false;
        let result = self.rewrite(&temp, &mut created, at, keep_from, fill);
        if result.is_err() && created {
            // The old file is still the data file; the half-made one goes.
            let _ = fs::remove_file(&temp);
        }
        result
    }

    /// Where compaction builds the next file: beside the data file, named after it and this
    /// process, hidden (`.data.txt.1234.compact`), so no other file is ever overwritten.
    pub fn temp_path(&self) -> PathBuf {
        temp_path(&self.path, std::process::id())
    }

    fn rewrite(
        &self,
        temp: &Path,
        created: &mut bool,
        at: Position,
        keep_from: u64,
        mut fill: impl FnMut(&mut Vec<u8>) -> u64,
    ) -> Result<CompactReport, JournalError> {
        let started = Instant::now();
        let lines_before = self.lines();
        let io_error = |action| io_error(temp, action);
        let mut temp_file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(temp)
            .map_err(io_error("create"))?;
        *created = true;
        // The new file takes the old one's owner where the OS lets us, then its mode (without
        // the group's bits if the group could not be kept), so that a compaction never widens
        // who may read the data. Best effort: a file system that refuses chmod must not stop
        // compaction for good.
        let old = lock(&self.current).file.metadata();
        if let Ok(old) = old {
            #[cfg(unix)]
            {
                use std::os::unix::fs::{MetadataExt, PermissionsExt};
                let owned = std::os::unix::fs::fchown(&temp_file, Some(old.uid()), Some(old.gid()));
                let mode = old.permissions().mode() & if owned.is_ok() { 0o7777 } else { 0o7707 };
                let _ = temp_file.set_permissions(fs::Permissions::from_mode(mode));
            }
            #[cfg(not(unix))]
            let _ = temp_file.set_permissions(old.permissions());
        }
        let (mut written, mut points) = (0u64, 0u64);
        let mut lines = Vec::with_capacity(1 << 20);
        loop {
            lines.clear();
            let added = fill(&mut lines);
            if added == 0 {
                break;
            }
            temp_file.write_all(&lines).map_err(io_error("write"))?;
            written += lines.len() as u64;
            points += added;
        }
        // The new file carries the lock once it takes the old one's name.
        temp_file
            .try_lock()
            .map_err(|e| io_error("lock")(io::Error::other(e.to_string())))?;

        // Copy what the new file keeps of the old (the lines forwarders still need, and those
        // written since the snapshot) while writers go on: written bytes never change, and
        // only compaction moves `base`. Then writers wait only for the last few.
        let write_error = |e: WriteError| JournalError::Io {
            path: self.path.clone(),
            action: "write",
            source: io::Error::new(e.0.kind(), e.0.to_string()),
        };
        self.flush().map_err(write_error)?;
        let (base, copied_to) = {
            let writer = lock(&self.writer);
            (writer.base, writer.len)
        };
        let from = keep_from.clamp(base.max(0) as u64, at.seq);
        let tail_start = (from as i64 - base) as u64;
        // The old file is read through the handle this journal holds, not by path: the file
        // at the path may have been removed or replaced.
        let old = Arc::clone(&lock(&self.current).file);
        // One pass copies the kept lines and counts those before the snapshot's position.
        let kept_bytes = (at.seq as i64 - base) as u64 - tail_start;
        let (early, kept) = copy_range(&old, (tail_start, copied_to), kept_bytes, &mut temp_file)
            .map_err(io_error("copy the tail to"))?;

        // From here writers wait: bring the old file up to date, copy the rest, and switch.
        let mut writer = lock(&self.writer);
        self.write_pending(&mut writer).map_err(write_error)?;
        let tail = early
            + copy_range(&old, (copied_to, writer.len), 0, &mut temp_file)
                .map_err(io_error("copy the tail to"))?
                .0;
        temp_file.sync_all().map_err(io_error("sync"))?;
        // Everything that can fail is done before the rename, so after it the journal always
        // writes to the file at the path.
        let file = temp_file.try_clone().map_err(io_error("open"))?;
        fs::rename(temp, &self.path).map_err(io_error("rename"))?;
        *created = false;
        if let Err(e) = sync_parent(&self.path) {
            crate::warn!(
                "compacted {}, but cannot sync its directory: {e}",
                self.path.display()
            );
        }
        writer.file = file;
        writer.base = from as i64 - written as i64;
        writer.len = written + tail;
        *lock(&self.current) = Current {
            file: Arc::new(temp_file),
            base: writer.base,
        };
        self.file_bytes.store(writer.len, Ordering::Relaxed);
        self.kept_lines.store(kept, Ordering::Relaxed);
        let lines_after = {
            let mut pending = lock(&self.pending);
            pending.lines = points + kept + (pending.lines - at.lines);
            pending.lines
        };
        drop(writer);
        Ok(CompactReport {
            lines_before,
            lines_after,
            millis: started.elapsed().as_millis(),
        })
    }

    /// Whether the file at the path is still the one this journal writes: `Some(why)` when it
    /// was removed, renamed away or replaced, so that its writes would be lost.
    pub fn lost(&self) -> Option<&'static str> {
        let held = lock(&self.current).file.metadata();
        match fs::metadata(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some("it was removed or renamed"),
            Err(_) => None,
            Ok(at_path) => match held {
                Ok(held) if !same_file(&held, &at_path) => Some("another file replaced it"),
                _ => None,
            },
        }
    }
}

#[cfg(unix)]
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

#[cfg(not(unix))]
fn same_file(_: &fs::Metadata, _: &fs::Metadata) -> bool {
    true
}

/// Hands bytes `from..to` of `file` to `each`, a large piece at a time, without moving the
/// file's offset.
fn read_range(
    file: &File,
    from: u64,
    to: u64,
    mut each: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let want = buf.len().min((to - at) as usize);
        let n = read_at(file, &mut buf[..want], at)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        each(&buf[..n])?;
        at += n as u64;
    }
    Ok(())
}

/// The lines in bytes `from..to` of `file`.
fn count_lines(file: &File, from: u64, to: u64) -> io::Result<u64> {
    let mut lines = 0;
    read_range(file, from, to, |bytes| {
        lines += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
        Ok(())
    })?;
    Ok(lines)
}

/// Copies bytes `from..to` of `file` to the end of `out`; returns how many, and how many lines
/// the first `counted` of them hold.
fn copy_range(
    file: &File,
    (from, to): (u64, u64),
    counted: u64,
    out: &mut File,
) -> io::Result<(u64, u64)> {
    let (mut seen, mut lines) = (0u64, 0u64);
    read_range(file, from, to, |bytes| {
        let uncounted = counted.saturating_sub(seen).min(bytes.len() as u64) as usize;
        lines += bytes[..uncounted].iter().filter(|&&b| b == b'\n').count() as u64;
        seen += bytes.len() as u64;
        out.write_all(bytes)
    })?;
    Ok((to - from, lines))
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

/// The longest file name a directory takes on common file systems (`NAME_MAX`).
const NAME_MOST: usize = 255;

/// Refuses the data file at `path` when a file it makes beside it, `made` with a process
/// number and a suffix added (`.PID.compact`, `.PID.tmp`), would not fit in a directory:
/// `what` names that file in the error.
///
/// # Errors
/// [`JournalError::Io`] saying so.
pub fn check_made_name(path: &Path, made: &str, what: &str) -> Result<(), JournalError> {
    if made.len() + ".4294967295.compact".len() <= NAME_MOST {
        return Ok(());
    }
    Err(io_error(path, "use")(io::Error::other(format!(
        "its name is too long for the name of {what} to fit in a directory"
    ))))
}

/// The file a data file named `path` is: a link is followed once, at start-up, so that
/// compaction renames its new file over the file the link names, not over the link (which
/// would leave the data behind it). A link to a file not made yet, through any number of
/// links up to [`LINKS_MOST`], names where it will be.
pub fn resolve_link(path: &Path) -> PathBuf {
    let is_link = |at: &Path| fs::symlink_metadata(at).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link(path) {
        return path.to_path_buf();
    }
    if let Ok(target) = fs::canonicalize(path) {
        return target;
    }
    let mut at = path.to_path_buf();
    for _ in 0..LINKS_MOST {
        let Some(to) = is_link(&at).then(|| fs::read_link(&at).ok()).flatten() else {
            break;
        };
        at = at.parent().unwrap_or(Path::new("")).join(to);
    }
    at
}

/// Links followed to a data file not made yet, as the kernel follows at most 40.
const LINKS_MOST: usize = 40;

/// The compaction file of the data file at `path` for process `pid`.
fn temp_path(path: &Path, pid: u32) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.{pid}.compact"))
}

/// Removes compaction and progress files that a crashed server left half-written beside the
/// data file at `path`. Only called while holding the data file's lock, so no live server is
/// writing one. Returns their names.
fn remove_leftovers(path: &Path) -> Vec<PathBuf> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let prefix = format!(".{name}.");
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let number = |pid: &str| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
        // `.NAME.PID.compact`, and a forwarder's progress file being written,
        // `.NAME.forward.UPSTREAM.PID.tmp`.
        let ours = file_name.strip_prefix(&prefix).is_some_and(|rest| {
            rest.strip_suffix(".compact").is_some_and(number)
                || rest
                    .strip_prefix("forward.")
                    .and_then(|rest| rest.strip_suffix(".tmp"))
                    .and_then(|rest| rest.rsplit_once('.'))
                    .is_some_and(|(_, pid)| number(pid))
        });
        if ours && fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

/// The file readers use, and the sequence number at its offset 0.
#[derive(Debug)]
struct Current {
    file: Arc<File>,
    base: i64,
}

/// Which file a saved offset is in: its device and inode. A compaction or a rewrite makes a
/// new file, so an offset saved for an older one is recognised as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId(pub u64, pub u64);

impl Journal {
    /// Sequence number just past the last byte written to the file: what readers may read.
    pub fn written_seq(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Lines written since the file was opened, plus those it held then.
    pub fn written_lines(&self) -> u64 {
        self.written_lines.load(Ordering::Relaxed)
    }

    /// Appends the written bytes from sequence number `seq` on, at most `most` of them and
    /// ending with a whole line, to `out`. Reads through its own handle: writers never wait.
    ///
    /// # Errors
    /// The OS error.
    pub fn read_from(&self, seq: u64, most: usize, out: &mut Vec<u8>) -> io::Result<()> {
        let end = self.written_seq();
        let (file, base) = self.current_file();
        if seq >= end || (seq as i64) < base {
            return Ok(());
        }
        let start = out.len();
        let want = most.min((end - seq) as usize);
        out.resize(start + want, 0);
        let mut filled = 0;
        while filled < want {
            let n = read_at(
                &file,
                &mut out[start + filled..],
                (seq as i64 - base) as u64 + filled as u64,
            )?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        let whole = out[start..start + filled]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        out.truncate(start + whole);
        Ok(())
    }

    /// Lines in the file before sequence number `seq` (read from the file: for start-up).
    pub fn lines_before(&self, seq: u64) -> u64 {
        let (file, base) = self.current_file();
        count_lines(&file, 0, (seq as i64 - base).max(0) as u64).unwrap_or(0)
    }

    /// Where sequence number `seq` is in the file, as an offset, the file's identity and a mark
    /// of what precedes it: what a forwarder saves, to find its place again after a restart.
    pub fn place(&self, seq: u64) -> Option<Place> {
        // The file and its base are taken together; the reads happen after the lock is gone.
        let (file, base) = self.current_file();
        let offset = (seq as i64 - base).max(0) as u64;
        Some(Place {
            offset,
            id: file_id(&file)?,
            mark: Some(mark_before(&file, offset).ok()?),
        })
    }

    /// The sequence number of a saved place, if it was saved for the file in use now and the
    /// bytes before it are still those it was saved after (a file put back in place of the
    /// data file may have its inode). A place saved without a mark needs a line to end there.
    pub fn seq_of(&self, place: Place) -> Option<u64> {
        let (file, base) = self.current_file();
        let seq = base + place.offset as i64;
        if file_id(&file) != Some(place.id) || seq < 0 || seq as u64 > self.written_seq() {
            return None;
        }
        let valid = match place.mark {
            Some(mark) => mark_before(&file, place.offset).ok() == Some(mark),
            None => line_ends_before(&file, place.offset).unwrap_or(false),
        };
        valid.then_some(seq as u64)
    }

    /// The file readers use and the sequence number at its offset 0, taken together.
    fn current_file(&self) -> (Arc<File>, i64) {
        let current = lock(&self.current);
        (Arc::clone(&current.file), current.base)
    }
}

/// A position in a data file as saved for a later run: its offset, which file it is in, and a
/// mark of the bytes just before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub offset: u64,
    pub id: FileId,
    pub mark: Option<u64>,
}

/// Bytes before a saved offset that its mark is made of: the end of the line before it, and
/// more.
const MARK_BYTES: usize = 256;

/// FNV-1a of the [`MARK_BYTES`] (or fewer, at the start) before `offset`: stable from run to
/// run, unlike std's hashers.
fn mark_before(file: &File, offset: u64) -> io::Result<u64> {
    let from = offset.saturating_sub(MARK_BYTES as u64);
    let mut bytes = [0; MARK_BYTES];
    let len = (offset - from) as usize;
    read_exact_at(file, &mut bytes[..len], from)?;
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for &b in &bytes[..len] {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    Ok(hash)
}

/// Whether `offset` is the start of the file or just after a `\n`.
fn line_ends_before(file: &File, offset: u64) -> io::Result<bool> {
    if offset == 0 {
        return Ok(true);
    }
    let mut byte = [0];
    read_exact_at(file, &mut byte, offset - 1)?;
    Ok(byte[0] == b'\n')
}

fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match read_at(file, buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(unix)]
fn file_id(file: &File) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    file.metadata().ok().map(|m| FileId(m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_: &File) -> Option<FileId> {
    None
}

/// Point lines being appended under the store lock; see [`Journal::appender`].
pub struct Appender<'a> {
    pending: MutexGuard<'a, Pending>,
    added: u64,
}

impl Appender<'_> {
    /// Appends one point's line.
    pub fn push(&mut self, metric: &str, value: f64, timestamp: i64) {
        let before = self.pending.buf.len();
        protocol::write_point(&mut self.pending.buf, metric, value, timestamp);
        self.added += (self.pending.buf.len() - before) as u64;
        self.pending.lines += 1;
        self.pending.buf_lines += 1;
    }

    /// Ends the batch; returns the sequence number to [`commit`](Journal::commit) it up to.
    pub fn finish(mut self) -> u64 {
        self.pending.seq += self.added;
        self.pending.seq
    }
}

/// Wraps an OS error from `action` on `path`.
fn io_error(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> JournalError {
    let path = path.to_path_buf();
    move |source| JournalError::Io {
        path,
        action,
        source,
    }
}

/// Syncs the directory holding `path`, so a created or renamed file's name is durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Reads every complete line into a store. Returns it, what was found, and the length of the
/// complete lines.
fn replay(
    file: &File,
    path: &Path,
    since: i64,
    line_most: usize,
) -> Result<(Store, LoadReport, u64), JournalError> {
    let mut store = Store::new();
    let mut report = LoadReport::default();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(256);
    let mut good_len = 0u64;
    let corrupt = |line: u64, problem: String| JournalError::Corrupt {
        path: path.to_path_buf(),
        line,
        problem,
    };
    loop {
        line.clear();
        let read = io::Read::take(&mut reader, line_most as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|source| JournalError::Io {
                path: path.to_path_buf(),
                action: "read",
                source,
            })?;
        if read == 0 {
            break;
        }
        // Longer than `line_most` without its newline.
        if line.len() > line_most && line.last() != Some(&b'\n') {
            return Err(corrupt(
                report.lines + 1,
                format!("a line longer than {line_most} bytes: {}", shown(&line)),
            ));
        }
        if line.last() != Some(&b'\n') {
            // The end of the file, mid-line: a write the crash cut short, with any zeros a
            // power loss left past it, if it could be the start of a point. Anything else is
            // not ours to cut: a file named by mistake. So is one word with no whole line
            // before it: a point's fragment is ours once it reached its value.
            let written = line.iter().rposition(|&b| b != 0).map_or(0, |end| end + 1);
            let fragment = &line[..written];
            let plausible = fragment.is_empty()
                || could_be_torn_point(fragment) && (good_len > 0 || fragment.contains(&b' '));
            if !plausible {
                return Err(corrupt(
                    report.lines + 1,
                    format!(
                        "the last line has no newline and is not the start of a point: {}",
                        shown(&line)
                    ),
                ));
            }
            report.torn_bytes = read as u64;
            break;
        }
        report.lines += 1;
        good_len += read as u64;
        let (metric, value, timestamp) = match protocol::parse_point_line(&line) {
            Ok(Some(PointLine {
                metric,
                value,
                timestamp: Some(timestamp),
            })) => (metric, value, timestamp),
            Err(PointError::Metric(NameError::Forbidden(_))) => {
                // Written before the name rule was tightened: skipped, and left in the file
                // until the next compaction.
                report.invalid_names += 1;
                if report.first_invalid.is_none() {
                    report.first_invalid = Some(shown(&line));
                }
                continue;
            }
            _ => return Err(corrupt(report.lines, describe_bad_line(&line))),
        };
        if timestamp < since {
            report.expired += 1;
        } else {
            // No memory limit is set while loading: this put cannot be refused.
            let _ = store.put(metric, value, timestamp);
        }
    }
    Ok((store, report, good_len))
}

/// Whether `fragment` (a last line without `\n`) could be a point line cut short, as this
/// server writes them: `metric value timestamp`, one space between fields; a metric name has no
/// whitespace or control characters, a value is Python's text of a float, a timestamp digits.
fn could_be_torn_point(fragment: &[u8]) -> bool {
    let mut fields = fragment.split(|&b| b == b' ');
    let name = fields.next().unwrap_or_default();
    let value = fields.next();
    let timestamp = fields.next();
    let float_text = |text: &[u8]| {
        text.iter().all(|b| b"0123456789.e+-".contains(b))
            || [&b"inf"[..], b"-inf", b"nan"]
                .iter()
                .any(|word| word.starts_with(text))
    };
    !name.is_empty()
        && !name
            .iter()
            .any(|&b| b.is_ascii_whitespace() || b < b' ' || b == 0x7f)
        && value.is_none_or(|value| float_text(value) && (timestamp.is_none() || !value.is_empty()))
        && timestamp.is_none_or(|t| {
            t.iter()
                .enumerate()
                .all(|(i, &b)| b.is_ascii_digit() || (i == 0 && b == b'-'))
        })
        && fields.next().is_none()
}

fn describe_bad_line(line: &[u8]) -> String {
    format!("not a 'metric value timestamp' line: {}", shown(line))
}

/// The start of a line, quoted with its control characters escaped.
fn shown(line: &[u8]) -> String {
    const SHOWN: usize = 80;
    let text = String::from_utf8_lossy(&line[..line.len().min(SHOWN)]);
    format!("{:?}", text.trim_end_matches('\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_path(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("metrics-journal-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir.join("data.txt")
    }

    fn dump(store: &Store) -> String {
        let mut out = Vec::new();
        write_all(store, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// Every point's line; how many.
    fn write_all(store: &Store, out: &mut Vec<u8>) -> u64 {
        let mut count = 0;
        for series in store.read_after(None, i64::MIN..=i64::MAX, usize::MAX) {
            for (t, v) in series.points() {
                protocol::write_point(out, series.name(), v, t);
                count += 1;
            }
        }
        count
    }

    fn put(store: &mut Store, metric: &str, value: f64, timestamp: i64) {
        store.put(metric, value, timestamp).unwrap();
    }

    /// A compaction source that writes the whole store in one step.
    fn fill(store: &Store) -> impl FnMut(&mut Vec<u8>) -> u64 + '_ {
        let mut done = false;
        move |out| {
            if std::mem::replace(&mut done, true) {
                0
            } else {
                write_all(store, out)
            }
        }
    }

    #[test]
    fn appended_lines_replay_in_order() {
        let path = test_path("replay");
        let (_, journal, report) = Journal::open(&path, Fsync::No, i64::MIN).unwrap();
        assert_eq!(report, LoadReport::default());
        let seq = journal.append(b"a 1.0 1\nb 2.0 2\na 3.0 1\n", 3);
        journal.commit(seq).unwrap();
        drop(journal);
        let (store, _, report) = Journal::open(&path, Fsync::No, i64::MIN).unwrap();
        assert_eq!(report.lines, 3);
        assert_eq!(dump(&store), "a 3.0 1\nb 2.0 2\n");
    }

    #[test]
    fn a_torn_last_line_is_cut_and_later_appends_read_back() {
        let path = test_path("torn");
        fs::write(&path, "a 1.0 1\nb 2.0 2\nc 3.").unwrap();
        let (store, journal, report) = Journal::open(&path, Fsync::Always, i64::MIN).unwrap();
        assert_eq!(report.torn_bytes, 4);
        assert_eq!(dump(&store), "a 1.0 1\nb 2.0 2\n");
        let seq = journal.append(b"d 4.0 4\n", 1);
        journal.commit(seq).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "a 1.0 1\nb 2.0 2\nd 4.0 4\n"
        );
    }

    #[test]
    fn every_cut_of_a_written_line_could_be_a_torn_point() {
        let mut store = Store::new();
        for (metric, value, timestamp) in [
            ("cpu.load", 0.5, 1_700_000_000),
            ("température", 1e-5, 0),
            ("m", f64::NEG_INFINITY, -5),
            ("n", f64::NAN, i64::MIN),
            ("big", -1.7976931348623157e308, i64::MAX),
        ] {
            store.put(metric, value, timestamp).unwrap();
        }
        let text = dump(&store);
        for line in text.lines() {
            for cut in 1..=line.len() {
                let fragment = &line.as_bytes()[..cut];
                assert!(could_be_torn_point(fragment), "{:?}", shown(fragment));
            }
        }
        for text in [
            &b"hello world, this is not data"[..],
            b"{\"json\": 1}",
            b"\0\0\0\0",
            b" leading",
            b"a  1.0",
            b"a 1.0 2 3",
            b"a 1.0 17x",
            b"a b",
            b"key: value",
            b"a\t1.0 1",
        ] {
            assert!(!could_be_torn_point(text), "{:?}", shown(text));
        }
    }

    #[test]
    fn a_torn_tail_of_zeros_is_cut_and_a_lone_word_is_not() {
        let path = test_path("zeros");
        fs::write(&path, "a 1.0 1\nb 2.0\0\0\0\0").unwrap();
        let (store, _, report) = Journal::open(&path, Fsync::No, i64::MIN).unwrap();
        assert_eq!((dump(&store).as_str(), report.torn_bytes), ("a 1.0 1\n", 9));
        fs::write(&path, "a 1.0 1\nb").unwrap();
        assert_eq!(
            Journal::open(&path, Fsync::No, i64::MIN)
                .unwrap()
                .2
                .torn_bytes,
            1
        );
        for text in ["sk-live-0123456789abcdef", "12345"] {
            fs::write(&path, text).unwrap();
            assert!(Journal::open(&path, Fsync::No, i64::MIN).is_err(), "{text}");
            assert_eq!(fs::read_to_string(&path).unwrap(), text);
        }
        fs::write(&path, "a 1.").unwrap();
        assert_eq!(
            Journal::open(&path, Fsync::No, i64::MIN)
                .unwrap()
                .2
                .torn_bytes,
            4
        );
    }

    #[test]
    fn a_last_line_that_is_not_a_cut_point_refuses_and_leaves_the_file() {
        let path = test_path("not-torn");
        let text = "a 1.0 1\nhello, world";
        fs::write(&path, text).unwrap();
        let error = Journal::open(&path, Fsync::No, i64::MIN).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}:2: the last line has no newline and is not the start of a point: \
                 \"hello, world\"",
                path.display()
            )
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn a_line_over_the_limit_refuses_without_reading_it_all() {
        let path = test_path("long");
        let mut text = b"a 1.0 1\nbb 2.0 2\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', 10_000));
        fs::write(&path, &text).unwrap();
        let file = File::open(&path).unwrap();
        // A line of 8 bytes and its newline is within a limit of 8; 9 bytes are not.
        for (limit, line, shown) in [(8, 3, "xxxxxxxxx"), (7, 2, "bb 2.0 2")] {
            let error = replay(&file, &path, i64::MIN, limit).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "{}:{line}: a line longer than {limit} bytes: \"{shown}\"",
                    path.display()
                )
            );
            io::Seek::seek(&mut &file, io::SeekFrom::Start(0)).unwrap();
        }
        assert_eq!(fs::read(&path).unwrap(), text);
    }

    #[test]
    fn a_file_that_is_not_a_regular_file_is_refused() {
        for path in ["/dev/null", "/dev/zero"] {
            let error = Journal::open(Path::new(path), Fsync::No, i64::MIN).unwrap_err();
            let source = std::error::Error::source(&error).map(ToString::to_string);
            assert_eq!(error.to_string(), format!("cannot use {path}"));
            assert_eq!(source.as_deref(), Some("it is not a regular file"));
        }
    }

    #[test]
    fn a_bad_line_in_the_middle_refuses_and_leaves_the_file() {
        let path = test_path("corrupt");
        let text = "a 1.0 1\nb two 2\nc 3.0 3\n";
        fs::write(&path, text).unwrap();
        let error = Journal::open(&path, Fsync::No, i64::MIN).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}:2: not a 'metric value timestamp' line: \"b two 2\"",
                path.display()
            )
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn compaction_keeps_the_live_points_and_later_appends() {
        let path = test_path("compact");
        let (mut store, journal, _) = Journal::open(&path, Fsync::EverySec, i64::MIN).unwrap();
        let mut lines = Vec::new();
        for round in 0..3 {
            for t in 0..500 {
                put(&mut store, "m", f64::from(round), t);
                protocol::write_point(&mut lines, "m", f64::from(round), t);
            }
        }
        journal.commit(journal.append(&lines, 1500)).unwrap();
        // Overwrites are known once late points are merged, as the server does once a second.
        store.merge_late();
        assert!(journal.needs_compaction(store.points()));
        // A put that lands after the snapshot but before the switch must survive.
        let at = journal.position();
        let mut snapshot = fill(&store);
        let report = journal
            .compact(at, u64::MAX, |out| {
                let added = snapshot(out);
                if added > 0 {
                    journal.append(b"late 9.0 9\n", 1);
                }
                added
            })
            .unwrap();
        drop(snapshot);
        assert_eq!((report.lines_before, report.lines_after), (1500, 501));
        journal.commit(journal.append(b"later 1.0 1\n", 1)).unwrap();
        drop(journal);
        let (replayed, _, report) = Journal::open(&path, Fsync::No, i64::MIN).unwrap();
        assert_eq!(report.lines, 502);
        put(&mut store, "late", 9.0, 9);
        put(&mut store, "later", 1.0, 1);
        assert_eq!(dump(&replayed), dump(&store));
    }

    #[test]
    fn a_failed_compaction_leaves_the_old_file_in_use() {
        let path = test_path("compact-fails");
        let (mut store, journal, _) = Journal::open(&path, Fsync::No, i64::MIN).unwrap();
        put(&mut store, "a", 1.0, 1);
        journal.commit(journal.append(b"a 1.0 1\n", 1)).unwrap();
        // Something in the way of the new file.
        fs::create_dir(journal.temp_path()).unwrap();
        let error = journal
            .compact(journal.position(), u64::MAX, fill(&store))
            .unwrap_err();
        assert!(error.to_string().starts_with("cannot create "), "{error}");
        journal.commit(journal.append(b"b 2.0 2\n", 1)).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "a 1.0 1\nb 2.0 2\n");
    }

    #[test]
    fn a_second_journal_on_the_same_file_is_refused_even_after_compaction() {
        let path = test_path("locked");
        let (store, journal, _) = Journal::open(&path, Fsync::No, i64::MIN).unwrap();
        let refused = Journal::open(&path, Fsync::No, i64::MIN).unwrap_err();
        assert!(
            crate::log::chain(&refused).ends_with("another metrics server is using it"),
            "{refused}"
        );
        journal
            .compact(journal.position(), u64::MAX, fill(&store))
            .unwrap();
        assert!(Journal::open(&path, Fsync::No, i64::MIN).is_err());
        drop(journal);
        assert!(Journal::open(&path, Fsync::No, i64::MIN).is_ok());
    }

    #[test]
    fn expired_points_are_not_loaded() {
        let path = test_path("expired");
        fs::write(&path, "a 1.0 1\na 2.0 100\n").unwrap();
        let (store, _, report) = Journal::open(&path, Fsync::No, 50).unwrap();
        assert_eq!(report.expired, 1);
        assert_eq!(dump(&store), "a 2.0 100\n");
    }
}

#[cfg(test)]
mod safety {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("metrics-journal-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn compaction_files_are_hidden_and_named_for_their_data_file_and_process() {
        let path = Path::new("/d/data.compact");
        assert_eq!(
            temp_path(path, 42),
            Path::new("/d/.data.compact.42.compact")
        );
        assert_eq!(temp_path(Path::new("x"), 7), Path::new(".x.7.compact"));
    }

    #[test]
    fn start_up_removes_only_this_data_files_leftovers() {
        let dir = dir("leftovers");
        let path = dir.join("d.txt");
        let others = [
            "d.compact",
            ".d.txt.compact",
            ".d.txt.12x.compact",
            ".e.txt.12.compact",
            ".d.txt.12.compact.bak",
            ".d.txt.forward.h_1",
            ".d.txt.forward.h_1.tmp",
            ".e.txt.forward.h_1.12.tmp",
        ];
        for other in others {
            fs::write(dir.join(other), "keep").unwrap();
        }
        let half = [".d.txt.12.compact", ".d.txt.forward.h_1.34.tmp"];
        for name in half {
            fs::write(dir.join(name), "half").unwrap();
        }
        let (_, _, mut report) = Journal::open(&path, Fsync::No, i64::MIN).unwrap();
        report.leftovers.sort();
        assert_eq!(report.leftovers, half.map(|name| dir.join(name)));
        for name in half {
            assert!(!dir.join(name).exists());
        }
        for other in others {
            assert_eq!(fs::read_to_string(dir.join(other)).unwrap(), "keep");
        }
    }

    #[test]
    fn a_removed_or_replaced_file_is_noticed() {
        let dir = dir("lost");
        let path = dir.join("d.txt");
        let (_, journal, _) = Journal::open(&path, Fsync::No, i64::MIN).unwrap();
        assert_eq!(journal.lost(), None);
        fs::remove_file(&path).unwrap();
        assert_eq!(journal.lost(), Some("it was removed or renamed"));
        fs::write(&path, "x 1.0 1\n").unwrap();
        assert_eq!(journal.lost(), Some("another file replaced it"));
    }

    /// Compacts `journal` to the snapshot `lines`.
    fn compact_to(journal: &Journal, lines: &[u8]) {
        let at = journal.position();
        let mut once = Some(lines);
        journal
            .compact(at, u64::MAX, |out| match once.take() {
                Some(lines) => {
                    out.extend_from_slice(lines);
                    1
                }
                None => 0,
            })
            .unwrap();
    }

    /// A compaction's new file is readable by whom the old one was, no more.
    #[test]
    fn compaction_keeps_the_files_mode() {
        use std::os::unix::fs::PermissionsExt;
        let path = dir("mode").join("d.txt");
        let (_, journal, _) = Journal::open(&path, Fsync::No, i64::MIN).unwrap();
        journal
            .commit(journal.append(b"a 1.0 1\na 2.0 1\n", 2))
            .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        compact_to(&journal, b"a 2.0 1\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "a 2.0 1\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    /// A data file named through a link is the file the link names: compaction renames its new
    /// file over that one, so the link keeps naming the data.
    #[test]
    fn a_data_file_named_through_a_link_stays_behind_it() {
        let dir = dir("link");
        fs::create_dir(dir.join("real")).unwrap();
        let real = dir.join("real").join("d.txt");
        let link = dir.join("link.txt");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let (_, journal, _) = Journal::open(&link, Fsync::No, i64::MIN).unwrap();
        assert_eq!(journal.path(), fs::canonicalize(&real).unwrap());
        journal
            .commit(journal.append(b"a 1.0 1\na 2.0 1\n", 2))
            .unwrap();
        compact_to(&journal, b"a 2.0 1\n");
        journal.commit(journal.append(b"b 3.0 3\n", 1)).unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&real).unwrap(), "a 2.0 1\nb 3.0 3\n");

        // A chain of links to a file not made yet names it too, however long the chain.
        let (first, second) = (dir.join("l1.txt"), dir.join("l2.txt"));
        std::os::unix::fs::symlink("l2.txt", &first).unwrap();
        std::os::unix::fs::symlink("real/later.txt", &second).unwrap();
        let (_, journal, _) = Journal::open(&first, Fsync::No, i64::MIN).unwrap();
        journal.commit(journal.append(b"c 1.0 1\n", 1)).unwrap();
        assert_eq!(journal.path(), dir.join("real").join("later.txt"));
        assert_eq!(fs::read_to_string(&first).unwrap(), "c 1.0 1\n");
        // A loop of links ends rather than spinning.
        let (a, b) = (dir.join("a.txt"), dir.join("b.txt"));
        std::os::unix::fs::symlink("b.txt", &a).unwrap();
        std::os::unix::fs::symlink("a.txt", &b).unwrap();
        assert!(Journal::open(&a, Fsync::No, i64::MIN).is_err());
    }

    #[test]
    fn a_name_too_long_for_its_compaction_file_is_refused() {
        let dir = dir("long-name");
        let fits = "d".repeat(255 - ".4294967295.compact".len() - 1);
        assert!(Journal::open(&dir.join(&fits), Fsync::No, i64::MIN).is_ok());
        let error = Journal::open(&dir.join(format!("{fits}d")), Fsync::No, i64::MIN).unwrap_err();
        assert!(error.to_string().starts_with("cannot use "), "{error}");
        let source = std::error::Error::source(&error).unwrap().to_string();
        assert!(source.starts_with("its name is too long"), "{source}");
    }
}
