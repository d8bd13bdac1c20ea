//! The ext3/ext4 journal (jbd2), read-only: which metadata blocks a journal replay would
//! overwrite, and where their newest committed copies are in the journal.
//!
//! A snapshot of a running guest is crash-consistent: its file system has `needs_recovery` set
//! and the newest metadata (bitmaps, inodes, directories) exists only in committed transactions
//! of the journal. [`Replay::scan`] does what the kernel's `fs/jbd2/recovery.c` (and e2fsck,
//! which shares it) does in its three passes (scan to the end of the log, collect revoke
//! records, replay), but in memory: it only records, for every block a replay would write, the
//! journal block that holds its newest copy, and [`super::fs`] reads metadata through that map.
//! Nothing is written and no block content is kept in memory.
//!
//! Conservative by design: anything this reader does not understand or cannot verify (an
//! external journal, an unknown feature, checksums v1 or asynchronous commits, fast commits, a
//! checksum that fails, a transaction without its commit block, a tag naming a block outside
//! the file system, an error recorded in the journal) is a [`Journal::NotUnderstood`] with the
//! reason, and the caller reads that file system in full.

use std::collections::HashMap;

use super::crc::crc32c;
use crate::error::Result;

const MAGIC: u32 = 0xC03B_3998;
const DESCRIPTOR: u32 = 1;
const COMMIT: u32 = 2;
const SUPERBLOCK_V2: u32 = 4;
const REVOKE: u32 = 5;

const INCOMPAT_REVOKE: u32 = 0x1;
const INCOMPAT_64BIT: u32 = 0x2;
const INCOMPAT_ASYNC_COMMIT: u32 = 0x4;
const INCOMPAT_CSUM_V2: u32 = 0x8;
const INCOMPAT_CSUM_V3: u32 = 0x10;
const INCOMPAT_FAST_COMMIT: u32 = 0x20;
/// Incompat features this reader replays: revoke records, 64-bit block numbers, checksums v2/v3.
const INCOMPAT_KNOWN: u32 = INCOMPAT_REVOKE | INCOMPAT_64BIT | INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3;
/// `s_checksum_type` of checksums v2/v3.
const CRC32C_CHKSUM: u8 = 4;

const FLAG_ESCAPE: u16 = 1;
const FLAG_SAME_UUID: u16 = 2;
const FLAG_LAST_TAG: u16 = 8;

/// What the journal of a file system that needs recovery holds.
#[derive(Debug)]
pub enum Journal {
    /// The journal is empty (`s_start` is 0): the file system on disk is what a replay gives.
    Empty,
    /// Committed transactions to replay.
    Replay(Replay),
    /// A journal this reader does not understand or cannot verify; the reason, for the plan.
    NotUnderstood(String),
}

/// The outcome of the replay: for each file-system block a replay overwrites, the block of the
/// partition that holds its newest committed copy (inside the journal).
#[derive(Debug, Clone)]
pub struct Replay {
    copies: HashMap<u64, Location>,
    /// The journal's block size, which is the file system's.
    pub block_size: u64,
    /// Complete transactions found in the log.
    pub transactions: u64,
    /// Tagged blocks skipped because a revoke record covers them.
    pub revoked: u64,
}

/// Where the newest copy of a replayed block lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// The file-system block (inside the journal) that holds the copy.
    pub at: u64,
    /// The copy's first four bytes were the journal magic, stored as zeros (`FLAG_ESCAPE`): a
    /// reader puts the magic back.
    pub escaped: bool,
}

/// The big-endian magic, as an escaped block's first four bytes read after replay.
pub const ESCAPED_MAGIC: [u8; 4] = MAGIC.to_be_bytes();

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// What the journal reader needs from the file system that holds the journal (implemented by
/// [`super::fs::Ext4`]). The journal itself is read as it is on the disk, never through a replay.
pub trait Host {
    /// File-system block size.
    fn block_size(&self) -> u64;

    /// Blocks in the file system (a tag naming a block past them is refused).
    fn blocks(&self) -> u64;

    /// The journal file: its block map as (logical, physical, count) runs and its size in
    /// bytes; or why there is none this reader can read (an external journal, a journal inode
    /// outside the inode table or not a regular file).
    ///
    /// # Errors
    /// I/O errors.
    #[allow(clippy::type_complexity)]
    fn journal_file(&self) -> Result<std::result::Result<(Vec<(u64, u64, u64)>, u64), String>>;

