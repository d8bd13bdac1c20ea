//! The CRCs of ext4 and jbd2 metadata: crc32c (`metadata_csum`, journal checksums v2/v3) and
//! crc16 (`uninit_bg` group descriptors).

/// The lookup table of a reflected CRC with polynomial `poly` (bit-reversed), for
/// [`crc32c`] and [`crc16`].
const fn reflected_table(poly: u32) -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ poly } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

/// crc32c (Castagnoli) without the initial and final inversion, as ext4's `ext4_chksum` and
/// jbd2's `jbd2_chksum` do.
pub fn crc32c(crc: u32, data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = reflected_table(0x82F6_3B78);
    data.iter().fold(crc, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// CRC-16 (polynomial 0x8005, reflected, no final inversion), as e2fsprogs' `ext2fs_crc16` and
/// the kernel's `crc16` compute the `uninit_bg` group descriptor checksum.
pub fn crc16(crc: u16, data: &[u8]) -> u16 {
    const TABLE: [u32; 256] = reflected_table(0xA001);
    data.iter().fold(crc, |c, &b| {
        TABLE[((c ^ u16::from(b)) & 0xFF) as usize] as u16 ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::{crc16, crc32c};

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // CRC-32C of "123456789" with the usual inversions is 0xE3069283.
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(7, b""), 7);
        // CRC-16/ARC (reflected 0x8005, init 0, no final inversion) of "123456789" is 0xBB3D.
        assert_eq!(crc16(0, b"123456789"), 0xBB3D);
    }
}
