//! The ELF check the loader runs before mapping a plugin library: whatever a file holds, it
//! is refused with a reason or accepted only when every header and segment lies inside it,
//! and the check never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir::loader::elf::{inspect_bytes, ElfProblem, Target};

fuzz_target!(|data: &[u8]| {
    // The host's machine, and every class and byte order with `e_machine` not checked, so
    // inputs of any machine reach the later checks.
    let any = |class, data| Target { class, data, machine: None };
    for target in [Target::HOST, any(1, 1), any(1, 2), any(2, 1), any(2, 2)] {
        match inspect_bytes(data, target) {
            Ok(layout) => {
                assert!(layout.loads >= 1);
                assert!(layout.needed <= data.len() as u64, "{layout:?} for {} bytes", data.len());
                // One byte short of what the headers need is refused, as truncated.
                let short = &data[..layout.needed as usize - 1];
                let reason = inspect_bytes(short, target).expect_err("a file one byte short is refused");
                assert!(matches!(reason, ElfProblem::Truncated { .. }), "{reason}");
            }
            Err(reason) => assert!(!reason.to_string().is_empty()),
        }
    }
});
