//! NTFS on-disk structures, read-only: the boot sector, MFT records (with their update sequence
//! fixups checked), attributes and data runs, the cluster bitmap (`$Bitmap`), the volume flags
//! (`$Volume`) and the restart pages of `$LogFile`.
//!
//! Every structure is bounds-checked; one this reader does not understand is a [`Fault::Bad`]
//! (the probe then reads the volume in full), never a panic. A record that fails its fixup
//! check is not parsed at all: [`Scan::bad_records`] counts it, and nothing it might name is
//! dropped by name (see the module's rules in `guest/ntfs/mod.rs`).

use crate::error::Error;
use crate::source::BlockSource;

/// Why the volume cannot be read as NTFS: an I/O error (passed on), or a structure this reader
/// does not understand (the partition is then read in full, with this reason).
#[derive(Debug)]
pub enum Fault {
    /// Reading the disk failed.
    Io(Error),
    /// A structure is not one this reader understands.
    Bad(String),
}

impl From<Error> for Fault {
    fn from(e: Error) -> Fault {
        Fault::Io(e)
    }
}

/// Result with [`Fault`].
pub type R<T> = std::result::Result<T, Fault>;

fn bad<T>(why: impl Into<String>) -> R<T> {
    Err(Fault::Bad(why.into()))
}

pub(crate) fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
pub(crate) fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
pub(crate) fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The stride of the update sequence array: every 512 bytes of a record end in the sequence
/// number, whatever the sector size (`NTFS_BLOCK_SIZE`).
pub const FIXUP_STRIDE: usize = 512;

/// Attribute types this reader looks at.
pub mod attr {
    /// `$STANDARD_INFORMATION`: times and DOS attributes.
    pub const STANDARD_INFORMATION: u32 = 0x10;
    /// `$ATTRIBUTE_LIST`.
    pub const ATTRIBUTE_LIST: u32 = 0x20;
    /// `$FILE_NAME`: a name and the parent directory.
    pub const FILE_NAME: u32 = 0x30;
    /// `$VOLUME_INFORMATION`: the volume's flags.
    pub const VOLUME_INFORMATION: u32 = 0x70;
    /// `$DATA`.
    pub const DATA: u32 = 0x80;
    /// `$BITMAP` (of `$MFT`: which records are in use).
    pub const BITMAP: u32 = 0xB0;
    /// The end marker.
    pub const END: u32 = 0xFFFF_FFFF;
}

/// Attribute flags.
pub const ATTR_COMPRESSED: u16 = 0x00FF;
/// Attribute flag: encrypted.
pub const ATTR_ENCRYPTED: u16 = 0x4000;
/// Attribute flag: sparse.
pub const ATTR_SPARSE: u16 = 0x8000;

/// The boot sector's parameters, checked for sanity.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Bytes per sector.
    pub sector: u64,
    /// Bytes per cluster.
    pub cluster: u64,
    /// Clusters in the volume (`total sectors * sector / cluster`).
    pub clusters: u64,
    /// First cluster of `$MFT`.
    pub mft_lcn: u64,
    /// Bytes per MFT record.
    pub record: u64,
}

