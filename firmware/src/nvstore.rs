//! The store as the services use it: lookups with the runtime visibility
//! rule, and writes that reclaim space when needed and leave the image
//! untouched when they fail.
//!
//! OVMF cannot reclaim after ExitBootServices (`UpdateVariable` returns
//! `EFI_OUT_OF_RESOURCES` at runtime once the store's tail is used up, even
//! if deleted records would free enough). efivmm persists the whole image
//! atomically after each call, so the firmware compacts the store at runtime
//! (`Store::compact`) when a record does not fit in the free tail; only when
//! the record does not fit even after reclaim does a write fail, with
//! `EFI_OUT_OF_RESOURCES` and the image exactly as it was (the fit is
//! checked before anything is modified).

use r_efi::efi::Status;
use varstore::{Guid, Layout, NewVar, Store, StoreFull, VarRef, Vouch};

use crate::wellknown::VARIABLE_RUNTIME_ACCESS;

/// The opened store of one call, and whether the call changed its bytes.
pub struct Nv<'a> {
    store: Store<'a>,
    /// Set once any write modified the image (becomes `store_dirty`).
    pub dirty: bool,
}

impl<'a> Nv<'a> {
    /// Opens the call's store image; `EFI_DEVICE_ERROR` if it does not
    /// validate. With efivmm's `vouch` (the mailbox's `store_vouch`) for
    /// these bytes, a walk over the record headers stands in for the full
    /// validation (`Store::open_vouched`); a vouch that does not fit them
    /// is ignored.
    pub fn open(image: &'a mut [u8], vouch: Option<Vouch>) -> Result<Self, Status> {
        let opened = match vouch {
            Some(v) => Store::open_vouched(image, v).or_else(Store::open),
            None => Store::open(image),
        };
        match opened {
            Ok(store) => Ok(Nv { store, dirty: false }),
            Err(_) => Err(Status::DEVICE_ERROR),
        }
    }

    /// The underlying store (read-only).
    pub fn store(&self) -> &Store<'a> {
        &self.store
    }

    /// The layout (which OVMF build's limits apply).
    pub fn layout(&self) -> Layout {
        self.store.layout()
    }

    /// The live variable with this name and GUID, whatever its attributes.
    pub fn find(&self, name: &[u8], guid: &Guid) -> Option<VarRef<'_>> {
        self.store.find(name, guid)
    }

    /// The live variable with this name and GUID if it is visible at
    /// runtime (has `EFI_VARIABLE_RUNTIME_ACCESS`), as edk2's
    /// `FindVariableEx` with `IgnoreRtCheck == FALSE` after ExitBootServices.
    pub fn find_runtime(&self, name: &[u8], guid: &Guid) -> Option<VarRef<'_>> {
        self.store.find(name, guid).filter(|v| v.attributes & VARIABLE_RUNTIME_ACCESS != 0)
    }

    /// Bytes the live variables occupy (records with header, name, data and
    /// alignment), as counted against the store's capacity.
    pub fn live_bytes(&self) -> usize {
        self.store.iter().fold(0usize, |acc, v| acc.saturating_add(Store::record_size(v.name.len(), v.data.len())))
    }

    /// Writes `var`: replaces the live variable of the same name and GUID,
    /// or appends a new one. Compacts first if the record does not fit in
    /// the free tail but fits after reclaim. `EFI_OUT_OF_RESOURCES`, with the
    /// image unchanged, if it does not fit even then.
    pub fn put(&mut self, var: &NewVar<'_>) -> Result<(), Status> {
        let need = Store::record_size(var.name.len(), var.data.len());
        let free = self.store.free_space();
        let mut compacted = false;
        if need > free {
            if need > free.saturating_add(self.store.reclaimable()) {
                return Err(Status::OUT_OF_RESOURCES);
            }
            self.store.compact();
            self.dirty = true;
            compacted = true;
        }
        match self.write_once(var) {
            Ok(()) => Ok(()),
            Err(StoreFull) if !compacted => {
                self.store.compact();
                self.dirty = true;
                self.write_once(var).map_err(|StoreFull| Status::OUT_OF_RESOURCES)
            }
            Err(StoreFull) => Err(Status::OUT_OF_RESOURCES),
        }
    }

    fn write_once(&mut self, var: &NewVar<'_>) -> Result<(), StoreFull> {
        let old = self.store.find(var.name, &var.guid).map(|v| v.offset);
        match old {
            Some(offset) => self.store.replace(offset, var)?,
            None => self.store.append(var)?,
        };
        self.dirty = true;
        Ok(())
    }

    /// Deletes every live copy of the variable (edk2 marks both the `ADDED`
    /// and a stale `IN_DELETED_TRANSITION` record deleted; this marks every
    /// in-transition one, so none comes back). Returns whether there was one.
    pub fn remove(&mut self, name: &[u8], guid: &Guid) -> bool {
        let removed = self.store.find(name, guid).is_some();
        if self.store.delete_all(name, guid) > 0 {
            self.dirty = true;
        }
        removed
    }

    /// Sets a firmware-private variable (the firmware's own writes, which
    /// bypass the runtime attribute rules): skips the write if the variable
    /// already holds exactly these attributes and data.
    pub fn put_private(&mut self, name: &[u8], guid: &Guid, attributes: u32, data: &[u8]) -> Result<(), Status> {
        if let Some(v) = self.store.find(name, guid) {
            if v.attributes == attributes && v.data == data {
                return Ok(());
            }
        }
        self.put(&NewVar::new(attributes, *guid, name, data))
    }
}

/// The PCDs of the OVMF build a layout belongs to (`OvmfPkg/OvmfPkgX64.dsc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `PcdMaxVariableSize`.
    pub max_variable_size: usize,
    /// `PcdMaxAuthVariableSize`.
    pub max_auth_variable_size: usize,
    /// The volatile store's size (`PcdVariableStoreSize`).
    pub volatile_store_size: usize,
}

impl Limits {
    /// The limits of the build whose vars file has this layout:
    /// `FD_SIZE_2MB` (0x2000 / 0x2800 / 0xe000) or `FD_SIZE_4MB`
    /// (0x8400 / 0x8400 / 0x40000). `PcdMaxVolatileVariableSize` is 0 in
    /// both, so volatile variables share `PcdMaxVariableSize`;
    /// `PcdHwErrStorageSize` is 0 (hardware error records unsupported).
    pub fn of(layout: Layout) -> Limits {
        match layout {
            Layout::Ovmf2M => {
                Limits { max_variable_size: 0x2000, max_auth_variable_size: 0x2800, volatile_store_size: 0xe000 }
            }
            Layout::Ovmf4M => {
                Limits { max_variable_size: 0x8400, max_auth_variable_size: 0x8400, volatile_store_size: 0x40000 }
            }
        }
    }
}

/// edk2's `PcdMaxHardwareErrorVariableSize` (MdeModulePkg default, not
/// overridden by OVMF).
pub const MAX_HARDWARE_ERROR_VARIABLE_SIZE: usize = 0x8000;
