//! ext2/3/4 on-disk structures, read-only: the superblock, group descriptors and block bitmaps
//! (which blocks are free), and the inode and directory walk used to find excluded files.
//!
//! A file system that needs recovery (a crash-consistent snapshot of a running guest) is read as
//! a journal replay would leave it: every metadata read (superblock, group descriptors, bitmaps,
//! inodes, extent and indirect blocks, directories) goes through [`Ext4::read_block`], which
//! takes the newest committed copy from the journal ([`super::jbd2`]) when there is one.
//!
//! Checksums are verified before metadata may drop data: block bitmaps and group descriptors
//! (crc32c with `metadata_csum`, crc16 descriptors with `uninit_bg`), and the inode and every
//! extent block of a file whose blocks are to be dropped ([`Ext4::verified_runs`]).
//!
//! Anything unexpected (a feature we do not understand, a descriptor pointing outside the file
//! system) makes [`Ext4::open`] answer [`Opened::NotExt4`] or [`Opened::ReadInFull`], or a walk
//! skip the entry, so the caller reads more, never less: a wrong guess here must never drop data.

use super::crc::{crc16, crc32c};
use super::jbd2::{Host, Journal, Replay};
use crate::error::Result;
use crate::ranges::Ranges;
use crate::source::BlockSource;

const MAGIC: u16 = 0xEF53;
const COMPAT_HAS_JOURNAL: u32 = 0x4;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const BG_BLOCK_UNINIT: u16 = 0x2;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
/// Bitmap bits are clusters of blocks: this reader counts blocks, so it does not open these.
const RO_COMPAT_BIGALLOC: u32 = 0x200;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
/// Group descriptors carry a crc16 checksum (`uninit_bg`; superseded by `metadata_csum`).
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
/// Incompat features this reader understands (filetype, recover, journal dev excluded, meta_bg
/// excluded, extents, 64bit, mmp, flex_bg, ea_inode, dirdata, csum_seed, largedir, inline_data,
/// encrypt, casefold).
const INCOMPAT_KNOWN: u32 = 0x2
    | 0x4
    | 0x40
    | 0x80
    | 0x100
    | 0x200
    | 0x400
    | 0x1000
    | 0x2000
    | 0x4000
    | 0x8000
    | 0x10000
    | 0x20000;

/// An ext2/3/4 file system inside a partition.
#[derive(Debug)]
pub struct Ext4<'a> {
    disk: &'a dyn BlockSource,
    /// Partition start on the disk.
    pub offset: u64,
    /// File system block size.
    pub block_size: u64,
    blocks: u64,
    first_data_block: u64,
    blocks_per_group: u64,
    inodes_per_group: u64,
    inode_size: u64,
    desc_size: u64,
    groups: u64,
    reserved_gdt: u64,
    descs: Vec<u8>,
    /// The seed of the file system's metadata checksums (`metadata_csum`), to check each block
    /// bitmap before trusting it; `None` when the file system has no bitmap checksums.
    csum_seed: Option<u32>,
    /// Without `metadata_csum`: whether group descriptors carry crc16 checksums (`uninit_bg`).
    gdt_csum: bool,
    /// The file system's UUID (the crc16 descriptor checksums start from it).
    uuid: [u8; 16],
    compat: u32,
    incompat: u32,
    journal_inum: u64,
    /// The journal replay every metadata read goes through; `None`: the disk as it is.
    replay: Option<Replay>,
    /// With a replay: the same file system as on disk, before the replay. A block counts as
    /// free only if both views call it free.
    on_disk: Option<Box<Ext4<'a>>>,
}

/// What [`Ext4::open`] finds in a partition.
// One value a partition, matched right away: boxing the file system would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Opened<'a> {
    /// No ext2/3/4 file system, or one with features this reader does not understand.
    NotExt4,
    /// A file system, as a journal replay would leave it when it needs recovery.
    Ext4(Ext4<'a>),
    /// An ext2/3/4 file system that needs recovery whose journal this reader does not
    /// understand: it must be read in full. The reason, for the plan.
    ReadInFull(String),
}

/// The free blocks of a file system, as [`Ext4::free_ranges`] finds them.
#[derive(Debug)]
pub struct FreeBlocks {
    /// Free blocks, as absolute byte ranges on the disk.
    pub ranges: Ranges,
    /// Groups whose block bitmap or group descriptor failed its checksum: none of their blocks
    /// counts as free.
    pub bad_bitmaps: u64,
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}
fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

