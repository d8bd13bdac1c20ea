//! Partition tables: MBR (with extended and logical partitions) and GPT (behind a protective
//! MBR). Sector size 512; a GPT header at 4096 (4 KiB sectors) is also recognised.
//!
//! A partition whose bytes are not its own — it overlaps another partition or the table itself
//! (the MBR, an extended boot record, a GPT header or entry array), or it runs past the end of
//! the disk — carries the reason in [`Partition::conflict`], and the block map reads it in full:
//! what its content says is free may be another structure's data.

use crate::error::Result;
use crate::ranges::Ranges;
use crate::source::BlockSource;

/// What a partition table says a partition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// MBR type byte.
    Mbr(u8),
    /// GPT partition type GUID (on-disk byte order).
    Gpt([u8; 16]),
}

/// GPT type GUID of Linux swap, 0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, in on-disk order.
pub const GPT_LINUX_SWAP: [u8; 16] = [
    0x6D, 0xFD, 0x57, 0x06, 0xAB, 0xA4, 0xC4, 0x43, 0x84, 0xE5, 0x09, 0x33, 0xC8, 0x4B, 0x4F, 0x4F,
];

impl Kind {
    /// Whether the table labels it Linux swap. A label only: what the block map drops as swap
    /// is decided by the swap header ([`crate::guest::swap::Header`]).
    pub fn is_swap(&self) -> bool {
        matches!(self, Kind::Mbr(0x82)) || *self == Kind::Gpt(GPT_LINUX_SWAP)
    }
}

/// One partition, in bytes from the start of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based number as Linux names it (logical partitions start at 5).
    pub number: u32,
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Type.
    pub kind: Kind,
    /// Why its bytes cannot be trusted to be its own (overlap with another partition or the
    /// partition table, or past the disk's end); `None` for a sound partition.
    pub conflict: Option<String>,
}

