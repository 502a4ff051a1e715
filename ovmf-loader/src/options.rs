//! The loader's load options: the fw_cfg command line (`-append`), which
//! OVMF's `QemuStartKernelImage` hands over as a NUL-terminated UTF-16
//! string in `EFI_LOADED_IMAGE_PROTOCOL.LoadOptions`.

/// Whether the UTF-16 load options (`units`, up to the first NUL) contain
/// the ASCII `word` as a whitespace-separated word.
pub fn has_word(units: &[u16], word: &str) -> bool {
    let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
    units[..end]
        .split(|&u| u == u16::from(b' ') || u == u16::from(b'\t'))
        .any(|w| w.len() == word.len() && w.iter().zip(word.bytes()).all(|(&u, b)| u == u16::from(b)))
}

/// The UTF-16 code units of `LoadOptionsSize` bytes of load options, read
/// from a byte slice (the loader copies them out before ExitBootServices).
pub fn units_from_bytes(bytes: &[u8], out: &mut [u16]) -> usize {
    let mut n = 0;
    for (dst, src) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *dst = u16::from_le_bytes([src[0], src[1]]);
        n += 1;
    }
    n
}