impl<'a> Ext4<'a> {
    /// Recognises a file system at `offset` (`len` bytes long). One that needs recovery is
    /// opened through an in-memory replay of its journal, or reported as one to read in full
    /// when the journal is not understood.
    ///
    /// # Errors
    /// I/O errors.
    pub fn open(disk: &'a dyn BlockSource, offset: u64, len: u64) -> Result<Opened<'a>> {
        let Some(on_disk) = Self::open_view(disk, offset, len, None)? else {
            return Ok(Opened::NotExt4);
        };
        if on_disk.incompat & INCOMPAT_RECOVER == 0 {
            return Ok(Opened::Ext4(on_disk));
        }
        if on_disk.compat & COMPAT_HAS_JOURNAL == 0 {
            return Ok(Opened::ReadInFull(
                "needs recovery but has no journal".into(),
            ));
        }
        let replay = match Replay::scan(&on_disk)? {
            Journal::Empty => return Ok(Opened::Ext4(on_disk)),
            Journal::NotUnderstood(why) => {
                return Ok(Opened::ReadInFull(format!("journal not replayed: {why}")))
            }
            Journal::Replay(r) => r,
        };
        match Self::open_view(disk, offset, len, Some(replay))? {
            Some(mut fs) if fs.block_size == on_disk.block_size => {
                fs.on_disk = Some(Box::new(on_disk));
                Ok(Opened::Ext4(fs))
            }
            _ => Ok(Opened::ReadInFull(
                "the superblock in the journal is not one this reader understands".into(),
            )),
        }
    }

    /// The file system at `offset`, read through `replay` (with its block size) when given.
    fn open_view(
        disk: &'a dyn BlockSource,
        offset: u64,
        len: u64,
        replay: Option<Replay>,
    ) -> Result<Option<Ext4<'a>>> {
        if len < 2048 {
            return Ok(None);
        }
        let mut sb = vec![0u8; 1024];
        match &replay {
            Some(r) => read_through(disk, offset, r.block_size, Some(r), 1024, &mut sb)?,
            None => disk.read_at(&mut sb, offset + 1024)?,
        }
        if le16(&sb, 56) as u16 != MAGIC {
            return Ok(None);
        }
        let incompat = le32(&sb, 96) as u32;
        if incompat & !INCOMPAT_KNOWN != 0 || incompat & INCOMPAT_META_BG != 0 {
            return Ok(None);
        }
        let ro_compat = le32(&sb, 100) as u32;
        if ro_compat & RO_COMPAT_BIGALLOC != 0 {
            return Ok(None);
        }
        let csum_seed = (ro_compat & RO_COMPAT_METADATA_CSUM != 0).then(|| {
            if incompat & INCOMPAT_CSUM_SEED != 0 {
                le32(&sb, 0x270) as u32
            } else {
                crc32c(!0, &sb[0x68..0x78])
            }
        });
        let log = le32(&sb, 24);
        if log > 6 {
            return Ok(None);
        }
        let block_size = 1024u64 << log;
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let blocks = le32(&sb, 4) | if is64 { le32(&sb, 336) << 32 } else { 0 };
        let first_data_block = le32(&sb, 20);
        let blocks_per_group = le32(&sb, 32);
        let inodes_per_group = le32(&sb, 40);
        let rev = le32(&sb, 76);
        let inode_size = if rev == 0 { 128 } else { le16(&sb, 88) };
        let desc_size = if is64 { le16(&sb, 254).max(32) } else { 32 };
        if blocks_per_group == 0
            || inodes_per_group == 0
            || blocks == 0
            || blocks * block_size > len
            || inode_size < 128
        {
            return Ok(None);
        }
        let groups = (blocks - first_data_block).div_ceil(blocks_per_group);
        let gdt_bytes = groups * desc_size;
        let gdt_at = offset + (first_data_block + 1) * block_size;
        if gdt_at + gdt_bytes > offset + len {
            return Ok(None);
        }
        let mut descs = vec![0u8; gdt_bytes as usize];
        read_through(
            disk,
            offset,
            block_size,
            replay.as_ref(),
            gdt_at - offset,
            &mut descs,
        )?;
        let reserved_gdt = le16(&sb, 206);
        Ok(Some(Ext4 {
            disk,
            offset,
            block_size,
            blocks,
            first_data_block,
            blocks_per_group,
            inodes_per_group,
            inode_size,
            desc_size,
            groups,
            reserved_gdt,
            descs,
            csum_seed,
            gdt_csum: ro_compat & RO_COMPAT_GDT_CSUM != 0,
            uuid: sb[0x68..0x78].try_into().unwrap_or_default(),
            compat: le32(&sb, 92) as u32,
            incompat,
            journal_inum: le32(&sb, 0xE0),
            replay,
            on_disk: None,
        }))
    }