impl Boot {
    /// Parses a boot sector of a partition `len` bytes long: `None` unless it carries the
    /// `NTFS    ` OEM id; a [`Fault::Bad`] when it does but its parameters are not sane.
    pub fn parse(b: &[u8], len: u64) -> R<Option<Boot>> {
        if b.len() < 512 || &b[3..11] != b"NTFS    " {
            return Ok(None);
        }
        if b[510] != 0x55 || b[511] != 0xAA {
            return bad("boot sector without its 55 AA signature");
        }
        let sector = u64::from(le16(b, 0x0B).unwrap_or(0));
        if !matches!(sector, 512 | 1024 | 2048 | 4096) {
            return bad(format!("boot sector: {sector} bytes per sector"));
        }
        let spc = b[0x0D];
        let cluster = if spc <= 0x80 {
            if spc == 0 || !spc.is_power_of_two() {
                return bad(format!("boot sector: {spc} sectors per cluster"));
            }
            sector * u64::from(spc)
        } else {
            // Large clusters: 2^(256 - value) sectors.
            let shift = 256 - u32::from(spc);
            if shift > 12 {
                return bad(format!("boot sector: sectors per cluster code {spc:#x}"));
            }
            sector << shift
        };
        if cluster > 2 << 20 {
            return bad(format!("boot sector: {cluster}-byte clusters"));
        }
        let total = le64(b, 0x28).unwrap_or(0);
        let bytes = total.checked_mul(sector).filter(|&n| n > 0 && n <= len);
        let Some(bytes) = bytes else {
            return bad(format!(
                "boot sector: {total} sectors do not fit the {len}-byte partition"
            ));
        };
        let clusters = bytes / cluster;
        let mft_lcn = le64(b, 0x30).unwrap_or(u64::MAX);
        if mft_lcn == 0 || mft_lcn >= clusters {
            return bad(format!("boot sector: $MFT at cluster {mft_lcn}"));
        }
        let per = b[0x40] as i8;
        let record = if per > 0 {
            cluster * per as u64
        } else if (-31..=-1).contains(&per) {
            1u64 << (-i32::from(per))
        } else {
            return bad(format!("boot sector: MFT record size code {per}"));
        };
        if !(1024..=4096).contains(&record) || !record.is_power_of_two() || record < sector {
            return bad(format!("boot sector: {record}-byte MFT records"));
        }
        Ok(Some(Boot {
            sector,
            cluster,
            clusters,
            mft_lcn,
            record,
        }))
    }
}

/// A data run: `count` clusters from virtual cluster `vcn`, at logical cluster `lcn` (`None`:
/// a sparse run, no clusters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First virtual cluster (in the attribute).
    pub vcn: u64,
    /// First logical cluster (on the volume), `None` for a sparse run.
    pub lcn: Option<u64>,
    /// Clusters.
    pub count: u64,
}

/// Decodes a mapping pairs array starting at virtual cluster `vcn`; every run must lie inside
/// the volume's `clusters`. `None` when the array is malformed.
pub fn decode_runs(b: &[u8], mut vcn: u64, clusters: u64) -> Option<Vec<Run>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut lcn: i64 = 0;
    loop {
        let head = *b.get(at)?;
        if head == 0 {
            return Some(out);
        }
        let (ls, os) = (usize::from(head & 0xF), usize::from(head >> 4));
        if ls == 0 || ls > 8 || os > 8 {
            return None;
        }
        let len_bytes = b.get(at + 1..at + 1 + ls)?;
        let count = signed(len_bytes);
        if count <= 0 {
            return None;
        }
        let count = count as u64;
        let run_lcn = if os == 0 {
            None
        } else {
            lcn = lcn.checked_add(signed(b.get(at + 1 + ls..at + 1 + ls + os)?))?;
            let l = u64::try_from(lcn).ok()?;
            if l.checked_add(count)? > clusters {
                return None;
            }
            Some(l)
        };
        out.push(Run {
            vcn,
            lcn: run_lcn,
            count,
        });
        vcn = vcn.checked_add(count)?;
        at += 1 + ls + os;
        if out.len() > 1 << 20 {
            return None;
        }
    }
}

/// A little-endian two's complement integer of 1 to 8 bytes.
fn signed(b: &[u8]) -> i64 {
    let mut v: u64 = 0;
    for (i, &x) in b.iter().enumerate() {
        v |= u64::from(x) << (8 * i);
    }
    let bits = 8 * b.len() as u32;
    if bits < 64 && b.last().is_some_and(|&x| x & 0x80 != 0) {
        v |= !0u64 << bits;
    }
    v as i64
}

