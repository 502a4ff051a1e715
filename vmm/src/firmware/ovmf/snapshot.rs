//! The OVMF sandbox snapshot file (in progress).