    /// The journal replay this view reads through, if the file system needed one.
    pub fn replay(&self) -> Option<&Replay> {
        self.replay.as_ref()
    }

    /// Reads `buf.len()` bytes of metadata from byte `within` of block `b` onwards, as a
    /// journal replay would leave them.
    fn read_block(&self, b: u64, within: u64, buf: &mut [u8]) -> Result<()> {
        read_through(
            self.disk,
            self.offset,
            self.block_size,
            self.replay.as_ref(),
            b * self.block_size + within,
            buf,
        )
    }

    fn desc(&self, g: u64) -> &[u8] {
        &self.descs[(g * self.desc_size) as usize..((g + 1) * self.desc_size) as usize]
    }

    fn desc_block(&self, g: u64, lo: usize, hi: usize) -> u64 {
        let d = self.desc(g);
        le32(d, lo)
            | if self.desc_size >= 64 {
                le32(d, hi) << 32
            } else {
                0
            }
    }

    /// Free blocks as absolute byte ranges on the disk.
    ///
    /// A group whose bitmap is uninitialised (`BLOCK_UNINIT`) is free except for its first
    /// blocks (superblock backup, descriptors, reserved descriptors) and the metadata of any
    /// group that lives in it, all of which are kept.
    ///
    /// A bitmap or group descriptor that fails its checksum (crc32c with `metadata_csum`; for
    /// descriptors, crc16 with `uninit_bg`) is not trusted: its group is kept whole, as the
    /// kernel refuses to allocate from it.
    ///
    /// A file system read through its journal counts a block as free only if it is free both
    /// as replayed and as on disk.
    ///
    /// # Errors
    /// I/O errors.
    pub fn free_ranges(&self) -> Result<FreeBlocks> {
        let (mut blocks, mut bad) = self.free_blocks()?;
        if let Some(on_disk) = &self.on_disk {
            let (theirs, bad_on_disk) = on_disk.free_blocks()?;
            blocks = blocks.intersect(&theirs);
            bad.extend(bad_on_disk);
            bad.sort_unstable();
            bad.dedup();
        }
        Ok(FreeBlocks {
            ranges: self.to_bytes(&blocks),
            bad_bitmaps: bad.len() as u64,
        })
    }

    /// This view's free blocks (block numbers) and the groups kept whole because their bitmap
    /// or descriptor failed its checksum.
    fn free_blocks(&self) -> Result<(Ranges, Vec<u64>)> {
        let bs = self.block_size;
        let gdt_blocks = (self.groups * self.desc_size).div_ceil(bs);
        let itable_blocks = (self.inodes_per_group * self.inode_size).div_ceil(bs);
        // Metadata of every group, wherever it lives (flex_bg packs it together).
        let mut meta = Vec::new();
        for g in 0..self.groups {
            let bb = self.desc_block(g, 0, 0x20);
            let ib = self.desc_block(g, 4, 0x24);
            let it = self.desc_block(g, 8, 0x28);
            meta.push((bb, bb + 1));
            meta.push((ib, ib + 1));
            meta.push((it, it + itable_blocks));
        }
        let meta = Ranges::from_unsorted(meta);
        let mut free = Vec::new();
        let mut bitmap = vec![0u8; bs as usize];
        let mut bad = Vec::new();
        for g in 0..self.groups {
            let first = self.first_data_block + g * self.blocks_per_group;
            let count = self.blocks_per_group.min(self.blocks - first);
            if !self.desc_sound(g) {
                bad.push(g);
                continue; // its flags and bitmap location are not to be trusted: keep it whole
            }
            let flags = le16(self.desc(g), 18) as u16;
            let bb = self.desc_block(g, 0, 0x20);
            if flags & BG_BLOCK_UNINIT != 0 {
                let keep = 1 + gdt_blocks + self.reserved_gdt;
                let group = Ranges::single(first + keep.min(count), first + count);
                for (a, b) in group.subtract(&meta).as_slice() {
                    free.push((*a, *b));
                }
                continue;
            }
            if bb >= self.blocks {
                continue; // a descriptor we cannot trust: keep the whole group
            }
            self.read_block(bb, 0, &mut bitmap)?;
            if !self.bitmap_sound(g, &bitmap) {
                bad.push(g);
                continue; // keep the whole group
            }
            let mut run: Option<u64> = None;
            for i in 0..count {
                let used = bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0;
                match (used, run) {
                    (false, None) => run = Some(first + i),
                    (true, Some(s)) => {
                        free.push((s, first + i));
                        run = None;
                    }
                    _ => {}
                }
            }
            if let Some(s) = run {
                free.push((s, first + count));
            }
        }
        // Never drop the boot block and superblock, whatever a bitmap says.
        let blocks = Ranges::from_unsorted(free).subtract(&Ranges::single(0, 2048u64.div_ceil(bs)));
        Ok((blocks, bad))
    }

