//! An OVMF image file: which parts it holds and where they are mapped.
//!
//! OVMF's flash device is a vars region followed by the code region, ending
//! at 4 GiB (`OvmfPkg/OvmfPkgDefines.fdf.inc`):
//!
//! | build | vars (file) | code | vars base |
//! |---|---|---|---|
//! | 2 MiB (`OVMF.fd`, `OVMF_CODE.fd`) | 0x20000 | 0x1E0000 | 0xFFE00000 |
//! | 4 MiB (`OVMF_CODE_4M.fd`) | 0x84000 | 0x37C000 | 0xFFC00000 |
//!
//! A combined image (`OVMF.fd`, 2 MiB or 4 MiB) is the vars region (a
//! template store) followed by the code; a split one (`OVMF_CODE*.fd`) is the
//! code alone and the VM's vars file is the vars region. Either way the VM's
//! vars file backs the vars region: a combined image's template is not used.

use std::io::Read;
use std::path::{Path, PathBuf};

use varstore::Layout;

use crate::sandbox::SetupError;

/// Largest file accepted as an OVMF image (the 4 MiB build).
const MAX_IMAGE: u64 = 4 << 20;

/// The code region of an OVMF image and its flash layout.
#[derive(Clone, Debug)]
pub struct OvmfImage {
    path: PathBuf,
    layout: Layout,
    code: Vec<u8>,
    /// SHA-256 of the whole file (what a snapshot belongs to).
    sha256: [u8; 32],
}

impl OvmfImage {
    /// Reads and classifies `path`.
    pub fn load(path: &Path) -> Result<Self, SetupError> {
        let bad = |why: String| SetupError::FirmwareFile { path: path.to_path_buf(), why };
        let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open it: {e}")))?;
        let meta = file.metadata().map_err(|e| bad(format!("cannot stat it: {e}")))?;
        if !meta.is_file() {
            return Err(bad("it is not a regular file".into()));
        }
        if meta.len() > MAX_IMAGE {
            return Err(bad(format!("it is {} bytes; an OVMF image is at most {MAX_IMAGE}", meta.len())));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(MAX_IMAGE + 1).read_to_end(&mut bytes).map_err(|e| bad(format!("cannot read it: {e}")))?;
        Self::from_bytes(path, bytes)
    }

    /// Classifies an image already in memory.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, SetupError> {
        let bad = |why: String| SetupError::FirmwareFile { path: path.to_path_buf(), why };
        let (layout, code_start) = match bytes.len() {
            0x1E_0000 => (Layout::Ovmf2M, 0),
            0x37_C000 => (Layout::Ovmf4M, 0),
            0x20_0000 => (Layout::Ovmf2M, 0x2_0000),
            0x40_0000 => (Layout::Ovmf4M, 0x8_4000),
            n => {
                return Err(bad(format!(
                    "it is {n:#x} bytes: not an OVMF image of the 2 MiB or 4 MiB build (OVMF.fd: 0x200000 or \
                     0x400000; OVMF_CODE.fd: 0x1e0000; OVMF_CODE_4M.fd: 0x37c000). `efivmm --firmware builtin` \
                     needs no image"
                )))
            }
        };
        if code_start > 0 && varstore::check(&bytes[..code_start]).is_err() {
            return Err(bad(format!(
                "it has the size of a combined OVMF.fd, but its first {code_start:#x} bytes are not a variable store"
            )));
        }
        let sha256 = super::snapshot::sha256(&bytes);
        let code = bytes[code_start..].to_vec();
        // The reset vector's far jump lives in the last 16 bytes; OVMF's is `90 90 e9 ..` (nop; nop; jmp).
        if code.iter().rev().take(16).all(|&b| b == 0 || b == 0xff) {
            return Err(bad("its last 16 bytes hold no reset vector".into()));
        }
        Ok(OvmfImage { path: path.to_path_buf(), layout, code, sha256 })
    }

    /// The vars file layout the image expects.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The code region (mapped read-only, ending at 4 GiB).
    pub fn code(&self) -> &[u8] {
        &self.code
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Guest-physical base of the code region.
    pub fn code_base(&self) -> u64 {
        (1u64 << 32) - self.code.len() as u64
    }

    /// Guest-physical base of the vars region (the CFI flash).
    pub fn vars_base(&self) -> u64 {
        self.code_base() - self.layout.file_size() as u64
    }

    /// SHA-256 of the whole file: a snapshot records it, and is used only
    /// with the same image.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(len: usize) -> Vec<u8> {
        let mut c = vec![0u8; len];
        let n = c.len();
        c[n - 16..n - 12].copy_from_slice(&[0x90, 0x90, 0xe9, 0x00]);
        c
    }

    #[test]
    fn split_images_of_both_builds_are_recognised() {
        let i = OvmfImage::from_bytes(Path::new("c"), code(0x1E_0000)).unwrap();
        assert_eq!((i.layout(), i.code_base(), i.vars_base()), (Layout::Ovmf2M, 0xFFE2_0000, 0xFFE0_0000));
        let i = OvmfImage::from_bytes(Path::new("c"), code(0x37_C000)).unwrap();
        assert_eq!((i.layout(), i.code_base(), i.vars_base()), (Layout::Ovmf4M, 0xFFC8_4000, 0xFFC0_0000));
    }

    #[test]
    fn a_combined_image_needs_a_store_in_front() {
        let mut bytes = vec![0u8; 0x2_0000];
        varstore::Store::format(&mut bytes, Layout::Ovmf2M);
        bytes.extend(code(0x1E_0000));
        let i = OvmfImage::from_bytes(Path::new("c"), bytes.clone()).unwrap();
        assert_eq!(i.code().len(), 0x1E_0000);
        bytes[0x28] ^= 0xff; // the FV signature's first byte
        assert!(matches!(OvmfImage::from_bytes(Path::new("c"), bytes), Err(SetupError::FirmwareFile { .. })));
    }

    #[test]
    fn other_sizes_and_blank_images_are_refused_with_the_reason() {
        let e = OvmfImage::from_bytes(Path::new("x.fd"), vec![0; 1000]).unwrap_err().to_string();
        assert!(e.contains("x.fd") && e.contains("0x3e8"), "{e}");
        let e = OvmfImage::from_bytes(Path::new("x.fd"), vec![0xff; 0x1E_0000]).unwrap_err().to_string();
        assert!(e.contains("reset vector"), "{e}");
    }

    #[test]
    fn debians_images_are_recognised() {
        for (p, layout) in [
            ("/usr/share/ovmf/OVMF.fd", Layout::Ovmf2M),
            ("/usr/share/OVMF/OVMF_CODE.fd", Layout::Ovmf2M),
            ("/usr/share/OVMF/OVMF_CODE_4M.fd", Layout::Ovmf4M),
        ] {
            assert!(Path::new(p).exists(), "{p} is missing: run scripts/setup.sh (Debian's ovmf package)");
            assert_eq!(OvmfImage::load(Path::new(p)).unwrap().layout(), layout, "{p}");
        }
    }
}