/// Applies the update sequence fixups of a record (or `$LogFile` page) whose magic is
/// `magic`, in place: `false` when the magic, the array or any sector's check bytes are wrong
/// (the buffer is then not to be trusted).
pub fn fixup(buf: &mut [u8], magic: &[u8; 4]) -> bool {
    if buf.len() < FIXUP_STRIDE || !buf.len().is_multiple_of(FIXUP_STRIDE) || &buf[..4] != magic {
        return false;
    }
    let (Some(ofs), Some(count)) = (le16(buf, 4), le16(buf, 6)) else {
        return false;
    };
    let (ofs, count) = (usize::from(ofs), usize::from(count));
    if count != buf.len() / FIXUP_STRIDE + 1
        || !ofs.is_multiple_of(2)
        || ofs < 8
        || ofs + 2 * count > buf.len()
    {
        return false;
    }
    let usn = [buf[ofs], buf[ofs + 1]];
    for i in 1..count {
        let end = i * FIXUP_STRIDE;
        if buf[end - 2..end] != usn {
            return false;
        }
    }
    for i in 1..count {
        let end = i * FIXUP_STRIDE;
        let (a, b) = (buf[ofs + 2 * i], buf[ofs + 2 * i + 1]);
        buf[end - 2] = a;
        buf[end - 1] = b;
    }
    true
}

/// One attribute of a record.
#[derive(Debug, Clone)]
pub struct Attr {
    /// Type code.
    pub ty: u32,
    /// Name (UTF-16 code units); empty for the unnamed stream.
    pub name: Vec<u16>,
    /// Flags (compressed, encrypted, sparse).
    pub flags: u16,
    /// Where its value is.
    pub body: Body,
}

/// An attribute's value: inside the record, or in data runs.
#[derive(Debug, Clone)]
pub enum Body {
    /// In the record: offset of the value in the (fixed-up) record and its length.
    Resident {
        /// Offset in the record.
        at: usize,
        /// Bytes.
        len: usize,
    },
    /// In clusters.
    NonResident {
        /// The data runs of this piece (an attribute may be split across records, each piece
        /// starting at its own virtual cluster).
        runs: Vec<Run>,
        /// First virtual cluster of this piece.
        start_vcn: u64,
        /// Size of the whole attribute's value (meaningful in the piece with `start_vcn` 0).
        data_size: u64,
        /// Bytes of the value written (past it reads zeros).
        init_size: u64,
    },
}

/// A parsed MFT record (fixups applied).
#[derive(Debug, Clone)]
pub struct Record {
    /// The record's bytes, fixups applied.
    pub raw: Vec<u8>,
    /// Header flags: 0x1 in use, 0x2 directory.
    pub flags: u16,
    /// Sequence number.
    pub seq: u16,
    /// The base record this one extends (0: it is a base record).
    pub base: u64,
    /// Its attributes.
    pub attrs: Vec<Attr>,
}

/// What a record slot holds.
#[derive(Debug)]
pub enum Slot {
    /// Never used (no `FILE` magic and all zeros), or marked not in use.
    Unused,
    /// A record that fails its fixup check or whose attributes cannot be parsed.
    Bad(String),
    /// A record in use.
    Record(Box<Record>),
}

impl Record {
    /// Parses one record buffer (`record` bytes as read from the disk), checking its fixups.
    pub fn parse(mut raw: Vec<u8>, clusters: u64) -> Slot {
        if raw.iter().all(|&b| b == 0) {
            return Slot::Unused;
        }
        if !fixup(&mut raw, b"FILE") {
            if raw.starts_with(b"FILE") {
                return Slot::Bad("fails its fixup check".into());
            }
            return Slot::Bad("has no FILE magic".into());
        }
        let flags = le16(&raw, 0x16).unwrap_or(0);
        if flags & 1 == 0 {
            return Slot::Unused;
        }
        let seq = le16(&raw, 0x10).unwrap_or(0);
        let first = usize::from(le16(&raw, 0x14).unwrap_or(0));
        let used = le32(&raw, 0x18).unwrap_or(0) as usize;
        let base = le64(&raw, 0x20).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
        if used > raw.len() || first < 0x30 || first >= used {
            return Slot::Bad("header out of bounds".into());
        }
        let mut attrs = Vec::new();
        let mut at = first;
        loop {
            let Some(ty) = le32(&raw, at) else {
                return Slot::Bad("attributes run past the record".into());
            };
            if ty == attr::END {
                break;
            }
            let len = le32(&raw, at + 4).unwrap_or(0) as usize;
            if len < 0x18 || !len.is_multiple_of(8) || at + len > used {
                return Slot::Bad(format!("attribute {ty:#x} out of bounds"));
            }
            let a = &raw[at..at + len];
            match parse_attr(a, at, clusters) {
                Some(x) => attrs.push(x),
                None => return Slot::Bad(format!("attribute {ty:#x} not understood")),
            }
            at += len;
            if attrs.len() > 512 {
                return Slot::Bad("too many attributes".into());
            }
        }
        Slot::Record(Box::new(Record {
            raw,
            flags,
            seq,
            base,
            attrs,
        }))
    }