    /// Whether group `g`'s descriptor matches its own checksum (`bg_checksum`, as the kernel's
    /// `ext4_group_desc_csum`): with `metadata_csum`, crc32c of the group number and the
    /// descriptor with the checksum field as zeros, low 16 bits; with `uninit_bg` (`gdt_csum`),
    /// crc16 of the file system UUID, the group number and the descriptor without its checksum
    /// field. Without either nothing is checked.
    fn desc_sound(&self, g: u64) -> bool {
        let d = self.desc(g);
        let Some(seed) = self.csum_seed else {
            if !self.gdt_csum {
                return true;
            }
            let c = crc16(!0, &self.uuid);
            let c = crc16(c, &(g as u32).to_le_bytes());
            let c = crc16(crc16(c, &d[..0x1E]), &d[0x20..]);
            return u64::from(c) == le16(d, 0x1E);
        };
        let c = crc32c(seed, &(g as u32).to_le_bytes());
        let c = crc32c(c, &d[..0x1E]);
        let c = crc32c(c, &[0, 0]);
        let c = crc32c(c, &d[0x20..]);
        c & 0xFFFF == le16(d, 0x1E) as u32
    }

    /// Whether group `g`'s block bitmap matches the checksum in its descriptor (as the kernel's
    /// `ext4_block_bitmap_csum_verify`: low 16 bits always, high 16 with 64-byte descriptors).
    /// Without `metadata_csum` there is nothing to check.
    fn bitmap_sound(&self, g: u64, bitmap: &[u8]) -> bool {
        let Some(seed) = self.csum_seed else {
            return true;
        };
        let bytes = ((self.blocks_per_group / 8) as usize).min(bitmap.len());
        let c = crc32c(seed, &bitmap[..bytes]);
        let d = self.desc(g);
        if self.desc_size >= 64 {
            c == (le16(d, 0x18) | le16(d, 0x38) << 16) as u32
        } else {
            c & 0xFFFF == le16(d, 0x18) as u32
        }
    }

    /// Converts block ranges of this file system into absolute byte ranges on the disk.
    pub fn to_bytes(&self, blocks: &Ranges) -> Ranges {
        let bs = self.block_size;
        Ranges::from_unsorted(
            blocks
                .as_slice()
                .iter()
                .map(|&(a, b)| (self.offset + a * bs, self.offset + b * bs))
                .collect(),
        )
    }

    /// Reads inode `ino` (all of its on-disk bytes).
    ///
    /// # Errors
    /// I/O errors.
    pub fn inode(&self, ino: u64) -> Result<Option<Inode>> {
        if ino == 0 || ino > self.groups * self.inodes_per_group {
            return Ok(None);
        }
        let g = (ino - 1) / self.inodes_per_group;
        let idx = (ino - 1) % self.inodes_per_group;
        let table = self.desc_block(g, 8, 0x28);
        if table >= self.blocks {
            return Ok(None);
        }
        let mut raw = vec![0u8; self.inode_size.min(self.block_size) as usize];
        let at = idx * self.inode_size;
        self.read_block(table + at / self.block_size, at % self.block_size, &mut raw)?;
        Ok(Some(Inode { number: ino, raw }))
    }

    /// With `metadata_csum`: the seed of the checksums of an inode and its extent blocks,
    /// crc32c of the file system seed, the inode number and its generation (`ext4_inode_csum`).
    fn inode_seed(&self, inode: &Inode) -> Option<u32> {
        let seed = self.csum_seed?;
        let c = crc32c(seed, &(inode.number as u32).to_le_bytes());
        Some(crc32c(c, &inode.raw[0x64..0x68]))
    }

