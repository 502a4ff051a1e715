//! Privileged instructions of OVMF's runtime at CPL3 (in progress).
