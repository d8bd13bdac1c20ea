//! One pass over every MFT record: the files (their names, parents, times, attributes and
//! unnamed `$DATA` stream), and every cluster any record in use names (its "claims"), so that
//! nothing another record names is ever dropped by name, and no cluster a record names is
//! dropped as free whatever `$Bitmap` says.
//!
//! Extension records (a file whose attributes did not fit one record) are merged into their base
//! record by the base reference they carry, so `$ATTRIBUTE_LIST` need not be followed.

use std::collections::HashMap;

use super::volume::{attr, le16, le32, le64, Body, Record, Run, Slot, Volume, R};
use super::volume::{ATTR_COMPRESSED, ATTR_ENCRYPTED, FIXUP_STRIDE};
use crate::ranges::Ranges;

/// Records read at a time.
const BATCH: u64 = 256;

/// One name of a file (a hard link is another name).
#[derive(Debug, Clone)]
pub struct Name {
    /// The parent directory's record number.
    pub parent: u64,
    /// The name, UTF-16 as stored.
    pub name: Vec<u16>,
}

/// A file's unnamed `$DATA` stream.
#[derive(Debug, Clone, Default)]
pub struct Data {
    /// Size in bytes.
    pub size: u64,
    /// Bytes written (past them the stream reads zeros).
    pub init: u64,
    /// Its runs, all pieces together.
    pub runs: Vec<Run>,
    /// Resident: the value as `[file offset, partition offset, length]` pieces.
    pub resident: Option<Vec<[u64; 3]>>,
    /// Compressed or encrypted: its clusters are its own, but they are not its bytes.
    pub transformed: bool,
}

/// A file (or directory) of the volume, from its base record and extension records.
#[derive(Debug, Clone, Default)]
pub struct Node {
    /// Directory.
    pub dir: bool,
    /// Sequence number of the base record.
    pub seq: u16,
    /// Names (Win32 or POSIX namespace; DOS 8.3 aliases left out).
    pub names: Vec<Name>,
    /// DOS file attributes (`$STANDARD_INFORMATION`).
    pub attributes: u32,
    /// Modification time, Unix seconds.
    pub mtime: i64,
    /// The unnamed `$DATA` stream.
    pub data: Option<Data>,
    /// Named `$DATA` streams (alternate data streams).
    pub streams: u32,
}

/// What the scan finds.
#[derive(Debug, Default)]
pub struct Scan {
    /// Files by base record number.
    pub nodes: HashMap<u64, Node>,
    /// Every cluster named by any record in use, as (first, end) cluster ranges, with the
    /// base record that names it.
    pub claims: Vec<(u64, u64, u64)>,
    /// Records in use (per `$MFT`'s bitmap) that fail their fixup check or cannot be parsed.
    pub bad_records: Vec<(u64, String)>,
}

impl Scan {
    /// Reads every record of the volume.
    ///
    /// # Errors
    /// I/O errors; [`super::volume::Fault::Bad`] when `$MFT` itself cannot be read.
    pub fn read(v: &Volume<'_>) -> R<Scan> {
        let mut scan = Scan::default();
        let in_use = mft_bitmap(v)?;
        let n = v.records();
        let rs = v.boot.record;
        let mut buf = Vec::new();
        let mut first = 0;
        while first < n {
            let k = BATCH.min(n - first);
            buf.resize((k * rs) as usize, 0);
            v.read_records(first, &mut buf)?;
            for i in 0..k {
                let no = first + i;
                let raw = buf[(i * rs) as usize..((i + 1) * rs) as usize].to_vec();
                let used = in_use.as_ref().is_none_or(|b| {
                    b.get((no / 8) as usize)
                        .is_some_and(|x| x & (1 << (no % 8)) != 0)
                });
                match Record::parse(raw, v.boot.clusters) {
                    Slot::Unused => {
                        if used && in_use.is_some() && no < 16 {
                            scan.bad_records.push((no, "is not in use".into()));
                        }
                    }
                    Slot::Bad(why) => {
                        if used {
                            scan.bad_records.push((no, why));
                        }
                    }
                    Slot::Record(r) => scan.add(v, no, &r),
                }
            }
            first += k;
        }
        Ok(scan)
    }