fn u32le(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

fn u64le(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Reads the partition table; an empty list when there is none (or it is unreadable, in which
/// case the whole disk is simply read).
///
/// # Errors
/// I/O errors reading the disk.
pub fn read(disk: &dyn BlockSource) -> Result<Vec<Partition>> {
    if disk.size() < 1024 {
        return Ok(Vec::new());
    }
    let mut mbr = vec![0u8; 512];
    disk.read_at(&mut mbr, 0)?;
    if mbr[510] != 0x55 || mbr[511] != 0xAA {
        return Ok(Vec::new());
    }
    let entries: Vec<(u8, u64, u64)> = (0..4)
        .map(|i| 446 + i * 16)
        .map(|o| (mbr[o + 4], u32le(&mbr, o + 8), u32le(&mbr, o + 12)))
        .collect();
    if entries.iter().any(|e| e.0 == 0xEE) {
        return read_gpt(disk);
    }
    let mut out = Vec::new();
    let mut table = vec![(0, 512)];
    for (i, &(kind, lba, sectors)) in entries.iter().enumerate() {
        if kind == 0 || sectors == 0 {
            continue;
        }
        if matches!(kind, 0x05 | 0x0F | 0x85) {
            read_logical(disk, lba * 512, &mut out, &mut table)?;
            continue;
        }
        out.push(Partition {
            number: i as u32 + 1,
            start: lba * 512,
            len: sectors * 512,
            kind: Kind::Mbr(kind),
            conflict: None,
        });
    }
    Ok(check(out, &Ranges::from_unsorted(table), disk.size()))
}

/// Follows the chain of extended boot records, noting each one's sector in `table`.
fn read_logical(
    disk: &dyn BlockSource,
    ext_start: u64,
    out: &mut Vec<Partition>,
    table: &mut Vec<(u64, u64)>,
) -> Result<()> {
    let mut ebr_at = ext_start;
    let mut number = 5;
    // A chain longer than this is corrupt or a loop.
    for _ in 0..128 {
        if ebr_at + 512 > disk.size() {
            break;
        }
        let mut ebr = vec![0u8; 512];
        disk.read_at(&mut ebr, ebr_at)?;
        if ebr[510] != 0x55 || ebr[511] != 0xAA {
            break;
        }
        table.push((ebr_at, ebr_at + 512));
        let (kind, lba, sectors) = (ebr[446 + 4], u32le(&ebr, 446 + 8), u32le(&ebr, 446 + 12));
        if kind != 0 && sectors != 0 {
            out.push(Partition {
                number,
                start: ebr_at + lba * 512,
                len: sectors * 512,
                kind: Kind::Mbr(kind),
                conflict: None,
            });
            number += 1;
        }
        let next = u32le(&ebr, 462 + 8);
        if ebr[462 + 4] == 0 || next == 0 {
            break;
        }
        ebr_at = ext_start + next * 512;
    }
    Ok(())
}

fn read_gpt(disk: &dyn BlockSource) -> Result<Vec<Partition>> {
    for sector in [512u64, 4096] {
        if disk.size() < sector * 2 {
            continue;
        }
        let mut hdr = vec![0u8; 92];
        disk.read_at(&mut hdr, sector)?;
        if &hdr[..8] != b"EFI PART" {
            continue;
        }
        let (table, count, size) = (u64le(&hdr, 72), u32le(&hdr, 80), u32le(&hdr, 84));
        if !(128..=4096).contains(&size) || count > 4096 {
            return Ok(Vec::new());
        }
        let bytes = (count * size) as usize;
        if table * sector + bytes as u64 > disk.size() {
            return Ok(Vec::new());
        }
        let mut t = vec![0u8; bytes];
        disk.read_at(&mut t, table * sector)?;
        let mut structures = vec![
            (0, sector),
            (sector, sector * 2),
            (table * sector, table * sector + bytes as u64),
        ];
        structures.extend(backup_gpt(disk, &hdr, sector, bytes as u64)?);
        let mut out = Vec::new();
        for i in 0..count as usize {
            let e = &t[i * size as usize..];
            let mut guid = [0u8; 16];
            guid.copy_from_slice(&e[..16]);
            if guid == [0; 16] {
                continue;
            }
            let (first, last) = (u64le(e, 32), u64le(e, 40));
            if last < first {
                continue;
            }
            out.push(Partition {
                number: i as u32 + 1,
                start: first * sector,
                len: (last - first + 1) * sector,
                kind: Kind::Gpt(guid),
                conflict: None,
            });
        }
        return Ok(check(out, &Ranges::from_unsorted(structures), disk.size()));
    }
    Ok(Vec::new())
}

/// Where the backup GPT lives: the alternate header (`alternate_lba` of the primary header)
/// and its entry array (as that header names it, or where it conventionally sits, just before
/// the header, when the backup header is unreadable). Nothing when the alternate LBA is off the
/// disk.
fn backup_gpt(
    disk: &dyn BlockSource,
    primary: &[u8],
    sector: u64,
    bytes: u64,
) -> Result<Vec<(u64, u64)>> {
    let alt = u64le(primary, 32).saturating_mul(sector);
    if alt == 0 || alt.saturating_add(sector) > disk.size() {
        return Ok(Vec::new());
    }
    let mut hdr = vec![0u8; 92];
    disk.read_at(&mut hdr, alt)?;
    let array = if &hdr[..8] == b"EFI PART" {
        let at = u64le(&hdr, 72).saturating_mul(sector);
        (at, at.saturating_add(bytes))
    } else {
        (alt.saturating_sub(bytes), alt)
    };
    Ok(vec![(alt, alt + sector), array])
}

/// Drops partitions that start past the end of the disk, cuts those that run over it, and
/// notes in [`Partition::conflict`] why a partition's bytes are not its own: it runs past the
/// end, overlaps the partition table's own structures (`table`), or overlaps another partition.
fn check(parts: Vec<Partition>, table: &Ranges, size: u64) -> Vec<Partition> {
    let mut parts: Vec<Partition> = parts
        .into_iter()
        .filter(|p| p.start < size)
        .map(|p| {
            let end = p.start.saturating_add(p.len);
            let conflict = if end > size {
                Some(format!(
                    "runs {} bytes past the end of the disk",
                    end - size
                ))
            } else if !Ranges::single(p.start, end).intersect(table).is_empty() {
                Some("overlaps the partition table".to_string())
            } else {
                None
            };
            Partition {
                len: p.len.min(size - p.start),
                conflict,
                ..p
            }
        })
        .collect();
    for i in 0..parts.len() {
        let (a, b) = (parts[i].start, parts[i].start + parts[i].len);
        let others: Vec<u32> = parts
            .iter()
            .enumerate()
            .filter(|&(j, q)| j != i && q.start < b && a < q.start + q.len)
            .map(|(_, q)| q.number)
            .collect();
        if !others.is_empty() && parts[i].conflict.is_none() {
            let list: Vec<String> = others.iter().map(u32::to_string).collect();
            parts[i].conflict = Some(format!("overlaps partition {}", list.join(", ")));
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: u32, start: u64, len: u64) -> Partition {
        Partition {
            number,
            start,
            len,
            kind: Kind::Mbr(0x83),
            conflict: None,
        }
    }

    #[test]
    fn partitions_whose_bytes_are_not_their_own_say_why() {
        // The MBR and an extended boot record at 10_000.
        let table = Ranges::from_unsorted(vec![(0, 512), (10_000, 10_512)]);
        let parts = vec![
            part(1, 1024, 1000),   // sound
            part(2, 3000, 2000),   // overlaps 3
            part(3, 4000, 2000),   // overlaps 2
            part(5, 9000, 2000),   // covers the extended boot record
            part(6, 0, 512),       // the MBR itself
            part(7, 20_000, 9000), // past the end (size 25_000)
            part(8, 30_000, 100),  // starts past the end: gone
        ];
        let got = check(parts, &table, 25_000);
        let why: Vec<(u32, u64, Option<&str>)> = got
            .iter()
            .map(|p| (p.number, p.len, p.conflict.as_deref()))
            .collect();
        assert_eq!(
            why,
            vec![
                (1, 1000, None),
                (2, 2000, Some("overlaps partition 3")),
                (3, 2000, Some("overlaps partition 2")),
                (5, 2000, Some("overlaps the partition table")),
                (6, 512, Some("overlaps the partition table")),
                (7, 5000, Some("runs 4000 bytes past the end of the disk")),
            ]
        );
    }
}