    /// The value of a resident attribute.
    pub fn value(&self, a: &Attr) -> Option<&[u8]> {
        match a.body {
            Body::Resident { at, len } => self.raw.get(at..at + len),
            Body::NonResident { .. } => None,
        }
    }

    /// The first attribute of type `ty` with an empty name.
    pub fn unnamed(&self, ty: u32) -> Option<&Attr> {
        self.attrs.iter().find(|a| a.ty == ty && a.name.is_empty())
    }

    /// Whether a directory.
    pub fn is_dir(&self) -> bool {
        self.flags & 2 != 0
    }
}

/// Parses one attribute `a` found at offset `at` of its record.
fn parse_attr(a: &[u8], at: usize, clusters: u64) -> Option<Attr> {
    let ty = le32(a, 0)?;
    let non_resident = *a.get(8)?;
    let name_len = usize::from(*a.get(9)?);
    let name_off = usize::from(le16(a, 10)?);
    let flags = le16(a, 12)?;
    let name = a
        .get(name_off..name_off + 2 * name_len)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let body = match non_resident {
        0 => {
            let len = le32(a, 0x10)? as usize;
            let off = usize::from(le16(a, 0x14)?);
            a.get(off..off.checked_add(len)?)?;
            Body::Resident { at: at + off, len }
        }
        1 => {
            let start_vcn = le64(a, 0x10)?;
            let runs_off = usize::from(le16(a, 0x20)?);
            let data_size = le64(a, 0x30)?;
            let init_size = le64(a, 0x38)?;
            if init_size > data_size {
                return None;
            }
            let runs = decode_runs(a.get(runs_off..)?, start_vcn, clusters)?;
            Body::NonResident {
                runs,
                start_vcn,
                data_size,
                init_size,
            }
        }
        _ => return None,
    };
    Some(Attr {
        ty,
        name,
        flags,
        body,
    })
}

/// The whole-volume view: where the MFT is, and reads relative to the partition.
#[derive(Debug)]
pub struct Volume<'a> {
    disk: &'a dyn BlockSource,
    /// Partition start on the disk.
    pub offset: u64,
    /// Partition length.
    pub len: u64,
    /// The boot sector's parameters.
    pub boot: Boot,
    /// `$MFT`'s data runs.
    pub mft_runs: Vec<Run>,
    /// `$MFT`'s size in bytes (records = size / record size).
    pub mft_size: u64,
}