    /// Reads file-system block `b` as it is on the disk.
    ///
    /// # Errors
    /// I/O errors.
    fn read_raw_block(&self, b: u64, buf: &mut [u8]) -> Result<()>;
}

/// Transaction ids wrap: `a` is at or after `b` (the kernel's `tid_geq`).
fn tid_geq(a: u32, b: u32) -> bool {
    a.wrapping_sub(b) as i32 >= 0
}

/// The journal's blocks: its superblock fields and where each journal block lives.
struct Log<'f> {
    fs: &'f dyn Host,
    /// The journal file's block map: (logical, physical, count) runs, sorted.
    runs: Vec<(u64, u64, u64)>,
    bs: usize,
    first: u64,
    maxlen: u64,
    incompat: u32,
    /// `crc32c(~0, s_uuid)` with checksums v2/v3.
    seed: Option<u32>,
}

impl Log<'_> {
    /// The file-system block holding journal block `j`.
    fn home(&self, j: u64) -> Option<u64> {
        let i = self.runs.partition_point(|&(l, _, _)| l <= j);
        let &(l, p, n) = self.runs.get(i.checked_sub(1)?)?;
        (j < l + n).then_some(p + (j - l))
    }

    fn read(&self, j: u64, buf: &mut [u8]) -> Result<std::result::Result<u64, String>> {
        let Some(at) = self.home(j) else {
            return Ok(Err(format!(
                "the journal inode does not map journal block {j}"
            )));
        };
        self.fs.read_raw_block(at, buf)?;
        Ok(Ok(at))
    }

    fn next(&self, j: u64) -> u64 {
        if j + 1 >= self.maxlen {
            self.first
        } else {
            j + 1
        }
    }

    fn tag_bytes(&self) -> usize {
        if self.incompat & INCOMPAT_CSUM_V3 != 0 {
            return 16;
        }
        let sz = if self.incompat & INCOMPAT_CSUM_V2 != 0 {
            14
        } else {
            12
        };
        if self.incompat & INCOMPAT_64BIT != 0 {
            sz
        } else {
            sz - 4
        }
    }

    /// Bytes at the end of descriptor and revoke blocks taken by their checksum.
    fn tail_bytes(&self) -> usize {
        if self.seed.is_some() {
            4
        } else {
            0
        }
    }

    /// The tail checksum of a descriptor or revoke block (`jbd2_descriptor_block_csum_verify`).
    fn tail_sound(&self, b: &[u8]) -> bool {
        let Some(seed) = self.seed else { return true };
        let end = b.len() - 4;
        crc32c(crc32c(seed, &b[..end]), &[0; 4]) == be32(b, end)
    }

    /// A commit block's checksum in `h_chksum[0]` (`jbd2_commit_block_csum_verify`).
    fn commit_sound(&self, b: &[u8]) -> bool {
        let Some(seed) = self.seed else { return true };
        let c = crc32c(seed, &b[..16]);
        let c = crc32c(c, &[0; 4]);
        crc32c(c, &b[20..]) == be32(b, 16)
    }

    /// A data block's checksum in its tag (`jbd2_block_tag_csum_verify`).
    fn data_sound(&self, tag: &[u8], sequence: u32, data: &[u8]) -> bool {
        let Some(seed) = self.seed else { return true };
        let c = crc32c(crc32c(seed, &sequence.to_be_bytes()), data);
        if self.incompat & INCOMPAT_CSUM_V3 != 0 {
            c == be32(tag, 12)
        } else {
            c as u16 == be16(tag, 4)
        }
    }
}

/// One complete transaction: its id and its tagged blocks, in log order.
struct Transaction {
    sequence: u32,
    blocks: Vec<(u64, Location)>,
}

macro_rules! refuse {
    ($($arg:tt)*) => {
        return Ok(Journal::NotUnderstood(format!($($arg)*)))
    };
}

impl Replay {
    /// The newest committed copy of file-system block `block`, if a replay overwrites it.
    pub fn copy_of(&self, block: u64) -> Option<Location> {
        self.copies.get(&block).copied()
    }

    /// A replay of the given copies (for tests of readers).
    #[cfg(test)]
    pub(crate) fn with_copies(block_size: u64, copies: &[(u64, Location)]) -> Replay {
        Replay {
            copies: copies.iter().copied().collect(),
            block_size,
            transactions: 1,
            revoked: 0,
        }
    }

