//! No input panics: random and extreme mailbox arguments, names and data
//! for every service (tests run with overflow checks, so an unchecked
//! arithmetic overflow fails here too), and the store stays valid.

use sandbox_abi::Service;

use super::*;
use crate::wellknown::{GLOBAL_VARIABLE, MTC_VENDOR};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick(&mut self) -> u64 {
        const INTERESTING: [u64; 12] = [0, 1, 2, 3, 4, 7, 28, 0xff, 0xffff_ffff, 1 << 32, i64::MAX as u64, u64::MAX];
        match self.next() % 4 {
            0 => INTERESTING[(self.next() % INTERESTING.len() as u64) as usize],
            1 => self.next() % 64,
            2 => self.next() % 0x2_0000,
            _ => self.next(),
        }
    }
}

#[test]
fn random_arguments_never_panic_and_keep_the_store_valid() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut m = Machine::new();
    m.put("Seed", TEST_GUID, b"seed");
    m.put("MTC", MTC_VENDOR, &7u32.to_le_bytes());
    m.put("Timeout", GLOBAL_VARIABLE, &[1, 0]);
    let services = [
        Service::GetTime,
        Service::SetTime,
        Service::GetWakeupTime,
        Service::SetWakeupTime,
        Service::GetVariable,
        Service::GetNextVariableName,
        Service::SetVariable,
        Service::GetNextHighMonotonicCount,
        Service::ResetSystem,
        Service::UpdateCapsule,
        Service::QueryCapsuleCapabilities,
        Service::QueryVariableInfo,
    ];
    for _ in 0..300 {
        for &service in &services {
            let mut args = [0u64; 7];
            args.iter_mut().for_each(|a| *a = rng.pick());
            // Often use a real GUID so lookups hit.
            if rng.next().is_multiple_of(2) {
                let (lo, hi) = guid_to_halves(&TEST_GUID);
                args[1] = lo;
                args[2] = hi;
            }
            let name: Vec<u8> = match rng.next() % 3 {
                0 => u16z("Seed"),
                1 => u16z(""),
                _ => (0..rng.next() % 40).map(|_| rng.next() as u8).collect(),
            };
            if rng.next().is_multiple_of(2) {
                args[0] = name.len() as u64;
            }
            let data: Vec<u8> = (0..rng.next() % 300).map(|_| rng.next() as u8).collect();
            if rng.next().is_multiple_of(2) {
                args[4] = data.len() as u64;
                args[2 + (rng.next() % 2) as usize] = data.len() as u64;
            }
            m.host_ns = rng.next() as i64;
            let ptrs = rng.next();
            // `call` asserts the store is unchanged unless dirty, and valid
            // when dirty.
            let _ = m.call(service, args, ptrs, &name, &data);
        }
    }
}