impl<'a> Volume<'a> {
    /// Opens the volume at `offset`: `None` when its boot sector is not NTFS's; a
    /// [`Fault::Bad`] when it claims to be NTFS but the boot sector or `$MFT` is not sane.
    pub fn open(disk: &'a dyn BlockSource, offset: u64, len: u64) -> R<Option<Volume<'a>>> {
        if len < 64 << 10 || offset + 512 > disk.size() {
            return Ok(None);
        }
        let mut bs = vec![0u8; 512];
        disk.read_at(&mut bs, offset)?;
        let Some(boot) = Boot::parse(&bs, len)? else {
            return Ok(None);
        };
        let mut v = Volume {
            disk,
            offset,
            len,
            mft_runs: vec![Run {
                vcn: 0,
                lcn: Some(boot.mft_lcn),
                count: boot.record.div_ceil(boot.cluster),
            }],
            mft_size: boot.record,
            boot,
        };
        let rec = match v.record(0)? {
            Slot::Record(r) => r,
            Slot::Unused => return bad("$MFT record 0 is empty"),
            Slot::Bad(why) => return bad(format!("$MFT record 0 {why}")),
        };
        if rec.unnamed(attr::ATTRIBUTE_LIST).is_some() {
            return bad(
                "$MFT has an attribute list (a fragmented MFT this reader does not follow)",
            );
        }
        let Some(Attr {
            body:
                Body::NonResident {
                    runs,
                    start_vcn: 0,
                    data_size,
                    ..
                },
            ..
        }) = rec.unnamed(attr::DATA).cloned()
        else {
            return bad("$MFT has no non-resident $DATA");
        };
        let mapped: u64 = runs.iter().map(|r| r.count).sum();
        if runs.iter().any(|r| r.lcn.is_none())
            || data_size == 0
            || data_size > mapped * v.boot.cluster
            || !data_size.is_multiple_of(v.boot.record)
        {
            return bad("$MFT's data runs do not cover its size");
        }
        v.mft_runs = runs;
        v.mft_size = data_size;
        Ok(Some(v))
    }

    /// Records in `$MFT`.
    pub fn records(&self) -> u64 {
        self.mft_size / self.boot.record
    }

    /// Reads `buf.len()` bytes at byte `at` of the partition; out of the partition is
    /// [`Fault::Bad`].
    pub fn read(&self, buf: &mut [u8], at: u64) -> R<()> {
        let end = at.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len || self.offset + e > self.disk.size()) {
            return bad(format!("a read at byte {at} runs past the partition"));
        }
        self.disk.read_at(buf, self.offset + at)?;
        Ok(())
    }

    /// The partition byte that holds byte `pos` of an attribute mapped by `runs` (`None`:
    /// unmapped or sparse).
    pub fn map(&self, runs: &[Run], pos: u64) -> Option<u64> {
        let c = self.boot.cluster;
        let vcn = pos / c;
        let r = runs
            .iter()
            .find(|r| r.vcn <= vcn && vcn < r.vcn + r.count)?;
        Some((r.lcn? + (vcn - r.vcn)) * c + pos % c)
    }