    /// Whether an inode matches its checksum (`ext4_inode_csum_verify`: crc32c over the whole
    /// inode with `i_checksum_lo`, and `i_checksum_hi` when `i_extra_isize` covers it, as zeros;
    /// 16 bits without the high half). Without `metadata_csum` nothing is checked.
    pub fn inode_sound(&self, inode: &Inode) -> bool {
        let Some(seed) = self.inode_seed(inode) else {
            return true;
        };
        let raw = &inode.raw;
        let has_hi = raw.len() >= 0x84 && le16(raw, 0x80) >= 4;
        let c = crc32c(
            crc32c(crc32c(seed, &raw[..0x7C]), &[0, 0]),
            &raw[0x7E..0x80],
        );
        if has_hi {
            let c = crc32c(crc32c(crc32c(c, &raw[0x80..0x82]), &[0, 0]), &raw[0x84..]);
            u64::from(c) == le16(raw, 0x7C) | le16(raw, 0x82) << 16
        } else {
            u64::from(crc32c(c, &raw[0x80..]) & 0xFFFF) == le16(raw, 0x7C)
        }
    }

    /// The block map (as [`Ext4::block_map`]: data runs, unwritten extents included, and the
    /// tree blocks) of a file whose blocks may be dropped (an excluded file); `None` when its
    /// inode or one of its extent blocks fails its `metadata_csum` checksum, so none of its
    /// blocks is to be trusted as its own.
    ///
    /// # Errors
    /// I/O errors.
    pub fn verified_runs(&self, inode: &Inode) -> Result<Option<(Vec<Run>, Vec<u64>)>> {
        if !self.inode_sound(inode) {
            return Ok(None);
        }
        let mut sound = true;
        let map = self.map_checked(inode, true, &mut sound)?;
        Ok(sound.then_some(map))
    }

    /// The data blocks of an inode, as (logical block, physical block, count) runs, and the
    /// metadata blocks (extent tree nodes, indirect blocks) that map them.
    ///
    /// # Errors
    /// I/O errors.
    pub fn block_map(&self, inode: &Inode) -> Result<(Vec<Run>, Vec<u64>)> {
        self.map(inode, true)
    }

    /// The runs that hold a file's bytes: like [`Ext4::block_map`]'s data runs, but without
    /// unwritten (uninitialised) extents, whose blocks read as zeros through the file system.
    ///
    /// # Errors
    /// I/O errors.
    pub fn content_runs(&self, inode: &Inode) -> Result<Vec<Run>> {
        Ok(self.map(inode, false)?.0)
    }

    fn map(&self, inode: &Inode, with_unwritten: bool) -> Result<(Vec<Run>, Vec<u64>)> {
        self.map_checked(inode, with_unwritten, &mut true)
    }

    /// [`Ext4::map`], clearing `sound` when an extent block fails its checksum.
    fn map_checked(
        &self,
        inode: &Inode,
        with_unwritten: bool,
        sound: &mut bool,
    ) -> Result<(Vec<Run>, Vec<u64>)> {
        let mut data = Vec::new();
        let mut meta = Vec::new();
        if inode.flags() & 0x1000_0000 != 0 {
            return Ok((data, meta)); // inline data: no blocks
        }
        if inode.flags() & 0x8_0000 != 0 {
            let mut walk = ExtentWalk {
                seed: self.inode_seed(inode),
                with_unwritten,
                data: &mut data,
                meta: &mut meta,
                sound,
            };
            self.extent_node(&inode.raw[40..100], 0, &mut walk)?;
        } else if !inode.is_fast_symlink() {
            self.indirect(&inode.raw[40..100], &mut data, &mut meta)?;
        }
        Ok((data, meta))
    }

    fn extent_node(&self, node: &[u8], depth_guard: u32, walk: &mut ExtentWalk<'_>) -> Result<()> {
        if node.len() < 12 || le16(node, 0) != 0xF30A || depth_guard > 8 {
            return Ok(());
        }
        let entries = le16(node, 2) as usize;
        let depth = le16(node, 6);
        for i in 0..entries {
            let e = 12 + i * 12;
            if e + 12 > node.len() {
                break;
            }
            if depth == 0 {
                let logical = le32(node, e);
                let mut len = le16(node, e + 4);
                let unwritten = len > 32768;
                if unwritten {
                    len -= 32768; // uninitialised extent: still the file's blocks
                }
                let phys = (le16(node, e + 6) << 32) | le32(node, e + 8);
                if phys + len <= self.blocks && (walk.with_unwritten || !unwritten) {
                    walk.data.push((logical, phys, len));
                }
            } else {
                let leaf = (le16(node, e + 8) << 32) | le32(node, e + 4);
                if leaf >= self.blocks {
                    continue;
                }
                walk.meta.push(leaf);
                let mut buf = vec![0u8; self.block_size as usize];
                self.read_block(leaf, 0, &mut buf)?;
                if !extent_block_sound(walk.seed, &buf) {
                    *walk.sound = false;
                }
                self.extent_node(&buf, depth_guard + 1, walk)?;
            }
        }
        Ok(())
    }

