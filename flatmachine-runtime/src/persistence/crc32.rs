//! CRC-32 (IEEE 802.3, the polynomial of zlib, gzip and PNG; Python's `zlib.crc32`), used for
//! snapshot checksums. Table-driven, one table built at compile time; no dependency.

const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// The CRC-32 of `bytes` (equal to Python's `zlib.crc32(bytes)`).
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c = TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::crc32;

    #[test]
    fn matches_zlib() {
        // python3 -c "import zlib; print(hex(zlib.crc32(b'123456789')))"
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        // python3 -c "import zlib; print(hex(zlib.crc32(b'{\"a\": 1}')))"
        assert_eq!(crc32(br#"{"a": 1}"#), 0xfba1_8e97);
    }
}