    /// Reads `buf.len()` bytes from byte `pos` of an attribute mapped by `runs` (sparse runs
    /// read as zeros; unmapped bytes are [`Fault::Bad`]).
    pub fn read_runs(&self, runs: &[Run], pos: u64, buf: &mut [u8]) -> R<()> {
        let c = self.boot.cluster;
        let mut done = 0usize;
        while done < buf.len() {
            let p = pos + done as u64;
            let vcn = p / c;
            let Some(r) = runs.iter().find(|r| r.vcn <= vcn && vcn < r.vcn + r.count) else {
                return bad(format!("byte {p} of an attribute is not mapped"));
            };
            let run_end = (r.vcn + r.count) * c;
            let n = ((run_end - p) as usize).min(buf.len() - done);
            let piece = &mut buf[done..done + n];
            match r.lcn {
                Some(l) => self.read(piece, l * c + (p - r.vcn * c))?,
                None => piece.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// The record with number `n`, read and parsed.
    pub fn record(&self, n: u64) -> R<Slot> {
        let mut raw = vec![0u8; self.boot.record as usize];
        self.read_runs(&self.mft_runs, n * self.boot.record, &mut raw)?;
        Ok(Record::parse(raw, self.boot.clusters))
    }

    /// Reads records `first..first + buf.len() / record` into `buf` (for the scan).
    pub fn read_records(&self, first: u64, buf: &mut [u8]) -> R<()> {
        self.read_runs(&self.mft_runs, first * self.boot.record, buf)
    }

    /// The whole value of a non-resident attribute given as one piece (`runs` from VCN 0),
    /// capped at `max` bytes ([`Fault::Bad`] beyond).
    pub fn read_value(&self, runs: &[Run], size: u64, max: u64) -> R<Vec<u8>> {
        if size > max {
            return bad(format!("an attribute of {size} bytes (more than {max})"));
        }
        let mut buf = vec![0u8; size as usize];
        self.read_runs(runs, 0, &mut buf)?;
        Ok(buf)
    }
}

/// What the restart pages of `$LogFile` say.
#[derive(Debug, PartialEq, Eq)]
pub enum Log {
    /// Emptied (all 0xFF, as `mkntfs` and ntfs-3g leave it) or its restart area says the volume
    /// was shut down cleanly (no client in use, or `RESTART_VOLUME_IS_CLEAN`).
    Clean,
    /// Not clean, or not understood: why.
    NotClean(String),
}

/// Reads the two restart pages at the start of `$LogFile` (`head`: its first bytes, at least
/// 8 KiB when the log is that long) and says whether the log is clean.
pub fn logfile_state(head: &[u8]) -> Log {
    if head.iter().all(|&b| b == 0xFF) {
        return Log::Clean;
    }
    let mut seen = 0;
    let mut best: Option<(u64, bool)> = None;
    let mut at = 0usize;
    while at + 512 <= head.len() && seen < 2 {
        let page_size = le32(head, at + 0x10).unwrap_or(0) as usize;
        let magic_ok = head.get(at..at + 4) == Some(b"RSTR".as_slice());
        if !magic_ok || !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            if at == 0 {
                return Log::NotClean(if head.get(..4) == Some(b"CHKD".as_slice()) {
                    "chkdsk has marked $LogFile".into()
                } else {
                    "its first restart page is not one this reader understands".into()
                });
            }
            break;
        }
        seen += 1;
        let Some(page) = head.get(at..at + page_size) else {
            return Log::NotClean("its restart page is cut short".into());
        };
        let mut page = page.to_vec();
        if !fixup(&mut page, b"RSTR") {
            return Log::NotClean("a restart page fails its fixup check".into());
        }
        let ra = usize::from(le16(&page, 0x18).unwrap_or(0));
        let (Some(lsn), Some(in_use), Some(flags)) = (
            le64(&page, ra),
            le16(&page, ra + 0x0C),
            le16(&page, ra + 0x0E),
        ) else {
            return Log::NotClean("its restart area is out of bounds".into());
        };
        let clean = in_use == 0xFFFF || flags & 0x0002 != 0;
        if best.is_none_or(|(l, _)| lsn > l) {
            best = Some((lsn, clean));
        }
        at += page_size;
    }
    match best {
        Some((_, true)) => Log::Clean,
        Some((_, false)) => {
            Log::NotClean("$LogFile has transactions to replay (not shut down cleanly)".into())
        }
        None => Log::NotClean("no restart page".into()),
    }
}

/// NT time (100 ns ticks since 1601) as Unix seconds.
pub fn unix_time(nt: u64) -> i64 {
    (nt / 10_000_000) as i64 - 11_644_473_600
}

/// UTF-16 to UTF-8; an unpaired surrogate becomes `%uXXXX` (never a panic, never a lossy
/// replacement that would merge two names).
pub fn name_to_utf8(units: &[u16]) -> String {
    let mut s = String::with_capacity(units.len());
    for c in char::decode_utf16(units.iter().copied()) {
        match c {
            Ok(ch) => s.push(ch),
            Err(e) => s.push_str(&format!("%u{:04X}", e.unpaired_surrogate())),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_decode_with_signed_offsets_and_sparse_runs() {
        // 0x21: 1-byte length, 2-byte offset: 0x10 clusters at 0x1000; then 0x11: 8 clusters
        // at -0x10 relative (0xFF0); then a sparse run of 4 clusters; end.
        let b = [0x21, 0x10, 0x00, 0x10, 0x11, 0x08, 0xF0, 0x01, 0x04, 0x00];
        let runs = decode_runs(&b, 0, 1 << 20).expect("runs");
        assert_eq!(
            runs,
            vec![
                Run {
                    vcn: 0,
                    lcn: Some(0x1000),
                    count: 0x10
                },
                Run {
                    vcn: 0x10,
                    lcn: Some(0xFF0),
                    count: 8
                },
                Run {
                    vcn: 0x18,
                    lcn: None,
                    count: 4
                },
            ]
        );
        // Outside the volume, a zero length, a missing terminator: not understood.
        assert_eq!(decode_runs(&b, 0, 0x1005), None);
        assert_eq!(decode_runs(&[0x21, 0x00, 0, 0x10, 0], 0, 1 << 20), None);
        assert_eq!(decode_runs(&[0x21, 0x10, 0x00], 0, 1 << 20), None);
    }

    #[test]
    fn fixups_are_checked_and_applied() {
        let mut rec = vec![0u8; 1024];
        rec[..4].copy_from_slice(b"FILE");
        rec[4..6].copy_from_slice(&0x30u16.to_le_bytes());
        rec[6..8].copy_from_slice(&3u16.to_le_bytes());
        rec[0x30..0x32].copy_from_slice(&[0xAB, 0xCD]);
        rec[0x32..0x36].copy_from_slice(&[1, 2, 3, 4]);
        rec[510..512].copy_from_slice(&[0xAB, 0xCD]);
        rec[1022..1024].copy_from_slice(&[0xAB, 0xCD]);
        let mut ok = rec.clone();
        assert!(fixup(&mut ok, b"FILE"));
        assert_eq!(&ok[510..512], &[1, 2]);
        assert_eq!(&ok[1022..1024], &[3, 4]);
        let mut torn = rec.clone();
        torn[1023] ^= 1;
        assert!(!fixup(&mut torn, b"FILE"));
        let mut wrong = rec;
        wrong[6] = 9;
        assert!(!fixup(&mut wrong, b"FILE"));
    }

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// A boot sector as mkntfs writes it for a 64 MiB volume with 4 KiB clusters.
    fn boot_sector() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[3..11].copy_from_slice(b"NTFS    ");
        b[0x0B..0x0D].copy_from_slice(&512u16.to_le_bytes());
        b[0x0D] = 8;
        b[0x28..0x30].copy_from_slice(&131_071u64.to_le_bytes());
        b[0x30..0x38].copy_from_slice(&4u64.to_le_bytes());
        b[0x38..0x40].copy_from_slice(&8191u64.to_le_bytes());
        b[0x40] = 0xF6; // 2^10: 1 KiB records
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    #[test]
    fn boot_sectors_are_checked_and_fuzzed_ones_never_panic() {
        let len = 64 << 20;
        let boot = Boot::parse(&boot_sector(), len)
            .ok()
            .flatten()
            .expect("sane");
        assert_eq!(
            (boot.cluster, boot.clusters, boot.mft_lcn, boot.record),
            (4096, 16383, 4, 1024)
        );
        // Too large for the partition, a zero cluster code, not NTFS.
        assert!(matches!(
            Boot::parse(&boot_sector(), len / 2),
            Err(Fault::Bad(_))
        ));
        let mut b = boot_sector();
        b[0x0D] = 0;
        assert!(matches!(Boot::parse(&b, len), Err(Fault::Bad(_))));
        b[3] = b'X';
        assert!(matches!(Boot::parse(&b, len), Ok(None)));
        let mut x = 0x1234_5678_9ABC_DEF1u64;
        for _ in 0..20_000 {
            let mut b = boot_sector();
            for _ in 0..1 + xorshift(&mut x) % 6 {
                let i = (xorshift(&mut x) % 512) as usize;
                b[i] ^= (xorshift(&mut x) % 255 + 1) as u8;
            }
            if let Ok(Some(bt)) = Boot::parse(&b, len) {
                assert!(bt.clusters * bt.cluster <= len && bt.mft_lcn < bt.clusters);
            }
        }
    }

    #[test]
    fn fuzzed_records_never_panic() {
        // A record with a valid update sequence and random attribute bytes.
        let mut x = 0xDEAD_BEEF_0BAD_F00Du64;
        for round in 0..20_000u64 {
            let mut rec: Vec<u8> = (0..1024).map(|_| xorshift(&mut x) as u8).collect();
            rec[..4].copy_from_slice(b"FILE");
            rec[4..6].copy_from_slice(&0x30u16.to_le_bytes());
            rec[6..8].copy_from_slice(&3u16.to_le_bytes());
            rec[0x14..0x16].copy_from_slice(&0x38u16.to_le_bytes());
            rec[0x16..0x18].copy_from_slice(&1u16.to_le_bytes());
            rec[0x18..0x1C].copy_from_slice(&((round % 1100) as u32).to_le_bytes());
            let usn = [rec[0x30], rec[0x31]];
            rec[510..512].copy_from_slice(&usn);
            rec[1022..1024].copy_from_slice(&usn);
            // Plausible attribute headers now and then.
            if round % 2 == 0 {
                rec[0x38..0x3C].copy_from_slice(&0x80u32.to_le_bytes());
                rec[0x3C..0x40].copy_from_slice(&(((round % 40) * 8) as u32).to_le_bytes());
                rec[0x40] = (round % 3) as u8;
            }
            match Record::parse(rec, 1 << 20) {
                Slot::Record(r) => {
                    for a in &r.attrs {
                        let _ = r.value(a);
                    }
                }
                Slot::Bad(_) | Slot::Unused => {}
            }
            let mut runs: Vec<u8> = (0..64).map(|_| xorshift(&mut x) as u8).collect();
            runs[63] = 0;
            let _ = decode_runs(&runs, 0, 1 << 20);
        }
    }

    #[test]
    fn names_with_unpaired_surrogates_are_escaped() {
        let units: Vec<u16> = "Zoë".encode_utf16().chain([0xD800, 0x41]).collect();
        assert_eq!(name_to_utf8(&units), "Zoë%uD800A");
    }

    /// A restart page as Windows writes it: `RSTR`, the update sequence array at 0x1E, the
    /// restart area at 0x30 with `current_lsn`, one client, `client_in_use_list` and `flags`.
    pub(crate) fn restart_page(lsn: u64, in_use: u16, flags: u16) -> Vec<u8> {
        let mut p = vec![0u8; 4096];
        p[..4].copy_from_slice(b"RSTR");
        p[4..6].copy_from_slice(&0x1Eu16.to_le_bytes());
        p[6..8].copy_from_slice(&9u16.to_le_bytes());
        p[0x10..0x14].copy_from_slice(&4096u32.to_le_bytes());
        p[0x14..0x18].copy_from_slice(&4096u32.to_le_bytes());
        p[0x18..0x1A].copy_from_slice(&0x30u16.to_le_bytes());
        p[0x30..0x38].copy_from_slice(&lsn.to_le_bytes());
        p[0x38..0x3A].copy_from_slice(&1u16.to_le_bytes());
        p[0x3A..0x3C].copy_from_slice(&0xFFFFu16.to_le_bytes());
        p[0x3C..0x3E].copy_from_slice(&in_use.to_le_bytes());
        p[0x3E..0x40].copy_from_slice(&flags.to_le_bytes());
        // Update sequence number 7; each stride's last two bytes (zeros) saved in the array.
        p[0x1E..0x20].copy_from_slice(&7u16.to_le_bytes());
        for i in 1..9 {
            p[i * 512 - 2..i * 512].copy_from_slice(&7u16.to_le_bytes());
        }
        p
    }

    #[test]
    fn a_logfile_emptied_or_marked_clean_is_clean() {
        assert_eq!(logfile_state(&[0xFF; 8192]), Log::Clean);
        assert!(matches!(logfile_state(&[0u8; 8192]), Log::NotClean(_)));
        let two = |a: Vec<u8>, b: Vec<u8>| [a, b].concat();
        // Clean flag, or no client in use: clean.
        assert_eq!(
            logfile_state(&two(restart_page(5, 0, 2), restart_page(4, 0, 2))),
            Log::Clean
        );
        assert_eq!(
            logfile_state(&two(restart_page(5, 0xFFFF, 0), restart_page(4, 0xFFFF, 0))),
            Log::Clean
        );
        // A client in use and no clean flag in the newer page: transactions to replay.
        assert!(matches!(
            logfile_state(&two(restart_page(4, 0, 2), restart_page(9, 0, 0))),
            Log::NotClean(_)
        ));
        // A torn restart page is not trusted.
        let mut torn = restart_page(5, 0, 2);
        torn[1023] ^= 1;
        assert!(matches!(
            logfile_state(&two(torn, restart_page(4, 0, 2))),
            Log::NotClean(_)
        ));
    }
}