    fn indirect(&self, iblock: &[u8], data: &mut Vec<Run>, meta: &mut Vec<u64>) -> Result<()> {
        let per = self.block_size / 4;
        for i in 0..12 {
            let b = le32(iblock, i * 4);
            if b != 0 && b < self.blocks {
                data.push((i as u64, b, 1));
            }
        }
        let mut logical = 12u64;
        for (slot, level) in [(12usize, 1u32), (13, 2), (14, 3)] {
            let b = le32(iblock, slot * 4);
            let span = per.pow(level);
            if b != 0 && b < self.blocks {
                self.indirect_level(b, level, logical, data, meta)?;
            }
            logical += span;
        }
        Ok(())
    }

    fn indirect_level(
        &self,
        block: u64,
        level: u32,
        logical: u64,
        data: &mut Vec<Run>,
        meta: &mut Vec<u64>,
    ) -> Result<()> {
        meta.push(block);
        let per = self.block_size / 4;
        let mut buf = vec![0u8; self.block_size as usize];
        self.read_block(block, 0, &mut buf)?;
        let span = per.pow(level - 1);
        for i in 0..per {
            let b = le32(&buf, (i * 4) as usize);
            if b == 0 || b >= self.blocks {
                continue;
            }
            if level == 1 {
                data.push((logical + i, b, 1));
            } else {
                self.indirect_level(b, level - 1, logical + i * span, data, meta)?;
            }
        }
        Ok(())
    }

    /// The entries of a directory inode: (name, inode number, file type byte).
    ///
    /// # Errors
    /// I/O errors.
    pub fn read_dir(&self, dir: &Inode) -> Result<Vec<(Vec<u8>, u64, u8)>> {
        let (runs, _) = self.block_map(dir)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; self.block_size as usize];
        for (_, phys, len) in runs {
            for b in phys..phys + len {
                self.read_block(b, 0, &mut buf)?;
                let mut at = 0usize;
                while at + 8 <= buf.len() {
                    let ino = le32(&buf, at);
                    let rec = le16(&buf, at + 4) as usize;
                    let name_len = buf[at + 6] as usize;
                    if rec < 8 || at + rec > buf.len() || 8 + name_len > rec {
                        break;
                    }
                    if ino != 0 && name_len > 0 {
                        out.push((buf[at + 8..at + 8 + name_len].to_vec(), ino, buf[at + 7]));
                    }
                    at += rec;
                }
            }
        }
        Ok(out)
    }

    /// The file system's own metadata, as block ranges: the boot block, each group's
    /// superblock backup with its group descriptors and reserved descriptor blocks (where the
    /// `sparse_super`/`sparse_super2` rules put them), block and inode bitmaps and inode tables,
    /// and every block (data, extent-tree or indirect, extended attributes) of the reserved
    /// inodes (resize inode, root directory, …, up to `s_first_ino`), the journal and the quota
    /// and orphan files. Never dropped for an excluded file, whatever its extents say.
    ///
    /// # Errors
    /// I/O errors.
    pub fn metadata_blocks(&self) -> Result<Ranges> {
        const COMPAT_SPARSE_SUPER2: u64 = 0x200;
        const RO_COMPAT_SPARSE_SUPER: u64 = 0x1;
        let mut sb = vec![0u8; 1024];
        self.disk.read_at(&mut sb, self.offset + 1024)?;
        let (compat, ro_compat) = (le32(&sb, 0x5C), le32(&sb, 0x64));
        let backup_bgs = [le32(&sb, 0x24C), le32(&sb, 0x250)];
        let is_power = |mut g: u64, base: u64| {
            while g > 1 && g.is_multiple_of(base) {
                g /= base;
            }
            g == 1
        };
        let has_super = |g: u64| {
            if compat & COMPAT_SPARSE_SUPER2 != 0 {
                g == 0 || backup_bgs.contains(&g)
            } else if ro_compat & RO_COMPAT_SPARSE_SUPER == 0 {
                true
            } else {
                g <= 1 || is_power(g, 3) || is_power(g, 5) || is_power(g, 7)
            }
        };
        let gdt_blocks = (self.groups * self.desc_size).div_ceil(self.block_size);
        let itable_blocks = (self.inodes_per_group * self.inode_size).div_ceil(self.block_size);
        let mut meta = vec![(0, self.first_data_block + 1)];
        for g in 0..self.groups {
            let first = self.first_data_block + g * self.blocks_per_group;
            if has_super(g) {
                meta.push((first, first + 1 + gdt_blocks + self.reserved_gdt));
            }
            let (bb, ib) = (self.desc_block(g, 0, 0x20), self.desc_block(g, 4, 0x24));
            let it = self.desc_block(g, 8, 0x28);
            meta.extend([(bb, bb + 1), (ib, ib + 1), (it, it + itable_blocks)]);
        }
        let rev = le32(&sb, 76);
        let first_ino = if rev == 0 { 11 } else { le32(&sb, 0x54) };
        // The journal, the user, group and project quota files and the orphan file.
        let named = [0xE0, 0x240, 0x244, 0x26C, 0x280].map(|at| le32(&sb, at));
        for ino in (1..first_ino.min(64)).chain(named) {
            let Some(inode) = self.inode(ino)? else {
                continue;
            };
            let (runs, tree) = self.block_map(&inode)?;
            meta.extend(runs.iter().map(|&(_, p, n)| (p, p + n)));
            meta.extend(
                tree.iter()
                    .chain(inode.xattr_block().iter())
                    .map(|&b| (b, b + 1)),
            );
        }
        Ok(Ranges::from_unsorted(meta))
    }
}