    /// Blocks a replay overwrites.
    pub fn blocks(&self) -> usize {
        self.copies.len()
    }

    /// Reads the journal of `fs` (as on disk, not replayed) and finds what a replay would write.
    ///
    /// # Errors
    /// I/O errors; everything else is [`Journal::NotUnderstood`].
    pub fn scan(fs: &dyn Host) -> Result<Journal> {
        let (mut runs, journal_size) = match fs.journal_file()? {
            Ok(file) => file,
            Err(why) => refuse!("{why}"),
        };
        runs.sort_unstable();
        let bs = fs.block_size() as usize;
        let mut log = Log {
            fs,
            runs,
            bs,
            first: 0,
            maxlen: 0,
            incompat: 0,
            seed: None,
        };
        let mut sb = vec![0u8; bs];
        if let Err(why) = log.read(0, &mut sb)? {
            refuse!("{why}");
        }
        if be32(&sb, 0) != MAGIC {
            refuse!("the journal superblock has no jbd2 magic");
        }
        if be32(&sb, 4) != SUPERBLOCK_V2 {
            refuse!("journal superblock type {} (only v2 is read)", be32(&sb, 4));
        }
        let (compat, incompat, ro_compat) = (be32(&sb, 36), be32(&sb, 40), be32(&sb, 44));
        if compat != 0 {
            refuse!("journal compat features {compat:#x} (checksums v1)");
        }
        if ro_compat != 0 {
            refuse!("journal read-only compat features {ro_compat:#x}");
        }
        if incompat & INCOMPAT_ASYNC_COMMIT != 0 {
            refuse!("journal feature async_commit");
        }
        if incompat & INCOMPAT_FAST_COMMIT != 0 {
            refuse!("journal feature fast_commit");
        }
        if incompat & !INCOMPAT_KNOWN != 0 {
            refuse!("unknown journal features {:#x}", incompat & !INCOMPAT_KNOWN);
        }
        let csum = incompat & (INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3);
        if csum == INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3 {
            refuse!("journal superblock claims checksums v2 and v3");
        }
        if csum != 0 {
            if sb[0x50] != CRC32C_CHKSUM {
                refuse!("journal checksum type {}", sb[0x50]);
            }
            let c = crc32c(crc32c(!0, &sb[..0xFC]), &[0; 4]);
            if crc32c(c, &sb[0x100..1024]) != be32(&sb, 0xFC) {
                refuse!("the journal superblock fails its checksum");
            }
            log.seed = Some(crc32c(!0, &sb[48..64]));
        }
        let errno = be32(&sb, 32);
        if errno != 0 {
            refuse!("the journal recorded error {}", errno as i32);
        }
        let users = be32(&sb, 64);
        if users > 1 {
            refuse!("the journal is shared by {users} file systems");
        }
        let (jbs, maxlen, first) = (
            be32(&sb, 12),
            u64::from(be32(&sb, 16)),
            u64::from(be32(&sb, 20)),
        );
        let (sequence, start) = (be32(&sb, 24), u64::from(be32(&sb, 28)));
        if jbs as usize != bs {
            refuse!("journal block size {jbs} differs from the file system's {bs}");
        }
        if maxlen * fs.block_size() > journal_size || first == 0 || first >= maxlen {
            refuse!("journal geometry (first {first}, length {maxlen}) does not fit its inode");
        }
        if start == 0 {
            return Ok(Journal::Empty);
        }
        if start < first || start >= maxlen {
            refuse!("journal start {start} is outside the log ({first}..{maxlen})");
        }
        log.first = first;
        log.maxlen = maxlen;
        log.incompat = incompat;
        Self::walk(&log, sequence, start)
    }

