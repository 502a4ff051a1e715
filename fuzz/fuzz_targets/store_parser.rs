//! The OVMF variable-store parser (`varstore`): `check`, `Store::open`,
//! iteration, liveness, `find`, compaction, appends, and
//! `find_vars_volume`, on any image.
//!
//! Input: one mode byte, then a body.
//! - mode % 4 == 0: the body is the whole image, as is.
//! - 1 / 2: the body is the start of a 2M (128 KiB) / 4M (528 KiB) vars
//!   file, the rest erased (0xFF); mode bit 2 recomputes the FV header
//!   checksum. Small inputs thus reach the record walk.
//! - 3: a flash image: (mode >> 4) * 4 KiB of code bytes, then the body as
//!   in 1 (bit 3 selects 4M), for `find_vars_volume`.
#![no_main]

use efivmm_fuzz::store::{exercise, volume};
use libfuzzer_sys::fuzz_target;
use varstore::Layout;

fn fix_checksum(img: &mut [u8]) {
    img[0x32] = 0;
    img[0x33] = 0;
    let sum = img[..0x48].chunks_exact(2).fold(0u16, |s, w| s.wrapping_add(u16::from_le_bytes([w[0], w[1]])));
    img[0x32..0x34].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
}

fn overlay(body: &[u8], layout: Layout, fix: bool) -> Vec<u8> {
    let mut img = vec![0xff; layout.file_size()];
    let n = body.len().min(img.len());
    img[..n].copy_from_slice(&body[..n]);
    if fix {
        fix_checksum(&mut img);
    }
    img
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let knob = body.iter().take(8).fold(0u64, |k, &b| (k << 8) | u64::from(b));
    let fix = mode & 4 != 0;
    match mode % 4 {
        0 => {
            let mut img = body.to_vec();
            volume(&img);
            exercise(&mut img, knob);
        }
        1 | 2 => {
            let layout = if mode % 4 == 1 { Layout::Ovmf2M } else { Layout::Ovmf4M };
            let mut img = overlay(body, layout, fix);
            exercise(&mut img, knob);
        }
        _ => {
            let layout = if mode & 8 != 0 { Layout::Ovmf4M } else { Layout::Ovmf2M };
            let code = usize::from(mode >> 4) * 0x1000;
            let mut flash = vec![0x90; code];
            flash.extend(overlay(body, layout, fix));
            volume(&flash);
            // A truncated flash image too.
            let cut = flash.len() - (knob as usize % 0x2000);
            volume(&flash[..cut]);
        }
    }
});