/// Reads `buf.len()` bytes at byte `at` of the file system at `offset` (blocks of `bs` bytes),
/// each block from its newest committed copy in the journal when `replay` has one (with the
/// escaped magic put back), else from its home.
fn read_through(
    disk: &dyn BlockSource,
    offset: u64,
    bs: u64,
    replay: Option<&Replay>,
    at: u64,
    buf: &mut [u8],
) -> Result<()> {
    let Some(replay) = replay else {
        return disk.read_at(buf, offset + at);
    };
    let mut done = 0usize;
    while done < buf.len() {
        let pos = at + done as u64;
        let (b, within) = (pos / bs, pos % bs);
        let n = ((bs - within) as usize).min(buf.len() - done);
        let piece = &mut buf[done..done + n];
        match replay.copy_of(b) {
            Some(copy) => {
                disk.read_at(piece, offset + copy.at * bs + within)?;
                if copy.escaped {
                    for (i, m) in super::jbd2::ESCAPED_MAGIC.iter().enumerate() {
                        if let Some(k) = (i as u64).checked_sub(within) {
                            if let Some(byte) = piece.get_mut(k as usize) {
                                *byte = *m;
                            }
                        }
                    }
                }
            }
            None => disk.read_at(piece, offset + pos)?,
        }
        done += n;
    }
    Ok(())
}

/// One walk of an extent tree: what it collects, and whether every block passed its checksum.
struct ExtentWalk<'w> {
    /// The inode's checksum seed ([`Ext4::inode_seed`]); `None` without `metadata_csum`.
    seed: Option<u32>,
    with_unwritten: bool,
    data: &'w mut Vec<Run>,
    meta: &'w mut Vec<u64>,
    sound: &'w mut bool,
}

/// Whether an extent tree block matches the checksum in its tail (`ext4_extent_block_csum`:
/// crc32c from the inode's seed over the header and every slot up to `eh_max`, stored right
/// after them). Without a seed there is nothing to check.
fn extent_block_sound(seed: Option<u32>, block: &[u8]) -> bool {
    let Some(seed) = seed else { return true };
    let tail = 12 + 12 * le16(block, 4) as usize;
    tail + 4 <= block.len() && u64::from(crc32c(seed, &block[..tail])) == le32(block, tail)
}

/// The journal reader reads the journal as it is on the disk, through this.
impl Host for Ext4<'_> {
    fn block_size(&self) -> u64 {
        self.block_size
    }

    fn blocks(&self) -> u64 {
        self.blocks
    }

    fn journal_file(&self) -> Result<std::result::Result<(Vec<Run>, u64), String>> {
        // `s_journal_inum`; 0 with an external journal.
        let inum = self.journal_inum;
        if inum == 0 {
            return Ok(Err("the journal is on an external device".into()));
        }
        let Some(inode) = self.inode(inum)? else {
            return Ok(Err(format!(
                "journal inode {inum} is outside the inode table"
            )));
        };
        if !inode.is_file() {
            return Ok(Err(format!("journal inode {inum} is not a regular file")));
        }
        let (runs, _) = self.block_map(&inode)?;
        Ok(Ok((runs, inode.size())))
    }

    fn read_raw_block(&self, b: u64, buf: &mut [u8]) -> Result<()> {
        self.disk.read_at(buf, self.offset + b * self.block_size)
    }
}