    /// Adds record `no` (in use) to its file.
    fn add(&mut self, v: &Volume<'_>, no: u64, r: &Record) {
        let owner = if r.base == 0 { no } else { r.base };
        let node = self.nodes.entry(owner).or_default();
        if r.base == 0 {
            node.dir = r.is_dir();
            node.seq = r.seq;
        }
        for a in &r.attrs {
            if let Body::NonResident { runs, .. } = &a.body {
                for run in runs {
                    if let Some(l) = run.lcn {
                        self.claims.push((l, l + run.count, owner));
                    }
                }
            }
            match a.ty {
                attr::STANDARD_INFORMATION => {
                    if let Some(val) = r.value(a) {
                        node.mtime = le64(val, 8).map_or(0, super::volume::unix_time);
                        node.attributes = le32(val, 32).unwrap_or(0);
                    }
                }
                attr::FILE_NAME => {
                    let Some(val) = r.value(a) else { continue };
                    let (Some(parent), Some(&len), Some(&space)) =
                        (le64(val, 0), val.get(64), val.get(65))
                    else {
                        continue;
                    };
                    if space == 2 {
                        continue; // the DOS 8.3 alias of a Win32 name
                    }
                    let Some(units) = val.get(66..66 + 2 * usize::from(len)) else {
                        continue;
                    };
                    node.names.push(Name {
                        parent: parent & 0xFFFF_FFFF_FFFF,
                        name: units
                            .chunks_exact(2)
                            .map(|c| u16::from_le_bytes([c[0], c[1]]))
                            .collect(),
                    });
                }
                attr::DATA if !a.name.is_empty() => node.streams += 1,
                attr::DATA => {
                    let d = node.data.get_or_insert_with(Data::default);
                    d.transformed |= a.flags & (ATTR_COMPRESSED | ATTR_ENCRYPTED) != 0;
                    match &a.body {
                        Body::Resident { at, len } => {
                            d.size = *len as u64;
                            d.init = *len as u64;
                            d.resident = Some(resident_pieces(v, no, r, *at, *len));
                        }
                        Body::NonResident {
                            runs,
                            start_vcn,
                            data_size,
                            init_size,
                        } => {
                            if *start_vcn == 0 {
                                d.size = *data_size;
                                d.init = *init_size;
                            }
                            d.runs.extend_from_slice(runs);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Clusters named by more than one record, or twice by one (cross-linked or forged runs):
    /// never dropped by name.
    pub fn shared(&self) -> Ranges {
        let mut c: Vec<(u64, u64)> = self.claims.iter().map(|&(a, b, _)| (a, b)).collect();
        c.sort_unstable();
        let mut out = Vec::new();
        let mut max_end = 0u64;
        for (a, b) in c {
            if a < max_end {
                out.push((a, b.min(max_end)));
            }
            max_end = max_end.max(b);
        }
        Ranges::from_unsorted(out)
    }

    /// Every cluster any record in use names.
    pub fn claimed(&self) -> Ranges {
        Ranges::from_unsorted(self.claims.iter().map(|&(a, b, _)| (a, b)).collect())
    }
}

/// `$MFT`'s `$BITMAP`: which records are in use; `None` when it cannot be read (every record
/// slot is then treated as possibly in use).
fn mft_bitmap(v: &Volume<'_>) -> R<Option<Vec<u8>>> {
    let Slot::Record(r) = v.record(0)? else {
        return Ok(None);
    };
    let Some(a) = r.unnamed(attr::BITMAP) else {
        return Ok(None);
    };
    Ok(match &a.body {
        Body::Resident { .. } => r.value(a).map(<[u8]>::to_vec),
        Body::NonResident {
            runs,
            start_vcn: 0,
            data_size,
            ..
        } => Some(v.read_value(runs, *data_size, 1 << 30)?),
        Body::NonResident { .. } => None,
    })
}

/// Where the bytes of a resident value are on the partition: `[file offset, partition offset,
/// length]` pieces. The last two bytes of each 512-byte stride of a record hold the update
/// sequence number on the disk; the value's own bytes there live in the update sequence array.
fn resident_pieces(v: &Volume<'_>, no: u64, r: &Record, at: usize, len: usize) -> Vec<[u64; 3]> {
    let usa = usize::from(le16(&r.raw, 4).unwrap_or(0));
    let base = no * v.boot.record;
    let disk = |rec_byte: usize| v.map(&v.mft_runs, base + rec_byte as u64);
    let mut out: Vec<[u64; 3]> = Vec::new();
    let mut push = |foff: u64, d: Option<u64>, n: u64| {
        let Some(d) = d else { return };
        match out.last_mut() {
            Some(l) if l[0] + l[2] == foff && l[1] + l[2] == d => l[2] += n,
            _ => out.push([foff, d, n]),
        }
    };
    let mut i = 0usize;
    while i < len {
        let b = at + i;
        let in_stride = b % FIXUP_STRIDE;
        if in_stride >= FIXUP_STRIDE - 2 {
            let k = b / FIXUP_STRIDE + 1;
            push(
                i as u64,
                disk(usa + 2 * k + in_stride - (FIXUP_STRIDE - 2)),
                1,
            );
            i += 1;
        } else {
            // Up to the check bytes of this stride, and within one cluster.
            let stride_left = FIXUP_STRIDE - 2 - in_stride;
            let cluster_left = (v.boot.cluster - (base + b as u64) % v.boot.cluster) as usize;
            let n = stride_left.min(cluster_left).min(len - i);
            push(i as u64, disk(b), n as u64);
            i += n;
        }
    }
    out
}