    /// The three passes over the log from `start`, whose first transaction is `sequence`.
    fn walk(log: &Log<'_>, mut sequence: u32, start: u64) -> Result<Journal> {
        let bs = log.bs;
        let mut block = vec![0u8; bs];
        let mut data = vec![0u8; bs];
        let mut committed: Vec<Transaction> = Vec::new();
        let mut revokes: HashMap<u64, u32> = HashMap::new();
        let mut current = Transaction {
            sequence,
            blocks: Vec::new(),
        };
        // Whether a block of the current transaction was seen (it must end with a commit).
        let mut open = false;
        let mut j = start;
        let mut steps = 0u64;
        loop {
            steps += 1;
            if steps > log.maxlen {
                refuse!("the journal log does not end");
            }
            if let Err(why) = log.read(j, &mut block)? {
                refuse!("{why}");
            }
            let here = j;
            j = log.next(j);
            if be32(&block, 0) != MAGIC || be32(&block, 8) != sequence {
                if open {
                    refuse!("transaction {sequence} has no commit block (torn)");
                }
                break; // the end of the log
            }
            match be32(&block, 4) {
                DESCRIPTOR => {
                    open = true;
                    if !log.tail_sound(&block) {
                        refuse!(
                            "descriptor block {here} of transaction {sequence} fails its checksum"
                        );
                    }
                    let tag_bytes = log.tag_bytes();
                    let mut t = 12;
                    while t + tag_bytes <= bs - log.tail_bytes() {
                        let tag = &block[t..t + tag_bytes];
                        let flags = be16(tag, 6);
                        let mut target = u64::from(be32(tag, 0));
                        if log.incompat & INCOMPAT_64BIT != 0 {
                            target |= u64::from(be32(tag, 8)) << 32;
                        }
                        if target >= log.fs.blocks() {
                            refuse!("transaction {sequence} writes block {target}, outside the file system");
                        }
                        let at = match log.read(j, &mut data)? {
                            Ok(at) => at,
                            Err(why) => refuse!("{why}"),
                        };
                        if !log.data_sound(tag, sequence, &data) {
                            refuse!("the copy of block {target} in transaction {sequence} fails its checksum");
                        }
                        j = log.next(j);
                        current.blocks.push((
                            target,
                            Location {
                                at,
                                escaped: flags & FLAG_ESCAPE != 0,
                            },
                        ));
                        t += tag_bytes;
                        if flags & FLAG_SAME_UUID == 0 {
                            t += 16;
                        }
                        if flags & FLAG_LAST_TAG != 0 {
                            break;
                        }
                    }
                }
                REVOKE => {
                    open = true;
                    if log.incompat & INCOMPAT_REVOKE == 0 {
                        refuse!("revoke block {here} in a journal without the revoke feature");
                    }
                    if !log.tail_sound(&block) {
                        refuse!("revoke block {here} of transaction {sequence} fails its checksum");
                    }
                    let count = be32(&block, 12) as usize;
                    if count > bs - log.tail_bytes() || count < 16 {
                        refuse!("revoke block {here} of transaction {sequence} is malformed");
                    }
                    let wide = log.incompat & INCOMPAT_64BIT != 0;
                    let len = if wide { 8 } else { 4 };
                    let mut at = 16;
                    while at + len <= count {
                        let b = if wide {
                            (u64::from(be32(&block, at)) << 32) | u64::from(be32(&block, at + 4))
                        } else {
                            u64::from(be32(&block, at))
                        };
                        let s = revokes.entry(b).or_insert(sequence);
                        if tid_geq(sequence, *s) {
                            *s = sequence;
                        }
                        at += len;
                    }
                }
                COMMIT => {
                    if !log.commit_sound(&block) {
                        refuse!("the commit block of transaction {sequence} fails its checksum");
                    }
                    let next = Transaction {
                        sequence: sequence.wrapping_add(1),
                        blocks: Vec::new(),
                    };
                    committed.push(std::mem::replace(&mut current, next));
                    sequence = sequence.wrapping_add(1);
                    open = false;
                }
                other => refuse!("journal block {here} has unknown type {other}"),
            }
        }
        let mut copies = HashMap::new();
        let mut revoked = 0;
        for t in &committed {
            for &(target, copy) in &t.blocks {
                if revokes
                    .get(&target)
                    .is_some_and(|&r| tid_geq(r, t.sequence))
                {
                    revoked += 1;
                    continue;
                }
                copies.insert(target, copy); // later transactions win
            }
        }
        Ok(Journal::Replay(Replay {
            copies,
            block_size: bs as u64,
            transactions: committed.len() as u64,
            revoked,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::tid_geq;

    #[test]
    fn transaction_ids_wrap() {
        assert!(tid_geq(5, 5));
        assert!(tid_geq(6, 5));
        assert!(!tid_geq(4, 5));
        assert!(tid_geq(1, u32::MAX));
        assert!(!tid_geq(u32::MAX, 1));
    }
}