/// A run of file blocks: (first logical block, first physical block, count).
pub type Run = (u64, u64, u64);

/// An inode's first bytes.
#[derive(Debug, Clone)]
pub struct Inode {
    number: u64,
    raw: Vec<u8>,
}

impl Inode {
    /// `i_mode`.
    pub fn mode(&self) -> u16 {
        le16(&self.raw, 0) as u16
    }
    /// `i_flags`.
    pub fn flags(&self) -> u64 {
        le32(&self.raw, 32)
    }
    /// Whether a directory.
    pub fn is_dir(&self) -> bool {
        self.mode() & 0xF000 == 0x4000
    }
    /// Whether a regular file.
    pub fn is_file(&self) -> bool {
        self.mode() & 0xF000 == 0x8000
    }
    /// Owner (low and high 16 bits).
    pub fn uid(&self) -> u32 {
        (le16(&self.raw, 2) | self.hi16(120) << 16) as u32
    }
    /// Group.
    pub fn gid(&self) -> u32 {
        (le16(&self.raw, 24) | self.hi16(122) << 16) as u32
    }
    /// Modification time, Unix seconds (the low 32 bits, signed as ext2 stores them).
    pub fn mtime(&self) -> i64 {
        i64::from(le32(&self.raw, 16) as u32 as i32)
    }
    /// A fast symlink's target (kept inside the inode).
    pub fn fast_symlink_target(&self) -> Option<String> {
        self.is_fast_symlink()
            .then(|| String::from_utf8_lossy(&self.raw[40..40 + self.size() as usize]).into_owned())
    }
    fn hi16(&self, at: usize) -> u64 {
        if self.raw.len() >= at + 2 {
            le16(&self.raw, at)
        } else {
            0
        }
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        le32(&self.raw, 4) | (le32(&self.raw, 108) << 32)
    }
    /// The block of its extended attributes (`i_file_acl`), if it has one.
    pub fn xattr_block(&self) -> Option<u64> {
        Some(le32(&self.raw, 104) | self.hi16(118) << 32).filter(|&b| b != 0)
    }
    fn is_fast_symlink(&self) -> bool {
        self.mode() & 0xF000 == 0xA000 && self.size() < 60
    }
}

#[cfg(test)]
mod tests {
    use super::read_through;
    use crate::guest::ext4::jbd2::{Location, Replay, ESCAPED_MAGIC};
    use crate::source::FileSource;

    #[test]
    fn reads_go_through_the_newest_copy_and_restore_escaped_magic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk");
        // Eight blocks of 1 KiB, block i filled with byte i; blocks 5 and 6 are "journal copies".
        let img: Vec<u8> = (0..8u8).flat_map(|i| vec![i; 1024]).collect();
        std::fs::write(&path, &img).expect("write");
        let disk = FileSource::open(&path).expect("open");
        let replay = Replay::with_copies(
            1024,
            &[
                (
                    2,
                    Location {
                        at: 5,
                        escaped: false,
                    },
                ),
                (
                    3,
                    Location {
                        at: 6,
                        escaped: true,
                    },
                ),
            ],
        );
        // Blocks 1..4 from byte 2 of block 1 on: home, copy, escaped copy, home.
        let mut buf = vec![0u8; 3 * 1024];
        read_through(&disk, 0, 1024, Some(&replay), 1024 + 2, &mut buf).expect("read");
        assert!(buf[..1022].iter().all(|&b| b == 1));
        assert!(buf[1022..2046].iter().all(|&b| b == 5));
        assert_eq!(buf[2046..2050], ESCAPED_MAGIC);
        assert!(buf[2050..3070].iter().all(|&b| b == 6));
        assert!(buf[3070..].iter().all(|&b| b == 4));
        // A read starting inside the escaped bytes gets the rest of the magic.
        let mut part = [0u8; 4];
        read_through(&disk, 0, 1024, Some(&replay), 3 * 1024 + 2, &mut part).expect("read");
        assert_eq!(part, [ESCAPED_MAGIC[2], ESCAPED_MAGIC[3], 6, 6]);
    }
}
